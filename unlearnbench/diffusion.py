"""Diffusion maths shared by every task and method: the VP/DDPM schedule, noising, targets, ELBO weights, the
ELBO-weighted noise-prediction error (:func:`elbo_error`, behind the point-wise KL estimator of PAPER.md section 1 and
the ELBO terms), and a DDIM sampler. Small functions, no state."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import torch
from torch import Tensor

EpsFn = Callable[[Tensor, Tensor, Tensor], Tensor]  # (x_t [B,*], t [B] long, cond [B] long) -> eps [B,*]


@dataclass(frozen=True)
class Schedule:
    """Discrete DDPM schedule: ``x_t = sqrt(abar_t) x_0 + sigma_t eps``, t = 0..T-1."""

    betas: Tensor  # [T], float64

    @classmethod
    def linear(cls, T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> "Schedule":
        return cls(torch.linspace(beta_start, beta_end, T, dtype=torch.float64))

    @classmethod
    def from_diffusers(cls, scheduler) -> "Schedule":
        return cls(scheduler.betas.to(torch.float64).clone())

    @property
    def T(self) -> int:
        return self.betas.shape[0]

    @property
    def alphas_cumprod(self) -> Tensor:
        return torch.cumprod(1.0 - self.betas, 0)

    def coeffs(self, t: Tensor, like: Tensor) -> tuple[Tensor, Tensor]:
        """(sqrt(abar_t), sigma_t) broadcast to ``like``'s shape, in its dtype."""
        abar = self.alphas_cumprod.to(like.device)[t].to(like.dtype)
        shape = (-1,) + (1,) * (like.ndim - 1)
        return abar.sqrt().view(shape), (1 - abar).sqrt().view(shape)

    def elbo_weights(self) -> Tensor:
        """Per-step weight of ||eps_p - eps_q||^2 in the DDPM ELBO: beta_t / (2 alpha_t sigma_t^2); [T]."""
        abar = self.alphas_cumprod
        return self.betas / (2 * (1 - self.betas) * (1 - abar))


