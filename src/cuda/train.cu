/* train.cu — LoRA training on the device: forward with saved activations,
 * masked-CE or top-k-KL loss, backward through the frozen model to dA/dB,
 * global gradient norm and AdamW — the same computation as src/train/grad.c
 * and optim.c (see there for the formulas), so a GPU run can be checked
 * against peft's gradients exactly as the CPU one is.
 *
 * A pass packs several sequences (train_batch) one after the other into T
 * rows, so the frozen GEMMs, LoRA and the elementwise kernels run once over
 * all of them (M = T: tensor cores need M in the thousands to fill an H100,
 * and launches are paid once per pass, not per sequence); only attention and
 * the loss work per sequence.
 *
 * Precision. --precision exact (F32 models): everything F32, matching the
 * CPU trainer to ~1e-6. BF16 models: the residual stream, norms, attention's
 * q/k/v and LoRA's parameters and small products stay F32; matmuls against
 * the frozen weights take BF16 inputs (tensor cores, F32 accumulation); the
 * MLP's wide tensors exist in BF16 only — gate|up, silu(gate)·up, their
 * gradients — written directly by their producers as the next GEMM's input,
 * and LoRA reads those BF16 copies too (its small operands converted on the
 * fly). This is the precision of transformers + peft in bf16.
 *
 * Attention works per sequence on head-major copies of q, k, v (sequence s
 * of n_s tokens starting at row o_s holds head h's rows at
 * (o_s·n + h·n_s + position)·hd, n heads). On BF16 models it is flash.cu's
 * tensor-core kernels (one log-sum-exp per row kept, nothing of size n_s²);
 * otherwise (F32, heads over 128, PRISM_CUDA_FLASH=0) six cuBLAS products
 * per KV head with the probabilities P (nh, n_s, n_s) materialised.
 * silu(gate)·up is recomputed in the backward rather than kept. With
 * recompute, only each layer's input is kept and the layer's forward runs
 * again just before its backward. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda/common.cuh"
#include "train/topk_kl.h"

/* Logit rows materialised at once (fewer when a pass is shorter): the LM
 * head's two GEMMs run at M = loss_rows (loss_rows_for). 64 rows measured
 * 13.5 of 74 ms per 512-token example on the 7B shape, 256 rows 4.2 ms. At
 * 256 rows each GEMM reads the whole head (1.09 GB at 7B) for 279 GFLOP:
 * 256 FLOP a byte, under an H100's ~300 (989 TFLOP/s over 3.35 TB/s), so
 * the head's reads bound it; at 1,024 rows the arithmetic does. */
#define LOSS_ROWS_MAX 1024
#define LOSS_ROWS_MIN 256

typedef struct {
    int32_t r;
    float scale;
    int32_t in, out;
    int64_t offA, offB; /* into the flat parameter / gradient / moment arrays */
} tmod;

typedef struct {
    void *h1;            /* (T, H) rmsnorm(x)·w, activation type: only GEMMs (frozen and LoRA) read it */
    float *r1, *qraw, *kraw, *rq, *rk;
    void *qh, *kh, *vh;  /* head-major (n, T, hd), after norm and RoPE: BF16 for flash.cu, else F32 */
    float *P;            /* (nh, n_s, n_s) per sequence: the cuBLAS path */
    float *lse;          /* (nh, T) log-sum-exp per row, head-major: the flash path */
    void *att;           /* (T, qd) attention output, activation type (written so by flash.cu or tk_heads) */
    float *xmid, *r2;
    void *h2;            /* (T, H), as h1 */
    void *gu;            /* (T, 2F) gate | up, biases included; activation type (BF16 unless F32) */
    float *mid[3];       /* x·Aᵀ of a projection's adapted targets: (T, Σr) for q|k|v, o | gate|up | down */
} tacts;

struct gpu_train {
    gpu_model *m;
    cudaStream_t s;
    cublasHandle_t blas;
    void *blas_ws;     /* its workspace: 32 MiB, the size cuBLAS recommends for Hopper (a larger one does no harm) */
    int32_t tune;      /* PRISM_CUDA_GEMM_TUNE: the frozen GEMMs by cuBLASLt's measured fastest algorithm (frozen_gemm) */
    cublasLtHandle_t lt;
    struct gtune *tunes; /* the shape classes measured so far */
    int32_t n_tunes, cap_tunes;
    int32_t T_max;     /* rows of a pass: the tokens of all its sequences */
    int32_t S_max;     /* tokens of one sequence at most */
    int32_t recompute, n_mods, max_r, first_adapted;
    int32_t flash;     /* attention by flash.cu (BF16 tensor cores, no P) rather than cuBLAS */
    flash_tile *h_ftiles, *d_ftiles; /* the pass's 64-position tiles (host staging, device) */
    int32_t n_ftiles;
    float *Drow;       /* (nh, T) rowsum(dO ⊙ O), head-major: the flash backward */
    int32_t loss_rows; /* logit rows at once: loss_rows_for */
    int32_t lm_split;  /* the LM head's backward GEMM in this many vocabulary slices (partials in drows) */
    int32_t lora_split; /* LoRA's dA and dB GEMMs may split their K = T (bg_acc_t; PRISM_CUDA_LORA_SPLIT=0: never);
                         * 2: also the skinny products x·Aᵀ and dy·B, K = a projection's width (bg_skinny) */
    float *lpart;      /* their partial products: 8 × the largest dA or dB (or, with 2, T × Σr) */
    int32_t lora_min_k; /* their slices' least K: 256 (PRISM_CUDA_LORA_SPLIT_MIN_K, for tests: the fixtures' K are small) */
    int32_t frozen_split; /* PRISM_CUDA_FROZEN_SPLIT: long-K frozen GEMMs in this many K slices (frozen_k) */
    float *fpart;      /* their partial products: frozen_split × (T, H) */
    tmod *mods;
    int64_t n_params;
    float *p, *g, *m1, *m2;
    float *xs;         /* (L + 1, T, H) */
    tacts *acts;       /* n_layers, or 1 with recompute */
    int n_acts;
    float *hf, *rf, *dx, *dh, *y, *datt, *dgu, *hd_tmp, *ltmp, *oh, *dP;
    void *dqkv;        /* (T, qn) activation type: the q|k|v backward GEMM's input, written by tk_qkv_bwd */
    bf16 *dxb;         /* (T, H) BF16 copy of dx, written by tk_norm_bwd (BF16 models; else NULL) */
    float *act;        /* (T, F) silu(gate)·up, F32 models only (BF16: in abuf); recomputed for the backward */
    int32_t swb;       /* the SwiGLU backward computes the down projection's LoRA dA (tk_swiglu_bwd_da) */
    int32_t lfuse;     /* the SwiGLU kernels do the MLP's LoRA work (tk_swiglu_fwd_lora, tk_swiglu_bwd_lora) */
    int32_t gu_remake; /* lfuse: the backward adds gate|up's LoRA terms again instead of the forward keeping them */
    float *dpart;      /* their per-chunk partials: chunks × (r_down, or r_down + r_gate + r_up) × F */
    void *abuf;        /* activation-type copy of a GEMM input (T, max(H, qd, F, 2F)) */
    /* BF16 copies of LoRA's small operands, for products whose large operand is BF16 (BF16 models):
     * mid (T, 3 max_r), tmp (T, 3 max_r); and pb, all the parameters (the As and Bs), remade by one launch at
     * the start of a pass after they changed (pb_stale: uploaded, or stepped by AdamW) rather than each A and B
     * converted where a product reads it (~28 launches per layer per pass) */
    bf16 *lb_mid, *lb_tmp, *pb;
    int32_t pb_stale;
    float *logits, *dlogits, *drows;
    void *hrows;       /* (loss_rows, max(H, V)) activation type: gathered rows / dlogits */
    double *row_loss, *norm_part;
    int32_t *d_tok, *d_labels, *d_rows, *d_terms, *d_tidx;
    int32_t *d_sofs, *d_slen; /* (T) first row and length of each row's sequence */
    int32_t *h_meta;          /* host staging: tokens, labels, sofs, slen (4 T) */
    int32_t n_seq, *seq_off, *seq_len; /* the pass's sequences (host, T_max each) */
    void *d_teach;     /* teacher top-k of a pass: values | indices */
    float *d_tval;
    int64_t cap_teacher;
    int32_t *h_rows;   /* host: loss rows | their teacher offsets | logits_out rows (3 T) */
    double *h_loss;    /* host: per-row losses (T) */
    void **allocs;
    int n_allocs, cap_allocs;
    int64_t bytes;
    struct tprof *prof; /* PRISM_CUDA_PROFILE=1 or 2 */
};

/* ------------------------------------------------------------------ profile */

/* PRISM_CUDA_PROFILE=1: where a training run's GPU time goes. Events on the
 * stream mark the end of each span; the time since the previous mark is
 * charged to the span's category; printed to stderr when the session ends.
 * PRISM_CUDA_PROFILE=2 also names each span (prof_op: a frozen GEMM, one of
 * LoRA's products, a kernel) and prints the time per name and example, the
 * largest first: the breakdown Nsight tools give by kernel name, but at the
 * 7B shape, in the real step, and with cuBLAS's calls named by their role. */
enum { TP_OTHER, TP_EMBED_NORM, TP_GEMM_F, TP_LORA_F, TP_ATT_F, TP_ELT_F, TP_LOSS, TP_GEMM_B, TP_LORA_B, TP_ATT_B,
       TP_ELT_B, TP_OPT, TP_N };
static const char *const TP_NAME[TP_N] = {"host gaps, uploads",        "embedding, final norm",
                                          "frozen GEMMs, forward",     "LoRA, forward",
                                          "attention, forward",        "norms, SwiGLU, adds, forward",
                                          "loss (LM head, CE/KL)",     "frozen GEMMs, backward",
                                          "LoRA, backward",            "attention, backward",
                                          "norms, SwiGLU, adds, backward", "gradient norm, AdamW"};
#define TP_MAX 1024
#define TP_OPS 128 /* span names at most (PRISM_CUDA_PROFILE=2; ~65 today): more would count in their category only */
struct tprof {
    cudaEvent_t ev[TP_MAX];
    int cat[TP_MAX], n, examples;
    const char *lab[TP_MAX]; /* the span's name (NULL: its category's) */
    double ms[TP_N];
    int ops; /* PRISM_CUDA_PROFILE=2 */
    const char *op[TP_OPS];
    int op_cat[TP_OPS], n_ops;
    double op_ms[TP_OPS];
    int64_t op_calls[TP_OPS];
    /* the first pass's share, left out of the totals when later passes ran: the one-time costs (modules
     * loaded at first launch, cuBLAS's first calls) land on a few spans — ~80 ms at both 0.5B and 7B in
     * run 6, ~1 ms a call on three spans, more than 0.5B's whole step */
    int passes, first_examples, first_ops;
    double first_ms[TP_N], first_op_ms[TP_OPS];
    int64_t first_op_calls[TP_OPS];
};

/* The spans' times into their categories (and names). restart: a flush in the middle of a pass (the event
 * ring is full), right after the last span's event was recorded — the stream's last work, so the GPU is idle
 * once it has completed: the next span starts now, not at that event, and the host's gap while flushing is
 * not charged to whatever follows. */
static void prof_flush(gpu_train *t, int restart) {
    struct tprof *P = t->prof;
    if (!P || P->n < 2) return;
    cudaEventSynchronize(P->ev[P->n - 1]);
    for (int i = 1; i < P->n; i++) {
        float ms = 0;
        if (cudaEventElapsedTime(&ms, P->ev[i - 1], P->ev[i]) != cudaSuccess) continue;
        P->ms[P->cat[i]] += ms;
        if (!P->ops) continue;
        const char *name = P->lab[i] ? P->lab[i] : TP_NAME[P->cat[i]];
        int k = 0;
        while (k < P->n_ops && (P->op[k] != name || P->op_cat[k] != P->cat[i])) k++;
        if (k == TP_OPS) continue; /* out of rows */
        if (k == P->n_ops) P->op[k] = name, P->op_cat[k] = P->cat[i], P->op_ms[k] = 0, P->op_calls[k] = 0, P->n_ops++;
        P->op_ms[k] += ms, P->op_calls[k]++;
    }
    cudaEvent_t last = P->ev[P->n - 1];
    P->ev[P->n - 1] = P->ev[0], P->ev[0] = last, P->n = 1;
    if (restart) cudaEventRecord(P->ev[0], t->s);
}

/* The work enqueued since the previous mark was of category cat; with PRISM_CUDA_PROFILE=2 named name (a
 * string that lives as long as the program: the same pointer each time it is charged). */
static void prof_op(gpu_train *t, int cat, const char *name) {
    struct tprof *P = t->prof;
    if (!P) return;
    if (cudaEventRecord(P->ev[P->n], t->s) == cudaSuccess) P->cat[P->n] = cat, P->lab[P->n++] = name;
    if (P->n == TP_MAX) prof_flush(t, 1); /* after this span's event: nothing of it is left to run */
}

static void prof_mark(gpu_train *t, int cat) { prof_op(t, cat, NULL); }

static void prof_new(gpu_train *t) {
    const char *e = getenv("PRISM_CUDA_PROFILE");
    if (!e || (*e != '1' && *e != '2')) return;
    struct tprof *P = (struct tprof *)calloc(1, sizeof *P);
    if (!P) return;
    for (int i = 0; i < TP_MAX; i++)
        if (cudaEventCreate(&P->ev[i]) != cudaSuccess) {
            for (int j = 0; j < i; j++) cudaEventDestroy(P->ev[j]);
            free(P);
            return;
        }
    P->ops = *e == '2';
    t->prof = P;
}

static void prof_free(gpu_train *t) {
    struct tprof *P = t->prof;
    if (!P) return;
    prof_flush(t, 0);
    double tot = 0, first = 0;
    for (int c = 0; c < TP_N; c++) first += P->first_ms[c];
    if (P->passes > 1) { /* the first pass left out */
        for (int c = 0; c < TP_N; c++) P->ms[c] -= P->first_ms[c];
        for (int k = 0; k < P->first_ops; k++) P->op_ms[k] -= P->first_op_ms[k], P->op_calls[k] -= P->first_op_calls[k];
        P->examples -= P->first_examples;
    }
    for (int c = 0; c < TP_N; c++) tot += P->ms[c];
    fprintf(stderr, "prism-cuda training profile: %d examples, %.1f ms of GPU time", P->examples, tot);
    if (P->passes > 1)
        fprintf(stderr, " (the first pass's %d examples and %.1f ms left out: one-time costs)", P->first_examples, first);
    fprintf(stderr, "\n");
    for (int c = 0; c < TP_N; c++)
        if (P->ms[c] > 0)
            fprintf(stderr, "  %5.1f%%  %9.2f ms  %s\n", tot > 0 ? 100 * P->ms[c] / tot : 0.0, P->ms[c], TP_NAME[c]);
    if (P->ops && P->n_ops) {
        const double ex = P->examples > 0 ? P->examples : 1;
        fprintf(stderr, "prism-cuda training profile by span (PRISM_CUDA_PROFILE=2), per example of the %d, the "
                        "largest first:\n   share   ms/ex   calls/ex  span  [category]\n", P->examples);
        int order[TP_OPS];
        for (int k = 0; k < P->n_ops; k++) order[k] = k;
        for (int a = 1; a < P->n_ops; a++) /* insertion sort, by time descending */
            for (int b = a; b > 0 && P->op_ms[order[b]] > P->op_ms[order[b - 1]]; b--) {
                const int x = order[b];
                order[b] = order[b - 1], order[b - 1] = x;
            }
        for (int a = 0; a < P->n_ops; a++) {
            const int k = order[a];
            fprintf(stderr, "  %5.1f%%  %7.3f  %8.1f  %s  [%s]\n", tot > 0 ? 100 * P->op_ms[k] / tot : 0.0,
                    P->op_ms[k] / ex, (double)P->op_calls[k] / ex, P->op[k], TP_NAME[P->op_cat[k]]);
        }
    }
    for (int i = 0; i < TP_MAX; i++) cudaEventDestroy(P->ev[i]);
    free(P);
    t->prof = NULL;
}

/* ------------------------------------------------------------------ kernels */

/* h = rmsnorm(x)·w (F32, or BF16: the next GEMM's input as is) and r = 1/rms per row; one block per row. */
template <class A> __global__ void tk_norm_fwd(A *h, float *r, const float *x, const float *w, int32_t H, float eps) {
    __shared__ float red[32];
    const int64_t i = blockIdx.x;
    const float *xr = x + i * H;
    float ss = 0.0f;
    for (int32_t j = threadIdx.x; j < H; j += blockDim.x) ss += xr[j] * xr[j];
    const float rr = 1.0f / sqrtf(block_sum(ss, red) / (float)H + eps);
    for (int32_t j = threadIdx.x; j < H; j += blockDim.x) stA(h + i * H + j, w[j] * (xr[j] * rr));
    if (threadIdx.x == 0) r[i] = rr;
}

/* The residual add and the next RMSNorm in one pass: out = a + b (+ bias),
 * h = rmsnorm(out)·w, r = 1/rms, b and h in the activation type; one block per
 * row (the row read back by its own threads, from cache, not from memory). */
template <class A>
__global__ void tk_add_norm(float *out, A *h, float *r, const float *a, const A *b, const float *bias,
                            const float *w, int32_t H, float eps) {
    __shared__ float red[32];
    const int64_t i = blockIdx.x;
    float *o = out + i * H;
    float ss = 0.0f;
    for (int32_t j = threadIdx.x; j < H; j += blockDim.x) {
        const float v = a[i * H + j] + ldA(b + i * H + j) + (bias ? bias[j] : 0.0f);
        o[j] = v;
        ss += v * v;
    }
    const float rr = 1.0f / sqrtf(block_sum(ss, red) / (float)H + eps);
    for (int32_t j = threadIdx.x; j < H; j += blockDim.x) stA(h + i * H + j, w[j] * (o[j] * rr));
    if (threadIdx.x == 0) r[i] = rr;
}

/* RMSNorm backward, rows of H: dx = (acc ? dx : 0) + r·dy·w − c·x with
 * c = r³·Σ(dy·w·x)/H — the residual stream's gradient — and, with dxb, its
 * BF16 copy: the next projection backward's input (its frozen GEMM and its
 * LoRA) as is. dy F32 (the loss's) or in the activation type (a projection
 * backward's output, BF16 on BF16 models as peft's). One block per row. */
