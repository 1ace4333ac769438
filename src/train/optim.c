/* optim.c — AdamW, warm-up + linear/cosine decay, global-norm clipping.
 * Each update mirrors torch's float32 CPU kernels operation by operation:
 *   p *= 1 - lr·wd
 *   m  = m + (1-β1)·(g - m)            (exp_avg.lerp_(g, 1-β1))
 *   v  = β2·v + (1-β2)·g·g              (mul_ + addcmul_)
 *   p += -(lr / (1-β1^t)) · m / (sqrt(v) / sqrt(1-β2^t) + eps)   */
#include "train/optim.h"

#include <math.h>
#include <string.h>

adamw_params adamw_default_params(void) {
    return (adamw_params){.beta1 = 0.9, .beta2 = 0.999, .eps = 1e-8, .weight_decay = 0.0};
}

void adamw_update(float *p, const float *g, float *m, float *v, int64_t n, int64_t step, double lr,
                  const adamw_params *hp) {
    const float decay = (float)(1.0 - lr * hp->weight_decay);
    const float w1 = (float)(1.0 - hp->beta1), b2 = (float)hp->beta2, w2 = (float)(1.0 - hp->beta2);
    const double bc1 = 1.0 - pow(hp->beta1, (double)step), bc2 = 1.0 - pow(hp->beta2, (double)step);
    const float step_size = (float)(lr / bc1), bc2_sqrt = (float)sqrt(bc2), eps = (float)hp->eps;
#pragma omp parallel for simd schedule(static) if (n > 1 << 16)
    for (int64_t i = 0; i < n; i++) {
        float pi = hp->weight_decay != 0 ? p[i] * decay : p[i];
        float gi = g[i];
        float mi = m[i] + w1 * (gi - m[i]);
        float vi = v[i] * b2 + w2 * gi * gi;
        float denom = sqrtf(vi) / bc2_sqrt + eps;
        m[i] = mi;
        v[i] = vi;
        p[i] = pi + -step_size * mi / denom;
    }
}

int lr_schedule_parse(const char *name) {
    if (!strcmp(name, "linear")) return SCHED_LINEAR;
    if (!strcmp(name, "cosine")) return SCHED_COSINE;
    if (!strcmp(name, "constant")) return SCHED_CONSTANT;
    return -1;
}

const char *lr_schedule_name(lr_schedule s) {
    return s == SCHED_COSINE ? "cosine" : s == SCHED_CONSTANT ? "constant" : "linear";
}

double lr_factor(lr_schedule s, int64_t step, int64_t warmup, int64_t total) {
    if (step < warmup) return (double)step / (double)(warmup > 1 ? warmup : 1);
    if (s == SCHED_CONSTANT) return 1.0;
    int64_t span = total - warmup > 1 ? total - warmup : 1;
    if (s == SCHED_LINEAR) {
        double f = (double)(total - step) / (double)span;
        return f > 0 ? f : 0.0;
    }
    /* cosine, num_cycles = 0.5 */
    double progress = (double)(step - warmup) / (double)span;
    double f = 0.5 * (1.0 + cos(M_PI * 0.5 * 2.0 * progress));
    return f > 0 ? f : 0.0;
}

int32_t lora_param_tensors(const prism_adapter *a, float **ptrs, int64_t *sizes, int32_t cap) {
    int32_t n = 0;
    for (int32_t l = 0; l < a->n_layers; l++)
        for (int t = 0; t < LORA_N_TARGETS; t++) {
            const lora_module *mod = lora_mod(a, l, (lora_target)t);
            if (!mod->r) continue;
            for (int w = 0; w < 2; w++, n++) {
                if (n >= cap) continue;
                if (ptrs) ptrs[n] = w ? mod->B : mod->A;
                if (sizes) sizes[n] = (int64_t)mod->r * (w ? mod->out : mod->in);
            }
        }
    return n;
}

/* Calls fn on each (values, count) of a's tensors. */
#define FOR_EACH_TENSOR(a, ptr, cnt, body)                                          \
    for (int32_t l_ = 0; l_ < (a)->n_layers; l_++)                                  \
        for (int t_ = 0; t_ < LORA_N_TARGETS; t_++) {                               \
            const lora_module *mod_ = lora_mod((a), l_, (lora_target)t_);           \
            if (!mod_->r) continue;                                                 \
            for (int w_ = 0; w_ < 2; w_++) {                                        \
                float *ptr = w_ ? mod_->B : mod_->A;                                \
                int64_t cnt = (int64_t)mod_->r * (w_ ? mod_->out : mod_->in);       \
                body                                                                \
            }                                                                       \
        }

double lora_global_norm(const prism_adapter *g) {
    double ss = 0;
    FOR_EACH_TENSOR(g, x, n, {
        double s = 0;
        for (int64_t i = 0; i < n; i++) s += (double)x[i] * x[i];
        ss += s;
    })
    return sqrt(ss);
}

void lora_mul(prism_adapter *g, double s) {
    const float f = (float)s;
    FOR_EACH_TENSOR(g, x, n, {
        for (int64_t i = 0; i < n; i++) x[i] *= f;
    })
}

void lora_zero(prism_adapter *g) {
    FOR_EACH_TENSOR(g, x, n, { memset(x, 0, (size_t)n * sizeof(float)); })
}

double lora_clip_grad_norm(prism_adapter *g, double max_norm) {
    double norm = lora_global_norm(g);
    if (max_norm > 0) {
        double coef = max_norm / (norm + 1e-6);
        if (coef < 1.0) lora_mul(g, coef);
    }
    return norm;
}

void lora_adamw_step(prism_adapter *p, const prism_adapter *g, prism_adapter *m, prism_adapter *v, int64_t step,
                     double lr, const adamw_params *hp) {
    for (int32_t l = 0; l < p->n_layers; l++)
        for (int t = 0; t < LORA_N_TARGETS; t++) {
            lora_module *mp = lora_mod(p, l, (lora_target)t);
            if (!mp->r) continue;
            const lora_module *mg = lora_mod(g, l, (lora_target)t);
            lora_module *mm = lora_mod(m, l, (lora_target)t), *mv = lora_mod(v, l, (lora_target)t);
            adamw_update(mp->A, mg->A, mm->A, mv->A, (int64_t)mp->r * mp->in, step, lr, hp);
            adamw_update(mp->B, mg->B, mm->B, mv->B, (int64_t)mp->r * mp->out, step, lr, hp);
        }
}
