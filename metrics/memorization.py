"""Memorisation: does the model still regenerate the images it should forget?

Distances are plain L2 in pixel space on flattened images, in whatever range the caller uses (compare a
threshold only with images in the same range; for [-1, 1] images of D pixels, a threshold of
``0.1 * sqrt(D)`` means an RMS pixel error of 0.1).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from unlearnbench.metrics.base import MetricValue, spec

spec("regen_rate", "unlearning", False, "memorization",
     "Fraction of samples within an L2 threshold of any forget image (regeneration of memorised data)")

__all__ = ["nearest_distance", "regeneration_rate"]


def nearest_distance(samples: Tensor, refs: Tensor, chunk: int = 1024, return_index: bool = False
                     ) -> Tensor | tuple[Tensor, Tensor]:
    """L2 distance of each sample to its nearest reference, flattened.

    Args:
        samples: [M, *] generated images.
        refs: [K, *] reference (e.g. forget) images, same trailing shape.
        chunk: samples per block (bounds memory at chunk x K distances).
        return_index: also return the index of the nearest reference.

    Returns:
        [M] float distances (and [M] long indices). Computed exactly (no ``|a|^2 + |b|^2 - 2ab`` expansion),
        so an exact copy has distance 0.
    """
    if samples.shape[1:] != refs.shape[1:]:
        raise ValueError(f"samples {tuple(samples.shape)} and refs {tuple(refs.shape)} differ in shape past dim 0")
    if refs.shape[0] == 0:
        raise ValueError("nearest_distance needs at least one reference")
    a = samples.detach().reshape(samples.shape[0], -1).float()
    b = refs.detach().reshape(refs.shape[0], -1).float().to(a.device)
    dist, idx = [], []
    for i in range(0, a.shape[0], chunk):
        d = torch.cdist(a[i:i + chunk], b, compute_mode="donot_use_mm_for_euclid_dist")
        v, j = d.min(dim=1)
        dist.append(v)
        idx.append(j)
    dist_t = torch.cat(dist) if dist else a.new_zeros(0)
    idx_t = torch.cat(idx) if idx else torch.zeros(0, dtype=torch.long, device=a.device)
    return (dist_t, idx_t) if return_index else dist_t


def regeneration_rate(samples: Tensor, forget_images: Tensor, threshold: float) -> MetricValue:
    """Fraction of ``samples`` [M, *] within L2 ``threshold`` (inclusive) of ANY of ``forget_images`` [K, *].

    Returns MetricValue(rate, binomial stderr sqrt(p (1-p) / M), M); role unlearning, lower is better.
    """
    if not threshold >= 0:
        raise ValueError(f"threshold must be >= 0, got {threshold}")
    m = int(samples.shape[0])
    if m == 0:
        raise ValueError("regeneration_rate needs at least one sample")
    p = float((nearest_distance(samples, forget_images) <= threshold).float().mean())
    return MetricValue(p, math.sqrt(p * (1 - p) / m), m, "unlearning", False)