template <class D>
__global__ void tk_norm_bwd(float *dx, bf16 *dxb, const D *dy, const float *x, const float *w, const float *r,
                            int32_t H, int acc) {
    __shared__ float red[32];
    const int64_t t = blockIdx.x;
    const D *dyr = dy + t * H;
    const float *xr = x + t * H;
    float *o = dx + t * H;
    const float rr = r[t];
    float dot = 0.0f;
    for (int32_t j = threadIdx.x; j < H; j += blockDim.x) dot += ldA(dyr + j) * w[j] * xr[j];
    const float c = rr * rr * rr * block_sum(dot, red) / (float)H;
    for (int32_t j = threadIdx.x; j < H; j += blockDim.x) {
        const float v = rr * ldA(dyr + j) * w[j] - c * xr[j], d = acc ? o[j] + v : v;
        o[j] = d;
        if (dxb) dxb[t * H + j] = __float2bfloat16(d);
    }
}

/* Row t's offset (in rows of hd) in a head-major tensor of n heads, for head h. */
static __device__ __forceinline__ int64_t hm_row(int64_t t, int32_t h, int32_t n, const int32_t *sofs,
                                                 const int32_t *slen) {
    const int64_t o = sofs[t];
    return o * n + (int64_t)h * slen[t] + (t - o);
}

/* Head `head` of the fused q|k|v rows (nh q heads, then nkv k, then nkv v):
 * which of the three, its index among them, its first column. */
typedef struct {
    int is_q, is_k;
    int32_t hh;
    int64_t col;
} qkv_head;
static __device__ __forceinline__ qkv_head qkv_head_of(int32_t head, int32_t nh, int32_t nkv, int32_t hd) {
    qkv_head q;
    q.is_q = head < nh, q.is_k = !q.is_q && head < nh + nkv;
    q.hh = q.is_q ? head : q.is_k ? head - nh : head - nh - nkv;
    q.col = (int64_t)(q.is_q ? 0 : q.is_k ? nh : nh + nkv) * hd + (int64_t)q.hh * hd;
    return q;
}

/* RoPE on a warp's row d (hd floats in shared memory): rotate-half pairs (j, j + hd/2) by angle
 * p·inv_freq[j] (p = −position undoes it). Every lane of the warp. */
static __device__ __forceinline__ void rope_row(float *d, int32_t hd, float p, const float *inv_freq, int lane) {
    const int32_t half = hd / 2;
    for (int32_t j = lane; j < half; j += 32) {
        float sn, cs;
        sincosf(p * inv_freq[j], &sn, &cs);
        const float x1 = d[j], x2 = d[j + half];
        d[j] = x1 * cs - x2 * sn;
        d[j + half] = x2 * cs + x1 * sn;
    }
}

/* q, k, v from y (T, qkv_n; the activation type): bias, Qwen3 norm (raw and
 * r saved), RoPE at position t, computed in F32 (the warp's row in shared
 * memory, hd floats a warp) and written head-major as Q: F32, or BF16 for
 * flash.cu, which rounds them so anyway. One warp per (t, head). */
template <class A, class Q>
__global__ void tk_qkv_fwd(const A *y, const float *bqkv, const float *q_norm, const float *k_norm,
                           const float *inv_freq, float *qraw, float *kraw, float *rq, float *rk, Q *qh, Q *kh, Q *vh,
                           const int32_t *sofs, const int32_t *slen, int32_t nh, int32_t nkv, int32_t hd,
                           int64_t qkv_n, float eps) {
    PRISM_DYN_SMEM(float, sm);
    const int64_t t = blockIdx.x;
    const int wi = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int32_t head = blockIdx.y * (blockDim.x >> 5) + wi;
    if (head >= nh + 2 * nkv) return; /* a whole warp: only __syncwarp below */
    const int64_t qd = (int64_t)nh * hd, kvd = (int64_t)nkv * hd;
    const qkv_head q = qkv_head_of(head, nh, nkv, hd);
    const int is_q = q.is_q, is_k = q.is_k;
    const int32_t hh = q.hh;
    const int64_t col = q.col;
    const A *src = y + t * qkv_n + col;
    float *d = sm + wi * hd;
    float ss = 0.0f;
    for (int32_t j = lane; j < hd; j += 32) {
        const float v = ldA(src + j) + (bqkv ? bqkv[col + j] : 0.0f);
        d[j] = v;
        ss += v * v;
    }
    if (is_q || is_k) {
        const float *nw = is_q ? q_norm : k_norm;
        if (nw) {
            float *raw = (is_q ? qraw + t * qd : kraw + t * kvd) + (int64_t)hh * hd;
            const float rr = 1.0f / sqrtf(warp_sum(ss) / (float)hd + eps);
            for (int32_t j = lane; j < hd; j += 32) {
                raw[j] = d[j];
                d[j] = nw[j] * (d[j] * rr);
            }
            if (lane == 0) (is_q ? rq[t * nh + hh] : rk[t * nkv + hh]) = rr;
        }
        __syncwarp();
        rope_row(d, hd, (float)(int32_t)(t - sofs[t]), inv_freq, lane);
        __syncwarp();
    }
    Q *dst = (is_q ? qh : is_k ? kh : vh) + hm_row(t, hh, is_q ? nh : nkv, sofs, slen) * hd;
    for (int32_t j = lane; j < hd; j += 32) stA(dst + j, d[j]);
}

/* tk_qkv_fwd's backward: the head-major gradients dq, dk, dv (attention's
 * backward; dk and dv as the sum of kv_parts parts part_stride floats apart,
 * added in part order) into the rows of dqkv (T, qkv_n) in the activation type — the
 * input of the q|k|v backward GEMM and of its LoRA as is. Per (t, head): RoPE
 * undone (rotation by −position), then the q/k norm's backward, out = r·dy·w −
 * c·raw with c = r³·Σ(dy·w·raw)/hd (Qwen3: raw and r kept by the forward). One
 * warp per (t, head), its row in shared memory (hd floats a warp). */
template <class A>
__global__ void tk_qkv_bwd(A *dqkv, const float *dqh, const float *dkh, const float *dvh, const float *q_norm,
                           const float *k_norm, const float *qraw, const float *kraw, const float *rq, const float *rk,
                           const float *inv_freq, const int32_t *sofs, const int32_t *slen, int32_t nh, int32_t nkv,
                           int32_t hd, int64_t qkv_n, int32_t kv_parts, int64_t part_stride) {
    PRISM_DYN_SMEM(float, sm);
    const int64_t t = blockIdx.x;
    const int wi = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int32_t head = blockIdx.y * (blockDim.x >> 5) + wi;
    if (head >= nh + 2 * nkv) return; /* a whole warp: only __syncwarp below */
    const int64_t qd = (int64_t)nh * hd, kvd = (int64_t)nkv * hd;
    const qkv_head q = qkv_head_of(head, nh, nkv, hd);
    const int is_q = q.is_q, is_k = q.is_k;
    const int32_t hh = q.hh;
    const int64_t col = q.col;
    const float *src = (is_q ? dqh : is_k ? dkh : dvh) + hm_row(t, hh, is_q ? nh : nkv, sofs, slen) * hd;
    float *d = sm + wi * hd;
    const int32_t parts = is_q ? 1 : kv_parts;
    for (int32_t j = lane; j < hd; j += 32) {
        float v = src[j];
        for (int32_t p = 1; p < parts; p++) v += src[p * part_stride + j];
        d[j] = v;
    }
    if (is_q || is_k) {
        __syncwarp();
        rope_row(d, hd, (float)(-(int32_t)(t - sofs[t])), inv_freq, lane); /* undone: rotation by −position */
        __syncwarp();
        const float *nw = is_q ? q_norm : k_norm;
        if (nw) {
            const float *raw = (is_q ? qraw + t * qd : kraw + t * kvd) + (int64_t)hh * hd;
            const float rr = is_q ? rq[t * nh + hh] : rk[t * nkv + hh];
            float dot = 0.0f;
            for (int32_t j = lane; j < hd; j += 32) dot += d[j] * nw[j] * raw[j];
            const float c = rr * rr * rr * warp_sum(dot) / (float)hd;
            for (int32_t j = lane; j < hd; j += 32) d[j] = rr * d[j] * nw[j] - c * raw[j];
        }
    }
    A *dst = dqkv + t * qkv_n + col;
    for (int32_t j = lane; j < hd; j += 32) stA(dst + j, d[j]);
}

/* Row-major (T, n·hd at ld, col0; F32 or BF16 rows) <-> head-major F32 per
 * sequence. to_heads: rows -> heads, else heads -> rows. */
template <class A>
__global__ void tk_heads(A *rows, float *heads, const int32_t *sofs, const int32_t *slen, int32_t n, int32_t hd,
                         int64_t ld, int64_t col0, int to_heads) {
    const int64_t t = blockIdx.x;
    for (int32_t e = threadIdx.x; e < n * hd; e += blockDim.x) {
        const int32_t h = e / hd, d = e % hd;
        A *r = rows + t * ld + col0 + e;
        float *hp = heads + hm_row(t, h, n, sofs, slen) * hd + d;
        if (to_heads) *hp = ldA(r);
        else stA(r, *hp);
    }
}

/* Causal (sliding-window) softmax of score rows in place; row r is query t =
 * r % T; one block of 128 threads per row. NPT > 0: the row (T <= 128·NPT)
 * stays in registers, read once; NPT = 0: any length, read three times. */
template <int NPT> __global__ void tk_softmax(float *S, int32_t T, int32_t window) {
    __shared__ float red[32];
    const int64_t row = blockIdx.x;
    const int32_t t = (int32_t)(row % T), first = window > 0 && t - window + 1 > 0 ? t - window + 1 : 0;
    float *s = S + row * T;
    constexpr int N = NPT > 0 ? NPT : 1;
    float v[N];
    float mx = -INFINITY;
    if (NPT > 0) {
#pragma unroll
        for (int i = 0; i < N; i++) {
            const int32_t j = threadIdx.x + i * 128;
            v[i] = j >= first && j <= t ? s[j] : -INFINITY;
            mx = fmaxf(mx, v[i]);
        }
    } else {
        for (int32_t j = first + threadIdx.x; j <= t; j += blockDim.x) mx = fmaxf(mx, s[j]);
    }
    for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
    __shared__ float mxs[32];
    if ((threadIdx.x & 31) == 0) mxs[threadIdx.x >> 5] = mx;
    __syncthreads();
    mx = -INFINITY;
    for (int w = 0; w < (int)((blockDim.x + 31) >> 5); w++) mx = fmaxf(mx, mxs[w]);
    float sum = 0.0f;
    if (NPT > 0) {
#pragma unroll
        for (int i = 0; i < N; i++) {
            v[i] = v[i] == -INFINITY ? 0.0f : expf(v[i] - mx);
            sum += v[i];
        }
    } else {
        for (int32_t j = first + threadIdx.x; j <= t; j += blockDim.x) sum += expf(s[j] - mx);
    }
    sum = block_sum(sum, red);
    if (NPT > 0) {
#pragma unroll
        for (int i = 0; i < N; i++) {
            const int32_t j = threadIdx.x + i * 128;
            if (j < T) s[j] = v[i] / sum;
        }
    } else {
        for (int32_t j = threadIdx.x; j < T; j += blockDim.x) s[j] = j >= first && j <= t ? expf(s[j] - mx) / sum : 0.0f;
    }
}

/* dS = P ⊙ (dP − Σ_j P·dP) · scale, in place in dP; one block of 128 threads
 * per row; NPT as tk_softmax. */
template <int NPT> __global__ void tk_dsoftmax(float *dP, const float *P, int32_t T, float scale) {
    __shared__ float red[32];
    const int64_t row = blockIdx.x;
    const float *p = P + row * T;
    float *d = dP + row * T;
    constexpr int N = NPT > 0 ? NPT : 1;
    float pv[N], dv[N];
    float s = 0.0f;
    if (NPT > 0) {
#pragma unroll
        for (int i = 0; i < N; i++) {
            const int32_t j = threadIdx.x + i * 128;
            pv[i] = j < T ? p[j] : 0.0f, dv[i] = j < T ? d[j] : 0.0f;
            s += pv[i] * dv[i];
        }
    } else {
        for (int32_t j = threadIdx.x; j < T; j += blockDim.x) s += p[j] * d[j];
    }
    s = block_sum(s, red);
    if (NPT > 0) {
#pragma unroll
        for (int i = 0; i < N; i++) {
            const int32_t j = threadIdx.x + i * 128;
            if (j < T) d[j] = pv[i] == 0.0f ? 0.0f : pv[i] * (dv[i] - s) * scale;
        }
    } else {
        for (int32_t j = threadIdx.x; j < T; j += blockDim.x) d[j] = p[j] == 0.0f ? 0.0f : p[j] * (d[j] - s) * scale;
    }
}

/* Both over `rows` rows of length T, the register variant when the row fits. */
static void softmax_rows(cudaStream_t st, float *S, int64_t rows, int32_t T, int32_t window) {
    if (T <= 128) tk_softmax<1><<<(int)rows, 128, 0, st>>>(S, T, window);
    else if (T <= 512) tk_softmax<4><<<(int)rows, 128, 0, st>>>(S, T, window);
    else if (T <= 1024) tk_softmax<8><<<(int)rows, 128, 0, st>>>(S, T, window);
    else tk_softmax<0><<<(int)rows, 128, 0, st>>>(S, T, window);
}

static void dsoftmax_rows(cudaStream_t st, float *dP, const float *P, int64_t rows, int32_t T, float scale) {
    if (T <= 128) tk_dsoftmax<1><<<(int)rows, 128, 0, st>>>(dP, P, T, scale);
    else if (T <= 512) tk_dsoftmax<4><<<(int)rows, 128, 0, st>>>(dP, P, T, scale);
    else if (T <= 1024) tk_dsoftmax<8><<<(int)rows, 128, 0, st>>>(dP, P, T, scale);
    else tk_dsoftmax<0><<<(int)rows, 128, 0, st>>>(dP, P, T, scale);
}

/* out = a + b (+ bias per column), b in the activation type; n columns. */
template <class A>
__global__ void tk_add(float *out, const float *a, const A *b, const float *bias, int64_t total, int32_t n) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x)
        out[i] = a[i] + ldA(b + i) + (bias ? bias[i % n] : 0.0f);
}

template <class A> __global__ void tk_bias(A *y, const float *bias, int64_t total, int32_t n) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x)
        stA(y + i, ldA(y + i) + bias[i % n]);
}

/* a = silu(g)·u: F32 into a and/or BF16 into ab (the down GEMM's input, so
 * no conversion pass re-reads it); either may be NULL. */
template <class A> __global__ void tk_swiglu_fwd(float *a, bf16 *ab, const A *gu, int32_t F) {
    const int64_t t = blockIdx.x; /* rows on x (swiglu_grid): gridDim.y stops at 65,535 */
    const int32_t j = blockIdx.y * blockDim.x + threadIdx.x;
    if (j >= F) return;
    const float v = silu_mul(ldA(gu + t * 2 * F + j), ldA(gu + t * 2 * F + F + j));
    if (a) a[t * F + j] = v;
    if (ab) ab[t * F + j] = __float2bfloat16(v);
}

/* Element (t, j) of silu(gate)·up's backward: d gate and d up (also into *pdg, *pdu) into F32 dgu and/or
 * BF16 dgub (the gate|up backward GEMM's and LoRA's input on BF16 models), from gate g, up u and their
 * product's gradient d. Returns silu(g)·u, computed as tk_swiglu_fwd does. swiglu_bwd_at: the same from
 * da and gu in the activation type. */
static __device__ __forceinline__ float swiglu_bwd_val(float *dgu, bf16 *dgub, float g, float u, float d, int32_t F,
                                                       int64_t t, int32_t j, float *pdg, float *pdu) {
    const float sg = 1.0f / (1.0f + expf(-g));
    const float du = d * g * sg, dg = d * u * sg * (1.0f + g * (1.0f - sg));
    if (dgu) dgu[t * 2 * F + F + j] = du, dgu[t * 2 * F + j] = dg;
    if (dgub) dgub[t * 2 * F + F + j] = __float2bfloat16(du), dgub[t * 2 * F + j] = __float2bfloat16(dg);
    *pdg = dg, *pdu = du;
    return silu_mul(g, u);
}

template <class A>
static __device__ __forceinline__ float swiglu_bwd_at(float *dgu, bf16 *dgub, const A *da, const A *gu, int32_t F,
                                                      int64_t t, int32_t j) {
    float dg, du;
    return swiglu_bwd_val(dgu, dgub, ldA(gu + t * 2 * F + j), ldA(gu + t * 2 * F + F + j), ldA(da + t * F + j), F, t,
                          j, &dg, &du);
}

template <class A> __global__ void tk_swiglu_bwd(float *dgu, bf16 *dgub, const A *da, const A *gu, int32_t F) {
    const int32_t j = blockIdx.y * blockDim.x + threadIdx.x;
    if (j < F) swiglu_bwd_at(dgu, dgub, da, gu, F, blockIdx.x, j);
}

/* tk_swiglu_fwd's and tk_swiglu_bwd's grid: a row per x (a pass may hold 65,536 rows), 256 columns per y. */
static dim3 swiglu_grid(int32_t T, int32_t F) { return dim3(T, (F + 255) / 256); }

/* tk_swiglu_bwd with the down projection's LoRA dA folded in, which needs
 * that projection's input a = silu(g)·u: recomputed here, per element, from
 * the gate|up the pass keeps, instead of by a kernel of its own that writes a
 * for a GEMM to read back. Rows chunk blockIdx.y (rows rows: swb_rows), a
 * column per thread: dgu as tk_swiglu_bwd, and part[chunk][k][j] = Σ_t
 * tmp[t][k]·a[t][j] over the chunk's rows (tmp = s·dy·B_down (T, r), 32 rows
 * at a time in shared memory; r <= R accumulators in registers).
 * tk_sum_parts adds the chunks into dA in a fixed order: the result does not
 * depend on scheduling. */
template <class A, int R>
__global__ void __launch_bounds__(256)
    tk_swiglu_bwd_da(float *dgu, bf16 *dgub, const A *__restrict__ da, const A *__restrict__ gu, int32_t F, int32_t T,
                     int32_t rows, const float *__restrict__ tmp, int32_t r, float *__restrict__ part) {
    __shared__ float ts[32 * R];
    const int32_t j = blockIdx.x * blockDim.x + threadIdx.x, c = blockIdx.y;
    const int32_t t0 = c * rows, t1 = min(T, t0 + rows);
    float acc[R];
#pragma unroll
    for (int k = 0; k < R; k++) acc[k] = 0.0f;
    for (int32_t s0 = t0; s0 < t1; s0 += 32) {
        const int32_t ns = min(32, t1 - s0);
        __syncthreads(); /* the previous rows' tmp are done with */
        for (int e = threadIdx.x; e < ns * r; e += blockDim.x) ts[(e / r) * R + e % r] = tmp[(int64_t)s0 * r + e];
        __syncthreads();
        if (j >= F) continue;
        for (int32_t i = 0; i < ns; i++) {
            const float a = swiglu_bwd_at(dgu, dgub, da, gu, F, s0 + i, j);
#pragma unroll
            for (int k = 0; k < R; k++)
                if (k < r) acc[k] += ts[i * R + k] * a;
        }
    }
    if (j >= F) return;
#pragma unroll
    for (int k = 0; k < R; k++)
        if (k < r) part[((int64_t)c * r + k) * F + j] = acc[k];
}

