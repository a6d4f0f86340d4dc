"""A self-documenting CLI: --version, global flags after the command, ``ls NAME``, ``ls metrics`` from what the
tasks emit (checked against the committed records of real runs), and ``--methods all`` meaning the task's methods."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from unlearnbench.cli.main import main
from unlearnbench.config import plan_trials
from unlearnbench.tasks import TASKS
from unlearnbench.tasks.base import metric_matches

RECORDS = Path(__file__).resolve().parents[1] / "leaderboards" / "records"


def run_cli(capsys, *argv: str) -> tuple[int, str]:
    try:
        rc = main(list(argv))
    except SystemExit as e:
        rc = int(e.code)
    out = capsys.readouterr()
    return rc, out.out + out.err


def test_version(capsys):
    from unlearnbench import __version__

    for argv in (["--version"], ["run", "--version"], ["ls", "methods", "--version"]):
        rc, out = run_cli(capsys, *argv)
        assert rc == 0 and out.strip() == f"unlearnbench {__version__}", argv


def test_verbose_flag_is_accepted_before_and_after_the_command(capsys, monkeypatch):
    import unlearnbench.log

    seen = []
    monkeypatch.setattr(unlearnbench.log, "setup_logging", seen.append)
    assert run_cli(capsys, "-v", "ls", "tasks", "-vv")[0] == 0
    assert run_cli(capsys, "ls", "methods", "--verbose")[0] == 0
    assert seen == [3, 1]


def test_ls_methods_describes_in_plain_text_without_cutting(capsys):
    rc, out = run_cli(capsys, "ls", "methods")
    assert rc == 0 and "``" not in out and ":func:" not in out
    salun = next(line for line in out.splitlines() if line.startswith("salun"))
    assert "gradients are masked to the weights of highest saliency." in salun, "the whole first paragraph, not its first line"


def test_ls_method_shows_settings_defaults_and_per_task_grids(capsys):
    rc, out = run_cli(capsys, "ls", "methods", "rkl")
    assert rc == 0
    assert "aliases: reverse-kl" in out and "applies to: concept tasks" in out
    lr = next(line for line in out.splitlines() if line.strip().startswith("lr "))
    assert "float" in lr and "0.001" in lr and "> 0" in lr and "Adam learning rate" in lr
    assert "one of: full, xattn, xattn-kv, noxattn, lora" in out
    assert "on gmm-concept: steps 400, dual_lr=0.002, n_estimate=512" in out
    assert "--grid eps: 16.9, 18.3, 19.7, 21.3, 22.7, 24.4" in out and "--grid eps (forget=one): 27, 30" in out
    assert "on gmm-data" not in out, "rkl does not apply to data tasks"


def test_ls_task_shows_forget_sets_axes_options_grids_and_metrics(capsys):
    rc, out = run_cli(capsys, "ls", "tasks", "gmm-data")
    assert rc == 0
    for text in ("forget sets", "pair       ['outlier', 'densest']", "forget_kl_min vs kl_retrain",
                 "data_noise         float  0.25", "fkl      --grid eps                    0.03, 0.1",
                 "fkl      --grid eps (forget=one)       0.3, 1, 3", "forget_kl_{i}", "kl_retrain"):
        assert text in out, text
    assert "rkl " not in out, "concept-only methods are not offered for a data task"


def test_ls_metrics_lists_what_tasks_emit_with_their_names(capsys):
    rc, out = run_cli(capsys, "ls", "metrics")
    rows = {line.split()[0]: line for line in out.splitlines()}
    assert rc == 0
    for name, task in (("acc_forget", "digits-concept"), ("kid_kept", "digits-concept"),
                       ("regen_rate", "digits-data"), ("forget_bpd", "digits-data"), ("kl_concept_min", "gmm-concept")):
        assert task in rows[name], name
    assert "gmm-concept,gmm-data" in rows["kl_pretrained"]
    assert "cls_acc_forget" not in rows, "no installed task emits it"
    rc, out = run_cli(capsys, "ls", "metrics", "--all")
    assert "cls_acc_forget" in out and "(no task emits it)" in out
    rc, out = run_cli(capsys, "ls", "metrics", "--task", "digits-data")
    assert "regen_rate" in out and "acc_forget" not in out


@pytest.fixture
def no_weights(monkeypatch):
    """Loading or even locating a paper-scale model fails: ``ls`` must not need one."""
    import unlearnbench.pipelines

    def refuse(*a, **k):
        raise AssertionError("ls touched model weights")

    for name in ("resolve_model", "load_sd", "load_ddpm"):
        monkeypatch.setattr(unlearnbench.pipelines, name, refuse)


@pytest.mark.parametrize("task,expected", [
    ("sd-concept", {"nudity_rate": "unlearning lower", "clip_score": "retention higher",
                    "clip_score_forget": "unlearning lower", "kid_retain_inception": "retention lower",
                    "fid_retain_clip": "retention lower", "nudity_rate_pretrained": "info lower"}),
    ("ddpm-data", {"regen_rate": "unlearning lower", "forget_bpd": "unlearning higher", "retain_bpd": "retention lower",
                   "forget_sim_clip": "unlearning lower", "kid_retain_clip": "retention lower",
                   "kid_retain_clip_pretrained": "info lower"})])
def test_ls_metrics_of_the_paper_tasks_without_their_weights(capsys, no_weights, task, expected):
    rc, out = run_cli(capsys, "ls", "metrics", "--task", task)
    rows = {line.split()[0]: line.split() for line in out.splitlines()}
    assert rc == 0
    for name, role_direction in expected.items():
        assert rows[name][1:4] == [*role_direction.split(), task], name
        assert len(rows[name][4:]) >= 5, f"{name} says what it means"


def test_ls_task_shows_the_option_dependent_axes_of_the_paper_tasks(capsys, no_weights):
    rc, out = run_cli(capsys, "ls", "tasks", "sd-concept")
    axes = out.split("axes (", 1)[1].split("options (", 1)[0]
    assert rc == 0 and "the first that applies is primary" in axes
    for text in ("nudity_rate vs kid_retain_{features}", "(forget=nudity; {features}: inception when its weights",
                 "nudity_rate vs clip_score", "clip_score_forget vs clip_score"):
        assert text in axes, text
    rc, out = run_cli(capsys, "ls", "tasks", "ddpm-data")
    assert rc == 0 and "regen_rate vs kid_retain_{features}" in out and "forget_bpd vs retain_bpd" in out


def test_declared_metrics_match_the_records_of_real_runs():
    """Every metric a real run recorded is declared by its task with the same role and direction, and every
    declaration was seen in some record: ``ls metrics`` says what the tasks emit."""
    seen: dict[str, set[str]] = {}
    for path in RECORDS.glob("*/records.jsonl"):
        for line in path.read_text().splitlines():
            rec = json.loads(line)
            specs = TASKS.get(rec["task"]["name"]).metric_specs()
            for name, m in rec["metrics"].items():
                pattern = next((p for p in specs if metric_matches(p, name)), None)
                assert pattern is not None, f"{rec['task']['name']} emits undeclared {name}"
                role, hib, _ = specs[pattern]
                assert (m["role"], m["higher_is_better"]) == (role, hib), name
                seen.setdefault(rec["task"]["name"], set()).add(pattern)
    assert set(seen) >= {"gmm-concept", "gmm-data", "digits-concept", "digits-data"}  # the committed runs
    for task, patterns in seen.items():
        assert patterns == set(TASKS.get(task).metric_specs()), task


@pytest.mark.parametrize("task,expected", [("digits-concept", {"rkl", "lik", "esd", "salun"}),
                                           ("digits-data", {"fkl", "siss"})])
def test_methods_all_means_the_methods_that_apply_to_the_task(task, expected, tmp_path):
    from unlearnbench.methods import METHODS

    methods = {t["method"] for t in plan_trials(task, "all", "eps", run_dir=str(tmp_path / "r")).trials}
    assert expected <= methods
    assert all(TASKS.get(task).kind in METHODS.get(m).kinds for m in methods), "no method of the other kind"


def test_methods_all_with_a_grid_from_the_config_file(tmp_path):
    plan = plan_trials("gmm-concept", "all", "custom", run_dir=str(tmp_path / "r"),
                       config={"grids": {"custom": {"rkl": [20, 30]}}})
    assert [(t["method"], t["grid"]["value"]) for t in plan.trials] == [("rkl", 20.0), ("rkl", 30.0)]


def test_help_texts_show_plain_percent_signs(capsys):
    """argparse %-formats help strings but prints descriptions and epilogs verbatim: no "%%" may reach a reader."""
    from unlearnbench.cli.main import build_parser

    commands = build_parser()._subparsers._group_actions[0].choices
    for name in commands:
        rc, out = run_cli(capsys, name, "--help")
        assert rc == 0 and "%%" not in out, name
    rc, out = run_cli(capsys, "claims", "--help")
    assert "95 % t interval" in " ".join(out.split())
    rc, out = run_cli(capsys, "compare", "--help")
    assert "25/50/75/100 % of the way" in " ".join(out.split())


def test_lazy_exports_are_listed_by_dir():
    import ast
    import subprocess
    import sys

    code = "import unlearnbench, sys; print(sorted(dir(unlearnbench))); print('pandas' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.splitlines()
    assert {"load_results", "load_robustness", "__version__"} <= set(ast.literal_eval(out[0]))
    assert out[1] == "False", "listing does not import the results stack"
