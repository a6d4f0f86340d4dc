"""What the paper-scale tasks (``sd-concept``, ``ddpm-data``) share: the model option, the metric backends chosen
from task options and checked before any work, batched generation from fixed noise, and the evaluation facts
(backend versions, thresholds, feature network, sampler) that go into every record.

Metric backends, loaded one at a time and dropped after use:

- KID/FID: Inception-v3 when its weights are on disk (``task.inception_weights`` or the torch hub cache), else the
  CLIP image tower; the metric names carry the feature network (``kid_retain_inception`` vs ``kid_retain_clip``),
  so numbers from different networks never share a column.
- CLIP: open_clip with a local checkpoint (``task.clip_pretrained``); ``task.clip_random: true`` with an optional
  ``task.clip_config`` builds random weights (tests only).
- NudeNet: the detector in the wheel; the record stores the package version, the classes and the threshold.
"""
from __future__ import annotations

import gc
import importlib.metadata
import logging
import math
import os
import time
from importlib import resources
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn

from unlearnbench.diffusion import EpsFn, Schedule, ddim_sample, guided
from unlearnbench.metrics.base import spec
from unlearnbench.progress import Progress, progress
from unlearnbench.tasks.base import MetricValue, Task

logger = logging.getLogger(__name__)

FEATURES = ("inception", "clip")
for _f in FEATURES:
    spec(f"kid_retain_{_f}", "retention", False, "kid_fid", f"KID ({_f} features) of samples to the retain reference")
    spec(f"fid_retain_{_f}", "retention", False, "kid_fid", f"FID ({_f} features) of samples to the retain reference")

# what ``emits`` / ``axes_when`` declare for the KID/FID metrics (``ls`` reads them without building the task)
FEATURE_EMITS: dict[str, None] = {f"{k}_retain_{f}": None for k in ("kid", "fid") for f in FEATURES}
KID_AXIS = "kid_retain_{features}"
FEATURES_WHEN = "{features}: inception when its weights are on disk, else clip"

PAPER_OPTIONS: dict[str, Any] = {
    "model": None, "allow_download": False, "precision": "auto", "gradient_checkpointing": False,
    "sample_steps": 50, "n_eval": 4, "gen_batch": 16, "eval_seed": 0, "pool_size": 16,
    "clip_model": "ViT-L-14", "clip_pretrained": None, "clip_config": None, "clip_random": False,
    "kid_features": "auto", "inception_weights": None,
}
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
_WORKER: dict[str, Any] = {}  # one loaded model per process (Ray reuses its workers: one load per worker)


