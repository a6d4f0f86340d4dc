"""Robustness leaderboard: the attack records of ``unlearnbench attack`` as a table and plots per task.

Rows are models: every entry and grid value of the run (its seeds pooled), the pretrained network and the retrained
reference. Entries are named as on the fronts: a method attacked with several settings appears once per variant (``rkl
[trainable=xattn]``, in the ``model`` and ``method`` columns), never pooled as seeds of one model. For each ladder
attack, the concept measure at every budget with a 95 % interval (Student's t over seeds; one seed: Wilson's interval
for the k/n rates, else the evaluation stderr) and the steps to half recovery (mean over the seeds that reached it,
with k/n); for MIA, AUC and TPR at 1 % FPR (t over seeds, or the single seed's bootstrap interval; either widened to
at least a rate's Wilson interval, see :func:`mia_counts`). Each model's row says where its interval lies against the
retrained reference's at the same budget (``vs_retrained``: above, below, overlaps). Output, byte-stable like the rest
of the leaderboard::

    <task>_robustness.csv              one row per model x attack x budget (x MIA metric)
    plots/<task>__robustness__<a>.png  measure against budget, a panel per entry, both references in each
    parts/<task>.robustness.html       the page section
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from unlearnbench.leaderboard.plots import PRETRAINED_COLOR, RETRAINED_COLOR
from unlearnbench.pareto import grid_sort_key, mean_interval
from unlearnbench.results import REFERENCE_EVAL, entry_labels, fmt, grid_of, settings_hash, task_key
from unlearnbench.robustness.attacks import ATTACKS, Attack, steps_to_half

REF_STYLE = {"pretrained": (PRETRAINED_COLOR, "--"), "retrained": (RETRAINED_COLOR, ":")}
RATE_MEASURES = {"acc_forget", "regen_rate"}  # shares of n samples (k/n); the mixtures' masses are means of posteriors
HEADER = ["attack", "metric", "model", "method", "grid_value", "budget", "mean", "ci_lo", "ci_hi", "n", "interval",
          "steps_to_half", "half_reached", "vs_retrained"]


def attack_trials(records: Iterable[dict]) -> dict[str, list[dict]]:
    """The newest attack record per (task, attack, attacked model, seed), grouped by leaderboard task key: a model
    attacked again with another ladder is a newer record of the same cell, never a second seed."""
    latest: dict[tuple, dict] = {}
    for r in records:
        if not isinstance(r, dict) or not isinstance(r.get("attack"), dict):
            continue
        key = (task_key(r), str(r["attack"].get("name")), str(r.get("method")), settings_hash(r),
               json.dumps(grid_of(r).get("value")), json.dumps(r.get("seed")))
        if key not in latest or str(r.get("created_at", "")) >= str(latest[key].get("created_at", "")):
            latest[key] = r
    models = [dict(r, _task=key[0], _settings=key[3]) for key, r in latest.items()
              if not r["attack"].get("reference")]
    labels = entry_labels(models)  # "rkl [trainable=xattn]" where a method was attacked with several settings
    out: dict[str, list[dict]] = {}
    for key, r in sorted(latest.items(), key=lambda kv: (kv[0][0], str(kv[1].get("trial_id")), kv[0])):
        entry = labels.get((key[0], key[2], key[3]))
        out.setdefault(key[0], []).append(dict(r, _entry=entry) if entry else r)
    return out


def model_of(r: dict) -> tuple[str, str, Any]:
    """(model label, entry, grid value): a reference by name, else the entry (the method, with the settings that
    tell its variants apart where it has several, as on the fronts) and its grid value."""
    ref = r["attack"].get("reference")
    if ref:
        return ref, ref, None
    g = grid_of(r)
    entry = str(r.get("_entry") or r.get("method"))
    return f"{entry} {g.get('param') or 'grid'}={fmt(g.get('value'))}", entry, g.get("value")


def _order(label_method_value: tuple) -> tuple:
    label, method, value = label_method_value
    ref = {"pretrained": 0, "retrained": 1}.get(label, 2)
    return (ref, method, grid_sort_key(value))


def rows_of(trials: list[dict]) -> list[dict[str, Any]]:
    """The table's rows (dicts with :data:`HEADER` keys, numbers unformatted), sorted by attack, model, budget."""
    groups: dict[tuple, list[dict]] = {}
    for r in trials:
        if r.get("status") != "ok" or r["attack"]["name"] == REFERENCE_EVAL:  # reference evaluations: the points table
            continue
        groups.setdefault((r["attack"]["name"], *model_of(r)), []).append(r)
    shared = shared_rungs(rs for (attack, *_), rs in groups.items() if climbs(attack, rs))
    rows = []
    for (attack, label, method, value) in sorted(groups, key=lambda k: (k[0], _order(k[1:]))):
        rs = sorted(groups[(attack, label, method, value)], key=lambda r: grid_sort_key(r.get("seed")))
        base = {"attack": attack, "model": label, "method": method, "grid_value": value,
                "base_method": method if method in REF_STYLE else str(rs[0].get("method"))}  # colour; not a column
        if not climbs(attack, rs):
            kind = attack_kind(attack)
            names = kind.metrics if kind is not None and kind.metrics else sorted(
                {k for r in rs for k, m in r["metrics"].items() if m.get("role") == "robustness"})
            for metric in names:
                have = [r for r in rs if metric in r["metrics"]]
                counts = mia_counts(have, metric)
                m, lo, hi, n, src = mean_interval([r["metrics"][metric]["value"] for r in have],
                                                  [r["metrics"][metric]["stderr"] for r in have], counts)
                if n == 1:  # one seed: its bootstrap percentile interval, at least the counts' Wilson interval
                    blo, bhi = have[0]["attack"].get("intervals", {}).get(metric, [lo, hi])
                    lo, hi, src = (min(lo, blo), max(hi, bhi), "bootstrap") if counts else (blo, bhi, "bootstrap")
                rows.append({**base, "metric": metric, "budget": None, "mean": m, "ci_lo": lo, "ci_hi": hi, "n": n,
                             "interval": src, "steps_to_half": None, "half_reached": None})
            continue
        budgets = sorted({int(k) for r in rs for k in r["attack"]["budgets"]})  # seeds may have other ladders
        measure = rs[0]["attack"].get("measure")
        halves = [half_on(r, shared.get(attack)) for r in rs]
        reached = [h for h in halves if h is not None]
        for k in budgets:
            at = [dict(zip(r["attack"]["budgets"], zip(r["attack"]["values"], r["attack"]["stderr"],
                                                       r["attack"].get("n") or [None] * len(r["attack"]["values"])))
                       ).get(k, (math.nan, math.nan, None)) for r in rs]
            vals, ses = [v for v, _, _ in at], [se for _, se, _ in at]
            rate = measure in RATE_MEASURES and all(size for v, _, size in at if v is not None and math.isfinite(v))
            m, lo, hi, n, src = mean_interval([math.nan if v is None else v for v in vals],
                                              [math.nan if s is None else s for s in ses],
                                              [size for _, _, size in at] if rate else None)
            if n == 1 and rate:  # one seed of a k/n rate: Wilson's interval, not +-1.96 x a zero stderr
                src = "wilson"
            rows.append({**base, "metric": measure, "budget": k, "mean": m, "ci_lo": lo, "ci_hi": hi, "n": n,
                         "interval": src, "steps_to_half": float(np.mean(reached)) if reached else None,
                         "half_reached": f"{len(reached)}/{len(halves)}"})
    ref = {(r["attack"], r["metric"], r["budget"]): r for r in rows if r["model"] == "retrained"}
    for r in rows:
        r["vs_retrained"] = None if r["model"] in REF_STYLE else vs_reference(r, ref.get((r["attack"], r["metric"],
                                                                                         r["budget"])))
    return rows


