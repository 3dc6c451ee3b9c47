# cython: language_level=3
# Flash-style attention core (blocked, online softmax, lse saved), OpenMP over (batch, head),
# SGEMM on (BQ x BK) tiles with BLAS single-threaded (the caller holds runtime.blas_single()).
# Maths and layout: fastcpu/kernels/attention.py header. q, k, v, out (B, T, H, D); lse (B, H, T)
from cython.parallel cimport prange
from libc.math cimport logf, INFINITY

cdef extern from "fastcpu_simd.h" nogil:
    float expf(float)     # with a libmvec simd clone: vectorised in the softmax loops
from libc.stdlib cimport malloc, calloc, free
from libc.string cimport memset
from blas cimport gemm_rm

cdef extern from "attn_amx.h" nogil:
    int fc_amx_built()
    int fc_amx_init()
    int fc_amx_fwd_head(const float* q, const float* k, const float* v, int rs, int T, int H,
                        int D, int L, int h, float scale, float* out, float* lse, int BQ, int BK)
    int fc_amx_bwd_head(const float* dout, const float* q, const float* k, const float* v,
                        int rs, const float* out, const float* lse, int T, int H, int D, int L,
                        int h, float scale, float* dq, float* dk, float* dv, int G, int BQ,
                        int BK)

cdef extern from *:
    const char* FASTCPU_SRC_HASH
SRC_HASH = FASTCPU_SRC_HASH.decode()


cdef int _fwd_head(const float* q, const float* k, const float* v, int rs, int T, int H, int D,
                   int L, int h, float scale, float* out, float* lse, int BQ,
                   int BK) noexcept nogil:
    # one (batch, head): q/k/v/out point at [b, 0, 0, 0], lse at [b, h, 0]; row stride rs for
    # q/k/v (H*D, or 3*H*D when they are views of one packed projection), H*D for out
    cdef int HD = H * D, nq, nk, i0, j0, r, c, d, t
    cdef float mx, corr, sm, pv, inv
    cdef float* Q = <float*>malloc(<size_t>BQ * D * sizeof(float))
    cdef float* K = <float*>malloc(<size_t>L * D * sizeof(float))
    cdef float* V = <float*>malloc(<size_t>L * D * sizeof(float))
    cdef float* S = <float*>malloc(<size_t>BQ * BK * sizeof(float))
    cdef float* acc = <float*>malloc(<size_t>BQ * D * sizeof(float))
    cdef float* m = <float*>malloc(BQ * sizeof(float))
    cdef float* l = <float*>malloc(BQ * sizeof(float))
    if Q == NULL or K == NULL or V == NULL or S == NULL or acc == NULL or m == NULL or l == NULL:
        free(Q); free(K); free(V); free(S); free(acc); free(m); free(l)
        return -1
    for t in range(L):
        for d in range(D):
            K[t * D + d] = k[t * rs + h * D + d]
            V[t * D + d] = v[t * rs + h * D + d]
    i0 = 0
    while i0 < T:
        nq = BQ if T - i0 > BQ else T - i0
        for r in range(nq):
            for d in range(D):
                Q[r * D + d] = q[(i0 + r) * rs + h * D + d]
            m[r] = -INFINITY
            l[r] = 0
        memset(acc, 0, <size_t>nq * D * sizeof(float))
        j0 = 0
        while j0 < L:
            nk = BK if L - j0 > BK else L - j0
            gemm_rm(b'N', b'T', nq, nk, D, scale, Q, D, &K[j0 * D], D, 0.0, S, BK)
            for r in range(nq):
                mx = m[r]
                for c in range(nk):
                    if S[r * BK + c] > mx:
                        mx = S[r * BK + c]
                corr = expf(m[r] - mx)
                sm = 0
                for c in range(nk):
                    pv = expf(S[r * BK + c] - mx)
                    S[r * BK + c] = pv
                    sm = sm + pv
                l[r] = l[r] * corr + sm
                m[r] = mx
                for d in range(D):
                    acc[r * D + d] *= corr
            gemm_rm(b'N', b'N', nq, D, nk, 1.0, S, BK, &V[j0 * D], D, 1.0, acc, D)
            j0 = j0 + BK
        for r in range(nq):
            inv = 1.0 / l[r]
            for d in range(D):
                out[(i0 + r) * HD + h * D + d] = acc[r * D + d] * inv
            lse[i0 + r] = m[r] + logf(l[r])
        i0 = i0 + BQ
    free(Q); free(K); free(V); free(S); free(acc); free(m); free(l)
    return 0


