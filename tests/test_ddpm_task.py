"""ddpm-data on a tiny random DDPM saved with save_pretrained: bad paths and folders are refused before any work,
the bundle serves the data-task contract, and the CLI runs fkl and siss end to end (gradient accumulation, every
metric: regeneration, CLIP similarity, ELBO bits/dim, KID/FID on CLIP features) with saved, reloadable weights."""
from __future__ import annotations

import pytest
import torch

from helpers import fake_inception_file
from paper_fixtures import CLIP_OPTIONS, FAST, assert_declared, ddpm_dir, image_folder, records, sd_dir, write_config


@pytest.fixture(scope="module")
def ddpm(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddpm")
    return {"model": ddpm_dir(root), "forget": image_folder(root / "forget", 2, seed=0),
            "data": image_folder(root / "data", 6, seed=1)}


def test_bad_paths_are_refused(ddpm, tmp_path, capsys):
    from unlearnbench.cli.main import main

    def err(*args: str) -> str:
        assert main(["run", "--task", "ddpm-data", "--methods", "fkl", "--executor", "serial", *args]) == 2
        return capsys.readouterr().err

    assert "needs the images to forget: --set task.forget_dir=FOLDER" in err("--model", str(ddpm["model"]))
    empty = tmp_path / "empty"
    empty.mkdir()
    e = err("--model", str(ddpm["model"]), "--set", f"task.forget_dir={empty}")
    assert str(empty) in e and "holds no images" in e
    sd = sd_dir(tmp_path)
    e = err("--model", str(sd), "--set", f"task.forget_dir={ddpm['forget']}")
    assert str(sd) in e and "expected UNet2DModel" in e
    e = err("--model", str(tmp_path / "none"), "--set", f"task.forget_dir={ddpm['forget']}")
    assert "no such folder" in e
    assert "not in the Hugging Face cache" in err("--set", f"task.forget_dir={ddpm['forget']}")  # default model
    assert "unknown option(s) forget_folder; valid:" in err("--model", str(ddpm["model"]), "--set", "task.forget_folder=x")


def test_relative_paths_become_absolute_for_the_trials(ddpm, monkeypatch):
    from unlearnbench.tasks.ddpm import DDPMDataTask

    monkeypatch.chdir(ddpm["model"].parent)
    opts = {"model": ddpm["model"].name, "forget_dir": ddpm["forget"].name, "kid_features": "none"}
    DDPMDataTask(opts)
    assert opts["model"] == str(ddpm["model"]) and opts["forget_dir"] == str(ddpm["forget"])


def test_bundle_without_data_folder_uses_pretrained_samples(ddpm, tmp_path):
    from unlearnbench.tasks.ddpm import DDPMDataTask

    task = DDPMDataTask({"model": str(ddpm["model"]), "forget_dir": str(ddpm["forget"]), "kid_features": "none",
                         "train_size": 1000, **FAST}, cache_dir=str(tmp_path))
    b = task.build(0)
    assert b.kind == "data" and b.data_shape == (3, 16, 16) and b.forget_data.shape == (2, 3, 16, 16)
    assert b.retain_data.shape[0] == FAST["pool_size"] and b.train_data.shape[0] == FAST["pool_size"] + 2
    assert b.forget_data.min() >= -1 and b.forget_data.max() <= 1
    assert b.extras["forget_fraction"] == pytest.approx(2 / 1000)
    assert task.eval_info["data"]["retain"] == "pretrained samples"
    x = torch.randn(3, *b.data_shape)
    assert b.net(x, torch.tensor([1, 50, 999]), torch.zeros(3, dtype=torch.long)).shape == x.shape
    assert task.axes[0] == ("regen_rate", "retain_bpd")


def test_ddpm_data_cli_fkl_siss_end_to_end(ddpm, tmp_path, capsys):
    task = {"forget_dir": str(ddpm["forget"]), "data_dir": str(ddpm["data"]), "elbo_t": 2, "n_retain_eval": 4,
            "grad_accum": 2, **CLIP_OPTIONS, **FAST}
    cfg = write_config(tmp_path / "ddpm.yaml", task, {"fkl": [10.0], "siss": [1.0]})
    out = tmp_path / "run"
    from unlearnbench.cli.main import main

    rc = main(["run", "--task", "ddpm-data", "--model", str(ddpm["model"]), "--methods", "fkl,siss", "--grid", "eps",
             "--config", str(cfg), "--steps", "2", "--set", "methods.fkl.dual_every=1", "--executor", "serial",
             "--save-models", "--no-leaderboard", "--cache-dir", str(tmp_path / "cache"), "--out", str(out)])
    assert rc == 0, capsys.readouterr()
    recs = records(out)
    assert len(recs) == 2 and all(rec["status"] == "ok" for rec in recs), [rec["error"] for rec in recs]
    for rec in recs:
        m = rec["metrics"]
        for name in ("regen_rate", "forget_sim_clip", "forget_sim_rate_clip", "forget_bpd", "retain_bpd",
                     "kid_retain_clip", "fid_retain_clip", "kid_retain_clip_pretrained"):
            assert name in m and m[name]["value"] is not None, name
        assert m["forget_bpd"]["role"] == "unlearning" and m["forget_bpd"]["higher_is_better"]
        ev = rec["task"]["evaluation"]
        assert ev["data"]["retain"] == "data_dir" and ev["features"]["name"] == "clip" and ev["regen_threshold_l2"] > 0
        assert rec["artifacts"]["model_format"] == "state-dict"
        assert rec["timing"]["train_images_per_s"] > 0
        assert_declared(rec)
    assert recs[0]["train"]["duals"][-1][0] == 2  # fkl: a dual step after each of the 2 (accumulated) steps
    from unlearnbench.saving import load_unlearned

    net = load_unlearned(out, "siss-eps1-s0", cache_dir=str(tmp_path / "cache"))
    from safetensors.torch import load_file

    saved = load_file(str(out / "artifacts" / "siss-eps1-s0" / "model" / "model.safetensors"))
    assert all(torch.equal(v, saved[k]) for k, v in net.state_dict().items())


def test_inception_is_preferred_when_its_weights_are_on_disk(ddpm, tmp_path, monkeypatch):
    from unlearnbench.metrics import kid_fid
    from unlearnbench.tasks.ddpm import DDPMDataTask

    routed = []  # clean-fid's FID (scipy's sqrtm of a 2048 x 2048 matrix: 10-30 s here) is tested in test_image_metrics
    monkeypatch.setattr(kid_fid, "clean_fid", lambda r, f: routed.append(r.shape) or kid_fid.fid(r, f))

    weights = fake_inception_file(tmp_path)
    task = DDPMDataTask({"model": str(ddpm["model"]), "forget_dir": str(ddpm["forget"]),
                         "inception_weights": str(weights), **CLIP_OPTIONS, "kid_features": "auto"})
    assert task.features == "inception" and task.axes[0] == ("regen_rate", "kid_retain_inception")
    g = torch.Generator().manual_seed(0)
    real, fake = (torch.randint(0, 256, (6, 3, 16, 16), generator=g, dtype=torch.uint8) for _ in range(2))
    out = task.kid_fid(real, fake, torch.device("cpu"), seed=0)
    assert set(out) == {"kid_retain_inception", "fid_retain_inception"}
    assert task.eval_info["features"]["name"] == "inception"
    assert task.eval_info["features"]["backend"] == "clean-fid", "clean-fid's pipeline where its weights are"
    assert routed == [(6, 2048)], "and clean-fid's FID on its features"


def test_a_non_image_in_forget_dir_or_corrupt_weights_are_named_not_a_traceback(ddpm, tmp_path, capsys):
    import shutil

    from unlearnbench.cli.main import main

    def err(*args: str) -> str:
        assert main(["run", "--task", "ddpm-data", "--methods", "fkl", "--executor", "serial",
                     "--out", str(tmp_path / "out"), *args]) == 2
        e = capsys.readouterr().err
        assert e.startswith("error: ") and "Traceback" not in e
        return e

    bad = tmp_path / "forget"
    shutil.copytree(ddpm["forget"], bad)
    (bad / "notes.png").write_text("not an image\n")
    e = err("--model", str(ddpm["model"]), "--set", f"task.forget_dir={bad}")
    assert f"forget_dir: {bad / 'notes.png'} is not a readable image" in e
    broken = tmp_path / "model"
    shutil.copytree(ddpm["model"], broken)
    (broken / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"junk")
    e = err("--model", str(broken), "--set", f"task.forget_dir={ddpm['forget']}")
    assert "diffusion_pytorch_model.safetensors is not a readable safetensors file" in e
    assert sorted(p.name for p in tmp_path.iterdir()) == ["forget", "model"], "nothing written"
