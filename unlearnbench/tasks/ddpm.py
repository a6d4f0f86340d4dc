"""``ddpm-data``: forget training images from an unconditional pixel-space DDPM (``google/ddpm-celebahq-256`` from the
local Hugging Face cache, or any ``UNet2DModel`` DDPM given with ``--model PATH``).

Data: ``task.forget_dir`` (required) holds the images to forget; ``task.data_dir`` (optional) the training images they
were trained among, which are the retain set (read up to ``n_data``). Without a data folder the pretrained model's own
samples (``pool_size``, cached) stand in for the training distribution q and the retain set; the record says which
(``task.evaluation.data``). Images are centre-cropped, resized to the model's size and scaled to [-1, 1].
``forget_fraction`` (K/N, SISS's weight) uses ``task.train_size`` when given (e.g. 30000 for CelebA-HQ).

Every row uses the null prompt 0 (the model is unconditional; ``net(x_t, t, cond)`` ignores ``cond``). The paper's
setting is ``scripts/paper/ddpm-data.yaml``: T = 1000, batch 2 x 16 accumulation (``task.grad_accum``), Adam lr 5e-6,
dual lr 5e-2.

Evaluation on ``n_eval`` samples from fixed noise (paired with the pretrained model's cached samples): regeneration
rate of the forget images (L2 within ``regen_rms`` RMS per pixel), CLIP-embedding similarity of samples to the forget
images (``forget_sim_clip``, when CLIP is configured), the negative ELBO of forget and retained images in bits/dim
(likelihood), and KID/FID of samples to the retained images (Inception or CLIP features).
"""
from __future__ import annotations

import copy
import math
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from unlearnbench.diffusion import Schedule
from unlearnbench.metrics.base import spec
from unlearnbench.tasks._paper import (FEATURE_EMITS, FEATURES_WHEN, KID_AXIS, PAPER_OPTIONS, EpsNet, PaperTask,
                                      batched, free, mean_metric, release_gpu_model, to_uint8, worker_load)
from unlearnbench.tasks.base import MetricValue, ModelBundle

spec("forget_sim_clip", "unlearning", False, "memorization",
     "mean over samples of the highest CLIP-embedding cosine similarity to a forget image")
spec("forget_sim_rate_clip", "unlearning", False, "memorization",
     "fraction of samples whose CLIP-embedding cosine similarity to a forget image is >= sim_threshold")

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def image_files(folder: str | os.PathLike, what: str) -> list[Path]:
    """Image files of a folder, sorted; ``ValueError`` naming the folder when it is missing or holds none."""
    p = Path(folder).expanduser()
    if not p.is_dir():
        raise ValueError(f"task ddpm-data: {what}={str(folder)!r} is not a folder")
    files = sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"task ddpm-data: {what}={str(folder)!r} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    for f in files:  # named now, before any work, rather than deep inside the first trial
        _open_image(f, what).close()
    return files


def _open_image(f: Path, what: str):
    """``PIL.Image.open(f)``, checked; ``ValueError`` naming the file when it is not a readable image."""
    from PIL import Image

    try:
        if not f.is_file():
            raise OSError("not a regular file")
        with Image.open(f) as probe:
            probe.verify()  # reads the whole file: a truncated or non-image file fails here
        return Image.open(f)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise ValueError(f"task ddpm-data: {what}: {f} is not a readable image ({type(e).__name__}: {e})") from None


def load_images(files: list[Path], size: int, channels: int) -> Tensor:
    """Centre-cropped, resized images in [-1, 1]; [N, channels, size, size]."""
    import numpy as np
    from PIL import Image

    out = []
    for f in files:
        try:
            im = _open_image(f, "images").convert("RGB" if channels == 3 else "L")
        except OSError as e:  # verified when listed; changed since
            raise ValueError(f"task ddpm-data: {f} is not a readable image ({e})") from None
        s = min(im.size)
        left, top = (im.width - s) // 2, (im.height - s) // 2
        im = im.crop((left, top, left + s, top + s)).resize((size, size), Image.BICUBIC)
        a = torch.from_numpy(np.asarray(im, dtype=np.float32).copy()) / 127.5 - 1
        out.append(a.permute(2, 0, 1) if a.ndim == 3 else a.unsqueeze(0))
    return torch.stack(out)


