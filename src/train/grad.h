/* grad.h — loss and LoRA gradients for one sequence: the forward pass with
 * saved activations and the backward pass through the frozen transformer
 * (embedding output, RMSNorm, RoPE, GQA attention, SwiGLU, every LoRA
 * target) to dA/dB only. No gradient buffers exist for base weights. */
#ifndef PRISM_TRAIN_GRAD_H
#define PRISM_TRAIN_GRAD_H

#include <stdbool.h>
#include <stdint.h>

#include "lora/lora.h"
#include "model/model.h"

typedef enum { LOSS_CE = 0, LOSS_KL = 1 } loss_kind;

typedef struct {
    loss_kind loss;
    int32_t n_tokens;
    const int32_t *tokens;          /* (T) input ids */
    /* LOSS_CE — transformers' causal-LM convention: labels (T), -100 = ignored;
     * the logits at position t are scored against labels[t + 1]. */
    const int32_t *labels;
    /* LOSS_KL — top-k self-distillation (make_fixtures.py): at each of n_pos
     * positions p, teacher top-k logits (values, indices) (n_pos, k); both
     * sides log-softmaxed over those k at temperature T; the term is
     * KL(teacher ‖ student)·T². */
    int32_t n_pos, k;
    const int32_t *positions;       /* (n_pos) positions into tokens */
    const float *teacher_values;    /* (n_pos, k) raw teacher logits */
    const int32_t *teacher_indices; /* (n_pos, k) vocabulary ids */
    float temperature;
} train_example;

typedef struct train_ws train_ws;

/* Workspace for sequences up to max_tokens. recompute: keep only each layer's
 * input and recompute the layer's internals during backward (memory
 * O(L·T·H) instead of O(L·T·(H+F+…))). */
prism_status train_ws_new(const prism_model *m, int32_t max_tokens, bool recompute, train_ws **out);
void train_ws_free(train_ws *w);

/* Forward + backward of one sequence with adapter a. Adds d(loss_sum)/dA and
 * d(loss_sum)/dB into grad (shaped like a, see lora_alloc_like).
 * *loss_sum: CE: Σ −log p(label) over counted tokens; KL: Σ KL·T² over positions.
 * *count: the number of terms, so a batch's mean loss is Σ loss_sum / Σ count
 * (and its gradient the accumulated grad / Σ count). logits_out, if not NULL,
 * receives the student logits (T, V). */
prism_status train_example_grad(train_ws *w, const prism_model *m, const prism_adapter *a, prism_adapter *grad,
                                const train_example *ex, double *loss_sum, int64_t *count, float *logits_out);

/* train_example_grad of n examples, their losses, counts and gradients
 * summed; logits_out (Σ n_tokens, V) sequence after sequence. On a CUDA model
 * the examples run packed into passes of up to train_ws_pass_tokens tokens. */
prism_status train_batch_grad(train_ws *w, const prism_model *m, const prism_adapter *a, prism_adapter *grad,
                              const train_example *exs, int32_t n, double *loss_sum, int64_t *count, float *logits_out);

/* ---- CUDA models: the trainer keeps parameters, gradients and AdamW moments
 * on the device between steps (train_example_grad itself always works, by
 * uploading the adapter and downloading the gradient). */
#include "train/optim.h"
bool train_ws_on_gpu(const train_ws *w);
/* Uploads a and its moments mo, vo (shaped like a) into the device session. */
prism_status train_ws_gpu_load(train_ws *w, const prism_model *m, const prism_adapter *a, const prism_adapter *mo,
                               const prism_adapter *vo);
/* Downloads parameters and moments (a->version is bumped). */
prism_status train_ws_gpu_store(train_ws *w, prism_adapter *a, prism_adapter *mo, prism_adapter *vo);
prism_status train_ws_gpu_zero(train_ws *w);
/* Tokens of one device pass: sequences are packed into passes of up to this
 * many tokens (train_ws_gpu_batch), so the GEMMs see thousands of rows.
 * set: before the first device call; at least the workspace's max_tokens.
 * The session halves it (down to max_tokens) when the device memory is short;
 * get: what the session got (max_tokens on the CPU). */
void train_ws_set_pass_tokens(train_ws *w, int32_t tokens);
int32_t train_ws_pass_tokens(const train_ws *w);
/* A workspace made with recompute: on the device, keep the activations after
 * all when a whole pass's fit in its memory (before the first device call). */
void train_ws_keep_if_fits(train_ws *w);
/* Whether the backward pass recomputes activations (the device session's
 * choice once it exists). */
bool train_ws_recomputes(const train_ws *w);
/* Adds the gradient of n examples (the loaded parameters), one pass with at
 * most train_ws_pass_tokens tokens in all, into the device gradients;
 * *loss_sum and *count summed over them. */
prism_status train_ws_gpu_batch(train_ws *w, const prism_model *m, const train_example *exs, int32_t n,
                                double *loss_sum, int64_t *count);
/* Gradients / count, global-norm clipping (*norm before it), AdamW update number step. */
prism_status train_ws_gpu_step(train_ws *w, int64_t count, double max_grad_norm, double lr, const adamw_params *hp,
                               int64_t step, double *norm);

#endif
