"""Numba face of the counter-based RNG in _common (same numbers, element by element)."""
import numba as nb
import numpy as np

from fastcpu.kernels._common import GOLDEN, M1, M2

_G = np.uint64(GOLDEN)
_M1 = np.uint64(M1)
_M2 = np.uint64(M2)
_ONE = np.uint64(1)
_S30 = np.uint64(30)
_S27 = np.uint64(27)
_S31 = np.uint64(31)
_S40 = np.uint64(40)


@nb.njit(inline="always", cache=True)
def rand24(key, i):
    z = (np.uint64(i) + _ONE) * _G + key
    z = (z ^ (z >> _S30)) * _M1
    z = (z ^ (z >> _S27)) * _M2
    z = z ^ (z >> _S31)
    return z >> _S40
