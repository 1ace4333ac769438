/* matmul_avx512.c — y[T,N] = x[T,K]·W[N,K]ᵀ (+bias) with AVX-512.
 *
 * Two regimes:
 *  - decode (small T, memory-bound): "dot" kernel. W rows are streamed once
 *    straight from the (possibly unaligned) mmap, widened to F32 in registers
 *    (BF16: vpmovzxwd + vpslld 16; F16: vcvtph2ps; both exact) and each loaded
 *    W vector is multiplied with up to DT_TC rows of x, so W is read once for
 *    all T rows. Horizontal sums at the end of each row. T = 1 with short
 *    rows (<= 4 KiB) reads one row at a time (one sequential stream per
 *    thread: ~30% more bandwidth than four interleaved 1.8 KiB rows on Zen 4;
 *    long rows do better with four). In F32 this kernel also matches the
 *    GEMM below up to T ~ 100.
 *  - prefill (large T, compute-bound): GEMM with a packed W panel of NR = 64
 *    outputs × KC inputs, transposed to [k][n] so the MR × 64 register tile
 *    is updated with one broadcast of x per row and 4 vector loads per k.
 *      EXACT: panel in F32, vfmadd231ps.
 *      FAST (BF16 weights, avx512_bf16): x rounded to BF16 once per call (RNE),
 *      panel holds (k, k+1) BF16 pairs, vdpbf16ps does two k per lane.
 *    The panel is packed once per (panel, K block) and reused for all T rows.
 * Threads split N (panels / row ranges); small N with few panels also splits T. */
#include <immintrin.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/matmul_isa.h"

#define AI static inline __attribute__((always_inline))

/* ------------------------------------------------------------- loads */

/* 16 weights of one row starting at p (any alignment) widened exactly to F32. */
AI __m512 w16(const unsigned char *p, st_dtype dt) {
    if (dt == ST_BF16)
        return _mm512_castsi512_ps(
            _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)p)), 16));
    if (dt == ST_F16) return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p));
    return _mm512_loadu_ps(p);
}

/* Same for the first lanes set in m; the others are 0 and not read. */
AI __m512 w16_mask(const unsigned char *p, st_dtype dt, __mmask16 m) {
    if (dt == ST_BF16)
        return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, p)), 16));
    if (dt == ST_F16) return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, p));
    return _mm512_maskz_loadu_ps(m, p);
}

AI size_t dt_size(st_dtype dt) { return dt == ST_F32 ? 4 : 2; }

AI __mmask16 mask_first(int64_t n) { return n >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << n) - 1u); }

/* ------------------------------------------------------------- decode: dot kernel */

#define DT_R 4  /* W rows per tile */
#define DT_TC 4 /* x rows per tile */
#define PF_BYTES 8192 /* software prefetch distance in W bytes (whole rows, at least one tile) */

/* y[t, n..n+R) for t in [0, TC) of the x block: R×TC dot products over K. */
AI void dot_tile(const int R, const int TC, const st_dtype dt, const unsigned char *Wr, int64_t ldw, int64_t pf,
                 const float *x, int64_t K, float *y, int64_t N, const float *bias) {
    __m512 acc[DT_R][DT_TC];
    for (int j = 0; j < R; j++)
        for (int i = 0; i < TC; i++) acc[j][i] = _mm512_setzero_ps();
    const size_t es = dt_size(dt);
    int64_t k = 0;
    for (; k + 16 <= K; k += 16) {
        __m512 w[DT_R];
        for (int j = 0; j < R; j++) w[j] = w16(Wr + j * ldw + k * es, dt);
        /* Rows are short (K = 896: 28 lines); fetch the next tile's rows one
         * tile ahead instead of waiting for the hardware prefetcher to lock on. */
        for (int j = 0; j < R; j++) _mm_prefetch((const char *)(Wr + pf + j * ldw + k * es), _MM_HINT_T0);
        for (int i = 0; i < TC; i++) {
            __m512 xv = _mm512_loadu_ps(x + i * K + k);
            for (int j = 0; j < R; j++) acc[j][i] = _mm512_fmadd_ps(w[j], xv, acc[j][i]);
        }
    }
    if (k < K) {
        __mmask16 m = mask_first(K - k);
        __m512 w[DT_R];
        for (int j = 0; j < R; j++) w[j] = w16_mask(Wr + j * ldw + k * es, dt, m);
        for (int i = 0; i < TC; i++) {
            __m512 xv = _mm512_maskz_loadu_ps(m, x + i * K + k);
            for (int j = 0; j < R; j++) acc[j][i] = _mm512_fmadd_ps(w[j], xv, acc[j][i]);
        }
    }
    for (int i = 0; i < TC; i++)
        for (int j = 0; j < R; j++) y[i * N + j] = _mm512_reduce_add_ps(acc[j][i]) + (bias ? bias[j] : 0.0f);
}

