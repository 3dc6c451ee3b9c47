"""conv1d, channels-last, PyTorch weight layout, zero padding.

Shapes: x (B, T, Ci); w (Co, Ci, K) as ``nn.Conv1d.weight``; b (Co,) or None; y (B, To, Co) with
To = T + 2*pad - K + 1 (pad defaults to (K-1)//2: "same" for odd K, as in FastSpeech2).

    forward:  y[b, t, o] = b[o] + sum_{k, c} w[o, c, k] * x[b, t + k - pad, c]     (0 outside [0, T))
    backward: dx[b, t + k - pad, c] += sum_o dy[b, t, o] * w[o, c, k]
              dw[o, c, k] += sum_{b, t} dy[b, t, o] * x[b, t + k - pad, c]
              db[o] += sum_{b, t} dy[b, t, o]

Fast backends lower the conv to one GEMM through im2col: cols (B*To, K*Ci) with
cols[b*To + t, k*Ci + c] = x[b, t + k - pad, c] and Wt (Co, K*Ci) = w.transpose(0, 2, 1), so
y = cols @ Wt^T, dWt = dy^T @ cols and dcols = dy @ Wt (then col2im adds dcols back into dx).
K=1 with no padding needs no im2col (cols is x). Backward accumulates (+=) into dx, dw, db.
"""
from __future__ import annotations

from types import SimpleNamespace

import numba as nb
import numpy as np

from fastcpu.kernels._common import PJIT, scratch

# auto = "numba": `python -m pytest benchmarks/test_kernels.py -k conv1d --benchmark-only`
# (2 threads, OpenBLAS vars unset, 2026-11-22) — see README "Kernel benchmarks".
AUTO = "numba"


def _geometry(x, w, padding):
    if x.ndim != 3 or w.ndim != 3 or x.shape[2] != w.shape[1]:
        raise ValueError(f"conv1d: x (B, T, Ci) and w (Co, Ci, K) do not fit: x {x.shape}, "
                         f"w {w.shape}")
    B, T, Ci = x.shape
    Co, _, K = w.shape
    pad = (K - 1) // 2 if padding is None else int(padding)
    To = T + 2 * pad - K + 1
    if To < 0:
        raise ValueError(f"conv1d: kernel {K} with padding {pad} is longer than T={T} allows")
    return B, T, Ci, Co, K, pad, To


# ----------------------------------------------------------------------------- reference (NumPy)

def forward_reference(x, w, b=None, padding=None):
    B, T, Ci, Co, K, pad, To = _geometry(x, w, padding)
    xp = np.zeros((B, T + 2 * pad, Ci), x.dtype)
    xp[:, pad:pad + T] = x
    y = np.zeros((B, To, Co), x.dtype)
    for k in range(K):
        y += xp[:, k:k + To] @ w[:, :, k].T
    if b is not None:
        y += b
    return y


def backward_reference(dy, x, w, padding, dx, dw, db):
    B, T, Ci, Co, K, pad, To = _geometry(x, w, padding)
    xp = np.zeros((B, T + 2 * pad, Ci), x.dtype)
    xp[:, pad:pad + T] = x
    dxp = np.zeros_like(xp)
    dy2 = dy.reshape(-1, Co)
    for k in range(K):
        dw[:, :, k] += dy2.T @ xp[:, k:k + To].reshape(-1, Ci)
        dxp[:, k:k + To] += dy @ w[:, :, k]
    if dx is not None:
        dx += dxp[:, pad:pad + T]
    if db is not None:
        db += dy2.sum(0)


# ----------------------------------------------------------------------------- Numba

@nb.njit(**PJIT)
def _im2col_nb(x, K, pad, To, cols):
    # cols[b*To + t, k*Ci + c] = x[b, t + k - pad, c] (0 outside); parallel over output rows
    B, T, Ci = x.shape
    for r in nb.prange(B * To):
        bi = r // To
        t = r - bi * To
        for k in range(K):
            s = t + k - pad
            if 0 <= s < T:
                for c in range(Ci):
                    cols[r, k * Ci + c] = x[bi, s, c]
            else:
                for c in range(Ci):
                    cols[r, k * Ci + c] = 0


@nb.njit(**PJIT)
def _col2im_nb(dcols, K, pad, To, dx):
    # dx[b, s, c] += sum_k dcols[b*To + s - k + pad, k*Ci + c]; parallel over rows of dx we write
    B, T, Ci = dx.shape
    for r in nb.prange(B * T):
        bi = r // T
        s = r - bi * T
        for k in range(K):
            t = s - k + pad
            if 0 <= t < To:
                for c in range(Ci):
                    dx[bi, s, c] += dcols[bi * To + t, k * Ci + c]


