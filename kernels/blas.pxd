# Row-major GEMM on top of SciPy's BLAS (header-only). The BLAS threads are whatever
# fastcpu.runtime set; call it outside prange, or inside prange only under runtime.blas_single().
from scipy.linalg.cython_blas cimport sgemm

cdef inline void gemm_rm(char ta, char tb, int M, int N, int K, float alpha,
                         const float* A, int lda, const float* B, int ldb, float beta,
                         float* C, int ldc) noexcept nogil:
    # row-major C(M, N) = alpha * op(A)(M, K) @ op(B)(K, N) + beta * C
    # == column-major C^T(N, M) = op(B)^T @ op(A)^T: swap the operands, keep the flags.
    if M <= 0 or N <= 0:
        return
    sgemm(&tb, &ta, &N, &M, &K, &alpha, <float*>B, &ldb, <float*>A, &lda, &beta, C, &ldc)
