"""Elementwise activations: ReLU and tanh, forward and accumulating backward.

    relu:  y = max(x, 0);  dx += dy * (y > 0)
    tanh:  y = tanh(x);    dx += dy * (1 - y^2)
Backward takes the forward *output* y (what autograd keeps).
"""
from types import SimpleNamespace

import numba as nb
import numpy as np

from fastcpu.kernels._common import PJIT

# auto = "numba": `python -m pytest benchmarks/test_kernels.py -k activations --benchmark-only`
AUTO = "numba"


def relu_forward_reference(x):
    return np.maximum(x, 0)


def relu_backward_reference(dy, y, dx):
    dx += np.where(y > 0, dy, 0)


def tanh_forward_reference(x):
    return np.tanh(x)


def tanh_backward_reference(dy, y, dx):
    dx += dy * (1 - y * y)


@nb.njit(**PJIT)
def _relu_f(x, y):
    for i in nb.prange(x.shape[0]):
        y[i] = x[i] if x[i] > 0 else 0


@nb.njit(**PJIT)
def _relu_b(dy, y, dx):
    for i in nb.prange(dy.shape[0]):
        if y[i] > 0:
            dx[i] += dy[i]


@nb.njit(**PJIT)
def _tanh_f(x, y):
    for i in nb.prange(x.shape[0]):
        y[i] = np.tanh(x[i])


@nb.njit(**PJIT)
def _tanh_b(dy, y, dx):
    for i in nb.prange(dy.shape[0]):
        dx[i] += dy[i] * (1 - y[i] * y[i])


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
