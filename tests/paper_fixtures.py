"""Tiny random paper-scale models for the sd-concept / ddpm-data tests: built once per session in a temp folder,
saved with ``save_pretrained`` and loaded back through the same code a user's real weights take."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

TINY_CLIP = {"embed_dim": 32,
             "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
             "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
# every metric backend on: NudeNet (nudity set), a random-weight CLIP (scores, similarity, KID/FID features)
CLIP_OPTIONS = {"clip_random": True, "clip_model": "Tiny-CLIP", "clip_config": TINY_CLIP, "kid_features": "clip"}
FAST = {"sample_steps": 3, "n_eval": 2, "pool_size": 4, "gen_batch": 8}


def sd_dir(root: Path) -> Path:
    from unlearnbench.pipelines import tiny_sd_pipeline

    return tiny_sd_pipeline(root / "sd", image_size=16)


def ddpm_dir(root: Path) -> Path:
    from unlearnbench.pipelines import tiny_ddpm

    return tiny_ddpm(root / "ddpm", image_size=16)


def image_folder(folder: Path, n: int, seed: int, size: tuple[int, int] = (20, 24)) -> Path:
    """n random RGB PNGs (not square, to exercise the crop)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.RandomState(seed)
    for i in range(n):
        Image.fromarray((rng.rand(size[0], size[1], 3) * 255).astype(np.uint8)).save(folder / f"img{i}.png")
    return folder


def write_config(path: Path, task: dict, grids: dict) -> Path:
    """A --config YAML with task options and an ``eps`` grid of two values per method."""
    path.write_text(yaml.safe_dump({"task": task, "grids": {"eps": grids}}))
    return path


def records(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "records.jsonl").read_text().splitlines()]


def assert_declared(rec: dict) -> None:
    """What ``ls`` says without building the task (``emits``, ``axes_when``) covers what a real run recorded: every
    metric with its role and direction, and every axis."""
    from unlearnbench.tasks import TASKS
    from unlearnbench.tasks.base import metric_matches

    cls = TASKS.get(rec["task"]["name"])
    specs = cls.metric_specs()
    for name, m in rec["metrics"].items():
        pattern = next((p for p in specs if metric_matches(p, name)), None)
        assert pattern is not None, f"{cls.name} emits undeclared {name}"
        assert (m["role"], m["higher_is_better"]) == specs[pattern][:2], name
    features = rec["task"]["evaluation"]["features"]["name"]
    declared = [(u, r.format(features=features)) for u, r, _ in cls.axes_when]
    assert rec["task"]["axes"] and all(tuple(a) in declared for a in rec["task"]["axes"]), rec["task"]["axes"]
