/* linalg.c — input- and weight-gradient products for training (F32 accumulation).
 * Plain loops the compiler vectorises per ISA via target_clones; parallel over
 * output columns so no two threads write the same element. */
#include "train/linalg.h"

#include "kernels/kernels.h"

#include <string.h>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define CLONES
#endif

enum { KC = 256 }; /* columns of dx per task: a W panel [N, KC] streams through cache once per row block */

CLONES
static void dx_panel_f32(float *dx, const float *dy, const float *W, int64_t T, int64_t N, int64_t K, int64_t k0,
                         int64_t kn, float scale) {
    for (int64_t t = 0; t < T; t++) {
        float acc[KC];
        memset(acc, 0, sizeof acc);
        const float *dyt = dy + t * N;
        for (int64_t n = 0; n < N; n++) {
            const float a = dyt[n];
            if (a == 0.0f) continue;
            const float *w = W + n * K + k0;
#pragma omp simd
            for (int64_t k = 0; k < kn; k++) acc[k] += a * w[k];
        }
        float *o = dx + t * K + k0;
        for (int64_t k = 0; k < kn; k++) o[k] += scale * acc[k];
    }
}

CLONES
static void dx_panel_16(float *dx, const float *dy, const uint16_t *W, int is_bf16, int64_t T, int64_t N, int64_t K,
                        int64_t k0, int64_t kn, float scale) {
    for (int64_t t = 0; t < T; t++) {
        float acc[KC];
        memset(acc, 0, sizeof acc);
        const float *dyt = dy + t * N;
        for (int64_t n = 0; n < N; n++) {
            const float a = dyt[n];
            if (a == 0.0f) continue;
            const uint16_t *w = W + n * K + k0;
            if (is_bf16) {
#pragma omp simd
                for (int64_t k = 0; k < kn; k++) {
                    union { uint32_t u; float f; } v = {.u = (uint32_t)w[k] << 16};
                    acc[k] += a * v.f;
                }
            } else {
                for (int64_t k = 0; k < kn; k++) acc[k] += a * st_f16_to_f32(w[k]);
            }
        }
        float *o = dx + t * K + k0;
        for (int64_t k = 0; k < kn; k++) o[k] += scale * acc[k];
    }
}

void mm_dx_acc(float *dx, const float *dy, const void *W, st_dtype wdt, int64_t T, int64_t N, int64_t K, float scale) {
    if (scale == 1.0f && kern_matmul_dx_acc(dx, dy, W, wdt, T, N, K)) return; /* packed GEMM (AVX-512) */
    const int64_t n_panels = (K + KC - 1) / KC;
    /* Rows in blocks of 16 so each W panel is reused from cache across a block. */
    const int64_t TB = 16, n_tb = (T + TB - 1) / TB;
#pragma omp parallel for collapse(2) schedule(dynamic, 1) if (T * N * K >= (1 << 16))
    for (int64_t tb = 0; tb < n_tb; tb++) {
        for (int64_t p = 0; p < n_panels; p++) {
            int64_t t0 = tb * TB, tn = T - t0 < TB ? T - t0 : TB;
            int64_t k0 = p * KC, kn = K - k0 < KC ? K - k0 : KC;
            if (wdt == ST_F32)
                dx_panel_f32(dx + t0 * K, dy + t0 * N, (const float *)W, tn, N, K, k0, kn, scale);
            else
                dx_panel_16(dx + t0 * K, dy + t0 * N, (const uint16_t *)W, wdt == ST_BF16, tn, N, K, k0, kn, scale);
        }
    }
}

CLONES
static void outer_row(float *c, const float *a, const float *b, int64_t T, int64_t N, int64_t K, int64_t n, float scale) {
    for (int64_t t = 0; t < T; t++) {
        const float s = scale * a[t * N + n];
        if (s == 0.0f) continue;
        const float *bt = b + t * K;
#pragma omp simd
        for (int64_t k = 0; k < K; k++) c[k] += s * bt[k];
    }
}

void mm_outer_acc(float *C, const float *a, const float *b, int64_t T, int64_t N, int64_t K, float scale) {
#pragma omp parallel for schedule(static) if (T * N * K >= (1 << 16))
    for (int64_t n = 0; n < N; n++) outer_row(C + n * K, a, b, T, N, K, n, scale);
}
