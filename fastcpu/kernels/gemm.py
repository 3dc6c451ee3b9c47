"""The one GEMM entry point: every matmul of the training step goes through ``matmul``.

Shapes: a (M, K), b (K, N), out (M, N); any 2-D strides (transposed views included).

    out  = a @ b (+ bias) (then max(., 0) if relu)
    out += a @ b                         (accumulate=True)

``precision`` chooses the engine (default: the one set by ``fastcpu.kernels.use``, else fp32):

- ``"fp32"``: oneDNN with fp32 operands where it is available (``fp32_engine()``), else NumPy's
  ``matmul`` (OpenBLAS), bias and ReLU then as separate NumPy passes. oneDNN measured faster in
  whole training steps (LJSpeech config, B=8, 2 threads, alternating in one process: 2.02 vs
  2.38 s alone, 3.75 vs 6.94 s next to a 2-thread NumPy matmul process — its GNU OpenMP workers
  sleep on a futex, OpenBLAS's yield the core to the neighbour and wait for it to give it back;
  and every kernel of the step then shares one OpenMP pool).
- ``"bf16"``: oneDNN (3.2, GNU OpenMP: the same thread pool as Numba's omp layer and the Cython
  kernels) with bf16 operands, fp32 accumulation and an fp32 (or bf16) result; bias, ReLU and the
  accumulation run as oneDNN epilogues on the fp32 accumulators. float32 operands are rounded to
  bf16 (nearest even) on the way in; ``operand()`` does that once for an array used by several
  GEMMs. bf16 arrays are ``uint16`` arrays holding the upper half of the float32 bit pattern.

oneDNN comes from the ``onednn-cpu-gomp`` wheel (x86-64 Linux; a dependency there). Elsewhere,
or with ``FASTCPU_NO_DNNL=1``, fp32 works as before and ``bf16`` says why it is unavailable.
bf16 needs a CPU with AVX512-BF16 or AMX: oneDNN would otherwise emulate it slowly, so
``require_bf16`` refuses instead.

Rounding: bf16 keeps 8 significant bits, so rounding an operand costs a relative error up to
u = 2^-8 and a product a_ik * b_kj of two rounded operands up to 2u + u^2 (the product itself is
exact in fp32), summed in fp32; an entry's error is bounded by (2^-7 + 2^-16 + K * 2^-24) *
sum_k |a_ik b_kj| — the tolerance the tests use.
"""
from __future__ import annotations

import contextlib
import ctypes
import os
import sys
import threading
from pathlib import Path

import numpy as np

PRECISIONS = ("fp32", "bf16")
ENGINES = ("onednn", "numpy")
BF16 = np.uint16                # storage type of bf16 arrays

_state = threading.local()
_lib = {"mod": None, "why": None}


class GemmError(RuntimeError):
    pass


# ----------------------------------------------------------------------------- precision policy

def current() -> str:
    """The precision ``matmul`` uses when none is given."""
    return getattr(_state, "precision", "fp32")


def backward_precision() -> str:
    """The precision the backward of a forward run now will use: ``current()``, unless the
    innermost ``use`` gave another ``backward``."""
    return getattr(_state, "backward", None) or current()


_engine = []


def fp32_engine() -> str:
    """Where fp32 GEMMs run: "onednn" where it is available, else "numpy" (OpenBLAS);
    ``FASTCPU_FP32_GEMM=numpy|onednn`` overrides (for A/B measurements)."""
    if not _engine:
        want = os.environ.get("FASTCPU_FP32_GEMM", "")
        if want and want not in ENGINES:
            raise GemmError(f"FASTCPU_FP32_GEMM must be one of {ENGINES}, got {want!r}")
        _engine.append(want or ("onednn" if available() else "numpy"))
        if _engine[0] == "onednn":
            dnnl()                                   # a clear error if forced and missing
    return _engine[0]


def set_fp32_engine(name: str) -> None:
    """Choose the fp32 engine for this process (A/B measurements; tests)."""
    if name not in ENGINES:
        raise ValueError(f"fp32 engine must be one of {ENGINES}, got {name!r}")
    if name == "onednn":
        dnnl()
    _engine[:] = [name]


