"""Sweep configuration: names, grids and overrides resolved and checked before any work starts.

Precedence, lowest to highest: method defaults, the task's defaults for that method, ``--config x.yaml``,
``--set methods.rkl.lr=1e-4``, the grid value. Grid files are YAML::

    grid: eps            # optional name
    values:              # method -> list of numbers (weak -> strong)
      rkl: [0.5, 1, 2]
      esd: [0.5, 1, 2]
    params: {esd: eta}   # optional: which config field each method's values set (default: the method's grid_params)
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
import tempfile
from dataclasses import dataclass, field
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from unlearnbench.methods import METHODS
from unlearnbench.methods.base import make_config
from unlearnbench.registry import parse_list
from unlearnbench.settings import (MAX_COUNT, MAX_SEED, MAX_SEEDS, MAX_TRIALS, ConfigError, check_name,
                                   read_small_file)

logger = logging.getLogger(__name__)
from unlearnbench.tasks import TASKS, Task


MAX_YAML_VALUES = 100_000  # numbers, strings, lists and mappings in one file or --set value, aliases expanded


def check_expansion(data: Any, where: str) -> Any:
    """``data`` if it holds at most :data:`MAX_YAML_VALUES` values counting every use of a YAML alias; a small file
    of nested aliases can otherwise stand for billions of values (and any message quoting it too)."""
    count, stack = 0, [data]
    while stack:
        node = stack.pop()
        count += 1
        if count > MAX_YAML_VALUES:
            raise ConfigError(f"{where} holds more than {MAX_YAML_VALUES} values (YAML aliases expanded); "
                              f"such files are small")
        if isinstance(node, dict):
            stack.extend(node.values())
            count += len(node)  # the keys
        elif isinstance(node, list):
            stack.extend(node)
    return data


def parse_value(text: str) -> Any:
    """``--set`` values: YAML scalars (numbers, booleans, null, strings)."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    return check_expansion(value, f"--set value {text[:40]!r}")


def parse_sets(items: list[str]) -> dict[str, Any]:
    """``["methods.rkl.lr=1e-4", "task.forget=one"]`` -> nested dict."""
    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. methods.rkl.lr=1e-4 or task.forget=one")
        key, val = item.split("=", 1)
        parts = key.strip().split(".")
        if parts[0] not in ("methods", "task") or (parts[0] == "methods" and len(parts) != 3) or \
                (parts[0] == "task" and len(parts) != 2):
            raise ConfigError(f"--set {item!r}: keys are methods.<method>.<field> or task.<option>")
        node = out
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = parse_value(val)
    return out


def deep_merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_yaml(path: str, what: str = "config file") -> dict:
    """A YAML mapping from ``path``; ``what`` (config file, grid file) names it in messages."""
    text = read_small_file(path, what)  # a regular file of at most 1 MiB: /dev/zero or a FIFO is refused unread
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{what} {path!r} is not valid YAML: {e}") from e
    check_expansion(data, f"{what} {path!r}")
    if data is None:
        return {}
    if not isinstance(data, dict):
        expected = "sections methods, task, grids" if what == "config file" else "values: {method: [numbers]}"
        raise ConfigError(f"{what} {path!r} must hold a mapping ({expected}), got {type(data).__name__}")
    return data


def load_grid_file(path: str, methods: list[str]) -> tuple[str, dict[str, list[float]], dict[str, str]]:
    data = load_yaml(path, "grid file")
    values = data.get("values", data if "values" not in data and "grid" not in data else None)
    if not isinstance(values, dict) or not values:
        raise ConfigError(f"grid file {path!r}: expected a 'values' mapping method -> list of numbers")
    clean: dict[str, list[float]] = {}
    for m, vals in values.items():
        try:
            name = METHODS.canonical(str(m))
        except KeyError as e:
            raise ConfigError(f"grid file {path!r}: {e}") from None
        clean[name] = check_numbers(f"grid file {path!r}", vals, f" for {m!r}")
    missing = [m for m in methods if m not in clean]
    if missing:
        raise ConfigError(f"grid file {path!r} has no values for method(s) {', '.join(missing)}; "
                          f"it has: {', '.join(clean)}")
    params = data.get("params") or {}
    if not isinstance(params, dict):
        raise ConfigError(f"grid file {path!r}: 'params' must map method -> config field, got {params!r}")
    try:
        params = {METHODS.canonical(str(k)): str(v) for k, v in params.items()}
    except KeyError as e:
        raise ConfigError(f"grid file {path!r}: params: {e}") from None
    return str(data.get("grid") or Path(path).stem), clean, params


