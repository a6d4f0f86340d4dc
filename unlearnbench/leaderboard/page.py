"""HTML of the leaderboard page: per-task fragments and the page that assembles them.

Each task writes two fragments (``parts/<task>.summary.html``, ``parts/<task>.detail.html``) and its claim
comparisons (``parts/<task>.claims.json``); ``index.html`` and ``claims.txt`` are assembled from every fragment in
the folder. So rebuilding one task rewrites that task's files and the assembled page, and leaves the other tasks'
files as they were. Order on the page: summary tables, then per task its fronts, duals and samples, then claims.
No script, no absolute path, nothing outside the folder is linked.
"""
from __future__ import annotations

import html
from typing import Any, Sequence

import numpy as np

from unlearnbench.leaderboard.plots import method_color
from unlearnbench.leaderboard.stats import common_levels
from unlearnbench.leaderboard.tables import reference_notes
from unlearnbench.protocol import DEFAULT_OVERSHOOT_LIMIT, REJUDGED, declared
from unlearnbench.results import TaskData, axis_label, fmt, grid_of

CSS = """body{font-family:sans-serif;max-width:1250px;margin:1em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;font-size:12px;margin:0.5em 0}th,td{border:1px solid #ccc;padding:2px 5px;
text-align:right;vertical-align:top}th{background:#f0f0f0}td.l,th.l{text-align:left}.scroll{overflow-x:auto}
figure{display:inline-block;margin:0.4em;vertical-align:top}img.plot{max-width:100%}
img.sample{image-rendering:pixelated;max-width:100%}figcaption{font-size:12px}
.holds{color:#070;font-weight:bold}.fails{color:#a00;font-weight:bold}.inconclusive{color:#a60;font-weight:bold}
.nodata{color:#777}.swatch{display:inline-block;width:0.8em;height:0.8em;margin-right:0.3em;border-radius:2px}
.note{color:#555;font-size:13px}.nw{white-space:nowrap}"""


def e(s: Any) -> str:
    return html.escape(str(s), quote=True)


def table(header: Sequence[str], rows: Sequence[Sequence[str]], left: Sequence[str] = (), raw: bool = False) -> str:
    """An HTML table; cells are escaped unless ``raw`` (already HTML)."""
    def cls(h: str) -> str:
        return ' class="l"' if h in left else ""

    def head(h: str) -> str:  # long metric names may wrap after "@" and "/" rather than widen the table
        return e(h).replace("@", "@<wbr>").replace("/", "/<wbr>")

    out = ['<div class="scroll"><table>', "<tr>" + "".join(f"<th{cls(h)}>{head(h)}</th>" for h in header) + "</tr>"]
    for row in rows:
        out.append("<tr>" + "".join(f"<td{cls(h)}>{v if raw else e(v)}</td>" for h, v in zip(header, row)) + "</tr>")
    out.append("</table></div>")
    return "\n".join(out)


def short(x: Any) -> str:
    """A number as the page's summary shows it: 3 significant digits, plain up to 999999 (the CSVs, and each
    summary cell's tooltip, keep :func:`fmt`'s 6)."""
    if not isinstance(x, (float, np.floating)) or not fmt(x):
        return fmt(x)
    v = float(f"{float(x):.3g}")
    return "0" if v == 0 else f"{v:.0f}" if 1e3 <= abs(v) < 1e6 else f"{v:.3g}"


def interval_text(mean: Any, lo: Any, hi: Any, f=short) -> str:
    """``mean [lo, hi]`` with the number format ``f``; the mean alone where either bound is missing or not finite."""
    return f"{f(mean)} [{f(lo)}, {f(hi)}]" if fmt(lo) and fmt(hi) else f(mean)


def _ci(v: dict, col: str) -> str:
    """HTML of a value and its 95 % interval, 3 significant digits, the full values in its tooltip."""
    if not fmt(v.get(col)):
        return ""
    mean, lo, hi = v.get(col), v.get(f"{col}_lo"), v.get(f"{col}_hi")
    return f'<span title="{e(interval_text(mean, lo, hi, fmt))}">{e(interval_text(mean, lo, hi))}</span>'


def _swatch(method: str) -> str:
    return f'<span class="swatch" style="background:{method_color(method)}"></span>'


def _ceiling_note(td: TaskData, rows: list[dict]) -> str:
    """'; the top k tie at ...' where more than one entry shares the best primary hypervolume."""
    primary = f"hv[{axis_label(td.axes[0])}]" if td.axes else None
    best = [v for v in rows if primary and v.get("rank") == 1]
    if len(best) < 2:
        return ""
    return (f"; {', '.join(v['entry'] for v in best)} tie at the primary hypervolume's ceiling "
            f"({short(best[0].get(primary))}): read the other columns to separate them")


