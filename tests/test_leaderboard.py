"""Leaderboard tables, plots, page and CLI on synthetic records (no training, no torch)."""
from __future__ import annotations

import argparse
import csv
import json
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from synthetic import grid_records, make_record, synthetic_runs, write_records
from unlearnbench.cli import claims as cli_claims
from unlearnbench.cli import leaderboard as cli_lb
from unlearnbench.leaderboard import build_leaderboard
from unlearnbench.leaderboard.plots import METHOD_COLORS, method_color, robust_limits
from unlearnbench.leaderboard.stats import clipped, hypervolume_ci
from unlearnbench.pareto import hypervolume_2d
from unlearnbench.results import collect_tasks, oracle_fronts

KL_AXIS = ("kl_concept_min", "kl_pretrained")


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lb")
    runs = synthetic_runs(tmp)
    result = build_leaderboard(runs, tmp / "out")
    return tmp, runs, result


def test_leaderboard_csv_has_intervals(built):
    tmp, runs, result = built
    out = tmp / "out"
    assert sorted(result["tasks"]) == ["toy-concept", "toy-data"]
    rows = read_csv(out / "toy-concept.csv")
    assert [r["entry"] for r in rows] == ["rkl", "esd"] and [r["rank"] for r in rows] == ["1", "2"]
    rkl, esd = rows
    assert (rkl["n_ok"], rkl["n_failed"], esd["n_ok"], esd["n_failed"]) == ("9", "0", "8", "1")
    assert rkl["seeds"] == "3" and rkl["interval"] == "seeds"
    # hypervolume of the seed means against the worst observed point, inside its bootstrap interval
    td = collect_tasks(json.loads(x) for p in runs for x in (p / "records.jsonl").read_text().splitlines())
    pts = td["toy-concept"].points("rkl", KL_AXIS).mean
    hv = float(rkl["hv[kl_concept_min/kl_pretrained]"])
    # unlearning past the retrained model (kl 2.0) is clipped there: it earns nothing more
    clipped_pts = clipped(td["toy-concept"], KL_AXIS, pts)
    assert clipped_pts[:, 0].max() == 2.0 and clipped(td["toy-concept"], KL_AXIS, pts + [1.0, 0.0])[:, 0].max() == 2.0
    assert hv == pytest.approx(hypervolume_2d(clipped_pts, hypervolume_ref(td["toy-concept"]), (True, False)),
                               rel=1e-5)
    assert float(rkl["hv[kl_concept_min/kl_pretrained]_lo"]) <= hv <= float(rkl["hv[kl_concept_min/kl_pretrained]_hi"])
    # retention at the fixed levels, 25/50/75/100 % of the way from the pretrained kl (0) to the retrained one (2):
    # rkl retains more than esd; esd's seed-mean front stops at 1.995 (its seed 1 failed at 2.0): blank at 2
    level_cols = [k for k in rkl if "@kl_concept_min=" in k and not k.endswith(("_lo", "_hi"))]
    assert level_cols == [f"kl_pretrained@kl_concept_min={v}" for v in ("0.5", "1", "1.5", "2")]
    assert all(rkl[c] for c in level_cols) and esd[level_cols[-1]] == ""
    level_cols = level_cols[:3]
    assert all(float(rkl[c]) < float(esd[c]) for c in level_cols)
    assert all(float(rkl[c + "_lo"]) <= float(rkl[c]) <= float(rkl[c + "_hi"]) for c in level_cols)
    # convergence and constraint satisfaction as k/n over valid trials; unconstrained methods blank
    assert rkl["converged"] == "6/9" and rkl["constraints_met"] == "7/9" and esd["constraints_met"] == ""
    assert rkl["settled"] == "7/9" and esd["settled"] == ""
    assert float(rkl["overshoot[kl_concept_min]"]) == 0 and rkl["past_retrained[kl_concept_min]"] == "0/3"
    # forgotten mass 1 - exp(-2) = 0.865 against the retrained model's 0.8: 0.081 of the way past it
    assert float(rkl["overshoot[forgotten_mass]"]) == pytest.approx((1 - np.exp(-2) - 0.8) / 0.8, rel=1e-4)
    assert rkl["past_retrained[forgotten_mass]"] == "1/3"
    assert (rkl["rank_group"], esd["rank_group"]) == ("1", "2")
    assert float(rkl["oracle_gap[rkl]"]) == pytest.approx(0.01 * np.mean([0.5, 1, 2]), rel=1e-5)
    assert rkl["git_sha"] == "abc123" and rkl["packages"] == "numpy=2.4.6;torch=2.14.1"
    toy = read_csv(out / "toy-data.csv")
    assert [(r["entry"], r["n_diverged"]) for r in toy] == [("fkl", "0"), ("siss", "1")]


