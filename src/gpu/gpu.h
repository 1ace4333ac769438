/* gpu.h — the boundary between libprism (C11, no CUDA dependency) and the
 * CUDA module prism-cuda.so (src/cuda/), which is built only where nvcc is
 * found and loaded with dlopen when a model is loaded with a CUDA device.
 *
 * Everything that crosses this boundary is plain data: the host describes a
 * model (config scalars + pointers to its weights in the mmap) and each batch
 * (token, position, sequence, adapter per token); the module owns every
 * device buffer. Fallible calls return a prism_status value and write a
 * message into err (errn bytes); the host turns it into prism_last_error().
 *
 * This header is included from C and from CUDA C++: keep it to plain structs. */
#ifndef PRISM_GPU_GPU_H
#define PRISM_GPU_GPU_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define PRISM_GPU_ABI 6

/* Status codes: the values of prism_status (checked in device.c). */
enum { PRISM_GPU_OK = 0, PRISM_GPU_E_UNSUPPORTED = 3, PRISM_GPU_E_ARG = 4, PRISM_GPU_E_NOMEM = 5, PRISM_GPU_E_RANGE = 6,
       PRISM_GPU_E_DEVICE = 7 /* reported as PRISM_E_UNSUPPORTED with the CUDA error */ };

/* Weight dtypes as stored on the host (converted to BF16 on upload). */
enum { GPU_DT_F32 = 0, GPU_DT_F16 = 1, GPU_DT_BF16 = 2 };

/* A Linear weight [out, in] in HF layout; w == NULL with random_init. */
typedef struct {
    const void *w;
    int32_t dt;
    int64_t out, in;
} gpu_linear;

typedef struct {
    gpu_linear wq, wk, wv, wo, wg, wu, wd;
    const float *attn_norm, *ffn_norm; /* (H) */
    const float *q_norm, *k_norm;      /* (head_dim), Qwen3; NULL otherwise */
    const float *bq, *bk, *bv, *bo;    /* biases or NULL */
    const float *bg, *bu, *bd;
} gpu_layer_desc;

typedef struct {
    int32_t n_layers, hidden, n_heads, n_kv_heads, head_dim, ffn, vocab;
    int32_t sliding_window; /* 0 = none */
    float rms_eps;
    const float *rope_inv_freq; /* (head_dim / 2), scaling already applied */
    gpu_linear embed, lm_head;  /* lm_head.w == embed.w when tied */
    int32_t tied;
    const float *final_norm;
    const gpu_layer_desc *layers; /* (n_layers) */
    /* Benchmarks: weights are NULL and the module fills them on the device
     * with reproducible uniform noise (norm scales 1, no biases). */
    int32_t random_init;
    uint64_t seed;
    /* 1: F32 weights, activations and KV cache (PRISM_PRECISION_EXACT);
     * 0: BF16 (PRISM_PRECISION_FAST, tensor cores) */
    int32_t f32;
} gpu_model_desc;

/* One adapted projection of one layer; r == 0 = not adapted. */
typedef struct {
    int32_t r;
    float scale;
    int64_t in, out;
    const float *A; /* (r, in) */
    const float *B; /* (out, r) */
} gpu_lora_desc;

typedef struct gpu_model gpu_model;
typedef struct gpu_ctx gpu_ctx;
typedef struct gpu_adapter gpu_adapter;
typedef struct gpu_train gpu_train;
typedef struct gpu_gate gpu_gate;

/* The PRISM gate (src/prism/gate.h): in → h1 → h2 → 1, p = its parameters in gate_mlp's order, contiguous:
 * mu, sigma (in each), w1 (h1, in), b1 (h1), w2 (h2, h1), b2 (h2), w3 (h2), b3 (1). */
typedef struct {
    int32_t in, h1, h2;
    const float *p;
} gpu_gate_desc;

/* Destination of a download: per module (n_layers, 7), A (r, in) and B (out, r). */
typedef struct {
    float *A, *B;
} gpu_lora_dst;

