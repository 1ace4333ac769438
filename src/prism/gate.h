/* gate.h — the PRISM router: a small MLP that reads the hidden state after
 * transformer layer 0 at the last token of the chat-templated prompt
 * (without persona) and decides whether the query goes to the persona LoRA
 * adapter (prob >= threshold) or stays on the base model.
 *
 *   xs    = (x - mu) / sigma                   x: (in), the layer-0 hidden state
 *   a1    = GELU(W1 xs + b1)                   W1: (128, in)
 *   a2    = GELU(W2 a1 + b2)                   W2: (64, 128)
 *   logit = w3 · a2 + b3                       w3: (64)
 *   prob  = sigmoid(logit)
 *
 * GELU is the exact erf form, 0.5·x·(1 + erf(x/√2)), as torch.nn.GELU().
 * Training: binary cross-entropy on win (1) vs retain (0), classes balanced
 * by per-example weights, mini-batch AdamW, stratified held-out split.
 *
 * Routing decisions compare logits, not probabilities: a trained gate often
 * puts many training queries at logits above ~17, where sigmoid() rounds to
 * exactly 1.0f, and a probability threshold could no longer separate them
 * (so --route-rate could not be met). The threshold is therefore held twice,
 * threshold (probability, what users see and set) and threshold_logit (what
 * decisions use); gate_set_threshold and gate_calibrate keep them together.
 *
 * File: a .safetensors file with F32 tensors "mu", "sigma", "w1", "b1",
 * "w2", "b2", "w3", "b3", "threshold", "threshold_logit" and __metadata__
 * {"format": "prism-gate", "hidden": "<in>", ...caller keys}. */
#ifndef PRISM_PRISM_GATE_H
#define PRISM_PRISM_GATE_H

#include <stdbool.h>
#include <stdint.h>

#include "prism.h"

#define GATE_H1 128 /* first hidden layer width */
#define GATE_H2 64  /* second hidden layer width */

typedef struct gate_mlp {
    int32_t in;            /* feature size = the model's hidden size */
    float *mu;             /* (in) training-split feature mean */
    float *sigma;          /* (in) training-split feature std (population); 1 where std < 1e-6 */
    /* trainable parameters, contiguous in this order (params, n_params) */
    float *w1;             /* (128, in) */
    float *b1;             /* (128) */
    float *w2;             /* (64, 128) */
    float *b2;             /* (64) */
    float *w3;             /* (64) */
    float *b3;             /* (1) */
    float *params;         /* (n_params) = w1 */
    int64_t n_params;      /* 128·in + 128 + 64·128 + 64 + 64 + 1 */
    float threshold;       /* probability; route to the adapter when prob >= threshold (default 0.5) */
    float threshold_logit; /* the same threshold as a logit (default 0); -inf routes all, +inf none */
} gate_mlp;

/* A gate for features of size in, initialised as torch.nn.Linear does
 * (weights and biases ~ U(-1/√fan_in, 1/√fan_in)) from a splitmix64 stream
 * seeded with seed; mu = 0, sigma = 1, threshold 0.5. NULL on bad in or OOM
 * (message in prism_last_error). */
gate_mlp *gate_mlp_new(int32_t in, uint64_t seed);
void gate_mlp_free(gate_mlp *g);

/* Logit and sigmoid probability for one raw (unstandardised) feature x (in). */
float gate_mlp_logit(const gate_mlp *g, const float *x);
float gate_mlp_prob(const gate_mlp *g, const float *x);
/* Batched over rows X (n, in): out (n). Rows run in parallel; each row's
 * value is bit-identical to the single-row call. */
void gate_mlp_logits(const gate_mlp *g, const float *X, int64_t n, float *out);
void gate_mlp_probs(const gate_mlp *g, const float *X, int64_t n, float *out);
/* The probability of a logit, as gate_mlp_prob computes it. */
float gate_logit_prob(float logit);
/* True when x goes to the adapter (logit >= threshold_logit); prob (may be NULL) receives the probability. */
bool gate_mlp_route(const gate_mlp *g, const float *x, float *prob);

/* Sets threshold = p and threshold_logit = log(p / (1 - p)) (p = 0 → -inf,
 * p = 1 → +inf). PRISM_E_ARG unless 0 <= p <= 1. */
prism_status gate_set_threshold(gate_mlp *g, float p);

