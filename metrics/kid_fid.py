"""KID and FID on feature vectors.

The maths works on features ``[N, D]`` so any extractor of :mod:`unlearnbench.metrics.features` can be used: a
task's own classifier (offline, the digits tasks), Inception-v3 (the usual image benchmark; needs weights on disk;
with clean-fid's own weights file, clean-fid's pipeline, so numbers compare with published ones) or a CLIP image
tower (needs a local checkpoint). ``FeatureKID`` / ``FeatureFID`` give the same numbers through torchmetrics'
``update(imgs, real=...)`` / ``compute()`` contract, on images in the convention of
:func:`~unlearnbench.metrics.features.to_rgb01`.

Importing this module loads torch only; torchmetrics and clean-fid are imported on first use.
"""
from __future__ import annotations

import logging
import warnings
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from unlearnbench.metrics._tm import lazy_classes
from unlearnbench.metrics.base import MetricValue, spec
from unlearnbench.metrics.features import _resolve_feature

logger = logging.getLogger(__name__)

spec("kid", "retention", False, "kid_fid",
     "Kernel inception distance (unbiased polynomial-kernel MMD^2) to reference features; stderr = std over subsets")
spec("fid", "retention", False, "kid_fid", "Frechet distance between Gaussian fits of sample and reference features")

__all__ = ["kid", "fid", "clean_fid", "frechet_distance", "FeatureKID", "FeatureFID"]


# ---------------------------------------------------------------------------------------------------------------
# maths on features
# ---------------------------------------------------------------------------------------------------------------
def _check_feats(real: Tensor, fake: Tensor) -> tuple[Tensor, Tensor]:
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(f"features must be [N, D] and [M, D] with the same D, got {tuple(real.shape)} and "
                         f"{tuple(fake.shape)}")
    return real.detach().to(torch.float64), fake.detach().to(torch.float64)


_FULL_KERNEL_MAX = 2 ** 24  # entries (128 MiB in float64) up to which kid() builds the N+M kernel matrices once


def _mmd2(k_xx: Tensor, k_yy: Tensor, k_xy: Tensor) -> Tensor:
    """Unbiased MMD^2 from m x m kernel matrices (Binkowski et al. 2018, eq. 3; diagonals of k_xx, k_yy dropped)."""
    m = k_xx.shape[0]
    off = (k_xx.sum() - k_xx.diagonal().sum() + k_yy.sum() - k_yy.diagonal().sum()) / (m * (m - 1))
    return off - 2 * k_xy.sum() / (m * m)