/* The MLP's LoRA folded into its SwiGLU kernels (t->lfuse, PRISM_CUDA_LORA_FUSE=1:
 * the adapted gate, up and down ranks all <= LF_R), so that LoRA's GEMMs write none of the wide
 * (T, F) and (T, 2F) tensors and read dgate|dup once instead of twice:
 * - forward: the frozen GEMM writes gate|up alone, and tk_swiglu_fwd_lora
 *   adds s·mid·Bᵀ of gate and up (mid = h2·[A]ᵀ, the projection's x·Aᵀ) as it
 *   reads them, writes them back for the backward, and writes silu(g)·u;
 * - backward: the frozen down backward GEMM writes da alone, and
 *   tk_swiglu_bwd_lora adds down's tmp·A_down (tmp = s·dy·B_down) as it reads
 *   it, and accumulates down's dA (Σ_t tmp[t]·a[t]) and gate's and up's dB
 *   (s·Σ_t dgate[t]·mid[t], s·Σ_t dup[t]·mid[t]) from the values it forms.
 * Before, LoRA's B-products wrote gate|up for the frozen GEMM to read back,
 * LoRA's dx GEMM wrote da for the frozen GEMM to read back, and the dB GEMMs
 * read dgate|dup again: ~3 × 2·T·F elements less traffic per layer.
 * Each thread keeps one column's B (or A) rows in registers, a chunk of rows
 * per block (swb_rows); the rows' mid and tmp go through shared memory, 32
 * rows at a time. */
#define LF_R 16
#define LF_BATCH 4 /* rows whose loads a thread issues before using them */

/* Rows s0..s0+ns of mid (T, rs = rg + ru: gate's columns, then up's) into shared rows of `stride` floats:
 * gate's at [off, off + rg), up's at [off + LF_R, off + LF_R + ru). Every thread of the block. */
static __device__ __forceinline__ void stage_mid(float *dst, int stride, int off, const float *__restrict__ mid,
                                                 int32_t s0, int32_t ns, int32_t rs, int32_t rg) {
    for (int e = threadIdx.x; e < ns * rs; e += blockDim.x) {
        const int i = e / rs, k = e % rs;
        dst[i * stride + off + (k < rg ? k : LF_R + k - rg)] = mid[(int64_t)s0 * rs + e];
    }
}

template <class A>
__global__ void __launch_bounds__(256)
    tk_swiglu_fwd_lora(A *gu, float *a, bf16 *ab, int32_t F, int32_t T, int32_t rows, const float *__restrict__ mid,
                       int32_t rs, const float *__restrict__ Bg, int32_t rg, float sg, const float *__restrict__ Bu,
                       int32_t ru, float su, int keep) {
    __shared__ float ms[32 * 2 * LF_R]; /* a row: gate's mid at [0, rg), up's at [LF_R, LF_R + ru) */
    const int32_t j = blockIdx.x * blockDim.x + threadIdx.x;
    const int32_t t0 = blockIdx.y * rows, t1 = min(T, t0 + rows);
    float bg[LF_R], bu[LF_R];
    for (int e = threadIdx.x; e < 32 * 2 * LF_R; e += blockDim.x) ms[e] = 0.0f; /* the slots past rg and ru stay 0 */
#pragma unroll
    for (int k = 0; k < LF_R; k++) {
        bg[k] = k < rg && j < F ? Bg[(int64_t)j * rg + k] : 0.0f;
        bu[k] = k < ru && j < F ? Bu[(int64_t)j * ru + k] : 0.0f;
    }
    for (int32_t s0 = t0; s0 < t1; s0 += 32) {
        const int32_t ns = min(32, t1 - s0);
        __syncthreads();
        stage_mid(ms, 2 * LF_R, 0, mid, s0, ns, rs, rg);
        __syncthreads();
        if (j >= F) continue;
        for (int32_t i0 = 0; i0 < ns; i0 += LF_BATCH) {
            float gv[LF_BATCH], uv[LF_BATCH]; /* a batch's loads first, so that several rows' are in flight */
#pragma unroll
            for (int q = 0; q < LF_BATCH; q++) {
                const A *row = gu + (int64_t)(s0 + min(i0 + q, ns - 1)) * 2 * F;
                gv[q] = ldA(row + j), uv[q] = ldA(row + F + j);
            }
#pragma unroll
            for (int q = 0; q < LF_BATCH; q++) {
                const int32_t i = i0 + q;
                if (i >= ns) break;
                A *row = gu + (int64_t)(s0 + i) * 2 * F;
                float g = gv[q], u = uv[q], dg = 0.0f, du = 0.0f;
#pragma unroll
                for (int k = 0; k < LF_R; k++)
                    dg += ms[i * 2 * LF_R + k] * bg[k], du += ms[i * 2 * LF_R + LF_R + k] * bu[k];
                if (rg) g = rndA(row, g + sg * dg); /* rounded as the backward reads or remakes it */
                if (ru) u = rndA(row, u + su * du);
                if (keep && rg) stA(row + j, g);
                if (keep && ru) stA(row + F + j, u);
                const float v = silu_mul(g, u);
                const int64_t o = (int64_t)(s0 + i) * F + j;
                if (a) a[o] = v;
                if (ab) ab[o] = __float2bfloat16(v);
            }
        }
    }
}

/* RC: gate|up as the frozen GEMM wrote it (tk_swiglu_fwd_lora did not keep its LoRA terms), which the
 * kernel adds again — s·mid·Bᵀ of gate and up, their B rows of the block's columns in shared memory, the
 * same sums in the same order as the forward's — instead of reading them back. */
template <class A, bool RC>
__global__ void __launch_bounds__(256, 2)
    tk_swiglu_bwd_lora(float *dgu, bf16 *dgub, const A *__restrict__ da, const A *__restrict__ gu, int32_t F,
                       int32_t T, int32_t rows, const float *__restrict__ tmp, const float *__restrict__ Ad, int32_t rd,
                       const float *__restrict__ mid, int32_t rs, int32_t rg, float sg, int32_t ru, float su,
                       float *__restrict__ part, int32_t nc, const float *__restrict__ Bg, const float *__restrict__ Bu) {
    enum { W = 3 * LF_R };            /* a row in shared memory: tmp | gate's mid | up's mid */
    enum { NB = RC ? LF_BATCH / 2 : LF_BATCH }; /* rows a batch: RC's B values take the registers of 2 */
    __shared__ float ts[32 * W];
    /* RC: [k / 4][column][k % 4] of gate's B, then up's — a thread's four values one 16-byte load, a warp's
     * consecutive */
    __shared__ float4 bsm[RC ? 2 * (LF_R / 4) * 256 : 1];
    const int32_t j = blockIdx.x * blockDim.x + threadIdx.x, c = blockIdx.y;
    const int32_t t0 = c * rows, t1 = min(T, t0 + rows);
    float ad[LF_R], accA[LF_R], accG[LF_R], accU[LF_R];
    for (int e = threadIdx.x; e < 32 * W; e += blockDim.x) ts[e] = 0.0f; /* the slots past rd, rg and ru stay 0 */
    if (RC) {
#pragma unroll
        for (int k4 = 0; k4 < LF_R / 4; k4++) {
            float v[2][4];
#pragma unroll
            for (int q = 0; q < 4; q++) {
                const int k = 4 * k4 + q;
                v[0][q] = k < rg && j < F ? Bg[(int64_t)j * rg + k] : 0.0f;
                v[1][q] = k < ru && j < F ? Bu[(int64_t)j * ru + k] : 0.0f;
            }
            bsm[k4 * 256 + threadIdx.x] = make_float4(v[0][0], v[0][1], v[0][2], v[0][3]);
            bsm[(LF_R / 4 + k4) * 256 + threadIdx.x] = make_float4(v[1][0], v[1][1], v[1][2], v[1][3]);
        }
    }
#pragma unroll
    for (int k = 0; k < LF_R; k++) {
        ad[k] = k < rd && j < F ? Ad[(int64_t)k * F + j] : 0.0f;
        accA[k] = accG[k] = accU[k] = 0.0f;
    }
    for (int32_t s0 = t0; s0 < t1; s0 += 32) {
        const int32_t ns = min(32, t1 - s0);
        __syncthreads();
        for (int e = threadIdx.x; e < ns * rd; e += blockDim.x) ts[(e / rd) * W + e % rd] = tmp[(int64_t)s0 * rd + e];
        stage_mid(ts, W, LF_R, mid, s0, ns, rs, rg);
        __syncthreads();
        if (j >= F) continue;
        for (int32_t i0 = 0; i0 < ns; i0 += NB) {
            float gv[NB], uv[NB], dv[NB]; /* a batch's loads first: several rows' in flight */
#pragma unroll
            for (int q = 0; q < NB; q++) {
                const int64_t t = s0 + min(i0 + q, ns - 1);
                gv[q] = ldA(gu + t * 2 * F + j), uv[q] = ldA(gu + t * 2 * F + F + j), dv[q] = ldA(da + t * F + j);
            }
            if (RC) { /* the batch's rows at once, each B value loaded once: as tk_swiglu_fwd_lora, k ascending */
                float lg[NB], lu[NB];
#pragma unroll
                for (int q = 0; q < NB; q++) lg[q] = lu[q] = 0.0f;
#pragma unroll
                for (int k4 = 0; k4 < LF_R / 4; k4++) {
                    const float4 b = bsm[k4 * 256 + threadIdx.x], e = bsm[(LF_R / 4 + k4) * 256 + threadIdx.x];
#pragma unroll
                    for (int q = 0; q < NB; q++) {
                        const float *mg = ts + min(i0 + q, ns - 1) * W + LF_R + 4 * k4, *mu = mg + LF_R;
                        lg[q] += mg[0] * b.x, lu[q] += mu[0] * e.x;
                        lg[q] += mg[1] * b.y, lu[q] += mu[1] * e.y;
                        lg[q] += mg[2] * b.z, lu[q] += mu[2] * e.z;
                        lg[q] += mg[3] * b.w, lu[q] += mu[3] * e.w;
                    }
                }
#pragma unroll
                for (int q = 0; q < NB; q++) {
                    if (rg) gv[q] = rndA(gu, gv[q] + sg * lg[q]);
                    if (ru) uv[q] = rndA(gu, uv[q] + su * lu[q]);
                }
            }
#pragma unroll
            for (int q = 0; q < NB; q++) {
                const int32_t i = i0 + q;
                if (i >= ns) break;
                const float *row = ts + i * W;
                float x = 0.0f, dg, du;
#pragma unroll
                for (int k = 0; k < LF_R; k++) x += row[k] * ad[k]; /* zero where k >= rd */
                const float a = swiglu_bwd_val(dgu, dgub, gv[q], uv[q], dv[q] + x, F, s0 + i, j, &dg, &du);
#pragma unroll
                for (int k = 0; k < LF_R; k++) {
                    accA[k] += row[k] * a;
                    accG[k] += row[LF_R + k] * dg;
                    accU[k] += row[2 * LF_R + k] * du;
                }
            }
        }
    }
    if (j >= F) return;
    /* sections of nc chunks each: dA_down (rd, F) | dB_gate (F, rg) | dB_up (F, ru), in their parameters' layouts */
    float *pa = part + (int64_t)c * rd * F, *pg = part + (int64_t)nc * rd * F + (int64_t)c * F * rg,
          *pu = part + (int64_t)nc * (rd + rg) * F + (int64_t)c * F * ru;
#pragma unroll
    for (int k = 0; k < LF_R; k++) {
        if (k < rd) pa[(int64_t)k * F + j] = accA[k];
        if (k < rg) pg[(int64_t)j * rg + k] = sg * accG[k];
        if (k < ru) pu[(int64_t)j * ru + k] = su * accU[k];
    }
}

/* dst[i] = (acc ? dst[i] : 0) + Σ_c part[c·n + i], the chunks in order; dst F32 or BF16. */
template <class D>
__global__ void tk_sum_parts(D *dst, const float *part, int32_t nc, int64_t n, int acc, int32_t m, int32_t ld) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        float s = 0.0f;
        for (int32_t c = 0; c < nc; c++) s += part[c * n + i];
        const int64_t d = m == ld ? i : i / m * ld + i % m; /* column i / m of m rows, into a column of ld */
        stA(dst + d, acc ? ldA(dst + d) + s : s);
    }
}

template <class A> __global__ void tk_to(A *dst, const float *src, int64_t n) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        stA(dst + i, src[i]);
}

/* dst[rows[j]] += Σ_b src[b·n + j] over the np partial products (the LM
 * head's backward, split over the vocabulary), summed in order; rows may
 * repeat (KL positions can), hence atomics. */
__global__ void tk_scatter_add(float *dst, const float *src, const int32_t *rows, int32_t H, int32_t n, int32_t np) {
    const int64_t j = blockIdx.x, r = rows[j];
    for (int32_t k = threadIdx.x; k < H; k += blockDim.x) {
        float v = 0.0f;
        for (int32_t b = 0; b < np; b++) v += src[((int64_t)b * n + j) * H + k];
        atomicAdd(&dst[r * H + k], v);
    }
}

/* Loss of one logits row and its gradient (dlogits row fully written: CE
 * into dlb in BF16 when given — the input of the LM head's backward GEMM —
 * else into dl). CE: label = labels[rows[i] + 1]. KL: the row's teacher
 * top-k at tval, tidx + terms[i]. */
__global__ void tk_loss(const float *logits, float *dl, bf16 *dlb, double *row_loss, const int32_t *rows,
                        const int32_t *terms, const int32_t *labels, const float *tval, const int32_t *tidx, int32_t V,
                        int32_t kind, int32_t K, float temp) {
    __shared__ double dred[32];
    __shared__ float fred[32];
    const int64_t i = blockIdx.x;
    const float *lg = logits + i * V;
    float *d = dl + i * V;
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
    if (kind == 0) {
        float mx = -INFINITY;
        for (int32_t v = threadIdx.x; v < V; v += blockDim.x) mx = fmaxf(mx, lg[v]);
        for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
        if (lane == 0) fred[w] = mx;
        __syncthreads();
        mx = -INFINITY;
        for (int k = 0; k < nw; k++) mx = fmaxf(mx, fred[k]);
        double sum = 0; /* F32 exponentials (one ulp; double ones are slow where FP64 is, on consumer GPUs), summed in F64 */
        for (int32_t v = threadIdx.x; v < V; v += blockDim.x) sum += (double)expf(lg[v] - mx);
        for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
        if (lane == 0) dred[w] = sum;
        __syncthreads();
        sum = 0;
        for (int k = 0; k < nw; k++) sum += dred[k];
        const int32_t label = labels[rows[i] + 1];
        const float inv = (float)(1.0 / sum);
        for (int32_t v = threadIdx.x; v < V; v += blockDim.x) {
            const float g = expf(lg[v] - mx) * inv - (v == label ? 1.0f : 0.0f);
            if (dlb) dlb[i * V + v] = __float2bfloat16(g);
            else d[v] = g;
        }
        if (threadIdx.x == 0) row_loss[i] = log(sum) + mx - lg[label];
        return;
    }
    for (int32_t v = threadIdx.x; v < V; v += blockDim.x) d[v] = 0.0f;
    __syncthreads();
    if (threadIdx.x != 0) return;
    const int64_t p = terms[i]; /* one thread: k is small */
    row_loss[i] = topk_kl_row(lg, tval + p, tidx + p, K, temp, d);
}

/* Top-k KL rows without the LM head's GEMMs: the loss sees only the student
 * logits at the teacher's k indices, z_j = h·W_lm[ti_j], so each row computes
 * those k dot products, its loss and dz (topk_kl_row over z), and adds
 * Σ_j dz_j·W_lm[ti_j] into dh's row — k·H instead of V·H per row, twice.
 * One block per loss row; dynamic shared memory: z, dz, iota (k each). */
template <class A>
__global__ void tk_kl_sparse(const float *__restrict__ hf, const A *__restrict__ W, float *dh, double *row_loss,
                             const int32_t *__restrict__ rows, const int32_t *__restrict__ terms,
                             const float *__restrict__ tval, const int32_t *__restrict__ tidx, int32_t H, int32_t K,
                             float temp) {
    PRISM_DYN_SMEM(float, sm);
    float *z = sm, *dz = z + K;
    int32_t *iota = (int32_t *)(dz + K);
    const int64_t i = blockIdx.x, r = rows[i], p = terms[i];
    const float *h = hf + r * H;
    const int32_t *ti = tidx + p;
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
    for (int32_t j = w; j < K; j += nw) {
        const A *wr = W + (int64_t)ti[j] * H;
        float acc = 0.0f;
        for (int32_t e = lane; e < H; e += 32) acc += h[e] * ldA(wr + e);
        acc = warp_sum(acc);
        if (lane == 0) z[j] = acc;
    }
    for (int32_t j = threadIdx.x; j < K; j += blockDim.x) dz[j] = 0.0f, iota[j] = j;
    __syncthreads();
    if (threadIdx.x == 0) row_loss[i] = topk_kl_row(z, tval + p, iota, K, temp, dz);
    __syncthreads();
    for (int32_t e = threadIdx.x; e < H; e += blockDim.x) {
        float acc = 0.0f;
        for (int32_t j = 0; j < K; j++) acc += dz[j] * ldA(W + (int64_t)ti[j] * H + e);
        atomicAdd(&dh[r * H + e], acc); /* positions may repeat */
    }
}
#define KL_SPARSE_MAX_K 4096 /* 12 bytes of shared memory per k */

__global__ void tk_scale_sumsq(float *g, int64_t n, float scale, double *part) {
    __shared__ double red[32];
    double s = 0;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        const float v = g[i] * scale;
        g[i] = v;
        s += (double)v * v;
    }
    for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
    if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = s;
    __syncthreads();
    if (threadIdx.x == 0) {
        double t = 0;
        for (int k = 0; k < (int)(blockDim.x >> 5); k++) t += red[k];
        part[blockIdx.x] = t;
    }
}

/* torch.optim.AdamW, as adamw_update in src/train/optim.c. */
__global__ void tk_adamw(float *p, const float *g, float *m, float *v, int64_t n, float gscale, float decay, int wd,
                         float w1, float b2, float w2, float step_size, float bc2_sqrt, float eps) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        const float pi = wd ? p[i] * decay : p[i];
        const float gi = g[i] * gscale;
        const float mi = m[i] + w1 * (gi - m[i]);
        const float vi = v[i] * b2 + w2 * gi * gi;
        const float denom = sqrtf(vi) / bc2_sqrt + eps;
        m[i] = mi;
        v[i] = vi;
        p[i] = pi + -step_size * mi / denom;
    }
}

/* ------------------------------------------------------------------ host helpers */

