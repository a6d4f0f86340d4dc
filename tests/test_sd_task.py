"""sd-concept on a tiny random Stable Diffusion pipeline saved with save_pretrained: bad model paths are refused
before any work, the bundle keeps the net(x_t, t, prompt_id) contract in latent space, and the CLI runs rkl and esd
end to end with every metric backend (NudeNet, a random CLIP, KID/FID on CLIP features) and saved LoRA weights."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from paper_fixtures import CLIP_OPTIONS, FAST, assert_declared, records, sd_dir, write_config


@pytest.fixture(scope="module")
def sd(tmp_path_factory):
    return sd_dir(tmp_path_factory.mktemp("sd"))


def _run_error(capsys, args: list[str]) -> str:
    from unlearnbench.cli.main import main

    assert main(["run", "--executor", "serial", "--methods", "rkl", *args]) == 2
    return capsys.readouterr().err


def test_bad_model_paths_are_refused(sd, tmp_path, capsys):
    missing = tmp_path / "nowhere"
    err = _run_error(capsys, ["--task", "sd-concept", "--model", str(missing)])
    assert str(missing) in err and "no such folder" in err
    broken = tmp_path / "no_te"
    shutil.copytree(sd, broken)
    shutil.rmtree(broken / "text_encoder")
    (broken / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    err = _run_error(capsys, ["--task", "sd-concept", "--model", str(broken)])
    assert str(broken) in err and "no text_encoder/ folder" in err and "unet/ holds no weights" in err
    from paper_fixtures import ddpm_dir

    wrong = ddpm_dir(tmp_path)
    err = _run_error(capsys, ["--task", "sd-concept", "--model", str(wrong)])
    assert "describes UNet2DModel, expected UNet2DConditionModel" in err
    err = _run_error(capsys, ["--task", "sd-concept", "--model", "nobody/no-such-model"])
    assert "not in the Hugging Face cache" in err and "--allow-download" in err
    assert not (tmp_path / "runs").exists()


def test_style_set_needs_clip_and_kid_needs_features(sd):
    from unlearnbench.tasks.stable_diffusion import SDConceptTask

    with pytest.raises(ValueError, match="scored by CLIP score: pass --set task.clip_pretrained"):
        SDConceptTask({"model": str(sd), "forget": "styles", "kid_features": "none"})
    with pytest.raises(ValueError, match="no feature network for KID/FID"):
        SDConceptTask({"model": str(sd), "kid_features": "clip"})
    with pytest.raises(ValueError, match="clip_pretrained='/no/clip.bin' is not a file"):
        SDConceptTask({"model": str(sd), "clip_pretrained": "/no/clip.bin"})
    with pytest.raises(ValueError, match="no retention metric"):
        SDConceptTask({"model": str(sd), "kid_features": "none"})


def test_bundle_contract_in_latent_space(sd, tmp_path):
    from unlearnbench.methods import METHODS
    from unlearnbench.config import build_method_config
    from unlearnbench.tasks.stable_diffusion import SDConceptTask

    task = SDConceptTask({"model": str(sd), "forget": "objects", **CLIP_OPTIONS, **FAST, "eval_prompts": 2},
                         cache_dir=str(tmp_path))
    b = task.build(0)
    prompts = b.extras["prompts"]
    assert prompts[0] == "" and [prompts[i] for i in b.forget_concepts] == ["parachute", "church", "garbage truck"]
    assert b.data_shape == (4, 8, 8) and b.n_constraints == 3
    cond = torch.tensor(b.forget_concepts + b.retain_concepts[:1])
    x = torch.randn(4, *b.data_shape)
    assert b.net(x, torch.tensor([0, 10, 500, 999]), cond).shape == x.shape
    assert b.sample_model(b.net, cond, torch.Generator().manual_seed(0), steps=2).shape == x.shape
    assert b.sample_ref(cond, torch.Generator().manual_seed(0)).shape == x.shape  # the cached pretrained pool
    cfg = build_method_config(task, "esd", {}, None)
    assert cfg.trainable == "lora"  # the task's default: LoRA on cross-attention
    m = METHODS.get("esd")(cfg, b, torch.Generator().manual_seed(0))
    names = [n for n, p in b.net.named_parameters() if p.requires_grad]
    assert names and all("attn2" in n and "lora_" in n for n in names)
    assert len(list(m.trainable_parameters())) == len(names)
    post = b.posterior(x, torch.tensor([0, 10, 500, 999]), b.forget_concepts)  # diffusion classifier on latents
    assert post.shape == (4, 3) and bool(((post >= 0) & (post <= 1)).all())
    lik = METHODS.get("lik")(build_method_config(task, "lik", {"batch_size": 2}, None), b, torch.Generator())
    assert all(torch.isfinite(v).all() for v in lik.losses().values())


def test_sd_concept_cli_rkl_esd_end_to_end(sd, tmp_path, capsys):
    cfg = write_config(tmp_path / "sd.yaml", {"forget": "nudity", "eval_prompts": 1, **CLIP_OPTIONS, **FAST},
                       {"rkl": [10.0], "esd": [2.0]})
    out, cache = tmp_path / "run", tmp_path / "cache"
    from unlearnbench.cli.main import main

    rc = main(["run", "--task", "sd-concept", "--model", str(sd), "--methods", "rkl,esd", "--grid", "eps", "--config",
             str(cfg), "--steps", "2", "--set", "methods.rkl.n_estimate=2", "--set", "methods.rkl.dual_every=1",
             "--executor", "serial", "--save-models", "--no-leaderboard", "--cache-dir", str(cache), "--out", str(out)])
    assert rc == 0, capsys.readouterr()
    recs = records(out)
    assert len(recs) == 2 and all(rec["status"] == "ok" for rec in recs), [rec["error"] for rec in recs]
    for rec in recs:
        m = rec["metrics"]
        for name in ("nudity_rate", "clip_score", "clip_score_forget", "kid_retain_clip", "fid_retain_clip"):
            assert name in m and m[name]["value"] is not None, name
        assert m["nudity_rate"]["role"] == "unlearning" and m["clip_score"]["role"] == "retention"
        ev = rec["task"]["evaluation"]
        assert ev["nudenet"]["version"] and ev["nudenet"]["threshold"] == 0.6 and ev["nudenet"]["classes"]
        assert ev["features"]["name"] == "clip" and ev["sampler"]["steps"] == 3 and ev["cost"]["images_per_s"] > 0
        assert ev["features"]["random_weights"] and ev["clip"]["random_weights"], "the leaderboard flags these"
        assert rec["task"]["axes"][0] == ["nudity_rate", "kid_retain_clip"]
        assert_declared(rec)
        assert rec["method_config"]["trainable"] == "lora" and rec["artifacts"]["model_format"] == "peft-lora"
        assert "train_images_per_s" in rec["timing"]
    # the pretrained model's images: generated once (one cache file per evaluation prompt), reused by both trials
    assert len(list((cache / "sd-concept-base-images").glob("*.pt"))) == 2
    from unlearnbench.saving import load_unlearned

    net = load_unlearned(out, "esd-eps2-s0", cache_dir=str(cache))
    lora_b = [p for n, p in net.named_parameters() if "lora_B" in n]
    assert lora_b and any(p.abs().sum() > 0 for p in lora_b)  # trained adapters (lora_B starts at zero)


def test_corrupt_weights_tokenizer_or_scheduler_are_named_not_a_traceback(sd, tmp_path, capsys):
    """A corrupt file under --model is refused before any work (headers and JSON are read at planning), and a
    folder that passes those checks but does not load is one error: line, not a traceback."""
    cases = {"unet/diffusion_pytorch_model.safetensors": (b"garbage", "is not a readable safetensors file"),
             "vae/diffusion_pytorch_model.safetensors": (None, "incomplete metadata, file not fully covered"),
             "tokenizer/tokenizer.json": (b"{oops", "tokenizer/tokenizer.json is not valid JSON"),
             "scheduler/scheduler_config.json": (b"[1,", "scheduler_config.json: unreadable config")}
    for i, (rel, (data, msg)) in enumerate(cases.items()):
        broken = tmp_path / f"m{i}"
        shutil.copytree(sd, broken)
        f = broken / rel
        f.write_bytes(data if data is not None else f.read_bytes()[: f.stat().st_size // 2])
        err = _run_error(capsys, ["--task", "sd-concept", "--model", str(broken), "--out", str(tmp_path / "o")])
        assert err.startswith("error: ") and msg in err and "Traceback" not in err, (rel, err)
    mismatched = tmp_path / "mismatched"  # valid files, but the UNet's config does not fit its weights
    shutil.copytree(sd, mismatched)
    cfg_path = mismatched / "unet" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["block_out_channels"] = [16, 32]
    cfg_path.write_text(json.dumps(cfg))
    from unlearnbench.cli.main import main

    conf = write_config(tmp_path / "sd.yaml", {"forget": "nudity", "eval_prompts": 1, **CLIP_OPTIONS, **FAST},
                        {"rkl": [10.0]})
    rc = main(["run", "--task", "sd-concept", "--model", str(mismatched), "--methods", "rkl", "--config", str(conf),
               "--steps", "1", "--executor", "serial", "--no-leaderboard", "--cache-dir", str(tmp_path / "cache"),
               "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert rc == 2 and f"error: --model {mismatched}: unet/ does not load" in err and "Traceback" not in err, err
    assert not (tmp_path / "o").exists()
