/* bf16 attention tiles on AMX (Intel Advanced Matrix Extensions), for bf16 precision.
 *
 * The same flash-style walk as attention.pyx's fp32 tiles (one (batch, head) pair per call,
 * BQ x BK tiles, online softmax, the lse saved, tiles recomputed in backward), with every tile
 * product on AMX: bf16 operands, fp32 accumulation (TDPBF16PS). The softmax statistics, P's and
 * dS's fp32 values, Di and every accumulator stay fp32; P and dS are rounded to bf16 (nearest
 * even) only as GEMM operands, as in any bf16 autocast.
 *
 * AMX's B operand is "VNNI" packed: row i holds, for each of 16 columns, the pair (B[2i][n],
 * B[2i+1][n]) in one 32-bit word (the even k in the low half). So per pair the keys are packed
 * once as K^T and V^T pairs (for S = Q K^T and dP = dO V^T) and as pairs of key rows (for
 * O += P V and dQ += dS K); backward forms dK and dV transposed (dK^T += Q^T dS, dV^T += dO^T P,
 * whose B operands are pairs of P's / dS's rows, built from fp32 rows with vector conversions)
 * and transposes them once per pair. Every dimension is zero-padded to a multiple of 32.
 *
 * Requires D, BQ, BK multiples of 32; the caller checks, and has called fc_amx_init() (the
 * kernel's permission for the tile data, once per process). Elsewhere (not x86-64 Linux with
 * GCC >= 11, or a kernel variant below AVX-512: the portable x86_64 and v3 builds stay free of
 * AVX-512 and AMX code) the functions exist and return -2. */
#ifndef FASTCPU_ATTN_AMX_H
#define FASTCPU_ATTN_AMX_H
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>
#include "fastcpu_simd.h"

#if defined(__x86_64__) && defined(__linux__) && defined(__GNUC__) && !defined(__clang__) \
    && __GNUC__ >= 11 && defined(__AVX512F__)
#include <immintrin.h>
#include <unistd.h>
#include <sys/syscall.h>

#define FC_AMX __attribute__((target( \
    "avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,amx-tile,amx-bf16,fma")))

static int fc_amx_built(void) { return 1; }

static int fc_amx_init(void) {
    /* Linux gives a process AMX's 8 KiB tile state only on request (ARCH_REQ_XCOMP_PERM,
     * XFEATURE_XTILEDATA); idempotent, and oneDNN makes the same request for its AMX kernels. */
    return syscall(SYS_arch_prctl, 0x1023, 18) == 0 ? 0 : -1;
}

typedef struct {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} fc_tilecfg;

FC_AMX static void fc_amx_config(void) {
    fc_tilecfg c;
    memset(&c, 0, sizeof c);
    c.palette = 1;
    for (int t = 0; t < 8; t++) {
        c.colsb[t] = 64;
        c.rows[t] = 16;
    }
    _tile_loadconfig(&c);
}

static inline uint32_t fc_bf16_bits(float f) {
    /* float32 -> bf16 bits, round to nearest even; NaN stays NaN (quiet) */
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u)
        return (u >> 16) | 0x40u;
    return (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
}

static inline __mmask16 fc_mask(int n) {
    return n >= 16 ? (__mmask16)0xFFFF : n <= 0 ? (__mmask16)0 : (__mmask16)((1u << n) - 1u);
}

FC_AMX static inline __m512i fc_cvt16(const float* x, int n) {
    /* bf16 of x[0:min(n,16)] (0 beyond) as 16 zero-extended 32-bit words */
    __m512 v = x ? _mm512_maskz_loadu_ps(fc_mask(n), x) : _mm512_setzero_ps();
    __m256bh b = _mm512_cvtneps_pbh(v);
    return _mm512_cvtepu16_epi32((__m256i)b);
}

FC_AMX static void fc_row_bf16(const float* x, uint16_t* y, int n, int npad) {
    /* y[0:n] = bf16(x[0:n]), y[n:npad] = 0 (npad a multiple of 16; x may be NULL: all 0) */
    for (int i = 0; i < npad; i += 16) {
        __m512 v = x ? _mm512_maskz_loadu_ps(fc_mask(n - i), x + i) : _mm512_setzero_ps();
        __m256bh b = _mm512_cvtneps_pbh(v);
        _mm256_storeu_si256((__m256i*)(y + i), (__m256i)b);
    }
}