@contextlib.contextmanager
def use(precision: str, backward: str | None = None):
    """Run the GEMMs inside with ``precision`` ("fp32" | "bf16"); restored on exit.

    ``backward``: the precision the backward of the ops run inside will use (the autograd
    functions record ``backward_precision()``); default the same as the forward."""
    for p in (precision, backward or precision):
        if p not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {p!r}")
        if p == "bf16":
            require_bf16()
    prev = current(), getattr(_state, "backward", None)
    _state.precision, _state.backward = precision, backward
    try:
        yield precision
    finally:
        _state.precision, _state.backward = prev


# ----------------------------------------------------------------------------- oneDNN loading

def _libdnnl_path() -> str | None:
    env = os.environ.get("FASTCPU_DNNL_LIB")
    if env:
        return env
    try:
        from importlib.metadata import PackageNotFoundError, distribution
        dist = distribution("onednn-cpu-gomp")
        for f in dist.files or ():
            if str(f).replace("\\", "/").endswith("lib/libdnnl.so.3"):
                return str(Path(dist.locate_file(f)).resolve())
    except (ImportError, PackageNotFoundError):
        pass
    p = Path(sys.prefix) / "lib" / "libdnnl.so.3"
    return str(p) if p.exists() else None


def dnnl():
    """The oneDNN extension module, or raise GemmError saying why it is unavailable."""
    if _lib["mod"] is None and _lib["why"] is None:
        _lib["mod"], _lib["why"] = _load()
    if _lib["mod"] is None:
        raise GemmError(_lib["why"])
    return _lib["mod"]


def _load():
    if os.environ.get("FASTCPU_NO_DNNL", "") not in ("", "0"):
        return None, "oneDNN disabled by FASTCPU_NO_DNNL"
    path = _libdnnl_path()
    if path is None:
        return None, ("oneDNN is not installed (pip install onednn-cpu-gomp==2023.2.0; x86-64 "
                      "Linux only)")
    try:
        ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)       # the extension resolves against it
    except OSError as e:
        return None, f"cannot load oneDNN from {path}: {e}"
    from fastcpu.kernels import _cybuild
    try:
        return _cybuild.module("dnnl"), None
    except _cybuild.CythonBuildError as e:
        return None, str(e)


def available() -> bool:
    try:
        dnnl()
        return True
    except GemmError:
        return False


def _cpu_flags() -> set:
    from fastcpu.kernels._cybuild import cpu_flags
    return cpu_flags()


def bf16_status() -> str:
    """'ok (<oneDNN ISA>)' or the reason bf16 training cannot run on this machine."""
    try:
        mod = dnnl()
    except GemmError as e:
        return str(e)
    isa = mod.effective_isa()
    if isa in ("avx512_core_amx", "avx512_core_bf16"):
        return f"ok ({isa})"
    flags = _cpu_flags()
    lacks = [f for f in ("avx512_bf16", "amx_bf16") if f not in flags]
    return (f"this CPU has no native bf16 ({' and '.join(lacks) or 'bf16'} missing; oneDNN ISA "
            f"{isa}); bf16 would be emulated slowly — use precision fp32")


_bf16_ok = []


def require_bf16() -> None:
    if _bf16_ok:
        return
    s = bf16_status()
    if not s.startswith("ok"):
        raise GemmError(f"bf16 unavailable: {s}")
    _bf16_ok.append(True)


def info() -> dict:
    """For runtime.info(): oneDNN version, the ISA it dispatches to, and bf16's status."""
    try:
        mod = dnnl()
    except GemmError as e:
        return {"onednn": f"unavailable ({e})", "bf16": "unavailable", "fp32_engine": "numpy"}
    return {"onednn": mod.version(), "onednn_isa": mod.effective_isa(), "bf16": bf16_status(),
            "fp32_engine": fp32_engine(), "primitives": dict(mod.stats)}


# ----------------------------------------------------------------------------- operands

def _threads() -> int:
    """The OpenMP threads for oneDNN: Numba's count, which ``runtime.threads`` sets (read from
    Numba directly so that the kernels layer does not import the runtime that reports on it)."""
    import numba
    return numba.get_num_threads()


