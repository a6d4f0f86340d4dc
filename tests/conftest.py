"""Shared fixtures: a tiny exact 2-D mixture bundle for method and runner tests (independent of the real tasks)."""
from __future__ import annotations

import os
import sys

import pytest
import torch
from torch import nn

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# Hermetic: tests never touch (or reuse) the user's cache. Each test process gets its own, pytest-xdist's workers
# (``make test`` runs ``-n auto``) included: they inherit the controller's environment, so the folder this file made
# in the controller is marked and replaced, and a worker sees exactly what a serial run sees.
_owner = os.environ.get("UB_TEST_CACHE_OWNER")  # the test process that made UNLEARNBENCH_CACHE, if one did
if "UNLEARNBENCH_CACHE" not in os.environ or _owner not in (None, str(os.getpid())):
    import tempfile

    os.environ["UNLEARNBENCH_CACHE"] = tempfile.mkdtemp(prefix="ub-test-cache-")
    os.environ["UB_TEST_CACHE_OWNER"] = str(os.getpid())
torch.set_num_threads(1)
sys.path.insert(0, os.path.dirname(__file__))  # tests/helpers.py (pytest runs with --import-mode=importlib)

from unlearnbench.diffusion import Schedule  # noqa: E402
from unlearnbench.tasks.base import ModelBundle  # noqa: E402


class ExactMixtureEps(nn.Module):
    """Exact eps of a noised isotropic 2-D Gaussian mixture; prompt 0 = whole mixture, k = component k."""

    def __init__(self, means, weights, std, schedule):
        super().__init__()
        self.register_buffer("means", torch.as_tensor(means, dtype=torch.float32))
        self.register_buffer("weights", torch.as_tensor(weights, dtype=torch.float32))
        self.std, self.schedule = std, schedule

    def forward(self, x, t, cond):
        a, s = self.schedule.coeffs(t, x)
        var = a ** 2 * self.std ** 2 + s ** 2  # [B,1]
        diff = x[:, None, :] - a[:, None, :] * self.means[None]  # [B,K,2]
        logw = torch.log(self.weights)[None].expand(x.shape[0], -1).clone()
        onehot = torch.nn.functional.one_hot(cond.clamp(min=1) - 1, len(self.weights)).bool()
        logw = torch.where((cond[:, None] > 0) & ~onehot, torch.full_like(logw, -1e9), logw)
        ll = logw - diff.pow(2).sum(-1) / (2 * var)
        r = torch.softmax(ll, -1)
        score = -(r[..., None] * diff).sum(1) / var
        return -s * score

    def log_ratio(self, x0, concepts):
        """Exact ``log q(x0|c_i) - log q(x0|null)``; [B, m]."""
        comp = -(x0[:, None, :] - self.means[None]).pow(2).sum(-1) / (2 * self.std ** 2)  # shared normaliser cancels
        mix = torch.logsumexp(torch.log(self.weights)[None] + comp, -1)
        return comp[:, [c - 1 for c in concepts]] - mix[:, None]

    def posterior(self, x, t, concepts):
        a, s = self.schedule.coeffs(t, x)
        var = a ** 2 * self.std ** 2 + s ** 2
        diff = x[:, None, :] - a[:, None, :] * self.means[None]
        ll = torch.log(self.weights)[None] - diff.pow(2).sum(-1) / (2 * var)
        r = torch.softmax(ll, -1)
        return r[:, [c - 1 for c in concepts]]


class TinyEps(nn.Module):
    def __init__(self, n_prompts=4, width=64):
        super().__init__()
        self.emb = nn.Embedding(n_prompts, 16)
        self.net = nn.Sequential(nn.Linear(2 + 1 + 16, width), nn.SiLU(), nn.Linear(width, width), nn.SiLU(),
                                 nn.Linear(width, 2))

    def forward(self, x, t, cond):
        return self.net(torch.cat([x, (t.float() / 1000)[:, None], self.emb(cond)], 1))


