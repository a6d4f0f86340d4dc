"""``unlearnbench pretrain``: train and cache a task's pretrained model(s), or copy the shipped ones."""
from __future__ import annotations

import argparse
import os
import sys


def add_parser(sub) -> None:
    p = sub.add_parser("pretrain", help="train and cache a task's pretrained model(s), or copy the shipped ones",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="example:\n  unlearnbench pretrain --task digits")
    p.add_argument("--task", default="digits", help="a task name, 'digits' for both digits tasks or 'gmm' for both "
                                                    "mixture tasks (with their retrained references)")
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--no-shipped", action="store_true",
                   help="build what is not in the cache here, instead of copying the artefacts shipped with the package "
                        "(digits: about 26 minutes on 2 cores)")
    p.set_defaults(func=run)


def run(args) -> int:
    from unlearnbench.cache import default_cache_dir, used_artefacts
    from unlearnbench.config import ConfigError, check_writable_dir
    from unlearnbench.tasks import TASKS

    try:
        check_writable_dir(args.cache_dir or default_cache_dir(), "--cache-dir" if args.cache_dir else
                           "cache directory ($UNLEARNBENCH_CACHE or ~/.cache/unlearnbench)")
        name = args.task if args.task in ("digits", "gmm") else TASKS.canonical(args.task)
        if name not in ("digits", "gmm") and "model" in TASKS.get(name).default_options:
            raise ConfigError(f"pretrain --task {name}: this task unlearns from weights you give "
                              f"(`unlearnbench run --task {name} --model PATH`), nothing is pretrained for it; "
                              f"pretrain builds the models of {', '.join(_pretrained_tasks())} (or 'digits', 'gmm')")
    except (ConfigError, KeyError) as e:
        print(f"error: {e}{' (or digits, gmm)' if isinstance(e, KeyError) else ''}", file=sys.stderr)
        return 2
    if args.no_shipped:
        os.environ["UNLEARNBENCH_SHIPPED"] = "0"
    if args.task in ("digits", "gmm"):
        from unlearnbench.tasks._digits import pretrain as digits_pretrain
        from unlearnbench.tasks._gmm import pretrain as gmm_pretrain

        start = len(used_artefacts())
        report = digits_pretrain("digits", cache_dir=args.cache_dir, progress=True) if args.task == "digits" else \
            gmm_pretrain(cache_dir=args.cache_dir)
        for k, v in (report or {}).items():
            print(f"{k}: {v}")
        first: dict[tuple[str, object], str] = {}
        for kind, path, source in used_artefacts()[start:]:
            first.setdefault((kind, path), source)  # the data task loads the base UNet again, from the cache
        for (kind, path), source in first.items():
            print(f"{kind}: {source} ({path})")
        return 0
    TASKS.get(name)(None, cache_dir=args.cache_dir).prepare()
    print(f"{name}: pretrained models cached")
    return 0


def _pretrained_tasks() -> list[str]:
    """The tasks whose models unlearnbench builds (no ``model`` option)."""
    from unlearnbench.tasks import TASKS

    return [n for n in TASKS.names() if "model" not in TASKS.get(n).default_options]
