# cython: language_level=3
# conv1d channels-last via im2col + one SGEMM; maths and layout: fastcpu/kernels/conv1d.py header.
# x (B, T, Ci); wt (Co, K*Ci) = w.transpose(0, 2, 1); y (B, To, Co)
from cython.parallel cimport prange
from libc.stdlib cimport malloc, calloc, free
from libc.string cimport memcpy, memset
from blas cimport gemm_rm

cdef extern from *:
    const char* FASTCPU_SRC_HASH
SRC_HASH = FASTCPU_SRC_HASH.decode()


cdef void _im2col(const float* x, int B, int T, int Ci, int K, int pad, int To, float* cols,
                  int nthreads) noexcept nogil:
    # cols[b*To + t, k*Ci + c] = x[b, t + k - pad, c] (0 outside [0, T))
    cdef Py_ssize_t r, bi, t, k, s
    cdef Py_ssize_t KC = K * Ci
    for r in prange(B * To, num_threads=nthreads, schedule="static"):
        bi = r // To
        t = r - bi * To
        for k in range(K):
            s = t + k - pad
            if s >= 0 and s < T:
                memcpy(&cols[r * KC + k * Ci], &x[(bi * T + s) * Ci], Ci * sizeof(float))
            else:
                memset(&cols[r * KC + k * Ci], 0, Ci * sizeof(float))


def forward(const float[:, :, ::1] x, const float[:, ::1] wt, const float[::1] b, int pad,
            int To, float[:, :, ::1] y, float[:, ::1] work, int nthreads):
    # work: (B*To, K*Ci) scratch for the im2col columns (unused when K == 1 and pad == 0)
    cdef int B = x.shape[0], T = x.shape[1], Ci = x.shape[2], Co = wt.shape[0]
    cdef int KC = wt.shape[1], K = KC // Ci, M = B * To
    cdef Py_ssize_t r, o
    cdef float* cols = NULL
    cdef float* yp = &y[0, 0, 0] if M > 0 else NULL
    cdef bint direct = (K == 1 and pad == 0)
    cdef bint has_b = b is not None
    cdef float beta = 1.0 if has_b else 0.0
    if M == 0:
        return
    with nogil:
        if has_b:      # y starts as the bias; the GEMM adds into it (beta = 1)
            for r in prange(M, num_threads=nthreads, schedule="static"):
                for o in range(Co):
                    yp[r * Co + o] = b[o]
        if direct:
            gemm_rm(b'N', b'T', M, Co, KC, 1.0, &x[0, 0, 0], KC, &wt[0, 0], KC, beta, yp, Co)
        else:
            cols = &work[0, 0]
            _im2col(&x[0, 0, 0], B, T, Ci, K, pad, To, cols, nthreads)
            gemm_rm(b'N', b'T', M, Co, KC, 1.0, cols, KC, &wt[0, 0], KC, beta, yp, Co)


def backward(const float[:, :, ::1] dy, const float[:, :, ::1] x, const float[:, ::1] wt,
             int pad, float[:, :, ::1] dx, float[:, ::1] dwt, float[::1] db, float[:, ::1] work,
             int nthreads):
    # db += sum_rows dy; dwt += dy^T @ cols; dx += col2im(dy @ wt)
    cdef int B = x.shape[0], T = x.shape[1], Ci = x.shape[2], Co = wt.shape[0]
    cdef int KC = wt.shape[1], K = KC // Ci, To = dy.shape[1], M = B * To
    cdef int nchunk = 64 if M >= 64 else M
    cdef Py_ssize_t r, o, ch, bi, s, k, t, c
    cdef float* cols = NULL
    cdef float* dcols = NULL
    cdef float* part = NULL
    cdef const float* dyp
    cdef float* dxp
    cdef bint direct = (K == 1 and pad == 0)
    cdef bint has_dx = dx is not None, has_db = db is not None, failed = False
    if M == 0:
        return
    dyp = &dy[0, 0, 0]
    with nogil:
        if has_db:
            part = <float*>calloc(<size_t>nchunk * Co, sizeof(float))
            if part == NULL:
                failed = True
            else:
                for ch in prange(nchunk, num_threads=nthreads, schedule="static"):
                    for r in range(ch * M // nchunk, (ch + 1) * M // nchunk):
                        for o in range(Co):
                            part[ch * Co + o] += dyp[r * Co + o]
                for ch in range(nchunk):
                    for o in range(Co):
                        db[o] += part[ch * Co + o]
                free(part)
        if not failed:
            if direct:
                gemm_rm(b'T', b'N', Co, KC, M, 1.0, dyp, Co, &x[0, 0, 0], KC, 1.0, &dwt[0, 0], KC)
                if has_dx:
                    gemm_rm(b'N', b'N', M, KC, Co, 1.0, dyp, Co, &wt[0, 0], KC, 1.0,
                            &dx[0, 0, 0], KC)
            else:
                cols = &work[0, 0]
                if True:
                    _im2col(&x[0, 0, 0], B, T, Ci, K, pad, To, cols, nthreads)
                    gemm_rm(b'T', b'N', Co, KC, M, 1.0, dyp, Co, cols, KC, 1.0, &dwt[0, 0], KC)
                    if has_dx:    # reuse the cols buffer for dcols = dy @ wt, then col2im
                        dcols = cols
                        gemm_rm(b'N', b'N', M, KC, Co, 1.0, dyp, Co, &wt[0, 0], KC, 0.0,
                                dcols, KC)
                        dxp = &dx[0, 0, 0]
                        for r in prange(B * T, num_threads=nthreads, schedule="static"):
                            bi = r // T
                            s = r - bi * T
                            for k in range(K):
                                t = s - k + pad
                                if t >= 0 and t < To:
                                    for c in range(Ci):
                                        dxp[r * Ci + c] += dcols[(bi * To + t) * KC + k * Ci + c]
    if failed:
        raise MemoryError()
