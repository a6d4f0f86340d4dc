"""Name -> class registries with lazy built-ins and entry-point plugins (shape of lm-eval's Registry)."""
from __future__ import annotations

import difflib
import importlib
import inspect
import logging
import pkgutil
import re
import sys
import warnings
from importlib import metadata
from typing import Any, Callable, Generic, Iterable, TypeVar

from unlearnbench.settings import SAFE_NAME_TEXT, is_safe_name

logger = logging.getLogger(__name__)
T = TypeVar("T")


class UnknownNameError(KeyError):
    """An unknown registry name; the message lists the valid names and the closest match."""

    def __str__(self) -> str:  # KeyError quotes its argument; we want plain text
        return str(self.args[0])


class Registry(Generic[T]):
    """A registry of named objects.

    Values are either the object itself or a lazy ``"module:attr"`` string, imported on first ``get``.
    Built-ins are registered lazily so that ``unlearnbench ls`` never imports heavy dependencies.
    """

    def __init__(self, kind: str, base_cls: type | None = None, entry_point_group: str | None = None,
                 scan_package: str | None = None):
        self.kind = kind
        self.base_cls = base_cls
        self.entry_point_group = entry_point_group
        self.scan_package = scan_package  # a package whose unlisted modules register themselves when imported
        self._scanned = False
        self._items: dict[str, Any] = {}
        self._origin: dict[str, str] = {}
        self._aliases: dict[str, str] = {}
        self._plugins_loaded = False

    # -- registration -------------------------------------------------------------------------------
    def register(self, *names: str, origin: str = "builtin") -> Callable[[T], T]:
        """Decorator: ``@METHODS.register("rkl", "reverse-kl")``. The first name is canonical."""
        if not names:
            raise ValueError("register() needs at least one name")

        def deco(obj: T) -> T:
            self._add(names[0], obj, origin)
            self._add_aliases(names[0], names[1:])
            return obj

        return deco

    def register_lazy(self, name: str, target: str, *aliases: str, origin: str = "builtin") -> None:
        """Register ``"module:attr"`` to be imported when first used."""
        if ":" not in target:
            raise ValueError(f"lazy target {target!r} must look like 'module:attr'")
        self._add(name, target, origin)
        self._add_aliases(name, aliases)

    def _add_aliases(self, name: str, aliases: Iterable[str]) -> None:
        for alias in aliases:
            if alias != alias.lower() or not is_safe_name(alias):
                raise ValueError(f"{self.kind} aliases are lowercase, {SAFE_NAME_TEXT}; got {alias!r}")
            self._aliases[alias] = name

    def _add(self, name: str, obj: Any, origin: str) -> None:
        if name != name.lower() or not is_safe_name(name):
            raise ValueError(f"{self.kind} names are lowercase, {SAFE_NAME_TEXT}; got {name!r}")
        if name in self._items:
            old, existing = self._origin[name], self._items[name]
            if old != origin and "builtin" in (old, origin):
                if old == "builtin":
                    warnings.warn(f"{self.kind} {name!r} from {origin} clashes with the built-in; the built-in wins",
                                  stacklevel=3)
                    return
                warnings.warn(f"{self.kind} {name!r}: the built-in replaces the one from {old}", stacklevel=3)
            elif not (isinstance(existing, str) or _same(existing, obj)):
                raise ValueError(f"{self.kind} {name!r} is already registered (from {old})")
            elif isinstance(obj, str) and not isinstance(existing, str):
                return  # keep the resolved object
        self._items[name] = obj
        self._origin[name] = origin

    # -- plugins ------------------------------------------------------------------------------------
    def load_plugins(self, entry_points: Iterable[metadata.EntryPoint] | None = None) -> None:
        """Register every entry point of ``entry_point_group`` as a lazy placeholder (once)."""
        if entry_points is None:
            if self._plugins_loaded or not self.entry_point_group:
                return
            self._plugins_loaded = True
            entry_points = metadata.entry_points(group=self.entry_point_group)
        for ep in entry_points:
            dist = getattr(ep, "dist", None)
            origin = f"plugin {dist.name if dist else ep.value}"
            try:
                self._add(ep.name, ep.value, origin)
            except ValueError as e:
                logger.warning("skipping %s plugin %s: %s", self.kind, ep.name, e)

    def discover(self) -> None:
        """Import (once) the modules of ``scan_package`` that no lazy entry names, so that a new file with
        ``@REGISTRY.register("name")`` is found without editing any list. ``_private`` modules and ``base`` are
        skipped."""
        if self._scanned or not self.scan_package:
            return
        self._scanned = True
        pkg = importlib.import_module(self.scan_package)
        listed = {v.split(":", 1)[0] for v in self._items.values() if isinstance(v, str)}
        for info in pkgutil.iter_modules(getattr(pkg, "__path__", [])):
            mod = f"{self.scan_package}.{info.name}"
            if info.name.startswith("_") or info.name == "base" or mod in listed or mod in sys.modules:
                continue
            try:
                importlib.import_module(mod)
            except Exception as e:  # noqa: BLE001 - one broken file must not hide every other entry
                logger.warning("skipping %s module %s: it failed to import: %s", self.kind, mod, e)

    # -- lookup -------------------------------------------------------------------------------------
    def names(self) -> list[str]:
        self.load_plugins()
        self.discover()
        return sorted(self._items)

    def aliases(self, name: str) -> list[str]:
        """The other names that resolve to ``name``."""
        key = self.canonical(name)
        return sorted(a for a, target in self._aliases.items() if target == key)

    def origin(self, name: str) -> str:
        return self._origin[self.canonical(name)]

    def canonical(self, name: str) -> str:
        self.load_plugins()
        key = str(name).strip().lower()
        key = self._aliases.get(key, key)
        if key not in self._items:
            self.discover()
            key = self._aliases.get(key, key)
        if key not in self._items:
            valid = sorted(self._items)
            close = difflib.get_close_matches(key, valid + sorted(self._aliases), n=1)
            hint = f"; did you mean {self._aliases.get(close[0], close[0])!r}?" if close else ""
            raise UnknownNameError(f"unknown {self.kind} {name!r}{hint} Valid {self.kind}s: {', '.join(valid)}")
        return key

    def __contains__(self, name: str) -> bool:
        try:
            self.canonical(name)
        except UnknownNameError:
            return False
        return True

    def get(self, name: str) -> T:
        key = self.canonical(name)
        obj = self._items[key]
        if isinstance(obj, str):
            mod_name, attr = obj.split(":", 1)
            try:
                obj = getattr(importlib.import_module(mod_name), attr)
            except (ImportError, AttributeError) as e:
                raise ImportError(f"{self.kind} {key!r} points at {self._items[key]!r}, which failed to load: {e}") from e
            if self.base_cls is not None and not (isinstance(obj, type) and issubclass(obj, self.base_cls)):
                raise TypeError(f"{self.kind} {key!r} ({self._items[key]}) is not a subclass of {self.base_cls.__name__}")
            self._items[key] = obj
        return obj

    def describe(self, name: str) -> str:
        """First paragraph of an entry's docstring as one plain-text line (imports it)."""
        return plain_doc(getattr(self.get(name), "__doc__", None)).split("\n\n")[0].replace("\n", " ")


