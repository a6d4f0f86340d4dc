# Two commands do all set-up on a fresh machine:
#   make run    create .venv if missing, install, run the default benchmark: the exact mixture tasks (gmm-concept,
#               gmm-data) with the methods the claims compare, 10 seeds (the protocol's count) on four grid values
#               each (scripts/grids/gmm-*/claims.yaml), their retrained references, the claims and a page next to
#               the committed digits results (minutes on 2 cores)
#   make test   same set-up, then the test suite (offline)
# make digits reproduces the committed digits leaderboard (about an hour on 2 cores) and checks it.
VENV   ?= .venv
PYTHON ?= python3
UB      = $(VENV)/bin/unlearnbench
export HF_HUB_OFFLINE = 1
export RAY_USAGE_STATS_ENABLED = 0
export PIP_DISABLE_PIP_VERSION_CHECK = 1

.PHONY: run digits test test-all gmm leaderboard bench clean

STAMP := $(shell date +%Y%m%d-%H%M%S)
RUN    = runs/$(STAMP)
SEEDS  ?= 0,1,2,3,4,5,6,7,8,9

$(VENV)/.installed: pyproject.toml
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q -e '.[test]'
	@touch $@

run: $(VENV)/.installed
	$(UB) run --task gmm-concept --methods rkl,rkl-fixed,esd,lik --grid scripts/grids/gmm-concept/claims.yaml --seeds $(SEEDS) --no-leaderboard --out $(RUN)/gmm-concept
	$(UB) attack $(RUN)/gmm-concept --attacks none --executor serial --no-leaderboard
	$(UB) run --task gmm-data --methods fkl,siss --grid scripts/grids/gmm-data/claims.yaml --seeds $(SEEDS) --no-leaderboard --out $(RUN)/gmm-data
	$(UB) attack $(RUN)/gmm-data --attacks none --executor serial --no-leaderboard
	$(UB) claims --runs $(RUN)
	$(UB) leaderboard --runs $(RUN) leaderboards/records/digits-* leaderboards/records/robustness/digits-* --out $(RUN)/leaderboard
	@echo "page: $(RUN)/leaderboard/index.html"

digits: $(VENV)/.installed
	$(UB) pretrain --task digits
	$(UB) run --task digits-concept --methods rkl,esd --grid eps --seeds 0,1 --out $(RUN)/digits-concept
	$(UB) run --task digits-data --methods fkl,siss --grid eps --seeds 0,1 --out $(RUN)/digits-data
	$(VENV)/bin/python scripts/reproduce_check.py $(RUN)/digits-concept $(RUN)/digits-data

test: $(VENV)/.installed
	$(VENV)/bin/pytest -m "not slow" -n auto --dist worksteal

test-all: $(VENV)/.installed
	$(VENV)/bin/pytest -n auto --dist worksteal

gmm: $(VENV)/.installed
	$(UB) run --task gmm-concept --methods all --grid eps --seeds 0,1,2
	$(UB) run --task gmm-data --methods all --grid eps --seeds 0,1,2

leaderboard: $(VENV)/.installed
	$(UB) leaderboard --runs leaderboards/records --out leaderboards

bench: $(VENV)/.installed
	$(VENV)/bin/python scripts/bench_gmm_sweep.py

clean:
	rm -rf build dist *.egg-info .pytest_cache
