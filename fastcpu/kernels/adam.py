"""Fused global-norm gradient clipping + Adam over one flat float32 buffer.

Buffers: params, grads, m (exp_avg), v (exp_avg_sq), all (P,) float32 and C-contiguous — the flat
buffers every parameter and gradient of a model are views into (DESIGN.md).

PyTorch semantics, exactly (``clip_grad_norm_`` then ``torch.optim.Adam``, foreach/for-loop path):

    norm  = sqrt(sum(g^2))                         (pre-clip; float64 accumulation here)
    coef  = min(max_norm / (norm + 1e-6), 1)       (clip_grad_norm_ multiplies by the clamped coef)
    g     = g * coef (+ weight_decay * p)          (L2 decay added to the gradient, as Adam does)
    m     = m + (1 - beta1) * (g - m)              (torch: exp_avg.lerp_(g, 1 - beta1))
    v     = beta2 * v + (1 - beta2) * g * g
    denom = sqrt(v) / sqrt(1 - beta2^t) + eps
    p     = p - lr / (1 - beta1^t) * m / denom

The scalar maths (bias corrections, clip coefficient) stays in Python. A non-finite norm means no
step at all: parameters and moments are left untouched and the norm is returned for the caller to
log. The gradient buffer is never modified.
"""
from __future__ import annotations

import math
from types import SimpleNamespace

import numba as nb
import numpy as np

from fastcpu.kernels._common import PJIT

# auto = "numba": `python -m pytest benchmarks/test_kernels.py -k adam --benchmark-only`
# (2 threads, OpenBLAS vars unset, 2026-11-22) — see README "Kernel benchmarks".
AUTO = "numba"
NCHUNK = 256    # fixed chunks for the norm reduction: same result for any thread count


def _scalars(step, lr, beta1, beta2, norm, max_norm):
    if step < 1:
        raise ValueError(f"Adam step must be >= 1 (1 for the first update), got {step}")
    coef = 1.0 if max_norm is None else min(max_norm / (norm + 1e-6), 1.0)
    step_size = lr / (1.0 - beta1 ** step)
    bc2_sqrt = math.sqrt(1.0 - beta2 ** step)
    return coef, step_size, bc2_sqrt


def _check(params, grads, m, v):
    for name, a in (("params", params), ("grads", grads), ("m", m), ("v", v)):
        if a.ndim != 1 or not a.flags.c_contiguous:
            raise ValueError(f"clip_adam: {name} must be a flat C-contiguous buffer")
        if a.shape != params.shape:
            raise ValueError(f"clip_adam: {name} has {a.shape[0]} elements, params has "
                             f"{params.shape[0]}")


# ----------------------------------------------------------------------------- reference (NumPy)

def grad_norm_reference(grads):
    g = grads.astype(np.float64)
    return float(np.sqrt(np.dot(g, g)))


def clip_adam_reference(params, grads, m, v, *, step, lr, beta1=0.9, beta2=0.999, eps=1e-8,
                        weight_decay=0.0, max_norm=None):
    _check(params, grads, m, v)
    norm = grad_norm_reference(grads)
    if not math.isfinite(norm):
        return norm
    coef, step_size, bc2_sqrt = _scalars(step, lr, beta1, beta2, norm, max_norm)
    t = params.dtype.type
    g = grads * t(coef)
    if weight_decay:
        g = g + t(weight_decay) * params
    m += t(1 - beta1) * (g - m)
    v *= t(beta2)
    v += t(1 - beta2) * (g * g)
    denom = np.sqrt(v) / t(bc2_sqrt) + t(eps)
    params -= t(step_size) * m / denom
    return norm


# ----------------------------------------------------------------------------- Numba

# Loops run over per-chunk slices with range(len): a signed range(a, b) index makes Numba emit a
# negative-index check that blocks vectorisation (measured 9x slower for the norm pass).

@nb.njit(**PJIT)
def _sumsq_nb(g, nchunk):
    n = g.shape[0]
    part = np.zeros(nchunk, dtype=np.float64)
    for ch in nb.prange(nchunk):
        gs = g[ch * n // nchunk:(ch + 1) * n // nchunk]
        s = 0.0
        for i0 in range(0, gs.shape[0], 512):     # float32 runs of 512, summed in float64
            blk = gs[i0:i0 + 512]
            t = np.float32(0.0)
            for i in range(blk.shape[0]):
                t += blk[i] * blk[i]
            s += t
        part[ch] = s
    return part.sum()


@nb.njit(**PJIT)
def _adam_nb(p, g, m, v, coef, step_size, a1, beta2, a2, bc2_sqrt, eps, wd, nchunk):
    # a1 = 1 - beta1, a2 = 1 - beta2 computed in double (as torch's Python scalars are)
    n = p.shape[0]
    for ch in nb.prange(nchunk):
        a, b = ch * n // nchunk, (ch + 1) * n // nchunk
        ps, gs, ms, vs = p[a:b], g[a:b], m[a:b], v[a:b]
        for i in range(ps.shape[0]):
            gi = gs[i] * coef + wd * ps[i]
            mi = ms[i] + a1 * (gi - ms[i])
            vi = beta2 * vs[i] + a2 * (gi * gi)
            ms[i] = mi
            vs[i] = vi
            ps[i] -= step_size * mi / (np.sqrt(vi) / bc2_sqrt + eps)


def grad_norm_numba(grads):
    return float(np.sqrt(_sumsq_nb(grads, NCHUNK))) if grads.size else 0.0


def clip_adam_numba(params, grads, m, v, *, step, lr, beta1=0.9, beta2=0.999, eps=1e-8,
                    weight_decay=0.0, max_norm=None):
    _check(params, grads, m, v)
    norm = grad_norm_numba(grads)
    if not math.isfinite(norm):
        return norm
    coef, step_size, bc2_sqrt = _scalars(step, lr, beta1, beta2, norm, max_norm)
    f = np.float32
    _adam_nb(params, grads, m, v, f(coef), f(step_size), f(1 - beta1), f(beta2), f(1 - beta2),
             f(bc2_sqrt), f(eps),
             f(weight_decay), NCHUNK)
    return norm


# ----------------------------------------------------------------------------- Cython binding

def _cython():
    from fastcpu import runtime
    from fastcpu.kernels import _cybuild
    cy = _cybuild.module("adam")

    def grad_norm(grads):
        return float(np.sqrt(cy.sumsq(grads, NCHUNK, runtime.num_threads()))) if grads.size else 0.0

    def clip_adam(params, grads, m, v, *, step, lr, beta1=0.9, beta2=0.999, eps=1e-8,
                  weight_decay=0.0, max_norm=None):
        _check(params, grads, m, v)
        norm = grad_norm(grads)
        if not math.isfinite(norm):
            return norm
        coef, step_size, bc2_sqrt = _scalars(step, lr, beta1, beta2, norm, max_norm)
        cy.adam(params, grads, m, v, coef, step_size, 1 - beta1, beta2, 1 - beta2, bc2_sqrt, eps,
                weight_decay,
                runtime.num_threads())
        return norm

    return SimpleNamespace(grad_norm=grad_norm, clip_adam=clip_adam)


BACKENDS = {
    "reference": lambda: SimpleNamespace(grad_norm=grad_norm_reference,
                                         clip_adam=clip_adam_reference),
    "numba": lambda: SimpleNamespace(grad_norm=grad_norm_numba, clip_adam=clip_adam_numba),
    "cython": _cython,
}
