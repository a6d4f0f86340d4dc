"""Leaderboard, claims and their CLI on synthetic records (no training, no torch)."""
from __future__ import annotations

import argparse
import csv
import json
import math
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from unlearnbench.claims import DOES_NOT_HOLD, HOLDS, NOT_ENOUGH_DATA, check_claims, format_claims
from unlearnbench.cli import leaderboard as cli_lb
from unlearnbench.leaderboard import REFERENCE_POINTS, build_leaderboard, collect_tasks, oracle_fronts
from unlearnbench.pareto import hypervolume_2d

GMM_AXES = [["kl_concept_min", "kl_pretrained"], ["forgotten_mass", "kl_pretrained"]]
TOY_AXES = [["regen_rate", "kid_retain"], ["forget_nll", "retain_nll"]]
METRICS = {  # name -> (role, higher_is_better)
    "kl_concept_min": ("unlearning", True), "forgotten_mass": ("unlearning", True),
    "kl_pretrained": ("retention", False),
    "regen_rate": ("unlearning", False), "forget_nll": ("unlearning", True),
    "kid_retain": ("retention", False), "retain_nll": ("retention", False),
}
ORACLE_CURVE = [[0.0, 0.0], [0.5, 0.02], [1.0, 0.05], [2.0, 0.11], [4.0, 0.25]]


@pytest.fixture(autouse=True, scope="module")
def synthetic_scales():
    """The synthetic gmm-concept records live on a 0-4 scale; pin the reference points and levels they were made for."""
    from unlearnbench import leaderboard

    saved = leaderboard.REFERENCE_POINTS["gmm-concept"], leaderboard.UNLEARNING_LEVELS["gmm-concept"]
    leaderboard.REFERENCE_POINTS["gmm-concept"] = {("kl_concept_min", "kl_pretrained"): (0.0, 1.0),
                                                   ("forgotten_mass", "kl_pretrained"): (0.0, 1.0)}
    leaderboard.UNLEARNING_LEVELS["gmm-concept"] = {"kl_concept_min": [1.0, 2.0, 4.0], "forgotten_mass": [0.5, 0.9, 0.99]}
    yield
    leaderboard.REFERENCE_POINTS["gmm-concept"], leaderboard.UNLEARNING_LEVELS["gmm-concept"] = saved


def _metric(name: str, value: float) -> dict:
    role, hib = METRICS[name]
    return {"value": value, "stderr": 0.001, "n": 1024, "role": role, "higher_is_better": hib}


