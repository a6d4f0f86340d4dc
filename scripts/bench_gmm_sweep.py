"""Benchmark: the default GMM sweep (6-point eps grid x 2 methods) under Ray Tune vs the same trials one after
another in one process, and (``--plain``) the same trials on plain worker processes with no Ray at all, which
measures what the machine itself allows two processes at once (the ceiling of any executor's parallel efficiency
here). Reports wall time (Ray start-up included), CPU time (this process and every process it
started: Ray's GCS, raylet and workers, read from /proc every 0.25 s) with trials per CPU-second, the per-trial split
(setup, training, evaluation) and Ray's parallel efficiency and per-trial overhead. On a shared machine the wall
times depend on the load; CPU time much less.

    python scripts/bench_gmm_sweep.py [--task gmm-concept] [--methods rkl,esd] [--seeds 0] [--num-cpus 2] [--plain]
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import threading
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from unlearnbench.config import plan_trials  # noqa: E402
from unlearnbench.sweep import run_sweep  # noqa: E402
from unlearnbench.trials import prepare_task  # noqa: E402


class CPUMeter:
    """CPU seconds (user + system) of this process and all its descendants, sampled from /proc while it runs: a
    process's last sample stands for it after it exits (Ray's workers are not waited for by this process, so
    ``getrusage(RUSAGE_CHILDREN)`` would miss them)."""

    def __init__(self, every_s: float = 0.25):
        self.every_s, self.seen, self._stop = every_s, {}, threading.Event()
        self.tick = os.sysconf("SC_CLK_TCK")

    def _sample(self) -> None:
        procs = {}
        for d in os.listdir("/proc"):
            if d.isdigit():
                try:
                    with open(f"/proc/{d}/stat") as f:
                        st = f.read().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                procs[int(d)] = (int(st[1]), (int(st[11]) + int(st[12])) / self.tick)  # ppid, utime + stime
        me, mine, frontier = os.getpid(), set(), {os.getpid()}
        while frontier:
            mine |= frontier
            frontier = {p for p, (pp, _) in procs.items() if pp in frontier and p not in mine}
        for p in mine - {me}:
            self.seen[p] = max(self.seen.get(p, 0.0), procs[p][1])

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            self._sample()

    def __enter__(self):
        self._sample()
        self.base = dict(self.seen)  # processes (and CPU) from before the measured block
        self.t0 = time.process_time()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self._sample()
        children = sum(v - self.base.get(p, 0.0) for p, v in self.seen.items())
        self.seconds = time.process_time() - self.t0 + children


def split(records):
    keys = ("setup_s", "train_s", "eval_s", "total_s", "report_s")  # report_s: waits on Tune's reports (Ray only)
    return {k: sum((r.get("timing") or {}).get(k) or 0.0 for r in records) for k in keys}


def run_plain(plan, num_cpus: int) -> list[dict]:
    """The plan's trials, longest first, on ``num_cpus`` spawned processes taking the next trial as they free up
    (Ray's scheduling without Ray; one torch thread per trial, which the runner sets from the spec as under Ray);
    the records are returned, not written."""
    import multiprocessing as mp

    from unlearnbench.sweep import longest_first, with_resources
    from unlearnbench.trials import execute_trial

    todo = [with_resources(t, 1, 0) for t in longest_first(list(plan.trials))]
    with mp.get_context("spawn").Pool(num_cpus) as pool:
        return list(pool.imap_unordered(execute_trial, todo, chunksize=1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", default="gmm-concept")
    ap.add_argument("--methods", default="rkl,esd")
    ap.add_argument("--grid", default="eps")
    ap.add_argument("--seeds", default="0", help="seeds of the sweep (the default sweep is seed 0's 12 trials)")
    ap.add_argument("--num-cpus", type=int, default=os.cpu_count())
    ap.add_argument("--skip-serial", action="store_true")
    ap.add_argument("--plain", action="store_true",
                    help="also run the trials on plain processes (no Ray): the machine's own parallel ceiling")
    args = ap.parse_args()
    root = tempfile.mkdtemp(prefix="ub-bench-")
    results = {}
    # warm the cache (distilled model, oracle) once, outside both timings, as a second `run` would find it
    prepare_task(plan_trials(args.task, args.methods, args.grid, "0", run_dir=os.path.join(root, "warm")))
    for executor in (["ray"] if args.skip_serial else ["ray", "serial"]) + (["plain"] if args.plain else []):
        plan = plan_trials(args.task, args.methods, args.grid, args.seeds, run_dir=os.path.join(root, executor))
        t0 = time.perf_counter()
        with CPUMeter() as cpu:
            if executor == "plain":
                recs = run_plain(plan, args.num_cpus)
            else:
                recs = run_sweep(plan, executor=executor, num_cpus=args.num_cpus, echo=lambda s: None)
        wall = time.perf_counter() - t0
        results[executor] = (wall, recs)
        s = split(recs)
        ok = sum(r["status"] == "ok" for r in recs)
        print(f"{executor:6s}: {len(recs)} trials ({ok} ok) in {wall:6.1f}s wall, {cpu.seconds:6.1f} CPU-s "
              f"({len(recs) / cpu.seconds:.3f} trials per CPU-second) | summed per-trial: setup {s['setup_s']:.1f}s, "
              f"train {s['train_s']:.1f}s (of which waiting on Tune's reports {s['report_s']:.1f}s), eval {s['eval_s']:.1f}s, "
              f"total {s['total_s']:.1f}s", flush=True)
    if "serial" in results:
        (rw, rrecs), (sw, _) = results["ray"], results["serial"]
        n = len(rrecs)
        eff = sw / (rw * args.num_cpus)
        trial_s, slots = split(rrecs)["total_s"], rw * args.num_cpus
        overhead, busy = (slots - trial_s) / n, trial_s / slots
        print(f"speed-up {sw / rw:.2f}x on {args.num_cpus} CPUs, parallel efficiency {eff:.0%}, "
              f"Ray overhead ≈ {overhead:.2f} CPU-s per trial (Ray wall x CPUs - summed trial time, / trials); "
              f"Ray's CPU slots spent in trials {busy:.0%} (read from the Ray run alone, so not moved by the machine's "
              f"speed drifting between the two runs)")
        if "plain" in results:
            (pw, precs), (_, srecs) = results["plain"], results["serial"]
            slow = split(precs)["total_s"] / split(srecs)["total_s"]
            print(f"plain processes, no Ray: speed-up {sw / pw:.2f}x, parallel efficiency {sw / (pw * args.num_cpus):.0%}"
                  f" (the machine's ceiling); each trial {slow - 1:+.0%} slower than alone; Ray reaches "
                  f"{pw / rw:.0%} of it", flush=True)
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
