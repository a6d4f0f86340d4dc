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
        forget_sets: named forget sets; ``options["forget"]`` picks one (default: the first).
        method_defaults: ``{method: {field: value}}`` overriding a method's defaults on this task (learning rates,
            dual step sizes, estimate sizes fitted to the task's scale); users override them with ``--set``.

    ``bundle.extras`` keys the methods read: ``constrain_on`` (``"null"``: the unlearned distribution p of a concept
    constraint is the null prompt's output, as on the mixtures; default ``"erased"``: each erased prompt's output),
    ``forget_fraction`` (share of the training set that the forget set makes up, K/N by default; SISS uses it),
    ``{train,retain,forget}_cond`` (per-row prompt ids of the data sets; default: the null prompt).
    """

    name: ClassVar[str]
    kind: ClassVar[Kind]
    grids: ClassVar[dict[str, dict[str, list[float]]]] = {}
    axes: ClassVar[list[tuple[str, str]]] = []
    forget_sets: ClassVar[dict[str, Any]] = {}
    default_steps: ClassVar[int] = 200
    method_defaults: ClassVar[dict[str, dict[str, Any]]] = {}  # per-method settings that fit this task's scale
    default_options: ClassVar[dict[str, Any]] = {}

    def __init__(self, options: dict[str, Any] | None = None, cache_dir: str | None = None):
        from unlearnbench.cache import default_cache_dir

        self.options = {**self.default_options, **(options or {})}
        self.cache_dir = cache_dir or default_cache_dir()
        forget = self.options.get("forget")
        if self.forget_sets and forget is not None and forget not in self.forget_sets:
            raise ValueError(f"task {self.name}: unknown forget set {forget!r}; valid: {', '.join(self.forget_sets)}")

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
        try:
            by_method = self.grids[grid_name]
        except KeyError:
            raise ValueError(f"task {self.name} has no grid {grid_name!r}; valid: {', '.join(self.grids)}") from None
        if method not in by_method:
            raise ValueError(f"grid {grid_name!r} of task {self.name} has no values for method {method!r}; "
                             f"it has: {', '.join(by_method)}")
        return list(by_method[method])

    def oracle(self) -> Any:
        """Exact optimal fronts where the task has them (None otherwise)."""
        return None

    def describe(self) -> dict[str, Any]:
        """What goes into the record's ``task`` field."""
        default = next(iter(self.forget_sets), None)
        return {"name": self.name, "kind": self.kind, "forget_set": self.forget_name,
                "forget_default": self.forget_name == default if default else True, "options": self.options}


def frozen_copy(net: nn.Module) -> nn.Module:
    ref = copy.deepcopy(net)
    ref.requires_grad_(False)
    ref.eval()
    return ref
