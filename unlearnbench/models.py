"""Tiny models of the digits tasks: a class-conditional diffusers UNet whose prompt enters only through
cross-attention, a small CNN digit classifier (evaluation only, and the KID/FID feature extractor), and their
deterministic training loops.

Prompt ids of :class:`CondUNet`: ``0`` is the null (empty) prompt, ``d + 1`` is "digit d" for d = 0..9
(:func:`digit_prompt`, :func:`prompt_digit`). Data are 8x8x1 images in [-1, 1] (scikit-learn's ``load_digits``
values 0..16 mapped by ``x / 8 - 1``).
"""
from __future__ import annotations

import copy
import logging
import math
import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from unlearnbench.diffusion import Schedule, add_noise
from unlearnbench.progress import Progress

logger = logging.getLogger(__name__)

NULL_PROMPT = 0
N_DIGITS = 10

UNET_DEFAULTS: dict[str, Any] = {
    "block_out_channels": [32, 32],
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"],
    "layers_per_block": 1,
    "cross_attention_dim": 32,
    "attention_head_dim": 8,
    "norm_num_groups": 8,
    "n_prompts": N_DIGITS + 1,
    "n_tokens": 4,
    "init_seed": 0,
}
PRETRAIN_DEFAULTS: dict[str, Any] = {
    "steps": 2000, "batch_size": 128, "lr": 2e-3, "warmup": 200, "weight_decay": 0.0, "p_uncond": 0.15,
    "ema": 0.999, "grad_clip": 1.0, "seed": 0, "T": 1000, "beta_start": 1e-4, "beta_end": 0.02,
}
CLASSIFIER_DEFAULTS: dict[str, Any] = {
    "width": 32, "num_features": 128, "epochs": 40, "batch_size": 64, "lr": 2e-3, "weight_decay": 1e-4,
    "shift": 1, "noise": 0.1, "seed": 0, "feature_norm": "rms-train",
}


def digit_prompt(digit: int) -> int:
    """Prompt id of digit ``digit`` (0..9)."""
    return int(digit) + 1


def prompt_digit(prompt: int) -> int:
    """Digit shown by prompt id ``prompt`` (1..10); -1 for the null prompt."""
    return int(prompt) - 1


