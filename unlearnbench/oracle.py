"""Exact optimal unlearning fronts on 2-D Gaussian mixtures: quadrature on a grid plus dual maximisation.

Every distribution is a vector of log-densities on a uniform grid (cell area ``h^2``); integrals are Riemann sums,
spectrally accurate for Gaussians once ``h`` is below about half a component's standard deviation. PAPER.md:

- rkl (section 1): ``min KL(p||q) s.t. KL(p||q_i) >= b_i``. For ``Lambda = sum lambda_i < 1`` the Lagrangian is
  minimised by ``p_lambda ∝ q prod_i (q/q_i)^{alpha_i}``, ``alpha_i = lambda_i / (1 - Lambda)``, with value
  ``g(lambda) = -(1 - Lambda) log Z(lambda) + sum_i lambda_i b_i`` (Z the normaliser of
  ``exp((log q - sum lambda_i log q_i)/(1 - Lambda))``); ``dg/dlambda_i = b_i - KL(p_lambda||q_i)``.
- lik (section 3): ``min KL(p||q) s.t. E_p r_i <= eps_i``: ``p_lambda ∝ q exp(-sum lambda_i r_i)``,
  ``g = -log Z - sum lambda_i eps_i``, ``dg/dlambda_i = E_{p_lambda} r_i - eps_i``, lambda >= 0 unbounded.
- fkl (section 2): ``min KL(q||p) s.t. KL(q_i||p) >= b_i``: ``p_lambda = (q - sum lambda_i q_i)/(1 - Lambda)``
  where that is >= 0, ``g = KL(q||p_lambda) - sum lambda_i (KL(q_i||p_lambda) - b_i)``,
  ``dg/dlambda_i = b_i - KL(q_i||p_lambda)``; g = -inf outside the set where ``q - sum lambda_i q_i >= 0``.

g is concave; it is maximised with SLSQP (analytic gradients). By strong duality (section 4) the front value is
``g(lambda*)`` = the primal value at ``p_{lambda*}``, and the constraints with ``lambda*_i > 0`` are active.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import minimize
from scipy.special import logsumexp

from unlearnbench.metrics.gmm import GaussianMixture


@dataclass(frozen=True)
class Grid:
    """Uniform 2-D grid ``[lo, hi]^2`` (a box centred on 0) of spacing h; ``points`` [G, 2] float64."""

    lo: float
    hi: float
    h: float

    @property
    def axis(self) -> np.ndarray:
        return np.arange(self.lo, self.hi + 0.5 * self.h, self.h)

    @property
    def points(self) -> np.ndarray:
        a = self.axis
        xx, yy = np.meshgrid(a, a, indexing="ij")
        return np.stack([xx.ravel(), yy.ravel()], 1)

    @property
    def log_cell(self) -> float:
        return 2 * math.log(self.h)

    def edge_mask(self, width: float) -> np.ndarray:
        p = self.points
        return (np.abs(p) > max(abs(self.lo), abs(self.hi)) - width).any(1)


def log_densities(mix: GaussianMixture, grid: Grid) -> np.ndarray:
    """log N_k at every grid point; [K, G]."""
    x = torch.as_tensor(grid.points)
    return mix.component_logpdf(x).T.numpy()


def _weights(logdens: np.ndarray, log_cell: float) -> tuple[np.ndarray, float]:
    """Normalised quadrature weights of an unnormalised log-density and its log-normaliser."""
    log_z = float(logsumexp(logdens)) + log_cell
    return np.exp(logdens + log_cell - log_z), log_z


def _kl(w: np.ndarray, logp: np.ndarray, logq: np.ndarray) -> float:
    """KL(p||q) with quadrature weights w of p and the two log-densities (0 log 0 = 0)."""
    m = w > 0
    return float(np.sum(w[m] * (logp[m] - logq[m])))


def _maximise(neg_g, x0, bounds, constraints=()) -> np.ndarray:
    res = minimize(neg_g, np.asarray(x0, float), jac=True, method="SLSQP", bounds=bounds, constraints=constraints,
                   options={"maxiter": 500, "ftol": 1e-12})
    return np.clip(res.x, [b[0] for b in bounds], [b[1] if b[1] is not None else np.inf for b in bounds])


class ConceptOracle:
    """rkl / lik / equal-weight fronts for erasing components ``erased`` from the mixture ``mix`` (its null prompt).

    Args:
        mix: the pretrained null-prompt mixture q; erased: 0-based component indices (q_i = component i);
        grid: the quadrature grid; must hold every tilted distribution (checked: ``edge_mass``).
    """

    def __init__(self, mix: GaussianMixture, erased: list[int], grid: Grid, delta: float = 1e-4):
        self.grid, self.delta = grid, delta
        comp = log_densities(mix, grid)
        lw = mix.log_w.numpy()[:, None]
        self.logq = logsumexp(comp + lw, 0)
        self.logqi = comp[erased]  # [m, G]
        self.r = np.exp(comp[erased] + lw[erased] - self.logq)  # pretrained posterior P(c_i|x), [m, G]
        self.edge = grid.edge_mask(1.0)
        self.m = len(erased)

    def _stats(self, logp_unnorm: np.ndarray) -> dict:
        w, log_z = _weights(logp_unnorm, self.grid.log_cell)
        logp = logp_unnorm - log_z
        kls = [_kl(w, logp, li) for li in self.logqi]
        return {"kl": _kl(w, logp, self.logq), "kls": kls, "kl_min": min(kls), "masses": (self.r @ w).tolist(),
                "mass_max": float((self.r @ w).max()), "log_z": log_z, "edge_mass": float(w[self.edge].sum())}

    # -- rkl ----------------------------------------------------------------------------------------
    def rkl_tilt(self, alpha) -> dict:
        """p ∝ q prod (q/q_i)^alpha_i and its statistics."""
        alpha = np.broadcast_to(np.asarray(alpha, float), (self.m,))
        return self._stats(self.logq + alpha @ (self.logq - self.logqi))

    def rkl_solve(self, b: float | list[float]) -> dict:
        """Front value and lambda* of ``min KL(p||q) s.t. KL(p||q_i) >= b_i``."""
        b = np.broadcast_to(np.asarray(b, float), (self.m,))
        base = self.rkl_tilt(0.0)
        if all(k >= bi for k, bi in zip(base["kls"], b)):
            return {**base, "lambda": [0.0] * self.m, "alpha": [0.0] * self.m, "dual": 0.0, "status": "inactive"}

        def neg_g(lam):
            lam_tot = lam.sum()
            st = self.rkl_tilt(lam / (1 - lam_tot))
            g = -(1 - lam_tot) * st["log_z"] + lam @ b
            return -g, -(b - np.asarray(st["kls"]))

        cons = [{"type": "ineq", "fun": lambda lam: 1 - self.delta - lam.sum(), "jac": lambda lam: -np.ones_like(lam)}]
        lam = _maximise(neg_g, np.full(self.m, 0.1 / self.m), [(0.0, 1.0)] * self.m, cons)
        alpha = lam / (1 - lam.sum())
        st = self.rkl_tilt(alpha)
        ok = st["edge_mass"] < 1e-6 and lam.sum() < 1 - 2 * self.delta
        return {**st, "lambda": lam.tolist(), "alpha": alpha.tolist(), "dual": -neg_g(lam)[0],
                "status": "ok" if ok else "outside_grid"}

    # -- lik ----------------------------------------------------------------------------------------
    def lik_tilt(self, lam) -> dict:
        lam = np.broadcast_to(np.asarray(lam, float), (self.m,))
        return self._stats(self.logq - lam @ self.r)

    def lik_solve(self, eps: float | list[float]) -> dict:
        """Front value and lambda* of ``min KL(p||q) s.t. E_p P(c_i|x) <= eps_i``."""
        eps = np.broadcast_to(np.asarray(eps, float), (self.m,))
        base = self.lik_tilt(0.0)
        if all(mi <= e for mi, e in zip(base["masses"], eps)):
            return {**base, "lambda": [0.0] * self.m, "dual": 0.0, "status": "inactive"}

        def neg_g(lam):
            st = self.lik_tilt(lam)
            return st["log_z"] + lam @ eps, eps - np.asarray(st["masses"])

        lam = _maximise(neg_g, np.ones(self.m), [(0.0, None)] * self.m)
        st = self.lik_tilt(lam)
        return {**st, "lambda": lam.tolist(), "dual": -neg_g(lam)[0], "status": "ok"}


class DataOracle:
    """fkl fronts: ``min KL(base||p) s.t. KL(q_i||p) >= b_i`` for forget components ``q_i``.

    Args:
        base: the mixture the retention KL is measured against (q, or the retrain mixture).
        forget: one component per constraint (same covariance as the base's components).
        in_base: for each forget component, its index in ``base`` (None if absent). Writing
            ``base - sum lambda_i q_i = rest + sum_i (w_i - lambda_i) q_i`` (w_i its base weight, 0 if absent) keeps
            ``log p_lambda`` exact up to lambda_i = w_i; a negative coefficient digs a hole, checked on the grid with
            relative margin ``rho_min``.
        hull_bound: the largest lambda_i for which ``base - lambda_i q_i >= 0`` far out in the tails: w_i if q_i's
            mean is a vertex of the hull of the base's means, 0 if it lies outside that hull, inf inside it.
    """

    def __init__(self, base: GaussianMixture, forget: GaussianMixture, in_base: list[int | None], grid: Grid,
                 hull_bound: list[float], rho_min: float = 1e-3):
        self.grid, self.rho_min = grid, rho_min
        comp = log_densities(base, grid) + base.log_w.numpy()[:, None]
        self.logq = logsumexp(comp, 0)
        rest = [k for k in range(base.K) if k not in set(i for i in in_base if i is not None)]
        self.log_rest = logsumexp(comp[rest], 0) if rest else np.full_like(self.logq, -np.inf)
        self.w0 = np.array([0.0 if i is None else math.exp(float(base.log_w[i])) for i in in_base])
        self.logqi = log_densities(forget, grid)
        self.m = self.logqi.shape[0]
        self.hull_bound = [float(v) for v in hull_bound]
        self.wq = _weights(self.logq, grid.log_cell)[0]
        self.wi = np.stack([_weights(li, grid.log_cell)[0] for li in self.logqi])
        self.base_kls = [_kl(wi, li, self.logq) for wi, li in zip(self.wi, self.logqi)]  # KL(q_i || base)

    def _parts(self, lam: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """log of the non-negative part P = rest + sum_{c_i>0} c_i q_i and the hole depth H = neg. part / P."""
        c = self.w0 - lam
        c[np.abs(c) <= 1e-9 * (self.w0 + lam)] = 0.0  # lambda_i = w_i up to rounding: the component is just removed
        pos = [self.log_rest] + [math.log(ci) + li for ci, li in zip(c, self.logqi) if ci > 0]
        log_pos = logsumexp(np.stack(pos), 0)
        neg = [(-ci, li) for ci, li in zip(c, self.logqi) if ci < 0]
        hole = sum(np.exp(math.log(a) + li - log_pos) for a, li in neg) if neg else np.zeros_like(log_pos)
        return log_pos, hole

    def stats(self, lam) -> dict:
        lam = np.broadcast_to(np.asarray(lam, float), (self.m,))
        log_pos, hole = self._parts(lam)
        if hole.max() >= 1 or lam.sum() >= 1:
            return {"feasible": False, "min_rel": float(1 - hole.max())}
        logp = log_pos + np.log1p(-hole) - math.log(1 - lam.sum())
        kls = [_kl(wi, li, logp) for wi, li in zip(self.wi, self.logqi)]
        return {"feasible": True, "kl": _kl(self.wq, self.logq, logp), "kls": kls, "kl_min": min(kls),
                "gains": [k - k0 for k, k0 in zip(kls, self.base_kls)], "min_rel": float(1 - hole.max())}

    def solve(self, b: float | list[float]) -> dict:
        """Front value and lambda* for absolute thresholds b_i (use ``base_kls + gain`` for the fkl method's b).

        status: ``inactive`` (the base meets every threshold), ``ok``, or ``beyond``: some threshold is not reached by
        any feasible p_lambda; then ``dual`` (= g at the best feasible lambda) is still a lower bound on the optimal
        retention (the infimum, by strong duality, which no p_lambda attains)."""
        b = np.broadcast_to(np.asarray(b, float), (self.m,))
        base = self.stats(0.0)
        if all(k >= bi for k, bi in zip(base["kls"], b)):
            return {**base, "lambda": [0.0] * self.m, "dual": 0.0, "status": "inactive"}

        def neg_g(lam):
            st = self.stats(lam)
            if not st["feasible"]:  # SLSQP may probe outside; a steep wall back towards feasibility
                return 1e6, 1e6 * np.ones(self.m)
            kls = np.asarray(st["kls"])
            return -(st["kl"] - lam @ (kls - b)), -(b - kls)

        def margin(lam):
            return 1 - self._parts(lam)[1].max() - self.rho_min

        def margin_jac(lam):
            log_pos, hole = self._parts(lam)
            j = int(np.argmax(hole))
            qi_over_pos = np.exp(self.logqi[:, j] - log_pos[j])
            c = self.w0 - lam
            return np.where(c < 0, -qi_over_pos, -hole[j] * qi_over_pos)

        cons = [{"type": "ineq", "fun": margin, "jac": margin_jac}]
        bounds = [(0.0, min(hb, 1.0)) for hb in self.hull_bound]
        lam = _maximise(neg_g, np.zeros(self.m), bounds, cons)
        st = self.stats(lam)
        short = [k < bi - 1e-3 * max(1.0, abs(bi)) for k, bi in zip(st["kls"], b)]
        return {**st, "lambda": lam.tolist(), "dual": -neg_g(lam)[0], "status": "beyond" if any(short) else "ok"}


def interpolate_front(curve: list[list[float]], level: float) -> tuple[float | None, str]:
    """Retention of a tabulated family [[u, r], ...] (ordered weak -> strong, u monotone) at level u.

    Levels on the weak side of the first point get its retention (status ``inactive``: the pretrained model already
    reaches them); past the last point ``(None, "outside_curve")``."""
    u = np.asarray([c[0] for c in curve], float)
    r = np.asarray([c[1] for c in curve], float)
    sign = 1.0 if u[-1] >= u[0] else -1.0
    if sign * (level - u[0]) <= 0:
        return float(r[0]), "inactive"
    if sign * (level - u[-1]) > 0:
        return None, "outside_curve"
    order = np.argsort(sign * u)
    return float(np.interp(sign * level, sign * u[order], r[order])), "ok"


def front_entry(unlearning_metric: str, retention_metric: str, level: float | None, retention: float | None,
                front_value: float | None, curve: list, status: str, **extra) -> dict:
    """One entry of a record's ``oracle.fronts``: the trial's level, the front's retention there and the gap."""
    ok = front_value is not None and retention is not None and level is not None and math.isfinite(level)
    return {"unlearning_metric": unlearning_metric, "retention_metric": retention_metric, "level": level,
            "front_value": front_value, "gap": (retention - front_value) if ok else None, "status": status,
            "curve": curve, **extra}


def concept_curves(o: ConceptOracle, b_hi: float, eps_lo: float, alpha_hi: float, n: int = 30) -> dict:
    """Tabulated fronts for plots: rkl (b -> min KL), lik (eps -> min KL) and the equal-weight (ESD) family."""
    pre = o.rkl_tilt(0.0)
    rkl = [o.rkl_solve(b) for b in np.linspace(pre["kl_min"], b_hi, n)]
    lik = [o.lik_solve(e) for e in np.geomspace(pre["mass_max"], eps_lo, n)]
    alphas = np.concatenate([[0.0], np.geomspace(1e-3, alpha_hi, n - 1)])
    esd = [o.rkl_tilt(a) for a in alphas]
    keep = [r for r in rkl if r["status"] != "outside_grid"]
    return {
        "pretrained": {"kls": pre["kls"], "masses": pre["masses"]},
        "rkl": {"curve": [[r["kl_min"], r["kl"]] for r in keep], "lambda": [r["lambda"] for r in keep]},
        "lik": {"curve": [[r["mass_max"], r["kl"]] for r in lik], "lambda": [r["lambda"] for r in lik]},
        "esd": {"curve": [[s["kl_min"], s["kl"]] for s in esd], "curve_mass": [[s["mass_max"], s["kl"]] for s in esd],
                "alpha": alphas.tolist()},
    }


def data_curves(o: DataOracle, o_retrain: DataOracle, n_points: int, n: int = 30) -> dict:
    """Tabulated fkl fronts (absolute level, equal gain, against the retrain mixture) and the equal-lambda family."""

    def trace(oracle: DataOracle, to_b, level, u0: float) -> dict:
        u_end = level(oracle.solve(to_b(1e3)))  # far beyond: lambda* on the feasibility boundary, the reachable end
        sols = [oracle.solve(to_b(u)) for u in np.linspace(u0, u_end, n)]
        sols = [s for s in sols if s["status"] != "beyond"]
        return {"curve": [[level(s), s["kl"]] for s in sols], "lambda": [s["lambda"] for s in sols], "end": u_end}

    def absolute(s):
        return s["kl_min"]

    def gain(s):
        return min(s["gains"])

    base = np.asarray(o.base_kls)
    lam_max = min(min(o.hull_bound), 1.0 / n_points)
    equal = [o.stats(lam) for lam in np.linspace(0.0, lam_max, n)]
    return {
        "pretrained": {"kls": o.base_kls, "retrain_kls": o_retrain.base_kls},
        "fkl": trace(o, lambda u: np.full(o.m, u), absolute, min(o.base_kls)),
        "fkl_gain": trace(o, lambda g: base + g, gain, 0.0),
        "fkl_retrain": trace(o_retrain, lambda u: np.full(o.m, u), absolute, min(o_retrain.base_kls)),
        "equal": {"curve": [[s["kl_min"], s["kl"]] for s in equal if s["feasible"]],
                  "lambda": np.linspace(0.0, lam_max, n).tolist()},
    }


def solution_entry(unlearning_metric: str, retention_metric: str, level: float | None, retention: float | None,
                   sol: dict | None, curve: list) -> dict:
    """:func:`front_entry` from a ``*_solve`` result: the front value only where p_{lambda*} attains it."""
    if sol is None:
        return front_entry(unlearning_metric, retention_metric, level, retention, None, curve, "missing")
    attained = sol["status"] in ("ok", "inactive")
    extra = {"lambda_star": sol["lambda"]}
    if "alpha" in sol:
        extra["alpha_star"] = sol["alpha"]
    if not attained:  # g(lambda) at the best feasible lambda: a lower bound on the optimal retention
        extra["dual_bound"] = sol.get("dual")
    return front_entry(unlearning_metric, retention_metric, level, retention, sol["kl"] if attained else None, curve,
                       sol["status"], **extra)


def concept_report(o: ConceptOracle, curves: dict, u: float | None, mass: float | None, r: float | None) -> dict:
    """``oracle.fronts`` of a concept trial at levels u = kl_concept_min, mass = forgotten_mass, retention r."""
    fronts = {
        "rkl": solution_entry("kl_concept_min", "kl_pretrained", u, r, o.rkl_solve(u) if u is not None else None,
                              curves["rkl"]["curve"]),
        "lik": solution_entry("forgotten_mass", "kl_pretrained", mass, r,
                              o.lik_solve(mass) if mass is not None else None, curves["lik"]["curve"]),
    }
    esd = curves["esd"]
    for key, unl, lvl, curve in (("esd", "kl_concept_min", u, esd["curve"]),
                                 ("esd_mass", "forgotten_mass", mass, esd["curve_mass"])):
        fv, status = interpolate_front(curve, lvl) if lvl is not None else (None, "missing")
        alpha = interpolate_front([[c[0], a] for c, a in zip(curve, esd["alpha"])], lvl)[0] if fv is not None else None
        fronts[key] = front_entry(unl, "kl_pretrained", lvl, r, fv, curve, status, alpha_at_level=alpha)
    return fronts


def data_oracles(mix: GaussianMixture, forget: list[int], retain: list[int]) -> tuple[DataOracle, DataOracle]:
    """fkl oracles against q and against the retrain mixture, for equal-covariance isotropic components."""
    from scipy.spatial import ConvexHull, Delaunay

    pts = mix.means.numpy()
    s = float(mix.evals.max().sqrt())
    L = float(np.abs(pts).max()) + 6 * s
    grid = Grid(-L, L, s / 4)
    hull = set(ConvexHull(pts).vertices.tolist())
    inside = Delaunay(pts[retain]).find_simplex(pts[forget]) >= 0
    w = mix.log_w.exp().numpy()
    o = DataOracle(mix, mix.subset(forget), forget, grid, [w[i] if i in hull else math.inf for i in forget])
    o_r = DataOracle(mix.subset(retain), mix.subset(forget), [None] * len(forget), grid,
                     [math.inf if ins else 0.0 for ins in inside])
    return o, o_r


def data_report(o: DataOracle, o_r: DataOracle, curves: dict, u: float | None, gain: float | None, r: float | None,
                rr: float | None) -> dict:
    """``oracle.fronts`` of a data trial: u = forget_kl_min, gain = forget_kl_gain_min, r = kl_pretrained,
    rr = kl_retrain. Levels beyond a front's end get status "beyond", no front value and no gap."""
    eq, eq_status = interpolate_front(curves["equal"]["curve"], u) if u is not None else (None, "missing")
    return {
        "fkl": solution_entry("forget_kl_min", "kl_pretrained", u, r, o.solve(u) if u is not None else None,
                              curves["fkl"]["curve"]),
        "fkl_gain": solution_entry("forget_kl_gain_min", "kl_pretrained", gain, r,
                                   o.solve(np.asarray(o.base_kls) + gain) if gain is not None else None,
                                   curves["fkl_gain"]["curve"]),
        "fkl_retrain": solution_entry("forget_kl_min", "kl_retrain", u, rr, o_r.solve(u) if u is not None else None,
                                      curves["fkl_retrain"]["curve"]),
        "equal": front_entry("forget_kl_min", "kl_pretrained", u, r, eq, curves["equal"]["curve"], eq_status),
    }
