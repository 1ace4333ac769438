/* layers.h — the per-token building blocks of a Llama-family layer. */
#ifndef PRISM_MODEL_LAYERS_H
#define PRISM_MODEL_LAYERS_H

#include <stdint.h>

/* out[n] = x[n] / sqrt(mean(x²) + eps) * w[n]   (HF LlamaRMSNorm, F32). out may alias x. */
void rmsnorm(float *out, const float *x, const float *w, int64_t n, float eps);

/* g[n] = silu(g[n]) * u[n]   (SwiGLU: act_fn(gate_proj(x)) * up_proj(x)). */
void swiglu(float *g, const float *u, int64_t n);

/* Causal attention of one query head over one sequence's cache.
 *   q    (hd)            the rotated query
 *   K, V (n_pos, kv_stride) cache rows for positions 0..n_pos-1; this head's
 *        kv head starts at column kv_off
 *   out  (hd)
 *   scores: scratch of n_pos floats. Positions before `first` are masked
 *   (sliding window). */
void attend_head(float *out, const float *q, const float *K, const float *V, int64_t kv_stride, int64_t kv_off,
                 int32_t first, int32_t n_pos, int32_t hd, float scale, float *scores);

/* One row of scores s[0..nk): positions outside [first, end) become 0, the
 * rest softmax(s·scale) (F32, max-subtracted). */
void softmax_causal(float *s, int64_t nk, int64_t first, int64_t end, float scale);

/* O[n,hd] += P[n,nk] · V[nk,hd] (portable; the AVX-512 path uses the packed GEMM). */
void mm_pv(float *O, const float *P, const float *V, int64_t n, int64_t nk, int64_t hd);

#endif