/* ---------------------------------------------------------------- training */
typedef struct {
    int32_t epochs;       /* passes over the training split (default 200) */
    double lr;            /* AdamW learning rate, constant (default 1e-3, torch's Adam default) */
    double weight_decay;  /* decoupled AdamW decay on every parameter, biases included as
                             torch does for model.parameters() (default 1e-4: a light
                             regulariser; the feature count is large next to the query count) */
    int32_t batch_size;   /* examples per update; the last batch of an epoch may be smaller (default 32) */
    double holdout_frac;  /* fraction of each class held out for evaluation, 0 <= f < 1 (default 0.2) */
    uint64_t seed;        /* split and per-epoch shuffles */
    bool balance;         /* weight each training example by n_train / (2·n_train_class) (default true) */
} gate_train_params;

gate_train_params gate_train_default_params(void);

typedef struct {
    int32_t n_train, n_holdout;           /* examples in each split */
    int32_t n_pos, n_neg;                 /* wins and retains over all n */
    int32_t n_holdout_pos, n_holdout_neg; /* of which held out */
    int64_t steps;                        /* AdamW updates made */
    double train_acc;                     /* accuracy on the training split at g->threshold */
    double holdout_acc;                   /* accuracy on the held-out split; NaN if empty */
    double holdout_bal_acc;               /* mean recall over the classes present in the held-out split; NaN if empty */
    double final_train_loss;              /* (weighted) mean BCE on the training split after training */
    char note[192];                       /* "" or why the held-out split is partial or empty */
} gate_train_report;

/* Trains g on X (n, in) raw features with labels y (n), 1 = win (adapter
 * better), 0 = retain (base better). Deterministic for a given (g's initial
 * weights, p.seed). Split: per class, a seeded shuffle and the first
 * round(holdout_frac·n_class) rows held out, at most n_class - 1 and none for
 * a class with fewer than 2 rows (rep->note says so). mu and sigma are
 * recomputed from the training split; training starts from g's current
 * weights; g->threshold is used for the reported accuracies and left as is.
 * Errors (PRISM_E_ARG): n < 2, a label other than 0/1, a non-finite feature,
 * or only one class present (the gate must see both wins and retains).
 * rep may be NULL. */
prism_status gate_train(gate_mlp *g, const float *X, const int8_t *y, int64_t n, const gate_train_params *p,
                        gate_train_report *rep);

/* Calibrates the threshold on rows X (n, in) so that a fraction route_rate
 * (0..1) of them routes to the adapter. With logits sorted descending and
 * k = round(route_rate·n) (halves away from zero): k = 0 → threshold_logit
 * just above the largest logit (nextafterf), nothing routes; k = n →
 * threshold_logit = -inf (threshold 0), everything routes; otherwise
 * threshold_logit = the k-th largest logit, so exactly k rows route when the
 * logits are distinct (rows tied with the k-th all route). threshold becomes
 * sigmoid(threshold_logit). routed (may be NULL) receives the number of rows
 * that route at the new threshold. */
prism_status gate_calibrate(gate_mlp *g, const float *X, int64_t n, double route_rate, int64_t *routed);

/* ---------------------------------------------------------------- file */
/* Writes g to path (atomically). metadata_json: NULL or a JSON object of
 * string values merged into __metadata__ (its "format"/"hidden" are ours). */
prism_status gate_save(const gate_mlp *g, const char *path, const char *metadata_json);
/* Reads a gate file, checking the format tag, every tensor's presence and
 * shape, NaNs and the threshold range. expected_in > 0 must equal the gate's
 * feature size (PRISM_E_FORMAT "gate was trained for hidden size X, model has
 * Y"); 0 accepts any. */
prism_status gate_load(const char *path, int32_t expected_in, gate_mlp **out);

/* Weighted BCE (1/n)·Σ w[r]·BCE(logit(X_r), y[r]) over rows X (n, in) with
 * g's standardisation — the loss gate_train minimises per batch — into
 * *loss (may be NULL), and its gradient into grad (g->n_params, same layout
 * as g->params, overwritten) unless grad is NULL. */
prism_status gate_loss_grad(const gate_mlp *g, const float *X, const int8_t *y, const float *w, int64_t n,
                            double *loss, float *grad);

/* GELU (exact erf form) and its derivative; exposed for tests. */
float gate_gelu(float x);
float gate_gelu_grad(float x);

#endif
