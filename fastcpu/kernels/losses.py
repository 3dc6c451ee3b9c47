"""Masked L1 and MSE losses over valid time steps (the reference's masked_select + mean).

Shapes: pred, target (B, T, ...); lengths (B,) — rows t < lengths[b] are valid. The loss is the
mean over every valid element (n = sum(lengths) * prod(trailing dims)); n = 0 gives loss 0.

    l1:   loss = sum |pred - target| / n;     dpred += dloss * sign(pred - target) / n
    mse:  loss = sum (pred - target)^2 / n;   dpred += dloss * 2 (pred - target) / n
(sign(0) = 0, as torch's L1 gradient.) Sums are accumulated in float64.
"""
from types import SimpleNamespace

import numba as nb
import numpy as np

from fastcpu.kernels._common import PJIT

# auto = "numba": `python -m pytest benchmarks/test_kernels.py -k losses --benchmark-only`
AUTO = "numba"


def _valid(pred, lengths):
    lengths = np.asarray(lengths, dtype=np.int64)
    B, T = pred.shape[:2]
    if lengths.shape != (B,) or (lengths < 0).any() or (lengths > T).any():
        raise ValueError(f"masked loss: lengths must be {B} ints in [0, {T}], got {lengths}")
    inner = int(np.prod(pred.shape[2:], dtype=np.int64))
    return lengths, int(lengths.sum()) * inner, inner


def _mask(pred, lengths):
    m = np.arange(pred.shape[1])[None, :] < lengths[:, None]
    return m.reshape(m.shape + (1,) * (pred.ndim - 2))


def l1_forward_reference(pred, target, lengths):
    lengths, n, _ = _valid(pred, lengths)
    return float(np.where(_mask(pred, lengths), np.abs(pred.astype(np.float64) - target), 0).sum()
                 / max(n, 1))


def l1_backward_reference(dloss, pred, target, lengths, dpred):
    lengths, n, _ = _valid(pred, lengths)
    dpred += np.where(_mask(pred, lengths), np.sign(pred - target), 0) * pred.dtype.type(
        dloss / max(n, 1))


def mse_forward_reference(pred, target, lengths):
    lengths, n, _ = _valid(pred, lengths)
    d = pred.astype(np.float64) - target
    return float(np.where(_mask(pred, lengths), d * d, 0).sum() / max(n, 1))


def mse_backward_reference(dloss, pred, target, lengths, dpred):
    lengths, n, _ = _valid(pred, lengths)
    dpred += np.where(_mask(pred, lengths), 2 * (pred - target), 0) * pred.dtype.type(
        dloss / max(n, 1))


@nb.njit(**PJIT)
def _fwd_nb(pred, target, lengths, squared):
    # pred, target (B, T, K); per-batch float64 partial sums
    B = pred.shape[0]
    part = np.zeros(B)
    for b in nb.prange(B):
        s = 0.0
        for t in range(lengths[b]):
            for j in range(pred.shape[2]):
                d = np.float64(pred[b, t, j]) - np.float64(target[b, t, j])
                s += d * d if squared else abs(d)
        part[b] = s
    return part.sum()


@nb.njit(**PJIT)
def _bwd_nb(pred, target, lengths, coef, squared, dpred):
    for b in nb.prange(pred.shape[0]):
        for t in range(lengths[b]):
            for j in range(pred.shape[2]):
                d = pred[b, t, j] - target[b, t, j]
                if squared:
                    dpred[b, t, j] += 2 * coef * d
                elif d > 0:
                    dpred[b, t, j] += coef
                elif d < 0:
                    dpred[b, t, j] -= coef


def _as3(a, inner):
    return np.ascontiguousarray(a).reshape(a.shape[0], a.shape[1], inner)


def _numba(squared):
    def fwd(pred, target, lengths):
        lengths, n, inner = _valid(pred, lengths)
        if n == 0:
            return 0.0
        return float(_fwd_nb(_as3(pred, inner), _as3(target, inner), lengths, squared) / n)

    def bwd(dloss, pred, target, lengths, dpred):
        lengths, n, inner = _valid(pred, lengths)
        if n:
            _bwd_nb(_as3(pred, inner), _as3(target, inner), lengths,
                    pred.dtype.type(dloss / n), squared, dpred.reshape(_as3(pred, inner).shape))
    return fwd, bwd


def _numba_ns():
    l1f, l1b = _numba(False)
    msef, mseb = _numba(True)
    return SimpleNamespace(l1_forward=l1f, l1_backward=l1b, mse_forward=msef, mse_backward=mseb)


BACKENDS = {
    "reference": lambda: SimpleNamespace(
        l1_forward=l1_forward_reference, l1_backward=l1_backward_reference,
        mse_forward=mse_forward_reference, mse_backward=mse_backward_reference),
    "numba": _numba_ns,
}