def shared_rungs(groups: Iterable[list[dict]]) -> dict[str, list[int]]:
    """Per ladder attack, the budgets every model's ladder has (every seed's). Steps to half interpolate linearly
    between rungs, so a coarse ladder (0/10/50) reads later than a fine one (0/2/5/10/50) on the same model: the table
    reads every model on the rungs they share (plus a ladder's own rungs past the last shared one, which no other
    ladder resolves more finely), and where they share fewer than two, on each record's own ladder."""
    out: dict[str, set[int]] = {}
    for rs in groups:
        for r in rs:
            name, have = r["attack"]["name"], {int(k) for k in r["attack"]["budgets"]}
            out[name] = out[name] & have if name in out else have
    return {name: sorted(ks) for name, ks in out.items() if len(ks) >= 2}


def half_on(r: dict, rungs: list[int] | None) -> float | None:
    """A record's steps to half the pretrained level on the shared ``rungs`` and its own rungs past them (None: its
    own ladder's, as recorded)."""
    a = r["attack"]
    level = a.get("pretrained_level")
    if not rungs or level is None:
        return a.get("steps_to_half")
    at = dict(zip((int(k) for k in a["budgets"]), a["values"]))
    ks = sorted(k for k in at if k in rungs or k > rungs[-1])
    return steps_to_half(ks, [at[k] for k in ks], level)


