"""The method contract. The runner owns the loop (optimizer, clipping, dual steps, logging); a method owns the maths:
it draws its own batch from the :class:`~unlearnbench.tasks.base.ModelBundle` and returns per-sample loss terms."""
from __future__ import annotations

import abc
import re
import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterable

import torch
from torch import Tensor, nn

from unlearnbench.diffusion import add_noise
from unlearnbench.settings import check_range, coerce, resolve_hints
from unlearnbench.tasks.base import ModelBundle

TRAINABLE_CHOICES = ("full", "xattn", "xattn-kv", "noxattn", "lora", "lora-blocks", "prompt")


@dataclass
class MethodConfig:
    """Settings every method has. Subclasses add their own fields (with ``metadata={"help": ...}``)."""

    lr: float = field(default=1e-3, metadata={"help": "Adam learning rate"})
    steps: int | None = field(default=None, metadata={"help": "optimizer steps (None: the task's default)"})
    batch_size: int = field(default=128, metadata={"help": "samples per step"})
    trainable: str = field(default="full", metadata={"help": "full | xattn (cross-attention only, ESD-x) | xattn-kv "
                                                             "(cross-attention keys and values, CA) | noxattn "
                                                             "(all but cross-attention, ESD-u) | lora | lora-blocks "
                                                             "(LoRA on every Linear/Conv2d of the transformer blocks, "
                                                             "SPM) | prompt (the prompt-embedding table and the "
                                                             "cross-attention K/V that read it, AdvUnlearn)",
                                                     "choices": TRAINABLE_CHOICES})
    lora_rank: int = field(default=4, metadata={"help": "LoRA rank when trainable=lora"})
    grad_clip: float = field(default=1.0, metadata={"help": "max grad norm (0: off)"})
    t_min: int = field(default=0, metadata={"help": "smallest timestep index drawn in training"})

    def __post_init__(self) -> None:
        if self.trainable not in TRAINABLE_CHOICES:
            raise ValueError(f"trainable={self.trainable!r}; valid: {', '.join(TRAINABLE_CHOICES)}")
        for name in ("lr", "batch_size"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name}={getattr(self, name)!r} is out of range; valid: a number > 0")
        if self.steps is not None and self.steps < 0:
            raise ValueError(f"steps={self.steps!r} is out of range; valid: an integer >= 0")


