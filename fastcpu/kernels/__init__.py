"""fastcpu.kernels — forward and backward kernels on plain NumPy arrays, no autograd needed.

Every op lives in its own module with three faces: ``*_reference`` (readable NumPy, the spec),
a Numba version, and — for the four named kernels (attention, conv1d, layernorm, adam) — a Cython
version. Pick one with the registry::

    from fastcpu import kernels
    ln = kernels.get("layernorm")            # backend="auto": the fastest measured backend
    out, mean, rstd = ln.forward(x, w, b)
    kernels.available()                      # {"layernorm": ["reference", "numba", "cython"], ...}

or call the auto-dispatching functions directly (``from fastcpu.kernels import
layer_norm_forward``). Shapes: B batch, T time, C channels, H heads, D head dim; float32 in
training, references also run in float64.
"""
from __future__ import annotations

import functools
import importlib
from types import SimpleNamespace

OPS = ("attention", "conv1d", "layernorm", "adam", "linear", "dropout", "activations",
       "embedding", "bucketize", "length_regulator", "batchnorm", "losses", "ffn", "vocoder")
CYTHON_KERNELS = ("layernorm", "adam", "conv1d", "attention")
BACKENDS = ("reference", "numba", "cython", "dispatch", "fir2", "gemm")  # dispatch, fir2: conv1d

__all__ = ["get", "available", "use", "OPS", "BACKENDS",
           "attention_forward", "attention_backward", "conv1d_forward", "conv1d_backward",
           "layer_norm_forward", "layer_norm_backward", "residual_layer_norm_forward",
           "residual_layer_norm_backward", "clip_adam", "grad_norm"]


def use(precision: str = "fp32", backward: str | None = None):
    """Context: the precision of every GEMM inside ("fp32" | "bf16"; see ``kernels.gemm``), and
    optionally another one for their backward."""
    from fastcpu.kernels import gemm
    return gemm.use(precision, backward)


def _module(name):
    if name not in OPS:
        raise KeyError(f"unknown kernel {name!r}; known: {', '.join(OPS)}")
    return importlib.import_module(f"fastcpu.kernels.{name}")


def _has(name, backend):
    mod = _module(name)
    if backend not in mod.BACKENDS:
        return False
    if backend == "cython":
        from fastcpu.kernels import _cybuild
        return _cybuild.available(name)
    return True         # "dispatch" falls back to Numba without a Cython build


@functools.lru_cache(maxsize=None)
def get(name: str, backend: str = "auto") -> SimpleNamespace:
    """The functions of kernel ``name`` for ``backend`` ("reference" | "numba" | "cython" | "auto").

    ``auto`` takes the module's measured choice (``AUTO``, with the command that measured it in the
    module; a dict there chooses per function); if that is the Cython build and it is missing, it
    takes Numba — unless
    ``FASTCPU_REQUIRE_CYTHON=1``, where a missing build is an error.
    """
    mod = _module(name)
    if backend == "auto" and isinstance(mod.AUTO, dict):      # per-function choices
        parts = {fn: get(name, "numba" if be == "cython" and not _has(name, "cython") else be)
                 for fn, be in mod.AUTO.items()}
        ns = SimpleNamespace(**{fn: getattr(p, fn) for fn, p in parts.items()})
        ns.name, ns.backend = name, "auto(" + ", ".join(f"{f}={p.backend}" for f, p in
                                                        parts.items()) + ")"
        return ns
    if backend == "auto":
        backend = mod.AUTO
        if backend == "cython" and not _has(name, "cython"):
            backend = "numba"
    elif backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; use one of {BACKENDS + ('auto',)}")
    if backend not in mod.BACKENDS:
        raise KeyError(f"kernel {name!r} has no {backend!r} backend; it has {list(mod.BACKENDS)}")
    if backend == "cython":
        from fastcpu.kernels import _cybuild
        _cybuild.module(name)          # raises a clear error if missing or stale
    ns = mod.BACKENDS[backend]()
    ns.name, ns.backend = name, backend
    return ns


def available() -> dict:
    """{kernel: [backends usable in this process]}."""
    return {n: [b for b in _module(n).BACKENDS if _has(n, b)] for n in OPS}


def _auto(op, fn):
    def call(*args, **kwargs):
        return getattr(get(op), fn)(*args, **kwargs)
    call.__name__ = f"{op}_{fn}"
    call.__doc__ = f"``kernels.get({op!r}).{fn}`` with the auto backend."
    return call


attention_forward = _auto("attention", "forward")
attention_backward = _auto("attention", "backward")
conv1d_forward = _auto("conv1d", "forward")
conv1d_backward = _auto("conv1d", "backward")
layer_norm_forward = _auto("layernorm", "forward")
layer_norm_backward = _auto("layernorm", "backward")
residual_layer_norm_forward = _auto("layernorm", "residual_forward")
residual_layer_norm_backward = _auto("layernorm", "residual_backward")
clip_adam = _auto("adam", "clip_adam")
grad_norm = _auto("adam", "grad_norm")
