/* topk_kl.h — the top-k KL distillation loss of one logits row, the one
 * formula of the CPU trainer (grad.c) and the GPU one (src/cuda/train.cu).
 *
 * Over the teacher's top-k indices ti with values tv, at temperature T:
 *   p_t = softmax(tv / T), p_s = softmax(lg[ti] / T) (both over the k),
 *   loss = KL(p_t || p_s) · T², and d[ti[j]] += T · (p_s − p_t)_j, its
 *   gradient with respect to the logits. Returns the loss. */
#ifndef PRISM_TRAIN_TOPK_KL_H
#define PRISM_TRAIN_TOPK_KL_H

#include <math.h>
#include <stdint.h>

#if defined(__CUDACC__) || defined(PRISM_CUDA_EMU)
#define TOPK_KL_FN static __host__ __device__ inline
#else
#define TOPK_KL_FN static inline
#endif

TOPK_KL_FN double topk_kl_row(const float *lg, const float *tv, const int32_t *ti, int32_t K, float T, float *d) {
    double tmx = -INFINITY, smx = -INFINITY, ts = 0, ss = 0;
    for (int32_t j = 0; j < K; j++) {
        tmx = tv[j] / T > tmx ? tv[j] / T : tmx;
        smx = lg[ti[j]] / T > smx ? lg[ti[j]] / T : smx;
    }
    for (int32_t j = 0; j < K; j++) ts += exp(tv[j] / T - tmx), ss += exp(lg[ti[j]] / T - smx);
    const double tl = log(ts) + tmx, sl = log(ss) + smx;
    double kl = 0;
    for (int32_t j = 0; j < K; j++) {
        const double lpt = tv[j] / T - tl, lps = lg[ti[j]] / T - sl, pt = exp(lpt), ps = exp(lps);
        kl += pt * (lpt - lps);
        d[ti[j]] += (float)(T * (ps - pt)); /* d(KL·T²)/d logit = T·(p_s − p_t) */
    }
    return kl * T * T;
}

#endif