def make_record(task: str, method: str, value: float, seed: int, *, status: str = "ok", cost: float = 1.0,
                created_at: str = "2026-01-01T00:00:00.000+00:00", samples: str | None = None) -> dict:
    """One synthetic trial. ``cost`` scales the retention damage (lower = a better method)."""
    kind = "concept" if task == "gmm-concept" else "data"
    noise = 0.01 * (1 if seed % 2 else -1)
    constrained = method in ("rkl", "fkl", "lik")
    rec = {
        "schema_version": 1, "run_id": f"run-{task}", "trial_id": f"{method}-g{value:g}-s{seed}",
        "created_at": created_at, "status": status, "error": None,
        "task": {"name": task, "kind": kind, "forget_set": "pair", "options": {},
                 "axes": GMM_AXES if task == "gmm-concept" else TOY_AXES},
        "method": method, "method_config": {"lr": 1e-3}, "grid": {"name": "eps", "param": "b", "value": value},
        "seed": seed, "metrics": {}, "oracle": None,
        "train": {"steps": 100 + seed, "final_duals": None, "duals": [], "constraint_estimates": None,
                  "constraint_slack": None, "constraints_met": None},
        "timing": {"setup_s": 0.5, "train_s": 2.0, "eval_s": 1.0, "total_s": 3.5 + seed},
        "config_hash": f"h-{method}-{value:g}",
        "env": {"unlearnbench": "0.1.0", "git_sha": "abc123", "torch": "2.14.1", "numpy": "2.4.6",
                "platform": "Linux", "gpu": None},
        "artifacts": {},
    }
    if status != "ok":
        rec["error"] = f"RuntimeError: synthetic failure of {method} at {value:g} <seed {seed}>"
        return rec
    if task == "gmm-concept":
        rec["metrics"] = {
            "kl_concept_min": _metric("kl_concept_min", value * 1.0 + noise),
            "forgotten_mass": _metric("forgotten_mass", 1 - math.exp(-value) + noise),
            "kl_pretrained": _metric("kl_pretrained", cost * 0.06 * value ** 1.2 + 0.5 * abs(noise)),
        }
        rec["oracle"] = {"fronts": {"rkl": {"unlearning_metric": "kl_concept_min",
                                            "retention_metric": "kl_pretrained", "level": value,
                                            "front_value": 0.05 * value, "gap": 0.01 * cost * value,
                                            "lambda_star": [0.1, 0.2], "curve": ORACLE_CURVE}},
                         "lambda": [0.1, 0.2]}
    else:
        rec["metrics"] = {
            "regen_rate": _metric("regen_rate", math.exp(-value) + noise),
            "forget_nll": _metric("forget_nll", 1 + value + noise),
            "kid_retain": _metric("kid_retain", cost * 0.01 * value + 0.5 * abs(noise)),
            "retain_nll": _metric("retain_nll", 1 + cost * 0.1 * value),
        }
        if samples:
            rec["artifacts"] = {"samples": samples}
    if constrained:
        duals = [[s, [0.1 * value * (1 - math.exp(-s / 30)), 0.05 * value * (1 - math.exp(-s / 50))]]
                 for s in range(0, 101, 20)]
        rec["train"].update(duals=duals, final_duals=duals[-1][1], constraints_met=bool(value < 2 or seed == 0))
    return rec


