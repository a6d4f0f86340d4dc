"""``gmm-data``: the smoothed empirical distribution ``q = (1/N) sum_n N(x_n, s^2 I)`` of N clustered points plus an
outlier; forgetting point i means ``q_u^i = N(x_i, s^2 I)`` (PAPER.md section 2); ``lambda_i = 1/N`` is retraining.
The shared machinery is :mod:`unlearnbench.tasks._gmm`.
"""
from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from unlearnbench.metrics.gmm import ExactEps, GaussianMixture
from unlearnbench.tasks._gmm import _GMMTask, _smoke, _value
from unlearnbench.tasks.base import SETTLING, MetricValue, ModelBundle, add_pretrained


DATA_CENTRES = [(-1.4, -0.9), (1.3, -0.8), (0.0, 1.3)]  # gmm-data's clusters


DATA_CLUSTER_STD = 0.45


def data_points(seed: int = 7) -> np.ndarray:
    """The gmm-data training set: three clusters (24, 20, 15 points) and one outlier, last; [60, 2]."""
    rng = np.random.default_rng(seed)
    sizes = [24, 20, 15]
    pts = [np.asarray(c) + DATA_CLUSTER_STD * rng.standard_normal((n, 2)) for c, n in zip(DATA_CENTRES, sizes)]
    return np.concatenate(pts + [np.array([[2.0, 1.8]])]).astype(np.float64)


