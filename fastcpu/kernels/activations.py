"""Elementwise activations: ReLU and tanh, forward and accumulating backward.

    relu:  y = max(x, 0);  dx += dy * (y > 0)
    tanh:  y = tanh(x);    dx += dy * (1 - y^2)
Backward takes the forward *output* y (what autograd keeps).
"""
from types import SimpleNamespace

import numba as nb
import numpy as np

from fastcpu.kernels._common import PJIT

# Per function. tanh forward: NumPy's SIMD np.tanh beats Numba's libm loop 40x (1.3 vs 50 ms on
# 6.1M floats, 2 threads, 2026-11-22, `python -m pytest benchmarks/test_kernels.py -k activations
# --benchmark-only`); the rest are Numba (parallel, fused accumulate).
AUTO = {"relu_forward": "numba", "relu_backward": "numba", "tanh_forward": "reference",
        "tanh_backward": "numba"}


def relu_forward_reference(x):
    return np.maximum(x, 0)


def relu_backward_reference(dy, y, dx):
    dx += np.where(y > 0, dy, 0)


def tanh_forward_reference(x):
    return np.tanh(x)


def tanh_backward_reference(dy, y, dx):
    dx += dy * (1 - y * y)


# prange over fixed chunks, loops over slices with range(len): vectorisable (no wraparound check)
NCH = 64


@nb.njit(**PJIT)
def _relu_f(x, y):
    n = x.shape[0]
    for ch in nb.prange(NCH):
        xs, ys = x[ch * n // NCH:(ch + 1) * n // NCH], y[ch * n // NCH:(ch + 1) * n // NCH]
        for i in range(xs.shape[0]):
            ys[i] = xs[i] if xs[i] > 0 else np.float32(0.0)


@nb.njit(**PJIT)
def _relu_b(dy, y, dx):
    n = dy.shape[0]
    for ch in nb.prange(NCH):
        a, b = ch * n // NCH, (ch + 1) * n // NCH
        ds, ys, xs = dy[a:b], y[a:b], dx[a:b]
        for i in range(ds.shape[0]):
            xs[i] += ds[i] if ys[i] > 0 else np.float32(0.0)


@nb.njit(**PJIT)
def _tanh_f(x, y):
    n = x.shape[0]
    for ch in nb.prange(NCH):
        xs, ys = x[ch * n // NCH:(ch + 1) * n // NCH], y[ch * n // NCH:(ch + 1) * n // NCH]
        for i in range(xs.shape[0]):
            ys[i] = np.tanh(xs[i])


@nb.njit(**PJIT)
def _tanh_b(dy, y, dx):
    n = dy.shape[0]
    for ch in nb.prange(NCH):
        a, b = ch * n // NCH, (ch + 1) * n // NCH
        ds, ys, xs = dy[a:b], y[a:b], dx[a:b]
        for i in range(ds.shape[0]):
            xs[i] += ds[i] * (1 - ys[i] * ys[i])


def _flat(a):
    return np.ascontiguousarray(a).reshape(-1)


def _unary(kernel):
    def fwd(x):
        y = np.empty_like(x)
        if x.size:
            kernel(_flat(x), y.reshape(-1))
        return y
    return fwd


def _unary_bwd(kernel):
    def bwd(dy, y, dx):
        if dy.size:
            kernel(_flat(dy), _flat(y), dx.reshape(-1))
    return bwd


BACKENDS = {
    "reference": lambda: SimpleNamespace(
        relu_forward=relu_forward_reference, relu_backward=relu_backward_reference,
        tanh_forward=tanh_forward_reference, tanh_backward=tanh_backward_reference),
    "numba": lambda: SimpleNamespace(
        relu_forward=_unary(_relu_f), relu_backward=_unary_bwd(_relu_b),
        tanh_forward=_unary(_tanh_f), tanh_backward=_unary_bwd(_tanh_b)),
}
