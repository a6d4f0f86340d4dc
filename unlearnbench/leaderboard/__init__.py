"""Leaderboards from trial records: per-task CSVs, Pareto plots with intervals and one static HTML page.

Reads records only (never re-runs anything), through :mod:`unlearnbench.results`. Output for the same records is
byte-identical: everything is sorted, floats are formatted with ``%.6g``, bootstrap draws use fixed seeds, nothing
carries a timestamp or an absolute path, and PNGs are written by Agg with the ``Software`` metadata removed.

A call writes only the files of the tasks in its records (and the page assembled from every task's fragments in
the folder); it never deletes anything. Layout of ``out_dir``::

    index.html                 summary tables, then per task fronts, duals, samples; then the claims
    claims.txt                 the paper's three claims as paired tests (see unlearnbench.claims)
    <task>.csv                 one row per entry: rank, hypervolume and retention at matched levels with 95 % CIs, ...
    <task>_points.csv          one row per entry x grid value: mean, 95 % CI half-width and eval stderr per metric
    plots/<task>__<u>__<r>.png one per axis pair: points with intervals, fronts, the pretrained point, exact fronts
    plots/<task>__duals.png    dual variables against steps for the constrained entries
    samples/<task>/<trial>.png copies of the sample grids of image tasks
    parts/<task>.*             the task's page fragments and claim comparisons, assembled into index.html
    <task>_robustness.csv, plots/<task>__robustness__<attack>.png
                               the robustness ladder, where the records hold attack trials (unlearnbench attack)
"""
from __future__ import annotations

import csv
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Sequence

import unlearnbench.claims as claims_mod
from unlearnbench.leaderboard import page
from unlearnbench.leaderboard.plots import method_color, plot_axis, plot_duals
from unlearnbench.leaderboard.stats import common_levels, hypervolume_ci, reference, reference_points
from unlearnbench.leaderboard.tables import csv_text, formatted, points_table, slug, summary_table, write_text
from unlearnbench.records import artifact_path, read_records
from unlearnbench.results import TaskData, axis_label, collect_tasks, fmt, grid_of
from unlearnbench.rundir import claim_out_dir

__all__ = ["build_leaderboard", "reference_points", "collect_tasks", "method_color", "common_levels",
           "hypervolume_ci", "reference"]

logger = logging.getLogger(__name__)


def build_task(td: TaskData, out: Path) -> dict[str, Any]:
    """Write one task's CSVs, plots, samples and page fragments; returns what was written (absolute paths)."""
    s = slug(td.name)
    header, values = summary_table(td)
    write_text(out / f"{s}.csv", csv_text(header, formatted(header, values)))
    p_header, p_rows = points_table(td)
    write_text(out / f"{s}_points.csv", csv_text(p_header, p_rows))
    plots, duals = [], []
    for axis in td.axes:
        rel = f"plots/{s}__{slug(axis[0])}__{slug(axis[1])}.png"
        if plot_axis(td, axis, out / rel):
            plots.append((rel, f"{axis[1]} vs {axis[0]}"))
        else:
            logger.warning("task %s: no data on axes %s; no plot", td.name, axis_label(axis))
        ref, _ = reference(td, axis)
        if ref is not None and td.entries and all(hypervolume_ci(td, e, axis)[0] == 0.0 for e in td.entries):
            logger.warning("task %s, axes %s: no point beats the reference %s", td.name, axis_label(axis), ref)
    if plot_duals(td, out / f"plots/{s}__duals.png"):
        duals.append((f"plots/{s}__duals.png", "dual variables"))
    samples = copy_samples(td, out, s)
    evidence = claims_mod.task_evidence(td)
    write_text(out / "parts" / f"{s}.summary.html", page.summary_fragment(td, s, values) + "\n")
    write_text(out / "parts" / f"{s}.detail.html",
               page.detail_fragment(td, s, plots, duals, samples, (p_header, p_rows)) + "\n")
    write_text(out / "parts" / f"{s}.claims.json", json.dumps(evidence, sort_keys=True, indent=1) + "\n")
    return {"csv": str(out / f"{s}.csv"), "points_csv": str(out / f"{s}_points.csv"),
            "plots": [str(out / rel) for rel, _ in plots + duals], "samples": [str(out / rel) for rel, _ in samples],
            "ranking": [v["entry"] for v in values], "n_ok": len(td.with_status("ok")),
            "n_diverged": len(td.with_status("diverged")),
            "n_failed": len(td.invalid()) - len(td.with_status("diverged"))}


