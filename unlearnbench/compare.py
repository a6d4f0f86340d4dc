"""``compare``: is entry A better than entry B at matched unlearning, the same, or can the seeds not tell?

One comparison of two entries of a task on one axis pair (unlearning metric U, retention metric R):

1. **Levels fixed before looking** (:mod:`unlearnbench.protocol`): 25/50/75/100 % of the way from the pretrained
   model's U to the retrained model's. Nothing about the two entries moves them.
2. **Per seed both ran**, each entry's front is its non-dominated valid points over the grid, with U clipped at the
   retrained value (overshoot earns nothing); its retention at a level is read along the front
   (:func:`unlearnbench.pareto.retention_at`: a stronger unlearning also meets a weaker level). An entry whose front
   does not reach a level is *missing* there, never credited with its weakest point.
3. **The statistic** is, per seed, the retention difference A - B (oriented: positive = A retains more) averaged over
   the levels both entries reach on every shared seed. Its mean over seeds is the **estimate**, with Student's t
   **interval** (95 %) and a two-sided paired t test (``p_value``) of "no difference". A verdict needs at least 3
   seeds: with 2 (one degree of freedom) the test said "better" in 7.5 % of 400 simulated nulls, with 3 in 4.8 % of
   1500.

   Why a t test and not an exact sign-flip permutation test: with n seeds the smallest p-value a sign-flip test can
   give is 2 / 2^n, 0.25 at 3 seeds and 0.0625 at 5, so it could never reject at 5 % with fewer than 6 seeds. The t
   test is exact when the per-seed differences are normal, and ``tests/test_compare.py`` measures its false-verdict
   rate under simulated nulls (including skewed, heavy-tailed seed effects), as ``scripts/null_rate.py`` does on
   null twins of the committed entries.
4. **Multiplicity**: the p-values of one family (the comparisons behind one claim; the axes of one ``compare`` call)
   are Holm-adjusted.
5. **The verdict**: ``a_better`` / ``b_better`` when the adjusted p < alpha *and* the estimate is at least the
   task's minimum effect for R (``Task.minimum_effects``, default: its equivalence margin); ``equivalent`` when the
   two one-sided tests (TOST) against the task's equivalence margin for R (``Task.equivalence_margins``) both reject
   (adjusted); otherwise ``inconclusive``, with the number of seeds that would settle it at the observed spread.

Constrained entries (rkl, fkl, lik, ...) count only their settled trials (:func:`unlearnbench.protocol.settled`)
unless ``settled_only=False``: an unsettled trial is not a result of its formulation.
"""
from __future__ import annotations

import fnmatch
import json
import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from unlearnbench.pareto import pareto_front, retention_at
from unlearnbench.protocol import FRACTIONS, Anchor, declared, settled
from unlearnbench.results import Axis, TaskData, axis_label

A_BETTER, B_BETTER, EQUIVALENT, INCONCLUSIVE = "a_better", "b_better", "equivalent", "inconclusive"
VERDICTS = (A_BETTER, B_BETTER, EQUIVALENT, INCONCLUSIVE)
ALPHA = 0.05
MIN_SEEDS = 3  # fewer: always inconclusive (see the module docstring)
MAX_SEEDS = 1000


