"""SalUn: saliency-masked relabelling (Fan et al., ICLR 2024; PAPER.md section 5)."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from unlearnbench.diffusion import add_noise, sample_t
from unlearnbench.methods import METHODS
from unlearnbench.methods.base import Method, MethodConfig


@dataclass
class SalUnConfig(MethodConfig):
    alpha: float = field(default=1.0, metadata={"help": "weight of the retain denoising loss (strong unlearning = small)"})
    saliency: float = field(default=0.5, metadata={"help": "share of weights updated (top |accumulated forget grad|)"})
    mask_samples: int = field(default=256, metadata={"help": "forget-set size for the mask: pretrained samples per "
                                                             "erased prompt"})
    mask_guidance: float = field(default=0.0, metadata={"help": "guidance scale of the mask's denoising loss (0: the "
                                                                "task's sampling guidance; the SD script: 1 + 7.5)"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.alpha < 0:
            raise ValueError(f"salun alpha={self.alpha} must be >= 0")
        if not 0 < self.saliency <= 1:
            raise ValueError(f"salun saliency={self.saliency} must be in (0, 1]")
        if self.mask_samples < 1 or self.mask_guidance < 0:
            raise ValueError(f"salun mask_samples={self.mask_samples} must be >= 1 and mask_guidance="
                             f"{self.mask_guidance} >= 0")


def saliency_masks(grads: list[Tensor], share: float) -> list[Tensor]:
    """1 on the global top ``share`` of ``|g|`` over all tensors, 0 elsewhere (generate_mask.py: ``abs``, then
    ``int(len(all) * 0.5)`` elements of highest magnitude across the whole network)."""
    flat = torch.cat([g.abs().flatten() for g in grads])
    keep = torch.zeros_like(flat)
    keep[torch.topk(flat, max(1, int(flat.numel() * share))).indices] = 1.0
    return [m.view_as(g) for m, g in zip(keep.split([g.numel() for g in grads]), grads)]


@METHODS.register("salun")
class SalUn(Method):
    """SalUn for concept (class) unlearning: ``L = MSE(eps_theta(x_t, c), sg[eps_theta(x_t, c')]) + alpha * L_retain``
    on forget samples x of the erased prompt c, relabelled to a fixed pseudo prompt c' (the next kept prompt after c);
    ``L_retain`` is the denoising loss on samples of the kept prompts; gradients are masked to the weights of highest
    saliency.

    Follows OPTML-Group/Unlearn-Saliency: ``SD/train-scripts/random_label.py`` (``pseudo_out = model(x_t, pseudo_emb)
    .detach()`` from the model being trained, ``forget_loss = MSELoss(forget_out, pseudo_out)``, ``loss = forget_loss +
    alpha * remain_loss``, ``p.grad *= mask``), ``SD/train-scripts/generate_mask.py`` and ``DDPM/runners/diffusion.py``
    ``generate_mask`` (the gradient of the guided denoising loss ``-MSE(noise, (1 + c) e_c - c e_null)`` on the forget
    data, accumulated signed batch by batch over the whole forget set, then ``abs``, then one global top 50% over the
    network's weights; with ``trainable=lora`` over the adapters). The pseudo class is ``(c + 1) % 10`` there; here the
    next kept prompt after c, which is the same on one erased digit.
    Deviations: the forget set is ``mask_samples`` pretrained-model samples per erased prompt (the SD setting's
    generated images); masks are applied before the runner's gradient clipping (DDPM clips first, SD does not clip).
    A task whose scored distribution is the null prompt (gmm-concept) is refused: SalUn never trains that prompt.
    Sweep: ``--grid eps`` sets ``alpha`` (weak -> strong is decreasing alpha).
    """

    name = "salun"
    kinds = ("concept",)
    Config = SalUnConfig
    grid_params = {"eps": "alpha"}

    @classmethod
    def unsupported_reason(cls, task) -> str | None:
        if getattr(task, "scored_prompt", "erased") == "null":
            return (f"salun trains only the erased prompts (relabelled), but task {task.name} scores the null prompt's "
                    f"distribution, which SalUn's reference algorithm never trains; use a task that scores the erased "
                    f"prompts (e.g. digits-concept)")
        return None

    def __init__(self, cfg, bundle, generator):
        super().__init__(cfg, bundle, generator)
        if bundle.extras.get("constrain_on") == "null":
            raise ValueError("salun cannot unlearn a concept from the null prompt (the task scores the null prompt)")
        if not bundle.retain_concepts:
            raise ValueError("salun needs kept prompts (the relabel target and the retain loss)")

    def pseudo(self, c: Tensor) -> Tensor:
        """The fixed pseudo prompt of each erased prompt: the next kept prompt after it, cyclically; [B] long."""
        kept = sorted(self.bundle.retain_concepts)
        nxt = {f: next((k for k in kept if k > f), kept[0]) for f in self.bundle.forget_concepts}
        return torch.tensor([nxt[int(v)] for v in c.cpu()], dtype=torch.long, device=self.device)

    def noised_samples(self, prompts: list[int], n: int):
        """Pretrained samples of ``n`` random ``prompts``, forward-noised: (x_t, t, noise, cond)."""
        cond = self.pick(prompts, n)
        x_t, t, noise = self.noised_ref(cond)
        return x_t, t, noise, cond

    def mask_loss(self, x0: Tensor, c: Tensor) -> Tensor:
        """generate_mask.py's loss: ``-MSE(noise, g e_c - (g - 1) e_null)`` at uniform t (g: guidance scale)."""
        b = self.bundle
        g = self.cfg.mask_guidance or b.guidance
        noise = self.randn_like(x0)
        t = sample_t(x0.shape[0], b.schedule.T, self.gen, self.device)
        x_t = add_noise(b.schedule, x0, noise, t)
        e_c, e_0 = self.net(x_t, t, c), self.net(x_t, t, self.cond(b.null_cond, x0.shape[0]))
        return -(noise - (g * e_c - (g - 1) * e_0)).pow(2).mean()

    def setup(self) -> None:
        b, B = self.bundle, self.cfg.batch_size
        cand = list(self.trainable_parameters()) if self.cfg.trainable == "lora" else list(self.net.parameters())
        flags = [p.requires_grad for p in cand]
        for p in cand:
            p.requires_grad_(True)
        acc = [torch.zeros_like(p) for p in cand]
        forget = self.cond(b.forget_concepts).repeat_interleave(self.cfg.mask_samples)
        x_all = b.sample_ref(forget, self.gen)
        for i in range(0, forget.shape[0], B):
            grads = torch.autograd.grad(self.mask_loss(x_all[i:i + B], forget[i:i + B]), cand, allow_unused=True)
            for a, g in zip(acc, grads):
                if g is not None:
                    a += g
        for p, f in zip(cand, flags):
            p.requires_grad_(f)
        masks = saliency_masks(acc, self.cfg.saliency)
        self.masks = {id(p): m for p, m in zip(cand, masks)}

    def after_backward(self) -> None:
        for p in self.trainable_parameters():
            if p.grad is not None and id(p) in self.masks:
                p.grad.mul_(self.masks[id(p)])

    def losses(self) -> dict[str, Tensor]:
        b, B = self.bundle, self.cfg.batch_size
        x_t, t, _, c = self.noised_samples(list(b.forget_concepts), B)
        with torch.no_grad():
            pseudo = self.net(x_t, t, self.pseudo(c))
        forget = (self.net(x_t, t, c) - pseudo).pow(2).flatten(1).mean(1)
        x_t, t, noise, k = self.noised_samples(list(b.retain_concepts), B)
        retain = (noise - self.net(x_t, t, k)).pow(2).flatten(1).mean(1)
        return {"loss": forget, "forget": forget, "retain": retain}

    def objective(self, losses: dict[str, Tensor]) -> Tensor:
        return losses["forget"].mean() + self.cfg.alpha * losses["retain"].mean()
