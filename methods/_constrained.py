"""Shared machinery of the primal-dual methods (PAPER.md sections 1-3): one dual variable per constraint, projected dual
ascent, the running constraint estimate. The concept-erasure target they share with ESD is in :mod:`._concept`."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar, Literal

import torch
from torch import Tensor

from unlearnbench.methods.base import Method, MethodConfig
from unlearnbench.protocol import SETTLE_TOL


@dataclass
class ConstrainedConfig(MethodConfig):
    """Settings of a primal-dual method. ``eps`` is the constraint threshold the ``eps`` grid sweeps."""

    eps: float = field(default=1.0, metadata={"help": "constraint threshold (b for KL constraints, eps for lik)"})
    dual_lr: float = field(default=0.05, metadata={"help": "dual ascent step size eta_d"})
    dual_every: int = field(default=10, metadata={"help": "steps between dual updates"})
    dual_warmup: int = field(default=0, metadata={"help": "primal-only steps before the first dual update"})
    dual_init: float = field(default=0.0, metadata={"help": "initial value of every lambda_i"})
    dual_ema: float = field(default=0.5, metadata={"help": "EMA factor of the running constraint estimate (0: none)"})
    dual_decay: float = field(default=0.0, metadata={
        "help": "dual step schedule eta_k = dual_lr / (1 + k / dual_decay) at the k-th dual update (the steps' sum "
                "diverges, as stochastic approximation needs, and they shrink, so the duals stop moving; a decay too "
                "fast for the run freezes them short of lambda*, which the 'constraints met' check catches); 0: a "
                "constant step"})
    dual_decay_start: float = field(default=0.0, metadata={
        "help": "share of `steps` run at the constant step dual_lr before the decay begins (k counts the dual "
                "updates after it)"})
    dual_normalize: bool = field(default=False, metadata={
        "help": "step on the relative violation (violation / |eps|): the same constraint written g/eps >= 1, so one "
                "dual_lr serves thresholds of different sizes"})
    dual_update: str = field(default="additive", metadata={
        "help": "additive: lambda <- lambda + eta * violation (projected dual ascent); multiplicative: the "
                "exponentiated step lambda <- lambda * exp(eta * clip(violation / |eps|, -1, 1)), floored at dual_min: "
                "the step scales with lambda, so duals spanning orders of magnitude (lik's small eps) climb in a few "
                "updates and come down without overshooting through 0"})
    dual_min: float = field(default=1e-3, metadata={
        "help": "with dual_update multiplicative: the floor of every lambda_i (a multiplicative step cannot leave 0); "
                "the starting value when dual_init is below it"})
    primal_anneal: float = field(default=0.0, metadata={
        "help": "share of `steps` at the end over which the primal learning rate falls linearly from lr to "
                "primal_anneal_floor * lr: the last iterate is the model that is scored, and at a constant rate it "
                "fluctuates around the duals' equilibrium (lik on gmm-concept: E_p[P(c|x)] of successive iterates "
                "spreads +-30 % at eps 0.1), so the constraints the duals met on average are missed by the one kept; "
                "0: constant"})
    primal_anneal_floor: float = field(default=0.02, metadata={
        "help": "with primal_anneal: the learning rate's final share (and its share on steps past `steps`)"})
    final_estimates: int = field(default=1, metadata={
        "help": "independent constraint estimates averaged for the final slack and the 'constraints met' verdict; "
                "with 2 or more, a constraint whose threshold lies within two standard errors of the final estimate "
                "(their spread / sqrt(n)) also counts as met, since no estimate of that size can tell it apart"})
    n_estimate: int = field(default=256, metadata={"help": "model samples per constraint estimate"})
    n_t_estimate: int = field(default=4, metadata={"help": "timestep draws per sample in an estimate"})
    met_tol: float = field(default=0.05, metadata={"help": "relative slack counted as 'constraint met' in the record"})
    converge_tol: float = field(default=0.1, metadata={"help": "duals count as converged when their relative change "
                                                               "over the last 20% of steps is at most this"})
    settle_tol: float = field(default=SETTLE_TOL, metadata={"help": "a trial is settled when its duals changed by at most this "
                                                            "(relative) over the last 20% of its steps and every "
                                                            "constraint is met (within met_tol, or within two "
                                                            "standard errors with final_estimates >= 2)"})
    max_steps: int | None = field(default=None, metadata={
        "help": "stop rule: past `steps`, keep training until the trial is settled or has run this many steps in all "
                "(None: stop at `steps`); an unsettled trial is recorded as such and never enters a claim"})
    stop_strict: bool = field(default=False, metadata={
        "help": "with max_steps: the stop rule's check asks every constraint's estimate (final_estimates fresh draws) "
                "to meet its threshold itself, not within met_tol or two standard errors. The lenient check can stop "
                "a model a few per cent short, which the fresh final verdict may then call unmet (digits-concept: 15 "
                "of its 17 unsettled trials had stopped before the cap on a passing check)"})

    dual_margin: float = field(default=0.0, metadata={
        "help": "the dual step aims at a threshold tightened by this share of |eps| (eps * (1 + m) for >=, "
                "eps * (1 - m) for <=), while the stop rule and the recorded verdict judge eps itself: the duals' "
                "equilibrium then sits inside the constraint set, and the last iterate, which fluctuates around it, "
                "meets eps more often (constraint tightening; a solver setting of this project, not in PAPER.md); "
                "0: the dual step aims at eps, as PAPER.md"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (math.isfinite(self.eps)):
            raise ValueError(f"eps must be finite, got {self.eps!r}")
        if self.dual_lr < 0 or self.dual_every < 1 or self.dual_warmup < 0 or self.dual_init < 0:
            raise ValueError("dual_lr, dual_warmup, dual_init must be >= 0 and dual_every >= 1; got "
                             f"{self.dual_lr}, {self.dual_warmup}, {self.dual_init}, {self.dual_every}")
        if not 0 <= self.dual_decay_start < 1:
            raise ValueError(f"dual_decay_start must be in [0, 1), got {self.dual_decay_start}")
        if self.dual_decay < 0 or self.final_estimates < 1:
            raise ValueError(f"dual_decay must be >= 0 and final_estimates >= 1; got {self.dual_decay}, "
                             f"{self.final_estimates}")
        if not (0 <= self.primal_anneal <= 1 and 0 < self.primal_anneal_floor <= 1):
            raise ValueError(f"primal_anneal must be in [0, 1] and primal_anneal_floor in (0, 1]; got "
                             f"{self.primal_anneal}, {self.primal_anneal_floor}")
        if self.dual_update not in ("additive", "multiplicative"):
            raise ValueError(f"dual_update={self.dual_update!r} is not one of: additive, multiplicative")
        if self.dual_update == "multiplicative" and (self.eps == 0 or not self.dual_min > 0):
            raise ValueError(f"dual_update multiplicative needs eps != 0 (the step is relative to |eps|) and "
                             f"dual_min > 0; got eps={self.eps}, dual_min={self.dual_min}")
        if self.dual_normalize and self.eps == 0:
            raise ValueError("dual_normalize divides the violation by |eps|; eps=0 cannot be normalised: choose "
                             "dual_normalize false or eps != 0")
        if not 0 <= self.dual_margin < 1:
            raise ValueError(f"dual_margin must be in [0, 1) (a share of |eps|), got {self.dual_margin}")
        if not 0 <= self.dual_ema < 1:
            raise ValueError(f"dual_ema must be in [0, 1), got {self.dual_ema}")
        if not 0 < self.settle_tol < 1:
            raise ValueError(f"settle_tol must be in (0, 1), got {self.settle_tol}")
        if self.max_steps is not None and self.steps is not None and self.max_steps < self.steps:
            raise ValueError(f"max_steps={self.max_steps} is below steps={self.steps}: the stop rule only extends "
                             f"training; leave it out or choose max_steps >= steps")


@dataclass
class KLConstrainedConfig(ConstrainedConfig):
    """The KL formulations' dual is -inf at ``Lambda >= 1``: the projection keeps ``Lambda <= 1 - delta``."""

    delta: float = field(default=0.05, metadata={"help": "dual projection keeps Lambda <= 1 - delta"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.eps < 0:
            raise ValueError(f"threshold b={self.eps} is impossible: it bounds a KL divergence (increase), choose b >= 0")
        if not 0 < self.delta < 1:
            raise ValueError(f"delta must be in (0, 1), got {self.delta}")


class ConstrainedMethod(Method):
    """A method with constraints ``g_i(theta) >= eps`` (``sense=">="``) or ``<= eps``, one dual variable each.

    Subclasses implement ``estimate_constraints() -> [m]`` (the current g_i) and use ``self.duals`` in their loss.
    ``lambda_cap`` bounds ``Lambda = sum_i lambda_i`` (``1 - delta`` for the KL formulations, whose dual is -inf at
    ``Lambda >= 1``).
    """

    Config: ClassVar[type[ConstrainedConfig]] = ConstrainedConfig
    sense: ClassVar[Literal[">=", "<="]] = ">="

    @property
    def lambda_cap(self) -> float | None:
        """Bound on ``Lambda``: ``1 - delta`` for configs with a ``delta`` (the KL formulations), else none."""
        delta = getattr(self.cfg, "delta", None)
        return None if delta is None else 1.0 - delta

    def __init__(self, cfg: ConstrainedConfig, bundle, generator):
        super().__init__(cfg, bundle, generator)
        m = self.n_constraints()
        if m < 1:
            raise ValueError(f"method {self.name} needs at least one constraint; the task's forget set is empty")
        init = max(cfg.dual_init, cfg.dual_min) if cfg.dual_update == "multiplicative" else cfg.dual_init
        self.duals = torch.full((m,), float(init), dtype=torch.float64)
        self.project()
        self.estimate: Tensor | None = None
        self.n_decayed = 0  # dual updates made in the decay phase
        self.final_se: Tensor | None = None

    def n_constraints(self) -> int:
        return self.bundle.n_constraints

    def estimate_constraints(self) -> Tensor:  # pragma: no cover - abstract in spirit
        raise NotImplementedError

    def violation(self, est: Tensor) -> Tensor:
        """Positive where the constraint is violated: ``eps - g`` for ``>=``, ``g - eps`` for ``<=``."""
        return (self.cfg.eps - est) if self.sense == ">=" else (est - self.cfg.eps)

    def project(self) -> None:
        """Euclidean projection onto ``{lambda >= 0, sum(lambda) <= cap}``."""
        cap = self.lambda_cap
        self.duals.copy_(project_capped_simplex(self.duals, cap) if cap is not None else self.duals.clamp(min=0.0))

    def update_estimate(self, est: Tensor) -> Tensor:
        est = est.detach().to(torch.float64).cpu()
        a = self.cfg.dual_ema
        self.estimate = est if self.estimate is None or a == 0 else a * self.estimate + (1 - a) * est
        return self.estimate

    def dual_lr_now(self) -> float:
        """The step of the next dual update: ``dual_lr / (1 + k / dual_decay)``, k the dual updates made since step
        ``dual_decay_start * steps`` (constant before it, and always at ``dual_decay`` 0)."""
        c = self.cfg
        return c.dual_lr / (1.0 + self.n_decayed / c.dual_decay) if self.decaying() else c.dual_lr

    def primal_lr_scale(self, step: int) -> float:
        """The share of ``lr`` at ``step``: 1, then (``primal_anneal`` > 0) falling linearly over the last
        ``primal_anneal * steps`` steps to ``primal_anneal_floor``, which it keeps past ``steps``."""
        c = self.cfg
        if c.primal_anneal <= 0:
            return 1.0
        start = (1.0 - c.primal_anneal) * c.steps
        if step < start:
            return 1.0
        left = max(0.0, 1.0 - (step - start) / (c.primal_anneal * c.steps))
        return c.primal_anneal_floor + (1.0 - c.primal_anneal_floor) * left

    def decaying(self) -> bool:
        """Whether the dual step decays now (``dual_decay`` > 0 and past ``dual_decay_start * steps``)."""
        return self.cfg.dual_decay > 0 and self.step >= self.cfg.dual_decay_start * self.cfg.steps

    def dual_step(self, est: Tensor) -> Tensor:
        """``lambda <- proj(lambda + eta_k * violation)`` on the running estimate, the violation of the threshold
        tightened by ``dual_margin`` (divided by ``|eps|`` with ``dual_normalize``), or with ``dual_update``
        multiplicative the exponentiated step
        ``lambda <- max(dual_min, lambda * exp(eta_k * clip(violation / |eps|, -1, 1)))`` (mirror ascent under the
        entropy, Kivinen & Warmuth 1997); returns the new duals."""
        running = self.update_estimate(est)
        v = self.violation(running) + self.cfg.dual_margin * abs(self.cfg.eps)  # of the tightened threshold
        if self.cfg.dual_update == "multiplicative":
            rel = (v / abs(self.cfg.eps)).clamp(-1.0, 1.0)
            self.duals.mul_(torch.exp(self.dual_lr_now() * rel))
            self.project()
            self.duals.clamp_(min=self.cfg.dual_min)
        else:
            if self.cfg.dual_normalize:
                v = v / abs(self.cfg.eps)
            self.duals.add_(self.dual_lr_now() * v)
            self.project()
        self.n_decayed += self.decaying()
        return self.duals.clone()

    @torch.no_grad()
    def final_estimate(self) -> Tensor:
        """The mean of ``final_estimates`` independent constraint estimates: the slack and the 'met' verdict; their
        standard error (spread / sqrt(n), n >= 2) is kept in ``self.final_se``."""
        draws = torch.stack([self.estimate_constraints().to(torch.float64).cpu()
                             for _ in range(self.cfg.final_estimates)])
        self.final_se = draws.std(0) / draws.shape[0] ** 0.5 if draws.shape[0] > 1 else None
        return draws.mean(0)

    def dual_floor(self) -> float:
        """Smallest ``||lambda||_1`` the settle rule divides a dual change by: changes of duals near 0 (a constraint
        met with little or no dual) are measured against it, not against their own noise. A tenth of the duals' range
        where they have one (the KL formulations: ``Lambda <= 1 - delta``; fkl: its own), as fkl's floor has been; with
        the multiplicative step, ten times the floor per dual (a dual that close to ``dual_min`` is inactive); 0 where
        the duals have no natural scale (lik's additive step)."""
        if self.cfg.dual_update == "multiplicative":
            return 10.0 * self.cfg.dual_min * self.n_constraints()
        cap = self.lambda_cap
        return 0.0 if cap is None else 0.1 * cap

    def constraints_met(self, est: Tensor, se: Tensor | None = None, strict: bool = False) -> bool:
        """Every constraint met within ``met_tol`` of ``|eps|`` or, given the estimate's standard errors ``se``,
        within two of them; ``strict``: every threshold met itself, no tolerance (the ``stop_strict`` stop check)."""
        if strict:
            return bool((self.violation(est.to(torch.float64).cpu()) <= 0).all())
        tol = torch.full((est.numel(),), self.cfg.met_tol * max(abs(self.cfg.eps), 1e-8), dtype=torch.float64)
        if se is not None:
            tol = torch.maximum(tol, 2.0 * se.to(torch.float64).cpu())
        return bool((self.violation(est.to(torch.float64).cpu()) <= tol).all())

    def state_dict(self) -> dict:
        return {**super().state_dict(), "duals": self.duals.tolist(), "n_decayed": self.n_decayed,
                "estimate": None if self.estimate is None else self.estimate.tolist()}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.duals = torch.tensor(state["duals"], dtype=torch.float64)
        self.n_decayed = int(state.get("n_decayed", 0))
        self.estimate = None if state["estimate"] is None else torch.tensor(state["estimate"], dtype=torch.float64)


def project_capped_simplex(v: Tensor, cap: float) -> Tensor:
    """Euclidean projection of ``v`` [m] onto ``{x >= 0, sum(x) <= cap}``: clamp at 0 if that is inside, else the
    projection onto the scaled simplex ``{x >= 0, sum(x) = cap}`` (sort-based, Duchi et al. 2008)."""
    w = v.clamp(min=0.0)
    if float(w.sum()) <= cap:
        return w
    u = torch.sort(v, descending=True).values
    css = torch.cumsum(u, 0) - cap
    k = torch.arange(1, v.numel() + 1, dtype=v.dtype)
    rho = int(torch.nonzero(u - css / k > 0).max())
    return (v - css[rho] / (rho + 1)).clamp(min=0.0)
