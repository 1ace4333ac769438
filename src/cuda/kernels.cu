/* kernels.cu — the element-wise and row kernels of the forward pass (norms,
 * RoPE, SwiGLU, embedding, conversions) and the small-batch GEMV that decode
 * steps use instead of cuBLAS. Numerics follow src/model (F32 statistics,
 * accurate sin/cos/exp). */
#include "cuda/common.cuh"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

template <class A> __global__ void embed_kernel(float *x, const A *emb, const int32_t *tok, int32_t H) {
    pdl_wait();
    pdl_trigger();
    const int64_t i = blockIdx.x;
    const A *e = emb + (int64_t)tok[i] * H;
    for (int32_t j = threadIdx.x; j < H; j += blockDim.x) x[i * H + j] = ldA(e + j);
}

void k_embed(cudaStream_t s, int f32, float *x, const void *emb, const int32_t *tok, int32_t T, int32_t H) {
    if (f32) PDL_LAUNCH(embed_kernel<float>, T, 256, 0, s, x, (const float *)emb, tok, H);
    else PDL_LAUNCH(embed_kernel<bf16>, T, 256, 0, s, x, (const bf16 *)emb, tok, H);
}

/* One block per row. add: x += y + bias first. out: normed row as A (when
 * w != NULL); inplace: normed row back into x as F32. The row stays in
 * registers between the passes (H <= NORM_THREADS * NORM_PER_THREAD; wider
 * rows are read again), and every load of a pass is issued before any use. */
#define NORM_THREADS 256
#define NORM_PER_THREAD 32
template <class A>
__global__ void __launch_bounds__(NORM_THREADS)
    norm_kernel(float *__restrict__ x, const float *__restrict__ y, const float *__restrict__ bias, A *__restrict__ out,
                const float *__restrict__ w, int32_t H, float eps, int inplace) {
    pdl_wait();
    pdl_trigger();
    __shared__ float red[32];
    const int64_t i = blockIdx.x;
    float *xr = x + i * H;
    const float *yr = y ? y + i * H : NULL;
    float ss = 0.0f;
    if (H <= NORM_THREADS * NORM_PER_THREAD) {
        float v[NORM_PER_THREAD];
#pragma unroll
        for (int u = 0; u < NORM_PER_THREAD; u++) {
            const int32_t j = threadIdx.x + u * NORM_THREADS;
            v[u] = j < H ? xr[j] : 0.0f;
        }
        if (yr) {
#pragma unroll
            for (int u = 0; u < NORM_PER_THREAD; u++) {
                const int32_t j = threadIdx.x + u * NORM_THREADS;
                if (j < H) {
                    v[u] += yr[j] + (bias ? bias[j] : 0.0f);
                    xr[j] = v[u];
                }
            }
        }
#pragma unroll
        for (int u = 0; u < NORM_PER_THREAD; u++) ss += v[u] * v[u];
        if (!w) return;
        const float r = 1.0f / sqrtf(block_sum(ss, red) / (float)H + eps);
#pragma unroll
        for (int u = 0; u < NORM_PER_THREAD; u++) {
            const int32_t j = threadIdx.x + u * NORM_THREADS;
            if (j < H) {
                const float o = w[j] * (v[u] * r);
                if (inplace) xr[j] = o;
                else stA(out + i * H + j, o);
            }
        }
        return;
    }
    for (int32_t j = threadIdx.x; j < H; j += NORM_THREADS) {
        float v = xr[j];
        if (yr) {
            v += yr[j] + (bias ? bias[j] : 0.0f);
            xr[j] = v;
        }
        ss += v * v;
    }
    if (!w) return;
    const float r = 1.0f / sqrtf(block_sum(ss, red) / (float)H + eps);
    for (int32_t j = threadIdx.x; j < H; j += NORM_THREADS) {
        const float o = w[j] * (xr[j] * r);
        if (inplace) xr[j] = o;
        else stA(out + i * H + j, o);
    }
}

void k_add_rmsnorm(cudaStream_t s, int f32, float *x, const float *y, const float *bias, void *xb, const float *w,
                   int32_t T, int32_t H, float eps) {
    if (f32) PDL_LAUNCH(norm_kernel<float>, T, NORM_THREADS, 0, s, x, y, bias, (float *)xb, w, H, eps, 0);
    else PDL_LAUNCH(norm_kernel<bf16>, T, NORM_THREADS, 0, s, x, y, bias, (bf16 *)xb, w, H, eps, 0);
}

