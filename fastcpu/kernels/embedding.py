"""Embedding lookup and its scatter-add backward.

Shapes: weight (V, C); ids int (...,); out (..., C).

    forward:  out[n] = weight[ids[n]]
    backward: dweight[ids[n]] += dout[n]   for every n (ids may repeat), except
              rows equal to padding_idx, which get no gradient (torch's padding_idx rule)

The Numba backward parallelises over channel blocks (each thread owns a column range of dweight),
so repeated ids never race.
"""
from types import SimpleNamespace

import numba as nb
import numpy as np

from fastcpu.kernels._common import PJIT

# auto = "numba": `python -m pytest benchmarks/test_kernels.py -k embedding --benchmark-only`
AUTO = "numba"


def _check(weight, ids):
    ids = np.asarray(ids)
    if ids.size and (ids.min() < 0 or ids.max() >= weight.shape[0]):
        raise IndexError(f"embedding: ids must be in [0, {weight.shape[0]}), got range "
                         f"[{ids.min()}, {ids.max()}]")
    return ids.astype(np.int64, copy=False)


def forward_reference(weight, ids):
    return weight[_check(weight, ids)]


def backward_reference(dout, ids, dweight, padding_idx=None):
    ids = np.asarray(ids).reshape(-1)
    d = dout.reshape(-1, dout.shape[-1])
    if padding_idx is not None:
        keep = ids != padding_idx
        ids, d = ids[keep], d[keep]
    np.add.at(dweight, ids, d)


@nb.njit(**PJIT)
def _gather_nb(weight, ids, out):
    for n in nb.prange(ids.shape[0]):
        out[n, :] = weight[ids[n], :]


@nb.njit(**PJIT)
def _scatter_nb(dout, ids, dweight, pad, nblk):
    N, C = dout.shape
    for blk in nb.prange(nblk):
        c0 = blk * C // nblk
        c1 = (blk + 1) * C // nblk
        for n in range(N):
            i = ids[n]
            if i != pad:
                for c in range(c0, c1):
                    dweight[i, c] += dout[n, c]


def forward_numba(weight, ids):
    ids = _check(weight, ids)
    out = np.empty(ids.shape + (weight.shape[1],), weight.dtype)
    if ids.size:
        _gather_nb(weight, ids.reshape(-1), out.reshape(-1, weight.shape[1]))
    return out


def backward_numba(dout, ids, dweight, padding_idx=None):
    ids = np.ascontiguousarray(ids, dtype=np.int64).reshape(-1)
    if ids.size:
        C = dweight.shape[1]
        _scatter_nb(np.ascontiguousarray(dout).reshape(-1, C), ids, dweight,
                    -1 if padding_idx is None else int(padding_idx), max(1, min(C // 16, 64)))


BACKENDS = {
    "reference": lambda: SimpleNamespace(forward=forward_reference, backward=backward_reference),
    "numba": lambda: SimpleNamespace(forward=forward_numba, backward=backward_numba),
}