def hypervolume_ref(td):
    from unlearnbench.leaderboard.stats import reference

    return reference(td, KL_AXIS)[0]


def test_hypervolume_interval_narrows_with_agreeing_seeds():
    tight = collect_tasks(grid_records("toy-concept", {"rkl": 1.0}))["toy-concept"]
    _, lo, hi, src = hypervolume_ci(tight, "rkl", KL_AXIS)
    assert src == "seeds" and hi - lo > 0
    one = collect_tasks(grid_records("toy-concept", {"rkl": 1.0}, seeds=(0,)))["toy-concept"]
    assert hypervolume_ci(one, "rkl", KL_AXIS)[3] == "eval"


def test_points_csv_has_ci_and_rates(built):
    tmp, _, _ = built
    rows = read_csv(tmp / "out" / "toy-concept_points.csv")
    assert [(r["entry"], r["grid_value"]) for r in rows] == [
        ("esd", "0.5"), ("esd", "1"), ("esd", "2"), ("rkl", "0.5"), ("rkl", "1"), ("rkl", "2"),
        ("retrained (reference)", "")]
    rkl1 = rows[4]
    assert rkl1["n_seeds"] == "3" and rkl1["grid_param"] == "b" and rkl1["interval"] == "seeds"
    assert float(rkl1["kl_concept_min_mean"]) == pytest.approx(1.0)
    assert float(rkl1["kl_concept_min_ci95"]) == pytest.approx(0.024843, rel=1e-3)  # t(2) * 0.01 / sqrt(3)
    assert float(rkl1["kl_concept_min_eval_stderr"]) == pytest.approx(0.001)
    esd2 = rows[2]
    assert (esd2["n_seeds"], esd2["n_failed"]) == ("2", "1")
    toy = read_csv(tmp / "out" / "toy-data_points.csv")
    fkl = toy[0]  # regen_rate is a share of 1000 samples: k/n over the seeds
    k = sum(round(v * 1000) for v in (round(np.exp(-0.5) + d, 3) for d in (-0.01, 0.01, 0.0)))
    assert fkl["regen_rate_k/n"] == f"{k}/3000"
    assert [r["n_diverged"] for r in toy if r["entry"] == "siss"] == ["0", "0", "1"]


def test_rebuild_is_byte_identical(built, tmp_path):
    tmp, runs, _ = built
    build_leaderboard(runs, tmp_path / "again")
    first = sorted(p.relative_to(tmp / "out") for p in (tmp / "out").rglob("*") if p.is_file())
    second = sorted(p.relative_to(tmp_path / "again") for p in (tmp_path / "again").rglob("*") if p.is_file())
    assert first == second
    assert any(p.suffix == ".png" for p in first) and any(p.suffix == ".csv" for p in first)
    for rel in first:
        assert (tmp / "out" / rel).read_bytes() == (tmp_path / "again" / rel).read_bytes(), rel
    assert str(tmp) not in (tmp / "out" / "index.html").read_text(encoding="utf-8")


def test_one_task_rebuild_leaves_other_tasks_untouched(tmp_path):
    """`leaderboard --runs ONE_RUN` into the full folder: the other task's files stay, byte for byte, on the page."""
    runs = synthetic_runs(tmp_path)
    out = tmp_path / "out"
    build_leaderboard(runs, out)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    other = {p: b for p, b in before.items() if "toy-data" in p.name or "toy-data" in p.parent.name}
    assert any(p.suffix == ".png" for p in other) and any(p.parent.name == "toy-data" for p in other)
    (out / "notes.txt").write_text("mine")
    build_leaderboard(runs[:1], out)  # only toy-concept
    after = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert set(before) | {out / "notes.txt"} == set(after)  # nothing deleted, nothing new
    assert all(after[p] == b for p, b in other.items())
    assert (out / "index.html").read_bytes() == before[out / "index.html"]  # same records -> same page
    assert 'id="task-toy-data"' in (out / "index.html").read_text()


