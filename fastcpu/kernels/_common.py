"""Shared bits for kernel modules: Numba flags, the counter-based RNG, argument checks."""
from __future__ import annotations

import math
import threading

import numba as nb
from numba.extending import overload
import numpy as np

# fastmath without nnan/ninf: those break -inf masking and NaN checks (DESIGN.md).
FASTMATH = {"nsz", "arcp", "contract", "afn", "reassoc"}
JIT = dict(cache=True, fastmath=FASTMATH, error_model="numpy")
# Parallel kernels without "reassoc": with it, a prange kernel freshly compiled and the same
# kernel loaded from Numba's on-disk cache give different last bits (Numba 0.68: e.g.
# batchnorm's backward dx; serial kernels and parallel ones without "reassoc" agree), so a run
# started in the process that compiled the kernels would not resume bit for bit in a process
# that loads them. tests/test_runs.py checks the two cache states against each other.
PJIT = dict(JIT, parallel=True, fastmath=FASTMATH - {"reassoc"})

# Counter-based RNG (splitmix64 finaliser of seed ⊕ counter): the random number of element i
# depends on (seed, i) only, so a mask is the same for any thread count or backend.
GOLDEN = 0x9E3779B97F4A7C15
M1 = 0xBF58476D1CE4E5B9
M2 = 0x94D049BB133111EB
U64 = (1 << 64) - 1


def seed_key(seed) -> int:
    """Mix a user seed into a 64-bit key once (Python side). A pair ``(seed, offset)`` starts
    the element counter at ``offset``: the RNG hashes (counter + 1) * GOLDEN + key, so counter
    i + offset under key k is counter i under key k + offset * GOLDEN — every backend takes the
    shifted key as it is. (A data-parallel rank holding rows r.. of a global batch gives
    r * elements-per-row, and its mask is those rows' mask of the whole batch.)"""
    offset = 0
    if isinstance(seed, tuple):
        seed, offset = seed
    z = (int(seed) * GOLDEN + 0x632BE59BD9B4E019) & U64
    z = ((z ^ (z >> 30)) * M1) & U64
    z = ((z ^ (z >> 27)) * M2) & U64
    return ((z ^ (z >> 31)) + int(offset) * GOLDEN) & U64


def drop_threshold(p: float) -> int:
    """Element i is kept iff its 24-bit random number r24 >= threshold; P(keep) = 1 - p."""
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout probability must be in [0, 1), got {p}")
    return int(math.ceil(p * (1 << 24)))


