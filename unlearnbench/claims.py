"""The paper's three claims, each a family of :func:`unlearnbench.compare.measure` comparisons.

1. concept: the rkl front dominates ESD's (and fixed equal weights'),
2. data: the fkl front dominates SISS's,
3. lik matches the unlearning of rkl/ESD while preserving retained concepts better at matched unlearning.

Each comparison is one task, axis pair and pair of entries, read by the comparison protocol
(:mod:`unlearnbench.compare`): levels fixed from the pretrained and retrained models, per-seed retention differences,
a paired t test; a claim's comparisons (over every task) are one family, Holm-adjusted together. Constrained entries
count only their settled trials.

Axes. Claims 1 and 2 are about the KL-constrained formulations and are read on the axis pairs whose unlearning
metric is the constrained quantity (the oracle's pair for that formulation, else a KL/likelihood-like name, else
the primary pair); claim 3 on the formulation-neutral pairs. Claim 3 also needs lik to *match* the baseline's
unlearning: its front must reach every fixed level the baseline's reaches, else that comparison fails.

A claim: "holds" when every comparison is ``a_better`` (and, for claim 3, matches); "fails" when any is ``b_better``
or, for claim 3, does not match;
otherwise "inconclusive"; "no valid points" / "not enough data" when no comparison had data.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable

from unlearnbench.compare import A_BETTER, B_BETTER, Comparison, decide, describe, from_dict, measure
from unlearnbench.results import Axis, TaskData, collect_tasks, oracle_fronts

HOLDS, FAILS, INCONCLUSIVE = "holds", "fails", "inconclusive"
NO_VALID, NOT_ENOUGH_DATA = "no valid points", "not enough data"
_KL_LIKE = ("kl", "bpd", "nll", "elbo")
MATCH = "does not reach"  # reason prefix of claim 3's match requirement

# (key, task kind, method, baselines, statement). The method is compared with each baseline present.
CLAIMS: list[tuple[str, str, str, tuple[str, ...], str]] = [
    ("concept-rkl-dominates-esd", "concept", "rkl", ("esd", "rkl-fixed"),
     "concept unlearning: the rkl (KL-constrained) front dominates ESD's and fixed equal weights' on the KL axis"),
    ("data-fkl-dominates-siss", "data", "fkl", ("siss",),
     "data unlearning: the fkl (KL-constrained) front dominates SISS's on the KL axis"),
    ("lik-preserves-retained", "concept", "lik", ("rkl", "esd"),
     "lik matches the unlearning of rkl/ESD and preserves retained concepts better at matched unlearning"),
]


@dataclass
class Claim:
    """One claim's verdict and the comparisons behind it (one dict per task x axes x entry pair)."""

    key: str
    statement: str
    verdict: str
    evidence: list[dict[str, Any]] = field(default_factory=list)

    def evidence_lines(self) -> list[str]:
        return [evidence_line(ev) for ev in self.evidence]

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "statement": self.statement, "verdict": self.verdict, "evidence": self.evidence}


def evidence_line(ev: dict) -> str:
    """One comparison in one line: verdict, estimate, interval, p-values, levels, seeds."""
    if "unlearning_metric" not in ev:  # a placeholder: no task had the entries
        return f"{ev.get('a', '-')} vs {ev.get('b', '-')}: {ev['verdict']} ({ev.get('reason', '')})"
    return describe(from_dict(ev))


def _require_match(c: Comparison) -> None:
    """Claim 3: lik's front must reach every fixed level the baseline's reaches (on every shared seed). Not a test:
    the comparison keeps its verdict, and ``matched`` says whether the unlearning matches (the claim fails if not)."""
    if c.a in c.reach and c.b in c.reach:
        c.matched = c.reach[c.a] >= c.reach[c.b]
        if not c.matched:
            c.reason = "; ".join(filter(None, [c.reason, f"{MATCH} {c.b}'s unlearning: {c.reach[c.a]:.0%} against "
                                                         f"{c.reach[c.b]:.0%} of the way to the retrained model"]))


def _is_kl_like(metric: str) -> bool:
    return any(k in metric.lower() for k in _KL_LIKE)


def _kl_axes(td: TaskData, formulation: str) -> list[Axis]:
    pairs = {(e.get("unlearning_metric"), e.get("retention_metric"))
             for r in td.trials if r.get("status") == "ok" for f, e in oracle_fronts(r).items() if f == formulation}
    axes = [a for a in td.axes if tuple(a) in pairs] or [a for a in td.axes if _is_kl_like(a[0])]
    return axes or td.axes[:1]


def _neutral_axes(td: TaskData) -> list[Axis]:
    return [a for a in td.axes if not _is_kl_like(a[0])] or list(td.axes)


def task_evidence(td: TaskData) -> list[dict[str, Any]]:
    """Every claim's comparisons on one task, unadjusted (each dict carries its claim ``key``); :func:`summarize`
    adjusts each claim's family over every task."""
    out = []
    for key, kind, method, baselines, _ in CLAIMS:
        entries = [e for e in td.entries if td.method_of(e) == method]
        if td.kind != kind or not entries:
            continue
        axes = _neutral_axes(td) if key == "lik-preserves-retained" else _kl_axes(td, method)
        for b_entry in (e for e in td.entries if td.method_of(e) in baselines):
            for entry in entries:
                for axis in axes:
                    out.append({"claim": key, **measure(td, axis, entry, b_entry).to_dict()})
    return out


def verdict(evidence: list[dict]) -> str:
    """A claim's verdict from its decided comparisons."""
    vs = [e["verdict"] for e in evidence]
    if B_BETTER in vs or any(e.get("matched") is False for e in evidence):
        return FAILS
    if vs and all(v == A_BETTER for v in vs):  # (a comparison that does not match has failed above)
        return HOLDS
    if any(v in (INCONCLUSIVE, "equivalent") and math.isfinite(e.get("estimate", math.nan))
           for v, e in zip(vs, evidence)):
        return INCONCLUSIVE
    return NOT_ENOUGH_DATA


def summarize(evidence: Iterable[dict]) -> list[Claim]:
    """The three claims, each with its comparisons from ``evidence`` (of any number of tasks), Holm-adjusted as one
    family, and its verdict."""
    evidence = list(evidence)
    out = []
    for key, kind, method, baselines, statement in CLAIMS:
        family = [from_dict(e) for e in evidence if e.get("claim") == key]
        decide(family)
        if key == "lik-preserves-retained":
            for c in family:
                _require_match(c)
        ev = [{"claim": key, **c.to_dict()} for c in family]
        if not ev:
            ev = [{"claim": key, "a": method, "b": "/".join(baselines), "verdict": NOT_ENOUGH_DATA,
                   "reason": f"no {kind} task with {method} and any of {', '.join(baselines)}"}]
        out.append(Claim(key, statement, verdict(ev), ev))
    return out


def check_claims(records: Iterable[dict]) -> list[Claim]:
    """Check the paper's three claims on trial records; returns three :class:`Claim` in the order of CLAIMS."""
    return summarize(ev for td in collect_tasks(records).values() for ev in task_evidence(td))


def format_claims(claims: list[Claim]) -> str:
    """Plain-text report: one block per claim with its verdict and one line per comparison."""
    blocks = []
    for i, c in enumerate(claims, 1):
        blocks.append("\n".join([f"({i}) {c.statement}", f"    verdict: {c.verdict}"]
                                + [f"    {line}" for line in c.evidence_lines()]))
    return "\n\n".join(blocks)
