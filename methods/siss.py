"""SISS: subtracted importance-sampled scores (Alberti et al., ICLR 2025; PAPER.md section 5)."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from unlearnbench.methods import METHODS
from unlearnbench.methods.base import MethodConfig
from unlearnbench.methods._data import DataBatches

X_SOURCES = ("retain", "train")


@dataclass
class SISSConfig(MethodConfig):
    scaling_norm: float = field(default=5.0, metadata={
        "help": "the negative term's gradient is set to this norm each step (reference configs: 500 CelebA-HQ, 750 "
                "SD, 5 MNIST); 0: no rescaling, weight superfactor instead"})
    superfactor: float = field(default=1.0, metadata={
        "help": "with scaling_norm 0: weight of the negative term in units of K/(N-K) (x from retain) or K/N (train)"})
    mix: float = field(default=0.5, metadata={"help": "lambda: probability of drawing x_t from the forget image"})
    x_source: str = field(default="retain", metadata={
        "help": "rows x of the positive term: retain (X without the forget set, as the reference) or train (all X)",
        "choices": X_SOURCES})
    importance: bool = field(default=True, metadata={"help": "one forward pass with IS (SISS) or two (SISS no-IS)"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.scaling_norm < 0 or self.superfactor < 0:
            raise ValueError(f"siss scaling_norm={self.scaling_norm} and superfactor={self.superfactor} must be >= 0")
        if not 0 < self.mix < 1:
            raise ValueError(f"siss mix (lambda)={self.mix} must be in (0, 1)")
        if self.x_source not in X_SOURCES:
            raise ValueError(f"siss x_source={self.x_source!r}; valid: {', '.join(X_SOURCES)}")


def siss_terms(net, x: Tensor, a: Tensor, noise: Tensor, t: Tensor, use_a: Tensor, schedule, mix: float,
               cond: Tensor) -> tuple[Tensor, Tensor]:
    """Per-sample ``(w_x ||eps_theta(m) - eps_x||^2, w_a ||eps_theta(m) - eps_a||^2)`` summed over pixels, with
    ``m = sqrt(abar) (a if use_a else x) + sigma noise`` and the defensive-mixture importance weights
    ``w_x = 1 / ((1-l) + l q(m|a)/q(m|x))``, ``w_a = 1 / ((1-l) q(m|x)/q(m|a) + l)`` (ratios in log space)."""
    gamma, sigma = schedule.coeffs(t, x)
    m = torch.where(use_a.view(-1, *[1] * (x.ndim - 1)), gamma * a, gamma * x) + sigma * noise
    eps_x, eps_a = (m - gamma * x) / sigma, (m - gamma * a) / sigma
    d = (eps_x.pow(2).flatten(1).sum(1) - eps_a.pow(2).flatten(1).sum(1)) / 2  # log q(m|a) - log q(m|x)
    w_x = 1.0 / ((1 - mix) + mix * torch.exp(d.clamp(max=80)))
    w_a = 1.0 / ((1 - mix) * torch.exp((-d).clamp(max=80)) + mix)
    pred = net(m, t, cond)
    return w_x * (pred - eps_x).pow(2).flatten(1).sum(1), w_a * (pred - eps_a).pow(2).flatten(1).sum(1)


@METHODS.register("siss")
class SISS(DataBatches):
    """SISS: ``x_t`` from the defensive mixture ``(1-l) q(.|x) + l q(.|a)`` of a retained image x and a forget image a
    (shared noise and t), importance-weighted terms ``L_x = mean w_x ||eps_theta - eps_x||^2`` and ``L_a = mean w_a
    ||eps_theta - eps_a||^2`` (:func:`siss_terms`), and the gradient ``grad L_x - (S / ||grad L_a||) grad L_a``: the
    negative term's gradient is *set* to norm ``S = scaling_norm`` every step; the runner then clips the total to 1.

    Follows claserken/SISS: ``losses/ddpm_deletion_loss.py`` (``importance_sampling_with_mixture``,
    ``double_forward_with_neg_del`` for ``importance=False``), ``delete_celeb.py`` / ``delete_tshirt.py`` (``scaling_factor
    = scaling_norm / total_l2_norm_a``, ``param.grad = accum_loss_x - scaling_factor * accum_loss_a``,
    ``clip_grad_norm_(..., 1.0)``; x from the ``nondeletion`` set) and ``config/*.yaml`` (lambd 0.5; scaling_norm 500
    CelebA-HQ, 750 SD, 5 MNIST). ``scaling_norm=0`` is the reference's commented fixed-weight form
    ``superfactor * K/(N-K)`` (in expectation the forward-KL Lagrangian with fixed weights, PAPER.md section 2).
    Deviations: with gradient accumulation (paper-scale configs) each micro-batch's negative gradient is rescaled on
    its own (the reference rescales the accumulated one); t uniform over the schedule as in ``delete_tshirt.py`` (``delete_celeb.py`` and ``delete_sd.py`` draw
    every t as 999); plain Adam from the runner (the reference: AdamW, betas 0.95/0.999, weight decay 1e-6).
    Sweep: ``--grid eps`` sets ``scaling_norm``.
    """

    name = "siss"
    kinds = ("data",)
    Config = SISSConfig
    grid_params = {"eps": "scaling_norm"}

    def __init__(self, cfg, bundle, generator):
        super().__init__(cfg, bundle, generator)
        k = float(bundle.extras.get("forget_fraction", bundle.forget_data.shape[0] / bundle.train_data.shape[0]))
        self.neg_weight = cfg.superfactor * (k / (1 - k) if cfg.x_source == "retain" else k)

    def losses(self) -> dict[str, Tensor]:
        b, B = self.bundle, self.cfg.batch_size
        x, cond, _ = self.rows(self.cfg.x_source, B)
        a, _, _ = self.rows("forget", B)
        noise, t = self.randn_like(x), self.rand_t(B)
        if not self.cfg.importance:  # SISS (no IS): two forward passes
            gamma, sigma = b.schedule.coeffs(t, x)
            pos = (self.net(gamma * x + sigma * noise, t, cond) - noise).pow(2).flatten(1).sum(1)
            neg = (self.net(gamma * a + sigma * noise, t, cond) - noise).pow(2).flatten(1).sum(1)
        else:
            use_a = (torch.rand(B, generator=self.gen) < self.cfg.mix).to(self.device)
            pos, neg = siss_terms(self.net, x, a, noise, t, use_a, b.schedule, self.cfg.mix, cond)
        return {"loss": pos - self.neg_weight * neg, "keep": pos, "forget": neg}

    def backward(self, losses: dict[str, Tensor]) -> Tensor:
        if not self.cfg.scaling_norm:
            return super().backward(losses)
        params = list(self.trainable_parameters())
        g_x = self.grads(losses["keep"].mean(), params, retain_graph=True)
        g_a = self.grads(losses["forget"].mean(), params)
        scale = self.cfg.scaling_norm / (float(torch.sqrt(sum(g.pow(2).sum() for g in g_a))) + 1e-12)
        for p, gx, ga in zip(params, g_x, g_a):  # added, so that the runner's gradient accumulation sums micro-batches
            p.grad = gx - scale * ga if p.grad is None else p.grad + gx - scale * ga
        return (losses["keep"].mean() - scale * losses["forget"].mean()).detach()

    @staticmethod
    def grads(loss: Tensor, params: list, retain_graph: bool = False) -> list[Tensor]:
        """d loss / d params, zeros where a parameter is unused."""
        gs = torch.autograd.grad(loss, params, retain_graph=retain_graph, allow_unused=True)
        return [g if g is not None else torch.zeros_like(p) for g, p in zip(gs, params)]