def attack_kind(name: str) -> type[Attack] | None:
    """The registered attack ``name`` (what it scores, whether it climbs a ladder); None for an attack whose plugin is
    not installed where the records are read (then a record with more than one rung is a ladder)."""
    return ATTACKS.get(name) if name in ATTACKS else None


def climbs(name: str, records: Iterable[dict] = ()) -> bool:
    """Whether attack ``name`` climbs a ladder of budgets (else it scores the model once)."""
    kind = attack_kind(name)
    if kind is not None:
        return bool(kind.climbs)
    return any(len(r["attack"].get("budgets") or []) > 1 for r in records)


def mia_counts(rs: list[dict], metric: str) -> list[int] | None:
    """The ``n`` behind each seed's MIA metric, so that its interval is at least a rate's (a perfectly separated forget
    set gives AUC 1 with a zero-width bootstrap and no spread over seeds): the AUC ranks each member against
    ``n_heldout`` held-out samples, so it is no surer than a rate of ``n_heldout``; TPR at 1 % FPR is a share of the
    ``n`` distinct members. None where a record lacks them (the t or bootstrap interval alone)."""
    counts = [(r["attack"].get("intervals") or {}).get("n_heldout") if metric == "mia_auc" else
              r["metrics"][metric].get("n") for r in rs]
    return counts if all(isinstance(c, int) and c > 0 for c in counts) else None


def vs_reference(row: dict, ref: dict | None) -> str | None:
    """``above`` / ``below`` when the row's 95 % interval lies wholly above / below the reference's at the same
    budget, ``overlaps`` otherwise; None without both intervals."""
    vals = [row["ci_lo"], row["ci_hi"], (ref or {}).get("ci_lo"), (ref or {}).get("ci_hi")]
    if ref is None or not all(v is not None and math.isfinite(v) for v in vals):
        return None
    return "above" if vals[0] > vals[3] else "below" if vals[1] < vals[2] else "overlaps"


def csv_text(rows: list[dict]) -> str:
    from unlearnbench.leaderboard.tables import csv_text as _csv

    return _csv(HEADER, [[fmt(r[h]) for h in HEADER] for r in rows])