def check_writable_dir(path: str, flag: str = "--out") -> str:
    """The absolute path, refused unless it is (or can be created as) a writable directory.

    Probes by creating and removing a temporary directory where the directory would be created (or inside it), so
    read-only file systems, /proc and paths through a file are caught without leaving anything behind.
    """
    full = os.path.abspath(os.path.expanduser(path))
    if os.path.exists(full) and not os.path.isdir(full):
        raise ConfigError(f"{flag} {path!r} is an existing file; give a directory (new, or an existing one to reuse)")
    parent = full
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise ConfigError(f"{flag} {path!r}: {parent!r} is a file, so no directory can be created under it; "
                          f"give a path under a writable directory")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".unlearnbench-probe-", dir=parent))
    except OSError as e:
        raise ConfigError(f"{flag} {path!r}: cannot create a directory in {parent!r} ({e.strerror}); "
                          f"give a path under a writable directory, e.g. runs/<name>") from None
    return full


def parse_seeds(text: str | list[int]) -> list[int]:
    try:
        seeds = [int(s) for s in (text if isinstance(text, list) else str(text).split(",")) if str(s).strip()]
    except ValueError:
        raise ConfigError(f"--seeds {text!r}: expected comma-separated integers, e.g. 0,1,2") from None
    if not seeds:
        raise ConfigError("--seeds is empty")
    bad = [s for s in seeds if not 0 <= s <= MAX_SEED]
    if bad:
        raise ConfigError(f"--seeds {text!r}: seed {bad[0]} is out of range; valid: whole numbers 0 to {MAX_SEED}")
    seeds = list(dict.fromkeys(seeds))
    if len(seeds) > MAX_SEEDS:
        raise ConfigError(f"--seeds {str(text)[:40]!r}...: {len(seeds)} seeds; at most {MAX_SEEDS}")
    return seeds


