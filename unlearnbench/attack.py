"""The robustness ladder: does an unlearned model's erased concept come back under attack, and at what budget?

``unlearnbench attack RUN_DIR`` attacks every ok trial of a run saved with ``--save-models`` plus two references per
seed, the pretrained network (the upper bound) and the retrained one (:mod:`unlearnbench.references`, exact
unlearning), through the same executor as ``run`` (:func:`unlearnbench.sweep.run_sweep`). An attack trial is one
(model, attack) pair that climbs the whole ladder of budgets, scoring the task's concept measure at every rung:

- ``relearn``: fine-tune all weights for k steps (Adam, the same settings for every model) on a fixed small sample
  of the forgotten data: ``n_samples`` pretrained-model samples of the erased concepts (under the prompt the task
  scores), or the forget images. Also reports ``steps_to_half``: the first k (linearly interpolated between rungs)
  at which the measure reaches half the pretrained network's level; missing when the ladder ends first.
- ``embedding``: textual inversion / UnlearnDiffAtk style: the network is frozen and the conditioning input of the
  scored prompt (its row of the prompt-embedding table: the mixtures' prompt input, the digits' class tokens) is
  optimised for k steps to denoise the same forget sample; the measure is read on samples from that input.
- ``mia`` (data tasks): loss-based membership inference. Per-sample denoising loss (the ELBO's diffusion part on
  fixed steps, with the same noise for every sample and model) of the forget images against held-out data of the
  same distribution; AUC and TPR at 1 % FPR with 95 % bootstrap intervals (members have lower loss).

The concept measure (higher = more of the concept is back): ``forgotten_mass`` (gmm-concept, max over erased
components of the pretrained posterior mass in null-prompt samples), ``forget_mass`` (gmm-data, the same for forget
points), ``acc_forget`` (digits-concept, classifier accuracy on erased-prompt samples), ``regen_rate`` (digits-data).
Every rung is evaluated with the same generator, so models are compared on the same noise.

Besides the attacks, every run's retrained reference is scored once per seed by the task's own evaluation (trial
``reference--retrained-s<seed>``, attack name ``reference``, metrics with the task's roles): the reference row every
metric of the leaderboard gets next to the pretrained model's value.

Records (same schema as trials, in ``RUN_DIR/attack/records.jsonl``) carry the source trial's method, grid and seed,
an ``attack`` field (name, budgets, source trial or reference, the ladder), and metrics of role ``robustness`` named
``<attack>_<measure>@<budget>``, ``relearn_steps_to_half``, ``mia_auc`` and ``mia_tpr_at_1fpr``.
"""
from __future__ import annotations

import copy
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from unlearnbench.config import ConfigError, SweepPlan
from unlearnbench.diffusion import add_noise, per_sample_mse, sample_t
from unlearnbench.results import REFERENCE_EVAL  # not an attack: the retrained network scored by task.evaluate
from unlearnbench.settings import MAX_BUDGET, MAX_RUNGS, read_small_file
from unlearnbench.tasks.base import MetricValue

logger = logging.getLogger(__name__)

ATTACKS = {"relearn": ("concept", "data"), "embedding": ("concept", "data"), "mia": ("data",)}  # name -> task kinds
DEFAULT_ATTACKS = {"concept": ["relearn", "embedding"], "data": ["relearn", "mia"]}
LADDER = {"relearn": [0, 10, 50, 200], "embedding": [0, 10, 50, 200], "mia": [0]}
MEASURE = {"gmm-concept": "forgotten_mass", "gmm-data": "forget_mass", "digits-concept": "acc_forget",
           "digits-data": "regen_rate"}
_COMMON = {"batch_size": 64, "n_samples": 64, "sample_seed": 777, "mia_n_t": 64, "mia_heldout": 256,
           "bootstrap": 1000}
