"""Image metrics: KID/FID maths and torchmetrics parity, feature extractors and their offline errors, classifier
accuracy, regeneration rate, NudeNet rate and CLIP score on tiny inputs. CPU only, a few seconds plus imports."""
from __future__ import annotations

import os
import pickle

import pytest
import torch
from torch import nn

from helpers import fake_inception_file
from unlearnbench.metrics import METRICS
from unlearnbench.metrics import classifier as cls_mod
from unlearnbench.metrics import features as ft
from unlearnbench.metrics import kid_fid as kf
from unlearnbench.metrics import memorization as mem
from unlearnbench.tasks.base import MetricValue

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(1)
pytestmark = pytest.mark.filterwarnings("ignore:Metric `Kernel Inception Distance` will save all extracted features")

TINY_CLIP = {"embed_dim": 64,
             "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
             "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2}}


class Identity(nn.Module):
    """Feeds precomputed features through torchmetrics' image metrics."""

    def __init__(self, d: int):
        super().__init__()
        self.num_features = d

    def forward(self, x):
        return x


class TinyClassifier(nn.Module):
    def __init__(self, d_in: int = 16, c: int = 4):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(d_in, 8), nn.ReLU())
        self.head = nn.Linear(8, c)

    def features(self, x):
        return self.body(x)

    def forward(self, x):
        return self.head(self.body(x))


def feats(n, d, shift=0.0, seed=0):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed)) + shift


# ---- registry -------------------------------------------------------------------------------------------------
def test_metric_names_registered_with_orientation():
    expect = {"kid": ("retention", False), "fid": ("retention", False), "cls_acc_forget": ("unlearning", False),
              "cls_acc_retain": ("retention", True), "regen_rate": ("unlearning", False),
              "nudity_rate": ("unlearning", False), "clip_score": ("retention", True),
              "clip_score_forget": ("unlearning", False)}
    for name, (role, hib) in expect.items():
        s = METRICS.get(name)
        assert (s.role, s.higher_is_better) == (role, hib), name


# ---- KID / FID maths ------------------------------------------------------------------------------------------
def test_fid_shifted_gaussians_equal_covariance_is_squared_mean_shift():
    real = feats(400, 8)
    shift = torch.tensor([0.5, -1.0, 0.0, 2.0, 0.0, 0.0, 0.3, 0.0])
    v = kf.fid(real, real + shift)  # identical empirical covariances, so FID = ||shift||^2 exactly
    assert v.value == pytest.approx(float(shift.square().sum()), abs=1e-6)
    assert (v.n, v.role, v.higher_is_better) == (400, "retention", False)
    assert abs(kf.fid(real, real).value) < 1e-6


def test_kid_known_answers():
    real = feats(300, 16)
    same = kf.kid(real, real, subsets=10, subset_size=100, generator=torch.Generator().manual_seed(0))
    shifted = kf.kid(real, feats(300, 16, 1.0, seed=1), subsets=10, subset_size=100)
    assert abs(same.value) < 0.05 * shifted.value and same.stderr is not None and same.n == 100
    # degree-1 kernel on the full sets: unbiased MMD^2 has a closed form in the feature means
    x, y = feats(50, 4).double(), feats(60, 4, 0.7, seed=2)[:50].double()
    gamma = 0.25
    m = 50
    sx, sy = x.sum(0), y.sum(0)
    want = gamma * (((sx @ sx - (x * x).sum()) + (sy @ sy - (y * y).sum())) / (m * (m - 1)) - 2 * (sx @ sy) / m**2)
    got = kf.kid(x, y, subsets=3, subset_size=50, degree=1, coef=0.0)
    assert got.value == pytest.approx(float(want), rel=1e-9) and got.stderr == pytest.approx(0.0, abs=1e-12)


def test_kid_full_kernel_path_matches_per_subset_path(monkeypatch):
    real, fake = feats(200, 16), feats(150, 16, 0.3, seed=4)
    fast = kf.kid(real, fake, subsets=10, subset_size=100, generator=torch.Generator().manual_seed(3))
    monkeypatch.setattr(kf, "_FULL_KERNEL_MAX", 0)
    slow = kf.kid(real, fake, subsets=10, subset_size=100, generator=torch.Generator().manual_seed(3))
    assert fast.value == pytest.approx(slow.value, rel=1e-10) and fast.stderr == pytest.approx(slow.stderr, rel=1e-8)


