"""``unlearnbench`` command line: run, ls, pretrain, leaderboard, claims, compare, validate, attack, evaluate."""
from __future__ import annotations

import argparse
import sys

from unlearnbench import __version__
from unlearnbench.cli import attack as attack_cmd
from unlearnbench.cli import claims as claims_cmd
from unlearnbench.cli import compare as compare_cmd
from unlearnbench.cli import evaluate as evaluate_cmd
from unlearnbench.cli import leaderboard as lb_cmd
from unlearnbench.cli import ls as ls_cmd
from unlearnbench.cli import pretrain as pretrain_cmd
from unlearnbench.cli import run as run_cmd
from unlearnbench.cli import validate as validate_cmd
from unlearnbench.registry import UnknownNameError
from unlearnbench.settings import ConfigError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="unlearnbench", description="Benchmark harness for unlearning in diffusion models.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  unlearnbench run --methods rkl,esd --grid eps\n"
               "  unlearnbench run --task gmm-data --methods fkl,siss --grid eps --seeds 0,1\n"
               "  unlearnbench ls methods\n  unlearnbench leaderboard")
    p.add_argument("-v", "--verbose", action="count", default=0, help="-v info, -vv debug (also after the command)")
    p.add_argument("--version", action="version", version=f"unlearnbench {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for cmd in (run_cmd, validate_cmd, ls_cmd, pretrain_cmd, attack_cmd, compare_cmd, evaluate_cmd, lb_cmd,
                claims_cmd):
        cmd.add_parser(sub)  # one subcommand per module of cli/
    for cmd in sub.choices.values():  # global flags are accepted after the command too
        cmd.add_argument("-v", "--verbose", dest="verbose_after", action="count", default=0, help=argparse.SUPPRESS)
        cmd.add_argument("--version", action="version", version=f"unlearnbench {__version__}", help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    from unlearnbench.log import setup_logging

    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.verbose + getattr(args, "verbose_after", 0))
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ConfigError, UnknownNameError, ImportError) as e:  # bad input (a model path too) or a broken plugin
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a folder that cannot be written, a full disk: the file and the reason, not a traceback
        print(f"error: {e.filename + ': ' if e.filename else ''}{e.strerror or e}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