@dataclass(frozen=True)
class TrialSpec(Mapping):
    """One trial, resolved once when the sweep is planned (:func:`plan_trials`) and never changed after: what runs
    (task, method, the overrides as given, the grid point, the seed), with which settings (``settings``: the method's
    config with the task's defaults, the overrides and the grid value already applied, checked once), and where.
    Read it as a mapping (``spec["seed"]``, ``spec.get("attack")``); a changed copy is :meth:`replace`'s."""

    run_id: str
    trial_id: str
    task: str
    task_options: dict
    method: str
    method_config: dict  # the overrides as the user gave them: with the grid point and seed, what the trial *is*
    grid: dict | None
    seed: int
    cache_dir: str | None
    run_dir: str
    artifact_dir: str | None
    threads: int = 1
    settings: dict | None = None  # the resolved method config (None: resolve when run, e.g. a hand-written spec)
    save_models: bool = False
    gpus: float = 0.0

    def __getitem__(self, key: str) -> Any:
        if key not in self._names():
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self):
        return iter(self._names())

    def __len__(self) -> int:
        return len(self._names())

    @classmethod
    def _names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    def replace(self, **changes: Any) -> TrialSpec:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict (``plan.json``, Ray Tune's param space)."""
        return {k: getattr(self, k) for k in self._names()}


@dataclass(frozen=True)
class AttackSpec(TrialSpec):
    """An attack trial of the robustness ladder (:func:`unlearnbench.robustness.plan.plan_attacks`): a
    :class:`TrialSpec` whose ``attack`` says which attack, ladder and measure, on which source trial's model."""

    attack: dict = field(default_factory=dict)


def as_dict(spec: Mapping[str, Any]) -> dict[str, Any]:
    """A trial spec (a :class:`TrialSpec`, or a plain dict from older code and tests) as a plain dict."""
    return spec.to_dict() if isinstance(spec, TrialSpec) else dict(spec)


@dataclass
class SweepPlan:
    run_id: str
    run_dir: str
    task: str
    task_options: dict
    trials: list[TrialSpec] = field(default_factory=list)


def fmt_value(v: float) -> str:
    return f"{v:g}"


def plan_trials(task: str, methods: str | list[str], grid: str, seeds: str | list[int] = "0", run_dir: str = "runs/x",
                config: dict | None = None, sets: list[str] | None = None, steps: int | None = None,
                cache_dir: str | None = None, threads: int = 1) -> SweepPlan:
    """Resolve and validate everything; returns the trial specs. Raises ConfigError on bad input."""
    try:
        task_name = TASKS.canonical(task)
    except KeyError as e:
        raise ConfigError(str(e)) from None
    cfg = check_config(deep_merge(config or {}, parse_sets(sets or [])))
    task_cls = TASKS.get(task_name)
    task_options = dict(cfg.get("task") or {})
    try:
        task_obj = task_cls(task_options, cache_dir=cache_dir)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    task_options = {k: task_obj.options[k] for k in task_options}  # checked and typed (e.g. "1e3" -> 1000)
    method_names = resolve_methods(methods, task_cls, grid, (cfg.get("grids") or {}).get(grid) or {})
    method_overrides = check_overrides(cfg.get("methods") or {})
    grid_name, grid_values, grid_params = resolve_grid(grid, method_names, task_obj, cfg.get("grids") or {})
    check_name("grid name", grid_name)  # it becomes part of every trial name and artefact folder
    seed_list = parse_seeds(seeds)
    if steps is not None and not 0 <= steps <= MAX_COUNT:
        raise ConfigError(f"--steps {steps}: must be a whole number from 0 to {MAX_COUNT}")
    n_trials = sum(len(grid_values[m]) for m in method_names) * len(seed_list)
    if n_trials > MAX_TRIALS:
        raise ConfigError(f"{n_trials} trials (methods x grid values x seeds); at most {MAX_TRIALS} per sweep: "
                          f"split it into several runs")
    run_dir = os.path.abspath(run_dir)
    plan = SweepPlan(run_id=check_name("run name (the last part of the run directory)", os.path.basename(run_dir)),
                     run_dir=run_dir, task=task_name, task_options=task_options)
    for m in method_names:
        overrides = dict(method_overrides.get(m) or {})
        if steps is not None and not METHODS.get(m).closed_form:  # a closed-form edit (uce) takes no steps
            overrides["steps"] = steps  # the stop-rule cap scales with it (build_method_config)
        for value in grid_values[m]:
            g = {"name": grid_name, "param": grid_param(m, grid_name, grid_params), "value": float(value)}
            resolved = check_method_config(task_obj, m, overrides, g)
            for seed in seed_list:
                tid = check_name("trial name", f"{m}-{grid_name}{fmt_value(value)}-s{seed}")
                plan.trials.append(TrialSpec(
                    run_id=plan.run_id, trial_id=tid, task=task_name, task_options=task_options, method=m,
                    method_config=overrides, grid=g, seed=seed, cache_dir=task_obj.cache_dir, threads=threads,
                    run_dir=run_dir, artifact_dir=os.path.join(run_dir, "artifacts", tid), settings=resolved))
    return plan


def check_config(cfg: Any) -> dict:
    """The shape of a merged ``--config``/``--set`` mapping: ``methods: {name: {field: value}}``, ``task: {option:
    value}``, ``grids: {grid: {method: [numbers]}}``."""
    if not isinstance(cfg, dict):
        raise ConfigError(f"config must be a mapping with sections methods, task, grids; got {cfg!r}")
    unknown_top = sorted(set(map(str, cfg)) - {"methods", "task", "grids"})
    if unknown_top:
        raise ConfigError(f"config: unknown section(s) {', '.join(unknown_top)}; valid: methods, task, grids")
    for section in ("methods", "task", "grids"):
        if cfg.get(section) is not None and not isinstance(cfg[section], dict):
            raise ConfigError(f"config: section {section!r} must be a mapping, got {cfg[section]!r}; e.g. "
                              + {"methods": "methods: {rkl: {lr: 1e-4}}", "task": "task: {forget: one}",
                                 "grids": "grids: {eps: {rkl: [20, 30]}}"}[section])
    for m, settings in (cfg.get("methods") or {}).items():
        if not isinstance(settings, dict):
            raise ConfigError(f"config: methods.{m} must be a mapping field -> value, got {settings!r}; "
                              f"e.g. methods: {{{m}: {{lr: 1e-4}}}}")
    for g, by_method in (cfg.get("grids") or {}).items():
        if not isinstance(by_method, dict):
            raise ConfigError(f"config: grids.{g} must map method -> list of numbers, got {by_method!r}")
        for m, vals in by_method.items():
            try:
                METHODS.canonical(str(m))
            except KeyError as e:
                raise ConfigError(f"config grids.{g}: {e}") from None
            check_numbers(f"config grids.{g}.{m}", vals)
    return cfg


def check_numbers(where: str, vals: Any, what: str = "") -> list[float]:
    """A non-empty list of finite numbers, as floats (``what`` names the list in messages)."""
    if not isinstance(vals, list) or not vals:
        raise ConfigError(f"{where}: values{what} must be a non-empty list of numbers, got {vals!r}")
    for v in vals:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ConfigError(f"{where}: value {v!r}{what} is not a finite number")
    return [float(v) for v in vals]


def resolve_methods(methods: str | list[str], task_cls: type, grid: str, config_grid: dict | None = None) -> list[str]:
    """Canonical method names; ``all`` means every method that applies to the task and has values for ``grid``
    (the task's, the method's declared ones or the config's ``config_grid``)."""
    if methods == "all" or methods == ["all"]:
        given = {METHODS.canonical(str(m)) for m in config_grid or {}}
        on_grid = set(applicable_methods(task_cls, grid))
        fits = [m for m in applicable_methods(task_cls, None) if m in given or m in on_grid]
        if not fits:
            raise ConfigError(f"no method applies to {task_cls.kind} task {task_cls.name!r} with grid {grid!r}; "
                              f"valid grids: {', '.join(task_cls.grids)}")
        return fits
    try:
        names = parse_list(methods, METHODS)
    except (KeyError, ValueError) as e:
        raise ConfigError(str(e)) from None
    for m in names:
        if task_cls.kind not in METHODS.get(m).kinds:
            raise ConfigError(f"method {m!r} does not apply to {task_cls.kind} task {task_cls.name!r}; "
                              f"methods for it: {', '.join(applicable_methods(task_cls, None))}")
        reason = METHODS.get(m).unsupported_reason(task_cls)
        if reason:
            raise ConfigError(reason)
    return names


def applicable_methods(task_cls: type, grid: str | None) -> list[str]:
    """Methods whose kinds include the task's and, when ``grid`` names one, that have values for it there."""
    out = []
    for name in METHODS.names():
        try:
            cls = METHODS.get(name)
        except (ImportError, TypeError) as e:  # a broken plugin is named when asked for, not in every run
            logger.warning("method %s is left out: %s", name, e)
            continue
        if task_cls.kind not in cls.kinds or cls.unsupported_reason(task_cls):
            continue
        if grid is None or is_grid_file(grid) or set(cls.lineage()) & set(task_cls.grids.get(grid, {})) or \
                cls.declared_grid(task_cls.kind, grid) is not None:
            out.append(name)
    return out


def is_grid_file(grid: str) -> bool:
    return grid.endswith((".yaml", ".yml")) or os.path.sep in grid


def check_overrides(overrides: dict) -> dict:
    """Every ``methods:`` entry names a known method and only its settings (also for methods not in this run)."""
    out = {}
    for m, settings in overrides.items():
        try:
            name = METHODS.canonical(str(m))
        except KeyError as e:
            raise ConfigError(f"config methods.{m}: {e}") from None
        try:
            make_config(METHODS.get(name).Config, dict(settings), name)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        out[name] = settings
    return out


def resolve_grid(grid: str, method_names: list[str], task_obj, file_grids: dict):
    """(grid name, method -> values, method -> swept field) from a grid file, the config's grids or the task."""
    if is_grid_file(grid):
        return load_grid_file(grid, method_names)
    given = file_grids.get(grid) or {}
    try:
        values = {m: given[m] if m in given else grid_values(task_obj, grid, m) for m in method_names}
    except ValueError as e:
        raise ConfigError(str(e)) from None
    return grid, values, {}


def grid_param(method: str, grid_name: str, grid_params: dict[str, str]) -> str:
    """The config field a grid sweeps for ``method``."""
    cls = METHODS.get(method)
    param = grid_params.get(method) or cls.grid_params.get(grid_name) or cls.grid_params.get("eps")
    if param is None:
        raise ConfigError(f"method {method!r} has no parameter for grid {grid_name!r}; it sweeps: {cls.grid_params}")
    return param


def check_method_config(task_obj, method: str, overrides: dict, grid: dict) -> dict:
    """Resolve the trial's config now, once, so that no trial fails for a value that could be refused here; returns
    it as a plain dict (a :class:`TrialSpec`'s ``settings``)."""
    try:
        return dataclasses.asdict(build_method_config(task_obj, method, overrides, grid))
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{method} with {grid['param']}={grid['value']:g}: {e}") from None


def grid_names(task: Task | type[Task], method: str | None = None) -> list[str]:
    """The task's own grid names, plus the ones ``method`` declares for the task's kind."""
    names = list(task.grids)
    if method is not None:
        names += [g for g in METHODS.get(method).declared_grid_names(task.kind) if g not in names]
    return names


def grid_values(task: Task, grid_name: str, method: str) -> list[float]:
    """Values of ``grid_name`` for ``method``: the task's own for it, else what its class declares for the task's
    kind; then the same for each method it subclasses, nearest first (a plugin subclass of a built-in method runs with
    its parent's values unless it declares its own; :meth:`~unlearnbench.methods.base.Method.lineage`)."""
    own = task.grids.get(grid_name, {})
    if method in own:
        return list(own[method])
    cls = METHODS.get(method)
    for klass in cls.__mro__:  # its own declared values, then the nearest parent's (the task's, else declared)
        name = vars(klass).get("name")
        if klass is not cls and isinstance(name, str) and name in own and name in cls.lineage():
            return list(own[name])
        declared = vars(klass).get("default_grids", {}).get(task.kind, {}).get(grid_name)
        if declared is not None:
            return [float(v) for v in declared]
    if grid_name not in grid_names(task, method):
        raise ValueError(f"task {task.name} has no grid {grid_name!r}; valid: {', '.join(grid_names(task, method))}")
    raise ValueError(f"grid {grid_name!r} of task {task.name} has no values for method {method!r}; "
                     f"it has: {', '.join(own)} (a method declares its own with default_grids)")


def task_method_defaults(task, method: str) -> dict[str, Any]:
    """The task's defaults for ``method`` (a subclass of a built-in method takes its parent's), as a new dict."""
    defaults = getattr(task, "method_defaults", {})
    return dict(next((defaults[n] for n in METHODS.get(method).lineage() if n in defaults), {}))


def build_method_config(task, method: str, overrides: dict[str, Any], grid: dict | None):
    """Method defaults < the task's defaults for that method < user overrides < the grid value."""
    cls = METHODS.get(method)
    values = task_method_defaults(task, method)
    overrides = dict(overrides or {})
    # a stop-rule cap from the task's defaults scales with the steps a user sets (lik on gmm-concept: 800 steps, cap
    # 1600; steps 20 caps at 40; rkl-is on digits-concept: the task's 150 steps, cap 600; steps 2 caps at 8), so a
    # short run stays short; a cap the user set is theirs
    task_steps = 0 if cls.closed_form else task.default_steps
    base_steps = values.get("steps") or task_steps
    if (overrides.get("steps") is not None and "max_steps" not in overrides and values.get("max_steps")
            and base_steps):
        steps = int(overrides["steps"])
        overrides["max_steps"] = max(steps, int(round(values["max_steps"] * steps / base_steps)))
    values.update(overrides)
    if grid is not None:
        values[grid["param"]] = grid["value"]
    if values.get("steps") is None:
        values["steps"] = task_steps
    return make_config(cls.Config, values, method)