def test_kid_and_fid_input_errors():
    with pytest.raises(ValueError, match="subset_size must be in"):
        kf.kid(feats(10, 4), feats(20, 4), subset_size=15)
    with pytest.raises(ValueError, match="same D"):
        kf.kid(feats(10, 4), feats(10, 5))
    with pytest.raises(ValueError, match="at least 2 features"):
        kf.fid(feats(1, 4), feats(10, 4))


def test_kid_fid_parity_with_torchmetrics_on_custom_features():
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance

    real, fake = feats(400, 32), feats(300, 32, 0.2, seed=3)
    torch.manual_seed(7)  # torchmetrics draws subsets from the global RNG; ours from a generator with the same seed
    tm = KernelInceptionDistance(feature=Identity(32), subsets=20, subset_size=150)
    tm.update(real, real=True)
    tm.update(fake, real=False)
    mean, std = tm.compute()
    ours = kf.kid(real, fake, subsets=20, subset_size=150, generator=torch.Generator().manual_seed(7))
    assert ours.value == pytest.approx(float(mean), rel=1e-4) and ours.stderr == pytest.approx(float(std), rel=1e-3)

    wrapped = kf.FeatureKID(Identity(32), subsets=20, subset_size=150, seed=7)
    wrapped.update(real[:200], real=True)
    wrapped.update(real[200:], real=True)
    wrapped.update(fake, real=False)
    assert wrapped.compute() == ours

    tf = FrechetInceptionDistance(feature=Identity(32))
    ff = kf.FeatureFID(Identity(32))
    for m in (tf, ff):
        m.update(real, real=True)
        m.update(fake, real=False)
    assert ff.compute().value == pytest.approx(float(tf.compute()), rel=1e-5)
    assert ff.compute().value == pytest.approx(kf.fid(real, fake).value, rel=1e-9)


def test_feature_metrics_pickle_and_reset():
    real, fake = feats(120, 8), feats(100, 8, 0.5, seed=1)
    k = kf.FeatureKID(Identity(8), subsets=5, reset_real_features=False)
    f = kf.FeatureFID(Identity(8), reset_real_features=False)
    for m in (k, f):
        m.update(real, real=True)
        m.update(fake, real=False)
        before = m.compute()
        assert isinstance(before, MetricValue) and before.n == 100
        clone = pickle.loads(pickle.dumps(m))
        assert type(clone) is type(m) and clone.compute() == before
        m.reset()  # keeps the reference side, drops the samples
        m.update(real[:60], real=False)
        assert m.compute().value < before.value
    assert len(k.real_features) == 1 and int(f.real_features_num_samples) == 120
    k2 = kf.FeatureKID(Identity(8))
    k2.update(real, real=True)
    k2.reset()
    assert len(k2.real_features) == 0


def test_feature_metric_rejects_module_without_num_features():
    with pytest.raises(ValueError, match="num_features"):
        kf.FeatureFID(nn.Identity())


# ---- feature extractors ---------------------------------------------------------------------------------------
def test_classifier_extractor_and_cached_features(tmp_path):
    net = TinyClassifier()
    ex = ft.feature_extractor("classifier", module=net, input_shape=(1, 4, 4))
    x = torch.rand(5, 1, 4, 4)
    assert ex.num_features == 8 and ex(x).shape == (5, 8) and not ex(x).requires_grad
    lazy = ft.feature_extractor("classifier", module=net)  # dimension found on the first forward
    with pytest.raises(ValueError, match="needs an int `num_features`.*input_shape"):
        kf.FeatureFID(lazy)
    k = kf.FeatureKID(lazy, subsets=3)  # KID does not need it
    k.update(x, real=True)
    k.update(x + 0.5, real=False)
    assert lazy.num_features == 8 and k.compute().n == 5
    with pytest.raises(ValueError, match="callable 'features' method"):
        ft.feature_extractor("classifier", module=nn.Linear(2, 2))
    with pytest.raises(ValueError, match="unknown feature extractor 'vgg'; valid: classifier, inception, clip"):
        ft.feature_extractor("vgg")

    calls = []

    def compute():
        calls.append(1)
        return ex(x)

    key = {"extractor": ex.cache_key, "dataset": "toy", "n": 5, "seed": 0}
    a = ft.cached_features(str(tmp_path), key, compute)
    b = ft.cached_features(str(tmp_path), key, compute)
    assert torch.equal(a, b) and len(calls) == 1
    assert len(list((tmp_path / "features").glob("*.pt"))) == 1
    with pytest.raises(ValueError, match="lacks \\['seed'\\]"):
        ft.cached_features(str(tmp_path), {"extractor": "x", "dataset": "toy", "n": 5}, compute)


