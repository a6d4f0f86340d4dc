"""Equal tuning effort (issue 20, item 8): the same small learning-rate x steps search for every entry of a task, on
validation seeds that no leaderboard uses, scored by the task's own primary criterion.

For each (lr, steps) pair every entry runs its grid (the task's ``eps`` grid unless ``--grid``) on ``--seeds``; the
score is the hypervolume of the entry's seed-mean front on the task's primary axis pair, clipped at the retrained
model: the number the leaderboard ranks by, with the retrained anchors of the committed reference trials under
``--references``. The table printed has one row per entry, one column per setting, the setting the entry's defaults
use marked ``*`` and the best marked ``<``; ``--json`` writes the same numbers and the decisions.

    python scripts/tune_defaults.py --task gmm-concept --methods rkl,lik,esd,rkl-fixed \\
        --lrs 3e-4,1e-3,3e-3 --steps 400,800 --seeds 100 --out runs/tune-gmm-concept

Every setting is one run directory under ``--out`` (``lr<lr>-steps<steps>``); a second call resumes them, so the
search can be stopped and continued, and re-scored without training (``--score-only``). A search on further seeds
goes to its own ``--out`` and is scored together with the first by ``--merge FIRST_OUT``. With ``--steps`` the
task's stop-rule caps scale with the steps, as ``unlearnbench run --steps`` does.

The rule. An entry whose best setting on the first validation seeds is its defaults keeps them. Otherwise both
settings run on more validation seeds (``--settings LR:STEPS,LR:STEPS --seeds 102,... --merge FIRST_OUT``); among
the settings with at least four seeds, the best replaces the defaults when a paired bootstrap over the seeds both
ran (the same seeds drawn for both fronts) puts its score above theirs at one-sided 5 %, and otherwise the defaults
stay. A single seed's front is too noisy to score alone (ESD's ranged 9.2-13.2 over six validation seeds at one
setting), so the bootstrap resamples seeds under the seed-mean front. ``--defaults M=LR:STEPS`` judges other
defaults than the current ones (a decision recorded after the task file changed).
"""
from __future__ import annotations

import argparse
import json
import math
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from unlearnbench.config import plan_trials  # noqa: E402
from unlearnbench.records import read_records  # noqa: E402
from unlearnbench.results import collect_tasks  # noqa: E402
from unlearnbench.sweep import run_sweep  # noqa: E402


def setting_dir(out: str, lr: float, steps: int) -> str:
    return os.path.join(out, setting_name(lr, steps))


def method_name(entry: str) -> str:
    return entry.split(" [", 1)[0]


def load_td(run_dirs: list[str], references: list[str], task: str, axis: int = 0):
    """The task's :class:`~unlearnbench.results.TaskData` from ``run_dirs`` (one setting, one or more seed batches)
    and the reference trials under ``references`` (its anchors), with the axis pair to score (index ``axis`` of
    the task's pairs) first; None when the runs hold no trial of it."""
    from pathlib import Path

    files = [Path(d) / "records.jsonl" for d in run_dirs if (Path(d) / "records.jsonl").exists()]
    files += [p for r in references for p in Path(r).rglob("records.jsonl")]
    tds = collect_tasks(read_records(files))
    td = next((t for name, t in tds.items() if name.split(" ")[0] == task), None)
    if td is None or not td.axes:
        return None
    if not 0 <= axis < len(td.axes):
        raise SystemExit(f"--axis {axis}: {task} has axis pairs 0-{len(td.axes) - 1}: "
                         + "; ".join(f"{i}: {a[0]}/{a[1]}" for i, a in enumerate(td.axes)))
    td.axes = [td.axes[axis]] + [a for i, a in enumerate(td.axes) if i != axis]
    return td


def front_hv(td, entry: str, seeds_idx=None) -> float:
    """Hypervolume of ``entry``'s seed-mean front on the primary axes, clipped at the retrained model (the
    leaderboard's primary score); ``seeds_idx``: the seed columns to average (a bootstrap draw), default all."""
    import numpy as np

    from unlearnbench.leaderboard.stats import clipped, reference
    from unlearnbench.pareto import hypervolume_2d

    axis = td.axes[0]
    ps = td.points(entry, axis)
    ref, _ = reference(td, axis)
    if ref is None or ps.values.shape[0] == 0:
        return math.nan
    vals = ps.values if seeds_idx is None else ps.values[:, seeds_idx, :]
    with np.errstate(all="ignore"):
        mean = np.nanmean(vals, axis=1)
    mean = mean[np.all(np.isfinite(mean), axis=1)]
    return hypervolume_2d(clipped(td, axis, mean), ref, td.maximize(axis)) if mean.shape[0] else math.nan


def score(td) -> dict[str, float]:
    """Per entry: the primary score (:func:`front_hv`)."""
    return {} if td is None else {e: front_hv(td, e) for e in td.entries}


