"""On-disk cache for expensive shared artefacts (pretrained models, reference features), keyed by the hash of their
configuration and of the code that built them; every load is checked against a stored sha256 and unpickles only
tensors, numbers, strings and containers (``torch.load(weights_only=True)``): anyone who can write a cache file can
write its checksum too, so a file that would need any other object (and could run code while loading) is refused by
name and rebuilt.

The package ships the artefacts of the default digits benchmark (``unlearnbench/pretrained/``, laid out as a cache
directory): the networks behind the committed leaderboards. On a miss in the user's cache, a shipped file with the
same key and code version is verified and copied in instead of building it; ``UNLEARNBENCH_SHIPPED=0`` (or
``unlearnbench pretrain --no-shipped``) builds everything here instead. A shipped file built by older code has another
key, so it is never used in place of what the current code builds.
"""
from __future__ import annotations

import hashlib
import inspect
import json
import logging
import os
import sys
import tempfile
import types
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

logger = logging.getLogger(__name__)

SHIPPED_DIR = Path(__file__).resolve().parent / "pretrained"


def shipped_enabled() -> bool:
    """Whether a cache miss may be filled from :data:`SHIPPED_DIR` (``UNLEARNBENCH_SHIPPED=0`` turns it off)."""
    return os.environ.get("UNLEARNBENCH_SHIPPED", "1").strip().lower() not in ("0", "false", "no", "off")


class NotCached(LookupError):
    """Raised inside :func:`no_builds` where an artefact would have to be built."""

    def __init__(self, kind: str, path: Path, builder: str):
        super().__init__(f"{kind} is neither in the cache nor shipped ({path.name}, built by {builder})")
        self.kind, self.path, self.builder = kind, path, builder


_NO_BUILDS = False
_USED: list[tuple[str, Path, str]] = []  # (kind, path in the cache, where it came from) of every cached_torch call


@contextmanager
def no_builds() -> Iterator[list[tuple[str, Path, str]]]:
    """Within the block, :func:`cached_torch` raises :class:`NotCached` instead of building. Yields a list that, when
    the block ends, holds the ``(kind, path, source)`` it resolved (source: ``cache`` or ``shipped``)."""
    global _NO_BUILDS
    prev, _NO_BUILDS = _NO_BUILDS, True
    start = len(_USED)
    out: list[tuple[str, Path, str]] = []
    try:
        yield out
    finally:
        _NO_BUILDS = prev
        out.extend(_USED[start:])


def artefact_digests(kinds: list[str] | tuple[str, ...]) -> dict[str, str]:
    """``{kind: sha256 prefix}`` of the file of each kind this process loaded last (kinds it did not load are left
    out): which pretrained networks and pools a record's numbers come from."""
    out: dict[str, str] = {}
    for kind, path, _ in _USED:
        if kind in kinds:
            try:
                out[kind] = str(json.loads(path.with_suffix(".json").read_text())["sha256"])[:16]
            except (OSError, ValueError, KeyError):
                out.pop(kind, None)
    return out


def used_artefacts() -> list[tuple[str, Path, str]]:
    """``(kind, path, source)`` of every artefact resolved in this process so far (source: cache, shipped, built)."""
    return list(_USED)


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
    from unlearnbench.settings import read_regular_bytes

    try:  # regular files of the recorded size only: a link to /dev/zero or a FIFO is never read from
        meta = json.loads(read_regular_bytes(path.with_suffix(".json"), "checksum file", 1 << 20))
        size = int(meta["bytes"])
        data = read_regular_bytes(path, "cache file", size)
    except (ValueError, KeyError, TypeError) as e:  # a ConfigError (missing, not a small regular file) too
        raise _Corrupt(f"unreadable or without its checksum file ({e})") from e
    if hashlib.sha256(data).hexdigest() != meta.get("sha256"):
        raise _Corrupt(f"checksum mismatch ({len(data)} bytes, expected {size})")
    try:
        return _safe_load(data)
    except Exception as e:  # noqa: BLE001 - any load error means: rebuild
        raise _Corrupt(f"does not load with weights_only=True (tensors, numbers, strings and containers only): "
                       f"{_load_error(e)}") from e


def _load_error(e: Exception) -> str:
    """The line of a load error that says what was refused (torch's first line advises ``weights_only=False``)."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    why = next((ln for ln in lines if "GLOBAL" in ln or "Unsupported" in ln), lines[0] if lines else "")
    return f"{type(e).__name__}: {why}"


def _safe_load(data: bytes) -> Any:
    """``torch.load`` restricted to tensors, numbers, strings and containers (``weights_only=True``): a cache file is
    written by whoever can write the cache directory, and its sha256 beside it too, so the checksum cannot stop a
    pickle that runs code when loaded; the restricted unpickler refuses any other global before calling it."""
    import io

    import torch

    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def cached_torch(cache_dir: str, kind: str, key_obj: Any, build: Callable[[], Any]) -> Any:
    """The ``torch.save``-d object at (key, code version of ``build``), verified against its checksum. When missing,
    the shipped copy (:data:`SHIPPED_DIR`, same file name) is verified and copied in; otherwise it is built, saved
    atomically with its key and checksum beside it, and returned. A corrupt file (truncated, flipped bytes, a torch
    load error) is reported by name and rebuilt."""
    import io

    import torch

    code = code_version(build)
    path = cache_path(cache_dir, kind, {"key": key_obj, "code": code})
    if path.exists():
        try:
            obj = _load_verified(path)
            logger.debug("cache hit %s", path)
            _USED.append((kind, path, "cache"))
            return obj
        except _Corrupt as e:
            logger.warning("cache file %s is corrupt: %s; rebuilding it", path, e)
    shipped = SHIPPED_DIR / kind / path.name
    if shipped_enabled() and shipped.exists():
        try:
            obj = _load_verified(shipped)
            atomic_write_bytes(path, shipped.read_bytes())
            atomic_write_bytes(path.with_suffix(".json"), shipped.with_suffix(".json").read_bytes())
            logger.info("%s: using the shipped %s (UNLEARNBENCH_SHIPPED=0 builds it here instead)", kind, shipped.name)
            _USED.append((kind, path, "shipped"))
            return obj
        except _Corrupt as e:
            logger.warning("shipped file %s is corrupt: %s; building it instead", shipped, e)
    builder = f"{build.__module__}.{build.__qualname__}"
    if _NO_BUILDS:
        raise NotCached(kind, path, builder)
    obj = build()
    buf = io.BytesIO()
    torch.save(obj, buf)
    data = buf.getvalue()
    try:
        _safe_load(data)
    except Exception as e:  # noqa: BLE001 - a builder bug: it would be refused (and rebuilt) on every load
        raise TypeError(f"{builder} built a {kind} that does not load with weights_only=True (only tensors, numbers, "
                        f"strings and containers may be cached): {_load_error(e)}") from e
    meta = {"key": key_obj, "code": code, "builder": builder,
            "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    atomic_write_bytes(path, data)
    atomic_write_bytes(path.with_suffix(".json"), json.dumps(meta, sort_keys=True, indent=1, default=str).encode())
    _USED.append((kind, path, "built"))
    return obj
