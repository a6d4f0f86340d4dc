"""Reverse-KL constrained concept unlearning (Khalafi, Ribeiro & Ding, ICML 2026; PAPER.md section 1)."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from unlearnbench.diffusion import pointwise_kl
from unlearnbench.methods import METHODS
from unlearnbench.methods._concept import ConceptConfig, ConceptErasure
from unlearnbench.methods._constrained import ConstrainedMethod, KLConstrainedConfig


@dataclass
class RKLConfig(KLConstrainedConfig, ConceptConfig):
    eps: float = field(default=1.0, metadata={"help": "b: required KL(p || q_u^i) in nats, the same for every concept"})


@METHODS.register("rkl", "reverse-kl")
class ReverseKL(ConceptErasure, ConstrainedMethod):
    """Reverse-KL constrained unlearning: ``min_p KL(p||q) s.t. KL(p||q_u^i) >= b_i`` by primal-dual updates.

    Lagrangian minimiser ``p_lambda ∝ q prod_i (q/q_u^i)^{alpha_i}``, ``alpha_i = lambda_i / (1 - Lambda)``; primal step
    regresses ``eps_theta(x_t, c)`` onto ``eps_q(x_t, 0) - sum_i alpha_i (eps_q(x_t, c_i) - eps_q(x_t, 0))``; dual step
    ``lambda_i <- max(0, lambda_i + eta_d (b - KLhat_i))`` with ``KLhat_i`` the point-wise KL estimator on the model's
    own samples, and ``Lambda <= 1 - delta``. Sweep: ``--grid eps`` sets the threshold ``b`` (nats).
    """

    name = "rkl"
    Config = RKLConfig
    grid_params = {"eps": "eps"}
    sense = ">="

    def alphas(self) -> Tensor:
        return self.duals / (1.0 - self.duals.sum())

    def concept_weights(self, x_t: Tensor, t: Tensor) -> Tensor:
        return self.alphas().to(x_t.device, x_t.dtype).expand(x_t.shape[0], -1)

    @torch.no_grad()
    def estimate_constraints(self) -> Tensor:
        """``KLhat_i = KL(p_theta || q(.|c_i))`` by the point-wise estimator on samples of the model."""
        b, n = self.bundle, self.cfg.n_estimate
        out = []
        for prompt, concept, x0 in zip(self.measure_prompts(), b.forget_concepts, self.samples_per_prompt(n)):
            kl = pointwise_kl(b.schedule, x0, self.net, b.ref, self.cond(prompt, n), self.cond(concept, n),
                              n_t=self.cfg.n_t_estimate, generator=self.gen)
            out.append(kl.mean())
        return torch.stack(out)