def setting_name(lr: float, steps: int) -> str:
    return f"lr{lr:g}-steps{steps}"


def compare_settings(scores: dict[str, dict[str, float]], defaults: dict[str, tuple[float, int]],
                     methods: set[str] | None = None) -> dict[str, dict]:
    """Per entry: its score under every setting, the best setting, the setting its defaults use (None when the
    search did not include it; defaults ``(lr, None)``: an entry whose grid is its steps, matched by lr alone) and the
    defaults' score as a share of the best. ``methods``: only entries of these methods (a merged folder may hold
    others, searched and decided elsewhere)."""
    out = {}
    for e in sorted({e for sc in scores.values() for e in sc}):
        if methods is not None and method_name(e) not in methods:
            continue
        row = {c: scores[c].get(e, math.nan) for c in scores}
        finite = {c: v for c, v in row.items() if math.isfinite(v)}
        best = max(finite, key=finite.get) if finite else None
        d = defaults.get(method_name(e))
        if d and d[1] is None:  # steps is the entry's grid parameter: the settings differ by lr only
            mine = next((c for c in row if c.startswith(f"lr{d[0]:g}-")), None)
        else:
            mine = setting_name(*d) if d and setting_name(*d) in row else None
        share = row[mine] / finite[best] if mine and best and finite[best] > 0 else None
        out[e] = {"scores": row, "best": best, "defaults": mine, "defaults_share_of_best": share}
    return out


def paired_bootstrap(td_best, td_mine, entry: str, n_boot: int = 2000, seed: int = 0) -> tuple[float, list[int]]:
    """One-sided p of "best scores no higher than the defaults": the share of bootstrap draws of the validation seeds
    both settings ran (the same draw for both: paired) in which the seed-mean front's hypervolume under the best
    setting is not above the defaults'. Returns (p, the seeds used); p NaN with fewer than two seeds."""
    import numpy as np

    sb, sm = td_best.points(entry, td_best.axes[0]).seeds, td_mine.points(entry, td_mine.axes[0]).seeds
    common = [s for s in sb if s in sm]
    if len(common) < 2:
        return math.nan, common
    ib, im = [sb.index(s) for s in common], [sm.index(s) for s in common]
    rng = np.random.default_rng(seed)
    worse = 0
    for _ in range(n_boot):
        draw = rng.integers(0, len(common), len(common))
        d = front_hv(td_best, entry, [ib[j] for j in draw]) - front_hv(td_mine, entry, [im[j] for j in draw])
        worse += not (d > 0)
    return worse / n_boot, common


MIN_SEEDS = 4  # a decision needs at least this many validation seeds under both settings


def n_seeds(td, entry: str) -> int:
    return 0 if td is None or entry not in td.entries else len(td.points(entry, td.axes[0]).seeds)


