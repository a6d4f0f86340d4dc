"""What is unlearned from which model, and how it is scored.

A :class:`Task` builds a :class:`ModelBundle` (the pretrained network, a trainable copy, the schedule, the forget
and retain sets) and evaluates a trained network into metric values. Methods only ever see the bundle, so the
same method code runs on the Gaussian mixtures, the digits and the paper-scale tasks.

Conventions every task follows:
- networks are called ``net(x_t, t, cond)``: ``x_t`` [B, *data_shape] float32, ``t`` [B] long in [0, T),
  ``cond`` [B] long prompt ids (``null_cond`` is the empty prompt), returning the noise prediction [B, *data_shape];
- concept tasks list prompt ids in ``forget_concepts`` / ``retain_concepts``; data tasks give tensors
  ``train_data`` (everything the model was trained on, the distribution q), ``forget_data`` [K, *] (one
  constraint per row, or per group in ``forget_groups``) and ``retain_data``.
"""
from __future__ import annotations

import abc
import copy
import fnmatch
import math
import re
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Literal

import torch
from torch import Tensor, nn

from unlearnbench.diffusion import Schedule, add_noise, predict_x0
from unlearnbench.metrics.base import MetricValue
from unlearnbench.models import NULL_PROMPT

Kind = Literal["concept", "data"]

# The settling schedule of the constrained methods (issue 20; measured first on gmm-concept, then adopted on each task
# with its own dual step): the dual step constant for the first half of ``steps``, then dual_lr / (1 + k / 5) at the
# k-th update after it; the "constraints met" verdict on 8 fresh estimates. A task adds its ``max_steps`` (train on
# until settled) where it uses the stop rule. leaderboards/tuning/README.md has each task's measurements.
SETTLING: dict[str, Any] = {"dual_decay": 5.0, "dual_decay_start": 0.5, "final_estimates": 8}


