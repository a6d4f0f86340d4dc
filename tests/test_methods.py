"""Method contract tests on a tiny exact mixture: shapes, gradients, dual signs, projection, state round-trip."""
from __future__ import annotations

import pytest
import torch

from unlearnbench.methods import METHODS
from unlearnbench.methods._constrained import ConstrainedMethod
from unlearnbench.methods.base import make_config
from unlearnbench.runner import train

CONCEPT = ["rkl", "rkl-is", "lik", "lik-is", "rkl-fixed", "esd", "salun"]
DATA = ["fkl", "siss"]


def make(name, bundle, **kw):
    cls = METHODS.get(name)
    cfg = make_config(cls.Config, {"batch_size": 32, "steps": 3, "n_estimate": 16, **kw}
                      if issubclass(cls, ConstrainedMethod) else {"batch_size": 32, "steps": 3, **kw}, name)
    return cls(cfg, bundle, torch.Generator().manual_seed(0))


@pytest.mark.parametrize("name", CONCEPT)
def test_concept_losses_finite_and_grads_only_trainable(name, concept_bundle, erased_bundle):
    if name == "salun":  # SalUn refuses a null-prompt-scored task (tested in test_baselines.py)
        concept_bundle = erased_bundle
    m = make(name, concept_bundle)
    m.setup()
    losses = m.losses()
    assert all(v.ndim == 1 and torch.isfinite(v).all() for v in losses.values())
    m.backward(losses)
    trainable = {id(p) for p in m.trainable_parameters()}
    assert any(p.grad is not None for p in m.trainable_parameters())
    assert all(p.grad is None for p in concept_bundle.ref.parameters())
    for p in concept_bundle.net.parameters():
        if id(p) not in trainable:
            assert p.grad is None


@pytest.mark.parametrize("name", DATA)
def test_data_losses_finite(name, data_bundle):
    m = make(name, data_bundle)
    m.setup()
    losses = m.losses()
    assert all(v.ndim == 1 and torch.isfinite(v).all() for v in losses.values())
    assert torch.isfinite(m.backward(losses))


def test_method_kind_mismatch_is_rejected(data_bundle):
    with pytest.raises(ValueError, match="applies to concept tasks"):
        make("rkl", data_bundle)


@pytest.mark.parametrize("name,sense", [("rkl", ">="), ("fkl", ">="), ("lik", "<=")])
def test_dual_step_sign_and_projection(name, sense, concept_bundle, data_bundle):
    bundle = data_bundle if name == "fkl" else concept_bundle
    m = make(name, bundle, eps=0.5, dual_lr=0.1, dual_ema=0.0)
    m.duals.zero_()
    below, above = torch.tensor([0.0, 0.0], dtype=torch.float64), torch.tensor([10.0, 10.0], dtype=torch.float64)
    violated = below if sense == ">=" else above
    satisfied = above if sense == ">=" else below
    m.dual_step(violated)
    assert (m.duals > 0).all(), "a violated constraint must raise its dual"
    for _ in range(50):
        m.dual_step(satisfied)
    assert (m.duals == 0).all(), "duals are projected onto >= 0"
    if name in ("rkl", "fkl"):
        for _ in range(200):
            m.dual_step(violated * 0 + (-100 if sense == ">=" else 100))
        assert m.duals.sum() <= 1 - m.cfg.delta + 1e-9, "Lambda <= 1 - delta"


def test_state_dict_round_trip(concept_bundle):
    m = make("rkl", concept_bundle)
    m.duals = torch.tensor([0.1, 0.3], dtype=torch.float64)
    m.step = 7
    state = m.state_dict()
    m2 = make("rkl", concept_bundle)
    m2.load_state_dict(state)
    assert m2.step == 7 and torch.equal(m2.duals, m.duals)


def test_rkl_weights_are_alphas(concept_bundle):
    m = make("rkl", concept_bundle)
    m.duals = torch.tensor([0.2, 0.3], dtype=torch.float64)
    w = m.concept_weights(torch.zeros(4, 2), torch.zeros(4, dtype=torch.long))
    assert torch.allclose(w[0].double(), torch.tensor([0.2 / 0.5, 0.3 / 0.5], dtype=torch.float64))


def test_rkl_fixed_with_alpha_zero_target_is_pretrained_null(concept_bundle):
    m = make("rkl-fixed", concept_bundle, alpha=0.0)
    x_t, t, prompt, target = m.erase_batch()
    assert torch.allclose(target, concept_bundle.ref(x_t, t, torch.zeros_like(prompt)), atol=1e-6)


def test_training_lowers_objective(concept_bundle):
    m = make("rkl-fixed", concept_bundle, alpha=1.0, steps=60, lr=3e-3)
    torch.manual_seed(0)
    before = torch.stack([m.objective(m.losses()).detach() for _ in range(8)]).mean()
    train(m)
    after = torch.stack([m.objective(m.losses()).detach() for _ in range(8)]).mean()
    assert after < before


def test_rkl_constraint_estimate_and_record_fields(concept_bundle):
    m = make("rkl", concept_bundle, steps=4, dual_every=2, eps=5.0, dual_lr=0.05)
    info = train(m)
    assert len(info["duals"]) == 3 and len(info["constraint_estimates"]) == 2
    assert info["constraints_met"] in (True, False)
    assert all(d >= 0 for d in info["final_duals"])


