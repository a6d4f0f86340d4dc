"""Trial records: one JSON object per trial, appended to ``records.jsonl`` atomically (one write of one line).

Schema (``SCHEMA_VERSION`` 1)::

    schema_version, run_id, trial_id, created_at, status ("ok"|"failed"), error,
    task {name, kind, forget_set, options}, method, method_config {...}, grid {name, param, value}, seed,
    metrics {name: {value, stderr, n, role, higher_is_better}},
    oracle {fronts: {name: {unlearning_metric, retention_metric, level, front_value, gap, lambda_star, curve}},
            lambda} | null,
    train {steps, final_duals, duals [[step, [lambda_i...]], ...], constraint_estimates, constraint_slack, constraints_met},
    timing {setup_s, train_s, eval_s, total_s}, config_hash, env {...}, artifacts {...}
"""
from __future__ import annotations

import datetime as _dt
import fcntl
import json
import math
import os
import platform
import subprocess
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Iterator

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


def append_record(run_dir: str | os.PathLike, record: dict) -> None:
    """Append one record as a single line; an exclusive lock keeps concurrent trials from interleaving."""
    path = Path(run_dir) / RECORDS
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(_clean(record), sort_keys=True) + "\n"
    with open(path, "a", encoding="utf-8") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def read_records(paths: Iterable[str | os.PathLike]) -> list[dict]:
    """Records from run dirs or jsonl files; a torn last line (killed writer) is skipped. Each record gets ``_dir``,
    the folder of its file, against which relative artifact paths resolve (not part of the stored record)."""
    out: list[dict] = []
    for p in paths:
        p = Path(p)
        files = [p] if p.is_file() else sorted(p.rglob(RECORDS))
        for f in files:
            for line in f.read_text(encoding="utf-8").splitlines():
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue
                rec["_dir"] = str(f.parent.resolve())
                out.append(rec)
    return out


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
