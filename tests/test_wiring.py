"""Each existing baseline's wiring pinned end to end: the method's real ``losses()`` (and ``setup``, ``backward``,
``after_backward``) runs one step from a seeded generator; the test then replays the same draws from a copy of that
generator in the order the reference script takes them, feeds them to an independent transcription of the reference
formula (repository and file cited), and compares every parameter's gradient to 1e-5.

Unlike ``tests/test_baselines.py``, which hands the formula prepared tensors, nothing is patched here: which data set,
which prompts and which model each term draws from is part of what is compared. Swapping SISS's kept and forget images,
drawing SalUn's retain term from the erased prompts, training ESD on the wrong prompt, flipping a term's sign or
dropping an importance weight all change the gradient and fail a test here (checked by mutation; see the report of
issue 23)."""
from __future__ import annotations

import pytest
import torch

from unlearnbench.diffusion import add_noise, ddim_sample, guided
from unlearnbench.methods import METHODS
from unlearnbench.methods.base import make_config
from unlearnbench.methods.salun import saliency_masks
from test_baselines import _reference_siss

B = 16


def make(name, bundle, seed=0, **kw):
    cls = METHODS.get(name)
    return cls(make_config(cls.Config, {"batch_size": B, "steps": 3, **kw}, name), bundle,
               torch.Generator().manual_seed(seed))


def replay(method) -> torch.Generator:
    """A generator in the method's current state: the reference draws what the method is about to draw."""
    g = torch.Generator()
    g.set_state(method.gen.get_state())
    return g


def one_step(method) -> list[torch.Tensor]:
    """The runner's step without the optimizer: losses, backward, gradient hooks; the gradients of every parameter."""
    for p in method.net.parameters():
        p.grad = None
    method.backward(method.losses())
    method.after_backward()
    return [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in method.net.parameters()]


def reference_grads(loss: torch.Tensor, net, retain_graph: bool = False) -> list[torch.Tensor]:
    params = list(net.parameters())
    gs = torch.autograd.grad(loss, params, allow_unused=True, retain_graph=retain_graph)
    return [g if g is not None else torch.zeros_like(p) for g, p in zip(gs, params)]


def assert_same_grads(ours, ref):
    assert len(ours) == len(ref)
    assert any(float(r.abs().max()) > 1e-6 for r in ref), "the reference gradient vanished: the test would be empty"
    for i, (a, b) in enumerate(zip(ours, ref)):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-5), f"parameter {i}: max |diff| {float((a - b).abs().max())}"


# -- ESD: rohitgandikota/erasing --------------------------------------------------------------------------------------
@pytest.mark.parametrize("xt_source,erase_from", [("current", "erased"), ("base", "erased"), ("base", "null")])
def test_esd_step_gradient_matches_the_reference(erased_bundle, xt_source, erase_from):
    """train-scripts/train-esd.py (2023, x_t from the model being trained) and esd_sd.py (2025, x_t from the base model,
    --erase_from): ``word = random.sample(words, 1)``; ``t_enc = randint(ddim_steps)``; ``z = quick_sample_till_t(
    emb_p, start_guidance, start_code, t_enc)``; ``e_0 = model_orig(z, t, emb_0)``, ``e_p = model_orig(z, t,
    emb_p)``, ``e_n = model(z, t, emb_p)`` (``emb_erase_from`` in esd_sd.py); ``loss = MSELoss(e_n, e_0 -
    negative_guidance (e_p - e_0))``."""
    b, eta, steps = erased_bundle, 1.5, 10
    m = make("esd", b, seed=7, eta=eta, xt_source=xt_source, erase_from=erase_from, ddim_steps=steps)
    g = replay(m)
    ours = one_step(m)

    words = list(b.forget_concepts)
    word = words[int(torch.randint(0, len(words), (1,), generator=g))]
    t_enc = int(torch.randint(0, steps, (1,), generator=g))
    erase_from_prompt = word if erase_from == "erased" else b.null_cond
    sampler_model = b.net if xt_source == "current" else b.ref
    eps = sampler_model if erase_from_prompt == b.null_cond else guided(sampler_model, b.null_cond, 3.0)
    with torch.no_grad():
        z = ddim_sample(b.schedule, eps, torch.full((B,), erase_from_prompt), b.data_shape, steps, generator=g,
                        stop_at=steps - t_enc)
    t = torch.linspace(b.schedule.T - 1, 0, steps).round().long()[t_enc].expand(B)
    emb_0, emb_p = torch.full((B,), b.null_cond), torch.full((B,), word)
    with torch.no_grad():
        e_0, e_p = b.ref(z, t, emb_0), b.ref(z, t, emb_p)
    e_n = b.net(z, t, torch.full((B,), erase_from_prompt))
    loss = torch.nn.MSELoss()(e_n, e_0 - eta * (e_p - e_0))
    assert_same_grads(ours, reference_grads(loss, b.net))


