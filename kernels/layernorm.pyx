# cython: language_level=3
# LayerNorm over the last dim (+ fused dropout/residual), OpenMP over rows.
# Same maths and layout as fastcpu/kernels/layernorm.py (see its header); float32 only.
# x, res, out, pre: (N, C); w, b: (C,); mean, rstd: (N,)
from cython.parallel cimport prange
from libc.math cimport sqrtf
from libc.stdint cimport uint64_t
from libc.stdlib cimport calloc, free
from rng cimport rand24

cdef extern from *:
    const char* FASTCPU_SRC_HASH
SRC_HASH = FASTCPU_SRC_HASH.decode()


def forward(const float[:, ::1] a, const float[:, ::1] res, const float[::1] w,
            const float[::1] b, float eps, uint64_t key, uint64_t thr, float scale,
            float[:, ::1] out, float[:, ::1] pre, float[::1] mean, float[::1] rstd,
            int nthreads):
    # thr == 0 and res is a: plain layernorm of a (pre aliases out and is overwritten last).
    # otherwise: pre = dropout(a) + res; out = layernorm(pre)
    cdef Py_ssize_t N = a.shape[0], C = a.shape[1], i, c
    cdef bint fused = (&res[0, 0] != &a[0, 0]) if N > 0 else False
    cdef float m, v, s, d, av
    if N == 0:
        return
    for i in prange(N, nogil=True, num_threads=nthreads, schedule="static"):
        m = 0
        if fused:
            for c in range(C):
                av = a[i, c]
                if thr > 0:
                    if rand24(key, <uint64_t>(i * C + c)) >= thr:
                        av = av * scale
                    else:
                        av = 0
                pre[i, c] = av + res[i, c]
                m = m + pre[i, c]
            m = m / C
            v = 0
            for c in range(C):
                d = pre[i, c] - m
                v = v + d * d
            s = 1.0 / sqrtf(v / C + eps)
            for c in range(C):
                out[i, c] = (pre[i, c] - m) * s * w[c] + b[c]
        else:
            for c in range(C):
                m = m + a[i, c]
            m = m / C
            v = 0
            for c in range(C):
                d = a[i, c] - m
                v = v + d * d
            s = 1.0 / sqrtf(v / C + eps)
            for c in range(C):
                out[i, c] = (a[i, c] - m) * s * w[c] + b[c]
        mean[i] = m
        rstd[i] = s


def backward(const float[:, ::1] dout, const float[:, ::1] x, const float[::1] w,
             const float[::1] mean, const float[::1] rstd, uint64_t key, uint64_t thr,
             float scale, float[:, ::1] dx, float[:, ::1] dx2, bint has2,
             float[::1] dw, float[::1] db, int nchunk, bint acc, int nthreads):
    # dpre = LN backward; dx (+)= dpre; if has2: dx2 (+)= dpre * keep * scale
    # acc: accumulate (+=) into dx/dx2, or write (=)
    # dw/db: per-chunk partials (chunk ch owns rows [ch*N/nchunk, (ch+1)*N/nchunk)), then summed.
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], i, c, ch, r0, r1
    cdef float m, s, sg, sgx, xh, d, g, dv, d2
    cdef float* pw
    cdef float* pb
    if N == 0:
        return
    pw = <float*>calloc(nchunk * C, sizeof(float))
    pb = <float*>calloc(nchunk * C, sizeof(float))
    if pw == NULL or pb == NULL:
        free(pw); free(pb)
        raise MemoryError()
    try:
        for ch in prange(nchunk, nogil=True, num_threads=nthreads, schedule="static"):
            r0 = ch * N // nchunk
            r1 = (ch + 1) * N // nchunk
            for i in range(r0, r1):
                m = mean[i]
                s = rstd[i]
                sg = 0
                sgx = 0
                for c in range(C):
                    xh = (x[i, c] - m) * s
                    d = dout[i, c]
                    pw[ch * C + c] += d * xh
                    pb[ch * C + c] += d
                    g = d * w[c]
                    sg = sg + g
                    sgx = sgx + g * xh
                sg = sg / C
                sgx = sgx / C
                for c in range(C):
                    xh = (x[i, c] - m) * s
                    g = dout[i, c] * w[c]
                    dv = s * (g - sg - xh * sgx)
                    d2 = dv
                    if thr > 0:
                        if rand24(key, <uint64_t>(i * C + c)) >= thr:
                            d2 = dv * scale
                        else:
                            d2 = 0
                    if acc:
                        dx[i, c] += dv
                        if has2:
                            dx2[i, c] += d2
                    else:
                        dx[i, c] = dv
                        if has2:
                            dx2[i, c] = d2
        for ch in range(nchunk):
            for c in range(C):
                dw[c] += pw[ch * C + c]
                db[c] += pb[ch * C + c]
    finally:
        free(pw)
        free(pb)
