"""Score a model unlearned elsewhere (``unlearnbench evaluate``): the task's own network is built, the outside weights
are put into it, and the task's own evaluation runs with its own seeds, exactly as :func:`unlearnbench.runner.run_trial`
evaluates a trained trial. Each seed gives one record of method :data:`EXTERNAL` whose entry is the given name: it
enters the leaderboard, ``compare`` and ``attack`` like any trial.

Accepted checkpoints (what ``run --save-models`` writes, see :mod:`unlearnbench.saving`):

- a state dict: a ``.safetensors`` file, or a folder holding ``model.safetensors``;
- peft LoRA adapters: a folder holding ``adapter_config.json`` and ``adapter_model.safetensors``;
- a trial's artefact folder holding either of those in ``model/``;
- on the tasks that load weights you give (``sd-concept``, ``ddpm-data``: a ``model`` option), a diffusers folder
  (``model_index.json``, or ``unet/config.json``): it becomes the task's ``model``.

A missing checkpoint, or one whose tensors do not fit the task's network, is refused before anything is evaluated or
written, naming the path and what was expected.
"""
from __future__ import annotations

import copy
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from unlearnbench.saving import ADAPTER_CONFIG, ADAPTER_WEIGHTS, FULL_WEIGHTS
from unlearnbench.settings import ConfigError, check_name

EXTERNAL = "external"
FORMATS = ("state-dict", "peft-lora", "diffusers")
EXPECTED = (f"a state dict ({FULL_WEIGHTS} or any .safetensors file, or a folder holding {FULL_WEIGHTS}), peft "
            f"adapters (a folder with {ADAPTER_CONFIG} + {ADAPTER_WEIGHTS}), a trial's folder holding either in "
            f"model/ (as `run --save-models` writes them), or, for the tasks that load your weights (sd-concept, "
            f"ddpm-data), a diffusers folder (model_index.json or unet/config.json)")


@dataclass
class Checkpoint:
    """A resolved outside checkpoint: its format and the file or folder to load."""

    format: str
    path: Path

    def weights_file(self) -> Path:
        if self.format == "peft-lora":
            return self.path / ADAPTER_WEIGHTS
        return self.path if self.path.is_file() else self.path / FULL_WEIGHTS


def resolve_checkpoint(path: str | os.PathLike, task_cls) -> Checkpoint:
    """The checkpoint at ``path``; ``ConfigError`` naming the path and the accepted forms when there is none."""
    p = Path(os.path.expanduser(str(path))).resolve()
    if not p.exists():
        raise ConfigError(f"--model {path}: no such file or folder; expected {EXPECTED}")
    if p.is_file():
        if p.suffix != ".safetensors":
            raise ConfigError(f"--model {path}: a file that is not .safetensors; expected {EXPECTED}")
        return Checkpoint("state-dict", p)
    for d in (p, p / "model"):
        if (d / ADAPTER_CONFIG).is_file():
            if not (d / ADAPTER_WEIGHTS).is_file():
                raise ConfigError(f"--model {path}: {d / ADAPTER_CONFIG} without {ADAPTER_WEIGHTS} beside it; "
                                  f"expected {EXPECTED}")
            return Checkpoint("peft-lora", d)
        if (d / FULL_WEIGHTS).is_file():
            return Checkpoint("state-dict", d)
    if (p / "model_index.json").is_file() or (p / "unet" / "config.json").is_file():
        if "model" not in getattr(task_cls, "default_options", {}):
            raise ConfigError(f"--model {path}: a diffusers folder, but task {task_cls.name} builds its own network "
                              f"(no model option); expected a state dict or peft adapters for it")
        return Checkpoint("diffusers", p)
    raise ConfigError(f"--model {path}: a folder without weights; expected {EXPECTED}")


def check_fits(ckpt: Checkpoint, net: torch.nn.Module, task_name: str) -> None:
    """Refuse (``ConfigError``) a checkpoint whose tensors do not fit ``net``: names and shapes are read from the
    file's header, nothing is loaded. Adapters are tried on a copy of the network."""
    if ckpt.format == "diffusers":
        return  # the task loads it itself (and names the folder when it cannot)
    from safetensors import safe_open

    f = ckpt.weights_file()
    try:
        with safe_open(str(f), framework="pt") as h:
            shapes = {k: tuple(h.get_slice(k).get_shape()) for k in h.keys()}
    except Exception as e:  # noqa: BLE001 - a damaged or foreign file: named, not a traceback
        raise ConfigError(f"--model {f}: not a readable safetensors file ({e}); expected {EXPECTED}") from None
    if ckpt.format == "peft-lora":
        from unlearnbench.saving import load_weights

        try:
            load_weights(copy.deepcopy(net), ckpt.path)
        except Exception as e:  # noqa: BLE001
            raise ConfigError(f"--model {ckpt.path}: the adapters do not fit the {task_name} network ({e})") from None
        return
    want = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    missing, extra = sorted(set(want) - set(shapes)), sorted(set(shapes) - set(want))
    wrong = [f"{k} {list(shapes[k])} (expected {list(want[k])})" for k in sorted(set(want) & set(shapes))
             if shapes[k] != want[k]]
    if missing or extra or wrong:
        parts = [f"missing {len(missing)}: {', '.join(missing[:4])}" if missing else "",
                 f"unexpected {len(extra)}: {', '.join(extra[:4])}" if extra else "",
                 f"wrong shape: {'; '.join(wrong[:4])}" if wrong else ""]
        raise ConfigError(f"--model {f}: a state dict that does not fit the {task_name} network, which has "
                          f"{len(want)} tensors ({', '.join(f'{k} {list(v)}' for k, v in list(want.items())[:3])}, "
                          f"...); {'; '.join(x for x in parts if x)}")


