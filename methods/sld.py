"""Safe Latent Diffusion, an inference-time method (Schramowski et al., CVPR 2023): no weight changes, a sampler."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from unlearnbench.methods import METHODS
from unlearnbench.methods._xattn import PromptSideMethod, eps_with_tokens, prompt_tokens
from unlearnbench.methods.base import MethodConfig

# diffusers' SafetyConfig (pipelines/stable_diffusion_safe/__init__.py); MEDIUM is SLDPipeline's call defaults
PRESETS: dict[str, dict[str, float]] = {
    "weak": {"warmup_steps": 15, "guidance_scale": 20, "threshold": 0.0, "momentum_scale": 0.0, "mom_beta": 0.0},
    "medium": {"warmup_steps": 10, "guidance_scale": 1000, "threshold": 0.01, "momentum_scale": 0.3, "mom_beta": 0.4},
    "strong": {"warmup_steps": 7, "guidance_scale": 2000, "threshold": 0.025, "momentum_scale": 0.5, "mom_beta": 0.7},
    "max": {"warmup_steps": 0, "guidance_scale": 5000, "threshold": 1.0, "momentum_scale": 0.5, "mom_beta": 0.7},
}
SETTINGS = tuple(PRESETS["medium"])


@dataclass
class SLDConfig(MethodConfig):
    preset: str = field(default="medium", metadata={"help": "weak | medium | strong | max (diffusers' SafetyConfig); "
                                                            "the settings below override it", "choices": tuple(PRESETS)})
    guidance_scale: float | None = field(default=None, metadata={"help": "sld_guidance_scale (< 1: safety guidance "
                                                                         "off; None: the preset's)"})
    warmup_steps: int | None = field(default=None, metadata={"help": "sampler steps before the safety term is applied "
                                                                     "(momentum builds up meanwhile; None: the preset's)"})
    threshold: float | None = field(default=None, metadata={"help": "sld_threshold (None: the preset's)"})
    momentum_scale: float | None = field(default=None, metadata={"help": "sld_momentum_scale (None: the preset's)"})
    mom_beta: float | None = field(default=None, metadata={"help": "sld_mom_beta (None: the preset's)"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.preset not in PRESETS:
            raise ValueError(f"sld preset={self.preset!r}; valid: {', '.join(PRESETS)}")
        for name in ("guidance_scale", "warmup_steps", "momentum_scale"):
            v = getattr(self, name)
            if v is not None and v < 0:
                raise ValueError(f"sld {name}={v} is out of range; valid: a number >= 0")
        if self.mom_beta is not None and not 0 <= self.mom_beta <= 1:
            raise ValueError(f"sld mom_beta={self.mom_beta} is out of range; valid: a number in [0, 1]")

    def settings(self) -> dict[str, float]:
        """The five SLD settings in force: the preset's, overridden by the ones set."""
        return {k: (PRESETS[self.preset][k] if getattr(self, k) is None else getattr(self, k)) for k in SETTINGS}


def sld_guidance(e_u: Tensor, e_p: Tensor, e_s: Tensor, momentum: Tensor | None, step: int, s: dict[str, float]):
    """One step of SLD's guidance (sld_pipeline.py, equations 3-8 of the paper): returns (noise_guidance, momentum).

    ``scale = clamp(|e_p - e_s| * sld_guidance_scale, max=1)``, zeroed where ``e_p - e_s >= threshold``;
    ``g_s = (e_s - e_u) * scale + momentum_scale * momentum``; ``momentum <- beta momentum + (1 - beta) g_s``;
    from step ``warmup_steps`` on, ``noise_guidance = (e_p - e_u) - g_s``, before it ``e_p - e_u``.
    """
    guidance = e_p - e_u
    if s["guidance_scale"] < 1:  # the pipeline's enable_safety_guidance = False
        return guidance, momentum
    if momentum is None:
        momentum = torch.zeros_like(guidance)
    diff = e_p - e_s
    scale = torch.clamp(diff.abs() * s["guidance_scale"], max=1.0)
    scale = torch.where(diff >= s["threshold"], torch.zeros_like(scale), scale)
    g_s = (e_s - e_u) * scale + s["momentum_scale"] * momentum
    momentum = s["mom_beta"] * momentum + (1 - s["mom_beta"]) * g_s
    if step >= s["warmup_steps"]:
        guidance = guidance - g_s
    return guidance, momentum


