"""KID and FID on feature vectors, feature extractors, and cached reference features.

The maths works on features ``[N, D]`` so any extractor can be used: a task's own classifier (offline, the
digits tasks), Inception-v3 (the usual image benchmark; needs weights on disk; with clean-fid's own weights file,
clean-fid's pipeline, so numbers compare with published ones) or a CLIP image tower (needs a local checkpoint). ``FeatureKID`` / ``FeatureFID`` give the same numbers through torchmetrics'
``update(imgs, real=...)`` / ``compute()`` contract.

Image convention for the built-in extractors: float ``[B, C, H, W]`` in ``value_range`` (``(0, 1)`` by default,
pass ``(-1, 1)`` for raw diffusion samples; values outside the range are clamped) or uint8 in [0, 255]; any size;
1 channel (repeated to RGB) or 3 channels.

Importing this module loads torch only; torchmetrics, torch-fidelity, clean-fid and open_clip are imported on first
use.
"""
from __future__ import annotations

import logging
import os
import socket
import warnings
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from unlearnbench.metrics.base import spec
from unlearnbench.tasks.base import MetricValue
from unlearnbench.metrics._tm import lazy_classes

logger = logging.getLogger(__name__)

spec("kid", "retention", False, "kid_fid",
     "Kernel inception distance (unbiased polynomial-kernel MMD^2) to reference features; stderr = std over subsets")
spec("fid", "retention", False, "kid_fid", "Frechet distance between Gaussian fits of sample and reference features")

__all__ = ["kid", "fid", "clean_fid", "frechet_distance", "feature_extractor", "cached_features", "to_rgb01", "FeatureExtractor",
           "ClassifierFeatures", "InceptionFeatures", "CLIPFeatures", "FeatureKID", "FeatureFID"]


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


# ---------------------------------------------------------------------------------------------------------------
# images -> features
# ---------------------------------------------------------------------------------------------------------------
def to_rgb01(images: Tensor, value_range: tuple[float, float] = (0.0, 1.0), channels: int = 3) -> Tensor:
    """[B, C, H, W] (or [B, H, W]) images -> float32 [B, channels, H, W] in [0, 1].

    uint8 input is read as [0, 255]; float input as ``value_range`` and clamped into it. Raises ``ValueError`` if
    the values lie far outside the range (e.g. [-1, 1] samples passed with the default (0, 1)).
    """
    if images.ndim == 3:
        images = images.unsqueeze(1)
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images must be [B, 1|3, H, W] (or [B, H, W]), got shape {tuple(images.shape)}")
    if images.dtype == torch.uint8:
        x = images.float() / 255.0
    else:
        lo, hi = float(value_range[0]), float(value_range[1])
        x = images.detach().float()
        slack = 0.25 * (hi - lo)
        if x.numel() and (x.min() < lo - slack or x.max() > hi + slack):
            raise ValueError(f"image values span [{x.min():.3g}, {x.max():.3g}], far outside value_range=({lo:g}, "
                             f"{hi:g}); pass value_range=(-1, 1) for diffusion samples or (0, 1) for [0, 1] images")
        x = ((x - lo) / (hi - lo)).clamp(0, 1)
    if channels == 3 and x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    return x.contiguous()


