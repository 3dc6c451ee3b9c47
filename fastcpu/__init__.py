"""fastcpu: train FastSpeech2 natively fast on multicore CPUs.

Importing this package compiles nothing and starts no threads; kernels compile (or load from the
Numba cache) on their first call.
"""
__version__ = "0.1.0"
