"""The attacks of the robustness ladder, behind the ``ATTACKS`` registry: relearning, a learnt prompt input
(embedding) and loss-based membership inference, each over the task's concept measure
(:meth:`~unlearnbench.tasks.base.Task.robustness_measure`). A new attack is one file in this package: an
:class:`Attack` subclass registered with ``@ATTACKS.register("name")`` (found by a scan, no list to edit)."""
from __future__ import annotations

import time
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from unlearnbench.diffusion import add_noise, elbo_error, per_sample_sse, sample_t
from unlearnbench.registry import Registry
from unlearnbench.tasks.base import MetricValue


class Attack:
    """One attack of the robustness ladder. A ladder attack (``climbs``) spends a budget of optimizer steps and is
    scored by the task's concept measure at every rung (:meth:`climb`); the other kind scores the model once
    (:meth:`score`: metrics of role ``robustness``, with ``_intervals`` for the record's ladder field if any)."""

    kinds: ClassVar[tuple[str, ...]] = ("concept", "data")  # the task kinds it applies to
    default_for: ClassVar[tuple[str, ...]] = ()  # the task kinds that run it when --attacks is not given
    ladder: ClassVar[list[int]] = [0, 10, 50, 200]  # the default budgets
    climbs: ClassVar[bool] = True  # budgets are optimizer steps (False: one score, no ladder to climb)
    order: ClassVar[int] = 100  # where it runs among the attacks (then by name)
    # a scoring attack, as the leaderboard shows it: its metrics (the first one plotted), the plot's label and the
    # level of no information (a line on the plot; None: none)
    metrics: ClassVar[tuple[str, ...]] = ()
    axis_label: ClassVar[str | None] = None
    chance: ClassVar[float | None] = None

    def climb(self, task, bundle, net, budgets: list[int], seed: int,
              settings: dict[str, Any]) -> tuple[list[MetricValue], list[float]]:
        """The concept measure at each budget, and the seconds spent reaching it."""
        raise NotImplementedError(f"{type(self).__name__} does not climb a ladder")

    def score(self, task, bundle, net, seed: int, settings: dict[str, Any]) -> dict[str, Any]:
        """The attack's metrics of the model (no ladder)."""
        raise NotImplementedError(f"{type(self).__name__} scores along a ladder (climb)")


# scan_package: a new file in robustness/ registers its attack with @ATTACKS.register("name"), no list to edit
ATTACKS: Registry[type[Attack]] = Registry("attack", Attack, "unlearnbench.attacks",
                                           scan_package="unlearnbench.robustness")


def scored_prompts(task, bundle) -> list[int]:
    """The prompt ids whose samples carry the concept measure (the attacked inputs)."""
    if bundle.kind == "data" or getattr(task, "scored_prompt", "erased") == "null":
        return [bundle.null_cond]
    return list(bundle.forget_concepts)


def forget_sample(task, bundle, n: int, gen: torch.Generator, in_context: bool = False) -> tuple[Tensor, Tensor]:
    """A fixed small sample of the forgotten data: (x0 [n, *], index of the scored prompt each row trains [n]).

    ``in_context`` (relearning): where the concepts live inside the null prompt (the mixtures), the sample is the
    pretrained null prompt's, so the concepts enter in their pretrained share and relearning aims at the pretrained
    level instead of past it; elsewhere it is the erased concepts' (or the forget images) alone."""
    scored = scored_prompts(task, bundle)
    if bundle.kind == "data":
        k = bundle.forget_data.shape[0]
        return bundle.forget_data[torch.arange(n) % k].to(bundle.device), torch.zeros(n, dtype=torch.long)
    if in_context and scored == [bundle.null_cond]:  # concepts inside the null prompt: in their pretrained share
        return bundle.sample_ref(torch.full((n,), bundle.null_cond), gen), torch.zeros(n, dtype=torch.long)
    concepts = torch.tensor(bundle.forget_concepts)[torch.arange(n) % len(bundle.forget_concepts)]
    which = torch.zeros(n, dtype=torch.long) if len(scored) == 1 else torch.tensor([scored.index(int(c))
                                                                                   for c in concepts])
    return bundle.sample_ref(concepts, gen), which


@torch.no_grad()
def measure(task, bundle, net, prompt_ids: list[int], seed: int) -> MetricValue:
    """The concept measure of ``net``'s samples under ``prompt_ids`` (one per scored prompt; higher = more concept):
    the task's :meth:`~unlearnbench.tasks.base.Task.robustness_measure`, on noise fixed by ``seed``."""
    gen = torch.Generator().manual_seed(90_000 + int(seed))
    net.eval()
    return task.robustness_measure(bundle, net, prompt_ids, gen)


