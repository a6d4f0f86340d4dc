"""``unlearnbench claims``: check the paper's claims against the leaderboard's records."""
from __future__ import annotations

import argparse
import sys

from unlearnbench.cli.leaderboard import _add_runs_flag, resolve_runs

_CLAIMS_EPILOG = """examples:
  unlearnbench claims                                        # every run under runs/
  unlearnbench claims --runs runs/gmm-concept runs/gmm-data
"""


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``claims`` on the main parser's subparsers; sets ``func=run``."""
    p = subparsers.add_parser(
        "claims", help="check the paper's three claims on run records",
        description="Check the paper's claims (rkl dominates ESD on concept tasks, fkl dominates SISS on data "
                    "tasks, lik preserves retained concepts better at matched unlearning), each a family of "
                    "`unlearnbench compare` comparisons at unlearning levels fixed from the pretrained and retrained "
                    "models: per comparison the verdict, the retention difference with its 95 % t interval, the "
                    "Holm-adjusted p-value, the effect size, the levels and seeds.",
        epilog=_CLAIMS_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_runs_flag(p)
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from unlearnbench.claims import check_claims, format_claims
    from unlearnbench.records import read_records

    try:
        runs = resolve_runs(args.runs)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    records = read_records(runs)
    if not records:
        print(f"error: no records found in {', '.join(str(p) for p in runs)}", file=sys.stderr)
        return 2
    print(format_claims(check_claims(records)))
    return 0
