"""sd-concept step throughput: the harness's loop (task bundle, ESD method, runner.train) against a bare diffusers
LoRA loop doing the same ESD-x step, on one random pipeline with the real SD 1.x UNet config (or --tiny).

    python scripts/bench_sd.py --size 512 --batch 1 --steps 20          # on a GPU (goal: harness >= 90% of bare)
    python scripts/bench_sd.py --size 64 --batch 1 --steps 3            # the CPU figures of the README

Prints steps/s of both loops, their ratio and (on CUDA) peak memory. Weights are random: nothing is downloaded.
"""
from __future__ import annotations

import argparse
import copy
import os
import tempfile
import time

import torch

SD14_UNET = dict(block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, cross_attention_dim=768,
                 attention_head_dim=8, norm_num_groups=32,
                 down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                 up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def harness_loop(model_dir: str, device: torch.device, steps: int, batch: int, cache: str) -> float:
    """Seconds per step of runner.train on the sd-concept bundle with ESD (LoRA on cross-attention)."""
    from unlearnbench.methods import METHODS
    from unlearnbench.config import build_method_config
    from unlearnbench.runner import train
    from unlearnbench.tasks.stable_diffusion import SDConceptTask

    task = SDConceptTask({"model": model_dir, "forget": "style", "clip_random": True, "clip_model": "ViT-B-32",
                          "kid_features": "none", "pool_size": 1, "sample_steps": 2, "eval_prompts": 1}, cache)
    bundle = task.build(0, device)
    cfg = build_method_config(task, "esd", {"batch_size": batch, "steps": 2}, None)
    method = METHODS.get("esd")(cfg, bundle, torch.Generator().manual_seed(0))
    train(method)  # warm-up (allocations, cudnn autotune)
    method.cfg.steps = steps
    sync(device)
    t0 = time.perf_counter()
    train(method, log_every=10 ** 9)
    sync(device)
    return (time.perf_counter() - t0) / steps


def bare_loop(model_dir: str, device: torch.device, steps: int, batch: int, eta: float = 1.0) -> float:
    """Seconds per step of the same ESD-x step written directly against diffusers + peft."""
    from diffusers import UNet2DConditionModel
    from peft import LoraConfig
    from transformers import CLIPTextModel, CLIPTokenizer

    unet = UNet2DConditionModel.from_pretrained(model_dir, subfolder="unet").to(device)
    ref = copy.deepcopy(unet).eval().requires_grad_(False)
    tok = CLIPTokenizer.from_pretrained(model_dir, subfolder="tokenizer")
    te = CLIPTextModel.from_pretrained(model_dir, subfolder="text_encoder").to(device)
    with torch.no_grad():
        ids = tok(["", "Van Gogh"], padding="max_length", max_length=77, return_tensors="pt").input_ids.to(device)
        emb = te(ids)[0]
    unet.requires_grad_(False)
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian",
                                target_modules=r".*attn2\.(to_q|to_k|to_v|to_out\.0)"))
    params = [p for p in unet.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=1e-4)
    cast = torch.bfloat16 if device.type == "cuda" else None
    c, h = unet.config.in_channels, unet.config.sample_size
    x0 = torch.randn(batch, c, h, h, device=device)
    abar = torch.cumprod(1 - torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000) ** 2, 0).to(device)

    def step() -> None:
        t = torch.randint(0, 1000, (batch,), device=device)
        noise = torch.randn_like(x0)
        a = abar[t].view(-1, 1, 1, 1)
        x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
        with torch.no_grad(), torch.autocast(device.type, dtype=cast or torch.float32, enabled=cast is not None):
            e = ref(x_t.repeat(2, 1, 1, 1), t.repeat(2), encoder_hidden_states=emb.repeat_interleave(batch, 0)).sample
        e0, ec = e.float().chunk(2)
        target = e0 - eta * (ec - e0)
        with torch.autocast(device.type, dtype=cast or torch.float32, enabled=cast is not None):
            out = unet(x_t, t, encoder_hidden_states=emb[1:].expand(batch, -1, -1)).sample
        loss = (out.float() - target).pow(2).flatten(1).sum(1).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(2):
        step()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return (time.perf_counter() - t0) / steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=512, help="image size in pixels (latents are size/8)")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--steps", type=int, default=20, help="timed steps per loop (after 2 warm-up steps)")
    ap.add_argument("--tiny", action="store_true", help="the tests' tiny UNet instead of SD 1.x's")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.threads:
        torch.set_num_threads(args.threads)
    from unlearnbench.pipelines import tiny_sd_pipeline

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tmp = tempfile.mkdtemp(prefix="ub-bench-sd-")
    unet_cfg = None if args.tiny else {**SD14_UNET, "sample_size": args.size // 8}
    # the VAE of the random pipeline halves the size: image = 2 x latent; the training loops only see latents
    model = str(tiny_sd_pipeline(os.path.join(tmp, "sd"), image_size=args.size // 4, unet_config=unet_cfg))
    results = {}
    for name, fn in (("bare", lambda: bare_loop(model, device, args.steps, args.batch)),
                     ("harness", lambda: harness_loop(model, device, args.steps, args.batch, os.path.join(tmp, "c")))):
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        results[name] = fn()
        peak = f", peak {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB" if device.type == "cuda" else ""
        print(f"{name:8s} {1 / results[name]:.3f} steps/s ({results[name]:.3f} s/step){peak}", flush=True)
    print(f"harness / bare throughput: {results['bare'] / results['harness']:.1%} "
          f"(device {device}, size {args.size}, batch {args.batch}, {'tiny' if args.tiny else 'SD 1.x'} UNet)")


if __name__ == "__main__":
    main()