@nb.njit(**PJIT)
def _bias_nb(y, b):
    for r in nb.prange(y.shape[0]):
        yr = y[r]                   # row slice + range(len): vectorises (no wraparound check)
        for o in range(yr.shape[0]):
            yr[o] += b[o]


@nb.njit(**PJIT)
def _colsum_nb(dy, db, nchunk):
    # db += sum over rows, fixed chunks (thread-count independent)
    M, N = dy.shape
    part = np.zeros((nchunk, N), dtype=np.float32)
    for ch in nb.prange(nchunk):
        for r in range(ch * M // nchunk, (ch + 1) * M // nchunk):
            for o in range(N):
                part[ch, o] += dy[r, o]
    for ch in range(nchunk):
        for o in range(N):
            db[o] += part[ch, o]


@nb.njit(**PJIT)
def _dw_scatter_nb(dwt, dw):
    # dw[o, c, k] += dwt[o, k*Ci + c]
    Co, Ci, K = dw.shape
    for o in nb.prange(Co):
        for k in range(K):
            for c in range(Ci):
                dw[o, c, k] += dwt[o, k * Ci + c]


def _cols_numba(x, K, pad, To):
    B, T, Ci = x.shape
    if K == 1 and pad == 0:
        return x.reshape(B * T, Ci)
    cols = scratch("conv1d.cols", (B * To, K * Ci), x.dtype)
    if cols.size:
        _im2col_nb(x, K, pad, To, cols)
    return cols


def _wt(w):
    """Wt (Co, K*Ci) = w.transpose(0, 2, 1) flattened — the GEMM layout of the weight."""
    return np.ascontiguousarray(w.transpose(0, 2, 1)).reshape(w.shape[0], -1)


def forward_numba(x, w, b=None, padding=None):
    B, T, Ci, Co, K, pad, To = _geometry(x, w, padding)
    cols = _cols_numba(np.ascontiguousarray(x), K, pad, To)
    y = np.empty((B * To, Co), x.dtype)
    np.matmul(cols, _wt(w).T, out=y)
    if b is not None and y.size:
        _bias_nb(y, b)
    return y.reshape(B, To, Co)


def backward_numba(dy, x, w, padding, dx, dw, db):
    B, T, Ci, Co, K, pad, To = _geometry(x, w, padding)
    dy2 = np.ascontiguousarray(dy).reshape(B * To, Co)
    if db is not None and dy2.shape[0]:
        _colsum_nb(dy2, db, max(1, min(64, dy2.shape[0])))
    if dy2.shape[0] == 0:
        return
    cols = _cols_numba(np.ascontiguousarray(x), K, pad, To)
    dwt = dy2.T @ cols                                   # (Co, K*Ci)
    if K == 1:
        dw.reshape(Co, Ci)[...] += dwt
    else:
        _dw_scatter_nb(dwt, dw)
    if dx is not None:
        if K == 1 and pad == 0:
            dx.reshape(B * T, Ci)[...] += dy2 @ _wt(w)
        else:
            dcols = np.matmul(dy2, _wt(w), out=scratch("conv1d.cols", (B * To, K * Ci)))
            _col2im_nb(dcols, K, pad, To, dx)


# ----------------------------------------------------------------------------- Cython binding

def _cython():
    from fastcpu import runtime
    from fastcpu.kernels import _cybuild
    cy = _cybuild.module("conv1d")

    def forward(x, w, b=None, padding=None):
        B, T, Ci, Co, K, pad, To = _geometry(x, w, padding)
        y = np.empty((B, To, Co), np.float32)
        cols = scratch("conv1d.cols", (B * To, K * Ci) if (K, pad) != (1, 0) else (0, 0))
        cy.forward(np.ascontiguousarray(x), _wt(w), b, pad, To, y, cols, runtime.num_threads())
        return y

    def backward(dy, x, w, padding, dx, dw, db):
        B, T, Ci, Co, K, pad, To = _geometry(x, w, padding)
        dwt = np.zeros((Co, K * Ci), np.float32)
        cols = scratch("conv1d.cols", (B * To, K * Ci) if (K, pad) != (1, 0) else (0, 0))
        cy.backward(np.ascontiguousarray(dy), np.ascontiguousarray(x), _wt(w), pad, dx, dwt, db,
                    cols, runtime.num_threads())
        if K == 1:
            dw.reshape(Co, Ci)[...] += dwt
        else:
            _dw_scatter_nb(dwt, dw)

    return SimpleNamespace(forward=forward, backward=backward)


BACKENDS = {
    "reference": lambda: SimpleNamespace(forward=forward_reference, backward=backward_reference),
    "numba": lambda: SimpleNamespace(forward=forward_numba, backward=backward_numba),
    "cython": _cython,
}