def plot_attack(task: str, attack: str, rows: list[dict], path: Path) -> bool:
    """One panel per entry: its models' measure (or MIA AUC) against budget with 95 % intervals, darker = larger
    grid value, and in every panel the pretrained network (dashed black) and the retrained one (dotted gold);
    False if nothing to draw."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    from unlearnbench.leaderboard.plots import method_color, plain_text, save, style

    rows = [r for r in rows if r["attack"] == attack]
    if not rows:
        return False
    ladder = rows[0]["budget"] is not None  # a scoring attack's rows have no budget
    if not ladder:  # its first metric is the one plotted
        rows = [r for r in rows if r["metric"] == rows[0]["metric"]]
    kind = attack_kind(attack)
    models = sorted({(r["model"], r["method"], json.dumps(r["grid_value"])) for r in rows},
                    key=lambda k: _order((k[0], k[1], json.loads(k[2]))))
    base_of = {r["method"]: r["base_method"] for r in rows}  # entry -> its method, whose colour it takes
    refs = [m for m in models if m[1] in REF_STYLE]
    methods = list(dict.fromkeys(m[1] for m in models if m[1] not in REF_STYLE)) or ["(references only)"]
    ncols = min(3, len(methods))
    nrows = math.ceil(len(methods) / ncols)

    def series(label: str) -> tuple[np.ndarray, ...]:
        pts = [r for r in rows if r["model"] == label]
        x = np.array([r["budget"] if ladder else 0.0 for r in pts], dtype=float)
        y, lo, hi = (np.array([r[k] for r in pts], dtype=float) for k in ("mean", "ci_lo", "ci_hi"))
        err = np.vstack([y - lo, hi - y])
        return x, y, lo, hi, np.where(np.isfinite(err), np.abs(err), 0.0)

    with style():
        fig = Figure(figsize=(3.6 * ncols + 0.4, 2.9 * nrows + 0.5))
        axes = fig.subplots(nrows, ncols, sharex=ladder, sharey=True, squeeze=False).ravel()
        for ax, method in zip(axes, methods):  # a panel per entry ("rkl [trainable=xattn]"), coloured by its method
            base = base_of.get(method, method)
            own = [m for m in models if m[1] == method]
            handles, ticks = [], []
            for label, ref, _ in refs:
                color, ls = REF_STYLE[ref]
                x, y, lo, hi, err = series(label)
                if not ladder:
                    ax.axhspan(lo[0], hi[0], color=color, alpha=0.15, lw=0)
                    ax.axhline(y[0], color=color, ls=ls, lw=1.6)
                else:
                    ax.plot(x, y, color=color, ls=ls, lw=1.8, marker="o", ms=2.5)
                    ax.fill_between(x, np.where(np.isfinite(lo), lo, y), np.where(np.isfinite(hi), hi, y),
                                    color=color, alpha=0.12, lw=0)
                handles.append(Line2D([], [], color=color, ls=ls, lw=1.8, label=ref))
            for j, (label, _, value) in enumerate(own):
                x, y, _, _, err = series(label)
                shade = 0.3 + 0.7 * (j + 1) / len(own)
                if not ladder:
                    x = x + (j + 1) / (len(own) + 1) - 0.5
                    ticks.append((float(x[0]), label[len(method):].strip() or label))
                ax.errorbar(x, y, yerr=err, color=method_color(base), alpha=shade, lw=1.3, marker="o", ms=3.5,
                            capsize=2, ls="-" if ladder else "none")
                handles.append(Line2D([], [], color=method_color(base), alpha=shade, lw=1.3, marker="o", ms=3.5,
                                      label=label[len(method):].strip() or label))
            ax.set_title(method, fontsize=9, color=method_color(base) if method in {m[1] for m in models} else None)
            ax.legend(handles=handles, fontsize=6, loc="best", frameon=False)
            if not ladder:
                if kind is not None and kind.chance is not None:
                    ax.axhline(kind.chance, color="#777777", lw=0.8)
                ax.set_xticks([t[0] for t in ticks], [t[1] for t in ticks], fontsize=7, rotation=30)
                ax.set_xlim(-0.6, 0.6)
            else:
                ax.set_xscale("symlog", linthresh=1.0)
        finite = [v for r in rows for v in (r["ci_lo"], r["ci_hi"], r["mean"]) if v is not None and math.isfinite(v)]
        if finite:  # every measure and the AUC are shares in [0, 1]: t-intervals of 3 seeds may cross the bounds
            lo, hi = max(min(finite), 0.0), min(max(finite), 1.0)
            pad = 0.05 * max(hi - lo, 0.05)
            axes[0].set_ylim(lo - pad, hi + pad)
        for ax in axes[len(methods):]:
            ax.set_visible(False)
        for ax in axes[(nrows - 1) * ncols:]:
            if ladder:
                ax.set_xlabel("budget (optimisation steps)")
        for ax in axes[::ncols]:
            ax.set_ylabel(f"{rows[0]['metric']} (higher = back)" if ladder else
                          (kind.axis_label if kind is not None and kind.axis_label else rows[0]["metric"]))
        fig.suptitle(f"{task}: {attack} attack, seed means with 95 % intervals; darker = larger grid value",
                     fontsize=9)
        plain_text(fig).tight_layout()
        save(fig, path)
    return True


def fragment(task: str, slug: str, rows: list[dict], plots: list[tuple[str, str]]) -> str:
    from unlearnbench.leaderboard.page import e, table

    out = [f'<section id="robustness-{e(slug)}">', f"<h3>{e(task)}: robustness ladder</h3>",
           '<p class="note">Does the erased concept come back? The concept measure after each attack budget (higher '
           "= more of it back), per model, with the pretrained network (dashed black) and the retrained reference "
           "(dotted gold) at both ends; 95 % intervals; steps_to_half: steps until half the pretrained level, "
           "linear between the rungs every model's ladder shares, so that ladders of different resolution compare "
           "(mean over the seeds that reached it, k/n); vs_retrained: the model's interval wholly above or below the "
           "retrained reference's at that budget, or overlapping it. Generated by <code>unlearnbench attack</code>."
           "</p>"]
    out += [f'<figure><img class="plot" src="{e(rel)}" alt="{e(cap)}"><figcaption>{e(cap)}</figcaption></figure>'
            for rel, cap in plots]
    out.append(f"<details><summary>Robustness table: {len(rows)} rows (model x attack x budget), as in "
               f'<a href="{e(slug)}_robustness.csv">{e(slug)}_robustness.csv</a></summary>')
    out.append(table(HEADER, [[fmt(r[h]) for h in HEADER] for r in rows],
                     left=("attack", "metric", "model", "method", "interval", "vs_retrained")))
    out.append("</details>")
    out.append("</section>")
    return "\n".join(out)


def build_robustness(records: list[dict], out: Path, slug) -> dict[str, dict]:
    """Write each task's robustness CSV, plots and page section; returns ``{task: {"csv", "plots"}}``."""
    from unlearnbench.leaderboard.tables import write_text

    result = {}
    for task, trials in attack_trials(records).items():
        s = slug(task)
        rows = rows_of(trials)
        if not rows:  # only the retrained reference's evaluation (the protocol's anchor): no ladder to show
            continue
        write_text(out / f"{s}_robustness.csv", csv_text(rows))
        plots = []
        for attack in sorted({r["attack"] for r in rows}):
            rel = f"plots/{s}__robustness__{slug(attack)}.png"
            if plot_attack(task, attack, rows, out / rel):
                plots.append((rel, f"{attack}: attack success against budget"))
        write_text(out / "parts" / f"{s}.robustness.html", fragment(task, s, rows, plots) + "\n")
        result[task] = {"csv": str(out / f"{s}_robustness.csv"), "plots": [str(out / p) for p, _ in plots]}
    return result