class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.links: list[str] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.links += [v for k, v in attrs if k in ("href", "src") and v]


def test_index_page_order_links_and_statuses(built):
    tmp, _, result = built
    out = tmp / "out"
    page = (out / "index.html").read_text(encoding="utf-8")
    parser = _Links()
    parser.feed(page)
    assert "script" not in parser.tags
    files = [x for x in parser.links if not x.startswith("#")]
    assert files and not any("://" in x or x.startswith("/") or ".." in x for x in files)
    for link in files:
        assert (out / link).is_file(), link
    for anchor in (x[1:] for x in parser.links if x.startswith("#")):
        assert f'id="{anchor}"' in page, anchor
    # summary tables, then fronts, then claims; nothing cites a file outside the folder
    assert page.index('id="summary"') < page.index('id="task-toy-concept"') < page.index('id="claims"')
    assert "PAPER.md" not in page
    plots = {str(p.relative_to(out)) for p in (out / "plots").iterdir()}
    assert plots == {x for x in files if x.startswith("plots/")}
    samples = [x for x in files if x.startswith("samples/")]
    assert len(set(samples)) == 6 and all(x.startswith("samples/toy-data/") for x in samples)  # one per grid value
    # the failed trial under Failed, the diverged one under Diverged; the superseded failure nowhere
    assert page.index('id="diverged-toy-data"') and "siss-g2-s2" in page
    assert "synthetic failure of esd at 2 &lt;seed 1&gt;" in page and "synthetic failure of rkl" not in page
    assert {(f["trial_id"], f["status"]) for f in result["failed"]} == {("esd-g2-s1", "failed"),
                                                                        ("siss-g2-s2", "diverged")}
    assert "kl_concept_min/kl_pretrained" in page and "[" in page  # values with their intervals


def test_fixed_colours_and_robust_axes():
    assert method_color("rkl") == METHOD_COLORS["rkl"] and method_color("esd") != method_color("rkl")
    for name in ("rkl-fixed", "rkl-is", "lik-is", "salun", "siss"):
        assert name in METHOD_COLORS
    assert method_color("my-plugin") == method_color("my-plugin") and method_color("my-plugin").startswith("#")
    lo, hi = robust_limits(np.array([0.1, 0.2, 0.3, 0.25, 1e50]), keep=np.array([0.0]))
    assert lo < 0.0 and hi < 1.0  # the blown-up point is drawn on the edge, not stretching the axis


def test_diverged_points_never_enter_fronts(tmp_path):
    recs = grid_records("toy-concept", {"rkl": 1.0})
    recs.append(make_record("toy-concept", "rkl", 3.0, 0, status="diverged"))
    td = collect_tasks(recs)["toy-concept"]
    assert 3.0 not in td.points("rkl", KL_AXIS).grid and len(td.with_status("diverged")) == 1


def test_all_failed_and_unknown_task(tmp_path, caplog):
    """A task whose trials all failed still gets a table row per entry and its failures listed; a task name that is
    not a safe name (it would become a file name) is skipped with a warning."""
    recs = [make_record("toy-data", "fkl", v, 0, status="failed") for v in (0.5, 1.0, 2.0)]
    for r, name in zip(recs, ["Broken.Task", "Broken.Task", "broken task"]):
        r["task"] = {"name": name, "kind": "data"}  # no axes, unknown name
    recs.append(make_record("toy-concept", "rkl", 1.0, 0))
    result = build_leaderboard([write_records(tmp_path / "runs", recs)], tmp_path / "out")
    rows = read_csv(Path(result["tasks"]["Broken.Task"]["csv"]))
    assert [(r["rank"], r["entry"], r["n_ok"], r["n_failed"]) for r in rows] == [("", "fkl", "0", "2")]
    assert Path(result["tasks"]["Broken.Task"]["csv"]).name == "Broken.Task.csv"
    assert len(result["failed"]) == 2 and "broken task" not in result["tasks"]
    assert "records.jsonl:3: skipped, task.name 'broken task' is not a valid name" in caplog.text