def plain_doc(doc: str | None) -> str:
    """A docstring without its indentation and reST markup (````x````, ``:func:`x```), paragraphs kept."""
    text = inspect.cleandoc(doc or "")
    text = re.sub(r":[a-z]+:`~?([^`]+)`", r"\1", text)
    return re.sub(r"``?([^`]+)``?", r"\1", text)


def _same(a: Any, b: Any) -> bool:
    """The same object, or the same class re-created by a module re-import."""
    key = lambda o: (getattr(o, "__module__", None), getattr(o, "__qualname__", None))  # noqa: E731
    if a is b or (not isinstance(a, type) and _eq(a, b)):
        return True
    return (isinstance(a, type) and isinstance(b, type) and key(a) == key(b))


def _eq(a: Any, b: Any) -> bool:
    try:
        return bool(a == b)
    except Exception:  # noqa: BLE001 - objects whose == is not boolean are never the same entry
        return False


def parse_list(value: str | Iterable[str], registry: Registry) -> list[str]:
    """Comma-separated names -> canonical names; ``all`` expands to every registered name."""
    items = [v.strip() for v in (value.split(",") if isinstance(value, str) else value) if v.strip()]
    if items == ["all"]:
        return registry.names()
    out = [registry.canonical(v) for v in items]
    if not out:
        raise ValueError(f"no {registry.kind} given; valid: {', '.join(registry.names())}")
    return list(dict.fromkeys(out))
