"""Records you can trust: whole-line appends after a torn tail, unreadable lines reported with their line numbers,
a failed write (full file system) loses nothing, a refused run changes nothing, a second writer is refused."""
from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import cli, install_fake_plugin, run_main
from unlearnbench.records import REJECTED, RecordWriteError, append_record, read_records
from unlearnbench.rundir import LOCK, RunDirLock


def rec(i: int, **extra) -> dict:
    return {"task": {"name": "toy"}, "trial_id": f"t{i}", "status": "ok", "method": "esd", "seed": 0, **extra}


@pytest.fixture(scope="module")
def plugin(tmp_path_factory):
    return install_fake_plugin(tmp_path_factory.mktemp("site"))


def snapshot(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def test_append_after_torn_tail_keeps_every_record(tmp_path):
    append_record(tmp_path, rec(0))
    with open(tmp_path / "records.jsonl", "a") as f:
        f.write('{"task": {"name": "toy"}, "trial_id": "t1", "sta')  # a writer killed mid-line
    append_record(tmp_path, rec(2))
    assert [r["trial_id"] for r in read_records([tmp_path])] == ["t0", "t2"]
    assert (tmp_path / "records.jsonl").read_bytes().endswith(b"\n")
    rejected = (tmp_path / REJECTED).read_text()
    assert "torn line 2 of records.jsonl" in rejected and '"trial_id": "t1", "sta' in rejected


def test_unreadable_lines_are_reported_with_line_numbers(tmp_path, caplog):
    path = tmp_path / "records.jsonl"
    lines = [json.dumps(rec(0)), "not json", json.dumps([1, 2]), json.dumps({"trial_id": "x", "status": "ok"}),
             json.dumps(rec(4, extra_field={"any": 1}))]
    path.write_text("\n".join(lines) + "\n")
    problems: list[str] = []
    got = read_records([tmp_path], problems)
    assert [r["trial_id"] for r in got] == ["t0", "t4"], "records may carry any further fields"
    assert problems[0].endswith("records.jsonl:2: skipped, not JSON (Expecting value)")
    assert problems[1].endswith(":3: skipped, a JSON list, not an object")
    assert problems[2].endswith(":4: skipped, missing task.name, method, seed")
    assert "records.jsonl:2" in caplog.text
    assert path.read_text() == "\n".join(lines) + "\n", "reading never changes the file"


def _limit_file_size(limit: int):
    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG, as on a full disk
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def test_failed_write_leaves_the_file_as_it_was(tmp_path):
    append_record(tmp_path, rec(0))
    size = (tmp_path / "records.jsonl").stat().st_size
    code = ("import sys; from unlearnbench.records import append_record, RecordWriteError\n"
            "try:\n    append_record(sys.argv[1], {'task': {'name': 'toy'}, 'trial_id': 'big', 'status': 'ok',"
            " 'method': 'esd', 'seed': 0, 'pad': 'x' * 5000})\n"
            "except RecordWriteError as e:\n    print(e); sys.exit(3)\n")
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True,
                       preexec_fn=_limit_file_size(size + 1000))
    assert r.returncode == 3, r.stderr
    assert "could not write the record of trial 'big'" in r.stdout and "too large" in r.stdout
    assert (tmp_path / "records.jsonl").stat().st_size == size, "no partial line left behind"
    assert RecordWriteError.__mro__[1] is RuntimeError


def test_full_disk_stops_the_sweep_and_resume_keeps_everything(plugin, toy, tmp_path, capsys):
    out = tmp_path / "run"
    base = ["run", "--task", "toy", "--methods", "esd,mymethod", "--grid", "eps", "--executor", "serial",
            "--no-leaderboard"]
    probe = tmp_path / "probe"
    assert run_main(capsys, [*base, "--out", str(probe)]).returncode == 0
    sizes = [len(line) + 1 for line in (probe / "records.jsonl").read_text().splitlines()]
    limit = sizes[0] + sizes[1] + sizes[2] // 2  # room for two records, not three
    env = dict(HF_HUB_OFFLINE="1", RAY_USAGE_STATS_ENABLED="0", PYTHONPATH=str(plugin))
    r = subprocess.run([sys.executable, "-m", "unlearnbench", *base, "--out", str(out)], capture_output=True,
                       text=True, env={**os.environ, **env}, preexec_fn=_limit_file_size(limit))
    assert r.returncode == 2 and "error: could not write the record of trial" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    kept = read_records([out])
    assert len(kept) == 2 and (out / "records.jsonl").read_bytes().endswith(b"\n")
    r2 = run_main(capsys, ["run", "--resume", str(out), "--executor", "serial", "--no-leaderboard"])
    assert r2.returncode == 0, r2.stderr
    after = read_records([out])
    assert len(after) == 4 and after[:2] == kept