class FeatureExtractor(nn.Module):
    """An image -> [B, num_features] module that never leaves eval mode and never builds a graph.

    ``cache_key`` identifies the extractor in cached reference features.
    """

    num_features: int
    cache_key: dict

    def train(self, mode: bool = True) -> FeatureExtractor:
        return super().train(False)

    def forward(self, images: Tensor) -> Tensor:
        with torch.no_grad():
            return self.extract(images).flatten(1).float()

    def extract(self, images: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


class ClassifierFeatures(FeatureExtractor):
    """Features from a classifier's penultimate layer: ``getattr(module, method)(images)``, flattened.

    Images are passed as they are (the classifier's own convention); the module is put in eval mode (it is an
    oracle, not trained here). ``num_features`` comes from the argument,
    then ``module.num_features``, then a dummy forward of shape ``(1, *input_shape)``, else the first real
    forward (enough for KID; ``FeatureFID`` needs it up front).
    """

    def __init__(self, module: nn.Module, method: str = "features", num_features: int | None = None,
                 input_shape: tuple[int, ...] | None = None, name: str | None = None):
        super().__init__()
        if not callable(getattr(module, method, None)):
            raise ValueError(f"feature_extractor('classifier') needs a module with a callable {method!r} method; "
                             f"{type(module).__name__} has none (pass method=...)")
        self.module = module
        self.method = method
        self.name = name or type(module).__name__
        if num_features is None:
            num_features = getattr(module, "num_features", None)
        self.num_features = None if num_features is None else int(num_features)  # type: ignore[assignment]
        self.eval()
        if self.num_features is None and input_shape is not None:
            p = next(module.parameters(), None)
            self(torch.zeros(1, *input_shape, device=p.device if p is not None else "cpu"))

    @property
    def cache_key(self) -> dict:  # type: ignore[override]
        return {"name": "classifier", "module": self.name, "method": self.method, "num_features": self.num_features}

    def extract(self, images: Tensor) -> Tensor:
        out = getattr(self.module, self.method)(images)
        if self.num_features is None:
            self.num_features = int(out.flatten(1).shape[1])
        return out


FIDELITY_WEIGHTS = "weights-inception-2015-12-05-6726825d.pth"
FIDELITY_URL = f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{FIDELITY_WEIGHTS}"
TORCHSCRIPT_WEIGHTS = "inception-2015-12-05.pt"
TORCHSCRIPT_URL = f"https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/{TORCHSCRIPT_WEIGHTS}"


def _inception_candidates() -> list[Path]:
    hub = Path(torch.hub.get_dir()) / "checkpoints"
    return [hub / FIDELITY_WEIGHTS, hub / TORCHSCRIPT_WEIGHTS, Path("/tmp") / TORCHSCRIPT_WEIGHTS]


def _missing_inception(reason: str) -> FileNotFoundError:
    c = _inception_candidates()
    return FileNotFoundError(
        f"Inception-v3 FID weights not available ({reason}). Provide them with "
        f"feature_extractor('inception', weights=PATH) where PATH is either {TORCHSCRIPT_WEIGHTS!r} (TorchScript, "
        f"as used by clean-fid/StyleGAN; {TORCHSCRIPT_URL}) or {FIDELITY_WEIGHTS!r} (torch-fidelity state dict, "
        f"needs `pip install torch-fidelity`; {FIDELITY_URL}), or copy one of them to {c[0].parent} "
        f"(the torch hub cache, $TORCH_HOME) where it is found automatically.")


def _clean_fid_importable() -> bool:
    try:
        import cleanfid.inception_torchscript  # noqa: F401
        import cleanfid.resize  # noqa: F401
    except ImportError:  # clean-fid (or the torchvision its package imports) is missing: the project's own path
        return False
    return True


class InceptionFeatures(FeatureExtractor):
    """The 2048-d pool features of the TF-ported Inception-v3 used by FID/KID.

    Backends: ``clean-fid`` when the weights are clean-fid's own TorchScript file (named ``inception-2015-12-05.pt``)
    and clean-fid imports: clean-fid's ``InceptionV3W`` on that file behind clean-fid's "clean" resize (PIL bicubic
    of each channel in float, to 299 x 299), so features, and FID/KID on them (:func:`clean_fid`, :func:`kid`, the
    estimator of clean-fid's ``kernel_distance``), compare with published clean-fid numbers; ``torchscript`` (the
    same file under another name: the project's antialiased bilinear resize) and ``torch-fidelity`` (its ``.pth``).

    Weights, in order: ``weights`` (a path; ``.pth`` = torch-fidelity state dict, anything else = clean-fid's
    TorchScript file); a file in the torch hub cache (``$TORCH_HOME/hub/checkpoints``) or clean-fid's
    ``/tmp/inception-2015-12-05.pt``; else, if ``download`` and torch-fidelity is installed, torch-fidelity's
    download into the hub cache, with the socket timeout set to ``download_timeout`` so that a dead network
    fails in seconds (measured with no network: URLError within 0.5-2 s of the call). Otherwise
    ``FileNotFoundError`` naming the files and where to put them.

    Images (see module docstring) are quantised to uint8 like torchmetrics and resized to 299 x 299.
    """

    def __init__(self, weights: str | os.PathLike | None = None, value_range: tuple[float, float] = (0.0, 1.0),
                 download: bool = True, download_timeout: float = 30.0):
        super().__init__()
        self.value_range = tuple(value_range)
        self.num_features = 2048
        path: Path | None = None
        if weights is not None:
            path = Path(weights).expanduser()
            if not path.is_file():
                raise _missing_inception(f"weights={str(weights)!r} does not exist")
        else:
            path = next((p for p in _inception_candidates() if p.is_file()), None)
        if path is not None and path.name == TORCHSCRIPT_WEIGHTS and _clean_fid_importable():
            from cleanfid.inception_torchscript import InceptionV3W
            from cleanfid.resize import build_resizer

            self.backend = "clean-fid"
            try:  # clean-fid's own wrapper of this very file (it looks for the file name in the folder)
                self.net = InceptionV3W(str(path.parent), download=False, resize_inside=False).eval()
            except RuntimeError as e:
                raise ValueError(f"clean-fid could not load {path} as its TorchScript Inception ({e})") from e
            self.resize = build_resizer("clean")
        elif path is not None and path.suffix != ".pth":
            self.backend = "torchscript"
            try:
                self.net = torch.jit.load(str(path), map_location="cpu").eval()
            except RuntimeError as e:
                raise ValueError(f"could not load {path} as a TorchScript Inception ({e}); torch-fidelity weights "
                                 f"must end in .pth") from e
        else:
            self.backend = "torch-fidelity"
            self.net = self._fidelity(path, download, download_timeout)
        self.cache_key = {"name": "inception", "backend": self.backend,
                          "weights": path.name if path is not None else FIDELITY_WEIGHTS}
        self.eval()

    @staticmethod
    def _fidelity(path: Path | None, download: bool, timeout: float) -> nn.Module:
        try:
            from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
        except ModuleNotFoundError as e:
            if path is not None:
                raise ModuleNotFoundError(f"{path} is a torch-fidelity state dict, which needs torch-fidelity: "
                                          f"`pip install torch-fidelity` (or use {TORCHSCRIPT_WEIGHTS!r})") from e
            raise _missing_inception("no local file found and torch-fidelity is not installed to download "
                                     "them") from e
        if path is None and not download:
            raise _missing_inception("no local file found and download=False")
        if path is not None:
            try:
                return FeatureExtractorInceptionV3("inception-v3-compat", ["2048"],
                                                   feature_extractor_weights_path=str(path))
            except (RuntimeError, KeyError) as e:  # wrong state dict (e.g. pytorch-fid's pt_inception-*.pth)
                raise ValueError(f"{path} is not torch-fidelity's {FIDELITY_WEIGHTS!r} state dict "
                                 f"({str(e)[:200]}); use that file or clean-fid's TorchScript "
                                 f"{TORCHSCRIPT_WEIGHTS!r}") from e
        old = socket.getdefaulttimeout()
        socket.setdefaulttimeout(timeout)  # a silent network then fails after `timeout` s instead of hanging
        try:
            return FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=None)
        except OSError as e:  # URLError, socket timeouts
            raise _missing_inception(f"download of {FIDELITY_URL} failed: {e}") from e
        finally:
            socket.setdefaulttimeout(old)

    def extract(self, images: Tensor) -> Tensor:
        p = next(self.parameters(), None)
        x = (to_rgb01(images, self.value_range) * 255).round()
        if p is not None:
            x = x.to(p.device)
        if self.backend == "torch-fidelity":  # resizes to 299 internally, expects uint8
            return self.net(x.to(torch.uint8))[0]
        if self.backend == "clean-fid":  # clean-fid's pipeline: uint8 HWC image -> its resizer -> [0, 255] floats
            u8 = x.to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
            batch = torch.stack([torch.from_numpy(self.resize(im).transpose(2, 0, 1)) for im in u8])
            return self.net(batch.to(x.device))
        x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False, antialias=True)
        return self.net(x, return_features=True)