SETTINGS = {  # attack settings per task: one optimiser for every model
    "gmm-concept": {**_COMMON, "relearn_lr": 2e-4, "embedding_lr": 0.01},
    "gmm-data": {**_COMMON, "relearn_lr": 2e-4, "embedding_lr": 0.01},
    "digits-concept": {**_COMMON, "relearn_lr": 5e-4, "embedding_lr": 0.02},
    "digits-data": {**_COMMON, "relearn_lr": 5e-4, "embedding_lr": 0.02},
}
ATTACK_DIR = "attack"


# ------------------------------------------------------------------------------------------------------------------
# planning
def parse_attacks(value: str | None, task_name: str, kind: str) -> list[str]:
    """``None``: the kind's defaults; ``all``: every attack that applies; ``none``: no attack (only the retrained
    reference's evaluation, the anchor of the comparison protocol); else a comma list, checked."""
    fits = [a for a, kinds in ATTACKS.items() if kind in kinds]
    if value is None:
        return list(DEFAULT_ATTACKS[kind])
    if value.strip() == "all":
        return fits
    if value.strip() == "none":
        return []
    names = [a.strip() for a in value.split(",") if a.strip()]
    if not names:
        raise ConfigError(f"--attacks {value!r}: no attack given; valid: {', '.join(sorted(ATTACKS))}")
    for a in names:
        if a not in ATTACKS:
            raise ConfigError(f"unknown attack {a!r}; valid: {', '.join(sorted(ATTACKS))}")
        if kind not in ATTACKS[a]:
            raise ConfigError(f"attack {a!r} does not apply to {kind} task {task_name} (it needs a "
                              f"{'/'.join(ATTACKS[a])} task); attacks for it: {', '.join(fits)}")
    return list(dict.fromkeys(names))


def parse_budgets(values: list[str] | None, attacks: list[str]) -> dict[str, list[int]]:
    """``--budgets 0,10,50`` (every ladder attack) or ``--budgets relearn=0,10,50`` (one attack); repeatable."""
    out = {a: list(LADDER[a]) for a in attacks}
    for item in values or []:
        name, _, spec = item.rpartition("=")
        targets = [a for a in attacks if a != "mia"] if not name else [name]
        if name and name not in attacks:
            raise ConfigError(f"--budgets {item!r}: {name!r} is not among the attacks run ({', '.join(attacks)})")
        if name == "mia":
            raise ConfigError(f"--budgets {item!r}: mia has no budget ladder")
        try:
            ladder = sorted({int(v) for v in spec.split(",") if v.strip()})
        except ValueError:
            raise ConfigError(f"--budgets {item!r}: expected comma-separated whole numbers >= 0, e.g. 0,10,50,200 "
                              f"(or ATTACK=0,10,50)") from None
        if not ladder or ladder[0] < 0:
            raise ConfigError(f"--budgets {item!r}: expected whole numbers >= 0, e.g. 0,10,50,200")
        if ladder[-1] > MAX_BUDGET or len(ladder) > MAX_RUNGS:
            raise ConfigError(f"--budgets {item[:60]!r}: at most {MAX_RUNGS} budgets, each at most {MAX_BUDGET} "
                              f"optimizer steps")
        for a in targets:
            out[a] = ladder
    return out


def source_trials(run_dir: Path) -> tuple[list[dict], list[dict]]:
    """(ok trials with saved weights, every latest trial) of a run directory; attack records are not trials."""
    from unlearnbench.records import RECORDS, artifact_path, iter_latest, read_records

    path = run_dir / RECORDS
    if not path.is_file():
        raise ConfigError(f"{run_dir}: no {RECORDS}; give a run directory made by `unlearnbench run --save-models`")
    trials = sorted((r for r in iter_latest(read_records([path])) if not r.get("attack")), key=lambda r: r["trial_id"])
    saved = []
    for r in trials:
        model = artifact_path(r, "model") if r.get("status") == "ok" else None  # only inside the run folder
        if model is not None:
            saved.append({**r, "_model": str(model)})
    return saved, trials


