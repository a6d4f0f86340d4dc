"""On-disk cache for expensive shared artefacts (pretrained models, reference features), keyed by the hash of their
configuration and of the code that built them; every load is checked against a stored sha256."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import tempfile
import types
from pathlib import Path
from typing import Any, Callable

logger = logging.getLogger(__name__)


def default_cache_dir() -> str:
    """``$UNLEARNBENCH_CACHE`` or ``~/.cache/unlearnbench`` (absolute)."""
    return os.path.abspath(os.environ.get("UNLEARNBENCH_CACHE") or os.path.expanduser("~/.cache/unlearnbench"))


def config_hash(obj: Any, n: int = 12) -> str:
    """Stable short hash of a JSON-serialisable config."""
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:n]


def cache_path(cache_dir: str, kind: str, key_obj: Any, suffix: str = ".pt") -> Path:
    return Path(cache_dir) / kind / f"{config_hash(key_obj)}{suffix}"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Replace ``path`` by ``data`` in one step (temp file, fsync, rename); a failed write leaves the old file and
    no temp file behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def code_version(build: Callable) -> str:
    """Hash of the source that built an artefact: the module defining ``build``, the modules of the functions it
    closes over, and the unlearnbench modules those import (one level). Editing any of them gives a new cache key,
    so an artefact built by older code is never loaded as if it were current."""
    names: set[str] = {build.__module__}
    for cell in build.__closure__ or ():
        mod = getattr(cell.cell_contents, "__module__", None)
        if callable(cell.cell_contents) and isinstance(mod, str):
            names.add(mod)
    for name in list(names):
        for value in vars(sys.modules[name]).values() if name in sys.modules else ():
            dep = value.__name__ if isinstance(value, types.ModuleType) else getattr(value, "__module__", None)
            if isinstance(dep, str) and dep.split(".")[0] == "unlearnbench" and dep != __name__:
                names.add(dep)
    digest = hashlib.sha256()
    for name in sorted(names):
        path = getattr(sys.modules.get(name), "__file__", None)
        if path and os.path.exists(path):
            digest.update(name.encode() + b"\0" + Path(path).read_bytes())
    return digest.hexdigest()[:12]


class _Corrupt(Exception):
    """A cached file that does not match its checksum or does not load."""


def _load_verified(path: Path) -> Any:
    """Load a cached file after checking it against the sha256 stored beside it; ``_Corrupt`` says why not."""
    import io

    import torch

    try:
        meta = json.loads(path.with_suffix(".json").read_text())
        data = path.read_bytes()
    except (OSError, ValueError) as e:
        raise _Corrupt(f"unreadable or without its checksum file ({e})") from e
    if not isinstance(meta, dict) or hashlib.sha256(data).hexdigest() != meta.get("sha256"):
        raise _Corrupt(f"checksum mismatch ({len(data)} bytes, expected {meta.get('bytes') if isinstance(meta, dict) else '?'})")
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - any load error means: rebuild
        raise _Corrupt(f"does not load: {type(e).__name__}: {e}") from e


def cached_torch(cache_dir: str, kind: str, key_obj: Any, build: Callable[[], Any]) -> Any:
    """The ``torch.save``-d object at (key, code version of ``build``), verified against its checksum; built, saved
    atomically with its key and checksum beside it, and returned when missing. A corrupt file (truncated, flipped
    bytes, a torch load error) is reported by name and rebuilt."""
    import io

    import torch

    code = code_version(build)
    path = cache_path(cache_dir, kind, {"key": key_obj, "code": code})
    if path.exists():
        try:
            obj = _load_verified(path)
            logger.debug("cache hit %s", path)
            return obj
        except _Corrupt as e:
            logger.warning("cache file %s is corrupt: %s; rebuilding it", path, e)
    obj = build()
    buf = io.BytesIO()
    torch.save(obj, buf)
    data = buf.getvalue()
    meta = {"key": key_obj, "code": code, "builder": f"{build.__module__}.{build.__qualname__}",
            "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    atomic_write_bytes(path, data)
    atomic_write_bytes(path.with_suffix(".json"), json.dumps(meta, sort_keys=True, indent=1, default=str).encode())
    return obj
