"""On-disk cache for expensive shared artefacts (pretrained models, reference features), keyed by config hash."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
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
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def cached_torch(cache_dir: str, kind: str, key_obj: Any, build: Callable[[], Any]) -> Any:
    """Load ``torch.save``-d object at the key, or build, save atomically (with the key beside it) and return it."""
    import io

    import torch

    path = cache_path(cache_dir, kind, key_obj)
    if path.exists():
        logger.debug("cache hit %s", path)
        return torch.load(path, map_location="cpu", weights_only=False)
    obj = build()
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())
    atomic_write_bytes(path.with_suffix(".json"), json.dumps(key_obj, sort_keys=True, indent=1, default=str).encode())
    return obj
