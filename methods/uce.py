"""Unified Concept Editing, as published (Gandikota et al., WACV 2024): one closed-form edit of the cross-attention
key and value projections."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from unlearnbench.methods import METHODS
from unlearnbench.methods._xattn import PromptSideMethod, kv_projections, prompt_tokens
from unlearnbench.methods.base import MethodConfig

PRESERVE = ("kept+null", "kept", "none")


@dataclass
class UCEConfig(MethodConfig):
    erase_scale: float = field(default=1.0, metadata={"help": "weight of the erase terms (the reference's "
                                                              "--erase_scale, default 1)"})
    preserve_scale: float = field(default=1.0, metadata={"help": "weight of the preserve terms (--preserve_scale)"})
    lamb: float = field(default=0.5, metadata={"help": "weight of staying at the original weights (--lamb)"})
    preserve: str = field(default="kept+null", metadata={
        "help": "preserved concepts: kept+null (the task's kept prompts and the null prompt, the guide), kept, or none "
                "(the script's default: no --preserve_concepts)",
                                                    "choices": PRESERVE})

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("erase_scale", "preserve_scale"):
            if getattr(self, name) < 0:
                raise ValueError(f"uce {name}={getattr(self, name)!r} is out of range; valid: a number >= 0")
        if not self.lamb > 0:
            raise ValueError(f"uce lamb={self.lamb!r} is out of range; valid: a number > 0 (it keeps the system "
                             f"invertible)")
        if self.preserve not in PRESERVE:
            raise ValueError(f"uce preserve={self.preserve!r}; valid: {', '.join(PRESERVE)}")
        if self.steps:
            raise ValueError(f"uce steps={self.steps!r}: UCE is one closed-form edit; valid: 0 (or leave it out)")


def uce_weight(w0: Tensor, erase: Tensor, guide: Tensor, preserve: Tensor, erase_scale: float, preserve_scale: float,
               lamb: float) -> Tensor:
    """UCE's edited projection ``(lamb W0 + s_e sum_i W0 g_i c_i^T + s_p sum_j W0 p_j p_j^T)
    (lamb I + s_e sum_i c_i c_i^T + s_p sum_j p_j p_j^T)^-1`` (the paper's equation 7).

    ``w0`` [out, d]; ``erase`` [n, d] the erased tokens c_i, ``guide`` [n, d] the tokens whose original outputs
    ``W0 g_i`` they are mapped to; ``preserve`` [m, d] tokens whose outputs are kept (m may be 0). Solved in float64.
    """
    w, c, g, p = (x.double() for x in (w0, erase, guide, preserve))
    eye = torch.eye(w.shape[1], dtype=torch.float64, device=w.device)
    lhs = lamb * w + erase_scale * (w @ g.T) @ c + preserve_scale * (w @ p.T) @ p
    rhs = lamb * eye + erase_scale * c.T @ c + preserve_scale * p.T @ p
    return torch.linalg.solve(rhs, lhs.T).T.to(w0.dtype)  # rhs is symmetric: (lhs rhs^-1)^T = rhs^-1 lhs^T


@METHODS.register("uce")
class UCE(PromptSideMethod):
    """UCE: map the erased prompts' tokens, through every cross-attention ``to_k`` and ``to_v``, onto the original
    outputs of a guide prompt's tokens while keeping the preserved prompts' outputs, in closed form
    (:func:`uce_weight`); no gradient steps.

    Follows rohitgandikota/unified-concept-editing: ``trainscripts/uce_sd_erase.py`` (``UCE``: every module named
    ``attn2`` ending in ``to_k`` / ``to_v``; ``mat1 = lamb * w_old + erase_scale * v_i_star @ c_i.T + preserve_scale *
    ...``, ``mat2 = lamb * I + erase_scale * c_i @ c_i.T + ...``, ``weight = mat1 @ inverse(mat2)``, with ``v_i_star``
    the guide's output under the original weights; defaults ``--erase_scale 1 --preserve_scale 1 --lamb 0.5``; the
    guide of an object concept is the empty prompt '').
    Deviations: the reference takes one token per concept (the prompt's last token, ``attention_mask.sum() - 2``); a
    digits prompt has no text, its ``n_tokens`` learned tokens all carry the concept, so every token of the erased prompt
    is an erase row, paired position by position with the guide prompt's (the null prompt's) tokens, and every token of a
    preserved prompt is a preserve row (on sd-concept: all 77 tokens of each prompt's text embedding, paired by
    position). Preserved concepts are the task's kept prompts and the null prompt (``preserve=kept+null``; ``kept``
    without the null prompt; the script's own default is none, ``preserve=none``): the null prompt is the guide, and
    its tokens overlap the erased prompt's in the digits' 32-dimensional token space, so an edit that does not hold them
    moves the null prompt's own output too (measured on digit 3, erase_scale 3: the null prompt's prediction moved by
    0.25 of the erased-to-null prediction gap, and guided samples of the erased prompt stayed 3s, accuracy 0.965); on
    SD the guide's token (the empty prompt's begin-of-text token) is far from a concept's last token. The system is solved with ``torch.linalg.solve`` in float64 instead of ``inverse`` in float32.
    A task whose scored distribution is the null prompt (gmm-concept) is refused: the edit never changes it.
    Sweep: ``--grid eps`` sets ``erase_scale``.
    """

    name = "uce"
    Config = UCEConfig
    grid_params = {"eps": "erase_scale"}
    # tasks whose own grids do not name uce (sd-concept): the reference's default scale 1 in the middle
    default_grids = {"concept": {"eps": [0.1, 0.3, 1.0, 3.0, 10.0, 30.0], "smoke": [0.3, 3.0]}}
    closed_form = True

    def __init__(self, cfg, bundle, generator):
        super().__init__(cfg, bundle, generator)
        self.net.requires_grad_(False)
        self._kv = kv_projections(self.net)
        for _, lin in self._kv:
            lin.weight.requires_grad_(True)

    def trainable_parameters(self):
        return [lin.weight for _, lin in self._kv]

    def edit_rows(self) -> tuple[Tensor, Tensor, Tensor]:
        """(erase [n, d], guide [n, d], preserve [m, d]) token rows of the edit."""
        b = self.bundle
        with torch.no_grad():
            forget = prompt_tokens(self.net, list(b.forget_concepts))  # [F, L, d]
            guide = prompt_tokens(self.net, [b.null_cond]).expand_as(forget)
            kept = {"kept+null": list(b.retain_concepts) + [b.null_cond], "kept": list(b.retain_concepts),
                    "none": []}[self.cfg.preserve]
            d = forget.shape[-1]
            keep = prompt_tokens(self.net, kept).reshape(-1, d) if kept else forget.new_zeros(0, d)
        return forget.reshape(-1, d), guide.reshape(-1, d), keep

    @torch.no_grad()
    def setup(self) -> None:
        erase, guide, keep = self.edit_rows()
        cfg = self.cfg
        for _, lin in self._kv:
            lin.weight.copy_(uce_weight(lin.weight, erase, guide, keep, cfg.erase_scale, cfg.preserve_scale, cfg.lamb))

    def losses(self) -> dict[str, Tensor]:
        raise RuntimeError("uce is a closed-form edit (setup); it has no training loss")