#define BL(call)                                                                                             \
    do {                                                                                                     \
        cublasStatus_t b_ = (call);                                                                          \
        if (b_ != CUBLAS_STATUS_SUCCESS)                                                                     \
            return gpu_fail(err, errn, PRISM_GPU_E_DEVICE, "training GEMM: cuBLAS status %d", (int)b_);     \
    } while (0)
#define TRY(x)                  \
    do {                        \
        int r_ = (x);           \
        if (r_) return r_;      \
    } while (0)

static int talloc(gpu_train *t, void **p, size_t bytes, char *err, size_t errn) {
    *p = NULL;
    if (t->n_allocs == t->cap_allocs) {
        int cap = t->cap_allocs ? 2 * t->cap_allocs : 64;
        void **a = (void **)realloc(t->allocs, (size_t)cap * sizeof *a);
        if (!a) return gpu_fail(err, errn, PRISM_GPU_E_NOMEM, "out of host memory");
        t->allocs = a, t->cap_allocs = cap;
    }
    if (!bytes) bytes = 16;
    cudaError_t e = cudaMalloc(p, bytes);
    if (e != cudaSuccess) {
        *p = NULL;
        cudaGetLastError();
        size_t fr = 0, tot = 0;
        cudaMemGetInfo(&fr, &tot);
        return gpu_fail(err, errn, PRISM_GPU_E_NOMEM,
                        "LoRA training: allocating %.1f MiB failed (%.2f GiB free of %.2f; try recomputation or "
                        "shorter sequences)",
                        bytes / 1048576.0, fr / 1073741824.0, tot / 1073741824.0);
    }
    t->allocs[t->n_allocs++] = *p;
    t->bytes += (int64_t)bytes;
    account((int64_t)bytes);
    return 0;
}
#define TA(ptr, n) TRY(talloc(t, (void **)&(ptr), (size_t)(n), err, errn))

static const float ONE = 1.0f, ZERO = 0.0f;

/* F32 GEMM, column-major cuBLAS conventions: attention and LoRA products.
 * Full F32 for --precision exact; TF32 tensor cores (10-bit mantissa, F32
 * accumulation) when the model runs in BF16 anyway. */
static int sg(gpu_train *t, cublasOperation_t oa, cublasOperation_t ob, int m, int n, int k, float alpha, const float *A,
              int lda, const float *B, int ldb, float beta, float *C, int ldc, char *err, size_t errn) {
    BL(cublasGemmEx(t->blas, oa, ob, m, n, k, &alpha, A, CUDA_R_32F, lda, B, CUDA_R_32F, ldb, &beta, C, CUDA_R_32F,
                    ldc, t->m->f32 ? CUBLAS_COMPUTE_32F : CUBLAS_COMPUTE_32F_FAST_TF32, CUBLAS_GEMM_DEFAULT));
    return 0;
}

/* The same, for `batch` products at constant strides (one per KV head). */
static int sgb(gpu_train *t, cublasOperation_t oa, cublasOperation_t ob, int m, int n, int k, float alpha, const float *A,
               int lda, long long sa, const float *B, int ldb, long long sb, float beta, float *C, int ldc, long long sc,
               int batch, char *err, size_t errn) {
    BL(cublasGemmStridedBatchedEx(t->blas, oa, ob, m, n, k, &alpha, A, CUDA_R_32F, lda, sa, B, CUDA_R_32F, ldb, sb, &beta,
                                  C, CUDA_R_32F, ldc, sc, batch,
                                  t->m->f32 ? CUBLAS_COMPUTE_32F : CUBLAS_COMPUTE_32F_FAST_TF32, CUBLAS_GEMM_DEFAULT));
    return 0;
}

static int grid_for(int64_t n) { return (int)(n / 256 + 1 < 4096 ? n / 256 + 1 : 4096); }

/* C (F32, or BF16 with cbf) = alpha·op(A)·op(B) + beta·C from BF16 A and B, F32 accumulation: LoRA
 * products whose large operand or output is BF16. */