@dataclass
class Comparison:
    """One comparison's numbers; ``verdict`` is final only after :func:`decide` (Holm over its family)."""

    task: str
    axis: Axis
    a: str
    b: str
    verdict: str = INCONCLUSIVE
    estimate: float = math.nan  # mean over seeds of the per-seed retention difference A - B (oriented)
    interval: tuple[float, float] = (math.nan, math.nan)  # 95 % t interval of the estimate
    p_value: float = math.nan  # two-sided paired t test of no difference
    p_adjusted: float = math.nan  # Holm within its family
    p_equivalence: float = math.nan  # TOST against the margin
    p_equivalence_adjusted: float = math.nan
    effect_size: float = math.nan  # Cohen's d_z: estimate / sd of the per-seed differences
    margin: float | None = None  # equivalence margin of the retention metric
    min_effect: float | None = None  # smallest difference that counts as "better"
    seeds: list = field(default_factory=list)  # the seeds both entries have (with a difference)
    per_seed: list = field(default_factory=list)  # the per-seed differences
    levels: list = field(default_factory=list)  # per fixed level: {fraction, value, n_a, n_b, used, mean_diff}
    anchor: dict | None = None
    reach: dict = field(default_factory=dict)  # entry -> strongest fraction its front reaches on every seed
    seeds_needed: int | None = None
    reason: str = ""
    matched: bool | None = None  # claim 3 only: whether a's front reaches every fixed level b's reaches

    def to_dict(self) -> dict[str, Any]:
        return {"task": self.task, "axes": axis_label(self.axis), "unlearning_metric": self.axis[0],
                "retention_metric": self.axis[1], "a": self.a, "b": self.b, "verdict": self.verdict,
                "estimate": self.estimate, "interval": list(self.interval), "p_value": self.p_value,
                "p_adjusted": self.p_adjusted, "p_equivalence": self.p_equivalence,
                "p_equivalence_adjusted": self.p_equivalence_adjusted, "effect_size": self.effect_size,
                "margin": self.margin, "min_effect": self.min_effect, "seeds": self.seeds,
                "per_seed": self.per_seed, "levels": self.levels, "anchor": self.anchor, "reach": self.reach,
                "seeds_needed": self.seeds_needed, "reason": self.reason, "matched": self.matched}


def from_dict(d: dict[str, Any]) -> Comparison:
    """The :class:`Comparison` that :meth:`Comparison.to_dict` wrote (claims store their comparisons as JSON)."""
    c = Comparison(d["task"], (d["unlearning_metric"], d["retention_metric"]), d["a"], d["b"])
    for k in ("verdict", "estimate", "p_value", "p_adjusted", "p_equivalence", "p_equivalence_adjusted",
              "effect_size", "margin", "min_effect", "seeds", "per_seed", "levels", "anchor", "reach",
              "seeds_needed", "reason", "matched"):
        if k in d:
            setattr(c, k, math.nan if d[k] is None and k.startswith(("p_", "estimate", "effect")) else d[k])
    c.interval = tuple(math.nan if x is None else x for x in d.get("interval", (None, None)))
    return c


def constrained(td: TaskData, entry: str) -> bool:
    """Whether an entry's trials carry duals (a constrained formulation)."""
    return any(settled(r) is not None for r in td.trials if r["_entry"] == entry and r.get("status") == "ok")


def seed_fronts(td: TaskData, entry: str, axis: Axis, anchor: Anchor | None,
                settled_only: bool = True) -> dict[str, np.ndarray]:
    """Per seed (JSON key), the entry's front on ``axis`` from its valid (and, for a constrained entry with
    ``settled_only``, settled) points, the unlearning coordinate clipped at the retrained value."""
    keep_unsettled = not (settled_only and constrained(td, entry))
    by_seed: dict[str, list] = {}
    for r in td.trials:
        if r["_entry"] != entry or r.get("status") != "ok" or not (keep_unsettled or settled(r)):
            continue
        m = r.get("metrics") or {}
        try:
            u, v = float(m[axis[0]]["value"]), float(m[axis[1]]["value"])
        except (KeyError, TypeError, ValueError):
            continue
        if not (math.isfinite(u) and math.isfinite(v)):
            continue
        by_seed.setdefault(json.dumps(r.get("seed")), []).append((anchor.clip(u) if anchor else u, v))
    mx = td.maximize(axis)
    out = {}
    for s, pts in by_seed.items():
        p = np.array(pts, dtype=float)
        out[s] = p[pareto_front(p, mx)]
    return out


