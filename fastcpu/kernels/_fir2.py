"""conv1d by fast FIR algorithms (Karatsuba on even/odd phases, nested ``depth`` times).

Same contract as ``conv1d.forward_numba`` / ``backward_numba`` (channels-last x (B, T, Ci),
PyTorch weight (Co, Ci, K), "same" padding, ``lengths`` = valid rows per sequence).

One level. With xp[s] = x[s - pad] (0 outside the valid rows) the conv is the correlation
y[t] = sum_k W_k xp[t + k]. Write (F * S)[m] = sum_j F_j S[m + j]. Split the taps into even
Fe_j = F_2j (ceil(n/2) of them) and odd Fo_j = F_2j+1 (floor(n/2), a zero tap appended for Fs),
and the sequence into e[n] = S[2n], o[n] = S[2n+1], s[n] = o[n] + e[n+1]. Then

    Z[2m]     = (Fe * e)[m] + (Fo * o)[m]                 = P[m] + Q[m]
    Z[2m + 1] = (Fe * o)[m] + (Fo * e)[m + 1]             = R[m] - P[m + 1] - Q[m]

with P = Fe * e, Q = Fo * o and R = (Fe + Fo) * s (Karatsuba: three products instead of four).
P, Q and R are correlations of the same kind at half the rate, so the split nests: at depth d
there are 3^d "leaf" correlations, each an im2col GEMM over 1/2^d of the rows. A leaf's filter
taps are sums of original taps, its sequence S_l[n] = sum_{delta in D_l} xp[2^d n + delta], and
every output phase y[2^d m + p] is a signed sum of leaf outputs Z_l[m + shift]. The tables for
(K, depth) are derived symbolically once (``plan``); the kernels below just follow them.

GEMM FLOPs relative to the direct conv: K=9 depth 1 14/18, depth 2 22/36; K=5 depth 1 8/10.

Backward is the transpose of every step: dZ_l[m] = sum of coef * dy[2^d (m - shift) + p] over the
leaf's terms; dW_k += sum over (leaf, tap j) containing k of (dZ_l^T cols_l)[:, j]; the leaf
columns' gradients dZ_l F_l go back to every input row they were summed from.

Equal to the direct conv up to float rounding (the sums are re-associated).
"""
from __future__ import annotations

import functools
from types import SimpleNamespace

import numba as nb
import numpy as np

from fastcpu.kernels import gemm
from fastcpu.kernels._common import (PJIT, _row_done, _row_target, bf16_row, colsum_nb,
                                     dx_row, masked_colsum_nb, scratch, seq_offsets)


# ----------------------------------------------------------------------------- the plan (symbolic)

def _split(node):
    """One Karatsuba level of a correlation node (filter, stride, offsets) -> P, Q, R nodes."""
    F, sig, D = node
    Fe, Fo = F[0::2], F[1::2]
    Fs = [fe + (Fo[j] if j < len(Fo) else ()) for j, fe in enumerate(Fe)]
    Do = tuple(d + sig for d in D)
    return ((tuple(Fe), 2 * sig, D), (tuple(Fo), 2 * sig, Do),
            (tuple(Fs), 2 * sig, Do + tuple(d + 2 * sig for d in D)))