def _empty_like_layout(x, dtype):
    """An empty array of x's shape whose memory order follows x's (row- or column-major)."""
    if x.ndim == 2 and x.strides[0] < x.strides[1] and not x.flags.c_contiguous:
        return np.empty(x.shape[::-1], dtype).T
    return np.empty(x.shape, dtype)


def operand(x: np.ndarray, precision: str | None = None) -> np.ndarray:
    """x as a GEMM operand of ``precision``: itself for fp32 (or if already bf16), else a bf16
    (uint16) copy with the same memory order. Convert once, use in several GEMMs."""
    if (precision or current()) == "fp32" or x.dtype == BF16:
        return x
    if x.dtype != np.float32:
        raise TypeError(f"gemm: bf16 operands come from float32 arrays, got {x.dtype}")
    x2 = x if x.ndim == 2 else x.reshape(-1, x.shape[-1])
    y = _empty_like_layout(x2, BF16)
    if y.size:
        dnnl().to_bf16(x2, y, _threads())
    return y.reshape(x.shape) if x.ndim != 2 else y


def to_float32(x: np.ndarray) -> np.ndarray:
    """float32 copy of a bf16 (uint16) array (exact); float32 arrays pass through."""
    if x.dtype != BF16:
        return x
    return (x.astype(np.uint32) << 16).view(np.float32)


def round_bf16(x: np.ndarray) -> np.ndarray:
    """NumPy reference of the rounding: float32 -> nearest bf16 (ties to even), as float32."""
    u = np.ascontiguousarray(x, np.float32).view(np.uint32).astype(np.uint64)
    nan = (u & 0x7FFFFFFF) > 0x7F800000
    r = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16) << 16
    r = np.where(nan, u | 0x400000, r)
    return (r & 0xFFFFFFFF).astype(np.uint32).view(np.float32).reshape(np.shape(x))


# ----------------------------------------------------------------------------- the entry point

def matmul(a: np.ndarray, b: np.ndarray, out: np.ndarray | None = None, *,
           accumulate: bool = False, bias: np.ndarray | None = None, relu: bool = False,
           precision: str | None = None, engine: str | None = None) -> np.ndarray:
    """out (+)= a @ b (+ bias, then ReLU); returns out. See the module docstring.

    ``engine`` ("onednn" | "numpy") overrides ``fp32_engine()`` for one fp32 call: for a caller
    whose shapes measured faster on the other engine (the vocoder's narrow-output GEMMs)."""
    precision = precision or current()
    if engine is not None and engine not in ENGINES:
        raise GemmError(f"engine must be one of {ENGINES}, got {engine!r}")
    fp32 = engine if engine == "numpy" or (engine == "onednn" and available()) else fp32_engine()
    if precision == "fp32" and fp32 == "onednn" and a.dtype != BF16 and \
            b.dtype != BF16 and a.shape[0] and b.shape[1] and a.shape[1]:
        if out is None:
            out = np.empty((a.shape[0], b.shape[1]), np.float32)
        dnnl().matmul(a, b, out, accumulate, None if bias is None else
                      np.ascontiguousarray(bias, np.float32), relu, _threads())
        return out
    if precision == "fp32":
        if a.dtype == BF16 or b.dtype == BF16:
            raise TypeError("gemm: bf16 operands need precision='bf16'")
        if accumulate:
            if bias is not None or relu:
                raise ValueError("gemm: accumulate does not combine with bias/relu")
            out += a @ b
            return out
        out = np.matmul(a, b) if out is None else np.matmul(a, b, out=out)
        if bias is not None:
            out += bias
        if relu:
            np.maximum(out, 0, out=out)
        return out
    if precision != "bf16":
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    mod = dnnl()
    if a.shape[0] == 0 or b.shape[-1] == 0 or a.shape[1] == 0:
        return matmul(to_float32(a), to_float32(b), out, accumulate=accumulate, bias=bias,
                      relu=relu, precision="fp32")
    a, b = operand(a, "bf16"), operand(b, "bf16")
    if out is None:
        if accumulate:
            raise ValueError("gemm: accumulate needs out")
        out = np.empty((a.shape[0], b.shape[1]), np.float32)
    if bias is not None:
        bias = np.ascontiguousarray(bias, np.float32)
    mod.matmul(a, b, out, accumulate, bias, relu, _threads())
    return out
