"""Exact fronts: quadrature against closed forms, KKT conditions at lambda*, monotone fronts, fkl = retrain at 1/N."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from unlearnbench.metrics.gmm import GaussianMixture
from unlearnbench.oracle import (ConceptOracle, Grid, _kl, _weights, data_oracles, front_entry,
                                 interpolate_front, log_densities, solution_entry)


def concept_mix() -> GaussianMixture:
    """Three isotropic components: 1 well separated, 2 overlapping component 0."""
    return GaussianMixture(torch.tensor([[-1.0, 0.0], [2.5, 1.0], [0.0, -0.6]]), torch.eye(2).expand(3, 2, 2) * 0.25,
                           torch.tensor([0.5, 0.25, 0.25]))


@pytest.fixture(scope="module")
def concept() -> ConceptOracle:
    return ConceptOracle(concept_mix(), [1, 2], Grid(-8.0, 8.0, 0.08))


def test_quadrature_kl_of_two_gaussians():
    g = Grid(-10.0, 10.0, 0.1)
    a = GaussianMixture(torch.tensor([[0.3, -0.2]]), torch.tensor([[[0.5, 0.1], [0.1, 0.3]]]), torch.ones(1))
    b = GaussianMixture(torch.tensor([[-0.5, 0.4]]), torch.tensor([[[1.2, -0.2], [-0.2, 0.8]]]), torch.ones(1))
    la, lb = log_densities(a, g)[0], log_densities(b, g)[0]
    w, log_z = _weights(la, g.log_cell)
    assert abs(log_z) < 1e-10  # normalised by quadrature
    S0, S1 = a.evecs[0] @ torch.diag(a.evals[0]) @ a.evecs[0].T, b.evecs[0] @ torch.diag(b.evals[0]) @ b.evecs[0].T
    dm = (b.means[0] - a.means[0])
    exact = 0.5 * (torch.trace(torch.linalg.solve(S1, S0)) + dm @ torch.linalg.solve(S1, dm) - 2
                   + torch.logdet(S1) - torch.logdet(S0))
    assert abs(_kl(w, la, lb) - float(exact)) < 1e-9


def test_rkl_front_kkt_and_monotone(concept):
    pre = concept.rkl_tilt(0.0)
    assert abs(pre["kl"]) < 1e-10 and pre["edge_mass"] < 1e-12
    assert concept.rkl_solve(pre["kl_min"] - 1)["status"] == "inactive"
    prev = 0.0
    for b in np.linspace(pre["kl_min"] + 0.5, pre["kl_min"] + 12, 5):
        sol = concept.rkl_solve(b)
        assert sol["status"] == "ok"
        lam, kls = np.asarray(sol["lambda"]), np.asarray(sol["kls"])
        assert (lam >= 0).all() and lam.sum() < 1
        assert (kls >= b - 1e-3).all()  # feasible
        assert np.all(np.abs(kls[lam > 1e-6] - b) < 1e-3)  # active where lambda* > 0 (complementary slackness)
        assert abs(sol["dual"] - sol["kl"]) < 1e-4  # zero duality gap
        assert np.allclose(sol["alpha"], lam / (1 - lam.sum()))
        assert sol["kl"] > prev  # the front rises with b
        prev = sol["kl"]


def test_rkl_front_beats_every_equal_weight_tilt(concept):
    """Brute force: no point of the equal-alpha family reaches the same level more cheaply than the front."""
    for a in (0.02, 0.05, 0.1):
        st = concept.rkl_tilt(a)
        assert concept.rkl_solve(st["kl_min"])["kl"] <= st["kl"] + 1e-6


def test_lik_front_kkt_and_monotone(concept):
    pre = concept.lik_tilt(0.0)
    assert np.allclose(pre["masses"], [0.25, 0.25], atol=1e-8)  # E_q P(c_i|x) = prior weight
    prev = 0.0
    for eps in (0.2, 0.1, 0.03, 0.01, 0.001):
        sol = concept.lik_solve(eps)
        lam, m = np.asarray(sol["lambda"]), np.asarray(sol["masses"])
        assert (m <= eps + 1e-4).all() and np.all(np.abs(m[lam > 1e-6] - eps) < 1e-4)
        assert abs(sol["dual"] - sol["kl"]) < 1e-4
        assert sol["kl"] > prev
        prev = sol["kl"]
    one = ConceptOracle(concept_mix(), [1], concept.grid).lik_solve(1e-4)  # the well-separated component alone
    assert one["kl"] == pytest.approx(-math.log(1 - 0.25), abs=0.01)  # costs -log(1 - its mass)


@pytest.fixture(scope="module")
def data():
    """A ring of six points around an interior point (index 2), a second cluster and an outlier (index 10)."""
    ring = np.stack([(-1 + 0.4 * np.cos(a), 0.4 * np.sin(a)) for a in np.linspace(0, 2 * np.pi, 6, endpoint=False)])
    rng = np.random.default_rng(0)
    pts = np.concatenate([ring[:2], [[-1.0, 0.0]], ring[2:], rng.normal((1.2, 0), 0.3, (3, 2)), [[0.0, 2.5]]])
    n = len(pts)
    covs = torch.eye(2, dtype=torch.float64).expand(n, 2, 2) * 0.3 ** 2
    mix = GaussianMixture(torch.tensor(pts), covs, torch.ones(n))
    forget = [n - 1, 2]
    return mix, forget, [i for i in range(n) if i not in forget]


def test_fkl_at_one_over_n_is_retrain(data):
    mix, forget, retain = data
    o, o_r = data_oracles(mix, forget, retain)
    n = mix.K
    assert o.hull_bound[0] == pytest.approx(1 / n) and math.isinf(o.hull_bound[1])
    assert o_r.hull_bound == [0.0, math.inf]  # the outlier lies outside the retain set's hull
    st = o.stats([1 / n, 1 / n])
    retrain = mix.subset(retain)
    log_r = np.log(np.exp(log_densities(retrain, o.grid) + retrain.log_w.numpy()[:, None]).sum(0))
    assert st["kl"] == pytest.approx(_kl(o.wq, o.logq, log_r), abs=1e-9)  # KL(q || p_{1/N}) = KL(q || q_retrain)
    assert st["kls"] == pytest.approx([_kl(w, li, log_r) for w, li in zip(o.wi, o.logqi)], abs=1e-8)
    assert st["kls"] == pytest.approx(o_r.base_kls, abs=1e-8)


def test_fkl_front_kkt_monotone_and_beyond(data):
    mix, forget, retain = data
    o, _ = data_oracles(mix, forget, retain)
    prev = 0.0
    for gain in (0.05, 0.2, 0.5):
        sol = o.solve(np.asarray(o.base_kls) + gain)
        assert sol["status"] == "ok"
        lam = np.asarray(sol["lambda"])
        assert np.all(np.asarray(sol["gains"]) >= gain - 1e-3)
        assert np.all(np.abs(np.asarray(sol["gains"])[lam > 1e-7] - gain) < 1e-3)
        assert abs(sol["dual"] - sol["kl"]) < 1e-4 and sol["kl"] > prev
        prev = sol["kl"]
    far = o.solve(np.asarray(o.base_kls) + 1e3)
    assert far["status"] == "beyond"
    entry = solution_entry("forget_kl_gain_min", "kl_pretrained", 1e3, 0.5, far, [])
    assert entry["gap"] is None and entry["front_value"] is None and entry["dual_bound"] is not None


def test_front_entry_and_interpolation():
    curve = [[1.0, 0.0], [2.0, 1.0], [3.0, 4.0]]
    assert interpolate_front(curve, 0.5) == (0.0, "inactive")
    assert interpolate_front(curve, 2.5) == (2.5, "ok")
    assert interpolate_front(curve, 3.5) == (None, "outside_curve")
    down = [[0.3, 0.0], [0.2, 1.0], [0.1, 2.0]]  # a mass axis: stronger = smaller
    assert interpolate_front(down, 0.15)[0] == pytest.approx(1.5)
    assert interpolate_front(down, 0.4) == (0.0, "inactive")
    e = front_entry("u", "r", 2.5, 3.0, 2.5, curve, "ok")
    assert e["gap"] == pytest.approx(0.5)