def plan_attacks(run_dir: str | os.PathLike, attacks: str | None = None, budgets: list[str] | None = None,
                 cache_dir: str | None = None, threads: int = 1) -> SweepPlan:
    """The attack trials for a finished run; every name and budget checked first (``ConfigError``)."""
    from unlearnbench.references import REFERENCES, has_retrained
    from unlearnbench.tasks import TASKS

    run = Path(run_dir).resolve()
    if not run.is_dir():
        raise ConfigError(f"RUN_DIR {run_dir}: no such directory")
    saved, trials = source_trials(run)
    names = sorted({r["task"]["name"] for r in trials})
    if len(names) != 1:
        raise ConfigError(f"{run}: expected the trials of one task, found {', '.join(names) or 'none'}")
    task_name = names[0]
    if task_name not in SETTINGS:
        raise ConfigError(f"task {task_name}: the robustness ladder supports {', '.join(sorted(SETTINGS))}")
    kind = TASKS.get(task_name).kind
    chosen = parse_attacks(attacks, task_name, kind)
    ladders = parse_budgets(budgets, chosen)
    if chosen and not saved:
        raise ConfigError(f"{run}: no ok trial saved its weights ({len(trials)} trial(s)); "
                          f"rerun with `unlearnbench run --save-models`")
    ok = [r for r in trials if r.get("status") == "ok"]
    if not ok:
        raise ConfigError(f"{run}: no ok trial ({len(trials)} trial(s)) to take the task's settings and seeds from")
    first = (saved or ok)[0]  # --attacks none scores only the retrained reference: no saved weights needed
    if cache_dir is None:
        try:
            cache_dir = json.loads(read_small_file(run / "args.json", "args.json")).get("cache_dir")
        except (ValueError, AttributeError):  # ConfigError is a ValueError
            cache_dir = None
    task = TASKS.get(task_name)(first["task"].get("options") or {}, cache_dir=cache_dir)
    out = run / ATTACK_DIR
    plan = SweepPlan(run_id=f"{run.name}-attack", run_dir=str(out), task=task_name,
                     task_options=first["task"].get("options") or {})
    refs = [r for r in REFERENCES if r == "pretrained" or has_retrained(task)]
    seeds = sorted({r["seed"] for r in (saved if chosen else ok)}, key=str)
    for a in chosen:
        tag = f"{a}-{'_'.join(map(str, ladders[a]))}"
        settings = dict(SETTINGS[task_name])
        sources = [(r["trial_id"], r, None) for r in saved] + [(f"{ref}-s{s}", None, (ref, s)) for ref in refs
                                                               for s in seeds]
        for sid, rec, ref in sources:
            model = rec["_model"] if rec is not None else None
            tid = f"{tag}--{sid}"
            plan.trials.append({
                "run_id": plan.run_id, "trial_id": tid, "task": task_name,
                "task_options": (rec or saved[0])["task"].get("options") or {},
                "method": rec["method"] if rec else ref[0],
                "method_config": rec.get("method_config", {}) if rec else {},
                "grid": rec.get("grid") if rec else None, "seed": rec["seed"] if rec else ref[1],
                "cache_dir": task.cache_dir, "threads": threads, "run_dir": str(out), "artifact_dir": None,
                "attack": {"name": a, "budgets": ladders[a], "measure": MEASURE[task_name], "settings": settings,
                           "source_trial": sid if rec else None, "reference": ref[0] if ref else None,
                           "model": model},
            })
    if "retrained" in refs:  # the retrained network through the task's own evaluation: a reference row per metric
        for s in seeds:
            plan.trials.append({
                "run_id": plan.run_id, "trial_id": f"{REFERENCE_EVAL}--retrained-s{s}", "task": task_name,
                "task_options": first["task"].get("options") or {}, "method": "retrained", "method_config": {},
                "grid": None, "seed": s, "cache_dir": task.cache_dir, "threads": threads, "run_dir": str(out),
                "artifact_dir": None,
                "attack": {"name": REFERENCE_EVAL, "budgets": [], "measure": MEASURE[task_name], "settings": {},
                           "source_trial": None, "reference": "retrained", "model": None},
            })
    return plan


