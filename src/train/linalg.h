/* linalg.h — the two matrix products backward needs besides kern_matmul. */
#ifndef PRISM_TRAIN_LINALG_H
#define PRISM_TRAIN_LINALG_H

#include <stdint.h>

#include "model/safetensors.h"

/* dx[T,K] += scale · dy[T,N] · W[N,K]   (W a PyTorch Linear weight [out=N, in=K],
 * any stored dtype): the input gradient of y = x·Wᵀ. */
void mm_dx_acc(float *dx, const float *dy, const void *W, st_dtype wdt, int64_t T, int64_t N, int64_t K, float scale);

/* C[N,K] += scale · a[T,N]ᵀ · b[T,K]: the weight gradient of y = x·Wᵀ (a = dy, b = x). */
void mm_outer_acc(float *C, const float *a, const float *b, int64_t T, int64_t N, int64_t K, float scale);

#endif
