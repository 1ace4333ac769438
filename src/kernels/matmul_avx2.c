/* matmul_avx2.c — y[T,N] = x[T,K]·W[N,K]ᵀ (+bias) with AVX2 + FMA + F16C,
 * the tier for x86-64 CPUs without AVX-512. Always exact (F32 products).
 *
 * One "dot" kernel for every T: a tile of R W rows × TC x rows; each W
 * vector (8 weights, widened exactly: BF16 by a 16-bit shift, F16 by
 * vcvtph2ps) is loaded once per tile and multiplied with all TC x rows, so
 * for T <= TC the weights stream from memory exactly once. Threads split N. */
#include <immintrin.h>
#include <omp.h>
#include <string.h>

#include "kernels/matmul_isa.h"

#define AI static inline __attribute__((always_inline))

#define R_MAX 3  /* W rows per tile */
#define TC_MAX 4 /* x rows per tile: 3 × 4 accumulators + 3 W + 1 x = 16 ymm */

AI size_t dt_size(st_dtype dt) { return dt == ST_F32 ? 4 : 2; }

/* 8 weights at p (any alignment) widened exactly to F32. */
AI __m256 w8(const unsigned char *p, st_dtype dt) {
    if (dt == ST_BF16)
        return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p)), 16));
    if (dt == ST_F16) return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
    return _mm256_loadu_ps((const float *)p);
}

/* First n (< 8) weights at p, zero-padded, without reading past them. */
AI __m256 w8_tail(const unsigned char *p, st_dtype dt, int64_t n) {
    unsigned char buf[32] = {0};
    memcpy(buf, p, (size_t)n * dt_size(dt));
    return w8(buf, dt);
}

AI __m256i tail_mask(int64_t n) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

AI float hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

AI void dot_tile(const int R, const int TC, const st_dtype dt, const unsigned char *Wr, int64_t ldw, const float *x,
                 int64_t K, float *y, int64_t N, const float *bias) {
    __m256 acc[R_MAX][TC_MAX];
    for (int j = 0; j < R; j++)
        for (int i = 0; i < TC; i++) acc[j][i] = _mm256_setzero_ps();
    const size_t es = dt_size(dt);
    int64_t k = 0;
    for (; k + 8 <= K; k += 8) {
        __m256 w[R_MAX];
        for (int j = 0; j < R; j++) w[j] = w8(Wr + j * ldw + k * es, dt);
        for (int i = 0; i < TC; i++) {
            __m256 xv = _mm256_loadu_ps(x + i * K + k);
            for (int j = 0; j < R; j++) acc[j][i] = _mm256_fmadd_ps(w[j], xv, acc[j][i]);
        }
    }
    if (k < K) {
        const __m256i m = tail_mask(K - k);
        __m256 w[R_MAX];
        for (int j = 0; j < R; j++) w[j] = w8_tail(Wr + j * ldw + k * es, dt, K - k);
        for (int i = 0; i < TC; i++) {
            __m256 xv = _mm256_maskload_ps(x + i * K + k, m);
            for (int j = 0; j < R; j++) acc[j][i] = _mm256_fmadd_ps(w[j], xv, acc[j][i]);
        }
    }
    for (int i = 0; i < TC; i++)
        for (int j = 0; j < R; j++) y[i * N + j] = hsum8(acc[j][i]) + (bias ? bias[j] : 0.0f);
}

AI void tile_row(const int R, const st_dtype dt, const unsigned char *Wr, int64_t ldw, const float *x, int64_t T,
                 int64_t K, float *y, int64_t N, const float *bias) {
    for (int64_t t = 0; t < T; t += TC_MAX) {
        switch (T - t >= TC_MAX ? TC_MAX : T - t) {
        case 1: dot_tile(R, 1, dt, Wr, ldw, x + t * K, K, y + t * N, N, bias); break;
        case 2: dot_tile(R, 2, dt, Wr, ldw, x + t * K, K, y + t * N, N, bias); break;
        case 3: dot_tile(R, 3, dt, Wr, ldw, x + t * K, K, y + t * N, N, bias); break;
        default: dot_tile(R, TC_MAX, dt, Wr, ldw, x + t * K, K, y + t * N, N, bias); break;
        }
    }
}

AI void dot_rows(const st_dtype dt, float *y, const float *x, const unsigned char *W, const float *bias, int64_t T,
                 int64_t K, int64_t N, int64_t n0, int64_t n1) {
    const int64_t ldw = K * (int64_t)dt_size(dt);
    int64_t n = n0;
    for (; n + R_MAX <= n1; n += R_MAX) tile_row(R_MAX, dt, W + n * ldw, ldw, x, T, K, y + n, N, bias ? bias + n : NULL);
    for (; n < n1; n++) tile_row(1, dt, W + n * ldw, ldw, x, T, K, y + n, N, bias ? bias + n : NULL);
}

static void rows_bf16(float *y, const float *x, const unsigned char *W, const float *bias, int64_t T, int64_t K,
                      int64_t N, int64_t n0, int64_t n1) {
    dot_rows(ST_BF16, y, x, W, bias, T, K, N, n0, n1);
}
static void rows_f16(float *y, const float *x, const unsigned char *W, const float *bias, int64_t T, int64_t K,
                     int64_t N, int64_t n0, int64_t n1) {
    dot_rows(ST_F16, y, x, W, bias, T, K, N, n0, n1);
}
static void rows_f32(float *y, const float *x, const unsigned char *W, const float *bias, int64_t T, int64_t K,
                     int64_t N, int64_t n0, int64_t n1) {
    dot_rows(ST_F32, y, x, W, bias, T, K, N, n0, n1);
}

void matmul_avx2(float *y, const float *x, const void *W, st_dtype wdt, const float *bias, int64_t T, int64_t K,
                 int64_t N) {
    void (*rows)(float *, const float *, const unsigned char *, const float *, int64_t, int64_t, int64_t, int64_t,
                 int64_t) = wdt == ST_BF16 ? rows_bf16 : wdt == ST_F16 ? rows_f16 : rows_f32;
    /* Chunks of 48 rows (a multiple of R_MAX and of 16 floats of y). */
    const int64_t nblk = (N + 47) / 48;
    int nt = omp_get_max_threads();
    if ((double)N * K * T < 1 << 16) nt = 1;
    if (nt > nblk) nt = (int)nblk;
#pragma omp parallel num_threads(nt)
    {
        const int64_t me = omp_get_thread_num(), nth = omp_get_num_threads();
        int64_t n0 = nblk * me / nth * 48, n1 = nblk * (me + 1) / nth * 48;
        if (n1 > N) n1 = N;
        if (n0 < n1) rows(y, x, (const unsigned char *)W, bias, T, K, N, n0, n1);
    }
}