def copy_samples(td: TaskData, out: Path, s: str) -> list[tuple[str, str]]:
    """Copy the sample grid of the first seed of every entry and grid value; (relative path, caption) each."""
    copied, seen = [], set()
    for r in td.with_status("ok"):
        key = (r["_entry"], json.dumps(grid_of(r).get("value")))
        if key in seen:
            continue
        src = artifact_path(r, "samples")  # only a file inside the record's run folder
        if src is None:
            continue
        if not src.is_file():
            logger.warning("task %s, trial %s: sample grid %s is missing", td.name, r.get("trial_id"), src)
            continue
        seen.add(key)
        # trial ids repeat across entries of one method (rkl [trainable=full] and [trainable=xattn] both have
        # rkl-eps15-s0): such entries get their own prefix
        name = slug(r.get("trial_id")) if r["_entry"] == str(r.get("method")) else \
            f"{slug(r['_entry'])}--{slug(r.get('trial_id'))}"
        rel = f"samples/{s}/{name}{src.suffix.lower() or '.png'}"
        dst = out / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if not dst.is_file() or dst.read_bytes() != src.read_bytes():
            shutil.copyfile(src, dst)
        copied.append((rel, f"{r['_entry']} {grid_of(r).get('param') or 'grid'}={fmt(grid_of(r).get('value'))} "
                            f"seed {fmt(r.get('seed'))}"))
    return copied


def assemble(out: Path) -> tuple[Path, list]:
    """index.html and claims.txt from every task's fragments in ``out/parts``; returns (index path, claims)."""
    parts = out / "parts"
    names = sorted(p.name[: -len(".summary.html")] for p in parts.glob("*.summary.html")) if parts.is_dir() else []

    def read(name: str, ext: str) -> str:
        path = parts / f"{name}{ext}"
        return path.read_text(encoding="utf-8") if path.is_file() else ""

    evidence = [ev for n in names for ev in json.loads(read(n, ".claims.json") or "[]")]
    claims = claims_mod.summarize(evidence)
    write_text(out / "claims.txt", claims_mod.format_claims(claims) + "\n")
    n_trials = 0
    for n in names:
        if (out / f"{n}.csv").is_file():
            with open(out / f"{n}.csv", newline="", encoding="utf-8") as f:
                n_trials += sum(int(row[k] or 0) for row in csv.DictReader(f) for k in ("n_ok", "n_diverged", "n_failed"))
    details = [read(n, ".detail.html") + read(n, ".robustness.html") for n in names]
    html = page.index_page(names, [read(n, ".summary.html") for n in names], details, claims, n_trials)
    write_text(out / "index.html", html)
    return out / "index.html", claims


def build_leaderboard(run_dirs: Sequence[str | os.PathLike], out_dir: str | os.PathLike, own: bool = False) -> dict:
    """Rebuild the leaderboards of every task found in the records of ``run_dirs``.

    Args:
        run_dirs: run directories (searched recursively for records.jsonl) or records.jsonl files.
        out_dir: where the CSVs, plots, samples and index.html go: a new or empty folder, or one an earlier build
            wrote (it holds ``rundir.OUT_MARKER``); anything else raises ``rundir.OutDirRefused`` before a file is
            written. Files of tasks not in these records are kept and stay on the page.
        own: ``out_dir`` belongs to the caller already (a run directory's ``leaderboard/``): no marker needed.

    Returns:
        ``{"out_dir", "index", "claims", "tasks": {task: {"csv", "points_csv", "plots", "samples", "ranking",
        "n_ok", "n_diverged", "n_failed"}}, "failed": [{"task", "trial_id", "method", "status", "error"}],
        "n_records"}``; paths absolute.
    """
    out = claim_out_dir(out_dir, own=own)
    records = read_records([Path(p).resolve() for p in run_dirs])
    if not records:
        logger.warning("no records found in %s", ", ".join(str(p) for p in run_dirs))
    tasks = collect_tasks(records)
    result: dict[str, Any] = {"out_dir": str(out), "n_records": len(records),
                              "tasks": {name: build_task(td, out) for name, td in tasks.items()}}
    from unlearnbench.leaderboard.robustness import build_robustness

    for name, info in build_robustness(records, out, slug).items():
        result["tasks"].setdefault(name, {})["robustness"] = info
    result["failed"] = [{"task": td.name, "trial_id": r.get("trial_id"), "method": r.get("method"),
                         "status": r.get("status"), "error": r.get("error")}
                        for td in tasks.values() for r in td.invalid()]
    index, result["claims"] = assemble(out)
    result["index"] = str(index)
    return result