def kid(real_feats: Tensor, fake_feats: Tensor, subsets: int = 50, subset_size: int | None = None,
        generator: torch.Generator | None = None, degree: int = 3, gamma: float | None = None,
        coef: float = 1.0) -> MetricValue:
    """Kernel inception distance between two feature sets (torchmetrics / clean-fid estimator).

    For each of ``subsets`` draws, ``subset_size`` rows are taken without replacement from each side
    (``torch.randperm(N)`` then ``torch.randperm(M)``, the order torchmetrics uses, so a generator seeded like
    ``torch.manual_seed`` reproduces its subsets) and the unbiased MMD^2 with the polynomial kernel
    ``(a.b / D + 1)^3`` is computed in float64.

    Args:
        real_feats: [N, D] reference features.
        fake_feats: [M, D] sample features.
        subsets: number of random subsets.
        subset_size: rows per subset and side; default ``min(N, M, 1000)``.
        generator: torch.Generator for the subsets (default: the global RNG).
        degree, gamma, coef: kernel parameters (gamma defaults to 1/D).

    Returns:
        MetricValue: mean over subsets; ``stderr`` is the (population) std over subsets, as torchmetrics and
        clean-fid report it; ``n = subset_size``; role retention, lower is better.
    """
    real, fake = _check_feats(real_feats, fake_feats)
    n_real, n_fake = real.shape[0], fake.shape[0]
    m = min(n_real, n_fake, 1000) if subset_size is None else int(subset_size)
    if m < 2 or m > n_real or m > n_fake:
        raise ValueError(f"KID subset_size must be in [2, min(N, M)], got {m} with N={n_real} real and "
                         f"M={n_fake} fake features")
    if subsets < 1:
        raise ValueError(f"KID needs subsets >= 1, got {subsets}")
    g = 1.0 / real.shape[1] if gamma is None else float(gamma)

    def kern(a: Tensor, b: Tensor) -> Tensor:  # polynomial kernel (gamma a.b + coef)^degree
        return (a @ b.T * g + coef) ** degree

    perms = [(torch.randperm(n_real, generator=generator)[:m], torch.randperm(n_fake, generator=generator)[:m])
             for _ in range(subsets)]
    # whole kernel matrices once, when that is cheaper than per-subset ones and small enough; a subset's kernel
    # sums are then quadratic forms w^T K w of its 0/1 row indicators w, for all subsets at once
    if (n_real + n_fake) ** 2 <= min(_FULL_KERNEL_MAX, 3 * subsets * m * m):
        w_r = torch.zeros(subsets, n_real, dtype=torch.float64)
        w_f = torch.zeros(subsets, n_fake, dtype=torch.float64)
        for s, (i, j) in enumerate(perms):
            w_r[s, i] = 1.0
            w_f[s, j] = 1.0
        k_rr, k_ff, k_rf = kern(real, real), kern(fake, fake), kern(real, fake)
        xx = ((w_r @ k_rr) * w_r).sum(1) - w_r @ k_rr.diagonal()
        yy = ((w_f @ k_ff) * w_f).sum(1) - w_f @ k_ff.diagonal()
        xy = ((w_r @ k_rf) * w_f).sum(1)
        scores = (xx + yy) / (m * (m - 1)) - 2 * xy / (m * m)
    else:
        scores = torch.stack([_mmd2(kern(real[i], real[i]), kern(fake[j], fake[j]), kern(real[i], fake[j]))
                              for i, j in perms])
    std = float(scores.std(unbiased=False)) if subsets > 1 else None
    return MetricValue(float(scores.mean()), std, m, "retention", False)


def _mean_cov(x: Tensor) -> tuple[Tensor, Tensor]:
    mu = x.mean(0)
    xc = x - mu
    return mu, xc.T @ xc / (x.shape[0] - 1)


def _sqrtm_psd(s: Tensor) -> Tensor:
    w, v = torch.linalg.eigh(s)
    return (v * w.clamp(min=0).sqrt()) @ v.T


def frechet_distance(mu1: Tensor, sigma1: Tensor, mu2: Tensor, sigma2: Tensor) -> float:
    """||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^{1/2}) (Heusel et al. 2017), via the symmetric S1^½ S2 S1^½."""
    mu1, sigma1, mu2, sigma2 = (t.to(torch.float64) for t in (mu1, sigma1, mu2, sigma2))
    r = _sqrtm_psd(sigma1)
    cross = torch.linalg.eigvalsh(r @ sigma2 @ r).clamp(min=0).sqrt().sum()
    return float((mu1 - mu2).square().sum() + sigma1.trace() + sigma2.trace() - 2 * cross)


def clean_fid(real_feats: Tensor, fake_feats: Tensor) -> MetricValue:
    """FID as clean-fid computes it (``cleanfid.fid.fid_from_feats``: numpy covariances, scipy's ``sqrtm``), for
    features of :class:`InceptionFeatures`' ``clean-fid`` backend, so values compare with published clean-fid
    numbers; otherwise as :func:`fid`."""
    from cleanfid.fid import fid_from_feats

    real, fake = _check_feats(real_feats, fake_feats)
    if real.shape[0] < 2 or fake.shape[0] < 2:
        raise ValueError(f"FID needs at least 2 features per side, got {real.shape[0]} and {fake.shape[0]}")
    with warnings.catch_warnings():  # clean-fid passes scipy's deprecated sqrtm(disp=False); same numbers
        warnings.filterwarnings("ignore", message="The `disp` argument", category=DeprecationWarning)
        value = float(fid_from_feats(real.numpy(), fake.numpy()))
    return MetricValue(value, None, int(fake.shape[0]), "retention", False)


