"""Erased Stable Diffusion, as published (Gandikota et al., ICCV 2023; PAPER.md section 5)."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from unlearnbench.diffusion import ddim_sample, guided
from unlearnbench.methods import METHODS
from unlearnbench.methods.base import Method, MethodConfig

XT_SOURCES = ("current", "base")
ERASE_FROM = ("erased", "null")


@dataclass
class ESDConfig(MethodConfig):
    eta: float = field(default=1.0, metadata={"help": "negative guidance, original form (the diffusers scripts' "
                                                      "negative_guidance 2 is eta 1)"})
    xt_source: str = field(default="current", metadata={
        "help": "model that samples x_t: current (the model being trained; 2023/2024 scripts) or base (the frozen "
                "pretrained model; esd_sd.py 2025)", "choices": XT_SOURCES})
    erase_from: str = field(default="erased", metadata={
        "help": "prompt trained and sampled: erased (the erased concept's own prompt) or null (esd_sd.py's "
                "--erase_from '': erase the concept from the null prompt)", "choices": ERASE_FROM})
    ddim_steps: int = field(default=50, metadata={"help": "DDIM schedule that x_t is sampled along"})
    start_guidance: float = field(default=3.0, metadata={"help": "classifier-free guidance when sampling x_t"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.eta < 0:
            raise ValueError(f"esd eta={self.eta} must be >= 0")
        for name, valid in (("xt_source", XT_SOURCES), ("erase_from", ERASE_FROM)):
            if getattr(self, name) not in valid:
                raise ValueError(f"esd {name}={getattr(self, name)!r}; valid: {', '.join(valid)}")
        if self.ddim_steps < 1:
            raise ValueError(f"esd ddim_steps={self.ddim_steps} must be >= 1")


def esd_target(ref, x_t: Tensor, t: Tensor, concept: Tensor, null: Tensor, eta: float) -> Tensor:
    """``eps_q(x_t, 0) - eta (eps_q(x_t, c) - eps_q(x_t, 0))`` with the frozen model ``ref``.

    train-esd.py (2023): ``e_0 - negative_guidance * (e_p - e_0)``, default 1 = ``eta``. esd_sd.py (2025):
    ``noise_pred_erase_from - negative_guidance * (noise_pred_erase - noise_pred_null)``: without ``--erase_from`` the
    first term is ``eps(c)``, so its default 2 is ``eta = 1`` here (``eta = negative_guidance - 1``); with
    ``--erase_from ''`` (the null prompt) it is ``eps(0)`` and ``eta = negative_guidance``.
    """
    with torch.no_grad():
        e_0 = ref(x_t, t, null)
        return e_0 - eta * (ref(x_t, t, concept) - e_0)


@METHODS.register("esd")
class ESD(Method):
    """ESD: per step, pick one erased concept c, sample x_t by DDIM with guidance ``start_guidance`` along a
    ``ddim_steps`` schedule from noise, stopping at a random step k (x_t at that step's timestep t), and regress
    ``eps_theta(x_t, t, c_from)`` onto :func:`esd_target` with the frozen pretrained model; the loss is torch's
    ``MSELoss`` (mean over elements).

    Follows rohitgandikota/erasing: ``train-scripts/train-esd.py`` (2023: ``random.sample(words, 1)``, x_t from
    ``quick_sample_till_t`` of the model being trained with the erased prompt, ``criteria(e_n, e_0 - negative_guidance *
    (e_p - e_0))``, parameter sets xattn / noxattn / full) and ``esd_sd.py`` (2025: x_t from the frozen base model,
    ``--erase_from``). Options: ``xt_source`` current | base, ``erase_from`` erased | null, ``trainable`` xattn (ESD-x)
    | noxattn (ESD-u) | full (| lora for large models).
    Remaining deviations: a batch of ``batch_size`` samples per step instead of 1 (one concept and one stop step per
    batch, as in the reference); the models are evaluated at the timestep the DDIM sample has reached (esd_sd.py's
    ``scheduler.timesteps[run_till_timestep]``; train-esd.py draws a DDPM t in ``[k/50, (k+1)/50) * 1000``, which
    does not match the noise level of its x_t after k steps); defaults of steps, lr, batch and ddim_steps are per task
    (the reference: lr 1e-5 and 1000 iterations in 2023, lr 5e-5 and 200 iterations later, 50 DDIM steps).
    Sweep: ``--grid eps`` sets ``eta``.
    """

    name = "esd"
    kinds = ("concept",)
    Config = ESDConfig
    grid_params = {"eps": "eta"}

    def esd_batch(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(x_t, t, concept, train_prompt) for one step: one concept, one random stop step k in [0, ddim_steps)."""
        b, cfg, B = self.bundle, self.cfg, self.cfg.batch_size
        forget = list(b.forget_concepts)
        c = forget[int(torch.randint(0, len(forget), (1,), generator=self.gen))]
        prompt = c if cfg.erase_from == "erased" else b.null_cond
        k = int(torch.randint(0, cfg.ddim_steps, (1,), generator=self.gen))
        x_t, t = self.partial_sample(prompt, B, k)
        return x_t, t, self.cond(c, B), self.cond(prompt, B)

    @torch.no_grad()
    def partial_sample(self, prompt: int, n: int, k: int) -> tuple[Tensor, Tensor]:
        """DDIM samples of the x_t source model for ``prompt`` after ``k`` of ``ddim_steps`` steps: (x_t, t)."""
        b, cfg = self.bundle, self.cfg
        model = self.net if cfg.xt_source == "current" else b.ref
        eps = model if prompt == b.null_cond else guided(model, b.null_cond, cfg.start_guidance)
        x_t = ddim_sample(b.schedule, eps, self.cond(prompt, n), b.data_shape, cfg.ddim_steps, generator=self.gen,
                          device=self.device, stop_at=cfg.ddim_steps - k)
        ts = torch.linspace(b.schedule.T - 1, 0, cfg.ddim_steps).round().long()
        return x_t, ts[k].expand(n).to(self.device)

    def losses(self) -> dict[str, Tensor]:
        x_t, t, concept, prompt = self.esd_batch()
        null = self.cond(self.bundle.null_cond, x_t.shape[0])
        target = esd_target(self.bundle.ref, x_t, t, concept, null, self.cfg.eta)
        loss = (self.net(x_t, t, prompt) - target).pow(2).flatten(1).mean(1)
        return {"loss": loss}
