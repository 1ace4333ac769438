/* optim.h — AdamW, learning-rate schedules and global-norm gradient clipping
 * for LoRA training, written to match PyTorch / transformers step for step:
 *   torch.optim.AdamW (amsgrad=False), transformers'
 *   get_{constant,linear,cosine}_schedule_with_warmup, and
 *   torch.nn.utils.clip_grad_norm_. */
#ifndef PRISM_TRAIN_OPTIM_H
#define PRISM_TRAIN_OPTIM_H

#include <stdint.h>

#include "lora/lora.h"

typedef struct {
    double beta1, beta2;  /* (0.9, 0.999) */
    double eps;           /* 1e-8 */
    double weight_decay;  /* decoupled: p -= lr·wd·p before the Adam update */
} adamw_params;

adamw_params adamw_default_params(void);

/* One AdamW update of n parameters p (n) with gradient g, moments m, v.
 * step is the 1-based count of updates including this one (bias correction). */
void adamw_update(float *p, const float *g, float *m, float *v, int64_t n, int64_t step, double lr,
                  const adamw_params *hp);

typedef enum { SCHED_LINEAR = 0, SCHED_COSINE = 1, SCHED_CONSTANT = 2 } lr_schedule;

/* "linear", "cosine", "constant" -> schedule; -1 if unknown. */
int lr_schedule_parse(const char *name);
const char *lr_schedule_name(lr_schedule s);

/* Multiplier of the base learning rate for the optimizer step with 0-based
 * index step (transformers' lr_lambda(current_step), which the Trainer uses
 * for update step+1): step/warmup during warm-up, then linear or cosine
 * decay to 0 at total_steps (constant: 1 after warm-up). */
double lr_factor(lr_schedule s, int64_t step, int64_t warmup_steps, int64_t total_steps);

/* Every trainable tensor of an adapter: A (r, in) then B (out, r) of each
 * adapted module, in (layer, target) order. Returns the count; fills at
 * most cap entries (ptrs / sizes may be NULL to count only). */
int32_t lora_param_tensors(const prism_adapter *a, float **ptrs, int64_t *sizes, int32_t cap);

/* sqrt(Σ g²) over all of an adapter's tensors (accumulated in double). */
double lora_global_norm(const prism_adapter *g);
/* Multiplies every value of the adapter's tensors by s. */
void lora_mul(prism_adapter *g, double s);
/* Sets every value to 0. */
void lora_zero(prism_adapter *g);

/* torch.nn.utils.clip_grad_norm_: norm = global 2-norm; if max_norm > 0 and
 * max_norm / (norm + 1e-6) < 1, scales the gradients by that factor.
 * Returns the norm before clipping. */
double lora_clip_grad_norm(prism_adapter *g, double max_norm);

/* AdamW over a whole adapter: p, its gradient, first and second moments
 * (all four shaped alike). */
void lora_adamw_step(prism_adapter *p, const prism_adapter *g, prism_adapter *m, prism_adapter *v, int64_t step,
                     double lr, const adamw_params *hp);

#endif
