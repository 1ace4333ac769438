/* matmul_isa.h — per-ISA matmul entry points behind kern_matmul (internal).
 *
 * Each takes the arguments of kern_matmul (already validated: T, K, N > 0)
 * and is only called when the CPU has the ISA named in its file name. */
#ifndef PRISM_KERNELS_MATMUL_ISA_H
#define PRISM_KERNELS_MATMUL_ISA_H

#include "kernels/kernels.h"

/* AVX-512 F/BW/VL/DQ (+FMA, F16C). use_bf16: the CPU has avx512_bf16, so
 * PRISM_PRECISION_FAST may use vdpbf16ps for BF16 weights. */
void matmul_avx512(float *y, const float *x, const void *W, st_dtype wdt, const float *bias, int64_t T, int64_t K,
                   int64_t N, prism_precision prec, int use_bf16);

/* kern_matmul_group on AVX-512; returns 0 when the shapes call for the GEMM
 * path (the caller then runs the products one by one). */
int matmul_group_avx512(const kern_mm *mm, int n, const float *x, int64_t T, int64_t K, prism_precision prec,
                        int use_bf16);

/* dx[T,K] += dy[T,N]·W[N,K] (the input gradient of y = x·Wᵀ), F32 products;
 * returns 0 if a buffer could not be allocated. */
int matmul_dx_acc_avx512(float *dx, const float *dy, const void *W, st_dtype wdt, int64_t T, int64_t N, int64_t K);

/* AVX2 + FMA + F16C; always exact (F32 products). */
void matmul_avx2(float *y, const float *x, const void *W, st_dtype wdt, const float *bias, int64_t T, int64_t K,
                 int64_t N);

#endif
