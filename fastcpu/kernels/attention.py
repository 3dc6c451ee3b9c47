"""Multi-head self-attention core with key padding, flash-style (blocked, online softmax).

Shapes: q, k, v, out (B, T, H, D) — the (B, T, H*D) projections viewed per head; lengths (B,) int
(keys s >= lengths[b] are padding); lse (B, H, T) float32, the log-sum-exp of each score row.

    forward:  s[t, s'] = scale * q[t] . k[s']   for s' < L (padding keys get -inf)
              lse[t]   = log sum_s' exp(s[t, s'])
              out[t]   = sum_s' exp(s[t, s'] - lse[t]) v[s']
    backward: p = exp(s - lse); Di = dout[t] . out[t]
              dv[s'] += sum_t p[t, s'] dout[t]
              ds = p * (dout[t] . v[s'] - Di)
              dq[t] += scale * sum_s' ds[t, s'] k[s'];  dk[s'] += scale * sum_t ds[t, s'] q[t]

Every query row (padding rows too, as the reference model does) attends to the valid keys; a
sequence of length 0 has no valid key: its output is 0, its lse -inf and its gradients 0 (PyTorch
would give NaN there). Only the O(T) lse is kept for backward, never the T x T matrix: the fast
backends walk (query x key) tiles with an online softmax and recompute the tiles in backward. They run
one (batch, head) pair per thread, with BLAS single-threaded inside (runtime.blas_single), and
skip padding keys entirely. Backward accumulates (+=) into dq, dk, dv.

``skip_padded_queries=True`` also skips query rows t >= L: their output is 0 and their lse -inf
(no gradient flows through them). FastSpeech2 zeroes those rows right after attention, so inside
its blocks this is exact and saves the padding share of the work.
"""
from __future__ import annotations

import math
from types import SimpleNamespace

import numba as nb
import numpy as np

from fastcpu.kernels._common import PJIT

# auto = "cython": `python -m pytest benchmarks/test_kernels.py -k attention --benchmark-only`
# (2 threads, OpenBLAS vars unset, 2026-11-22) — see README "Kernel benchmarks". Under bf16
# precision, where the CPU has AMX, the same tile walk runs with every tile product on AMX
# (kernels/attn_amx.h: bf16 operands, fp32 softmax and accumulators): B=16 T=400 ragged
# fwd+bwd 16.1 ms against 45.7 ms for these fp32 tiles and 30.6 ms for PyTorch's bf16 SDPA (the
# command above, Sapphire Rapids, 2026-12-02). Without AMX bf16 attention is the fp32 tiles:
# AVX512-BF16's vdpbf16ps issues at half FMA's rate on Sapphire Rapids (as many FLOPs per
# cycle as fp32, measured), and whole (batch, head) score GEMMs in bf16 on oneDNN measured 2x
# slower than the tiles (B=16 T=400 ragged, fwd+bwd: 105.6 vs 52.7 ms, AVX512-BF16, 2026-12-01).
AUTO = "cython"
# Cython tiles: 64 x 64 measured best at both benchmark shapes (fwd+bwd, 2 threads, 2026-11-22:
# B=16 T=714 66 ms vs 70 at 128x128; B=8 T=346 14.6 vs 19.0 ms).
BQ = 64     # query rows per tile
BK = 64     # keys per tile
NB_BQ = 64  # the Numba version's tiles (its per-tile arrays favour 64 x 128: 59 vs 81 ms at 128)
NB_BK = 128


def _check(q, k, v, lengths):
    if q.ndim != 4 or q.shape != k.shape or q.shape != v.shape:
        raise ValueError(f"attention: q, k, v must share a (B, T, H, D) shape; got {q.shape}, "
                         f"{k.shape}, {v.shape}")
    B, T = q.shape[:2]
    lengths = np.asarray(lengths, dtype=np.int64)
    if lengths.shape != (B,) or (lengths < 0).any() or (lengths > T).any():
        raise ValueError(f"attention: lengths must be {B} ints in [0, {T}], got {lengths}")
    return lengths


def _scale(q, scale):
    return 1.0 / math.sqrt(q.shape[3]) if scale is None else float(scale)