class CLIPFeatures(FeatureExtractor):
    """L2-normalised open_clip image embeddings (``num_features = embed_dim``).

    ``pretrained`` is a local checkpoint path (a missing path raises ``FileNotFoundError`` naming it);
    ``pretrained=None`` builds random weights only with ``allow_random=True`` (tests). ``model_config`` (dict or
    JSON path) registers a custom open_clip config under ``model_name`` first.
    """

    def __init__(self, model_name: str = "ViT-B-32", pretrained: str | os.PathLike | None = None,
                 value_range: tuple[float, float] = (0.0, 1.0), model_config: Mapping | str | None = None,
                 allow_random: bool = False, normalize: bool = True):
        super().__init__()
        from unlearnbench.metrics.clip_score import load_open_clip

        self.model = load_open_clip(model_name, pretrained, model_config=model_config, allow_random=allow_random)
        self.value_range = tuple(value_range)
        self.normalize = normalize
        self.num_features = int(self.model.visual.output_dim)
        self.cache_key = {"name": "clip", "model": model_name,
                          "pretrained": None if pretrained is None else os.path.abspath(str(pretrained))}
        self.eval()

    def extract(self, images: Tensor) -> Tensor:
        from unlearnbench.metrics.clip_score import clip_preprocess

        e = self.model.encode_image(clip_preprocess(self.model, images, self.value_range))
        return F.normalize(e, dim=-1) if self.normalize else e


