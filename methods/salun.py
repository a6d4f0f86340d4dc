"""SalUn: saliency-masked random-label unlearning (Fan et al., ICLR 2024; PAPER.md section 5)."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from unlearnbench.diffusion import per_sample_mse
from unlearnbench.methods import METHODS
from unlearnbench.methods.base import MethodConfig
from unlearnbench.methods._data import DataBatches


@dataclass
class SalUnConfig(MethodConfig):
    alpha: float = field(default=1.0, metadata={"help": "weight of the retain denoising loss (strong unlearning = small)"})
    saliency: float = field(default=0.5, metadata={"help": "share of weights updated (top |grad| of the forget loss)"})
    mask_batches: int = field(default=4, metadata={"help": "batches averaged to compute the saliency map"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.alpha < 0:
            raise ValueError(f"salun alpha={self.alpha} must be >= 0")
        if not 0 < self.saliency <= 1:
            raise ValueError(f"salun saliency={self.saliency} must be in (0, 1]")


@METHODS.register("salun")
class SalUn(DataBatches):
    """SalUn: ``L = L_forget + alpha * L_retain`` with gradients masked to the top-``saliency`` weights by
    ``|grad L_forget|`` (computed once, before training).

    Concept tasks: ``L_forget`` relabels the erased prompt, regressing ``eps_theta(x_t, c_i)`` onto the pretrained
    ``eps_q(x_t, c_r)`` of a random kept prompt c_r, with x_t from the pretrained model's samples of c_i; ``L_retain``
    is the denoising loss on the pretrained model's samples of kept prompts (and the null prompt). Data tasks (the
    random-label analogue in data space): a forget image's x_t is relabelled as coming from a random retained image x_r,
    target ``(x_t - sqrt(abar) x_r) / sigma``, weighted by ``sigma_t^2`` (an x0-space error; unweighted, the relabelled
    target grows as ``1/sigma_t`` and the loss diverges); ``L_retain`` is the denoising loss on retained data.
    Sweep: ``--grid eps`` sets ``alpha`` (weak -> strong is decreasing alpha).
    """

    name = "salun"
    Config = SalUnConfig
    grid_params = {"eps": "alpha"}

    def setup(self) -> None:
        params = list(self.trainable_parameters())
        acc = [torch.zeros_like(p) for p in params]
        for _ in range(self.cfg.mask_batches):
            grads = torch.autograd.grad(self.forget_terms().mean(), params, allow_unused=True)
            for a, g in zip(acc, grads):
                if g is not None:
                    a += g.abs()
        flat = torch.cat([a.flatten() for a in acc])
        k = max(1, int(round(self.cfg.saliency * flat.numel())))
        thresh = torch.topk(flat, k).values.min()
        self.masks = [(a >= thresh).to(a.dtype) for a in acc]

    def after_backward(self) -> None:
        for p, m in zip(self.trainable_parameters(), self.masks):
            if p.grad is not None:
                p.grad.mul_(m)

    def forget_terms(self) -> Tensor:
        b, B = self.bundle, self.cfg.batch_size
        if b.kind == "concept":
            c, r = self.pick(b.forget_concepts, B), self.pick(b.retain_concepts, B)
            x_t, t, _ = self.noised_ref(c)
            with torch.no_grad():
                target = b.ref(x_t, t, r)
            return per_sample_mse(self.net(x_t, t, c), target)
        a, cond, _ = self.rows("forget", B)
        x_r, _, _ = self.rows("retain", B)
        x_t, t, _ = self.noised(a)
        gamma, sigma = b.schedule.coeffs(t, a)
        # the relabelled noise (x_t - gamma x_r) / sigma grows as 1/sigma; weigh by sigma^2 (an x0-space error)
        return per_sample_mse(sigma * self.net(x_t, t, cond), x_t - gamma * x_r)

    def retain_terms(self) -> Tensor:
        b, B = self.bundle, self.cfg.batch_size
        if b.kind == "concept":
            cond = self.pick([b.null_cond] + list(b.retain_concepts), B)
            x_t, t, noise = self.noised_ref(cond)
        else:
            x0, cond, _ = self.rows("retain", B)
            x_t, t, noise = self.noised(x0)
        return per_sample_mse(self.net(x_t, t, cond), noise)

    def losses(self) -> dict[str, Tensor]:
        f, r = self.forget_terms(), self.retain_terms()
        return {"loss": f, "forget": f, "retain": r}

    def objective(self, losses: dict[str, Tensor]) -> Tensor:
        return losses["forget"].mean() + self.cfg.alpha * losses["retain"].mean()
