"""``unlearnbench ls methods|metrics|tasks|grids [NAME]``: what the registries hold, and one entry in full."""
from __future__ import annotations

import argparse
import dataclasses
import sys

EPILOG = """examples:
  unlearnbench ls methods
  unlearnbench ls methods rkl          # settings with help text, per-task defaults and grid values
  unlearnbench ls tasks gmm-concept    # forget sets, axes, options, grids, metrics
  unlearnbench ls metrics --task digits-data
  unlearnbench ls grids --task gmm-concept
"""


def add_parser(sub) -> None:
    p = sub.add_parser("ls", help="list what the registries hold", formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog=EPILOG)
    p.add_argument("what", choices=["methods", "metrics", "tasks", "grids"])
    p.add_argument("name", nargs="?", default=None, help="one method or task to show in full")
    p.add_argument("--task", default=None, help="for grids and metrics: only this task (default: every task)")
    p.add_argument("--all", action="store_true", help="for metrics: also those no installed task emits")
    p.set_defaults(func=run)


def run(args) -> int:
    from unlearnbench.config import ConfigError

    if args.name and args.what not in ("methods", "tasks"):
        raise ConfigError(f"ls {args.what} takes no NAME (got {args.name!r}); NAME works with: methods, tasks")
    show = {"methods": (list_methods, show_method), "tasks": (list_tasks, show_task),
            "metrics": (list_metrics, None), "grids": (list_grids, None)}[args.what]
    try:
        if args.name:
            show[1](args.name)
        else:
            show[0](args)
    except BrokenPipeError:  # `unlearnbench ls methods | head`
        sys.stderr.close()
    return 0


# -- methods ------------------------------------------------------------------------------------------------------
def list_methods(args) -> None:
    from unlearnbench.methods import METHODS

    for name in METHODS.names():
        try:
            cls = METHODS.get(name)
        except (ImportError, TypeError) as e:  # one broken plugin must not hide the others
            print(f"{name:8s} (failed to load: {e})  <{METHODS.origin(name)}>")
            continue
        knob = ", ".join(f"{g}->{f}" for g, f in cls.grid_params.items())
        print(f"{name:8s} [{'/'.join(cls.kinds)}] ({knob}) {METHODS.describe(name)}  <{METHODS.origin(name)}>")


def show_method(name: str) -> None:
    """One method: description, settings (type, default, valid values, help), per-task defaults and grid values."""
    from unlearnbench.methods import METHODS
    from unlearnbench.registry import plain_doc

    key = METHODS.canonical(name)
    cls = METHODS.get(key)
    aliases = METHODS.aliases(key)
    print(f"{key}{' (aliases: ' + ', '.join(aliases) + ')' if aliases else ''}  <{METHODS.origin(key)}>  "
          f"applies to: {', '.join(cls.kinds)} tasks")
    print(f"\n{plain_doc(cls.__doc__)}\n")
    print(f"settings (--set methods.{key}.FIELD=VALUE):")
    for row in setting_rows(cls.Config):
        print("  " + row)
    print(f"\ngrids sweep: {', '.join(f'{g} -> {f}' for g, f in cls.grid_params.items()) or '-'}")
    for task_cls in task_classes():
        if task_cls.kind not in cls.kinds:
            continue
        defaults = getattr(task_cls, "method_defaults", {}).get(key, {})
        print(f"\non {task_cls.name}: steps {task_cls.default_steps}"
              + "".join(f", {k}={v}" for k, v in defaults.items()))
        for label, task in forget_variants(task_cls):
            for grid, values in grid_rows(task_cls, task, key):
                print(f"  --grid {grid}{label}: {values}")


def setting_rows(config_cls: type) -> list[str]:
    """``field  type  default  valid  help`` lines of a config dataclass."""
    from unlearnbench.methods.base import field_default
    from unlearnbench.settings import describe_type, resolve_hints, type_name

    hints = resolve_hints(config_cls)
    rows = []
    for f in dataclasses.fields(config_cls):
        tp, default = hints.get(f.name), field_default(f)
        valid = describe_type(tp, f.metadata, default, f.name) if tp is not None else ""
        rows.append(f"{f.name:14s} {type_name(tp) if tp else '':6s} {default!s:9s} {valid:28s} "
                    f"{f.metadata.get('help', '')}")
    return rows


# -- tasks --------------------------------------------------------------------------------------------------------
def list_tasks(args) -> None:
    from unlearnbench.tasks import TASKS

    for name in TASKS.names():
        cls = TASKS.get(name)
        print(f"{name:16s} [{cls.kind}] forget sets: {', '.join(cls.forget_sets) or '-'}  {TASKS.describe(name)}")


