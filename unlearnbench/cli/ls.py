"""``unlearnbench ls methods|metrics|tasks|grids``."""
from __future__ import annotations

import argparse


def add_parser(sub) -> None:
    p = sub.add_parser("ls", help="list what the registries hold", formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="examples:\n  unlearnbench ls methods\n  unlearnbench ls grids --task gmm-concept")
    p.add_argument("what", choices=["methods", "metrics", "tasks", "grids"])
    p.add_argument("--task", default=None, help="for grids: the task (default: every task)")
    p.set_defaults(func=run)


def run(args) -> int:
    if args.what == "methods":
        from unlearnbench.methods import METHODS

        for name in METHODS.names():
            cls = METHODS.get(name)
            knob = ", ".join(f"{g}->{f}" for g, f in cls.grid_params.items())
            print(f"{name:8s} [{'/'.join(cls.kinds)}] ({knob}) {METHODS.describe(name)}  <{METHODS.origin(name)}>")
    elif args.what == "tasks":
        from unlearnbench.tasks import TASKS

        for name in TASKS.names():
            cls = TASKS.get(name)
            print(f"{name:16s} [{cls.kind}] forget sets: {', '.join(cls.forget_sets) or '-'}  {TASKS.describe(name)}")
    elif args.what == "metrics":
        from unlearnbench.metrics import METRICS

        for name in METRICS.names():
            s = METRICS.get(name)
            arrow = "higher" if s.higher_is_better else "lower"
            print(f"{name:22s} {s.role:10s} {arrow:6s} is better  [{s.family}] {s.doc}")
    else:
        from unlearnbench.tasks import TASKS

        names = [TASKS.canonical(args.task)] if args.task else TASKS.names()
        for tname in names:
            cls = TASKS.get(tname)
            for grid, by_method in cls.grids.items():
                for m, vals in by_method.items():
                    print(f"{tname:16s} {grid:8s} {m:6s} {', '.join(f'{v:g}' for v in vals)}")
    return 0