/* T = 1: one row at a time so the thread's W range is read as one
 * sequential stream; four accumulators hide the FMA latency. */
AI void dot_row1(const st_dtype dt, const unsigned char *Wr, const float *x, int64_t K, float *y, const float *bias) {
    const size_t es = dt_size(dt);
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    int64_t k = 0;
    for (; k + 64 <= K; k += 64) {
        a0 = _mm512_fmadd_ps(w16(Wr + k * es, dt), _mm512_loadu_ps(x + k), a0);
        a1 = _mm512_fmadd_ps(w16(Wr + (k + 16) * es, dt), _mm512_loadu_ps(x + k + 16), a1);
        a2 = _mm512_fmadd_ps(w16(Wr + (k + 32) * es, dt), _mm512_loadu_ps(x + k + 32), a2);
        a3 = _mm512_fmadd_ps(w16(Wr + (k + 48) * es, dt), _mm512_loadu_ps(x + k + 48), a3);
    }
    for (; k + 16 <= K; k += 16) a0 = _mm512_fmadd_ps(w16(Wr + k * es, dt), _mm512_loadu_ps(x + k), a0);
    if (k < K) {
        __mmask16 m = mask_first(K - k);
        a1 = _mm512_fmadd_ps(w16_mask(Wr + k * es, dt, m), _mm512_maskz_loadu_ps(m, x + k), a1);
    }
    *y = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3))) + (bias ? *bias : 0.0f);
}

/* Rows [n0, n1) of W against all T rows of x. */
AI void dot_rows(const st_dtype dt, float *y, const float *x, const unsigned char *W, const float *bias, int64_t T,
                 int64_t K, int64_t N, int64_t n0, int64_t n1) {
    const int64_t ldw = K * (int64_t)dt_size(dt);
    const int64_t pf_rows = (PF_BYTES / ldw + DT_R - 1) / DT_R * DT_R, pf = (pf_rows > DT_R ? pf_rows : DT_R) * ldw;
    int64_t n = n0;
    if (T == 1 && ldw <= 4096) {
        for (; n < n1; n++) dot_row1(dt, W + n * ldw, x, K, y + n, bias ? bias + n : NULL);
        return;
    }
    for (; n + DT_R <= n1; n += DT_R) {
        const unsigned char *Wr = W + n * ldw;
        const float *b = bias ? bias + n : NULL;
        for (int64_t t = 0; t < T; t += DT_TC) {
            switch (T - t >= DT_TC ? DT_TC : T - t) {
            case 1: dot_tile(DT_R, 1, dt, Wr, ldw, pf, x + t * K, K, y + t * N + n, N, b); break;
            case 2: dot_tile(DT_R, 2, dt, Wr, ldw, pf, x + t * K, K, y + t * N + n, N, b); break;
            case 3: dot_tile(DT_R, 3, dt, Wr, ldw, pf, x + t * K, K, y + t * N + n, N, b); break;
            default: dot_tile(DT_R, DT_TC, dt, Wr, ldw, pf, x + t * K, K, y + t * N + n, N, b); break;
            }
        }
    }
    for (; n < n1; n++) {
        const unsigned char *Wr = W + n * ldw;
        const float *b = bias ? bias + n : NULL;
        for (int64_t t = 0; t < T; t += DT_TC) {
            switch (T - t >= DT_TC ? DT_TC : T - t) {
            case 1: dot_tile(1, 1, dt, Wr, ldw, pf, x + t * K, K, y + t * N + n, N, b); break;
            case 2: dot_tile(1, 2, dt, Wr, ldw, pf, x + t * K, K, y + t * N + n, N, b); break;
            case 3: dot_tile(1, 3, dt, Wr, ldw, pf, x + t * K, K, y + t * N + n, N, b); break;
            default: dot_tile(1, DT_TC, dt, Wr, ldw, pf, x + t * K, K, y + t * N + n, N, b); break;
            }
        }
    }
}

static void dot_rows_bf16(float *y, const float *x, const unsigned char *W, const float *bias, int64_t T, int64_t K,
                          int64_t N, int64_t n0, int64_t n1) {
    dot_rows(ST_BF16, y, x, W, bias, T, K, N, n0, n1);
}
static void dot_rows_f16(float *y, const float *x, const unsigned char *W, const float *bias, int64_t T, int64_t K,
                         int64_t N, int64_t n0, int64_t n1) {
    dot_rows(ST_F16, y, x, W, bias, T, K, N, n0, n1);
}
static void dot_rows_f32(float *y, const float *x, const unsigned char *W, const float *bias, int64_t T, int64_t K,
                         int64_t N, int64_t n0, int64_t n1) {
    dot_rows(ST_F32, y, x, W, bias, T, K, N, n0, n1);
}