void k_rmsnorm(cudaStream_t s, int f32, void *xb, const float *x, const float *w, int32_t T, int32_t H, float eps) {
    k_add_rmsnorm(s, f32, (float *)x, NULL, NULL, xb, w, T, H, eps);
}

void k_rmsnorm_inplace(cudaStream_t s, float *x, const float *w, int32_t T, int32_t H, float eps) {
    PDL_LAUNCH(norm_kernel<float>, T, NORM_THREADS, 0, s, x, (const float *)NULL, (const float *)NULL, (float *)NULL, w, H, eps, 1);
}

/* One warp per (token, head) of the fused q|k|v row: bias, the Qwen3 per-head
 * norm, RoPE (rotate-half pairs j, j + hd/2), then q to c->q and k, v to the
 * layer's cache at (seq, pos). */
template <class A>
__global__ void qkv_post_kernel(const float *y, const float *bqkv, const float *q_norm, const float *k_norm,
                                const float *inv_freq, const int32_t *pos, const int32_t *seq, float *q, A *kc, A *vc, int32_t nh, int32_t nkv, int32_t hd, int32_t n_ctx, int64_t qkv_n,
                                float eps) {
    pdl_wait();
    pdl_trigger();
    const int64_t i = blockIdx.x;
    const int32_t head = blockIdx.y * (blockDim.x >> 5) + (threadIdx.x >> 5), lane = threadIdx.x & 31;
    if (head >= nh + 2 * nkv) return;
    const int32_t p = pos[i];
    const int64_t kvd = (int64_t)nkv * hd, qd = (int64_t)nh * hd;
    const int64_t col = head < nh ? (int64_t)head * hd
                                  : head < nh + nkv ? qd + (int64_t)(head - nh) * hd : qd + kvd + (int64_t)(head - nh - nkv) * hd;
    const float *src = y + i * qkv_n + col, *b = bqkv ? bqkv + col : NULL;
    const int is_v = head >= nh + nkv;
    if (head < nh) {
        qkv_post_row(q + i * qd + (int64_t)head * hd, src, b, q_norm, true, inv_freq, p, hd, eps, 1.0f, lane);
    } else {
        A *dst = (is_v ? vc : kc) + ((int64_t)seq[i] * n_ctx + p) * kvd + (int64_t)(is_v ? head - nh - nkv : head - nh) * hd;
        qkv_post_row(dst, src, b, is_v ? NULL : k_norm, !is_v, inv_freq, p, hd, eps, 1.0f, lane);
    }
}

void k_qkv_post(cudaStream_t s, const gpu_ctx *c, int32_t layer, int32_t T) {
    const gpu_model *m = c->m;
    const dlayer *L = &m->layers[layer];
    const int warps = 4;
    dim3 grid(T, (m->nh + 2 * m->nkv + warps - 1) / warps);
    const int64_t lay = (int64_t)layer * c->n_seq * c->n_ctx * c->kvd;
    if (m->f32)
        PDL_LAUNCH(qkv_post_kernel<float>, grid, 32 * warps, 0, s, c->y, L->bqkv, L->q_norm, L->k_norm, m->inv_freq, c->d_pos, c->d_seq, c->q, (float *)c->kc + lay, (float *)c->vc + lay, m->nh, m->nkv, m->hd, c->n_ctx, c->qkv_n, m->eps);
    else
        PDL_LAUNCH(qkv_post_kernel<bf16>, grid, 32 * warps, 0, s, c->y, L->bqkv, L->q_norm, L->k_norm, m->inv_freq, c->d_pos, c->d_seq, c->q, (bf16 *)c->kc + lay, (bf16 *)c->vc + lay, m->nh, m->nkv, m->hd, c->n_ctx, c->qkv_n, m->eps);
}

template <class A> __global__ void swiglu_kernel(A *xb, const float *y, const float *bgu, int32_t F) {
    pdl_wait();
    pdl_trigger();
    const int64_t i = blockIdx.x; /* rows on x: gridDim.y stops at 65,535 */
    const int32_t j = blockIdx.y * blockDim.x + threadIdx.x;
    if (j >= F) return;
    float g = y[i * 2 * F + j], u = y[i * 2 * F + F + j];
    if (bgu) g += bgu[j], u += bgu[F + j];
    stA(xb + i * F + j, silu_mul(g, u));
}

