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
The ``fir2`` backend (the auto choice) computes wide "same" convs by the 2-parallel fast FIR
algorithm instead: three GEMMs over half the rows with ceil(K/2), floor(K/2), ceil(K/2) taps, or
the split nested once more (nine GEMMs over a quarter of the rows) for large batches
(``fastcpu.kernels._fir2`` has the maths); equal to the direct conv up to float rounding.

``lengths`` (B,), optional, for "same" convs (To == T): rows t >= lengths[b] are padding — read as
zeros on input, written as zeros on output, their dy ignored — and never computed, so a ragged
batch costs its real frames only (FastSpeech2 zeroes padded rows after every sub-layer anyway).
Supported by the reference and Numba backends.

``dx="new"`` makes backward write (and return) a fresh dx instead of accumulating into one, which
saves a zero fill and a read pass; ``dx=None`` skips the input gradient.
"""
from __future__ import annotations

from types import SimpleNamespace

import numba as nb
import numpy as np

from fastcpu.kernels import _fir2, gemm
from fastcpu.kernels._common import PJIT, _put_row, dx_row, scratch, zeros_like
from fastcpu.kernels._common import colsum_nb as _colsum_nb, seq_offsets as _offsets

# auto = fir2: the Numba backend (im2col/col2im in Numba, GEMMs through NumPy's OpenBLAS), with
# the wide "same" convs (K >= 5, Ci >= 128, >= 1000 valid rows: the decoder's k9 convs, PostNet's
# 512-channel k5, the encoder's from B=16) done by the fast FIR algorithm (see _fir_depth), which
# needs 14/18 (k9) and 8/10 (k5) of the GEMM FLOPs, 22/36 at k9 nested. Whole LJSpeech-config steps alternating numba / fir2 in one process (2 threads,
# OpenBLAS vars unset): `python benchmarks/ab_step.py --kernel conv1d --backends numba,fir2
# --batch 8 --phonemes 40-60 --steps 8` -> 1.552 / 1.460 s (0.94x; a run before it 0.88x).
# Numba rather than Cython: isolated, the two direct backends trade places from run to run near
# PyTorch (`python -m pytest benchmarks/test_kernels.py -k conv1d --benchmark-only`, 2026-11-22,
# fwd+bwd medians, three runs: 256->1024 k9 Cython 255/261/304 ms vs Numba 268/296/288;
# 1024->256 k1 44/49/61 vs 68/61/41), but inside a FastSpeech2 step Numba wins clearly: the
# Cython kernel's GEMMs go through SciPy's OpenBLAS (a second OpenBLAS with its own thread pool)
# while every other GEMM of the step uses NumPy's, and alternating between the two pools costs
# far more than either kernel's own time (steps alternating Cython / Numba for the plain convs:
# B=8 1.615 / 1.347 s and 1.547 / 1.285 s; B=16 5.26 / 4.97 s).
AUTO = "fir2"


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

def _valid(lengths, B, T, To):
    L = np.asarray(lengths, dtype=np.int64)
    if To != T:
        raise ValueError(f"conv1d: lengths need a 'same' conv (output {To} frames != input {T})")
    if L.shape != (B,) or (L < 0).any() or (L > T).any():
        raise ValueError(f"conv1d: lengths must be {B} ints in [0, {T}], got {L}")
    return np.arange(T)[None, :] < L[:, None]                    # (B, T) True = real frame


def forward_reference(x, w, b=None, padding=None, lengths=None):
    B, T, Ci, Co, K, pad, To = _geometry(x, w, padding)
    if lengths is not None:
        ok = _valid(lengths, B, T, To)[..., None]
        return np.where(ok, forward_reference(np.where(ok, x, 0).astype(x.dtype), w, b,
                                              padding), 0).astype(x.dtype)
    xp = np.zeros((B, T + 2 * pad, Ci), x.dtype)
    xp[:, pad:pad + T] = x
    y = np.zeros((B, To, Co), x.dtype)
    for k in range(K):
        y += xp[:, k:k + To] @ w[:, :, k].T
    if b is not None:
        y += b
    return y


def _new_dx(dx, x):
    if isinstance(dx, str):
        if dx != "new":
            raise ValueError(f"conv1d backward: dx must be an array, None or 'new', got {dx!r}")
        return zeros_like(x), True
    return dx, False


def _dx_mode(dx, x):
    """-> (dx, acc) for kernels that write dx themselves: "new" gives a fresh uninitialised array
    to write (acc False); an array (or None) is accumulated into (acc True)."""
    if isinstance(dx, str):
        _new_dx(dx, x)                      # validates the string
        return np.empty_like(x), False
    return dx, True


def backward_reference(dy, x, w, padding, dx, dw, db, lengths=None):
    dx, _ = _new_dx(dx, x)
    B, T, Ci, Co, K, pad, To = _geometry(x, w, padding)
    if lengths is not None:
        ok = _valid(lengths, B, T, To)[..., None]
        dxf = None if dx is None else np.zeros_like(x)
        backward_reference(np.where(ok, dy, 0).astype(dy.dtype), np.where(ok, x, 0).astype(
            x.dtype), w, padding, dxf, dw, db)
        if dx is not None:
            dx += np.where(ok, dxf, 0)
        return dx
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
    return dx


# ----------------------------------------------------------------------------- Numba

@nb.njit(inline="always")
def _im2col_row(x, bi, t, K, pad, L, cr):
    # cr (K*Ci,) = x[bi, t + k - pad, :] for k < K (0 outside [0, L))
    Ci = x.shape[2]
    for k in range(K):
        s = t + k - pad
        if 0 <= s < L:
            _put_row(x[bi, s], cr[k * Ci:(k + 1) * Ci])
        else:
            for c in range(Ci):
                cr[k * Ci + c] = 0


@nb.njit(**PJIT)
def _im2col_nb(x, K, pad, To, cols):
    # cols[b*To + t, k*Ci + c] = x[b, t + k - pad, c] (0 outside); parallel over output rows;
    # cols float32, or uint16 for bf16 (each copied row rounded to nearest even)
    for r in nb.prange(cols.shape[0]):
        bi = r // To
        _im2col_row(x, bi, r - bi * To, K, pad, x.shape[1], cols[r])


@nb.njit(**PJIT)
def _col2im_nb(dcols, K, pad, To, dx, acc):
    # dx[b, s, c] (+)= sum_k dcols[b*To + s - k + pad, k*Ci + c]; parallel over rows of dx
    B, T, Ci = dx.shape
    for r in nb.prange(B * T):
        bi = r // T
        s = r - bi * T
        dr = dx[bi, s]
        if not acc:
            for c in range(Ci):
                dr[c] = 0
        for k in range(K):
            t = s - k + pad
            if 0 <= t < To:
                src = dcols[bi * To + t]
                for c in range(Ci):
                    dr[c] += src[k * Ci + c]


@nb.njit(**PJIT)
def _im2col_rows_nb(x, lengths, offsets, K, pad, cols):
    # compact cols: row offsets[b] + t (t < L_b) holds x[b, t + k - pad, :] for 0 <= t+k-pad < L_b;
    # cols float32, or uint16 for bf16 (each copied row rounded to nearest even)
    for r in nb.prange(cols.shape[0]):
        bi = np.searchsorted(offsets, r, side="right") - 1
        _im2col_row(x, bi, r - offsets[bi], K, pad, lengths[bi], cols[r])


@nb.njit(**PJIT)
def _scatter_rows_nb(yc, lengths, offsets, b, has_b, y):
    # y[b, t] = yc[offsets[b] + t] (+ bias) for t < L_b, 0 for the padding rows
    B, T, Co = y.shape
    for r in nb.prange(B * T):
        bi = r // T
        t = r - bi * T
        yr = y[bi, t]
        if t < lengths[bi]:
            src = yc[offsets[bi] + t]
            if has_b:
                for o in range(Co):
                    yr[o] = src[o] + b[o]
            else:
                for o in range(Co):
                    yr[o] = src[o]
        else:
            for o in range(Co):
                yr[o] = 0


@nb.njit(**PJIT)
def _gather_rows_nb(y, lengths, offsets, yc):
    B, T, C = y.shape
    for r in nb.prange(yc.shape[0]):
        bi = np.searchsorted(offsets, r, side="right") - 1
        src = y[bi, r - offsets[bi]]
        dst = yc[r]
        for c in range(C):
            dst[c] = src[c]


@nb.njit(**PJIT)
def _col2im_rows_nb(dcols, lengths, offsets, K, pad, dx, acc):
    # dx[b, s] (+)= sum_k dcols[offsets[b] + s - k + pad, k*Ci:(k+1)*Ci] over valid t = s - k + pad;
    # rows s >= L_b receive nothing (padding input is a constant zero)
    B, T, Ci = dx.shape
    for r in nb.prange(B * T):
        bi, s, L, dr, valid = dx_row(dx, lengths, r, acc)
        if not valid:
            continue
        for k in range(K):
            t = s - k + pad
            if 0 <= t < L:
                src = dcols[offsets[bi] + t]
                for c in range(Ci):
                    dr[c] += src[k * Ci + c]


@nb.njit(**PJIT)
def _bias_nb(y, b):
    for r in nb.prange(y.shape[0]):
        yr = y[r]                   # row slice + range(len): vectorises (no wraparound check)
        for o in range(yr.shape[0]):
            yr[o] += b[o]


@nb.njit(**PJIT)
def _dw_scatter_nb(dwt, dw):
    # dw[o, c, k] += dwt[o, k*Ci + c]
    Co, Ci, K = dw.shape
    for o in nb.prange(Co):
        for k in range(K):
            for c in range(Ci):
                dw[o, c, k] += dwt[o, k * Ci + c]


def _cols_numba(x, K, pad, To):
    """im2col columns in the GEMMs' operand type (written as bf16 directly under bf16)."""
    B, T, Ci = x.shape
    if K == 1 and pad == 0:
        return x.reshape(B * T, Ci)
    cols = _cols_buffer((B * To, K * Ci), x.dtype)
    if cols.size:
        _im2col_nb(x, K, pad, To, cols)
    return cols


