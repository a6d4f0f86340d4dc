"""SISS: subtracted importance-sampled scores (Alberti et al., ICLR 2025; PAPER.md section 5)."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from unlearnbench.methods import METHODS
from unlearnbench.methods.base import MethodConfig
from unlearnbench.methods._data import DataBatches


@dataclass
class SISSConfig(MethodConfig):
    s: float = field(default=1.0, metadata={"help": "superfactor: weight of the negative term in units of K/N"})
    mix: float = field(default=0.5, metadata={"help": "l: probability of drawing x_t from the forget image"})
    importance: bool = field(default=True, metadata={"help": "one forward pass with IS (SISS) or two (SISS no-IS)"})
    scaling_norm: float = field(default=0.0, metadata={"help": "clip the negative term's gradient to this norm (0: off)"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.s < 0:
            raise ValueError(f"siss s={self.s} must be >= 0")
        if not 0 < self.mix < 1:
            raise ValueError(f"siss mix (lambda)={self.mix} must be in (0, 1)")


@METHODS.register("siss")
class SISS(DataBatches):
    """SISS: ``E[w_x ||eps_theta(m) - eps_x||^2 - s (K/N) w_a ||eps_theta(m) - eps_a||^2]`` with ``m`` from the
    defensive mixture ``(1-l) q(.|x) + l q(.|a)`` of a training image x and a forget image a, importance weights
    ``w_x = 1/((1-l) + l q(m|a)/q(m|x))``, ``w_a = 1/((1-l) q(m|x)/q(m|a) + l)``.

    In expectation the loss is ``E_q l - s (K/N) E_{q_a} l``, the fixed-weight forward-KL Lagrangian with
    ``Lambda = s K/N`` (``s = 1`` is retraining without the forget set, PAPER.md section 2). The negative term's
    gradient can be clipped to ``scaling_norm`` as in the authors' code. Sweep: ``--grid eps`` sets ``s``.
    """

    name = "siss"
    kinds = ("data",)
    Config = SISSConfig
    grid_params = {"eps": "s"}

    def __init__(self, cfg, bundle, generator):
        super().__init__(cfg, bundle, generator)
        n, k = bundle.train_data.shape[0], bundle.forget_data.shape[0]
        self.neg_weight = cfg.s * float(bundle.extras.get("forget_fraction", k / n))

    def losses(self) -> dict[str, Tensor]:
        b, B, l = self.bundle, self.cfg.batch_size, self.cfg.mix
        x, cond, _ = self.rows("train", B)
        a, _, _ = self.rows("forget", B)
        noise, t = self.randn_like(x), self.rand_t(B)
        gamma, sigma = b.schedule.coeffs(t, x)
        if not self.cfg.importance:  # SISS (no IS): two forward passes
            pos = (self.net(gamma * x + sigma * noise, t, cond) - noise).pow(2).flatten(1).sum(1)
            neg = (self.net(gamma * a + sigma * noise, t, cond) - noise).pow(2).flatten(1).sum(1)
            return {"loss": pos - self.neg_weight * neg, "keep": pos, "forget": neg}
        use_a = (torch.rand(B, generator=self.gen) < l).to(self.device).view(-1, *[1] * (x.ndim - 1))
        m = torch.where(use_a, gamma * a, gamma * x) + sigma * noise
        eps_x, eps_a = (m - gamma * x) / sigma, (m - gamma * a) / sigma
        # log q(m|a) - log q(m|x), computed in log space
        d = (eps_x.pow(2).flatten(1).sum(1) - eps_a.pow(2).flatten(1).sum(1)) / 2
        w_x = 1.0 / ((1 - l) + l * torch.exp(d.clamp(max=80)))
        w_a = 1.0 / ((1 - l) * torch.exp((-d).clamp(max=80)) + l)
        pred = self.net(m, t, cond)
        pos = w_x * (pred - eps_x).pow(2).flatten(1).sum(1)
        neg = w_a * (pred - eps_a).pow(2).flatten(1).sum(1)
        return {"loss": pos - self.neg_weight * neg, "keep": pos, "forget": neg}

    def backward(self, losses: dict[str, Tensor]) -> Tensor:
        if not self.cfg.scaling_norm:
            return super().backward(losses)
        params = list(self.trainable_parameters())
        g_pos = torch.autograd.grad(losses["keep"].mean(), params, retain_graph=True, allow_unused=True)
        g_neg = torch.autograd.grad(losses["forget"].mean(), params, allow_unused=True)
        norm = torch.sqrt(sum((g.pow(2).sum() for g in g_neg if g is not None), torch.zeros(())))
        scale = self.neg_weight * min(1.0, self.cfg.scaling_norm / (self.neg_weight * float(norm) + 1e-12))
        for p, gp, gn in zip(params, g_pos, g_neg):
            g = (gp if gp is not None else 0) - scale * (gn if gn is not None else 0)
            p.grad = g if isinstance(g, Tensor) else None
        return self.objective(losses).detach()
