"""gmm tasks and metrics: exact mixture maths, the bundle contract, metrics against quadrature, oracle-set grids."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from unlearnbench.metrics import METRICS
from unlearnbench.metrics.gmm import ExactEps, GaussianMixture
from unlearnbench.oracle import Grid, _kl, _weights, log_densities
from unlearnbench.tasks import TASKS, MetricValue

CONCEPT_W = [0.28, 0.22, 0.14, 0.22, 0.14]
FAST = {"distill_steps": 30, "distill_batch": 64, "eval_samples": 400, "eval_steps": 60}


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("gmm-cache"))


@pytest.fixture(scope="module")
def concept(cache):
    return TASKS.get("gmm-concept")(FAST, cache_dir=cache)


@pytest.fixture(scope="module")
def data(cache):
    return TASKS.get("gmm-data")(FAST, cache_dir=cache)


# -- mixture maths ---------------------------------------------------------------------------------------------------
def test_mixture_eps_is_minus_sigma_times_score():
    covs = torch.stack([torch.eye(2) * 0.3, torch.tensor([[0.4, 0.1], [0.1, 0.2]])])
    mix = GaussianMixture(torch.tensor([[0.0, 1.0], [1.5, -0.5]]), covs, torch.tensor([1.0, 3.0]))
    x = torch.randn(16, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64).requires_grad_(True)
    abar = torch.rand(16, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    grad = torch.autograd.grad(mix.logpdf(x, abar).sum(), x)[0]
    assert torch.allclose(mix.eps(x, abar), -(1 - abar).sqrt()[:, None] * grad, atol=1e-10)
    assert torch.allclose(mix.responsibilities(x, abar).sum(1), torch.ones(16, dtype=torch.float64))
    # a single noised Gaussian is N(sqrt(abar) mu, abar Sigma + sigma^2 I)
    one = mix.subset([1])
    s = torch.tensor([[0.4, 0.1], [0.1, 0.2]], dtype=torch.float64) * 0.3 + 0.7 * torch.eye(2, dtype=torch.float64)
    ref = torch.distributions.MultivariateNormal(0.3 ** 0.5 * one.means[0], s).log_prob(x.detach())
    assert torch.allclose(one.logpdf(x.detach(), 0.3), ref, atol=1e-10)
    xs = mix.sample(20000, torch.Generator().manual_seed(2))
    assert torch.allclose(xs.mean(0), 0.25 * mix.means[0] + 0.75 * mix.means[1], atol=0.03)


# -- gmm-concept -----------------------------------------------------------------------------------------------------
def test_concept_bundle_contract(concept, monkeypatch):
    b = concept.build(0)
    assert b.kind == "concept" and b.data_shape == (2,) and b.null_cond == 0
    assert b.forget_concepts == [3, 5] and b.retain_concepts == [1, 2, 4] and b.concept_names[3] == "C"
    x, t, c = torch.randn(8, 2), torch.randint(0, 1000, (8,)), torch.tensor([0, 1, 2, 3, 4, 5, 0, 3])
    assert b.net(x, t, c).shape == (8, 2) and b.ref(x, t, c).dtype == torch.float32
    assert b.ref_sampler(c, torch.Generator().manual_seed(0)).shape == (8, 2)
    post = b.posterior(x, t, [3, 5])
    assert post.shape == (8, 2) and bool((post >= 0).all()) and bool((post.sum(1) <= 1 + 1e-6).all())
    # fresh trainable copies of the cached distilled weights; a second task instance loads them from disk
    b2 = concept.build(1)
    with torch.no_grad():
        next(b.net.parameters()).add_(1.0)
    assert not torch.equal(next(b.net.parameters()), next(b2.net.parameters()))
    import unlearnbench.tasks._gmm as gmm_mod

    import functools

    # wrapped, so that the cache key (the builder's code) still sees the real function
    monkeypatch.setattr(gmm_mod, "distill",
                        functools.wraps(gmm_mod.distill)(lambda *a, **k: pytest.fail("distilled twice")))
    again = TASKS.get("gmm-concept")(FAST, cache_dir=concept.cache_dir).build(0)
    assert all(p.requires_grad for p in again.net.parameters())
    assert torch.equal(next(again.net.parameters()), next(b2.net.parameters()))
    with pytest.raises(ValueError, match="unknown forget set 'three'"):
        TASKS.get("gmm-concept")({"forget": "three"})
    with pytest.raises(ValueError, match="unknown option"):
        TASKS.get("gmm-concept")({"bogus": 1})


def _reweighted(task, weights) -> ExactEps:
    """An exact model whose null prompt has other weights: a stand-in 'unlearned' network with known density."""
    ex = task.exact()
    table = ex.log_table.clone()
    table[0] = torch.log(torch.as_tensor(weights, dtype=torch.float64) / sum(weights))
    return ExactEps(ex.mix, table, task.schedule)


def test_concept_metrics_match_quadrature(concept):
    """Evaluate an exact model with C nearly removed: every metric against grid quadrature of the same quantity."""
    b = concept.build(0)
    w = [0.28, 0.22, 0.01, 0.22, 0.14]  # C nearly erased
    b.net = _reweighted(concept, w)
    m = concept.evaluate(b, 0)
    grid = Grid(-7.0, 7.0, 0.05)
    comp = log_densities(concept.exact().mix, grid)
    logq = np.logaddexp.reduce(comp + np.log(np.array(CONCEPT_W))[:, None], 0)
    logp = np.logaddexp.reduce(comp + np.log(np.array(w) / sum(w))[:, None], 0)
    wp = _weights(logp, grid.log_cell)[0]
    bias = 0.01  # probability-flow ODE discretisation at 60 steps
    exact = {"kl_pretrained": _kl(wp, logp, logq), "kl_concept_3": _kl(wp, logp, comp[2]),
             "kl_concept_5": _kl(wp, logp, comp[4]),
             "mass_concept_3": float(wp @ np.exp(comp[2] + math.log(0.14) - logq)),
             "mass_concept_5": float(wp @ np.exp(comp[4] + math.log(0.14) - logq))}
    for name, val in exact.items():
        assert abs(m[name].value - val) < 4 * m[name].stderr + bias, name
    assert m["kl_concept_min"] == min(m["kl_concept_3"], m["kl_concept_5"], key=lambda v: v.value)
    assert m["forgotten_mass"].value == max(m["mass_concept_3"].value, m["mass_concept_5"].value)
    assert m["kl_kept"].value < 0.02  # kept prompts are exact
    assert m["kl_concept_min"].higher_is_better and m["forgotten_mass"].role == "unlearning"
    assert m["kl_pretrained"].role == "retention" and not m["kl_pretrained"].higher_is_better
    assert concept.evaluate(b, 0) == m  # same seed, same numbers
    assert all(name in METRICS for name in m)


def test_concept_oracle_report(concept):
    b = concept.build(0)
    m = concept.evaluate(b, 0)  # the (barely) distilled network
    rep = concept.oracle_report(m, "rkl", [0.0, 0.1])
    assert rep["lambda"] == [0.0, 0.1] and rep["method_front"] == "rkl"
    assert set(rep["fronts"]) == {"rkl", "lik", "esd", "esd_mass"}
    for f in rep["fronts"].values():
        assert {"unlearning_metric", "retention_metric", "level", "front_value", "gap", "curve"} <= set(f)
        assert len(f["curve"]) >= 20
        if f["gap"] is not None:
            assert f["gap"] == pytest.approx(m[f["retention_metric"]].value - f["front_value"])
    assert len(rep["fronts"]["rkl"]["lambda_star"]) == 2
    curve = np.asarray(rep["fronts"]["rkl"]["curve"])
    assert np.all(np.diff(curve[:, 0]) > 0) and np.all(np.diff(curve[:, 1]) >= -1e-9)  # monotone front


def test_concept_grids_span_the_way_to_the_retrained_model(concept):
    """The pair grids (placed by scripts/place_grid.py at 30-160 % of the way from the pretrained model's
    kl_concept_min to the retrained one's, 15.7 -> 20.5 nats) grow in strength on the exact fronts; rkl's and lik's
    (whose thresholds the exact fronts map to kl_concept_min) start in the first third of the way and end past it."""
    o, g = concept._oracle(), concept.grids["eps"]
    assert all(len(v) == 6 for v in g.values()) and all(len(v) == 2 for v in concept.grids["smoke"].values())
    rkl = [o.rkl_solve(b)["kl_min"] for b in g["rkl"]]
    lik = [o.lik_solve(e)["kl_min"] for e in g["lik"]]
    fixed = [o.rkl_tilt(np.full(2, a))["kl_min"] for a in g["rkl-fixed"]]
    esd = [o.rkl_tilt(np.full(2, eta / 2))["kl_min"] for eta in g["esd"]]  # ESD's target: alpha = eta / m
    pretrained, retrained = 15.69, 20.55
    for front in (rkl, lik, fixed, esd):
        assert np.all(np.diff(front) > 0)
    for front in (rkl, lik):
        assert front[0] < pretrained + (retrained - pretrained) / 3 and front[-1] > retrained
    assert g["rkl-is"] == g["rkl"] and g["lik-is"] == g["lik"]
    assert "salun" not in g  # salun is refused on this null-prompt task


# -- gmm-data ---------------------------------------------------------------------------------------------------------
def test_data_bundle_and_metrics(data):
    b = data.build(0)
    assert b.kind == "data" and b.train_data.shape == (60, 2) and b.forget_data.shape == (2, 2)
    assert b.retain_data.shape == (58, 2) and b.forget_groups is None and b.n_constraints == 2
    assert b.data_noise == 0.25 and torch.equal(b.forget_data[0], b.train_data[-1])  # the outlier first
    b.net = b.ref
    m = data.evaluate(b, 0)
    o, o_r = data._oracles()
    assert abs(m["kl_pretrained"].value) < 0.01
    kl_r_q = _kl(_weights(o_r.logq, o.grid.log_cell)[0], o_r.logq, o.logq)  # KL(q_retrain || q)
    assert abs(m["kl_retrain"].value - kl_r_q) < 4 * m["kl_retrain"].stderr + 0.01
    for i, k in enumerate(o.base_kls):
        assert abs(m[f"forget_kl_{i}"].value - k) < 4 * m[f"forget_kl_{i}"].stderr + 0.01
    logq_pts = data.exact().mix.logpdf(b.forget_data.double())
    assert m["forget_nll"].value == pytest.approx(float(-logq_pts.mean()), abs=0.02)
    assert abs(m["forget_kl_gain_min"].value) < 4 * m["forget_kl_gain_min"].stderr + 0.025
    rep = data.oracle_report(m, "fkl", [0.01, 0.02])
    assert set(rep["fronts"]) == {"fkl", "fkl_gain", "fkl_retrain", "equal"} and rep["method_front"] == "fkl"
    assert rep["fronts"]["fkl"]["status"] in ("ok", "inactive") and rep["fronts"]["fkl"]["gap"] is not None
    far = dict(m, forget_kl_min=MetricValue(50.0, 0.1, 1, "unlearning", True))
    beyond = data.oracle_report(far, "fkl", None)["fronts"]["fkl"]
    assert beyond["status"] == "beyond" and beyond["gap"] is None and beyond["dual_bound"] > 0


def test_data_forget_sets_and_grids(cache):
    one = TASKS.get("gmm-data")({**FAST, "forget": "one"}, cache_dir=cache)
    dense = TASKS.get("gmm-data")({**FAST, "forget": "dense"}, cache_dir=cache)
    assert one.split()[0] == [59] and len(dense.split()[0]) == 1 and dense.split()[0][0] < 59
    pair = TASKS.get("gmm-data")(FAST, cache_dir=cache)
    assert pair.split()[0] == one.split()[0] + dense.split()[0]
    o, _ = pair._oracles()
    fkl = [o.solve(np.asarray(o.base_kls) + b) for b in pair.grids["eps"]["fkl"]]
    assert all(s["status"] == "ok" for s in fkl)  # every threshold is reachable by some p_lambda
    kls = [s["kl"] for s in fkl]
    assert np.all(np.diff(kls) > 0) and kls[0] < 0.005
    n = 60  # the retrain distribution (lambda = 1/N each) sits inside the grid's range
    retrain_gain = min(o.stats([1 / n, 1 / n])["gains"])
    assert pair.grids["eps"]["fkl"][0] < retrain_gain < pair.grids["eps"]["fkl"][-1]


def test_fkl_dual_bounds_are_the_oracles(cache):
    """fkl's projection box on gmm-data is the exact oracle's: the outlier (a vertex of the data's hull) stops at its
    share 1/N, the densest point (inside the data) may go past it up to where p_lambda stops being a density, and
    every threshold of the grid has its lambda* inside the box, so the method can reach what the oracle reaches."""
    from unlearnbench.methods import METHODS
    from unlearnbench.methods.base import make_config

    pair = TASKS.get("gmm-data")(FAST, cache_dir=cache)
    bounds = pair.dual_bounds()
    assert bounds[0] == pytest.approx(1 / 60, rel=1e-9) and bounds[1] > 2 / 60
    o, _ = pair._oracles()
    lam = o.w0.copy()
    lam[1] = bounds[1] * 1.01  # just past the bound the mixture minus the forget mass has a hole
    assert float(o._parts(lam)[1].max()) > 1 - o.rho_min
    for b in pair.grids["eps"]["fkl"]:
        s = o.solve(np.asarray(o.base_kls) + b)
        assert s["status"] == "ok" and all(0 <= x <= ub + 1e-9 for x, ub in zip(s["lambda"], bounds)), (b, s["lambda"])
    bundle = pair.build(0)
    fkl = METHODS.get("fkl")
    m = fkl(make_config(fkl.Config, {"dual_lr": 1.0, "dual_ema": 0.0, "eps": 100.0}, "fkl"), bundle, torch.Generator())
    m.dual_step(torch.zeros(2, dtype=torch.float64))  # every constraint far from met: both duals to their bounds
    assert torch.allclose(m.duals, torch.tensor(bounds, dtype=torch.float64))


@pytest.mark.slow
def test_default_distillation_is_accurate(tmp_path):
    """The default distilled networks: KL(p_net(.|c) || q(.|c)) small for every prompt (about a minute)."""
    for name in ("gmm-concept", "gmm-data"):
        task = TASKS.get(name)(None, cache_dir=str(tmp_path))
        task.prepare()
        assert max(task.distill_stats["kl"]) < 0.05, task.distill_stats