def summary_fragment(td: TaskData, slug: str, rows: list[dict]) -> str:
    """The task's ranking: hypervolume and retention at matched levels with 95 % intervals, trial counts."""
    header = ["rank", "group", "entry", "ok / diverged / failed", "seeds", "interval"]
    cols: list[tuple[str, str]] = []
    for axis in td.axes:
        cols.append((f"hv[{axis_label(axis)}]", f"hypervolume {axis_label(axis)}"))
    for axis in td.axes:
        levels = common_levels(td, axis)[0]
        # anchored levels (25/50/75/100 % of the way to the retrained model): the page shows 50 and 100 %, the CSV all
        for lv in (levels[1::2] if td.anchors.get(axis[0]) is not None else levels):
            c = f"{axis[1]}@{axis[0]}={fmt(lv)}"
            cols.append((c, c))
    past = [u for u in dict.fromkeys(a[0] for a in td.axes) if td.anchors.get(u) is not None]
    header += [label for _, label in cols] + [f"past retrained {u}: points, furthest" for u in past]
    header += ["converged", "constraints met", "settled"]
    body = []
    for v in rows:
        flag = f' <span class="fails" title="scored with random-weight {e(v["random_weight_metrics"])}">' \
            f'(random-weight metrics)</span>' if v.get("random_weight_metrics") else ""
        body.append([e(fmt(v.get("rank"))), e(fmt(v.get("rank_group"))),
                     f'<span class="nw">{_swatch(v["method"])}{e(v["entry"])}</span>{flag}',
                     e(f"{v['n_ok']} / {v['n_diverged']} / {v['n_failed']}"), e(fmt(v["seeds"])), e(v["interval"])]
                    + [_ci(v, c) for c, _ in cols]
                    + [e(f"{v.get(f'past_retrained[{u}]') or '-'}, {short(v.get(f'overshoot[{u}]')) or '-'}x")
                       for u in past]
                    + [e(v["converged"] or "-"), e(v["constraints_met"] or "-"), e(v.get("settled") or "-")])
    notes = [f"{e(a)}: hypervolume reference {e(ref)}" for a, ref in reference_notes(td).items()]
    notes.append("group: entries whose primary hypervolume intervals overlap the group's best entry share its group"
                 + _ceiling_note(td, rows))
    if past:
        notes.append("unlearning past the retrained model earns nothing (hypervolume and retention clip there); "
                     "'past retrained' counts the grid points beyond it and how far the furthest went, in "
                     "pretrained-to-retrained distances (beyond "
                     f"{fmt(declared(td.name, 'overshoot_limit', DEFAULT_OVERSHOOT_LIMIT))}x a trial is diverged)")
    randomized = [v["entry"] for v in rows if v.get("random_weight_metrics")]
    if randomized:
        nets = sorted({n for v in rows for n in (v.get("random_weight_metrics") or "").split(";") if n})
        notes.insert(0, f'<span class="fails">random-weight metric networks ({e(", ".join(nets))}) scored '
                        f'{e(", ".join(randomized))}: their values of those metrics are not meaningful (a test or '
                        "smoke run; configure the networks' weights for a real one)</span>")
    metrics = list(dict.fromkeys(m for axis in td.axes for m in axis))

    def shown(vals: list) -> str:
        return "; ".join(f"{m} = {interval_text(*v[:3])}" for m, v in vals if v is not None) or "-"

    pre = [(m, td.pretrained_value(m)) for m in metrics]
    if any(v is not None for _, v in pre):
        notes.append(f"pretrained (95 % interval of its own evaluation): {e(shown(pre))}")
    for name, recs in sorted(td.refs.items()):
        notes.append(f"{e(name)} without the forget set ({len(recs)} seed{'s' * (len(recs) != 1)}; every metric in "
                     f"the points table): {e(shown([(m, td.reference_value(name, m)) for m in metrics]))}")
    for axis in td.axes:
        levels, why = common_levels(td, axis)
        shown_note = "; the table shows 50 and 100 %, the CSV all four" if td.anchors.get(axis[0]) is not None else ""
        notes.append(f"retention on {e(axis[1])} read at {e(axis[0])} = {e(', '.join(fmt(x) for x in levels) or '-')}"
                     f" ({e(why)}{e(shown_note)})")
    return "\n".join([f'<h3 id="summary-{e(slug)}">{e(td.name)} <span class="note">(kind {e(td.kind or "?")}; '
                      f'<a href="{e(slug)}.csv">{e(slug)}.csv</a>, <a href="{e(slug)}_points.csv">points</a>; '
                      f'<a href="#task-{e(slug)}">fronts</a>)</span></h3>',
                      table(header, body, left=("entry", "interval"), raw=True),
                      '<p class="note">' + "<br>".join(notes) + "</p>"])


def _trial_rows(trials: list[dict]) -> list[list[str]]:
    return [[str(r["_entry"]), str(r.get("trial_id")), fmt(grid_of(r).get("value")), fmt(r.get("seed")),
             str(r.get("run_id")), str(r.get("error") or r.get(REJUDGED) or "")] for r in trials]


