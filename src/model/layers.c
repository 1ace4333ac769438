/* layers.c — RMSNorm, SwiGLU and single-head causal attention (F32).
 *
 * Written as plain loops the compiler vectorises: `omp simd reduction` lets
 * it reorder the F32 sums (the result moves by ~1e-7 relative, well inside
 * the 1e-5 parity bound), and target_clones builds AVX-512 / AVX2 / baseline
 * versions of each function, picked at load time by CPU. */
#include "model/layers.h"

#include <math.h>
#include <stdint.h>
#include <string.h>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define CLONES
#endif

/* exp(x) for x <= 0 .. moderate, vectorisable: 2^k · p(r), r = x - k·ln2,
 * degree-6 minimax polynomial; relative error < 2e-7 over [-87, 88]. */
static inline float exp_f32(float x) {
    x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
    float k = __builtin_rintf(x * 1.44269504088896341f);
    float r = x - k * 0.693145751953125f;
    r = r - k * 1.428606765330187045e-06f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    union { float f; uint32_t u; } v = {.f = p};
    v.u += (uint32_t)(int32_t)k << 23; /* scale by 2^k; unsigned: shifting a negative int is undefined */
    return v.f;
}

CLONES
void rmsnorm(float *out, const float *x, const float *w, int64_t n, float eps) {
    /* transformers computes variance in F32: mean(x²), rsqrt(var + eps). */
    float ss = 0.0f;
#pragma omp simd reduction(+ : ss)
    for (int64_t i = 0; i < n; i++) ss += x[i] * x[i];
    float r = 1.0f / sqrtf(ss / (float)n + eps);
#pragma omp simd
    for (int64_t i = 0; i < n; i++) out[i] = w[i] * (x[i] * r);
}

CLONES
void swiglu(float *g, const float *u, int64_t n) {
#pragma omp simd
    for (int64_t i = 0; i < n; i++) {
        float x = g[i];
        g[i] = x / (1.0f + exp_f32(-x)) * u[i];
    }
}

CLONES
void attend_head(float *out, const float *q, const float *K, const float *V, int64_t kv_stride, int64_t kv_off,
                 int32_t first, int32_t n_pos, int32_t hd, float scale, float *scores) {
    for (int32_t j = first; j < n_pos; j++) {
        const float *k = K + (int64_t)j * kv_stride + kv_off;
        float s = 0.0f;
#pragma omp simd reduction(+ : s)
        for (int32_t d = 0; d < hd; d++) s += q[d] * k[d];
        scores[j] = s;
    }
    softmax_causal(scores + first, n_pos - first, 0, n_pos - first, scale);
    memset(out, 0, (size_t)hd * sizeof *out);
    for (int32_t j = first; j < n_pos; j++) {
        const float *v = V + (int64_t)j * kv_stride + kv_off;
        const float p = scores[j];
#pragma omp simd
        for (int32_t d = 0; d < hd; d++) out[d] += p * v[d];
    }
}

CLONES
void softmax_causal(float *s, int64_t nk, int64_t first, int64_t end, float scale) {
    float mx = -INFINITY;
    for (int64_t j = first; j < end; j++) {
        s[j] *= scale;
        mx = s[j] > mx ? s[j] : mx;
    }
    float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
    for (int64_t j = first; j < end; j++) {
        float e = exp_f32(s[j] - mx);
        s[j] = e;
        sum += e;
    }
    const float inv = 1.0f / sum;
    for (int64_t j = 0; j < first; j++) s[j] = 0.0f;
#pragma omp simd
    for (int64_t j = first; j < end; j++) s[j] *= inv;
    for (int64_t j = end; j < nk; j++) s[j] = 0.0f;
}

CLONES
void mm_pv(float *O, const float *P, const float *V, int64_t n, int64_t nk, int64_t hd) {
    for (int64_t r = 0; r < n; r++) {
        float *o = O + r * hd;
        for (int64_t j = 0; j < nk; j++) {
            const float p = P[r * nk + j];
            if (p == 0.0f) continue;
            const float *v = V + j * hd;
#pragma omp simd
            for (int64_t d = 0; d < hd; d++) o[d] += p * v[d];
        }
    }
}