class SafetyGuidance:
    """The sampling hook SLD puts on a network (``net.sampling_hook``; :func:`unlearnbench.diffusion.guided` calls
    :meth:`guide`). The safety concept is one prompt made of the erased prompts' tokens, in order (SLD's safety text
    lists its concepts in one prompt: "hate, harassment, violence, ...").

    A trajectory's state (step index, momentum) starts afresh whenever the sampler's timestep does not fall from one
    call to the next (a new batch of samples begins at the top of the schedule).
    """

    def __init__(self, safety_prompts: list[int], settings: dict[str, float]):
        self.safety_prompts = [int(p) for p in safety_prompts]
        self.settings = dict(settings)

    def to_dict(self) -> dict[str, Any]:
        return {"method": "sld", "safety_prompts": self.safety_prompts, "settings": self.settings}

    def guide(self, net, null_cond: int, scale: float):
        state: dict[str, Any] = {"t": None, "step": 0, "momentum": None}

        def eps(x: Tensor, t: Tensor, c: Tensor) -> Tensor:
            t_now = int(t.max())
            if state["t"] is None or t_now >= state["t"] or state["momentum"] is not None and \
                    state["momentum"].shape != x.shape:
                state.update(step=0, momentum=None)
            B = x.shape[0]
            e = net(torch.cat([x, x]), torch.cat([t, t]), torch.cat([torch.full_like(c, null_cond), c]))
            e_u, e_p = e.chunk(2)
            tokens = prompt_tokens(net, self.safety_prompts)  # [m, L, D] -> one prompt [1, m L, D]
            e_s = eps_with_tokens(net, x, t, tokens.reshape(1, -1, tokens.shape[-1]).expand(B, -1, -1))
            guidance, state["momentum"] = sld_guidance(e_u, e_p, e_s, state["momentum"], state["step"], self.settings)
            state["t"], state["step"] = t_now, state["step"] + 1
            return e_u + scale * guidance

        return eps


@METHODS.register("sld")
class SLD(PromptSideMethod):
    """SLD: sampling with safety guidance away from the erased prompts; the weights are the pretrained model's.

    Each guided sampler step computes ``e_u``, ``e_p`` (the prompt) and ``e_s`` (the safety concept) and moves the
    guidance by :func:`sld_guidance`; the output is ``e_u + g * noise_guidance`` (g the task's guidance scale).
    Follows ml-research/safe-latent-diffusion ``sld/sld_pipeline.py`` (``SLDPipeline.__call__``: equations 3-8, the
    ``sld_*`` arguments and their defaults 1000 / 10 / 0.01 / 0.3 / 0.4) and diffusers'
    ``pipelines/stable_diffusion_safe`` (``perform_safety_guidance``, the same equations; ``SafetyConfig`` presets
    WEAK / MEDIUM / STRONG / MAX).

    How it runs here: the method trains nothing (``closed_form``: no optimizer step, ``steps`` 0); ``setup`` puts a
    :class:`SafetyGuidance` on the network as ``sampling_hook``, which every guided sampler applies (the task's
    evaluation, the attacks) and ``--save-models`` saves beside the weights (``sampling_hook.json``, restored by
    :func:`unlearnbench.saving.load_weights`); the record's ``sampling_hook`` names it.
    Deviations: the safety concept is the erased prompts' tokens joined into one prompt (SLD's is a text listing the
    inappropriate concepts); the safety term acts only where the sampler guides (guidance > 1, as in the pipeline,
    whose safety guidance lives inside its classifier-free guidance branch), so the unguided conditional predictions
    that ``kl_proxy_kept`` reads are the pretrained model's (0 by construction); the warm-up counts sampler steps as
    the pipeline does, and the digits task sets it to 4 of its 20 steps (10 of the pipeline's 50).
    What follows from the equations here: the element-wise scale ``clamp(|e_p - e_s| * sld_guidance_scale, 1)``
    vanishes where the prompt's prediction equals the safety concept's, so a prompt that *is* the safety concept (one
    erased digit, whose prompt is the whole safety concept) is sampled unchanged, while the kept prompts, whose
    predictions differ from it, are steered (digits-concept, forget set one, guidance scale 1000: acc_forget 0.995,
    acc_kept 0.934, kid_kept 0.84, seed 0). With several erased prompts the joined safety concept differs from each.
    Sweep: ``--grid eps`` sets ``guidance_scale`` (the preset's other settings stay).
    """

    name = "sld"
    kinds = ("concept",)
    Config = SLDConfig
    grid_params = {"eps": "guidance_scale"}
    closed_form = True  # nothing trains: setup() installs the sampler (steps 0, as a closed-form edit's)
    default_grids = {"concept": {"eps": [20.0, 100.0, 300.0, 1000.0, 2000.0, 5000.0], "smoke": [100.0, 2000.0]}}

    def __init__(self, cfg, bundle, generator):
        super().__init__(cfg, bundle, generator)
        self.hook = SafetyGuidance(list(bundle.forget_concepts), cfg.settings())

    def trainable_parameters(self):
        return []

    def setup(self) -> None:
        self.net.sampling_hook = self.hook

    @staticmethod
    def load_hook(d: dict[str, Any]) -> SafetyGuidance:
        """The hook saved by :meth:`SafetyGuidance.to_dict` (``sampling_hook.json``)."""
        import math

        settings, prompts = d.get("settings"), d.get("safety_prompts")
        if d.get("method") != "sld" or not isinstance(settings, dict) or set(settings) != set(SETTINGS):
            raise ValueError(f"not an sld sampling hook: {str(d)[:200]}; expected method 'sld' and the settings "
                             f"{', '.join(SETTINGS)}")
        bad = [k for k, v in settings.items()
               if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)]
        if bad or not isinstance(prompts, list) or not prompts or \
                not all(isinstance(p, int) and not isinstance(p, bool) and p >= 0 for p in prompts):
            raise ValueError(f"sld sampling hook: settings {', '.join(bad) or '-'} must be finite numbers and "
                             f"safety_prompts a non-empty list of prompt ids; got {str(d)[:200]}")
        return SafetyGuidance(prompts, settings)

    def losses(self) -> dict[str, Tensor]:
        raise RuntimeError("sld trains nothing: it is a sampler (closed_form: the runner never calls losses)")