def detail_fragment(td: TaskData, slug: str, plots: list[tuple[str, str]], duals: list[tuple[str, str]],
                    samples: list[tuple[str, str]], points: tuple[list[str], list[list[str]]]) -> str:
    """The task's fronts, duals, samples, per-point table and its diverged and failed trials."""
    out = [f'<section id="task-{e(slug)}">', f"<h2>{e(td.name)}</h2>", "<h3>Fronts</h3>"]
    out += [f'<figure><img class="plot" src="{e(rel)}" alt="{e(cap)}"><figcaption>{e(cap)}</figcaption></figure>'
            for rel, cap in plots] or ["<p>No valid points.</p>"]
    if duals:
        out.append("<h3>Dual variables</h3>")
        out += [f'<figure><img class="plot" src="{e(rel)}" alt="{e(cap)}"></figure>' for rel, cap in duals]
    if samples:
        out.append('<h3>Samples</h3><p class="note">rows as labelled in each grid: pretrained, then unlearned from '
                   "the same noise (first seed of each entry and grid value)</p><div>")
        out += [f'<figure><a href="{e(rel)}"><img class="sample" src="{e(rel)}" alt="{e(cap)}"></a>'
                f"<figcaption>{e(cap)}</figcaption></figure>" for rel, cap in samples]
        out.append("</div>")
    out.append("<details><summary>Points: entry x grid value, mean over seeds, 95 % interval half-width, "
               "evaluation stderr, k/n for rates</summary>")
    out.append(table(points[0], points[1], left=("entry", "method", "grid_param", "interval")))
    out.append("</details>")
    trial_header = ["entry", "trial_id", "grid value", "seed", "run_id", "error"]
    for status, title, why in (("diverged", "Diverged", "a metric left its sane range, the loss exploded, or the "
                                "model went far past the retrained one: a result, kept off the fronts"), ("failed", "Failed", "raised an error")):
        trials = [r for r in td.invalid() if (r.get("status") == "diverged") == (status == "diverged")]
        if trials:
            out.append(f'<h3 id="{status}-{e(slug)}">{title} trials ({len(trials)})</h3><p class="note">{e(why)}</p>')
            out.append(table(trial_header, _trial_rows(trials), left=trial_header))
    out.append("</section>")
    return "\n".join(out)


def claims_fragment(claims: list) -> str:
    out = ['<h2 id="claims">Claims</h2><p class="note">Each comparison (<code>unlearnbench compare</code>): per '
           "seed both entries ran, the retention difference at fixed levels, 25/50/75/100 % of the way from the "
           "pretrained model to the retrained one (unlearning past it is clipped there; an entry that does not reach "
           "a level is missing at it), averaged over the levels both reach; positive = the claimed method retains "
           "more. Mean over seeds with its 95 % t interval, a paired t test (p, Holm-adjusted over the claim's "
           "comparisons), Cohen's d_z, and TOST against the task's equivalence margin. a_better / b_better: adjusted "
           "p &lt; 0.05 and at least the minimum effect; equivalent: TOST adjusted p &lt; 0.05; otherwise "
           "inconclusive, with the seeds that would settle it at the observed spread. Constrained entries count "
           "their settled trials only. A claim holds when every comparison is a_better and fails when any is "
           "b_better (claim 3 also when lik does not reach the baseline's unlearning: matched false).</p>"]
    rows = []
    for c in claims:
        css = "holds" if c.verdict == "holds" else "fails" if c.verdict == "fails" else \
            "inconclusive" if c.verdict.startswith("inconclusive") else "nodata"
        lines = "<br>".join(e(x) for x in c.evidence_lines()) or "-"
        rows.append([e(c.statement), f'<span class="{css}">{e(c.verdict)}</span>', lines])
    out.append(table(["claim", "verdict", "comparisons"], rows, left=("claim", "verdict", "comparisons"), raw=True))
    return "\n".join(out)


def index_page(names: list[str], summaries: list[str], details: list[str], claims: list, n_trials: int) -> str:
    """The whole page from the task fragments (in task order) and the claims."""
    nav = "".join(f'<li><a href="#summary-{e(n)}">{e(n)}</a></li>' for n in names)
    return "\n".join([
        "<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
        "<title>unlearnbench leaderboard</title>", f"<style>{CSS}</style>", "</head>", "<body>",
        "<h1>unlearnbench leaderboard</h1>",
        f'<p class="note">{n_trials} trials. Every number carries a 95 % interval: over seeds where there are two or '
        "more (t for points, bootstrap for hypervolume and retention at a level), else from the single seed's "
        "evaluation stderr (interval column: <i>eval</i>). Diverged and failed trials are listed per task and "
        "never enter a front. Generated from the records alone by <code>unlearnbench leaderboard</code>; do not "
        "edit.</p>",
        f'<ul>{nav}<li><a href="#claims">Claims</a></li></ul>',
        '<h2 id="summary">Summary</h2>', *summaries, *details, claims_fragment(claims), "</body>", "</html>", ""])
