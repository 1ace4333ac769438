/* rope.c — RoPE as in transformers' LlamaRotaryEmbedding + apply_rotary_pos_emb.
 *
 * Angles are formed in F32 (pos * inv_freq, rounded to F32, then cos/sin), the
 * way the reference computes them, so positions in the thousands agree to
 * the last bits rather than drifting by the F32 rounding of the angle. */
#include "model/rope.h"

#include <math.h>

void rope_inv_freq(const prism_config *c, float *inv) {
    const int half = c->head_dim / 2;
    for (int i = 0; i < half; i++) {
        float e = (float)(2 * i) / (float)c->head_dim;
        inv[i] = (float)(1.0 / pow((double)c->rope_theta, (double)e));
    }
    if (c->rope == ROPE_LINEAR) {
        for (int i = 0; i < half; i++) inv[i] /= c->rope_factor;
    } else if (c->rope == ROPE_LLAMA3) {
        /* Llama 3.1: long wavelengths slowed by `factor`, short ones kept,
         * a smooth blend between low_freq_wavelen and high_freq_wavelen. */
        const float factor = c->rope_factor, lo = c->rope_low_freq_factor, hi = c->rope_high_freq_factor;
        const float old_ctx = (float)c->rope_orig_max_pos;
        const float low_wavelen = old_ctx / lo, high_wavelen = old_ctx / hi;
        for (int i = 0; i < half; i++) {
            float wavelen = 2.0f * (float)M_PI / inv[i];
            float f = wavelen > low_wavelen ? inv[i] / factor : inv[i];
            if (!(wavelen < high_wavelen) && !(wavelen > low_wavelen)) {
                float smooth = (old_ctx / wavelen - lo) / (hi - lo);
                f = (1.0f - smooth) * f / factor + smooth * f;
            }
            inv[i] = f;
        }
    }
}

void rope_apply(float *x, int32_t n_heads, int32_t head_dim, int32_t pos, const float *inv_freq) {
    const int half = head_dim / 2;
    float cs[512], sn[512];
    for (int i = 0; i < half; i++) {
        float a = (float)pos * inv_freq[i];
        cs[i] = cosf(a);
        sn[i] = sinf(a);
    }
    for (int h = 0; h < n_heads; h++) {
        float *v = x + (int64_t)h * head_dim;
        for (int i = 0; i < half; i++) {
            float x1 = v[i], x2 = v[i + half];
            v[i] = x1 * cs[i] - x2 * sn[i];
            v[i + half] = x2 * cs[i] + x1 * sn[i];
        }
    }
}
