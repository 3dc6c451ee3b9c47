"""The DTW accumulation (Numba): acc[i, j] = d[i, j] + min(acc[i-1, j-1], acc[i-1, j],
acc[i, j-1]), acc[0, 0] = d[0, 0]; serial (each cell needs its three predecessors)."""
import numba as nb
import numpy as np

from fastcpu.kernels._common import JIT


@nb.njit(**JIT)
def _accumulate_nb(d, acc):
    N, M = d.shape
    for i in range(N):
        for j in range(M):
            if i == 0 and j == 0:
                acc[i, j] = d[i, j]
                continue
            best = np.inf
            if i > 0 and j > 0 and acc[i - 1, j - 1] < best:
                best = acc[i - 1, j - 1]
            if i > 0 and acc[i - 1, j] < best:
                best = acc[i - 1, j]
            if j > 0 and acc[i, j - 1] < best:
                best = acc[i, j - 1]
            acc[i, j] = d[i, j] + best


def accumulate(d: np.ndarray) -> np.ndarray:
    d = np.ascontiguousarray(d, np.float64)
    acc = np.empty_like(d)
    _accumulate_nb(d, acc)
    return acc


def accumulate_reference(d: np.ndarray) -> np.ndarray:
    """The same recurrence in plain Python (the spec; small inputs)."""
    N, M = d.shape
    acc = np.full((N, M), np.inf)
    for i in range(N):
        for j in range(M):
            prev = [acc[i - 1, j - 1] if i and j else np.inf, acc[i - 1, j] if i else np.inf,
                    acc[i, j - 1] if j else np.inf]
            acc[i, j] = d[i, j] + (0.0 if i == 0 and j == 0 else min(prev))
    return acc