def prepare(plan: SweepPlan) -> None:
    """In the driver, before any trial: the retrained references the plan needs (built once, cached)."""
    from unlearnbench.references import retrained_net
    from unlearnbench.tasks import TASKS

    if any((t.get("attack") or {}).get("reference") == "retrained" for t in plan.trials):
        t0 = plan.trials[0]
        retrained_net(TASKS.get(plan.task)(t0["task_options"], cache_dir=t0.get("cache_dir")))


# ------------------------------------------------------------------------------------------------------------------
# what the attacks read and write, per task
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
    """The concept measure of ``net``'s samples under ``prompt_ids`` (one per scored prompt; higher = more concept)."""
    from unlearnbench.metrics.gmm import mc_value

    gen = torch.Generator().manual_seed(90_000 + int(seed))
    net.eval()
    if task.name.startswith("gmm"):
        n = int(task.options["eval_samples"])
        x = bundle.sample_model(net, torch.full((n,), prompt_ids[0], device=bundle.device), gen).double().cpu()
        mix = task.exact().mix
        resp = mix.responsibilities(x)
        cols = [k - 1 for k in bundle.forget_concepts] if bundle.kind == "concept" else task.split()[0]
        return max((mc_value(resp[:, c], "robustness", False) for c in cols), key=lambda m: m.value)
    from unlearnbench.tasks import digits

    n = int(task.options["n_eval"])
    if bundle.kind == "concept":
        from unlearnbench.metrics.classifier import accuracy
        from unlearnbench.models import prompt_digit

        cond = torch.tensor(prompt_ids).repeat_interleave(n)
        labels = torch.tensor([prompt_digit(p) for p in bundle.forget_concepts]).repeat_interleave(n)
        x = digits.sample_prompts(net, bundle.schedule, cond, bundle.guidance, bundle.sample_steps, gen)
        _, logits = digits.features(task._base()["classifier"], x)
        m = accuracy(logits, labels, "unlearning", False)
    else:
        from unlearnbench.metrics.memorization import regeneration_rate

        x = digits.sample_prompts(net, bundle.schedule, torch.full((n,), prompt_ids[0]), 1.0, bundle.sample_steps, gen)
        m = regeneration_rate(x, bundle.forget_data.cpu(), digits.REGEN_THRESHOLD)
    return MetricValue(m.value, m.stderr, m.n, "robustness", False)


# ------------------------------------------------------------------------------------------------------------------
# the attacks
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
    return per_sample_mse(net(add_noise(bundle.schedule, x0, noise, t), t, cond.to(x0.device)), noise).mean()


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


