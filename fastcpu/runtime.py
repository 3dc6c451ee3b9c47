"""The single owner of threads: BLAS (threadpoolctl), Numba, and the OpenMP count for Cython.

Nothing here runs at import time. ``threads(n)`` is entered once per run::

    with runtime.threads(2):
        train()

Inside it, BLAS, Numba and the Cython kernels all use ``n`` threads. A kernel that calls BLAS
from inside its own parallel region wraps that region in ``blas_single()`` so the two pools never
multiply (n kernel threads x n BLAS threads).
"""
from __future__ import annotations

import contextlib
import os
import threading

__all__ = ["threads", "num_threads", "blas_single", "info", "cython_available"]

_state = threading.local()
_lock = threading.Lock()
_controller = None          # threadpoolctl.ThreadpoolController, created on first use


def _blas_controllers():
    global _controller
    with _lock:
        if _controller is None:
            from threadpoolctl import ThreadpoolController
            import numpy  # noqa: F401  (make sure numpy's BLAS is loaded before we look)
            import scipy.linalg  # noqa: F401
            _controller = ThreadpoolController()
    return [c for c in _controller.lib_controllers if c.user_api == "blas"]


def _get_blas_threads() -> int:
    ctrls = _blas_controllers()
    return min((c.num_threads for c in ctrls), default=1)


def _set_blas_threads(n: int) -> None:
    for c in _blas_controllers():
        c.set_num_threads(n)


def num_threads() -> int:
    """Threads the kernels should use now (the OpenMP count passed to Cython kernels)."""
    n = getattr(_state, "n", None)
    if n is None:
        import numba
        n = numba.get_num_threads()
    return n


# glibc mallopt parameters. mallopt takes a C int: a larger Python int would be masked by ctypes
# (1 << 40 became 0, i.e. "trim on every free", so every large array page-faulted afresh).
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
_INT_MAX = 2**31 - 1


def _mallopt(param, value) -> bool:
    try:
        import ctypes
        return bool(ctypes.CDLL("libc.so.6").mallopt(param, value))
    except (OSError, AttributeError):
        return False          # not glibc: nothing to tune


@contextlib.contextmanager
def keep_memory():
    """Keep freed memory in the process heap instead of returning it to the OS.

    A training step allocates gigabytes of activations; with glibc's defaults each large array is
    a fresh mmap that page-faults on first touch every step (measured: ~1.5 s of a 9 s
    FastSpeech2 step on this VM). Inside this context malloc serves everything from the heap and
    reuses it. Peak RSS is unchanged (it is the step's peak either way); the memory is handed back
    on exit.
    """
    ok = _mallopt(_M_MMAP_MAX, 0) and _mallopt(_M_TRIM_THRESHOLD, _INT_MAX)
    try:
        yield ok
    finally:
        if ok:
            _mallopt(_M_MMAP_MAX, 65536)
            _mallopt(_M_TRIM_THRESHOLD, 128 * 1024)
            try:
                import ctypes
                ctypes.CDLL("libc.so.6").malloc_trim(0)
            except (OSError, AttributeError):
                pass


@contextlib.contextmanager
def threads(n: int | None = None):
    """Use ``n`` threads for BLAS, Numba and Cython kernels; restore the previous counts on exit.

    ``n=None`` means every core Numba was started with (``NUMBA_NUM_THREADS``, default all).
    """
    import numba
    limit = numba.config.NUMBA_NUM_THREADS
    if n is None:
        n = limit
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"threads: need a positive int, got {n!r}")
    if n > limit:
        raise ValueError(f"threads: {n} threads asked but Numba was started with {limit} "
                         f"(set NUMBA_NUM_THREADS={n} before starting Python)")
    prev_numba = numba.get_num_threads()
    prev_blas = _get_blas_threads()
    prev_n = getattr(_state, "n", None)
    try:
        numba.set_num_threads(n)
        _set_blas_threads(n)
        _state.n = n
        yield n
    finally:
        numba.set_num_threads(prev_numba)
        _set_blas_threads(prev_blas)
        _state.n = prev_n


