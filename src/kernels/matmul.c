/* matmul.c — y = x·Wᵀ for PyTorch-layout weights, dispatch + portable reference. */
#include <string.h>

#include "kernels/kernels.h"

static int g_force_generic;
void kern_force_generic(int on) { g_force_generic = on; }
const char *kern_isa_name(void) { return "generic"; }

static inline float w_at(const void *W, st_dtype dt, int64_t i) {
    switch (dt) {
    case ST_BF16: return st_bf16_to_f32(((const uint16_t *)W)[i]);
    case ST_F16: return st_f16_to_f32(((const uint16_t *)W)[i]);
    default: return ((const float *)W)[i];
    }
}

static void matmul_generic(float *y, const float *x, const void *W, st_dtype wdt, const float *bias, int64_t T,
                           int64_t K, int64_t N) {
#pragma omp parallel for schedule(static)
    for (int64_t n = 0; n < N; n++) {
        for (int64_t t = 0; t < T; t++) {
            const float *xr = x + t * K;
            float acc = 0;
            for (int64_t k = 0; k < K; k++) acc += xr[k] * w_at(W, wdt, n * K + k);
            y[t * N + n] = acc + (bias ? bias[n] : 0.0f);
        }
    }
}

void kern_matmul(float *y, const float *x, const void *W, st_dtype wdt, const float *bias, int64_t T, int64_t K,
                 int64_t N, prism_precision prec) {
    (void)prec;
    matmul_generic(y, x, W, wdt, bias, T, K, N);
}

void kern_embed_row(float *out, const void *E, st_dtype dt, int64_t row, int64_t D) {
    for (int64_t i = 0; i < D; i++) out[i] = w_at(E, dt, row * D + i);
}
