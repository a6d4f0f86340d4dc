"""What both 2-D Gaussian-mixture tasks share (:mod:`~unlearnbench.tasks.gmm_concept`,
:mod:`~unlearnbench.tasks.gmm_data`): every pretrained quantity is exact, so every metric and the optimal fronts are too.

The pretrained network is a small MLP distilled once from the exact noise predictions and cached on disk; the exact
analytic model is ``bundle.ref``. Metrics use the probability-flow ODE with the exact divergence
(:mod:`unlearnbench.metrics.likelihood`) against the exact mixture densities (:mod:`unlearnbench.metrics.gmm`). The
retrained reference (:meth:`_GMMTask.retrained`) is an MLP distilled the same way from the exact retrain distribution
of the task (its ``retrain_exact``).
"""
from __future__ import annotations

import copy
import logging
import math
import time
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from unlearnbench.cache import cached_torch
from unlearnbench.diffusion import Schedule, add_noise
from unlearnbench.metrics.gmm import ExactEps
from unlearnbench.progress import Progress, progress
from unlearnbench.tasks.base import MetricValue, ModelBundle, Task

logger = logging.getLogger(__name__)
VERSION = 2  # bump when the distillation or the layouts change (part of every cache key)


# ------------------------------------------------------------------------------------------------------------------
# networks
class EpsMLP(nn.Module):
    """eps-network for 2-D data: [x, sinusoidal(t), prompt embedding] -> residual SiLU MLP -> eps."""

    def __init__(self, n_prompts: int, dim: int = 2, hidden: int = 128, depth: int = 3, emb: int = 32):
        super().__init__()
        self.prompt = nn.Embedding(n_prompts, emb)
        self.register_buffer("freqs", torch.exp(-math.log(1000.0) * torch.arange(emb // 2) / (emb // 2)))
        self.inp = nn.Linear(dim + 2 * emb, hidden)
        self.blocks = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(depth - 1))
        self.out = nn.Linear(hidden, dim)

    def forward(self, x_t: Tensor, t: Tensor, cond: Tensor) -> Tensor:
        arg = t.to(x_t.dtype)[:, None] * self.freqs[None]
        h = self.inp(torch.cat([x_t, arg.sin(), arg.cos(), self.prompt(cond)], 1))
        for blk in self.blocks:
            h = h + blk(nn.functional.silu(h))
        return self.out(nn.functional.silu(h))


def distill(exact: ExactEps, net: EpsMLP, schedule: Schedule, steps: int, batch: int, lr: float, seed: int,
            null_frac: float = 0.5, desc: str = "distilling the eps-network") -> dict:
    """Regress ``net`` onto the exact eps for all prompts (x_t from exact noised samples); returns stats.

    Prompt 0 gets ``null_frac`` of each batch. Half the timesteps are uniform, half log-uniform (the ELBO/KL
    weights ``w_t`` concentrate at small t, where the target is small and needs absolute precision)."""
    g = torch.Generator().manual_seed(seed)
    P, T = exact.log_table.shape[0], schedule.T
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.05)
    t0, losses = time.perf_counter(), []
    with Progress(desc, total=steps, unit="step") as bar:
        for step in range(steps):
            cond = torch.zeros(batch, dtype=torch.long)
            if P > 1:
                other = torch.rand(batch, generator=g) >= null_frac
                cond[other] = torch.randint(1, P, (int(other.sum()),), generator=g)
            x0 = exact.sample(cond, g)
            half = batch // 2
            t = torch.cat([torch.randint(0, T, (half,), generator=g),
                           (torch.rand(batch - half, generator=g) * math.log(T)).exp().long().clamp(1, T) - 1])
            x_t = add_noise(schedule, x0, torch.randn(x0.shape, generator=g), t)
            with torch.no_grad():
                target = exact(x_t, t, cond)
            loss = (net(x_t, t, cond) - target).pow(2).sum(1).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.item())
            bar.update()
            if step % 100 == 0:
                bar.set_postfix(loss=f"{np.mean(losses[-100:]):.4g}")
    return {"seconds": time.perf_counter() - t0, "final_loss": float(np.mean(losses[-100:])), "steps": steps}