@contextlib.contextmanager
def blas_single():
    """BLAS single-threaded for the duration (for kernels that call BLAS inside ``prange``)."""
    prev = _get_blas_threads()
    if prev == 1:
        yield
        return
    _set_blas_threads(1)
    try:
        yield
    finally:
        _set_blas_threads(prev)


def cython_available() -> dict:
    """Which Cython kernel modules are built and current: {name: "ok" | reason}."""
    from fastcpu.kernels import _cybuild
    return _cybuild.status()


def _cython_variants() -> dict:
    """Which build of each Cython kernel is loaded: native (a local -march=native build), or
    the x86-64 level of a portable build (v4, v3, x86_64)."""
    from fastcpu.kernels import CYTHON_KERNELS, _cybuild
    return {n: _cybuild.variant(n) for n in CYTHON_KERNELS}


def info() -> dict:
    """What this process runs on: BLAS library and kernel, Numba layer and threads, Cython build."""
    import numba
    import numpy as np
    _blas_controllers()
    blas = []
    for c in _controller.lib_controllers:
        d = c.info()
        blas.append({k: d.get(k) for k in ("user_api", "internal_api", "version",
                                           "architecture", "num_threads", "filepath")})
    try:
        layer = numba.threading_layer()
    except ValueError:
        layer = "not started (no parallel kernel has run yet)"
    return {
        "numpy": np.__version__,
        "numba": numba.__version__,
        "numba_threading_layer": layer,
        "numba_threads": numba.get_num_threads(),
        "numba_cpu_name": numba.config.CPU_NAME or "host",
        "kernel_threads": num_threads(),
        "threadpools": blas,
        "cython": cython_available(),
        "cython_variant": _cython_variants(),
        "gemm": __import__("fastcpu.kernels.gemm", fromlist=["info"]).info(),
        "attention_bf16": _attention_bf16(),
        "openblas_env": {k: os.environ.get(k) for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
                         if os.environ.get(k)},
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "(unset: spinning)"),
        "openblas_thread_timeout": os.environ.get(
            "OPENBLAS_THREAD_TIMEOUT", "(unset: spinning; numpy was imported before fastcpu)"
            if __import__("fastcpu").NUMPY_LOADED_FIRST else "(unset: spinning)"),
    }


def _attention_bf16() -> str:
    """Which tiles bf16 attention runs on: AMX, or the fp32 ones (and why)."""
    if cython_available().get("attention") != "ok":
        return "fp32 tiles (Numba attention)"
    from fastcpu.kernels import attention
    st = attention.amx_status()
    return "amx tiles" if st == "ok" else f"fp32 tiles ({st})"


def format_info(d: dict | None = None) -> str:
    d = d or info()
    lines = [f"numpy {d['numpy']}  numba {d['numba']} (layer {d['numba_threading_layer']}, "
             f"{d['numba_threads']} threads, cpu {d['numba_cpu_name']})  kernel threads "
             f"{d['kernel_threads']}"]
    for p in d["threadpools"]:
        lines.append(f"{p['user_api']}: {p['internal_api']} {p['version']} "
                     f"kernel={p['architecture']} threads={p['num_threads']}")
    lines.append(f"OMP_WAIT_POLICY={d['omp_wait_policy']}  "
                 f"OPENBLAS_THREAD_TIMEOUT={d['openblas_thread_timeout']}")
    g = d.get("gemm", {})
    lines.append(f"oneDNN {g.get('onednn')}" + (f" (isa {g['onednn_isa']}; bf16 {g['bf16']})"
                                               if "onednn_isa" in g else "")
                 + f"; fp32 GEMMs on {g.get('fp32_engine')}"
                 + (f"; bf16 attention on {d['attention_bf16']}" if "attention_bf16" in d else ""))
    bad = {k: v for k, v in d["cython"].items() if v != "ok"}
    variants = sorted({v for v in d.get("cython_variant", {}).values() if v})
    lines.append("cython kernels: " + ("all built" if not bad else f"problems {bad}")
                 + (f" ({'/'.join(variants)} build)" if variants else ""))
    if d["openblas_env"]:
        lines.append(f"note: {d['openblas_env']} set (slows OpenBLAS GEMM ~45%)")
    return "\n".join(lines)
