"""Typed checking of user-given settings (method configs, task options) before any work starts.

A value arrives from YAML (``--config``, ``--set``) or a grid, so ``1e-4`` may still be a string and ``2.0`` a float
where an integer is meant. :func:`coerce` turns it into the declared type or raises ``ValueError`` naming the value
and what would have been valid; a trial then never fails for a value that could have been refused up front.

Ranges: numbers are finite and ``>= 0`` unless a field's metadata says otherwise (``min``/``max`` inclusive bounds,
``min: None`` for no lower bound); counts (integers whose default is positive) and learning rates (names ending in
``lr``) are ``> 0`` (``positive: True/False`` decides it explicitly). ``metadata={"choices": (...)}`` restricts a
value to a fixed set. Every integer (steps, batch and evaluation sizes, counts) is at most :data:`MAX_COUNT` unless its
field declares another ``max``: a size is never so large that a run only ends by exhausting the machine.

Bounds on the command line and its files (checked before any work, like the settings): :data:`MAX_COUNT` steps,
:data:`MAX_SEEDS` seeds in ``[0, MAX_SEED]``, :data:`MAX_TRIALS` trials per sweep, attack budgets up to
:data:`MAX_BUDGET` with at most :data:`MAX_RUNGS` rungs, and config, grid and ``args.json`` files of at most
:data:`MAX_FILE_BYTES` that are regular files (``plan.json``: 64 MiB), holding at most ``config.MAX_YAML_VALUES`` values
with YAML aliases expanded.
"""
from __future__ import annotations

import math
import os
import re
import stat
import types
import typing
from typing import Any, Mapping

_MISSING = object()


class ConfigError(ValueError):
    """Bad user input, found before any work starts."""


MAX_COUNT = 1_000_000  # any integer setting, --steps
MAX_SEEDS, MAX_SEED = 1000, 2**31 - 1
MAX_TRIALS = 10_000  # methods x grid values x seeds in one sweep
MAX_BUDGET, MAX_RUNGS = 10_000, 20  # attack ladders: optimizer steps per rung, rungs per ladder
MAX_FILE_BYTES = 1 << 20  # config, grid and args.json files


SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
SAFE_NAME_TEXT = "1 to 100 letters, digits, '_', '.' or '-', starting with a letter or digit"


def is_safe_name(name: Any) -> bool:
    """Whether ``name`` may become a path component, a Ray trial name and plot text as it is (:data:`SAFE_NAME`):
    no '/', no '..' component, no shell or markup characters."""
    return isinstance(name, str) and SAFE_NAME.fullmatch(name) is not None


def check_name(what: str, name: Any) -> str:
    """``name`` if it is a safe name; ``ConfigError`` naming it and the pattern otherwise (a grid, method, task or run
    name becomes part of file paths and Ray trial names)."""
    if not is_safe_name(name):
        raise ConfigError(f"{what} {name!r} is not a valid name: use {SAFE_NAME_TEXT}")
    return name


def coerce(key: str, value: Any, tp: Any, meta: Mapping[str, Any] | None = None, default: Any = _MISSING,
           ranges: bool = True) -> Any:
    """``value`` as type ``tp`` within the field's choices (and range unless ``ranges`` is false, see
    :func:`check_range`); ``ValueError`` naming what is valid otherwise."""
    meta = meta or {}
    base, optional = _unwrap_optional(tp)
    if value is None:
        if optional:
            return None
        raise ValueError(f"{key}=None is not allowed; valid: {describe_type(tp, meta, default, key)}")
    if base is bool:
        out = _as_bool(key, value)
    elif base is int:
        out = _as_int(key, value)
    elif base is float:
        out = _as_float(key, value)
    elif base is str:
        if not isinstance(value, str):
            raise ValueError(f"{key}={value!r} is not text; valid: {describe_type(tp, meta, default, key)}")
        out = value
    else:  # containers and custom types: the config's own __post_init__ checks them
        return value
    _check_choices(key, out, meta)
    if ranges:
        check_range(key, out, tp, meta, default)
    return out


def describe_type(tp: Any, meta: Mapping[str, Any] | None = None, default: Any = _MISSING, key: str = "") -> str:
    """Human form of what a field accepts, e.g. ``an integer > 0``, ``one of: full, xattn``."""
    meta = meta or {}
    base, optional = _unwrap_optional(tp)
    if meta.get("choices"):
        text = "one of: " + ", ".join(map(str, meta["choices"]))
    elif base in (int, float):
        text = ("an integer" if base is int else "a finite number") + _range_text(base, meta, default, key)
    elif base is bool:
        text = "true or false"
    elif base is str:
        text = "text"
    else:
        text = getattr(base, "__name__", str(base))
    return text + (" or null" if optional else "")


def type_name(tp: Any) -> str:
    """Short display name of a field type (``int | None`` -> ``int?``)."""
    base, optional = _unwrap_optional(tp)
    return getattr(base, "__name__", str(base)) + ("?" if optional else "")


