"""Forward-KL constrained data unlearning (Khalafi, Ribeiro & Ding, ICML 2026; PAPER.md section 2)."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from unlearnbench.diffusion import elbo_terms, per_sample_sse, stratified_t
from unlearnbench.methods import METHODS
from unlearnbench.methods._constrained import ConstrainedMethod, KLConstrainedConfig
from unlearnbench.methods._data import DataBatches


@dataclass
class FKLConfig(KLConstrainedConfig):
    eps: float = field(default=1.0, metadata={"help": "b: required increase (nats) of KL(q_u^i || p) over the pretrained"})
    dual_lr: float = field(default=0.002, metadata={"help": "dual ascent step size (lambda lives on the 1/N scale)"})
    forget_batch: int = field(default=16, metadata={"help": "forget rows per constraint per step"})
    q_source: str = field(default="train", metadata={"help": "samples of q: train (all training data) or retain"})
    n_estimate: int = field(default=64, metadata={"help": "forget draws per constraint per estimate"})
    n_t_estimate: int = field(default=8, metadata={"help": "timestep draws per forget draw in an estimate"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.q_source not in ("train", "retain"):
            raise ValueError(f"q_source={self.q_source!r}; valid: train, retain")


@METHODS.register("fkl", "forward-kl")
class ForwardKL(DataBatches, ConstrainedMethod):
    """Forward-KL constrained unlearning: ``min_p KL(q||p) s.t. KL(q_u^i||p) >= KL(q_u^i||q) + b`` by primal-dual updates.

    Minimiser ``p_lambda = (q - sum_i lambda_i q_u^i) / (1 - Lambda)``; primal loss, signed denoising score matching
    ``E_{x0~q} l(theta; x0) - sum_i lambda_i E_{x0~q_u^i} l(theta; x0)`` (exact at every t because noising is linear in
    the distribution; any time weighting has the same minimiser, so the uniform "simple" weighting is used); the
    constraint estimate is the ELBO difference ``E_{q_u^i} sum_t w_t (||eps_theta - eps||^2 - ||eps_q - eps||^2)`` with
    common random numbers; dual ascent ``lambda_i <- max(0, lambda_i + eta_d (b - KLhat_i))``, ``Lambda <= 1 - delta``.
    With q the training distribution of N points and K forget points, lambda_i = 1/N is exactly retraining without them.
    The minimiser is a density only where ``q - sum_i lambda_i q_u^i >= 0``; for a forget group that makes up the share
    ``w_i`` of q (``bundle.extras["forget_weights"]``; default: the forget set's share ``forget_fraction``, split by rows)
    that means ``lambda_i <= w_i`` where nothing else covers the group (beyond it the loss is unbounded below: the
    outlier of gmm-data with any lambda > 1/N), so the projection is onto ``{0 <= lambda_i <= bound_i,
    Lambda <= 1 - delta}`` with ``bound_i = w_i`` unless the task gives exact bounds (gmm-data: a point inside the
    data, whose neighbours' density covers the hole, may go past its share, as in the exact oracle);
    ``lambda_i = w_i`` is retraining without group i.
    Sweep: ``--grid eps`` sets ``b``.
    """

    name = "fkl"
    kinds = ("data",)
    Config = FKLConfig
    grid_params = {"eps": "eps"}
    sense = ">="

    def forget_weights(self) -> Tensor:
        """``w_i``, the share of q that forget group i makes up; [m] float64."""
        b = self.bundle
        given = b.extras.get("forget_weights")
        if given is not None:
            return torch.as_tensor(given, dtype=torch.float64)
        counts = torch.bincount(b.group_index(), minlength=b.n_constraints).to(torch.float64)
        # the forget set's share of q (SISS's K/N: a task's stated training-set size), split by rows per group
        share = float(b.extras.get("forget_fraction", counts.sum() / b.train_data.shape[0]))
        return counts / counts.sum() * share

    def dual_floor(self) -> float:
        """A tenth of the duals' range ``sum_i w_i`` (``lambda_i = w_i`` is retraining): a dual within noise of 0,
        whose constraint the pretrained model already meets, is settled when it moves by under 0.5 % of its range."""
        return 0.1 * float(self.forget_weights().sum())

    def dual_bounds(self) -> Tensor:
        """Upper bound of each ``lambda_i``: the task's exact bounds where it knows them
        (``bundle.extras["dual_bounds"]``: the largest lambda_i for which ``p_lambda`` is a density, the bound its exact
        oracle uses), else the share ``w_i``; [m] float64."""
        given = self.bundle.extras.get("dual_bounds")
        return self.forget_weights() if given is None else torch.as_tensor(given, dtype=torch.float64)

    def project(self) -> None:
        """Box ``[0, bound_i]`` (the minimiser stays a density), then ``Lambda <= 1 - delta``."""
        self.duals.copy_(torch.minimum(self.duals.clamp(min=0.0), self.dual_bounds()))
        super().project()

    def losses(self) -> dict[str, Tensor]:
        x0, cond, _ = self.rows(self.cfg.q_source, self.cfg.batch_size)
        x_t, t, noise = self.noised(x0)
        keep = per_sample_sse(self.net(x_t, t, cond), noise)
        fx0, fcond, _, group = self.forget_rows_per_group(self.cfg.forget_batch)
        fx_t, ft, fnoise = self.noised(fx0)
        forget = per_sample_sse(self.net(fx_t, ft, fcond), fnoise)
        self._group = group
        return {"loss": keep, "keep": keep, "forget": forget}

    def objective(self, losses: dict[str, Tensor]) -> Tensor:
        m = self.duals.shape[0]
        per_group = torch.zeros(m, device=losses["forget"].device, dtype=losses["forget"].dtype)
        per_group = per_group.index_add(0, self._group, losses["forget"]) / self.cfg.forget_batch
        return losses["keep"].mean() - (self.duals.to(per_group) * per_group).sum()

    @torch.no_grad()
    def estimate_constraints(self) -> Tensor:
        """Per group: increase of the forget rows' negative ELBO (nats) of the model over the pretrained one."""
        b = self.bundle
        x0, cond, _, group = self.forget_rows_per_group(self.cfg.n_estimate)
        diff = torch.zeros(x0.shape[0], dtype=x0.dtype, device=x0.device)
        for _ in range(self.cfg.n_t_estimate):
            t = stratified_t(x0.shape[0], b.schedule.T, self.gen, x0.device)
            noise = self.randn_like(x0)
            diff += (elbo_terms(b.schedule, x0, self.net, cond, t=t, noise=noise)
                     - elbo_terms(b.schedule, x0, b.ref, cond, t=t, noise=noise))
        diff /= self.cfg.n_t_estimate
        m = self.duals.shape[0]
        sums = torch.zeros(m, dtype=diff.dtype, device=diff.device).index_add(0, group, diff)
        return sums / self.cfg.n_estimate
