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

from unlearnbench.diffusion import Schedule

Kind = Literal["concept", "data"]


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


@dataclass(frozen=True)
class MetricValue:
    """One evaluated metric, as stored in the record."""

    value: float
    stderr: float | None = None
    n: int | None = None
    role: Literal["unlearning", "retention", "info"] = "info"
    higher_is_better: bool = False

    def to_dict(self) -> dict:
        return {"value": self.value, "stderr": self.stderr, "n": self.n, "role": self.role,
                "higher_is_better": self.higher_is_better}


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
    option_types: ClassVar[dict[str, type]] = {}  # options without a default: name -> type
    emits: ClassVar[dict[str, tuple[str, bool, str] | None]] = {}
    pretrained_points: ClassVar[tuple[str, ...]] = ()  # metrics whose pretrained value evaluate adds (add_pretrained)

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

    @classmethod
    def grid_names(cls, method: str | None = None) -> list[str]:
        """The task's own grid names, plus the ones ``method`` declares for this task's kind."""
        names = list(cls.grids)
        if method is not None:
            from unlearnbench.methods import METHODS

            names += [g for g in METHODS.get(method).declared_grid_names(cls.kind) if g not in names]
        return names

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

    def grid(self, grid_name: str, method: str) -> list[float]:
        """Values of ``grid_name`` for ``method``: the task's own for it, else what its class declares for this kind;
        then the same for each method it subclasses, nearest first (a plugin subclass of a built-in method runs with
        its parent's values here unless it declares its own)."""
        from unlearnbench.methods import METHODS

        own = self.grids.get(grid_name, {})
        cls = METHODS.get(method)
        if method in own:
            return list(own[method])
        for klass in cls.__mro__:  # its own declared values, then the nearest parent's (the task's, else declared)
            name = vars(klass).get("name")
            if klass is not cls and isinstance(name, str) and name in own and name in cls.lineage():
                return list(own[name])
            declared = vars(klass).get("default_grids", {}).get(self.kind, {}).get(grid_name)
            if declared is not None:
                return [float(v) for v in declared]
        if grid_name not in self.grid_names(method):
            raise ValueError(f"task {self.name} has no grid {grid_name!r}; valid: {', '.join(self.grid_names(method))}")
        raise ValueError(f"grid {grid_name!r} of task {self.name} has no values for method {method!r}; "
                         f"it has: {', '.join(own)} (a method declares its own with default_grids)")

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

    def describe(self) -> dict[str, Any]:
        """What goes into the record's ``task`` field."""
        default = next(iter(self.forget_sets), None)
        return {"name": self.name, "kind": self.kind, "forget_set": self.forget_name,
                "forget_default": self.forget_name == default if default else True, "options": self.options}


def metric_matches(pattern: str, name: str) -> bool:
    """Whether a metric ``name`` is an instance of an ``emits`` entry (``{i}`` stands for an index)."""
    return re.fullmatch(re.escape(pattern).replace(re.escape("{i}"), r"\d+"), name) is not None


def frozen_copy(net: nn.Module) -> nn.Module:
    ref = copy.deepcopy(net)
    ref.requires_grad_(False)
    ref.eval()
    return ref
