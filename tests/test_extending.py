"""Adding a task, an attack or a metric is one new file each: three files written to a temporary folder that the
``tasks``, ``robustness`` and ``metrics`` packages scan (as a new file in ``unlearnbench/tasks/`` would be), found by
the registries without editing any list, and run through the real path: a sweep of the toy task, its records with
the toy metric, the robustness ladder with the toy attack over the task's concept measure."""
from __future__ import annotations

import sys
import textwrap

import pytest

import unlearnbench.metrics as metrics_pkg
import unlearnbench.robustness as robustness_pkg
import unlearnbench.tasks as tasks_pkg
from unlearnbench.config import plan_trials
from unlearnbench.metrics import METRICS
from unlearnbench.robustness.attacks import ATTACKS
from unlearnbench.robustness.plan import plan_attacks
from unlearnbench.sweep import run_sweep
from unlearnbench.tasks import TASKS

TOY_METRIC = '''
"""The share of 2-D samples right of x = 1.5 (where the toy task's erased component sits)."""
from unlearnbench.metrics.base import MetricValue, spec

spec("toy_right_share", "unlearning", False, "toy_ext_metric", "share of samples with x > 1.5")


def right_share(x, role="unlearning"):
    return MetricValue(float((x[:, 0] > 1.5).float().mean()), None, int(x.shape[0]), role, False)
'''

TOY_TASK = '''
"""A toy concept task in one file: a 2-D mixture of three unit Gaussians, the component at (3, 0) erased."""
import torch
from torch import nn

from unlearnbench.diffusion import Schedule, ddim_sample
from unlearnbench.metrics.toy_ext_metric import right_share
from unlearnbench.tasks import TASKS
from unlearnbench.tasks.base import MetricValue, ModelBundle, Task


class Exact(nn.Module):
    def __init__(self, schedule):
        super().__init__()
        self.schedule = schedule
        self.register_buffer("mu", torch.tensor([[0.0, 0.0], [3.0, 0.0], [-3.0, 0.0]]))

    def forward(self, x, t, cond):
        a, s = self.schedule.coeffs(t, x)
        return s * (x - a * self.mu[cond])


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(3, 8)
        self.lin = nn.Sequential(nn.Linear(11, 32), nn.SiLU(), nn.Linear(32, 2))

    def forward(self, x, t, cond):
        return self.lin(torch.cat([x, t.float()[:, None] / 100, self.emb(cond)], 1))


@TASKS.register("toy-ext")
class ToyExtTask(Task):
    """Erase the component at (3, 0) from the null prompt of a 2-D toy mixture."""

    name = "toy-ext"
    kind = "concept"
    grids = {"eps": {"esd": [0.5, 1.0]}, "smoke": {"esd": [1.0]}}
    axes = [("toy_right_share", "drift")]
    emits = {"drift": ("retention", False, "distance of the null-prompt sample mean from the origin")}
    forget_sets = {"one": [1]}
    default_steps = 3
    reference_points = {("toy_right_share", "drift"): (1.0, 3.0)}
    attack_measure = "toy_right_share"
    attack_settings = {"relearn_lr": 1e-3, "embedding_lr": 1e-2}

    def build(self, seed, device="cpu"):
        torch.manual_seed(1234)
        sched = Schedule.linear(100)
        ref = Exact(sched)
        return ModelBundle(net=Net(), ref=ref, schedule=sched, kind="concept", data_shape=(2,), forget_concepts=[1],
                           retain_concepts=[2], sample_steps=5,
                           ref_sampler=lambda c, g: ref.mu[c] + torch.randn(c.shape[0], 2, generator=g))

    def _samples(self, bundle, net, gen):
        return ddim_sample(bundle.schedule, net, torch.zeros(64, dtype=torch.long), (2,), 5, generator=gen)

    def evaluate(self, bundle, seed):
        x = self._samples(bundle, bundle.net, torch.Generator().manual_seed(seed))
        return {"toy_right_share": right_share(x),
                "drift": MetricValue(float(x.mean(0).norm()), None, 64, "retention", False)}

    def robustness_measure(self, bundle, net, prompt_ids, gen):
        return right_share(self._samples(bundle, net, gen), "robustness")
'''