def _expand(node, depth):
    """-> (leaves, terms): terms[p] = [(leaf, shift, coef)] with Z[2^depth m + p] = sum coef *
    Z_leaf[m + shift]."""
    if depth == 0:
        return [node], [[(0, 0, 1)]]
    P, Q, R = _split(node)
    parts = [_expand(n, depth - 1) for n in (P, Q, R)]
    leaves, base = [], []
    for lv, _ in parts:
        base.append(len(leaves))
        leaves += lv
    half = 1 << (depth - 1)
    tP = [[(base[0] + l, s, c) for l, s, c in ph] for ph in parts[0][1]]
    tQ = [[(base[1] + l, s, c) for l, s, c in ph] for ph in parts[1][1]]
    tR = [[(base[2] + l, s, c) for l, s, c in ph] for ph in parts[2][1]]
    terms = []
    for p in range(1 << depth):
        q, ph = divmod(p, 2)
        if ph == 0:                                   # P[n] + Q[n], n = half*m + q
            terms.append(tP[q] + tQ[q])
        else:                                         # R[n] - P[n + 1] - Q[n]
            nxt = [(l, s, -c) for l, s, c in tP[q + 1]] if q + 1 < half else \
                [(l, s + 1, -c) for l, s, c in tP[0]]
            terms.append(tR[q] + nxt + [(l, s, -c) for l, s, c in tQ[q]])
    return leaves, terms


@functools.lru_cache(maxsize=None)
def plan(K: int, depth: int) -> SimpleNamespace:
    """Flat tables for the Numba kernels: leaves, their taps / offsets, the output terms."""
    if depth < 0 or (depth > 0 and K < (1 << depth) + 1):
        raise ValueError(f"fast FIR: depth {depth} needs K >= {(1 << depth) + 1}, got K={K}")
    leaves, terms = _expand((tuple((k,) for k in range(K)), 1, (0,)), depth)
    # merge equal (leaf, shift) terms; drop those that cancel
    merged = []
    for ph in terms:
        acc = {}
        for l, s, c in ph:
            acc[(l, s)] = acc.get((l, s), 0) + c
        merged.append([(l, s, c) for (l, s), c in sorted(acc.items()) if c])
    ntap = np.array([len(F) for F, _, _ in leaves], np.int64)
    if (ntap == 0).any():
        raise ValueError(f"fast FIR: K={K} too short for depth {depth}")
    dstart = np.cumsum([0] + [len(D) for _, _, D in leaves]).astype(np.int64)
    doffs = np.array([d for _, _, D in leaves for d in D], np.int64)
    # filter taps: (leaf, j, k) for every original tap k summed into leaf tap j
    ljk = np.array([(l, j, k) for l, (F, _, _) in enumerate(leaves) for j, ks in enumerate(F)
                    for k in ks], np.int64).reshape(-1, 3)
    tstart = np.cumsum([0] + [len(ph) for ph in merged]).astype(np.int64)
    tab = np.array([t for ph in merged for t in ph], np.int64).reshape(-1, 3)
    # the same terms by leaf, for backward: (phase, shift, coef)
    by_leaf = [[] for _ in leaves]
    for p, ph in enumerate(merged):
        for l, s, c in ph:
            by_leaf[l].append((p, s, c))
    lstart = np.cumsum([0] + [len(v) for v in by_leaf]).astype(np.int64)
    ltab = np.array([t for v in by_leaf for t in v], np.int64).reshape(-1, 3)
    maxshift = int(tab[:, 1].max())
    return SimpleNamespace(K=K, depth=depth, stride=1 << depth, nleaf=len(leaves), ntap=ntap,
                           dstart=dstart, doffs=doffs, ljk=ljk, tstart=tstart, tab=tab,
                           lstart=lstart, ltab=ltab, maxshift=maxshift,
                           flops=float(ntap.sum()) / (1 << depth) / K)


