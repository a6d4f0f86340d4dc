"""The data baselines of issue 23 (neggrad, naive, erasediff) pinned end to end as tests/test_wiring.py pins the older
ones: the real ``losses()`` + ``backward`` from a seeded generator, the draws replayed in the reference's order into a
transcription of its formula (repository and file cited), every parameter's gradient compared to 1e-5."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from unlearnbench.diffusion import add_noise
from unlearnbench.methods import METHODS
from test_wiring import B, assert_same_grads, make, one_step, reference_grads, replay


def _rows(b, g, data):
    """A batch of rows with replacement, smoothed by the task's data noise (as the method's ``rows``)."""
    idx = torch.randint(0, data.shape[0], (B,), generator=g)
    return data[idx] + b.data_noise * torch.randn(data[idx].shape, generator=g)


# -- NegGrad and naive deletion: claserken/SISS ----------------------------------------------------------------------
def test_neggrad_step_matches_simple_neg_del(data_bundle):
    """losses/ddpm_deletion_loss.py ``simple_neg_del``: ``loss_a = (unet(noisy_deletion) - noise) ** 2``, ``loss = -
    superfactor * loss_a``; delete_celeb.py: ``loss.sum() / train_batch_size``."""
    b, sf = data_bundle, 0.7
    m = make("neggrad", b, seed=23, superfactor=sf)
    g = replay(m)
    ours = one_step(m)

    deletion_images = _rows(b, g, b.forget_data)
    noise = torch.randn(deletion_images.shape, generator=g)
    timesteps = torch.randint(0, b.schedule.T, (B,), generator=g)
    preds = b.net(add_noise(b.schedule, deletion_images, noise, timesteps), timesteps, torch.full((B,), b.null_cond))
    loss = -sf * (preds - noise) ** 2
    assert_same_grads(ours, reference_grads(loss.sum() / B, b.net))


def test_naive_step_matches_naive_del_on_the_nondeletion_set(data_bundle):
    """losses/ddpm_deletion_loss.py ``naive_del``: ``loss = (unet(noisy_all) - noise) ** 2`` with ``dataset_all``
    filtered to ``nondeletion`` (config/delete_celeb.yaml); ``loss.sum() / train_batch_size``."""
    b = data_bundle
    m = make("naive", b, seed=29)
    g = replay(m)
    ours = one_step(m)

    all_images = _rows(b, g, b.retain_data)
    noise = torch.randn(all_images.shape, generator=g)
    timesteps = torch.randint(0, b.schedule.T, (B,), generator=g)
    preds = b.net(add_noise(b.schedule, all_images, noise, timesteps), timesteps, torch.full((B,), b.null_cond))
    assert_same_grads(ours, reference_grads(((preds - noise) ** 2).sum() / B, b.net))


# -- EraseDiff: JingWu321/EraseDiff -----------------------------------------------------------------------------------
def _antithetic(g, n, T):
    t = torch.randint(low=0, high=T, size=(n // 2 + 1,), generator=g)
    return torch.cat([t, T - t - 1], dim=0)[:n]


def _erasediff_losses(b, g):
    """ddpm/runners/diffusion.py ``train_ours``, one outer step: ``loss_dr = loss_registry_conditional(model, images_r,
    t, labels_r, noise_r, b)`` (``x = x0 * a.sqrt() + e * (1.0 - a).sqrt()``, ``F.mse_loss(output, e)``); the forget
    term in the commented "normal noise" form: ``noise_u = torch.rand_like(images_u)``, ``loss_du =
    loss_registry_conditional(model, images_u, t_u, labels_u, noise_u, b)``; antithetic t and t_u."""
    T, null = b.schedule.T, torch.full((B,), b.null_cond)
    a_bar = b.schedule.alphas_cumprod

    def loss_registry_conditional(x0, t, e):
        a = a_bar.index_select(0, t).view(-1, 1).float()
        x = x0 * a.sqrt() + e * (1.0 - a).sqrt()
        return F.mse_loss(b.net(x, t, null), e)

    images_r = _rows(b, g, b.retain_data)
    noise_r = torch.randn(images_r.shape, generator=g)
    t = _antithetic(g, B, T)
    loss_dr = loss_registry_conditional(images_r, t, noise_r)
    images_u = _rows(b, g, b.forget_data)
    noise_u = torch.rand(images_u.shape, generator=g)
    t_u = _antithetic(g, B, T)
    loss_du = loss_registry_conditional(images_u, t_u, noise_u)
    return loss_dr, loss_du


def test_erasediff_step_matches_train_ours(data_bundle):
    """``loss_q = loss_du - unl_losses.avg.detach()``; ``loss = loss_dr + lambda_bome * loss_q``; ``loss.backward()``
    (the constant ``unl_losses.avg`` has no gradient)."""
    b, lam = data_bundle, 0.3
    m = make("erasediff", b, seed=31, lambda_bome=lam)
    g = replay(m)
    ours = one_step(m)

    loss_dr, loss_du = _erasediff_losses(b, g)
    unl_avg = torch.tensor(0.123)  # any constant: detached in the reference
    assert_same_grads(ours, reference_grads(loss_dr + lam * (loss_du - unl_avg.detach()), b.net))


def test_erasediff_adaptive_lambda_matches_train_ours(data_bundle):
    """``lambda_bome < 0``: ``q_grads = grad(loss_q)``, ``dr_grads = grad(loss_dr)``, ``tmp = inner_product /
    (dr_grad_norm * q_grad_norm + 1e-8)``, ``lambda_bome = eta_bome - tmp if eta_bome > tmp else 0``; then ``loss =
    loss_dr + lambda_bome * loss_q``."""
    b, eta = data_bundle, 0.5
    m = make("erasediff", b, seed=37, adaptive=True, eta_bome=eta)
    g = replay(m)
    ours = one_step(m)

    loss_dr, loss_du = _erasediff_losses(b, g)
    params = list(b.net.parameters())
    q_grads = torch.autograd.grad(loss_du, params, retain_graph=True)
    dr_grads = torch.autograd.grad(loss_dr, params, retain_graph=True)
    q_vec = torch.cat([v.contiguous().view(-1) for v in q_grads])
    dr_vec = torch.cat([v.contiguous().view(-1) for v in dr_grads])
    tmp = torch.sum(dr_vec * q_vec) / (torch.linalg.norm(dr_vec, 2) * torch.linalg.norm(q_vec, 2) + 1e-8)
    lambda_bome = (eta - tmp).detach() if eta > tmp else 0.0
    assert 0 < float(lambda_bome), "the draw exercises the active branch"
    assert m.last_lambda == pytest.approx(float(lambda_bome), rel=1e-5)
    assert_same_grads(ours, reference_grads(loss_dr + lambda_bome * loss_du, b.net))


# -- registry, grids and refusals --------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,param", [("neggrad", "steps"), ("naive", "steps"), ("erasediff", "lambda_bome")])
def test_data_baselines_are_registered_with_grids_on_the_data_tasks(name, param, concept_bundle):
    from unlearnbench.config import grid_values
    from unlearnbench.tasks import TASKS

    cls = METHODS.get(name)
    assert cls.kinds == ("data",) and cls.grid_params["eps"] == param
    for task in ("gmm-data", "digits-data"):
        values = grid_values(TASKS.get(task)(), "eps", name)
        assert len(values) == 6 and values == sorted(values), (task, values)
        assert len(grid_values(TASKS.get(task)(), "smoke", name)) == 2
    with pytest.raises(ValueError, match="applies to data tasks, not concept"):
        make(name, concept_bundle)


def test_data_baselines_step_on_the_ddpm_data_bundle(tmp_path):
    """ddpm-data's bundle (a tiny random DDPM saved with save_pretrained) serves all three: a step's terms are finite
    and reach the UNet; the sweep plans each method's declared grid there."""
    from paper_fixtures import FAST, ddpm_dir, image_folder
    from unlearnbench.config import plan_trials
    from unlearnbench.tasks.ddpm import DDPMDataTask

    opts = {"model": str(ddpm_dir(tmp_path)), "forget_dir": str(image_folder(tmp_path / "forget", 2, seed=0)),
            "kid_features": "none", "train_size": 1000, **FAST}
    b = DDPMDataTask(opts, cache_dir=str(tmp_path / "cache")).build(0)
    for name in ("neggrad", "naive", "erasediff"):
        m = METHODS.get(name)(METHODS.get(name).Config(batch_size=2), b, torch.Generator().manual_seed(0))
        grads = one_step(m)
        assert all(torch.isfinite(g).all() for g in grads) and any(float(g.abs().max()) > 0 for g in grads), name
    plan = plan_trials("ddpm-data", "neggrad,naive,erasediff", "smoke", "0", run_dir=str(tmp_path / "r"),
                       config={"task": opts})
    assert {t["method"]: t["grid"]["param"] for t in plan.trials} == {"neggrad": "steps", "naive": "steps",
                                                                      "erasediff": "lambda_bome"}