TOY_ATTACK = '''
"""A toy attack in one file: Gaussian noise of scale budget/1000 on every weight, the measure read after each."""
import copy

import torch

from unlearnbench.robustness.attacks import ATTACKS, Attack, measure, scored_prompts


@ATTACKS.register("toy-noise")
class NoiseAttack(Attack):
    """Perturb the weights with Gaussian noise (budget / 1000 standard deviations) and read the concept measure."""

    kinds = ("concept",)

    def climb(self, task, bundle, net, budgets, seed, settings):
        values, gen = [], torch.Generator().manual_seed(seed)
        for k in budgets:
            noisy = copy.deepcopy(net)
            with torch.no_grad():
                for p in noisy.parameters():
                    p.add_(torch.randn(p.shape, generator=gen) * k / 1000)
            values.append(measure(task, bundle, noisy, scored_prompts(task, bundle), seed))
        return values, [0.0] * len(budgets)
'''

MODULES = {tasks_pkg: ("toy_ext_task", TOY_TASK), robustness_pkg: ("toy_ext_attack", TOY_ATTACK),
           metrics_pkg: ("toy_ext_metric", TOY_METRIC)}


@pytest.fixture
def toy_files(tmp_path, monkeypatch):
    """The three files, each in a temporary folder on its package's path; the registries as they were afterwards."""
    for pkg, (name, text) in MODULES.items():
        folder = tmp_path / pkg.__name__.rsplit(".", 1)[-1]
        folder.mkdir()
        (folder / f"{name}.py").write_text(textwrap.dedent(text))
        monkeypatch.setattr(pkg, "__path__", [*pkg.__path__, str(folder)])
    for reg in (TASKS, ATTACKS, METRICS):
        for attr in ("_items", "_origin", "_aliases"):
            monkeypatch.setattr(reg, attr, dict(getattr(reg, attr)))
        monkeypatch.setattr(reg, "_scanned", False)
    yield tmp_path
    for pkg, (name, _) in MODULES.items():
        sys.modules.pop(f"{pkg.__name__}.{name}", None)


def test_a_toy_task_attack_and_metric_each_one_file_run_through_the_real_path(toy_files, tmp_path):
    assert "toy_right_share" in METRICS.names(), "the metric's file is found by the metrics scan"
    assert "toy-ext" in TASKS.names() and "toy-noise" in ATTACKS.names()
    assert METRICS.get("toy_right_share").role == "unlearning"

    run = tmp_path / "run"
    plan = plan_trials("toy-ext", "esd", "smoke", "0", run_dir=str(run), cache_dir=str(tmp_path / "cache"))
    plan.trials = [t.replace(save_models=True) for t in plan.trials]
    (rec,) = run_sweep(plan, executor="serial", echo=lambda s: None)
    assert rec["status"] == "ok", rec.get("error")
    assert {"toy_right_share", "drift"} <= set(rec["metrics"])
    assert rec["task"]["reference_points"] == [["toy_right_share", "drift", 1.0, 3.0]], "written into the record"

    aplan = plan_attacks(run, "toy-noise", ["0,500"], cache_dir=str(tmp_path / "cache"))
    assert {t["attack"]["name"] for t in aplan.trials} == {"toy-noise"}
    assert {t["attack"]["measure"] for t in aplan.trials} == {"toy_right_share"}
    out = run_sweep(aplan, executor="serial", echo=lambda s: None)
    assert [r["status"] for r in out] == ["ok"] * len(aplan.trials), [r.get("error") for r in out]
    for r in out:
        assert {"toy-noise_toy_right_share@0", "toy-noise_toy_right_share@500"} <= set(r["metrics"])
        assert r["metrics"]["toy-noise_toy_right_share@500"]["role"] == "robustness"
