"""LayerNorm over the last dim, and the fused residual-add (+dropout) + LayerNorm of post-norm blocks.

Shapes: x (N, C) — any (…, C) is viewed as rows; weight, bias (C,); mean, rstd (N,).

    forward:  mean = x.mean(-1); rstd = 1/sqrt(var(x) + eps); out = (x - mean) * rstd * w + b
    backward: xhat = (x - mean) * rstd; g = dout * w
              dx += rstd * (g - mean(g) - xhat * mean(g * xhat))
              dw += sum_rows(dout * xhat); db += sum_rows(dout)

Fused residual variant (FastSpeech2's ``LayerNorm(Dropout(a) + res)``):

    pre = a * keep / (1 - p) + res        keep from the counter RNG (seed, element index)
    out, mean, rstd = layernorm(pre)
    backward: dpre = layernorm_backward(...); dres += dpre; da += dpre * keep / (1 - p)

The dropout mask is never stored: backward regenerates it from ``seed``. Backward *accumulates*
(+=) into dw/db and into dx/da/dres when given; passing ``None`` for dx (da, dres) writes a fresh
array instead — one pass less than zero-filling and accumulating — and backward returns the
input-gradient buffers it used.
Reductions over rows (dw, db) are split into a fixed number of row chunks, so results do not
depend on the thread count.
"""
from __future__ import annotations

from types import SimpleNamespace

import numba as nb
import numpy as np

from fastcpu.kernels._common import (PJIT, as_rows, drop_threshold, keep_mask_reference,
                                     seed_key)
from fastcpu.kernels._rng_nb import rand24

# auto = "numba": `python -m pytest benchmarks/test_kernels.py -k layernorm --benchmark-only`
# (2 threads, OpenBLAS vars unset, 2026-11-22) — see README "Kernel benchmarks". The fused
# residual forms on Cython since the parallel Numba kernels lost fastmath "reassoc" (bit-exact
# resume across cache states): (16, 714, 256) with dropout 0.1, fwd 6.4 -> 2.3 ms, bwd 6.7 ->
# 5.3 ms (Sapphire Rapids, 2 threads, 2026-12-02); Numba where the Cython build is missing.
AUTO = {"forward": "numba", "backward": "numba", "residual_forward": "cython",
        "residual_backward": "cython"}
NCHUNK = 64     # row chunks for the dw/db reduction (fixed: thread-count independent)


def _dropout_scale(p):
    return 1.0 / (1.0 - p) if p > 0 else 1.0


# ----------------------------------------------------------------------------- reference (NumPy)

def forward_reference(x, w, b, eps=1e-5):
    x2 = as_rows(x)
    mean = x2.mean(-1)
    xc = x2 - mean[:, None]
    rstd = 1.0 / np.sqrt((xc * xc).mean(-1) + eps)
    out = xc * rstd[:, None] * w + b
    return out.reshape(x.shape).astype(x.dtype, copy=False), mean.astype(x.dtype), \
        rstd.astype(x.dtype)


def backward_reference(dout, x, w, mean, rstd, dx, dw, db):
    dx = np.zeros_like(x) if dx is None else dx
    x2, d2, dx2 = as_rows(x), as_rows(dout), as_rows(dx)
    xhat = (x2 - mean[:, None]) * rstd[:, None]
    db += d2.sum(0)
    dw += (d2 * xhat).sum(0)
    g = d2 * w
    dx2 += rstd[:, None] * (g - g.mean(-1, keepdims=True) - xhat * (g * xhat).mean(-1, keepdims=True))
    return dx


def residual_forward_reference(a, res, w, b, p=0.0, seed=0, eps=1e-5):
    if p > 0:
        keep = keep_mask_reference(seed_key(seed), drop_threshold(p), a.shape)
        pre = np.where(keep, a * a.dtype.type(_dropout_scale(p)), 0).astype(a.dtype) + res
    else:
        pre = a + res
    out, mean, rstd = forward_reference(pre, w, b, eps)
    return out, pre, mean, rstd


def residual_backward_reference(dout, pre, w, mean, rstd, p, seed, da, dres, dw, db):
    da = np.zeros_like(pre) if da is None else da
    dres = np.zeros_like(pre) if dres is None else dres
    dpre = backward_reference(dout, pre, w, mean, rstd, None, dw, db)
    dres += dpre
    if p > 0:
        keep = keep_mask_reference(seed_key(seed), drop_threshold(p), pre.shape)
        da += np.where(keep, dpre * pre.dtype.type(_dropout_scale(p)), 0)
    else:
        da += dpre
    return da, dres


# ----------------------------------------------------------------------------- Numba