def add_noise(schedule: Schedule, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
    a, s = schedule.coeffs(t, x0)
    return a * x0 + s * noise


def target(prediction_type: str, schedule: Schedule, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
    """The regression target the network predicts, honoring ``prediction_type``."""
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "sample":
        return x0
    if prediction_type == "v_prediction":
        a, s = schedule.coeffs(t, x0)
        return a * noise - s * x0
    raise ValueError(f"unknown prediction_type {prediction_type!r}; valid: epsilon, sample, v_prediction")


def randn(shape, generator: torch.Generator | None = None, device=None, dtype=None) -> Tensor:
    """Standard normal drawn on the generator's device, then moved: the same numbers on CPU and GPU for one seed."""
    gdev = generator.device if generator is not None else None
    return torch.randn(shape, generator=generator, device=gdev, dtype=dtype).to(device)


def sample_t(n: int, T: int, generator: torch.Generator | None = None, device=None, t_min: int = 0) -> Tensor:
    gdev = generator.device if generator is not None else None
    return torch.randint(t_min, T, (n,), generator=generator, device=gdev).to(device)


def stratified_t(n: int, T: int, generator: torch.Generator | None = None, device=None) -> Tensor:
    """n timesteps covering [0, T) evenly (one uniform draw per stratum, randomly permuted): every estimate sees the
    small-t steps that dominate ELBO-weighted sums, which cuts the variance of those sums by orders of magnitude."""
    gdev = generator.device if generator is not None else None
    u = torch.rand(n, generator=generator, dtype=torch.float64, device=gdev).cpu()
    t = ((torch.arange(n, dtype=torch.float64) + u) * (T / n)).long().clamp_(0, T - 1)
    return t[torch.randperm(n, generator=generator, device=gdev).cpu()].to(device)


def per_sample_sse(a: Tensor, b: Tensor) -> Tensor:
    """Sum (not mean) of squared errors over all but the batch dim; [B]."""
    return (a - b).pow(2).flatten(1).sum(1)


per_sample_mse = per_sample_sse  # the old name, which said "mean" of a sum; kept for plugins written against it


def predict_x0(schedule: Schedule, x_t: Tensor, eps: Tensor, t: Tensor) -> Tensor:
    """Tweedie estimate of x_0 from a noise prediction."""
    a, s = schedule.coeffs(t, x_t)
    return (x_t - s * eps) / a


Draw = tuple[Tensor, Tensor, "Tensor | float"]  # (t [B] long, noise [B, *], weight: [B] or a number)


def elbo_error(schedule: Schedule, x0: Tensor, eps_fn: EpsFn, cond: Tensor, draws: Iterable[Draw],
               ref: EpsFn | None = None, ref_cond: Tensor | None = None, out: Tensor | None = None) -> Tensor:
    """The ELBO-weighted noise-prediction error, the one place it is written: per sample, the sum over ``draws``
    ``(t, noise, weight)`` of ``weight * ||eps_fn(x_t, t, cond) - target||^2`` with ``x_t`` the draw's noising of
    ``x0`` and the target the draw's noise (the diffusion part of the negative ELBO) or, given ``ref``,
    ``ref(x_t, t, ref_cond)`` (the point-wise KL between two models; ``ref_cond`` defaults to ``cond``).

    How t is drawn and weighted is the caller's (uniform, stratified, fixed steps, importance-sampled): ``draws`` is
    read lazily, so noise drawn inside it comes in the caller's order. Accumulated into ``out`` (its dtype and
    device; default zeros like ``x0``) and returned unscaled; [B]."""
    if out is None:
        out = torch.zeros(x0.shape[0], device=x0.device, dtype=x0.dtype)
    for t, noise, weight in draws:
        x_t = add_noise(schedule, x0, noise, t)
        pred = eps_fn(x_t, t, cond)
        target = noise if ref is None else ref(x_t, t, cond if ref_cond is None else ref_cond)
        out += weight * per_sample_sse(pred, target).to(out.device, out.dtype)
    return out


def pointwise_kl(schedule: Schedule, x0: Tensor, eps_p: EpsFn, eps_q: EpsFn, cond_p: Tensor, cond_q: Tensor,
                 n_t: int = 1, generator: torch.Generator | None = None) -> Tensor:
    """Per-sample estimate of ``KL(p || q) ~ sum_t w_t E||eps_p(x_t) - eps_q(x_t)||^2`` (PAPER.md eq. in section 1).

    ``x0`` are samples of p, shape [B, *]; t is drawn uniformly (``n_t`` draws per sample) and the sum over T steps
    is ``T * mean``, with the t draws stratified over [0, T) (:func:`stratified_t`). Returns [B].
    """
    w = schedule.elbo_weights().to(x0.device, x0.dtype)
    ts = stratified_t(x0.shape[0] * n_t, schedule.T, generator, x0.device).view(n_t, -1)
    draws = ((t, randn(x0.shape, generator, x0.device, x0.dtype), w[t]) for t in ts)
    return elbo_error(schedule, x0, eps_p, cond_p, draws, eps_q, cond_q) * schedule.T / n_t


def elbo_terms(schedule: Schedule, x0: Tensor, eps_fn: EpsFn, cond: Tensor, n_t: int = 1,
               generator: torch.Generator | None = None, t: Tensor | None = None, noise: Tensor | None = None) -> Tensor:
    """Per-sample ``sum_t w_t E||eps_fn(x_t) - eps||^2`` (the diffusion part of the negative ELBO, in nats); [B]."""
    w = schedule.elbo_weights().to(x0.device, x0.dtype)

    def draws() -> Iterator[Draw]:
        for _ in range(n_t):
            tt = sample_t(x0.shape[0], schedule.T, generator, x0.device) if t is None else t
            nz = randn(x0.shape, generator, x0.device, x0.dtype) if noise is None else noise
            yield tt, nz, w[tt]

    return elbo_error(schedule, x0, eps_fn, cond, draws()) * schedule.T / n_t


def guided(eps_fn: EpsFn, null_cond: int, scale: float) -> EpsFn:
    """Classifier-free guidance: ``eps(x,0) + scale (eps(x,c) - eps(x,0))`` (scale 1 = no guidance).

    A network that carries a ``sampling_hook`` (an inference-time method such as SLD, set by the method and saved with
    the weights) is guided by ``sampling_hook.guide(eps_fn, null_cond, scale)`` instead, so every sampler that guides
    through this function (evaluation, reference pools, attacks) samples the method's model as it would be deployed.
    """
    if scale == 1.0:
        return eps_fn
    hook = getattr(eps_fn, "sampling_hook", None)
    if hook is not None:
        return hook.guide(eps_fn, null_cond, scale)

    def f(x: Tensor, t: Tensor, c: Tensor) -> Tensor:
        e = eps_fn(torch.cat([x, x]), torch.cat([t, t]), torch.cat([torch.full_like(c, null_cond), c]))
        e0, ec = e.chunk(2)
        return e0 + scale * (ec - e0)

    return f


@torch.no_grad()
def ddim_sample(schedule: Schedule, eps_fn: EpsFn, cond: Tensor, shape: tuple[int, ...], steps: int = 50,
                generator: torch.Generator | None = None, device=None, eta: float = 0.0,
                x_T: Tensor | None = None, stop_at: int = 0, progress: bool = False) -> Tensor:
    """DDIM sampling (eta=0 deterministic) from T to 0, or to step index ``stop_at`` of the ``steps`` schedule
    (ESD's partial sampling). Returns x at the last visited timestep; [B, *shape]."""
    B = cond.shape[0]
    x = randn((B, *shape), generator, device) if x_T is None else x_T
    abar = schedule.alphas_cumprod.to(x.device)
    ts = torch.linspace(schedule.T - 1, 0, steps, device=x.device).round().long()
    it = range(steps - stop_at if stop_at else steps)
    if progress:
        from tqdm.auto import tqdm
        it = tqdm(it, desc="sampling", leave=False)
    for i in it:
        t = ts[i]
        a_t = abar[t].to(x.dtype)
        a_prev = abar[ts[i + 1]].to(x.dtype) if i + 1 < steps else torch.ones((), dtype=x.dtype, device=x.device)
        eps = eps_fn(x, t.expand(B), cond)
        x0 = (x - (1 - a_t).sqrt() * eps) / a_t.sqrt()
        sig = eta * ((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)).clamp(min=0).sqrt()
        dir_ = (1 - a_prev - sig ** 2).clamp(min=0).sqrt() * eps
        x = a_prev.sqrt() * x0 + dir_
        if eta > 0:
            x = x + sig * randn(x.shape, generator, x.device, x.dtype)
    return x


def log_normal_std(x: Tensor) -> Tensor:
    """log N(x; 0, I) per sample; [B]."""
    d = x[0].numel()
    return -0.5 * x.flatten(1).pow(2).sum(1) - 0.5 * d * math.log(2 * math.pi)