def worker_load(key: tuple, load: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """``load()``'s parts, loaded once per process and key (the previous model is dropped first); the returned dict
    also holds per-worker caches (text embeddings, the model hash)."""
    if _WORKER.get("key") != key:
        _WORKER.clear()
        free()
        with Progress(f"loading {key[0]} on {key[-1]}"):
            _WORKER.update(key=key, parts=load(), embeds={})
    return _WORKER


def release_gpu_model(device: torch.device) -> None:
    """After the driver's ``prepare`` on a GPU: drop its model so the GPU is the trials' (they load their own)."""
    if device.type == "cuda":
        _WORKER.clear()
        free()


class EpsNet(nn.Module):
    """``forward(x_t, t, cond) -> eps`` around a diffusers UNet, under autocast when set.

    With ``embeds`` [P, L, D] (a UNet2DConditionModel), ``cond`` are prompt ids and the UNet reads their precomputed
    text embeddings (a buffer, not saved with the weights); without (a UNet2DModel), ``cond`` is ignored. A learned
    variance output (``out_channels = 2 * in_channels``) is cut to the noise prediction.
    """

    def __init__(self, unet: nn.Module, embeds: Tensor | None = None, autocast: torch.dtype | None = None):
        super().__init__()
        self.unet = unet
        self.register_buffer("embeds", embeds, persistent=False)
        self.autocast = autocast
        self.channels = int(unet.config.in_channels)

    def forward(self, x_t: Tensor, t: Tensor, cond: Tensor) -> Tensor:
        kw = {} if self.embeds is None else {"encoder_hidden_states": self.embeds[cond]}
        with torch.autocast(x_t.device.type, dtype=self.autocast or torch.float32, enabled=self.autocast is not None):
            out = self.unet(x_t, t, **kw).sample
        return out[:, :self.channels].float()


def read_prompts(name_or_path: str) -> list[str]:
    """Prompts of a shipped list (``unlearnbench/tasks/prompts/<name>.txt``) or of a user file: one per line, or a
    CSV with a ``prompt`` column (I2P's layout). Blank lines and ``#`` comments are skipped."""
    p = Path(name_or_path).expanduser()
    if p.suffix.lower() == ".csv":
        import csv

        with open(p, newline="", encoding="utf-8") as f:
            return [row["prompt"].strip() for row in csv.DictReader(f) if row.get("prompt", "").strip()]
    text = p.read_text(encoding="utf-8") if p.is_file() else \
        resources.files("unlearnbench.tasks").joinpath("prompts", f"{name_or_path}.txt").read_text(encoding="utf-8")
    return [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]


PATH_OPTIONS = ("model", "forget_dir", "data_dir", "forget_prompts", "clip_pretrained", "clip_config",
                "inception_weights")


def absolute_paths(options: dict[str, Any] | None) -> None:
    """Make existing relative paths among the options absolute, in place: the sweep plan carries these options to
    trials, which may run in another working directory (Ray's trial folders)."""
    for k in PATH_OPTIONS:
        v = (options or {}).get(k)
        if isinstance(v, str) and os.path.exists(os.path.expanduser(v)):
            options[k] = os.path.abspath(os.path.expanduser(v))  # type: ignore[index]


class PaperTask(Task):
    """Base of the tasks on user-supplied diffusers weights (see the module docstring for the options)."""

    default_model: str = ""
    needs_clip: bool = False

    def __init__(self, options: dict[str, Any] | None = None, cache_dir: str | None = None):
        unknown = sorted(set(options or {}) - set(self.default_options) - {"forget"})
        if unknown:
            raise ValueError(f"task {self.name}: unknown option(s) {', '.join(unknown)}; valid: "
                             f"{', '.join(sorted(self.default_options))}, forget")
        absolute_paths(options)
        super().__init__(options, cache_dir)
        o = self.options
        if o["precision"] not in ("auto", *PRECISIONS):
            raise ValueError(f"task {self.name}: precision={o['precision']!r}; valid: auto, {', '.join(PRECISIONS)}")
        if o["kid_features"] not in ("auto", *FEATURES, "none"):
            raise ValueError(f"task {self.name}: kid_features={o['kid_features']!r}; valid: auto, inception, clip, none")
        from unlearnbench.pipelines import resolve_model

        self.model_dir = resolve_model(str(o["model"] or self.default_model), bool(o["allow_download"]))
        self.check_model()
        self.check_inputs()
        clip = o["clip_pretrained"]
        if clip and not Path(str(clip)).expanduser().is_file() and not o["allow_download"]:
            raise ValueError(f"task {self.name}: clip_pretrained={clip!r} is not a file; pass a local open_clip "
                             f"checkpoint (open_clip_pytorch_model.bin or .safetensors), or --allow-download for a tag")
        self.features = self._choose_features()
        if self.needs_clip and not self.has_clip:
            raise ValueError(f"task {self.name}, forget set {self.forget_name!r} is scored by CLIP score: pass "
                             f"--set task.clip_pretrained=PATH (an open_clip checkpoint of {o['clip_model']})")
        self.eval_info: dict[str, Any] = {}

    def check_model(self) -> None:
        """Raise ``ModelPathError`` when ``self.model_dir`` is not this task's kind of model."""

    def check_inputs(self) -> None:
        """Raise ``ValueError`` for unusable task-specific inputs (data folders, ...), before the metric backends."""

    @property
    def has_clip(self) -> bool:
        return bool(self.options["clip_pretrained"] or self.options["clip_random"])

    def _choose_features(self) -> str | None:
        """The KID/FID feature network: Inception when its weights are present, else CLIP (checked now)."""
        o = self.options
        want = o["kid_features"]
        if want == "none":
            return None
        if o["inception_weights"] and not Path(o["inception_weights"]).expanduser().is_file():
            raise ValueError(f"task {self.name}: inception_weights={o['inception_weights']!r} does not exist")
        from unlearnbench.metrics.features import _inception_candidates

        inception = bool(o["inception_weights"]) or any(p.is_file() for p in _inception_candidates())
        if want in ("auto", "inception") and inception:
            return "inception"
        if want in ("auto", "clip") and self.has_clip:
            return "clip"
        raise ValueError(f"task {self.name}: no feature network for KID/FID (kid_features={want}): Inception weights "
                         f"are not on disk (--set task.inception_weights=PATH) and no CLIP checkpoint is configured "
                         f"(--set task.clip_pretrained=PATH); or --set task.kid_features=none")

    def device_dtype(self, device: torch.device) -> torch.dtype | None:
        """Autocast dtype: ``precision``, with ``auto`` = bf16 on CUDA and fp32 on the CPU."""
        p = self.options["precision"]
        if p == "auto":
            return torch.bfloat16 if device.type == "cuda" else None
        return PRECISIONS[p]

    def sampler_info(self, device: torch.device, **extra: Any) -> dict[str, Any]:
        return {"sampler": "ddim", "eta": 0.0, "steps": int(self.options["sample_steps"]),
                "precision": str(self.device_dtype(device) or "fp32").replace("torch.", ""), **extra}

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        out["options"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in self.options.items()}
        out["model_dir"] = str(self.model_dir)
        if self.eval_info:
            out["evaluation"] = self.eval_info
        return out

    # -- sampling from fixed noise, pretrained samples cached --------------------------------------
    # ``st`` (built by the subclass per device): schedule, shape (of x), size (image side), prompts (text of each
    # id, "" for an unconditional model), ref (the frozen EpsNet), decode (x -> image in [-1, 1]), w (worker state
    # with the model hash under "hash")
    guidance: float = 1.0

    def noise(self, st: dict[str, Any], n: int, seed: int) -> Tensor:
        """Initial noise of images 0..n-1 (the same for every prompt, so images pair up across models)."""
        return torch.randn((n, *st["shape"]), generator=torch.Generator().manual_seed(seed))

    def sample(self, net: nn.Module, st: dict[str, Any], cond: Tensor, x_T: Tensor, device: torch.device,
               decoded: bool, desc: str = "sampling") -> Tensor:
        """Samples of ``net`` from ``x_T``: uint8 images when ``decoded`` (the images/s go to the record), else x."""
        o = self.options
        out, ips = generate(net, st["schedule"], cond, x_T, int(o["sample_steps"]), self.guidance, 0,
                            int(o["gen_batch"]), st["decode"] if decoded else None, device, desc)
        if decoded:
            self.eval_info.setdefault("cost", {})["images_per_s"] = ips
        return out

    def base_samples(self, st: dict[str, Any], ids: list[int], n: int, seed: int, decoded: bool,
                     device: torch.device) -> Tensor:
        """The pretrained model's samples of each prompt id, [len(ids), n, ...] (uint8 images if ``decoded``, else
        x), generated once per (model hash, prompt, seeds, sampler, steps, guidance, size, precision) and cached."""
        from unlearnbench.cache import cache_path, cached_torch

        kind = f"{self.name}-base-{'images' if decoded else 'x'}"
        if "hash" not in st["w"]:
            from unlearnbench.pipelines import model_hash

            st["w"]["hash"] = model_hash(self.model_dir, ())
        info = self.sampler_info(device, guidance=self.guidance, size=st["size"])
        keys = [{"model": st["w"]["hash"], "prompt": st["prompts"][i], "n": n, "seed": seed, **info} for i in ids]
        missing = [i for i, k in zip(ids, keys) if not cache_path(self.cache_dir, kind, k).exists()]
        made: dict[int, Tensor] = {}
        if missing:
            cond = torch.tensor(missing).repeat_interleave(n)
            x_T = self.noise(st, n, seed).repeat(len(missing), *[1] * len(st["shape"]))
            what = "evaluation images" if decoded else "training-pool latents"
            out = self.sample(st["ref"], st, cond, x_T, device, decoded,
                              f"sampling the pretrained model's {what} (once; cached)")
            made = dict(zip(missing, out.view(len(missing), n, *out.shape[1:])))
        return torch.stack([cached_torch(self.cache_dir, kind, k, lambda i=i: made[i]) for i, k in zip(ids, keys)])

    # -- metric backends, one at a time ------------------------------------------------------------
    def clip_model(self, device: torch.device) -> tuple[Any, Any]:
        """(open_clip model, tokenizer) from the task options."""
        import open_clip

        from unlearnbench.metrics.features import load_open_clip

        o = self.options
        model = load_open_clip(o["clip_model"], o["clip_pretrained"], model_config=o["clip_config"],
                               allow_random=bool(o["clip_random"]), allow_download=bool(o["allow_download"]),
                               device=device)
        self.eval_info["clip"] = {"backend": "open_clip " + importlib.metadata.version("open_clip_torch"),
                                  "model": o["clip_model"], "pretrained": o["clip_pretrained"],
                                  "random_weights": o["clip_pretrained"] is None}
        return model, open_clip.get_tokenizer(o["clip_model"])

    def feature_extractor(self, device: torch.device):
        from unlearnbench.metrics.features import CLIPFeatures, InceptionFeatures

        o = self.options
        if self.features == "inception":
            ext = InceptionFeatures(o["inception_weights"], download=False)
        else:
            ext = CLIPFeatures(o["clip_model"], o["clip_pretrained"], model_config=o["clip_config"],
                               allow_random=bool(o["clip_random"]))
        random = self.features == "clip" and o["clip_pretrained"] is None  # the leaderboard flags such records
        self.eval_info["features"] = {**ext.cache_key, "random_weights": random}
        return ext.to(device)

    def kid_fid(self, real: Tensor, fake: Tensor, device: torch.device, seed: int,
                pretrained: Tensor | None = None) -> dict[str, MetricValue]:
        """KID and FID of ``fake`` images to ``real`` ones (uint8 [N, 3, H, W]) on the chosen feature network;
        ``pretrained`` images (the base model's, same prompts and noise) give the ``*_pretrained`` info values."""
        if self.features is None:
            return {}
        from unlearnbench.metrics.kid_fid import clean_fid, fid, kid

        ext = self.feature_extractor(device)
        fid_of = clean_fid if self.eval_info["features"].get("backend") == "clean-fid" else fid
        fr, ff = batched(ext, real, device), batched(ext, fake, device)
        sets = {"": ff} if pretrained is None else {"": ff, "_pretrained": batched(ext, pretrained, device)}
        free(ext)
        out = {}
        for suffix, f in sets.items():
            m = min(fr.shape[0], f.shape[0], 1000)
            k = kid(fr, f, subsets=50, subset_size=m, generator=torch.Generator().manual_seed(seed))
            d = fid_of(fr, f)
            role = "info" if suffix else "retention"
            out[f"kid_retain_{self.features}{suffix}"] = MetricValue(k.value, k.stderr, k.n, role, False)
            out[f"fid_retain_{self.features}{suffix}"] = MetricValue(d.value, d.stderr, d.n, role, False)
        return out


@torch.no_grad()
def batched(fn: Callable[[Tensor], Tensor], x: Tensor, device: torch.device, chunk: int = 64) -> Tensor:
    """``fn`` over ``x`` in chunks on ``device``; results concatenated on the CPU."""
    return torch.cat([fn(x[i:i + chunk].to(device)).float().cpu() for i in range(0, x.shape[0], chunk)])


def free(*objs: Any) -> None:
    """Drop metric models (one heavy model in memory at a time)."""
    del objs
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def to_uint8(x: Tensor) -> Tensor:
    """Images in [-1, 1] -> uint8 [0, 255] (what the metric backends read, and half the memory of float)."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu()


@torch.no_grad()
def generate(net: EpsFn, schedule: Schedule, cond: Tensor, x_T: Tensor, steps: int, guidance: float, null: int,
             chunk: int, decode: Callable[[Tensor], Tensor] | None = None, device: torch.device | None = None,
             desc: str = "sampling") -> tuple[Tensor, float]:
    """DDIM samples for prompt ids ``cond`` [N] from the given noise ``x_T`` [N, *] (classifier-free guidance
    ``guidance`` around the null prompt) in chunks of ``chunk``; returns (samples on the CPU, images per second): uint8
    images [N, 3, H, W] of ``decode`` (a VAE; identity for pixel models), raw float samples when ``decode`` is None."""
    eps = guided(net, null, guidance)
    t0 = time.perf_counter()
    out = []
    for i in progress(range(0, cond.shape[0], chunk), f"{desc}: {cond.shape[0]} images, {steps} steps",
                      unit="batch"):
        c, z = cond[i:i + chunk].to(device), x_T[i:i + chunk].to(device)
        x = ddim_sample(schedule, eps, c, tuple(z.shape[1:]), steps, x_T=z)
        out.append(to_uint8(decode(x)) if decode is not None else x.cpu())
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)
    dt = time.perf_counter() - t0
    return torch.cat(out), cond.shape[0] / max(dt, 1e-9)


def mean_metric(values: Tensor, role: str, higher_is_better: bool) -> MetricValue:
    """Mean of per-item values with the standard error of the mean."""
    v = values.double().flatten()
    se = float(v.std() / math.sqrt(v.numel())) if v.numel() > 1 else None
    return MetricValue(float(v.mean()), se, int(v.numel()), role, higher_is_better)  # type: ignore[arg-type]
