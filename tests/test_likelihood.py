"""Likelihood estimators against exact Gaussian (mixture) models whose log-density is known in closed form."""
from __future__ import annotations

import math

import pytest
import torch

from unlearnbench.diffusion import Schedule
from unlearnbench.metrics.gmm import GaussianMixture
from unlearnbench.metrics.likelihood import (bits_per_dim, elbo_bpd, neg_elbo, pf_ode_loglik, pf_ode_sample_with_logp,
                                             timestep_grid)

SCH = Schedule.linear(1000)
ABAR = SCH.alphas_cumprod


def exact_eps(mix: GaussianMixture):
    return lambda x, t, c: mix.eps(x, ABAR[t]).to(x.dtype)


@pytest.fixture(scope="module")
def gauss() -> GaussianMixture:
    """An anisotropic, correlated 2-D Gaussian (non-diagonal Jacobian of eps)."""
    cov = torch.tensor([[0.5, 0.3], [0.3, 0.4]])
    return GaussianMixture(torch.tensor([[0.7, -0.4]]), cov[None], torch.ones(1))


@pytest.fixture(scope="module")
def mixture() -> GaussianMixture:
    covs = torch.stack([torch.eye(2) * 0.2, torch.tensor([[0.3, -0.1], [-0.1, 0.25]])])
    return GaussianMixture(torch.tensor([[-1.5, 0.3], [1.2, -0.5]]), covs, torch.tensor([0.35, 0.65]))


def test_timestep_grid():
    for spacing in ("edm", "uniform"):
        ts = timestep_grid(SCH, 50, spacing)
        assert ts[0] == 0 and ts[-1] == SCH.T - 1 and bool((ts[1:] > ts[:-1]).all()) and len(ts) <= 50
    with pytest.raises(ValueError, match="unknown spacing 'bogus'"):
        timestep_grid(SCH, 50, "bogus")


@pytest.mark.parametrize("name", ["gauss", "mixture"])
def test_pf_ode_loglik_matches_exact_density(name, request):
    mix = request.getfixturevalue(name)
    x = mix.sample(200, torch.Generator().manual_seed(0)).float()
    exact = mix.logpdf(x)
    err100 = pf_ode_loglik(SCH, exact_eps(mix), x, torch.zeros(200, dtype=torch.long), steps=100) - exact
    assert err100.abs().mean() < 0.01
    err50 = pf_ode_loglik(SCH, exact_eps(mix), x, torch.zeros(200, dtype=torch.long), steps=50) - exact
    assert err100.abs().mean() < err50.abs().mean()  # converges with the step count


def test_pf_ode_is_cond_aware():
    """eps depends on the prompt: two Gaussians selected by cond."""
    mixes = [GaussianMixture(torch.tensor([[m, 0.0]]), torch.eye(2)[None] * 0.3, torch.ones(1)) for m in (-1.0, 2.0)]

    def eps(x, t, c):
        out = torch.stack([m.eps(x, ABAR[t]) for m in mixes])  # [2, B, 2]
        return out[c, torch.arange(x.shape[0])].to(x.dtype)

    cond = torch.tensor([0] * 50 + [1] * 50)
    x = torch.cat([m.sample(50, torch.Generator().manual_seed(1)) for m in mixes]).float()
    exact = torch.where(cond == 0, mixes[0].logpdf(x), mixes[1].logpdf(x))
    assert (pf_ode_loglik(SCH, eps, x, cond, steps=60) - exact).abs().mean() < 0.03


def test_sample_with_logp_consistent(mixture):
    g = torch.Generator().manual_seed(0)
    x, logp = pf_ode_sample_with_logp(SCH, exact_eps(mixture), torch.zeros(1000, dtype=torch.long), (2,),
                                      steps=100, generator=g)
    diff = logp - mixture.logpdf(x.double())
    assert diff.abs().mean() < 0.01  # the density it reports is the model's density at its samples
    assert abs(float(diff.mean())) < 0.01  # so KL(p_model || q) ~ 0 for the exact model
    ref = mixture.sample(20000, g)
    assert torch.allclose(x.double().mean(0), ref.mean(0), atol=0.1)


def test_hutchinson_unbiased_and_shape_generic():
    """[B, 1, 4, 4] inputs: a correlated Gaussian through a fixed orthogonal map; Hutchinson ~ exact on average."""
    d = 16
    q = torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(0), dtype=torch.float64))[0]
    ev = torch.linspace(0.2, 2.0, d, dtype=torch.float64)
    mix = GaussianMixture(torch.zeros(1, d), (q @ torch.diag(ev) @ q.T)[None], torch.ones(1))

    def eps(x, t, c):
        return mix.eps(x.flatten(1), ABAR[t]).to(x.dtype).view_as(x)

    x = mix.sample(64, torch.Generator().manual_seed(1)).float().view(64, 1, 4, 4)
    cond = torch.zeros(64, dtype=torch.long)
    exact = pf_ode_loglik(SCH, eps, x, cond, steps=100)
    assert (exact - mix.logpdf(x.flatten(1))).abs().mean() < 0.05
    g = torch.Generator().manual_seed(2)
    for probe in ("rademacher", "gaussian"):
        hut = pf_ode_loglik(SCH, eps, x, cond, steps=100, divergence="hutchinson", n_probes=2, probe=probe, generator=g)
        d_ = hut - exact
        assert abs(float(d_.mean())) < 4 * float(d_.std()) / math.sqrt(64) + 1e-6
    with pytest.raises(ValueError, match="unknown divergence 'nope'"):
        pf_ode_loglik(SCH, eps, x, cond, steps=10, divergence="nope")  # type: ignore[arg-type]


def test_neg_elbo_bounds_the_likelihood(gauss):
    g = torch.Generator().manual_seed(0)
    x = gauss.sample(400, g).float()
    cond = torch.zeros(400, dtype=torch.long)
    nelbo = neg_elbo(SCH, exact_eps(gauss), x, cond, n_t=20, generator=g)
    nll = -gauss.logpdf(x)
    gap = nelbo - nll
    se = float(gap.std()) / math.sqrt(400)
    assert float(gap.mean()) > -3 * se  # an upper bound on -log p
    assert float(gap.mean()) < 0.2  # and a tight one for the exact model (nats, d = 2)
    bpd = elbo_bpd(SCH, exact_eps(gauss), x, cond, n_t=20, generator=torch.Generator().manual_seed(0))
    same = neg_elbo(SCH, exact_eps(gauss), x, cond, n_t=20, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(bpd, bits_per_dim(same, 2))
    shifted = bits_per_dim(same, 2, bin_width=2 / 255) - bits_per_dim(same, 2)
    assert torch.allclose(shifted, torch.full_like(shifted, math.log2(127.5)))