void k_swiglu(cudaStream_t s, int f32, void *xb, const float *y, const float *bgu, int32_t T, int32_t F) {
    dim3 grid(T, (F + 255) / 256);
    if (f32) PDL_LAUNCH(swiglu_kernel<float>, grid, 256, 0, s, (float *)xb, y, bgu, F);
    else PDL_LAUNCH(swiglu_kernel<bf16>, grid, 256, 0, s, (bf16 *)xb, y, bgu, F);
}

template <class A> __global__ void gather_kernel(A *g, const float *x, const int32_t *rows, int32_t H) {
    pdl_wait();
    pdl_trigger();
    const int64_t j = blockIdx.x, r = rows[j];
    for (int32_t k = threadIdx.x; k < H; k += blockDim.x) stA(g + j * H + k, x[r * H + k]);
}

void k_gather_rows(cudaStream_t s, int f32, void *gath, const float *x, const int32_t *rows, int32_t n, int32_t H) {
    if (n <= 0) return;
    if (f32) PDL_LAUNCH(gather_kernel<float>, n, 256, 0, s, (float *)gath, x, rows, H);
    else PDL_LAUNCH(gather_kernel<bf16>, n, 256, 0, s, (bf16 *)gath, x, rows, H);
}

__device__ __forceinline__ uint64_t mix64(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

template <class A> __global__ void fill_uniform_kernel(A *w, int64_t n, float scale, uint64_t seed) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        const uint64_t h = mix64(seed * 0x9e3779b97f4a7c15ull + (uint64_t)i);
        const float u = (float)(h >> 40) * (1.0f / 16777216.0f); /* [0, 1) */
        stA(w + i, scale * (2.0f * u - 1.0f));
    }
}

void k_fill_uniform(cudaStream_t s, int f32, void *w, int64_t n, float scale, uint64_t seed) {
    if (f32) fill_uniform_kernel<float><<<4096, 256, 0, s>>>((float *)w, n, scale, seed);
    else fill_uniform_kernel<bf16><<<4096, 256, 0, s>>>((bf16 *)w, n, scale, seed);
}

__global__ void fill_f32_kernel(float *w, int64_t n, float v) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        w[i] = v;
}

void k_fill_f32(cudaStream_t s, float *w, int64_t n, float v) { fill_f32_kernel<<<256, 256, 0, s>>>(w, n, v); }

/* A 16-byte load of weights read once: through the non-coherent path, not
 * kept in L1 (the activations stay there). */
static __device__ __forceinline__ uint4 ld_stream16(const void *p) {
#ifdef PRISM_CUDA_EMU
    return *(const uint4 *)p;
#else
    uint4 r;
    asm("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
        : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
        : "l"(p));
    return r;
#endif
}

/* Small-batch GEMV (T <= GEMV_MAX_T tokens, K % (16 / sizeof(A)) == 0): one
 * warp per output row, each lane issuing U independent 16-byte weight loads
 * before any arithmetic, every token's dot product accumulated from the same
 * loaded weights, so W streams from HBM once per call. The first U loads go
 * out before pdl_wait(): weights don't depend on the previous kernel.
 * (Folding the RMSNorms into these GEMVs — the producer adding into x and
 * leaving 1/rms, the consumer norming while loading — measured slower on an
 * H100, 72% against 77% of the roofline: see BENCHMARKS.md.) */
#define GV_WARPS 8 /* rows (warps) per block */

/* The streaming loop both GEMV kernels share: this warp's R weight rows wr[r]
 * (kv 16-byte vectors each) against the T rows of x, into acc[r][t] (lane
 * partial sums). The first U vectors of every row are requested before
 * pdl_wait(). */
