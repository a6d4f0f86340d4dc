"""On-disk cache for expensive shared artefacts (pretrained models, reference features), keyed by the hash of their
configuration and of the code that built them; every load is checked against a stored sha256."""
from __future__ import annotations

import hashlib
import inspect
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
    """Hash of the source of ``build`` and of every function and class it reaches: through its closure and the global
    names (and ``module.attr`` uses) of its code, transitively, within the builder's module and unlearnbench. Editing
    any of them gives a new cache key, so an artefact built by older code is never loaded as if it were current, while
    an edit elsewhere in the same module (evaluation code next to a pretraining routine) keeps the cache."""
    roots = {"unlearnbench", getattr(build, "__module__", "") or ""}
    parts: dict[str, str] = {}
    seen, stack = set(), [build]
    while stack:
        obj = inspect.unwrap(stack.pop())  # a functools.wraps wrapper counts as the code it wraps
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        try:
            src = inspect.getsource(obj)
        except (OSError, TypeError):
            continue
        parts[f"{obj.__module__}.{obj.__qualname__}"] = src
        stack.extend(r for r in _references(obj) if (getattr(r, "__module__", None) or "").split(".")[0] in roots
                     or getattr(r, "__module__", None) in roots)
    blob = "\0".join(f"{k}\0{v}" for k, v in sorted(parts.items()))  # sorted: the same key in every process
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def _references(obj: Any) -> list[Any]:
    """Functions and classes the code of ``obj`` (a function, or a class's methods and bases) refers to."""
    if isinstance(obj, type):
        funcs = [f for v in vars(obj).values() for f in (getattr(v, "__func__", v), getattr(v, "fget", None))
                 if inspect.isfunction(f)]
        out: list[Any] = [b for b in obj.__bases__ if b is not object]
    elif inspect.isfunction(obj):
        funcs, out = [obj], []
    else:
        return []
    for f in funcs:
        out += [c.cell_contents for c in f.__closure__ or () if _is_code_object(_cell(c))]
        names = _co_names(f.__code__)
        for name in names:
            v = f.__globals__.get(name)
            if isinstance(v, types.ModuleType):
                out += [getattr(v, n) for n in names if _is_code_object(getattr(v, n, None))]
            elif _is_code_object(v):
                out.append(v)
    return out


def _cell(cell: Any) -> Any:
    try:
        return cell.cell_contents
    except ValueError:  # an empty cell
        return None


def _is_code_object(v: Any) -> bool:
    return inspect.isfunction(v) or inspect.isclass(v)


def _co_names(code: types.CodeType) -> set[str]:
    """Global and attribute names used by ``code`` and the code objects nested in it."""
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _co_names(const)
    return names


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
