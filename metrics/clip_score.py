"""CLIP score (prompt-image alignment) with open_clip and a local checkpoint.

``CLIPScore`` is a torchmetrics Metric: ``update(images, prompts)``, ``compute() -> MetricValue``; the score of
one pair is ``100 * max(cos(image_emb, text_emb), 0)`` (Hessel et al. 2021, as torchmetrics). Weights never
download: ``pretrained`` is a local file; random weights only with ``allow_random=True`` (tests).
Images as in :mod:`unlearnbench.metrics.kid_fid` (float in ``value_range`` or uint8; 1 or 3 channels; any size).

Importing this module loads torch only; open_clip and torchmetrics are imported on first use.
"""
from __future__ import annotations

import json
import logging
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from unlearnbench.metrics.base import spec
from unlearnbench.tasks.base import MetricValue
from unlearnbench.metrics._tm import lazy_classes

logger = logging.getLogger(__name__)

spec("clip_score", "retention", True, "clip_score", "CLIP score 100*max(cos,0) of samples to their (kept) prompts")
spec("clip_score_forget", "unlearning", False, "clip_score", "CLIP score of samples to the erased prompts")

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
_INSTALL = "pip install 'unlearnbench[clip]' (or: pip install open_clip_torch)"
_CONFIG_DIR: Path | None = None

__all__ = ["load_open_clip", "clip_preprocess", "CLIPScore"]


def _open_clip():
    try:
        import open_clip
    except ModuleNotFoundError as e:
        raise ModuleNotFoundError(f"CLIP metrics need open_clip: {_INSTALL} (import failed: {e})") from e
    return open_clip


def _register_config(open_clip: Any, model_name: str, model_config: Mapping | str | os.PathLike) -> None:
    if not isinstance(model_config, Mapping):
        p = Path(model_config).expanduser()
        if not p.is_file():
            raise FileNotFoundError(f"open_clip model config {str(p)!r} does not exist")
        model_config = json.loads(p.read_text())
    global _CONFIG_DIR
    if _CONFIG_DIR is None:  # one directory per process; open_clip names a config after its file
        _CONFIG_DIR = Path(tempfile.mkdtemp(prefix="unlearnbench-openclip-"))
    path = _CONFIG_DIR / f"{model_name}.json"
    path.write_text(json.dumps(dict(model_config)))
    open_clip.add_model_config(path)


def load_open_clip(model_name: str = "ViT-B-32", pretrained: str | os.PathLike | None = None, *,
                   model_config: Mapping | str | os.PathLike | None = None, allow_random: bool = False,
                   allow_download: bool = False, device: str | torch.device = "cpu") -> nn.Module:
    """An open_clip CLIP model in eval mode with frozen weights.

    Args:
        model_name: open_clip config name (``open_clip.list_models()``), or the name to register ``model_config`` as.
        pretrained: local checkpoint file (``open_clip_pytorch_model.bin`` / ``.safetensors`` from the model's HF
            repo, or a ``torch.save(model.state_dict())`` file). open_clip tags (``"openai"``, ...) only with
            ``allow_download=True``.
        model_config: a custom config (dict or JSON file), registered under ``model_name``.
        allow_random: allow ``pretrained=None`` (random weights; for tests only).

    Raises:
        FileNotFoundError: ``pretrained`` is not an existing file (the message names the path).
        ValueError: ``pretrained=None`` without ``allow_random``.
        ModuleNotFoundError: open_clip is not installed.
    """
    open_clip = _open_clip()
    if model_config is not None:
        _register_config(open_clip, model_name, model_config)
    if model_name not in open_clip.list_models():
        raise ValueError(f"unknown open_clip model {model_name!r}; pass model_config= or one of open_clip.list_models()"
                         f" (e.g. ViT-B-32, ViT-L-14)")
    if pretrained is None:
        if not allow_random:
            raise ValueError(f"CLIP model {model_name!r} needs pretrained=<local checkpoint path>; random weights "
                             f"only with allow_random=True (tests)")
        weights = None
    else:
        p = Path(pretrained).expanduser()
        if p.is_file():
            weights = str(p)
        elif allow_download:
            weights = str(pretrained)
        else:
            raise FileNotFoundError(
                f"CLIP checkpoint {str(pretrained)!r} not found: pretrained must be an existing local file, e.g. "
                f"open_clip_pytorch_model.bin (or .safetensors) downloaded from the model's Hugging Face repo, or a "
                f"torch.save(model.state_dict()) file; open_clip tags such as 'laion2b_s34b_b79k' download from "
                f"the HF hub and need allow_download=True and network access")
    model = open_clip.create_model(model_name, pretrained=weights, device=device)
    model.eval().requires_grad_(False)
    return model


