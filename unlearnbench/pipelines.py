"""Paper-scale models from disk: Stable Diffusion 1.x pipelines and DDPM UNets in diffusers' ``save_pretrained``
layout, checked before any work and never downloaded unless the user allows it; plus tiny random versions of both
(same layout, built in-process) for the tests and the throughput benchmark.

A model is given as a folder (``--model PATH``) or a Hugging Face repo id that is looked up in the local HF cache
only (``local_files_only``); ``allow_download=True`` (``--allow-download``) lets a missing repo download.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import torch

from unlearnbench.settings import ConfigError

logger = logging.getLogger(__name__)

WEIGHT_SUFFIXES = (".safetensors", ".bin")
# subfolder -> accepted ``_class_name`` / ``architectures`` values of its config file
SD_PARTS = {
    "unet": ("config.json", ("UNet2DConditionModel",)),
    "text_encoder": ("config.json", ("CLIPTextModel",)),
    "vae": ("config.json", ("AutoencoderKL",)),
    "tokenizer": (None, ()),
    "scheduler": ("scheduler_config.json", ()),
}


class ModelPathError(ConfigError):
    """A ``--model`` path that cannot be used; the message names the path and what is missing."""


def _config_class(path: Path) -> list[str]:
    try:
        cfg = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ModelPathError(f"{path}: unreadable config ({e})") from e
    return [cfg.get("_class_name")] + list(cfg.get("architectures") or [])


def _has_weights(folder: Path) -> bool:
    return any(p.suffix in WEIGHT_SUFFIXES for p in folder.iterdir())


def _weights_problem(folder: Path, sub: str) -> str | None:
    """A weight file of ``folder`` that cannot be what it claims (None when none): a ``.safetensors`` whose header
    does not parse or does not cover the file (truncated, garbage), a ``.bin`` that is neither a torch zip archive
    nor a pickle. Reads headers only, so a corrupt file is named before any work instead of deep inside loading."""
    import zipfile

    from safetensors import SafetensorError, safe_open

    for f in sorted(folder.iterdir()):
        if f.suffix == ".safetensors":
            try:
                with safe_open(str(f), "pt") as h:
                    h.keys()
            except (SafetensorError, OSError) as e:
                return f"{sub or '.'}/{f.name} is not a readable safetensors file ({e})"
        elif f.suffix == ".bin":
            with open(f, "rb") as fh:
                head = fh.read(2)
            if not zipfile.is_zipfile(f) and head[:1] != b"\x80":
                return f"{sub or '.'}/{f.name} is neither a torch zip archive nor a pickle"
    return None


def _json_problem(folder: Path, sub: str, names: tuple[str, ...]) -> str | None:
    """A JSON file among ``names`` in ``folder`` that does not parse (None when all do)."""
    for name in names:
        if (folder / name).is_file():
            try:
                json.loads((folder / name).read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
                return f"{sub}/{name} is not valid JSON ({e})"
    return None


def _check_part(root: Path, sub: str, config: str | None, classes: tuple[str, ...]) -> str | None:
    """What is wrong with ``root/sub`` (None when fine)."""
    folder = root / sub if sub else root
    if not folder.is_dir():
        return f"no {sub}/ folder"
    if sub == "tokenizer":
        files = {p.name for p in folder.iterdir()}
        ok = {"vocab.json", "merges.txt"} <= files or "tokenizer.json" in files
        if not ok:
            return f"{sub}/ lacks vocab.json + merges.txt (or tokenizer.json)"
        return _json_problem(folder, sub, ("tokenizer.json", "vocab.json", "tokenizer_config.json",
                                           "special_tokens_map.json"))
    if config is None or not (folder / config).is_file():
        return f"{sub or '.'}/ lacks {config}"
    found = [c for c in _config_class(folder / config) if c]
    if classes and not set(found) & set(classes):
        return f"{sub or '.'}/{config} describes {', '.join(found) or 'an unnamed class'}, expected {' or '.join(classes)}"
    if sub != "scheduler" and not _has_weights(folder):
        return f"{sub or '.'}/ holds no weights (*.safetensors or *.bin)"
    return _weights_problem(folder, sub) if sub != "scheduler" else None


def check_sd_folder(root: Path) -> None:
    """Raise :class:`ModelPathError` unless ``root`` is a Stable Diffusion pipeline saved with ``save_pretrained``."""
    problems = [p for sub, (cfg, cls) in SD_PARTS.items() if (p := _check_part(root, sub, cfg, cls))]
    if problems:
        raise ModelPathError(f"--model {root}: not a usable Stable Diffusion 1.x pipeline folder "
                             f"(StableDiffusionPipeline.save_pretrained layout): {'; '.join(problems)}")


def ddpm_unet_folder(root: Path) -> Path:
    """The folder holding a ``UNet2DModel`` (``root/unet`` of a DDPMPipeline, or ``root`` itself); raises if none."""
    for folder in (root / "unet", root):
        if (folder / "config.json").is_file():
            problem = _check_part(folder, "", "config.json", ("UNet2DModel",))
            if problem:
                raise ModelPathError(f"--model {root}: {problem.replace('./', str(folder) + '/')}")
            return folder
    raise ModelPathError(f"--model {root}: not a DDPM folder: no unet/config.json (DDPMPipeline.save_pretrained) "
                         f"and no config.json of a UNet2DModel (UNet2DModel.save_pretrained)")


def resolve_model(model: str, allow_download: bool = False) -> Path:
    """A local folder for ``model``: the path itself, or a HF repo id found in the local cache (or downloaded when
    ``allow_download``). Raises :class:`ModelPathError` naming the value and how to fix it."""
    p = Path(model).expanduser()
    if p.exists():
        if not p.is_dir():
            raise ModelPathError(f"--model {model}: is a file; pass the folder written by save_pretrained")
        return p.resolve()
    looks_like_repo = model.count("/") == 1 and not model.startswith((".", "/", "~"))
    if not looks_like_repo:
        raise ModelPathError(f"--model {model}: no such folder")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(model, local_files_only=True))
    except Exception as e:  # noqa: BLE001 - huggingface_hub raises several types for "not cached"
        if not allow_download:
            raise ModelPathError(
                f"--model {model}: not a local folder and not in the Hugging Face cache; pass --model PATH to a "
                f"save_pretrained folder, or --allow-download to fetch it ({type(e).__name__})") from None
    logger.info("downloading %s (--allow-download)", model)
    return Path(snapshot_download(model))


def model_hash(root: Path, parts: tuple[str, ...]) -> str:
    """sha256 over the files of the given subfolders (names and contents), memoised per (path, size, mtime) in
    ``~/.cache/unlearnbench/model-hash`` so a 4 GB pipeline is read once."""
    files = sorted(f for sub in parts for f in (root / sub).rglob("*") if f.is_file()) if parts else \
        sorted(f for f in root.rglob("*") if f.is_file())
    stamp = hashlib.sha256(json.dumps([[str(f), f.stat().st_size, f.stat().st_mtime_ns] for f in files]).encode())
    from unlearnbench.cache import default_cache_dir

    memo = Path(default_cache_dir()) / "model-hash" / f"{stamp.hexdigest()[:24]}.txt"
    if memo.is_file():
        return memo.read_text().strip()
    from unlearnbench.progress import Progress

    h = hashlib.sha256()
    with Progress(f"hashing the model files in {root} (once; memoised)", sum(f.stat().st_size for f in files) >> 20,
                  "MiB") as bar:
        for f in files:
            h.update(str(f.relative_to(root)).encode())
            with open(f, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 22), b""):  # 4 MiB
                    h.update(block)
                    bar.update(len(block) >> 20)
    digest = h.hexdigest()[:16]
    memo.parent.mkdir(parents=True, exist_ok=True)
    memo.write_text(digest)
    return digest


def _load(root: Path, part: str, load: Any) -> Any:
    """``load()``, with any error of a corrupt or mismatched file as a :class:`ModelPathError` naming the part."""
    try:
        return load()
    except Exception as e:  # noqa: BLE001 - diffusers/transformers raise many types for a bad file
        lines = [ln for ln in str(e).splitlines() if ln.strip()]
        raise ModelPathError(f"--model {root}: {part} does not load ({type(e).__name__}: "
                             f"{lines[0] if lines else ''})") from e


def load_sd(root: Path, dtype: torch.dtype = torch.float32) -> dict[str, Any]:
    """The parts of a checked SD folder: ``unet``, ``text_encoder``, ``tokenizer``, ``vae`` (eval, frozen), ``scheduler``."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    tok = _load(root, "tokenizer/", lambda: CLIPTokenizer.from_pretrained(root, subfolder="tokenizer"))
    if tok.vocab_size < 1000:  # transformers returns a degenerate tokenizer instead of raising on bad files
        raise ModelPathError(f"--model {root}: tokenizer/ loaded with vocab_size={tok.vocab_size}; it is incomplete")
    parts = {
        "unet": _load(root, "unet/", lambda: UNet2DConditionModel.from_pretrained(root, subfolder="unet",
                                                                                    torch_dtype=dtype)),
        "text_encoder": _load(root, "text_encoder/", lambda: CLIPTextModel.from_pretrained(
            root, subfolder="text_encoder", torch_dtype=dtype)),
        "vae": _load(root, "vae/", lambda: AutoencoderKL.from_pretrained(root, subfolder="vae", torch_dtype=dtype)),
        "scheduler": _load(root, "scheduler/", lambda: DDPMScheduler.from_pretrained(root, subfolder="scheduler")),
        "tokenizer": tok,
    }
    for k in ("unet", "text_encoder", "vae"):
        parts[k].eval().requires_grad_(False)
    return parts


