"""FastSpeech2's position-wise feed-forward core, fused: y = Conv_k1(ReLU(Conv_K(x))) on valid rows.

Shapes: x (B, T, C); w1 (H, C, K), b1 (H,); w2 (C_out, H, 1), b2 (C_out,); lengths (B,): rows
t >= lengths[b] are padding — read as 0, written as 0, never computed (as ``conv1d`` with
``lengths``). Returns y (B, T, C_out) and ``h``, the hidden activations backward needs (opaque:
the reference keeps them as (B, T, H), the Numba backend as the valid rows only).

    forward:  h = max(conv1d(x, w1, b1), 0);  y = h @ w2[:, :, 0]^T + b2   (valid rows)
    backward: dh = (dy @ w2[:, :, 0]) * (h > 0);  dw2 += dy^T h;  db2 += sum dy;
              then conv1d's backward for (w1, b1) from dh

The Numba backend keeps the hidden activations compact (sum lengths rows): the K-conv writes its
valid rows straight into that layout with bias and ReLU fused (``conv1d.forward_compact``, fast
FIR where it pays), the 1x1 conv is then one GEMM without a gather, and backward never
materialises the (B, T, H) hidden tensor — no scatter, gather or ReLU pass over padded rows.
Under bf16 precision it keeps them as bf16 (the 1x1 conv's operand, converted once): half the
memory of the largest activation saved for backward, and no second conversion for dW2.
"""
from __future__ import annotations

from types import SimpleNamespace

import numba as nb
from numba.extending import overload
import numpy as np

from fastcpu.kernels import conv1d, gemm
from fastcpu.kernels._common import PJIT, colsum_nb, scratch, seq_offsets

AUTO = "numba"


def _check(x, w1, w2, lengths):
    if w2.ndim != 3 or w2.shape[2] != 1 or w2.shape[1] != w1.shape[0]:
        raise ValueError(f"ffn: w2 must be (C_out, {w1.shape[0]}, 1), got {w2.shape}")
    if lengths is None:
        raise ValueError("ffn: lengths are required (use conv1d for unmasked convs)")
    B, T = x.shape[:2]
    conv1d._valid(lengths, B, T, T)
    return np.asarray(lengths, np.int64)


def forward_reference(x, w1, b1, w2, b2, lengths):
    L = _check(x, w1, w2, lengths)
    h = np.maximum(conv1d.forward_reference(x, w1, b1, None, L), 0)
    return conv1d.forward_reference(h, w2, b2, 0, L), h


def backward_reference(dy, x, w1, w2, h, lengths, dx, dw1, db1, dw2, db2):
    L = _check(x, w1, w2, lengths)
    dh = conv1d.backward_reference(dy, h, w2, 0, "new", dw2, db2, L)
    dh = np.where(h > 0, dh, 0).astype(dh.dtype)
    return conv1d.backward_reference(dh, x, w1, None, dx, dw1, db1, L)


def _positive(a):
    """a > 0 for a float32, or for the bit pattern of a bf16 (uint16) value."""


@overload(_positive, inline="always")
def _positive_ol(a):
    if a == nb.types.uint16:
        return lambda a: a != 0 and a < 0x8000       # sign bit clear, not +0
    return lambda a: a > 0


@nb.njit(**PJIT)
def _relu_grad_colsum_nb(dh, h, db, nchunk):
    # dh *= (h > 0) in place; db += column sums of the result (fixed chunks); h float32 or bf16
    M, H = dh.shape
    part = np.zeros((nchunk, H), dtype=np.float32)
    for ch in nb.prange(nchunk):
        for r in range(ch * M // nchunk, (ch + 1) * M // nchunk):
            g = dh[r]
            a = h[r]
            for o in range(H):
                v = g[o] if _positive(a[o]) else np.float32(0)
                g[o] = v
                part[ch, o] += v
    for ch in range(nchunk):
        for o in range(H):
            db[o] += part[ch, o]


def forward_numba(x, w1, b1, w2, b2, lengths):
    L = _check(x, w1, w2, lengths)
    B, T = x.shape[:2]
    Co = w2.shape[0]
    h = conv1d.forward_compact(x, w1, b1, L, relu=True)           # (M, H)
    h = gemm.operand(h)          # bf16: converted once, kept for backward at half the memory
    off = seq_offsets(L)
    yc = scratch("ffn.y", (h.shape[0], Co), x.dtype)
    if h.shape[0]:
        gemm.matmul(h, w2[:, :, 0].T, yc)
    y = np.empty((B, T, Co), x.dtype)
    if y.size:
        conv1d._scatter_rows_nb(yc, L, off, b2 if b2 is not None else np.zeros(0, x.dtype),
                                b2 is not None, y)
    return y, h


def backward_numba(dy, x, w1, w2, h, lengths, dx, dw1, db1, dw2, db2):
    L = _check(x, w1, w2, lengths)
    off = seq_offsets(L)
    M, H = h.shape
    Co = w2.shape[0]
    dyc = scratch("ffn.y", (M, Co), x.dtype)
    if M:
        conv1d._gather_rows_nb(np.ascontiguousarray(dy), L, off, dyc)
        if db2 is not None:
            colsum_nb(dyc, db2, max(1, min(64, M)))
        dyb = gemm.operand(dyc)
        gemm.matmul(dyb.T, h, dw2[:, :, 0], accumulate=True)
        dh = gemm.matmul(dyb, w2[:, :, 0], scratch("ffn.h", (M, H), x.dtype))
        _relu_grad_colsum_nb(dh, h, db1 if db1 is not None else np.zeros(H, np.float32),
                             max(1, min(64, M)))
    else:
        dh = np.zeros((0, H), x.dtype)
    return conv1d.backward_compact(dh, x, w1, dx, dw1, None, L)


BACKENDS = {
    "reference": lambda: SimpleNamespace(forward=forward_reference, backward=backward_reference),
    "numba": lambda: SimpleNamespace(forward=forward_numba, backward=backward_numba),
}
