"""The digits tasks: scikit-learn's 8x8 digits, a class-conditional tiny UNet (:class:`~unlearnbench.models.CondUNet`)
pretrained by the project and cached, and a small CNN classifier for evaluation (never used in training).

Prompts: id 0 is the null prompt (``bundle.null_cond``), id ``d + 1`` is "digit d". Images are [1, 8, 8] in [-1, 1].
Data split: stratified 80/20 (seed 0) of the 1797 digits; the 20% held-out part is used only for evaluation.
Samples (reference pools, evaluation) are DDIM with ``sample_steps`` (20) steps and classifier-free guidance
``guidance`` (3.0) on digit prompts, clamped to [-1, 1] (the data range, as image pipelines do).

``digits-concept`` (kind "concept"): erase digit prompts from the conditional model. Methods regress the null
prompt and each erased prompt onto an erased target (``c_from`` = null). Forget sets: ``one`` (digit 3) and
``pair`` (digits 0 and 9, of different difficulty: the point-wise KL estimate KL(q(.|null) || q(.|digit)), the rkl
constraint value of "erase to the null prompt", is ~29 nats for 0, ~16 for 9 and ~18 for 3). ``ref_sampler`` draws
from a cached pool of pretrained samples per prompt (256 each); ``posterior`` is a diffusion-classifier estimate of
P(c | x_t) (:class:`DiffusionPosterior`). Metrics: classifier accuracy on guided samples of the erased prompts
(unlearning; erasing to the null prompt gives ~0.11, the share of each digit among null-prompt samples) and of the
kept prompts, KID of kept-prompt samples to the pretrained model's own samples (classifier features) and the
point-wise KL proxy between the unlearned and the pretrained model on kept prompts (retention).

``digits-data`` (kind "data"): three distinctive non-digit 8x8 patterns (a 2x2-block checkerboard, a diagonal cross,
horizontal stripes; :data:`INJECTED`) are added to the training set with repeats (100, 60, 40 copies) and the
pretrained base model is fine-tuned on this set *unconditionally* (every row uses the null prompt, so the data task's
model is an unconditional model; methods call ``net(x_t, t, null)`` everywhere and no ``*_cond`` extras are given;
``extras["forget_fraction"]`` is the share of forget copies in the training set). Forget sets: ``one`` (the
checkerboard) and ``pair`` (checkerboard and cross, with different repeat counts, one constraint each); the stripes are
never forgotten, and their regeneration rate is reported as a check that the model keeps memorised data it was not
asked to forget (info). Regeneration is measured on null-prompt samples (L2 distance <= 3.0 to a forget image).
"""
from __future__ import annotations

import copy
import logging
import math
import os
import time
from typing import Any

import torch
from torch import Tensor

from unlearnbench.cache import artefact_digests, cached_torch
from unlearnbench.diffusion import Schedule, add_noise, ddim_sample, guided, predict_x0
from unlearnbench.metrics.base import spec
from unlearnbench.models import (CLASSIFIER_DEFAULTS, NULL_PROMPT, PRETRAIN_DEFAULTS, UNET_DEFAULTS, CondUNet,
                                 DigitClassifier, digit_prompt, make_schedule, n_params, pretrain_unet, prompt_digit,
                                 split_digits, train_classifier)
from unlearnbench.progress import progress as progress_of
from unlearnbench.tasks.base import MetricValue, ModelBundle, Task, add_pretrained, frozen_copy

logger = logging.getLogger(__name__)

FAMILY = "digits"
for _name, _role, _hib, _doc in [
    ("acc_forget", "unlearning", False, "classifier accuracy on guided samples of the erased prompts (chance 0.1)"),
    ("acc_kept", "retention", True, "classifier accuracy on guided samples of the kept digit prompts"),
    ("kid_kept", "retention", False, "KID (classifier features) of kept-prompt samples to the pretrained model's"),
    ("kl_proxy_kept", "retention", False, "point-wise KL estimate of KL(p_theta(.|k) || q(.|k)), kept prompts (nats)"),
    ("forget_bpd", "unlearning", True, "negative ELBO of the forget images, bits/dim of the continuous density on "
                                       "[-1,1]^64 (can be < 0; +3 gives the bound for the 17-level pixel grid)"),
    ("forget_nll_ode", "info", True, "probability-flow ODE NLL of the forget images (Hutchinson), bits/dim"),
    ("kid_retain", "retention", False, "KID (classifier features) of samples to held-out digits + kept injected"),
    ("retain_bpd", "retention", False, "negative ELBO of held-out digits, continuous-density bits/dim (as forget_bpd)"),
]:
    spec(_name, _role, _hib, FAMILY, _doc)

DATA = {"source": "sklearn.datasets.load_digits", "scale": "x/8-1", "test_frac": 0.2, "split_seed": 0}
GUIDANCE = 3.0
SAMPLE_STEPS = 20
CONCEPT_FORGET = {"one": (3,), "pair": (0, 9)}  # digits
INJECT_COPIES = {"checker": 100, "cross": 60, "stripes": 40}
DATA_FORGET = {"one": ("checker",), "pair": ("checker", "cross")}
FINETUNE_DEFAULTS: dict[str, Any] = {"steps": 600, "lr": 1e-3, "warmup": 20, "p_uncond": 1.0, "seed": 1}
REGEN_THRESHOLD = 3.0  # L2 over 64 pixels in [-1, 1] (RMS pixel error 0.375); held-out digits lie >= 7.8 away