# -- SalUn: OPTML-Group/Unlearn-Saliency ------------------------------------------------------------------------------
def _generate_mask(b, g, net, forget_classes, per_class, batch, c_guidance):
    """SD/train-scripts/generate_mask.py: over the forget set, ``loss = -criteria(noise, (1 + c_guidance) forget_out
    - c_guidance null_out)`` per batch, ``gradients[name] += param.grad``; then ``abs``, one global top 50%."""
    forget = torch.tensor(forget_classes).repeat_interleave(per_class)
    images = b.sample_ref(forget, g)
    params = list(net.parameters())
    gradients = [torch.zeros_like(p) for p in params]
    for i in range(0, len(forget), batch):
        x0, c = images[i:i + batch], forget[i:i + batch]
        noise = torch.randn(x0.shape, generator=g)
        t = torch.randint(0, b.schedule.T, (x0.shape[0],), generator=g)
        x = add_noise(b.schedule, x0, noise, t)
        forget_out, null_out = net(x, t, c), net(x, t, torch.full_like(c, b.null_cond))
        loss = -torch.nn.MSELoss()(noise, (1 + c_guidance) * forget_out - c_guidance * null_out)
        for acc, gr in zip(gradients, torch.autograd.grad(loss, params)):
            acc += gr
    return saliency_masks(gradients, 0.5)


def _noised_batch(b, g, classes):
    """A batch of pretrained samples of uniformly drawn ``classes``, forward-noised at uniform t."""
    c = torch.tensor(classes)[torch.randint(0, len(classes), (B,), generator=g)]
    x0 = b.sample_ref(c, g)
    noise = torch.randn(x0.shape, generator=g)
    t = torch.randint(0, b.schedule.T, (B,), generator=g)
    return add_noise(b.schedule, x0, noise, t), t, noise, c


def test_salun_step_gradient_matches_the_reference(erased_bundle):
    """SD/train-scripts/random_label.py, one step: forget images of the erased class c, relabelled to the pseudo class
    ``(c + 1) % 10`` (here: the next kept prompt); ``pseudo_out = model(pseudo_noisy, t, pseudo_emb).detach()``,
    ``forget_loss = criteria(forget_out, pseudo_out)``; remain images of the kept classes, ``remain_loss =
    criteria(noise, remain_out)``; ``loss = forget_loss + alpha * remain_loss``; ``p.grad *= mask[name]``."""
    b, alpha = erased_bundle, 0.4
    m = make("salun", b, seed=11, alpha=alpha, mask_samples=8, mask_guidance=2.0)
    g = replay(m)
    m.setup()
    ours = one_step(m)

    mask = _generate_mask(b, g, b.net, b.forget_concepts, 8, B, c_guidance=2.0 - 1)
    net = b.net
    fx, ft, _, fc = _noised_batch(b, g, b.forget_concepts)
    pseudo = torch.tensor([{2: 1, 3: 1}[int(c)] for c in fc])  # forget {2, 3}, kept {1}: next kept, cyclically
    forget_loss = torch.nn.MSELoss()(net(fx, ft, fc), net(fx, ft, pseudo).detach())
    rx, rt, rnoise, rc = _noised_batch(b, g, b.retain_concepts)
    remain_loss = torch.nn.MSELoss()(rnoise, net(rx, rt, rc))
    ref = [gr * mk for gr, mk in zip(reference_grads(forget_loss + alpha * remain_loss, net), mask)]
    assert_same_grads(ours, ref)


