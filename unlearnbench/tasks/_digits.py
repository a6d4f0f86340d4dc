"""What both digits tasks share: scikit-learn's 8x8 digits, a class-conditional tiny UNet (:class:`~unlearnbench.models.CondUNet`)
pretrained by the project and cached, and a small CNN classifier for evaluation (never used in training).

Prompts: id 0 is the null prompt (``bundle.null_cond``), id ``d + 1`` is "digit d". Images are [1, 8, 8] in [-1, 1].
Data split: stratified 80/20 (seed 0) of the 1797 digits; the 20% held-out part is used only for evaluation.
Samples (reference pools, evaluation) are DDIM with ``sample_steps`` (20) steps and classifier-free guidance
``guidance`` (3.0) on digit prompts, clamped to [-1, 1] (the data range, as image pipelines do).

The tasks: :mod:`~unlearnbench.tasks.digits_concept` and :mod:`~unlearnbench.tasks.digits_data`.
"""
from __future__ import annotations

import copy
import logging
import math
import os
import time
from typing import Any, ClassVar

import torch
from torch import Tensor

from unlearnbench.cache import artefact_digests, cached_torch
from unlearnbench.diffusion import Schedule, ddim_sample, elbo_error, guided
from unlearnbench.metrics.base import spec
from unlearnbench.models import (CLASSIFIER_DEFAULTS, NULL_PROMPT, PRETRAIN_DEFAULTS, UNET_DEFAULTS, CondUNet,
                                 DigitClassifier, make_schedule, pretrain_unet, split_digits, train_classifier)
from unlearnbench.progress import progress as progress_of
from unlearnbench.tasks.base import MetricValue, ModelBundle, Task, frozen_copy

logger = logging.getLogger(__name__)

FAMILY = "digits"
for _name, _role, _hib, _doc in [
    ("acc_forget", "unlearning", False, "classifier accuracy on guided samples of the erased prompts (chance 0.1)"),
    ("acc_kept", "retention", True, "classifier accuracy on guided samples of the kept digit prompts"),
    ("kid_kept", "retention", False, "KID (classifier features) of kept-prompt samples to the pretrained model's"),
    ("kl_proxy_kept", "retention", False, "point-wise KL estimate of KL(p_theta(.|k) || q(.|k)), kept prompts (nats)"),
    ("forget_bpd", "unlearning", True, "negative ELBO of the forget images, bits/dim of the continuous density on "
                                       "[-1,1]^64 (can be < 0; +3 gives the bound for the 17-level pixel grid)"),
    ("forget_nll_ode", "info", True, "probability-flow ODE NLL of the forget images (Hutchinson), bits/dim"),
    ("kid_retain", "retention", False, "KID (classifier features) of samples to held-out digits + kept injected"),
    ("retain_bpd", "retention", False, "negative ELBO of held-out digits, continuous-density bits/dim (as forget_bpd)"),
]:
    spec(_name, _role, _hib, FAMILY, _doc)

DATA = {"source": "sklearn.datasets.load_digits", "scale": "x/8-1", "test_frac": 0.2, "split_seed": 0}
GUIDANCE = 3.0
SAMPLE_STEPS = 20
FINETUNE_DEFAULTS: dict[str, Any] = {"steps": 600, "lr": 1e-3, "warmup": 20, "p_uncond": 1.0, "seed": 1}


