"""Erased Stable Diffusion (Gandikota et al., ICCV 2023) as a fixed-weight baseline (PAPER.md sections 1 and 5)."""
from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor

from unlearnbench.methods import METHODS
from unlearnbench.methods._constrained import ConceptConfig, ConceptErasure


@dataclass
class ESDConfig(ConceptConfig):
    eta: float = field(default=1.0, metadata={"help": "negative-guidance weight (original ESD form), one for all concepts"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.eta < 0:
            raise ValueError(f"esd eta={self.eta} must be >= 0")


@METHODS.register("esd")
class ESD(ConceptErasure):
    """ESD: regress ``eps_theta(x_t, c)`` onto ``eps_q(x_t, 0) - eta * sum_i (eps_q(x_t, c_i) - eps_q(x_t, 0))``.

    The same weight ``eta`` for every erased concept (the equal-weight baseline of the multi-concept claim); one concept
    with ``eta = alpha`` is rkl's Lagrangian minimiser for that alpha. Normalised to the original paper's form (the later
    diffusers script's ``eta' = 2`` equals ``eta = 1`` here). ``x_t`` are forward-noised pretrained samples (as for rkl,
    so the two differ only in the weights), not ESD's partial DDIM sampling. ``trainable=xattn`` is ESD-x.
    Sweep: ``--grid eps`` sets ``eta``.
    """

    name = "esd"
    Config = ESDConfig
    grid_params = {"eps": "eta"}

    def concept_weights(self, x_t: Tensor, t: Tensor) -> Tensor:
        m = len(self.bundle.forget_concepts)
        return x_t.new_full((x_t.shape[0], m), self.cfg.eta)
