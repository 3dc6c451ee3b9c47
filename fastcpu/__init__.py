"""fastcpu: train FastSpeech2 natively fast on multicore CPUs.

Importing this package compiles nothing and starts no threads; kernels compile (or load from the
Numba cache) on their first call. It does set two environment defaults for thread pools that read
them when they load (an explicit setting always wins):

- ``OMP_WAIT_POLICY=PASSIVE``: GNU OpenMP's workers (Numba's "omp" layer, the Cython kernels)
  otherwise spin after every parallel region and take the cores from the next GEMM's BLAS
  threads (a B=8 FastSpeech2 step on 2 cores: 3.04 s -> 1.41 s).
- ``OPENBLAS_THREAD_TIMEOUT=4``: OpenBLAS's workers likewise spin for ~2^28 cycles after a GEMM,
  against the kernels that follow (B=16 step: 5.53 s -> 4.70 s; attention alone 2x).

Both take effect only if fastcpu is imported before the library that reads them (NumPy for
OpenBLAS, anything that loads libgomp for OpenMP); ``fastcpu.runtime.info()`` says whether they
did. The ``python -m fastcpu.*`` commands always import fastcpu first.
"""
import os as _os
import sys as _sys

_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
if "numpy" not in _sys.modules:                 # OpenBLAS reads it when numpy loads it
    _os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")
NUMPY_LOADED_FIRST = "numpy" in _sys.modules

__version__ = "0.1.0"
