# cython: language_level=3
# Fused clip + Adam over flat float32 buffers, OpenMP. Maths: fastcpu/kernels/adam.py header.
from cython.parallel cimport prange
from libc.math cimport sqrtf
from libc.stdlib cimport calloc, free

cdef extern from *:
    const char* FASTCPU_SRC_HASH
SRC_HASH = FASTCPU_SRC_HASH.decode()


def sumsq(const float[::1] g, int nchunk, int nthreads):
    # sum(g^2) in float64, fixed chunks (thread-count independent), partials summed in order
    cdef Py_ssize_t n = g.shape[0], ch, i
    cdef double s, x, tot = 0
    cdef double* part = <double*>calloc(nchunk, sizeof(double))
    if part == NULL:
        raise MemoryError()
    for ch in prange(nchunk, nogil=True, num_threads=nthreads, schedule="static"):
        s = 0
        for i in range(ch * n // nchunk, (ch + 1) * n // nchunk):
            x = g[i]
            s = s + x * x
        part[ch] = s
    for ch in range(nchunk):
        tot += part[ch]
    free(part)
    return tot


def adam(float[::1] p, const float[::1] g, float[::1] m, float[::1] v, float coef,
         float step_size, float a1, float beta2, float a2, float bc2_sqrt, float eps, float wd,
         int nthreads):
    # a1 = 1 - beta1, a2 = 1 - beta2 (computed in double by the caller, as torch does)
    cdef Py_ssize_t n = p.shape[0], i
    cdef float gi, mi, vi
    for i in prange(n, nogil=True, num_threads=nthreads, schedule="static"):
        gi = g[i] * coef
        if wd != 0:
            gi = gi + wd * p[i]
        mi = m[i] + a1 * (gi - m[i])
        vi = beta2 * v[i] + a2 * (gi * gi)
        m[i] = mi
        v[i] = vi
        p[i] = p[i] - step_size * mi / (sqrtf(vi) / bc2_sqrt + eps)
