"""Linear layer on BLAS: y = x @ w^T + b, with PyTorch's weight layout w (Co, Ci).

Shapes: x (..., Ci), w (Co, Ci), b (Co,) or None, y (..., Co).

    backward: dx += dy @ w;  dw += dy^T @ x;  db += sum_rows dy

``dx="new"`` writes a fresh dx (one GEMM straight into it: no zero fill, no temporary) and
returns it; ``dx=None`` skips it. The ``gemm`` backend (auto) runs the GEMMs through
``fastcpu.kernels.gemm`` in the precision of ``kernels.use`` (oneDNN with the bias fused into
the forward GEMM, dy converted once for both backward GEMMs under bf16; without oneDNN the
reference's NumPy calls); the bias gradient's column sum runs in parallel (fixed row chunks).
"""
from types import SimpleNamespace

import numpy as np

from fastcpu.kernels import gemm

AUTO = "gemm"


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


def _check_dx(dx):
    if isinstance(dx, str) and dx != "new":
        raise ValueError(f"linear backward: dx must be an array, None or 'new', got {dx!r}")


def forward_gemm(x, w, b=None):
    if gemm.current() == "fp32" and gemm.fp32_engine() == "numpy":
        return forward_reference(x, w, b)
    x2 = np.ascontiguousarray(x).reshape(-1, x.shape[-1])
    return gemm.matmul(x2, w.T, bias=b).reshape(*x.shape[:-1], w.shape[0])


def backward_gemm(dy, x, w, dx, dw, db):
    if gemm.current() == "fp32" and gemm.fp32_engine() == "numpy":
        return backward_reference(dy, x, w, dx, dw, db)
    from fastcpu.kernels._common import colsum_nb
    _check_dx(dx)
    dy2 = np.ascontiguousarray(dy).reshape(-1, dy.shape[-1])
    x2 = np.ascontiguousarray(x).reshape(-1, x.shape[-1])
    if db is not None and dy2.shape[0]:
        colsum_nb(dy2, db, max(1, min(64, dy2.shape[0])))
    dyb = gemm.operand(dy2)                          # one conversion for both GEMMs
    if isinstance(dx, str):
        dx = gemm.matmul(dyb, w).reshape(x.shape)
    elif dx is not None:
        gemm.matmul(dyb, w, dx.reshape(-1, dx.shape[-1]), accumulate=True)
    gemm.matmul(dyb.T, x2, dw, accumulate=True)
    return dx


BACKENDS = {"reference": lambda: SimpleNamespace(forward=forward_reference,
                                                 backward=backward_reference),
            "gemm": lambda: SimpleNamespace(forward=forward_gemm, backward=backward_gemm)}