static void matmul_dot(float *y, const float *x, const void *W, st_dtype wdt, const float *bias, int64_t T, int64_t K,
                       int64_t N) {
    void (*rows)(float *, const float *, const unsigned char *, const float *, int64_t, int64_t, int64_t, int64_t,
                 int64_t) = wdt == ST_BF16 ? dot_rows_bf16 : wdt == ST_F16 ? dot_rows_f16 : dot_rows_f32;
    /* Chunks of 16 rows: threads never write the same 64-byte line of y. */
    const int64_t nblk = (N + 15) / 16;
    int nt = omp_get_max_threads();
    if ((double)N * K * T < 1 << 16) nt = 1; /* too small to pay for a parallel region */
    if (nt > nblk) nt = (int)nblk;
#pragma omp parallel num_threads(nt)
    {
        const int64_t me = omp_get_thread_num(), nth = omp_get_num_threads();
        int64_t n0 = nblk * me / nth * 16, n1 = nblk * (me + 1) / nth * 16;
        if (n1 > N) n1 = N;
        if (n0 < n1) rows(y, x, (const unsigned char *)W, bias, T, K, N, n0, n1);
    }
}

/* ------------------------------------------------------------- prefill: packed GEMM */

#define NR 64     /* panel width: outputs per register tile (4 zmm) */
#define MR 6      /* x rows per register tile: 6 × 4 = 24 accumulators */
#define KC_F32 256 /* K block of an F32 panel: 256 × 64 × 4 B = 64 KiB */
#define KC_BF16 512 /* K block of a BF16-pair panel: 256 pairs × 64 × 4 B = 64 KiB */

/* In-register transpose of a 16×16 block of 32-bit elements (r[i] = row i). */
AI void transpose16(__m512 r[16]) {
    __m512 t[16], u[16];
    for (int i = 0; i < 8; i++) {
        t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    /* u[4q + c]: column c (mod 4) of every 128-bit lane, rows 4q..4q+3 */
    for (int q = 0; q < 4; q++) {
        __m512d a = _mm512_castps_pd(t[4 * q]), b = _mm512_castps_pd(t[4 * q + 1]);
        __m512d c = _mm512_castps_pd(t[4 * q + 2]), d = _mm512_castps_pd(t[4 * q + 3]);
        u[4 * q + 0] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, c));
        u[4 * q + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, c));
        u[4 * q + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(b, d));
        u[4 * q + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(b, d));
    }
    for (int c = 0; c < 4; c++) {
        __m512 a = _mm512_shuffle_f32x4(u[c], u[4 + c], 0x88);      /* cols c, c+8: rows 0-7 */
        __m512 b = _mm512_shuffle_f32x4(u[c], u[4 + c], 0xdd);      /* cols c+4, c+12 */
        __m512 a2 = _mm512_shuffle_f32x4(u[8 + c], u[12 + c], 0x88); /* rows 8-15 */
        __m512 b2 = _mm512_shuffle_f32x4(u[8 + c], u[12 + c], 0xdd);
        r[c] = _mm512_shuffle_f32x4(a, a2, 0x88);
        r[c + 8] = _mm512_shuffle_f32x4(a, a2, 0xdd);
        r[c + 4] = _mm512_shuffle_f32x4(b, b2, 0x88);
        r[c + 12] = _mm512_shuffle_f32x4(b, b2, 0xdd);
    }
}

/* P[k][j] = W[n0 + j, k0 + k] in F32 for j < 64, k < kc; rows >= N are 0. */
AI void pack_f32(const st_dtype dt, float *P, const unsigned char *W, int64_t K, int64_t N, int64_t n0, int64_t k0,
                 int64_t kc) {
    const size_t es = dt_size(dt);
    for (int g = 0; g < NR / 16; g++) {
        for (int64_t kk = 0; kk < kc; kk += 16) {
            const int64_t kl = kc - kk < 16 ? kc - kk : 16;
            const __mmask16 m = mask_first(kl);
            __m512 r[16];
            for (int i = 0; i < 16; i++) {
                const int64_t n = n0 + 16 * g + i;
                const unsigned char *p = W + ((size_t)n * K + k0 + kk) * es;
                r[i] = n >= N ? _mm512_setzero_ps() : kl == 16 ? w16(p, dt) : w16_mask(p, dt, m);
            }
            transpose16(r);
            for (int i = 0; i < kl; i++) _mm512_store_ps(P + (kk + i) * NR + 16 * g, r[i]);
        }
    }
}

