"""Dropout with a counter-based RNG: element i is kept iff rand24(key(seed), i) >= threshold(p).

Shapes: any; y = x * keep / (1 - p). The mask depends on (seed, element index) only — the same for
any thread count and any backend — and is never stored: backward regenerates it.

    backward: dx += dy * keep / (1 - p)
"""
from types import SimpleNamespace

import numba as nb
import numpy as np

from fastcpu.kernels._common import PJIT, drop_threshold, keep_mask_reference, seed_key
from fastcpu.kernels._rng_nb import rand24

# auto = "numba": `python -m pytest benchmarks/test_kernels.py -k dropout --benchmark-only`
AUTO = "numba"


def forward_reference(x, p, seed):
    if p == 0:
        return x.copy()
    keep = keep_mask_reference(seed_key(seed), drop_threshold(p), x.shape)
    return np.where(keep, x * x.dtype.type(1.0 / (1.0 - p)), 0).astype(x.dtype)


def backward_reference(dy, p, seed, dx):
    if p == 0:
        dx += dy
        return
    keep = keep_mask_reference(seed_key(seed), drop_threshold(p), dy.shape)
    dx += np.where(keep, dy * dy.dtype.type(1.0 / (1.0 - p)), 0)


@nb.njit(**PJIT)
def _drop_nb(x, key, thr, scale, y, accumulate):
    for i in nb.prange(x.shape[0]):
        val = x[i] * scale if rand24(key, i) >= thr else np.float32(0.0)
        if accumulate:
            y[i] += val
        else:
            y[i] = val


def forward_numba(x, p, seed):
    xf = np.ascontiguousarray(x).reshape(-1)
    y = np.empty_like(xf)
    if xf.size:
        _drop_nb(xf, np.uint64(seed_key(seed)), np.uint64(drop_threshold(p)),
                 x.dtype.type(1.0 / (1.0 - p)), y, False)
    return y.reshape(x.shape)


def backward_numba(dy, p, seed, dx):
    if dy.size:
        _drop_nb(np.ascontiguousarray(dy).reshape(-1), np.uint64(seed_key(seed)),
                 np.uint64(drop_threshold(p)), dy.dtype.type(1.0 / (1.0 - p)), dx.reshape(-1), True)


BACKENDS = {
    "reference": lambda: SimpleNamespace(forward=forward_reference, backward=backward_reference),
    "numba": lambda: SimpleNamespace(forward=forward_numba, backward=backward_numba),
}