template <class A, int T, int U, int R>
static __device__ __forceinline__ void gemv_rows(float (&acc)[R][T], const uint4 *const (&wr)[R], int32_t kv,
                                                 const A *__restrict__ x, int32_t K, int32_t lane) {
    constexpr int EPV = 16 / sizeof(A);
#pragma unroll
    for (int r = 0; r < R; r++)
#pragma unroll
        for (int t = 0; t < T; t++) acc[r][t] = 0.0f;
    int32_t i = lane;
    uint4 wv[R][U];
#pragma unroll
    for (int u = 0; u < U; u++)
#pragma unroll
        for (int r = 0; r < R; r++) wv[r][u] = i + u * 32 < kv ? ld_stream16(wr[r] + i + u * 32) : make_uint4(0, 0, 0, 0);
    pdl_wait(); /* the first weights are in flight: now wait for x */
    pdl_trigger();
    for (;;) {
#pragma unroll
        for (int u = 0; u < U; u++) {
            if (i + u * 32 >= kv) break;
            float wf[R][EPV];
#pragma unroll
            for (int r = 0; r < R; r++) unpack16(wv[r][u], x, wf[r]);
#pragma unroll
            for (int t = 0; t < T; t++) {
                float xf[EPV];
                unpack16(__ldg((const uint4 *)(x + (int64_t)t * K) + i + u * 32), x, xf);
#pragma unroll
                for (int r = 0; r < R; r++)
#pragma unroll
                    for (int e = 0; e < EPV; e++) acc[r][t] += wf[r][e] * xf[e];
            }
        }
        i += U * 32;
        if (i >= kv) break;
#pragma unroll
        for (int u = 0; u < U; u++)
#pragma unroll
            for (int r = 0; r < R; r++)
                wv[r][u] = i + u * 32 < kv ? ld_stream16(wr[r] + i + u * 32) : make_uint4(0, 0, 0, 0);
    }
}

/* The plain GEMV, y = x·Wᵀ in F32. With S > 1 each row's K is cut into S slices, a warp per slice and 8 / S
 * rows per block: S times the blocks, each warp's stream S times shorter (PRISM_CUDA_GEMV_SLICES). For the 7B
 * shape's few-row projections (q|k|v 4,608 rows, o and down 3,584) one warp per row is ~3.4 blocks per SM in one
 * wave, and the o GEMV's 7 KB rows are two round trips per warp: on an H200 this kernel (S = 1) streamed at 72%
 * of the copy bandwidth where gemv_glu_kernel (twice the bytes in flight per warp) reached 99%. The slices'
 * sums are added in slice order (deterministic). */
template <class A, int T, int U, int S>
__global__ void __launch_bounds__(256) gemv_mlp_kernel(float *__restrict__ y, const A *__restrict__ x,
                                                       const A *__restrict__ w, int32_t N, int32_t K) {
    constexpr int EPV = 16 / sizeof(A), RPB = GV_WARPS / S;
    static_assert(GV_WARPS % S == 0 && T <= 32, "slices of a block's warps; a lane per token");
    const int32_t wi = threadIdx.x >> 5, lane = threadIdx.x & 31, sl = wi % S;
    const int32_t n = blockIdx.x * RPB + wi / S;
    const bool valid = n < N;
    const int32_t kv = K / EPV, per = (kv + S - 1) / S, v0 = min(kv, sl * per), v1 = min(kv, v0 + per);
    const uint4 *const wr[1] = {(const uint4 *)(w + (int64_t)(valid ? n : 0) * K) + v0};
    float acc[1][T];
    gemv_rows<A, T, U, 1>(acc, wr, valid ? v1 - v0 : 0, x + (int64_t)v0 * EPV, K, lane);
    if constexpr (S == 1) { /* the row's whole sum is this warp's */
#pragma unroll
        for (int t = 0; t < T; t++) {
            const float v = warp_sum(acc[0][t]);
            if (lane == 0 && valid) y[(int64_t)t * N + n] = v;
        }
    } else {
        __shared__ float part[GV_WARPS][T];
#pragma unroll
        for (int t = 0; t < T; t++) {
            const float v = warp_sum(acc[0][t]);
            if (lane == 0) part[wi][t] = v;
        }
        __syncthreads();
        if (sl == 0 && valid && lane < T) {
            float v = 0.0f;
#pragma unroll
            for (int j = 0; j < S; j++) v += part[wi + j][lane];
            y[(int64_t)lane * N + n] = v;
        }
    }
}

/* Gate and up projections with SwiGLU in the epilogue: warp n computes rows n
 * (gate) and F + n (up) of the fused [2F, K] weight and writes
 * act[t][n] = silu(g + bg) * (u + bu), rounded to A as k_swiglu does. */
template <class A, int T, int U>
__global__ void __launch_bounds__(256) gemv_glu_kernel(A *__restrict__ act, const A *__restrict__ x,
                                                       const A *__restrict__ w, const float *__restrict__ bgu,
                                                       int32_t F, int32_t K) {
    const int32_t n = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5), lane = threadIdx.x & 31;
    const bool valid = n < F;
    const uint4 *const wr[2] = {(const uint4 *)(w + (int64_t)(valid ? n : 0) * K),
                                (const uint4 *)(w + (int64_t)(valid ? F + n : 0) * K)};
    float acc[2][T];
    gemv_rows<A, T, U, 2>(acc, wr, valid ? K / (16 / (int)sizeof(A)) : 0, x, K, lane);