def amx_init():
    """0 once AMX tiles may run here (built with them, and Linux granted the tile state), else
    -1 (refused) or -2 (not built)."""
    if not fc_amx_built():
        return -2
    return fc_amx_init()


cdef bint _rows_ok(const float[:, :, :, :] a):
    # each (t) row of a (B, T, H, D) view is H*D contiguous floats
    return a.strides[3] == sizeof(float) and a.strides[2] == a.shape[3] * sizeof(float)


def forward(const float[:, :, :, :] q, const float[:, :, :, :] k,
            const float[:, :, :, :] v, const long[::1] lengths, float scale,
            float[:, :, :, ::1] out, float[:, :, ::1] lse, int BQ, int BK, bint skipq,
            int nthreads, bint amx=False):
    # amx: bf16 tiles on AMX (attn_amx.h; the caller checked amx_init() and D, BQ, BK % 32)
    # skipq: query rows t >= L are not computed (out 0, lse -inf)
    cdef int B = q.shape[0], T = q.shape[1], H = q.shape[2], D = q.shape[3]
    cdef int S = <int>(q.strides[1] // sizeof(float))
    cdef Py_ssize_t bh, t, d
    cdef int b, h, L, Tq, err = 0
    if k.strides[1] != q.strides[1] or v.strides[1] != q.strides[1] or not (
            _rows_ok(q) and _rows_ok(k) and _rows_ok(v)):
        raise ValueError("attention: q, k, v need contiguous (H, D) rows and one row stride")
    for bh in prange(B * H, nogil=True, num_threads=nthreads, schedule="dynamic"):
        b = bh // H
        h = bh - b * H
        L = lengths[b]
        Tq = L if skipq else T
        if L == 0:
            Tq = 0
        for t in range(Tq, T):
            lse[b, h, t] = -INFINITY
            for d in range(D):
                out[b, t, h, d] = 0
        if Tq > 0:
            if amx:
                if fc_amx_fwd_head(&q[b, 0, 0, 0], &k[b, 0, 0, 0], &v[b, 0, 0, 0], S, Tq, H, D,
                                   L, h, scale, &out[b, 0, 0, 0], &lse[b, h, 0], BQ, BK) != 0:
                    err = 1
            elif _fwd_head(&q[b, 0, 0, 0], &k[b, 0, 0, 0], &v[b, 0, 0, 0], S, Tq, H, D, L, h,
                           scale, &out[b, 0, 0, 0], &lse[b, h, 0], BQ, BK) != 0:
                err = 1
    if err:
        raise MemoryError()


cdef int _bwd_head(const float* dout, const float* q, const float* k, const float* v, int rs,
                   const float* out, const float* lse, int T, int H, int D, int L, int h,
                   float scale, float* dq, float* dk, float* dv, int G, int BQ,
                   int BK) noexcept nogil:
    # row strides: rs for q/k/v, G for dq/dk/dv, H*D for dout and out
    cdef int HD = H * D, nq, nk, i0, j0, r, c, d, t
    cdef float di, s
    cdef float* Q = <float*>malloc(<size_t>BQ * D * sizeof(float))
    cdef float* dO = <float*>malloc(<size_t>BQ * D * sizeof(float))
    cdef float* dQ = <float*>malloc(<size_t>BQ * D * sizeof(float))
    cdef float* Di = <float*>malloc(BQ * sizeof(float))
    cdef float* K = <float*>malloc(<size_t>L * D * sizeof(float))
    cdef float* V = <float*>malloc(<size_t>L * D * sizeof(float))
    cdef float* dK = <float*>calloc(<size_t>L * D, sizeof(float))
    cdef float* dV = <float*>calloc(<size_t>L * D, sizeof(float))
    cdef float* P = <float*>malloc(<size_t>BQ * BK * sizeof(float))
    cdef float* dP = <float*>malloc(<size_t>BQ * BK * sizeof(float))
    if (Q == NULL or dO == NULL or dQ == NULL or Di == NULL or K == NULL or V == NULL
            or dK == NULL or dV == NULL or P == NULL or dP == NULL):
        free(Q); free(dO); free(dQ); free(Di); free(K); free(V); free(dK); free(dV)
        free(P); free(dP)
        return -1
    for t in range(L):
        for d in range(D):
            K[t * D + d] = k[t * rs + h * D + d]
            V[t * D + d] = v[t * rs + h * D + d]
    i0 = 0
    while i0 < T:
        nq = BQ if T - i0 > BQ else T - i0
        for r in range(nq):
            s = 0
            for d in range(D):
                Q[r * D + d] = q[(i0 + r) * rs + h * D + d]
                dO[r * D + d] = dout[(i0 + r) * HD + h * D + d]
                s = s + dout[(i0 + r) * HD + h * D + d] * out[(i0 + r) * HD + h * D + d]
            Di[r] = s
        memset(dQ, 0, <size_t>nq * D * sizeof(float))
        j0 = 0
        while j0 < L:
            nk = BK if L - j0 > BK else L - j0
            gemm_rm(b'N', b'T', nq, nk, D, scale, Q, D, &K[j0 * D], D, 0.0, P, BK)
            gemm_rm(b'N', b'T', nq, nk, D, 1.0, dO, D, &V[j0 * D], D, 0.0, dP, BK)
            for r in range(nq):
                for c in range(nk):
                    P[r * BK + c] = expf(P[r * BK + c] - lse[i0 + r])
                    dP[r * BK + c] = P[r * BK + c] * (dP[r * BK + c] - Di[r]) * scale
            # dV += P^T dO ; dQ += dS K ; dK += dS^T Q   (dS already carries the scale)
            gemm_rm(b'T', b'N', nk, D, nq, 1.0, P, BK, dO, D, 1.0, &dV[j0 * D], D)
            gemm_rm(b'N', b'N', nq, D, nk, 1.0, dP, BK, &K[j0 * D], D, 1.0, dQ, D)
            gemm_rm(b'T', b'N', nk, D, nq, 1.0, dP, BK, Q, D, 1.0, &dK[j0 * D], D)
            j0 = j0 + BK
        for r in range(nq):
            for d in range(D):
                dq[(i0 + r) * G + h * D + d] += dQ[r * D + d]
        i0 = i0 + BQ
    for t in range(L):
        for d in range(D):
            dk[t * G + h * D + d] += dK[t * D + d]
            dv[t * G + h * D + d] += dV[t * D + d]
    free(Q); free(dO); free(dQ); free(Di); free(K); free(V); free(dK); free(dV)
    free(P); free(dP)
    return 0


def backward(const float[:, :, :, ::1] dout, const float[:, :, :, :] q,
             const float[:, :, :, :] k, const float[:, :, :, :] v,
             const float[:, :, :, ::1] out, const float[:, :, ::1] lse, const long[::1] lengths,
             float scale, float[:, :, :, :] dq, float[:, :, :, :] dk, float[:, :, :, :] dv,
             int BQ, int BK, bint skipq, int nthreads, bint amx=False):
    cdef int B = q.shape[0], T = q.shape[1], H = q.shape[2], D = q.shape[3]
    cdef int S = <int>(q.strides[1] // sizeof(float)), G = <int>(dq.strides[1] // sizeof(float))
    cdef Py_ssize_t bh
    cdef int b, h, L, err = 0
    if k.strides[1] != q.strides[1] or v.strides[1] != q.strides[1] \
            or dk.strides[1] != dq.strides[1] or dv.strides[1] != dq.strides[1] or not (
                _rows_ok(q) and _rows_ok(k) and _rows_ok(v) and _rows_ok(dq) and _rows_ok(dk)
                and _rows_ok(dv)):
        raise ValueError("attention: q, k, v and dq, dk, dv need contiguous (H, D) rows and "
                         "one row stride each")
    for bh in prange(B * H, nogil=True, num_threads=nthreads, schedule="dynamic"):
        b = bh // H
        h = bh - b * H
        L = lengths[b]
        if L > 0:
            if amx:
                if fc_amx_bwd_head(&dout[b, 0, 0, 0], &q[b, 0, 0, 0], &k[b, 0, 0, 0],
                                   &v[b, 0, 0, 0], S, &out[b, 0, 0, 0], &lse[b, h, 0],
                                   L if skipq else T, H, D, L, h, scale, &dq[b, 0, 0, 0],
                                   &dk[b, 0, 0, 0], &dv[b, 0, 0, 0], G, BQ, BK) != 0:
                    err = 1
            elif _bwd_head(&dout[b, 0, 0, 0], &q[b, 0, 0, 0], &k[b, 0, 0, 0], &v[b, 0, 0, 0],
                           S, &out[b, 0, 0, 0], &lse[b, h, 0], L if skipq else T, H, D, L, h,
                           scale, &dq[b, 0, 0, 0], &dk[b, 0, 0, 0], &dv[b, 0, 0, 0], G, BQ,
                           BK) != 0:
                err = 1
    if err:
        raise MemoryError()
