"""Fill the Numba cache so later processes start training at once.

    python -m fastcpu.warmup [--threads N]

Runs one training step (forward, loss, backward, clip + Adam) of a small FastSpeech2 in training
and eval mode and the HiFi-GAN kernels on tiny inputs, which calls every kernel with the types a
real run uses; Numba compiles each once
and stores it in its cache (``__pycache__`` next to the sources, or ``NUMBA_CACHE_DIR``). After
this, a process reaches its first training step of the full model in a few seconds.
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np


def tiny_step(threads=None, config=None):
    """One training step + one inference of a small model on a ragged batch; returns seconds."""
    from fastcpu import nn, runtime
    from fastcpu.autograd import no_grad
    from fastcpu.config import ModelConfig, OptimizerConfig
    from fastcpu.models import FastSpeech2, FastSpeech2Loss
    from fastcpu.optim import Adam
    t0 = time.perf_counter()
    cfg = config or ModelConfig(encoder_layer=1, decoder_layer=1, encoder_hidden=32,
                                decoder_hidden=32, conv_filter_size=48, vp_filter_size=32,
                                postnet_embedding_dim=128, n_bins=16)   # 128: the fast-FIR convs
    rng = np.random.default_rng(0)
    B, L = 3, 9
    lens = np.array([9, 6, 4])
    texts = np.where(np.arange(L) < lens[:, None], rng.integers(1, 360, (B, L)), 0)
    d = np.where(np.arange(L) < lens[:, None], rng.integers(1, 5, (B, L)), 0)
    mel_lens = d.sum(1)
    T = int(mel_lens.max())
    mels = rng.standard_normal((B, T, cfg.n_mel_channels)).astype(np.float32)
    pe = rng.standard_normal((B, L)).astype(np.float32)
    with runtime.threads(threads), runtime.keep_memory():
        model = FastSpeech2(cfg)
        opt = Adam(nn.flatten_parameters(model), OptimizerConfig(lr=1e-3))
        out = model(np.zeros(B), texts, lens, L, mels, mel_lens, T, pe, pe, d)
        loss = FastSpeech2Loss()(out, mels, pe, pe, d)["total"]
        loss.backward()
        opt.step()
        model.eval()
        with no_grad():
            model.infer(texts, lens)
        from fastcpu.kernels import vocoder
        vocoder.warm()                                  # HiFi-GAN's kernels
    return time.perf_counter() - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m fastcpu.warmup", description=__doc__.split(
        "\n\n")[0])
    from fastcpu.cli import add_version
    add_version(ap)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    t = tiny_step(args.threads)
    import numba
    print(f"warm: one training step compiled or loaded every kernel in {t:.1f} s "
          f"(Numba cache: {numba.config.CACHE_DIR or 'next to the sources'})")
    return 0


if __name__ == "__main__":
    from fastcpu.cli import entry
    sys.exit(entry(main))
