"""pytest-benchmark: one FastSpeech2 training step (forward, loss, backward, clip, Adam), fastcpu
and PyTorch eager with the same weights and batch, in fp32 and in bf16 (fastcpu on oneDNN,
PyTorch under autocast) — what ``python -m fastcpu.bench --precision both`` times.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE \
        python -m pytest benchmarks/test_step.py --benchmark-only

Sizes: FASTCPU_BENCH_BATCH (default 16) and FASTCPU_BENCH_PHONEMES (default 60-120).
"""
import os

import pytest

from benchmarks.conftest import run
from fastcpu import bench, runtime
from fastcpu.config import load_config
from fastcpu.kernels import gemm

BATCH = int(os.environ.get("FASTCPU_BENCH_BATCH", "16"))
PHONEMES = tuple(int(v) for v in os.environ.get("FASTCPU_BENCH_PHONEMES", "60-120").split("-"))


@pytest.fixture(scope="module")
def sides():
    cfg = load_config(str(bench.ROOT / "configs" / "ljspeech.yaml"))
    batch = bench.make_batch(BATCH, PHONEMES, 0)
    with runtime.keep_memory():
        theirs = bench.TorchSide(cfg, batch, 0)
        state = theirs.state()
        sides = {"fastcpu": bench.FastcpuSide(cfg, state, batch), "pytorch": theirs,
                 "pytorch-bf16": bench.TorchSide(cfg, batch, 0, "bf16", state)}
        if gemm.bf16_status().startswith("ok"):
            sides["fastcpu-bf16"] = bench.FastcpuSide(cfg, state, batch, "bf16")
        yield sides


@pytest.mark.benchmark(group=f"FastSpeech2 training step B{BATCH} phonemes "
                             f"{PHONEMES[0]}-{PHONEMES[1]}")
@pytest.mark.parametrize("side", ["fastcpu", "pytorch", "fastcpu-bf16", "pytorch-bf16"])
def test_training_step(benchmark, sides, side):
    if side not in sides:
        pytest.skip(f"bf16: {gemm.bf16_status()}")
    run(benchmark, sides[side].step, rounds=3)