FC_AMX static void fc_pair_rows(const float* x0, const float* x1, uint32_t* y, int n, int npad) {
    /* y[j] = bf16(x0[j]) | bf16(x1[j]) << 16 for j < n, 0 up to npad; a NULL row reads as 0 */
    for (int i = 0; i < npad; i += 16) {
        __m512i a = fc_cvt16(x0 ? x0 + i : NULL, n - i);
        __m512i b = fc_cvt16(x1 ? x1 + i : NULL, n - i);
        _mm512_storeu_si512((void*)(y + i), _mm512_or_si512(a, _mm512_slli_epi32(b, 16)));
    }
}

FC_AMX static inline __m512 fc_exp16(__m512 x) {
    /* exp(x), 16 lanes: n = round(x / ln 2), r = x - n ln 2 in two parts (Cody-Waite), a
     * degree-7 Taylor polynomial on |r| <= 0.35 (truncation < 6e-9), times 2^n (vscalefps).
     * x is clamped to [-104, 88.7]: exp(-inf) and anything below e^-104 give 0 (or a subnormal). */
    x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-104.0f)), _mm512_set1_ps(88.7f));
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145751953125f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.428606765330187e-6f), r);
    __m512 p = _mm512_set1_ps(1.0f / 5040);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 720));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(p, n);
}

FC_AMX static float fc_softmax_row(float* s, int nk, int nkp, float scale, float* m,
                                   uint16_t* pb) {
    /* One score row of a tile, online softmax: s[0:nk] *= scale; the running max *m grows to
     * cover them; pb[0:nkp] = bf16(exp(s - max)) (0 beyond nk); returns their fp32 sum. */
    __m512 vs = _mm512_set1_ps(scale), vmx = _mm512_set1_ps(-INFINITY);
    for (int c = 0; c < nk; c += 16) {
        __mmask16 k = fc_mask(nk - c);
        __m512 x = _mm512_mul_ps(_mm512_maskz_loadu_ps(k, s + c), vs);
        _mm512_mask_storeu_ps(s + c, k, x);
        vmx = _mm512_mask_max_ps(vmx, k, vmx, x);
    }
    float mx = _mm512_reduce_max_ps(vmx);
    mx = mx > *m ? mx : *m;
    *m = mx;
    __m512 vm = _mm512_set1_ps(mx), sum = _mm512_setzero_ps();
    for (int c = 0; c < nkp; c += 16) {
        __mmask16 k = fc_mask(nk - c);
        __m512 p = _mm512_maskz_mov_ps(k, fc_exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, s + c),
                                                                 vm)));
        sum = _mm512_add_ps(sum, p);
        _mm256_storeu_si256((__m256i*)(pb + c), (__m256i)_mm512_cvtneps_pbh(p));
    }
    return _mm512_reduce_add_ps(sum);
}

FC_AMX static void fc_dsoftmax_row(float* p, float* g, int nk, int nkp, float scale, float lr,
                                   float dr, uint16_t* dsb) {
    /* One row of a backward tile: p = exp(scale p - lse), g = dS = p (g - Di) scale (both 0
     * beyond nk, up to nkp), dsb = bf16(dS) */
    __m512 vs = _mm512_set1_ps(scale), vl = _mm512_set1_ps(lr), vd = _mm512_set1_ps(dr);
    for (int c = 0; c < nkp; c += 16) {
        __mmask16 k = fc_mask(nk - c);
        __m512 e = _mm512_maskz_mov_ps(k, fc_exp16(_mm512_fmsub_ps(
            _mm512_maskz_loadu_ps(k, p + c), vs, vl)));
        __m512 d = _mm512_mul_ps(_mm512_mul_ps(e, _mm512_sub_ps(_mm512_maskz_loadu_ps(k, g + c),
                                                                vd)), vs);
        _mm512_storeu_ps(p + c, e);
        _mm512_storeu_ps(g + c, d);
        _mm256_storeu_si256((__m256i*)(dsb + c), (__m256i)_mm512_cvtneps_pbh(d));
    }
}