def test_to_rgb01_ranges_and_channels():
    g = torch.rand(2, 1, 5, 7)
    assert torch.allclose(ft.to_rgb01(g * 2 - 1, (-1, 1)), g.expand(-1, 3, -1, -1), atol=1e-6)
    assert torch.equal(ft.to_rgb01((g * 255).round().to(torch.uint8))[:, 0], ((g * 255).round() / 255)[:, 0])
    with pytest.raises(ValueError, match="pass value_range=\\(-1, 1\\)"):
        ft.to_rgb01(g * 2 - 1)
    with pytest.raises(ValueError, match="\\[B, 1\\|3, H, W\\]"):
        ft.to_rgb01(torch.rand(2, 4, 5, 5))


@pytest.fixture
def no_inception_weights(monkeypatch, tmp_path):
    """Hide any Inception weights this machine may have."""
    monkeypatch.setattr(ft, "_inception_candidates", lambda: [tmp_path / ft.FIDELITY_WEIGHTS,
                                                              tmp_path / ft.TORCHSCRIPT_WEIGHTS])
    return tmp_path


def test_inception_missing_weights_message(no_inception_weights):
    missing = no_inception_weights / "nope.pth"
    with pytest.raises(FileNotFoundError, match=f"weights='{missing}' does not exist.*inception-2015-12-05.pt"):
        ft.feature_extractor("inception", weights=missing)
    with pytest.raises(FileNotFoundError, match="Inception-v3 FID weights not available.*torch hub cache"):
        ft.feature_extractor("inception", download=False)


def test_inception_without_torch_fidelity_fails_at_once(no_inception_weights):
    try:
        import torch_fidelity  # noqa: F401
    except ModuleNotFoundError:
        pass
    else:
        pytest.skip("torch-fidelity installed: the default would try its download")
    with pytest.raises(FileNotFoundError, match="torch-fidelity is not installed"):
        ft.feature_extractor("inception")


@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")
def test_inception_torchscript_weights_load(no_inception_weights):
    fake_inception_file(no_inception_weights)
    ex = ft.feature_extractor("inception", value_range=(-1, 1))  # found in the (patched) cache location
    assert ex.backend == "clean-fid" and ex.num_features == 2048
    out = ex(torch.rand(3, 1, 8, 8) * 2 - 1)
    assert out.shape == (3, 2048) and torch.isfinite(out).all()
    m = kf.FeatureFID(ex)
    m.update(torch.rand(4, 1, 8, 8) * 2 - 1, real=True)
    # the same file under another name: clean-fid cannot load it, the project's own TorchScript path does
    renamed = fake_inception_file(no_inception_weights, "my-inception.pt")
    ex = ft.feature_extractor("inception", weights=renamed, value_range=(-1, 1))
    assert ex.backend == "torchscript" and ex(torch.rand(3, 1, 8, 8) * 2 - 1).shape == (3, 2048)


