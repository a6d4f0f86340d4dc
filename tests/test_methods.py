"""Method contract tests on a tiny exact mixture: shapes, gradients, dual signs, projection, state round-trip."""
from __future__ import annotations

import pytest
import torch

from unlearnbench.methods import METHODS
from unlearnbench.methods._constrained import ConstrainedMethod
from unlearnbench.methods.base import make_config
from unlearnbench.runner import train

CONCEPT = ["rkl", "lik", "esd", "salun"]
DATA = ["fkl", "siss", "salun"]


def make(name, bundle, **kw):
    cls = METHODS.get(name)
    cfg = make_config(cls.Config, {"batch_size": 32, "steps": 3, "n_estimate": 16, **kw}
                      if issubclass(cls, ConstrainedMethod) else {"batch_size": 32, "steps": 3, **kw}, name)
    return cls(cfg, bundle, torch.Generator().manual_seed(0))


@pytest.mark.parametrize("name", CONCEPT)
def test_concept_losses_finite_and_grads_only_trainable(name, concept_bundle):
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


def test_esd_with_eta_zero_target_is_pretrained_null(concept_bundle):
    m = make("esd", concept_bundle, eta=0.0)
    x_t, t, prompt, target = m.erase_batch()
    assert torch.allclose(target, concept_bundle.ref(x_t, t, torch.zeros_like(prompt)), atol=1e-6)


def test_training_lowers_objective(concept_bundle):
    m = make("esd", concept_bundle, eta=1.0, steps=60, lr=3e-3)
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


def test_siss_scaling_norm_clips_negative_gradient(data_bundle):
    m = make("siss", data_bundle, s=5.0, scaling_norm=1e-3)
    obj = m.backward(m.losses())
    assert torch.isfinite(obj)
    assert all(p.grad is not None for p in m.trainable_parameters())


def test_salun_mask_keeps_requested_share(concept_bundle):
    m = make("salun", concept_bundle, saliency=0.5)
    m.setup()
    kept = sum(float(mask.sum()) for mask in m.masks)
    total = sum(mask.numel() for mask in m.masks)
    assert 0.45 <= kept / total <= 0.6
    m.backward(m.losses())
    m.after_backward()
    for p, mask in zip(m.trainable_parameters(), m.masks):
        assert torch.all(p.grad[mask == 0] == 0)


@pytest.mark.parametrize("name,kw,msg", [("rkl", {"eps": -1.0}, "impossible"), ("lik", {"eps": 1.5}, "impossible"),
                                         ("fkl", {"eps": -0.1}, "impossible"), ("esd", {"trainable": "bogus"}, "valid: full")])
def test_bad_settings_name_the_value(name, kw, msg):
    cls = METHODS.get(name)
    with pytest.raises(ValueError, match=msg):
        make_config(cls.Config, kw, name)


def test_unknown_setting_lists_valid():
    with pytest.raises(ValueError, match="unknown setting.*valid:"):
        make_config(METHODS.get("esd").Config, {"etaa": 1.0}, "esd")