def _cols_buffer(shape, dtype):
    if gemm.current() == "bf16":
        return scratch("conv1d.cols", shape, gemm.BF16)
    return scratch("conv1d.cols", shape, dtype)


def _wt(w):
    """Wt (Co, K*Ci) = w.transpose(0, 2, 1) flattened — the GEMM layout of the weight."""
    return np.ascontiguousarray(w.transpose(0, 2, 1)).reshape(w.shape[0], -1)


def _rows_gemm(x, w, pad, L, off, yc):
    """yc (sum L, Co) = the conv's valid output rows without bias (im2col of the valid rows)."""
    M = int(off[-1])
    if M:
        Co, Ci, K = w.shape
        cols = _cols_buffer((M, K * Ci), x.dtype)
        _im2col_rows_nb(x, L, off, K, pad, cols)
        gemm.matmul(cols, _wt(w).T, yc)
    return yc


def _forward_rows_numba(x, w, b, pad, lengths):
    B, T, _ = x.shape
    Co = w.shape[0]
    L = np.asarray(lengths, dtype=np.int64)
    off = _offsets(L)
    y = np.empty((B, T, Co), x.dtype)
    yc = _rows_gemm(x, w, pad, L, off, scratch("conv1d.rows", (int(off[-1]), Co), x.dtype))
    if y.size:
        _scatter_rows_nb(yc, L, off, b if b is not None else np.zeros(0, x.dtype), b is not None,
                         y)
    return y