/* P[k][j] = the BF16 pair W[n0 + j, k0 + 2k .. k0 + 2k + 1] (a 32-bit word)
 * for k < ceil(kc / 2); an odd K ends in (W[n, K-1], 0). */
static void pack_bf16_pairs(uint32_t *P, const unsigned char *W, int64_t K, int64_t N, int64_t n0, int64_t k0,
                            int64_t kc) {
    for (int g = 0; g < NR / 16; g++) {
        for (int64_t kk = 0; kk < kc; kk += 32) {
            const int64_t kl = kc - kk < 32 ? kc - kk : 32; /* bf16 elements in this block */
            const __mmask32 m = kl == 32 ? (__mmask32)0xffffffffu : (__mmask32)((1u << kl) - 1u);
            __m512 r[16];
            for (int i = 0; i < 16; i++) {
                const int64_t n = n0 + 16 * g + i;
                const unsigned char *p = W + ((size_t)n * K + k0 + kk) * 2;
                r[i] = n >= N ? _mm512_setzero_ps() : _mm512_castsi512_ps(_mm512_maskz_loadu_epi16(m, p));
            }
            transpose16(r);
            const int64_t pl = (kl + 1) / 2;
            for (int i = 0; i < pl; i++) _mm512_store_ps((float *)P + (kk / 2 + i) * NR + 16 * g, r[i]);
        }
    }
}

/* Register tile: y[0..mr, 0..ncols) = (first ? bias : y) + x[0..mr, 0..kc) · P.
 * The K block is summed from zero and then added, which keeps the rounding
 * error of long sums near that of a two-level (blocked) sum. */
AI void ukr_f32(const int mr, const float *x, int64_t ldx, const float *P, int64_t kc, float *y, int64_t ldy,
                int64_t ncols, const float *bias, int first) {
    __m512 acc[MR][4];
    __mmask16 cm[4];
    for (int j = 0; j < 4; j++) cm[j] = mask_first(ncols - 16 * j > 0 ? ncols - 16 * j : 0);
    for (int i = 0; i < mr; i++)
        for (int j = 0; j < 4; j++) acc[i][j] = _mm512_setzero_ps();
    for (int64_t k = 0; k < kc; k++) {
        const float *p = P + k * NR;
        __m512 w0 = _mm512_load_ps(p), w1 = _mm512_load_ps(p + 16), w2 = _mm512_load_ps(p + 32),
               w3 = _mm512_load_ps(p + 48);
        for (int i = 0; i < mr; i++) {
            __m512 b = _mm512_set1_ps(x[i * ldx + k]);
            acc[i][0] = _mm512_fmadd_ps(b, w0, acc[i][0]);
            acc[i][1] = _mm512_fmadd_ps(b, w1, acc[i][1]);
            acc[i][2] = _mm512_fmadd_ps(b, w2, acc[i][2]);
            acc[i][3] = _mm512_fmadd_ps(b, w3, acc[i][3]);
        }
    }
    for (int j = 0; j < 4; j++) {
        const __m512 b0 = bias ? _mm512_maskz_loadu_ps(cm[j], bias + 16 * j) : _mm512_setzero_ps();
        for (int i = 0; i < mr; i++) {
            const __m512 base = first ? b0 : _mm512_maskz_loadu_ps(cm[j], y + i * ldy + 16 * j);
            _mm512_mask_storeu_ps(y + i * ldy + 16 * j, cm[j], _mm512_add_ps(acc[i][j], base));
        }
    }
}

