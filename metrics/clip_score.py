"""CLIP score (prompt-image alignment) with open_clip and a local checkpoint.

``CLIPScore`` is a torchmetrics Metric: ``update(images, prompts)``, ``compute() -> MetricValue``; the score of
one pair is ``100 * max(cos(image_emb, text_emb), 0)`` (Hessel et al. 2021, as torchmetrics). Weights never
download: ``pretrained`` is a local file; random weights only with ``allow_random=True`` (tests).
Images as in :func:`unlearnbench.metrics.features.to_rgb01` (float in ``value_range`` or uint8; 1 or 3 channels; any size).

Importing this module loads torch only; open_clip and torchmetrics are imported on first use.
"""
from __future__ import annotations

import logging
import math
import os
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from unlearnbench.metrics._tm import lazy_classes
from unlearnbench.metrics.base import MetricValue, spec
from unlearnbench.metrics.features import _open_clip, clip_preprocess, load_open_clip

logger = logging.getLogger(__name__)

spec("clip_score", "retention", True, "clip_score", "CLIP score 100*max(cos,0) of samples to their (kept) prompts")
spec("clip_score_forget", "unlearning", False, "clip_score", "CLIP score of samples to the erased prompts")

__all__ = ["CLIPScore"]


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