def _backward_rows_numba(dy, x, w, pad, dx, dw, db, lengths, acc=True):
    L = np.asarray(lengths, dtype=np.int64)
    off = _offsets(L)
    M = int(off[-1])
    if M == 0:
        if dx is not None and not acc:
            dx[...] = 0
        return
    dyc = scratch("conv1d.rows", (M, w.shape[0]), x.dtype)
    _gather_rows_nb(dy, L, off, dyc)
    _backward_compact_direct(dyc, x, w, pad, dx, dw, db, L, off, acc)


def _backward_compact_direct(dyc, x, w, pad, dx, dw, db, L, off, acc):
    # dyc: the valid rows of dy, (sum L, Co) in sequence order
    B, T, Ci = x.shape
    Co, _, K = w.shape
    M = int(off[-1])
    if db is not None:
        _colsum_nb(dyc, db, max(1, min(64, M)))
    cols = _cols_buffer((M, K * Ci), x.dtype)
    _im2col_rows_nb(x, L, off, K, pad, cols)
    dyb = gemm.operand(dyc)                              # converted once for both GEMMs
    if K == 1:
        gemm.matmul(dyb.T, cols, dw.reshape(Co, Ci), accumulate=True)
    else:
        _dw_scatter_nb(gemm.matmul(dyb.T, cols), dw)
    if dx is not None:
        if cols.dtype != np.float32:                      # bf16 columns: gradients go apart
            cols = scratch("conv1d.cols", (M, K * Ci), x.dtype)
        dcols = gemm.matmul(dyb, _wt(w), cols)               # cols is consumed: reuse it
        _col2im_rows_nb(dcols, L, off, K, pad, dx, acc)