def load_digits_tensors() -> tuple[Tensor, Tensor]:
    """All 1797 scikit-learn digits as ([N, 1, 8, 8] float32 in [-1, 1], [N] long labels 0..9)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.as_tensor(d.images, dtype=torch.float32).unsqueeze(1) / 8.0 - 1.0
    return x, torch.as_tensor(d.target, dtype=torch.long)


def split_digits(test_frac: float = 0.2, seed: int = 0) -> dict[str, Tensor]:
    """Fixed stratified split: ``{"x_train", "y_train", "x_test", "y_test"}`` (labels are digits 0..9)."""
    from sklearn.model_selection import train_test_split

    x, y = load_digits_tensors()
    idx_tr, idx_te = train_test_split(torch.arange(len(y)).numpy(), test_size=test_frac, random_state=seed,
                                      stratify=y.numpy())
    idx_tr, idx_te = torch.as_tensor(sorted(idx_tr)), torch.as_tensor(sorted(idx_te))
    return {"x_train": x[idx_tr], "y_train": y[idx_tr], "x_test": x[idx_te], "y_test": y[idx_te]}


class CondUNet(nn.Module):
    """Class-conditional ``diffusers.UNet2DConditionModel`` on 8x8x1 images; ``forward(x_t, t, cond) -> eps``.

    A prompt-embedding table turns each prompt id into ``n_tokens`` tokens of width ``cross_attention_dim`` (the
    ``encoder_hidden_states``), which the UNet reads only through its cross-attention layers (modules named ``attn2``,
    at the 4x4 resolution and in the mid block). No class or time-conditioned embedding sees the prompt, so training
    ``attn2`` alone (ESD-x, LoRA) can change what a prompt generates.
    """

    def __init__(self, config: dict[str, Any] | None = None):
        super().__init__()
        from diffusers import UNet2DConditionModel

        cfg = {**UNET_DEFAULTS, **(config or {})}
        self.config = cfg
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg["init_seed"])
            self.unet = UNet2DConditionModel(
                sample_size=8, in_channels=1, out_channels=1, layers_per_block=cfg["layers_per_block"],
                block_out_channels=tuple(cfg["block_out_channels"]), down_block_types=tuple(cfg["down_block_types"]),
                up_block_types=tuple(cfg["up_block_types"]), cross_attention_dim=cfg["cross_attention_dim"],
                attention_head_dim=cfg["attention_head_dim"], norm_num_groups=cfg["norm_num_groups"])
            self.prompt_embedding = nn.Embedding(cfg["n_prompts"], cfg["n_tokens"] * cfg["cross_attention_dim"])
        self.n_tokens = cfg["n_tokens"]
        self.null_cond = NULL_PROMPT

    def encode_prompt(self, cond: Tensor) -> Tensor:
        """Prompt ids [B] -> encoder_hidden_states [B, n_tokens, cross_attention_dim]."""
        return self.prompt_embedding(cond).view(cond.shape[0], self.n_tokens, -1)

    def forward(self, x_t: Tensor, t: Tensor, cond: Tensor) -> Tensor:
        return self.unet(x_t, t, encoder_hidden_states=self.encode_prompt(cond)).sample


class DigitClassifier(nn.Module):
    """Small CNN on 8x8 digits in [-1, 1]: ``forward -> logits [B, 10]``; ``features`` is the penultimate layer
    ([B, num_features], after ReLU) times the fixed ``feature_scale`` (1 / RMS over the training split, set after
    training, so KID values have the usual order of magnitude), the KID/FID feature space of the digits tasks."""

    def __init__(self, config: dict[str, Any] | None = None):
        super().__init__()
        cfg = {**CLASSIFIER_DEFAULTS, **(config or {})}
        w, nf = cfg["width"], cfg["num_features"]
        self.num_features = nf
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg["seed"])
            self.body = nn.Sequential(
                nn.Conv2d(1, w, 3, padding=1), nn.ReLU(), nn.Conv2d(w, 2 * w, 3, padding=1), nn.ReLU(),
                nn.MaxPool2d(2), nn.Conv2d(2 * w, 2 * w, 3, padding=1), nn.ReLU(), nn.Flatten(),
                nn.Dropout(0.3), nn.Linear(2 * w * 16, nf), nn.ReLU())
            self.head = nn.Linear(nf, N_DIGITS)
        self.register_buffer("feature_scale", torch.ones(()))

    def features(self, x: Tensor) -> Tensor:
        return self.body(x) * self.feature_scale

    def logits_from_features(self, f: Tensor) -> Tensor:
        return self.head(f / self.feature_scale)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))


def make_schedule(config: dict[str, Any] | None = None) -> Schedule:
    cfg = {**PRETRAIN_DEFAULTS, **(config or {})}
    return Schedule.linear(cfg["T"], cfg["beta_start"], cfg["beta_end"])


def pretrain_unet(config: dict[str, Any] | None = None, data: Tensor | None = None, cond: Tensor | None = None,
                  unet_config: dict[str, Any] | None = None, init: CondUNet | None = None,
                  progress: bool = True, desc: str = "pretraining the digits unet") -> CondUNet:
    """Classifier-free-guidance denoising training of a :class:`CondUNet`; returns the EMA network (eval, frozen).

    Args:
        config: overrides of ``PRETRAIN_DEFAULTS`` (steps, batch_size, lr, p_uncond, ema, seed, schedule).
        data: [N, 1, 8, 8] training images in [-1, 1]; default the training split of :func:`split_digits`.
        cond: [N] prompt ids of ``data``; rows with the null prompt are always trained unconditionally, the others
            are dropped to the null prompt with probability ``p_uncond``. Default: ``digit_prompt(label)``.
        unet_config: overrides of ``UNET_DEFAULTS`` (ignored when ``init`` is given).
        init: start from this network (fine-tuning) instead of a fresh one.
    Deterministic given ``config["seed"]`` (and the network's ``init_seed``).
    """
    cfg = {**PRETRAIN_DEFAULTS, **(config or {})}
    if data is None:
        split = split_digits()
        data, cond = split["x_train"], split["y_train"] + 1
    assert cond is not None and cond.shape[0] == data.shape[0]
    net = CondUNet(unet_config) if init is None else copy.deepcopy(init)
    net.requires_grad_(True).train()
    ema = copy.deepcopy(net).requires_grad_(False).eval()
    schedule = make_schedule(cfg)
    gen = torch.Generator().manual_seed(cfg["seed"])
    opt = torch.optim.AdamW(net.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    steps, warm = cfg["steps"], cfg["warmup"]
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / max(warm, 1)) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    B, n = cfg["batch_size"], data.shape[0]
    t0 = time.time()
    with Progress(desc, steps, "step", progress) as bar:
        for step in range(steps):
            idx = torch.randint(0, n, (B,), generator=gen)
            x0, c = data[idx], cond[idx].clone()
            c[torch.rand(B, generator=gen) < cfg["p_uncond"]] = NULL_PROMPT
            t = torch.randint(0, schedule.T, (B,), generator=gen)
            noise = torch.randn(x0.shape, generator=gen)
            loss = F.mse_loss(net(add_noise(schedule, x0, noise, t), t, c), noise)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg["grad_clip"]:
                nn.utils.clip_grad_norm_(net.parameters(), cfg["grad_clip"])
            opt.step()
            sched.step()
            decay = min(cfg["ema"], (1 + step) / (10 + step))
            with torch.no_grad():
                for pe, p in zip(ema.parameters(), net.parameters()):
                    pe.lerp_(p, 1 - decay)
            bar.update(1)
            if step % 50 == 0:
                bar.set_postfix(loss=f"{loss.item():.4f}")
    dt = time.time() - t0
    logger.info("pretrained unet: %d steps x %d in %.1f s (%.0f img/s)", steps, B, dt, steps * B / max(dt, 1e-9))
    ema.train_time_s = dt  # type: ignore[attr-defined]
    return ema


def train_classifier(config: dict[str, Any] | None = None, progress: bool = True) -> tuple[DigitClassifier, float]:
    """Train the evaluation classifier on the training split (with +-``shift`` pixel translations and Gaussian pixel
    noise as augmentation, so it also reads imperfect generated digits); returns (eval-mode net, held-out accuracy)."""
    cfg = {**CLASSIFIER_DEFAULTS, **(config or {})}
    split = split_digits()
    x, y = split["x_train"], split["y_train"]
    net = DigitClassifier(cfg)
    gen = torch.Generator().manual_seed(cfg["seed"])
    opt = torch.optim.AdamW(net.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    per_epoch = math.ceil(x.shape[0] / cfg["batch_size"])
    total = cfg["epochs"] * per_epoch
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg["lr"], total_steps=total)
    s = cfg["shift"]
    with Progress("training the digits evaluation classifier", total, "step", progress) as bar:
        with torch.random.fork_rng(devices=[]):  # dropout draws from the global RNG
            torch.manual_seed(cfg["seed"])
            net.train()
            for _ in range(cfg["epochs"]):
                perm = torch.randperm(x.shape[0], generator=gen)
                for i in range(per_epoch):
                    idx = perm[i * cfg["batch_size"]:(i + 1) * cfg["batch_size"]]
                    xb = F.pad(x[idx], (s, s, s, s), value=-1.0)
                    dx, dy = torch.randint(0, 2 * s + 1, (2,), generator=gen).tolist()
                    xb = xb[:, :, dy:dy + 8, dx:dx + 8]
                    xb = xb + cfg["noise"] * torch.randn(xb.shape, generator=gen)
                    loss = F.cross_entropy(net(xb), y[idx])
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    sched.step()
                    bar.update(1)
    net.eval().requires_grad_(False)
    with torch.no_grad():
        net.feature_scale.fill_(net.body(x).pow(2).mean().rsqrt())
        acc = (net(split["x_test"]).argmax(1) == split["y_test"]).float().mean().item()
    return net, acc


def n_params(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())