# ----------------------------------------------------------------------------- reference (NumPy)

def _scores_reference(q, k, lengths, scale):
    T = q.shape[1]
    s = np.einsum("bthd,bshd->bhts", q, k) * q.dtype.type(scale)
    pad = np.arange(T)[None, :] >= lengths[:, None]                     # (B, S) True = padding
    return np.where(pad[:, None, None, :], -np.inf, s).astype(q.dtype)


def _query_mask(q, lengths):
    return (np.arange(q.shape[1])[None, :] < lengths[:, None])        # (B, T) True = real row


def forward_reference(q, k, v, lengths, scale=None, skip_padded_queries=False):
    lengths = _check(q, k, v, lengths)
    scale = _scale(q, scale)
    s = _scores_reference(q, k, lengths, scale)
    m = s.max(-1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0)
    e = np.exp(s - m)
    l_ = e.sum(-1, keepdims=True)
    p = e / np.where(l_ > 0, l_, 1)
    out = np.einsum("bhts,bshd->bthd", p, v).astype(q.dtype)
    with np.errstate(divide="ignore"):
        lse = np.where(l_[..., 0] > 0, m[..., 0] + np.log(l_[..., 0]), -np.inf).astype(q.dtype)
    if skip_padded_queries:
        qm = _query_mask(q, lengths)
        out = np.where(qm[:, :, None, None], out, 0).astype(q.dtype)
        lse = np.where(qm[:, None, :], lse, -np.inf).astype(q.dtype)
    return out, lse


def backward_reference(dout, q, k, v, out, lse, lengths, scale, dq, dk, dv,
                       skip_padded_queries=False):
    lengths = _check(q, k, v, lengths)
    scale = _scale(q, scale)
    s = _scores_reference(q, k, lengths, scale)
    if skip_padded_queries:        # padded query rows carry no gradient
        dout = np.where(_query_mask(q, lengths)[:, :, None, None], dout, 0).astype(dout.dtype)
    finite = np.isfinite(lse)[..., None]
    p = np.where(finite, np.exp(s - np.where(finite, lse[..., None], 0)), 0)
    dv += np.einsum("bhts,bthd->bshd", p, dout)
    dp = np.einsum("bthd,bshd->bhts", dout, v)
    di = np.einsum("bthd,bthd->bht", dout, out)[..., None]
    ds = p * (dp - di)
    dq += np.einsum("bhts,bshd->bthd", ds, k) * scale
    dk += np.einsum("bhts,bthd->bshd", ds, q) * scale


# ----------------------------------------------------------------------------- Numba