/* Same with BF16 pairs: xb rows of BF16 (k0 even), P from pack_bf16_pairs, kp pairs. */
AI void ukr_bf16(const int mr, const uint16_t *xb, int64_t ldx, const uint32_t *P, int64_t kp, float *y,
                 int64_t ldy, int64_t ncols, const float *bias, int first) {
    __m512 acc[MR][4];
    __mmask16 cm[4];
    for (int j = 0; j < 4; j++) cm[j] = mask_first(ncols - 16 * j > 0 ? ncols - 16 * j : 0);
    for (int j = 0; j < 4; j++) {
        __m512 b0 = first && bias ? _mm512_maskz_loadu_ps(cm[j], bias + 16 * j) : _mm512_setzero_ps();
        for (int i = 0; i < mr; i++) acc[i][j] = first ? b0 : _mm512_maskz_loadu_ps(cm[j], y + i * ldy + 16 * j);
    }
    for (int64_t k = 0; k < kp; k++) {
        const uint32_t *p = P + k * NR;
        __m512bh w0 = (__m512bh)_mm512_load_si512(p), w1 = (__m512bh)_mm512_load_si512(p + 16),
                 w2 = (__m512bh)_mm512_load_si512(p + 32), w3 = (__m512bh)_mm512_load_si512(p + 48);
        for (int i = 0; i < mr; i++) {
            int32_t pair;
            memcpy(&pair, xb + i * ldx + 2 * k, 4);
            __m512bh b = (__m512bh)_mm512_set1_epi32(pair);
            acc[i][0] = _mm512_dpbf16_ps(acc[i][0], b, w0);
            acc[i][1] = _mm512_dpbf16_ps(acc[i][1], b, w1);
            acc[i][2] = _mm512_dpbf16_ps(acc[i][2], b, w2);
            acc[i][3] = _mm512_dpbf16_ps(acc[i][3], b, w3);
        }
    }
    for (int i = 0; i < mr; i++)
        for (int j = 0; j < 4; j++) _mm512_mask_storeu_ps(y + i * ldy + 16 * j, cm[j], acc[i][j]);
}

typedef struct {
    float *y;
    const float *x;       /* F32 activations [T][K] (EXACT) */
    const uint16_t *xb;   /* BF16 activations [T][ldxb] (FAST), else NULL */
    int64_t ldxb;
    const unsigned char *W;
    st_dtype wdt;
    const float *bias;
    int64_t T, K, N;
} gemm_args;

/* Which W block the panel loop packs after (n0, k0), and a prefetcher that
 * spreads its cache lines over the register tiles of the current block, so
 * that packing reads L2 instead of waiting on DRAM. */
typedef struct {
    const unsigned char *base; /* row n0 of the next block at its k0 */
    int64_t ldw, rows, lines_per_row, done, per_tile;
} block_prefetch;

static void prefetch_init(block_prefetch *pf, const gemm_args *a, int64_t n0, int64_t k0, int64_t kb,
                          int64_t panel_end, int64_t n_tiles) {
    const size_t es = dt_size(a->wdt);
    int64_t nn = n0, kk = k0 + kb;
    if (kk >= a->K) nn += NR, kk = 0;
    pf->ldw = a->K * (int64_t)es;
    pf->rows = nn >= panel_end ? 0 : (a->N - nn < NR ? a->N - nn : NR);
    pf->base = a->W + nn * pf->ldw + kk * (int64_t)es;
    const int64_t kc = a->K - kk < kb ? a->K - kk : kb;
    pf->lines_per_row = (kc * (int64_t)es + 63) / 64;
    pf->done = 0;
    pf->per_tile = (pf->rows * pf->lines_per_row + n_tiles - 1) / (n_tiles > 0 ? n_tiles : 1);
}

static inline void prefetch_step(block_prefetch *pf) {
    const int64_t total = pf->rows * pf->lines_per_row;
    for (int64_t i = 0; i < pf->per_tile && pf->done < total; i++, pf->done++) {
        const int64_t r = pf->done / pf->lines_per_row, l = pf->done % pf->lines_per_row;
        _mm_prefetch((const char *)(pf->base + r * pf->ldw + l * 64), _MM_HINT_T1);
    }
}

/* One panel (outputs n0..n0+63) × rows [t0, t1): every K block packed once. */
AI void gemm_panel_f32(const st_dtype dt, const gemm_args *a, float *P, int64_t n0, int64_t t0, int64_t t1,
                       int64_t panel_end) {
    const int64_t K = a->K, N = a->N, ncols = N - n0 < NR ? N - n0 : NR;
    const float *bias = a->bias ? a->bias + n0 : NULL;
    for (int64_t k0 = 0; k0 < K; k0 += KC_F32) {
        const int64_t kc = K - k0 < KC_F32 ? K - k0 : KC_F32;
        pack_f32(dt, P, a->W, K, N, n0, k0, kc);
        block_prefetch pf;
        prefetch_init(&pf, a, n0, k0, KC_F32, panel_end, (t1 - t0 + MR - 1) / MR);
        for (int64_t t = t0; t < t1; t += MR) {
            prefetch_step(&pf);
            const float *x = a->x + t * K + k0;
            float *y = a->y + t * N + n0;
            const int first = k0 == 0;
            switch (t1 - t >= MR ? MR : t1 - t) {
            case 1: ukr_f32(1, x, K, P, kc, y, N, ncols, bias, first); break;
            case 2: ukr_f32(2, x, K, P, kc, y, N, ncols, bias, first); break;
            case 3: ukr_f32(3, x, K, P, kc, y, N, ncols, bias, first); break;
            case 4: ukr_f32(4, x, K, P, kc, y, N, ncols, bias, first); break;
            case 5: ukr_f32(5, x, K, P, kc, y, N, ncols, bias, first); break;
            default: ukr_f32(MR, x, K, P, kc, y, N, ncols, bias, first); break;
            }
        }
    }
}