def noise_floor(td: TaskData, metric: str, entries: Sequence[str]) -> float:
    """The smallest spread a per-seed difference of a rate ``metric`` (``k/n``) between ``entries`` can honestly have:
    one evaluation's binomial noise, sqrt(se_a^2 + se_b^2), each se the median over the entry's valid trials of
    max(stderr, sqrt(p(1-p)/n)) with p = (k + 1/2)/(n + 1). Rates are discrete: two entries at 864/864 on every seed
    are not "certainly equal", and a difference that repeats exactly on three seeds is not certain. 0 for a
    continuous metric: its evaluation noise is shared by both entries (the same reference samples), and the spread
    over seeds already holds it."""
    if not td.rates.get(metric):
        return 0.0
    var = 0.0
    for e in entries:
        ses = []
        for row in td.rows:
            if row["entry"] != e or row["metric"] != metric or row["status"] != "ok":
                continue
            se = row["stderr"] if row["stderr"] is not None and math.isfinite(row["stderr"]) else 0.0
            n = int(row["n"] or 0)
            p = (round(row["value"] * n) + 0.5) / (n + 1)
            ses.append(max(se, math.sqrt(p * (1 - p) / n)) if n else 0.0)
        var += float(np.median(ses)) ** 2 if ses else 0.0
    return math.sqrt(var)


def _match(table: dict[str, float], metric: str) -> float | None:
    """The value of ``metric``'s entry in a table keyed by names or fnmatch patterns (an exact name first)."""
    if metric in table:
        return table[metric]
    return next((v for k, v in table.items() if fnmatch.fnmatchcase(metric, k)), None)


def margins(task: str, metric: str) -> tuple[float | None, float | None]:
    """(equivalence margin, minimum effect) the task declares for a retention metric (None: not declared)."""
    margin = _match(declared(task, "equivalence_margins", {}) or {}, metric)
    effect = _match(declared(task, "minimum_effects", {}) or {}, metric)
    effect = margin if effect is None else effect
    return (None if margin is None else float(margin)), (None if effect is None else float(effect))


