"""rkl's concept-erasure target with fixed equal weights and no duals: the dual ablation of ``rkl`` (PAPER.md s. 1)."""
from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor

from unlearnbench.methods import METHODS
from unlearnbench.methods._concept import ConceptConfig, ConceptErasure


@dataclass
class RKLFixedConfig(ConceptConfig):
    alpha: float = field(default=0.1, metadata={"help": "the fixed weight alpha_i of every erased concept"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.alpha < 0:
            raise ValueError(f"rkl-fixed alpha={self.alpha} must be >= 0")


@METHODS.register("rkl-fixed")
class RKLFixed(ConceptErasure):
    """rkl without its duals: regress ``eps_theta(x_t, c)`` (erased prompts and the null prompt) onto
    ``eps_q(x_t, 0) - alpha * sum_i (eps_q(x_t, c_i) - eps_q(x_t, 0))`` with one fixed ``alpha`` for every concept.

    ``x_t`` are forward-noised samples of the pretrained model's null prompt, exactly as for rkl, so the two differ only
    in the weights: rkl's ``alpha_i = lambda_i / (1 - Lambda)`` come from dual ascent per concept, these are fixed and
    equal. It is this project's ablation (the equal-weight family of the multi-concept claim), not ESD: ESD as published
    (``esd``) samples x_t from the model, takes one concept per step and trains only the erased prompt.
    Sweep: ``--grid eps`` sets ``alpha``.
    """

    name = "rkl-fixed"
    Config = RKLFixedConfig
    grid_params = {"eps": "alpha"}

    def concept_weights(self, x_t: Tensor, t: Tensor) -> Tensor:
        m = len(self.bundle.forget_concepts)
        return x_t.new_full((x_t.shape[0], m), self.cfg.alpha)