static void gemm_panel_bf16(const gemm_args *a, float *P, int64_t n0, int64_t t0, int64_t t1, int64_t panel_end) {
    gemm_panel_f32(ST_BF16, a, P, n0, t0, t1, panel_end);
}
static void gemm_panel_f16(const gemm_args *a, float *P, int64_t n0, int64_t t0, int64_t t1, int64_t panel_end) {
    gemm_panel_f32(ST_F16, a, P, n0, t0, t1, panel_end);
}
static void gemm_panel_f32w(const gemm_args *a, float *P, int64_t n0, int64_t t0, int64_t t1, int64_t panel_end) {
    gemm_panel_f32(ST_F32, a, P, n0, t0, t1, panel_end);
}

static void gemm_panel_dpbf16(const gemm_args *a, float *Pf, int64_t n0, int64_t t0, int64_t t1,
                              int64_t panel_end) {
    uint32_t *P = (uint32_t *)Pf;
    const int64_t K = a->K, N = a->N, ncols = N - n0 < NR ? N - n0 : NR;
    const float *bias = a->bias ? a->bias + n0 : NULL;
    for (int64_t k0 = 0; k0 < K; k0 += KC_BF16) {
        const int64_t kc = K - k0 < KC_BF16 ? K - k0 : KC_BF16, kp = (kc + 1) / 2;
        pack_bf16_pairs(P, a->W, K, N, n0, k0, kc);
        block_prefetch pf;
        prefetch_init(&pf, a, n0, k0, KC_BF16, panel_end, (t1 - t0 + MR - 1) / MR);
        for (int64_t t = t0; t < t1; t += MR) {
            prefetch_step(&pf);
            const uint16_t *xb = a->xb + t * a->ldxb + k0;
            float *y = a->y + t * N + n0;
            const int first = k0 == 0;
            switch (t1 - t >= MR ? MR : t1 - t) {
            case 1: ukr_bf16(1, xb, a->ldxb, P, kp, y, N, ncols, bias, first); break;
            case 2: ukr_bf16(2, xb, a->ldxb, P, kp, y, N, ncols, bias, first); break;
            case 3: ukr_bf16(3, xb, a->ldxb, P, kp, y, N, ncols, bias, first); break;
            case 4: ukr_bf16(4, xb, a->ldxb, P, kp, y, N, ncols, bias, first); break;
            case 5: ukr_bf16(5, xb, a->ldxb, P, kp, y, N, ncols, bias, first); break;
            default: ukr_bf16(MR, xb, a->ldxb, P, kp, y, N, ncols, bias, first); break;
            }
        }
    }
}

/* x[T][K] F32 -> xb[T][ldxb] BF16, round to nearest even, zero padding to ldxb. */
static void x_to_bf16(uint16_t *xb, int64_t ldxb, const float *x, int64_t T, int64_t K) {
#pragma omp parallel for schedule(static) if (T * K > 1 << 16)
    for (int64_t t = 0; t < T; t++) {
        const float *xr = x + t * K;
        uint16_t *o = xb + t * ldxb;
        for (int64_t k = 0; k < ldxb; k += 16) {
            __mmask16 m = mask_first(K - k > 0 ? K - k : 0);
            __m256bh v = _mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(m, xr + k));
            _mm256_storeu_si256((__m256i *)(o + k), (__m256i)v);
        }
    }
}

/* Runs np output panels × rows [0, T) as work units over the threads, each
 * thread with its own pbytes panel buffer: unit(ctx, P, panel, t0, t1,
 * panel_end). With enough panels T stays whole, so each panel is packed
 * once; otherwise T is cut in nt blocks as well. panel_end bounds the panels
 * this thread packs next (for prefetching). Returns 0 if a buffer could not
 * be allocated. */
typedef void (*panel_unit)(const void *ctx, float *P, int64_t panel, int64_t t0, int64_t t1, int64_t panel_end);

