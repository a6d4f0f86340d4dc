"""Run a command and time its console: when each output line (stdout and stderr merged) appeared, how long the
first line took, and the longest silence. A newcomer's check that long work shows progress.

    python scripts/console_gaps.py [--log FILE] [--max-first S] [--max-gap S] -- COMMAND [ARGS...]
    UNLEARNBENCH_CACHE=$(mktemp -d) python scripts/console_gaps.py -- \
        unlearnbench run --task gmm-concept --methods rkl --grid smoke --out /tmp/gaps-run

Progress bars redraw a line with carriage returns; each redraw counts as output (it is what a user sees move).
Prints every line with its time since the start, then the first-line time, the largest gap (with the line that
ended it) and the command's exit code. Exits 1 when --max-first or --max-gap is exceeded, else the command's code.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time


def read_chunks(stream, t0: float):
    """(seconds since start, text) for each line or carriage-return redraw, as it arrives."""
    buf = b""
    while True:
        b = stream.read1(4096) if hasattr(stream, "read1") else stream.read(1)
        if not b:
            break
        buf += b
        while True:
            cut = min((i for i in (buf.find(b"\n"), buf.find(b"\r")) if i >= 0), default=-1)
            if cut < 0:
                break
            line, buf = buf[:cut], buf[cut + 1:]
            if line.strip():
                yield time.monotonic() - t0, line.decode("utf-8", "replace")
    if buf.strip():
        yield time.monotonic() - t0, buf.decode("utf-8", "replace")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--log", default=None, help="also write the timestamped lines to this file")
    p.add_argument("--max-first", type=float, default=None, help="fail when the first line takes longer (s)")
    p.add_argument("--max-gap", type=float, default=None, help="fail when any silence is longer (s)")
    p.add_argument("--quiet", action="store_true", help="do not echo the lines, only the summary")
    p.add_argument("command", nargs=argparse.REMAINDER)
    args = p.parse_args(argv)
    cmd = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not cmd:
        p.error("give a command after --")
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    log = open(args.log, "w", encoding="utf-8") if args.log else None
    times, prev, gap, gap_line = [], 0.0, 0.0, ""
    for t, line in read_chunks(proc.stdout, t0):
        row = f"{t:8.1f}s  +{t - prev:6.1f}s  {line}"
        if not args.quiet:
            print(row, flush=True)
        if log:
            log.write(row + "\n")
        if t - prev > gap:
            gap, gap_line = t - prev, line
        times.append(t)
        prev = t
    rc = proc.wait()
    end = time.monotonic() - t0
    if end - prev > gap:  # silence before the exit counts too
        gap, gap_line = end - prev, "(exit)"
    first = times[0] if times else end
    summary = (f"lines: {len(times)}  total: {end:.1f}s  first line after: {first:.1f}s  largest gap: {gap:.1f}s "
               f"(ended by: {gap_line.strip()[:100]})  exit code: {rc}")
    print(summary, flush=True)
    if log:
        log.write(summary + "\n")
        log.close()
    bad = (args.max_first is not None and first > args.max_first) or (args.max_gap is not None and gap > args.max_gap)
    return 1 if bad else rc


if __name__ == "__main__":
    sys.exit(main())
