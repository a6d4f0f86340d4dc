"""EraseDiff: erasing data influence in diffusion models (Wu et al., 2024, arXiv 2401.05779)."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from unlearnbench.diffusion import add_noise
from unlearnbench.methods import METHODS
from unlearnbench.methods.base import MethodConfig
from unlearnbench.methods._data import DataBatches


@dataclass
class EraseDiffConfig(MethodConfig):
    lambda_bome: float = field(default=0.1, metadata={"help": "weight of the forget term (the reference's "
                                                              "--lambda_bome, default 0.1)"})
    adaptive: bool = field(default=False, metadata={
        "help": "the reference's --lambda_bome < 0: lambda = max(eta_bome - cos(grad L_r, grad L_f), 0) each step"})
    eta_bome: float = field(default=0.1, metadata={"help": "eta of the adaptive lambda (--eta_bome)"})


@METHODS.register("erasediff")
class EraseDiff(DataBatches):
    """EraseDiff: keep the denoising loss on the retained data low while pushing the forget images toward noise of
    the wrong kind: ``L = L_r + lambda L_f`` with ``L_r = mean ||eps_theta(x_t, t) - eps||^2`` on retained rows (eps
    Gaussian) and ``L_f = mean ||eps_theta(sqrt(abar) a + sigma u, t_u) - u||^2`` on forget rows with ``u ~ U(0, 1)``
    (pixel means, batch means); t antithetic (``t, T - 1 - t``); ``lambda = lambda_bome`` or, adaptive,
    ``max(eta_bome - cos(grad L_r, grad L_f), 0)``.

    Follows JingWu321/EraseDiff: ``ddpm/main.py`` (``--mode`` dispatch; ``--lambda_bome 0.1``, ``--eta_bome 0.1``,
    ``--K_steps 2``) and ``ddpm/runners/diffusion.py`` ``train_ours`` (antithetic t, ``loss_dr =
    loss_registry_conditional(...)`` = ``F.mse_loss(output, e)``; ``loss_q = loss_du - unl_losses.avg.detach()``; ``loss
    = loss_dr + lambda_bome * loss_q``; adaptive ``lambda_bome = eta_bome - inner / (|g_dr| |g_q| + 1e-8)`` if positive
    else 0; ``clip_grad_norm_(..., grad_clip=1.0)``), ``ddpm/configs/cifar10_erasediff.yml`` (Adam, lr 1e-4, batch 128,
    grad_clip 1). The forget term is the function's commented "normal noise" form (``noise_u = torch.rand_like(
    images_u)`` through ``loss_registry_conditional``: x_t noised with the uniform draw, which is also the target),
    the paper's ``eps_f ~ U(0, I)``; SD's ``sd/train_scripts/erasediff.py`` has the same structure.
    Deviations: the active branch of ``train_ours`` relabels forget images of a class to a random other class, which
    a data task's unconditional rows (one null prompt) cannot; the K inner steps on the forget set (``K_steps``),
    whose parameters are reset afterwards, are skipped: they only give the constant ``unl_losses.avg`` that
    ``loss_q`` subtracts (no gradient) and, in the reference, also move Adam's moments; rows drawn with replacement
    per step (the reference zips the two loaders and ends an epoch with the shorter); no EMA of the weights. SISS's
    re-implementation (claserken/SISS ``losses/ddpm_deletion_loss.py`` ``erasediff``) noises the forget image with
    Gaussian noise instead and sets lambda by BOME's ``eta - <g_x, g_a> / |g_a|^2``; not followed here.
    Sweep: ``--grid eps`` sets ``lambda_bome``.
    """

    name = "erasediff"
    kinds = ("data",)
    Config = EraseDiffConfig
    grid_params = {"eps": "lambda_bome"}
    default_grids = {"data": {"eps": [0.03, 0.1, 0.3, 1.0, 3.0, 10.0], "smoke": [0.1, 3.0]}}

    def antithetic_t(self, n: int) -> Tensor:
        """``t = randint(0, T, n // 2 + 1)``, ``cat([t, T - t - 1])[:n]`` (train_ours)."""
        T = self.bundle.schedule.T
        t = torch.randint(0, T, (n // 2 + 1,), generator=self.gen)
        return torch.cat([t, T - t - 1])[:n].to(self.device)

    def losses(self) -> dict[str, Tensor]:
        b, B = self.bundle, self.cfg.batch_size
        x, cond_r, _ = self.rows("retain", B)
        noise_r, t = self.randn_like(x), self.antithetic_t(B)
        retain = (self.net(add_noise(b.schedule, x, noise_r, t), t, cond_r) - noise_r).pow(2).flatten(1).mean(1)
        a, cond_u, _ = self.rows("forget", B)
        noise_u = torch.rand(a.shape, generator=self.gen, dtype=a.dtype).to(self.device)
        t_u = self.antithetic_t(B)
        forget = (self.net(add_noise(b.schedule, a, noise_u, t_u), t_u, cond_u) - noise_u).pow(2).flatten(1).mean(1)
        return {"loss": retain + self.cfg.lambda_bome * forget, "retain": retain, "forget": forget}

    def objective(self, losses: dict[str, Tensor]) -> Tensor:
        return losses["retain"].mean() + self.cfg.lambda_bome * losses["forget"].mean()

    def backward(self, losses: dict[str, Tensor]) -> Tensor:
        if not self.cfg.adaptive:
            return super().backward(losses)
        params = list(self.trainable_parameters())
        g_r = torch.autograd.grad(losses["retain"].mean(), params, retain_graph=True, allow_unused=True)
        g_f = torch.autograd.grad(losses["forget"].mean(), params, allow_unused=True)
        g_r = [g if g is not None else torch.zeros_like(p) for g, p in zip(g_r, params)]
        g_f = [g if g is not None else torch.zeros_like(p) for g, p in zip(g_f, params)]
        inner = sum(float((a * c).sum()) for a, c in zip(g_r, g_f))
        norm_r = float(torch.sqrt(sum(g.pow(2).sum() for g in g_r)))
        norm_f = float(torch.sqrt(sum(g.pow(2).sum() for g in g_f)))
        lam = 0.0 if norm_f == 0 else max(self.cfg.eta_bome - inner / (norm_r * norm_f + 1e-8), 0.0)
        self.last_lambda = lam
        for p, gr, gf in zip(params, g_r, g_f):  # added, so that the runner's gradient accumulation sums micro-batches
            p.grad = gr + lam * gf if p.grad is None else p.grad + gr + lam * gf
        return (losses["retain"].mean() + lam * losses["forget"].mean()).detach()
