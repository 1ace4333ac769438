/* common.cuh — shared pieces of the CUDA module: device-side structures of a
 * model, adapter and context, and the kernel launchers each .cu file offers.
 *
 * Layout on the device
 *  - Matmul weights row-major [out, in] as in the checkpoint; q|k|v are
 *    fused into one [qd + 2·kvd, H] matrix and gate|up into one [2F, H].
 *  - Residual stream F32; matmul outputs F32.
 *  - The "activation type" A — matmul weights and inputs, the KV cache — is
 *    BF16 (PRISM_PRECISION_FAST: tensor cores, half the bytes) or F32
 *    (PRISM_PRECISION_EXACT: matches the CPU engine to ~1e-6). Kernels are
 *    templates on A; launchers take the model's f32 flag.
 *  - KV cache per layer (n_seq, n_ctx, kv_dim).
 *  - LoRA A (r, in) and Bᵀ (r, out) in F32. */
#ifndef PRISM_CUDA_COMMON_CUH
#define PRISM_CUDA_COMMON_CUH

#include <stdint.h>

#ifdef PRISM_CUDA_EMU /* tests/cuda_emu: the same code on the CPU */
#include "cuda_emu.h"
#else
#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#define PRISM_DYN_SMEM(type, name) extern __shared__ __align__(16) type name[]
#endif

#include "gpu/gpu.h"

typedef __nv_bfloat16 bf16;

enum { LT_Q, LT_K, LT_V, LT_O, LT_GATE, LT_UP, LT_DOWN, LT_N };

/* Rows of a query tile grouped for the attention kernel. */
#define ATT_KC 32        /* keys per chunk staged in shared memory */
#define ATT_THREADS 128
#define ATT_MAX_ROWS 32  /* rows (tokens x heads of a KV group) per block at most */
#define ATT_MAX_HD 256   /* head dimension at most */
#define ATT_MAX_SPLIT 16 /* split-K blocks per (tile, kv head) at most */
#define ATT_SPLIT_TOKENS 256 /* split-K only for batches up to this many tokens (decode) */

/* LoRA (SGMV) */
#define LORA_ROWS 16     /* batch rows per block */
#define LORA_RMAX 64     /* ranks supported by the kernels */

typedef struct {
    void *w; /* A */
    int64_t out, in;
} dlin;

/* The first key a query at position p sees: p - window + 1 for sliding-window
 * models (Mistral), else 0 (causal). Host and device. */
static __host__ __device__ __forceinline__ int32_t first_key(int32_t p, int32_t window) {
    return window > 0 && p - window + 1 > 0 ? p - window + 1 : 0;
}

/* Loads and stores of the activation type, computing in F32. */
static __device__ __forceinline__ float ldA(const float *p) { return *p; }
static __device__ __forceinline__ float ldA(const bf16 *p) { return __bfloat162float(*p); }
static __device__ __forceinline__ void stA(float *p, float v) { *p = v; }
static __device__ __forceinline__ void stA(bf16 *p, float v) { *p = __float2bfloat16(v); }
/* SwiGLU's silu(g)·u, written once: the training backward recomputes what the forward wrote, and must match it
 * to the last bit. */
static __device__ __forceinline__ float silu_mul(float g, float u) { return g / (1.0f + expf(-g)) * u; }
/* v as stA would store it at a p of that type (p is not accessed) */
static __device__ __forceinline__ float rndA(const float *, float v) { return v; }
static __device__ __forceinline__ float rndA(const bf16 *, float v) { return __bfloat162float(__float2bfloat16(v)); }

/* Programmatic dependent launch (Hopper, sm_90+): a kernel launched with
 * PDL_LAUNCH may start while its predecessor on the stream is finishing. It
 * must call pdl_wait() before it reads anything earlier work wrote (immutable
 * weights may be touched before), and every such kernel calls it, so
 * completion stays transitive along the stream. pdl_trigger() lets the
 * successor be scheduled early. Off (plain launches) where the GPU or the
 * build's code for it predates sm_90, or with PRISM_CUDA_PDL=0. */
static __device__ __forceinline__ void pdl_wait(void) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
static __device__ __forceinline__ void pdl_trigger(void) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}
#ifdef PRISM_CUDA_EMU
#define PDL_LAUNCH(kern, grid, block, smem, stream, ...) \
    emu::launch(emu::cfg(grid, block, smem, stream), kern, __VA_ARGS__)