_EXTRACTORS: dict[str, Callable[..., FeatureExtractor]] = {
    "classifier": ClassifierFeatures, "inception": InceptionFeatures, "clip": CLIPFeatures}


def feature_extractor(name: str, **kw: Any) -> FeatureExtractor:
    """Build a feature extractor by name: ``"classifier"`` (``module=``), ``"inception"`` (``weights=``) or ``"clip"``
    (``model_name=``, ``pretrained=`` local path). See the classes for the keyword arguments."""
    try:
        cls = _EXTRACTORS[name.lower()]
    except KeyError:
        raise ValueError(f"unknown feature extractor {name!r}; valid: {', '.join(_EXTRACTORS)}") from None
    return cls(**kw)


def cached_features(cache_dir: str, key_obj: Mapping[str, Any], compute_fn: Callable[[], Tensor]) -> Tensor:
    """Reference features [N, D] from ``<cache_dir>/features/<hash(key_obj)>.pt``, computed by ``compute_fn`` once.

    ``key_obj`` must identify everything the features depend on: at least ``extractor`` (e.g. the extractor's
    ``cache_key``), ``dataset``, ``n`` and ``seed``.
    """
    from unlearnbench.cache import cached_torch

    if not isinstance(key_obj, Mapping):
        raise TypeError(f"key_obj must be a mapping (extractor, dataset, n, seed, ...), got {type(key_obj).__name__}")
    missing = [k for k in ("extractor", "dataset", "n", "seed") if k not in key_obj]
    if missing:
        raise ValueError(f"cached_features key_obj lacks {missing}; it has {sorted(key_obj)}")

    def build() -> Tensor:
        out = compute_fn()
        if not isinstance(out, Tensor) or out.ndim != 2:
            raise TypeError(f"compute_fn must return a [N, D] tensor, got {type(out).__name__} "
                            f"{tuple(getattr(out, 'shape', ()))}")
        return out.detach().cpu()

    return cached_torch(cache_dir, "features", dict(key_obj), build)


# ---------------------------------------------------------------------------------------------------------------
# torchmetrics wrappers (built on first attribute access so importing this module does not import torchmetrics)
# ---------------------------------------------------------------------------------------------------------------
def _resolve_feature(feature: nn.Module | str, feature_kwargs: Mapping | None, need_dim: bool) -> nn.Module:
    if isinstance(feature, str):
        feature = feature_extractor(feature, **(feature_kwargs or {}))
    if not isinstance(feature, nn.Module):
        raise TypeError(f"feature must be an nn.Module or an extractor name, got {type(feature).__name__}")
    if need_dim and not isinstance(getattr(feature, "num_features", None), int):
        raise ValueError(f"feature module {type(feature).__name__} needs an int `num_features` attribute (for a "
                         f"classifier: feature_extractor('classifier', module=m, num_features=D or input_shape=...))")
    return feature


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

