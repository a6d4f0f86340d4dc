"""rkl with the exact Lagrangian-minimiser target fitted by importance-weighted score matching (see ``_is.py``)."""
from __future__ import annotations

from torch import Tensor

from unlearnbench.methods import METHODS
from unlearnbench.methods._is import ImportanceWeightedErasure
from unlearnbench.methods.rkl import ReverseKL


@METHODS.register("rkl-is")
class ReverseKLIS(ImportanceWeightedErasure, ReverseKL):
    """rkl-is: the primal step fits ``p_lambda ∝ q prod_i (q / q_u^i)^{alpha_i}``, ``alpha_i = lambda_i / (1 - Lambda)``,
    exactly: importance-weighted denoising score matching on pretrained samples with ``log w = -sum_i alpha_i
    (log q(x0|c_i) - log q(x0|0))``. Constraints, dual steps and the grid are rkl's; only the target differs, so the
    gap between rkl and rkl-is on gmm-concept is the cost of rkl's guidance-style target at t > 0.
    Sweep: ``--grid eps`` sets the threshold ``b`` (nats).
    """

    name = "rkl-is"

    def log_weights(self, x0: Tensor) -> Tensor:
        return -(self.log_ratio(x0) * self.alphas().to(x0.device, x0.dtype)).sum(1)