class DDPMDataTask(PaperTask):
    """Data unlearning in a pixel-space DDPM (see the module docstring)."""

    name = "ddpm-data"
    # no retrained DDPM to evaluate: a model that never saw the forget images does not regenerate them
    retrained_targets = {"regen_rate": 0.0}
    equivalence_margins = {"kid_retain_*": 0.005, "retain_bpd": 0.02}
    kind = "data"
    default_model = "google/ddpm-celebahq-256"
    forget_sets = {"folder": "task.forget_dir"}
    default_options = {**PAPER_OPTIONS, "forget_dir": None, "data_dir": None, "n_data": 256, "train_size": None,
                       "regen_rms": 0.1, "sim_threshold": 0.95, "elbo_t": 16, "n_retain_eval": 64, "grad_accum": 1}
    # uncalibrated on real weights (no GPU or CelebA-HQ weights on the development machines): fkl's b is in nats of
    # the ELBO increase of one image; SISS's s follows the authors (1 = retraining weight)
    grids = {
        "eps": {"fkl": [10.0, 30.0, 100.0, 300.0, 1000.0, 3000.0], "siss": [0.5, 1.0, 2.0, 4.0, 8.0, 16.0],
                "salun": [16.0, 4.0, 1.0, 0.25, 0.0625, 0.015625]},
        "smoke": {"fkl": [10.0, 100.0], "siss": [1.0, 4.0], "salun": [4.0, 0.25]},
    }
    # the axes depend on the configured metric backends (see __init__)
    axes_when = [("regen_rate", KID_AXIS, f"always; {FEATURES_WHEN}; retain_bpd with kid_features=none"),
                 ("forget_bpd", "retain_bpd", "always"),
                 ("forget_sim_clip", KID_AXIS, "with CLIP")]
    emits = {"regen_rate": None, "forget_sim_clip": None, "forget_sim_rate_clip": None,
             "forget_bpd": ("unlearning", True, "negative ELBO of the forget images (bits/dim)"),
             "retain_bpd": ("retention", False, "negative ELBO of retained images (bits/dim)"), **FEATURE_EMITS}
    pretrained_points = ("regen_rate", "forget_sim_clip", "forget_sim_rate_clip", *FEATURE_EMITS)
    default_steps = 500
    method_defaults = {
        "fkl": {"lr": 5e-6, "batch_size": 2, "forget_batch": 2, "dual_lr": 0.05, "n_estimate": 4, "n_t_estimate": 4,
                "dual_every": 10},
        "siss": {"lr": 5e-6, "batch_size": 2},
        "salun": {"lr": 5e-6, "batch_size": 2},
    }

    def __init__(self, options: dict[str, Any] | None = None, cache_dir: str | None = None):
        super().__init__(options, cache_dir)
        kid_name = f"kid_retain_{self.features}" if self.features else "retain_bpd"
        self.axes = [("regen_rate", kid_name), ("forget_bpd", "retain_bpd")]
        if self.has_clip:
            self.axes.append(("forget_sim_clip", kid_name))

    def check_model(self) -> None:
        from unlearnbench.pipelines import ddpm_unet_folder

        ddpm_unet_folder(self.model_dir)

    def check_inputs(self) -> None:
        o = self.options
        if not o["forget_dir"]:
            raise ValueError("task ddpm-data needs the images to forget: --set task.forget_dir=FOLDER")
        self.forget_files = image_files(o["forget_dir"], "forget_dir")
        self.data_files = image_files(o["data_dir"], "data_dir")[: int(o["n_data"])] if o["data_dir"] else None
        if int(o["grad_accum"]) < 1:
            raise ValueError(f"task ddpm-data: grad_accum={o['grad_accum']} must be >= 1")

    def _setup(self, device: torch.device) -> dict[str, Any]:
        """The worker's UNet and what sampling needs (the :class:`PaperTask` state contract)."""
        from unlearnbench.pipelines import load_ddpm

        w = worker_load((str(self.model_dir), str(device)), lambda: {
            k: v.to(device) if k == "unet" else v for k, v in load_ddpm(self.model_dir).items()})
        unet, size = w["parts"]["unet"], int(w["parts"]["unet"].config.sample_size)
        return {"w": w, "shape": (int(unet.config.in_channels), size, size), "size": size, "prompts": [""],
                "schedule": Schedule.from_diffusers(w["parts"]["scheduler"]), "decode": lambda x: x,
                "ref": EpsNet(unet, None, self.device_dtype(device)).eval()}

    def data(self, st: dict[str, Any], device: torch.device) -> dict[str, Tensor]:
        """``forget`` images and ``retain`` ones (the data folder, else the pretrained model's samples), in [-1, 1]."""
        size, ch = st["size"], st["shape"][0]
        forget = load_images(self.forget_files, size, ch)
        if self.data_files is not None:
            retain = load_images(self.data_files, size, ch)
        else:
            retain = self.base_samples(st, [0], int(self.options["pool_size"]), 1234, False, device)[0].clamp(-1, 1)
        self.eval_info["data"] = {"forget": [f.name for f in self.forget_files],
                                  "retain": "data_dir" if self.data_files is not None else "pretrained samples",
                                  "n_retain": int(retain.shape[0])}
        return {"forget": forget, "retain": retain}

    def prepare(self) -> None:
        """Generate (or find cached) the pretrained model's samples in the driver."""
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        st = self._setup(device)
        self.data(st, device)
        self.base_samples(st, [0], int(self.options["n_eval"]), int(self.options["eval_seed"]), True, device)
        release_gpu_model(device)

    def build(self, seed: int, device: torch.device | str = "cpu") -> ModelBundle:
        device = torch.device(device)
        st = self._setup(device)
        d = self.data(st, device)
        unet = copy.deepcopy(st["w"]["parts"]["unet"]).requires_grad_(True).train()
        if self.options["gradient_checkpointing"]:
            unet.enable_gradient_checkpointing()
        train = torch.cat([d["retain"], d["forget"]])
        n_train = int(self.options["train_size"] or train.shape[0])
        pool = d["retain"]

        def ref_sampler(cond: Tensor, generator: torch.Generator | None = None) -> Tensor:
            return pool[torch.randint(0, pool.shape[0], (cond.shape[0],), generator=generator)].to(device)

        return ModelBundle(
            net=EpsNet(unet, None, self.device_dtype(device)), ref=st["ref"], schedule=st["schedule"], kind="data",
            data_shape=st["shape"], null_cond=0, prediction_type=st["w"]["parts"]["scheduler"].config.prediction_type,
            train_data=train, forget_data=d["forget"], retain_data=d["retain"], ref_sampler=ref_sampler,
            sample_steps=int(self.options["sample_steps"]), guidance=1.0, device=device,
            extras={"forget_fraction": d["forget"].shape[0] / n_train, "grad_accum": int(self.options["grad_accum"])})

    @torch.no_grad()
    def evaluate(self, bundle: ModelBundle, seed: int) -> dict[str, MetricValue]:
        from unlearnbench.metrics.memorization import regeneration_rate

        device, o = bundle.device, self.options
        st = self._setup(device)
        n, es = int(o["n_eval"]), int(o["eval_seed"])
        base = self.base_samples(st, [0], n, es, True, device)[0]
        imgs = self.sample(bundle.net.eval(), st, torch.zeros(n, dtype=torch.long), self.noise(st, n, es), device, True)
        self.eval_info["sampler"] = self.sampler_info(device, size=st["size"], n=n, base_model=st["w"]["hash"])
        forget, retain = bundle.forget_data.cpu(), bundle.retain_data.cpu()
        thr = float(o["regen_rms"]) * 2 * math.sqrt(forget[0].numel())  # RMS in [0, 1] units on [-1, 1] images
        self.eval_info["regen_threshold_l2"] = thr
        out = {"regen_rate": regeneration_rate(as_float(imgs), forget, thr)}
        pre = regeneration_rate(as_float(base), forget, thr)
        out["regen_rate_pretrained"] = MetricValue(pre.value, pre.stderr, pre.n, "info", False)
        if self.has_clip:
            out.update(self.similarity(imgs, base, forget, device))
        out.update(self.likelihood(bundle, forget, retain[: int(o["n_retain_eval"])], seed))
        out.update(self.kid_fid(to_uint8(retain), imgs, device, seed, pretrained=base))
        return out

    def similarity(self, imgs: Tensor, base: Tensor, forget: Tensor, device: torch.device) -> dict[str, MetricValue]:
        """Highest CLIP-embedding cosine similarity of each sample to a forget image (mean, and rate above threshold)."""
        import torch.nn.functional as F

        from unlearnbench.metrics.features import clip_preprocess

        model, _ = self.clip_model(device)
        embed = lambda x: F.normalize(model.encode_image(clip_preprocess(model, x)), dim=-1)  # noqa: E731
        fe = batched(embed, to_uint8(forget), device)
        sims = {k: (batched(embed, x, device) @ fe.T).max(1).values for k, x in (("", imgs), ("_pretrained", base))}
        free(model)
        th = float(self.options["sim_threshold"])
        out = {}
        for k, s in sims.items():
            role = "info" if k else "unlearning"
            out[f"forget_sim_clip{k}"] = mean_metric(s, role, False)
            out[f"forget_sim_rate_clip{k}"] = mean_metric((s >= th).double(), role, False)
        return out

    def likelihood(self, bundle: ModelBundle, forget: Tensor, retain: Tensor, seed: int) -> dict[str, MetricValue]:
        """Negative ELBO (bits/dim) of the forget and retained images, with common random numbers across trials."""
        from unlearnbench.metrics.likelihood import elbo_bpd

        out = {}
        for name, x, role, hib in (("forget_bpd", forget, "unlearning", True), ("retain_bpd", retain, "retention", False)):
            g = torch.Generator().manual_seed(30_000 + seed)
            c = torch.zeros(x.shape[0], dtype=torch.long, device=bundle.device)
            v = elbo_bpd(bundle.schedule, bundle.net, x.to(bundle.device), c, n_t=int(self.options["elbo_t"]), generator=g)
            out[name] = mean_metric(v.cpu(), role, hib)
        return out


def as_float(images: Tensor) -> Tensor:
    """uint8 images -> float in [-1, 1]."""
    return images.float() / 127.5 - 1