def test_torn_tail_then_resume_keeps_every_record(toy, tmp_path, capsys):
    out = tmp_path / "torn"
    base = ["run", "--task", "toy", "--methods", "esd", "--grid", "eps", "--executor", "serial", "--no-leaderboard"]
    assert run_main(capsys, [*base, "--out", str(out)]).returncode == 0
    path = out / "records.jsonl"
    first, second = path.read_text().splitlines()
    # valid JSON that is not a record, then the second trial's line torn by a killed writer
    path.write_text(first + '\n{"note": "not a record"}\n' + second[: len(second) // 2])
    r = run_main(capsys, ["run", "--resume", str(out), "--executor", "serial", "--no-leaderboard"])
    assert r.returncode == 0, r.stderr
    assert "1 trial(s) already done, 1 to run" in r.stdout
    assert "records.jsonl:2: skipped, missing task.name, trial_id, status, method, seed" in r.stderr
    assert "records.jsonl:3: skipped, not JSON" in r.stderr and "records.jsonl: torn line 3 (" in r.stderr
    got = read_records([out])
    assert len(got) == 2 and {g["status"] for g in got} == {"ok"} and json.loads(first) == {
        k: v for k, v in got[0].items() if k != "_dir"}
    assert second[: len(second) // 2] in (out / REJECTED).read_text()


def test_refused_run_leaves_the_directory_byte_identical(toy, tmp_path, capsys):
    out = tmp_path / "mine"
    base = ["run", "--task", "toy", "--methods", "esd", "--grid", "eps", "--executor", "serial", "--no-leaderboard",
            "--out", str(out)]
    assert run_main(capsys, base).returncode == 0
    before = snapshot(out)
    r = run_main(capsys, [*base, "--set", "methods.esd.lr=0.5", "--seeds", "3"])
    assert r.returncode == 2 and "already holds a sweep" in r.stderr and "--resume" in r.stderr
    assert snapshot(out) == before
    assert not (out / LOCK).exists(), "the lock leaves with its owner"


def test_second_writer_is_refused(plugin, toy, tmp_path, capsys):
    out = tmp_path / "busy"
    base = ["run", "--task", "toy", "--methods", "esd", "--grid", "eps", "--executor", "serial", "--no-leaderboard"]
    assert run_main(capsys, [*base, "--out", str(out)]).returncode == 0
    before = snapshot(out)
    with RunDirLock(out) as lock:  # this process owns the run directory
        r = cli(["run", "--resume", str(out), "--executor", "serial", "--no-leaderboard"], plugin_path=plugin)
        assert r.returncode == 2, r.stdout + r.stderr
        assert f"is being written by pid {os.getpid()} on host" in r.stderr
        assert lock.fd is not None
    assert {k: v for k, v in snapshot(out).items() if k != LOCK} == before
    assert not (out / LOCK).exists()
    RunDirLock(out).acquire().release()  # free again once released


def test_artifact_paths_resolve_only_inside_the_run_folder(tmp_path, caplog):
    from unlearnbench.records import artifact_path

    run = tmp_path / "run"
    (run / "artifacts" / "t").mkdir(parents=True)
    (run / "out.png").symlink_to(tmp_path)
    rec = {"trial_id": "t", "_dir": str(run)}
    good = {"samples": "artifacts/t", "model": "./artifacts/t"}
    for key, value in good.items():
        assert artifact_path({**rec, "artifacts": {key: value}}, key) == run / "artifacts" / "t"
    assert artifact_path({**rec, "artifacts": {}}, "samples") is None and caplog.text == ""
    bad = ["/etc/passwd", "../x", "artifacts/../../x", "out.png", 3, ["a"], "a\0b"]
    for value in bad:
        caplog.clear()
        assert artifact_path({**rec, "artifacts": {"samples": value}}, "samples") is None, value
        assert f"record 't' in {run}: artifacts.samples {value!r}" in caplog.text and "skipped" in caplog.text
    assert artifact_path({**rec, "artifacts": "nope"}, "samples") is None


def test_records_whose_names_could_become_paths_or_markup_are_skipped_by_name(tmp_path, caplog):
    path = tmp_path / "records.jsonl"
    bad = [rec(1, method="$\\alpha$"), rec(2, trial_id="../../x"), rec(3, task={"name": "a/b"}), rec(4, method=7)]
    path.write_text("".join(json.dumps(r) + "\n" for r in [rec(0), *bad]))
    problems: list[str] = []
    assert [r["trial_id"] for r in read_records([tmp_path], problems)] == ["t0"]
    assert [p.split("skipped, ")[1].split(" is not")[0] for p in problems] == [
        "method '$\\\\alpha$'", "trial_id '../../x'", "task.name 'a/b'", "method 7"]


@pytest.mark.parametrize("change,why", [
    ({"status": "weird"}, "status 'weird' is not one of ok, diverged, failed"),
    ({"seed": "zero"}, "seed 'zero' is not an integer"),
    ({"seed": True}, "seed True is not an integer"),
    ({"metrics": [1, 2]}, "metrics is a list, not an object"),
    ({"metrics": {"kid": "x"}}, "metrics.kid is a str, not an object"),
    ({"metrics": {"kid": {"value": "high"}}}, "metrics.kid.value 'high' is not a finite number"),
    ({"metrics": {"kid": {"value": 1.0, "n": "many"}}}, "metrics.kid.n 'many' is not a finite number"),
    ({"metrics": {"kid": {"value": float("inf")}}}, "metrics.kid.value inf is not a finite number"),
    ({"metrics": {"kid": {"value": 1.0, "higher_is_better": "yes"}}}, "higher_is_better true, false or null"),
    ({"train": "x"}, "train is a str, not an object"),
    ({"timing": "x"}, "timing is a str, not an object"),
    ({"timing": {"total_s": "x"}}, "timing.total_s 'x' is not a finite number"),
    ({"env": "x"}, "env is a str, not an object"),
    ({"grid": "eps"}, "grid is a str, not an object"),
    ({"grid": {"value": "big"}}, "grid.value 'big' is not a finite number"),
    ({"task": {"name": "toy", "options": [1]}}, "task.options is a list, not an object"),
    ({"task": {"name": "toy", "axes": [["a", "b", "c"]]}}, "task.axes"),
    ({"created_at": 5}, "created_at 5 is not a time stamp"),
])
def test_records_with_wrong_field_types_are_skipped_with_a_warning(tmp_path, caplog, change, why):
    """The results, leaderboard and claims read these fields: a record with another type is skipped by name (it
    used to end the leaderboard in a traceback), the others are read."""
    (tmp_path / "records.jsonl").write_text(json.dumps(rec(0)) + "\n" + json.dumps(rec(1, **change)) + "\n")
    problems: list[str] = []
    assert [r["trial_id"] for r in read_records([tmp_path], problems)] == ["t0"]
    assert len(problems) == 1 and ":2: skipped, " in problems[0] and why in problems[0], problems


def test_a_records_file_that_is_a_device_or_fifo_is_skipped_unread(tmp_path, caplog):
    import os

    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "records.jsonl").write_text(json.dumps(rec(0)) + "\n")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "records.jsonl").symlink_to("/dev/zero")
    (tmp_path / "c").mkdir()
    os.mkfifo(tmp_path / "c" / "records.jsonl")
    problems: list[str] = []
    assert [r["trial_id"] for r in read_records([tmp_path], problems)] == ["t0"]
    assert [p.split(str(tmp_path))[1] for p in problems] == [
        "/b/records.jsonl: skipped, not a regular file", "/c/records.jsonl: skipped, not a regular file"]