def write_records(path: Path, records: list[dict]) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    with open(path / "records.jsonl", "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, sort_keys=True) + "\n")
    return path


def synthetic_runs(tmp_path: Path) -> list[Path]:
    """2 tasks x 2 methods x 3 grid values x 2 seeds, one failed trial, one superseded failure, sample grids."""
    import matplotlib.image

    sample_dir = tmp_path / "artifacts"
    sample_dir.mkdir()
    gmm, toy = [], []
    for method, cost in (("rkl", 1.0), ("esd", 1.6)):
        for v in (0.5, 1.0, 2.0):
            for s in (0, 1):
                gmm.append(make_record("gmm-concept", method, v, s, cost=cost))
    for method, cost in (("fkl", 1.0), ("siss", 1.5)):
        for v in (0.5, 1.0, 2.0):
            for s in (0, 1):
                png = sample_dir / f"{method}-{v:g}-{s}.png"
                matplotlib.image.imsave(png, np.full((8, 8), v / 2.0), cmap="gray", vmin=0, vmax=1)
                toy.append(make_record("toy-data", method, v, s, cost=cost, samples=str(png)))
    # esd at 2.0 seed 1 failed (newest record); rkl at 0.5 seed 0 failed first and was resumed later
    gmm = [r for r in gmm if r["trial_id"] != "esd-g2-s1"]
    gmm.append(make_record("gmm-concept", "esd", 2.0, 1, status="failed", created_at="2026-01-02T00:00:00.000+00:00"))
    gmm.insert(0, make_record("gmm-concept", "rkl", 0.5, 0, status="failed",
                              created_at="2025-12-31T00:00:00.000+00:00"))
    return [write_records(tmp_path / "runs" / "a", gmm), write_records(tmp_path / "runs" / "b", toy)]


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lb")
    runs = synthetic_runs(tmp)
    result = build_leaderboard(runs, tmp / "out")
    return tmp, runs, result


def test_leaderboard_csv_contents(built):
    tmp, runs, result = built
    out = tmp / "out"
    assert sorted(result["tasks"]) == ["gmm-concept", "toy-data"]
    rows = read_csv(out / "gmm-concept.csv")
    assert [r["method"] for r in rows] == ["rkl", "esd"]
    rkl, esd = rows
    assert (rkl["rank"], esd["rank"]) == ("1", "2")
    assert (rkl["n_ok"], rkl["n_failed"], esd["n_ok"], esd["n_failed"]) == ("6", "0", "5", "1")
    assert rkl["hv_ref[kl_concept_min/kl_pretrained]"] == "fixed (0, 1)"
    # hypervolume from the seed means, recomputed by hand
    td = collect_tasks(json.loads(l) for p in runs for l in (p / "records.jsonl").read_text().splitlines())
    pts = td["gmm-concept"].method_points("rkl", ("kl_concept_min", "kl_pretrained"))[0]
    hv = hypervolume_2d(pts, REFERENCE_POINTS["gmm-concept"][("kl_concept_min", "kl_pretrained")], (True, False))
    assert float(rkl["hv[kl_concept_min/kl_pretrained]"]) == pytest.approx(hv, rel=1e-5)
    assert float(rkl["hv[kl_concept_min/kl_pretrained]"]) > float(esd["hv[kl_concept_min/kl_pretrained]"])
    # retention at fixed unlearning levels: 1 is inside the front, 4 is beyond it
    assert float(rkl["kl_pretrained@kl_concept_min=1"]) < float(esd["kl_pretrained@kl_concept_min=1"])
    assert rkl["kl_pretrained@kl_concept_min=4"] == ""
    # constraint satisfaction: rkl met at 0.5, 1 (both seeds) and at 2 seed 0 -> 5/6; esd is unconstrained
    assert float(rkl["constraints_met_share"]) == pytest.approx(5 / 6, rel=1e-5)
    assert esd["constraints_met_share"] == ""
    assert float(rkl["oracle_gap[rkl]"]) == pytest.approx(0.01 * np.mean([0.5, 1, 2]), rel=1e-5)
    assert float(rkl["mean_steps"]) == pytest.approx(100.5) and float(rkl["mean_total_s"]) == pytest.approx(4.0)
    assert rkl["git_sha"] == "abc123" and rkl["packages"] == "numpy=2.4.6;torch=2.14.1"
    assert rkl["config_hashes"] == "h-rkl-0.5;h-rkl-1;h-rkl-2"
    # unknown task: reference and levels fall back to the observed values, and the CSV says so
    toy = read_csv(out / "toy-data.csv")
    assert [r["method"] for r in toy] == ["fkl", "siss"]
    assert toy[0]["hv_ref[regen_rate/kid_retain]"].startswith("worst observed (")
    assert any(k.startswith("kid_retain@regen_rate=") for k in toy[0])


def test_points_csv_aggregates_seeds(built):
    tmp, _, _ = built
    rows = read_csv(tmp / "out" / "gmm-concept_points.csv")
    assert [(r["method"], r["grid_value"]) for r in rows] == [
        ("esd", "0.5"), ("esd", "1"), ("esd", "2"), ("rkl", "0.5"), ("rkl", "1"), ("rkl", "2")]
    rkl1 = rows[4]
    assert rkl1["n_seeds"] == "2" and rkl1["grid_param"] == "b" and rkl1["grid_name"] == "eps"
    assert float(rkl1["kl_concept_min_mean"]) == pytest.approx(1.0)
    assert float(rkl1["kl_concept_min_stderr"]) == pytest.approx(0.01)  # values 0.99 and 1.01
    esd2 = rows[2]
    assert (esd2["n_seeds"], esd2["n_failed"], esd2["kl_concept_min_stderr"]) == ("1", "1", "")
    assert {r["front[kl_concept_min/kl_pretrained]"] for r in rows} == {"1"}  # a monotone trade-off


def test_rebuild_is_byte_identical(built, tmp_path):
    tmp, runs, _ = built
    build_leaderboard(runs, tmp_path / "again")
    first = sorted(p.relative_to(tmp / "out") for p in (tmp / "out").rglob("*") if p.is_file())
    second = sorted(p.relative_to(tmp_path / "again") for p in (tmp_path / "again").rglob("*") if p.is_file())
    assert first == second
    assert any(p.suffix == ".png" for p in first) and any(p.suffix == ".csv" for p in first)
    for rel in first:
        assert (tmp / "out" / rel).read_bytes() == (tmp_path / "again" / rel).read_bytes(), rel
    html = (tmp / "out" / "index.html").read_text(encoding="utf-8")
    assert str(tmp) not in html  # no absolute paths, so moving the runs does not change the page


class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.links: list[str] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        for k, v in attrs:
            if k in ("href", "src") and v:
                self.links.append(v)


def test_index_page_links_exist(built):
    tmp, _, result = built
    out = tmp / "out"
    page = (out / "index.html").read_text(encoding="utf-8")
    parser = _Links()
    parser.feed(page)
    assert "script" not in parser.tags
    files = [l for l in parser.links if not l.startswith("#")]
    anchors = [l[1:] for l in parser.links if l.startswith("#")]
    assert files and not any("://" in l for l in files)
    for link in files:
        assert (out / link).is_file(), link
    for a in anchors:
        assert f'id="{a}"' in page, a
    # every table, every plot, every sample is linked
    assert {"gmm-concept.csv", "gmm-concept_points.csv", "toy-data.csv", "toy-data_points.csv"} <= set(files)
    plots = {str(p.relative_to(out)) for p in (out / "plots").iterdir()}
    assert plots == {l for l in files if l.startswith("plots/")}
    assert plots == {"plots/gmm-concept__kl_concept_min__kl_pretrained.png",
                     "plots/gmm-concept__forgotten_mass__kl_pretrained.png", "plots/gmm-concept__duals.png",
                     "plots/toy-data__regen_rate__kid_retain.png", "plots/toy-data__forget_nll__retain_nll.png",
                     "plots/toy-data__duals.png"}
    samples = [l for l in files if l.startswith("samples/")]
    assert len(set(samples)) == 12 and all(l.startswith("samples/toy-data/") for l in samples)
    # the failed trial and its (escaped) error; the superseded failure of rkl-g0.5-s0 is not listed
    assert "esd-g2-s1" in page and "synthetic failure of esd at 2 &lt;seed 1&gt;" in page
    assert "synthetic failure of rkl" not in page
    assert [f["trial_id"] for f in result["failed"]] == ["esd-g2-s1"]
    assert "kl_concept_min (↑ better)" in page and "kl_pretrained (↓ better)" in page


def test_stale_plots_removed(tmp_path):
    runs = synthetic_runs(tmp_path)
    out = tmp_path / "out"
    build_leaderboard(runs, out)
    (out / "plots" / "old-task__x__y.png").write_bytes(b"stale")
    build_leaderboard(runs[:1], out)
    assert not (out / "plots" / "old-task__x__y.png").exists()
    assert not (out / "samples").exists()  # toy-data is not in these records any more


def test_all_failed_and_unknown_task(tmp_path):
    """A task whose trials all failed still gets a table row per method and its failures listed."""
    recs = [make_record("toy-data", "fkl", v, 0, status="failed") for v in (0.5, 1.0)]
    for r in recs:
        r["task"] = {"name": "broken task", "kind": "data"}  # no axes, odd name
    recs.append(make_record("gmm-concept", "rkl", 1.0, 0))
    result = build_leaderboard([write_records(tmp_path / "runs", recs)], tmp_path / "out")
    rows = read_csv(Path(result["tasks"]["broken task"]["csv"]))
    assert [(r["rank"], r["method"], r["n_ok"], r["n_failed"]) for r in rows] == [("", "fkl", "0", "2")]
    assert Path(result["tasks"]["broken task"]["csv"]).name == "broken_task.csv"
    assert len(result["failed"]) == 2
    # a single point per method: a front of one point, hypervolume still defined
    gmm = read_csv(Path(result["tasks"]["gmm-concept"]["csv"]))
    assert gmm[0]["rank"] == "1" and float(gmm[0]["hv[kl_concept_min/kl_pretrained]"]) > 0


def test_oracle_fronts_accepts_both_layouts():
    nested = {"oracle": {"fronts": {"rkl": {"gap": 0.1, "curve": [[0, 0]]}}, "lambda": [0.1]}}
    flat = {"oracle": {"formulation": "rkl", "gap": 0.1, "front": [[0, 0]], "unlearning_metric": "u"}}
    assert oracle_fronts(nested)["rkl"]["curve"] == [[0, 0]]
    assert oracle_fronts(flat)["rkl"]["curve"] == [[0, 0]] and oracle_fronts(flat)["rkl"]["gap"] == 0.1
    assert oracle_fronts({"oracle": None}) == {} and oracle_fronts({}) == {}


def _claim_records(concept_costs: dict[str, float], data_costs: dict[str, float]) -> list[dict]:
    recs = []
    for task, costs in (("gmm-concept", concept_costs), ("toy-data", data_costs)):
        for method, cost in costs.items():
            for v in (0.5, 1.0, 2.0):
                for s in (0, 1):
                    recs.append(make_record(task, method, v, s, cost=cost))
    return recs


def test_claims_hold():
    claims = check_claims(_claim_records({"rkl": 1.0, "esd": 1.5, "lik": 0.8}, {"fkl": 1.0, "siss": 1.4}))
    assert [c.verdict for c in claims] == [HOLDS, HOLDS, HOLDS]
    c1 = claims[0]
    assert {e["axes"] for e in c1.evidence} == {"kl_concept_min/kl_pretrained"}  # the KL axis (from the oracle)
    assert c1.evidence[0]["hv_method"] > c1.evidence[0]["hv_baseline"] and c1.evidence[0]["better"] == 5
    c3 = claims[2]
    assert {(e["baseline"], e["axes"]) for e in c3.evidence} == {("esd", "forgotten_mass/kl_pretrained"),
                                                                 ("rkl", "forgotten_mass/kl_pretrained")}
    text = format_claims(claims)
    assert "verdict: holds" in text and "toy-data [forget_nll/retain_nll] fkl vs siss: holds" in text


def test_claims_do_not_hold_or_lack_data():
    claims = check_claims(_claim_records({"rkl": 1.5, "esd": 1.0, "lik": 1.2}, {"fkl": 1.0}))
    assert [c.verdict for c in claims] == [DOES_NOT_HOLD, NOT_ENOUGH_DATA, DOES_NOT_HOLD]
    assert "worse retention" in claims[0].evidence[0]["reason"]
    # lik better than rkl but worse than esd -> the claim (against both) does not hold
    by_base = {e["baseline"]: e["verdict"] for e in claims[2].evidence}
    assert by_base == {"rkl": HOLDS, "esd": DOES_NOT_HOLD}
    assert [c.verdict for c in check_claims([])] == [NOT_ENOUGH_DATA] * 3


def test_claims_lik_must_match_unlearning():
    recs = _claim_records({"rkl": 1.0, "lik": 0.5}, {})
    recs = [r for r in recs if not (r["method"] == "lik" and r["grid"]["value"] == 2.0)]  # lik stops short
    c3 = check_claims(recs)[2]
    assert c3.verdict == DOES_NOT_HOLD and "strongest unlearning" in c3.evidence[0]["reason"]


def test_cli_leaderboard_and_claims(tmp_path, monkeypatch, capsys):
    synthetic_runs(tmp_path)
    monkeypatch.chdir(tmp_path)
    parser = argparse.ArgumentParser(prog="unlearnbench")
    sub = parser.add_subparsers(dest="command")
    cli_lb.add_parser(sub)
    cli_lb.add_claims_parser(sub)
    args = parser.parse_args(["leaderboard"])  # defaults: runs/ -> leaderboards/
    assert args.func(args) == 0
    assert (tmp_path / "leaderboards" / "index.html").is_file()
    assert "gmm-concept: 11 ok, 1 failed; ranking rkl, esd" in capsys.readouterr().out
    args = parser.parse_args(["claims", "--runs", "runs/a", "--runs", "runs/b"])
    assert args.runs == ["runs/a", "runs/b"]
    assert args.func(args) == 0
    assert "(1) concept unlearning" in capsys.readouterr().out
    args = parser.parse_args(["leaderboard", "--runs", "nope", "--out", "x"])
    assert args.func(args) == 2