FC_AMX static void fc_amx_gemm(int M, int N, int K, const uint16_t* A, long lda,
                               const uint32_t* B, long ldb, float* C, long ldc, int acc) {
    /* C (M x N fp32, row stride ldc) (+)= A (M x K bf16, row stride lda) @ B, B as K/2 rows of
     * N bf16 pairs (row stride ldb words); M, N, K multiples of 32. Tiles 0-3: C (2 x 2 blocks
     * of 16 x 16), 4-5: A, 6-7: B. */
    for (int m = 0; m < M; m += 32) {
        for (int n = 0; n < N; n += 32) {
            float* c = C + (long)m * ldc + n;
            if (acc) {
                _tile_loadd(0, c, ldc * 4);
                _tile_loadd(1, c + 16, ldc * 4);
                _tile_loadd(2, c + 16 * ldc, ldc * 4);
                _tile_loadd(3, c + 16 * ldc + 16, ldc * 4);
            } else {
                _tile_zero(0);
                _tile_zero(1);
                _tile_zero(2);
                _tile_zero(3);
            }
            for (int k = 0; k < K; k += 32) {
                _tile_loadd(4, A + (long)m * lda + k, lda * 2);
                _tile_loadd(5, A + (long)(m + 16) * lda + k, lda * 2);
                _tile_loadd(6, B + (long)(k / 2) * ldb + n, ldb * 4);
                _tile_loadd(7, B + (long)(k / 2) * ldb + n + 16, ldb * 4);
                _tile_dpbf16ps(0, 4, 6);
                _tile_dpbf16ps(1, 4, 7);
                _tile_dpbf16ps(2, 5, 6);
                _tile_dpbf16ps(3, 5, 7);
            }
            _tile_stored(0, c, ldc * 4);
            _tile_stored(1, c + 16, ldc * 4);
            _tile_stored(2, c + 16 * ldc, ldc * 4);
            _tile_stored(3, c + 16 * ldc + 16, ldc * 4);
        }
    }
}

static inline int fc_up32(int n) { return (n + 31) / 32 * 32; }

static void* fc_alloc(size_t bytes) {
    /* 64-byte aligned, zeroed */
    size_t n = (bytes + 63) / 64 * 64;
    void* p = aligned_alloc(64, n ? n : 64);
    if (p)
        memset(p, 0, n ? n : 64);
    return p;
}

static void fc_pack_t(const float* x, int rs, int off, int L, int Lp, int D2, uint32_t* y) {
    /* y[i][c] = (x[c][2i], x[c][2i+1]) as bf16 pairs, c < L (0 up to Lp): a K^T or V^T B operand */
    for (int c = 0; c < L; c++) {
        const float* row = x + (long)c * rs + off;
        for (int i = 0; i < D2; i++)
            y[(long)i * Lp + c] = fc_bf16_bits(row[2 * i]) | (fc_bf16_bits(row[2 * i + 1]) << 16);
    }
}

FC_AMX static void fc_pack_rows(const float* x, int rs, int off, int L, int Lp, int D,
                                uint32_t* y) {
    /* y[j][d] = (x[2j][d], x[2j+1][d]) as bf16 pairs: rows of a K or V B operand */
    for (int j = 0; j < Lp / 2; j++)
        fc_pair_rows(2 * j < L ? x + (long)(2 * j) * rs + off : NULL,
                     2 * j + 1 < L ? x + (long)(2 * j + 1) * rs + off : NULL,
                     y + (long)j * D, D, D);
}

