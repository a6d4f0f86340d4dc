"""The digits tasks and their models on a tiny config (a few pretraining steps, a handful of samples)."""
from __future__ import annotations

import math
import os

import pytest
import torch

from unlearnbench import models
from unlearnbench.methods.base import select_trainable
from unlearnbench.tasks import TASKS
from unlearnbench.tasks import _digits as digits
from unlearnbench.tasks import digits_data

TINY = {"pretrain_steps": 20, "finetune_steps": 10, "classifier_epochs": 1, "pool_size": 8, "sample_steps": 4,
        "n_eval": 8, "n_eval_kept": 2, "n_retain_eval": 16}


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    torch.set_num_threads(1)
    return str(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def concept(cache):
    task = TASKS.get("digits-concept")(TINY, cache_dir=cache)
    return task, task.build(0)


@pytest.fixture(scope="module")
def data(cache):
    task = TASKS.get("digits-data")({**TINY, "forget": "pair"}, cache_dir=cache)
    return task, task.build(0)


def test_split_is_fixed_and_stratified():
    a, b = models.split_digits(), models.split_digits()
    assert torch.equal(a["x_train"], b["x_train"]) and a["x_train"].shape == (1437, 1, 8, 8)
    assert a["x_test"].shape[0] == 360 and a["x_train"].min() == -1 and a["x_train"].max() == 1
    counts = torch.bincount(a["y_test"], minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37


def test_concept_bundle(concept):
    task, b = concept
    assert b.kind == "concept" and b.data_shape == (1, 8, 8) and b.null_cond == models.NULL_PROMPT == 0
    assert b.forget_concepts == [models.digit_prompt(3)] and len(b.retain_concepts) == 9
    assert b.concept_names[4] == "digit 3" and b.guidance > 1
    x = torch.randn(5, 1, 8, 8)
    t = torch.randint(0, 1000, (5,))
    c = torch.tensor([0, 1, 2, 3, 10])
    assert b.net(x, t, c).shape == (5, 1, 8, 8)
    assert all(not p.requires_grad for p in b.ref.parameters())
    assert all(p.requires_grad for p in b.net.parameters())
    x0 = b.sample_ref(c, torch.Generator().manual_seed(0))
    assert x0.shape == (5, 1, 8, 8) and x0.abs().max() <= 1
    r = b.posterior(x, t, b.forget_concepts + [1])
    assert r.shape == (5, 2) and (r >= 0).all() and (r <= 1).all()
    # beyond the largest quadrature step the posterior is exactly the prior
    late = b.posterior(x, torch.full((5,), 999), [4])
    assert torch.allclose(late, torch.full_like(late, 0.1))


def test_pair_forget_set_and_bad_name(cache):
    task = TASKS.get("digits-concept")({**TINY, "forget": "pair"}, cache_dir=cache)
    assert task.build(0).forget_concepts == [1, 10]
    with pytest.raises(ValueError, match="unknown forget set 'three'"):
        TASKS.get("digits-concept")({"forget": "three"}, cache_dir=cache)


def test_second_build_uses_the_cache(concept, cache, monkeypatch):
    import functools

    def boom(real):
        @functools.wraps(real)  # wrapped, so that the cache key (the builder's code) still sees the real function
        def f(*a, **k):
            raise AssertionError("retrained although the cache holds the model")
        return f

    monkeypatch.setattr(digits, "pretrain_unet", boom(digits.pretrain_unet))
    monkeypatch.setattr(digits, "train_classifier", boom(digits.train_classifier))
    b2 = TASKS.get("digits-concept")(TINY, cache_dir=cache).build(1)
    for p, q in zip(concept[1].ref.parameters(), b2.ref.parameters()):
        assert torch.equal(p, q)


def test_condition_enters_only_through_cross_attention():
    net = models.CondUNet().eval()
    x, t = torch.randn(4, 1, 8, 8), torch.randint(0, 1000, (4,))
    with torch.no_grad():
        assert not torch.allclose(net(x, t, torch.full((4,), 1)), net(x, t, torch.full((4,), 5)))
        for name, mod in net.named_modules():
            if name.endswith("attn2.to_v"):
                mod.weight.zero_()
        assert torch.allclose(net(x, t, torch.full((4,), 1)), net(x, t, torch.full((4,), 5)))


@pytest.mark.parametrize("mode", ["xattn", "lora"])
def test_select_trainable_on_condunet(concept, mode):
    import copy

    net = copy.deepcopy(concept[1].ref)
    params = select_trainable(net, mode, lora_rank=2)
    assert params and all(p.requires_grad for p in params)
    names = {id(p): n for n, p in net.named_parameters()}
    assert all("attn2" in names[id(p)] for p in params)
    if mode == "lora":
        assert all("lora_" in names[id(p)] for p in params)
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    opt = torch.optim.Adam(params, lr=1e-2)
    x, t, c = torch.randn(4, 1, 8, 8), torch.randint(0, 1000, (4,)), torch.tensor([0, 1, 2, 3])
    net(x, t, c).pow(2).mean().backward()
    opt.step()
    changed = {n for n, p in net.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all("attn2" in n for n in changed)


def test_evaluate_concept(concept, tmp_path):
    task, b = concept
    b.extras["artifact_dir"] = str(tmp_path)
    m = task.evaluate(b, 0)
    for k in ("acc_forget", "acc_kept", "kid_kept", "kl_proxy_kept", "acc_forget_d3"):
        assert k in m and math.isfinite(m[k].value), k
    assert m["acc_forget"].role == "unlearning" and not m["acc_forget"].higher_is_better
    assert m["acc_kept"].role == "retention" and m["acc_kept"].higher_is_better
    assert m["kid_kept"].role == "retention" and m["kl_proxy_kept"].value == pytest.approx(0.0, abs=1e-6)
    assert os.path.exists(b.extras["artifacts"]["samples"])
    again = task.evaluate(b, 0)
    assert again["acc_forget"].value == m["acc_forget"].value and again["kid_kept"].value == m["kid_kept"].value
    digests = task.describe()["pretrained"]  # which networks the record's numbers come from
    assert set(digests) == {"digits-unet", "digits-classifier", "digits-pool"}
    assert all(len(v) == 16 and int(v, 16) >= 0 for v in digests.values())


def test_data_bundle(data):
    task, b = data
    assert b.kind == "data" and b.data_shape == (1, 8, 8) and b.data_noise == 0
    n_copies = sum(digits_data.INJECT_COPIES.values())
    assert b.train_data.shape == (1437 + n_copies, 1, 8, 8)
    assert b.forget_data.shape == (2, 1, 8, 8) and b.n_constraints == 2
    forgot = digits_data.INJECT_COPIES["checker"] + digits_data.INJECT_COPIES["cross"]
    assert b.retain_data.shape[0] == b.train_data.shape[0] - forgot
    d = torch.cdist(b.retain_data.flatten(1), b.forget_data.flatten(1))
    assert (d > 0).all()  # no forget image left in the retain set
    null = torch.zeros(3, dtype=torch.long)
    assert b.sample_ref(null, torch.Generator().manual_seed(0)).shape == (3, 1, 8, 8)
    with pytest.raises(ValueError, match="null prompt only"):
        b.sample_ref(torch.tensor([1, 0, 0]), None)


def test_evaluate_data(data, tmp_path):
    task, b = data
    b.extras["artifact_dir"] = str(tmp_path)
    m = task.evaluate(b, 0)
    for k in ("regen_rate", "forget_bpd", "forget_nll_ode", "kid_retain", "retain_bpd", "regen_rate_pretrained"):
        assert k in m and math.isfinite(m[k].value), k
    assert m["regen_rate"].role == "unlearning" and m["forget_bpd"].higher_is_better
    assert m["kid_retain"].role == "retention" and m["retain_bpd"].role == "retention"
    assert os.path.exists(b.extras["artifacts"]["samples"])
    assert set(task.describe()["pretrained"]) == {"digits-unet", "digits-classifier", "digits-data-unet",
                                                  "digits-data-pool"}


def test_pretrain_entry_point(cache, concept, data):
    r = digits.pretrain("digits", cache_dir=cache, progress=False, options=TINY)
    assert 0 <= r["classifier_heldout_acc"] <= 1 and 0 <= r["guided_sample_acc"] <= 1
    assert set(r["regen_rate_pretrained"]) == set(digits_data.INJECT_COPIES)
    with pytest.raises(ValueError, match="unknown digits task"):
        digits.pretrain("mnist", cache_dir=cache)


def test_pretraining_is_deterministic():
    cfg = {"steps": 3, "batch_size": 8, "warmup": 1}
    small = {"block_out_channels": [8, 8], "norm_num_groups": 4, "cross_attention_dim": 8}
    a = models.pretrain_unet(cfg, unet_config=small, progress=False)
    b = models.pretrain_unet(cfg, unet_config=small, progress=False)
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)


def test_classifier_features():
    clf = models.DigitClassifier()
    x = torch.rand(3, 1, 8, 8) * 2 - 1
    assert clf.features(x).shape == (3, clf.num_features)
    assert torch.allclose(clf.logits_from_features(clf.eval().features(x)), clf(x), atol=1e-5)


def test_default_pretrained_model_quality():
    """The default config: classifier >= 97% held-out, guided samples >= 90% (the shipped networks; ~26 min of
    training on 2 cores where they are not shipped)."""
    r = digits.pretrain("digits-concept", progress=False)
    assert r["classifier_heldout_acc"] >= 0.97 and r["guided_sample_acc"] >= 0.9


@pytest.mark.parametrize("method", ["rkl", "rkl-is", "lik", "lik-is", "rkl-fixed", "esd", "salun", "fkl", "siss"])
def test_every_method_trains_on_the_digits_bundle(concept, data, method):
    """Two steps of each method with the task's own defaults, on the tiny digits models (cross-attention ESD-x included)."""
    from unlearnbench.methods import METHODS
    from unlearnbench.config import build_method_config
    from unlearnbench.runner import train

    cls = METHODS.get(method)
    task, bundle = data if "data" in cls.kinds and "concept" not in cls.kinds else concept
    bundle = task.build(0)
    over = {"steps": 2, "batch_size": 4}
    if hasattr(cls.Config, "n_estimate"):
        over.update(n_estimate=4, dual_every=1)
    if method == "salun":
        over["mask_samples"] = 4
    info = train(cls(build_method_config(task, method, over, None), bundle, torch.Generator().manual_seed(0)))
    assert info["diverged"] is None and info["history"]
    if method == "fkl":
        assert bundle.extras["forget_weights"] == pytest.approx([100 / 1637, 60 / 1637])  # copies / (1437 + 200)
