"""``unlearnbench leaderboard``: read run records, never re-run anything."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from unlearnbench.records import RECORDS

DEFAULT_RUNS = "runs"
DEFAULT_OUT = "leaderboards"

_LEADERBOARD_EPILOG = """examples:
  unlearnbench leaderboard                                   # every run under runs/ -> leaderboards/
  unlearnbench leaderboard --runs runs/gmm-concept runs/gmm-data --out /tmp/lb
  xdg-open leaderboards/index.html                           # static page, works offline
"""

def _add_runs_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--runs", metavar="DIR", nargs="+", action="extend", default=None,
                        help=f"run directories (searched recursively for {RECORDS}) or {RECORDS} files; "
                             f"repeatable (default: every directory under ./{DEFAULT_RUNS}/ holding {RECORDS})")


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``leaderboard`` on the main parser's subparsers; sets ``func=run``."""
    p = subparsers.add_parser(
        "leaderboard", help="rebuild leaderboards (CSV, plots, index.html) from run records",
        description="Rebuild per-task leaderboards from trial records: Pareto fronts per method and settings, "
                    "hypervolume and retention at matched unlearning levels with 95 % intervals, convergence and "
                    "constraint satisfaction, gap to exact fronts, cost and provenance; plots and one static "
                    "index.html. Records only: nothing is re-run. Writes only the given tasks' files and deletes "
                    "nothing, so one run can be added to a full leaderboard folder.",
        epilog=_LEADERBOARD_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_runs_flag(p)
    p.add_argument("--out", metavar="DIR", default=DEFAULT_OUT,
                   help=f"output directory (default: ./{DEFAULT_OUT}/): a new or empty folder, or one an earlier "
                        f"build wrote (it holds .unlearnbench-leaderboard); any other folder is refused")
    p.set_defaults(func=run)
    return p


def resolve_runs(runs: list[str] | None) -> list[Path]:
    """Absolute paths of the given run dirs/files, or every records file under ./runs/.

    Raises:
        FileNotFoundError: a given path does not exist, or no records were found.
    """
    if runs:
        paths = [Path(r).resolve() for r in runs]
        missing = [str(p) for p in paths if not p.exists()]
        if missing:
            raise FileNotFoundError(f"--runs: no such file or directory: {', '.join(missing)}")
        return paths
    root = Path(DEFAULT_RUNS).resolve()
    found = sorted(root.rglob(RECORDS)) if root.is_dir() else []
    if not found:
        raise FileNotFoundError(f"no {RECORDS} under {root}; run `unlearnbench run` first or pass --runs DIR")
    return found  # the files themselves, so nested run dirs are not read twice


def run(args: argparse.Namespace) -> int:
    from unlearnbench.leaderboard import build_leaderboard
    from unlearnbench.records import read_records
    from unlearnbench.config import ConfigError, check_writable_dir
    from unlearnbench.rundir import OutDirRefused, check_out_dir

    out = Path(args.out).resolve()
    try:
        check_out_dir(out)
        check_writable_dir(str(out), "--out")
        runs = resolve_runs(args.runs)
    except (FileNotFoundError, OutDirRefused, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not read_records(runs):
        print(f"error: no records found in {', '.join(str(p) for p in runs)}", file=sys.stderr)
        return 2
    try:
        result = build_leaderboard(runs, out)
    except OutDirRefused as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"error: cannot write the leaderboard to {out}: {e.strerror or e}; give a writable folder",
              file=sys.stderr)
        return 2
    for name, info in result["tasks"].items():
        ranking = ", ".join(m for m in info["ranking"]) or "-"
        print(f"{name}: {info['n_ok']} ok, {info['n_diverged']} diverged, {info['n_failed']} failed; "
              f"ranking {ranking} -> {info['csv']}")
    if result["failed"]:
        print(f"{len(result['failed'])} diverged or failed trial(s) listed per task in {result['index']}")
    print(f"leaderboard: {result['index']}")
    return 0