def make_config(cls: type[MethodConfig], values: dict[str, Any], method: str) -> MethodConfig:
    """Build a config from a dict, checking every value against its field's type, range and choices.

    Raises ``ValueError`` naming the setting, the value and what is valid (unknown keys list the valid ones).
    """
    if not isinstance(values, dict):
        raise ValueError(f"method {method}: settings must be a mapping field -> value, got {values!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(map(str, values)) - set(fields))
    if unknown:
        raise ValueError(f"method {method}: unknown setting(s) {', '.join(unknown)}; "
                         f"valid: {', '.join(sorted(fields))}")
    hints = resolve_hints(cls)
    spec = {k: (hints.get(k, Any), fields[k].metadata, field_default(fields[k])) for k in values}
    try:
        conv = {k: coerce(k, v, *spec[k], ranges=False) for k, v in values.items()}
    except ValueError as e:
        raise ValueError(f"method {method}: {e}") from None
    cfg = cls(**conv)  # the config's own checks first: their messages are the most specific
    try:
        for k, v in conv.items():
            check_range(k, v, *spec[k])
    except ValueError as e:
        raise ValueError(f"method {method}: {e}") from None
    return cfg


def field_default(f: dataclasses.Field) -> Any:
    """A dataclass field's default value (``None`` where it has none)."""
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


class Method(abc.ABC):
    """Base class of every unlearning method.

    Class attributes:
        name: registry name.
        kinds: task kinds the method applies to (``"concept"``, ``"data"``).
        Config: the dataclass of settings.
        grid_params: grid name -> the config field that grid sweeps (``{"eps": "eta"}`` for ESD).
        default_grids: task kind -> grid name -> values (weak -> strong), used on tasks whose own grids do not name
            this method (plugins, new files); a task's own values win. Subclasses inherit what they do not declare.
        closed_form: the method's "training" is one closed-form edit of the weights (UCE), made in :meth:`setup`; the
            runner takes no optimizer step (``steps`` is 0) and ``losses`` is never called. An inference-time method
            (SLD) is closed-form with no weights at all: its ``setup`` installs what changes sampling (a
            ``sampling_hook`` on the network, see :func:`unlearnbench.diffusion.guided`).
    """

    name: ClassVar[str]
    kinds: ClassVar[tuple[str, ...]] = ("concept", "data")
    Config: ClassVar[type[MethodConfig]] = MethodConfig
    grid_params: ClassVar[dict[str, str]] = {}
    default_grids: ClassVar[dict[str, dict[str, list[float]]]] = {}
    closed_form: ClassVar[bool] = False

    @classmethod
    def declared_grid(cls, kind: str, grid: str) -> list[float] | None:
        """This method's own values for ``grid`` on ``kind`` tasks, searched up the class hierarchy (None: none)."""
        for klass in cls.__mro__:
            values = vars(klass).get("default_grids", {}).get(kind, {}).get(grid)
            if values is not None:
                return [float(v) for v in values]
        return None

    @classmethod
    def lineage(cls) -> list[str]:
        """The names under which a task's grid values and method defaults serve this method, nearest first: a plugin
        subclass of a built-in method takes its parent's (``class Mine(ESD)`` named ``mine``: ``["mine", "esd"]``)
        unless it declares its own; a built-in method only its own name (each task names the built-ins it runs,
        e.g. sd-concept leaves the importance-sampled rkl-is and lik-is out)."""
        names = [vars(k)["name"] for k in cls.__mro__ if isinstance(vars(k).get("name"), str)]
        if cls.__module__.split(".")[:2] == ["unlearnbench", "methods"]:
            return names[:1]
        return names

    @classmethod
    def declared_grid_names(cls, kind: str) -> list[str]:
        """Grid names this method declares values for on ``kind`` tasks (own and inherited)."""
        names = {g for klass in cls.__mro__ for g in vars(klass).get("default_grids", {}).get(kind, {})}
        return sorted(names)

    def __init__(self, cfg: MethodConfig, bundle: ModelBundle, generator: torch.Generator):
        if bundle.kind not in self.kinds:
            raise ValueError(f"method {self.name} applies to {'/'.join(self.kinds)} tasks, not {bundle.kind}")
        self.cfg = cfg
        self.bundle = bundle
        self.gen = generator
        self.net = bundle.net
        self.step = 0
        self._params = select_trainable(self.net, cfg.trainable, cfg.lora_rank)

    # -- the contract -------------------------------------------------------------------------------
    @classmethod
    def unsupported_reason(cls, task) -> str | None:
        """Why this method cannot run on ``task`` (checked when the sweep is planned), or None."""
        return None

    def trainable_parameters(self) -> Iterable[nn.Parameter]:
        return self._params

    def setup(self) -> None:
        """Called once by the runner before the first step (e.g. SalUn's saliency mask; a closed-form method's edit)."""

    def finish(self) -> None:
        """Called once by the runner after the last step of a training that did not diverge (MACE's fusion)."""

    @abc.abstractmethod
    def losses(self) -> dict[str, Tensor]:
        """Draw a batch and return per-sample terms ``{name: [B]}``; ``"loss"`` is what ``objective`` averages."""

    def objective(self, losses: dict[str, Tensor]) -> Tensor:
        return losses["loss"].mean()

    def backward(self, losses: dict[str, Tensor]) -> Tensor:
        """Back-propagate the objective (methods that manipulate gradients override this); returns it detached."""
        obj = self.objective(losses)
        obj.backward()
        return obj.detach()

    def after_backward(self) -> None:
        """Hook between ``backward`` and the optimizer step (gradient masks, rescaling)."""

    def state_dict(self) -> dict:
        return {"step": self.step}

    def load_state_dict(self, state: dict) -> None:
        self.step = state["step"]

    # -- helpers for subclasses ---------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.bundle.device

    def randn_like(self, x: Tensor) -> Tensor:
        return torch.randn(x.shape, generator=self.gen, dtype=x.dtype).to(x.device)

    def rand_t(self, n: int) -> Tensor:
        return torch.randint(self.cfg.t_min, self.bundle.schedule.T, (n,), generator=self.gen).to(self.device)

    def pick(self, ids: list[int], n: int) -> Tensor:
        """n prompt ids drawn uniformly from ``ids``; [n] long."""
        ids_t = self.cond(ids)
        return ids_t[torch.randint(0, len(ids_t), (n,), generator=self.gen).to(self.device)]

    def noised(self, x0: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Forward-noise ``x0`` at uniform timesteps: (x_t, t, noise)."""
        noise, t = self.randn_like(x0), self.rand_t(x0.shape[0])
        return add_noise(self.bundle.schedule, x0, noise, t), t, noise

    @torch.no_grad()
    def noised_ref(self, prompts: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Pretrained-model samples for ``prompts``, forward-noised: (x_t, t, noise)."""
        return self.noised(self.bundle.sample_ref(prompts, self.gen))

    def cond(self, ids: Tensor | list[int] | int, n: int | None = None) -> Tensor:
        if isinstance(ids, int):
            return torch.full((n,), ids, dtype=torch.long, device=self.device)
        return torch.as_tensor(ids, dtype=torch.long).to(self.device)


def select_trainable(net: nn.Module, mode: str, lora_rank: int = 4) -> list[nn.Parameter]:
    """Freeze ``net`` except the chosen part; returns the trainable parameters.

    ``full``: everything. ``xattn``: cross-attention (``attn2``) only, ESD-x style. ``xattn-kv``: the cross-attention
    key and value projections (``attn2.to_k``, ``attn2.to_v``), Concept Ablation's ``--parameter_group cross-attn``.
    ``noxattn``: everything except
    cross-attention, the time embedding and the output layer, ESD-u style (rohitgandikota/erasing,
    ``train-scripts/train-esd.py``: ``name.startswith('out.') or 'attn2' in name or 'time_embed' in name`` excluded).
    ``lora``: peft LoRA adapters on the cross-attention projections (``attn2.to_q/to_k/to_v/to_out.0``).
    ``lora-blocks``: peft LoRA adapters (default init: A Kaiming-uniform, B zero; scale alpha/r with alpha 1, SPM's
    config) on every Linear and Conv2d inside the UNet's transformer blocks (diffusers ``Transformer2DModel``: proj_in/out, self- and
    cross-attention, feed-forward), SPM's ``SPMNetwork`` target set (Con6924/SPM, ``src/models/spm.py``).
    ``prompt``: the prompt-embedding table (``prompt_embedding``, the digits stand-in for a text encoder) and the
    cross-attention ``attn2.to_k/to_v`` that map its tokens into the UNet.
    """
    if mode == "full":
        net.requires_grad_(True)
        return [p for p in net.parameters() if p.requires_grad]
    has_xattn = any(".attn2." in n for n, _ in net.named_modules()) or any("attn2" in n for n, _ in net.named_modules())
    if not has_xattn:
        raise ValueError(f"trainable={mode!r} needs cross-attention (attn2) layers, which this task's network lacks; "
                         f"use trainable=full")
    net.requires_grad_(False)
    if mode in ("xattn", "xattn-kv", "noxattn"):
        params = []
        for n, p in net.named_parameters():
            xattn = "attn2" in n
            kv = re.search(r"attn2\.to_[kv]\.", n) is not None
            excluded = xattn or "time_emb" in n or re.search(r"(^|\.)(out|conv_out)\.", n) is not None
            if (mode == "xattn" and xattn) or (mode == "xattn-kv" and kv) or (mode == "noxattn" and not excluded):
                p.requires_grad_(True)
                params.append(p)
        return params
    if mode == "lora":
        return _inject_lora(net, r=lora_rank, lora_alpha=lora_rank, init_lora_weights="gaussian",
                            target_modules=r".*attn2\.(to_q|to_k|to_v|to_out\.0)")
    if mode == "lora-blocks":
        targets = [f"{n}.{c}" if n else c for n, m in net.named_modules() if type(m).__name__ == "Transformer2DModel"
                   for c, sub in m.named_modules() if c and isinstance(sub, (nn.Linear, nn.Conv2d))]
        return _inject_lora(net, r=lora_rank, lora_alpha=1, init_lora_weights=True, target_modules=targets)
    if mode == "prompt":
        table = getattr(net, "prompt_embedding", None)
        if table is None:
            raise ValueError("trainable='prompt' needs a prompt-embedding table (net.prompt_embedding), which this "
                             "task's network lacks; use trainable=xattn")
        params = [table.weight] + [p for n, p in net.named_parameters() if re.search(r"attn2\.to_[kv]\.", n)]
        for p in params:
            p.requires_grad_(True)
        return params
    raise ValueError(f"trainable={mode!r}; valid: {', '.join(TRAINABLE_CHOICES)}")


def _inject_lora(net: nn.Module, **lora) -> list[nn.Parameter]:
    """Inject peft LoRA adapters (``LoraConfig(**lora)``) into ``net``; returns the adapters' parameters, trainable."""
    from peft import LoraConfig, inject_adapter_in_model

    inject_adapter_in_model(LoraConfig(**lora), net)
    params = [p for n, p in net.named_parameters() if "lora_" in n]
    for p in params:
        p.requires_grad_(True)
    return params
