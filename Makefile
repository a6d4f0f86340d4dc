# Two commands do all set-up on a fresh machine:
#   make run    create .venv if missing, install, run the default benchmark (digits, CPU, 2 seeds: intervals;
#               the pretrained digits networks ship in unlearnbench/pretrained/)
#   make test   same set-up, then the test suite (offline)
VENV   ?= .venv
PYTHON ?= python3
UB      = $(VENV)/bin/unlearnbench
export HF_HUB_OFFLINE = 1
export RAY_USAGE_STATS_ENABLED = 0
export PIP_DISABLE_PIP_VERSION_CHECK = 1

.PHONY: run test test-all gmm leaderboard bench clean

$(VENV)/.installed: pyproject.toml
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q -e '.[test]'
	@touch $@

run: $(VENV)/.installed
	$(UB) pretrain --task digits
	$(UB) run --task digits-concept --methods rkl,esd --grid eps --seeds 0,1 --out runs/digits-concept-$$(date +%Y%m%d-%H%M%S)
	$(UB) run --task digits-data --methods fkl,siss --grid eps --seeds 0,1 --out runs/digits-data-$$(date +%Y%m%d-%H%M%S)

test: $(VENV)/.installed
	$(VENV)/bin/pytest -m "not slow"

test-all: $(VENV)/.installed
	$(VENV)/bin/pytest

gmm: $(VENV)/.installed
	$(UB) run --task gmm-concept --methods all --grid eps --seeds 0,1,2
	$(UB) run --task gmm-data --methods all --grid eps --seeds 0,1,2

leaderboard: $(VENV)/.installed
	$(UB) leaderboard --runs leaderboards/records --out leaderboards

bench: $(VENV)/.installed
	$(VENV)/bin/python scripts/bench_gmm_sweep.py

clean:
	rm -rf build dist *.egg-info .pytest_cache
