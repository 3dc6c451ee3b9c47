"""Parameter initialisation (PyTorch's defaults) and the random streams modules draw from.

One ``numpy.random.Generator`` for initialisation and one for dropout seeds; both states can be
saved and restored (``get_state``/``set_state``) so a resumed run draws the same masks.
"""
from __future__ import annotations

import math

import numpy as np

_init_rng = np.random.default_rng(0)
_dropout_rng = np.random.default_rng(1)


def manual_seed(seed: int) -> None:
    """Seed the init and dropout streams (like ``torch.manual_seed``)."""
    global _init_rng, _dropout_rng
    ss = np.random.SeedSequence(seed)
    a, b = ss.spawn(2)
    _init_rng = np.random.default_rng(a)
    _dropout_rng = np.random.default_rng(b)


def get_state() -> dict:
    return {"init": _init_rng.bit_generator.state, "dropout": _dropout_rng.bit_generator.state}


def set_state(state: dict) -> None:
    _init_rng.bit_generator.state = state["init"]
    _dropout_rng.bit_generator.state = state["dropout"]


def next_dropout_seed() -> int:
    """A fresh 63-bit seed for one dropout mask."""
    return int(_dropout_rng.integers(0, 2**63 - 1))


def uniform_(a: np.ndarray, bound: float) -> np.ndarray:
    a[...] = _init_rng.uniform(-bound, bound, a.shape)
    return a


def normal_(a: np.ndarray, std: float = 1.0) -> np.ndarray:
    a[...] = _init_rng.standard_normal(a.shape) * std
    return a


def kaiming_uniform_default(w: np.ndarray, fan_in: int) -> np.ndarray:
    """torch's Linear/Conv default: kaiming_uniform(a=sqrt(5)) -> bound 1/sqrt(fan_in)."""
    gain = math.sqrt(2.0 / (1 + 5))
    return uniform_(w, gain * math.sqrt(3.0 / fan_in))
