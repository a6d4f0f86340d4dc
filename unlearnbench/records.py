"""Trial records: one JSON object per trial, appended to ``records.jsonl`` whole or not
at all (a torn tail is repaired first; unreadable lines are reported and kept aside, never silently dropped).

Schema (``SCHEMA_VERSION`` 1)::

    schema_version, run_id, trial_id, created_at, status ("ok"|"diverged"|"failed"), error, traceback (failed),
    task {name, kind, forget_set, options}, method, method_config {...}, grid {name, param, value}, seed,
    metrics {name: {value, stderr, n, role, higher_is_better}},
    oracle {fronts: {name: {unlearning_metric, retention_metric, level, front_value, gap, lambda_star, curve}},
            lambda} | null,
    train {steps, final_duals, duals [[step, [lambda_i...]], ...], constraint_estimates, constraint_slack, constraints_met},
    timing {setup_s, train_s, eval_s, total_s; report_s under Ray Tune: waits on its reports}, config_hash, env {...},
    artifacts {...}
"""
from __future__ import annotations

import datetime as _dt
import fcntl
import json
import logging
import math
import os
import platform
import subprocess
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Iterator

from unlearnbench.cache import config_hash
from unlearnbench.settings import SAFE_NAME_TEXT, is_safe_name

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
RECORDS = "records.jsonl"