def decide(table: dict[str, dict], tds: dict[str, object], alpha: float = 0.05,
           min_seeds: int = MIN_SEEDS) -> dict[str, dict]:
    """Per entry, among the settings run on at least ``min_seeds`` validation seeds: the best of them replaces the
    defaults when the paired bootstrap over the seeds both ran (:func:`paired_bootstrap`) puts its primary score
    above theirs at one-sided ``alpha``; otherwise the defaults stay. ``choice`` is None (a follow-up is needed)
    when the defaults are outside the search or short of ``min_seeds`` while the search's best is not them."""
    out = {}
    for e, t in table.items():
        mine, best = t["defaults"], t["best"]
        row = {"choice": None, "p": None, "seeds": [], "against": None}
        if mine is not None and best == mine:
            row["choice"] = mine
        elif mine is not None and n_seeds(tds.get(mine), e) >= min_seeds:
            ready = {c: v for c, v in t["scores"].items()
                     if math.isfinite(v) and n_seeds(tds.get(c), e) >= min_seeds}
            top = max(ready, key=ready.get)
            row["against"] = top
            if top == mine:
                row["choice"] = mine
            else:
                p, seeds = paired_bootstrap(tds[top], tds[mine], e)
                row["seeds"] = seeds
                if math.isfinite(p) and len(seeds) >= min_seeds:
                    row["p"], row["choice"] = p, top if p < alpha else mine
        out[e] = row
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", default="gmm-concept")
    ap.add_argument("--methods", default="rkl,lik,esd,rkl-fixed")
    ap.add_argument("--grid", default="eps")
    ap.add_argument("--lrs", default="3e-4,1e-3,3e-3")
    ap.add_argument("--steps", default="400,800")
    ap.add_argument("--settings", default=None, metavar="LR:STEPS,...",
                    help="explicit (lr, steps) pairs instead of --lrs x --steps (a follow-up on more seeds)")
    ap.add_argument("--defaults", action="append", default=[], metavar="METHOD=LR:STEPS",
                    help="the defaults to judge (default: the task's current ones), e.g. to record a decision")
    ap.add_argument("--seeds", default="100", help="validation seeds (none of the leaderboards' 0-9)")
    ap.add_argument("--axis", type=int, default=0,
                    help="index of the task's axis pair to score (0: the primary; digits-concept's primary ties at its "
                         "ceiling, 1 separates its entries)")
    ap.add_argument("--references", default=None,
                    help="folders with the task's reference trials (default: leaderboards/records/robustness)")
    ap.add_argument("--out", default=None, help="default: runs/tune-<task>")
    ap.add_argument("--executor", default="ray", choices=["ray", "serial"])
    ap.add_argument("--num-cpus", type=int, default=None)
    ap.add_argument("--score-only", action="store_true", help="score the runs already under --out")
    ap.add_argument("--merge", action="append", default=[], metavar="DIR",
                    help="another --out of the same search on other seeds: scored together with this one")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    out = args.out or os.path.join("runs", f"tune-{args.task}")
    refs = [args.references or os.path.join("leaderboards", "records", "robustness")]
    if args.settings:
        settings = [(float(lr), int(st)) for lr, st in (x.split(":") for x in args.settings.split(","))]
    else:
        settings = [(float(lr), int(st)) for lr in args.lrs.split(",") for st in args.steps.split(",")]
    # the defaults each method runs with (or is judged at): the setting marked in the table
    base = plan_trials(args.task, args.methods, args.grid, args.seeds, run_dir=os.path.join(out, "defaults"))
    defaults = {}
    for t in base.trials:
        cfg = t.get("settings") or {}
        steps_grid = (t.get("grid") or {}).get("param") == "steps"  # --steps is overridden by the grid value
        defaults.setdefault(t["method"], (float(cfg["lr"]), None if steps_grid else int(cfg["steps"])))
    for d in args.defaults:
        m, v = d.split("=", 1)
        lr, st = v.split(":")
        defaults[m] = (float(lr), int(st))
    scores: dict[str, dict[str, float]] = {}
    tds: dict[str, object] = {}
    for lr, st in settings:
        name = setting_name(lr, st)
        run_dir = setting_dir(out, lr, st)
        if not args.score_only:
            sets = [f"methods.{m}.lr={lr:g}" for m in defaults if m in args.methods.split(",")]
            plan = plan_trials(args.task, args.methods, args.grid, args.seeds, run_dir=run_dir, sets=sets, steps=st)
            print(f"== lr {lr:g}, steps {st}: {len(plan.trials)} trials -> {run_dir}", flush=True)
            run_sweep(plan, executor=args.executor, num_cpus=args.num_cpus, resume=True,
                      echo=lambda line: print(line, flush=True) if line.startswith("[") else None)
        dirs = [d for d in [run_dir] + [setting_dir(m, lr, st) for m in args.merge] if os.path.isdir(d)]
        tds[name] = load_td(dirs, refs, args.task, args.axis)
        scores[name] = score(tds[name])
    table = compare_settings(scores, defaults, set(args.methods.split(",")))
    choice = decide(table, tds)
    cols = list(scores)
    pair = next((td.axes[0] for td in tds.values() if td is not None), ("?", "?"))
    print(f"\n{args.task}: hypervolume of the seed-mean front on {pair[0]} / {pair[1]} (clipped at the retrained "
          f"model); * = the defaults judged, < = best")
    print(f"{'entry':16s}" + "".join(f"{c:>20s}" for c in cols))
    for e, t in table.items():
        cells = [f"{t['scores'][c]:.4g}{'*' if c == t['defaults'] else ''}{'<' if c == t['best'] else ''}"
                 for c in cols]
        print(f"{e:16s}" + "".join(f"{x:>20s}" for x in cells))
    print("\nthe best setting replaces the defaults when a paired bootstrap over the validation seeds puts it above "
          "them (one-sided, 5 %):")
    for e, c in choice.items():
        t = table[e]
        if c["choice"] is None:
            verdict = (f"follow up: run {t['defaults']} and {t['best']} on {MIN_SEEDS} more validation seeds"
                       if t["defaults"] else "nothing decided (the defaults are outside the search)")
        elif c["choice"] == t["defaults"] and c["p"] is None:
            verdict = ("keep the defaults (they are the best)" if t["best"] == t["defaults"] else
                       f"keep the defaults (the best of the settings run on at least {MIN_SEEDS} seeds)")
        else:
            verdict = "keep the defaults" if c["choice"] == t["defaults"] else f"change to {c['choice']}"
        gain = (t["scores"][c["against"]] - t["scores"][t["defaults"]]) if c["against"] else math.nan
        print(f"  {e:16s} {verdict}" + (f" ({c['against']} - defaults {gain:+.3g}, p = {c['p']:.3g}, seeds "
                                        f"{', '.join(map(str, c['seeds']))})" if c["p"] is not None else ""))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"task": args.task, "settings": cols, "defaults": defaults, "entries": table,
                       "choice": choice}, f, indent=1)


if __name__ == "__main__":
    main()
