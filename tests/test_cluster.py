"""Ray the Tune way and on a cluster: a killed worker is retried, Tune logger callbacks see flat metrics, a Ray head
started here (``ray start --head`` with token authentication) runs a sweep whose records the driver writes, and bad
resource flags or a dead address are refused up front."""
from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from helpers import cli, install_fake_plugin, run_main
from unlearnbench.cli.main import main
from unlearnbench.raytune import flat_metrics
from unlearnbench.records import read_records

TOY = ["run", "--task", "toy", "--grid", "eps", "--no-leaderboard"]


@pytest.fixture(scope="module")
def plugin(tmp_path_factory):
    return install_fake_plugin(tmp_path_factory.mktemp("site"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def processes() -> dict[int, tuple[int, int, str]]:
    """pid -> (parent pid, session id, command line) of every process we can read."""
    out = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text().rsplit(")", 1)[1].split()
                cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            out[int(d.name)] = (int(stat[1]), int(stat[3]), cmd)
    return out


def descendants(root: int) -> dict[int, str]:
    procs = processes()
    found, frontier = {}, {root}
    while frontier:
        frontier = {p for p, (ppid, _, _) in procs.items() if ppid in frontier and p not in found}
        found.update({p: procs[p][2] for p in frontier})
    return found


def tensorboard_tags(root: Path) -> set[str]:
    """Scalar tags of every TensorBoard event file under ``root`` (TFRecord framing, tensorboardX's protobuf)."""
    from tensorboardX.proto import event_pb2

    tags = set()
    for f in root.rglob("events.out.tfevents.*"):
        data = f.read_bytes()
        i = 0
        while i + 12 <= len(data):
            (n,) = struct.unpack("<Q", data[i:i + 8])
            ev = event_pb2.Event.FromString(data[i + 12:i + 12 + n])
            tags |= {v.tag for v in ev.summary.value}
            i += 12 + n + 4
    return tags


@pytest.mark.parametrize("flags,msg", [
    (["--cpus-per-trial", "0"], "--cpus-per-trial 0.0: must be a number > 0"),
    (["--cpus-per-trial", "-2"], "--cpus-per-trial -2.0: must be a number > 0"),
    (["--cpus-per-trial", "4096"], "--cpus-per-trial 4096: the local Ray instance has"),
    (["--gpus-per-trial", "4096"], "--gpus-per-trial 4096: this machine has"),
    (["--gpus-per-trial", "-1"], "--gpus-per-trial -1.0: must be a number >= 0"),
    (["--num-cpus", "0"], "--num-cpus 0: must be a whole number >= 1"),
    (["--tune-callback", "tensorbored"], "--tune-callback 'tensorbored': unknown; valid: tensorboard, mlflow, wandb"),
])
def test_bad_resource_flags_are_refused_before_any_work(tmp_path, capsys, flags, msg):
    out = tmp_path / "never"
    code = main(["run", "--task", "gmm-concept", "--methods", "rkl", "--out", str(out), *flags])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and msg in err, err
    assert not out.exists()


def test_missing_callback_package_is_named(tmp_path, capsys, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    code = main(["run", "--task", "gmm-concept", "--methods", "rkl", "--out", str(tmp_path / "x"),
                 "--tune-callback", "mlflow"])
    assert code == 2 and "--tune-callback mlflow needs the mlflow package" in capsys.readouterr().err


def test_address_where_no_cluster_listens_fails_fast(tmp_path, capsys):
    port = free_port()  # nothing listens there once the probe socket is closed
    out = tmp_path / "never"
    code = main(["run", "--task", "gmm-concept", "--methods", "rkl", "--out", str(out),
                 "--address", f"127.0.0.1:{port}"])
    err = capsys.readouterr().err
    assert code == 2 and f"--address 127.0.0.1:{port}: no Ray cluster answers at 127.0.0.1:{port}" in err, err
    assert "ray start --head" in err and not out.exists()
    assert main(["run", "--task", "gmm-concept", "--methods", "rkl", "--address", "nocolon"]) == 2
    assert "expected HOST:PORT" in capsys.readouterr().err


def test_flat_metrics_are_numbers_only():
    rec = {"status": "ok", "metrics": {"mass": {"value": 0.25}, "bad": {"value": None}, "inf": {"value": float("inf")}},
           "train": {"final_duals": [0.5, 1.0]}, "timing": {"total_s": 2.0}, "grid": {"value": 3}}
    assert flat_metrics(rec) == {"trial_ok": 1, "trial_diverged": 0, "metrics": {"mass": 0.25},
                                 "lambda": {"0": 0.5, "1": 1.0}, "trial_s": 2.0, "grid_value": 3.0}


def test_killed_worker_is_retried_then_ok_and_callbacks_see_metrics(toy, shared_ray, tmp_path, capsys):
    """On the test run's shared Ray (this process's children): a trial's worker killed mid-trial is retried."""
    out = tmp_path / "kill"
    found: dict[str, int] = {}

    def kill_the_trial_worker():
        deadline = time.time() + 180
        while time.time() < deadline:
            time.sleep(0.5)
            victim = next((p for p, cmd in descendants(os.getpid()).items()
                           if cmd.startswith("ray::ImplicitFunc.train")), None)
            if victim is not None:
                time.sleep(1.5)  # inside the trial (its evaluation sleeps 4 s)
                os.kill(victim, signal.SIGKILL)
                found["victim"] = victim
                return

    killer = threading.Thread(target=kill_the_trial_worker, daemon=True)
    killer.start()
    r = run_main(capsys, [*TOY, "--methods", "esd", "--set", "task.sleep=4", "--max-concurrent", "1", "--out", str(out),
                          "--tune-callback", "tensorboard"])
    killer.join(timeout=5)
    assert "victim" in found, "no trial worker seen"
    assert r.returncode == 0, r.stdout + r.stderr
    assert "worker lost" in r.stdout and "retrying (1/2)" in r.stdout, r.stdout
    recs = read_records([out])
    assert sorted(r["status"] for r in recs) == ["ok", "ok"] and len({r["trial_id"] for r in recs}) == 2
    assert found["victim"] not in {r["metrics"]["pid"]["value"] for r in recs}
    tags = tensorboard_tags(out / "ray_results")
    assert {"ray/tune/metrics/mass", "ray/tune/metrics/drift", "ray/tune/trial_ok"} <= tags, tags


def test_worker_that_always_dies_is_recorded_failed_with_its_error(toy, shared_ray, tmp_path, capsys):
    out = tmp_path / "dies"
    grid = tmp_path / "one.yaml"
    grid.write_text("values:\n  esd: [1.0]\n")
    r = run_main(capsys, ["run", "--task", "toy", "--grid", str(grid), "--no-leaderboard", "--methods", "esd", "--seeds",
                          "0,1", "--set", "task.die_seed=1", "--out", str(out)])
    assert r.returncode == 1, r.stdout + r.stderr
    assert r.stdout.count("retrying (1/2)") == 1 and r.stdout.count("retrying (2/2)") == 1, r.stdout
    recs = {x["trial_id"]: x for x in read_records([out])}
    assert sorted(x["status"] for x in recs.values()) == ["failed", "ok"], "the other trial finishes"
    for x in recs.values():
        if x["status"] == "failed":
            assert x["seed"] == 1 and x["error"].startswith("Ray trial error (after 3 attempt(s)):"), x["error"]
            assert "died" in x["traceback"] and "/tmp/" not in x["error"], x["traceback"]


@pytest.fixture
def ray_head(plugin):
    """A Ray head on a free port of 127.0.0.1 with token authentication (a token made here, not ~/.ray's), stopped
    at the end by killing the processes of the session it was started in."""
    tmp = Path(tempfile.mkdtemp(prefix="ubh-", dir="/tmp"))  # short: Ray's socket paths must stay < 108 chars
    (tmp / "token").write_text(secrets.token_hex(32))
    port = free_port()
    env = dict(os.environ, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(tmp / "token"), PYTHONPATH=str(plugin),
               RAY_USAGE_STATS_ENABLED="0", HF_HUB_OFFLINE="1")
    head = subprocess.Popen(
        [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", f"--port={port}",
         "--node-ip-address=127.0.0.1", "--num-cpus=2", f"--temp-dir={tmp / 'r'}", "--include-dashboard=false",
         "--disable-usage-stats", f"--dashboard-agent-listen-port={free_port()}",
         f"--metrics-export-port={free_port()}", "--block"],
        env=env, stdout=open(tmp / "head.log", "w"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield f"127.0.0.1:{port}", tmp / "token", tmp / "head.log"
    finally:
        ours = [p for p, (_, sid, _) in processes().items() if sid == head.pid]
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for p in ours:
                try:
                    os.kill(p, sig)
                except ProcessLookupError:
                    pass
            time.sleep(2)
        head.wait(timeout=30)
        shutil.rmtree(tmp, ignore_errors=True)


def test_cluster_sweep_with_token_auth(plugin, ray_head, toy, tmp_path, capsys):
    address, token, log = ray_head
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", int(address.rsplit(":", 1)[1])), timeout=1).close()
            break
        except OSError:
            time.sleep(0.5)
    env = {"RAY_AUTH_TOKEN_PATH": str(token)}  # RAY_AUTH_MODE unset: the driver turns token auth on itself
    base = [*TOY, "--methods", "esd,mymethod"]
    r = cli([*base, "--address", address, "--out", str(tmp_path / "cluster")], plugin_path=plugin, env_extra=env,
            timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr + log.read_text()[-3000:]
    assert "[4/4]" in r.stdout
    local = run_main(capsys, [*base, "--executor", "serial", "--out", str(tmp_path / "local")])
    assert local.returncode == 0, local.stderr

    def numbers(d):
        return sorted((x["trial_id"], x["status"], x["metrics"]["mass"]["value"], x["metrics"]["drift"]["value"])
                      for x in read_records([d]))
    assert numbers(tmp_path / "cluster") == numbers(tmp_path / "local"), "same seeds, same numbers"
    assert (tmp_path / "cluster" / "ray_results" / "cluster").is_dir(), "the Tune experiment, restorable"
    assert json.loads((tmp_path / "cluster" / "args.json").read_text())["task"] == "toy"


def test_unwritable_record_stops_the_whole_tune_experiment(tmp_path):
    from types import SimpleNamespace

    from unlearnbench.raytune import _callback_classes

    blocked = tmp_path / "file"
    blocked.write_text("a file where the run directory should be")
    lines: list[str] = []
    recorder_cls, stopper_cls = _callback_classes()
    recorder = recorder_cls(SimpleNamespace(run_dir=str(blocked)), 2, False, lines.append)
    stopper = stopper_cls(recorder)
    assert not stopper.stop_all()
    rec = {"task": {"name": "toy"}, "trial_id": "t0", "status": "ok", "method": "esd", "seed": 0, "metrics": {}}
    recorder.on_trial_result(0, [], None, {"record": json.dumps(rec)})
    assert stopper.stop_all() and stopper("t1", {})
    assert recorder.abort.startswith("could not write the record of trial 't0'") and lines[0].startswith("[1/2] t0")


def test_a_ray_initialised_in_the_process_is_used_not_restarted(shared_ray):
    """A user (notebook, cluster job, test session) who called ``ray.init`` runs the sweep on that instance; an
    ``--address`` besides it is refused with both named, and the instance is left running."""
    from unlearnbench.cluster import ClusterError, ray_is_local, ray_session

    gcs = shared_ray.get_runtime_context().gcs_address
    with ray_session(None, num_cpus=1, gpus_per_trial=0):
        assert shared_ray.get_runtime_context().gcs_address == gcs and ray_is_local()
    assert shared_ray.is_initialized()
    with pytest.raises(ClusterError, match=r"--address 127.0.0.1:1: Ray is already initialised in this process"):
        with ray_session("127.0.0.1:1", None, 0):
            pass
    assert shared_ray.is_initialized()
