"""A short engine demo (``make run`` until the trainer lands): one post-norm attention block and
a conv FFN trained for a few steps with fused clip+Adam on random data, loss printed per step.

    python -m fastcpu.demo [--steps N] [--threads N]
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m fastcpu.demo", description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    if args.steps < 1:
        ap.error("--steps must be >= 1")

    from fastcpu import kernels, nn, runtime
    from fastcpu.nn import functional as F

    class Block(nn.Module):
        def __init__(self, d=256, inner=1024):
            super().__init__()
            self.slf_attn = nn.MultiHeadAttention(2, d, dropout=0.1)
            self.w_1 = nn.Conv1d(d, inner, 9)
            self.w_2 = nn.Conv1d(inner, d, 1)
            self.layer_norm = nn.LayerNorm(d)
            self.out = nn.Linear(d, 80)

        def forward(self, x, lengths):
            x = self.slf_attn(x, lengths)
            y = self.w_2(F.relu(self.w_1(x)))
            x = self.layer_norm.residual(y, x, 0.1)
            return self.out(x)

    with runtime.threads(args.threads):
        print(runtime.format_info())
        print("kernels:", {k: kernels.get(k).backend for k in kernels.CYTHON_KERNELS})
        nn.init.manual_seed(0)
        model = Block()
        buf = nn.flatten_parameters(model)
        m, v = np.zeros_like(buf.data), np.zeros_like(buf.data)
        rng = np.random.default_rng(0)
        B, T = 8, 120
        lengths = rng.integers(60, T + 1, B)
        x = rng.standard_normal((B, T, 256)).astype(np.float32)
        target = np.tanh(x[..., :80] * 2).astype(np.float32)
        adam = kernels.get("adam")
        print(f"{len(buf):,} parameters; batch {B} x {T}")
        for step in range(1, args.steps + 1):
            t0 = time.perf_counter()
            buf.zero_grad()
            loss = F.masked_l1(model(nn.functional.Tensor(x), lengths), target, lengths)
            loss.backward()
            norm = adam.clip_adam(buf.data, buf.grad, m, v, step=step, lr=1e-3, beta1=0.9,
                                  beta2=0.98, eps=1e-9, max_norm=1.0)
            print(f"step {step:3d}  loss {loss.item():.4f}  grad-norm {norm:.3f}  "
                  f"{(time.perf_counter() - t0) * 1e3:.0f} ms", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