static int bg(gpu_train *t, cublasOperation_t oa, cublasOperation_t ob, int m, int n, int k, float alpha, const bf16 *A,
              int lda, const bf16 *B, int ldb, float beta, void *C, int cbf, int ldc, char *err, size_t errn) {
    BL(cublasGemmEx(t->blas, oa, ob, m, n, k, &alpha, A, CUDA_R_16BF, lda, B, CUDA_R_16BF, ldb, &beta, C,
                    cbf ? CUDA_R_16BF : CUDA_R_32F, ldc, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    return 0;
}

/* How many slices to split a GEMM's K into so that its m × n output fills the GPU: a power of two up to 8,
 * doubled while the slices' output tiles (128 × 128) stay under two per SM and each slice keeps >= min_k. */
static int k_slices(const gpu_train *t, int64_t m, int64_t n, int64_t K, int64_t min_k) {
    const int64_t tiles = ((m + 127) / 128) * ((n + 127) / 128);
    int s = 1;
    while (s < 8 && tiles * s < 2 * (int64_t)t->m->n_sm && K / (2 * s) >= min_k) s *= 2;
    return s;
}

/* part_b (m × n, F32, ld m) = alpha·op(A)·op(B) over slice b < s of K (K / s each, the last one the
 * rest): A and B (type ty, es bytes an element) advance ka and kb elements per step of K. A GEMM with a
 * small output and a long K as s partial products, for a kernel to sum in order. */
static int gemm_k_parts(gpu_train *t, cublasOperation_t oa, cublasOperation_t ob, int m, int n, int K, int s,
                        float alpha, const void *A, int lda, int64_t ka, const void *B, int ldb, int64_t kb,
                        cudaDataType ty, size_t es, float *part, char *err, size_t errn) {
    const int ks = K / s;
    if (s > 1)
        BL(cublasGemmStridedBatchedEx(t->blas, oa, ob, m, n, ks, &alpha, A, ty, lda, (long long)ks * ka, B, ty, ldb,
                                      (long long)ks * kb, &ZERO, part, CUDA_R_32F, m, (long long)m * n, s - 1,
                                      CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    const int64_t k0 = (int64_t)(s - 1) * ks;
    BL(cublasGemmEx(t->blas, oa, ob, m, n, K - (int)k0, &alpha, (const char *)A + k0 * ka * (int64_t)es, ty, lda,
                    (const char *)B + k0 * kb * (int64_t)es, ty, ldb, &ZERO, part + (int64_t)(s - 1) * m * n,
                    CUDA_R_32F, m, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    return 0;
}

/* C (m × n, F32, ld m) += alpha·A·Bᵀ over K = T (A: m × T at lda, B: n × T at ldb, BF16; column-major as
 * cuBLAS sees them): LoRA's dA and dB, whose outputs are small (r × out, in × Σr) and whose K is a pass's
 * rows — split over slices of at least 256 rows (k_slices) into t->lpart, summed in order into C. */
static int bg_acc_t(gpu_train *t, int m, int n, int T, float alpha, const bf16 *A, int lda, const bf16 *B, int ldb,
                    float *C, char *err, size_t errn) {
    const int s = t->lora_split ? k_slices(t, m, n, T, t->lora_min_k) : 1;
    if (s == 1) return bg(t, CUBLAS_OP_N, CUBLAS_OP_T, m, n, T, alpha, A, lda, B, ldb, 1.0f, C, 0, m, err, errn);
    TRY(gemm_k_parts(t, CUBLAS_OP_N, CUBLAS_OP_T, m, n, T, s, alpha, A, lda, lda, B, ldb, ldb, CUDA_R_16BF, 2, t->lpart,
                     err, errn));
    tk_sum_parts<float><<<grid_for((int64_t)m * n), 256, 0, t->s>>>(C, t->lpart, s, (int64_t)m * n, 1, 1, 1);
    return 0;
}

/* C (m × n, F32, ld ldc) = alpha·op(A)·B from BF16 A and B: LoRA's skinny products, whose output is the pass's
 * T rows of r or Σr columns and whose K is a projection's width — mid = x·[A]ᵀ (oa = T) and tmp_j = s·dy_j·B_j
 * (oa = N). With PRISM_CUDA_LORA_SPLIT=2 (a diagnostic, off by default) K goes in slices of at least 256
 * (k_slices: 32 output tiles at 4,096 rows fill a quarter of an H100) summed in order into C; else one GEMM,
 * split or not as cuBLAS chooses. */
static int bg_skinny(gpu_train *t, cublasOperation_t oa, int m, int n, int k, float alpha, const bf16 *A, int lda,
                     const bf16 *B, int ldb, float *C, int ldc, char *err, size_t errn) {
    const int s = t->lora_split == 2 ? k_slices(t, m, n, k, t->lora_min_k) : 1;
    if (s == 1) return bg(t, oa, CUBLAS_OP_N, m, n, k, alpha, A, lda, B, ldb, 0.0f, C, 0, ldc, err, errn);
    TRY(gemm_k_parts(t, oa, CUBLAS_OP_N, m, n, k, s, alpha, A, lda, oa == CUBLAS_OP_N ? lda : 1, B, ldb, 1, CUDA_R_16BF,
                     2, t->lpart, err, errn));
    tk_sum_parts<float><<<grid_for((int64_t)m * n), 256, 0, t->s>>>(C, t->lpart, s, (int64_t)m * n, 0, m, ldc);
    return 0;
}

/* n floats into BF16 (LoRA's small operands). */
static void to_bf(gpu_train *t, bf16 *dst, const float *src, int64_t n) {
    tk_to<bf16><<<grid_for(n), 256, 0, t->s>>>(dst, src, n);
}

/* x (n floats) in the activation type, into abuf (or x itself for F32). */
static const void *as_act(gpu_train *t, const float *x, int64_t n) {
    if (t->m->f32) return x;
    tk_to<bf16><<<1024, 256, 0, t->s>>>((bf16 *)t->abuf, x, n);
    return t->abuf;
}

/* An activation-type tensor as the F32 pointer the F32 paths take (F32 models), else NULL. */
static const float *f32_of(const gpu_train *t, const void *a) { return t->m->f32 ? (const float *)a : NULL; }

/* PRISM_CUDA_FROZEN_SPLIT=s (2..8; a diagnostic, off by default): a frozen GEMM whose K is at least twice
 * its output's side other than T (at 7B the down projection's forward, K = 18,944, and gate|up's input
 * gradient, K = 37,888, both for 3,584 outputs a row) runs as s partial products over K, summed in order
 * into C (m × T, F32 or cbf BF16, ld m; beta 0 or 1). Its output is 448 tiles of 128 × 256 at 4,096
 * rows: 3.4 waves on 132 SMs, unless cuBLAS splits K itself; this measures whether splitting pays. */
static int frozen_split(const gpu_train *t, int64_t m, int64_t K, int64_t ldc) {
    return t->frozen_split > 1 && K >= 2 * m && ldc == m && m <= t->m->H;
}

static int frozen_k(gpu_train *t, cublasOperation_t oa, int m, int T, int K, const void *A, int lda, int64_t ka,
                    const void *B, int ldb, float beta, void *C, int cbf, char *err, size_t errn) {
    const int f32 = t->m->f32, s = t->frozen_split;
    TRY(gemm_k_parts(t, oa, CUBLAS_OP_N, m, T, K, s, 1.0f, A, lda, ka, B, ldb, 1, f32 ? CUDA_R_32F : CUDA_R_16BF,
                     f32 ? 4 : 2, t->fpart, err, errn));
    const int64_t n = (int64_t)m * T;
    if (cbf) tk_sum_parts<bf16><<<grid_for(n), 256, 0, t->s>>>((bf16 *)C, t->fpart, s, n, beta != 0.0f, 1, 1);
    else tk_sum_parts<float><<<grid_for(n), 256, 0, t->s>>>((float *)C, t->fpart, s, n, beta != 0.0f, 1, 1);
    return 0;
}

/* PRISM_CUDA_GEMM_TUNE=1 (a diagnostic, off by default; BF16 models): each frozen GEMM (w_fwd, w_bwd) by
 * the algorithm measured fastest for its shape class — its operation, m, k, leading dimensions, output type,
 * beta, and its rows n rounded up to a power of two. A class's first GEMM times cuBLAS's default and the
 * first GEMM_TUNE_ALGOS algorithms cuBLASLt's heuristic proposes (time_calls; into C itself when beta = 0,
 * else into a zeroed scratch output), and keeps a cuBLASLt one if it beats the default by 1%. A later GEMM
 * of the class whose rows differ uses it where cuBLASLt accepts it for them (cublasLtMatmulAlgoCheck),
 * else the default; an algorithm that fails to run is dropped for the default. Each choice is printed to
 * stderr. =2 (tests): the heuristic's last proposal whatever the timings, and a class without one or a
 * failure to run it is an error — so that the path runs, the same one each time. */
#define GEMM_TUNE_ALGOS 8
#define GEMM_TUNE_WS ((size_t)32 << 20) /* t->blas_ws, shared: both run on t->s */

struct gtune {
    int32_t oa, m, k, nb, ldb, ldc, cbf, beta1; /* the class */
    int32_t n;                                  /* the rows it was measured at */
    int32_t lt;                                 /* 1: by algo (cuBLASLt), 0: cuBLAS's default */
    cublasLtMatmulAlgo_t algo;
};

#define TUNE_REPS 5 /* calls timed a candidate (time_calls) */

/* The class of this GEMM: found, or measured now (NULL: out of host memory, or a kernel launch of the
 * pass has failed and not been reported yet — not to be cleared here). */
static struct gtune *tune_class(gpu_train *t, const lt_prob *p, cublasOperation_t oa, int m, int n, int k,
                                const void *A, int lda, const void *B, int ldb, float beta, void *C, int cbf,
                                int ldc) {
    int32_t nb = 256;
    while (nb < n && nb < (1 << 30)) nb *= 2;
    const struct gtune key = {(int32_t)oa, m, k, nb, ldb, ldc, cbf, beta != 0.0f, n, 0, {{0}}};
    for (int32_t i = 0; i < t->n_tunes; i++) {
        const struct gtune *g = &t->tunes[i];
        if (g->oa == key.oa && g->m == m && g->k == k && g->nb == nb && g->ldb == ldb && g->ldc == ldc &&
            g->cbf == cbf && g->beta1 == key.beta1)
            return &t->tunes[i];
    }
    if (cudaPeekAtLastError() != cudaSuccess) return NULL;
    if (t->n_tunes == t->cap_tunes) {
        const int32_t cap = t->cap_tunes ? 2 * t->cap_tunes : 16;
        struct gtune *g = (struct gtune *)realloc(t->tunes, (size_t)cap * sizeof *g);
        if (!g) return NULL;
        t->tunes = g, t->cap_tunes = cap;
    }
    struct gtune *g = &t->tunes[t->n_tunes++];
    *g = key;
    /* beta = 0: timed into C, which the real call then writes; beta = 1 reads C, so a zeroed scratch output */
    const size_t cb = beta != 0.0f ? (size_t)ldc * n * (cbf ? 2 : 4) : 0;
    void *c = cb ? NULL : C;
    cudaEvent_t e0 = NULL, e1 = NULL;
    cublasLtMatmulHeuristicResult_t res[GEMM_TUNE_ALGOS];
    int nres = 0, win = -1;
    float tdef = -1.0f, tbest = -1.0f;
    /* the default (algo NULL) or a cuBLASLt algorithm, timed into c */
    auto timed = [&](const cublasLtMatmulAlgo_t *algo) {
        return time_calls(t->s, e0, e1, TUNE_REPS, [&] {
            return algo ? cublasLtMatmul(t->lt, p->op, &ONE, A, p->la, B, p->lb, &beta, c, p->lc, c, p->lc, algo,
                                         t->blas_ws, GEMM_TUNE_WS, t->s)
                        : cublasGemmEx(t->blas, oa, CUBLAS_OP_N, m, n, k, &ONE, A, CUDA_R_16BF, lda, B, CUDA_R_16BF, ldb,
                                       &beta, c, cbf ? CUDA_R_16BF : CUDA_R_32F, ldc, CUBLAS_COMPUTE_32F,
                                       CUBLAS_GEMM_DEFAULT);
        });
    };
    if (cb && cudaMalloc(&c, cb) != cudaSuccess) c = NULL;
    if (c && (!cb || cudaMemsetAsync(c, 0, cb, t->s) == cudaSuccess) && cudaEventCreate(&e0) == cudaSuccess &&
        cudaEventCreate(&e1) == cudaSuccess &&
        lt_heuristic(t->lt, p, GEMM_TUNE_WS, GEMM_TUNE_ALGOS, res, &nres) == CUBLAS_STATUS_SUCCESS) {
        account((int64_t)cb);
        tdef = timed(NULL);
        for (int i = 0; i < nres; i++) {
            if (res[i].state != CUBLAS_STATUS_SUCCESS) continue;
            const float ms = timed(&res[i].algo);
            if (ms >= 0 && t->tune == 2) tbest = ms, win = i; /* tests: the last proposal that ran */
            else if (ms >= 0 && (tbest < 0 || ms < tbest)) tbest = ms, win = i;
        }
        account(-(int64_t)cb);
    }
    cudaGetLastError(); /* tuning's own failures (none was pending): the default, reported below */
    if (win >= 0 && (t->tune == 2 || tdef < 0 || tbest < 0.99f * tdef)) g->lt = 1, g->algo = res[win].algo;
    fprintf(stderr,
            "prism-cuda: GEMM tuning, %s %d x %d x %d (%s out%s, rows class %d): cuBLAS default %.3f ms, best of %d "
            "cuBLASLt algorithms %.3f ms (rank %d): %s\n",
            oa == CUBLAS_OP_T ? "W^T x" : "W x", m, n, k, cbf ? "BF16" : "F32", beta != 0.0f ? ", +=" : "", nb, tdef,
            nres, tbest, win, g->lt ? "cuBLASLt" : "cuBLAS's default");
    if (e0) cudaEventDestroy(e0);
    if (e1) cudaEventDestroy(e1);
    if (cb && c) cudaFree(c);
    return g;
}

/* C (m × n, ld ldc; BF16 with cbf, else F32) = op(A)·B + beta·C for a frozen weight A (lda) and B (k × n,
 * ld ldb) in the activation type: cuBLAS's default, or with t->tune (BF16 models) the measured algorithm. */
static int frozen_gemm(gpu_train *t, cublasOperation_t oa, int m, int n, int k, const void *A, int lda, const void *B,
                       int ldb, float beta, void *C, int cbf, int ldc, char *err, size_t errn) {
    const cudaDataType at = t->m->f32 ? CUDA_R_32F : CUDA_R_16BF, ct = cbf ? CUDA_R_16BF : CUDA_R_32F;
    if (t->tune && !t->m->f32) {
        lt_prob p;
        cublasStatus_t s = lt_prob_make(&p, oa, m, n, k, lda, ldb, ldc, at, ct);
        int use = 0, has = 0;
        if (s == CUBLAS_STATUS_SUCCESS) {
            struct gtune *g = tune_class(t, &p, oa, m, n, k, A, lda, B, ldb, beta, C, cbf, ldc);
            has = g && g->lt;
            cublasLtMatmulHeuristicResult_t chk;
            /* another row count of the class: where cuBLASLt accepts the algorithm for it, else the default */
            use = g && g->lt &&
                  (g->n == n || (cublasLtMatmulAlgoCheck(t->lt, p.op, p.la, p.lb, p.lc, p.lc, &g->algo, &chk) ==
                                     CUBLAS_STATUS_SUCCESS &&
                                 chk.workspaceSize <= GEMM_TUNE_WS));
            if (use)
                s = cublasLtMatmul(t->lt, p.op, &ONE, A, p.la, B, p.lb, &beta, C, p.lc, C, p.lc, &g->algo, t->blas_ws,
                                   GEMM_TUNE_WS, t->s);
            lt_prob_free(&p);
            if (s != CUBLAS_STATUS_SUCCESS && t->tune == 1 && use) { /* it would not run after all: the default */
                fprintf(stderr, "prism-cuda: GEMM %d x %d x %d: cuBLASLt status %d, cuBLAS's default from now on\n", m,
                        n, k, (int)s);
                g->lt = 0, use = 0, s = CUBLAS_STATUS_SUCCESS;
            }
        }
        if (s != CUBLAS_STATUS_SUCCESS)
            return gpu_fail(err, errn, PRISM_GPU_E_DEVICE, "training GEMM %d x %d x %d (cuBLASLt): cuBLAS status %d", m,
                            n, k, (int)s);
        if (use) return 0;
        if (t->tune == 2 && !has) /* tests: the class must have a cuBLASLt algorithm */
            return gpu_fail(err, errn, PRISM_GPU_E_DEVICE,
                            "training GEMM %d x %d x %d: no cuBLASLt algorithm (PRISM_CUDA_GEMM_TUNE=2)", m, n, k);
    }
    BL(cublasGemmEx(t->blas, oa, CUBLAS_OP_N, m, n, k, &ONE, A, at, lda, B, at, ldb, &beta, C, ct, ldc,
                    CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    return 0;
}

/* y (T, out; ldy) = x (T, in) · Wᵀ (+ beta·y), y F32 or (ybf) BF16; xa: x
 * already in the activation type (written so by its producer), else NULL. */
static int w_fwd(gpu_train *t, void *y, int ybf, int ldy, const float *x, const void *xa, const dlin *W, int32_t T,
                 float beta, char *err, size_t errn) {
    const int in = (int)W->in, out = (int)W->out;
    if (!xa) xa = as_act(t, x, (int64_t)T * in);
    if (frozen_split(t, out, in, ldy))
        return frozen_k(t, CUBLAS_OP_T, out, T, in, W->w, in, 1, xa, in, beta, y, ybf, err, errn);
    return frozen_gemm(t, CUBLAS_OP_T, out, T, in, W->w, in, xa, in, beta, y, ybf, ldy, err, errn);
}

/* dx (T, in; F32 or, dxbf, BF16) (+)= dy (T, out; ldy) · W; dya: dy already in the activation type, else NULL. */
static int w_bwd(gpu_train *t, void *dx, int dxbf, const float *dy, const void *dya, int ldy, const dlin *W, int32_t T,
                 float beta, char *err, size_t errn) {
    const int in = (int)W->in, out = (int)W->out;
    const void *da = dy;
    int ld = ldy;
    if (dya) {
        da = dya;
    } else if (!t->m->f32) { /* pack (T, out) at ldy into abuf as BF16 */
        if (ldy != out) return gpu_fail(err, errn, PRISM_GPU_E_ARG, "internal: strided BF16 backward input");
        da = as_act(t, dy, (int64_t)T * out);
    }
    if (frozen_split(t, in, out, in))
        return frozen_k(t, CUBLAS_OP_N, in, T, out, W->w, in, in, da, ld, beta, dx, dxbf, err, errn);
    return frozen_gemm(t, CUBLAS_OP_N, in, T, out, W->w, in, da, ld, beta, dx, dxbf, in, err, errn);
}

static const tmod *mod_of(const gpu_train *t, int32_t l, int target) {
    const tmod *md = &t->mods[(int64_t)l * LT_N + target];
    return md->r ? md : NULL;
}

/* The adapted targets among tg[0..n) of layer l (their As are consecutive
 * rows of the parameters: one (Σr, in) matrix): md[j], their count, Σr. */
static int group_of(const gpu_train *t, int32_t l, const int *tg, int n, const tmod **md, int *rs) {
    int k = 0;
    *rs = 0;
    for (int j = 0; j < n; j++) {
        md[j] = mod_of(t, l, tg[j]);
        if (md[j]) k++, *rs += md[j]->r;
    }
    return k;
}

/* Span names of a projection's work (PRISM_CUDA_PROFILE=2), by projection: its first target. */
enum { PO_FWD, PO_XA, PO_CVT, PO_MB, PO_BWD, PO_TMP, PO_DB, PO_DA, PO_DX, PO_N };
#define PO_ROW(g)                                                                                                  \
    {g ": frozen GEMM, forward",  g ": LoRA mid = x.A^T",  g ": LoRA operands to BF16", g ": LoRA y += s.mid.B^T", \
     g ": frozen GEMM, backward", g ": LoRA tmp = s.dy.B", g ": LoRA dB += s.mid^T.dy", g ": LoRA dA += tmp^T.x",  \
     g ": LoRA dx = tmp.A"}
static const char *const PO_NAME[4][PO_N] = {PO_ROW("q|k|v"), PO_ROW("o"), PO_ROW("gate|up"), PO_ROW("down")};
#undef PO_ROW
static const char *po(const int *tg, int op) {
    return PO_NAME[tg[0] == LT_Q ? 0 : tg[0] == LT_O ? 1 : tg[0] == LT_GATE ? 2 : 3][op];
}

/* What a projection's forward or backward leaves to the kernel that follows
 * it (the MLP's, with t->lfuse): the B-products (forward), dA, dB, and LoRA's
 * term of dx (backward). */
enum { PF_B = 1, PB_DA = 2, PB_DB = 4, PB_DX = 8 };

/* A projection y (T, ·; ldy) = x·Wᵀ + Σ_j s_j·(x·A_jᵀ)·B_jᵀ over the n targets
 * tg[j] that split W's outputs (q|k|v, gate|up, or one), target j at column
 * col[j]. mid = x·[A_j]ᵀ (T, Σr) is one GEMM for all adapted targets. When
 * every target is adapted, the LoRA products write y first and the frozen
 * GEMM adds onto them in its epilogue (beta = 1: y is read there, while the
 * GEMM is compute-bound, instead of a second read-modify-write pass).
 * left & PF_B: only mid and the frozen product; the caller adds the rest. */
static int proj_fwd(gpu_train *t, int32_t l, const int *tg, const int64_t *col, int n, float *mid, const float *x,
                    const void *xa, int ldx, const dlin *W, void *y, int ybf, int ldy, int left, int32_t T, char *err,
                    size_t errn) {
    const tmod *md[3];
    int rs;
    const int k = group_of(t, l, tg, n, md, &rs), bl = (left & PF_B) != 0;
    if (k < n || bl) {
        TRY(w_fwd(t, y, ybf, ldy, x, xa, W, T, 0.0f, err, errn));
        prof_op(t, TP_GEMM_F, po(tg, PO_FWD));
    }
    if (k) {
        const tmod *m0 = NULL;
        for (int j = 0; j < n && !m0; j++) m0 = md[j];
        if (xa && !t->m->f32) { /* x is in BF16 already: read that (half the bytes), with the As in BF16 */
            TRY(bg_skinny(t, CUBLAS_OP_T, rs, T, m0->in, 1.0f, t->pb + m0->offA, m0->in, (const bf16 *)xa, ldx, mid, rs,
                          err, errn));
        } else {
            TRY(sg(t, CUBLAS_OP_T, CUBLAS_OP_N, rs, T, m0->in, 1.0f, t->p + m0->offA, m0->in, x, ldx, 0.0f, mid, rs,
                   err, errn));
        }
        prof_op(t, TP_LORA_F, po(tg, PO_XA));
        bf16 *midb = t->lb_mid;
        if (ybf && !bl) {
            to_bf(t, midb, mid, (int64_t)T * rs);
            prof_op(t, TP_LORA_F, po(tg, PO_CVT));
        }
        for (int j = 0, c = 0; j < n && !bl; j++) {
            if (!md[j]) continue;
            const float beta = k == n ? 0.0f : 1.0f;
            if (ybf) { /* BF16 output: BF16 operands (B_j from pb) */
                TRY(bg(t, CUBLAS_OP_T, CUBLAS_OP_N, md[j]->out, T, md[j]->r, md[j]->scale, t->pb + md[j]->offB,
                       md[j]->r, midb + c, rs, beta, (bf16 *)y + col[j], 1, ldy, err, errn));
            } else {
                TRY(sg(t, CUBLAS_OP_T, CUBLAS_OP_N, md[j]->out, T, md[j]->r, md[j]->scale, t->p + md[j]->offB,
                       md[j]->r, mid + c, rs, beta, (float *)y + col[j], ldy, err, errn));
            }
            prof_op(t, TP_LORA_F, po(tg, PO_MB));
            c += md[j]->r;
        }
    }
    if (k == n && !bl) {
        TRY(w_fwd(t, y, ybf, ldy, x, xa, W, T, 1.0f, err, errn));
        prof_op(t, TP_GEMM_F, po(tg, PO_FWD));
    }
    return 0;
}

/* Its backward (lin_bwd in grad.c), dy (T, ·; ldy) -> dx (T, in) and the
 * LoRA gradients: tmp_j = s_j·dy_j·B_j into tmp (T, Σr); dB_j += s_j·dy_jᵀ·mid_j;
 * d[A_j] += tmpᵀ·x and dx = tmp·[A_j] as one GEMM each; then the frozen
 * GEMM adds dy·W onto dx. left (PB_DA, PB_DB, PB_DX): what the caller
 * computes instead, from tmp (t->ltmp) as this leaves it, and mid; with
 * PB_DX the frozen GEMM writes dx. */
static int proj_bwd(gpu_train *t, int32_t l, const int *tg, const int64_t *col, int n, const float *mid,
                    const float *x, const void *xa, int ldx, const dlin *W, const float *dy, const void *dya, int ldy,
                    void *dx, int dxbf, int left, int32_t T, char *err, size_t errn) {
    const tmod *md[3];
    int rs;
    const int k = group_of(t, l, tg, n, md, &rs);
    if (k) {
        float *tmp = t->ltmp;
        const tmod *m0 = NULL;
        /* dy and x in BF16 when their producers wrote them so: LoRA reads those, its small operands converted */
        const bf16 *dyb = t->m->f32 ? NULL : (const bf16 *)dya, *xb = t->m->f32 ? NULL : (const bf16 *)xa;
        const int db = !(left & PB_DB);
        if (dyb && db) {
            to_bf(t, t->lb_mid, mid, (int64_t)T * rs);
            prof_op(t, TP_LORA_B, po(tg, PO_CVT));
        }
        for (int j = 0, c = 0; j < n; j++) {
            if (!md[j]) continue;
            if (!m0) m0 = md[j];
            const float *dyj = dy + col[j];
            if (dyb)
                TRY(bg_skinny(t, CUBLAS_OP_N, md[j]->r, T, md[j]->out, md[j]->scale, t->pb + md[j]->offB, md[j]->r,
                              dyb + col[j], ldy, tmp + c, rs, err, errn));
            else
                TRY(sg(t, CUBLAS_OP_N, CUBLAS_OP_N, md[j]->r, T, md[j]->out, md[j]->scale, t->p + md[j]->offB,
                       md[j]->r, dyj, ldy, 0.0f, tmp + c, rs, err, errn));
            prof_op(t, TP_LORA_B, po(tg, PO_TMP));
            if (db) {
                if (dyb)
                    TRY(bg_acc_t(t, md[j]->r, md[j]->out, T, md[j]->scale, t->lb_mid + c, rs, dyb + col[j], ldy,
                                 t->g + md[j]->offB, err, errn));
                else
                    TRY(sg(t, CUBLAS_OP_N, CUBLAS_OP_T, md[j]->r, md[j]->out, T, md[j]->scale, mid + c, rs, dyj, ldy,
                           1.0f, t->g + md[j]->offB, md[j]->r, err, errn));
                prof_op(t, TP_LORA_B, po(tg, PO_DB));
            }
            c += md[j]->r;
        }
        const int in = m0->in, dA = !(left & PB_DA), dX = !(left & PB_DX);
        if ((xb && dA) || (dxbf && dX)) {
            to_bf(t, t->lb_tmp, tmp, (int64_t)T * rs);
            prof_op(t, TP_LORA_B, po(tg, PO_CVT));
        }
        if (dA) {
            if (xb) TRY(bg_acc_t(t, in, rs, T, 1.0f, xb, ldx, t->lb_tmp, rs, t->g + m0->offA, err, errn));
            else TRY(sg(t, CUBLAS_OP_N, CUBLAS_OP_T, in, rs, T, 1.0f, x, ldx, tmp, rs, 1.0f, t->g + m0->offA, in, err, errn));
            prof_op(t, TP_LORA_B, po(tg, PO_DA));
        }
        if (dX) {
            if (dxbf) /* dx in BF16: from BF16 tmp and As; the frozen GEMM then adds onto it in BF16 */
                TRY(bg(t, CUBLAS_OP_N, CUBLAS_OP_N, in, T, rs, 1.0f, t->pb + m0->offA, in, t->lb_tmp, rs, 0.0f, dx, 1,
                       (int)W->in, err, errn));
            else
                TRY(sg(t, CUBLAS_OP_N, CUBLAS_OP_N, in, T, rs, 1.0f, t->p + m0->offA, in, tmp, rs, 0.0f, (float *)dx,
                       (int)W->in, err, errn));
            prof_op(t, TP_LORA_B, po(tg, PO_DX));
        }
    }
    TRY(w_bwd(t, dx, dxbf, dy, dya, ldy, W, T, k && !(left & PB_DX) ? 1.0f : 0.0f, err, errn));
    prof_op(t, TP_GEMM_B, po(tg, PO_BWD));
    return 0;
}


/* ------------------------------------------------------------------ forward / backward of one layer */

/* Rows per block of the SwiGLU kernels that carry LoRA (a column per thread, rows iterated): 256, halved
 * (to 32 at least) while the grid would have under 4 blocks per SM, so that short passes fill the GPU;
 * doubled while a pass would make more than SWB_MAX_CHUNKS chunks, so that long ones keep their partials
 * (chunks × ranks × F floats: 465 MB at 32,768 rows of Qwen2.5-7B's MLP otherwise) and the sums over them
 * small. */
#define SWB_MAX_CHUNKS 32
static int32_t swb_rows(const gpu_train *t, int32_t T) {
    const int64_t cols = (t->m->F + 255) / 256;
    int32_t rows = 256;
    while (rows > 32 && cols * ((T + rows - 1) / rows) < 4 * (int64_t)t->m->n_sm) rows /= 2;
    while ((T + rows - 1) / rows > SWB_MAX_CHUNKS) rows *= 2;
    return rows;
}

/* tk_swiglu_fwd_lora over a pass of T rows: gate (mg) and/or up (mu) adapted, mid = h2·[A]ᵀ (T, r_g + r_u). */
template <class A>
static void swiglu_fwd_lora(gpu_train *t, A *gu, float *a, bf16 *ab, const float *mid, const tmod *mg, const tmod *mu,
                            int32_t F, int32_t T) {
    const int32_t rows = swb_rows(t, T), rg = mg ? mg->r : 0, ru = mu ? mu->r : 0;
    const dim3 g((F + 255) / 256, (T + rows - 1) / rows);
    tk_swiglu_fwd_lora<A><<<g, 256, 0, t->s>>>(gu, a, ab, F, T, rows, mid, rg + ru, mg ? t->p + mg->offB : NULL, rg,
                                                mg ? mg->scale : 0.0f, mu ? t->p + mu->offB : NULL, ru,
                                                mu ? mu->scale : 0.0f, !t->gu_remake);
}

static int layer_fwd(gpu_train *t, int32_t l, tacts *A, const float *x, float *y_out, int32_t T, char *err,
                     size_t errn) {
    const gpu_model *m = t->m;
    const dlayer *L = &m->layers[l];
    const int32_t H = m->H, hd = m->hd, nh = m->nh, nkv = m->nkv, F = m->F, group = nh / nkv;
    const int64_t qd = (int64_t)nh * hd, kvd = (int64_t)nkv * hd, qn = qd + 2 * kvd;
    const int TQKV[3] = {LT_Q, LT_K, LT_V}, TGU[2] = {LT_GATE, LT_UP}, TO[1] = {LT_O}, TD[1] = {LT_DOWN};
    const int64_t CQKV[3] = {0, qd, qd + kvd}, CGU[2] = {0, F}, C0[1] = {0};
    /* h1, h2 and att exist in the activation type only: GEMMs are all that read them. So do the projections'
     * outputs (y): BF16 on BF16 models, as peft's are; the residual stream stays F32 */
    const int ybf = !m->f32;
    const float *yf = (const float *)t->y;
    const bf16 *yb = (const bf16 *)t->y;
    if (m->f32) tk_norm_fwd<float><<<T, 256, 0, t->s>>>((float *)A->h1, A->r1, x, L->attn_norm, H, m->eps);
    else tk_norm_fwd<bf16><<<T, 256, 0, t->s>>>((bf16 *)A->h1, A->r1, x, L->attn_norm, H, m->eps);
    prof_op(t, TP_ELT_F, "RMSNorm (attention), forward");
    TRY(proj_fwd(t, l, TQKV, CQKV, 3, A->mid[0], f32_of(t, A->h1), A->h1, H, &L->wqkv, t->y, ybf, (int)qn, 0, T,
                 err, errn));
    dim3 gq(T, (nh + 2 * nkv + 3) / 4);
    const int qsm = 4 * hd * (int)sizeof(float);
    if (t->flash) /* BF16 models only */
        tk_qkv_fwd<bf16, bf16><<<gq, 128, qsm, t->s>>>(yb, L->bqkv, L->q_norm, L->k_norm, m->inv_freq, A->qraw, A->kraw,
                                                       A->rq, A->rk, (bf16 *)A->qh, (bf16 *)A->kh, (bf16 *)A->vh,
                                                       t->d_sofs, t->d_slen, nh, nkv, hd, qn, m->eps);
    else if (ybf)
        tk_qkv_fwd<bf16, float><<<gq, 128, qsm, t->s>>>(yb, L->bqkv, L->q_norm, L->k_norm, m->inv_freq, A->qraw,
                                                        A->kraw, A->rq, A->rk, (float *)A->qh, (float *)A->kh,
                                                        (float *)A->vh, t->d_sofs, t->d_slen, nh, nkv, hd, qn, m->eps);
    else
        tk_qkv_fwd<float, float><<<gq, 128, qsm, t->s>>>(yf, L->bqkv, L->q_norm, L->k_norm, m->inv_freq, A->qraw,
                                                         A->kraw, A->rq, A->rk, (float *)A->qh, (float *)A->kh,
                                                         (float *)A->vh, t->d_sofs, t->d_slen, nh, nkv, hd, qn, m->eps);
    prof_op(t, TP_ATT_F, "q|k|v post (norms, RoPE, heads), forward");
    const float scale = 1.0f / sqrtf((float)hd);
    float *P = A->P;
    if (t->flash)
        k_flash_fwd(t->s, (const bf16 *)A->qh, (const bf16 *)A->kh, (const bf16 *)A->vh, (bf16 *)A->att, A->lse,
                    t->d_ftiles, t->n_ftiles, nh, nkv, hd, m->window, scale); /* straight into att's rows */
    for (int32_t s = 0; s < t->n_seq && !t->flash; s++) {
        /* sequence s, per KV head g (one batched GEMM each): S_g = scale·K_gᵀQ_g, P_g = softmax(S_g), O_g = V_g·P_g */
        const int32_t n = t->seq_len[s];
        const int64_t o = t->seq_off[s], gt = (int64_t)group * n;
        TRY(sgb(t, CUBLAS_OP_T, CUBLAS_OP_N, n, (int)gt, hd, scale, (const float *)A->kh + o * kvd, hd,
                (long long)n * hd, (const float *)A->qh + o * qd, hd, gt * hd, 0.0f, P, n, gt * n, nkv, err, errn));
        softmax_rows(t->s, P, gt * nkv, n, m->window); /* rows of every head: position = row % n */
        TRY(sgb(t, CUBLAS_OP_N, CUBLAS_OP_N, hd, (int)gt, n, 1.0f, (const float *)A->vh + o * kvd, hd,
                (long long)n * hd, P, n, gt * n, 0.0f, t->oh + o * qd, hd, gt * hd, nkv, err, errn));
        P += (int64_t)nh * n * n;
    }
    if (!t->flash && m->f32)
        tk_heads<float><<<T, 256, 0, t->s>>>((float *)A->att, t->oh, t->d_sofs, t->d_slen, nh, hd, qd, 0, 0);
    else if (!t->flash)
        tk_heads<bf16><<<T, 256, 0, t->s>>>((bf16 *)A->att, t->oh, t->d_sofs, t->d_slen, nh, hd, qd, 0, 0);
    prof_op(t, TP_ATT_F, t->flash ? "flash attention, forward" : "attention by cuBLAS, forward");
    TRY(proj_fwd(t, l, TO, C0, 1, A->mid[0] + (int64_t)3 * t->max_r * T, f32_of(t, A->att), A->att, (int)qd, &L->wo,
                 t->y, ybf, H, 0, T, err, errn));
    if (m->f32)
        tk_add_norm<float><<<T, 256, 0, t->s>>>(A->xmid, (float *)A->h2, A->r2, x, yf, L->bo, L->ffn_norm, H, m->eps);
    else
        tk_add_norm<bf16><<<T, 256, 0, t->s>>>(A->xmid, (bf16 *)A->h2, A->r2, x, yb, L->bo, L->ffn_norm, H, m->eps);
    prof_op(t, TP_ELT_F, "residual add + RMSNorm (MLP), forward");
    /* gate | up in the activation type: BF16 halves the traffic of the layer's widest tensor (written, read back
     * by the GEMM epilogue, by SwiGLU, its recomputation and its backward) */
    const tmod *mg = mod_of(t, l, LT_GATE), *mu = mod_of(t, l, LT_UP);
    const int lfw = t->lfuse && (mg || mu); /* their B-products by tk_swiglu_fwd_lora */
    TRY(proj_fwd(t, l, TGU, CGU, 2, A->mid[1], f32_of(t, A->h2), A->h2, H, &L->wgu, A->gu, ybf, 2 * F, lfw ? PF_B : 0, T,
                 err, errn));
    const int64_t ngu = (int64_t)T * 2 * F;
    if (L->bgu && ybf) tk_bias<bf16><<<grid_for(ngu), 256, 0, t->s>>>((bf16 *)A->gu, L->bgu, ngu, 2 * F);
    else if (L->bgu) tk_bias<float><<<grid_for(ngu), 256, 0, t->s>>>((float *)A->gu, L->bgu, ngu, 2 * F);
    if (L->bgu) prof_op(t, TP_ELT_F, "gate|up bias, forward");
    const dim3 gs = swiglu_grid(T, F);
    /* silu(gate)·up: F32 for LoRA's down A-product (or the F32 GEMM), BF16 straight into the down GEMM's input */
    bf16 *actb = m->f32 ? NULL : (bf16 *)t->abuf;
    float *actf = m->f32 ? t->act : NULL; /* BF16 models: LoRA's down A-product reads the BF16 copy too */
    if (lfw && ybf) swiglu_fwd_lora<bf16>(t, (bf16 *)A->gu, actf, actb, A->mid[1], mg, mu, F, T);
    else if (lfw) swiglu_fwd_lora<float>(t, (float *)A->gu, actf, actb, A->mid[1], mg, mu, F, T);
    else if (ybf) tk_swiglu_fwd<bf16><<<gs, 256, 0, t->s>>>(actf, actb, (const bf16 *)A->gu, F);
    else tk_swiglu_fwd<float><<<gs, 256, 0, t->s>>>(actf, actb, (const float *)A->gu, F);
    prof_op(t, TP_ELT_F, lfw ? "SwiGLU + gate|up LoRA B-products, forward" : "SwiGLU, forward");
    TRY(proj_fwd(t, l, TD, C0, 1, A->mid[2], t->act, actb, F, &L->wd, t->y, ybf, H, 0, T, err, errn));
    if (ybf) tk_add<bf16><<<grid_for((int64_t)T * H), 256, 0, t->s>>>(y_out, A->xmid, yb, L->bd, (int64_t)T * H, H);
    else tk_add<float><<<grid_for((int64_t)T * H), 256, 0, t->s>>>(y_out, A->xmid, yf, L->bd, (int64_t)T * H, H);
    prof_op(t, TP_ELT_F, "residual add, forward");
    return 0;
}

/* tk_swiglu_bwd_da over a pass of T rows, its accumulators sized for the rank r (<= 64: t->swb), then its
 * chunks summed into down's dA. */
template <class A>
static void swiglu_bwd_da(gpu_train *t, float *dgu, bf16 *dgub, const A *da, const A *gu, const tmod *md, int32_t F,
                          int32_t T) {
    const int32_t rows = swb_rows(t, T), nc = (T + rows - 1) / rows, r = md->r;
    const int64_t n = (int64_t)r * F;
    const dim3 g((F + 255) / 256, nc);
    if (r <= 16) tk_swiglu_bwd_da<A, 16><<<g, 256, 0, t->s>>>(dgu, dgub, da, gu, F, T, rows, t->ltmp, r, t->dpart);
    else if (r <= 32) tk_swiglu_bwd_da<A, 32><<<g, 256, 0, t->s>>>(dgu, dgub, da, gu, F, T, rows, t->ltmp, r, t->dpart);
    else tk_swiglu_bwd_da<A, 64><<<g, 256, 0, t->s>>>(dgu, dgub, da, gu, F, T, rows, t->ltmp, r, t->dpart);
    tk_sum_parts<float><<<grid_for(n), 256, 0, t->s>>>(t->g + md->offA, t->dpart, nc, n, 1, 1, 1);
}

/* tk_swiglu_bwd_lora over a pass of T rows (down md, gate mg, up mu: each adapted or NULL; tmp = s·dy·B_down
 * in t->ltmp, mid = h2·[A]ᵀ of gate|up), then its chunks summed into down's dA and gate's and up's dB. */
template <class A>
static void swiglu_bwd_lora(gpu_train *t, float *dgu, bf16 *dgub, const A *da, const A *gu, const float *mid,
                            const tmod *md, const tmod *mg, const tmod *mu, int32_t F, int32_t T) {
    const int32_t rows = swb_rows(t, T), nc = (T + rows - 1) / rows;
    const int32_t rd = md ? md->r : 0, rg = mg ? mg->r : 0, ru = mu ? mu->r : 0;
    const dim3 g((F + 255) / 256, nc);
    const float *Bg = mg ? t->p + mg->offB : NULL, *Bu = mu ? t->p + mu->offB : NULL;
    auto *kern = t->gu_remake && (mg || mu) ? tk_swiglu_bwd_lora<A, true> : tk_swiglu_bwd_lora<A, false>;
    kern<<<g, 256, 0, t->s>>>(dgu, dgub, da, gu, F, T, rows, t->ltmp, md ? t->p + md->offA : NULL, rd, mid, rg + ru, rg, mg ? mg->scale : 0.0f, ru, mu ? mu->scale : 0.0f, t->dpart, nc, Bg, Bu);
    const int64_t nd = (int64_t)rd * F, ng = (int64_t)rg * F, nu = (int64_t)ru * F;
    if (rd) tk_sum_parts<float><<<grid_for(nd), 256, 0, t->s>>>(t->g + md->offA, t->dpart, nc, nd, 1, 1, 1);
    if (rg) tk_sum_parts<float><<<grid_for(ng), 256, 0, t->s>>>(t->g + mg->offB, t->dpart + nc * nd, nc, ng, 1, 1, 1);
    if (ru) tk_sum_parts<float><<<grid_for(nu), 256, 0, t->s>>>(t->g + mu->offB, t->dpart + nc * (nd + ng), nc, nu, 1, 1, 1);
}

/* dx += a layer RMSNorm's backward from dh, the gradient at its output as a projection backward wrote it
 * (the activation type), and the BF16 copy t->dxb of the result. */
static void norm_bwd(gpu_train *t, float *dx, const void *dh, const float *x, const float *w, const float *r,
                     int32_t T) {
    const int32_t H = t->m->H;
    if (t->m->f32) tk_norm_bwd<float><<<T, 256, 0, t->s>>>(dx, t->dxb, (const float *)dh, x, w, r, H, 1);
    else tk_norm_bwd<bf16><<<T, 256, 0, t->s>>>(dx, t->dxb, (const bf16 *)dh, x, w, r, H, 1);
}

/* t->dx: gradient w.r.t. the layer output on entry, w.r.t. its input x on return. */
static int layer_bwd(gpu_train *t, int32_t l, const tacts *A, const float *x, int32_t T, char *err, size_t errn) {
    const gpu_model *m = t->m;
    const dlayer *L = &m->layers[l];
    const int32_t H = m->H, hd = m->hd, nh = m->nh, nkv = m->nkv, F = m->F, group = nh / nkv;
    const int64_t qd = (int64_t)nh * hd, kvd = (int64_t)nkv * hd, qn = qd + 2 * kvd;
    const int TQKV[3] = {LT_Q, LT_K, LT_V}, TGU[2] = {LT_GATE, LT_UP}, TO[1] = {LT_O}, TD[1] = {LT_DOWN};
    const int64_t CQKV[3] = {0, qd, qd + kvd}, CGU[2] = {0, F}, C0[1] = {0};
    float *dx = t->dx, *da = t->hd_tmp;
    /* MLP */
    prof_mark(t, TP_OTHER);
    const dim3 gs = swiglu_grid(T, F);
    bf16 *actb = m->f32 ? NULL : (bf16 *)t->abuf; /* silu(gate)·up again, for down's dA GEMM (unfused path) */
    const tmod *mdn = mod_of(t, l, LT_DOWN), *mg = mod_of(t, l, LT_GATE), *mu = mod_of(t, l, LT_UP);
    const int lf = t->lfuse && (mdn || mg || mu); /* the MLP's LoRA terms by tk_swiglu_bwd_lora */
    const int swb = !lf && mdn && t->swb; /* down's dA by the SwiGLU backward, from silu(gate)·up made on the fly */
    if (mdn && !swb && !lf) { /* its input, silu(gate)·up, again */
        if (m->f32) tk_swiglu_fwd<float><<<gs, 256, 0, t->s>>>(t->act, (bf16 *)NULL, (const float *)A->gu, F);
        else tk_swiglu_fwd<bf16><<<gs, 256, 0, t->s>>>((float *)NULL, actb, (const bf16 *)A->gu, F);
        prof_op(t, TP_ELT_B, "SwiGLU again (down's LoRA input)");
    }
    /* da = d silu(gate)·up: BF16 on BF16 models, as is dgu, which only GEMMs read there */
    TRY(proj_bwd(t, l, TD, C0, 1, A->mid[2], t->act, actb, F, &L->wd, dx, t->dxb, H, da, !m->f32,
                 lf ? PB_DA | PB_DX : swb ? PB_DA : 0, T, err, errn));
    bf16 *dgub = m->f32 ? NULL : (bf16 *)t->abuf; /* the gate|up backward GEMM's input, written by the kernel */
    if (lf && m->f32) {
        swiglu_bwd_lora<float>(t, t->dgu, dgub, (const float *)da, (const float *)A->gu, A->mid[1], mdn, mg, mu, F, T);
    } else if (lf) {
        swiglu_bwd_lora<bf16>(t, (float *)NULL, dgub, (const bf16 *)da, (const bf16 *)A->gu, A->mid[1], mdn, mg, mu, F,
                              T);
    } else if (swb && m->f32) {
        swiglu_bwd_da<float>(t, t->dgu, dgub, (const float *)da, (const float *)A->gu, mdn, F, T);
    } else if (swb) {
        swiglu_bwd_da<bf16>(t, (float *)NULL, dgub, (const bf16 *)da, (const bf16 *)A->gu, mdn, F, T);
    } else if (m->f32) {
        tk_swiglu_bwd<float><<<gs, 256, 0, t->s>>>(t->dgu, dgub, (const float *)da, (const float *)A->gu, F);
    } else {
        tk_swiglu_bwd<bf16><<<gs, 256, 0, t->s>>>((float *)NULL, dgub, (const bf16 *)da, (const bf16 *)A->gu, F);
    }
    prof_op(t, TP_ELT_B, lf ? "SwiGLU backward + MLP LoRA terms" : swb ? "SwiGLU backward + down's dA" : "SwiGLU backward");
    /* dh: the gradient at the norm's output, in the activation type (BF16 on BF16 models, as peft's) */
    TRY(proj_bwd(t, l, TGU, CGU, 2, A->mid[1], f32_of(t, A->h2), A->h2, H, &L->wgu, t->dgu, dgub, 2 * F, t->dh, !m->f32,
                 lf ? PB_DB : 0, T, err, errn));
    norm_bwd(t, dx, t->dh, A->xmid, L->ffn_norm, A->r2, T);
    prof_op(t, TP_ELT_B, "RMSNorm backward");
    /* attention */
    TRY(proj_bwd(t, l, TO, C0, 1, A->mid[0] + (int64_t)3 * t->max_r * T, f32_of(t, A->att), A->att, (int)qd, &L->wo,
                 dx, t->dxb, H, t->datt, 0, 0, T, err, errn));
    const int32_t *so = t->d_sofs, *sl = t->d_slen;
    /* head-major, T rows each; with flash.cu, dk and dv in a part per query head of a group (kv_parts) */
    const int32_t kv_parts = t->flash ? group : 1;
    float *dqh = t->hd_tmp, *dkh = dqh + qd * T, *dvh = dkh + kv_parts * kvd * T;
    const float scale = 1.0f / sqrtf((float)hd);
    const float *P = A->P;
    if (t->flash) { /* dO straight from datt's rows */
        k_flash_dot(t->s, t->Drow, t->datt, (const bf16 *)A->att, so, sl, T, nh, hd);
        prof_op(t, TP_ATT_B, "flash attention, rowsum(dO.O)");
        k_flash_bwd(t->s, (const bf16 *)A->qh, (const bf16 *)A->kh, (const bf16 *)A->vh, t->datt, A->lse, t->Drow,
                    dqh, dkh, dvh, kvd * T, t->d_ftiles, t->n_ftiles, nh, nkv, hd, m->window, scale);
    } else {
        tk_heads<float><<<T, 256, 0, t->s>>>(t->datt, t->oh, so, sl, nh, hd, qd, 0, 1); /* oh := dO head-major */
    }
    for (int32_t s = 0; s < t->n_seq && !t->flash; s++) {
        /* sequence s, per KV head g, batched: dP_g = V_gᵀdO_g, dS_g, dQ_g = K_g·dS_g, dK_g = Q_g·dS_gᵀ, dV_g = dO_g·P_gᵀ */
        const int32_t n = t->seq_len[s];
        const int64_t o = t->seq_off[s], gt = (int64_t)group * n, sq = gt * hd, skv = (int64_t)n * hd, sp = gt * n;
        const float *kh = (const float *)A->kh + o * kvd, *vh = (const float *)A->vh + o * kvd,
                    *qh = (const float *)A->qh + o * qd, *oh = t->oh + o * qd;
        TRY(sgb(t, CUBLAS_OP_T, CUBLAS_OP_N, n, (int)gt, hd, 1.0f, vh, hd, skv, oh, hd, sq, 0.0f, t->dP, n, sp, nkv, err,
                errn));
        dsoftmax_rows(t->s, t->dP, P, gt * nkv, n, scale);
        TRY(sgb(t, CUBLAS_OP_N, CUBLAS_OP_N, hd, (int)gt, n, 1.0f, kh, hd, skv, t->dP, n, sp, 0.0f, dqh + o * qd, hd, sq,
                nkv, err, errn));
        TRY(sgb(t, CUBLAS_OP_N, CUBLAS_OP_T, hd, n, (int)gt, 1.0f, qh, hd, sq, t->dP, n, sp, 0.0f, dkh + o * kvd, hd, skv,
                nkv, err, errn));
        TRY(sgb(t, CUBLAS_OP_N, CUBLAS_OP_T, hd, n, (int)gt, 1.0f, oh, hd, sq, P, n, sp, 0.0f, dvh + o * kvd, hd, skv, nkv,
                err, errn));
        P += (int64_t)nh * n * n;
    }
    prof_op(t, TP_ATT_B, t->flash ? "flash attention, backward" : "attention by cuBLAS, backward");
    dim3 gq(T, (nh + 2 * nkv + 3) / 4);
    const int qsm = 4 * hd * (int)sizeof(float);
    if (m->f32)
        tk_qkv_bwd<float><<<gq, 128, qsm, t->s>>>((float *)t->dqkv, dqh, dkh, dvh, L->q_norm, L->k_norm, A->qraw, A->kraw,
                                                  A->rq, A->rk, m->inv_freq, so, sl, nh, nkv, hd, qn, kv_parts, kvd * T);
    else
        tk_qkv_bwd<bf16><<<gq, 128, qsm, t->s>>>((bf16 *)t->dqkv, dqh, dkh, dvh, L->q_norm, L->k_norm, A->qraw, A->kraw,
                                                 A->rq, A->rk, m->inv_freq, so, sl, nh, nkv, hd, qn, kv_parts, kvd * T);
    prof_op(t, TP_ATT_B, "q|k|v post (norms, RoPE), backward");
    TRY(proj_bwd(t, l, TQKV, CQKV, 3, A->mid[0], f32_of(t, A->h1), A->h1, H, &L->wqkv, f32_of(t, t->dqkv), t->dqkv,
                 (int)qn, t->dh, !m->f32, 0, T, err, errn));
    norm_bwd(t, dx, t->dh, x, L->attn_norm, A->r1, T);
    prof_op(t, TP_ELT_B, "RMSNorm backward");
    return 0;
}

/* ------------------------------------------------------------------ session */

static void train_free(gpu_train *t) {
    if (!t) return;
    cudaSetDevice(t->m->dev);
    if (t->s) cudaStreamSynchronize(t->s);
    prof_free(t);
    if (t->blas) cublasDestroy(t->blas); /* before its workspace goes */
    if (t->lt) cublasLtDestroy(t->lt);
    free(t->tunes);
    for (int i = 0; i < t->n_allocs; i++) cudaFree(t->allocs[i]);
    account(-t->bytes);
    if (t->d_teach) {
        cudaFree(t->d_teach);
        account(-t->cap_teacher * 8);
    }
    if (t->s) cudaStreamDestroy(t->s);
    free(t->allocs);
    free(t->acts);
    free(t->mods);
    free(t->h_meta);
    free(t->seq_off);
    free(t->seq_len);
    free(t->h_rows);
    free(t->h_loss);
    free(t->h_ftiles);
    free(t);
}

static int acts_alloc(gpu_train *t, tacts *A, char *err, size_t errn) {
    const gpu_model *m = t->m;
    const int64_t T = t->T_max, S = t->S_max, H = m->H, hd = m->hd, nh = m->nh, nkv = m->nkv, F = m->F, qd = nh * hd,
                  kvd = nkv * hd, f = 4;
    const int qk = m->layers[0].q_norm != NULL;
    memset(A, 0, sizeof *A);
    const int64_t a = m->asz; /* the activation type's bytes */
    TA(A->h1, T * H * a); TA(A->r1, T * f);
    if (qk) {
        TA(A->qraw, T * qd * f); TA(A->kraw, T * kvd * f); TA(A->rq, T * nh * f); TA(A->rk, T * nkv * f);
    }
    const int64_t qb = t->flash ? 2 : 4; /* flash.cu takes q, k, v in BF16 */
    TA(A->qh, T * qd * qb); TA(A->kh, T * kvd * qb); TA(A->vh, T * kvd * qb);
    if (t->flash) TA(A->lse, nh * T * f);
    else TA(A->P, nh * T * S * f); /* Σ n_s² <= T·S */
    TA(A->att, T * qd * a);
    TA(A->xmid, T * H * f); TA(A->h2, T * H * a); TA(A->r2, T * f);
    TA(A->gu, T * 2 * F * (int64_t)m->asz);
    const int64_t r1 = t->max_r ? t->max_r : 1;
    TA(A->mid[0], T * 4 * r1 * f); /* q|k|v, then o */
    TA(A->mid[1], T * 2 * r1 * f); /* gate|up */
    TA(A->mid[2], T * r1 * f);     /* down */
    return 0;
}

/* Logit rows the LM head's GEMMs take at once: LOSS_ROWS_MAX, halved (down to LOSS_ROWS_MIN) while their
 * buffers — F32 logits and dlogits and the backward GEMM's input, 10 bytes a logit (12 on F32 models) —
 * would take more than 1/32 of the device or 1/8 of its free memory (1,024 rows: 1.5 GB at V = 152,064);
 * at most a pass. PRISM_CUDA_LOSS_ROWS=N: N rows (16..8,192; A/B measurements and tests). */
static int32_t loss_rows_for(int32_t max_tokens, int32_t V, int f32) {
    size_t fr = 0, tot = 0;
    if (cudaMemGetInfo(&fr, &tot) != cudaSuccess) cudaGetLastError(), fr = tot = 0;
    const double room = (double)tot / 32.0 < (double)fr / 8.0 ? (double)tot / 32.0 : (double)fr / 8.0;
    int32_t r = LOSS_ROWS_MAX;
    while (r > LOSS_ROWS_MIN && (double)r * V * (f32 ? 12.0 : 10.0) > room) r /= 2;
    const char *e = getenv("PRISM_CUDA_LOSS_ROWS");
    if (e && atoi(e) >= 16 && atoi(e) <= 8192) r = atoi(e);
    return max_tokens < r ? max_tokens : r;
}

static int train_new(gpu_model *m, const gpu_lora_desc *mods, int32_t max_tokens, int32_t max_seq, int32_t recompute,
                     gpu_train **out, char *err, size_t errn) {
    *out = NULL;
    CU(cudaSetDevice(m->dev), "cudaSetDevice");
    if (max_seq <= 0 || max_tokens < max_seq)
        return gpu_fail(err, errn, PRISM_GPU_E_ARG, "training passes of %d tokens, sequences of up to %d", max_tokens,
                        max_seq);
    gpu_train *t = (gpu_train *)calloc(1, sizeof *t);
    if (!t) return gpu_fail(err, errn, PRISM_GPU_E_NOMEM, "out of host memory");
    t->m = m;
    t->T_max = max_tokens;
    t->S_max = max_seq;
    t->loss_rows = loss_rows_for(max_tokens, m->V, m->f32);
    t->h_meta = (int32_t *)malloc((size_t)max_tokens * 4 * sizeof(int32_t));
    t->seq_off = (int32_t *)malloc((size_t)max_tokens * sizeof(int32_t));
    t->seq_len = (int32_t *)malloc((size_t)max_tokens * sizeof(int32_t));
    t->h_rows = (int32_t *)malloc((size_t)max_tokens * 3 * sizeof(int32_t));
    t->h_loss = (double *)malloc((size_t)max_tokens * sizeof(double));
    t->h_ftiles = (flash_tile *)malloc(((size_t)max_tokens + max_tokens / FLASH_TILE + 1) * sizeof(flash_tile));
    t->recompute = recompute != 0;
    { /* BF16 models: attention on tensor cores where the device and head size allow (PRISM_CUDA_FLASH=0: cuBLAS) */
        const char *e = getenv("PRISM_CUDA_FLASH");
        t->flash = !m->f32 && !(e && *e == '0') && flash_setup(m->hd, m->cc_major, m->smem_optin) == 0;
    }
    t->n_mods = m->n_layers * LT_N;
    t->mods = (tmod *)calloc((size_t)t->n_mods, sizeof *t->mods);
    t->first_adapted = m->n_layers;
    int rc = 0;
    if (!t->mods || !t->h_meta || !t->seq_off || !t->seq_len || !t->h_rows || !t->h_loss || !t->h_ftiles) {
        free(t->mods), free(t->h_meta), free(t->seq_off), free(t->seq_len), free(t->h_rows), free(t->h_loss);
        free(t->h_ftiles), free(t);
        return gpu_fail(err, errn, PRISM_GPU_E_NOMEM, "out of host memory");
    }
    /* per layer: every A in target order — so the adapted ones of q|k|v, and of
     * gate|up, are one (Σr, H) matrix (proj_fwd / proj_bwd) — then every B */
    for (int i = 0; i < t->n_mods; i++) {
        if (mods[i].r > 0) {
            tmod *d = &t->mods[i];
            d->r = mods[i].r, d->scale = mods[i].scale, d->in = (int32_t)mods[i].in, d->out = (int32_t)mods[i].out;
            d->offA = t->n_params;
            t->n_params += (int64_t)d->r * d->in;
            if (d->r > t->max_r) t->max_r = d->r;
            if (i / LT_N < t->first_adapted) t->first_adapted = i / LT_N;
        }
        if (i % LT_N == LT_N - 1) /* the layer's last target, adapted or not: the layer's Bs */
            for (int j = i - (LT_N - 1); j <= i; j++)
                if (t->mods[j].r) t->mods[j].offB = t->n_params, t->n_params += (int64_t)t->mods[j].r * t->mods[j].out;
    }
    const int64_t T = max_tokens, S = max_seq, H = m->H, hd = m->hd, nh = m->nh, nkv = m->nkv, F = m->F, V = m->V,
                  qd = nh * hd, kvd = nkv * hd, qn = qd + 2 * kvd, f = 4;
    int32_t r_down = 0, r_mlp = 0; /* the largest rank of an adapted down projection, of gate, up or down */
    for (int32_t l = 0; l < m->n_layers; l++) {
        const int32_t r = t->mods[l * LT_N + LT_DOWN].r, rg = t->mods[l * LT_N + LT_GATE].r,
                      ru = t->mods[l * LT_N + LT_UP].r;
        r_down = r > r_down ? r : r_down;
        r_mlp = r > r_mlp ? r : r_mlp, r_mlp = rg > r_mlp ? rg : r_mlp, r_mlp = ru > r_mlp ? ru : r_mlp;
    }
    { /* read when the session starts: PRISM_CUDA_FUSE=0, SwiGLU recomputed by its own kernel for a dA GEMM (and
       * no LoRA fusion); PRISM_CUDA_LORA_FUSE=1, the MLP's LoRA in the SwiGLU kernels instead of GEMMs (off by
       * default: the GEMMs measured 0.6-1.8% faster at 7B in four runs, two on an H100 and two on an H200) */
        const char *e = getenv("PRISM_CUDA_FUSE"), *e2 = getenv("PRISM_CUDA_LORA_FUSE");
        /* PRISM_CUDA_GU_REMAKE=1 (with the LoRA fusion, which it turns on): the forward writes gate|up's LoRA
         * terms nowhere (38.8 MB less per layer per 512 tokens at 7B), the backward adds them again (32
         * multiply-adds an element more); a diagnostic */
        const char *e3 = getenv("PRISM_CUDA_GU_REMAKE");
        const int remake = e3 && *e3 == '1';
        t->swb = r_down > 0 && r_down <= 64 && !(e && *e == '0');
        t->lfuse = r_mlp > 0 && r_mlp <= LF_R && !(e && *e == '0') && ((e2 && *e2 == '1') || remake);
        t->gu_remake = t->lfuse && remake;
    }
    cudaError_t ce = cudaStreamCreateWithFlags(&t->s, cudaStreamNonBlocking);
    if (ce != cudaSuccess) {
        train_free(t);
        return gpu_fail(err, errn, PRISM_GPU_E_DEVICE, "cudaStreamCreate: %s", cudaGetErrorString(ce));
    }
    if (cublasCreate(&t->blas) != CUBLAS_STATUS_SUCCESS || cublasSetStream(t->blas, t->s) != CUBLAS_STATUS_SUCCESS) {
        train_free(t);
        return gpu_fail(err, errn, PRISM_GPU_E_DEVICE, "cublasCreate failed");
    }
    { /* read when the session starts */
        const char *e = getenv("PRISM_CUDA_GEMM_TUNE");
        t->tune = e && (*e == '1' || *e == '2') && !m->f32 ? *e - '0' : 0;
        if (t->tune && cublasLtCreate(&t->lt) != CUBLAS_STATUS_SUCCESS) {
            train_free(t);
            return gpu_fail(err, errn, PRISM_GPU_E_DEVICE, "cublasLtCreate failed");
        }
    }
    prof_new(t);
#define TA2(ptr, n)                                                      \
    do {                                                                 \
        if ((rc = talloc(t, (void **)&(ptr), (size_t)(n), err, errn))) goto fail; \
    } while (0)
    TA2(t->blas_ws, (int64_t)GEMM_TUNE_WS);
    if (cublasSetWorkspace(t->blas, t->blas_ws, GEMM_TUNE_WS) != CUBLAS_STATUS_SUCCESS) {
        rc = gpu_fail(err, errn, PRISM_GPU_E_DEVICE, "cublasSetWorkspace failed");
        goto fail;
    }
    TA2(t->p, t->n_params * f); TA2(t->g, t->n_params * f); TA2(t->m1, t->n_params * f); TA2(t->m2, t->n_params * f);
    TA2(t->xs, (m->n_layers + 1) * T * H * f);
    t->n_acts = t->recompute ? 1 : m->n_layers;
    t->acts = (tacts *)calloc((size_t)t->n_acts, sizeof *t->acts);
    if (!t->acts) {
        rc = gpu_fail(err, errn, PRISM_GPU_E_NOMEM, "out of host memory");
        goto fail;
    }
    for (int i = 0; i < t->n_acts; i++)
        if ((rc = acts_alloc(t, &t->acts[i], err, errn))) goto fail;
    {
        int64_t wide = qn > 2 * F ? qn : 2 * F;
        wide = wide > H ? wide : H;
        /* dq|dk|dv head-major (flash.cu: dk, dv in a part per query head, 3 qd), da, or a recomputed layer's output */
        int64_t hdt = qn > F ? qn : F;
        hdt = hdt > H ? hdt : H;
        hdt = t->flash && 3 * qd > hdt ? 3 * qd : hdt;
        TA2(t->hf, T * H * f); TA2(t->rf, T * f); TA2(t->dx, T * H * f); TA2(t->dh, T * H * f);
        TA2(t->y, T * wide * f); TA2(t->datt, T * qd * f); TA2(t->dqkv, T * qn * (int64_t)m->asz);
        if (m->f32) TA2(t->dgu, T * 2 * F * f); /* BF16 models: dgu in BF16 only (abuf) */
        else TA2(t->dxb, T * H * 2);
        TA2(t->hd_tmp, T * hdt * f); TA2(t->ltmp, T * 3 * (t->max_r ? t->max_r : 1) * f);
        if (!t->flash) TA2(t->oh, T * qd * f); /* head-major O, then dO: the cuBLAS path */
        if (t->flash) {
            TA2(t->Drow, nh * T * f);
            TA2(t->d_ftiles, (T + T / FLASH_TILE + 1) * (int64_t)sizeof(flash_tile));
        } else {
            TA2(t->dP, nh * S * S * f);
        }
        if (m->f32) TA2(t->act, T * F * f); /* BF16 models keep silu(gate)·up in BF16 only (abuf) */
        if (t->swb || t->lfuse) { /* the most chunks a pass of up to T rows makes (swb_rows) */
            int64_t nc = 1;
            for (int32_t n = 1; n <= T; n++) {
                const int64_t rows = swb_rows(t, n), c = (n + rows - 1) / rows;
                nc = c > nc ? c : nc;
            }
            /* lfuse: r_down + r_gate + r_up <= 3 LF_R a layer (and no layer takes tk_swiglu_bwd_da) */
            TA2(t->dpart, nc * (t->lfuse ? 3 * LF_R : r_down) * F * f);
        }
        int64_t aw = wide > F ? wide : F;
        aw = aw > qd ? aw : qd;
        TA2(t->abuf, T * aw * (int64_t)m->asz);
        if (!m->f32 && t->max_r) {
            int64_t mo = qd > kvd ? qd : kvd; /* widest output and input of an adapted projection */
            mo = mo > H ? mo : H;
            mo = mo > F ? mo : F;
            const int64_t r3 = 3 * (int64_t)t->max_r;
            TA2(t->lb_mid, T * r3 * 2 * 2);
            t->lb_tmp = t->lb_mid + T * r3;
            TA2(t->pb, t->n_params * 2);
            t->pb_stale = 1;
            const char *e = getenv("PRISM_CUDA_LORA_SPLIT"); /* read when the session starts */
            t->lora_split = e && *e == '0' ? 0 : e && *e == '2' ? 2 : 1;
            e = getenv("PRISM_CUDA_LORA_SPLIT_MIN_K");
            t->lora_min_k = e && atoi(e) >= 1 ? atoi(e) : 256;
            /* dB: r × out, dA: in × Σr (mo bounds both); with 2, also mid and tmp: T × Σr */
            if (t->lora_split) TA2(t->lpart, 8 * r3 * (t->lora_split == 2 && T > mo ? T : mo) * f);
        }
        { /* read when the session starts */
            const char *e = getenv("PRISM_CUDA_FROZEN_SPLIT");
            const int s = e ? atoi(e) : 0;
            t->frozen_split = s >= 2 && s <= 8 ? s : 1;
            if (t->frozen_split > 1) TA2(t->fpart, t->frozen_split * T * H * f);
        }
        const int64_t lr = t->loss_rows;
        TA2(t->logits, lr * V * f); TA2(t->dlogits, lr * V * f);
        { /* dh = dlogits·W_lm has a small output (loss rows × H) and K = V: split over V so that the partial
           * products fill the GPU (~2 tiles of 128 × 128 per SM), summed in order by tk_scatter_add */
            t->lm_split = k_slices(t, H, lr, V, 1024);
            const char *e = getenv("PRISM_CUDA_LM_SPLIT"); /* A/B measurements and tests: this many slices */
            if (e && atoi(e) >= 1 && atoi(e) <= 64 && atoi(e) <= V) t->lm_split = atoi(e);
        }
        TA2(t->drows, t->lm_split * lr * H * f);
        TA2(t->hrows, lr * (V > H ? V : H) * (int64_t)m->asz);
        TA2(t->row_loss, T * 8); TA2(t->norm_part, 1024 * 8);
        TA2(t->d_tok, T * 4 * 4); /* tokens | labels | sofs | slen */
        t->d_labels = t->d_tok + T, t->d_sofs = t->d_tok + 2 * T, t->d_slen = t->d_tok + 3 * T;
        TA2(t->d_rows, T * 2 * 4); TA2(t->d_terms, T * 4); /* rows: the loss rows, then logits_out's */
    }
#undef TA2
    k_fill_f32(t->s, t->p, t->n_params, 0.0f);
    k_fill_f32(t->s, t->g, t->n_params, 0.0f);
    k_fill_f32(t->s, t->m1, t->n_params, 0.0f);
    k_fill_f32(t->s, t->m2, t->n_params, 0.0f);
    ce = cudaStreamSynchronize(t->s);
    if (ce != cudaSuccess) {
        rc = gpu_fail(err, errn, PRISM_GPU_E_DEVICE, "LoRA training setup: %s", cudaGetErrorString(ce));
        goto fail;
    }
    *out = t;
    return 0;
fail:
    train_free(t);
    return rc;
}

static float *which_buf(gpu_train *t, int32_t which) {
    return which == GPU_TRAIN_PARAMS ? t->p : which == GPU_TRAIN_GRADS ? t->g : which == GPU_TRAIN_M ? t->m1 : t->m2;
}

static int train_set(gpu_train *t, int32_t which, const gpu_lora_desc *mods, char *err, size_t errn) {
    CU(cudaSetDevice(t->m->dev), "cudaSetDevice");
    CU(cudaStreamSynchronize(t->s), "training");
    float *b = which_buf(t, which);
    if (which == GPU_TRAIN_PARAMS) t->pb_stale = 1; /* before any copy: a failure half-way leaves it stale too */
    for (int i = 0; i < t->n_mods; i++) {
        const tmod *d = &t->mods[i];
        if (!d->r) continue;
        if (mods[i].r != d->r || mods[i].in != d->in || mods[i].out != d->out)
            return gpu_fail(err, errn, PRISM_GPU_E_ARG, "module %d does not match the training session's shapes", i);
        CU(cudaMemcpy(b + d->offA, mods[i].A, (size_t)d->r * d->in * 4, cudaMemcpyHostToDevice), "uploading LoRA");
        CU(cudaMemcpy(b + d->offB, mods[i].B, (size_t)d->r * d->out * 4, cudaMemcpyHostToDevice), "uploading LoRA");
    }
    return 0;
}

static int train_get(gpu_train *t, int32_t which, const gpu_lora_dst *dst, char *err, size_t errn) {
    CU(cudaSetDevice(t->m->dev), "cudaSetDevice");
    CU(cudaStreamSynchronize(t->s), "training");
    const float *b = which_buf(t, which);
    for (int i = 0; i < t->n_mods; i++) {
        const tmod *d = &t->mods[i];
        if (!d->r) continue;
        CU(cudaMemcpy(dst[i].A, b + d->offA, (size_t)d->r * d->in * 4, cudaMemcpyDeviceToHost), "downloading LoRA");
        CU(cudaMemcpy(dst[i].B, b + d->offB, (size_t)d->r * d->out * 4, cudaMemcpyDeviceToHost), "downloading LoRA");
    }
    return 0;
}

static int train_zero_grad(gpu_train *t, char *err, size_t errn) {
    CU(cudaSetDevice(t->m->dev), "cudaSetDevice");
    k_fill_f32(t->s, t->g, t->n_params, 0.0f);
    CU(cudaGetLastError(), "zeroing gradients");
    return 0;
}

/* t->logits (n, V) = the LM head on the final-normed rows rows[0..n) (device). */
static int head_rows(gpu_train *t, const int32_t *rows, int32_t n, char *err, size_t errn) {
    const gpu_model *m = t->m;
    const int32_t H = m->H, V = m->V;
    k_gather_rows(t->s, m->f32, t->hrows, t->hf, rows, n, H);
    const cudaDataType at = m->f32 ? CUDA_R_32F : CUDA_R_16BF;
    BL(cublasGemmEx(t->blas, CUBLAS_OP_T, CUBLAS_OP_N, V, n, H, &ONE, m->lm_head, at, H, t->hrows, at, H, &ZERO,
                    t->logits, CUDA_R_32F, V, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    return 0;
}

/* Loss rows r0 .. r0 + n of the pass (t->d_rows, t->d_terms): logits, per-row
 * loss into row_loss[r0 ..], dlogits·W_lm added into the rows of dhf. */
static int loss_chunk(gpu_train *t, int32_t r0, int32_t n, int32_t kind, int32_t k, float temp, float *dhf, char *err,
                      size_t errn) {
    const gpu_model *m = t->m;
    const int32_t H = m->H, V = m->V;
    const int32_t *rows = t->d_rows + r0;
    TRY(head_rows(t, rows, n, err, errn));
    prof_op(t, TP_LOSS, "loss: LM head GEMM (rows gathered), forward");
    const cudaDataType at = m->f32 ? CUDA_R_32F : CUDA_R_16BF;
    bf16 *dlb = !m->f32 && kind == 0 ? (bf16 *)t->hrows : NULL; /* CE writes the GEMM's BF16 input itself */
    tk_loss<<<n, 256, 0, t->s>>>(t->logits, t->dlogits, dlb, t->row_loss + r0, rows, t->d_terms + r0, t->d_labels,
                                 t->d_tval, t->d_tidx, V, kind, k, temp);
    const void *dl = dlb ? (const void *)dlb : t->dlogits;
    if (!m->f32 && !dlb) {
        tk_to<bf16><<<1024, 256, 0, t->s>>>((bf16 *)t->hrows, t->dlogits, (int64_t)n * V);
        dl = t->hrows;
    }
    prof_op(t, TP_LOSS, "loss: softmax, CE/KL and dlogits");
    /* drows_b (H, n) = W_lm[V_b]ᵀ·dlogits[V_b] for vocabulary slices b of V / lm_split (the last one longer) */
    TRY(gemm_k_parts(t, CUBLAS_OP_N, CUBLAS_OP_N, H, n, V, t->lm_split, 1.0f, m->lm_head, H, H, dl, V, 1, at,
                     m->f32 ? 4 : 2, t->drows, err, errn));
    tk_scatter_add<<<n, 256, 0, t->s>>>(dhf, t->drows, rows, H, n, t->lm_split);
    prof_op(t, TP_LOSS, "loss: LM head GEMM, backward (+ scatter)");
    return 0;
}

/* KL loss rows r0 .. r0 + n, all of one k and temperature, by tk_kl_sparse. */
static int loss_kl_sparse(gpu_train *t, int32_t r0, int32_t n, int32_t k, float temp, float *dhf, char *err,
                          size_t errn) {
    const gpu_model *m = t->m;
    const size_t smem = (size_t)k * 12;
    if (m->f32)
        tk_kl_sparse<float><<<n, 256, smem, t->s>>>(t->hf, (const float *)m->lm_head, dhf, t->row_loss + r0,
                                                   t->d_rows + r0, t->d_terms + r0, t->d_tval, t->d_tidx, m->H, k, temp);
    else
        tk_kl_sparse<bf16><<<n, 256, smem, t->s>>>(t->hf, (const bf16 *)m->lm_head, dhf, t->row_loss + r0,
                                                  t->d_rows + r0, t->d_terms + r0, t->d_tval, t->d_tidx, m->H, k, temp);
    CU(cudaGetLastError(), "top-k KL loss");
    prof_op(t, TP_LOSS, "loss: sparse top-k KL");
    return 0;
}

/* The teacher top-k buffers hold at least need values and indices. */
static int teacher_cap(gpu_train *t, int64_t need, char *err, size_t errn) {
    if (need <= t->cap_teacher) return 0;
    if (t->d_teach) {
        cudaFree(t->d_teach);
        account(-t->cap_teacher * 8);
        t->d_teach = NULL, t->d_tval = NULL, t->d_tidx = NULL, t->cap_teacher = 0;
    }
    cudaError_t e = cudaMalloc(&t->d_teach, (size_t)need * 8);
    if (e != cudaSuccess) {
        t->d_teach = NULL;
        cudaGetLastError();
        return gpu_fail(err, errn, PRISM_GPU_E_NOMEM, "LoRA training: %.1f MiB for the teacher's top-k: %s",
                        need * 8 / 1048576.0, cudaGetErrorString(e));
    }
    account(need * 8);
    t->d_tval = (float *)t->d_teach, t->d_tidx = (int32_t *)((float *)t->d_teach + need), t->cap_teacher = need;
    return 0;
}

/* Forward and backward of n sequences packed into one pass (see the top). */
static int train_batch(gpu_train *t, const gpu_train_example *exs, int32_t n_ex, double *loss_sum, int64_t *count,
                       float *logits_out, char *err, size_t errn) {
    gpu_model *m = t->m;
    const int32_t H = m->H, V = m->V, L = m->n_layers;
    *loss_sum = 0;
    *count = 0;
    CU(cudaSetDevice(m->dev), "cudaSetDevice");
    if (n_ex <= 0) return gpu_fail(err, errn, PRISM_GPU_E_ARG, "training pass of %d sequences", n_ex);
    int64_t T64 = 0, need = 0;
    for (int32_t e = 0; e < n_ex; e++) {
        const gpu_train_example *ex = &exs[e];
        if (ex->n_tokens <= 0 || ex->n_tokens > t->S_max)
            return gpu_fail(err, errn, PRISM_GPU_E_ARG, "training sequence of %d tokens (the session holds %d)",
                            ex->n_tokens, t->S_max);
        if (ex->loss && (ex->k <= 0 || ex->n_pos < 0 || ex->n_pos > ex->n_tokens))
            return gpu_fail(err, errn, PRISM_GPU_E_ARG, "KL sequence with k %d at %d positions", ex->k, ex->n_pos);
        T64 += ex->n_tokens;
        if (ex->loss) need += (int64_t)ex->n_pos * ex->k;
    }
    if (T64 > t->T_max)
        return gpu_fail(err, errn, PRISM_GPU_E_ARG, "training pass of %lld tokens (the session holds %d)",
                        (long long)T64, t->T_max);
    if (need > INT32_MAX) return gpu_fail(err, errn, PRISM_GPU_E_ARG, "%lld teacher top-k values in one pass", (long long)need);
    const int32_t T = (int32_t)T64;
    t->n_seq = n_ex;
    /* tokens | labels | sofs | slen, as on the device; loss rows and their teacher offsets */
    const int64_t TM = t->T_max;
    int32_t *tok = t->h_meta, *lab = tok + TM, *sofs = tok + 2 * TM, *slen = tok + 3 * TM;
    int32_t *rows = t->h_rows, *terms = rows + T;
    int32_t o = 0, nr = 0;
    int64_t toff = 0;
    for (int32_t e = 0; e < n_ex; e++) {
        const gpu_train_example *ex = &exs[e];
        const int32_t n = ex->n_tokens;
        t->seq_off[e] = o, t->seq_len[e] = n;
        memcpy(tok + o, ex->tokens, (size_t)n * 4);
        for (int32_t i = 0; i < n; i++) {
            lab[o + i] = ex->loss == 0 ? ex->labels[i] : -100;
            sofs[o + i] = o, slen[o + i] = n;
        }
        if (ex->loss == 0) {
            for (int32_t p = 0; p + 1 < n; p++)
                if (ex->labels[p + 1] != -100) rows[nr] = o + p, terms[nr++] = 0;
        } else {
            for (int32_t p = 0; p < ex->n_pos; p++) rows[nr] = o + ex->positions[p], terms[nr++] = (int32_t)(toff + (int64_t)p * ex->k);
            toff += (int64_t)ex->n_pos * ex->k;
        }
        o += n;
    }
    for (int i = 0; i < 4; i++)
        CU(cudaMemcpyAsync(t->d_tok + i * TM, tok + i * TM, (size_t)T * 4, cudaMemcpyHostToDevice, t->s), "tokens");
    if (t->flash) {
        t->n_ftiles = 0;
        for (int32_t e = 0; e < n_ex; e++)
            for (int32_t p = 0; p < t->seq_len[e]; p += FLASH_TILE)
                t->h_ftiles[t->n_ftiles++] = (flash_tile){t->seq_off[e], t->seq_len[e], p};
        CU(cudaMemcpyAsync(t->d_ftiles, t->h_ftiles, (size_t)t->n_ftiles * sizeof(flash_tile), cudaMemcpyHostToDevice,
                           t->s),
           "attention tiles");
    }
    if (nr) {
        CU(cudaMemcpyAsync(t->d_rows, rows, (size_t)nr * 4, cudaMemcpyHostToDevice, t->s), "loss rows");
        CU(cudaMemcpyAsync(t->d_terms, terms, (size_t)nr * 4, cudaMemcpyHostToDevice, t->s), "loss rows");
    }
    TRY(teacher_cap(t, need, err, errn));
    toff = 0;
    for (int32_t e = 0; e < n_ex; e++) {
        const gpu_train_example *ex = &exs[e];
        const int64_t k = (int64_t)ex->n_pos * ex->k;
        if (!ex->loss || !k) continue;
        CU(cudaMemcpyAsync(t->d_tval + toff, ex->teacher_values, (size_t)k * 4, cudaMemcpyHostToDevice, t->s), "teacher");
        CU(cudaMemcpyAsync(t->d_tidx + toff, ex->teacher_indices, (size_t)k * 4, cudaMemcpyHostToDevice, t->s), "teacher");
        toff += k;
    }
    /* forward */
    prof_mark(t, TP_OTHER);
    if (t->pb && t->pb_stale) { /* LoRA's parameters changed since the last pass: their BF16 copy */
        to_bf(t, t->pb, t->p, t->n_params);
        t->pb_stale = 0;
        prof_op(t, TP_OTHER, "LoRA parameters to BF16 (after a change)");
    }
    k_embed(t->s, m->f32, t->xs, m->embed, t->d_tok, T, H);
    prof_mark(t, TP_EMBED_NORM);
    const int64_t stride = (int64_t)t->T_max * H;
    for (int32_t l = 0; l < L; l++)
        TRY(layer_fwd(t, l, &t->acts[t->recompute ? 0 : l], t->xs + l * stride, t->xs + (l + 1) * stride, T, err, errn));
    const float *xl = t->xs + (int64_t)L * stride;
    tk_norm_fwd<float><<<T, 256, 0, t->s>>>(t->hf, t->rf, xl, m->final_norm, H, m->eps);
    prof_mark(t, TP_EMBED_NORM);
    /* loss rows in chunks of one kind (CE, or KL of one k and temperature); dhf accumulates in dh */
    k_fill_f32(t->s, t->dh, (int64_t)T * H, 0.0f);
    for (int32_t e = 0, r = 0; e < n_ex;) {
        const gpu_train_example *ex = &exs[e];
        int32_t f = e, n = 0; /* examples [e, f) of the same kind: rows [r, r + n) */
        while (f < n_ex && exs[f].loss == ex->loss &&
               (!ex->loss || (exs[f].k == ex->k && exs[f].temperature == ex->temperature))) {
            if (exs[f].loss == 0) {
                for (int32_t p = 0; p + 1 < exs[f].n_tokens; p++) n += exs[f].labels[p + 1] != -100;
            } else {
                n += exs[f].n_pos;
            }
            f++;
        }
        if (ex->loss && ex->k <= KL_SPARSE_MAX_K && !logits_out) { /* with logits_out: the dense path, as on the CPU */
            if (n) TRY(loss_kl_sparse(t, r, n, ex->k, ex->temperature, t->dh, err, errn));
        } else {
            for (int32_t c = 0; c < n; c += t->loss_rows)
                TRY(loss_chunk(t, r + c, n - c < t->loss_rows ? n - c : t->loss_rows, ex->loss, ex->k,
                               ex->temperature, t->dh, err, errn));
        }
        r += n, e = f;
    }
    if (logits_out) { /* every row's logits (the scored ones were computed above too, but not kept) */
        for (int32_t t0 = 0; t0 < T; t0 += t->loss_rows) {
            const int32_t tn = T - t0 < t->loss_rows ? T - t0 : t->loss_rows;
            int32_t *lr = rows + 2 * T; /* device rows nr ..: after the loss rows */
            for (int32_t i = 0; i < tn; i++) lr[i] = t0 + i;
            CU(cudaMemcpyAsync(t->d_rows + nr, lr, (size_t)tn * 4, cudaMemcpyHostToDevice, t->s), "rows");
            TRY(head_rows(t, t->d_rows + nr, tn, err, errn));
            CU(cudaMemcpyAsync(logits_out + (int64_t)t0 * V, t->logits, (size_t)tn * V * 4, cudaMemcpyDeviceToHost, t->s),
               "logits");
            CU(cudaStreamSynchronize(t->s), "logits");
        }
    }
    prof_mark(t, TP_LOSS);
    if (nr) CU(cudaMemcpyAsync(t->h_loss, t->row_loss, (size_t)nr * 8, cudaMemcpyDeviceToHost, t->s), "loss");
    if (t->prof) t->prof->examples += n_ex;
    if (t->first_adapted < L) {
        /* backward */
        tk_norm_bwd<float><<<T, 256, 0, t->s>>>(t->dx, t->dxb, t->dh, xl, m->final_norm, t->rf, H, 0); /* the loss's dh */
        prof_mark(t, TP_EMBED_NORM);
        for (int32_t l = L - 1; l >= t->first_adapted; l--) {
            tacts *A = &t->acts[t->recompute ? 0 : l];
            const float *xin = t->xs + l * stride;
            if (t->recompute) TRY(layer_fwd(t, l, A, xin, t->hd_tmp, T, err, errn)); /* output unused */
            TRY(layer_bwd(t, l, A, xin, T, err, errn));
        }
    }
    CU(cudaGetLastError(), "LoRA training pass (a kernel launch)"); /* on the pass that caused it, not the next call */
    CU(cudaStreamSynchronize(t->s), "LoRA training pass");
    double loss = 0;
    for (int32_t i = 0; i < nr; i++) loss += t->h_loss[i];
    *loss_sum = loss;
    *count = nr;
    prof_flush(t, 0);
    if (t->prof && t->prof->passes++ == 0) { /* the first pass's share, to be left out if more follow */
        struct tprof *P = t->prof;
        memcpy(P->first_ms, P->ms, sizeof P->ms);
        memcpy(P->first_op_ms, P->op_ms, sizeof P->op_ms);
        memcpy(P->first_op_calls, P->op_calls, sizeof P->op_calls);
        P->first_examples = P->examples, P->first_ops = P->n_ops;
    }
    return 0;
}

static int train_scale_norm(gpu_train *t, double scale, double *norm, char *err, size_t errn) {
    CU(cudaSetDevice(t->m->dev), "cudaSetDevice");
    const int blocks = 1024;
    prof_mark(t, TP_OTHER);
    tk_scale_sumsq<<<blocks, 256, 0, t->s>>>(t->g, t->n_params, (float)scale, t->norm_part);
    double part[1024];
    CU(cudaMemcpyAsync(part, t->norm_part, sizeof part, cudaMemcpyDeviceToHost, t->s), "gradient norm");
    CU(cudaStreamSynchronize(t->s), "gradient norm");
    double ss = 0;
    for (int i = 0; i < blocks; i++) ss += part[i];
    *norm = sqrt(ss);
    return 0;
}

static int train_adamw(gpu_train *t, double gscale, double lr, double beta1, double beta2, double eps, double wd,
                       int64_t step, char *err, size_t errn) {
    CU(cudaSetDevice(t->m->dev), "cudaSetDevice");
    const double bc1 = 1.0 - pow(beta1, (double)step), bc2 = 1.0 - pow(beta2, (double)step);
    tk_adamw<<<grid_for(t->n_params), 256, 0, t->s>>>(t->p, t->g, t->m1, t->m2, t->n_params, (float)gscale,
                                                      (float)(1.0 - lr * wd), wd != 0, (float)(1.0 - beta1),
                                                      (float)beta2, (float)(1.0 - beta2), (float)(lr / bc1),
                                                      (float)sqrt(bc2), (float)eps);
    prof_mark(t, TP_OPT);
    t->pb_stale = 1;
    CU(cudaGetLastError(), "AdamW");
    return 0;
}

void gpu_train_api(prism_gpu_api *api) {
    api->train_new = train_new;
    api->train_free = train_free;
    api->train_set = train_set;
    api->train_get = train_get;
    api->train_zero_grad = train_zero_grad;
    api->train_batch = train_batch;
    api->train_scale_norm = train_scale_norm;
    api->train_adamw = train_adamw;
}