@nb.njit(**PJIT)
def _bias_relu_nb(y, b, has_b, relu):
    for r in nb.prange(y.shape[0]):
        yr = y[r]
        if has_b:
            for o in range(yr.shape[0]):
                yr[o] += b[o]
        if relu:
            for o in range(yr.shape[0]):
                yr[o] = max(yr[o], np.float32(0))


def forward_compact(x, w, b, lengths, relu=False):
    """Fused callers' entry ("same" conv, fir2 backend's choice of algorithm): the valid rows of
    the output only, (sum lengths, Co) in sequence order, optionally through max(., 0)."""
    pad, L, depth = _fir_call(x, w, None, lengths)
    if L is None:
        raise ValueError(f"conv1d: a compact output needs a 'same' conv, got kernel {w.shape[2]}")
    x = np.ascontiguousarray(x)
    Co = w.shape[0]
    if depth:
        return _fir2.forward(x, w, b, pad, L, depth, compact=True, relu=relu)
    off = _offsets(L)
    yc = _rows_gemm(x, w, pad, L, off, np.empty((int(off[-1]), Co), x.dtype))
    if yc.size:
        _bias_relu_nb(yc, b if b is not None else np.zeros(0, x.dtype), b is not None, relu)
    return yc


def backward_compact(dyc, x, w, dx, dw, db, lengths):
    """Backward of ``forward_compact`` (without the ReLU) from the valid rows of dy; dx as in
    ``backward`` (an array to add into, "new" or None); returns dx."""
    pad, L, depth = _fir_call(x, w, None, lengths)
    if L is None:
        raise ValueError(f"conv1d: a compact output needs a 'same' conv, got kernel {w.shape[2]}")
    dx, acc = _dx_mode(dx, x)
    x = np.ascontiguousarray(x)
    dyc = np.ascontiguousarray(dyc)
    if depth:
        _fir2.backward(dyc, x, w, pad, dx, dw, db, L, acc, depth, compact=True)
    elif int(L.sum()) == 0:
        if dx is not None and not acc:
            dx[...] = 0
    else:
        _backward_compact_direct(dyc, x, w, pad, dx, dw, db, L, _offsets(L), acc)
    return dx


def forward_numba(x, w, b=None, padding=None, lengths=None):
    B, T, Ci, Co, K, pad, To = _geometry(x, w, padding)
    if lengths is not None:
        _valid(lengths, B, T, To)
        return _forward_rows_numba(np.ascontiguousarray(x), w, b, pad, lengths)
    cols = _cols_numba(np.ascontiguousarray(x), K, pad, To)
    y = np.empty((B * To, Co), x.dtype)
    gemm.matmul(cols, _wt(w).T, y)
    if b is not None and y.size:
        _bias_nb(y, b)
    return y.reshape(B, To, Co)