FC_AMX static int fc_amx_fwd_head(const float* q, const float* k, const float* v, int rs, int T,
                                  int H, int D, int L, int h, float scale, float* out, float* lse,
                                  int BQ, int BK) {
    int HD = H * D, D2 = D / 2, Lp = fc_up32(L), err = 0;
    uint32_t* KT = fc_alloc((size_t)D2 * Lp * 4);
    uint32_t* Vv = fc_alloc((size_t)(Lp / 2) * D * 4);
    uint16_t* Qb = fc_alloc((size_t)BQ * D * 2);
    float* S = fc_alloc((size_t)BQ * BK * 4);
    uint16_t* Pb = fc_alloc((size_t)BQ * BK * 2);
    float* acc = fc_alloc((size_t)BQ * D * 4);
    float* m = fc_alloc((size_t)BQ * 4);
    float* l = fc_alloc((size_t)BQ * 4);
    if (!KT || !Vv || !Qb || !S || !Pb || !acc || !m || !l) {
        err = -1;
        goto done;
    }
    fc_pack_t(k, rs, h * D, L, Lp, D2, KT);
    fc_pack_rows(v, rs, h * D, L, Lp, D, Vv);
    fc_amx_config();
    for (int i0 = 0; i0 < T; i0 += BQ) {
        int nq = T - i0 < BQ ? T - i0 : BQ, nqp = fc_up32(nq);
        for (int r = 0; r < nqp; r++) {
            fc_row_bf16(r < nq ? q + (long)(i0 + r) * rs + h * D : NULL, Qb + (long)r * D, D, D);
            m[r] = -INFINITY;
            l[r] = 0;
        }
        memset(acc, 0, (size_t)nqp * D * 4);
        for (int j0 = 0; j0 < L; j0 += BK) {
            int nk = L - j0 < BK ? L - j0 : BK, nkp = fc_up32(nk);
            fc_amx_gemm(nqp, nkp, D, Qb, D, KT + j0, Lp, S, BK, 0);
            for (int r = 0; r < nq; r++) {
                float old = m[r];
                float sm = fc_softmax_row(S + (long)r * BK, nk, nkp, scale, &m[r],
                                          Pb + (long)r * BK);
                float corr = expf(old - m[r]);
                l[r] = l[r] * corr + sm;
                float* a = acc + (long)r * D;
                for (int d = 0; d < D; d++)
                    a[d] *= corr;
            }
            fc_amx_gemm(nqp, D, nkp, Pb, BK, Vv + (long)(j0 / 2) * D, D, acc, D, 1);
        }
        for (int r = 0; r < nq; r++) {
            float inv = 1.0f / l[r];
            for (int d = 0; d < D; d++)
                out[(long)(i0 + r) * HD + h * D + d] = acc[(long)r * D + d] * inv;
            lse[i0 + r] = m[r] + logf(l[r]);
        }
    }
    _tile_release();
done:
    free(KT); free(Vv); free(Qb); free(S); free(Pb); free(acc); free(m); free(l);
    return err;
}