def mia_sets(task, bundle, settings) -> tuple[Tensor, Tensor]:
    """(forget images [K, *], held-out data of the same distribution [M, *])."""
    gen = torch.Generator().manual_seed(int(settings["sample_seed"]) + 1)
    m = int(settings["mia_heldout"])
    members = bundle.forget_data.cpu()
    if task.name == "gmm-data":  # each forget point's generating cluster (the outlier: its own neighbourhood)
        from unlearnbench.tasks.gmm import DATA_CENTRES, DATA_CLUSTER_STD as GMM_CLUSTER_STD

        centres = torch.tensor(DATA_CENTRES)
        out = []
        for x in members:
            d = (centres - x).norm(dim=1)
            c = centres[int(d.argmin())] if float(d.min()) < 3 * GMM_CLUSTER_STD else x
            out.append(c + GMM_CLUSTER_STD * torch.randn((m // len(members), 2), generator=gen))
        return members, torch.cat(out).float()
    held = task._base()["split"]["x_test"]
    return members, held[:m]


@torch.no_grad()
def mia_loss(schedule, net, x0: Tensor, cond: Tensor, n_t: int, gen: torch.Generator) -> Tensor:
    """Per-sample ``sum_t w_t ||net(x_t, t) - eps||^2`` (the ELBO's diffusion part) on ``n_t`` fixed, evenly spaced
    steps with one noise draw per step shared by every sample: common random numbers, so two samples (and two
    models) differ by what the model does, not by their draws; [B]."""
    T = schedule.T
    w = schedule.elbo_weights().to(x0.device, x0.dtype)
    ts = ((torch.arange(n_t, dtype=torch.float64) + 0.5) * T / n_t).long().clamp(0, T - 1)
    noise = torch.randn((n_t, *x0.shape[1:]), generator=gen).to(x0.device, x0.dtype)
    out = torch.zeros(x0.shape[0], device=x0.device, dtype=x0.dtype)
    for j, tj in enumerate(ts.tolist()):
        t = torch.full((x0.shape[0],), tj, device=x0.device, dtype=torch.long)
        nz = noise[j].expand_as(x0)
        out += w[tj] * per_sample_mse(net(add_noise(schedule, x0, nz, t), t, cond), nz)
    return out * T / n_t


@torch.no_grad()
def mia(task, bundle, net, seed, settings) -> dict[str, MetricValue]:
    members, held = mia_sets(task, bundle, settings)
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


# ------------------------------------------------------------------------------------------------------------------
# one attack trial (called by runner.execute_trial)
def run_attack_trial(spec: dict[str, Any]) -> dict[str, Any]:
    """Load the attacked model, climb the ladder, return the record (status ok)."""
    from unlearnbench.references import retrained_net
    from unlearnbench.runner import base_record, seed_everything
    from unlearnbench.saving import load_weights
    from unlearnbench.tasks import TASKS

    t0 = time.perf_counter()
    torch.set_num_threads(int(spec.get("threads") or 1))
    seed = int(spec["seed"])
    seed_everything(seed)
    a = spec["attack"]
    task = TASKS.get(spec["task"])(spec.get("task_options"), cache_dir=spec.get("cache_dir"))
    device = torch.device(spec.get("device") or ("cuda" if torch.cuda.is_available() and spec.get("gpus") else "cpu"))
    bundle = task.build(seed, device=device)
    pretrained = copy.deepcopy(bundle.net).eval()
    if a["reference"] == "pretrained":
        net = bundle.net
    elif a["reference"] == "retrained":
        net = retrained_net(task, device)
    else:
        net = load_weights(bundle.net, a["model"]).to(device)
    t1 = time.perf_counter()
    settings, budgets, name = a["settings"], list(a["budgets"]), a["name"]
    metrics: dict[str, MetricValue] = {}
    ladder: dict[str, Any] = {}
    if name == REFERENCE_EVAL:  # the task's evaluation, seeded as run_trial seeds it, of the reference's weights
        bundle.net.load_state_dict(net.state_dict())
        bundle.net.eval()
        seed_everything(seed + 10_000)
        metrics.update(task.evaluate(bundle, seed))
    elif name == "mia":
        out = mia(task, bundle, net, seed, settings)
        ladder["intervals"] = out.pop("_intervals")
        metrics.update(out)
    else:
        level = measure(task, bundle, pretrained, scored_prompts(task, bundle), seed)
        fn = relearn if name == "relearn" else embedding
        values, secs = fn(task, bundle, net, budgets, seed, settings)
        for k, v in zip(budgets, values):
            metrics[f"{name}_{a['measure']}@{k}"] = v
        half = steps_to_half(budgets, [v.value for v in values], level.value)
        metrics[f"{name}_steps_to_half"] = MetricValue(half if half is not None else math.nan, None, None,
                                                       "robustness", True)
        ladder.update(values=[v.value for v in values], stderr=[v.stderr for v in values],
                      n=[v.n for v in values], pretrained_level=level.value, steps_to_half=half,
                      seconds_at_rung=secs)
    t2 = time.perf_counter()
    record = base_record(spec, task)
    record.update(status="ok", metrics={k: v.to_dict() for k, v in sorted(metrics.items())},
                  timing={"setup_s": t1 - t0, "attack_s": t2 - t1, "total_s": t2 - t0})
    record["attack"] = {**a, **ladder}
    return record
