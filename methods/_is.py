"""The exact-target variants ``rkl-is`` and ``lik-is`` (this project's, beyond the paper): instead of the guidance-style
target at t > 0, fit the Lagrangian minimiser ``p_lambda ∝ q(.|c_from) w_lambda(x0)`` directly by importance-weighted
denoising score matching on pretrained samples ``x0 ~ q(.|c_from)``:
``E_{x0 ~ q}[ w(x0) / E_q[w] * ||eps_theta(x_t, t, c) - eps||^2 ]``, whose minimiser is the noised ``p_lambda``'s
noise prediction at every t (the weights act on x0, and noising is linear in the distribution). The weights are
self-normalised over the batch; their effective sample size is logged as ``ess``."""
from __future__ import annotations

import torch
from torch import Tensor

from unlearnbench.diffusion import per_sample_sse
from unlearnbench.methods._concept import ConceptErasure


class ImportanceWeightedErasure(ConceptErasure):
    """Mixin over a concept method with duals: ``log_weights(x0) -> [B]`` gives ``log w_lambda(x0)``."""

    def log_weights(self, x0: Tensor) -> Tensor:
        raise NotImplementedError

    def losses(self) -> dict[str, Tensor]:
        b, B = self.bundle, self.cfg.batch_size
        with torch.no_grad():
            x0 = b.sample_ref(self.cond(b.null_cond, B), self.gen)
            w = torch.softmax(self.log_weights(x0).double(), 0).to(x0.dtype) * B
        x_t, t, noise = self.noised(x0)
        prompts = [b.null_cond] + list(b.forget_concepts)
        prompt = self.pick(prompts if self.cfg.train_null else list(b.forget_concepts), B)
        erase = w * per_sample_sse(self.net(x_t, t, prompt), noise)
        ess = (w.sum() ** 2 / w.pow(2).sum()).expand(B)
        out = {"loss": erase, "erase": erase, "ess": ess.detach()}
        if self.cfg.preserve > 0 and b.retain_concepts:
            out["preserve"] = self.preserve_terms()
        return out

    def log_ratio(self, x0: Tensor) -> Tensor:
        """``log q(x0|c_i) - log q(x0|c_from)``, [B, m], from the task's ``log_ratio`` hook."""
        if self.bundle.log_ratio is None:
            raise ValueError(f"method {self.name} needs the task's log_ratio hook (exact densities or a diffusion "
                             f"classifier); this task has none")
        return self.bundle.log_ratio(x0, list(self.bundle.forget_concepts))