def measure(td: TaskData, axis: Axis, a: str, b: str, anchors: dict[str, Anchor] | None = None,
            settled_only: bool = True) -> Comparison:
    """The numbers of one comparison (estimate, interval, unadjusted p-values); :func:`decide` gives the verdict."""
    from scipy.stats import t as student_t

    anchors = td.anchors if anchors is None else anchors
    c = Comparison(td.name, tuple(axis), a, b)
    c.margin, c.min_effect = margins(td.name, axis[1])
    anchor = anchors.get(axis[0])
    if anchor is None:
        c.reason = (f"no anchor for {axis[0]}: neither a retrained reference evaluation nor a declared target, so "
                    f"there are no fixed levels")
        return c
    c.anchor = anchor.to_dict()
    fa, fb = seed_fronts(td, a, axis, anchor, settled_only), seed_fronts(td, b, axis, anchor, settled_only)
    for e, f in ((a, fa), (b, fb)):
        if not f:
            kind = "settled " if settled_only and constrained(td, e) else "valid "
            c.reason = f"no {kind}points for {e}"
            return c
    mx = td.maximize(axis)
    sr = 1.0 if mx[1] else -1.0
    levels = np.array(anchor.levels())
    seeds = sorted(set(fa) & set(fb))
    if not seeds:
        c.reason = "the two entries share no seed"
        return c
    ra = np.array([retention_at(fa[s], levels, mx) for s in seeds])  # [n, L], NaN where a level is not reached
    rb = np.array([retention_at(fb[s], levels, mx) for s in seeds])
    for e, r in ((a, ra), (b, rb)):
        reached = np.all(np.isfinite(r), axis=0)
        c.reach[e] = float(max((f for f, ok in zip(FRACTIONS, reached) if ok), default=0.0))
    used = np.all(np.isfinite(ra) & np.isfinite(rb), axis=0)
    diffs = sr * (ra - rb)
    for i, f in enumerate(FRACTIONS):
        col = diffs[:, i]
        c.levels.append({"fraction": f, "value": float(levels[i]), "n_a": int(np.isfinite(ra[:, i]).sum()),
                         "n_b": int(np.isfinite(rb[:, i]).sum()), "used": bool(used[i]),
                         "mean_diff": float(np.nanmean(col)) if np.isfinite(col).any() else math.nan})
    c.seeds = [json.loads(s) for s in seeds]
    if not used.any():
        c.reason = (f"no fixed level is reached by both entries on every shared seed (reach: "
                    f"{a} {c.reach[a]:.0%}, {b} {c.reach[b]:.0%} of the way to the retrained model)")
        return c
    d = diffs[:, used].mean(axis=1)
    c.per_seed = [float(x) for x in d]
    n = d.size
    c.estimate = float(d.mean())
    if n < MIN_SEEDS:
        c.reason = (f"{n} shared seed{'s' * (n != 1)}: a verdict needs at least {MIN_SEEDS} (at 2 the t test said "
                    f"'better' in 7.5 % of simulated nulls)")
    if n < 2:
        return c
    floor = noise_floor(td, axis[1], (a, b))
    sd = max(float(d.std(ddof=1)), floor)
    if floor > 0 and sd == floor:
        c.reason = "; ".join(filter(None, [c.reason, f"spread floored at one evaluation's noise ({floor:.3g})"]))
    se = sd / math.sqrt(n)
    q = float(student_t.ppf(1 - ALPHA / 2, n - 1))
    c.interval = (c.estimate - q * se, c.estimate + q * se)
    c.effect_size = c.estimate / sd if sd > 0 else (0.0 if c.estimate == 0 else math.copysign(math.inf, c.estimate))
    if se > 0:
        c.p_value = float(2 * student_t.sf(abs(c.estimate) / se, n - 1))
        if c.margin is not None:
            p_lo = float(student_t.sf((c.estimate + c.margin) / se, n - 1))  # H0: diff <= -margin
            p_hi = float(student_t.cdf((c.estimate - c.margin) / se, n - 1))  # H0: diff >= +margin
            c.p_equivalence = max(p_lo, p_hi)
    else:  # identical differences on every seed
        c.p_value = 1.0 if c.estimate == 0 else 0.0
        if c.margin is not None:
            c.p_equivalence = 0.0 if abs(c.estimate) < c.margin else 1.0
    c.seeds_needed = _seeds_needed(c, sd)
    return c


def _seeds_needed(c: Comparison, sd: float, family: int = 1) -> int | None:
    """Seeds at which the observed spread would turn the observed estimate into a verdict: "better" where it is at
    least the minimum effect, "equivalent" where it lies inside the margin, each at the level a comparison in a
    Holm family of ``family`` tests must meet in the worst case (alpha / family; a guide, not a promise). None where
    no seed count would (the estimate sits between the margin and the minimum effect, or no spread is known)."""
    from scipy.stats import t as student_t

    if not (math.isfinite(sd) and sd > 0 and math.isfinite(c.estimate)):
        return None
    est = abs(c.estimate)
    effect = c.min_effect if c.min_effect is not None else 0.0
    if est > 0 and est >= effect:
        target, tail = est, ALPHA / 2 / family
    elif c.margin is not None and est < c.margin:
        target, tail = c.margin - est, ALPHA / family
    else:
        return None
    for n in range(2, MAX_SEEDS + 1):
        if student_t.ppf(1 - tail, n - 1) * sd / math.sqrt(n) < target:
            return n
    return None