def make_bundle(kind: str = "concept", seed: int = 0) -> ModelBundle:
    torch.manual_seed(seed)
    sched = Schedule.linear(1000)
    means = [[-2.0, 0.0], [2.0, 0.0], [0.0, 2.5]]
    ref = ExactMixtureEps(means, [0.5, 0.3, 0.2], 0.5, sched)
    ref.requires_grad_(False)
    net = TinyEps()

    def sampler(cond, gen):
        comp = torch.multinomial(ref.weights, cond.shape[0], replacement=True, generator=gen)
        comp = torch.where(cond > 0, cond - 1, comp)
        return ref.means[comp] + ref.std * torch.randn(cond.shape[0], 2, generator=gen)

    common = dict(net=net, ref=ref, schedule=sched, data_shape=(2,), null_cond=0, sample_steps=10)
    if kind == "concept":
        return ModelBundle(kind="concept", forget_concepts=[2, 3], retain_concepts=[1], ref_sampler=sampler,
                           posterior=ref.posterior, log_ratio=ref.log_ratio, extras={"constrain_on": "null"}, **common)
    train = sampler(torch.zeros(40, dtype=torch.long), torch.Generator().manual_seed(1))
    return ModelBundle(kind="data", train_data=train, forget_data=train[:2], retain_data=train[2:], data_noise=0.3,
                       ref_sampler=sampler, **common)


@pytest.fixture
def concept_bundle():
    return make_bundle("concept")


@pytest.fixture
def erased_bundle():
    """The concept bundle with each erased prompt's own output scored (as on digits), for methods such as SalUn."""
    b = make_bundle("concept")
    b.extras = {}
    return b


@pytest.fixture
def data_bundle():
    return make_bundle("data")


# -- the toy plugin in this process, and one Ray instance for the whole test run ---------------------------------
@pytest.fixture(scope="session")
def toy_plugin_dir(tmp_path_factory):
    """tests/plugin installed as a distribution (a dist-info with entry points) in a folder of its own."""
    from helpers import install_fake_plugin

    return install_fake_plugin(tmp_path_factory.mktemp("toy-site"))


@pytest.fixture
def toy(toy_plugin_dir):
    """The toy plugin (task ``toy``, method ``mymethod``) registered in this process from its entry points, as an
    installed plugin is; the registries and ``sys.path`` are as before afterwards."""
    from helpers import plugins_registered

    with plugins_registered(toy_plugin_dir):
        yield toy_plugin_dir


@pytest.fixture(scope="session")
def shared_ray(toy_plugin_dir):
    """One local Ray instance (2 CPUs) for every in-process Ray sweep of the test run: the sweep uses an already
    initialised Ray instead of starting its own (:func:`unlearnbench.cluster.ray_session`), so its start-up (seconds
    of CPU) is paid once. Its workers see the toy plugin (on their PYTHONPATH). The tests that check a sweep's own
    local Ray (start, warnings, scratch files removed) run the CLI in a subprocess instead."""
    import shutil
    import tempfile

    import ray

    from unlearnbench.cluster import _set_token_mode

    scratch = tempfile.mkdtemp(prefix="ubt-ray-", dir="/tmp")  # short: Ray's socket paths must stay < 108 chars
    saved = {k: os.environ.get(k) for k in ("PYTHONPATH", "RAY_AUTH_MODE")}
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(toy_plugin_dir), saved["PYTHONPATH"]) if p)
    if saved["RAY_AUTH_MODE"] is None:
        _set_token_mode()  # as a sweep's own local instance (no warning); the workers inherit it from the raylet
    try:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="warning",
                 _temp_dir=os.path.join(scratch, "r"))
    finally:  # the raylet and its workers keep what they were started with; later subprocesses see the old values
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    yield ray
    ray.shutdown()
    shutil.rmtree(scratch, ignore_errors=True)
