"""``unlearnbench`` command line: run, ls, pretrain, leaderboard, claims, validate."""
from __future__ import annotations

import argparse
import sys

from unlearnbench.cli import ls as ls_cmd
from unlearnbench.cli import run as run_cmd


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="unlearnbench", description="Benchmark harness for unlearning in diffusion models.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  unlearnbench run --methods rkl,esd --grid eps\n"
               "  unlearnbench run --task gmm-data --methods fkl,siss --grid eps --seeds 0,1\n"
               "  unlearnbench ls methods\n  unlearnbench leaderboard")
    p.add_argument("-v", "--verbose", action="count", default=0, help="-v info, -vv debug")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run_cmd.add_parser(sub)
    run_cmd.add_validate_parser(sub)
    ls_cmd.add_parser(sub)
    run_cmd.add_pretrain_parser(sub)
    try:
        from unlearnbench.cli import leaderboard as lb_cmd
    except ImportError:  # pragma: no cover - optional during development
        lb_cmd = None
    if lb_cmd is not None:
        lb_cmd.add_parser(sub)
        if hasattr(lb_cmd, "add_claims_parser"):
            lb_cmd.add_claims_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    from unlearnbench.log import setup_logging

    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