def load_ddpm(root: Path, dtype: torch.dtype = torch.float32) -> dict[str, Any]:
    """``unet`` (a UNet2DModel, eval, frozen) and ``scheduler`` (the folder's, else DDPM's linear 1000 steps)."""
    from diffusers import DDPMScheduler, UNet2DModel

    folder = ddpm_unet_folder(root)
    unet = _load(root, f"{folder.name}/", lambda: UNet2DModel.from_pretrained(folder, torch_dtype=dtype))
    unet.eval().requires_grad_(False)
    sched_dir = root / "scheduler"
    if (sched_dir / "scheduler_config.json").is_file():
        scheduler = _load(root, "scheduler/", lambda: DDPMScheduler.from_pretrained(root, subfolder="scheduler"))
    else:
        scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")
    return {"unet": unet, "scheduler": scheduler}


# ---------------------------------------------------------------------------------------------------------------
# tiny random models in the same layout (tests, benchmarks): nothing is downloaded
# ---------------------------------------------------------------------------------------------------------------
def _bytes_to_unicode() -> dict[int, str]:
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def write_clip_tokenizer(out_dir: Path) -> Path:
    """CLIP's real BPE tokenizer files (vocab.json, merges.txt; 49408 tokens) from the vocabulary open_clip ships."""
    import gzip
    import importlib.util

    spec = importlib.util.find_spec("open_clip")  # its data file, without importing it (torchvision, timm: slow)
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError("the CLIP tokenizer vocabulary ships with open_clip: pip install open_clip_torch")
    bpe = Path(spec.origin).parent / "bpe_simple_vocab_16e6.txt.gz"
    merges = [tuple(m.split()) for m in gzip.open(bpe).read().decode("utf-8").split("\n")[1:49152 - 256 - 2 + 1]]
    vocab = list(_bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab] + ["".join(m) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "vocab.json").write_text(json.dumps({v: i for i, v in enumerate(vocab)}))
    (out_dir / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")
    return out_dir


def tiny_sd_pipeline(out_dir: str | os.PathLike, image_size: int = 32, seed: int = 0,
                     unet_config: dict[str, Any] | None = None) -> Path:
    """Save a random Stable Diffusion pipeline (real CLIP tokenizer, tiny UNet/VAE/text encoder) to ``out_dir``.

    ``unet_config`` overrides the tiny UNet's settings (e.g. SD 1.x's real config for a throughput benchmark)."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    import tempfile

    out = Path(out_dir)
    tok_dir = write_clip_tokenizer(Path(tempfile.mkdtemp(prefix="ub-clip-tok-")))
    torch.manual_seed(seed)
    te = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, max_position_embeddings=77, projection_dim=32))
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(32, 64), layers_per_block=1,
                        latent_channels=4, norm_num_groups=8, sample_size=image_size)
    cfg = dict(sample_size=image_size // 2, in_channels=4, out_channels=4, layers_per_block=1,
               block_out_channels=(32, 64), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
               up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32, attention_head_dim=8,
               norm_num_groups=8)
    cfg.update(unet_config or {})
    if cfg["cross_attention_dim"] != 32:  # the text encoder's width must match the UNet's cross-attention
        te = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=cfg["cross_attention_dim"], num_hidden_layers=2,
                                          intermediate_size=64, num_attention_heads=4, max_position_embeddings=77))
    unet = UNet2DConditionModel(**cfg)
    sched = DDIMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                          clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    tok = CLIPTokenizer(str(tok_dir / "vocab.json"), str(tok_dir / "merges.txt"), model_max_length=77)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=te, tokenizer=tok, unet=unet, scheduler=sched,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(out)
    return out


def tiny_ddpm(out_dir: str | os.PathLike, image_size: int = 16, seed: int = 0) -> Path:
    """Save a random DDPMPipeline (a tiny ``UNet2DModel`` and DDPM's linear 1000-step scheduler) to ``out_dir``."""
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    torch.manual_seed(seed)
    unet = UNet2DModel(sample_size=image_size, in_channels=3, out_channels=3, layers_per_block=1,
                       block_out_channels=(16, 32), down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=8)
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler(num_train_timesteps=1000)).save_pretrained(out_dir)
    return Path(out_dir)
