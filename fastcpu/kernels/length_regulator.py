"""Length regulator: repeat each phoneme's vector by its duration (FastSpeech2's expansion).

Shapes: x (B, L, C); durations (B, L) ints (negative counts as 0); out (B, T, C); mel_len (B,).

    forward:  out[b] = concat_i repeat(x[b, i], max(d[b, i], 0)), zero-padded to T, where
              T = max_len if given (longer expansions are truncated, as the reference's F.pad with
              a negative amount does) else the longest expansion; mel_len[b] = min(sum d, T)
    backward: dx[b, i] += sum of dout[b, t] over the frames t that row i was copied to (< T)
"""
from types import SimpleNamespace

import numba as nb
import numpy as np

from fastcpu.kernels._common import PJIT

# auto = "numba": `python -m pytest benchmarks/test_kernels.py -k length_regulator --benchmark-only`
AUTO = "numba"


def _prep(x, durations, max_len):
    d = np.maximum(np.asarray(durations).astype(np.int64), 0)
    if d.shape != x.shape[:2]:
        raise ValueError(f"length_regulator: durations {d.shape} do not match x {x.shape[:2]}")
    total = d.sum(1)
    T = int(total.max(initial=0)) if max_len is None else int(max_len)
    return d, np.minimum(total, T), T


def forward_reference(x, durations, max_len=None):
    d, mel_len, T = _prep(x, durations, max_len)
    out = np.zeros((x.shape[0], T, x.shape[2]), x.dtype)
    for b in range(x.shape[0]):
        e = np.repeat(x[b], d[b], axis=0)[:T]
        out[b, :len(e)] = e
    return out, mel_len


def backward_reference(dout, durations, dx):
    d = np.maximum(np.asarray(durations).astype(np.int64), 0)
    T = dout.shape[1]
    for b in range(dx.shape[0]):
        idx = np.repeat(np.arange(d.shape[1]), d[b])[:T]
        np.add.at(dx[b], idx, dout[b, :len(idx)])


@nb.njit(**PJIT)
def _fwd_nb(x, d, T, out):
    B, L, C = x.shape
    for b in nb.prange(B):
        t = 0
        for i in range(L):
            for _ in range(d[b, i]):
                if t >= T:
                    break
                out[b, t, :] = x[b, i, :]
                t += 1
        for tt in range(t, T):
            out[b, tt, :] = 0


@nb.njit(**PJIT)
def _bwd_nb(dout, d, dx):
    B, L, C = dx.shape
    T = dout.shape[1]
    for b in nb.prange(B):
        t = 0
        for i in range(L):
            for _ in range(d[b, i]):
                if t >= T:
                    break
                for c in range(C):
                    dx[b, i, c] += dout[b, t, c]
                t += 1


def forward_numba(x, durations, max_len=None):
    d, mel_len, T = _prep(x, durations, max_len)
    out = np.empty((x.shape[0], T, x.shape[2]), x.dtype)
    if out.size:
        _fwd_nb(np.ascontiguousarray(x), d, T, out)
    return out, mel_len


def backward_numba(dout, durations, dx):
    d = np.maximum(np.asarray(durations).astype(np.int64), 0)
    if dx.size:
        _bwd_nb(np.ascontiguousarray(dout), d, dx)


BACKENDS = {
    "reference": lambda: SimpleNamespace(forward=forward_reference, backward=backward_reference),
    "numba": lambda: SimpleNamespace(forward=forward_numba, backward=backward_numba),
}