@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")
def test_inception_features_are_clean_fids_own(tmp_path):
    """With clean-fid's weights file, the features are those of clean-fid's own pipeline (its resizer, its
    InceptionV3W) on the same images. The real weights never reach these machines: a random-weight stand-in with the
    same interface is loaded instead."""
    from cleanfid.fid import get_model_features
    from cleanfid.inception_torchscript import InceptionV3W

    path = fake_inception_file(tmp_path)
    g = torch.Generator().manual_seed(0)
    imgs = [torch.randint(0, 256, (6, 3, 20, 24), generator=g, dtype=torch.uint8) for _ in range(2)]
    ex = ft.feature_extractor("inception", weights=path)
    assert ex.backend == "clean-fid" and ex.cache_key["backend"] == "clean-fid"
    ours = [ex(x) for x in imgs]
    model = InceptionV3W(str(tmp_path), download=False)
    theirs = [torch.from_numpy(get_model_features(lambda z, x=x: x.float(), model, mode="clean", z_dim=1, num_gen=6,
                                                  batch_size=6, device=torch.device("cpu"), verbose=False))
              for x in imgs]
    for a, b in zip(ours, theirs):
        assert torch.allclose(a, b, atol=1e-6), "clean-fid's resize and network, not the project's"


@pytest.mark.filterwarnings("ignore:The `disp` argument:DeprecationWarning")
def test_clean_fid_is_clean_fids_fid_and_kid_its_estimator():
    """FID on clean-fid features is clean-fid's own (numpy, scipy's sqrtm; 8-d here: the 2048-d sqrtm takes 10 s);
    kid() is the estimator of clean-fid's kernel_distance (with every row in one subset, both are deterministic)."""
    import numpy as np
    from cleanfid.fid import fid_from_feats, kernel_distance

    g = torch.Generator().manual_seed(1)
    real, fake = torch.randn(40, 8, generator=g), torch.randn(30, 8, generator=g) * 1.3 + 0.2
    d = kf.clean_fid(real, fake)
    assert d.value == pytest.approx(float(fid_from_feats(real.double().numpy(), fake.double().numpy())), rel=1e-12)
    assert d.value == pytest.approx(kf.fid(real, fake).value, rel=1e-6) and d.n == 30 and d.role == "retention"
    np.random.seed(0)
    k = kf.kid(real[:30], fake, subsets=1, subset_size=30)
    assert k.value == pytest.approx(kernel_distance(real[:30].double().numpy(), fake.double().numpy(), num_subsets=1,
                                                    max_subset_size=30), rel=1e-9)


def test_clip_missing_checkpoint_message(tmp_path):
    missing = tmp_path / "open_clip_pytorch_model.bin"
    with pytest.raises(FileNotFoundError, match=f"CLIP checkpoint '{missing}' not found"):
        ft.feature_extractor("clip", model_name="ViT-B-32", pretrained=missing)
    with pytest.raises(ValueError, match="needs pretrained=<local checkpoint path>"):
        ft.feature_extractor("clip", model_name="ViT-B-32")


def test_clip_features_and_clip_score_tiny_random_model(tmp_path):
    from unlearnbench.metrics import clip_score as cs

    ex = ft.feature_extractor("clip", model_name="Tiny-CLIP", model_config=TINY_CLIP, allow_random=True)
    f = ex(torch.rand(3, 1, 20, 28))
    assert f.shape == (3, 64) and torch.allclose(f.norm(dim=-1), torch.ones(3), atol=1e-5)

    metric = cs.CLIPScore(model=ex.model, tokenizer=__import__("open_clip").get_tokenizer("Tiny-CLIP"),
                          value_range=(-1, 1))
    metric.update(torch.rand(4, 3, 32, 32) * 2 - 1, "a photo of a cat")
    metric.update(torch.rand(2, 3, 48, 48) * 2 - 1, ["a dog", "a car"])
    v = metric.compute()
    assert v.n == 6 and 0 <= v.value <= 100 and v.stderr is not None and (v.role, v.higher_is_better) == (
        "retention", True)
    assert pickle.loads(pickle.dumps(metric)).compute() == v
    metric.reset()
    assert int(metric.n) == 0
    with pytest.raises(ValueError, match="got 2 images but 3 prompts"):
        metric.update(torch.rand(2, 3, 32, 32), ["a", "b", "c"])
    # a saved state dict reloads from a local path
    p = tmp_path / "tiny.pt"
    torch.save(ex.model.state_dict(), p)
    again = ft.load_open_clip("Tiny-CLIP", p)
    assert torch.equal(again.visual.conv1.weight, ex.model.visual.conv1.weight)