def rand24_reference(key: int, n: int, offset: int = 0) -> np.ndarray:
    """NumPy reference of the RNG: 24-bit random integers for counters offset..offset+n-1."""
    i = np.arange(offset, offset + n, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = (i + np.uint64(1)) * np.uint64(GOLDEN) + np.uint64(key)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(M1)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(M2)
        z = z ^ (z >> np.uint64(31))
    return z >> np.uint64(40)


def keep_mask_reference(key: int, threshold: int, shape) -> np.ndarray:
    n = int(np.prod(shape))
    return (rand24_reference(key, n) >= np.uint64(threshold)).reshape(shape)


def as_rows(x: np.ndarray) -> np.ndarray:
    """(…, C) -> (N, C) view (C-contiguous required)."""
    if not x.flags.c_contiguous:
        raise ValueError("kernel inputs must be C-contiguous")
    return x.reshape(-1, x.shape[-1])


def check_out(buf, shape, dtype, what):
    if buf.shape != tuple(shape) or buf.dtype != dtype or not buf.flags.c_contiguous:
        raise ValueError(f"{what}: expected C-contiguous {dtype} buffer of shape {tuple(shape)}, "
                         f"got {buf.dtype} {buf.shape}")


def seq_offsets(lengths) -> np.ndarray:
    """Row offsets of sequences packed back to back: [0, L0, L0+L1, ...] (int64, B+1 entries)."""
    L = np.asarray(lengths, dtype=np.int64)
    return np.concatenate([[0], np.cumsum(L)]).astype(np.int64)


@nb.njit(**PJIT)
def colsum_nb(dy, db, nchunk):
    # db += sum over rows, fixed chunks (thread-count independent)
    M, N = dy.shape
    part = np.zeros((nchunk, N), dtype=np.float32)
    for ch in nb.prange(nchunk):
        for r in range(ch * M // nchunk, (ch + 1) * M // nchunk):
            for o in range(N):
                part[ch, o] += dy[r, o]
    for ch in range(nchunk):
        for o in range(N):
            db[o] += part[ch, o]


@nb.njit(**PJIT)
def masked_colsum_nb(dy, lengths, db, nchunk):
    # db += sum of dy over valid rows, in fixed chunks (thread-count independent)
    B, T, Co = dy.shape
    N = B * T
    part = np.zeros((nchunk, Co), dtype=np.float32)
    for ch in nb.prange(nchunk):
        for rr in range(ch * N // nchunk, (ch + 1) * N // nchunk):
            bi = rr // T
            t = rr - bi * T
            if t < lengths[bi]:
                row = dy[bi, t]
                for o in range(Co):
                    part[ch, o] += row[o]
    for ch in range(nchunk):
        for o in range(Co):
            db[o] += part[ch, o]


@nb.njit(inline="always")
def dx_row(dx, lengths, r, acc):
    """Row r of a (B, T, C) input gradient walked as B*T rows (col2im-style kernels): (sequence,
    step, valid length, row view, whether the step is a valid row); the row is zeroed first unless
    accumulating."""
    T = dx.shape[1]
    bi = r // T
    i = r - bi * T
    dr = dx[bi, i]
    if not acc:
        for c in range(dr.shape[0]):
            dr[c] = 0
    L = lengths[bi]
    return bi, i, L, dr, i < L


@nb.njit(inline="always")
def bf16_row(src, dst):
    """dst (uint16) = bf16(src) for a float32 row: round to nearest, ties to even (NaN stays a
    quiet NaN) — ``gemm.round_bf16`` is the reference."""
    u = src.view(np.uint32)
    for c in range(dst.shape[0]):
        v = u[c]
        if (v & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000):
            dst[c] = np.uint16((v >> np.uint32(16)) | np.uint32(0x40))
        else:
            dst[c] = np.uint16((v + np.uint32(0x7FFF) + ((v >> np.uint32(16)) & np.uint32(1)))
                               >> np.uint32(16))


@nb.njit(inline="always")
def _copy_row(src, dst):
    for c in range(dst.shape[0]):
        dst[c] = src[c]


def _put_row(src, dst):
    """dst = src for a float32 row, or its bf16 rounding for a uint16 row (compile-time choice)."""


@overload(_put_row, inline="always")
def _put_row_ol(src, dst):
    if dst.dtype == nb.types.uint16:
        return lambda src, dst: bf16_row(src, dst)
    return lambda src, dst: _copy_row(src, dst)


def _row_target(tmp, dst):
    """Where a kernel sums a row bound for ``dst``: dst itself when it is float32, else the fp32
    ``tmp`` (then ``_row_done`` rounds it into the uint16 dst) — a compile-time choice."""


@overload(_row_target, inline="always")
def _row_target_ol(tmp, dst):
    if dst.dtype == nb.types.uint16:
        return lambda tmp, dst: tmp
    return lambda tmp, dst: dst


def _row_done(tmp, dst):
    """After summing into ``_row_target(tmp, dst)``: dst = bf16(tmp) for a uint16 dst."""


@overload(_row_done, inline="always")
def _row_done_ol(tmp, dst):
    if dst.dtype == nb.types.uint16:
        return lambda tmp, dst: bf16_row(tmp, dst)
    return lambda tmp, dst: None


@nb.njit(**PJIT)
def _fill0_nb(a):
    n = a.shape[0]
    for ch in nb.prange(64):
        for i in range(ch * n // 64, (ch + 1) * n // 64):
            a[i] = 0


ZEROS_PARALLEL_MIN = 1 << 20


def zeros_like(x: np.ndarray) -> np.ndarray:
    """np.zeros_like, zero-filled on the kernel threads for large arrays: the
    gradient buffers kernels accumulate into (a (16, 714, 768) float32 buffer: 3-4.4 -> 2.3 ms,
    2 threads, 2026-12-02)."""
    if x.size < ZEROS_PARALLEL_MIN or not x.flags.c_contiguous or x.dtype.itemsize not in (4, 8):
        return np.zeros_like(x)
    y = np.empty(x.shape, x.dtype)
    _fill0_nb(y.reshape(-1).view(np.uint32 if y.dtype.itemsize == 4 else np.uint64))
    return y


# Scratch buffers reused across calls (per thread). Large temporaries (im2col columns, ...) are
# the size of a layer's activations; allocating them fresh each call page-faults every page again
# (measured: ~100 ms of a 370 ms conv1d step at FastSpeech2 size). Never returned to callers.
_scratch = threading.local()


def scratch(key: str, shape, dtype=np.float32) -> np.ndarray:
    """A C-contiguous work array of ``shape`` for temporary use inside one kernel call. A key is
    one block of bytes whatever the dtype: a kernel's bf16 and fp32 uses of one key (bf16
    columns consumed before the fp32 gradient columns are written) share the memory."""
    pool = getattr(_scratch, "pool", None)
    if pool is None:
        pool = _scratch.pool = {}
    dtype = np.dtype(dtype)
    n = int(np.prod(shape, dtype=np.int64))
    nbytes = n * dtype.itemsize
    buf = pool.get(key)
    if buf is None or buf.size < max(nbytes, 1):
        buf = pool[key] = np.empty(max(nbytes, 1), np.uint8)
    return buf[:nbytes].view(dtype).reshape(shape)


def release_scratch() -> None:
    """Drop this thread's scratch buffers (e.g. after training, to return the memory)."""
    _scratch.pool = {}
