/* matmul.c — y = x·Wᵀ for PyTorch-layout weights: run-time ISA dispatch and
 * the portable reference implementation.
 *
 * Tiers, best first: "avx512bf16" (AVX-512 + vdpbf16ps for the FAST prefill
 * path), "avx512", "avx2" (AVX2 + FMA + F16C), "generic" (this file, plain C,
 * the reference every other tier is tested against). */
#include <stdlib.h>
#include <string.h>

#include "kernels/kernels.h"
#include "kernels/matmul_isa.h"

typedef enum { ISA_GENERIC = 0, ISA_AVX2 = 1, ISA_AVX512 = 2, ISA_AVX512BF16 = 3 } isa_tier;

static const char *const g_isa_names[] = {"generic", "avx2", "avx512", "avx512bf16"};

static int g_force = -1; /* forced tier, -1 = automatic */

static isa_tier isa_detect(void) {
    static int detected = -1;
    if (detected < 0) {
        __builtin_cpu_init();
        int t = ISA_GENERIC;
        if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) t = ISA_AVX2;
        if (t == ISA_AVX2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
            __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq")) {
            t = ISA_AVX512;
            if (__builtin_cpu_supports("avx512bf16")) t = ISA_AVX512BF16;
        }
        /* PRISM_ISA=generic|avx2|avx512|avx512bf16 caps the tier (testing the
         * paths a CPU without AVX-512 takes, or comparing them). */
        const char *cap = getenv("PRISM_ISA");
        for (int k = 0; cap && k < 4; k++)
            if (!strcmp(cap, g_isa_names[k]) && k < t) t = k;
        detected = t; /* benign race: every thread computes the same value */
    }
    return (isa_tier)detected;
}

static isa_tier isa_current(void) { return g_force >= 0 ? (isa_tier)g_force : isa_detect(); }

const char *kern_isa_name(void) { return g_isa_names[isa_current()]; }

void kern_force_generic(int on) { g_force = on ? ISA_GENERIC : -1; }

int kern_force_isa(const char *name) {
    if (!name) {
        g_force = -1;
        return 1;
    }
    for (int t = 0; t < 4; t++) {
        if (strcmp(name, g_isa_names[t]) == 0) {
            if (t > (int)isa_detect()) return 0;
            g_force = t;
            return 1;
        }
    }
    return 0;
}

/* Element i of a weight array in its stored dtype, widened exactly to F32.
 * memcpy: the mmap'd data may be unaligned. */
static inline float w_at(const void *W, st_dtype dt, int64_t i) {
    const unsigned char *p = (const unsigned char *)W;
    switch (dt) {
    case ST_BF16: {
        uint16_t h;
        memcpy(&h, p + 2 * i, 2);
        return st_bf16_to_f32(h);
    }
    case ST_F16: {
        uint16_t h;
        memcpy(&h, p + 2 * i, 2);
        return st_f16_to_f32(h);
    }
    default: {
        float f;
        memcpy(&f, p + 4 * i, 4);
        return f;
    }
    }
}

/* Reference: one dot product per output in F32. Eight interleaved partial
 * sums (k mod 8) keep the rounding error of long rows (K ~ 5000) well under
 * 1e-6, as the SIMD lanes of the other tiers do.
 * PRISM_PRECISION_FAST is treated as exact here (allowed by the contract). */
static void matmul_generic(float *y, const float *x, const void *W, st_dtype wdt, const float *bias, int64_t T,
                           int64_t K, int64_t N) {
#pragma omp parallel for schedule(static)
    for (int64_t n = 0; n < N; n++) {
        for (int64_t t = 0; t < T; t++) {
            const float *xr = x + t * K;
            float part[8] = {0};
            for (int64_t k = 0; k < K; k++) part[k % 8] += xr[k] * w_at(W, wdt, n * K + k);
            float acc = 0;
            for (int i = 0; i < 8; i++) acc += part[i];
            y[t * N + n] = acc + (bias ? bias[n] : 0.0f);
        }
    }
}

void kern_matmul(float *y, const float *x, const void *W, st_dtype wdt, const float *bias, int64_t T, int64_t K,
                 int64_t N, prism_precision prec) {
    if (T <= 0 || N <= 0) return;
    if (K <= 0) { /* empty sum: y = bias */
        for (int64_t t = 0; t < T; t++)
            for (int64_t n = 0; n < N; n++) y[t * N + n] = bias ? bias[n] : 0.0f;
        return;
    }
    switch (isa_current()) {
    case ISA_AVX512BF16: matmul_avx512(y, x, W, wdt, bias, T, K, N, prec, 1); return;
    case ISA_AVX512: matmul_avx512(y, x, W, wdt, bias, T, K, N, prec, 0); return;
    case ISA_AVX2: matmul_avx2(y, x, W, wdt, bias, T, K, N); return;
    default: matmul_generic(y, x, W, wdt, bias, T, K, N); return;
    }
}

void kern_matmul_group(const kern_mm *mm, int n, const float *x, int64_t T, int64_t K, prism_precision prec) {
    if (T <= 0 || K <= 0 || n <= 0) {
        for (int i = 0; i < n; i++) kern_matmul(mm[i].y, x, mm[i].W, mm[i].wdt, mm[i].bias, T, K, mm[i].N, prec);
        return;
    }
    int isa = isa_current();
    if ((isa == ISA_AVX512BF16 || isa == ISA_AVX512) &&
        matmul_group_avx512(mm, n, x, T, K, prec, isa == ISA_AVX512BF16))
        return;
    for (int i = 0; i < n; i++) kern_matmul(mm[i].y, x, mm[i].W, mm[i].wdt, mm[i].bias, T, K, mm[i].N, prec);
}

bool kern_matmul_dx_acc(float *dx, const float *dy, const void *W, st_dtype wdt, int64_t T, int64_t N, int64_t K) {
    int isa = isa_current();
    if (T < 8 || N < 64 || K < 64 || (isa != ISA_AVX512BF16 && isa != ISA_AVX512)) return false;
    return matmul_dx_acc_avx512(dx, dy, W, wdt, T, N, K) != 0;
}

void kern_embed_row(float *out, const void *E, st_dtype dt, int64_t row, int64_t D) {
    for (int64_t i = 0; i < D; i++) out[i] = w_at(E, dt, row * D + i);
}
