"""Linear layer on BLAS: y = x @ w^T + b, with PyTorch's weight layout w (Co, Ci).

Shapes: x (..., Ci), w (Co, Ci), b (Co,) or None, y (..., Co).

    backward: dx += dy @ w;  dw += dy^T @ x;  db += sum_rows dy

``dx="new"`` writes a fresh dx (one GEMM straight into it: no zero fill, no temporary) and
returns it; ``dx=None`` skips it. NumPy's BLAS call *is* the fast path for the GEMMs; the bias
gradient's column sum runs in parallel (fixed row chunks). So one backend, and ``auto`` picks it.
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
    from fastcpu.kernels._common import colsum_nb
    dy2 = np.ascontiguousarray(dy).reshape(-1, dy.shape[-1])
    x2 = x.reshape(-1, x.shape[-1])
    if isinstance(dx, str):
        if dx != "new":
            raise ValueError(f"linear backward: dx must be an array, None or 'new', got {dx!r}")
        dx = np.matmul(dy2, w).reshape(x.shape)
    elif dx is not None:
        dx.reshape(-1, dx.shape[-1])[...] += dy2 @ w
    dw += dy2.T @ x2
    if db is not None and dy2.shape[0]:
        if dy2.dtype == np.float32 and db.dtype == np.float32:
            colsum_nb(dy2, db, max(1, min(64, dy2.shape[0])))
        else:
            db += dy2.sum(0)
    return dx


BACKENDS = {"reference": lambda: SimpleNamespace(forward=forward_reference,
                                                 backward=backward_reference)}
