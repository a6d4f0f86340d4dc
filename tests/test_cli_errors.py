"""Bad input never gives a traceback: each case is refused with exit status 2 and one ``error:`` message that names the
value and what would be valid, before anything is written (no run directory, no files in the working directory)."""
from __future__ import annotations

import pytest

from unlearnbench.cli.main import main

RUN = ["run", "--task", "gmm-concept", "--methods", "rkl"]
FILES = {  # written into the test's directory before each case; {tmp} in arguments points there
    "afile": "not a directory\n",
    "c_list.yaml": "methods: [1, 2]\n",
    "c_int.yaml": "methods: {rkl: 5}\n",
    "c_section.yaml": "method: {rkl: {lr: 1e-4}}\n",
    "c_broken.yaml": "methods: {rkl: [1, 2\n",
    "c_grids.yaml": "grids: {eps: {rkl: [20, oops]}}\n",
    "c_task.yaml": "task: [forget, one]\n",
    "c_top.yaml": "[1, 2]\n",
    "g_neg.yaml": "values: {rkl: [-1]}\n",
    "g_params.yaml": "values: {rkl: [20]}\nparams: {rkll: eps}\n",
    "c_gridname.yaml": "grids: {eps: {rkll: [20, 30]}}\n",
    "badrun/args.json": "{not json\n",
    "g_escape.yaml": "grid: ../../../../escape\nvalues: {rkl: [20]}\n",
    "g_slash.yaml": "grid: a/b\nvalues: {rkl: [20]}\n",
    "c_gridspace.yaml": "grids: {'my grid': {rkl: [20]}}\n",
    "c_big.yaml": "# " + "x" * (1 << 20) + "\n",
    "g_many.yaml": "values: {rkl: [" + ", ".join(str(20 + i / 1000) for i in range(10_001)) + "]}\n",
    "c_aliases.yaml": "task:\n  T:\n  - &a [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]\n" + "".join(  # 10^8 values in 300 bytes
        f"  - &{n} [{', '.join([f'*{p}'] * 10)}]\n" for p, n in zip("abcdefg", "bcdefgh")),
    "c_forget.yaml": "task: {forget: [1]}\n",
}

