"""``gmm-concept``: five components ("concepts") with unequal weights and a shared isotropic covariance (so that the
rkl tilt ``q (q/q_i)^alpha`` is normalisable for every alpha). Prompt 0 is the whole mixture, prompt k its component
k. Methods erase concepts from the null prompt; the scored distribution is ``p_theta(.|0)`` (PAPER.md section 1
with ``q = q(.|0)``, ``q_u^i = q(.|c_i)``). The shared machinery is :mod:`unlearnbench.tasks._gmm`.
"""
from __future__ import annotations

import math
from typing import ClassVar

import numpy as np
import torch
from torch import Tensor

from unlearnbench.metrics.gmm import ExactEps, GaussianMixture
from unlearnbench.tasks._gmm import _GMMTask, _smoke, _value
from unlearnbench.tasks.base import SETTLING, MetricValue, ModelBundle, add_pretrained


CONCEPT_LAYOUT = {
    "names": ["A", "B", "C", "D", "E"],
    "means": [[-2.0, 0.8], [0.2, 2.2], [2.4, 0.2], [-0.6, -1.6], [0.5, -1.4]],
    "weights": [0.28, 0.22, 0.14, 0.22, 0.14],
    "std": 0.45,
}


class GMMConceptTask(_GMMTask):
    """Erase mixture components (concepts) from the null prompt of a 2-D five-component Gaussian mixture."""

    name = "gmm-concept"
    kind = "concept"
    # "pair": C (well separated) and E (overlapping the kept D); "one": C alone. Prompt ids are 1-based.
    forget_sets: ClassVar[dict[str, list[int]]] = {"pair": [3, 5], "one": [3]}
    # pair grids placed by one rule for every entry (scripts/place_grid.py on the 10-seed records of the earlier grids,
    # 18-45 / 0.1-0.001 / 0.01-0.22 / 0.02-0.44): the values whose seed-mean kl_concept_min lands 30, 55, 80, 105, 130
    # and 160 % of the way from the pretrained model (15.69 nats) to the retrained one (20.55), a value just past each
    # of the protocol's levels and two past the target. The earlier grids put 3 to 5 of 6 values past the retrained
    # model; lik's eps 0.001 was also below what 512 samples can measure (an estimate's standard error ~ its mean).
    # ESD's grid was placed again after the tuning search below moved its defaults (lr 3e-4, 800 steps): from a pilot
    # of 7 values x validation seeds 100-104 at those defaults (0.0125-0.8)
    _rkl_pair = [16.9, 18.3, 19.7, 21.3, 22.7, 24.4]
    _lik_pair = [0.118, 0.0897, 0.0683, 0.0521, 0.0347, 0.0207]
    _lik, _rkl_one = [0.1, 0.05, 0.02, 0.01, 0.003, 0.001], [27.0, 30.0, 33.0, 37.0, 42.0, 50.0]
    _pair = {"rkl": _rkl_pair, "rkl-is": _rkl_pair, "lik": _lik_pair, "lik-is": _lik_pair,
             "rkl-fixed": [0.0135, 0.0302, 0.0416, 0.0574, 0.0693, 0.0847],
             "esd": [0.0403, 0.0706, 0.104, 0.123, 0.146, 0.179]}
    _one = {"rkl": _rkl_one, "rkl-is": _rkl_one, "lik": _lik, "lik-is": _lik,
            "rkl-fixed": [0.003, 0.01, 0.02, 0.04, 0.07, 0.12], "esd": [0.003, 0.01, 0.02, 0.04, 0.07, 0.12]}
    grids_by_forget: ClassVar[dict] = {"pair": {"eps": _pair, "smoke": _smoke(_pair)},
                                       "one": {"eps": _one, "smoke": _smoke(_one)}}
    grids = grids_by_forget["pair"]
    axes = [("kl_concept_min", "kl_pretrained"), ("forgotten_mass", "kl_pretrained")]
    emits = dict.fromkeys(["kl_pretrained", "kl_concept_{i}", "mass_concept_{i}", "kl_concept_min", "forgotten_mass",
                           "forgotten_mass_total", "kl_kept"])  # specs in unlearnbench.metrics.gmm
    # dual steps fitted to this task's scales: KLs of ~15-45 nats with alpha* ~ 0.01-0.3; masses with lambda* ~ 0.5-50
    # rkl-is / lik-is regress onto the noise (denoising score matching), a noisier target than rkl's exact eps*: a
    # smaller step and a larger batch (gap to the exact front 0.30 -> 0.06 nats at b = 25, measured)
    # ESD: the erased concepts live in the null prompt's distribution, so ESD erases them from it (esd_sd.py's
    # --erase_from); the MLP has no cross-attention, so every method trains all weights
    # rkl: 800 steps, the dual step constant for the first half and then dual_lr / (1 + k/5), the met verdict on 8
    # final estimates: 11 of 12 trials settled (b = 18-45, seeds 0-2; scripts/dual_settle.py), against 8 of 12 with
    # the constant step over 400 steps
    _settle = {"steps": 800, **SETTLING}
    # lik: the same schedule plus the primal rate annealed over the last 30 % of the steps. At a constant rate the
    # scored last iterate swung E_p[P(c|x)] +-30 % around the level the duals held on average (eps 0.1, seed 1: 0.133
    # against eps 0.1 with settled duals). Annealed, 6 of 6 settled at eps 0.1-0.02 (seeds 0-1,
    # scripts/dual_settle.py) and 55 of 60 on the placed grid at 10 seeds, where the constant rate had settled 10 of
    # 60. At the weak end (eps 0.118, duals ~0.25) a dual step of estimate noise is a 6-13 % change, so the stop rule
    # trains on (at the decayed dual step) until settled, up to 1600 steps. rkl-is and lik-is take their
    # formulation's schedule
    _lik_settle = {**_settle, "primal_anneal": 0.3, "max_steps": 1600}
    # Equal tuning effort (scripts/tune_defaults.py): every entry ran the same search, lr 3e-4 / 1e-3 / 3e-3 x 400 /
    # 800 steps over its grid on validation seeds 100 and 101, scored by the primary hypervolume of the seed-mean
    # front (clipped at the retrained model). An entry whose best setting was not its defaults ran both on seeds
    # 102-105, and the best replaced the defaults where a paired bootstrap over the six seeds put it above them
    # (one-sided 5 %):
    # - ESD: 13.01 at lr 3e-4 / 800 steps against 11.69 at its earlier lr 1e-3 / 400 (p = 0.0015); at 1e-3 its last
    #   iterate swung the erased concepts' KL by 5-10 nats between neighbouring grid values. Changed.
    # - rkl: +0.11 at lr 3e-4 (its earlier lr 1e-3, both 800 steps; p = 0.017). Changed.
    # - lik: lr 1e-3 / 400 steps +0.021 over its 800 (p = 0.43). Kept.
    # - lik-is: lr 3e-4 / 400 steps, +0.01 over its 800 on seeds 100-101, scored the same over six (13.18). Kept.
    # - rkl-fixed, rkl-is: their defaults were their best. The trials: leaderboards/tuning
    _esd_tuned = {"lr": 3e-4, "steps": 800}
    method_defaults = {"rkl": {"dual_lr": 0.002, "n_estimate": 512, "lr": 3e-4, **_settle},
                       "rkl-is": {"dual_lr": 0.002, "n_estimate": 512, "lr": 3e-4, "batch_size": 512, **_settle},
                       "lik": {"n_estimate": 512, **_lik_settle},
                       "lik-is": {"n_estimate": 512, "lr": 3e-4, "batch_size": 512, **_lik_settle},
                       "esd": {"erase_from": "null", **_esd_tuned}}
    scored_prompt = "null"
    pretrained_points = ("kl_pretrained", "kl_concept_min", "forgotten_mass")
    # KLs in nats: a model 200 nats from the pretrained one (or from its kept concepts) has broken down; the erased
    # concepts' KLs are unlearning distances, open above (the pretrained model is ~15-30 nats from each)
    sane_ranges = {"kl_pretrained": (-1.0, 200.0), "kl_kept": (-1.0, 200.0), "kl_concept_*": (-1.0, None),
                   "mass_*": (0.0, 1.0), "forgotten_mass*": (0.0, 1.0)}
    # the retrained model is 0.28 nats from the pretrained one; 0.05 nats (a sixth of that) is "the same retention"
    equivalence_margins = {"kl_pretrained": 0.05, "kl_kept": 0.05}
    default_options = dict(_GMMTask.base_options)

    def layout(self) -> dict:
        return CONCEPT_LAYOUT

    def exact(self) -> ExactEps:
        L = CONCEPT_LAYOUT
        K = len(L["means"])
        mix = GaussianMixture(torch.tensor(L["means"]), torch.eye(2).expand(K, 2, 2) * L["std"] ** 2,
                              torch.tensor(L["weights"]))
        table = torch.full((K + 1, K), -math.inf, dtype=torch.float64)
        table[0] = mix.log_w
        table[1:].fill_diagonal_(0.0)
        return ExactEps(mix, table, self.schedule)

    @property
    def erased(self) -> list[int]:
        return list(self.forget_sets[self.forget_name])

    @property
    def kept(self) -> list[int]:
        return [k for k in range(1, len(CONCEPT_LAYOUT["means"]) + 1) if k not in self.erased]

    reference_points = {
        # worst-concept KL(p || q_u^i): the pretrained model's (16.09 nats for the pair, 25.74 for one) is "nothing
        # erased"; 16 is used for both. KL(p || q) of 3 nats bounds the strong end of the default grids.
        ("kl_concept_min", "kl_pretrained"): (16.0, 3.0),
        # max erased mass E_p[P(c_i|x)]: 0.14 is the pretrained model's (both erased components weigh 0.14).
        ("forgotten_mass", "kl_pretrained"): (0.14, 3.0),
    }
    attack_measure = "forgotten_mass"

    def forget_columns(self, bundle: ModelBundle) -> list[int]:
        """The mixture components of the erased concepts (the robustness measure's columns)."""
        return [k - 1 for k in bundle.forget_concepts]

    def forget_ids(self) -> list[int]:
        """What the retrained reference is retrained without: the erased components."""
        return self.erased

    def retrain_exact(self) -> ExactEps:
        """The exact retrain distribution: the null prompt's mixture without the erased components (renormalised).
        The erased prompts' rows copy that null row (a model that never saw the concept has no meaning for its
        word); the kept prompts are unchanged."""
        exact = self.exact()
        table = exact.log_table.clone()
        null = table[0].clone()
        null[[k - 1 for k in self.erased]] = -math.inf
        null = null - torch.logsumexp(null, 0)
        table[0] = null
        for k in self.erased:
            table[k] = null
        return ExactEps(exact.mix, table, self.schedule)

    def build(self, seed: int, device: torch.device | str = "cpu") -> ModelBundle:
        names = {0: "null", **{k + 1: n for k, n in enumerate(CONCEPT_LAYOUT["names"])}}
        bundle = self._bundle(device, forget_concepts=self.erased, retain_concepts=self.kept, concept_names=names)
        ref = bundle.ref
        bundle.posterior = lambda x_t, t, concepts: ref.posterior(x_t, t, [c - 1 for c in concepts])

        def log_ratio(x0: Tensor, concepts: list[int]) -> Tensor:
            comp = ref.mix.component_logpdf(x0)  # exact log q(x0|c_i) - log q(x0|null), [B, m]
            return (comp[:, [c - 1 for c in concepts]] - ref.mix.logpdf(x0)[:, None]).to(x0.dtype)

        bundle.log_ratio = log_ratio
        return bundle

    @torch.no_grad()
    def evaluate(self, bundle: ModelBundle, seed: int) -> dict[str, MetricValue]:
        """KLs by probability-flow ODE samples of p_theta with their exact log-density (see module docstring)."""
        from unlearnbench.metrics.gmm import mc_value, register_indexed

        n = int(self.options["eval_samples"])
        nk = max(n // 2, 2)
        conds = [torch.zeros(n, dtype=torch.long)] + [torch.full((nk,), k) for k in self.kept]
        gen = torch.Generator().manual_seed(int(seed))
        x, logp = self._sample_logp(bundle.net, torch.cat(conds).to(bundle.device), gen)
        x, logp = x.double().cpu(), logp.cpu()
        mix = self.exact().mix  # a CPU copy: scoring happens on the CPU in float64
        x0, lp0 = x[:n], logp[:n]
        comp = mix.component_logpdf(x0)
        resp = mix.responsibilities(x0)
        out = {"kl_pretrained": mc_value(lp0 - mix.logpdf(x0), "retention", False)}
        for k in self.erased:
            out[register_indexed("kl_concept", k)] = mc_value(lp0 - comp[:, k - 1], "unlearning", True)
            out[register_indexed("mass_concept", k)] = mc_value(resp[:, k - 1], "unlearning", False)
        out["kl_concept_min"] = min((out[f"kl_concept_{k}"] for k in self.erased), key=lambda m: m.value)
        out["forgotten_mass"] = max((out[f"mass_concept_{k}"] for k in self.erased), key=lambda m: m.value)
        out["forgotten_mass_total"] = mc_value(resp[:, [k - 1 for k in self.erased]].sum(1), "info", False)
        kept = []
        for j, k in enumerate(self.kept):
            sl = slice(n + j * nk, n + (j + 1) * nk)
            kept.append(mc_value(logp[sl] - mix.component_logpdf(x[sl])[:, k - 1], "retention", False))
        if kept:
            se = math.sqrt(sum(m.stderr ** 2 for m in kept)) / len(kept)
            mean = float(np.mean([m.value for m in kept]))
            out["kl_kept"] = MetricValue(mean, se, nk * len(kept), "retention", False)
        # the pretrained model's point, by the same estimators on exact samples of q (where the exact fronts start)
        xq = mix.sample(n, gen)
        lq, cq, rq = mix.logpdf(xq), mix.component_logpdf(xq), mix.responsibilities(xq)
        add_pretrained(out, "kl_pretrained", MetricValue(0.0, 0.0, n, "retention", False))
        add_pretrained(out, "kl_concept_min", min((mc_value(lq - cq[:, k - 1], "unlearning", True)
                                                   for k in self.erased), key=lambda m: m.value))
        add_pretrained(out, "forgotten_mass", max((mc_value(rq[:, k - 1], "unlearning", False)
                                                   for k in self.erased), key=lambda m: m.value))
        return out

    # -- oracle ---------------------------------------------------------------------------------------------------
    def _oracle(self):
        from unlearnbench.oracle import ConceptOracle, Grid

        if "oracle" not in self._oracle_cache:
            mix = self.exact().mix
            self._oracle_cache["oracle"] = ConceptOracle(mix, [k - 1 for k in self.erased], Grid(-9.0, 9.0, 0.05))
        return self._oracle_cache["oracle"]

    def oracle(self) -> dict:
        """Exact fronts of the chosen forget set: rkl (b -> min KL), lik (eps -> min KL), equal weights (ESD)."""
        from unlearnbench.oracle import concept_curves

        g = self.grids["eps"]
        return self._curves(lambda: concept_curves(self._oracle(), 1.25 * max(g["rkl"]), min(g["lik"]) / 3,
                                                   1.5 * max(g["rkl-fixed"])))

    def oracle_report(self, metrics: dict[str, MetricValue], method: str, duals: list[float] | None) -> dict:
        """The record's ``oracle`` field: the trial's distance to each exact front, lambda*, and the curves."""
        from unlearnbench.oracle import concept_report

        v = {k: _value(metrics, k) for k in ("kl_concept_min", "forgotten_mass", "kl_pretrained")}
        fronts = concept_report(self._oracle(), self.oracle(), *v.values())
        # the exact front of each method's own family ("esd": fixed equal weights, which ESD's one-concept-per-step
        # target also is in expectation, with alpha = eta / m)
        own = {"rkl": "rkl", "rkl-is": "rkl", "lik": "lik", "lik-is": "lik", "rkl-fixed": "esd", "esd": "esd"}.get(method)
        return {"fronts": fronts, "lambda": duals, "method_front": own}