# Inner loops run over row slices with range(len): 2-D indexing with a signed index makes Numba
# emit a wraparound check per element that blocks vectorisation.

@nb.njit(**PJIT)
def _fwd_nb(x, w, b, eps, out, mean, rstd):
    # x (N, C) -> out (N, C), mean (N,), rstd (N,); parallel over rows
    N, C = x.shape
    for i in nb.prange(N):
        xr, orow = x[i], out[i]
        m = np.float32(0.0)
        for c in range(C):
            m += xr[c]
        m /= C
        v = np.float32(0.0)
        for c in range(C):
            d = xr[c] - m
            v += d * d
        s = np.float32(1.0) / np.sqrt(v / C + eps)
        for c in range(C):
            orow[c] = (xr[c] - m) * s * w[c] + b[c]
        mean[i] = m
        rstd[i] = s


@nb.njit(**PJIT)
def _res_fwd_nb(a, res, w, b, eps, key, thr, scale, out, pre, mean, rstd):
    # pre = dropout(a) + res; out = layernorm(pre); one pass per row
    N, C = a.shape
    for i in nb.prange(N):
        ar, rr, pr, orow = a[i], res[i], pre[i], out[i]
        base = i * C
        m = np.float32(0.0)
        for c in range(C):
            keep = rand24(key, base + c) >= thr
            xv = (ar[c] * scale if keep else np.float32(0.0)) + rr[c]
            pr[c] = xv
            m += xv
        m /= C
        v = np.float32(0.0)
        for c in range(C):
            d = pr[c] - m
            v += d * d
        s = np.float32(1.0) / np.sqrt(v / C + eps)
        for c in range(C):
            orow[c] = (pr[c] - m) * s * w[c] + b[c]
        mean[i] = m
        rstd[i] = s