def _pattern(name: str) -> Tensor:
    """A distinctive 8x8 non-digit pattern in {-1, 1}; [1, 8, 8]."""
    i, j = torch.meshgrid(torch.arange(8), torch.arange(8), indexing="ij")
    if name == "checker":
        m = ((i // 2 + j // 2) % 2) == 0
    elif name == "cross":
        m = (i == j) | (i + j == 7)
    elif name == "stripes":
        m = (i // 2) % 2 == 0
    else:
        raise ValueError(f"unknown injected pattern {name!r}; valid: {', '.join(INJECT_COPIES)}")
    return (m.float() * 2 - 1).unsqueeze(0)


INJECTED = {name: _pattern(name) for name in INJECT_COPIES}


# -------------------------------------------------------------------------------------------------------------------
# configs and cached artefacts
# -------------------------------------------------------------------------------------------------------------------
def _configs(options: dict[str, Any]) -> dict[str, Any]:
    """Every config the cached artefacts depend on, from task options (small values for tests)."""
    train = dict(PRETRAIN_DEFAULTS)
    if options.get("pretrain_steps") is not None:
        train["steps"] = int(options["pretrain_steps"])
        train["warmup"] = min(train["warmup"], max(1, train["steps"] // 10))
    fine = {**PRETRAIN_DEFAULTS, **FINETUNE_DEFAULTS}
    if options.get("finetune_steps") is not None:
        fine["steps"] = int(options["finetune_steps"])
        fine["warmup"] = min(fine["warmup"], max(1, fine["steps"] // 10))
    cls = dict(CLASSIFIER_DEFAULTS)
    if options.get("classifier_epochs") is not None:
        cls["epochs"] = int(options["classifier_epochs"])
    return {
        "unet": {"unet": dict(UNET_DEFAULTS), "train": train, "data": DATA},
        "classifier": {"classifier": cls, "data": DATA},
        "finetune": fine,
        "guidance": float(options.get("guidance", GUIDANCE)),
        "sample_steps": int(options.get("sample_steps", SAMPLE_STEPS)),
        "pool_size": int(options.get("pool_size", 256)),
    }


def _split() -> dict[str, Tensor]:
    return split_digits(DATA["test_frac"], DATA["split_seed"])


def load_unet(cache_dir: str, key: dict[str, Any], progress: bool = True) -> CondUNet:
    """The base conditional UNet (pretrained on the training split with CFG dropout), from the cache or trained."""
    def build():
        split = _split()
        net = pretrain_unet(key["train"], split["x_train"], split["y_train"] + 1, key["unet"], progress=progress)
        return {"state_dict": net.state_dict(), "train_time_s": net.train_time_s,
                "images_per_s": key["train"]["steps"] * key["train"]["batch_size"] / max(net.train_time_s, 1e-9)}

    obj = cached_torch(cache_dir, "digits-unet", key, build)
    net = CondUNet(key["unet"])
    net.load_state_dict(obj["state_dict"])
    net.pretrain_info = {k: v for k, v in obj.items() if k != "state_dict"}  # type: ignore[attr-defined]
    return net.eval().requires_grad_(False)


def load_classifier(cache_dir: str, key: dict[str, Any], progress: bool = True) -> DigitClassifier:
    def build():
        t0 = time.time()
        net, acc = train_classifier(key["classifier"], progress=progress)
        return {"state_dict": net.state_dict(), "heldout_acc": acc, "train_time_s": time.time() - t0}

    obj = cached_torch(cache_dir, "digits-classifier", key, build)
    net = DigitClassifier(key["classifier"])
    net.load_state_dict(obj["state_dict"])
    net.heldout_acc = obj["heldout_acc"]  # type: ignore[attr-defined]
    return net.eval().requires_grad_(False)


@torch.no_grad()
def sample_prompts(net, schedule: Schedule, cond: Tensor, guidance: float, steps: int, generator: torch.Generator,
                   chunk: int = 256, x_T: Tensor | None = None, progress: bool = False) -> Tensor:
    """Guided DDIM samples of ``net`` for prompt ids ``cond`` [N] (the null prompt unguided), clamped to [-1, 1]."""
    eps = guided(net, NULL_PROMPT, guidance)
    if x_T is None:
        x_T = torch.randn((cond.shape[0], 1, 8, 8), generator=generator)
    out = []
    rng = progress_of(range(0, cond.shape[0], chunk), f"sampling {cond.shape[0]} digits", unit="batch",
                      enabled=progress)
    dev = next(net.parameters()).device
    for i in rng:
        c = cond[i:i + chunk].to(dev)
        fn = eps if bool((c != NULL_PROMPT).any()) else net
        out.append(ddim_sample(schedule, fn, c, (1, 8, 8), steps, x_T=x_T[i:i + chunk].to(dev)).clamp(-1, 1).cpu())
    return torch.cat(out)


@torch.no_grad()
def features(classifier: DigitClassifier, x: Tensor) -> tuple[Tensor, Tensor]:
    """(features [N, F], logits [N, 10]) of images in [-1, 1]."""
    f = classifier.features(x.cpu())
    return f, classifier.logits_from_features(f)


def load_pool(cache_dir: str, cfgs: dict[str, Any], net: CondUNet, classifier: DigitClassifier,
              progress: bool = True) -> dict[str, Tensor]:
    """Cached samples of the pretrained model: ``samples`` [11, n, 1, 8, 8] (prompt id, sample), their classifier
    ``feats`` [11, n, F] and ``acc`` [11] (accuracy per digit prompt; NaN for the null prompt)."""
    key = {"unet": cfgs["unet"], "classifier": cfgs["classifier"], "guidance": cfgs["guidance"],
           "sample_steps": cfgs["sample_steps"], "pool_size": cfgs["pool_size"], "seed": 12345}

    def build():
        n, P = cfgs["pool_size"], UNET_DEFAULTS["n_prompts"]
        cond = torch.arange(P).repeat_interleave(n)
        x = sample_prompts(net, make_schedule(cfgs["unet"]["train"]), cond, cfgs["guidance"], cfgs["sample_steps"],
                           torch.Generator().manual_seed(key["seed"]), progress=progress)
        f, logits = features(classifier, x)
        hit = (logits.argmax(1) == cond - 1).float().view(P, n).mean(1)
        hit[NULL_PROMPT] = float("nan")
        return {"samples": x.view(P, n, 1, 8, 8), "feats": f.view(P, n, -1), "acc": hit}

    return cached_torch(cache_dir, "digits-pool", key, build)


class PoolSampler:
    """``ref_sampler`` hook: rows of the cached pretrained pool for each prompt id (uniform, with replacement)."""

    def __init__(self, pool: Tensor, device: torch.device):
        self.pool = pool  # [P, n, 1, 8, 8]
        self.device = device

    def __call__(self, cond: Tensor, generator: torch.Generator | None = None) -> Tensor:
        c = cond.cpu()
        if int(c.max()) >= self.pool.shape[0] or int(c.min()) < 0:
            raise ValueError(f"prompt ids must lie in [0, {self.pool.shape[0]}), got {c.unique().tolist()}")
        idx = torch.randint(0, self.pool.shape[1], (c.shape[0],), generator=generator)
        return self.pool[c, idx].to(self.device)


class DiffusionPosterior:
    """``posterior`` hook: ``P(c_i | x_t)`` under the pretrained model, a diffusion-classifier estimate (PAPER.md s. 3).

    Approximation, in three parts (documented choices, measured on held-out digits):

    1. ``x_t`` is mapped to the Tweedie estimate ``x0_hat = (x_t - sigma_t eps_q(x_t, 0)) / alpha_t`` (null-prompt
       noise prediction, clamped to [-1, 1]).
    2. ``log q(x0_hat|c) - log q(x0_hat|0) ~ sum_k W_k (||eps_q(x_k, 0) - n_k||^2 - ||eps_q(x_k, c) - n_k||^2)``, the
       ELBO difference by quadrature: the steps are cut into strata (``edges``, default 10/60/150/300/600; the class
       evidence of this model lies there, below 10 the terms are mostly noise and above 600 nearly zero), each
       evaluated at its ELBO-weight median ``s_k`` with weight ``W_k = sum of w_t over the stratum`` and a fixed noise
       ``n_k`` shared by all prompts and samples (common random numbers).
    3. Only strata with ``s_k >= t`` count (the evidence about the prompt that is left at noise level ``t``), so the
       estimate falls back to the prior as ``t`` grows (exactly the prior for ``t > s_K``).

    With ``q(.|0)`` the marginal, ``P(c|x) = pi_c q(x|c)/q(x)`` with a uniform prior ``pi_c = 1/10``, clamped to
    [0, 1]. On clean held-out digits (t = 0) the argmax is right 95% of the time; the estimate averages ~0.6 on the
    true digit and ~0.004 on the others. Cost per call: about ``B (0.5 + 0.8 (1 + m))`` network evaluations
    (rows with ``t > s_k`` skip stratum k).
    """

    x0_range = 1.0  # x0_hat is clamped to the data range [-x0_range, x0_range]

    def __init__(self, ref, schedule: Schedule, edges: tuple[int, ...] = (10, 60, 150, 300, 600), seed: int = 0,
                 prior: float = 0.1, null: int = NULL_PROMPT):
        self.ref, self.schedule, self.prior, self.null = ref, schedule, prior, null
        w = schedule.elbo_weights()
        pts, W = [], []
        for lo, hi in zip(edges[:-1], edges[1:]):
            ww = w[lo:hi]
            pts.append(lo + int((torch.cumsum(ww, 0) / ww.sum() >= 0.5).nonzero()[0]))
            W.append(float(ww.sum()))
        self.t_k, self.W = torch.tensor(pts), torch.tensor(W, dtype=torch.float32)
        self.noise = torch.randn((len(pts), 1, 8, 8), generator=torch.Generator().manual_seed(seed))

    @torch.no_grad()
    def log_ratio(self, x0: Tensor, concepts: list[int], t: Tensor | None = None) -> Tensor:
        """Estimated ``log q(x0|c_i) - log q(x0|0)`` from the strata with ``s_k >= t`` (all when t is None); [B, m]."""
        B, m, dev = x0.shape[0], len(concepts), x0.device
        out = torch.zeros(B, m, device=dev, dtype=x0.dtype)
        prompts = torch.as_tensor([self.null] + list(concepts), device=dev)
        P = prompts.shape[0]
        for k in range(self.t_k.shape[0]):
            rows = torch.arange(B, device=dev) if t is None else torch.nonzero(t <= self.t_k[k].item()).flatten()
            n = rows.shape[0]
            if n == 0:
                continue
            tk = torch.full((n * P,), int(self.t_k[k]), dtype=torch.long, device=dev)
            nz = self.noise[k:k + 1].to(dev, x0.dtype).expand(n, -1, -1, -1)
            x_k = add_noise(self.schedule, x0[rows], nz, tk[:n])
            eps = self.ref(x_k.repeat(P, 1, 1, 1), tk, prompts.repeat_interleave(n))
            err = (eps - nz.repeat(P, 1, 1, 1)).pow(2).flatten(1).sum(1).view(P, n)
            out[rows] += float(self.W[k]) * (err[0:1] - err[1:]).T
        return out

    @torch.no_grad()
    def __call__(self, x_t: Tensor, t: Tensor, concepts: list[int]) -> Tensor:
        B, dev = x_t.shape[0], x_t.device
        t = t.to(dev)
        d = torch.zeros(B, len(concepts), device=dev, dtype=x_t.dtype)
        rows = torch.nonzero(t <= int(self.t_k.max())).flatten()
        if rows.shape[0]:
            xr, tr = x_t[rows], t[rows]
            null = torch.full((rows.shape[0],), self.null, dtype=torch.long, device=dev)
            x0 = predict_x0(self.schedule, xr, self.ref(xr, tr, null), tr).clamp(-self.x0_range, self.x0_range)
            d[rows] = self.log_ratio(x0, concepts, tr)
        return (self.prior * d.exp()).clamp(0.0, 1.0)


@torch.no_grad()
def kl_proxy(schedule: Schedule, x0: Tensor, eps_p, eps_q, cond: Tensor, n_t: int = 4,
             generator: torch.Generator | None = None) -> Tensor:
    """Per-sample point-wise KL estimate ``KL(p || q) ~ sum_t w_t E||eps_p(x_t) - eps_q(x_t)||^2`` (PAPER.md s. 1).

    The estimator of :func:`unlearnbench.diffusion.pointwise_kl` with t drawn by importance sampling ``t ~ w_t / sum w``
    (stratified over ``n_t`` quantiles per sample), so each term is ``sum(w) ||eps_p - eps_q||^2``: on the digits model
    its spread over repeated draws is ~5x smaller than with uniform t (the ELBO weights span 0.5 at t = 0 to 0.005).
    ``x0`` [B, ...] are samples of p; returns [B] (nats).
    """
    w = schedule.elbo_weights()
    total = float(w.sum())
    cdf = torch.cumsum(w, 0) / total
    dev = x0.device
    out = torch.zeros(x0.shape[0], dtype=torch.float64)
    for k in range(n_t):
        u = (k + torch.rand(x0.shape[0], generator=generator, dtype=torch.float64)) / n_t
        t = torch.searchsorted(cdf, u).clamp(max=schedule.T - 1).to(dev)
        noise = torch.randn(x0.shape, generator=generator).to(dev, x0.dtype)
        x_t = add_noise(schedule, x0, noise, t)
        out += total * (eps_p(x_t, t, cond) - eps_q(x_t, t, cond)).pow(2).flatten(1).sum(1).double().cpu()
    return out / n_t


def _mean_metric(v: Tensor, role: str, hib: bool) -> MetricValue:
    v = v.double().flatten()
    n = v.numel()
    se = float(v.std() / math.sqrt(n)) if n > 1 else None
    return MetricValue(float(v.mean()), se, n, role, hib)  # type: ignore[arg-type]


def _save_grid(path: str, rows: list[Tensor], labels: list[str], scale: int = 4) -> str:
    """Rows of [n, 1, 8, 8] images in [-1, 1] -> one PNG: torchvision's ``make_grid`` (each image scaled up
    ``scale`` x, 2 px gaps), a label left of each row."""
    from PIL import Image, ImageDraw
    from torchvision.utils import make_grid

    n = max(r.shape[0] for r in rows)
    tiles = []
    for r in rows:
        r = ((r.clamp(-1, 1) + 1) / 2).repeat_interleave(scale, 2).repeat_interleave(scale, 3)
        tiles.append(torch.cat([r, torch.ones(n - r.shape[0], *r.shape[1:])]) if r.shape[0] < n else r)
    grid = make_grid(torch.cat(tiles), nrow=n, padding=2, pad_value=0.5)[0]  # [H, W]
    label_w = 8 + 6 * max(len(s) for s in labels)  # PIL's default bitmap font: about 6 px per character
    canvas = Image.new("L", (label_w + grid.shape[1], grid.shape[0]), 255)
    canvas.paste(Image.fromarray((grid * 255).round().byte().numpy(), mode="L"), (label_w, 0))
    draw = ImageDraw.Draw(canvas)
    row_h = 8 * scale + 2
    for i, text in enumerate(labels):
        draw.text((4, 2 + i * row_h + row_h // 2 - 6), text, fill=0)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    canvas.save(path)
    return path


# -------------------------------------------------------------------------------------------------------------------
# tasks
# -------------------------------------------------------------------------------------------------------------------
class _DigitsTask(Task):
    default_options: dict[str, Any] = {}
    # small-config overrides (tests, quick looks); both tasks accept every digits option
    option_types = {"pretrain_steps": int, "finetune_steps": int, "classifier_epochs": int, "guidance": float,
                    "sample_steps": int, "pool_size": int, "n_eval": int, "n_eval_kept": int, "n_retain_eval": int}

    def __init__(self, options=None, cache_dir=None):
        super().__init__(options, cache_dir)
        self.cfgs = _configs(self.options)
        self._state: dict[str, Any] | None = None

    def _base(self, progress: bool = True) -> dict[str, Any]:
        if self._state is None:
            with torch.random.fork_rng(devices=[]):
                unet = load_unet(self.cache_dir, self.cfgs["unet"], progress)
                cls = load_classifier(self.cache_dir, self.cfgs["classifier"], progress)
            self._state = {"unet": unet, "classifier": cls, "schedule": make_schedule(self.cfgs["unet"]["train"]),
                           "split": _split()}
        return self._state

    artefacts: tuple[str, ...] = ("digits-unet", "digits-classifier")

    def describe(self) -> dict[str, Any]:
        """Adds ``pretrained``: the sha256 prefix of each cached network and pool the evaluation used."""
        return {**super().describe(), "pretrained": artefact_digests(self.artefacts)}

    def _bundle(self, net: CondUNet, kind: str, device, **kw) -> ModelBundle:
        device = torch.device(device)
        ref = frozen_copy(net).to(device)
        trainable = copy.deepcopy(net).to(device).requires_grad_(True).train()
        return ModelBundle(net=trainable, ref=ref, schedule=self._base()["schedule"],
                           kind=kind,  # type: ignore[arg-type]
                           data_shape=(1, 8, 8), null_cond=NULL_PROMPT, sample_steps=self.cfgs["sample_steps"],
                           guidance=self.cfgs["guidance"], device=device, **kw)


class DigitsConceptTask(_DigitsTask):
    """Erase digit prompts from a class-conditional UNet on 8x8 digits (see the module docstring)."""

    name = "digits-concept"
    kind = "concept"
    forget_sets = {k: [digit_prompt(d) for d in v] for k, v in CONCEPT_FORGET.items()}
    axes = [("acc_forget", "acc_kept"), ("acc_forget", "kid_kept")]
    emits = {"acc_forget": ("unlearning", False, "classifier accuracy on samples of the erased prompts"),
             "acc_kept": ("retention", True, "classifier accuracy on samples of the kept prompts"),
             "acc_forget_d{i}": ("info", False, "classifier accuracy on samples of erased digit i"),
             "acc_forget_d{i}_pretrained": ("info", False, "the same for the pretrained model"),
             "kid_kept": ("retention", False, "KID (classifier features) of kept-prompt samples to pretrained ones"),
             "kl_proxy_kept": ("retention", False, "ELBO-gap proxy of KL(p_theta || q) on kept prompts (nats)")}
    _rkl = [15.0, 20.0, 25.0, 35.0, 50.0, 70.0]
    _lik = [0.04, 0.02, 0.01, 0.005, 0.002, 0.0005]
    grids = {
        "eps": {"rkl": _rkl, "rkl-is": _rkl, "lik": _lik, "lik-is": _lik,
                "rkl-fixed": [0.05, 0.1, 0.2, 0.35, 0.6, 1.0], "esd": [0.25, 0.5, 1.0, 2.0, 4.0, 8.0],
                "salun": [8.0, 4.0, 2.0, 1.0, 0.5, 0.25]},
        "smoke": {"rkl": [20.0, 50.0], "rkl-is": [20.0, 50.0], "lik": [0.02, 0.002], "lik-is": [0.02, 0.002],
                  "rkl-fixed": [0.1, 0.6], "esd": [0.5, 4.0], "salun": [4.0, 0.5]},
    }
    default_steps = 150
    default_options = {"n_eval": 200, "n_eval_kept": 32}
    # fitted to the trial budget (~1 min on one core): small batches and constraint estimates; lr 5e-4 (1e-3 drifts
    # the kept prompts: KL proxy ~10 nats at lr 1e-3 vs ~1-2 at 3e-4 for the same erasure). ESD: ESD-x (cross-attention)
    # as the reference's default, x_t sampled along the task's 20-step DDIM schedule, 16 samples per step.
    _rkl_defaults = {"lr": 5e-4, "batch_size": 64, "n_estimate": 48, "n_t_estimate": 2, "dual_lr": 0.01,
                     "dual_warmup": 30}
    _lik_defaults = {"lr": 5e-4, "batch_size": 64, "n_estimate": 48, "dual_lr": 40.0, "dual_warmup": 30}
    method_defaults = {
        "rkl": _rkl_defaults, "rkl-is": _rkl_defaults, "lik": _lik_defaults, "lik-is": _lik_defaults,
        "rkl-fixed": {"lr": 5e-4, "batch_size": 64},
        "esd": {"lr": 5e-4, "batch_size": 16, "ddim_steps": SAMPLE_STEPS, "trainable": "xattn"},
        "salun": {"lr": 1e-3, "batch_size": 64},
    }
    # accuracies and rates in [0, 1]; KID on classifier features is ~0.01 for the pretrained model, 2 is noise;
    # the KL proxy of a working model is a few nats
    sane_ranges = {"acc_*": (0.0, 1.0), "kid_*": (-0.05, 2.0), "kl_proxy_kept": (-1.0, 500.0)}
    # one point of kept-class accuracy; KID 0.005 is half the pretrained model's own KID to the data (~0.01); the KL
    # proxy in nats
    equivalence_margins = {"acc_kept": 0.01, "kid_kept": 0.005, "kl_proxy_kept": 0.25}
    pretrained_points = ("acc_forget", "acc_kept", "kid_kept", "kl_proxy_kept")
    artefacts = ("digits-unet", "digits-classifier", "digits-pool")

    def prepare(self, progress: bool = True) -> None:
        st = self._base(progress)
        st["pool"] = load_pool(self.cache_dir, self.cfgs, st["unet"], st["classifier"], progress)

    def build(self, seed: int, device: torch.device | str = "cpu") -> ModelBundle:
        if self._state is None or "pool" not in self._state:
            self.prepare(progress=False)
        st = self._state
        assert st is not None
        forget = list(self.forget_sets[self.forget_name])
        kept = [p for p in range(1, UNET_DEFAULTS["n_prompts"]) if p not in forget]
        b = self._bundle(st["unet"], "concept", device, forget_concepts=forget, retain_concepts=kept,
                         concept_names={p: f"digit {prompt_digit(p)}" for p in range(1, UNET_DEFAULTS["n_prompts"])})
        b.concept_names[NULL_PROMPT] = "null prompt"
        b.ref_sampler = PoolSampler(st["pool"]["samples"], b.device)
        b.posterior = DiffusionPosterior(b.ref, b.schedule)
        b.log_ratio = lambda x0, concepts: b.posterior.log_ratio(x0, concepts)
        return b

    @torch.no_grad()
    def evaluate(self, bundle: ModelBundle, seed: int) -> dict[str, MetricValue]:
        from unlearnbench.metrics.classifier import accuracy
        from unlearnbench.metrics.kid_fid import kid

        st = self._base()
        cls, pool = st["classifier"], st["pool"]
        net, ref = bundle.net.eval(), bundle.ref
        gen = torch.Generator().manual_seed(10_000 + seed)
        nf, nk = int(self.options["n_eval"]), int(self.options["n_eval_kept"])
        forget, kept = bundle.forget_concepts, bundle.retain_concepts
        cond = torch.cat([torch.tensor(forget).repeat_interleave(nf), torch.tensor(kept).repeat_interleave(nk)])
        x = sample_prompts(net, bundle.schedule, cond, bundle.guidance, bundle.sample_steps, gen)
        f, logits = features(cls, x)
        labels = cond - 1
        isf = torch.isin(cond, torch.tensor(forget))
        out = {"acc_forget": accuracy(logits[isf], labels[isf], "unlearning", False),
               "acc_kept": accuracy(logits[~isf], labels[~isf], "retention", True)}
        for p in forget:
            m = cond == p
            a = accuracy(logits[m], labels[m], "info", False)
            out[f"acc_forget_d{prompt_digit(p)}"] = a
            out[f"acc_forget_d{prompt_digit(p)}_pretrained"] = MetricValue(float(pool["acc"][p]), None,
                                                                          int(pool["samples"].shape[1]), "info", False)
        real = pool["feats"][torch.tensor(kept)].flatten(0, 1)
        fake = f[~isf]
        out["kid_kept"] = kid(real, fake, subsets=50, subset_size=min(fake.shape[0], real.shape[0], 1000),
                              generator=torch.Generator().manual_seed(seed))
        xk, ck = x[~isf].to(bundle.device), cond[~isf].to(bundle.device)
        kl = kl_proxy(bundle.schedule, xk, net, ref, ck, n_t=4, generator=torch.Generator().manual_seed(60_000 + seed))
        out["kl_proxy_kept"] = _mean_metric(kl.cpu(), "retention", False)
        self._pretrained_point(out, forget, kept, seed)
        art = bundle.extras.get("artifact_dir")
        if art:
            bundle.extras.setdefault("artifacts", {})["samples"] = self._grid(bundle, os.path.join(art, "samples.png"))
        return out

    def _pretrained_point(self, out: dict[str, MetricValue], forget: list[int], kept: list[int], seed: int) -> None:
        """The pretrained model's values of the axis metrics, from the cached pool of its samples (no sampling):
        accuracies of the pool, KID of one half of the pool's kept-prompt features to the other, and a KL proxy
        of 0 (the pretrained model against itself)."""
        from unlearnbench.metrics.kid_fid import kid

        pool = self._base()["pool"]
        n = int(pool["samples"].shape[1])
        for name, prompts, role, hib in (("acc_forget", forget, "unlearning", False),
                                         ("acc_kept", kept, "retention", True)):
            a = float(pool["acc"][torch.tensor(prompts)].double().mean())
            add_pretrained(out, name, MetricValue(a, math.sqrt(a * (1 - a) / (n * len(prompts))), n * len(prompts),
                                                  role, hib))  # type: ignore[arg-type]
        feats = pool["feats"][torch.tensor(kept)]
        half = feats.shape[1] // 2
        real, fake = feats[:, :half].flatten(0, 1), feats[:, half:].flatten(0, 1)
        add_pretrained(out, "kid_kept", kid(real, fake, subsets=50, subset_size=min(fake.shape[0], 1000),
                                            generator=torch.Generator().manual_seed(seed)))
        add_pretrained(out, "kl_proxy_kept", MetricValue(0.0, 0.0, n * len(kept), "retention", False))

    def _grid(self, bundle: ModelBundle, path: str, per: int = 8) -> str:
        """Rows: for each erased prompt and two kept ones, pretrained then unlearned samples from the same noise."""
        prompts = list(bundle.forget_concepts) + list(bundle.retain_concepts)[:2]
        g = torch.Generator().manual_seed(777)
        cond = torch.tensor(prompts).repeat_interleave(per)
        x_T = torch.randn((cond.shape[0], 1, 8, 8), generator=g)
        a = sample_prompts(bundle.ref, bundle.schedule, cond, bundle.guidance, bundle.sample_steps, g, x_T=x_T)
        b = sample_prompts(bundle.net, bundle.schedule, cond, bundle.guidance, bundle.sample_steps, g, x_T=x_T)
        rows, labels = [], []
        for i, p in enumerate(prompts):
            rows += [a[i * per:(i + 1) * per], b[i * per:(i + 1) * per]]
            what = "erased" if p in bundle.forget_concepts else "kept"
            labels += [f"digit {prompt_digit(p)} ({what}): pretrained", f"digit {prompt_digit(p)} ({what}): unlearned"]
        return _save_grid(path, rows, labels)


class DigitsDataTask(_DigitsTask):
    """Forget memorised injected images from an unconditional model on 8x8 digits (see the module docstring)."""

    name = "digits-data"
    kind = "data"
    forget_sets = {k: list(v) for k, v in DATA_FORGET.items()}
    axes = [("regen_rate", "kid_retain"), ("forget_bpd", "retain_bpd")]
    emits = {"regen_rate": ("unlearning", False, "share of samples that regenerate a forgotten image"),
             "regen_rate_pretrained": ("info", False, "the same for the pretrained model"),
             "regen_kept_injected": ("info", False, "share of samples regenerating a kept injected image"),
             "regen_kept_injected_pretrained": ("info", False, "the same for the pretrained model"),
             "kid_retain": ("retention", False, "KID (classifier features) of samples to held-out retained data"),
             "kid_retain_pretrained": ("info", False, "the same for the pretrained model"),
             "forget_bpd": ("unlearning", True, "ELBO bits/dim of the forget images (continuous density)"),
             "retain_bpd": ("retention", False, "ELBO bits/dim of held-out retained images"),
             "forget_nll_ode": ("info", True, "probability-flow ODE NLL of the forget images (bits/dim)")}
    artefacts = ("digits-unet", "digits-classifier", "digits-data-unet", "digits-data-pool")
    grids = {
        "eps": {"fkl": [20.0, 50.0, 100.0, 200.0, 400.0, 800.0], "siss": [0.1, 0.3, 1.0, 3.0, 10.0, 30.0]},
        "smoke": {"fkl": [50.0, 400.0], "siss": [0.3, 3.0]},
    }
    default_steps = 250
    default_options = {"n_eval": 1000, "n_retain_eval": 360}
    # lr 1e-4: at 5e-4 plain fine-tuning on q alone (fkl with b = 0) drifts the model (regeneration 0.17, KID 0.4)
    method_defaults = {
        "fkl": {"lr": 1e-4, "batch_size": 64, "dual_lr": 2e-5, "dual_warmup": 20},
        "siss": {"lr": 1e-4, "batch_size": 64},
        "neggrad": {"batch_size": 64}, "naive": {"lr": 1e-4, "batch_size": 64},
        "erasediff": {"lr": 1e-4, "batch_size": 64},  # cifar10_erasediff.yml: lr 1e-4
    }
    # retained digits at 20 bits/dim (pretrained: -1.95) mean a broken model; the forget images' bits/dim are the
    # unlearning distance, open above (SISS at scaling_norm 3 reaches 62 with retain_bpd -1.83 and KID 0.07)
    sane_ranges = {"regen_*": (0.0, 1.0), "kid_*": (-0.05, 2.0), "retain_bpd": (-5.0, 20.0), "forget_bpd": (-5.0, None),
                   "forget_nll_ode": (-5.0, None)}
    # KID as on digits-concept; 0.02 bits/dim on the retained digits (the retrained model moves them by ~0.01-0.04)
    equivalence_margins = {"kid_retain": 0.005, "retain_bpd": 0.02}
    pretrained_points = ("forget_bpd", "retain_bpd")

    @staticmethod
    def _bpd(bundle: ModelBundle, net, forget: Tensor, held: Tensor, seed: int) -> dict[str, MetricValue]:
        """forget_bpd and retain_bpd of ``net``; own generators, so trials with the same seed share t and noise
        draws (paired comparisons, and the pretrained model scored on the same draws)."""
        from unlearnbench.metrics.likelihood import elbo_bpd

        dev, reps = bundle.device, 16
        g = torch.Generator().manual_seed(30_000 + seed)
        fc = torch.full((forget.shape[0],), bundle.null_cond, device=dev)
        fb = elbo_bpd(bundle.schedule, net, forget.to(dev).repeat(reps, 1, 1, 1), fc.repeat(reps), n_t=16,
                      generator=g).view(reps, -1)
        g = torch.Generator().manual_seed(40_000 + seed)
        hc = torch.full((held.shape[0],), bundle.null_cond, device=dev)
        hb = elbo_bpd(bundle.schedule, net, held.to(dev), hc, n_t=8, generator=g)
        return {"forget_bpd": MetricValue(float(fb.mean()), float(fb.mean(1).std() / math.sqrt(reps)),
                                          int(forget.shape[0]), "unlearning", True),
                "retain_bpd": _mean_metric(hb.cpu(), "retention", False)}

    def _data_key(self) -> dict[str, Any]:
        return {"base": self.cfgs["unet"], "finetune": self.cfgs["finetune"], "inject": INJECT_COPIES,
                "patterns": "digits._pattern v1"}

    def _train_set(self) -> tuple[Tensor, Tensor]:
        """(training images [N, 1, 8, 8] with injected copies appended, [N] pattern index: -1 digit, else k)."""
        split = self._base()["split"]
        xs, tags = [split["x_train"]], [torch.full((split["x_train"].shape[0],), -1)]
        for k, (name, copies) in enumerate(INJECT_COPIES.items()):
            xs.append(INJECTED[name].expand(copies, 1, 8, 8).clone())
            tags.append(torch.full((copies,), k))
        return torch.cat(xs), torch.cat(tags)

    def prepare(self, progress: bool = True) -> None:
        st = self._base(progress)
        if "data_unet" in st:
            return
        key = self._data_key()
        x, _ = self._train_set()

        def build():
            with torch.random.fork_rng(devices=[]):
                net = pretrain_unet(key["finetune"], x, torch.full((x.shape[0],), NULL_PROMPT), init=st["unet"],
                                    progress=progress)
            return {"state_dict": net.state_dict(), "train_time_s": net.train_time_s}

        obj = cached_torch(self.cache_dir, "digits-data-unet", key, build)
        net = CondUNet(self.cfgs["unet"]["unet"])
        net.load_state_dict(obj["state_dict"])
        net.eval().requires_grad_(False)
        net.pretrain_info = {"train_time_s": obj["train_time_s"]}  # type: ignore[attr-defined]
        st["data_unet"] = net
        pkey = {"model": key, "classifier": self.cfgs["classifier"], "steps": self.cfgs["sample_steps"],
                "n": int(self.options["n_eval"]), "seed": 4321}
        st["data_pool"] = cached_torch(self.cache_dir, "digits-data-pool", pkey, lambda: self._pool(net, pkey))

    def _retain_reference(self, held: Tensor, kept_names: list[str]) -> Tensor:
        """The retain distribution's reference images: held-out digits plus each kept injected pattern with its share
        of the training set (what a model retrained without the forget images generates)."""
        n_train = self._base()["split"]["x_train"].shape[0]
        extra = [INJECTED[n].expand(round(INJECT_COPIES[n] * held.shape[0] / n_train), 1, 8, 8) for n in kept_names]
        return torch.cat([held, *extra])

    def _pool(self, net: CondUNet, pkey: dict[str, Any]) -> dict[str, Tensor]:
        st = self._base()
        cond = torch.full((pkey["n"],), NULL_PROMPT)
        x = sample_prompts(net, st["schedule"], cond, 1.0, pkey["steps"], torch.Generator().manual_seed(pkey["seed"]))
        return {"samples": x, "feats": features(st["classifier"], x)[0]}

    def build(self, seed: int, device: torch.device | str = "cpu") -> ModelBundle:
        if self._state is None or "data_unet" not in self._state:
            self.prepare(progress=False)
        st = self._state
        assert st is not None
        x, tags = self._train_set()
        names = list(INJECT_COPIES)
        forget_idx = [names.index(n) for n in self.forget_sets[self.forget_name]]
        is_forget = torch.isin(tags, torch.tensor(forget_idx))
        b = self._bundle(st["data_unet"], "data", device, train_data=x, retain_data=x[~is_forget],
                         forget_data=torch.stack([INJECTED[names[k]] for k in forget_idx]), data_noise=0.0)
        b.guidance = 1.0  # unconditional model: samples use the null prompt
        b.extras["forget_fraction"] = float(is_forget.float().mean())  # forget copies / training rows
        # each forget image's share of the training distribution q (fkl's bound lambda_i <= w_i)
        b.extras["forget_weights"] = [float((tags == k).float().mean()) for k in forget_idx]
        pool = st["data_pool"]["samples"]
        null = b.null_cond

        def ref_sampler(cond: Tensor, generator: torch.Generator | None = None) -> Tensor:
            if bool((cond != null).any()):
                raise ValueError("digits-data's model is unconditional: sample_ref takes the null prompt only")
            return pool[torch.randint(0, pool.shape[0], (cond.shape[0],), generator=generator)].to(b.device)

        b.ref_sampler = ref_sampler
        kept_names = [n for k, n in enumerate(names) if k not in forget_idx]
        b.extras["kept_injected"] = torch.stack([INJECTED[n] for n in kept_names])
        b.extras["kept_injected_names"] = kept_names
        return b

    @torch.no_grad()
    def evaluate(self, bundle: ModelBundle, seed: int) -> dict[str, MetricValue]:
        from unlearnbench.metrics.kid_fid import kid
        from unlearnbench.metrics.likelihood import bits_per_dim, pf_ode_loglik
        from unlearnbench.metrics.memorization import regeneration_rate

        st = self._base()
        net, ref = bundle.net.eval(), bundle.ref
        gen = torch.Generator().manual_seed(20_000 + seed)
        n = int(self.options["n_eval"])
        null = torch.full((n,), bundle.null_cond)
        x = sample_prompts(net, bundle.schedule, null, 1.0, bundle.sample_steps, gen)
        pool = st["data_pool"]
        forget = bundle.forget_data.cpu()
        kept_inj = bundle.extras["kept_injected"]
        out = {"regen_rate": regeneration_rate(x, forget, REGEN_THRESHOLD)}
        pre = regeneration_rate(pool["samples"], forget, REGEN_THRESHOLD)
        out["regen_rate_pretrained"] = MetricValue(pre.value, pre.stderr, pre.n, "info", False)
        r = regeneration_rate(x, kept_inj, REGEN_THRESHOLD)
        out["regen_kept_injected"] = MetricValue(r.value, r.stderr, r.n, "info", False)
        r = regeneration_rate(pool["samples"], kept_inj, REGEN_THRESHOLD)
        out["regen_kept_injected_pretrained"] = MetricValue(r.value, r.stderr, r.n, "info", False)
        split = st["split"]
        held = split["x_test"][: int(self.options["n_retain_eval"])]
        real, _ = features(st["classifier"], self._retain_reference(held, bundle.extras["kept_injected_names"]))
        fake, _ = features(st["classifier"], x)
        m = min(real.shape[0], fake.shape[0])
        out["kid_retain"] = kid(real, fake, subsets=100, subset_size=m, generator=torch.Generator().manual_seed(seed))
        k = kid(real, pool["feats"], subsets=100, subset_size=min(m, pool["feats"].shape[0]),
                generator=torch.Generator().manual_seed(seed))
        out["kid_retain_pretrained"] = MetricValue(k.value, k.stderr, k.n, "info", False)
        out.update(self._bpd(bundle, net, forget, held, seed))
        for name, v in self._bpd(bundle, ref, forget, held, seed).items():  # same draws: the pretrained point
            add_pretrained(out, name, v)
        dev = bundle.device
        fc = torch.full((forget.shape[0],), bundle.null_cond, device=dev)
        g = torch.Generator().manual_seed(50_000 + seed)
        with torch.enable_grad():
            ll = pf_ode_loglik(bundle.schedule, net, forget.to(dev), fc, steps=40, divergence="hutchinson",
                               n_probes=4, generator=g)
        nll = bits_per_dim(-ll, forget[0].numel())
        out["forget_nll_ode"] = _mean_metric(nll.cpu(), "info", True)
        art = bundle.extras.get("artifact_dir")
        if art:
            rows = [forget, pool["samples"][:16], x[:16]]
            labels = ["forget image(s)", "pretrained samples", "unlearned samples"]
            bundle.extras.setdefault("artifacts", {})["samples"] = _save_grid(os.path.join(art, "samples.png"), rows,
                                                                              labels)
        return out


# -------------------------------------------------------------------------------------------------------------------
# CLI entry points
# -------------------------------------------------------------------------------------------------------------------
def pretrain(task_name: str = "digits", cache_dir: str | None = None, progress: bool = True,
             options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Pretrain (or load from the cache) everything the digits tasks need; returns numbers for the report.

    ``task_name`` is ``digits`` (both tasks), ``digits-concept`` or ``digits-data``; ``options`` are task options
    (the small-config overrides of the tests, e.g. ``{"pretrain_steps": 20}``).
    """
    valid = ("digits", "digits-concept", "digits-data")
    if task_name not in valid:
        raise ValueError(f"unknown digits task {task_name!r}; valid: {', '.join(valid)}")
    t0 = time.time()
    report: dict[str, Any] = {}
    if task_name in ("digits", "digits-concept"):
        task = DigitsConceptTask(options, cache_dir=cache_dir)
        task.prepare(progress)
        st = task._state
        assert st is not None
        acc = st["pool"]["acc"][1:]
        report.update(unet_params=n_params(st["unet"]), classifier_params=n_params(st["classifier"]),
                      classifier_heldout_acc=st["classifier"].heldout_acc,
                      guided_sample_acc=float(acc.mean()), guided_sample_acc_per_digit=acc.tolist(),
                      guided_samples_per_digit=int(st["pool"]["samples"].shape[1]),
                      unet_pretrain=st["unet"].pretrain_info)
    if task_name in ("digits", "digits-data"):
        task = DigitsDataTask(options, cache_dir=cache_dir)
        task.prepare(progress)
        st = task._state
        assert st is not None
        from unlearnbench.metrics.memorization import regeneration_rate

        pool = st["data_pool"]["samples"]
        report["data_unet_finetune"] = st["data_unet"].pretrain_info
        report["regen_rate_pretrained"] = {
            name: regeneration_rate(pool, img.unsqueeze(0), REGEN_THRESHOLD).value for name, img in INJECTED.items()}
        report.setdefault("classifier_heldout_acc", st["classifier"].heldout_acc)
    report["wall_s"] = time.time() - t0
    return report


def guided_accuracy(n_per_class: int = 1000, cache_dir: str | None = None, seed: int = 0, progress: bool = True,
                    options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Evaluation-classifier accuracy on ``n_per_class`` fresh guided samples per digit of the pretrained model."""
    task = DigitsConceptTask(options, cache_dir=cache_dir)
    st = task._base(progress)
    cond = torch.arange(1, 11).repeat_interleave(n_per_class)
    x = sample_prompts(st["unet"], st["schedule"], cond, task.cfgs["guidance"], task.cfgs["sample_steps"],
                       torch.Generator().manual_seed(seed), progress=progress)
    _, logits = features(st["classifier"], x)
    hit = (logits.argmax(1) == cond - 1).float()
    return {"accuracy": float(hit.mean()), "per_digit": hit.view(10, -1).mean(1).tolist(), "n_per_class": n_per_class,
            "guidance": task.cfgs["guidance"], "sample_steps": task.cfgs["sample_steps"]}