def resolve_hints(cls: type) -> dict[str, Any]:
    """Evaluated type hints of a dataclass (string annotations under ``from __future__ import annotations``)."""
    try:
        return typing.get_type_hints(cls)
    except Exception:  # noqa: BLE001 - an unresolvable hint leaves that field unchecked rather than breaking the CLI
        return {}


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return (args[0] if len(args) == 1 else tp), len(args) < len(typing.get_args(tp))
    return tp, False


def _as_bool(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    raise ValueError(f"{key}={value!r} is not a boolean; valid: true or false")


def _as_int(key: str, value: Any) -> int:
    number = value
    if isinstance(value, str):
        try:
            number = float(value) if any(c in value.lower() for c in ".en") else int(value)
        except ValueError:
            number = None
    if isinstance(number, bool) or not isinstance(number, (int, float)) or \
            (isinstance(number, float) and not (math.isfinite(number) and number.is_integer())):
        raise ValueError(f"{key}={value!r} is not an integer; valid: a whole number, e.g. 100")
    return int(number)


def _as_float(key: str, value: Any) -> float:
    number = value
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            number = None
    if isinstance(number, bool) or not isinstance(number, (int, float)):
        raise ValueError(f"{key}={value!r} is not a number; valid: a finite number, e.g. 1e-3")
    if not math.isfinite(number):
        raise ValueError(f"{key}={value!r} is not finite; valid: a finite number, e.g. 1e-3")
    return float(number)


def _check_choices(key: str, value: Any, meta: Mapping[str, Any]) -> None:
    choices = meta.get("choices")
    if choices and value not in choices:
        raise ValueError(f"{key}={value!r} is not a valid choice; valid: {', '.join(map(str, choices))}")


def _bounds(key_is_lr: bool, base: Any, meta: Mapping[str, Any], default: Any) -> tuple[Any, bool, Any]:
    """(lower bound or None, lower bound exclusive?, upper bound or None)."""
    positive = meta.get("positive", key_is_lr or (base is int and isinstance(default, int)
                                                  and not isinstance(default, bool) and default > 0))
    lo = meta["min"] if "min" in meta else 0
    strict = "min" not in meta and positive
    return lo, strict, meta.get("max", MAX_COUNT if base is int else None)


def _range_text(base: Any, meta: Mapping[str, Any], default: Any, key: str = "") -> str:
    lo, strict, hi = _bounds(key.rsplit(".", 1)[-1].endswith("lr"), base, meta, default)
    parts = [] if lo is None else [f"{'>' if strict else '>='} {lo:g}"]
    if hi is not None:
        parts.append(f"<= {hi}" if base is int else f"<= {hi:g}")
    return (" " + " and ".join(parts)) if parts else ""


def check_range(key: str, value: Any, tp: Any, meta: Mapping[str, Any] | None = None, default: Any = _MISSING) -> None:
    """Refuse a number outside the field's range (module docstring); other values pass."""
    meta = meta or {}
    base, _ = _unwrap_optional(tp)
    if base not in (int, float) or value is None:
        return
    lo, strict, hi = _bounds(key.rsplit(".", 1)[-1].endswith("lr"), base, meta, default)
    low_bad = lo is not None and (value <= lo if strict else value < lo)
    if low_bad or (hi is not None and value > hi):
        kind = "an integer" if base is int else "a finite number"
        raise ValueError(f"{key}={value!r} is out of range; valid: {kind}{_range_text(base, meta, default, key)}")


def read_small_file(path: str | os.PathLike, what: str, limit: int = MAX_FILE_BYTES) -> str:
    """The text of a regular file of at most ``limit`` bytes; ``ConfigError`` naming ``what`` and ``path`` otherwise
    (see :func:`read_regular_bytes`)."""
    data = read_regular_bytes(path, what, limit)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{what} {str(path)!r} cannot be read as text: {e}; give a YAML file") from None


def read_regular_bytes(path: str | os.PathLike, what: str, limit: int) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes; ``ConfigError`` naming ``what`` and ``path`` otherwise.

    A device (``/dev/zero``), FIFO or socket is refused without reading from it (opened non-blocking, checked with
    ``fstat``), and at most ``limit + 1`` bytes are ever read, so no input can make the reader grow without bound.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise ConfigError(f"{what} {str(path)!r} does not exist") from None
    except OSError as e:
        raise ConfigError(f"{what} {str(path)!r} cannot be read ({e.strerror}); give a YAML file") from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise ConfigError(f"{what} {str(path)!r} cannot be read as text: it is a directory; give a YAML file")
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(f"{what} {str(path)!r} is not a regular file (a device, FIFO or socket); give a file")
        data = b""
        while len(data) <= limit and st.st_size <= limit:
            more = os.read(fd, limit + 1 - len(data))
            if not more:
                break
            data += more
        if len(data) > limit or st.st_size > limit:
            raise ConfigError(f"{what} {str(path)!r} is larger than {limit} bytes; such files are small")
    except OSError as e:
        raise ConfigError(f"{what} {str(path)!r} cannot be read ({e.strerror})") from None
    finally:
        os.close(fd)
    return data