def _clean(obj: Any) -> Any:
    """JSON-safe: NaN/inf become None, tuples lists, tensors/numpy scalars floats."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if hasattr(obj, "tolist") and not isinstance(obj, (str, bytes)):
        return _clean(obj.tolist())
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    return obj


REJECTED = "records.rejected"  # torn or unreadable bytes moved out of the records file, kept for inspection
REQUIRED = ("trial_id", "status", "method", "seed")  # plus task.name; records may carry any other fields


class RecordWriteError(RuntimeError):
    """A record could not be written (full disk, read-only file system); the records file is left as it was."""


def append_record(run_dir: str | os.PathLike, record: dict) -> None:
    """Append one record as one newline-terminated line, whole or not at all.

    Under an exclusive lock (concurrent trials never interleave): a torn tail left by a killed or starved writer is
    first moved to ``records.rejected`` (so the new line is not glued onto it), then the line is written and
    fsync-ed; if the write fails the file is truncated back to its previous length and ``RecordWriteError`` names
    the trial, the file and the cause.
    """
    path = Path(run_dir) / RECORDS
    line = (json.dumps(_clean(record), sort_keys=True) + "\n").encode()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "ab", buffering=0) as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                _repair_tail(path, f)
                _write_whole(f, line)
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)
    except OSError as e:
        raise RecordWriteError(f"could not write the record of trial {record.get('trial_id')!r} to {path}: "
                               f"{e.strerror or e} (finished records are kept; free space, then --resume)") from e


def _write_whole(f, data: bytes) -> None:
    """Write and fsync ``data`` at the end of ``f``; on failure cut the file back so no partial line stays."""
    fd = f.fileno()
    size = os.fstat(fd).st_size
    try:
        view = memoryview(data)
        while view:  # a short write (nearly full disk) is continued, and fails on the next call
            view = view[os.write(fd, view):]
        os.fsync(fd)
    except OSError:
        os.ftruncate(fd, size)
        raise


def _repair_tail(path: Path, f) -> None:
    """If the file does not end in a newline, move the bytes after its last newline to ``records.rejected``."""
    size = os.fstat(f.fileno()).st_size
    if size == 0:
        return
    with open(path, "rb") as r:
        r.seek(max(0, size - 1))
        if r.read(1) == b"\n":
            return
        r.seek(0)
        data = r.read(size)
    keep = data.rfind(b"\n") + 1
    lineno = data.count(b"\n", 0, keep) + 1
    note = f"# {now_iso()} torn line {lineno} of {path.name} ({size - keep} bytes) moved here before an append\n"
    with open(path.parent / REJECTED, "ab") as rej:
        rej.write(note.encode() + data[keep:] + b"\n")
        rej.flush()
        os.fsync(rej.fileno())
    os.ftruncate(f.fileno(), keep)
    logger.warning("%s: torn line %d (%d bytes) moved to %s", path, lineno, size - keep, REJECTED)


def record_problem(rec: Any) -> str | None:
    """Why a parsed JSON line is not a record (None if it is one): it needs task.name, trial_id, status, method,
    seed; the names (task.name, trial_id, method) become file names and plot text, so each must be a safe name.
    Records may carry any further fields, so nothing else is checked."""
    if not isinstance(rec, dict):
        return f"a JSON {type(rec).__name__}, not an object"
    missing = [k for k in REQUIRED if k not in rec]
    if not isinstance(rec.get("task"), dict) or not rec["task"].get("name"):
        missing.insert(0, "task.name")
    if missing:
        return f"missing {', '.join(missing)}"
    for key, value in (("task.name", rec["task"]["name"]), ("trial_id", rec["trial_id"]), ("method", rec["method"])):
        if not is_safe_name(value):
            return f"{key} {value!r} is not a valid name ({SAFE_NAME_TEXT})"
    return type_problem(rec)


STATUSES = ("ok", "diverged", "failed")
_MAPPINGS = ("task.options", "grid", "method_config", "metrics", "oracle", "train", "timing", "env", "artifacts",
             "attack")  # each a JSON object (or null) where present


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def type_problem(rec: dict) -> str | None:
    """Why the fields that the results, leaderboard and claims read do not have their schema types (None if they
    do): status one of :data:`STATUSES`, an integer seed, objects where objects belong, metric values, stderrs, counts
    and timings finite numbers or null, axes pairs of names. A record is data from whoever wrote the run folder."""
    if rec["status"] not in STATUSES:
        return f"status {rec['status']!r} is not one of {', '.join(STATUSES)}"
    if isinstance(rec["seed"], bool) or not isinstance(rec["seed"], int):
        return f"seed {rec['seed']!r} is not an integer"
    for key in _MAPPINGS:
        head, _, tail = key.partition(".")
        value = rec.get(head) if not tail else (rec.get(head) or {}).get(tail)
        if value is not None and not isinstance(value, dict):
            return f"{key} is a {type(value).__name__}, not an object"
    if not isinstance(rec.get("created_at", ""), str):
        return f"created_at {rec['created_at']!r} is not a time stamp"
    if rec.get("grid") and not (rec["grid"].get("value") is None or _number(rec["grid"]["value"])):
        return f"grid.value {rec['grid']['value']!r} is not a finite number"
    for name, m in (rec.get("metrics") or {}).items():
        if not isinstance(m, dict):
            return f"metrics.{name} is a {type(m).__name__}, not an object"
        for field in ("value", "stderr", "n"):
            if m.get(field) is not None and not _number(m[field]):
                return f"metrics.{name}.{field} {m[field]!r} is not a finite number"
        if not isinstance(m.get("role", ""), str) or not isinstance(m.get("higher_is_better", False), (bool, type(None))):
            return f"metrics.{name}: role must be a name and higher_is_better true, false or null"
    for name, v in (rec.get("timing") or {}).items():
        if v is not None and not _number(v):
            return f"timing.{name} {v!r} is not a finite number"
    axes = rec["task"].get("axes")
    if axes is not None and not (isinstance(axes, list) and all(
            isinstance(a, list) and len(a) == 2 and all(isinstance(x, str) for x in a) for a in axes)):
        return f"task.axes {axes!r} is not a list of [unlearning metric, retention metric] pairs"
    return None


def read_records(paths: Iterable[str | os.PathLike], problems: list[str] | None = None) -> list[dict]:
    """Records from run dirs or jsonl files. Unreadable lines (a torn tail, JSON that is not a record) are skipped
    with a warning naming file and line number, and listed in ``problems`` when given; the file is not changed.
    Each record gets ``_dir``, the folder of its file, against which relative artifact paths resolve (not part of
    the stored record)."""
    out: list[dict] = []
    for p in paths:
        p = Path(p)
        files = [p] if p.is_file() else sorted(p.rglob(RECORDS))
        for f in files:
            if not f.is_file():  # a link to /dev/zero or a FIFO named records.jsonl: never read from
                msg = f"{f}: skipped, not a regular file"
                logger.warning("%s", msg)
                if problems is not None:
                    problems.append(msg)
                continue
            for lineno, line in enumerate(f.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                    why = record_problem(rec)
                except json.JSONDecodeError as e:
                    why = f"not JSON ({e.msg})"
                if why:
                    msg = f"{f}:{lineno}: skipped, {why}"
                    logger.warning("%s", msg)
                    if problems is not None:
                        problems.append(msg)
                    continue
                rec["_dir"] = str(f.parent.resolve())
                out.append(rec)
    return out


def artifact_path(rec: dict, key: str) -> Path | None:
    """The file or folder the record's ``artifacts[key]`` names, inside the record's run folder (``_dir``, the folder
    of its records file); None where it names none. A record is data from whoever wrote the run folder, so a path
    that is not a relative path inside that folder (absolute, climbing with ``..``, or leading out through a link)
    is never followed: it is skipped with a warning naming the record."""
    value = (rec.get("artifacts") or {}).get(key) if isinstance(rec.get("artifacts"), dict) else None
    if not value:
        return None
    root = Path(rec.get("_dir") or ".").resolve()
    where = f"record {rec.get('trial_id')!r} in {root}"
    if not isinstance(value, str) or os.path.isabs(value) or ".." in Path(value).parts or "\0" in value:
        logger.warning("%s: artifacts.%s %r is not a relative path inside its run folder; skipped", where, key, value)
        return None
    path = (root / value).resolve()
    if not path.is_relative_to(root):
        logger.warning("%s: artifacts.%s %r leads out of its run folder (to %s); skipped", where, key, value, path)
        return None
    return path


def iter_latest(records: Iterable[dict]) -> Iterator[dict]:
    """The newest record per (task, trial_id) (a resumed trial supersedes its failed attempt)."""
    latest: dict[tuple, dict] = {}
    for r in records:
        key = ((r.get("task") or {}).get("name"), r.get("trial_id"))
        if key not in latest or r.get("created_at", "") >= latest[key].get("created_at", ""):
            latest[key] = r
    yield from latest.values()


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds")


@lru_cache(maxsize=1)
def environment() -> dict[str, Any]:
    """Versions and git commit, for provenance."""
    from importlib import metadata

    env: dict[str, Any] = {"python": platform.python_version(), "platform": platform.platform()}
    for pkg in ("unlearnbench", "torch", "diffusers", "peft", "torchmetrics", "ray", "numpy"):
        try:
            env[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            env[pkg] = None
    try:
        root = Path(__file__).resolve().parent.parent
        env["git_sha"] = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                        timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        env["git_sha"] = None
    try:
        import torch

        env["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except Exception:  # noqa: BLE001 - provenance must never fail a trial
        env["gpu"] = None
    return env


def relative_artifacts(artifacts: dict[str, str], run_dir: str | None) -> dict[str, str]:
    """Artifact paths relative to the run directory (so a run directory can be moved or committed)."""
    out = {}
    for k, v in artifacts.items():
        if run_dir and os.path.isabs(v) and os.path.commonpath([os.path.abspath(v), run_dir]) == run_dir:
            v = os.path.relpath(v, run_dir)
        out[k] = v
    return out


def base_record(spec: dict[str, Any], task=None) -> dict[str, Any]:
    task_info: dict[str, Any] = {"name": spec["task"], "options": spec.get("task_options") or {}}
    if task is not None:
        task_info.update(task.describe())
        task_info["axes"] = [list(a) for a in task.axes]
    rec = {
        "schema_version": SCHEMA_VERSION, "run_id": spec.get("run_id"), "trial_id": spec["trial_id"],
        "created_at": now_iso(), "status": "failed", "error": None, "task": task_info, "method": spec["method"],
        "method_config": spec.get("method_config", {}), "grid": spec.get("grid"), "seed": spec["seed"],
        "metrics": {}, "oracle": None, "train": None, "timing": None, "config_hash": spec_hash(spec),
        "env": environment(), "artifacts": {},
    }
    if spec.get("attack"):
        rec["attack"] = spec["attack"]
    return rec


def spec_hash(spec: dict[str, Any]) -> str:
    keys = ("task", "task_options", "method", "method_config", "grid", "seed")
    if spec.get("attack"):  # an attack trial of a trial: its own hash (trials keep theirs)
        keys += ("attack",)
    return config_hash({k: spec.get(k) for k in keys})