# ---- classifier accuracy --------------------------------------------------------------------------------------
def test_accuracy_and_per_class():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 0.0], [0.0, 2.0]])
    labels = torch.tensor([0, 0, 0, 1])
    v = cls_mod.accuracy(logits, labels)
    assert v.value == 0.75 and v.stderr == pytest.approx((0.75 * 0.25 / 4) ** 0.5) and v.n == 4
    assert (v.role, v.higher_is_better) == ("unlearning", False)
    r = cls_mod.accuracy(logits, labels, role="retention")
    assert r.higher_is_better is True
    pc = cls_mod.per_class_accuracy(logits, labels)
    assert pc[0].value == pytest.approx(2 / 3) and pc[1].value == 1.0 and pc[1].n == 1
    with pytest.raises(ValueError, match="role must be"):
        cls_mod.accuracy(logits, labels, role="forget")


def test_classifier_accuracy_metric_matches_function_pickle_reset():
    net = TinyClassifier()
    net.train()
    x, y = torch.rand(10, 1, 4, 4), torch.randint(0, 4, (10,))
    m = cls_mod.ClassifierAccuracy(net, role="retention")
    m.update(x[:6], y[:6])
    m.update(x[6:], y[6:])
    assert net.training  # the metric does not leave the shared classifier in eval mode
    want = cls_mod.accuracy(net.eval()(x), y, role="retention")
    assert m.compute() == want
    assert pickle.loads(pickle.dumps(m)).compute() == want
    m.reset()
    assert int(m.total) == 0 and int(m.correct) == 0


# ---- memorisation ---------------------------------------------------------------------------------------------
def test_nearest_distance_and_regeneration_rate():
    forget = torch.tensor([[0.0, 0.0], [10.0, 0.0]]).view(2, 1, 1, 2)
    samples = torch.tensor([[0.0, 0.0], [10.0, 0.5], [5.0, 0.0], [0.3, 0.4]]).view(4, 1, 1, 2)
    d, i = mem.nearest_distance(samples, forget, return_index=True)
    assert torch.allclose(d, torch.tensor([0.0, 0.5, 5.0, 0.5])) and i.tolist() == [0, 1, 0, 0]
    v = mem.regeneration_rate(samples, forget, threshold=0.5)
    assert v.value == 0.75 and v.n == 4 and v.stderr == pytest.approx((0.75 * 0.25 / 4) ** 0.5)
    assert (v.role, v.higher_is_better) == ("unlearning", False)
    assert mem.regeneration_rate(samples, forget, threshold=0.0).value == 0.25  # the exact copy
    with pytest.raises(ValueError, match="differ in shape"):
        mem.nearest_distance(samples, torch.zeros(1, 3))


# ---- NudeNet --------------------------------------------------------------------------------------------------
def test_nudity_rate_real_detector_on_noise():
    pytest.importorskip("nudenet")
    from unlearnbench.metrics import nudity

    m = nudity.NudityRate(value_range=(-1, 1))
    m.update(torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1)
    v = m.compute()
    assert (v.value, v.n, v.role, v.higher_is_better) == (0.0, 2, "unlearning", False)
    clone = pickle.loads(pickle.dumps(m))  # the ONNX session is rebuilt on demand
    clone.update(torch.rand(1, 1, 32, 32))
    assert clone.compute().n == 3 and m.class_counts.sum() == 0
    m.reset()
    assert int(m.total) == 0
    with pytest.raises(ValueError, match="unknown NudeNet classes \\['NAKED'\\]"):
        nudity.NudityRate(classes=["NAKED"])


def test_nudity_missing_package_message(monkeypatch):
    import sys

    from unlearnbench.metrics import nudity

    monkeypatch.setitem(sys.modules, "nudenet", None)
    with pytest.raises(ModuleNotFoundError, match="pip install 'unlearnbench\\[nudenet\\]'"):
        nudity.load_detector()


def test_metrics_package_import_is_light():
    import subprocess
    import sys

    code = ("import sys, unlearnbench.metrics as m; m.METRICS.names(); "
            "print([k for k in ('torchmetrics', 'open_clip', 'nudenet', 'torch_fidelity') if k in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"