def row_offsets(L, pl):
    """Leaf rows of sequence b: off[b] .. off[b + 1] (ceil(L_b / 2^d) + maxshift, 0 if L_b = 0)."""
    n = np.where(L > 0, (L + pl.stride - 1) // pl.stride + pl.maxshift, 0)
    return np.concatenate([[0], np.cumsum(n)]).astype(np.int64)


# ----------------------------------------------------------------------------- kernels

@nb.njit(inline="always")
def _tap(buf, wbase, ntap, Ci, o, l, j):
    # leaf l's tap j of output channel o in a flat (Co, ntap[l]*Ci)-per-leaf buffer
    start = wbase[l] + o * ntap[l] * Ci + j * Ci
    return buf[start:start + Ci]


@nb.njit(**PJIT)
def _leaf_w_nb(w, ljk, ntap, wbase, wl):
    # wl[wbase[l] + o*ntap[l]*Ci + j*Ci + c] = sum over (l, j, k) of w[o, c, k], summed in fp32;
    # wl float32, or uint16 for the bf16 operand (each sum rounded once: no fp32 copy, no cast
    # pass per GEMM)
    Co, Ci, K = w.shape
    nl = ntap.shape[0]
    tb = np.zeros(nl + 1, np.int64)
    for l in range(nl):
        tb[l + 1] = tb[l] + ntap[l] * Ci
    nchunk = min(Co, 64)
    for ch in nb.prange(nchunk):
        wt = np.empty((K, Ci), dtype=np.float32)          # w[o] transposed: taps contiguous
        tmp = np.empty(tb[nl], dtype=np.float32)          # fp32 sums for a uint16 wl
        for o in range(ch * Co // nchunk, (ch + 1) * Co // nchunk):
            for c in range(Ci):
                for k in range(K):
                    wt[k, c] = w[o, c, k]
            for l in range(nl):
                n = ntap[l] * Ci
                row = _row_target(tmp[tb[l]:tb[l] + n], wl[wbase[l] + o * n:wbase[l] + (o + 1) * n])
                for i in range(n):
                    row[i] = 0
            for e in range(ljk.shape[0]):
                l = ljk[e, 0]
                n = ntap[l] * Ci
                row = _row_target(tmp[tb[l]:tb[l] + n], wl[wbase[l] + o * n:wbase[l] + (o + 1) * n])
                src = wt[ljk[e, 2]]
                base = ljk[e, 1] * Ci
                for c in range(Ci):
                    row[base + c] += src[c]
            for l in range(nl):
                n = ntap[l] * Ci
                _row_done(tmp[tb[l]:tb[l] + n], wl[wbase[l] + o * n:wbase[l] + (o + 1) * n])


@nb.njit(inline="always")
def _leaf_tap(x, bi, m, j, L, stride, pad, dstart, doffs, l, dst):
    # dst (Ci,) = sum_{delta in D_l} xp[stride*(m + j) + delta] of sequence bi (0 outside)
    Ci = x.shape[2]
    first = True
    for e in range(dstart[l], dstart[l + 1]):
        i = stride * (m + j) + doffs[e] - pad
        if 0 <= i < L:
            src = x[bi, i]
            if first:
                for c in range(Ci):
                    dst[c] = src[c]
                first = False
            else:
                for c in range(Ci):
                    dst[c] += src[c]
    if first:
        for c in range(Ci):
            dst[c] = 0


@nb.njit(**PJIT)
def _im2col_nb(x, lengths, off, stride, pad, ntap, dstart, doffs, cbase, cols):
    # leaf l, row r = (b, m): cols_l[r, j*Ci + c] = sum_{delta in D_l} xp[stride*(m + j) + delta]
    B, T, Ci = x.shape
    for r in nb.prange(off[B]):
        bi = np.searchsorted(off, r, side="right") - 1
        for l in range(ntap.shape[0]):
            nt = ntap[l]
            rowbase = cbase[l] + r * nt * Ci
            for j in range(nt):
                _leaf_tap(x, bi, r - off[bi], j, lengths[bi], stride, pad, dstart, doffs, l,
                          cols[rowbase + j * Ci: rowbase + (j + 1) * Ci])


@nb.njit(**PJIT)
def _im2col_bf16_nb(x, lengths, off, stride, pad, ntap, dstart, doffs, cbase, cols):
    # the same columns, written as bf16 (uint16): each tap summed in fp32, then rounded once
    B, T, Ci = x.shape
    for r in nb.prange(off[B]):
        bi = np.searchsorted(off, r, side="right") - 1
        tmp = np.empty(Ci, np.float32)
        for l in range(ntap.shape[0]):
            nt = ntap[l]
            rowbase = cbase[l] + r * nt * Ci
            for j in range(nt):
                _leaf_tap(x, bi, r - off[bi], j, lengths[bi], stride, pad, dstart, doffs, l, tmp)
                bf16_row(tmp, cols[rowbase + j * Ci: rowbase + (j + 1) * Ci])


@nb.njit(inline="always")
def _row(ooff, r, T):
    # valid row r (in sequence order) -> (sequence, step, row of a dense (B*T, C) or compact array)
    r = np.int64(r)
    bi = np.int64(np.searchsorted(ooff, r, side="right") - 1)
    t = r - ooff[bi]
    return bi, t, (bi * T + t) if T > 0 else r


@nb.njit(**PJIT)
def _combine_nb(Z, ooff, off, stride, tstart, tab, b, has_b, relu, T, y):
    # valid row (b, t), t = stride*m + p: y = bias + sum over phase p's terms of
    # coef * Z[leaf, off[b] + m + shift], then max(., 0) if relu. y is (B*T, Co) dense (T > 0)
    # or (sum L, Co) compact (T = 0); a dense y's padding rows are not touched.
    Co = y.shape[1]
    for r in nb.prange(ooff[-1]):
        bi, t, row = _row(ooff, r, T)
        yr = y[row]
        if has_b:
            for o in range(Co):
                yr[o] = b[o]
        else:
            for o in range(Co):
                yr[o] = 0
        m = t // stride
        p = t - m * stride
        r0 = off[bi] + m
        for e in range(tstart[p], tstart[p + 1]):
            z = Z[tab[e, 0], r0 + tab[e, 1]]
            if tab[e, 2] == 1:
                for o in range(Co):
                    yr[o] += z[o]
            elif tab[e, 2] == -1:
                for o in range(Co):
                    yr[o] -= z[o]
            else:
                cf = np.float32(tab[e, 2])
                for o in range(Co):
                    yr[o] += cf * z[o]
        if relu:
            for o in range(Co):
                yr[o] = max(yr[o], np.float32(0))


@nb.njit(**PJIT)
def _zero_padding_nb(y, lengths):
    B, T, C = y.shape
    for r in nb.prange(B * T):
        bi = r // T
        t = r - bi * T
        if t >= lengths[bi]:
            for c in range(C):
                y[bi, t, c] = 0


@nb.njit(inline="always")
def _dz_row(dy, base, m, L, stride, lstart, ltab, l, d):
    # d (Co,) = sum over leaf l's terms (p, shift, coef) of coef * dy[base + stride*(m - shift)
    # + p] (0 outside the sequence's L valid rows)
    for o in range(d.shape[0]):
        d[o] = 0
    for e in range(lstart[l], lstart[l + 1]):
        t = stride * (m - ltab[e, 1]) + ltab[e, 0]
        if 0 <= t < L:
            src = dy[base + t]
            cf = np.float32(ltab[e, 2])
            for o in range(d.shape[0]):
                d[o] += cf * src[o]


@nb.njit(**PJIT)
def _dz_nb(dy, ooff, lengths, off, stride, lstart, ltab, T, dZ):
    # dZ[l, r] = sum over leaf l's terms (p, shift, coef) of coef * dy at step stride*(m - shift)
    # + p of sequence b (0 outside the valid rows); dy dense (B*T, Co) with T > 0, or compact.
    # dZ float32, or uint16: the bf16 operand of both backward GEMMs (each row summed in fp32,
    # then rounded once)
    B = lengths.shape[0]
    for r in nb.prange(off[B]):
        bi = np.searchsorted(off, r, side="right") - 1
        base = bi * T if T > 0 else ooff[bi]
        tmp = np.empty(dy.shape[1], np.float32)          # fp32 sums for a uint16 dZ
        for l in range(dZ.shape[0]):
            _dz_row(dy, base, r - off[bi], lengths[bi], stride, lstart, ltab, l,
                    _row_target(tmp, dZ[l, r]))
            _row_done(tmp, dZ[l, r])


@nb.njit(**PJIT)
def _dw_nb(G, ljk, ntap, wbase, dw):
    # dw[o, c, k] += G_l[o, j*Ci + c] for every (l, j, k)
    Co, Ci, K = dw.shape
    nchunk = min(Co, 64)
    for ch in nb.prange(nchunk):
        gt = np.empty((K, Ci), dtype=np.float32)
        for o in range(ch * Co // nchunk, (ch + 1) * Co // nchunk):
            for k in range(K):
                for c in range(Ci):
                    gt[k, c] = 0
            for e in range(ljk.shape[0]):
                src = _tap(G, wbase, ntap, Ci, o, ljk[e, 0], ljk[e, 1])
                dst = gt[ljk[e, 2]]
                for c in range(Ci):
                    dst[c] += src[c]
            for c in range(Ci):
                for k in range(K):
                    dw[o, c, k] += gt[k, c]


@nb.njit(**PJIT)
def _col2im_nb(dcols, lengths, off, stride, pad, ntap, dstart, doffs, cbase, dx, acc):
    # dx[b, i] (+)= every leaf column block that summed x[b, i] in; rows i >= L_b get nothing
    B, T, Ci = dx.shape
    for rr in nb.prange(B * T):
        bi, i, L, dr, valid = dx_row(dx, lengths, rr, acc)
        if not valid:
            continue
        base = off[bi]
        nrow = off[bi + 1] - base
        s = i + pad
        for l in range(ntap.shape[0]):
            nt = ntap[l]
            for e in range(dstart[l], dstart[l + 1]):
                u = s - doffs[e]
                if u < 0 or u % stride != 0:
                    continue
                n = u // stride
                for j in range(nt):
                    m = n - j
                    if 0 <= m < nrow:
                        src = dcols[cbase[l] + (base + m) * nt * Ci + j * Ci:
                                    cbase[l] + (base + m) * nt * Ci + (j + 1) * Ci]
                        for c in range(Ci):
                            dr[c] += src[c]


# ----------------------------------------------------------------------------- drivers

def _layout(pl, N, Ci, Co):
    cbase = np.concatenate([[0], np.cumsum(pl.ntap * N * Ci)]).astype(np.int64)
    wbase = np.concatenate([[0], np.cumsum(pl.ntap * Co * Ci)]).astype(np.int64)
    return cbase, wbase


def _operand_dtype():
    """What the GEMMs take: bf16 (uint16) under bf16 precision, else float32."""
    return gemm.BF16 if gemm.current() == "bf16" else np.float32


def _leaf_weights(w, pl, wbase):
    """The leaf filters, in the GEMMs' operand type (bf16 written directly under bf16)."""
    wl = scratch("fir.w", (int(wbase[-1]),), _operand_dtype())
    _leaf_w_nb(w, pl.ljk, pl.ntap, wbase, wl)
    return wl


def _cols(x, L, off, pad, pl, cbase):
    """The leaf columns, in the GEMMs' operand type: bf16 written directly under bf16 precision
    (no fp32 copy and no separate conversion pass)."""
    if gemm.current() == "bf16":
        cols = scratch("fir.cols", (int(cbase[-1]),), gemm.BF16)
        _im2col_bf16_nb(x, L, off, pl.stride, pad, pl.ntap, pl.dstart, pl.doffs, cbase, cols)
    else:
        cols = scratch("fir.cols", (int(cbase[-1]),))
        _im2col_nb(x, L, off, pl.stride, pad, pl.ntap, pl.dstart, pl.doffs, cbase, cols)
    return cols


def _views(buf, base, pl, N, Ci, l, Co=None):
    n = int(pl.ntap[l]) * Ci
    if Co is None:
        return buf[base[l]:base[l + 1]].reshape(N, n)
    return buf[base[l]:base[l + 1]].reshape(Co, n)


def forward(x, w, b, pad, L, depth, compact=False, relu=False):
    """x C-contiguous (B, T, Ci); L (B,) int64 valid rows; "same" conv. Returns y (B, T, Co) with
    zero padding rows, or with ``compact`` the valid rows only, (sum L, Co) in sequence order;
    ``relu`` applies max(., 0) to the valid rows."""
    B, T, Ci = x.shape
    Co, _, K = w.shape
    pl = plan(K, depth)
    off = row_offsets(L, pl)
    ooff = seq_offsets(L)
    N = int(off[-1])
    y = np.empty((int(ooff[-1]), Co) if compact else (B, T, Co), x.dtype)
    if not compact:
        _zero_padding_nb(y, L)
    if N == 0 or y.size == 0:
        return y
    cbase, wbase = _layout(pl, N, Ci, Co)
    wl = _leaf_weights(w, pl, wbase)
    cols = _cols(x, L, off, pad, pl, cbase)
    Z = scratch("fir.z", (pl.nleaf, N, Co))
    for l in range(pl.nleaf):
        gemm.matmul(_views(cols, cbase, pl, N, Ci, l), _views(wl, wbase, pl, N, Ci, l, Co).T,
                    Z[l])
    _combine_nb(Z, ooff, off, pl.stride, pl.tstart, pl.tab,
                b if b is not None else np.zeros(0, x.dtype), b is not None, relu,
                0 if compact else T, y.reshape(-1, Co))
    return y


def backward(dy, x, w, pad, dx, dw, db, L, acc, depth, compact=False):
    """Accumulates into dw (and db); writes (acc=False) or adds into dx unless dx is None.
    ``compact``: dy holds the valid rows only, (sum L, Co) in sequence order."""
    B, T, Ci = x.shape
    Co, _, K = w.shape
    if x.size == 0 or dy.size == 0:
        if dx is not None and not acc:
            dx[...] = 0
        return
    pl = plan(K, depth)
    off = row_offsets(L, pl)
    ooff = seq_offsets(L)
    N = int(off[-1])
    if db is not None:
        if compact:
            colsum_nb(dy, db, max(1, min(64, dy.shape[0])))
        else:
            masked_colsum_nb(dy, L, db, max(1, min(64, B * T)))
    if N == 0:
        if dx is not None and not acc:
            dx[...] = 0
        return
    cbase, wbase = _layout(pl, N, Ci, Co)
    dZ = scratch("fir.z", (pl.nleaf, N, Co), _operand_dtype())   # the operand of both GEMMs
    _dz_nb(dy.reshape(-1, Co), ooff, L, off, pl.stride, pl.lstart, pl.ltab, 0 if compact else T,
           dZ)
    cols = _cols(x, L, off, pad, pl, cbase)
    G = scratch("fir.g", (int(wbase[-1]),))
    for l in range(pl.nleaf):
        gemm.matmul(dZ[l].T, _views(cols, cbase, pl, N, Ci, l), _views(G, wbase, pl, N, Ci, l,
                                                                         Co))
    _dw_nb(G, pl.ljk, pl.ntap, wbase, dw)
    if dx is not None:
        wl = _leaf_weights(w, pl, wbase)
        if cols.dtype != np.float32:              # bf16 columns: the fp32 gradients go apart
            cols = scratch("fir.cols", (int(cbase[-1]),))
        for l in range(pl.nleaf):                 # the columns are consumed: reuse them
            c = _views(cols, cbase, pl, N, Ci, l)
            gemm.matmul(dZ[l], _views(wl, wbase, pl, N, Ci, l, Co), c)
        _col2im_nb(cols, L, off, pl.stride, pad, pl.ntap, pl.dstart, pl.doffs, cbase, dx, acc)