def _spread(c: Comparison) -> float:
    """The per-seed spread behind ``c.interval`` (the t interval's half-width / quantile x sqrt(n)), floor included."""
    from scipy.stats import t as student_t

    n = len(c.per_seed)
    if n < 2 or c.interval is None or not all(math.isfinite(x) for x in c.interval):
        return math.nan
    return (c.interval[1] - c.interval[0]) / 2 / float(student_t.ppf(1 - ALPHA / 2, n - 1)) * math.sqrt(n)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (NaN stays NaN and is not counted in the family)."""
    p = np.asarray(p_values, dtype=float)
    out = np.full(p.shape, np.nan)
    idx = [i for i in np.argsort(p, kind="stable") if math.isfinite(p[i])]
    m, running = len(idx), 0.0
    for rank, i in enumerate(idx):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return [float(x) for x in out]


def decide(family: Sequence[Comparison], alpha: float = ALPHA) -> list[Comparison]:
    """Holm-adjust the family's p-values (and, separately, its TOST p-values) and set each verdict."""
    adj, adj_eq = holm([c.p_value for c in family]), holm([c.p_equivalence for c in family])
    m = sum(math.isfinite(x.p_value) for x in family)  # the Holm family's size
    for c, p, pe in zip(family, adj, adj_eq):
        c.p_adjusted, c.p_equivalence_adjusted = p, pe
        effect = c.min_effect if c.min_effect is not None else 0.0
        if len(c.per_seed) < MIN_SEEDS:
            c.verdict = INCONCLUSIVE
        elif math.isfinite(p) and p < alpha and abs(c.estimate) >= effect and c.estimate != 0:
            c.verdict = A_BETTER if c.estimate > 0 else B_BETTER
        elif math.isfinite(pe) and pe < alpha:
            c.verdict = EQUIVALENT
        else:
            c.verdict = INCONCLUSIVE
            if m > 1 and c.seeds_needed is not None:  # the family's correction: more seeds than one test alone needs
                c.seeds_needed = _seeds_needed(c, _spread(c), m)
            if not c.reason:
                if c.seeds_needed is not None:
                    c.reason = f"about {c.seeds_needed} seeds would settle it at the observed spread"
                elif math.isfinite(c.estimate) and len(c.per_seed) >= 2:
                    c.reason = "the estimate lies between the equivalence margin and the minimum effect"
    return list(family)


def compare(td: TaskData, a: str, b: str, axes: Sequence[Axis] | None = None, settled_only: bool = True,
            alpha: float = ALPHA) -> list[Comparison]:
    """``a`` against ``b`` on each of ``axes`` (default: the task's primary pair), Holm-adjusted over them."""
    for e in (a, b):
        if e not in td.entries:
            raise KeyError(f"entry {e!r} is not on task {td.name}; entries: {', '.join(td.entries)}")
    axes = list(axes) if axes else td.axes[:1]
    return decide([measure(td, ax, a, b, settled_only=settled_only) for ax in axes], alpha)


def _num(x: float) -> str:
    return f"{x:.3g}" if isinstance(x, float) and math.isfinite(x) else "-"


def describe(c: Comparison) -> str:
    """One line: verdict, estimate [interval], p (Holm), effect size, levels, seeds."""
    head = f"{c.task} [{axis_label(c.axis)}] {c.a} vs {c.b}: {c.verdict}"
    if math.isfinite(c.estimate):
        used = [lv for lv in c.levels if lv["used"]]
        head += (f"; retention difference {_num(c.estimate)} [{_num(c.interval[0])}, {_num(c.interval[1])}]"
                 f", p = {_num(c.p_value)} (Holm {_num(c.p_adjusted)}), d_z = {_num(c.effect_size)}"
                 f", {len(c.per_seed)} seeds, levels "
                 + "/".join(f"{lv['fraction']:.0%}" for lv in used) + f" of the way to the retrained {c.axis[0]}")
        if c.margin is not None:
            head += f"; margin {_num(c.margin)} (TOST p {_num(c.p_equivalence_adjusted)})"
    if c.reason:
        head += f" ({c.reason})"
    return head