# -------------------------------------------------------------------------------------------------------------------
# configs and cached artefacts
# -------------------------------------------------------------------------------------------------------------------
def _configs(options: dict[str, Any]) -> dict[str, Any]:
    """Every config the cached artefacts depend on, from task options (small values for tests)."""
    train = dict(PRETRAIN_DEFAULTS)
    if options.get("pretrain_steps") is not None:
        train["steps"] = int(options["pretrain_steps"])
        train["warmup"] = min(train["warmup"], max(1, train["steps"] // 10))
    fine = {**PRETRAIN_DEFAULTS, **FINETUNE_DEFAULTS}
    if options.get("finetune_steps") is not None:
        fine["steps"] = int(options["finetune_steps"])
        fine["warmup"] = min(fine["warmup"], max(1, fine["steps"] // 10))
    cls = dict(CLASSIFIER_DEFAULTS)
    if options.get("classifier_epochs") is not None:
        cls["epochs"] = int(options["classifier_epochs"])
    return {
        "unet": {"unet": dict(UNET_DEFAULTS), "train": train, "data": DATA},
        "classifier": {"classifier": cls, "data": DATA},
        "finetune": fine,
        "guidance": float(options.get("guidance", GUIDANCE)),
        "sample_steps": int(options.get("sample_steps", SAMPLE_STEPS)),
        "pool_size": int(options.get("pool_size", 256)),
    }


def _split() -> dict[str, Tensor]:
    return split_digits(DATA["test_frac"], DATA["split_seed"])


def load_unet(cache_dir: str, key: dict[str, Any], progress: bool = True) -> CondUNet:
    """The base conditional UNet (pretrained on the training split with CFG dropout), from the cache or trained."""
    def build():
        split = _split()
        net = pretrain_unet(key["train"], split["x_train"], split["y_train"] + 1, key["unet"], progress=progress)
        return {"state_dict": net.state_dict(), "train_time_s": net.train_time_s,
                "images_per_s": key["train"]["steps"] * key["train"]["batch_size"] / max(net.train_time_s, 1e-9)}

    obj = cached_torch(cache_dir, "digits-unet", key, build)
    net = CondUNet(key["unet"])
    net.load_state_dict(obj["state_dict"])
    net.pretrain_info = {k: v for k, v in obj.items() if k != "state_dict"}  # type: ignore[attr-defined]
    return net.eval().requires_grad_(False)


def load_classifier(cache_dir: str, key: dict[str, Any], progress: bool = True) -> DigitClassifier:
    def build():
        t0 = time.time()
        net, acc = train_classifier(key["classifier"], progress=progress)
        return {"state_dict": net.state_dict(), "heldout_acc": acc, "train_time_s": time.time() - t0}

    obj = cached_torch(cache_dir, "digits-classifier", key, build)
    net = DigitClassifier(key["classifier"])
    net.load_state_dict(obj["state_dict"])
    net.heldout_acc = obj["heldout_acc"]  # type: ignore[attr-defined]
    return net.eval().requires_grad_(False)


@torch.no_grad()
def sample_prompts(net, schedule: Schedule, cond: Tensor, guidance: float, steps: int, generator: torch.Generator,
                   chunk: int = 256, x_T: Tensor | None = None, progress: bool = False) -> Tensor:
    """Guided DDIM samples of ``net`` for prompt ids ``cond`` [N] (the null prompt unguided), clamped to [-1, 1]."""
    eps = guided(net, NULL_PROMPT, guidance)
    if x_T is None:
        x_T = torch.randn((cond.shape[0], 1, 8, 8), generator=generator)
    out = []
    rng = progress_of(range(0, cond.shape[0], chunk), f"sampling {cond.shape[0]} digits", unit="batch",
                      enabled=progress)
    dev = next(net.parameters()).device
    for i in rng:
        c = cond[i:i + chunk].to(dev)
        fn = eps if bool((c != NULL_PROMPT).any()) else net
        out.append(ddim_sample(schedule, fn, c, (1, 8, 8), steps, x_T=x_T[i:i + chunk].to(dev)).clamp(-1, 1).cpu())
    return torch.cat(out)


@torch.no_grad()
def features(classifier: DigitClassifier, x: Tensor) -> tuple[Tensor, Tensor]:
    """(features [N, F], logits [N, 10]) of images in [-1, 1]."""
    f = classifier.features(x.cpu())
    return f, classifier.logits_from_features(f)


def load_pool(cache_dir: str, cfgs: dict[str, Any], net: CondUNet, classifier: DigitClassifier,
              progress: bool = True) -> dict[str, Tensor]:
    """Cached samples of the pretrained model: ``samples`` [11, n, 1, 8, 8] (prompt id, sample), their classifier
    ``feats`` [11, n, F] and ``acc`` [11] (accuracy per digit prompt; NaN for the null prompt)."""
    key = {"unet": cfgs["unet"], "classifier": cfgs["classifier"], "guidance": cfgs["guidance"],
           "sample_steps": cfgs["sample_steps"], "pool_size": cfgs["pool_size"], "seed": 12345}

    def build():
        n, P = cfgs["pool_size"], UNET_DEFAULTS["n_prompts"]
        cond = torch.arange(P).repeat_interleave(n)
        x = sample_prompts(net, make_schedule(cfgs["unet"]["train"]), cond, cfgs["guidance"], cfgs["sample_steps"],
                           torch.Generator().manual_seed(key["seed"]), progress=progress)
        f, logits = features(classifier, x)
        hit = (logits.argmax(1) == cond - 1).float().view(P, n).mean(1)
        hit[NULL_PROMPT] = float("nan")
        return {"samples": x.view(P, n, 1, 8, 8), "feats": f.view(P, n, -1), "acc": hit}

    return cached_torch(cache_dir, "digits-pool", key, build)


@torch.no_grad()
def kl_proxy(schedule: Schedule, x0: Tensor, eps_p, eps_q, cond: Tensor, n_t: int = 4,
             generator: torch.Generator | None = None) -> Tensor:
    """Per-sample point-wise KL estimate ``KL(p || q) ~ sum_t w_t E||eps_p(x_t) - eps_q(x_t)||^2`` (PAPER.md s. 1).

    The estimator of :func:`unlearnbench.diffusion.pointwise_kl` with t drawn by importance sampling ``t ~ w_t / sum w``
    (stratified over ``n_t`` quantiles per sample), so each term is ``sum(w) ||eps_p - eps_q||^2``: on the digits model
    its spread over repeated draws is ~5x smaller than with uniform t (the ELBO weights span 0.5 at t = 0 to 0.005).
    ``x0`` [B, ...] are samples of p; returns [B] (nats).
    """
    w = schedule.elbo_weights()
    total = float(w.sum())
    cdf = torch.cumsum(w, 0) / total
    dev = x0.device

    def draws():
        for k in range(n_t):
            u = (k + torch.rand(x0.shape[0], generator=generator, dtype=torch.float64)) / n_t
            t = torch.searchsorted(cdf, u).clamp(max=schedule.T - 1).to(dev)
            yield t, torch.randn(x0.shape, generator=generator).to(dev, x0.dtype), total

    out = torch.zeros(x0.shape[0], dtype=torch.float64)  # summed in float64 on the CPU
    return elbo_error(schedule, x0, eps_p, cond, draws(), ref=eps_q, out=out) / n_t


def _mean_metric(v: Tensor, role: str, hib: bool) -> MetricValue:
    v = v.double().flatten()
    n = v.numel()
    se = float(v.std() / math.sqrt(n)) if n > 1 else None
    return MetricValue(float(v.mean()), se, n, role, hib)  # type: ignore[arg-type]


def _save_grid(path: str, rows: list[Tensor], labels: list[str], scale: int = 4) -> str:
    """Rows of [n, 1, 8, 8] images in [-1, 1] -> one PNG: torchvision's ``make_grid`` (each image scaled up
    ``scale`` x, 2 px gaps), a label left of each row."""
    from PIL import Image, ImageDraw
    from torchvision.utils import make_grid

    n = max(r.shape[0] for r in rows)
    tiles = []
    for r in rows:
        r = ((r.clamp(-1, 1) + 1) / 2).repeat_interleave(scale, 2).repeat_interleave(scale, 3)
        tiles.append(torch.cat([r, torch.ones(n - r.shape[0], *r.shape[1:])]) if r.shape[0] < n else r)
    grid = make_grid(torch.cat(tiles), nrow=n, padding=2, pad_value=0.5)[0]  # [H, W]
    label_w = 8 + 6 * max(len(s) for s in labels)  # PIL's default bitmap font: about 6 px per character
    canvas = Image.new("L", (label_w + grid.shape[1], grid.shape[0]), 255)
    canvas.paste(Image.fromarray((grid * 255).round().byte().numpy(), mode="L"), (label_w, 0))
    draw = ImageDraw.Draw(canvas)
    row_h = 8 * scale + 2
    for i, text in enumerate(labels):
        draw.text((4, 2 + i * row_h + row_h // 2 - 6), text, fill=0)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    canvas.save(path)
    return path


# -------------------------------------------------------------------------------------------------------------------
# tasks
# -------------------------------------------------------------------------------------------------------------------
class _DigitsTask(Task):
    default_options: dict[str, Any] = {}
    # small-config overrides (tests, quick looks); both tasks accept every digits option
    option_types = {"pretrain_steps": int, "finetune_steps": int, "classifier_epochs": int, "guidance": float,
                    "sample_steps": int, "pool_size": int, "n_eval": int, "n_eval_kept": int, "n_retain_eval": int}

    def __init__(self, options=None, cache_dir=None):
        super().__init__(options, cache_dir)
        self.cfgs = _configs(self.options)
        self._state: dict[str, Any] | None = None

    def _base(self, progress: bool = True) -> dict[str, Any]:
        if self._state is None:
            with torch.random.fork_rng(devices=[]):
                unet = load_unet(self.cache_dir, self.cfgs["unet"], progress)
                cls = load_classifier(self.cache_dir, self.cfgs["classifier"], progress)
            self._state = {"unet": unet, "classifier": cls, "schedule": make_schedule(self.cfgs["unet"]["train"]),
                           "split": _split()}
        return self._state

    artefacts: tuple[str, ...] = ("digits-unet", "digits-classifier")

    def describe(self) -> dict[str, Any]:
        """Adds ``pretrained``: the sha256 prefix of each cached network and pool the evaluation used."""
        return {**super().describe(), "pretrained": artefact_digests(self.artefacts)}

    attack_settings: ClassVar[dict[str, float]] = {"relearn_lr": 5e-4, "embedding_lr": 0.02}

    def _bundle(self, net: CondUNet, kind: str, device, **kw) -> ModelBundle:
        device = torch.device(device)
        ref = frozen_copy(net).to(device)
        trainable = copy.deepcopy(net).to(device).requires_grad_(True).train()
        return ModelBundle(net=trainable, ref=ref, schedule=self._base()["schedule"],
                           kind=kind,  # type: ignore[arg-type]
                           data_shape=(1, 8, 8), null_cond=NULL_PROMPT, sample_steps=self.cfgs["sample_steps"],
                           guidance=self.cfgs["guidance"], device=device, **kw)


# -------------------------------------------------------------------------------------------------------------------
# CLI entry points
# -------------------------------------------------------------------------------------------------------------------
def pretrain(task_name: str = "digits", cache_dir: str | None = None, progress: bool = True,
             options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Pretrain (or load from the cache) everything the digits tasks need; returns numbers for the report.

    ``task_name`` is ``digits`` (both tasks), ``digits-concept`` or ``digits-data``; ``options`` are task options
    (the small-config overrides of the tests, e.g. ``{"pretrain_steps": 20}``).
    """
    from unlearnbench.tasks import TASKS

    valid = ("digits", "digits-concept", "digits-data")
    if task_name not in valid:
        raise ValueError(f"unknown digits task {task_name!r}; valid: {', '.join(valid)}")
    t0 = time.time()
    report: dict[str, Any] = {}
    for name in ("digits-concept", "digits-data"):
        if task_name in ("digits", name):
            task = TASKS.get(name)(options, cache_dir=cache_dir)
            task.prepare(progress)
            for k, v in task.pretrain_report().items():
                report.setdefault(k, v)
    report["wall_s"] = time.time() - t0
    return report