def robustness_frame(records: Iterable[dict]):
    """Attack records as a tidy frame: one row per attack trial and metric (role ``robustness``)."""
    import pandas as pd

    rows = []
    for task, trials in attack_trials(records).items():
        for r in trials:
            label, method, value = model_of(r)
            for name, m in sorted((r.get("metrics") or {}).items()):
                budget = name.rsplit("@", 1)[1] if "@" in name else None
                rows.append({"task": task, "attack": r["attack"]["name"], "model": label, "method": method,
                             "grid_value": value, "seed": r.get("seed"), "reference": r["attack"].get("reference"),
                             "source_trial": r["attack"].get("source_trial"), "trial_id": r.get("trial_id"),
                             "status": r.get("status"), "metric": name,
                             "budget": None if budget is None else int(budget),
                             "value": m.get("value"), "stderr": m.get("stderr"), "n": m.get("n"),
                             "role": m.get("role")})
    return pd.DataFrame(rows)


def load_robustness(paths):
    """Every attack record under ``paths`` (run directories or records files) as a tidy :class:`pandas.DataFrame`:
    columns ``task, attack, model, method, grid_value, seed, reference, source_trial, trial_id, status, metric,
    budget, value, stderr, n, role``."""
    import os

    from unlearnbench.records import read_records

    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    missing = [str(p) for p in paths if not os.path.exists(p)]
    if missing:
        raise FileNotFoundError(f"load_robustness: no such file or directory: {', '.join(missing)}")
    return robustness_frame(read_records(paths))
