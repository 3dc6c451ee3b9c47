import fastcpu  # noqa: F401  (first: its thread-pool env defaults must precede NumPy's OpenBLAS)

import os
import warnings

import numba
import pytest
import torch

from fastcpu import runtime

THREADS = int(os.environ.get("FASTCPU_BENCH_THREADS", "2"))


@pytest.fixture(autouse=True, scope="session")
def _threads():
    """fastcpu and torch pinned to the same thread count for the whole run."""
    if os.environ.get("OPENBLAS_CORETYPE"):
        warnings.warn("OPENBLAS_CORETYPE is set: NumPy's GEMM runs ~45% slower; unset it "
                      "(env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE) for comparable figures")
    n = min(THREADS, numba.config.NUMBA_NUM_THREADS)
    torch.set_num_threads(n)
    # the process settings training runs with (both sides share them: one malloc, one libgomp)
    with runtime.threads(n), runtime.keep_memory():
        print("\n" + runtime.format_info())
        yield


def run(benchmark, fn, rounds=5):
    """Time fn after one untimed warm-up call (JIT compile and first-touch excluded)."""
    return benchmark.pedantic(fn, rounds=rounds, iterations=1, warmup_rounds=1)