FC_AMX static int fc_amx_bwd_head(const float* dout, const float* q, const float* k,
                                  const float* v, int rs, const float* out, const float* lse,
                                  int T, int H, int D, int L, int h, float scale, float* dq,
                                  float* dk, float* dv, int G, int BQ, int BK) {
    /* row strides: rs for q/k/v, G for dq/dk/dv, H*D for dout and out */
    int HD = H * D, D2 = D / 2, Lp = fc_up32(L), err = 0;
    uint32_t* KT = fc_alloc((size_t)D2 * Lp * 4);      /* S = Q K^T */
    uint32_t* VT = fc_alloc((size_t)D2 * Lp * 4);      /* dP = dO V^T */
    uint32_t* Kv = fc_alloc((size_t)(Lp / 2) * D * 4); /* dQ += dS K */
    float* dKT = fc_alloc((size_t)D * Lp * 4);
    float* dVT = fc_alloc((size_t)D * Lp * 4);
    uint16_t* Qb = fc_alloc((size_t)BQ * D * 2);
    uint16_t* dOb = fc_alloc((size_t)BQ * D * 2);
    uint16_t* QT = fc_alloc((size_t)D * BQ * 2);
    uint16_t* dOT = fc_alloc((size_t)D * BQ * 2);
    float* P = fc_alloc((size_t)BQ * BK * 4);
    float* dP = fc_alloc((size_t)BQ * BK * 4);
    uint16_t* dSb = fc_alloc((size_t)BQ * BK * 2);
    uint32_t* Pv = fc_alloc((size_t)(BQ / 2) * BK * 4);
    uint32_t* dSv = fc_alloc((size_t)(BQ / 2) * BK * 4);
    float* dQ = fc_alloc((size_t)BQ * D * 4);
    float* Di = fc_alloc((size_t)BQ * 4);
    if (!KT || !VT || !Kv || !dKT || !dVT || !Qb || !dOb || !QT || !dOT || !P || !dP || !dSb
            || !Pv || !dSv || !dQ || !Di) {
        err = -1;
        goto done;
    }
    fc_pack_t(k, rs, h * D, L, Lp, D2, KT);
    fc_pack_t(v, rs, h * D, L, Lp, D2, VT);
    fc_pack_rows(k, rs, h * D, L, Lp, D, Kv);
    fc_amx_config();
    for (int i0 = 0; i0 < T; i0 += BQ) {
        int nq = T - i0 < BQ ? T - i0 : BQ, nqp = fc_up32(nq);
        memset(QT, 0, (size_t)D * BQ * 2);
        memset(dOT, 0, (size_t)D * BQ * 2);
        for (int r = 0; r < nqp; r++) {
            const float* qr = r < nq ? q + (long)(i0 + r) * rs + h * D : NULL;
            const float* gr = r < nq ? dout + (long)(i0 + r) * HD + h * D : NULL;
            fc_row_bf16(qr, Qb + (long)r * D, D, D);
            fc_row_bf16(gr, dOb + (long)r * D, D, D);
            float s = 0;
            if (qr) {
                const float* orow = out + (long)(i0 + r) * HD + h * D;
                for (int d = 0; d < D; d++) {
                    s += gr[d] * orow[d];
                    QT[(long)d * BQ + r] = (uint16_t)fc_bf16_bits(qr[d]);
                    dOT[(long)d * BQ + r] = (uint16_t)fc_bf16_bits(gr[d]);
                }
            }
            Di[r] = s;
        }
        memset(dQ, 0, (size_t)nqp * D * 4);
        for (int j0 = 0; j0 < L; j0 += BK) {
            int nk = L - j0 < BK ? L - j0 : BK, nkp = fc_up32(nk);
            fc_amx_gemm(nqp, nkp, D, Qb, D, KT + j0, Lp, P, BK, 0);
            fc_amx_gemm(nqp, nkp, D, dOb, D, VT + j0, Lp, dP, BK, 0);
            for (int r = 0; r < nq; r++)
                fc_dsoftmax_row(P + (long)r * BK, dP + (long)r * BK, nk, nkp, scale, lse[i0 + r],
                                Di[r], dSb + (long)r * BK);
            for (int i = 0; i < nqp / 2; i++) {
                int r0 = 2 * i, r1 = 2 * i + 1;
                fc_pair_rows(r0 < nq ? P + (long)r0 * BK : NULL, r1 < nq ? P + (long)r1 * BK : NULL,
                             Pv + (long)i * BK, nk, nkp);
                fc_pair_rows(r0 < nq ? dP + (long)r0 * BK : NULL,
                             r1 < nq ? dP + (long)r1 * BK : NULL, dSv + (long)i * BK, nk, nkp);
            }
            fc_amx_gemm(D, nkp, nqp, dOT, BQ, Pv, BK, dVT + j0, Lp, 1);   /* dV^T += dO^T P */
            fc_amx_gemm(D, nkp, nqp, QT, BQ, dSv, BK, dKT + j0, Lp, 1);   /* dK^T += Q^T dS */
            fc_amx_gemm(nqp, D, nkp, dSb, BK, Kv + (long)(j0 / 2) * D, D, dQ, D, 1);
        }
        for (int r = 0; r < nq; r++)
            for (int d = 0; d < D; d++)
                dq[(long)(i0 + r) * G + h * D + d] += dQ[(long)r * D + d];
    }
    _tile_release();
    for (int c = 0; c < L; c++)
        for (int d = 0; d < D; d++) {
            dk[(long)c * G + h * D + d] += dKT[(long)d * Lp + c];
            dv[(long)c * G + h * D + d] += dVT[(long)d * Lp + c];
        }
done:
    free(KT); free(VT); free(Kv); free(dKT); free(dVT); free(Qb); free(dOb); free(QT);
    free(dOT); free(P); free(dP); free(dSb); free(Pv); free(dSv); free(dQ); free(Di);
    return err;
}

#else   /* no AMX build here */

static int fc_amx_built(void) { return 0; }
static int fc_amx_init(void) { return -2; }
static int fc_amx_fwd_head(const float* q, const float* k, const float* v, int rs, int T,
                           int H, int D, int L, int h, float scale, float* out, float* lse,
                           int BQ, int BK) { return -2; }
static int fc_amx_bwd_head(const float* dout, const float* q, const float* k,
                           const float* v, int rs, const float* out, const float* lse,
                           int T, int H, int D, int L, int h, float scale, float* dq,
                           float* dk, float* dv, int G, int BQ, int BK) { return -2; }
#endif
#endif
