"""A third-party plugin as a user would write it: one task and one method, exposed through entry points.

The tests put this folder on PYTHONPATH together with a ``ub_toy_plugin-0.1.dist-info`` declaring::

    [unlearnbench.methods]  mymethod = ub_toy_plugin:MyMethod
    [unlearnbench.tasks]    toy = ub_toy_plugin:ToyTask
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import torch
from torch import nn

from unlearnbench.diffusion import Schedule, ddim_sample
from unlearnbench.methods.base import Method, MethodConfig
from unlearnbench.diffusion import add_noise, per_sample_sse
from unlearnbench.tasks.base import MetricValue, ModelBundle, Task


class GaussEps(nn.Module):
    """Exact eps of N(mu_c, I) noised; prompt 0 is N(0, I)."""

    def __init__(self, schedule):
        super().__init__()
        self.schedule = schedule
        self.register_buffer("mu", torch.tensor([[0.0, 0.0], [3.0, 0.0], [-3.0, 0.0]]))

    def forward(self, x, t, cond):
        a, s = self.schedule.coeffs(t, x)
        return s * (x - a * self.mu[cond])  # var = a^2 + s^2 = 1


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(3, 8)
        self.lin = nn.Sequential(nn.Linear(11, 32), nn.SiLU(), nn.Linear(32, 2))

    def forward(self, x, t, cond):
        return self.lin(torch.cat([x, t.float()[:, None] / 1000, self.emb(cond)], 1))


class ToyTask(Task):
    """Toy concept task for plugin and sweep tests (options: sleep seconds, fail_seed, die_seed: the
    worker process exits abruptly, as if killed; max_drift: the sane range of ``drift``). The environment variables
    UB_TOY_FAIL_SEED and UB_TOY_MAX_DRIFT stand for a passing fault and an edit of the task's code: they change
    what a trial does without changing its settings (a --resume keeps the settings)."""

    name = "toy"
    kind = "concept"
    grids = {"eps": {"mymethod": [0.5, 1.0], "esd": [0.5, 1.0], "rkl": [0.5, 1.0]}}
    axes = [("mass", "drift")]
    emits = {"mass": ("unlearning", False, "share of null-prompt samples in the erased component"),
             "drift": ("retention", False, "distance of the null-prompt sample mean from the origin"),
             "pid": ("info", False, "process id of the trial (tests)")}
    forget_sets = {"one": [1]}
    default_steps = 5
    default_options = {"sleep": 0.0}
    option_types = {"fail_seed": int, "die_seed": int, "max_drift": float}

    def __init__(self, options=None, cache_dir=None):
        super().__init__(options, cache_dir)
        cap = self.options.get("max_drift", os.environ.get("UB_TOY_MAX_DRIFT"))
        self.sane_ranges = {} if cap is None else {"drift": (0.0, float(cap))}

    def build(self, seed, device="cpu"):
        if self.options.get("die_seed") is not None and int(self.options["die_seed"]) == seed:
            os._exit(9)
        fail = self.options.get("fail_seed", os.environ.get("UB_TOY_FAIL_SEED"))
        if fail is not None and int(fail) == seed:
            raise RuntimeError(f"injected failure for seed {seed}")
        torch.manual_seed(1234)
        sched = Schedule.linear(100)
        ref = GaussEps(sched)
        net = Net()
        return ModelBundle(net=net, ref=ref, schedule=sched, kind="concept", data_shape=(2,), forget_concepts=[1],
                           retain_concepts=[2], sample_steps=5,
                           ref_sampler=lambda c, g: ref.mu[c] + torch.randn(c.shape[0], 2, generator=g))

    def evaluate(self, bundle, seed):
        time.sleep(float(self.options.get("sleep", 0)))
        g = torch.Generator().manual_seed(seed)
        x = ddim_sample(bundle.schedule, bundle.net, torch.zeros(64, dtype=torch.long), (2,), 5, generator=g)
        mass = float((x[:, 0] > 1.5).float().mean())
        drift = float(x.mean(0).norm())
        return {"mass": MetricValue(mass, None, 64, "unlearning", False),
                "drift": MetricValue(drift, None, 64, "retention", False),
                "pid": MetricValue(float(os.getpid()), None, None, "info", False)}


@dataclass
class MyConfig(MethodConfig):
    strength: float = field(default=1.0, metadata={"help": "how far to push"})


class MyMethod(Method):
    """A plugin method: denoise the erased prompt toward the null prompt's prediction, scaled by strength."""

    name = "mymethod"
    kinds = ("concept",)
    Config = MyConfig
    grid_params = {"eps": "strength"}

    def losses(self):
        b = self.bundle
        c = self.cond(b.forget_concepts[0], self.cfg.batch_size)
        x0 = b.sample_ref(c, self.gen)
        t = self.rand_t(x0.shape[0])
        x_t = add_noise(b.schedule, x0, self.randn_like(x0), t)
        with torch.no_grad():
            tgt = b.ref(x_t, t, torch.zeros_like(c)) * self.cfg.strength
        loss = per_sample_sse(self.net(x_t, t, c), tgt)
        return {"loss": loss}
