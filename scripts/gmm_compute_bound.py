"""Is a GMM trial overhead or arithmetic? Measures, on one thread, what batching the trials of a sweep could save.

1. The task's eps-network (``EpsMLP``, 2-D, hidden 128, depth 3) forward and forward+backward at the batch sizes a
   trial uses, per call and per sample: if a call at batch 8 cost nearly what one at 512 does, the trial would be
   per-call overhead, and stacking the seeds of a sweep into one call would pay.
2. K copies of the network stacked into one batched matmul (``torch.baddbmm``, what ``torch.func.vmap`` over stacked
   parameters computes) at batch 512: the cost per network for K = 1, 4, 12.
3. The arithmetic rate of (1) at batch 512 against a plain 512 x 128 x 128 matmul on the same thread: how close the
   network already runs to what the core does.

    python scripts/gmm_compute_bound.py [--repeat 300]

On the 2-core development machine (AMD EPYC, AVX-512; issue 21), measured with the other core busy: a forward at
batch 8 costs 0.05 ms and one at 512 costs 0.53 ms (1.0 microsecond per sample, 1.6 at batch 64), so a call is
arithmetic, not per-call overhead; K = 1, 4 and 12 stacked networks cost 1.50, 1.68 and 1.76 ms per network for a
forward and backward (stacking saves nothing); the forward runs at 80 GFLOP/s, 74 % of the 109 GFLOP/s of a plain
matmul of its layers' shape on the same core. A GMM trial is arithmetic: batching its seeds cannot make it several
times cheaper on a CPU.
"""
from __future__ import annotations

import argparse
import time

import torch

from unlearnbench.tasks._gmm import EpsMLP


def per_call_ms(f, repeat: int) -> float:
    f()
    t0 = time.perf_counter()
    for _ in range(repeat):
        f()
    return (time.perf_counter() - t0) / repeat * 1e3


def mlp_flops(batch: int, hidden: int = 128, depth: int = 3, inp: int = 66, out: int = 2) -> float:
    """Multiply-adds x 2 of the network's linear layers for one forward at ``batch``."""
    return 2.0 * batch * (inp * hidden + (depth - 1) * hidden * hidden + hidden * out)


def stacked(K: int, B: int, H: int = 128, E: int = 32):
    """K networks' weights as [K, in, out] tensors and their forward by baddbmm (one call per layer for all K)."""
    g = torch.Generator().manual_seed(0)
    shapes = [(2 + 2 * E, H), (H, H), (H, H), (H, 2)]
    W = [(torch.randn(K, a, b, generator=g) / a ** 0.5).requires_grad_() for a, b in shapes]
    bias = [torch.zeros(K, 1, b).requires_grad_() for _, b in shapes]
    x = torch.randn(K, B, 2 + 2 * E, generator=g)

    def forward():
        h = torch.baddbmm(bias[0], x, W[0])
        for i in (1, 2):
            h = h + torch.baddbmm(bias[i], torch.nn.functional.silu(h), W[i])
        return torch.baddbmm(bias[3], torch.nn.functional.silu(h), W[3])

    return forward


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=300)
    args = ap.parse_args()
    torch.set_num_threads(1)
    net = EpsMLP(4)
    print("1. EpsMLP per call (one thread)")
    print(f"{'batch':>7s}{'forward ms':>12s}{'fwd+bwd ms':>12s}{'fwd us/sample':>15s}")
    for B in (8, 64, 128, 512, 1024):
        x, t, c = torch.randn(B, 2), torch.randint(0, 1000, (B,)), torch.randint(0, 4, (B,))

        def fwd():
            with torch.no_grad():
                net(x, t, c)

        def fb():
            net.zero_grad(set_to_none=True)
            net(x, t, c).pow(2).sum().backward()

        f_ms, fb_ms = per_call_ms(fwd, args.repeat), per_call_ms(fb, args.repeat)
        print(f"{B:7d}{f_ms:12.3f}{fb_ms:12.3f}{f_ms / B * 1e3:15.2f}")
    print("2. K networks stacked into one batched matmul, batch 512 each: ms per network")
    print(f"{'K':>7s}{'forward':>12s}{'fwd+bwd':>12s}")
    for K in (1, 4, 12):
        f = stacked(K, 512)

        def fwd():
            with torch.no_grad():
                f()

        def fb():
            f().pow(2).sum().backward()

        print(f"{K:7d}{per_call_ms(fwd, args.repeat) / K:12.3f}{per_call_ms(fb, args.repeat) / K:12.3f}")
    x, t, c = torch.randn(512, 2), torch.randint(0, 1000, (512,)), torch.randint(0, 4, (512,))

    def fwd512():
        with torch.no_grad():
            net(x, t, c)

    net_gflops = mlp_flops(512) / (per_call_ms(fwd512, args.repeat) * 1e-3) / 1e9
    a, w = torch.randn(512, 128), torch.randn(128, 128)
    mm_gflops = 2 * 512 * 128 * 128 / (per_call_ms(lambda: a @ w, 10 * args.repeat) * 1e-3) / 1e9
    print(f"3. EpsMLP forward at batch 512: {net_gflops:.1f} GFLOP/s; a 512x128x128 matmul: {mm_gflops:.1f} GFLOP/s "
          f"({net_gflops / mm_gflops:.0%} of it)")


if __name__ == "__main__":
    main()