@dataclass(eq=False)
class ModelBundle:
    """Everything a method needs for one trial. ``net`` is trained; ``ref`` is the frozen pretrained model."""

    net: nn.Module
    ref: nn.Module
    schedule: Schedule
    kind: Kind
    data_shape: tuple[int, ...]
    null_cond: int = 0
    prediction_type: str = "epsilon"
    # concept tasks
    forget_concepts: list[int] = field(default_factory=list)
    retain_concepts: list[int] = field(default_factory=list)
    concept_names: dict[int, str] = field(default_factory=dict)
    # data tasks
    train_data: Tensor | None = None
    forget_data: Tensor | None = None
    retain_data: Tensor | None = None
    forget_groups: list[int] | None = None  # forget row -> constraint index; default one constraint per row
    data_noise: float = 0.0  # smoothing kernel width of the data distribution (the 2-D data task), 0 for images
    # hooks
    ref_sampler: Callable[[Tensor, torch.Generator], Tensor] | None = None  # cond [B] -> x0 samples of ref(.|cond)
    posterior: Callable[[Tensor, Tensor, list[int]], Tensor] | None = None  # (x_t, t, concepts) -> P(c_i|x_t) [B, m]
    # (x0, concepts) -> log q(x0|c_i) - log q(x0|null) [B, m] (exact on the mixtures, a diffusion classifier on images)
    log_ratio: Callable[[Tensor, list[int]], Tensor] | None = None
    sample_steps: int = 50
    guidance: float = 1.0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def n_constraints(self) -> int:
        if self.kind == "concept":
            return len(self.forget_concepts)
        if self.forget_groups is not None:
            return max(self.forget_groups) + 1
        return 0 if self.forget_data is None else int(self.forget_data.shape[0])

    def group_index(self) -> Tensor:
        """Constraint index of each forget row; [K] long."""
        assert self.forget_data is not None
        if self.forget_groups is None:
            return torch.arange(self.forget_data.shape[0])
        return torch.as_tensor(self.forget_groups, dtype=torch.long)

    def sample_model(self, net: nn.Module, cond: Tensor, generator: torch.Generator | None = None,
                     steps: int | None = None, guidance: float | None = None) -> Tensor:
        """Samples of a network for the given prompts with the task's sampler settings; [B, *data_shape]."""
        from unlearnbench.diffusion import ddim_sample, guided

        g = self.guidance if guidance is None else guidance
        eps = guided(net, self.null_cond, g) if g != 1.0 else net
        return ddim_sample(self.schedule, eps, cond.to(self.device), self.data_shape, steps or self.sample_steps,
                           generator=generator, device=self.device)

    def sample_ref(self, cond: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Samples of the pretrained model for the given prompts (exact where the task can, cached pools otherwise)."""
        if self.ref_sampler is not None:
            return self.ref_sampler(cond.to(self.device), generator)
        return self.sample_model(self.ref, cond, generator)

    def draw(self, data: Tensor, n: int, generator: torch.Generator | None = None,
             idx: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """n rows of ``data`` (uniform with replacement unless ``idx``), smoothed by ``data_noise``; (x0, idx)."""
        if idx is None:
            idx = torch.randint(0, data.shape[0], (n,), generator=generator)
        x0 = data[idx].to(self.device)
        if self.data_noise > 0:
            x0 = x0 + self.data_noise * torch.randn(x0.shape, generator=generator).to(self.device)
        return x0, idx


def add_pretrained(out: dict[str, MetricValue], name: str, value: MetricValue) -> None:
    """Store the pretrained model's value of metric ``name`` as the info metric ``<name>_pretrained``: the
    leaderboard draws it as the pretrained model's point on every front that uses ``name``. The companion is
    registered (idempotently) next to a registered ``name``."""
    from unlearnbench.metrics.base import METRICS, spec

    companion = f"{name}_pretrained"
    if name in METRICS and companion not in METRICS:
        base = METRICS.get(name)
        spec(companion, "info", base.higher_is_better, base.family, f"the pretrained model's {name} (front plots)")
    out[companion] = MetricValue(value.value, value.stderr, value.n, "info", value.higher_is_better)


class Task(abc.ABC):
    """A benchmark task. Subclasses are registered in ``unlearnbench.tasks.TASKS``.

    Class attributes:
        name: registry name.
        kind: ``"concept"`` or ``"data"``; decides which methods fit (``Method.kinds``).
        grids: ``{grid_name: {method_name: [values weak -> strong]}}``, the task-specific default ranges.
        axes: ``[(unlearning_metric, retention_metric), ...]`` the Pareto views this task is read on; the first is primary.
        axes_when: ``[(unlearning_metric, retention_metric, when), ...]``: for a task whose axes depend on its options
            (the instance sets ``axes``), every axis it can have and when; ``unlearnbench ls tasks`` reads it without
            building the task (which would need the model's weights).
        forget_sets: named forget sets; ``options["forget"]`` picks one (default: the first).
        method_defaults: ``{method: {field: value}}`` overriding a method's defaults on this task (learning rates,
            dual step sizes, estimate sizes fitted to the task's scale); users override them with ``--set``.
        sane_ranges: ``{metric name or fnmatch pattern: (low, high)}`` (None: unbounded): where a metric can lie for a
            model that still works (a KL cap in nats, rates in [0, 1]). A trial with a metric outside it is
            ``diverged``, never a point on a front. Bound what a working model keeps (retention metrics, rates, the
            KL to the pretrained model); leave the far side of an unlearning distance (a forget KL, the forget
            images' bits/dim) open: pushing the forget data away is the goal, not a breakdown, as long as what is
            kept survives (a non-finite value is diverged whatever its role).
        loss_explosion: a training loss term whose batch mean exceeds this many times max(1, its median over the first
            10 steps) has exploded: the trial stops there and is ``diverged``.
        equivalence_margins: ``{retention metric: margin}`` in the metric's units: two entries whose retention differs
            by less than this at matched unlearning count as equivalent (``unlearnbench compare``'s TOST margin).
        minimum_effects: ``{retention metric: effect}``: the smallest difference that counts as "better" (default: the
            equivalence margin).
        retrained_targets: ``{unlearning metric: value}``: the retrained model's value where the task has no
            retrained reference to evaluate (a reference evaluation, ``unlearnbench attack``, takes precedence).
        overshoot_limit: a trial more than this many pretrained-to-retrained distances past the retrained model on an
            unlearning axis is ``diverged`` (:mod:`unlearnbench.protocol`).
        scored_prompt: concept tasks: ``"erased"`` (each erased prompt's output is scored) or ``"null"`` (the null
            prompt's output is, as on the mixtures; methods that only train erased prompts refuse such a task).
        learned_prompts: concept tasks whose prompts are a learned token table, every token of a prompt carrying its
            concept and the concept's images carrying their own mask (digits): the token positions FMN steers, the
            masks MACE trains in and the encoder AdvUnlearn trains. A task fed precomputed text embeddings has none.
        concept_tokens: concept tasks whose bundle carries ``extras["concept_tokens"]``, a [P, L] bool table of the
            token positions that carry each erased prompt's concept in its text embedding (sd-concept, from the
            tokenizer): what FMN steers attention away from where there is no learned prompt table.
        default_options / option_types: the options ``--set task.X=...`` accepts, typed by their default (or by
            ``option_types`` where there is none); anything else is refused before work starts.
        emits: ``{metric: (role, higher_is_better, description) or None}``, the metrics ``evaluate`` returns (``{i}``
            stands for an index); ``None`` takes the entry from the metrics registry. ``unlearnbench ls metrics``
            reads it.

    ``bundle.extras`` keys the methods read: ``constrain_on`` (``"null"``: the unlearned distribution p of a concept
    constraint is the null prompt's output, as on the mixtures; default ``"erased"``: each erased prompt's output),
    ``forget_fraction`` (share of the training set that the forget set makes up, K/N by default; SISS uses it),
    ``{train,retain,forget}_cond`` (per-row prompt ids of the data sets; default: the null prompt).
    """

    name: ClassVar[str]
    kind: ClassVar[Kind]
    grids: ClassVar[dict[str, dict[str, list[float]]]] = {}
    axes: ClassVar[list[tuple[str, str]]] = []
    axes_when: ClassVar[list[tuple[str, str, str]]] = []
    forget_sets: ClassVar[dict[str, Any]] = {}
    default_steps: ClassVar[int] = 200
    method_defaults: ClassVar[dict[str, dict[str, Any]]] = {}  # per-method settings that fit this task's scale
    default_options: ClassVar[dict[str, Any]] = {}
    sane_ranges: ClassVar[dict[str, tuple[float | None, float | None]]] = {}
    loss_explosion: ClassVar[float] = 1e4
    equivalence_margins: ClassVar[dict[str, float]] = {}
    minimum_effects: ClassVar[dict[str, float]] = {}
    retrained_targets: ClassVar[dict[str, float]] = {}
    overshoot_limit: ClassVar[float] = 10.0
    scored_prompt: ClassVar[str] = "erased"
    learned_prompts: ClassVar[bool] = False  # prompts are a learned token table (see the class docstring)
    concept_tokens: ClassVar[bool] = False  # the bundle locates each erased prompt's concept tokens (see above)
    option_types: ClassVar[dict[str, type]] = {}  # options without a default: name -> type
    emits: ClassVar[dict[str, tuple[str, bool, str] | None]] = {}
    pretrained_points: ClassVar[tuple[str, ...]] = ()  # metrics whose pretrained value evaluate adds (add_pretrained)
    # the robustness ladder (unlearnbench.robustness): the concept measure's name (None: the task has no ladder) and the
    # attacks' learning rates (relearn_lr, embedding_lr), one optimiser for every model of the task
    # the leaderboard's hypervolume reference point per axis (unlearning metric, retention metric): the "useless" end
    # of both; written into every record's task field (describe), so the leaderboard reads it from the records
    reference_points: ClassVar[dict[tuple[str, str], tuple[float, float]]] = {}
    attack_measure: ClassVar[str | None] = None
    attack_settings: ClassVar[dict[str, float]] = {}

    def __init__(self, options: dict[str, Any] | None = None, cache_dir: str | None = None):
        from unlearnbench.cache import default_cache_dir

        self.options = {**self.default_options, **self.check_options(options)}
        self.cache_dir = cache_dir or default_cache_dir()

    @classmethod
    def check_options(cls, options: dict[str, Any] | None) -> dict[str, Any]:
        """``options`` checked against each option's type and range; ``ValueError`` names what is valid."""
        from unlearnbench.settings import coerce

        if options is None:
            return {}
        if not isinstance(options, dict):
            raise ValueError(f"task {cls.name}: options must be a mapping option -> value, got {options!r}")
        valid = ["forget", *cls.default_options, *(k for k in cls.option_types if k not in cls.default_options)]
        unknown = sorted(set(map(str, options)) - set(valid))
        if unknown:
            raise ValueError(f"task {cls.name}: unknown option(s) {', '.join(unknown)}; valid: {', '.join(valid)}")
        out = {}
        for k, v in options.items():
            if k == "forget":
                if v is not None and not isinstance(v, str):
                    raise ValueError(f"task {cls.name}: forget={v!r} is not a forget set name; valid: "
                                     f"{', '.join(cls.forget_sets) or 'a name'}")
                if cls.forget_sets and v is not None and v not in cls.forget_sets:
                    raise ValueError(f"task {cls.name}: unknown forget set {v!r}; valid: {', '.join(cls.forget_sets)}")
                out[k] = v
                continue
            default = cls.default_options.get(k)
            tp = cls.option_types.get(k) or (type(default) if default is not None else None)
            positive = isinstance(default, (int, float)) and not isinstance(default, bool) and default > 0
            out[k] = v if tp is None else coerce(f"task.{k}", v, tp | None, {"positive": positive}, default)
        return out

    @classmethod
    def metric_specs(cls) -> dict[str, tuple[str, bool, str]]:
        """What ``evaluate`` emits: ``{name: (role, higher_is_better, description)}`` (``{i}`` names are patterns)."""
        from unlearnbench.metrics import METRICS

        out = {}
        for name, spec in cls.emits.items():
            if spec is None:
                known = next((n for n in METRICS.names() if metric_matches(name, n)), name)
                s = METRICS.get(known)
                index = known[len(name.split("{")[0]):].split("_")[0] if known != name else ""
                doc = re.sub(rf"\b{index}\b", "i", s.doc) if index else s.doc  # "concept 3" -> "concept i"
                spec = (s.role, s.higher_is_better, doc)
            out[name] = spec
        for name in cls.pretrained_points:  # add_pretrained companions, drawn as the pretrained model's point
            role, hib, _ = out[name]
            out.setdefault(f"{name}_pretrained", ("info", hib, f"the pretrained model's {name} (front plots)"))
        return out

    @property
    def forget_name(self) -> str:
        return self.options.get("forget") or next(iter(self.forget_sets), "default")

    def prepare(self) -> None:
        """Build and cache expensive shared state (pretraining, reference statistics) in the driver, before trials."""

    @abc.abstractmethod
    def build(self, seed: int, device: torch.device | str = "cpu") -> ModelBundle:
        """The pretrained model, a trainable copy (``net``) and the forget/retain sets."""

    @abc.abstractmethod
    def evaluate(self, bundle: ModelBundle, seed: int) -> dict[str, MetricValue]:
        """Score ``bundle.net`` against the pretrained model; keys are metric names."""

    def insane_metrics(self, metrics: dict[str, "MetricValue"]) -> list[str]:
        """``"name=value outside [lo, hi]"`` for every metric that is non-finite or leaves its sane range (reads the
        class's ``sane_ranges``, or an instance's where a task sets its own)."""
        bad = []
        for name, m in sorted(metrics.items()):
            if m.value is None:
                continue
            if not math.isfinite(m.value):
                if m.role != "info":
                    bad.append(f"{name}={m.value} (not finite)")
                continue
            for pattern, (lo, hi) in self.sane_ranges.items():
                if fnmatch.fnmatchcase(name, pattern) and ((lo is not None and m.value < lo) or
                                                           (hi is not None and m.value > hi)):
                    bad.append(f"{name}={m.value:.4g} outside [{lo}, {hi}]")
                    break
        return bad

    def oracle(self) -> Any:
        """Exact optimal fronts where the task has them (None otherwise)."""
        return None

    def robustness_measure(self, bundle: ModelBundle, net: nn.Module, prompt_ids: list[int],
                           gen: torch.Generator) -> MetricValue:
        """The robustness ladder's concept measure (:attr:`attack_measure`) of ``net``'s samples under
        ``prompt_ids`` (one per scored prompt), drawn with ``gen``; role ``robustness``, higher = more concept."""
        raise NotImplementedError(f"task {self.name} has no robustness measure")

    def mia_sets(self, bundle: ModelBundle, settings: dict[str, Any]) -> tuple[Tensor, Tensor]:
        """Membership inference's two sets (data tasks): the forget images [K, *] and held-out data of the same
        distribution [M, *] (``settings``: the attack's, ``mia_heldout`` rows and the ``sample_seed``)."""
        raise NotImplementedError(f"task {self.name} has no membership-inference sets")

    def retrained(self) -> nn.Module:
        """The retrained reference: the network this task would have if its forget set had never been in the
        training data, built by the same code as the pretrained one from the same data minus the forget set (and
        cached the same way). A task that has one overrides this; :func:`has_retrained` tells which do."""
        raise NotImplementedError(f"task {self.name} has no retrained reference")

    def describe(self) -> dict[str, Any]:
        """What goes into the record's ``task`` field."""
        default = next(iter(self.forget_sets), None)
        out = {"name": self.name, "kind": self.kind, "forget_set": self.forget_name,
               "forget_default": self.forget_name == default if default else True, "options": self.options}
        if self.reference_points:
            out["reference_points"] = [[a, b, x, y] for (a, b), (x, y) in self.reference_points.items()]
        return out


# ------------------------------------------------------------------------------------------------------------------
# reference hooks shared by the image tasks
class PoolSampler:
    """``ref_sampler`` hook: rows of the cached pretrained pool for each prompt id (uniform, with replacement)."""

    def __init__(self, pool: Tensor, device: torch.device):
        self.pool = pool  # [P, n, 1, 8, 8]
        self.device = device

    def __call__(self, cond: Tensor, generator: torch.Generator | None = None) -> Tensor:
        c = cond.cpu()
        if int(c.max()) >= self.pool.shape[0] or int(c.min()) < 0:
            raise ValueError(f"prompt ids must lie in [0, {self.pool.shape[0]}), got {c.unique().tolist()}")
        idx = torch.randint(0, self.pool.shape[1], (c.shape[0],), generator=generator)
        return self.pool[c, idx].to(self.device)


class DiffusionPosterior:
    """``posterior`` hook: ``P(c_i | x_t)`` under the pretrained model, a diffusion-classifier estimate (PAPER.md s. 3).

    Approximation, in three parts (documented choices, measured on held-out digits):

    1. ``x_t`` is mapped to the Tweedie estimate ``x0_hat = (x_t - sigma_t eps_q(x_t, 0)) / alpha_t`` (null-prompt
       noise prediction, clamped to [-1, 1]).
    2. ``log q(x0_hat|c) - log q(x0_hat|0) ~ sum_k W_k (||eps_q(x_k, 0) - n_k||^2 - ||eps_q(x_k, c) - n_k||^2)``, the
       ELBO difference by quadrature: the steps are cut into strata (``edges``, default 10/60/150/300/600; the class
       evidence of this model lies there, below 10 the terms are mostly noise and above 600 nearly zero), each
       evaluated at its ELBO-weight median ``s_k`` with weight ``W_k = sum of w_t over the stratum`` and a fixed noise
       ``n_k`` shared by all prompts and samples (common random numbers).
    3. Only strata with ``s_k >= t`` count (the evidence about the prompt that is left at noise level ``t``), so the
       estimate falls back to the prior as ``t`` grows (exactly the prior for ``t > s_K``).

    With ``q(.|0)`` the marginal, ``P(c|x) = pi_c q(x|c)/q(x)`` with a uniform prior ``pi_c = 1/10``, clamped to
    [0, 1]. On clean held-out digits (t = 0) the argmax is right 95% of the time; the estimate averages ~0.6 on the
    true digit and ~0.004 on the others. Cost per call: about ``B (0.5 + 0.8 (1 + m))`` network evaluations
    (rows with ``t > s_k`` skip stratum k).
    """

    x0_range = 1.0  # x0_hat is clamped to the data range [-x0_range, x0_range]

    def __init__(self, ref, schedule: Schedule, edges: tuple[int, ...] = (10, 60, 150, 300, 600), seed: int = 0,
                 prior: float = 0.1, null: int = NULL_PROMPT):
        self.ref, self.schedule, self.prior, self.null = ref, schedule, prior, null
        w = schedule.elbo_weights()
        pts, W = [], []
        for lo, hi in zip(edges[:-1], edges[1:]):
            ww = w[lo:hi]
            pts.append(lo + int((torch.cumsum(ww, 0) / ww.sum() >= 0.5).nonzero()[0]))
            W.append(float(ww.sum()))
        self.t_k, self.W = torch.tensor(pts), torch.tensor(W, dtype=torch.float32)
        self.noise = torch.randn((len(pts), 1, 8, 8), generator=torch.Generator().manual_seed(seed))

    @torch.no_grad()
    def log_ratio(self, x0: Tensor, concepts: list[int], t: Tensor | None = None) -> Tensor:
        """Estimated ``log q(x0|c_i) - log q(x0|0)`` from the strata with ``s_k >= t`` (all when t is None); [B, m]."""
        B, m, dev = x0.shape[0], len(concepts), x0.device
        out = torch.zeros(B, m, device=dev, dtype=x0.dtype)
        prompts = torch.as_tensor([self.null] + list(concepts), device=dev)
        P = prompts.shape[0]
        for k in range(self.t_k.shape[0]):
            rows = torch.arange(B, device=dev) if t is None else torch.nonzero(t <= self.t_k[k].item()).flatten()
            n = rows.shape[0]
            if n == 0:
                continue
            tk = torch.full((n * P,), int(self.t_k[k]), dtype=torch.long, device=dev)
            nz = self.noise[k:k + 1].to(dev, x0.dtype).expand(n, -1, -1, -1)
            x_k = add_noise(self.schedule, x0[rows], nz, tk[:n])
            eps = self.ref(x_k.repeat(P, 1, 1, 1), tk, prompts.repeat_interleave(n))
            err = (eps - nz.repeat(P, 1, 1, 1)).pow(2).flatten(1).sum(1).view(P, n)
            out[rows] += float(self.W[k]) * (err[0:1] - err[1:]).T
        return out

    @torch.no_grad()
    def __call__(self, x_t: Tensor, t: Tensor, concepts: list[int]) -> Tensor:
        B, dev = x_t.shape[0], x_t.device
        t = t.to(dev)
        d = torch.zeros(B, len(concepts), device=dev, dtype=x_t.dtype)
        rows = torch.nonzero(t <= int(self.t_k.max())).flatten()
        if rows.shape[0]:
            xr, tr = x_t[rows], t[rows]
            null = torch.full((rows.shape[0],), self.null, dtype=torch.long, device=dev)
            x0 = predict_x0(self.schedule, xr, self.ref(xr, tr, null), tr).clamp(-self.x0_range, self.x0_range)
            d[rows] = self.log_ratio(x0, concepts, tr)
        return (self.prior * d.exp()).clamp(0.0, 1.0)


def has_retrained(task: Task | type[Task]) -> bool:
    """Whether the task (class or instance) builds a retrained reference (overrides :meth:`Task.retrained`)."""
    return (task if isinstance(task, type) else type(task)).retrained is not Task.retrained


def metric_matches(pattern: str, name: str) -> bool:
    """Whether a metric ``name`` is an instance of an ``emits`` entry (``{i}`` stands for an index)."""
    return re.fullmatch(re.escape(pattern).replace(re.escape("{i}"), r"\d+"), name) is not None


def frozen_copy(net: nn.Module) -> nn.Module:
    ref = copy.deepcopy(net)
    ref.requires_grad_(False)
    ref.eval()
    return ref