/* One training sequence (see src/train/grad.h for the losses). */
typedef struct {
    int32_t loss; /* 0 = masked CE, 1 = top-k KL */
    int32_t n_tokens;
    const int32_t *tokens;
    const int32_t *labels; /* CE (n_tokens), -100 = ignored; logits at t score labels[t + 1] */
    int32_t n_pos, k;      /* KL */
    const int32_t *positions;
    const float *teacher_values;
    const int32_t *teacher_indices;
    float temperature;
} gpu_train_example;

/* What a training session holds on the device, by index for train_get/train_set. */
enum { GPU_TRAIN_PARAMS = 0, GPU_TRAIN_GRADS = 1, GPU_TRAIN_M = 2, GPU_TRAIN_V = 3 };

/* One batch, as prism_batch after validation; adapter[i] is the adapter of
 * token i's sequence (NULL = base model). */
typedef struct {
    int32_t n_tokens;
    const int32_t *token, *pos, *seq;
    const gpu_adapter *const *adapter;
} gpu_batch;

typedef struct {
    char name[128];
    int32_t cc_major, cc_minor, n_sm;
    int64_t mem_total, mem_free;
    int32_t driver_version, runtime_version;
} gpu_device_info;

typedef struct prism_gpu_api {
    int32_t abi; /* PRISM_GPU_ABI */
    const char *build; /* e.g. "CUDA 13.0, sm_80 sm_86 sm_89 sm_90" */
    int (*device_count)(int32_t *n, char *err, size_t errn);
    int (*device_info)(int32_t device, gpu_device_info *info, char *err, size_t errn);

    int (*model_new)(const gpu_model_desc *d, int32_t device, gpu_model **out, char *err, size_t errn);
    void (*model_free)(gpu_model *m);
    /* Device bytes held by the model and every context and adapter made from
     * it: now and at most so far. */
    void (*model_memory)(const gpu_model *m, int64_t *now, int64_t *peak);

    int (*adapter_new)(gpu_model *m, const gpu_lora_desc *mods /* (n_layers, 7) */, gpu_adapter **out, char *err,
                       size_t errn);
    void (*adapter_free)(gpu_adapter *a);

    int (*ctx_new)(gpu_model *m, int32_t n_seq_max, int32_t n_ctx, int32_t n_batch, gpu_ctx **out, char *err,
                   size_t errn);
    void (*ctx_free)(gpu_ctx *c);
    /* Layers [lb, le) of the batch. lb == 0 starts from the embeddings unless
     * x_in (n_tokens, H, host F32) is given; lb > 0 continues the residual
     * stream of the previous call on the same batch, or starts from x_in. */
    int (*forward)(gpu_ctx *c, const gpu_batch *b, int32_t lb, int32_t le, const float *x_in, char *err,
                   size_t errn);
    /* Final norm of every row (in place, so hidden() then gives the normed
     * state), then the LM head for batch rows rows[0..n_out), kept on the
     * device with each row's argmax. */
    int (*head)(gpu_ctx *c, const int32_t *rows, int32_t n_out, char *err, size_t errn);
    /* The last head's logits (n_out, vocab) copied to pinned host memory owned
     * by the context, valid until the next head call. */
    int (*logits)(gpu_ctx *c, const float **out, char *err, size_t errn);
    /* The last head's per-row argmax (first index of the maximum) into out (n_out). */
    int (*argmax)(gpu_ctx *c, int32_t *out, char *err, size_t errn);
    /* For each of the last head's rows r: a draw from softmax(logits_r · inv_t[r]) at the uniform u[r], as
     * prism_sample_softmax draws on the host (rows with inv_t[r] <= 0: -1), into out (n_out); the logits
     * stay on the device. */
    int (*sample)(gpu_ctx *c, const float *inv_t, const double *u, int32_t *out, char *err, size_t errn);
    /* Residual stream rows [i0, i0 + n) of the last batch into out (n, H). */
    int (*hidden)(gpu_ctx *c, int32_t i0, int32_t n, float *out, char *err, size_t errn);
    /* LoRA training of one adapter shaped like mods (values unused here):
     * passes of up to max_tokens tokens, sequences of up to max_seq of them
     * (max_seq <= max_tokens); its parameters, gradients and AdamW moments
     * live on the device (zero until set). recompute: keep only each layer's
     * input and recompute its internals before its backward. */
    int (*train_new)(gpu_model *m, const gpu_lora_desc *mods, int32_t max_tokens, int32_t max_seq, int32_t recompute,
                     gpu_train **out, char *err, size_t errn);
    void (*train_free)(gpu_train *t);
    /* Upload (set) or download (get) parameters, gradients or moments (GPU_TRAIN_*);
     * set reads mods[i].A / .B, get writes dst[i].A / .B, for adapted modules. */
    int (*train_set)(gpu_train *t, int32_t which, const gpu_lora_desc *mods, char *err, size_t errn);
    int (*train_get)(gpu_train *t, int32_t which, const gpu_lora_dst *dst, char *err, size_t errn);
    int (*train_zero_grad)(gpu_train *t, char *err, size_t errn);
    /* Forward + backward of n sequences in one pass (their tokens summed at
     * most max_tokens): adds d(loss_sum)/dθ into the device gradients;
     * *loss_sum and *count as train_example_grad, over all n; logits_out
     * (host, Σ n_tokens x vocab, sequence after sequence) receives the student
     * logits when not NULL. */
    int (*train_batch)(gpu_train *t, const gpu_train_example *ex, int32_t n, double *loss_sum, int64_t *count,
                       float *logits_out, char *err, size_t errn);
    /* Gradients *= scale, then *norm = their global 2-norm. */
    int (*train_scale_norm)(gpu_train *t, double scale, double *norm, char *err, size_t errn);
    /* torch.optim.AdamW step number `step` (1-based) on the gradients times grad_scale. */
    int (*train_adamw)(gpu_train *t, double grad_scale, double lr, double beta1, double beta2, double eps,
                       double weight_decay, int64_t step, char *err, size_t errn);

    /* Benchmarks: device-to-device copies of `bytes`, best of `reps`, timed
     * with CUDA events; *gbps counts bytes read plus bytes written. Resets
     * model_memory's peak to the current use. */
    int (*copy_bandwidth)(int32_t device, int64_t bytes, int32_t reps, double *gbps, char *err, size_t errn);

    /* The PRISM gate on the device (in == the model's hidden size). */
    int (*gate_new)(gpu_model *m, const gpu_gate_desc *d, gpu_gate **out, char *err, size_t errn);
    void (*gate_free)(gpu_gate *g);
    /* The gate's logit at residual-stream rows rows[0..n) of the last batch, after the layers run so far
     * (routing: layer 0), into out (n, host). */
    int (*gate_logits)(gpu_ctx *c, const gpu_gate *g, const int32_t *rows, int32_t n, float *out, char *err,
                       size_t errn);

    /* Benchmarks: one cuBLAS GEMM as the trainer calls them, C (m × n, F32 or cbf BF16) = op(A)·B + beta·C
     * from BF16 operands with F32 accumulation (op(A) = Aᵀ with ta); *ms the mean of reps calls issued back
     * to back. lt > 0: instead the same product by each of the first lt algorithms cuBLASLt's heuristic
     * proposes, *ms the fastest one's mean, *pick its rank (0: the heuristic's first choice) — what choosing
     * by measurement could gain over cuBLAS's default. */
    int (*gemm_bench)(int32_t device, int32_t ta, int32_t m, int32_t n, int32_t k, int32_t cbf, float beta, int32_t reps,
                      int32_t lt, double *ms, int32_t *pick, char *err, size_t errn);
} prism_gpu_api;

/* The module's one exported symbol. */
typedef const prism_gpu_api *(*prism_gpu_api_fn)(void);
#define PRISM_GPU_API_SYMBOL "prism_gpu_api_get"

#ifdef __cplusplus
}
#endif
#endif