def show_task(name: str) -> None:
    """One task: description, forget sets, axes, options, methods with their grid values, metrics."""
    from unlearnbench.config import applicable_methods
    from unlearnbench.registry import plain_doc
    from unlearnbench.tasks import TASKS

    key = TASKS.canonical(name)
    cls = TASKS.get(key)
    print(f"{key} [{cls.kind}]  <{TASKS.origin(key)}>  default steps: {cls.default_steps}")
    print(f"\n{plain_doc(cls.__doc__)}\n")
    print("forget sets (--set task.forget=NAME; the first is the default):")
    for fname, items in cls.forget_sets.items():
        print(f"  {fname:10s} {items}")
    print(f"axes (unlearning metric vs retention metric; the first{' that applies' if cls.axes_when else ''} is "
          f"primary):")
    for u, r in cls.axes:
        print(f"  {u} vs {r}")
    for u, r, when in cls.axes_when:
        print(f"  {u + ' vs ' + r:44s} ({when})")
    print("options (--set task.OPTION=VALUE):")
    for opt, default in {**cls.default_options, **{k: None for k in cls.option_types
                                                     if k not in cls.default_options}}.items():
        tp = cls.option_types.get(opt) or type(default)
        print(f"  {opt:18s} {tp.__name__:6s} {'-' if default is None else default}")
    print("methods and grid values (--methods NAME --grid GRID):")
    for m in applicable_methods(cls, None):
        for label, task in forget_variants(cls):
            for grid, values in grid_rows(cls, task, m):
                print(f"  {m:8s} --grid {grid + label:22s} {values}")
    print("metrics:")
    for metric, (role, hib, doc) in cls.metric_specs().items():
        print(f"  {metric:30s} {role:10s} {'higher' if hib else 'lower':6s} is better  {doc}")


def task_classes() -> list[type]:
    from unlearnbench.tasks import TASKS

    return [TASKS.get(name) for name in TASKS.names()]


def forget_variants(task_cls: type) -> list[tuple[str, object]]:
    """("", default instance) plus (" (forget=NAME)", instance) for each forget set whose grids differ."""
    out: list[tuple[str, object]] = []
    for i, fname in enumerate(list(task_cls.forget_sets) or [None]):
        try:
            task = task_cls({"forget": fname} if i else None)
        except Exception:  # noqa: BLE001 - a task that cannot be built bare still lists its class-level grids
            task = None
        if not out or (task is not None and getattr(task, "grids", None) != getattr(out[0][1], "grids", None)):
            out.append((f" (forget={fname})" if i else "", task))
    return out


def grid_rows(task_cls: type, task, method: str) -> list[tuple[str, str]]:
    """(grid name, values as text) of every grid with values for ``method`` on this task."""
    from unlearnbench.config import grid_names, grid_values

    rows = []
    for grid in grid_names(task_cls, method):
        try:
            values = grid_values(task, grid, method) if task is not None else task_cls.grids[grid][method]
        except (ValueError, KeyError):
            continue
        rows.append((grid, ", ".join(f"{v:g}" for v in values)))
    return rows


# -- metrics and grids --------------------------------------------------------------------------------------------
def list_metrics(args) -> None:
    """Every metric the tasks emit, with its role, direction and the tasks; ``--all`` adds the metric library's."""
    from unlearnbench.tasks import TASKS

    names = [TASKS.canonical(args.task)] if args.task else TASKS.names()
    emitted: dict[str, tuple] = {}
    for tname in names:
        for metric, spec in TASKS.get(tname).metric_specs().items():
            emitted.setdefault(metric, (spec, []))[1].append(tname)
    for metric, ((role, hib, doc), tasks) in sorted(emitted.items()):
        print(f"{metric:30s} {role:10s} {'higher' if hib else 'lower':6s} {','.join(tasks):28s} {doc}")
    if args.all:
        from unlearnbench.metrics import METRICS
        from unlearnbench.tasks.base import metric_matches

        for name in METRICS.names():
            s = METRICS.get(name)
            if not any(metric_matches(p, name) for p in emitted):
                print(f"{name:30s} {s.role:10s} {'higher' if s.higher_is_better else 'lower':6s} "
                      f"{'(no task emits it)':28s} {s.doc}")


def list_grids(args) -> None:
    from unlearnbench.config import applicable_methods
    from unlearnbench.tasks import TASKS

    only = TASKS.canonical(args.task) if args.task else None
    for cls in task_classes():
        if only and cls.name != only:
            continue
        for m in applicable_methods(cls, None):
            for label, task in forget_variants(cls):
                for grid, values in grid_rows(cls, task, m):
                    print(f"{cls.name + label:28s} {grid:8s} {m:8s} {values}")
