/* kernels.h — the numeric kernels of the forward pass, one dispatch point.
 *
 * The portable C versions are the reference; per-ISA versions
 * (matmul_avx512.c, matmul_avx2.c) are chosen at run time by CPU feature and
 * are tested against the reference (tests/test_kernels.c). All reductions
 * accumulate in F32. */
#ifndef PRISM_KERNELS_H
#define PRISM_KERNELS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "model/safetensors.h"
#include "prism.h"

/* y[T,N] = x[T,K] · W[N,K]ᵀ (+ bias[N] when bias != NULL).
 * W is a PyTorch Linear weight as stored: row n holds output n's K inputs,
 * dtype F32, BF16 or F16. x, y are F32 row-major; y must not alias x.
 * PRISM_PRECISION_EXACT: every product in F32 (BF16/F16 widen exactly).
 * PRISM_PRECISION_FAST: may round x to BF16 for BF16 weights when T is large
 * enough to be compute-bound (relative error ~1e-3).
 * Parallel over N (and T) with OpenMP; call from outside a parallel region. */
void kern_matmul(float *y, const float *x, const void *W, st_dtype wdt, const float *bias, int64_t T, int64_t K,
                 int64_t N, prism_precision prec);

/* Several products that share one input x[T,K] (q/k/v, gate/up): in the
 * memory-bound decode regime they run in one parallel region with the rows of
 * all weights split evenly across threads — fewer barriers and no thread idle
 * on a small matrix. Results are identical to separate kern_matmul calls. */
typedef struct {
    float *y;          /* (T, N) */
    const void *W;     /* (N, K) */
    st_dtype wdt;
    const float *bias; /* (N) or NULL */
    int64_t N;
} kern_mm;

void kern_matmul_group(const kern_mm *mm, int n, const float *x, int64_t T, int64_t K, prism_precision prec);

/* dx[T,K] += dy[T,N]·W[N,K]: the input gradient of y = x·Wᵀ (training).
 * Returns false when no fast kernel applies (the caller then uses its own). */
bool kern_matmul_dx_acc(float *dx, const float *dy, const void *W, st_dtype wdt, int64_t T, int64_t N, int64_t K);

/* Row gather of an embedding table E[V,D] (any weight dtype) into F32 out[D]. */
void kern_embed_row(float *out, const void *E, st_dtype dt, int64_t row, int64_t D);

/* Name of the matmul implementation chosen for this CPU ("avx512bf16", "avx512", "avx2", "generic"). */
const char *kern_isa_name(void);
/* Force the portable implementation (tests compare against it). */
void kern_force_generic(int on);
/* Force one tier by name ("avx512bf16", "avx512", "avx2", "generic") for
 * tests and benchmarks; NULL restores the automatic choice. Returns 0 (and
 * changes nothing) if this CPU lacks that tier. Not thread-safe: call it
 * between kern_matmul calls. */
int kern_force_isa(const char *name);

#endif
