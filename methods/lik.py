"""Likelihood-constrained concept unlearning (Khalafi, Ribeiro & Ding, ICML 2026; PAPER.md section 3)."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from unlearnbench.methods import METHODS
from unlearnbench.methods._concept import ConceptConfig, ConceptErasure
from unlearnbench.methods._constrained import ConstrainedConfig, ConstrainedMethod


@dataclass
class LikConfig(ConstrainedConfig, ConceptConfig):
    eps: float = field(default=0.05, metadata={"help": "max share of samples showing each concept, E_p[P(c_i|x)]"})
    dual_lr: float = field(default=2.0, metadata={"help": "dual ascent step size eta_d"})
    lambda_max: float = field(default=100.0, metadata={"help": "upper bound of each lambda_i (numerical safety)"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 <= self.eps < 1:
            raise ValueError(f"lik threshold eps={self.eps} is impossible: E_p[P(c|x)] lies in [0, 1); "
                             f"choose 0 <= eps < 1")


@METHODS.register("lik", "likelihood")
class Likelihood(ConceptErasure, ConstrainedMethod):
    """Likelihood-constrained unlearning: ``min_p KL(p||q) s.t. E_p[r_i(x)] <= eps_i``, ``r_i = P(c_i | x)`` under q.

    Minimiser ``p_lambda ∝ q exp(-sum_i lambda_i r_i)``; target
    ``eps*(x_t) = eps_q(x_t, 0) - sum_i lambda_i r_i(x_t) (eps_q(x_t, c_i) - eps_q(x_t, 0))`` (``r_i`` at the noisy
    ``x_t``, as for rkl); dual ascent ``lambda_i <- max(0, lambda_i + eta_d (Ehat_p[r_i] - eps_i))`` (no Lambda < 1
    limit). It pushes only where a sample looks like the concept. Sweep: ``--grid eps`` sets ``eps`` (strong = small).
    """

    name = "lik"
    Config = LikConfig
    grid_params = {"eps": "eps"}
    sense = "<="

    def project(self) -> None:
        self.duals.clamp_(0.0, self.cfg.lambda_max)

    def concept_weights(self, x_t: Tensor, t: Tensor) -> Tensor:
        if self.bundle.posterior is None:
            raise ValueError(f"method lik needs the task to provide a concept posterior; task has none")
        r = self.bundle.posterior(x_t, t, list(self.bundle.forget_concepts))  # [B, m]
        return r * self.duals.to(r.device, r.dtype)

    @torch.no_grad()
    def estimate_constraints(self) -> Tensor:
        """``Ehat_p[P(c_i | x)]`` on samples of the model (posterior at t = 0)."""
        b, n = self.bundle, self.cfg.n_estimate
        out = []
        for i, x0 in enumerate(self.samples_per_prompt(n)):
            t0 = torch.zeros(n, dtype=torch.long, device=x0.device)
            out.append(b.posterior(x0, t0, list(b.forget_concepts))[:, i].mean())
        return torch.stack(out)
