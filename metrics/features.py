"""Image conventions and feature networks, apart from the statistics computed on their features
(:mod:`~unlearnbench.metrics.kid_fid`, :mod:`~unlearnbench.metrics.clip_score`): ``to_rgb01``, the extractors (a
task's own classifier, Inception-v3, a CLIP image tower) behind ``feature_extractor(name)``, cached reference
features, and the open_clip loader with CLIP's preprocessing.

Image convention for the built-in extractors: float ``[B, C, H, W]`` in ``value_range`` (``(0, 1)`` by default,
pass ``(-1, 1)`` for raw diffusion samples; values outside the range are clamped) or uint8 in [0, 255]; any size;
1 channel (repeated to RGB) or 3 channels.

Importing this module loads torch only; torch-fidelity, clean-fid and open_clip are imported on first use.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import tempfile
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

logger = logging.getLogger(__name__)

__all__ = ["to_rgb01", "FeatureExtractor", "ClassifierFeatures", "InceptionFeatures", "CLIPFeatures",
           "feature_extractor", "cached_features", "load_open_clip", "clip_preprocess"]


# ---------------------------------------------------------------------------------------------------------------
# CLIP through open_clip (the CLIP feature network and the CLIP score's model)
# ---------------------------------------------------------------------------------------------------------------
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
_INSTALL = "pip install 'unlearnbench[clip]' (or: pip install open_clip_torch)"
_CONFIG_DIR: Path | None = None


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
        self.model = load_open_clip(model_name, pretrained, model_config=model_config, allow_random=allow_random)
        self.value_range = tuple(value_range)
        self.normalize = normalize
        self.num_features = int(self.model.visual.output_dim)
        self.cache_key = {"name": "clip", "model": model_name,
                          "pretrained": None if pretrained is None else os.path.abspath(str(pretrained))}
        self.eval()

    def extract(self, images: Tensor) -> Tensor:
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