def test_oracle_fronts_accepts_both_layouts():
    nested = {"oracle": {"fronts": {"rkl": {"gap": 0.1, "curve": [[0, 0]]}}, "lambda": [0.1]}}
    flat = {"oracle": {"formulation": "rkl", "gap": 0.1, "front": [[0, 0]], "unlearning_metric": "u"}}
    assert oracle_fronts(nested)["rkl"]["curve"] == [[0, 0]]
    assert oracle_fronts(flat)["rkl"]["curve"] == [[0, 0]] and oracle_fronts(flat)["rkl"]["gap"] == 0.1
    assert oracle_fronts({"oracle": None}) == {} and oracle_fronts({}) == {}


def test_cli_leaderboard_and_claims(tmp_path, monkeypatch, capsys):
    synthetic_runs(tmp_path)
    monkeypatch.chdir(tmp_path)
    parser = argparse.ArgumentParser(prog="unlearnbench")
    sub = parser.add_subparsers(dest="command")
    cli_lb.add_parser(sub)
    cli_claims.add_parser(sub)
    args = parser.parse_args(["leaderboard"])  # defaults: runs/ -> leaderboards/
    assert args.func(args) == 0
    assert (tmp_path / "leaderboards" / "index.html").is_file()
    assert "toy-concept: 17 ok, 0 diverged, 1 failed; ranking rkl, esd" in capsys.readouterr().out
    args = parser.parse_args(["claims", "--runs", "runs/a", "--runs", "runs/b"])
    assert args.runs == ["runs/a", "runs/b"]
    assert args.func(args) == 0
    assert "(1) concept unlearning" in capsys.readouterr().out
    args = parser.parse_args(["leaderboard", "--runs", "nope", "--out", "x"])
    assert args.func(args) == 2


def test_a_zoom_panel_only_where_the_points_crowd_into_a_corner_of_the_full_view():
    from unlearnbench.leaderboard.plots import zoom_limits

    rng = np.random.default_rng(0)
    crowded = np.column_stack([rng.uniform(0, 0.2, 20), rng.uniform(0.97, 1.0, 20)])
    crowded = np.vstack([crowded, [[0.0, 0.72]]])  # one outlier stretches the full view, as rkl-is b=70 does
    zoom = zoom_limits(crowded, (-0.05, 1.05), (0.7, 1.02))  # full view stretched to the pretrained point (1, 1)
    assert zoom is not None
    (x0, x1), (y0, y1) = zoom
    assert x0 < 0.0 and 0.18 < x1 < 0.3 and 0.9 < y0 < 0.97 and y1 > 1.0  # the bulk; the outlier left out
    spread = np.column_stack([np.linspace(0, 1, 10), np.linspace(0.7, 1.0, 10)])
    assert zoom_limits(spread, (-0.05, 1.05), (0.68, 1.02)) is None
    # The full view stops at a fixed hypervolume reference (kid_kept 0.1 on digits-concept), the points beyond it
    # drawn as edge triangles: the zoom was taller than the "full view" (up to 0.14); it now stays inside it.
    kid = np.column_stack([rng.uniform(0, 0.2, 20), rng.uniform(-0.02, 0.1, 20)])
    kid = np.vstack([kid, [[0.01, 0.14], [0.0, 0.12], [0.02, 0.13], [0.19, 0.25]]])
    (x0, x1), (y0, y1) = zoom_limits(kid, (-0.05, 1.05), (-0.03, 0.06))  # x stretched to the pretrained point
    assert -0.05 <= x0 < x1 <= 0.3 and -0.03 <= y0 < y1 <= 0.06


def test_two_entries_of_one_method_keep_their_own_sample_grids(tmp_path):
    """rkl [trainable=full] and rkl [trainable=xattn] share trial ids (rkl-eps15-s0): their grids must not overwrite
    each other."""
    import matplotlib.image

    recs = []
    (tmp_path / "run").mkdir()
    for lr, shade in ((1e-3, 0.2), (1e-4, 0.8)):
        for v in (0.5, 1.0):
            png = tmp_path / "run" / f"lr{lr:g}-{v:g}.png"
            matplotlib.image.imsave(png, np.full((8, 24), shade), cmap="gray", vmin=0, vmax=1)
            recs.append(make_record("toy-data", "fkl", v, 0, samples=png.name, lr=lr))
    run = write_records(tmp_path / "run", recs)
    result = build_leaderboard([run], tmp_path / "out")
    files = sorted(result["tasks"]["toy-data"]["samples"])
    assert len(files) == 4 and len({Path(f).read_bytes() for f in files}) == 2
    assert len({Path(f).name for f in files}) == 4


