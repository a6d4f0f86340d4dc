"""Claims as families of protocol comparisons (unlearnbench.claims on unlearnbench.compare)."""
from __future__ import annotations

import json

from synthetic import grid_records, make_record
from unlearnbench.claims import FAILS, HOLDS, INCONCLUSIVE, NOT_ENOUGH_DATA, check_claims, format_claims
from unlearnbench.compare import A_BETTER, B_BETTER, INCONCLUSIVE as C_INCONCLUSIVE

SEEDS5 = (0, 1, 2, 3, 4)


def _records(concept: dict[str, float], data: dict[str, float], seeds=SEEDS5) -> list[dict]:
    out = (grid_records("toy-concept", concept, seeds=seeds, references=True)
           + grid_records("toy-data", data, seeds=seeds, references=True))
    for r in out:  # every constrained trial settled, unless a test says otherwise
        if (r.get("train") or {}).get("convergence"):
            r["train"]["convergence"]["constraints_met"] = True
    return out


def test_claims_hold_with_intervals_and_p_values():
    claims = check_claims(_records({"rkl": 1.0, "esd": 1.5, "lik": 0.8}, {"fkl": 1.0, "siss": 1.4}))
    assert [c.verdict for c in claims] == [HOLDS, HOLDS, HOLDS]
    ev = claims[0].evidence[0]
    assert ev["axes"] == "kl_concept_min/kl_pretrained"  # the KL axis (from the oracle's metric pair)
    assert ev["seeds"] == list(SEEDS5) and ev["verdict"] == A_BETTER
    assert ev["interval"][0] > 0 and ev["p_adjusted"] < 0.05 and ev["p_adjusted"] >= ev["p_value"]
    assert [lv["value"] for lv in ev["levels"]] == [0.5, 1.0, 1.5, 2.0]  # fixed from the references
    assert {(e["b"], e["axes"]) for e in claims[2].evidence} == {("esd", "forgotten_mass/kl_pretrained"),
                                                                 ("rkl", "forgotten_mass/kl_pretrained")}
    text = format_claims(claims)
    assert "verdict: holds" in text and "p = " in text and "Holm" in text and "5 seeds" in text


def test_claims_fail_or_lack_data():
    claims = check_claims(_records({"rkl": 1.5, "esd": 1.0, "lik": 1.2}, {"fkl": 1.0}))
    assert [c.verdict for c in claims] == [FAILS, NOT_ENOUGH_DATA, FAILS]
    assert claims[0].evidence[0]["verdict"] == B_BETTER and claims[0].evidence[0]["interval"][1] < 0
    by_base = {e["b"]: e["verdict"] for e in claims[2].evidence}
    assert by_base == {"rkl": A_BETTER, "esd": B_BETTER}  # lik beats rkl but not esd: the claim fails
    assert [c.verdict for c in check_claims([])] == [NOT_ENOUGH_DATA] * 3


def test_one_seed_is_inconclusive():
    claims = check_claims(_records({"rkl": 1.0, "esd": 1.5}, {}, seeds=(0,)))
    ev = claims[0].evidence[0]
    assert claims[0].verdict == INCONCLUSIVE and ev["verdict"] == C_INCONCLUSIVE
    assert "a verdict needs at least 3" in format_claims(claims)


def test_overlapping_seeds_are_inconclusive():
    """Equal methods whose seeds disagree: the interval contains 0, so no verdict."""
    recs = _records({"rkl": 1.0, "esd": 1.0}, {})
    for r in recs:  # esd better on seeds 0 and 2, worse on 1 and 3
        if r.get("method") == "esd" and r["seed"] in (0, 1, 2, 3):
            r["metrics"]["kl_pretrained"]["value"] *= 0.8 if r["seed"] in (0, 2) else 1.2
    ev = check_claims(recs)[0].evidence[0]
    assert ev["verdict"] == C_INCONCLUSIVE and ev["interval"][0] < 0 < ev["interval"][1]


def test_holm_over_a_claims_comparisons():
    """Claim 1 compares rkl with esd and rkl-fixed: two comparisons, one family."""
    claims = check_claims(_records({"rkl": 1.0, "esd": 1.5, "rkl-fixed": 1.5}, {}))
    fam = claims[0].evidence
    assert len(fam) == 2
    ps = sorted(e["p_value"] for e in fam)
    assert min(e["p_adjusted"] for e in fam) == min(1.0, 2 * ps[0])


def test_lik_must_match_unlearning():
    recs = [r for r in _records({"rkl": 1.0, "lik": 0.5}, {})
            if not (r.get("method") == "lik" and r["grid"]["value"] == 2)]
    c3 = check_claims(recs)[2]
    ev = c3.evidence[0]
    assert c3.verdict == FAILS and "does not reach rkl's unlearning" in ev["reason"] and ev["matched"] is False
    assert ev["verdict"] == A_BETTER, "the retention test keeps its own verdict: matching is not a test"


def test_unsettled_trials_are_not_results_of_their_formulation():
    recs = _records({"rkl": 1.0, "esd": 1.5}, {})
    for r in recs:
        if r.get("method") == "rkl":
            r["train"]["convergence"]["dual_rel_change"] = 0.2  # duals still moving
    ev = check_claims(recs)[0].evidence[0]
    assert ev["reason"] == "no settled points for rkl" and ev["verdict"] == C_INCONCLUSIVE


def test_diverged_points_are_never_used():
    recs = grid_records("toy-concept", {"rkl": 1.0}, references=True)
    recs += [make_record("toy-concept", "esd", v, s, status="diverged") for v in (0.5, 1.0, 2.0) for s in (0, 1, 2)]
    c1 = check_claims(recs)[0]
    assert c1.verdict == NOT_ENOUGH_DATA and c1.evidence[0]["reason"] == "no valid points for esd"
    # a diverged point that would have dominated everything does not change a verdict
    good = _records({"rkl": 1.0, "esd": 1.5}, {})
    bad = make_record("toy-concept", "esd", 9.0, 0, status="diverged")
    bad["metrics"]["kl_concept_min"]["value"], bad["metrics"]["kl_pretrained"]["value"] = 100.0, 0.0
    assert json.dumps(check_claims(good + [bad])[0].evidence[0]) == json.dumps(check_claims(good)[0].evidence[0])
