"""Linear layer on BLAS: y = x @ w^T + b, with PyTorch's weight layout w (Co, Ci).

Shapes: x (..., Ci), w (Co, Ci), b (Co,) or None, y (..., Co).

    backward: dx += dy @ w;  dw += dy^T @ x;  db += sum_rows dy

NumPy's BLAS call *is* the fast path here (a Numba wrapper around the same GEMM adds nothing), so
the reference is the only backend and ``auto`` picks it.
"""
from types import SimpleNamespace

import numpy as np

AUTO = "reference"


def forward_reference(x, w, b=None):
    y = x @ w.T
    if b is not None:
        y += b
    return y


def backward_reference(dy, x, w, dx, dw, db):
    dy2 = dy.reshape(-1, dy.shape[-1])
    x2 = x.reshape(-1, x.shape[-1])
    if dx is not None:
        dx.reshape(-1, dx.shape[-1])[...] += dy2 @ w
    dw += dy2.T @ x2
    if db is not None:
        db += dy2.sum(0)


BACKENDS = {"reference": lambda: SimpleNamespace(forward=forward_reference,
                                                 backward=backward_reference)}