# -- SISS: claserken/SISS ---------------------------------------------------------------------------------------------
def _deletion_batches(b, g, x_source="retain"):
    """delete_celeb.py's draws: a batch of the non-deletion set, a batch of the deletion set (rows with replacement,
    smoothed by the task's data noise), one noise shared by both, one t per pair."""
    def rows(data):
        idx = torch.randint(0, data.shape[0], (B,), generator=g)
        return data[idx] + b.data_noise * torch.randn(data[idx].shape, generator=g)

    all_images = rows(b.retain_data if x_source == "retain" else b.train_data)
    deletion_images = rows(b.forget_data)
    noise = torch.randn(all_images.shape, generator=g)
    timesteps = torch.randint(0, b.schedule.T, (B,), generator=g)
    return all_images, deletion_images, noise, timesteps


@pytest.mark.parametrize("x_source", ["retain", "train"])
def test_siss_step_gradient_matches_the_reference(data_bundle, x_source):
    """losses/ddpm_deletion_loss.py ``importance_sampling_with_mixture`` (deletion mask ``rand < lambd``) and
    delete_celeb.py: ``weighted_loss_x.sum() / train_batch_size`` (same for a), ``scaling_factor = scaling_norm /
    total_l2_norm_a``, ``param.grad = accum_loss_x - scaling_factor * accum_loss_a``."""
    b, S, lambd = data_bundle, 5.0, 0.5
    m = make("siss", b, seed=13, scaling_norm=S, mix=lambd, x_source=x_source)
    g = replay(m)
    ours = one_step(m)

    x, a, noise, t = _deletion_batches(b, g, x_source)
    deletion_mask = torch.rand(B, generator=g) < lambd
    null = torch.full((B,), b.null_cond)
    wx, wa = _reference_siss(lambda z, tt: b.net(z, tt, null), b.schedule, x, a, noise, t, deletion_mask, lambd)
    gx = reference_grads(wx.sum() / B, b.net, retain_graph=True)
    ga = reference_grads(wa.sum() / B, b.net)
    scaling_factor = S / torch.sqrt(sum(torch.norm(v, p=2) ** 2 for v in ga))
    assert_same_grads(ours, [vx - scaling_factor * va for vx, va in zip(gx, ga)])


def test_siss_fixed_weight_step_matches_the_reference(data_bundle):
    """ddpm_deletion_loss.py's commented fixed-weight form: ``loss = w_x loss_x - superfactor / (1/frac_deletion - 1)
    w_a loss_a`` (frac_deletion = K/N), ``loss.sum() / train_batch_size``, one backward."""
    b, sf, lambd = data_bundle, 0.7, 0.5
    m = make("siss", b, seed=17, scaling_norm=0.0, superfactor=sf, mix=lambd)
    g = replay(m)
    ours = one_step(m)

    x, a, noise, t = _deletion_batches(b, g)
    deletion_mask = torch.rand(B, generator=g) < lambd
    null = torch.full((B,), b.null_cond)
    wx, wa = _reference_siss(lambda z, tt: b.net(z, tt, null), b.schedule, x, a, noise, t, deletion_mask, lambd)
    frac_deletion = b.forget_data.shape[0] / b.train_data.shape[0]
    loss = (wx - sf * 1 / ((frac_deletion ** -1) - 1) * wa).sum() / B
    assert_same_grads(ours, reference_grads(loss, b.net))


def test_siss_without_importance_sampling_matches_double_forward(data_bundle):
    """ddpm_deletion_loss.py ``double_forward_with_neg_del``: ``loss_x = (unet(noisy_all) - noise)^2``, ``loss_a =
    (unet(noisy_deletion) - noise)^2``, the same noise and t; then delete_celeb.py's gradient rescaling."""
    b, S = data_bundle, 3.0
    m = make("siss", b, seed=19, scaling_norm=S, importance=False)
    g = replay(m)
    ours = one_step(m)

    x, a, noise, t = _deletion_batches(b, g)
    null = torch.full((B,), b.null_cond)
    loss_x = (b.net(add_noise(b.schedule, x, noise, t), t, null) - noise) ** 2
    loss_a = (b.net(add_noise(b.schedule, a, noise, t), t, null) - noise) ** 2
    gx, ga = reference_grads(loss_x.sum() / B, b.net), reference_grads(loss_a.sum() / B, b.net)
    scaling_factor = S / torch.sqrt(sum(torch.norm(v, p=2) ** 2 for v in ga))
    assert_same_grads(ours, [vx - scaling_factor * va for vx, va in zip(gx, ga)])
