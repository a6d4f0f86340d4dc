"""Claims as paired bootstrap tests at matched unlearning levels (unlearnbench.claims)."""
from __future__ import annotations

from synthetic import grid_records, make_record
from unlearnbench.claims import FAILS, HOLDS, INCONCLUSIVE, NO_VALID, NOT_ENOUGH_DATA, check_claims, format_claims


def _records(concept: dict[str, float], data: dict[str, float], seeds=(0, 1, 2)) -> list[dict]:
    return grid_records("toy-concept", concept, seeds=seeds) + grid_records("toy-data", data, seeds=seeds)


def test_claims_hold_with_intervals():
    claims = check_claims(_records({"rkl": 1.0, "esd": 1.5, "lik": 0.8}, {"fkl": 1.0, "siss": 1.4}))
    assert [c.verdict for c in claims] == [HOLDS, HOLDS, HOLDS]
    ev = claims[0].evidence[0]
    assert ev["axes"] == "kl_concept_min/kl_pretrained"  # the KL axis (from the oracle's metric pair)
    assert ev["n_seeds"] == 3 and len(ev["levels"]) == 5 and 0 < ev["diff_lo"] <= ev["diff"] <= ev["diff_hi"]
    assert {(e["baseline"], e["axes"]) for e in claims[2].evidence} == {("esd", "forgotten_mass/kl_pretrained"),
                                                                        ("rkl", "forgotten_mass/kl_pretrained")}
    text = format_claims(claims)
    assert "verdict: holds" in text and "(95 % bootstrap over 3 seeds)" in text
    assert "5 levels of kl_concept_min in [" in text


def test_claims_fail_or_lack_data():
    claims = check_claims(_records({"rkl": 1.5, "esd": 1.0, "lik": 1.2}, {"fkl": 1.0}))
    assert [c.verdict for c in claims] == [FAILS, NOT_ENOUGH_DATA, FAILS]
    assert claims[0].evidence[0]["diff_hi"] < 0 and "retains less" in claims[0].evidence[0]["reason"]
    by_base = {e["baseline"]: e["verdict"] for e in claims[2].evidence}
    assert by_base == {"rkl": HOLDS, "esd": FAILS}  # lik beats rkl but not esd: the claim fails
    assert [c.verdict for c in check_claims([])] == [NOT_ENOUGH_DATA] * 3


def test_one_seed_is_inconclusive():
    claims = check_claims(_records({"rkl": 1.0, "esd": 1.5}, {}, seeds=(0,)))
    ev = claims[0].evidence[0]
    assert claims[0].verdict == INCONCLUSIVE and ev["verdict"] == "inconclusive (1 seed)"
    assert "no interval: 1 seed" in format_claims(claims)


def test_overlapping_seeds_are_inconclusive():
    """Equal methods whose seeds disagree: the interval contains 0, so no verdict."""
    recs = _records({"rkl": 1.0, "esd": 1.0}, {})
    for r in recs:  # esd better on seed 0, worse on seed 1
        if r["method"] == "esd" and r["seed"] in (0, 1):
            r["metrics"]["kl_pretrained"]["value"] *= 0.8 if r["seed"] == 0 else 1.2
    ev = check_claims(recs)[0].evidence[0]
    assert ev["verdict"] == "inconclusive (3 seeds)" and ev["diff_lo"] < 0 < ev["diff_hi"]


def test_lik_must_match_unlearning():
    recs = [r for r in _records({"rkl": 1.0, "lik": 0.5}, {}) if not (r["method"] == "lik" and r["grid"]["value"] == 2)]
    c3 = check_claims(recs)[2]
    assert c3.verdict == FAILS and "strongest unlearning" in c3.evidence[0]["reason"]


def test_diverged_points_are_never_used():
    recs = grid_records("toy-concept", {"rkl": 1.0})
    recs += [make_record("toy-concept", "esd", v, s, status="diverged") for v in (0.5, 1.0, 2.0) for s in (0, 1, 2)]
    c1 = check_claims(recs)[0]
    assert c1.verdict == NO_VALID and c1.evidence[0]["reason"] == "no valid points for esd"
    # a diverged point that would have dominated everything does not change a verdict
    good = _records({"rkl": 1.0, "esd": 1.5}, {})
    bad = make_record("toy-concept", "esd", 9.0, 0, status="diverged")
    bad["metrics"]["kl_concept_min"]["value"], bad["metrics"]["kl_pretrained"]["value"] = 100.0, 0.0
    assert check_claims(good + [bad])[0].evidence[0] == check_claims(good)[0].evidence[0]
