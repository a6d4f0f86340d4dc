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
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from unlearnbench.methods import METHODS
from unlearnbench.registry import parse_list
from unlearnbench.tasks import TASKS


class ConfigError(ValueError):
    """Bad user input, found before any work starts."""


def parse_value(text: str) -> Any:
    """``--set`` values: YAML scalars (numbers, booleans, null, strings)."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


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


def load_yaml(path: str) -> dict:
    try:
        data = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {path!r} does not exist") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path!r} is not valid YAML: {e}") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path!r} must hold a mapping, got {type(data).__name__}")
    return data


def load_grid_file(path: str, methods: list[str]) -> tuple[str, dict[str, list[float]], dict[str, str]]:
    data = load_yaml(path)
    values = data.get("values", data if "values" not in data and "grid" not in data else None)
    if not isinstance(values, dict) or not values:
        raise ConfigError(f"grid file {path!r}: expected a 'values' mapping method -> list of numbers")
    clean: dict[str, list[float]] = {}
    for m, vals in values.items():
        try:
            name = METHODS.canonical(str(m))
        except KeyError as e:
            raise ConfigError(f"grid file {path!r}: {e}") from None
        if not isinstance(vals, list) or not vals:
            raise ConfigError(f"grid file {path!r}: values for {m!r} must be a non-empty list, got {vals!r}")
        for v in vals:
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ConfigError(f"grid file {path!r}: value {v!r} for {m!r} is not a finite number")
        clean[name] = [float(v) for v in vals]
    missing = [m for m in methods if m not in clean]
    if missing:
        raise ConfigError(f"grid file {path!r} has no values for method(s) {', '.join(missing)}; "
                          f"it has: {', '.join(clean)}")
    params = {METHODS.canonical(k): v for k, v in (data.get("params") or {}).items()}
    return str(data.get("grid") or Path(path).stem), clean, params


def parse_seeds(text: str | list[int]) -> list[int]:
    if isinstance(text, list):
        return text
    try:
        seeds = [int(s) for s in str(text).split(",") if s.strip()]
    except ValueError:
        raise ConfigError(f"--seeds {text!r}: expected comma-separated integers, e.g. 0,1,2") from None
    if not seeds:
        raise ConfigError("--seeds is empty")
    return list(dict.fromkeys(seeds))


@dataclass
class SweepPlan:
    run_id: str
    run_dir: str
    task: str
    task_options: dict
    trials: list[dict] = field(default_factory=list)


def fmt_value(v: float) -> str:
    return f"{v:g}"


def plan_trials(task: str, methods: str | list[str], grid: str, seeds: str | list[int] = "0", run_dir: str = "runs/x",
                config: dict | None = None, sets: list[str] | None = None, steps: int | None = None,
                cache_dir: str | None = None, threads: int = 1) -> SweepPlan:
    """Resolve and validate everything; returns the trial specs. Raises ConfigError (or KeyError) on bad input."""
    try:
        task_name = TASKS.canonical(task)
        method_names = parse_list(methods, METHODS)
    except KeyError as e:
        raise ConfigError(str(e)) from None
    cfg = deep_merge(config or {}, parse_sets(sets or []))
    unknown_top = set(cfg) - {"methods", "task", "grids"}
    if unknown_top:
        raise ConfigError(f"config: unknown section(s) {', '.join(sorted(unknown_top))}; valid: methods, task, grids")
    task_cls = TASKS.get(task_name)
    task_options = dict(cfg.get("task") or {})
    try:
        task_obj = task_cls(task_options, cache_dir=cache_dir)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    for m in method_names:
        kinds = METHODS.get(m).kinds
        if task_cls.kind not in kinds:
            fits = [n for n in METHODS.names() if task_cls.kind in METHODS.get(n).kinds]
            raise ConfigError(f"method {m!r} does not apply to {task_cls.kind} task {task_name!r}; "
                              f"methods for it: {', '.join(fits)}")
        reason = METHODS.get(m).unsupported_reason(task_obj)
        if reason:
            raise ConfigError(reason)
    method_overrides = cfg.get("methods") or {}
    for m in method_overrides:
        if m not in method_names and m not in METHODS:
            raise ConfigError(f"config: unknown method {m!r} under 'methods'; valid: {', '.join(METHODS.names())}")
    if grid.endswith((".yaml", ".yml")) or os.path.sep in grid:
        grid_name, grid_values, grid_params = load_grid_file(grid, method_names)
    else:
        grid_name, grid_params = grid, {}
        file_grids = (cfg.get("grids") or {}).get(grid)
        try:
            grid_values = {m: (file_grids or {}).get(m) or task_obj.grid(grid, m) for m in method_names}
        except ValueError as e:
            raise ConfigError(str(e)) from None
    seed_list = parse_seeds(seeds)
    run_dir = os.path.abspath(run_dir)
    plan = SweepPlan(run_id=os.path.basename(run_dir), run_dir=run_dir, task=task_name, task_options=task_options)
    for m in method_names:
        cls = METHODS.get(m)
        param = grid_params.get(m) or cls.grid_params.get(grid_name) or cls.grid_params.get("eps")
        if param is None:
            raise ConfigError(f"method {m!r} has no parameter for grid {grid_name!r}; it sweeps: {cls.grid_params}")
        overrides = dict(method_overrides.get(m) or {})
        if steps is not None:
            overrides["steps"] = steps
        for value in grid_values[m]:
            g = {"name": grid_name, "param": param, "value": float(value)}
            try:  # validate the resolved config now, not inside a trial
                from unlearnbench.runner import build_method_config

                c = build_method_config(task_obj, m, overrides, g)
                dataclasses.asdict(c)
            except (ValueError, TypeError) as e:
                raise ConfigError(f"{m} with {param}={value:g}: {e}") from None
            for seed in seed_list:
                plan.trials.append({
                    "run_id": plan.run_id, "trial_id": f"{m}-{grid_name}{fmt_value(value)}-s{seed}",
                    "task": task_name, "task_options": task_options, "method": m, "method_config": overrides,
                    "grid": g, "seed": seed, "cache_dir": task_obj.cache_dir, "threads": threads, "run_dir": run_dir,
                    "artifact_dir": os.path.join(run_dir, "artifacts", f"{m}-{grid_name}{fmt_value(value)}-s{seed}"),
                })
    return plan