def load_into(ckpt: Checkpoint, net: torch.nn.Module) -> torch.nn.Module:
    """The outside weights in the task's freshly built ``net``."""
    if ckpt.format == "diffusers":
        return net.eval()
    if ckpt.format == "peft-lora":
        from unlearnbench.saving import load_weights

        return load_weights(net, ckpt.path)
    from safetensors.torch import load_file

    from unlearnbench.saving import load_sampling_hook

    net.load_state_dict(load_file(str(ckpt.weights_file())))
    return load_sampling_hook(net, ckpt.weights_file().parent).eval()  # an inference-time method's sampler (SLD)


def check_entry_name(name: str) -> str:
    """The entry name: a safe name that is not a registered method's (a leaderboard row must say what it is)."""
    from unlearnbench.methods import METHODS

    check_name("--name", name)
    if name in METHODS.names() or name in (EXTERNAL, "pretrained", "retrained"):
        raise ConfigError(f"--name {name}: the name of a built-in entry ({', '.join([*METHODS.names(), EXTERNAL])}); "
                          f"choose the name your method should have on the leaderboard")
    return name


def trial_id(name: str, seed: int) -> str:
    return f"{EXTERNAL}-{name}-s{seed}"


@dataclass
class ExternalPlan:
    """What ``evaluate`` will do, resolved and checked."""

    task: Any  # the task object
    name: str
    checkpoint: Checkpoint
    seeds: list[int]
    run_dir: str
    task_options: dict


def plan_external(task: str, model: str, name: str, seeds: str | list[int] = "0", run_dir: str = "runs/x",
                  sets: list[str] | None = None, cache_dir: str | None = None) -> ExternalPlan:
    """Resolve and check everything (``ConfigError`` on bad input); builds the task's network once to check the
    checkpoint fits it."""
    from unlearnbench.config import check_config, parse_seeds, parse_sets
    from unlearnbench.tasks import TASKS

    try:
        task_name = TASKS.canonical(task)
    except KeyError as e:
        raise ConfigError(str(e)) from None
    check_entry_name(name)
    task_cls = TASKS.get(task_name)
    ckpt = resolve_checkpoint(model, task_cls)
    cfg = check_config(parse_sets(sets or []))
    if cfg.get("methods") or cfg.get("grids"):
        raise ConfigError("evaluate: --set takes task options only (task.X=...); nothing is trained")
    options = dict(cfg.get("task") or {})
    if ckpt.format == "diffusers":
        options["model"] = str(ckpt.path)
    elif "model" in task_cls.default_options and "model" not in options:
        raise ConfigError(f"evaluate --task {task_name}: {ckpt.format} weights go on the base model they were trained "
                          f"from: give it with --set task.model=PATH")
    try:
        task_obj = task_cls(options, cache_dir=cache_dir)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    options = {k: task_obj.options[k] for k in options}
    seed_list = parse_seeds(seeds)
    run_dir = os.path.abspath(run_dir)
    check_name("run name (the last part of the run directory)", os.path.basename(run_dir))
    check_fits(ckpt, task_obj.build(seed_list[0]).net, task_name)
    return ExternalPlan(task_obj, name, ckpt, seed_list, run_dir, options)


def evaluate_external(plan: ExternalPlan, echo: Callable[[str], None] = lambda s: None) -> list[dict]:
    """Score the checkpoint with the task's evaluation for each seed; appends and returns the records."""
    from unlearnbench.records import append_record
    from unlearnbench.records import base_record, relative_artifacts
    from unlearnbench.runner import seed_everything
    from unlearnbench.saving import save_unlearned

    records = []
    for seed in plan.seeds:
        t0 = time.perf_counter()
        tid = trial_id(plan.name, seed)
        spec = {"run_id": os.path.basename(plan.run_dir), "trial_id": tid, "task": plan.task.name,
                "task_options": plan.task_options, "method": EXTERNAL, "method_config": {"name": plan.name},
                "grid": None, "seed": seed}
        seed_everything(seed)
        bundle = plan.task.build(seed)
        load_into(plan.checkpoint, bundle.net)
        t1 = time.perf_counter()
        seed_everything(seed + 10_000)  # as run_trial seeds the evaluation
        metrics = plan.task.evaluate(bundle, seed)
        t2 = time.perf_counter()
        record = base_record(spec, plan.task)
        record["task"].update(plan.task.describe())
        bad = plan.task.insane_metrics(metrics)
        artifacts: dict[str, str] = {}
        if not bad and plan.checkpoint.format != "diffusers":  # a copy inside the run folder, for `attack`
            artifacts.update(save_unlearned(bundle.net, os.path.join(plan.run_dir, "artifacts", tid, "model")))
        oracle = None
        if hasattr(plan.task, "oracle_report"):
            oracle = plan.task.oracle_report(metrics, EXTERNAL, None)
        record.update(status="diverged" if bad else "ok",
                      error=f"diverged: {'; '.join(bad)} (the model broke down)" if bad else None,
                      metrics={k: v.to_dict() for k, v in sorted(metrics.items())}, oracle=oracle,
                      timing={"setup_s": t1 - t0, "train_s": 0.0, "eval_s": t2 - t1, "total_s": t2 - t0},
                      artifacts=relative_artifacts(artifacts, plan.run_dir),
                      external={"model": str(plan.checkpoint.path), "format": plan.checkpoint.format})
        append_record(plan.run_dir, record)
        records.append(record)
        echo(f"{tid}: {record['status']}")
    return records