class PromptInput:
    """Extra rows of a network's prompt-embedding table: ids ``base + j`` read the trainable vectors ``vec[j]``.

    Hooks on the ``nn.Embedding`` the network conditions through, so the network's code is untouched."""

    def __init__(self, net: nn.Module, init_ids: list[int]):
        embs = [m for name, m in net.named_modules() if isinstance(m, nn.Embedding)
                and name.split(".")[-1] in ("prompt", "prompt_embedding")]
        if not embs:
            raise ValueError(f"{type(net).__name__} has no prompt-embedding table to attack")
        self.emb = embs[0]
        self.base = self.emb.num_embeddings
        self.vec = nn.Parameter(self.emb.weight[torch.tensor(init_ids)].detach().clone())
        self.ids = [self.base + j for j in range(len(init_ids))]
        self._mask: Tensor | None = None
        self._handles = [self.emb.register_forward_pre_hook(self._pre), self.emb.register_forward_hook(self._post)]

    def _pre(self, module, args):
        idx = args[0]
        self._mask = idx >= self.base
        self._rows = (idx - self.base).clamp(min=0)
        return (torch.where(self._mask, torch.zeros_like(idx), idx),)

    def _post(self, module, args, out):
        if self._mask is None or not bool(self._mask.any()):
            return out
        return torch.where(self._mask[..., None], self.vec[self._rows], out)

    def remove(self) -> None:
        for h in self._handles:
            h.remove()


def denoising_loss(bundle, net, x0: Tensor, cond: Tensor, gen: torch.Generator) -> Tensor:
    """Mean DDPM loss ||net(x_t, t, c) - eps||^2 of a batch (epsilon prediction, uniform t)."""
    noise = torch.randn(x0.shape, generator=gen).to(x0.device)
    t = sample_t(x0.shape[0], bundle.schedule.T, gen).to(x0.device)
    return per_sample_sse(net(add_noise(bundle.schedule, x0, noise, t), t, cond.to(x0.device)), noise).mean()


def climb(task, bundle, net, params, lr: float, budgets: list[int], prompt_ids: list[int], seed: int,
          settings: dict, in_context: bool) -> tuple[list[MetricValue], list[float]]:
    """Adam on ``params`` over the forget sample, reading the measure at every budget; (values, seconds per rung)."""
    gen = torch.Generator().manual_seed(int(settings["sample_seed"]))
    x0, which = forget_sample(task, bundle, int(settings["n_samples"]), gen, in_context)
    cond = torch.tensor(prompt_ids)[which]
    opt = torch.optim.Adam(params, lr=lr)
    train_gen = torch.Generator().manual_seed(1_000 + int(seed))
    values, secs, t0 = [], [], time.perf_counter()
    for step in range(max(budgets) + 1):
        if step in budgets:
            values.append(measure(task, bundle, net, prompt_ids, seed))
            secs.append(time.perf_counter() - t0)
        if step == max(budgets):
            break
        net.train()
        idx = torch.randint(0, x0.shape[0], (int(settings["batch_size"]),), generator=train_gen)
        x = x0[idx]
        if bundle.data_noise > 0:  # the smoothed data distribution's kernel (gmm-data)
            x = x + bundle.data_noise * torch.randn(x.shape, generator=train_gen).to(x.device)
        with torch.enable_grad():
            loss = denoising_loss(bundle, net, x, cond[idx], train_gen)
            opt.zero_grad(set_to_none=True)
            loss.backward()
        opt.step()
    return values, secs


def relearn(task, bundle, net, budgets, seed, settings):
    net.requires_grad_(True)
    return climb(task, bundle, net, list(net.parameters()), float(settings["relearn_lr"]), budgets,
                 scored_prompts(task, bundle), seed, settings, in_context=True)


def embedding(task, bundle, net, budgets, seed, settings):
    net.requires_grad_(False)
    hook = PromptInput(net, scored_prompts(task, bundle))
    try:
        return climb(task, bundle, net, [hook.vec], float(settings["embedding_lr"]), budgets, hook.ids, seed,
                     settings, in_context=False)
    finally:
        hook.remove()


