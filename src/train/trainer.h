/* trainer.h — the LoRA training loop: shuffled epochs, batches with gradient
 * accumulation, loss normalised over every scored token of an optimizer step,
 * global-norm clipping, AdamW with a warm-up + decay schedule, teacher top-k
 * for KL self-distillation, and checkpoints that resume a run exactly. */
#ifndef PRISM_TRAIN_TRAINER_H
#define PRISM_TRAIN_TRAINER_H

#include <stdbool.h>
#include <stdint.h>

#include "lora/lora.h"
#include "train/data.h"
#include "train/grad.h"
#include "train/optim.h"

typedef struct {
    int64_t step, total_steps; /* optimizer steps done (1-based after the first), planned */
    int32_t epoch;             /* 0-based epoch of this step */
    double loss;               /* mean loss of the step: Σ loss_sum / Σ count */
    double lr;                 /* learning rate used by this step */
    double grad_norm;          /* global norm before clipping */
    int64_t scored;            /* tokens (CE) or positions (KL) scored in this step */
    int64_t tokens;            /* input tokens processed in this step */
    double tokens_per_s;       /* input tokens per second over this run so far */
    double elapsed_s, eta_s;
    int32_t pass_tokens;       /* CUDA: tokens of one packed pass (0 on the CPU) */
    bool recompute;            /* activations recomputed in the backward pass */
} train_progress;

/* Return false to stop the run after this step (a checkpoint is written). */
typedef bool (*train_progress_cb)(void *user, const train_progress *p);

typedef struct {
    loss_kind loss;
    int32_t epochs;            /* passes over the data (default 1) */
    int64_t max_steps;         /* > 0: exactly this many optimizer steps, over as many epochs as needed
                                  (overrides epochs, as transformers' max_steps does) */
    int32_t batch_size;        /* examples per micro-batch (default 1) */
    int32_t grad_accum;        /* micro-batches per optimizer step (default 1) */
    double lr;                 /* peak learning rate (default 2e-4) */
    lr_schedule schedule;      /* default linear */
    int64_t warmup_steps;      /* default 0 */
    adamw_params adamw;
    double max_grad_norm;      /* default 1.0; 0 = no clipping */
    uint64_t seed;             /* per-epoch shuffle */
    bool shuffle;              /* default true */
    bool recompute;            /* activation recomputation allowed (default true): on the CPU always
                                  done; on a GPU only when a pass's activations do not fit */
    const char *out_dir;       /* checkpoints go to out_dir/checkpoint; NULL = none */
    int64_t save_every;        /* checkpoint every N steps (0 = only at the end / when stopped) */
    int64_t stop_at_step;      /* > 0: stop after this global step (with a checkpoint) */
    bool resume;               /* continue from out_dir/checkpoint */
    train_progress_cb progress;
    void *user;
} trainer_params;

trainer_params trainer_default_params(void);

typedef struct {
    int64_t steps_done;        /* global step reached */
    int64_t total_steps;
    bool finished;             /* all planned steps done */
    double last_loss;
} train_result;

/* Trains adapter a (created by the caller, e.g. prism_adapter_new) on d.
 * With p->resume, a's values, the optimizer state and the data position are
 * restored from out_dir/checkpoint first; a resumed run ends bit-identical
 * to an uninterrupted one. */
prism_status trainer_run(prism_model *m, prism_adapter *a, const train_data *d, const trainer_params *p,
                         train_result *res);

/* Number of optimizer steps the run will take. */
int64_t trainer_total_steps(const train_data *d, const trainer_params *p);

/* Teacher top-k logits of the base model (no adapter) at `positions` of
 * `tokens`, sorted descending: values, indices (n_pos, k). ctx: a context
 * with one sequence and room for n_tokens. */
prism_status teacher_topk(prism_ctx *ctx, const int32_t *tokens, int32_t n_tokens, const int32_t *positions,
                          int32_t n_pos, int32_t k, float *values, int32_t *indices);

/* ---------------------------------------------------------------- checkpoint.c */

typedef struct {
    int64_t step;              /* optimizer steps done */
    int32_t epoch;             /* epoch of the next example */
    int32_t pos;               /* index of the next example in that epoch's order */
    uint64_t seed;             /* shuffle seed: epoch e's order is a function of (seed, e) */
    int64_t tokens_seen;
    double last_loss;
} train_state;

/* Writes out_dir/checkpoint atomically (built in checkpoint.tmp, then renamed):
 * adapter_config.json + adapter_model.safetensors (F32, loadable as an adapter),
 * optimizer.safetensors (parameters, exp_avg, exp_avg_sq in F32) and
 * trainer_state.json (state + config_json, the settings a resume must match). */
prism_status checkpoint_save(const char *out_dir, const prism_adapter *a, const prism_adapter *m,
                             const prism_adapter *v, const train_state *s, const char *config_json);
/* Restores a, m, v (shaped alike, as allocated by the caller) and s from
 * out_dir/checkpoint; *config_json (caller frees) receives the saved settings. */
prism_status checkpoint_load(const char *out_dir, prism_adapter *a, prism_adapter *m, prism_adapter *v,
                             train_state *s, char **config_json);

#endif