# ------------------------------------------------------------------------------------------------------------------
class _GMMTask(Task):
    """Shared machinery: schedule, distilled network (cached), likelihoods, oracle cache. Subclasses give
    ``exact() -> ExactEps`` (the pretrained model) and ``layout() -> dict`` (its JSON description, in cache keys)."""

    base_options: ClassVar[dict[str, Any]] = {
        "hidden": 128, "depth": 3, "emb": 32, "distill_steps": 6000, "distill_batch": 512, "distill_lr": 2e-3,
        "distill_seed": 0, "eval_samples": 1000, "eval_steps": 100, "sample_steps": 50, "T": 1000,
    }
    default_steps = 400

    def __init__(self, options: dict[str, Any] | None = None, cache_dir: str | None = None):
        unknown = set(options or {}) - set(self.default_options) - {"forget"}
        if unknown:
            raise ValueError(f"task {self.name}: unknown option(s) {', '.join(sorted(unknown))}; "
                             f"valid: forget, {', '.join(sorted(self.default_options))}")
        super().__init__(options, cache_dir)
        self.schedule = Schedule.linear(int(self.options["T"]))
        self.grids = self.grids_by_forget[self.forget_name]  # thresholds depend on the forget set's exact fronts
        self._net_state: dict | None = None
        self._oracle_cache: dict[str, Any] = {}

    def _key(self) -> dict:
        arch = {k: self.options[k] for k in self.base_options if not k.startswith("eval") and k != "sample_steps"}
        return {"task": self.name, "version": VERSION, "layout": self.layout(), **arch}

    def _new_net(self) -> EpsMLP:
        o = self.options
        return EpsMLP(self.exact().log_table.shape[0], 2, int(o["hidden"]), int(o["depth"]), int(o["emb"]))

    def prepare(self) -> None:
        """Distil (or load) the pretrained network and tabulate the exact fronts, once, before any trial."""
        if self._net_state is not None:
            return
        self.oracle()

        def build() -> dict:
            o = self.options
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(int(o["distill_seed"]))
                net = self._new_net()
            stats = distill(self.exact(), net, self.schedule, int(o["distill_steps"]), int(o["distill_batch"]),
                            float(o["distill_lr"]), int(o["distill_seed"]),
                            desc=f"distilling the {self.name} eps-network (once; cached)")
            stats["kl"] = self._fit_kl(net)
            logger.info("distilled %s in %.1fs, KL(p_net(.|c) || q(.|c)) = %s", self.name, stats["seconds"],
                        stats["kl"])
            return {"state_dict": net.state_dict(), "stats": stats}

        obj = cached_torch(self.cache_dir, "gmm-distilled", self._key(), build)
        self._net_state, self.distill_stats = obj["state_dict"], obj["stats"]

    def _fit_kl(self, net: nn.Module) -> list[float]:
        """KL(p_net(.|c) || q(.|c)) per prompt c (PF-ODE samples, includes the ODE solver's ~0.003 nats bias)."""
        exact, gen, n = self.exact(), torch.Generator().manual_seed(0), min(500, int(self.options["eval_samples"]))
        out = []
        for c in progress(range(exact.log_table.shape[0]), "checking the distilled network: KL per prompt (PF-ODE)",
                          unit="prompt"):
            cond = torch.full((n,), c)
            x, lp = self._sample_logp(net, cond, gen)
            out.append(round(float((lp - exact.logpdf(x, cond)).mean()), 5))
        return out

    def pretrained(self) -> EpsMLP:
        """A fresh trainable copy of the distilled network."""
        self.prepare()
        with torch.random.fork_rng(devices=[]):  # the throw-away init must not shift the caller's random stream
            net = self._new_net()
        net.load_state_dict(copy.deepcopy(self._net_state))
        return net

    def retrained(self) -> EpsMLP:
        """The retrained reference: an MLP distilled, like the pretrained one, from the exact retrain distribution
        (:meth:`retrain_exact`), once and cached."""
        self.prepare()
        o = self.options
        key = {**self._key(), "retrain_without": list(self.forget_ids())}

        def build() -> dict:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(int(o["distill_seed"]))
                net = self._new_net()
            stats = distill(self.retrain_exact(), net, self.schedule, int(o["distill_steps"]), int(o["distill_batch"]),
                            float(o["distill_lr"]), int(o["distill_seed"]),
                            desc=f"distilling the {self.name} reference retrained without the forget set (once; cached)")
            return {"state_dict": net.state_dict(), "stats": stats}

        obj = cached_torch(self.cache_dir, "gmm-retrained", key, build)
        with torch.random.fork_rng(devices=[]):
            net = self._new_net()
        net.load_state_dict(obj["state_dict"])
        return net

    attack_settings: ClassVar[dict[str, float]] = {"relearn_lr": 2e-4, "embedding_lr": 0.01}

    def robustness_measure(self, bundle: ModelBundle, net: nn.Module, prompt_ids: list[int],
                           gen: torch.Generator) -> MetricValue:
        """The largest pretrained posterior mass of a forgotten component (or point) in ``net``'s samples."""
        from unlearnbench.metrics.gmm import mc_value

        n = int(self.options["eval_samples"])
        x = bundle.sample_model(net, torch.full((n,), prompt_ids[0], device=bundle.device), gen).double().cpu()
        resp = self.exact().mix.responsibilities(x)
        cols = self.forget_columns(bundle)
        return max((mc_value(resp[:, c], "robustness", False) for c in cols), key=lambda m: m.value)

    def _bundle(self, device, **kw) -> ModelBundle:
        device = torch.device(device)
        exact = self.exact().to(device)
        net = self.pretrained().to(device)

        def ref_sampler(cond: Tensor, generator: torch.Generator | None = None) -> Tensor:
            return exact.sample(cond, generator).to(device)

        return ModelBundle(net=net, ref=exact, schedule=self.schedule, kind=self.kind, data_shape=(2,),
                           ref_sampler=ref_sampler, sample_steps=int(self.options["sample_steps"]), device=device,
                           extras={"distill": self.distill_stats, "layout": self.layout(), "constrain_on": "null"},
                           **kw)

    def _sample_logp(self, net: nn.Module, cond: Tensor, gen: torch.Generator) -> tuple[Tensor, Tensor]:
        from unlearnbench.metrics.likelihood import pf_ode_sample_with_logp

        return pf_ode_sample_with_logp(self.schedule, net, cond, (2,), steps=int(self.options["eval_steps"]),
                                       generator=gen, device=cond.device)

    def _loglik(self, net: nn.Module, x0: Tensor) -> Tensor:
        from unlearnbench.metrics.likelihood import pf_ode_loglik

        cond = torch.zeros(x0.shape[0], dtype=torch.long, device=x0.device)
        return pf_ode_loglik(self.schedule, net, x0, cond, steps=int(self.options["eval_steps"]))

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "layout": self.layout()}

    # -- oracle plumbing shared by both tasks -------------------------------------------------------------------
    def _curves(self, build) -> dict:
        """Tabulated fronts, cached in memory and on disk (keyed by the layout, the forget set and the grid)."""
        if "curves" not in self._oracle_cache:
            key = {"task": self.name, "layout": self.layout(), "forget": self.forget_name, "grids": self.grids["eps"],
                   "version": 1}

            def timed() -> dict:
                with Progress(f"tabulating the exact fronts of {self.name} (once; cached)"):
                    return build()

            self._oracle_cache["curves"] = cached_torch(self.cache_dir, "gmm-oracle", key, timed)
        return self._oracle_cache["curves"]


def _smoke(grids: dict[str, list[float]]) -> dict[str, list[float]]:
    return {m: [v[1], v[-2]] for m, v in grids.items()}


def _value(metrics: dict[str, MetricValue], name: str) -> float | None:
    m = metrics.get(name)
    return None if m is None or m.value is None or not math.isfinite(m.value) else float(m.value)


def pretrain(cache_dir: str | None = None) -> dict[str, Any]:
    """Resolve everything the default mixture tasks need (each task's distilled network and exact-front tables, and
    its retrained reference), from the cache, the shipped copies or by building them; returns the seconds taken.
    ``unlearnbench pretrain --task gmm`` and ``scripts/ship_pretrained.py`` call it."""
    from unlearnbench.tasks import TASKS

    t0 = time.time()
    for name in ("gmm-concept", "gmm-data"):
        task = TASKS.get(name)(None, cache_dir=cache_dir)
        task.prepare()
        task.retrained()
    return {"wall_s": time.time() - t0}