def auc_tpr(member: np.ndarray, other: np.ndarray, fpr: float = 0.01) -> tuple[float, float]:
    """AUC of scores (higher = member) and the TPR at the threshold giving ``fpr`` on non-members."""
    diff = member[:, None] - other[None, :]
    auc = float((diff > 0).mean() + 0.5 * (diff == 0).mean())
    thr = np.quantile(other, 1 - fpr, method="higher")
    return auc, float((member > thr).mean())


@torch.no_grad()
def mia_loss(schedule, net, x0: Tensor, cond: Tensor, n_t: int, gen: torch.Generator) -> Tensor:
    """Per-sample ``sum_t w_t ||net(x_t, t) - eps||^2`` (the ELBO's diffusion part) on ``n_t`` fixed, evenly spaced
    steps with one noise draw per step shared by every sample: common random numbers, so two samples (and two
    models) differ by what the model does, not by their draws; [B]."""
    T = schedule.T
    w = schedule.elbo_weights().to(x0.device, x0.dtype)
    ts = ((torch.arange(n_t, dtype=torch.float64) + 0.5) * T / n_t).long().clamp(0, T - 1)
    noise = torch.randn((n_t, *x0.shape[1:]), generator=gen).to(x0.device, x0.dtype)
    draws = ((torch.full((x0.shape[0],), tj, device=x0.device, dtype=torch.long), noise[j].expand_as(x0), w[tj])
             for j, tj in enumerate(ts.tolist()))
    return elbo_error(schedule, x0, net, cond, draws) * T / n_t


@torch.no_grad()
def mia(task, bundle, net, seed, settings) -> dict[str, MetricValue]:
    members, held = task.mia_sets(bundle, settings)
    x = torch.cat([members, held]).to(bundle.device)
    cond = torch.full((x.shape[0],), bundle.null_cond, device=bundle.device)
    gen = torch.Generator().manual_seed(70_000)  # the same t and noise for every model
    if isinstance(net, nn.Module):
        net.eval()
    loss = mia_loss(bundle.schedule, net, x, cond, int(settings["mia_n_t"]), gen).double().cpu()
    score = -loss.numpy()
    k = members.shape[0]
    sm, so = score[:k], score[k:]
    auc, tpr = auc_tpr(sm, so)
    rng = np.random.default_rng(int(seed))
    boots = np.array([auc_tpr(sm[rng.integers(0, k, k)], so[rng.integers(0, len(so), len(so))])
                      for _ in range(int(settings["bootstrap"]))])
    lo, hi = np.quantile(boots, [0.025, 0.975], axis=0)
    out = {"mia_auc": MetricValue(auc, float(boots[:, 0].std()), k, "robustness", False),
           "mia_tpr_at_1fpr": MetricValue(tpr, float(boots[:, 1].std()), k, "robustness", False)}
    out["_intervals"] = {"mia_auc": [float(lo[0]), float(hi[0])], "mia_tpr_at_1fpr": [float(lo[1]), float(hi[1])],
                         "n_heldout": int(len(so))}
    return out


def steps_to_half(budgets: list[int], values: list[float], level: float) -> float | None:
    """First budget (linear between rungs) where the measure reaches half of ``level``; None if it never does."""
    half = 0.5 * level
    for i, (k, v) in enumerate(zip(budgets, values)):
        if v >= half:
            if i == 0:
                return float(k)
            k0, v0 = budgets[i - 1], values[i - 1]
            return float(k0 + (half - v0) / (v - v0) * (k - k0))
    return None


@ATTACKS.register("relearn")
class Relearn(Attack):
    """Fine-tune all weights on a fixed small sample of the forgotten data (:func:`relearn`)."""

    default_for = ("concept", "data")
    order = 0

    def climb(self, task, bundle, net, budgets, seed, settings):
        return relearn(task, bundle, net, budgets, seed, settings)


@ATTACKS.register("embedding")
class Embedding(Attack):
    """Freeze the network and learn the scored prompt's conditioning input (:func:`embedding`)."""

    default_for = ("concept",)
    order = 1

    def climb(self, task, bundle, net, budgets, seed, settings):
        return embedding(task, bundle, net, budgets, seed, settings)


@ATTACKS.register("mia")
class MembershipInference(Attack):
    """Loss-based membership inference of the forget images against held-out data (:func:`mia`; data tasks)."""

    kinds = ("data",)
    default_for = ("data",)
    ladder = [0]
    climbs = False
    order = 2
    metrics = ("mia_auc", "mia_tpr_at_1fpr")
    axis_label = "MIA AUC (0.5 = chance)"
    chance = 0.5

    def score(self, task, bundle, net, seed, settings):
        return mia(task, bundle, net, seed, settings)