class GMMDataTask(_GMMTask):
    """Forget training points of a smoothed empirical 2-D distribution (three clusters plus an outlier)."""

    name = "gmm-data"
    kind = "data"
    # "outlier": the isolated last point; "densest": the cluster point of highest q density (hardest to forget)
    forget_sets: ClassVar[dict[str, list[str]]] = {"pair": ["outlier", "densest"], "one": ["outlier"],
                                                   "dense": ["densest"]}
    # scaling_norm, the negative term's gradient norm; the positive term's is ~3 at the pretrained model. Under Adam any
    # consistent negative direction accumulates: at 0.1 and above every trial blows the forget points' density up
    # (forget KL 1e5-1e65 nats, measured with 60 and 600 steps), so the grid spans the onset
    _siss = [0.001, 0.003, 0.01, 0.03, 0.1, 0.3]
    # fkl's b stops at 0.7: held at both dual bounds from the first step for 600 steps (the most any dual ascent can
    # give it), fkl raises the densest point's KL by 0.601 / 0.662 / 0.872 / 0.503 / 0.720 nats (seeds 0-4), so no
    # seed reaches b = 1.0, which the grid held until 2026-12-07 (issue 20, item 6: a threshold a method cannot reach
    # is not on its grid; its 10 trials are in leaderboards/superseded). The exact oracle reaches it, the network in
    # its step budget does not.
    _dense = {"fkl": [0.03, 0.1, 0.2, 0.4, 0.7], "siss": _siss}
    _one = {"fkl": [0.3, 1.0, 3.0, 6.0, 10.0, 15.0], "siss": _siss}
    grids_by_forget: ClassVar[dict] = {name: {"eps": g, "smoke": _smoke(g)}
                                       for name, g in (("pair", _dense), ("one", _one), ("dense", _dense))}
    grids = grids_by_forget["pair"]
    # lambda* lives on the 1/N scale (N = 60); denoising fine-tuning noise at lr 1e-3 swamps the weak end of the grid
    default_steps = 600
    # dual_lr 0.01 at a constant step swung lambda between 0 and its cap 1/N = 0.017 every few updates (measured), and
    # 0.001 (6 % of the cap per nat of violation) left the duals climbing at 600 steps (5 of 50 trials settled). Since
    # 2026-12-08: 0.01 for the first half, then gmm-concept's decay dual_lr / (1 + k/5), training on until settled (up
    # to 1500 steps) and stopping only on estimates that meet b: 24 of 25 settled on seeds 0-4, against 22 without the
    # strict stop, 22 with 0.003 and 2 of 10 at the old defaults (leaderboards/tuning/README.md, "gmm-data: duals")
    # final_estimates: the "constraints met" verdict on 8 estimates and their standard error (unlearnbench.methods._constrained)
    # Equal tuning effort (scripts/tune_defaults.py, the rule in the README): lr 1e-4 / 3e-4 / 1e-3 x 300 / 600 steps
    # for every entry on validation seeds 100-102, the followed-up pairs on 103-106 (NegGrad: its reference's 5e-5
    # against 1e-4 on 100-106). Every default stayed: fkl, EraseDiff and NegGrad were their search's best; naive
    # deletion's lr 3e-4 scored +0.030 over its 1e-3 (p = 0.20), SISS's lr 1e-3 +0.044 over its 3e-4 (p = 0.27)
    method_defaults = {"fkl": {"lr": 3e-4, "dual_lr": 0.01, "n_estimate": 256, **SETTLING, "max_steps": 1500,
                               "stop_strict": True},
                       "siss": {"lr": 3e-4}}
    # KLs in nats between 2-D densities: a model 50 nats from the retrained one, or from the pretrained one, has broken
    # down (SISS at scaling_norm >= 0.1 reaches 1e11-1e22; at 0.001-0.01 it puts one forget point 1e4-1e6 nats away and
    # kl_pretrained at 100-1e5, far past the retrained model, which is a few nats from the pretrained one). The forget
    # KLs and NLL are unlearning distances, open above: a model far past the retrained one is judged by the protocol's
    # overshoot limit instead (unlearnbench.protocol)
    sane_ranges = {"kl_retrain": (-1.0, 50.0), "kl_pretrained": (-1.0, 50.0), "forget_kl*": (-1.0, None),
                   "forget_nll": (-10.0, None)}
    # 0.05 nats: a sixth of the pretrained-to-retrained KL of the concept task, the same scale here
    equivalence_margins = {"kl_pretrained": 0.05, "kl_retrain": 0.05}
    pretrained_points = ("kl_pretrained", "kl_retrain", "forget_kl_min", "forget_kl_gain_min")
    axes = [("forget_kl_min", "kl_pretrained"), ("forget_kl_min", "kl_retrain"),
            ("forget_kl_gain_min", "kl_pretrained")]
    emits = dict.fromkeys(["kl_pretrained", "kl_retrain", "forget_kl_{i}", "forget_kl_gain_{i}", "forget_kl_min",
                           "forget_kl_gain_min", "forget_nll"])  # specs in unlearnbench.metrics.gmm
    default_options = {**_GMMTask.base_options, "data_noise": 0.25}

    def layout(self) -> dict:
        return {"points": data_points().round(6).tolist(), "data_noise": self.options["data_noise"]}

    def exact(self) -> ExactEps:
        pts = torch.as_tensor(data_points())
        s, N = float(self.options["data_noise"]), pts.shape[0]
        mix = GaussianMixture(pts, torch.eye(2, dtype=torch.float64).expand(N, 2, 2) * s * s, torch.ones(N))
        return ExactEps(mix, mix.log_w[None].clone(), self.schedule)

    def split(self) -> tuple[list[int], list[int]]:
        """(forget rows, retain rows) of ``data_points()``."""
        pts = data_points()
        logq = self.exact().mix.logpdf(torch.as_tensor(pts[:-1])).numpy()
        named = {"outlier": len(pts) - 1, "densest": int(np.argmax(logq))}
        forget = [named[n] for n in self.forget_sets[self.forget_name]]
        return forget, [i for i in range(len(pts)) if i not in forget]

    reference_points = {
        # worst forget-point KL(q_u^i || p): 1.48 nats is the pretrained model's (the dense point); KL 1 nat bounds.
        ("forget_kl_min", "kl_pretrained"): (1.48, 1.0),
        ("forget_kl_min", "kl_retrain"): (1.48, 1.0),
        # the same as an increase over the pretrained model (what fkl's threshold b constrains): 0 = not forgotten.
        ("forget_kl_gain_min", "kl_pretrained"): (0.0, 1.0),
    }
    attack_measure = "forget_mass"

    def forget_columns(self, bundle: ModelBundle) -> list[int]:
        """The mixture components of the forget points (the robustness measure's columns)."""
        return self.split()[0]

    def mia_sets(self, bundle: ModelBundle, settings: dict[str, Any]) -> tuple[Tensor, Tensor]:
        """The forget points, and held-out draws from each one's generating cluster (the outlier: its own
        neighbourhood)."""
        gen = torch.Generator().manual_seed(int(settings["sample_seed"]) + 1)
        m = int(settings["mia_heldout"])
        members = bundle.forget_data.cpu()
        centres = torch.tensor(DATA_CENTRES)
        out = []
        for x in members:
            d = (centres - x).norm(dim=1)
            c = centres[int(d.argmin())] if float(d.min()) < 3 * DATA_CLUSTER_STD else x
            out.append(c + DATA_CLUSTER_STD * torch.randn((m // len(members), 2), generator=gen))
        return members, torch.cat(out).float()

    def forget_ids(self) -> list[int]:
        """What the retrained reference is retrained without: the forget rows."""
        return self.split()[0]

    def retrain_exact(self) -> ExactEps:
        """The exact retrain distribution: the smoothed mixture of the retained points (the oracle's)."""
        _, keep = self.split()
        sub = self.exact().mix.subset(keep)
        return ExactEps(sub, sub.log_w[None].clone(), self.schedule)

    def dual_bounds(self) -> list[float]:
        """fkl's exact dual bounds, the oracle's: the largest ``lambda_i`` for which ``q - sum_j lambda_j q_u^j``
        stays a density (its negative part under ``1 - rho_min`` of the positive one on the oracle's grid, as
        :meth:`DataOracle.solve` requires) with every other group at its own share ``w_j``, capped by the hull bound
        (``w_i`` for a point on the hull of the data, such as the outlier). An interior point's bound exceeds its share
        ``1/N``: its neighbours' density covers the hole that removing more than its own mass digs (the densest point:
        see ``tests/test_gmm.py``)."""
        if "dual_bounds" not in self._oracle_cache:
            o = self._oracles()[0]
            out = []
            for i in range(o.m):
                def ok(v: float, i: int = i) -> bool:
                    lam = o.w0.copy()
                    lam[i] = v
                    return float(o._parts(lam)[1].max()) <= 1 - o.rho_min and lam.sum() < 1
                cap = min(o.hull_bound[i], 1.0)
                lo, hi = float(o.w0[i]), cap
                if ok(hi):
                    out.append(hi)
                    continue
                for _ in range(60):  # bisection: ok(lo) holds (the share removes the component), ok(hi) does not
                    mid = 0.5 * (lo + hi)
                    lo, hi = (mid, hi) if ok(mid) else (lo, mid)
                out.append(lo)
            self._oracle_cache["dual_bounds"] = out
        return list(self._oracle_cache["dual_bounds"])

    def build(self, seed: int, device: torch.device | str = "cpu") -> ModelBundle:
        pts = torch.as_tensor(data_points(), dtype=torch.float32)
        F, R = self.split()
        bundle = self._bundle(device, train_data=pts, forget_data=pts[F], retain_data=pts[R],
                              data_noise=float(self.options["data_noise"]))
        bundle.extras["dual_bounds"] = self.dual_bounds()
        return bundle

    @torch.no_grad()
    def evaluate(self, bundle: ModelBundle, seed: int) -> dict[str, MetricValue]:
        """Forward KLs on exact samples of q, q_retrain and each q_u^i, with log p_theta by the PF-ODE."""
        from unlearnbench.metrics.gmm import mc_value, register_indexed

        n = int(self.options["eval_samples"])
        nr, nu = max(n // 2, 2), max(n // 4, 2)
        gen = torch.Generator().manual_seed(int(seed))
        F, R = self.split()
        mix = self.exact().mix
        retrain, forget = mix.subset(R), mix.subset(F)
        s = float(self.options["data_noise"])
        xq, xr = mix.sample(n, gen), retrain.sample(nr, gen)
        noise = torch.randn((nu * len(F), 2), generator=gen, dtype=torch.float64)
        xu = forget.means.repeat_interleave(nu, 0) + s * noise  # samples of each q_u^i = N(x_i, s^2 I)
        x = torch.cat([xq, xr, xu, forget.means])
        lp = self._loglik(bundle.net, x.float().to(bundle.device)).cpu()
        lq, lr, lu = lp[:n], lp[n:n + nr], lp[n + nr:n + nr + nu * len(F)].view(len(F), nu)
        out = {"kl_pretrained": mc_value(mix.logpdf(xq) - lq, "retention", False),
               "kl_retrain": mc_value(retrain.logpdf(xr) - lr, "retention", False)}
        kls, gains = [], []
        for i in range(len(F)):
            xi = xu[i * nu:(i + 1) * nu]
            kls.append(mc_value(forget.component_logpdf(xi)[:, i] - lu[i], "unlearning", True))
            gains.append(mc_value(mix.logpdf(xi) - lu[i], "info", True))
            out[register_indexed("forget_kl", i)] = kls[-1]
            out[register_indexed("forget_kl_gain", i)] = gains[-1]
        out["forget_kl_min"] = min(kls, key=lambda m: m.value)
        g = min(gains, key=lambda m: m.value)
        out["forget_kl_gain_min"] = MetricValue(g.value, g.stderr, g.n, "unlearning", True)
        nll = -lp[-len(F):]
        out["forget_nll"] = MetricValue(float(nll.mean()), None, len(F), "unlearning", True)
        # the pretrained model's point: the same estimators with the exact log q on the same samples
        add_pretrained(out, "kl_pretrained", MetricValue(0.0, 0.0, n, "retention", False))
        add_pretrained(out, "kl_retrain", mc_value(retrain.logpdf(xr) - mix.logpdf(xr), "retention", False))
        pre = [mc_value(forget.component_logpdf(xu[i * nu:(i + 1) * nu])[:, i] - mix.logpdf(xu[i * nu:(i + 1) * nu]),
                        "unlearning", True) for i in range(len(F))]
        add_pretrained(out, "forget_kl_min", min(pre, key=lambda m: m.value))
        add_pretrained(out, "forget_kl_gain_min", MetricValue(0.0, 0.0, nu, "unlearning", True))
        return out

    # -- oracle ---------------------------------------------------------------------------------------------------
    def _oracles(self):
        from unlearnbench.oracle import data_oracles

        if "oracles" not in self._oracle_cache:
            self._oracle_cache["oracles"] = data_oracles(self.exact().mix, *self.split())
        return self._oracle_cache["oracles"]

    def oracle(self) -> dict:
        """Exact fkl fronts (absolute level, equal gain, against retrain) and the equal-lambda family."""
        from unlearnbench.oracle import data_curves

        return self._curves(lambda: data_curves(*self._oracles(), len(data_points())))

    def oracle_report(self, metrics: dict[str, MetricValue], method: str, duals: list[float] | None) -> dict:
        """The record's ``oracle`` field; levels beyond a front's end get status "beyond" and no gap."""
        from unlearnbench.oracle import data_report

        v = {k: _value(metrics, k) for k in ("forget_kl_min", "forget_kl_gain_min", "kl_pretrained", "kl_retrain")}
        fronts = data_report(*self._oracles(), self.oracle(), *v.values())
        return {"fronts": fronts, "lambda": duals, "method_front": "fkl" if method == "fkl" else None}
