"""The concept-erasure target shared by rkl, lik, rkl-fixed and the importance-sampled variants (PAPER.md sections 1
and 3): regress the erased prompts onto ``eps_q(c_from) - sum_i w_i (eps_q(c_i) - eps_q(c_from))``."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from unlearnbench.diffusion import per_sample_sse
from unlearnbench.methods.base import Method, MethodConfig


@dataclass
class ConceptConfig(MethodConfig):
    train_null: bool = field(default=True, metadata={"help": "also regress the null prompt onto the erased target"})
    preserve: float = field(default=0.0, metadata={"help": "weight of a kept-prompt distillation term (0: off)"})


class ConceptErasure(Method):
    """Regress the erased prompts (and the null prompt) onto ``eps* = eps_q(c_from) - sum_i w_i (eps_q(c_i) - eps_q(c_from))``.

    ``x_t`` are forward-noised samples of the pretrained model under ``c_from`` (the null prompt), which cover the
    support of every target distribution ``p ∝ q * f(x)``. Subclasses give the per-sample weights ``w`` [B, m]: a
    constant alpha (rkl, ESD) or ``lambda_i * P(c_i | x_t)`` (lik).
    """

    kinds = ("concept",)

    def concept_weights(self, x_t: Tensor, t: Tensor) -> Tensor:
        raise NotImplementedError

    def erase_batch(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(x_t, t, prompt, target) for one batch."""
        b, B = self.bundle, self.cfg.batch_size
        null, forget = b.null_cond, b.forget_concepts
        x_t, t, _ = self.noised_ref(self.cond(null, B))
        with torch.no_grad():
            prompts = [null] + list(forget)
            eps = b.ref(x_t.repeat(len(prompts), *[1] * (x_t.ndim - 1)), t.repeat(len(prompts)),
                        self.cond(prompts).repeat_interleave(B)).view(len(prompts), *x_t.shape)
            eps_from, eps_c = eps[0], eps[1:]
            w = self.concept_weights(x_t, t).to(x_t.dtype)  # [B, m]
            shape = (B, len(forget)) + (1,) * (x_t.ndim - 1)
            target = eps_from - (w.view(shape) * (eps_c.transpose(0, 1) - eps_from.unsqueeze(1))).sum(1)
        prompt = self.pick(prompts if self.cfg.train_null else list(forget), B)
        return x_t, t, prompt, target

    def losses(self) -> dict[str, Tensor]:
        x_t, t, prompt, target = self.erase_batch()
        erase = per_sample_sse(self.net(x_t, t, prompt), target)
        out = {"loss": erase, "erase": erase}
        if self.cfg.preserve > 0 and self.bundle.retain_concepts:
            out["preserve"] = self.preserve_terms()
        return out

    def objective(self, losses: dict[str, Tensor]) -> Tensor:
        obj = losses["erase"].mean()
        if "preserve" in losses:
            obj = obj + self.cfg.preserve * losses["preserve"].mean()
        return obj

    def preserve_terms(self) -> Tensor:
        """``||eps_theta(x_t, k) - eps_q(x_t, k)||^2`` on kept prompts k, x_t from the pretrained model's samples of k."""
        k = self.pick(self.bundle.retain_concepts, self.cfg.batch_size)
        x_t, t, _ = self.noised_ref(k)
        with torch.no_grad():
            tgt = self.bundle.ref(x_t, t, k)
        return per_sample_sse(self.net(x_t, t, k), tgt)

    def measure_prompts(self) -> list[int]:
        """Prompt whose output is the unlearned p in constraint i: the null prompt or each erased prompt."""
        b = self.bundle
        if b.extras.get("constrain_on", "erased") == "null":
            return [b.null_cond] * len(b.forget_concepts)
        return list(b.forget_concepts)

    @torch.no_grad()
    def model_samples(self, prompt: int, n: int) -> Tensor:
        """Samples of ``p_theta(.|prompt)``, the distribution a constraint measures: unguided, so that the point-wise
        KL against ``q(.|c_i)`` (unguided predictions on both sides) estimates ``KL(p_theta(.|c_i) || q(.|c_i))``."""
        return self.bundle.sample_model(self.net, self.cond(prompt, n), self.gen, guidance=1.0)

    def samples_per_prompt(self, n: int) -> list[Tensor]:
        """``model_samples`` for each constraint's measured prompt, drawn once per distinct prompt."""
        cache: dict[int, Tensor] = {}
        for prompt in self.measure_prompts():
            if prompt not in cache:
                cache[prompt] = self.model_samples(prompt, n)
        return [cache[p] for p in self.measure_prompts()]