def test_summary_cells_show_three_significant_digits_and_keep_the_full_values_in_their_tooltip(built):
    import csv
    import re

    from unlearnbench.leaderboard.page import short

    assert [short(x) for x in (0.0713831, 190.296, 27735.3, -0.0, 5e22, 1.0, 7, None)] == \
        ["0.0714", "190", "27700", "0", "5e+22", "1", "7", ""]
    tmp, _, _ = built
    out = tmp / "out"
    page = (out / "index.html").read_text(encoding="utf-8")
    cells = re.findall(r'<span title="([^"]+)">([^<]+)</span>', page)
    rows = list(csv.DictReader((out / "toy-concept.csv").open()))
    hv = next(c for c in rows[0] if c.startswith("hv["))
    full = f"{rows[0][hv]} [{rows[0][hv + '_lo']}, {rows[0][hv + '_hi']}]"
    assert full in dict(cells)  # the CSV's precision in the tooltip
    shown = dict(cells)[full]
    assert shown == f"{short(float(rows[0][hv]))} [{short(float(rows[0][hv + '_lo']))}, " \
                    f"{short(float(rows[0][hv + '_hi']))}]"
    assert all(len(re.sub(r"[^0-9]", "", n.split("e")[0]).strip("0")) <= 3  # significant digits of each number
               for _, s in cells for n in re.findall(r"-?[0-9.]+(?:e[+-][0-9]+)?", s))


def test_sample_paths_leading_out_of_the_run_folder_are_skipped_by_name(tmp_path, caplog):
    """A record is data from whoever wrote the run folder: an absolute path, a ../ path or a link out of the folder
    never makes the leaderboard copy (and publish) a file from elsewhere."""
    import matplotlib.image

    secret = tmp_path / "private.png"
    matplotlib.image.imsave(secret, np.full((8, 24), 0.3), cmap="gray", vmin=0, vmax=1)
    run = tmp_path / "run"
    run.mkdir()
    (run / "link.png").symlink_to(secret)
    ok = run / "artifacts" / "fkl.png"
    ok.parent.mkdir()
    matplotlib.image.imsave(ok, np.full((8, 24), 0.6), cmap="gray", vmin=0, vmax=1)
    paths = {0.25: str(secret), 0.5: "../private.png", 1.0: "link.png", 2.0: "artifacts/../../private.png",
             4.0: "artifacts/fkl.png"}
    write_records(run, [make_record("toy-data", "fkl", v, 0, samples=p) for v, p in paths.items()])
    result = build_leaderboard([run], tmp_path / "out")
    copied = result["tasks"]["toy-data"]["samples"]
    assert [Path(f).read_bytes() for f in copied] == [ok.read_bytes()], "only the file inside the run folder"
    for v in (0.25, 0.5, 1.0, 2.0):
        assert f"record 'fkl-g{v:g}-s0' in {run}: artifacts.samples" in caplog.text
    html = (tmp_path / "out" / "index.html").read_text()
    assert "private" not in html and str(tmp_path) not in html


