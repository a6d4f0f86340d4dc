"""Shared access to the cross-attention layers (``attn2``) of a task's network, for the prompt-side baselines (UCE, CA,
FMN, MACE, SPM, ...): the UNet inside the bundle's network, its ``attn2`` modules, the prompt tokens they read, and the
attention probabilities they compute.

A bundle's network keeps the contract ``net(x_t, t, prompt_id)``; its prompt reaches the UNet as
``encoder_hidden_states`` [B, L, D]: on the digits tasks from :class:`~unlearnbench.models.CondUNet`'s prompt-embedding
table (``encode_prompt``), on the paper-scale tasks from :class:`~unlearnbench.tasks._paper.EpsNet`'s precomputed text
embeddings (``embeds``). A network without either (gmm's MLPs, an unconditional UNet) has no prompt tokens:
:func:`prompt_side_reason` says so, and the methods refuse the task.
"""
from __future__ import annotations

import contextlib
from typing import ClassVar, Iterator

import torch
from torch import Tensor, nn

from unlearnbench.methods.base import Method


def unet_of(net: nn.Module) -> nn.Module:
    """The diffusers UNet inside a bundle's network (``net.unet``), or ``net`` itself."""
    return getattr(net, "unet", net)


def xattn_modules(net: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of every cross-attention layer (diffusers ``Attention`` named ``...attn2``), in module order."""
    return [(n, m) for n, m in unet_of(net).named_modules() if n.endswith("attn2") and hasattr(m, "to_k")]


def kv_projections(net: nn.Module) -> list[tuple[str, nn.Linear]]:
    """``(name, Linear)`` of every ``attn2.to_k`` and ``attn2.to_v`` (UCE's and MACE's edited weights), in module
    order; ``name`` is relative to the UNet (``down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k``)."""
    out = []
    for n, m in xattn_modules(net):
        for proj in ("to_k", "to_v"):
            lin = getattr(m, proj)
            base = getattr(lin, "base_layer", lin)  # a peft LoRA wrapper keeps the original Linear inside
            out.append((f"{n}.{proj}", base))
    return out


def has_prompt_tokens(net: nn.Module) -> bool:
    """Whether ``net`` reads its prompt as cross-attention tokens (a prompt table and ``attn2`` layers)."""
    table = hasattr(net, "encode_prompt") or getattr(net, "embeds", None) is not None
    return table and bool(xattn_modules(net))


def prompt_tokens(net: nn.Module, ids: Tensor | list[int]) -> Tensor:
    """The ``encoder_hidden_states`` [len(ids), L, D] that ``net`` feeds its cross-attention for prompt ids ``ids``."""
    if hasattr(net, "encode_prompt"):
        dev = next(net.parameters()).device
        return net.encode_prompt(torch.as_tensor(ids, dtype=torch.long, device=dev))
    embeds = getattr(net, "embeds", None)
    if embeds is None:
        raise ValueError(f"network {type(net).__name__} has no prompt tokens (no encode_prompt, no embeds)")
    return embeds[torch.as_tensor(ids, dtype=torch.long, device=embeds.device)]


def prompt_side_reason(method: str, task, needs_learned_prompts: str | None = None) -> str | None:
    """Why a method acting on the prompt's cross-attention cannot run on ``task`` (None: it can); a method that needs
    the task's prompts to be a learned token table (``Task.learned_prompts``) says what for in ``needs_learned_prompts``."""
    if getattr(task, "scored_prompt", "erased") == "null":
        return (f"{method} acts on how the erased prompts are read through cross-attention, but task {task.name} scores "
                f"the null prompt's distribution, which a prompt-side edit never touches; use a task that scores the "
                f"erased prompts (e.g. digits-concept)")
    if needs_learned_prompts and not getattr(task, "learned_prompts", False):
        return (f"{method} {needs_learned_prompts}; task {task.name} feeds its UNet precomputed text embeddings, without "
                f"them; use a task whose prompts are a learned token table (digits-concept)")
    return None


class PromptSideMethod(Method):
    """A concept method acting on how prompts are read through cross-attention: refused on tasks that score the null
    prompt (:func:`prompt_side_reason`) and on networks without prompt tokens."""

    kinds = ("concept",)
    needs_learned_prompts: ClassVar[str | None] = None  # what the method needs a learned prompt table for (None: nothing)

    @classmethod
    def unsupported_reason(cls, task) -> str | None:
        return prompt_side_reason(cls.name, task, cls.needs_learned_prompts)

    def __init__(self, cfg, bundle, generator):
        super().__init__(cfg, bundle, generator)
        if not has_prompt_tokens(bundle.net):
            raise ValueError(f"{self.name} acts on the cross-attention (attn2) that reads the prompt tokens; this "
                             f"task's network ({type(bundle.net).__name__}) has none")


class AttentionProbs:
    """Records the attention probabilities of every ``attn2`` layer while active (``with AttentionProbs(net) as rec``).

    Each layer is switched to diffusers' plain ``AttnProcessor`` (the one that forms the probabilities explicitly with
    ``Attention.get_attention_scores``), whose call is wrapped to keep its output: ``rec.probs`` lists, per layer call,
    ``[B * heads, queries, L]`` (row ``b * heads + h``: diffusers' ``head_to_batch_dim`` order), with the autograd
    graph kept. On exit the original processors return and ``probs`` stays for reading.
    """

    def __init__(self, net: nn.Module):
        self.modules = [m for _, m in xattn_modules(net)]
        if not self.modules:
            raise ValueError(f"network {type(net).__name__} has no cross-attention (attn2) layers")
        self.probs: list[Tensor] = []
        self._saved: list = []

    def __enter__(self) -> "AttentionProbs":
        from diffusers.models.attention_processor import AttnProcessor

        for m in self.modules:
            self._saved.append(m.processor)
            m.set_processor(AttnProcessor())
            original = m.get_attention_scores

            def scores(*a, _f=original, **k):
                p = _f(*a, **k)
                self.probs.append(p)
                return p

            m.get_attention_scores = scores  # instance attribute: shadows the class's method while recording
        return self

    def __exit__(self, *exc) -> None:
        for m, proc in zip(self.modules, self._saved):
            del m.get_attention_scores
            m.set_processor(proc)
        self._saved = []


@contextlib.contextmanager
def recorded_attention(net: nn.Module) -> Iterator[AttentionProbs]:
    """``with recorded_attention(net) as rec: net(x_t, t, c)`` -> ``rec.probs`` (see :class:`AttentionProbs`)."""
    rec = AttentionProbs(net)
    with rec:
        yield rec


def eps_with_tokens(net: nn.Module, x_t: Tensor, t: Tensor, tokens: Tensor) -> Tensor:
    """``net``'s noise prediction with the cross-attention reading ``tokens`` [B, L', D] instead of a prompt id's
    tokens (any length L': SLD's joined safety concept, SPM's anchor embeddings, AdvUnlearn's adversarial prefix)."""
    out = unet_of(net)(x_t, t, encoder_hidden_states=tokens).sample
    channels = getattr(net, "channels", None)  # the paper-scale EpsNet cuts a learned-variance output
    return out[:, :channels].float() if channels else out
