"""``unlearnbench validate``: check the names, grids and settings of a sweep without running it (the ``run`` flags)."""
from __future__ import annotations

import argparse
import sys

from unlearnbench.cli.run import _common, _plan


def add_parser(sub) -> None:
    p = sub.add_parser("validate", help="check names, grids and settings of a sweep without running it",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="example:\n  unlearnbench validate --task gmm-concept --methods rkl,esd --grid eps")
    _common(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from unlearnbench.config import ConfigError

    try:
        plan = _plan(args, "runs/validate")
    except (ConfigError, KeyError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"ok: {len(plan.trials)} trials of {plan.task}")
    return 0