def test_the_output_folder_is_new_empty_or_marked_by_an_earlier_build(tmp_path, capsys):
    """A leaderboard never overwrites files it did not write: a folder of other files is refused and left
    byte-identical; a new or empty folder is marked and can be rebuilt; a run's own leaderboard/ is its own."""
    from unlearnbench.cli.main import main
    from unlearnbench.rundir import OUT_MARKER, OutDirRefused

    runs = synthetic_runs(tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    (other / "index.html").write_text("someone's page\n")
    with pytest.raises(OutDirRefused, match=f"{other} already holds files .* \\(index.html\\)"):
        build_leaderboard(runs, other)
    argv = ["leaderboard", "--runs", *map(str, runs)]
    assert main([*argv, "--out", str(other)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --out") and err.count("\n") == 1
    assert [p.name for p in other.iterdir()] == ["index.html"] and (other / "index.html").read_text() == \
        "someone's page\n"
    empty = tmp_path / "empty"
    empty.mkdir()
    for out in (empty, tmp_path / "new" / "lb"):
        assert main([*argv, "--out", str(out)]) == 0
        assert (out / OUT_MARKER).is_file() and (out / "index.html").is_file()
        first = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
        assert main([*argv, "--out", str(out)]) == 0, "a folder an earlier build marked is rebuilt"
        assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == first
    legacy = tmp_path / "runs" / "b" / "leaderboard"  # a run's own folder, from before the marker
    legacy.mkdir()
    (legacy / "index.html").write_text("old\n")
    build_leaderboard(runs[1:], legacy, own=True)
    assert (legacy / OUT_MARKER).is_file() and (legacy / "index.html").read_text() != "old\n"


def test_dollar_signs_from_records_are_shown_not_parsed_as_mathtext(tmp_path):
    """An entry label built from a record's settings (here trainable='$\\foo{$') reaches titles and legends: it is
    shown as text, where matplotlib's mathtext used to end the build in a ParseFatalException."""
    recs = [make_record("toy-concept", "rkl", v, s) for v in (0.5, 1.0) for s in (0, 1)]
    for r in recs[:2]:
        r["method_config"]["trainable"] = "$\\foo{$"
    result = build_leaderboard([write_records(tmp_path / "run", recs)], tmp_path / "out")
    assert len(result["tasks"]["toy-concept"]["plots"]) == 3
    assert 'rkl [trainable=$\\foo{$]' in result["tasks"]["toy-concept"]["ranking"]
def test_records_scored_with_random_weight_networks_are_flagged_in_the_csv_and_on_the_page(tmp_path):
    recs = [make_record("toy-concept", m, v, s) for m in ("rkl", "esd") for v in (0.5, 1.0, 2.0) for s in (0, 1)]
    for r in recs:
        if r["method"] == "esd":  # as sd-concept records it for a CLIP built without a checkpoint
            r["task"]["evaluation"] = {"clip": {"model": "Tiny-CLIP", "pretrained": None, "random_weights": True},
                                       "features": {"name": "clip", "pretrained": None, "random_weights": True},
                                       "sampler": {"steps": 3}}
    build_leaderboard([write_records(tmp_path / "run", recs)], tmp_path / "out")
    rows = {r["entry"]: r for r in read_csv(tmp_path / "out" / "toy-concept.csv")}
    assert rows["esd"]["random_weight_metrics"] == "clip;features" and rows["rkl"]["random_weight_metrics"] == ""
    page = (tmp_path / "out" / "index.html").read_text(encoding="utf-8")
    assert "random-weight metric networks (clip, features) scored esd" in page
    assert page.count("(random-weight metrics)</span>") == 1


def test_the_robustness_tables_ask_the_attack_registry_not_its_name():
    """Whether an attack climbs a ladder, which metrics a scoring attack has and where chance lies come from the
    ATTACKS registry; an attack whose plugin is not installed where records are read is a ladder when a record has
    more than one rung."""
    from unlearnbench.leaderboard.robustness import attack_kind, climbs

    assert climbs("relearn") and climbs("embedding") and not climbs("mia")
    mia = attack_kind("mia")
    assert mia.metrics[0] == "mia_auc" and mia.chance == 0.5 and "AUC" in mia.axis_label
    assert attack_kind("not-installed") is None
    assert climbs("not-installed", [{"attack": {"budgets": [0, 10, 50]}}])
    assert not climbs("not-installed", [{"attack": {"budgets": [0]}}])


def test_plot_style_silences_missing_font_warnings_only_inside_it(caplog):
    """matplotlib reports each font family it cannot find (mathtext's STIX fallbacks on a bare machine: ~20 WARNING
    lines per leaderboard build); the plots' style keeps those quiet while it is active, and only then."""
    import uuid

    from matplotlib.font_manager import FontProperties, findfont

    from unlearnbench.leaderboard.plots import style

    def missing(tag: str) -> list[str]:
        caplog.clear()
        findfont(FontProperties(family=[f"ubmissing{tag}{uuid.uuid4().hex}"]))  # a new name: never a cached answer
        return [r.getMessage() for r in caplog.records if r.name == "matplotlib.font_manager" and r.levelname == "WARNING"]

    with caplog.at_level("WARNING", logger="matplotlib.font_manager"):
        assert missing("outside"), "matplotlib should warn about a missing family outside the style"
        with style():
            assert missing("inside") == []
        assert missing("after")