def backward_numba(dy, x, w, padding, dx, dw, db, lengths=None):
    B, T, Ci, Co, K, pad, To = _geometry(x, w, padding)
    dx, acc = _dx_mode(dx, x)
    if lengths is not None:
        _valid(lengths, B, T, To)
        _backward_rows_numba(np.ascontiguousarray(dy), np.ascontiguousarray(x), w, pad, dx, dw,
                             db, lengths, acc)
        return dx
    _backward_full_numba(dy, x, w, pad, dx, dw, db, acc, B, T, Ci, Co, K, To)
    return dx


def _backward_full_numba(dy, x, w, pad, dx, dw, db, acc, B, T, Ci, Co, K, To):
    dy2 = np.ascontiguousarray(dy).reshape(B * To, Co)
    if db is not None and dy2.shape[0]:
        _colsum_nb(dy2, db, max(1, min(64, dy2.shape[0])))
    if dy2.shape[0] == 0:
        if dx is not None and not acc:
            dx[...] = 0
        return
    cols = _cols_numba(np.ascontiguousarray(x), K, pad, To)
    dyb = gemm.operand(dy2)
    if K == 1:
        gemm.matmul(dyb.T, cols, dw.reshape(Co, Ci), accumulate=True)
    else:
        _dw_scatter_nb(gemm.matmul(dyb.T, cols), dw)             # dWt (Co, K*Ci)
    if dx is not None:
        if K == 1 and pad == 0:
            gemm.matmul(dyb, _wt(w), dx.reshape(B * T, Ci), accumulate=acc)
        else:
            dcols = gemm.matmul(dyb, _wt(w), scratch("conv1d.cols", (B * To, K * Ci)))
            _col2im_nb(dcols, K, pad, To, dx, acc)


# ----------------------------------------------------------------------------- fast FIR (Numba)

# Where the fast FIR algorithm pays (isolated fwd / bwd time relative to the direct conv, 2 threads,
# `benchmarks` shapes of the LJSpeech config; depth 1 / depth 2):
#   256->1024 k9, 2355 rows (decoder, B=8)   0.84/0.99 | 0.74/0.80
#   256->1024 k9, 9387 rows (decoder, B=16)  0.82/0.84 | 0.74/0.72
#   256->1024 k9, 1489 rows (encoder, B=16)  0.87/0.88 | 0.86/0.87
#   256->1024 k9, 429 rows (encoder, B=8)    0.99/1.00 | 1.24/1.18
#   512->512 k5, 2768 rows (PostNet, B=8)    0.92/0.92 | 0.90/0.86 (depth 2 not used for K < 9)
#   512->80 k5 0.95/0.88;  80->512 k5 1.18/1.02;  256->256 k3 (60 rows) 1.16/1.18
# so thin inputs, short kernels and few rows stay direct. Whole steps: `python
# benchmarks/ab_step.py --kernel conv1d --attr FIR_DEPTH2_MIN_ROWS --values 1000000000,1500`
# -> depth 2 vs depth 1 0.98x at B=8 (10 steps each; within the noise), 0.92x at B=16 (4 steps).
# Depth 2 rounds a little more (random data, 256->1024 k9: forward max error 3.2e-7 direct,
# 6.0e-7 depth 1, 8.8e-7 depth 2, relative to the output's max), so it is kept for large batches.
FIR_MIN_K = 5
FIR_MIN_CI = 128
FIR_MIN_ROWS = 1000            # valid rows (sum of lengths) below which the direct conv is as fast
FIR_DEPTH2_MIN_K = 9           # nesting twice: 22/36 of the FLOPs at K=9 but 9 smaller GEMMs
FIR_DEPTH2_MIN_ROWS = 4000


def _fir_depth(K, Ci, To, T, rows):
    """0 = direct conv, 1 or 2 = fast FIR nested that many times."""
    if To != T or K < max(2, FIR_MIN_K) or Ci < FIR_MIN_CI or rows < FIR_MIN_ROWS:
        return 0
    return 2 if K >= max(5, FIR_DEPTH2_MIN_K) and rows >= FIR_DEPTH2_MIN_ROWS else 1