static int run_panel_units(int64_t np, int64_t T, double work, size_t pbytes, panel_unit unit, const void *ctx) {
    int nt = omp_get_max_threads();
    if (work < 1 << 18) nt = 1;
    const int64_t ntb = (np % nt == 0 || np >= 4 * nt) ? 1 : nt;
    const int64_t tblk = ((T + ntb - 1) / ntb + MR - 1) / MR * MR;
    const int64_t nunits = np * ntb;
    int ok = 1;
#pragma omp parallel num_threads(nt)
    {
        float *P = aligned_alloc(64, pbytes);
        const int64_t me = omp_get_thread_num(), nth = omp_get_num_threads();
        if (!P) {
#pragma omp atomic write
            ok = 0;
        }
#pragma omp barrier
        if (ok) {
            const int64_t u1 = nunits * (me + 1) / nth;
            for (int64_t u = nunits * me / nth; u < u1; u++) {
                const int64_t p = u / ntb, tb = u % ntb;
                const int64_t t0 = tb * tblk, t1 = t0 + tblk < T ? t0 + tblk : T;
                const int64_t panel_end = ntb == 1 ? u1 * NR : (p + 1) * NR;
                if (t0 < t1) unit(ctx, P, p, t0, t1, panel_end);
            }
        }
        free(P);
    }
    return ok;
}

typedef struct {
    gemm_args a;
    void (*panel)(const gemm_args *, float *, int64_t, int64_t, int64_t, int64_t);
} gemm_job;

static void gemm_unit(const void *ctx, float *P, int64_t p, int64_t t0, int64_t t1, int64_t panel_end) {
    const gemm_job *j = ctx;
    j->panel(&j->a, P, p * NR, t0, t1, panel_end);
}

/* Returns 0 if a buffer could not be allocated (the caller falls back). */
static int matmul_gemm(float *y, const float *x, const void *W, st_dtype wdt, const float *bias, int64_t T,
                       int64_t K, int64_t N, int fast) {
    gemm_args a = {y, x, NULL, 0, (const unsigned char *)W, wdt, bias, T, K, N};
    uint16_t *xb = NULL;
    if (fast) {
        a.ldxb = (K + 31) / 32 * 32;
        xb = aligned_alloc(64, (size_t)T * a.ldxb * 2);
        if (!xb) return 0;
        x_to_bf16(xb, a.ldxb, x, T, K);
        a.xb = xb;
    }
    gemm_job job = {a, fast ? gemm_panel_dpbf16
                            : wdt == ST_BF16 ? gemm_panel_bf16
                            : wdt == ST_F16 ? gemm_panel_f16 : gemm_panel_f32w};
    const size_t pbytes = fast ? (size_t)KC_BF16 / 2 * NR * 4 : (size_t)KC_F32 * NR * 4;
    int ok = run_panel_units((N + NR - 1) / NR, T, (double)T * K * N, pbytes, gemm_unit, &job);
    free(xb);
    return ok;
}

/* ------------------------------------------------------------- entry */

/* Smallest T for which the packed GEMM beats the dot kernel (measured on
 * Zen 4, Qwen2.5-0.5B shapes). In F32 the dot kernel keeps up with the GEMM
 * to T ~ 100 (~190 GFLOP/s on 2 cores); vdpbf16ps wins from T ~ 12. */
#define T_GEMM_EXACT 96
#define T_GEMM_FAST 12

void matmul_avx512(float *y, const float *x, const void *W, st_dtype wdt, const float *bias, int64_t T, int64_t K,
                   int64_t N, prism_precision prec, int use_bf16) {
    const int fast = prec == PRISM_PRECISION_FAST && use_bf16 && wdt == ST_BF16;
    if (fast && T >= T_GEMM_FAST && matmul_gemm(y, x, W, wdt, bias, T, K, N, 1)) return;
    if (T >= T_GEMM_EXACT && matmul_gemm(y, x, W, wdt, bias, T, K, N, 0)) return;
    matmul_dot(y, x, W, wdt, bias, T, K, N);
}