def clip_preprocess(model: nn.Module, images: Tensor, value_range: tuple[float, float] = (0.0, 1.0)) -> Tensor:
    """Images -> the model's input: resize the short side (bicubic), centre-crop, normalise; [B, 3, S, S]."""
    from unlearnbench.metrics.kid_fid import to_rgb01

    cfg = getattr(model.visual, "preprocess_cfg", None) or {}
    size = model.visual.image_size
    size = tuple(size) if isinstance(size, (tuple, list)) else (int(size), int(size))
    mean, std = cfg.get("mean", OPENAI_MEAN), cfg.get("std", OPENAI_STD)
    p = next(model.parameters())
    x = to_rgb01(images, value_range).to(p.device)
    h, w = x.shape[-2:]
    scale = max(size[0] / h, size[1] / w)
    nh, nw = max(size[0], round(h * scale)), max(size[1], round(w * scale))
    if (nh, nw) != (h, w):
        x = F.interpolate(x, size=(nh, nw), mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
    top, left = (nh - size[0]) // 2, (nw - size[1]) // 2
    x = x[..., top:top + size[0], left:left + size[1]]
    m = torch.tensor(mean, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(std, device=x.device).view(1, 3, 1, 1)
    return ((x - m) / s).to(p.dtype)


def _build_clip_score() -> type:
    from torchmetrics import Metric

    from unlearnbench.metrics._tm import MetricValueCompute

    class CLIPScore(MetricValueCompute, Metric):
        """Mean CLIP score of (image, prompt) pairs; ``compute()`` -> MetricValue with stderr = std / sqrt(n).

        Args:
            model_name, pretrained, model_config, allow_random: see :func:`load_open_clip`; or ``model=`` a
                ready open_clip model (then ``tokenizer=`` too, or the one of ``model_name``).
            value_range: float image range (see module docstring).
            role, higher_is_better: metadata of the returned value (retention/True for kept prompts,
                unlearning/False for erased ones).
        """

        __qualname__ = "CLIPScore"
        is_differentiable = False
        higher_is_better = True
        full_state_update = False

        def __init__(self, model_name: str = "ViT-B-32", pretrained: str | os.PathLike | None = None, *,
                     model_config: Mapping | str | None = None, allow_random: bool = False,
                     model: nn.Module | None = None, tokenizer: Any = None,
                     value_range: tuple[float, float] = (0.0, 1.0), role: str = "retention",
                     higher_is_better: bool | None = None, **kwargs: Any):
            super().__init__(**kwargs)
            if role not in ("retention", "unlearning"):
                raise ValueError(f"role must be 'retention' or 'unlearning', got {role!r}")
            self.model = model if model is not None else load_open_clip(
                model_name, pretrained, model_config=model_config, allow_random=allow_random)
            self.model.eval().requires_grad_(False)
            self.tokenizer = tokenizer if tokenizer is not None else _open_clip().get_tokenizer(model_name)
            self.value_range = tuple(value_range)
            self.role = role
            self.hib = (role == "retention") if higher_is_better is None else bool(higher_is_better)
            self.add_state("score_sum", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
            self.add_state("score_sq_sum", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
            self.add_state("n", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

        def train(self, mode: bool = True) -> CLIPScore:
            return super().train(False)

        @torch.no_grad()
        def scores(self, images: Tensor, prompts: str | Sequence[str]) -> Tensor:
            """Per-pair CLIP scores [B]; one prompt is broadcast to every image."""
            if isinstance(prompts, str):
                prompts = [prompts] * images.shape[0]
            if len(prompts) != images.shape[0]:
                raise ValueError(f"got {images.shape[0]} images but {len(prompts)} prompts")
            device = next(self.model.parameters()).device
            img = F.normalize(self.model.encode_image(clip_preprocess(self.model, images, self.value_range)), dim=-1)
            txt = F.normalize(self.model.encode_text(self.tokenizer(list(prompts)).to(device)), dim=-1)
            return 100 * (img * txt).sum(-1).clamp(min=0)

        def update(self, images: Tensor, prompts: str | Sequence[str]) -> None:
            s = self.scores(images, prompts).to(torch.float64)
            self.score_sum += s.sum()
            self.score_sq_sum += s.square().sum()
            self.n += s.numel()

        def compute(self) -> MetricValue:
            n = int(self.n)
            if n == 0:
                raise RuntimeError("CLIPScore.compute() called before any update()")
            mean = float(self.score_sum) / n
            var = max(float(self.score_sq_sum) / n - mean * mean, 0.0) * n / max(n - 1, 1)
            return MetricValue(mean, math.sqrt(var / n), n, self.role, self.hib)

    CLIPScore.__module__ = __name__
    return CLIPScore


__getattr__ = lazy_classes(globals(), {"CLIPScore": _build_clip_score})
