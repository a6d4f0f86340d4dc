"""Exact Gaussian-mixture maths and the metrics of a learned 2-D model against the mixtures (gmm tasks).

A Gaussian mixture ``q = sum_k w_k N(mu_k, Sigma_k)`` noised by the VP forward process stays one (PAPER.md section 4):
component k of ``q_t`` is ``N(sqrt(abar) mu_k, abar Sigma_k + sigma^2 I)`` with ``sigma^2 = 1 - abar``. With
``Sigma_k = U_k diag(e_k) U_k^T`` the noised covariance is ``U_k diag(abar e_k + sigma^2) U_k^T``, so log-densities,
scores ``-C_k^{-1}(x - m_k)``, responsibilities and ``eps = -sigma * score`` are closed-form at every step.

The learned model's log-density comes from :mod:`unlearnbench.metrics.likelihood` (probability-flow ODE, exact
divergence); the metric functions here combine it with the exact mixture densities into Monte-Carlo KLs with
standard errors.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from unlearnbench.diffusion import Schedule
from unlearnbench.metrics.base import MetricValue, spec

FAMILY = "gmm"
# Aggregates here; per-index names (kl_concept_3, mass_concept_3, forget_kl_0, ...) through ``register_indexed``.
spec("kl_pretrained", "retention", False, FAMILY,
     "KL between the unlearned model and the pretrained distribution (nats): KL(p_theta(.|0) || q(.|0)) on concept "
     "tasks, KL(q || p_theta) on data tasks")
spec("kl_concept_min", "unlearning", True, FAMILY, "min over erased concepts c of KL(p_theta(.|0) || q(.|c)) (nats)")
spec("forgotten_mass", "unlearning", False, FAMILY,
     "max over erased concepts c of E_{x~p_theta(.|0)} P(c|x), the pretrained posterior of c")
spec("forgotten_mass_total", "info", False, FAMILY, "sum over erased concepts of E_{x~p_theta(.|0)} P(c|x)")
spec("kl_kept", "retention", False, FAMILY, "mean over kept prompts k of KL(p_theta(.|k) || q(.|k)) (nats)")
spec("kl_retrain", "retention", False, FAMILY,
     "KL(q_retrain || p_theta), q_retrain = the mixture without the forget points (nats)")
spec("forget_kl_min", "unlearning", True, FAMILY, "min over forget points i of KL(N(x_i, s^2 I) || p_theta) (nats)")
spec("forget_kl_gain_min", "unlearning", True, FAMILY,
     "min over forget points i of KL(q_u^i || p_theta) - KL(q_u^i || q), the increase the fkl constraint asks for")
spec("forget_nll", "unlearning", True, FAMILY, "mean -log p_theta(x_i) at the forget points (nats)")

_INDEXED = {"kl_concept": ("unlearning", True, "KL(p_theta(.|0) || q(.|{i})) for erased concept {i} (nats)"),
            "mass_concept": ("unlearning", False, "E_{{x~p_theta(.|0)}} P({i}|x) for erased concept {i}"),
            "forget_kl": ("unlearning", True, "KL(q_u^{i} || p_theta) for forget point {i} (nats)"),
            "forget_kl_gain": ("info", True, "KL(q_u^{i} || p_theta) - KL(q_u^{i} || q) for forget point {i} (nats)")}


def register_indexed(prefix: str, i: int) -> str:
    """Register (idempotently) and return the per-index metric name ``f"{prefix}_{i}"``."""
    from unlearnbench.metrics.base import METRICS

    name = f"{prefix}_{i}"
    if name not in METRICS:  # the registry refuses a second, equal spec object
        role, hib, doc = _INDEXED[prefix]
        spec(name, role, hib, FAMILY, doc.format(i=i))
    return name


for _k in range(1, 6):  # the built-in layouts' names: concept prompt ids 1..5, forget rows 0..1
    register_indexed("kl_concept", _k)
    register_indexed("mass_concept", _k)
for _k in range(2):
    register_indexed("forget_kl", _k)
    register_indexed("forget_kl_gain", _k)


class GaussianMixture(nn.Module):
    """``sum_k w_k N(mu_k, Sigma_k)`` in float64, with closed-form noised densities, scores and samples.

    Args:
        means: [K, d]; covs: [K, d, d] (symmetric positive definite); weights: [K] (normalised here).
    Methods taking ``abar`` accept None (t = 0, the clean mixture), a float, or a per-sample tensor [B]; methods taking
    ``log_weights`` accept None (the mixture's own weights), [K] or per-sample [B, K] (-inf drops a component).
    """

    def __init__(self, means: Tensor, covs: Tensor, weights: Tensor):
        super().__init__()
        means = torch.as_tensor(means, dtype=torch.float64)
        covs = torch.as_tensor(covs, dtype=torch.float64)
        weights = torch.as_tensor(weights, dtype=torch.float64)
        evals, evecs = torch.linalg.eigh(covs)
        if not bool((evals > 0).all()):
            raise ValueError("mixture covariances must be positive definite")
        self.register_buffer("means", means)
        self.register_buffer("evals", evals)  # [K, d]
        self.register_buffer("evecs", evecs)  # [K, d, d], columns are eigenvectors
        self.register_buffer("log_w", (weights / weights.sum()).log())

    @property
    def K(self) -> int:
        return self.means.shape[0]

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def subset(self, idx, weights: Tensor | None = None) -> "GaussianMixture":
        """The mixture of components ``idx`` (renormalised own weights unless ``weights`` given)."""
        idx = torch.as_tensor(idx, dtype=torch.long)
        covs = self.evecs[idx] @ torch.diag_embed(self.evals[idx]) @ self.evecs[idx].transpose(-1, -2)
        w = self.log_w[idx].exp() if weights is None else weights
        return GaussianMixture(self.means[idx], covs, w)

    def _log_w(self, log_weights: Tensor | None) -> Tensor:
        if log_weights is None:
            return self.log_w
        return torch.as_tensor(log_weights, dtype=torch.float64).to(self.means.device)

    def _parts(self, x: Tensor, abar) -> tuple[Tensor, Tensor]:
        """Whitened coordinates z = U^T (x - sqrt(abar) mu) [B, K, d] and noised eigenvalues v [B|1, K, d]."""
        x = x.to(torch.float64)
        if abar is None:
            abar = torch.ones(1, dtype=torch.float64, device=x.device)
        abar = torch.as_tensor(abar, dtype=torch.float64, device=x.device).reshape(-1, 1, 1)  # [B|1,1,1]
        diff = x[:, None, :] - abar.sqrt() * self.means[None]  # [B, K, d]
        z = torch.einsum("bkd,kde->bke", diff, self.evecs)
        v = abar * self.evals[None] + (1 - abar)
        return z, v

    def component_logpdf(self, x: Tensor, abar=None) -> Tensor:
        """log N_k(x) of every noised component; [B, K]."""
        z, v = self._parts(x, abar)
        return -0.5 * ((z * z / v).sum(-1) + v.log().sum(-1) + self.dim * math.log(2 * math.pi))

    def logpdf(self, x: Tensor, abar=None, log_weights: Tensor | None = None) -> Tensor:
        """log q_t(x); [B]."""
        return torch.logsumexp(self.component_logpdf(x, abar) + self._log_w(log_weights), -1)

    def responsibilities(self, x: Tensor, abar=None, log_weights: Tensor | None = None) -> Tensor:
        """P(component k | x_t) under the noised mixture; [B, K]."""
        return torch.softmax(self.component_logpdf(x, abar) + self._log_w(log_weights), -1)

    def score(self, x: Tensor, abar=None, log_weights: Tensor | None = None) -> Tensor:
        """grad_x log q_t(x) = -sum_k gamma_k C_k^{-1} (x - m_k); [B, d] float64."""
        z, v = self._parts(x, abar)
        logp = -0.5 * ((z * z / v).sum(-1) + v.log().sum(-1)) + self._log_w(log_weights)
        gamma = torch.softmax(logp, -1)  # [B, K]
        s_white = -(gamma[..., None] * z / v)  # [B, K, d]
        return torch.einsum("bke,kde->bd", s_white, self.evecs)

    def eps(self, x: Tensor, abar, log_weights: Tensor | None = None) -> Tensor:
        """Exact noise prediction ``-sigma_t * score``; [B, d] float64."""
        sigma = (1 - torch.as_tensor(abar, dtype=torch.float64, device=x.device)).sqrt().reshape(-1, 1)
        return -sigma * self.score(x, abar, log_weights)

    def sample(self, n: int, generator: torch.Generator | None = None, log_weights: Tensor | None = None) -> Tensor:
        """n exact samples of the clean mixture (per-sample weights [n, K] allowed); [n, d] float64."""
        lw = self._log_w(log_weights)
        probs = lw.exp().expand(n, self.K) if lw.ndim == 1 else lw.exp()
        k = torch.multinomial(probs.cpu(), 1, replacement=True, generator=generator)[:, 0]
        z = torch.randn((n, self.dim), generator=generator, dtype=torch.float64)
        k, z = k.to(self.means.device), z.to(self.means.device)
        scaled = self.evecs[k] @ (self.evals[k].sqrt() * z)[..., None]
        return self.means[k] + scaled[..., 0]


class ExactEps(nn.Module):
    """Exact ``eps_q(x_t, t, c) = -sigma_t grad log q_t(x_t|c)`` of a Gaussian mixture whose prompts reweight it.

    ``log_table`` [P, K]: log-weights of the components under each prompt (-inf drops a component)."""

    def __init__(self, mix: GaussianMixture, log_table: Tensor, schedule: Schedule):
        super().__init__()
        self.mix = mix
        self.register_buffer("log_table", log_table.to(torch.float64))
        self.register_buffer("abar", schedule.alphas_cumprod.clone())

    def forward(self, x_t: Tensor, t: Tensor, cond: Tensor) -> Tensor:
        return self.mix.eps(x_t, self.abar[t], self.log_table[cond]).to(x_t.dtype)

    def logpdf(self, x0: Tensor, cond: Tensor) -> Tensor:
        """Exact log q(x0|cond); [B] float64."""
        return self.mix.logpdf(x0, None, self.log_table[cond])

    def sample(self, cond: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return self.mix.sample(cond.shape[0], generator, self.log_table[cond]).to(torch.float32)

    def posterior(self, x_t: Tensor, t: Tensor, comps: list[int]) -> Tensor:
        """P(component k | x_t) of the noised null mixture at step t, for 0-based ``comps``; [B, m] float32."""
        resp = self.mix.responsibilities(x_t, self.abar[t], self.log_table[0])
        return resp[:, comps].to(torch.float32)


def mc_value(values: Tensor, role: str, higher_is_better: bool) -> MetricValue:
    """Mean with its Monte-Carlo standard error."""
    v = values.detach().double()
    n = v.numel()
    se = float(v.std() / math.sqrt(n)) if n > 1 else None
    return MetricValue(float(v.mean()), se, n, role, higher_is_better)  # type: ignore[arg-type]
