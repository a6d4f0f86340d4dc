"""Benchmark the digits tasks on this machine: images/s of pretraining, images/s of each method's unlearning step,
seconds per constraint estimate and per evaluation, and (``--guided-acc``) the pretrained model's classifier accuracy
on 1000 guided samples per digit.

    python scripts/bench_digits.py [--threads 1] [--steps 20] [--guided-acc]
"""
from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from unlearnbench.config import build_method_config, grid_values  # noqa: E402
from unlearnbench.methods import METHODS  # noqa: E402
from unlearnbench.methods._constrained import ConstrainedMethod  # noqa: E402
from unlearnbench.runner import seed_everything  # noqa: E402
from unlearnbench.tasks import TASKS  # noqa: E402
from unlearnbench.tasks._digits import features, sample_prompts  # noqa: E402


def bench_pretrain(steps: int) -> dict:
    from unlearnbench.models import PRETRAIN_DEFAULTS, pretrain_unet

    t0 = time.perf_counter()
    pretrain_unet({"steps": steps, "warmup": 1}, progress=False)
    dt = time.perf_counter() - t0
    return {"steps": steps, "batch": PRETRAIN_DEFAULTS["batch_size"], "s": dt,
            "img_per_s": steps * PRETRAIN_DEFAULTS["batch_size"] / dt}


def bench_method(task, name: str, steps: int) -> dict:
    gen = seed_everything(0)
    bundle = task.build(0)
    grid = grid_values(task, "eps", name)
    cfg = build_method_config(task, name, {}, {"name": "eps", "param": METHODS.get(name).grid_params["eps"],
                                               "value": grid[len(grid) // 2]})
    method = METHODS.get(name)(cfg, bundle, gen)
    params = list(method.trainable_parameters())
    opt = torch.optim.Adam(params, lr=cfg.lr)
    t0 = time.perf_counter()
    method.setup()
    setup_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(steps):
        losses = method.losses()
        method.backward(losses)
        method.after_backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    dt = time.perf_counter() - t0
    out = {"batch": cfg.batch_size, "step_s": dt / steps, "img_per_s": cfg.batch_size * steps / dt, "setup_s": setup_s,
           "trainable": cfg.trainable, "default_steps": cfg.steps}
    if isinstance(method, ConstrainedMethod):
        t0 = time.perf_counter()
        method.estimate_constraints()
        out["estimate_s"] = time.perf_counter() - t0
        out["dual_every"] = cfg.dual_every
    t0 = time.perf_counter()
    task.evaluate(bundle, 0)
    out["eval_s"] = time.perf_counter() - t0
    return out


def guided_accuracy(n_per_class: int = 1000, cache_dir: str | None = None, seed: int = 0, progress: bool = True,
                    options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Evaluation-classifier accuracy on ``n_per_class`` fresh guided samples per digit of the pretrained model."""
    task = TASKS.get("digits-concept")(options, cache_dir=cache_dir)
    st = task._base(progress)
    cond = torch.arange(1, 11).repeat_interleave(n_per_class)
    x = sample_prompts(st["unet"], st["schedule"], cond, task.cfgs["guidance"], task.cfgs["sample_steps"],
                       torch.Generator().manual_seed(seed), progress=progress)
    _, logits = features(st["classifier"], x)
    hit = (logits.argmax(1) == cond - 1).float()
    return {"accuracy": float(hit.mean()), "per_digit": hit.view(10, -1).mean(1).tolist(), "n_per_class": n_per_class,
            "guidance": task.cfgs["guidance"], "sample_steps": task.cfgs["sample_steps"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (a sweep trial uses 1)")
    ap.add_argument("--steps", type=int, default=20, help="timed unlearning steps per method")
    ap.add_argument("--pretrain-steps", type=int, default=100)
    ap.add_argument("--guided-acc", action="store_true", help="also sample 1000 guided images per digit")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    report: dict = {"threads": args.threads}
    for tname in ("digits-concept", "digits-data"):
        TASKS.get(tname)().prepare()
    report["pretrain"] = bench_pretrain(args.pretrain_steps)
    print(f"pretraining: {report['pretrain']['img_per_s']:.0f} img/s (batch {report['pretrain']['batch']})", flush=True)
    for tname, methods in (("digits-concept", ["rkl", "esd", "lik", "salun"]), ("digits-data", ["fkl", "siss", "salun"])):
        task = TASKS.get(tname)()
        for m in methods:
            r = bench_method(task, m, args.steps)
            report[f"{tname}/{m}"] = r
            extra = f", constraint estimate {r['estimate_s']:.2f}s every {r['dual_every']} steps" if "estimate_s" in r else ""
            print(f"{tname:15s} {m:6s}: {r['img_per_s']:7.0f} img/s ({r['step_s'] * 1000:.0f} ms/step at batch "
                  f"{r['batch']}){extra}; evaluation {r['eval_s']:.1f}s", flush=True)
    if args.guided_acc:
        t0 = time.perf_counter()
        acc = guided_accuracy(1000, progress=True)
        acc["s"] = time.perf_counter() - t0
        report["guided_acc"] = acc
        print(f"pretrained guided-sample accuracy: {acc['accuracy']:.4f} on 1000/digit "
              f"({', '.join(f'{a:.3f}' for a in acc['per_digit'])}) in {acc['s']:.0f}s")
    print(json.dumps(report, indent=1, default=str))


if __name__ == "__main__":
    main()