#pragma unroll
    for (int t = 0; t < T; t++) {
        float g = warp_sum(acc[0][t]), u = warp_sum(acc[1][t]);
        if (lane == 0 && valid) {
            if (bgu) g += bgu[n], u += bgu[F + n];
            stA(act + (int64_t)t * F + n, silu_mul(g, u));
        }
    }
}

/* U: 16-byte loads in flight per lane (fewer with more tokens: registers). */
#define GEMV_CASES(M) M(1, 8) M(2, 8) M(3, 4) M(4, 4) M(5, 4) M(6, 4) M(7, 4) M(8, 4)

/* K slices per row of the plain GEMV (PRISM_CUDA_GEMV_SLICES=1, 2 or 4; default 1: a warp per row) */
static int gemv_slices(void) {
    static int v = 0;
    if (!v) {
        const char *e = getenv("PRISM_CUDA_GEMV_SLICES");
        v = e && (!strcmp(e, "2") || !strcmp(e, "4")) ? atoi(e) : 1;
        if (e && v == 1 && strcmp(e, "1"))
            fprintf(stderr, "prism-cuda: PRISM_CUDA_GEMV_SLICES=%s: takes 1, 2 or 4; using 1\n", e);
    }
    return v;
}

template <class A> static void gemv_t(cudaStream_t s, float *y, const A *x, const A *w, int32_t T, int32_t N, int32_t K) {
    const int sl = gemv_slices(), blocks = (N + GV_WARPS / sl - 1) / (GV_WARPS / sl);
    switch (T * 8 + sl) {
#define CASE(t, u) \
    case t * 8 + 1: PDL_LAUNCH((gemv_mlp_kernel<A, t, u, 1>), blocks, 32 * GV_WARPS, 0, s, y, x, w, N, K); break; \
    case t * 8 + 2: PDL_LAUNCH((gemv_mlp_kernel<A, t, u, 2>), blocks, 32 * GV_WARPS, 0, s, y, x, w, N, K); break; \
    case t * 8 + 4: PDL_LAUNCH((gemv_mlp_kernel<A, t, u, 4>), blocks, 32 * GV_WARPS, 0, s, y, x, w, N, K); break;
        GEMV_CASES(CASE)
#undef CASE
    default: break;
    }
}

template <class A>
static void gemv_glu_t(cudaStream_t s, A *act, const A *x, const A *w, const float *bgu, int32_t T, int32_t F, int32_t K) {
    const int blocks = (F + GV_WARPS - 1) / GV_WARPS;
    switch (T) {
#define CASE(t, u) \
    case t: PDL_LAUNCH((gemv_glu_kernel<A, t, u>), blocks, 32 * GV_WARPS, 0, s, act, x, w, bgu, F, K); break;
        GEMV_CASES(CASE)
#undef CASE
    default: break;
    }
}

void k_gemv(cudaStream_t s, int f32, float *y, const void *x, const void *w, int32_t T, int32_t N, int32_t K) {
    if (f32) gemv_t<float>(s, y, (const float *)x, (const float *)w, T, N, K);
    else gemv_t<bf16>(s, y, (const bf16 *)x, (const bf16 *)w, T, N, K);
}

void k_gemv_glu(cudaStream_t s, int f32, void *act, const void *x, const void *w, const float *bgu, int32_t T,
                int32_t F, int32_t K) {
    if (f32) gemv_glu_t<float>(s, (float *)act, (const float *)x, (const float *)w, bgu, T, F, K);
    else gemv_glu_t<bf16>(s, (bf16 *)act, (const bf16 *)x, (const bf16 *)w, bgu, T, F, K);
}

/* The first index of each row's maximum (as the CPU sampler's greedy path;
 * NaN never wins), in two launches: AMAX_PARTS blocks per row each reduce a
 * slice to (value, index), then one warp per row reduces the slices. */
static __device__ __forceinline__ void amax_pick(float &best, int32_t &idx, float ov, int32_t oi) {
    if (ov > best || (ov == best && oi < idx)) best = ov, idx = oi;
}

