"""Each baseline pinned to its authors' code: the reference formula is transcribed here (repository and file cited),
fed the same tensors as the method, and must agree to 1e-5."""
from __future__ import annotations

import pytest
import torch

from unlearnbench.diffusion import add_noise, ddim_sample, guided
from unlearnbench.methods import METHODS
from unlearnbench.methods.base import make_config
from unlearnbench.methods.salun import saliency_masks
from unlearnbench.methods.siss import siss_terms


def make(name, bundle, seed=0, **kw):
    cls = METHODS.get(name)
    return cls(make_config(cls.Config, {"batch_size": 16, "steps": 3, **kw}, name), bundle,
               torch.Generator().manual_seed(seed))


# -- ESD: rohitgandikota/erasing --------------------------------------------------------------------------------------
def _esd_inputs(bundle, seed=1):
    g = torch.Generator().manual_seed(seed)
    x_t, t = torch.randn(16, 2, generator=g), torch.randint(0, 1000, (16,), generator=g)
    return x_t, t, torch.full((16,), 2), torch.zeros(16, dtype=torch.long)


@pytest.mark.parametrize("eta", [0.5, 1.0, 2.0])
def test_esd_loss_matches_train_esd_2023(concept_bundle, eta):
    """train-scripts/train-esd.py: ``loss = criteria(e_n, e_0 - (negative_guidance * (e_p - e_0)))``, criteria =
    torch.nn.MSELoss(), e_0 / e_p the frozen model at the null / erased prompt, e_n the trained model at the erased."""
    m = make("esd", concept_bundle, eta=eta)
    x_t, t, c, null = _esd_inputs(concept_bundle)
    m.esd_batch = lambda: (x_t, t, c, c)
    ours = m.objective(m.losses())
    e_0, e_p = concept_bundle.ref(x_t, t, null), concept_bundle.ref(x_t, t, c)
    e_n = concept_bundle.net(x_t, t, c)
    ref = torch.nn.MSELoss()(e_n, e_0 - (eta * (e_p - e_0)))
    assert torch.allclose(ours, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("erase_from_null", [False, True])
def test_esd_loss_matches_esd_sd_2025(concept_bundle, erase_from_null):
    """esd_sd.py: ``criteria(noise_pred_esd_model, noise_pred_erase_from - (negative_guidance * (noise_pred_erase -
    noise_pred_null)))``; without --erase_from, erase_from = the erased prompt and negative_guidance 2 is eta 1; with
    --erase_from '' (the null prompt) negative_guidance is eta and the null prompt is trained."""
    ng = 2.0
    eta = ng if erase_from_null else ng - 1
    m = make("esd", concept_bundle, eta=eta, erase_from="null" if erase_from_null else "erased")
    x_t, t, c, null = _esd_inputs(concept_bundle)
    train_prompt = null if erase_from_null else c
    m.esd_batch = lambda: (x_t, t, c, train_prompt)
    ours = m.objective(m.losses())
    ref_model = concept_bundle.ref
    erase_from = ref_model(x_t, t, train_prompt)
    target = erase_from - ng * (ref_model(x_t, t, c) - ref_model(x_t, t, null))
    ref = torch.nn.MSELoss()(concept_bundle.net(x_t, t, train_prompt), target)
    assert torch.allclose(ours, ref, atol=1e-5, rtol=1e-5)


def test_esd_samples_x_t_by_partial_ddim_of_the_chosen_model(erased_bundle):
    """x_t: DDIM with guidance 3 along a 50-step schedule from noise with the erased prompt, stopped at a random step;
    ``current`` samples the model being trained (train-esd.py), ``base`` the frozen model (esd_sd.py)."""
    for source in ("current", "base"):
        m = make("esd", erased_bundle, xt_source=source, seed=3)
        state = m.gen.get_state()
        x_t, t, c, prompt = m.esd_batch()
        assert torch.equal(c, prompt) and len(set(c.tolist())) == 1, "one erased concept per step, trained on its prompt"
        m.gen.set_state(state)
        concept = erased_bundle.forget_concepts[int(torch.randint(0, 2, (1,), generator=m.gen))]
        k = int(torch.randint(0, 50, (1,), generator=m.gen))
        model = erased_bundle.net if source == "current" else erased_bundle.ref
        expect = ddim_sample(erased_bundle.schedule, guided(model, 0, 3.0), torch.full((16,), concept), (2,), 50,
                             generator=m.gen, stop_at=50 - k)
        assert torch.allclose(x_t, expect) and int(c[0]) == concept
        assert int(t[0]) == int(torch.linspace(999, 0, 50).round().long()[k])


def test_esd_trains_only_the_erased_prompt(erased_bundle):
    m = make("esd", erased_bundle)
    seen = set()
    net = erased_bundle.net
    orig = net.forward
    # calls with gradients are the trained ones (x_t sampling runs without)
    net.forward = lambda x, t, c: (torch.is_grad_enabled() and seen.update(c.tolist()), orig(x, t, c))[1]
    for _ in range(6):
        m.losses()
    assert seen <= set(erased_bundle.forget_concepts)


# -- SalUn: OPTML-Group/Unlearn-Saliency -----------------------------------------------------------------------------
def test_salun_mask_matches_generate_mask():
    """SD/train-scripts/generate_mask.py and DDPM/runners/diffusion.py ``generate_mask``: ``all_elements = -cat(|g|)``,
    ``threshold_index = int(len(all_elements) * 0.5)``, ``ranks = argsort(argsort(all_elements))``, mask = ranks <
    threshold_index."""
    g = torch.Generator().manual_seed(0)
    grads = [torch.randn(5, 3, generator=g), torch.randn(7, generator=g), torch.randn(2, 2, 2, generator=g)]
    all_elements = -torch.cat([t.abs().flatten() for t in grads])
    ranks = torch.argsort(torch.argsort(all_elements))
    ref = (ranks < int(len(all_elements) * 0.5)).float()
    ours = torch.cat([m.flatten() for m in saliency_masks(grads, 0.5)])
    assert torch.equal(ours, ref)


def test_salun_mask_accumulates_signed_gradient_of_the_guided_forget_loss(erased_bundle):
    """generate_mask.py: per forget batch ``loss = -criteria(noise, (1 + c_g) * forget_out - c_g * null_out)``,
    ``gradients[name] += param.grad``, then ``abs`` and the global top 50%."""
    m = make("salun", erased_bundle, mask_samples=24, mask_guidance=3.0, seed=5)
    m.setup()
    gen = torch.Generator().manual_seed(5)
    forget = torch.tensor(erased_bundle.forget_concepts).repeat_interleave(24)
    x_all = erased_bundle.sample_ref(forget, gen)
    net, sched = erased_bundle.net, erased_bundle.schedule
    params = list(net.parameters())
    acc = [torch.zeros_like(p) for p in params]
    for i in range(0, forget.shape[0], 16):
        x0, c = x_all[i:i + 16], forget[i:i + 16]
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.randint(0, sched.T, (x0.shape[0],), generator=gen)
        x = add_noise(sched, x0, noise, t)
        c_g = 3.0 - 1
        preds = (1 + c_g) * net(x, t, c) - c_g * net(x, t, torch.zeros_like(c))
        loss = -torch.nn.MSELoss()(noise, preds)
        for a, gr in zip(acc, torch.autograd.grad(loss, params)):
            a += gr
    expect = saliency_masks(acc, 0.5)
    assert all(torch.equal(m.masks[id(p)], e) for p, e in zip(params, expect))


def test_salun_loss_matches_random_label(erased_bundle):
    """SD/train-scripts/random_label.py: ``pseudo_out = model.apply_model(pseudo_noisy, t, pseudo_emb).detach()``,
    ``forget_loss = criteria(forget_out, pseudo_out)``, ``loss = forget_loss + alpha * remain_loss`` (remain: the
    denoising MSE on retain data); the pseudo class is ``(class_to_forget + 1) % 10``: the next kept prompt."""
    alpha = 0.3
    m = make("salun", erased_bundle, alpha=alpha)
    g = torch.Generator().manual_seed(2)
    fx, fn = torch.randn(16, 2, generator=g), torch.randn(16, 2, generator=g)
    rx, rn = torch.randn(16, 2, generator=g), torch.randn(16, 2, generator=g)
    t = torch.randint(0, 1000, (16,), generator=g)
    fc, rc = torch.full((16,), 2), torch.full((16,), 1)
    batches = iter([(fx, t, fn, fc), (rx, t, rn, rc)])
    m.noised_samples = lambda prompts, n: next(batches)
    ours = m.objective(m.losses())
    net = erased_bundle.net
    pseudo_c = torch.full((16,), 1)  # forget {2, 3}, kept {1}: the next kept prompt after 2 (cyclically) is 1
    forget_loss = torch.nn.MSELoss()(net(fx, t, fc), net(fx, t, pseudo_c).detach())
    remain_loss = torch.nn.MSELoss()(rn, net(rx, t, rc))
    assert torch.allclose(ours, forget_loss + alpha * remain_loss, atol=1e-5, rtol=1e-5)


def test_salun_refuses_a_null_scored_task(concept_bundle):
    from unlearnbench.tasks.gmm_concept import GMMConceptTask

    assert "never trains" in METHODS.get("salun").unsupported_reason(GMMConceptTask)
    with pytest.raises(ValueError, match="null prompt"):
        make("salun", concept_bundle)


# -- SISS: claserken/SISS ---------------------------------------------------------------------------------------------
def _reference_siss(unet, sched, x, a, noise, t, deletion_mask, lambd):
    """losses/ddpm_deletion_loss.py ``importance_sampling_with_mixture``, transcribed (2-D data: one summed dim)."""
    gamma = sched.alphas_cumprod[t].sqrt().float()
    sigma = (1 - sched.alphas_cumprod[t]).sqrt().float()
    noisy_all, noisy_del = gamma[:, None] * x + sigma[:, None] * noise, gamma[:, None] * a + sigma[:, None] * noise
    all_mask = ~deletion_mask
    mix = torch.empty_like(noisy_all)
    mix[all_mask], mix[deletion_mask] = noisy_all[all_mask], noisy_del[deletion_mask]
    preds = unet(mix, t)
    epsilon_x = (mix - gamma[:, None] * x) / sigma[:, None]
    epsilon_a = (mix - gamma[:, None] * a) / sigma[:, None]
    loss_x, loss_a = (preds - epsilon_x) ** 2, (preds - epsilon_a) ** 2
    dist_x = torch.sum((mix - gamma[:, None] * x) ** 2, dim=[1]) / (2 * sigma ** 2)
    dist_a = torch.sum((mix - gamma[:, None] * a) ** 2, dim=[1]) / (2 * sigma ** 2)
    ratio_a_x, ratio_x_a = torch.exp(dist_x - dist_a), torch.exp(dist_a - dist_x)
    w_x = 1 / ((1 - lambd) + lambd * ratio_a_x)
    w_a = 1 / ((1 - lambd) * ratio_x_a + lambd)
    return w_x[:, None] * loss_x, w_a[:, None] * loss_a


def test_siss_terms_and_gradient_match_the_reference(data_bundle):
    """delete_celeb.py: ``weighted_loss_x.sum() / train_batch_size`` (same for a), ``scaling_factor = scaling_norm /
    total_l2_norm_a``, ``param.grad = accum_loss_x - scaling_factor * accum_loss_a``."""
    S, lambd, B = 5.0, 0.5, 16
    m = make("siss", data_bundle, scaling_norm=S, mix=lambd)
    g = torch.Generator().manual_seed(4)
    x, a, noise = data_bundle.retain_data[:B], data_bundle.forget_data[torch.arange(B) % 2], torch.randn(B, 2, generator=g)
    t = torch.randint(0, 1000, (B,), generator=g)
    deletion = torch.rand(B, generator=g) < lambd
    net, null = data_bundle.net, torch.zeros(B, dtype=torch.long)
    pos, neg = siss_terms(net, x, a, noise, t, deletion, data_bundle.schedule, lambd, null)
    wx, wa = _reference_siss(lambda z, tt: net(z, tt, null), data_bundle.schedule, x, a, noise, t, deletion, lambd)
    lx, la = wx.sum() / B, wa.sum() / B
    assert torch.allclose(pos.mean(), lx, rtol=1e-5) and torch.allclose(neg.mean(), la, rtol=1e-5)
    params = list(m.trainable_parameters())
    gx = torch.autograd.grad(lx, params, retain_graph=True)
    ga = torch.autograd.grad(la, params)
    scaling_factor = S / torch.sqrt(sum(torch.norm(v, p=2) ** 2 for v in ga))
    m.backward({"keep": pos, "forget": neg, "loss": pos - neg})
    for p, vx, va in zip(params, gx, ga):
        assert torch.allclose(p.grad, vx - scaling_factor * va, atol=1e-5, rtol=1e-4)


def test_siss_draws_x_from_the_retain_set_by_default(data_bundle):
    m = make("siss", data_bundle)
    drawn = []
    orig = m.rows
    m.rows = lambda which, n, idx=None: (drawn.append(which), orig(which, n, idx))[1]
    m.losses()
    assert drawn == ["retain", "forget"]
    assert make("siss", data_bundle, x_source="train").cfg.x_source == "train"
