/* layers.c — RMSNorm, SwiGLU and single-head causal attention (F32). */
#include "model/layers.h"

#include <math.h>

void rmsnorm(float *out, const float *x, const float *w, int64_t n, float eps) {
    /* transformers computes variance in F32: mean(x²), rsqrt(var + eps). */
    float ss = 0.0f;
    for (int64_t i = 0; i < n; i++) ss += x[i] * x[i];
    float r = 1.0f / sqrtf(ss / (float)n + eps);
    for (int64_t i = 0; i < n; i++) out[i] = w[i] * (x[i] * r);
}

void swiglu(float *g, const float *u, int64_t n) {
    for (int64_t i = 0; i < n; i++) {
        float x = g[i];
        g[i] = x / (1.0f + expf(-x)) * u[i];
    }
}

void attend_head(float *out, const float *q, const float *K, const float *V, int64_t kv_stride, int64_t kv_off,
                 int32_t first, int32_t n_pos, int32_t hd, float scale, float *scores) {
    float mx = -INFINITY;
    for (int32_t j = first; j < n_pos; j++) {
        const float *k = K + (int64_t)j * kv_stride + kv_off;
        float s = 0.0f;
        for (int32_t d = 0; d < hd; d++) s += q[d] * k[d];
        s *= scale;
        scores[j] = s;
        if (s > mx) mx = s;
    }
    float sum = 0.0f;
    for (int32_t j = first; j < n_pos; j++) {
        float e = expf(scores[j] - mx);
        scores[j] = e;
        sum += e;
    }
    float inv = 1.0f / sum;
    for (int32_t d = 0; d < hd; d++) out[d] = 0.0f;
    for (int32_t j = first; j < n_pos; j++) {
        const float *v = V + (int64_t)j * kv_stride + kv_off;
        float p = scores[j] * inv;
        for (int32_t d = 0; d < hd; d++) out[d] += p * v[d];
    }
}