CASES = [  # (arguments, substrings the message must hold)
    (["run", "--task", "gmm-concept", "--methods", "rkll"], ["unknown method 'rkll'", "did you mean 'rkl'",
                                                            "Valid methods:", "esd, fkl"]),
    (["run", "--task", "gmm-concep", "--methods", "rkl"], ["unknown task 'gmm-concep'", "Valid tasks:", "digits-concept, digits-data, gmm-concept"]),
    (["run", "--task", "gmm-concept", "--methods", "fkl"], ["method 'fkl' does not apply to concept task",
                                                           "methods for it: esd, lik, lik-is, rkl, rkl-fixed, rkl-is"]),
    (["run", "--task", "gmm-concept", "--methods", ","], ["no method given; valid: ", "esd"]),
    ([*RUN, "--grid", "nogrid"], ["no grid 'nogrid'; valid: eps, smoke"]),
    (["run", "--task", "gmm-concept", "--methods", "all", "--grid", "nogrid"],
     ["grid 'nogrid'", "valid grids: eps, smoke"]),
    ([*RUN, "--seeds", "a,b"], ["--seeds 'a,b'", "comma-separated integers, e.g. 0,1,2"]),
    ([*RUN, "--set", "bogus"], ["--set 'bogus'", "expected KEY=VALUE"]),
    ([*RUN, "--set", "method.rkl.lr=1"],
     ["--set 'method.rkl.lr=1'", "keys are methods.<method>.<field> or task.<option>"]),
    ([*RUN, "--set", "methods.rkl.lrr=1"], ["unknown setting(s) lrr", "valid: batch_size, converge_tol, delta"]),
    ([*RUN, "--set", "methods.nosuch.lr=1"], ["unknown method 'nosuch'", "Valid methods:"]),
    ([*RUN, "--set", "methods.rkl.steps=1.5"], ["steps=1.5 is not an integer", "valid: a whole number"]),
    ([*RUN, "--set", "methods.rkl.batch_size=2.7"], ["batch_size=2.7 is not an integer", "valid: a whole number"]),
    ([*RUN, "--set", "methods.rkl.lr=true"], ["lr=True is not a number", "valid: a finite number"]),
    ([*RUN, "--set", "methods.rkl.lr=.inf"], ["lr=inf is not finite", "valid: a finite number"]),
    ([*RUN, "--set", "methods.rkl.lr=0"], ["lr=0.0 is out of range", "valid: a number > 0"]),
    ([*RUN, "--set", "methods.rkl.lr="], ["lr=None is not allowed", "valid: a finite number > 0"]),
    ([*RUN, "--set", "methods.rkl.n_estimate=0"], ["n_estimate=0 is out of range", "valid: an integer > 0"]),
    ([*RUN, "--set", "methods.rkl.dual_warmup=-3"], ["dual_warmup", "must be >= 0", "got 0.05, -3"]),
    ([*RUN, "--set", "methods.rkl.trainable=foo"], ["trainable='foo' is not a valid choice",
                                                   "valid: full, xattn, xattn-kv, noxattn, lora"]),
    ([*RUN, "--set", "methods.rkl.train_null=maybe"], ["train_null='maybe' is not a boolean", "valid: true or false"]),
    ([*RUN, "--set", "methods.esd.grad_clip=-1"], ["grad_clip=-1.0 is out of range", "valid: a finite number >= 0"]),
    ([*RUN, "--set", "task.eval_samples=abc"], ["task.eval_samples='abc' is not an integer", "valid: a whole number"]),
    ([*RUN, "--set", "task.eval_samples=-5"], ["task.eval_samples=-5 is out of range", "valid: an integer > 0"]),
    ([*RUN, "--set", "task.data_noise=0.1"], ["unknown option(s) data_noise", "valid: forget, T, depth"]),
    ([*RUN, "--set", "task.forget=three"], ["unknown forget set 'three'", "valid: pair, one"]),
    (["run", "--task", "digits-concept", "--methods", "rkl", "--set", "task.n_eval=1e9.5"],
     ["task.n_eval='1e9.5' is not an integer", "valid: a whole number"]),
    ([*RUN, "--config", "{tmp}/c_list.yaml"],
     ["section 'methods' must be a mapping, got [1, 2]", "methods: {rkl: {lr"]),
    ([*RUN, "--config", "{tmp}/c_int.yaml"],
     ["methods.rkl must be a mapping field -> value, got 5", "{rkl: {lr: 1e-4}}"]),
    ([*RUN, "--config", "{tmp}/c_section.yaml"], ["unknown section(s) method", "valid: methods, task, grids"]),
    ([*RUN, "--config", "{tmp}/c_broken.yaml"], ["c_broken.yaml' is not valid YAML"]),
    ([*RUN, "--config", "{tmp}/c_grids.yaml"], ["grids.eps.rkl: value 'oops'", "not a finite number"]),
    ([*RUN, "--config", "{tmp}/c_task.yaml"], ["section 'task' must be a mapping, got ['forget', 'one']",
                                              "task: {forget: one}"]),
    ([*RUN, "--config", "{tmp}/c_top.yaml"], ["config file '", "must hold a mapping (sections methods, task, grids)"]),
    ([*RUN, "--config", "{tmp}/missing.yaml"], ["missing.yaml' does not exist"]),
    ([*RUN, "--config", "{tmp}"], ["cannot be read as text", "give a YAML file"]),
    ([*RUN, "--grid", "{tmp}/g_neg.yaml"], ["rkl with eps=-1: threshold b=-1.0 is impossible"]),
    ([*RUN, "--grid", "{tmp}/g_params.yaml"], ["params: unknown method 'rkll'", "Valid methods:"]),
    ([*RUN, "--grid", "{tmp}/g_missing.yaml"], ["grid file '", "g_missing.yaml' does not exist"]),
    ([*RUN, "--grid", "{tmp}/c_top.yaml"], ["grid file '", "must hold a mapping (values: {method: [numbers]})"]),
    ([*RUN, "--out", "{tmp}/afile"], ["--out '", "afile' is an existing file", "give a directory"]),
    ([*RUN, "--out", "{tmp}/afile/sub"], ["afile' is a file", "give a path under a writable directory"]),
    ([*RUN, "--out", "/proc/unlearnbench-test"], ["cannot create a directory in '/proc'",
                                                  "give a path under a writable directory"]),
    ([*RUN, "--num-cpus", "0"], ["--num-cpus 0", "a whole number >= 1"]),
    ([*RUN, "--max-concurrent", "-2"], ["--max-concurrent -2", "a whole number >= 1"]),
    ([*RUN, "--steps", "-3"], ["--steps -3", "a whole number >= 0"]),
    ([*RUN, "--executor", "bogus"], ["invalid choice: 'bogus'", "'ray', 'serial'"]),
    ([*RUN, "--steps", "abc"], ["--steps: invalid int value: 'abc'"]),
    (["run", "--resume", "{tmp}/norun"], ["--resume", "no args.json there", "is it a run directory?"]),
    (["run", "--resume", "{tmp}/badrun"], ["args.json cannot be read", "is it a run directory?"]),
    ([*RUN, "--cache-dir", "{tmp}/afile"], ["--cache-dir '", "afile' is an existing file", "give a directory"]),
    ([*RUN, "--config", "{tmp}/c_gridname.yaml"], ["config grids.eps: unknown method 'rkll'", "Valid methods:"]),
    (["validate", "--task", "gmm-data", "--methods", "fkl", "--set", "task.T=0"], ["task.T=0 is out of range",
                                                                                  "valid: an integer > 0"]),
    (["ls", "methods", "nosuch"], ["unknown method 'nosuch'", "Valid methods:"]),
    (["ls", "tasks", "gmm"], ["unknown task 'gmm'", "Valid tasks:"]),
    (["ls", "metrics", "kid"], ["ls metrics takes no NAME (got 'kid')", "NAME works with: methods, tasks"]),
    (["ls", "nothing"], ["invalid choice: 'nothing'", "'methods', 'metrics', 'tasks', 'grids'"]),
    (["pretrain", "--task", "gmm-concep"], ["unknown task 'gmm-concep'", "Valid tasks:"]),
    # names become paths and Ray trial names: one pattern, checked before any work
    ([*RUN, "--grid", "{tmp}/g_escape.yaml", "--save-models", "--executor", "serial"],
     ["grid name '../../../../escape' is not a valid name", "letters, digits, '_', '.' or '-'"]),
    ([*RUN, "--grid", "{tmp}/g_slash.yaml"], ["grid name 'a/b' is not a valid name"]),
    ([*RUN, "--config", "{tmp}/c_gridspace.yaml", "--grid", "my grid"], ["grid name 'my grid' is not a valid name"]),
    ([*RUN, "--out", "{tmp}/run$x"], ["run name (the last part of the run directory) 'run$x' is not a valid name"]),
    # every size is bounded: files are read only when regular and at most 1 MiB; counts have declared maxima
    ([*RUN, "--config", "/dev/zero"], ["config file '/dev/zero' is not a regular file"]),
    ([*RUN, "--grid", "/dev/zero"], ["grid file '/dev/zero' is not a regular file"]),
    ([*RUN, "--config", "{tmp}/c_big.yaml"], ["c_big.yaml' is larger than 1048576 bytes"]),
    ([*RUN, "--grid", "{tmp}/g_many.yaml"], ["10001 trials", "at most 10000 per sweep"]),
    ([*RUN, "--config", "{tmp}/c_aliases.yaml"], ["c_aliases.yaml' holds more than 100000 values (YAML aliases"]),
    ([*RUN, "--set", "task.T=[&a [1, 1, 1, 1, 1, 1, 1, 1, 1, 1], &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a], "
      "&c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b], &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c], "
      "&e [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d], [*e, *e, *e, *e, *e, *e, *e, *e, *e, *e]]"],
     ["holds more than 100000 values"]),
    ([*RUN, "--config", "{tmp}/c_forget.yaml"], ["forget=[1] is not a forget set name; valid: pair, one"]),
    ([*RUN, "--steps", "1000000001"], ["--steps 1000000001: must be a whole number from 0 to 1000000"]),
    ([*RUN, "--seeds", "0,-1"], ["seed -1 is out of range", "0 to 2147483647"]),
    ([*RUN, "--seeds", "0-1100"], ["expected comma-separated integers"]),
    ([*RUN, "--seeds", ",".join(map(str, range(1001)))], ["1001 seeds; at most 1000"]),
    ([*RUN, "--set", "methods.rkl.batch_size=1e9"], ["batch_size=1000000000 is out of range",
                                                     "valid: an integer > 0 and <= 1000000"]),
    ([*RUN, "--set", "task.eval_samples=100000000"], ["task.eval_samples=100000000 is out of range", "<= 1000000"]),
    # tracebacks seen before: each is one error: line
    (["pretrain", "--task", "sd-concept"], ["pretrain --task sd-concept: this task unlearns from weights you give",
                                            "pretrain builds the models of digits-concept"]),
    (["pretrain", "--task", "gmm-concept", "--cache-dir", "/proc/unlearnbench-test"],
     ["--cache-dir '/proc/unlearnbench-test': cannot create a directory in '/proc'"]),
    (["leaderboard", "--runs", "{tmp}/badrun", "--out", "/proc/unlearnbench-test"],
     ["--out '/proc/unlearnbench-test': cannot create a directory in '/proc'", "give a path under a writable"]),
    # a leaderboard writes only into a new or empty folder or one it marked before
    (["leaderboard", "--runs", "{tmp}/badrun", "--out", "/"], ["--out / already holds files that `unlearnbench "
                                                               "leaderboard` did not write", "give a new or empty"]),
    (["leaderboard", "--runs", "{tmp}/badrun", "--out", "{tmp}"], ["already holds files", "(afile, badrun, "]),
    (["leaderboard", "--runs", "{tmp}/badrun", "--out", "{tmp}/afile"], ["afile is an existing file"]),
]