static __device__ __forceinline__ void amax_warp(float &best, int32_t &idx) {
    for (int o = 16; o > 0; o >>= 1) {
        const float ov = __shfl_xor_sync(0xffffffffu, best, o);
        const int32_t oi = __shfl_xor_sync(0xffffffffu, idx, o);
        amax_pick(best, idx, ov, oi);
    }
}

__global__ void __launch_bounds__(256) argmax_part_kernel(float *pv, int32_t *pi, const float *__restrict__ logits,
                                                          int32_t V) {
    pdl_wait();
    pdl_trigger();
    __shared__ float bv[8];
    __shared__ int32_t bi[8];
    const float *row = logits + (int64_t)blockIdx.x * V;
    const int32_t slice = (V + AMAX_PARTS - 1) / AMAX_PARTS, j0 = blockIdx.y * slice, j1 = min(V, j0 + slice);
    float best = -INFINITY;
    int32_t idx = 0x7fffffff;
#pragma unroll 8
    for (int32_t j = j0 + threadIdx.x; j < j1; j += 256) {
        const float v = row[j];
        if (v > best) best = v, idx = j; /* j increases: the first maximum of this thread is kept */
    }
    amax_warp(best, idx);
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    if (lane == 0) bv[w] = best, bi[w] = idx;
    __syncthreads();
    if (w == 0) {
        best = lane < 8 ? bv[lane] : -INFINITY;
        idx = lane < 8 ? bi[lane] : 0x7fffffff;
        amax_warp(best, idx);
        if (lane == 0) pv[blockIdx.x * AMAX_PARTS + blockIdx.y] = best, pi[blockIdx.x * AMAX_PARTS + blockIdx.y] = idx;
    }
}

__global__ void argmax_final_kernel(int32_t *out, const float *pv, const int32_t *pi) {
    pdl_wait();
    pdl_trigger();
    const int lane = threadIdx.x;
    float best = lane < AMAX_PARTS ? pv[blockIdx.x * AMAX_PARTS + lane] : -INFINITY;
    int32_t idx = lane < AMAX_PARTS ? pi[blockIdx.x * AMAX_PARTS + lane] : 0x7fffffff;
    amax_warp(best, idx);
    if (lane == 0) out[blockIdx.x] = idx == 0x7fffffff ? 0 : idx;
}

void k_argmax(cudaStream_t s, int32_t *out, float *pv, int32_t *pi, const float *logits, int32_t n, int32_t V) {
    if (n <= 0) return;
    PDL_LAUNCH(argmax_part_kernel, dim3(n, AMAX_PARTS), 256, 0, s, pv, pi, logits, V);
    PDL_LAUNCH(argmax_final_kernel, n, 32, 0, s, out, (const float *)pv, (const int32_t *)pi);
}

/* Batched generation's draw from softmax(logits · inv_t) on the device, as
 * prism_sample_softmax does it on the host: row r of the last head's logits,
 * its 1/temperature inv_t[r] (<= 0: out[r] = -1) and uniform u[r]. One block
 * per row. Each thread owns a contiguous slice of the vocabulary and sums its
 * weights expf(v − max) in double, in id order; the slices' sums are scanned
 * in order (a warp's 32 by its first lane, then the 32 warps' by thread 0:
 * a fixed association), so the slices' intervals [excl_t, excl_t+1) tile
 * [0, total) and exactly one holds u·total. Its thread walks its slice for
 * the first id whose running sum passes it (as the host does over the whole
 * vocabulary: the two differ only by the sums' association, in the last
 * bits). u·total rounded up to the total: the last id of nonzero weight, as
 * on the host. The products and differences are rounded as the host's are
 * (no fused multiply-add), so on the emulator the draws are identical.
 * Threads: a multiple of 32, at most SAMPLE_THREADS, ~8 ids each at least. */