@nb.njit(**PJIT)
def _bwd_nb(dout, x, w, mean, rstd, key, thr, scale, dx, dx2, dw, db, nchunk, acc):
    # dpre = LN backward; dx (+)= dpre; with dx2 rows (fused residual): dx2 (+)= dpre*keep*scale.
    # acc: accumulate (+=) or write (=). dw, db via per-chunk partials (chunk ch owns rows
    # [ch*N/nchunk, (ch+1)*N/nchunk)), summed in chunk order.
    N, C = x.shape
    pw = np.zeros((nchunk, C), dtype=np.float32)
    pb = np.zeros((nchunk, C), dtype=np.float32)
    fused = dx2.shape[0] > 0
    for ch in nb.prange(nchunk):
        pwc, pbc = pw[ch], pb[ch]
        for i in range(ch * N // nchunk, (ch + 1) * N // nchunk):
            xr, dr, dxr = x[i], dout[i], dx[i]
            m = mean[i]
            s = rstd[i]
            sg = np.float32(0.0)
            sgx = np.float32(0.0)
            for c in range(C):
                xh = (xr[c] - m) * s
                d = dr[c]
                pwc[c] += d * xh
                pbc[c] += d
                g = d * w[c]
                sg += g
                sgx += g * xh
            sg /= C
            sgx /= C
            if not fused:
                if acc:
                    for c in range(C):
                        dxr[c] += s * (dr[c] * w[c] - sg - (xr[c] - m) * s * sgx)
                else:
                    for c in range(C):
                        dxr[c] = s * (dr[c] * w[c] - sg - (xr[c] - m) * s * sgx)
            else:
                d2r = dx2[i]
                base = i * C
                for c in range(C):
                    dv = s * (dr[c] * w[c] - sg - (xr[c] - m) * s * sgx)
                    d2 = dv * scale if rand24(key, base + c) >= thr else np.float32(0.0)
                    if acc:
                        dxr[c] += dv
                        d2r[c] += d2
                    else:
                        dxr[c] = dv
                        d2r[c] = d2
    for ch in range(nchunk):
        for c in range(C):
            dw[c] += pw[ch, c]
            db[c] += pb[ch, c]


_EMPTY = np.zeros((0, 0), np.float32)


def _same_mode(da, dres):
    if (da is None) != (dres is None):
        raise ValueError("residual layernorm backward: pass both da and dres, or neither")
    return da is not None


def _nchunk(N):
    return max(1, min(NCHUNK, N))


def forward_numba(x, w, b, eps=1e-5):
    x2 = as_rows(x)
    N, C = x2.shape
    out = np.empty_like(x2)
    mean = np.empty(N, x.dtype)
    rstd = np.empty(N, x.dtype)
    if N:
        _fwd_nb(x2, w, b, x.dtype.type(eps), out, mean, rstd)
    return out.reshape(x.shape), mean, rstd


def backward_numba(dout, x, w, mean, rstd, dx, dw, db):
    acc = dx is not None
    dx = np.empty_like(x) if dx is None else dx
    x2 = as_rows(x)
    if x2.shape[0]:
        _bwd_nb(as_rows(dout), x2, w, mean, rstd, np.uint64(0), np.uint64(0), x.dtype.type(1),
                as_rows(dx), _EMPTY.astype(x.dtype), dw, db, _nchunk(x2.shape[0]), acc)
    return dx


def residual_forward_numba(a, res, w, b, p=0.0, seed=0, eps=1e-5):
    a2, r2 = as_rows(a), as_rows(res)
    N, C = a2.shape
    out = np.empty_like(a2)
    pre = np.empty_like(a2)
    mean = np.empty(N, a.dtype)
    rstd = np.empty(N, a.dtype)
    if N:
        _res_fwd_nb(a2, r2, w, b, a.dtype.type(eps), np.uint64(seed_key(seed)),
                    np.uint64(drop_threshold(p)), a.dtype.type(_dropout_scale(p)),
                    out, pre, mean, rstd)
    return out.reshape(a.shape), pre.reshape(a.shape), mean, rstd


def residual_backward_numba(dout, pre, w, mean, rstd, p, seed, da, dres, dw, db):
    acc = _same_mode(da, dres)
    da = np.empty_like(pre) if da is None else da
    dres = np.empty_like(pre) if dres is None else dres
    x2 = as_rows(pre)
    if x2.shape[0]:
        _bwd_nb(as_rows(dout), x2, w, mean, rstd, np.uint64(seed_key(seed)),
                np.uint64(drop_threshold(p)), pre.dtype.type(_dropout_scale(p)),
                as_rows(dres), as_rows(da), dw, db, _nchunk(x2.shape[0]), acc)
    return da, dres


# ----------------------------------------------------------------------------- Cython binding

def _cython():
    from fastcpu import runtime
    from fastcpu.kernels import _cybuild
    cy = _cybuild.module("layernorm")

    def forward(x, w, b, eps=1e-5):
        x2 = as_rows(x)
        N = x2.shape[0]
        out = np.empty_like(x2)
        mean = np.empty(N, np.float32)
        rstd = np.empty(N, np.float32)
        cy.forward(x2, x2, w, b, float(eps), 0, 0, 1.0, out, out, mean, rstd, runtime.num_threads())
        return out.reshape(x.shape), mean, rstd

    def backward(dout, x, w, mean, rstd, dx, dw, db):
        acc = dx is not None
        dx = np.empty_like(x) if dx is None else dx
        x2 = as_rows(x)
        cy.backward(as_rows(dout), x2, w, mean, rstd, 0, 0, 1.0, as_rows(dx), as_rows(dx), 0,
                    dw, db, _nchunk(x2.shape[0]), acc, runtime.num_threads())
        return dx

    def residual_forward(a, res, w, b, p=0.0, seed=0, eps=1e-5):
        a2 = as_rows(a)
        N = a2.shape[0]
        out, pre = np.empty_like(a2), np.empty_like(a2)
        mean = np.empty(N, np.float32)
        rstd = np.empty(N, np.float32)
        cy.forward(a2, as_rows(res), w, b, float(eps), seed_key(seed), drop_threshold(p),
                   _dropout_scale(p), out, pre, mean, rstd, runtime.num_threads())
        return out.reshape(a.shape), pre.reshape(a.shape), mean, rstd

    def residual_backward(dout, pre, w, mean, rstd, p, seed, da, dres, dw, db):
        acc = _same_mode(da, dres)
        da = np.empty_like(pre) if da is None else da
        dres = np.empty_like(pre) if dres is None else dres
        x2 = as_rows(pre)
        cy.backward(as_rows(dout), x2, w, mean, rstd, seed_key(seed), drop_threshold(p),
                    _dropout_scale(p), as_rows(dres), as_rows(da), 1, dw, db,
                    _nchunk(x2.shape[0]), acc, runtime.num_threads())
        return da, dres

    return SimpleNamespace(forward=forward, backward=backward, residual_forward=residual_forward,
                           residual_backward=residual_backward)


BACKENDS = {
    "reference": lambda: SimpleNamespace(
        forward=forward_reference, backward=backward_reference,
        residual_forward=residual_forward_reference,
        residual_backward=residual_backward_reference),
    "numba": lambda: SimpleNamespace(
        forward=forward_numba, backward=backward_numba,
        residual_forward=residual_forward_numba, residual_backward=residual_backward_numba),
    "cython": _cython,
}