def _fir_call(x, w, padding, lengths):
    """-> (pad, L, depth) for one call: L the valid rows per sequence (all T without
    ``lengths``; None for a conv that is not "same"), depth as ``_fir_depth``."""
    B, T, Ci, Co, K, pad, To = _geometry(x, w, padding)
    if To != T:
        return pad, None, 0
    if lengths is None:
        L = np.full(B, T, np.int64)
    else:
        _valid(lengths, B, T, To)
        L = np.asarray(lengths, np.int64)
    return pad, L, _fir_depth(K, Ci, To, T, int(L.sum()))


def forward_fir2(x, w, b=None, padding=None, lengths=None):
    """The Numba backend, with wide "same" convs (see ``_fir_depth``) computed by the fast FIR
    algorithm (``fastcpu.kernels._fir2``: 3 or 9 smaller GEMMs, 14/18 or 22/36 of the direct
    FLOPs at K=9)."""
    pad, L, depth = _fir_call(x, w, padding, lengths)
    if depth == 0:
        return forward_numba(x, w, b, padding, lengths)
    return _fir2.forward(np.ascontiguousarray(x), w, b, pad, L, depth)


def backward_fir2(dy, x, w, padding, dx, dw, db, lengths=None):
    pad, L, depth = _fir_call(x, w, padding, lengths)
    if depth == 0:
        return backward_numba(dy, x, w, padding, dx, dw, db, lengths)
    dx, acc = _dx_mode(dx, x)
    _fir2.backward(np.ascontiguousarray(dy), np.ascontiguousarray(x), w, pad, dx, dw, db, L, acc,
                   depth)
    return dx


# ----------------------------------------------------------------------------- Cython binding

def _cython():
    from fastcpu import runtime
    from fastcpu.kernels import _cybuild
    cy = _cybuild.module("conv1d")

    def forward(x, w, b=None, padding=None, lengths=None):
        B, T, Ci, Co, K, pad, To = _geometry(x, w, padding)
        if lengths is not None:
            raise ValueError("conv1d: lengths are supported by the numba and reference backends")
        y = np.empty((B, To, Co), np.float32)
        cols = scratch("conv1d.cols", (B * To, K * Ci) if (K, pad) != (1, 0) else (0, 0))
        cy.forward(np.ascontiguousarray(x), _wt(w), b, pad, To, y, cols, runtime.num_threads())
        return y

    def backward(dy, x, w, padding, dx, dw, db, lengths=None):
        B, T, Ci, Co, K, pad, To = _geometry(x, w, padding)
        if lengths is not None:
            raise ValueError("conv1d: lengths are supported by the numba and reference backends")
        dx, _ = _new_dx(dx, x)
        dwt = np.zeros((Co, K * Ci), np.float32)
        cols = scratch("conv1d.cols", (B * To, K * Ci) if (K, pad) != (1, 0) else (0, 0))
        cy.backward(np.ascontiguousarray(dy), np.ascontiguousarray(x), _wt(w), pad, dx, dwt, db,
                    cols, runtime.num_threads())
        if K == 1:
            dw.reshape(Co, Ci)[...] += dwt
        else:
            _dw_scatter_nb(dwt, dw)
        return dx

    return SimpleNamespace(forward=forward, backward=backward)


def _dispatch():
    """Per call: the Cython kernel for plain convs, Numba for ``lengths``."""
    from fastcpu.kernels import _cybuild
    cy = _cython() if _cybuild.available("conv1d") else None

    def forward(x, w, b=None, padding=None, lengths=None):
        if lengths is None and cy is not None:
            return cy.forward(x, w, b, padding)
        return forward_numba(x, w, b, padding, lengths)

    def backward(dy, x, w, padding, dx, dw, db, lengths=None):
        if lengths is None and cy is not None:
            return cy.backward(dy, x, w, padding, dx, dw, db)
        return backward_numba(dy, x, w, padding, dx, dw, db, lengths)

    return SimpleNamespace(forward=forward, backward=backward)


BACKENDS = {
    "reference": lambda: SimpleNamespace(forward=forward_reference, backward=backward_reference),
    "numba": lambda: SimpleNamespace(forward=forward_numba, backward=backward_numba),
    "fir2": lambda: SimpleNamespace(forward=forward_fir2, backward=backward_fir2),
    "cython": _cython,
    "dispatch": _dispatch,
}