def test_salun_mask_keeps_requested_share(erased_bundle):
    m = make("salun", erased_bundle, saliency=0.5, mask_samples=16)
    m.setup()
    kept = sum(float(mask.sum()) for mask in m.masks.values())
    total = sum(mask.numel() for mask in m.masks.values())
    assert kept == int(total * 0.5)
    m.backward(m.losses())
    m.after_backward()
    for p in m.trainable_parameters():
        assert torch.all(p.grad[m.masks[id(p)] == 0] == 0)


@pytest.mark.parametrize("name,kw,msg", [("rkl", {"eps": -1.0}, "impossible"), ("lik", {"eps": 1.5}, "impossible"),
                                         ("fkl", {"eps": -0.1}, "impossible"), ("esd", {"trainable": "bogus"}, "valid: full"),
                                         ("esd", {"xt_source": "frozen"}, "valid: current, base"),
                                         ("siss", {"x_source": "all"}, "valid: retain, train")])
def test_bad_settings_name_the_value(name, kw, msg):
    cls = METHODS.get(name)
    with pytest.raises(ValueError, match=msg):
        make_config(cls.Config, kw, name)


def test_unknown_setting_lists_valid():
    with pytest.raises(ValueError, match="unknown setting.*valid:"):
        make_config(METHODS.get("esd").Config, {"etaa": 1.0}, "esd")


def test_dual_projection_is_euclidean_onto_the_capped_simplex():
    from unlearnbench.methods._constrained import project_capped_simplex

    v = torch.tensor([0.9, 0.3, -0.2], dtype=torch.float64)
    p = project_capped_simplex(v, 0.95)
    # the nearest point with sum 0.95: subtract tau = 0.125 from the positive entries (not a rescaling of both)
    assert torch.allclose(p, torch.tensor([0.775, 0.175, 0.0], dtype=torch.float64))
    inside = torch.tensor([0.2, -0.1], dtype=torch.float64)
    assert torch.equal(project_capped_simplex(inside, 0.95), torch.tensor([0.2, 0.0], dtype=torch.float64))
    g = torch.Generator().manual_seed(0)
    for _ in range(20):  # optimality: no feasible point on a grid is closer
        v = torch.randn(2, generator=g, dtype=torch.float64)
        p = project_capped_simplex(v, 0.5)
        a = torch.linspace(0, 0.5, 101, dtype=torch.float64)
        pts = torch.cartesian_prod(a, a)
        pts = pts[pts.sum(1) <= 0.5 + 1e-12]
        assert float((p - v).norm()) <= float((pts - v).norm(dim=1).min()) + 1e-9


def test_fkl_duals_stay_where_the_minimiser_is_a_density(data_bundle):
    m = make("fkl", data_bundle, eps=100.0, dual_lr=1.0, dual_ema=0.0)
    w = m.forget_weights()
    assert torch.allclose(w, torch.full((2,), 1 / 40, dtype=torch.float64))  # one row each of 40 training points
    for _ in range(5):
        m.dual_step(torch.zeros(2, dtype=torch.float64))  # far below b: duals pushed up hard
    assert torch.allclose(m.duals, w), "lambda_i <= w_i (lambda_i = w_i is retraining without row i)"
    data_bundle.extras["forget_weights"] = [0.01, 0.2]
    m2 = make("fkl", data_bundle, eps=100.0, dual_lr=1.0, dual_ema=0.0)
    m2.dual_step(torch.zeros(2, dtype=torch.float64))
    assert torch.allclose(m2.duals, torch.tensor([0.01, 0.2], dtype=torch.float64))


def test_constraint_samples_drawn_once_per_prompt_and_unguided(concept_bundle):
    m = make("rkl", concept_bundle, steps=1)
    calls = []
    orig = concept_bundle.sample_model
    concept_bundle.guidance = 3.0
    concept_bundle.sample_model = lambda net, cond, gen=None, steps=None, guidance=None: (
        calls.append((int(cond[0]), guidance)), orig(net, cond, gen, steps, guidance))[1]
    m.estimate_constraints()  # both constraints measure the null prompt on the mixture bundle
    assert calls == [(0, 1.0)]
    calls.clear()
    concept_bundle.extras["constrain_on"] = "erased"
    make("lik", concept_bundle, steps=1).estimate_constraints()
    assert calls == [(2, 1.0), (3, 1.0)], "one unguided draw per erased prompt: p_theta(.|c_i) as the constraint reads"


def test_importance_weights_tilt_toward_the_lagrangian_minimiser(concept_bundle):
    m = make("rkl-is", concept_bundle)
    m.duals = torch.tensor([0.2, 0.3], dtype=torch.float64)
    x0 = torch.randn(32, 2)
    lr = concept_bundle.ref.log_ratio(x0, [2, 3])
    alpha = torch.tensor([0.2, 0.3]) / 0.5
    assert torch.allclose(m.log_weights(x0), -(lr * alpha).sum(1), atol=1e-6)
    lik = make("lik-is", concept_bundle)
    lik.duals = torch.tensor([2.0, 5.0], dtype=torch.float64)
    r = concept_bundle.posterior(x0, torch.zeros(32, dtype=torch.long), [2, 3])
    assert torch.allclose(lik.log_weights(x0), -(r * torch.tensor([2.0, 5.0])).sum(1), atol=1e-6)
    losses = m.losses()
    assert 1.0 <= float(losses["ess"][0]) <= 16.0