def fid(real_feats: Tensor, fake_feats: Tensor) -> MetricValue:
    """Frechet distance between Gaussian fits (unbiased covariance) of [N, D] and [M, D] features.

    Returns MetricValue(value, stderr=None, n=M); role retention, lower is better. FID is biased for small M,
    compare only values computed with the same N and M.
    """
    real, fake = _check_feats(real_feats, fake_feats)
    if real.shape[0] < 2 or fake.shape[0] < 2:
        raise ValueError(f"FID needs at least 2 features per side, got {real.shape[0]} and {fake.shape[0]}")
    return MetricValue(frechet_distance(*_mean_cov(real), *_mean_cov(fake)), None, int(fake.shape[0]),
                       "retention", False)


def _build_feature_kid() -> type:
    from torchmetrics.image.kid import KernelInceptionDistance

    from unlearnbench.metrics._tm import MetricValueCompute

    class FeatureKID(MetricValueCompute, KernelInceptionDistance):
        """torchmetrics KID on a custom feature extractor; ``compute()`` returns :func:`kid`'s MetricValue.

        Args:
            feature: nn.Module with ``num_features`` (images -> [B, D]) or an extractor name + ``feature_kwargs``.
            subsets, subset_size: as :func:`kid` (``subset_size=None`` -> min(N, M, 1000)).
            seed: subsets are drawn from ``torch.Generator().manual_seed(seed)`` (None: global RNG).
            reset_real_features: keep reference features across ``reset()`` when False.
        """

        __qualname__ = "FeatureKID"
        __module__ = __name__

        def __init__(self, feature: nn.Module | str, subsets: int = 50, subset_size: int | None = None,
                     seed: int | None = 0, reset_real_features: bool = True, feature_kwargs: Mapping | None = None,
                     **kwargs: Any):
            super().__init__(feature=_resolve_feature(feature, feature_kwargs, False), subsets=subsets,
                             subset_size=subset_size or 1000, reset_real_features=reset_real_features, **kwargs)
            self.auto_subset_size = subset_size is None
            self.seed = seed

        def compute(self) -> MetricValue:  # type: ignore[override]
            from torchmetrics.utilities.data import dim_zero_cat

            real, fake = dim_zero_cat(self.real_features), dim_zero_cat(self.fake_features)
            m = min(real.shape[0], fake.shape[0], 1000) if self.auto_subset_size else self.subset_size
            g = None if self.seed is None else torch.Generator().manual_seed(self.seed)
            return kid(real, fake, self.subsets, m, g, self.degree, self.gamma, self.coef)

    return FeatureKID


def _build_feature_fid() -> type:
    from torchmetrics.image.fid import FrechetInceptionDistance

    from unlearnbench.metrics._tm import MetricValueCompute

    class FeatureFID(MetricValueCompute, FrechetInceptionDistance):
        """torchmetrics FID on a custom feature extractor; ``compute()`` returns :func:`fid`'s MetricValue."""

        __qualname__ = "FeatureFID"
        __module__ = __name__

        def __init__(self, feature: nn.Module | str, reset_real_features: bool = True,
                     feature_kwargs: Mapping | None = None, **kwargs: Any):
            super().__init__(feature=_resolve_feature(feature, feature_kwargs, True),
                             reset_real_features=reset_real_features, **kwargs)

        def compute(self) -> MetricValue:  # type: ignore[override]
            n_r, n_f = int(self.real_features_num_samples), int(self.fake_features_num_samples)
            if n_r < 2 or n_f < 2:
                raise RuntimeError(f"FID needs at least 2 real and 2 fake samples, got {n_r} and {n_f}")
            stats = []
            for s, c, n in ((self.real_features_sum, self.real_features_cov_sum, n_r),
                            (self.fake_features_sum, self.fake_features_cov_sum, n_f)):
                mu = s / n
                stats += [mu, (c - n * torch.outer(mu, mu)) / (n - 1)]
            return MetricValue(frechet_distance(*stats), None, n_f, "retention", False)

    return FeatureFID


__getattr__ = lazy_classes(globals(), {"FeatureKID": _build_feature_kid, "FeatureFID": _build_feature_fid})

