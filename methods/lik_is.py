"""lik with the exact Lagrangian-minimiser target fitted by importance-weighted score matching (see ``_is.py``)."""
from __future__ import annotations

import torch
from torch import Tensor

from unlearnbench.methods import METHODS
from unlearnbench.methods._is import ImportanceWeightedErasure
from unlearnbench.methods.lik import Likelihood


@METHODS.register("lik-is")
class LikelihoodIS(ImportanceWeightedErasure, Likelihood):
    """lik-is: the primal step fits ``p_lambda ∝ q exp(-sum_i lambda_i r_i(x0))``, ``r_i = P(c_i | x0)`` (the task's
    posterior at t = 0), exactly: importance-weighted denoising score matching on pretrained samples with
    ``log w = -sum_i lambda_i r_i(x0)``. Constraints, dual steps and the grid are lik's.
    Sweep: ``--grid eps`` sets ``eps``.
    """

    name = "lik-is"

    def log_weights(self, x0: Tensor) -> Tensor:
        b = self.bundle
        r = b.posterior(x0, torch.zeros(x0.shape[0], dtype=torch.long, device=x0.device), list(b.forget_concepts))
        return -(r * self.duals.to(r.device, r.dtype)).sum(1)