#else
int pdl_enabled(void); /* for the current device */
template <typename... KP, typename... Args>
static inline void pdl_launch(void (*kern)(KP...), dim3 grid, dim3 block, size_t smem, cudaStream_t s, Args... args) {
    cudaLaunchConfig_t cfg = {};
    cudaLaunchAttribute at[1];
    cfg.gridDim = grid, cfg.blockDim = block, cfg.dynamicSmemBytes = smem, cfg.stream = s;
    at[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    at[0].val.programmaticStreamSerializationAllowed = 1;
    cfg.attrs = at, cfg.numAttrs = pdl_enabled() ? 1 : 0;
    cudaLaunchKernelEx(&cfg, kern, ((KP)args)...); /* errors surface at the caller's cudaGetLastError */
}
/* kern in parentheses when its template arguments hold commas */
#define PDL_LAUNCH(kern, grid, block, smem, stream, ...) pdl_launch(kern, grid, block, smem, stream, __VA_ARGS__)
#endif

/* The 16 bytes of v as F32: 8 BF16 or 4 F32 (the pointer picks the type). */
static __device__ __forceinline__ void unpack16(const uint4 &v, const bf16 *, float *f) {
    const __nv_bfloat162 *h = (const __nv_bfloat162 *)&v;
#pragma unroll
    for (int e = 0; e < 4; e++) {
        const float2 t = __bfloat1622float2(h[e]);
        f[2 * e] = t.x, f[2 * e + 1] = t.y;
    }
}
static __device__ __forceinline__ void unpack16(const uint4 &v, const float *, float *f) {
    const float *p = (const float *)&v;
#pragma unroll
    for (int e = 0; e < 4; e++) f[e] = p[e];
}

static __device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

/* Sum over a block of up to 1024 threads, every thread gets it; red has 32 floats. */
static __device__ __forceinline__ float block_sum(float v, float *red) {
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
    v = warp_sum(v);
    __syncthreads(); /* red may still be read from a previous call */
    if (lane == 0) red[w] = v;
    __syncthreads();
    return warp_sum(lane < nw ? red[lane] : 0.0f);
}

/* One warp post-processes one head row of the fused q|k|v GEMV output: + bias
 * b, then for q and k (rope) the per-head RMSNorm (Qwen3, when nw) and RoPE
 * at position p, rotate-half pairs (j, j + hd/2); dst[j] = value·scale.
 * hd <= 512. Used by k_qkv_post and by the attention kernel's fused decode. */
template <class D>
static __device__ __forceinline__ void qkv_post_row(D *dst, const float *src, const float *b, const float *nw, bool rope,
                                                    const float *inv_freq, int32_t p, int32_t hd, float eps,
                                                    float scale, int lane) {
    const int32_t half = hd / 2;
    float a[8], bb[8]; /* lane's pairs (j, j + half) for j = lane, lane + 32, ... */
    int n = 0;
    float ss = 0.0f;
    for (int32_t j = lane; j < half; j += 32, n++) {
        a[n] = src[j] + (b ? b[j] : 0.0f);
        bb[n] = src[j + half] + (b ? b[j + half] : 0.0f);
        ss += a[n] * a[n] + bb[n] * bb[n];
    }
    if (rope && nw) {
        const float r = 1.0f / sqrtf(warp_sum(ss) / (float)hd + eps);
        n = 0;
        for (int32_t j = lane; j < half; j += 32, n++) {
            a[n] = nw[j] * (a[n] * r);
            bb[n] = nw[j + half] * (bb[n] * r);
        }
    }
    if (rope) {
        n = 0;
        for (int32_t j = lane; j < half; j += 32, n++) {
            float sn, cs;
            sincosf((float)p * inv_freq[j], &sn, &cs);
            const float x1 = a[n], x2 = bb[n];
            a[n] = x1 * cs - x2 * sn;
            bb[n] = x2 * cs + x1 * sn;
        }
    }
    n = 0;
    for (int32_t j = lane; j < half; j += 32, n++) {
        stA(dst + j, a[n] * scale);
        stA(dst + j + half, bb[n] * scale);
    }
}

typedef struct {
    dlin wqkv, wo, wgu, wd;
    float *attn_norm, *ffn_norm, *q_norm, *k_norm;
    float *bqkv; /* (qd + 2 kvd) or NULL */
    float *bo, *bgu, *bd;
} dlayer;

struct gpu_model {
    int dev;
    int32_t n_layers, H, nh, nkv, hd, F, V, window;
    float eps;
    int f32;           /* activation type A: F32 (exact) or BF16 */
    size_t asz;        /* sizeof(A) */
    void *embed, *lm_head;
    float *final_norm, *inv_freq;
    dlayer *layers; /* host array of device pointers */
    void **allocs;  /* every device allocation of the model */
    int n_allocs, cap_allocs;
    int64_t bytes;
    int smem_optin; /* max dynamic shared memory per block */
    int att_smem;   /* max dynamic shared memory of attention_kernel: smem_optin less its static shared memory */
    int n_sm;
    int cc_major;   /* compute capability */
};

typedef struct {
    int32_t r;
    float scale;
    int32_t in, out;
    const float *A;  /* (r, in) */
    const float *Bt; /* (r, out) */
} dmod;

struct gpu_adapter {
    int dev;
    int32_t n_layers;
    dmod *tab;       /* device (n_layers, 7) */
    dmod *host_tab;  /* host copy: which modules are adapted */
    void *mem;
    int64_t bytes;
};

typedef struct {
    int32_t i0, n, seq, p0;
} att_tile;

/* The q|k|v post-processing folded into attention (decode); see attention.cu. */
typedef struct {
    int32_t on;
    const float *y, *bqkv, *q_norm, *k_norm, *inv_freq;
    int64_t qkv_n;
    float eps;
} att_post;

typedef struct {
    int32_t seg, row0, n; /* rows[row0 .. row0+n) of segment seg */
} lora_tile;

/* Decode steps replay CUDA graphs: one per batch shape (the kernels' grids),
 * the batch's data living in device buffers that each step refreshes. */
#define GRAPH_CACHE 8
#define GRAPH_MAX_T 64 /* tokens per batch captured at most (decode steps) */
typedef struct {
    int32_t T, n_tiles, n_split, n_ltiles, att_fused; /* the shape: every grid of the step follows from it */
    cudaGraphExec_t exec;
    uint64_t used;
} graph_ent;

struct gpu_ctx {
    gpu_model *m;
    cudaStream_t s;
    cublasHandle_t blas;
    int32_t n_seq, n_ctx, n_batch;
    int64_t kvd, qd, qkv_n;
    void *kc, *vc;      /* A (L, n_seq, n_ctx, kvd) */
    float *x;           /* (B, H) residual stream */
    void *xb;           /* A (B, max(H, qd, F)) matmul input */
    float *y;           /* (B, max(qkv_n, 2F, H)) matmul output */
    float *q;           /* (B, qd) roped queries */
    float *part_o;      /* (ATT_MAX_SPLIT, min(B, ATT_SPLIT_TOKENS), qd) split-K partials */
    float2 *part_ml;    /* (ATT_MAX_SPLIT, min(B, ATT_SPLIT_TOKENS), nh) running max, sum */
    int32_t *att_tickets; /* (min(B, ATT_SPLIT_TOKENS), nkv) split-K blocks done, 0 between launches */
    float *lora_t;      /* 3 × (max(B, 2 n_sm LORA_ROWS), LORA_RMAX) x·Aᵀ for up to three targets of one input, or
                         * their slices' partials (lora.cu) */
    int64_t lora_tz;    /* floats of lora_t per target */
    void *gath;         /* A (B, H) head rows */
    float *logits;      /* (cap_logits rows, V) device */
    float *logits_h;    /* (cap_logits rows, V) pinned host copy */
    void *act;          /* (GEMV_MAX_T, F) A: SwiGLU output of the fused small-batch path */
    int32_t *amax;      /* (B) device argmax of each head row */
    float *amax_pv;     /* (B, AMAX_PARTS) its partial maxima */
    int32_t *amax_pi;
    void *samp;         /* (B) u (double) | (B) inv_t (float) | (B) drawn id: sample()'s arguments and result */
    int32_t cap_logits, n_out;
    /* batch metadata: one device block, uploaded once per forward call */
    void *meta_d, *meta_h; /* device / pinned host, meta_bytes each */
    size_t meta_bytes;
    int32_t *d_tok, *d_pos, *d_seq, *d_rows, *d_hrows;
    att_tile *d_tiles;
    lora_tile *d_ltiles;
    const dmod **d_segtab;
    /* host view of the batch */
    int32_t T, n_tiles, n_ltiles, n_segs, n_split, max_keys;
    int32_t att_fused;  /* one tile per sequence: q/k-norm, RoPE and the KV write inside attention */
    int32_t head_pending; /* a head() upload of hrows may not have run yet */
    int32_t tq;         /* tokens per attention tile */
    int32_t att_rows;   /* rows (tokens × heads of a group) per attention block */
    const gpu_adapter **seg_ad; /* (B) host: adapter of each segment */
    int64_t bytes;
    graph_ent graphs[GRAPH_CACHE];
    uint64_t graph_clock;
    int graphs_off;     /* PRISM_CUDA_GRAPHS=0, or a capture failed: always eager */
    void *blas_ws;      /* cuBLAS workspace (fixed, so cuBLAS calls can be captured) */
};

/* ---- error helpers and memory accounting (backend.cu) */
int gpu_fail(char *err, size_t errn, int code, const char *fmt, ...);
/* A CUDA error as gpu_fail's status and message: out of memory (with what is free), a compute capability the
 * build does not cover, or the CUDA error named. */
int cuda_fail(char *err, size_t errn, cudaError_t e, const char *what);
/* In a function with err and errn: return cuda_fail's status if call fails. */
#define CU(call, what)                                                    \
    do {                                                                  \
        cudaError_t e_ = (call);                                          \
        if (e_ != cudaSuccess) return cuda_fail(err, errn, e_, (what));   \
    } while (0)
int no_fusion(void); /* PRISM_CUDA_FUSE=0: the unfused kernels, for A/B measurements */
enum { UF_POST = 1, UF_COMBINE = 2, UF_GLU = 4 };
int unfused(int part); /* that decode fusion off: not in PRISM_CUDA_DECODE_FUSE (default post), or PRISM_CUDA_FUSE=0 */
void account(int64_t delta); /* device bytes allocated (+) or freed (-), for model_memory */

/* ---- cuBLASLt (backend.cu): the GEMM benchmark and the trainer's GEMM tuning */
/* The problem C (m × n at ldc, type ct) = op(A)·B: A (type at) stored m × k at lda, or k × m with oa = T;
 * B k × n at ldb; F32 compute and scale. */
typedef struct {
    cublasLtMatmulDesc_t op;
    cublasLtMatrixLayout_t la, lb, lc;
} lt_prob;
cublasStatus_t lt_prob_make(lt_prob *p, cublasOperation_t oa, int m, int n, int k, int lda, int ldb, int ldc,
                            cudaDataType at, cudaDataType ct);
void lt_prob_free(lt_prob *p);
/* The first (at most) n algorithms cuBLASLt's heuristic proposes for p within ws bytes of workspace: res,
 * their count in *got. */
cublasStatus_t lt_heuristic(cublasLtHandle_t h, const lt_prob *p, size_t ws, int n,
                            cublasLtMatmulHeuristicResult_t *res, int *got);
/* Milliseconds a call() (returning a cublasStatus_t) takes on stream s: the mean of reps calls issued back
 * to back after a warm-up one still queued when e0 is recorded, so that neither the host's cost of a call
 * nor an idle stream counts; < 0 if a call or an event fails. */
template <class F> static inline float time_calls(cudaStream_t s, cudaEvent_t e0, cudaEvent_t e1, int reps, F call) {
    float ms = 0;
    if (call() != CUBLAS_STATUS_SUCCESS || cudaEventRecord(e0, s) != cudaSuccess) return -1.0f;
    for (int r = 0; r < reps; r++)
        if (call() != CUBLAS_STATUS_SUCCESS) return -1.0f;
    if (cudaEventRecord(e1, s) != cudaSuccess || cudaEventSynchronize(e1) != cudaSuccess ||
        cudaEventElapsedTime(&ms, e0, e1) != cudaSuccess)
        return -1.0f;
    return ms / reps;
}

/* ---- kernels.cu (A = float when f32, else bf16; pointers to A are void *) */
void k_embed(cudaStream_t s, int f32, float *x, const void *emb, const int32_t *tok, int32_t T, int32_t H);
/* xb = A(rmsnorm(x) * w) per row */
void k_rmsnorm(cudaStream_t s, int f32, void *xb, const float *x, const float *w, int32_t T, int32_t H, float eps);
/* x += y (+ bias); then xb = A(rmsnorm(x) * w) if w != NULL */
void k_add_rmsnorm(cudaStream_t s, int f32, float *x, const float *y, const float *bias, void *xb, const float *w,
                   int32_t T, int32_t H, float eps);
/* In-place final norm of the residual stream: x = rmsnorm(x) * w (F32). */
void k_rmsnorm_inplace(cudaStream_t s, float *x, const float *w, int32_t T, int32_t H, float eps);
/* Biases, Qwen3 q/k norms, RoPE; q -> q (F32), k, v -> the layer's cache. */
void k_qkv_post(cudaStream_t s, const gpu_ctx *c, int32_t layer, int32_t T);
/* xb = A(silu(g + bg) * (u + bu)) from y = [g | u] (T, 2F). */
void k_swiglu(cudaStream_t s, int f32, void *xb, const float *y, const float *bgu, int32_t T, int32_t F);
/* gath[j] = A(x[rows[j]]) */
void k_gather_rows(cudaStream_t s, int f32, void *gath, const float *x, const int32_t *rows, int32_t n, int32_t H);
void k_fill_uniform(cudaStream_t s, int f32, void *w, int64_t n, float scale, uint64_t seed);
void k_fill_f32(cudaStream_t s, float *w, int64_t n, float v);
#define AMAX_PARTS 32 /* blocks per row of the device argmax (<= 32) */
void k_argmax(cudaStream_t s, int32_t *out, float *pv, int32_t *pi, const float *logits, int32_t n, int32_t V);
/* out[r] = a draw from softmax(logits_r · inv_t[r]) at uniform u[r] (prism_sample_softmax), rows r < n. */
void k_sample_softmax(cudaStream_t s, int32_t *out, const float *logits, int32_t n, int32_t V, const float *inv_t,
                      const double *u);
/* y (T, N) F32 = x (T, K) · Wᵀ, x and W (N, K) of type A; for T <= GEMV_MAX_T. */
#define GEMV_MAX_T 8
void k_gemv(cudaStream_t s, int f32, float *y, const void *x, const void *w, int32_t T, int32_t N, int32_t K);
/* act (T, F) = silu(x·Wgᵀ + bg) * (x·Wuᵀ + bu) with Wgu = [Wg; Wu] (2F, K) of
 * type A; for T <= GEMV_MAX_T, K % 8 == 0. */
void k_gemv_glu(cudaStream_t s, int f32, void *act, const void *x, const void *w, const float *bgu, int32_t T,
                int32_t F, int32_t K);

/* ---- attention.cu */
int attention_smem(int32_t rows, int32_t hd, int32_t new_tokens);
int attention_setup(int smem_optin, int *dyn_max, char *err, size_t errn); /* dyn_max: attention's dynamic smem */
void k_attention(const gpu_ctx *c, int32_t layer, void *out);

/* ---- flash.cu: the trainer's attention on tensor cores (BF16 WMMA, sm_80+).
 * q, k, v (BF16) and their gradients (F32) head-major per sequence
 * (train.cu); O and dO the pass's rows (T, nh·hd), O in BF16; a flash_tile
 * is FLASH_TILE positions of one sequence. */
#define FLASH_TILE 64
typedef struct {
    int32_t off, n, start; /* the sequence's first pass row and length; the tile's first position */
} flash_tile;
int flash_smem(int32_t hd);                                /* bytes per block; -1: hd > 128 */
int flash_setup(int32_t hd, int cc_major, int smem_optin); /* 0: usable on this device */
/* o (rows) = softmax(scale·q kᵀ, causal/window) v per head; lse per row (head-major rows) */
void k_flash_fwd(cudaStream_t s, const bf16 *q, const bf16 *k, const bf16 *v, bf16 *o, float *lse,
                 const flash_tile *tiles, int32_t n_tiles, int32_t nh, int32_t nkv, int32_t hd, int32_t window,
                 float scale);
/* dq, dk, dv (head-major; written, not added) from dO (rows), lse and D = rowsum(dO ⊙ O); dk and dv in
 * nh/nkv parts, part_stride floats apart (part h mod group from query head h), the reader sums them */
void k_flash_bwd(cudaStream_t s, const bf16 *q, const bf16 *k, const bf16 *v, const float *dout,
                 const float *lse, const float *D, float *dq, float *dk, float *dv, int64_t part_stride,
                 const flash_tile *tiles, int32_t n_tiles, int32_t nh, int32_t nkv, int32_t hd, int32_t window,
                 float scale);
/* D from the (T, nh·hd) rows of the output and its gradient; sofs/slen per row */
void k_flash_dot(cudaStream_t s, float *D, const float *dout, const bf16 *out, const int32_t *sofs,
                 const int32_t *slen, int32_t T, int32_t nh, int32_t hd);

/* ---- train.cu: fills the training entries of the table */
void gpu_train_api(prism_gpu_api *api);
/* gate.cu: fills the gate's entries */
void gpu_gate_api(prism_gpu_api *api);

/* ---- lora.cu: y[rows, col_off..] += scale · (x[rows]·Aᵀ)·Bᵀ for every segment's adapter */
void k_lora(const gpu_ctx *c, int32_t layer, const int32_t *targets, const int32_t *cols, int32_t n, const void *x,
            int32_t ldx, float *y, int32_t ldy);

#endif