int matmul_group_avx512(const kern_mm *mm, int n, const float *x, int64_t T, int64_t K, prism_precision prec,
                        int use_bf16) {
    int64_t nblk_total = 0;
    double work = 0;
    for (int i = 0; i < n; i++) {
        const int fast = prec == PRISM_PRECISION_FAST && use_bf16 && mm[i].wdt == ST_BF16;
        if ((fast && T >= T_GEMM_FAST) || T >= T_GEMM_EXACT) return 0;
        nblk_total += (mm[i].N + 15) / 16;
        work += (double)mm[i].N * K * T;
    }
    int nt = omp_get_max_threads();
    if (work < 1 << 16) nt = 1;
    if (nt > nblk_total) nt = (int)nblk_total;
    /* The weights laid end to end form one virtual matrix of nblk_total
     * 16-row blocks; each thread takes a contiguous share of it. */
#pragma omp parallel num_threads(nt)
    {
        const int64_t me = omp_get_thread_num(), nth = omp_get_num_threads();
        const int64_t b0 = nblk_total * me / nth, b1 = nblk_total * (me + 1) / nth;
        int64_t base = 0;
        for (int i = 0; i < n; i++) {
            const int64_t nb = (mm[i].N + 15) / 16;
            int64_t lo = b0 > base ? b0 : base, hi = b1 < base + nb ? b1 : base + nb;
            if (lo < hi) {
                int64_t n0 = (lo - base) * 16, n1 = (hi - base) * 16;
                if (n1 > mm[i].N) n1 = mm[i].N;
                void (*rows)(float *, const float *, const unsigned char *, const float *, int64_t, int64_t, int64_t,
                             int64_t, int64_t) =
                    mm[i].wdt == ST_BF16 ? dot_rows_bf16 : mm[i].wdt == ST_F16 ? dot_rows_f16 : dot_rows_f32;
                rows(mm[i].y, x, (const unsigned char *)mm[i].W, mm[i].bias, T, K, mm[i].N, n0, n1);
            }
            base += nb;
        }
    }
    return 1;
}

/* ------------------------------------------------------------- training: dx += dy·W */

/* P[r][j] = W[r0 + r, c0 + j] in F32 (r < kc rows of W, j < 64 columns of the
 * output); no transpose is needed: a row slice of W is a row of the panel. */
AI void pack_rows(const st_dtype dt, float *P, const unsigned char *W, int64_t K, int64_t r0, int64_t kc, int64_t c0,
                  int64_t ncols) {
    const size_t es = dt_size(dt);
    for (int64_t r = 0; r < kc; r++) {
        const unsigned char *row = W + ((size_t)(r0 + r) * K + c0) * es;
        for (int g = 0; g < NR / 16; g++) {
            const int64_t left = ncols - 16 * g;
            __m512 v = left >= 16 ? w16(row + 16 * g * es, dt)
                       : left > 0 ? w16_mask(row + 16 * g * es, dt, mask_first(left))
                                  : _mm512_setzero_ps();
            _mm512_store_ps(P + r * NR + 16 * g, v);
        }
    }
}

typedef struct {
    float *dx;
    const float *dy;
    const unsigned char *W;
    st_dtype wdt;
    int64_t N, K;
} nt_job;

/* Output columns c0..c0+63 of rows [t0, t1): every N block of W packed once. */
AI void nt_panel(const st_dtype dt, const nt_job *j, float *P, int64_t c0, int64_t t0, int64_t t1) {
    const int64_t N = j->N, K = j->K, ncols = K - c0 < NR ? K - c0 : NR;
    for (int64_t r0 = 0; r0 < N; r0 += KC_F32) {
        const int64_t kc = N - r0 < KC_F32 ? N - r0 : KC_F32;
        pack_rows(dt, P, j->W, K, r0, kc, c0, ncols);
        for (int64_t t = t0; t < t1; t += MR) {
            const float *x = j->dy + t * N + r0;
            float *y = j->dx + t * K + c0;
            switch (t1 - t >= MR ? MR : t1 - t) {
            case 1: ukr_f32(1, x, N, P, kc, y, K, ncols, NULL, 0); break;
            case 2: ukr_f32(2, x, N, P, kc, y, K, ncols, NULL, 0); break;
            case 3: ukr_f32(3, x, N, P, kc, y, K, ncols, NULL, 0); break;
            case 4: ukr_f32(4, x, N, P, kc, y, K, ncols, NULL, 0); break;
            case 5: ukr_f32(5, x, N, P, kc, y, K, ncols, NULL, 0); break;
            default: ukr_f32(MR, x, N, P, kc, y, K, ncols, NULL, 0); break;
            }
        }
    }
}

static void nt_unit(const void *ctx, float *P, int64_t p, int64_t t0, int64_t t1, int64_t panel_end) {
    const nt_job *j = ctx;
    (void)panel_end;
    if (j->wdt == ST_BF16) nt_panel(ST_BF16, j, P, p * NR, t0, t1);
    else if (j->wdt == ST_F16) nt_panel(ST_F16, j, P, p * NR, t0, t1);
    else nt_panel(ST_F32, j, P, p * NR, t0, t1);
}

int matmul_dx_acc_avx512(float *dx, const float *dy, const void *W, st_dtype wdt, int64_t T, int64_t N, int64_t K) {
    const nt_job job = {dx, dy, (const unsigned char *)W, wdt, N, K};
    return run_panel_units((K + NR - 1) / NR, T, (double)T * K * N, (size_t)KC_F32 * NR * 4, nt_unit, &job);
}