def _run(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as e:  # argparse refuses with status 2 after printing usage and the message
        return int(e.code)


@pytest.mark.parametrize("args,expected", CASES, ids=[" ".join(a[1:])[:60] for a, _ in CASES])
def test_bad_input_is_refused_with_a_message_and_nothing_written(args, expected, tmp_path, monkeypatch, capsys):
    for name, text in FILES.items():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text(text)
    monkeypatch.chdir(tmp_path)
    argv = [a.replace("{tmp}", str(tmp_path)) for a in args]
    if argv[0] == "run" and "--out" not in argv and "--resume" not in argv:
        argv += ["--out", str(tmp_path / "out")]
    rc = _run(argv)
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "Traceback" not in err and "error:" in err
    for text in expected:
        assert text in err, f"{text!r} not in {err!r}"
    assert {p.name for p in tmp_path.iterdir()} == {name.split("/")[0] for name in FILES}, "nothing may be written"
    assert [p.name for p in (tmp_path / "badrun").iterdir()] == ["args.json"]


def test_a_broken_plugin_is_named_not_a_traceback(capsys, tmp_path):
    from unlearnbench.methods import METHODS

    METHODS.register_lazy("zz-broken", "no_such_plugin_module:Method", origin="plugin zz")
    try:
        assert _run(["ls", "methods"]) == 0
        assert "zz-broken (failed to load: method 'zz-broken' points at 'no_such_plugin_module:Method'" in \
            capsys.readouterr().out
        assert _run(["run", "--task", "gmm-concept", "--methods", "zz-broken", "--out", str(tmp_path / "o")]) == 2
        assert "error: method 'zz-broken' points at 'no_such_plugin_module:Method', which failed to load" in \
            capsys.readouterr().err
        argv = ["run", "--task", "gmm-concept", "--methods", "all", "--dry-run", "--out", str(tmp_path / "o")]
        assert _run(argv) == 0
        assert not (tmp_path / "o").exists()
    finally:
        METHODS._items.pop("zz-broken")
        METHODS._origin.pop("zz-broken")


def test_a_fifo_config_or_grid_is_refused_without_waiting_for_a_writer(tmp_path, capsys):
    import os

    fifo = tmp_path / "pipe.yaml"
    os.mkfifo(fifo)
    for flag in ("--config", "--grid"):
        assert _run([*RUN, flag, str(fifo), "--out", str(tmp_path / "out")]) == 2
        assert "is not a regular file (a device, FIFO or socket)" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["pipe.yaml"]


def test_the_bad_inputs_script_answers_every_case_without_a_traceback():
    """scripts/bad_inputs.py shows the answer to each case of the battery and to each planted file."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "scripts" / "bad_inputs.py"
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=600,
                       env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 0 and "Traceback" not in r.stdout + r.stderr, r.stderr[-2000:]
    part1, part2 = r.stdout.split("\nFiles from others")
    answers = [ln for ln in part1.splitlines() if ln.startswith("    exit ")]
    assert len(answers) == len(CASES) and all(ln.startswith("    exit 2: ") and "error: " in ln for ln in answers)
    for answer in ("code ran: False", "samples copied: 0", "exit 2: error: --resume", "is not a readable image",
                   "is not a readable safetensors file", "status diverged: diverged in training"):
        assert answer in part2, answer