@nb.njit(**PJIT)
def _fwd_nb(q, k, v, lengths, scale, skipq, out, lse):
    B, T, H, D = q.shape
    for bh in nb.prange(B * H):
        b = bh // H
        h = bh - b * H
        L = lengths[b]
        if L == 0:
            for t in range(T):
                lse[b, h, t] = -np.inf
                for d in range(D):
                    out[b, t, h, d] = 0
            continue
        Tq = L if skipq else T
        nqb = (Tq + NB_BQ - 1) // NB_BQ
        for t in range(Tq, T):
            lse[b, h, t] = -np.inf
            for d in range(D):
                out[b, t, h, d] = 0
        nkb = (L + NB_BK - 1) // NB_BK
        # gather this head into tiles: Qt (nqb, NB_BQ, D), Kt/Vt (nkb, NB_BK, D); tails zero
        Qt = np.zeros((nqb, NB_BQ, D), np.float32)
        Kt = np.zeros((nkb, NB_BK, D), np.float32)
        Vt = np.zeros((nkb, NB_BK, D), np.float32)
        for t in range(Tq):
            for d in range(D):
                Qt[t // NB_BQ, t % NB_BQ, d] = q[b, t, h, d]
        for t in range(L):
            for d in range(D):
                Kt[t // NB_BK, t % NB_BK, d] = k[b, t, h, d]
                Vt[t // NB_BK, t % NB_BK, d] = v[b, t, h, d]
        mrow = np.empty(NB_BQ, np.float32)
        lrow = np.empty(NB_BQ, np.float32)
        for i in range(nqb):
            acc = np.zeros((NB_BQ, D), np.float32)
            mrow[:] = -np.inf
            lrow[:] = 0
            for j in range(nkb):
                nk = min(NB_BK, L - j * NB_BK)
                S = np.dot(Qt[i], Kt[j].T)                     # (NB_BQ, NB_BK) raw scores
                for r in range(NB_BQ):
                    mx = mrow[r]
                    for c in range(nk):
                        sc = S[r, c] * scale
                        S[r, c] = sc
                        if sc > mx:
                            mx = sc
                    corr = np.exp(mrow[r] - mx)
                    sm = np.float32(0.0)
                    for c in range(nk):
                        pv = np.exp(S[r, c] - mx)
                        S[r, c] = pv
                        sm += pv
                    for c in range(nk, NB_BK):
                        S[r, c] = 0
                    lrow[r] = lrow[r] * corr + sm
                    mrow[r] = mx
                    for d in range(D):
                        acc[r, d] *= corr
                acc += np.dot(S, Vt[j])
            for r in range(min(NB_BQ, Tq - i * NB_BQ)):
                t = i * NB_BQ + r
                inv = np.float32(1.0) / lrow[r]
                for d in range(D):
                    out[b, t, h, d] = acc[r, d] * inv
                lse[b, h, t] = mrow[r] + np.log(lrow[r])


@nb.njit(**PJIT)
def _bwd_nb(dout, q, k, v, out, lse, lengths, scale, skipq, dq, dk, dv):
    B, T, H, D = q.shape
    for bh in nb.prange(B * H):
        b = bh // H
        h = bh - b * H
        L = lengths[b]
        if L == 0:
            continue
        Tq = L if skipq else T
        nqb = (Tq + NB_BQ - 1) // NB_BQ
        nkb = (L + NB_BK - 1) // NB_BK
        Qt = np.zeros((nqb, NB_BQ, D), np.float32)
        dOt = np.zeros((nqb, NB_BQ, D), np.float32)
        Kt = np.zeros((nkb, NB_BK, D), np.float32)
        Vt = np.zeros((nkb, NB_BK, D), np.float32)
        dKt = np.zeros((nkb, NB_BK, D), np.float32)
        dVt = np.zeros((nkb, NB_BK, D), np.float32)
        Di = np.zeros((nqb, NB_BQ), np.float32)
        Lq = np.zeros((nqb, NB_BQ), np.float32)
        for t in range(Tq):
            s = np.float32(0.0)
            for d in range(D):
                Qt[t // NB_BQ, t % NB_BQ, d] = q[b, t, h, d]
                dOt[t // NB_BQ, t % NB_BQ, d] = dout[b, t, h, d]
                s += dout[b, t, h, d] * out[b, t, h, d]
            Di[t // NB_BQ, t % NB_BQ] = s
            Lq[t // NB_BQ, t % NB_BQ] = lse[b, h, t]
        for t in range(L):
            for d in range(D):
                Kt[t // NB_BK, t % NB_BK, d] = k[b, t, h, d]
                Vt[t // NB_BK, t % NB_BK, d] = v[b, t, h, d]
        for i in range(nqb):
            nq = min(NB_BQ, Tq - i * NB_BQ)
            dQi = np.zeros((NB_BQ, D), np.float32)
            for j in range(nkb):
                nk = min(NB_BK, L - j * NB_BK)
                P = np.dot(Qt[i], Kt[j].T)                     # scores -> probabilities
                dP = np.dot(dOt[i], Vt[j].T)                   # -> dS
                for r in range(NB_BQ):
                    if r < nq:
                        for c in range(NB_BK):
                            if c < nk:
                                pv = np.exp(P[r, c] * scale - Lq[i, r])
                                P[r, c] = pv
                                dP[r, c] = pv * (dP[r, c] - Di[i, r]) * scale
                            else:
                                P[r, c] = 0
                                dP[r, c] = 0
                    else:
                        for c in range(NB_BK):
                            P[r, c] = 0
                            dP[r, c] = 0
                dVt[j] += np.dot(P.T, dOt[i])
                dQi += np.dot(dP, Kt[j])
                dKt[j] += np.dot(dP.T, Qt[i])
            for r in range(nq):
                t = i * NB_BQ + r
                for d in range(D):
                    dq[b, t, h, d] += dQi[r, d]
        for t in range(L):
            for d in range(D):
                dk[b, t, h, d] += dKt[t // NB_BK, t % NB_BK, d]
                dv[b, t, h, d] += dVt[t // NB_BK, t % NB_BK, d]


def forward_numba(q, k, v, lengths, scale=None, skip_padded_queries=False):
    from fastcpu import runtime
    lengths = _check(q, k, v, lengths)
    B, T, H, D = q.shape
    out = np.empty(q.shape, q.dtype)
    lse = np.empty((B, H, T), np.float32)
    if out.size:
        with runtime.blas_single():
            _fwd_nb(q, k, v, lengths, np.float32(_scale(q, scale)), bool(skip_padded_queries),
                    out, lse)
    return out, lse


def backward_numba(dout, q, k, v, out, lse, lengths, scale, dq, dk, dv,
                   skip_padded_queries=False):
    from fastcpu import runtime
    lengths = _check(q, k, v, lengths)
    if q.size:
        with runtime.blas_single():
            _bwd_nb(np.ascontiguousarray(dout), q, k, v, out, lse, lengths,
                    np.float32(_scale(q, scale)), bool(skip_padded_queries), dq, dk, dv)


# ----------------------------------------------------------------------------- Cython binding

_AMX_STATE = {}


def amx_status() -> str:
    """"ok" when bf16 attention runs on AMX tiles here, else why not (the fp32 tiles run)."""
    if "status" not in _AMX_STATE:
        from fastcpu.kernels import _cybuild, gemm
        flags = gemm._cpu_flags()
        if not {"amx_bf16", "amx_tile", "avx512_bf16"} <= flags:
            st = "no AMX-BF16 on this CPU"
        else:
            try:
                rc = _cybuild.module("attention").amx_init()
            except Exception as e:                       # noqa: BLE001 - reported as the reason
                rc, st = None, f"Cython attention unavailable ({e})"
            if rc is not None:
                st = {0: "ok", -1: "the kernel refused the AMX tile state (arch_prctl)",
                      -2: "not built with AMX (x86-64 Linux, GCC >= 11, an AVX-512 "
                                 "kernel variant)"}.get(rc, str(rc))
        _AMX_STATE["status"] = st
    return _AMX_STATE["status"]


def _amx(cy, D) -> bool:
    """bf16 precision, D a multiple of 32 and AMX usable: the bf16 tiles (``attn_amx.h``)."""
    from fastcpu.kernels import gemm
    return (gemm.current() == "bf16" and D % 32 == 0 and BQ % 32 == 0 and BK % 32 == 0
            and amx_status() == "ok")


def _cython():
    from fastcpu import runtime
    from fastcpu.kernels import _cybuild
    cy = _cybuild.module("attention")

    def forward(q, k, v, lengths, scale=None, skip_padded_queries=False):
        lengths = _check(q, k, v, lengths)
        B, T, H, D = q.shape
        out = np.empty(q.shape, q.dtype)
        lse = np.empty((B, H, T), np.float32)
        if out.size:
            with runtime.blas_single():
                cy.forward(q, k, v, lengths, _scale(q, scale), out, lse, BQ, BK,
                           bool(skip_padded_queries), runtime.num_threads(), _amx(cy, D))
        return out, lse

    def backward(dout, q, k, v, out, lse, lengths, scale, dq, dk, dv,
                 skip_padded_queries=False):
        lengths = _check(q, k, v, lengths)
        if q.size:
            with runtime.blas_single():
                cy.backward(np.ascontiguousarray(dout), q, k, v, out, lse, lengths,
                            _scale(q, scale), dq, dk, dv, BQ, BK, bool(skip_padded_queries),
                            runtime.num_threads(), _amx(cy, q.shape[3]))

    return SimpleNamespace(forward=forward, backward=backward)


BACKENDS = {
    "reference": lambda: SimpleNamespace(forward=forward_reference, backward=backward_reference),
    "numba": lambda: SimpleNamespace(forward=forward_numba, backward=backward_numba),
    "cython": _cython,
}
