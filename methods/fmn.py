"""Forget-Me-Not, as published (Zhang et al., CVPR-W 2024): attention re-steering, minimising the cross-attention
probabilities that the image places on the concept's tokens."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from unlearnbench.methods import METHODS
from unlearnbench.methods._xattn import PromptSideMethod, prompt_side_reason, recorded_attention
from unlearnbench.methods.base import MethodConfig


@dataclass
class FMNConfig(MethodConfig):
    """FMN's own defaults (configs/attn.yaml): the whole UNet (``only_optimize_ca: false``), lr 2e-6, 35 steps, batch
    1; the task's method defaults replace them where the model differs."""

    lr: float = field(default=2e-6, metadata={"help": "Adam learning rate (FMN: 2e-6, AdamW)"})
    batch_size: int = field(default=1, metadata={"help": "concept images per step (FMN: 1)"})


def concept_attention(probs: list[Tensor], positions: Tensor, batch: int) -> Tensor:
    """Per-sample squared Frobenius norm [B] of the attention probabilities at the concept's token ``positions``
    ([B, L] bool, a row per sample, or [L] for every sample), summed over every recorded layer call, head and query.

    ``probs``: ``[B * heads, queries, L]`` per layer call (diffusers' ``head_to_batch_dim`` order: row ``b * heads +
    h``). train_attn.py's ``AttnController`` selects the same entries with ``masked_select`` and ``loss`` takes the norm
    of all of them; the square of that norm is the sum of these per-sample terms.
    """
    mask = positions if positions.dim() == 2 else positions[None].expand(batch, -1)
    out = torch.zeros(batch, dtype=probs[0].dtype, device=probs[0].device)
    for p in probs:
        sel = p.reshape(batch, -1, p.shape[-1]) * mask[:, None, :].to(p.dtype)  # [B, heads * queries, L]
        out = out + sel.pow(2).reshape(batch, -1).sum(1)
    return out


@METHODS.register("fmn")
class ForgetMeNot(PromptSideMethod):
    """FMN: on images of the erased concept (the pretrained model's samples of the erased prompt, forward-noised at
    uniform t), run the network on the erased prompt and minimise ``||A||_F``, the Frobenius norm of every cross-
    attention layer's probabilities at the concept's token positions, over the whole batch (not squared, not
    averaged: the reference's ``torch.cat(self.attn_probs).norm()``). The denoising output is not used.

    Follows SHI-Labs/Forget-Me-Not: ``src/train_attn.py`` (``MyCrossAttnProcessor`` on every module ending in
    ``attn2`` records ``attn.get_attention_scores(query, key)``; ``AttnController`` keeps the entries at
    ``concept_positions``; ``loss = torch.cat(self.attn_probs).norm()``; noisy latents of the concept's images at
    uniform timesteps; clipping at ``max_grad_norm`` 1) and ``configs/attn.yaml`` (``only_optimize_ca: false``: the
    whole UNet; lr 2e-6, 35 steps, batch 1, ``use_pooler: true``: the end-of-text token counts as a concept position).
    Deviations: a digits prompt has no text: all its ``n_tokens`` tokens are the concept's positions (there is no
    begin-of-text token to take the attention the concept loses), so the loss can only spread each query's attention
    evenly over the prompt's tokens (its floor is ``queries / n_tokens`` per head and layer): on digits FMN re-steers
    attention towards uniform rather than away from the concept, which is what the reference's loss does on a prompt
    made only of concept tokens. The concept images are the task's pool of pretrained samples of the erased prompt (the
    reference: a few real photos, optionally with a textual-inversion token, ``use_ti``); the optimizer is the
    runner's Adam (the reference: AdamW, weight decay 1e-2); steps, lr and batch are per task. Nothing in the loss
    holds the other prompts: on digits (seed 0, digit 3) lr 5e-5 for 35 steps left the model as it was (accuracy on
    the erased digit 0.99) and 300 steps erased it together with every kept digit (kept accuracy 0.11, KID 1.4). On
    sd-concept the positions come from the tokenizer (``Task.concept_tokens``): an erased training prompt is the
    concept's own words, so they are its word tokens and the end-of-text token (``use_pooler``), in the precomputed
    text embedding the UNet reads; the whole UNet trains, as in the reference. With samples of different erased prompts
    in one batch each keeps its own positions (the reference's ``repeat(head_num, 1, 1)`` assumes one layout per
    batch; it trains at batch 1). gmm-concept is refused (it scores the null prompt, which FMN never trains).
    Sweep: ``--grid eps`` sets ``steps`` (the reference's strength knob, 35 by default).
    """

    name = "fmn"
    Config = FMNConfig
    grid_params = {"eps": "steps"}
    # around the reference's 35 steps (a task with its own scale declares its grid: digits-concept)
    default_grids = {"concept": {"eps": [10.0, 20.0, 35.0, 70.0, 140.0, 280.0], "smoke": [10.0, 35.0]}}

    @classmethod
    def unsupported_reason(cls, task) -> str | None:
        reason = prompt_side_reason(cls.name, task)
        if reason is None and not (getattr(task, "learned_prompts", False) or getattr(task, "concept_tokens", False)):
            return (f"fmn needs the positions of the concept's tokens in each erased prompt; task {task.name} has "
                    f"neither a learned prompt table (digits-concept) nor a tokenizer that locates them "
                    f"(sd-concept)")
        return reason

    def __init__(self, cfg, bundle, generator):
        super().__init__(cfg, bundle, generator)
        self.token_table = bundle.extras.get("concept_tokens")
        if self.token_table is None and not hasattr(bundle.net, "encode_prompt"):
            raise ValueError(f"fmn needs the concept's token positions: a network whose prompt tokens are all the "
                             f"concept's (digits' CondUNet) or a bundle with extras['concept_tokens']; this task's "
                             f"network is {type(bundle.net).__name__} without them")

    def concept_positions(self, cond: Tensor) -> Tensor:
        """[B, L] bool: the tokens of each sample's erased prompt that carry the concept (the task's table, or all of a
        digits prompt's tokens)."""
        if self.token_table is not None:
            return self.token_table[cond.to(self.token_table.device)].to(self.device)
        return torch.ones(cond.shape[0], self.net.n_tokens, dtype=torch.bool, device=self.device)

    def losses(self) -> dict[str, Tensor]:
        B = self.cfg.batch_size
        c = self.pick(list(self.bundle.forget_concepts), B)
        x_t, t, _ = self.noised_ref(c)
        with recorded_attention(self.net) as rec:
            self.net(x_t, t, c)
        sq = concept_attention(rec.probs, self.concept_positions(torch.as_tensor(c)), B)
        return {"loss": sq, "attn_sq": sq}

    def objective(self, losses: dict[str, Tensor]) -> Tensor:
        return losses["attn_sq"].sum().sqrt()