#define SAMPLE_THREADS 1024
__global__ void __launch_bounds__(SAMPLE_THREADS) sample_softmax_kernel(int32_t *out, const float *__restrict__ logits,
                                                                       int32_t V, const float *inv_t, const double *u) {
    __shared__ double part[SAMPLE_THREADS], wsum[SAMPLE_THREADS / 32 + 1];
    __shared__ float fred[32];
    __shared__ int32_t ipick[32], ilast[32];
    const int32_t r = blockIdx.x, tid = threadIdx.x, lane = tid & 31, w = tid >> 5, nt = blockDim.x, nw = nt >> 5;
    const float it = inv_t[r];
    if (!(it > 0.0f)) { /* the whole block */
        if (tid == 0) out[r] = -1;
        return;
    }
    const float *l = logits + (int64_t)r * V;
    const int32_t per = (V + nt - 1) / nt, j0 = min(V, tid * per), j1 = min(V, j0 + per);
    float m = -INFINITY;
    for (int32_t j = j0; j < j1; j++) {
        const float v = __fmul_rn(l[j], it);
        m = v > m ? v : m;
    }
    for (int o = 16; o > 0; o >>= 1) {
        const float om = __shfl_xor_sync(0xffffffffu, m, o);
        m = om > m ? om : m;
    }
    if (lane == 0) fred[w] = m;
    __syncthreads();
    float vmax = fred[0];
    for (int i = 1; i < nw; i++) vmax = fred[i] > vmax ? fred[i] : vmax;
    double s = 0.0;
    int32_t last = -1; /* the slice's last id of nonzero weight */
    for (int32_t j = j0; j < j1; j++) {
        const float e = expf(__fsub_rn(__fmul_rn(l[j], it), vmax));
        s += e;
        if (e > 0.0f) last = j;
    }
    part[tid] = s;
    __syncthreads();
    if (lane == 0) { /* exclusive scan of the warp's slices, in order */
        double c = 0.0;
        for (int i = 0; i < 32; i++) {
            const double x = part[w * 32 + i];
            part[w * 32 + i] = c;
            c += x;
        }
        wsum[w] = c;
    }
    __syncthreads();
    if (tid == 0) { /* then of the warps' sums; wsum[nw] = the total */
        double c = 0.0;
        for (int i = 0; i < nw; i++) {
            const double x = wsum[i];
            wsum[i] = c;
            c += x;
        }
        wsum[nw] = c;
    }
    __syncthreads();
    const double excl = wsum[w] + part[tid], target = u[r] * wsum[nw];
    const double incl = tid + 1 < nt ? wsum[(tid + 1) >> 5] + part[tid + 1] : wsum[nw];
    int32_t pick = -1;
    if (excl <= target && target < incl) {
        double cum = excl;
        for (int32_t j = j0; j < j1 && pick < 0; j++) {
            cum += expf(__fsub_rn(__fmul_rn(l[j], it), vmax));
            if (target < cum) pick = j;
        }
        if (pick < 0) pick = last; /* the walk's sum rounded below the scan's */
    }
    for (int o = 16; o > 0; o >>= 1) {
        pick = max(pick, __shfl_xor_sync(0xffffffffu, pick, o));
        last = max(last, __shfl_xor_sync(0xffffffffu, last, o));
    }
    if (lane == 0) ipick[w] = pick, ilast[w] = last;
    __syncthreads();
    if (tid == 0) {
        int32_t p = -1, q = -1;
        for (int i = 0; i < nw; i++) p = max(p, ipick[i]), q = max(q, ilast[i]);
        out[r] = p >= 0 ? p : q >= 0 ? q : 0;
    }
}

void k_sample_softmax(cudaStream_t s, int32_t *out, const float *logits, int32_t n, int32_t V, const float *inv_t,
                      const double *u) {
    const int32_t want = (V / 8 + 31) / 32 * 32, nt = want < 32 ? 32 : want > SAMPLE_THREADS ? SAMPLE_THREADS : want;
    if (n > 0) sample_softmax_kernel<<<n, nt, 0, s>>>(out, logits, V, inv_t, u);
}

#ifndef PRISM_CUDA_EMU
int pdl_enabled(void) {
    static int ok[64]; /* per device: 0 unknown, 1 on, 2 off */
    int dev = 0;
    if (cudaGetDevice(&dev) != cudaSuccess || dev < 0 || dev >= 64) return 0;
    if (!ok[dev]) {
        const char *e = getenv("PRISM_CUDA_PDL");
        int major = 0;
        cudaFuncAttributes fa;
        /* the kernels' code must be sm_90's own (pdl_wait compiles to nothing below) */
        const int on = !(e && *e == '0') &&
                       cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) == cudaSuccess &&
                       major >= 9 && cudaFuncGetAttributes(&fa, (const void *)argmax_final_kernel) == cudaSuccess &&
                       fa.ptxVersion >= 90;
        ok[dev] = on ? 1 : 2;
    }
    return ok[dev] == 1;
}
#endif
