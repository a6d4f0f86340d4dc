"""MACE, re-implemented from the paper (Lu et al., "MACE: Mass Concept Erasure in Diffusion Models", CVPR 2024): a
closed-form cross-attention refinement, one rank-1 LoRA per concept trained to remove the concept's attention inside
its mask, and a closed-form fusion of the LoRAs.

The authors' code (Shilin-LU/MACE) carries a non-commercial licence: nothing here is taken from it; the algorithm
follows the paper's sections 3.2-3.4 (equations for the refinement, the attention loss and the fusion)."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from unlearnbench.methods import METHODS
from unlearnbench.methods._xattn import PromptSideMethod, kv_projections, prompt_tokens, recorded_attention
from unlearnbench.methods.base import MethodConfig


@dataclass
class MACEConfig(MethodConfig):
    lamb: float = field(default=1.0, metadata={"help": "ridge weight keeping each closed-form solution near the "
                                                       "weights it starts from (refinement and fusion)"})
    preserve_scale: float = field(default=1.0, metadata={"help": "weight of the kept prompts' outputs in the "
                                                                 "refinement and the fusion (the paper's prior "
                                                                 "preservation term)"})
    refine: bool = field(default=True, metadata={"help": "run the closed-form refinement (stage 1) before the LoRAs"})
    ink_threshold: float = field(default=0.0, metadata={"help": "a pixel in [-1, 1] is ink (inside the concept's mask) "
                                                                "above this"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.lamb > 0:
            raise ValueError(f"mace lamb={self.lamb!r} is out of range; valid: a number > 0")
        if self.preserve_scale < 0:
            raise ValueError(f"mace preserve_scale={self.preserve_scale!r} is out of range; valid: a number >= 0")
        if not -1 <= self.ink_threshold < 1:
            raise ValueError(f"mace ink_threshold={self.ink_threshold!r} is out of range; valid: a number in [-1, 1)")


def ridge_solve(w0: Tensor, lamb: float, terms: list[tuple[Tensor, Tensor, float]]) -> Tensor:
    """``argmin_W lamb ||W - w0||^2 + sum_k s_k ||W X_k^T - Y_k^T||^2`` = ``(lamb w0 + sum s Y^T X) (lamb I + sum s
    X^T X)^-1``, for ``terms`` of (inputs X [n, d], wanted outputs Y [n, out], weight s); solved in float64."""
    w = w0.double()
    lhs, rhs = lamb * w, lamb * torch.eye(w.shape[1], dtype=torch.float64, device=w.device)
    for x, y, s in terms:
        x, y = x.double(), y.double()
        lhs = lhs + s * y.T @ x
        rhs = rhs + s * x.T @ x
    return torch.linalg.solve(rhs, lhs.T).T.to(w0.dtype)


def ink_masks(x0: Tensor, threshold: float, side: int) -> Tensor:
    """The concept's mask at an attention map's resolution: ``[B, side * side]`` in {0, 1}, 1 where any pixel of the
    cell is ink (``x0 > threshold``; max pooling of the image-resolution mask)."""
    ink = (x0 > threshold).to(x0.dtype).amax(1, keepdim=True)  # [B, 1, H, W]
    return F.adaptive_max_pool2d(ink, side).flatten(1)


def masked_attention(probs: list[Tensor], masks: dict[int, Tensor], positions: Tensor, batch: int) -> Tensor:
    """Per-sample ``sum_layers ||A_l[:, :, positions] * M_l||_F^2`` [B]: the attention the image's queries inside the
    mask put on the concept's tokens. ``probs`` [B * heads, queries, L] per layer call; ``masks`` queries -> [B,
    queries]."""
    out = torch.zeros(batch, dtype=probs[0].dtype, device=probs[0].device)
    for p in probs:
        heads = p.shape[0] // batch
        m = masks[p.shape[1]].repeat_interleave(heads, 0)[:, :, None]  # row b * heads + h
        out = out + (p[..., positions] * m).pow(2).reshape(batch, -1).sum(1)
    return out


@METHODS.register("mace")
class MACE(PromptSideMethod):
    """MACE: a closed-form refinement, one rank-1 LoRA per erased concept trained against the concept's attention
    inside its mask, and a closed-form fusion of the LoRAs, all on the cross-attention keys and values (``attn2.to_k``,
    ``attn2.to_v``). The stages:

    1. refinement (``setup``): each projection W becomes :func:`ridge_solve` with the erased prompts' tokens mapped to
       W times the null prompt's tokens (the mapping concept) and the kept prompts' tokens to their own outputs
       and the null prompt's (``preserve_scale``), ridge ``lamb`` towards W;
    2. LoRA (the training loop): per erased concept i, a rank-1 adapter ``B_i A_i`` on every key and value projection,
       trained on forward-noised pretrained samples x of prompt i to minimise ``sum_l ||A_l[concept tokens] * M(x)||^2``,
       the attention that the queries inside the concept's mask M (the digit's ink) put on the concept's tokens, with
       the adapter of concept i only;
    3. fusion (``finish``): each projection becomes the closed-form solution that reproduces every concept's adapted
       outputs on that concept's tokens (``(W + B_i A_i) e``) and the kept and null prompts' outputs (``W p``, weight
       ``preserve_scale``), ridge ``lamb``; the adapters are then dropped.

    Re-implemented from the paper (Lu et al., CVPR 2024, arXiv 2403.06135; reference repository Shilin-LU/MACE,
    ``training.py`` with ``src/cfr_lora_training.py`` and ``src/fuse_lora_close_form.py``, not read for code: its licence
    is non-commercial). Deviations: a digits prompt has no text: all its tokens carry the concept (the paper refines the
    tokens around the concept word and trains on the concept word's own tokens); the masks are the digits' ink, max-
    pooled to the attention grid (the paper: Grounded-SAM segmentations of generated images); the mapping concept is
    the null prompt; timesteps are uniform (the paper's concept-focal importance sampling favours some timesteps);
    the preservation term uses the task's kept prompts and the null prompt (the paper: a prior of general captions;
    the null prompt's tokens overlap the erased prompt's in the digits' 32-dimensional token space, see uce); ``lamb`` and
    ``preserve_scale`` are this task's, not the paper's SD values; steps, lr and batch are per task.
    sd-concept is refused (no segmentation masks there); gmm-concept is refused (it scores the null prompt, which a
    prompt-side edit never touches).
    Sweep: ``--grid eps`` sets ``steps`` of the LoRA stage.
    """

    name = "mace"
    Config = MACEConfig
    grid_params = {"eps": "steps"}

    needs_learned_prompts = ("trains each concept's adapter inside the concept's segmentation mask (no segmentation "
                          "model is wired in; a digit's ink is its mask)")

    def __init__(self, cfg, bundle, generator):
        super().__init__(cfg, bundle, generator)
        if not hasattr(bundle.net, "encode_prompt"):
            raise ValueError(f"mace needs a network whose prompt tokens are all the concept's and whose images have a "
                             f"mask (digits' CondUNet); this task's network is {type(bundle.net).__name__}")
        self.net.requires_grad_(False)
        names = dict((id(m), n) for n, m in self.net.named_modules())
        self._kv = [(names[id(lin)], lin) for _, lin in kv_projections(self.net)]
        self.concepts = list(bundle.forget_concepts)
        # per concept, per projection: A [1, d] (small random), B [out, 1] (zero), so every adapter starts at 0
        self.lora: list[list[tuple[nn.Parameter, nn.Parameter]]] = []
        for _ in self.concepts:
            pairs = []
            for _, lin in self._kv:
                out_f, in_f = lin.weight.shape
                a = torch.randn((1, in_f), generator=self.gen, dtype=lin.weight.dtype) / in_f ** 0.5
                pairs.append((nn.Parameter(a.to(self.device)), nn.Parameter(torch.zeros(out_f, 1, device=self.device))))
            self.lora.append(pairs)

    def trainable_parameters(self):
        return [p for pairs in self.lora for ab in pairs for p in ab]

    def preserved(self) -> list[int]:
        """Prompts whose outputs the closed forms keep: the kept prompts and the null prompt (the mapping concept)."""
        return list(self.bundle.retain_concepts) + [self.bundle.null_cond]

    def tokens(self, ids: list[int]) -> Tensor:
        """Token rows [len(ids) * L, d] of prompts ``ids``."""
        with torch.no_grad():
            t = prompt_tokens(self.net, ids)
        return t.reshape(-1, t.shape[-1])

    @torch.no_grad()
    def setup(self) -> None:
        b, cfg = self.bundle, self.cfg
        if not cfg.refine:
            return
        erase = self.tokens(self.concepts)
        guide = self.tokens([b.null_cond] * len(self.concepts))
        keep = self.tokens(self.preserved())
        for _, lin in self._kv:
            w = lin.weight
            lin.weight.copy_(ridge_solve(w, cfg.lamb, [(erase, guide @ w.T, 1.0),
                                                       (keep, keep @ w.T, cfg.preserve_scale)]))

    def adapted(self, i: int) -> dict[str, Tensor]:
        """Weights of the key/value projections with concept ``i``'s adapter: name -> ``W + B_i A_i``."""
        return {f"{n}.weight": lin.weight + bb @ a for (n, lin), (a, bb) in zip(self._kv, self.lora[i])}

    def losses(self) -> dict[str, Tensor]:
        B = self.cfg.batch_size
        positions = torch.ones(self.net.n_tokens, dtype=torch.bool, device=self.device)
        terms = []
        for i, c in enumerate(self.concepts):
            cond = self.cond(c, B)
            x0 = self.bundle.sample_ref(cond, self.gen)
            x_t, t, _ = self.noised(x0)
            with recorded_attention(self.net) as rec:
                torch.func.functional_call(self.net, self.adapted(i), (x_t, t, cond), strict=False)
            sides = {p.shape[1] for p in rec.probs}
            masks = {q: ink_masks(x0, self.cfg.ink_threshold, int(round(q ** 0.5))) for q in sides}
            terms.append(masked_attention(rec.probs, masks, positions, B))
        loss = torch.cat(terms)
        return {"loss": loss, "attn_mask": loss}

    @torch.no_grad()
    def finish(self) -> None:
        b, cfg = self.bundle, self.cfg
        keep = self.tokens(self.preserved())
        for j, (_, lin) in enumerate(self._kv):
            w = lin.weight.clone()
            terms = []
            for i, c in enumerate(self.concepts):
                e = self.tokens([c])
                a, bb = self.lora[i][j]
                terms.append((e, e @ (w + bb @ a).T, 1.0))
            terms.append((keep, keep @ w.T, cfg.preserve_scale))
            lin.weight.copy_(ridge_solve(w, cfg.lamb, terms))
