/* forward.h — the inference context (KV cache + activations) behind prism_ctx. */
#ifndef PRISM_MODEL_FORWARD_H
#define PRISM_MODEL_FORWARD_H

#include "lora/lora.h"
#include "model/model.h"

struct prism_ctx {
    prism_model *m;
    prism_ctx_params p;
    int64_t kv_dim;        /* n_kv_heads * head_dim */
    float **k_cache;       /* [n_layers] -> (n_seq_max, n_ctx, kv_dim) */
    float **v_cache;       /* [n_layers] -> (n_seq_max, n_ctx, kv_dim) */
    int32_t *seq_len;      /* (n_seq_max) cached positions per sequence */
    int32_t *seq_tok;      /* (n_seq_max, n_ctx) cached token ids */
    /* activations for up to n_batch tokens */
    float *x;              /* (B, H) residual stream */
    float *xb;             /* (B, H) normed input / block output */
    float *q;              /* (B, nh*hd) */
    float *k, *v;          /* (B, nkv*hd) */
    float *att;            /* (B, nh*hd) attention output before o_proj */
    float *g, *u;          /* (B, F) gate / up projections */
    float *scores;         /* (threads, n_ctx) attention scratch */
    int n_threads;
    /* current batch */
    int32_t n_tokens, n_out, cap_out;
    int32_t *b_token, *b_pos, *b_seq; /* (B) */
    int32_t *out_row;      /* (B) row in logits, or -1 */
    float *gather;         /* (n_out, H) final-normed rows that want logits */
    float *logits;         /* (n_out, V) */
    int32_t layers_done;   /* layers [0, layers_done) have run on this batch */
    /* LoRA routing */
    const prism_adapter **seq_adapter; /* (n_seq_max) NULL = base model */
    int32_t *lora_rows;    /* (B) batch rows of the adapter being applied */
    float *lora_buf;       /* scratch: gathered inputs, x·Aᵀ, and (x·Aᵀ)·Bᵀ */
    size_t lora_cap;
    int32_t n_adapted;     /* tokens of the current batch on an adapter */
    /* blocked prefill attention scratch (grown on demand) */
    float *att_buf;        /* K_h (nk, hd) | V_h (nk, hd) | Q_h (n, hd) | O_h (n, hd) | S (n, nk) */
    size_t att_cap;
    int8_t *att_done;      /* (B) tokens whose attention a blocked run computed */
    int lora_failed;
    int head_done;
    /* CUDA backend (m->gpu != NULL): the module's context; the KV cache and
     * activations live on the device, x holds rows fetched by prism_get_hidden */
    struct gpu_ctx *gpu;
    int8_t *hid_ok;        /* (B) row i of x is current */
    const struct gpu_adapter **tok_ad; /* (B) device adapter of each batch token */
    const float *gpu_logits; /* the last head's logits in the module's pinned memory, once fetched */
    int32_t *amax;         /* (B) the last head's argmax per logit row, once fetched */
    int amax_ok;
};

/* For a prefill split into chunks that must pause after a layer (PRISM
 * routing reads layer 0 of a prompt's last token before layers 1..L-1 of its
 * earlier chunks run): runs layers [lb, le) of batch b without requiring its
 * positions to continue the cache; the residual stream starts from x_in
 * (n_tokens, H) — the stored output of layer lb-1 — or from the embeddings
 * when x_in is NULL and lb == 0. The caller guarantees the order is causal. */
prism_status forward_unchecked(prism_ctx *x, const prism_batch *b, const float *x_in, int32_t lb, int32_t le);

/* Rows [i0, i0 + n) of the residual stream after the last layer run, as
 * prism_get_hidden gives them one at a time; NULL (with the error set) if a
 * device copy fails. */
const float *forward_hidden_rows(prism_ctx *x, int32_t i0, int32_t n);

/* On a CUDA context: the device gate g's logits at rows rows[0..n) of the last batch's residual stream (after
 * the layers run so far) into out (n); the stream stays on the device. */
struct gpu_gate;
prism_status forward_gate_logits(prism_ctx *x, const struct gpu_gate *g, const int32_t *rows, int32_t n, float *out);

/* Whether the last head's rows can be sampled on the device (a CUDA context
 * whose module samples; PRISM_CUDA_SAMPLE=0: never, to compare with the host). */
bool forward_samples_on_device(const prism_ctx *x);
/* On such a context: for each batch row k with logits and inv_t[k] > 0, a
 * draw from softmax(logits_k · inv_t[k]) at the uniform u[k] (as
 * prism_sample_softmax) into out[k]; -1 for the other rows. The logits stay
 * on the device. */
prism_status forward_sample_softmax(prism_ctx *x, const float *inv_t, const double *u, int32_t *out);

#endif
