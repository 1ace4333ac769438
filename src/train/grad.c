/* grad.c — LoRA training step for one sequence: forward with saved
 * activations, loss (masked CE or top-k KL), backward to dA/dB.
 *
 * Forward of one layer (as in model/forward.c, for a single sequence with
 * causal attention over its own tokens), with what backward keeps:
 *   h1 = RMSNorm(x; w1)                          h1, r1 (1/rms per token)
 *   q,k,v = h1·Wᵀ + b + s·(h1·Aᵀ)·Bᵀ             mid[t] = h1·Aᵀ per target
 *   q,k = RMSNorm_head(q,k) (Qwen3)              qraw, kraw, rq, rk
 *   q,k = RoPE(q,k)                              q, k, v
 *   P = softmax(q·kᵀ·scale, causal)              P (nh, T, T)
 *   att = P·v ; x' = x + att·Woᵀ (+LoRA)         att, xmid
 *   h2 = RMSNorm(x'; w2)                         h2, r2
 *   g,u = h2·Wgᵀ, h2·Wuᵀ (+LoRA); a = silu(g)·u  g, u, a
 *   y = x' + a·Wdᵀ (+LoRA)
 * Backward runs the chain in reverse. With recomputation only each layer's
 * input is kept; a layer's internals are recomputed just before its
 * backward, so memory is O(L·T·H) + one layer's activations. */
#include "train/grad.h"
#include "train/topk_kl.h"

#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "gpu/device.h"
#include "kernels/kernels.h"
#include "model/layers.h"
#include "model/rope.h"
#include "train/linalg.h"
#include "util/error.h"

typedef struct {
    float *h1, *r1;           /* (T,H), (T) */
    float *qraw, *kraw;       /* (T,qd), (T,kvd) before q/k norm (Qwen3) */
    float *rq, *rk;           /* (T,nh), (T,nkv) */
    float *q, *k, *v;         /* (T,qd), (T,kvd), (T,kvd) as attention sees them */
    float *P;                 /* (nh, T, T) attention probabilities */
    float *att;               /* (T,qd) */
    float *xmid;              /* (T,H) residual after attention */
    float *h2, *r2;           /* (T,H), (T) */
    float *g, *u, *a;         /* (T,F) gate, up, silu(gate)·up */
    float *mid[LORA_N_TARGETS]; /* (T, r) x·Aᵀ of each adapted target */
} layer_acts;

struct train_ws {
    int32_t max_T, n_layers, max_r;
    bool recompute;
    float *xs;                /* (L+1, T, H) layer inputs; xs[L] = final residual */
    layer_acts *acts;         /* n_layers (no recompute) or 1 */
    float *hf, *rf;           /* (T,H), (T) final norm */
    /* backward scratch */
    float *dx, *dh, *dq, *dk, *dv, *datt, *dg, *du, *dtmp; /* dtmp: (T, max(F, qd)) */
    float *lora_tmp;          /* (T, max_r) */
    float *logits;            /* (CHUNK, V) */
    float *dlogits;           /* (CHUNK, V) */
    float *hrows, *drows;     /* (CHUNK, H) gathered final-normed rows and their gradients */
    float *yscr;              /* (T, H) discarded layer output when recomputing */
    /* CUDA models: the module's training session, made for the first adapter seen */
    int32_t pass_T;           /* tokens of one device pass (several sequences packed), >= max_T */
    bool keep_if_fits;        /* recompute only if keeping a pass's activations does not fit */
    bool dev_recompute;       /* what the device session does */
    const prism_gpu_api *api;
    gpu_train *gt;
    prism_adapter *layout;    /* zero-valued adapter of the session's shapes (also the download buffer) */
};

enum { CHUNK = 32 }; /* logit rows materialised at once */

static void *zalloc(size_t n, int *fail) {
    void *p = calloc(n ? n : 1, 1);
    if (!p) *fail = 1;
    return p;
}

static void acts_free(layer_acts *a) {
    float *p[] = {a->h1, a->r1, a->qraw, a->kraw, a->rq, a->rk, a->q, a->k, a->v, a->P, a->att, a->xmid,
                  a->h2, a->r2, a->g, a->u, a->a};
    for (size_t i = 0; i < sizeof p / sizeof *p; i++) free(p[i]);
    for (int t = 0; t < LORA_N_TARGETS; t++) free(a->mid[t]);
}

static int acts_alloc(layer_acts *a, const prism_config *c, int64_t T, int64_t max_r) {
    int fail = 0;
    const int64_t H = c->hidden, qd = (int64_t)c->n_heads * c->head_dim, kvd = (int64_t)c->n_kv_heads * c->head_dim,
                  F = c->ffn, f = sizeof(float);
    a->h1 = zalloc(T * H * f, &fail), a->r1 = zalloc(T * f, &fail);
    if (c->qk_norm) {
        a->qraw = zalloc(T * qd * f, &fail), a->kraw = zalloc(T * kvd * f, &fail);
        a->rq = zalloc(T * c->n_heads * f, &fail), a->rk = zalloc(T * c->n_kv_heads * f, &fail);
    }
    a->q = zalloc(T * qd * f, &fail), a->k = zalloc(T * kvd * f, &fail), a->v = zalloc(T * kvd * f, &fail);
    a->P = zalloc((size_t)c->n_heads * T * T * f, &fail);
    a->att = zalloc(T * qd * f, &fail), a->xmid = zalloc(T * H * f, &fail);
    a->h2 = zalloc(T * H * f, &fail), a->r2 = zalloc(T * f, &fail);
    a->g = zalloc(T * F * f, &fail), a->u = zalloc(T * F * f, &fail), a->a = zalloc(T * F * f, &fail);
    for (int t = 0; t < LORA_N_TARGETS; t++) a->mid[t] = zalloc(T * (max_r ? max_r : 1) * f, &fail);
    return !fail;
}

void train_ws_free(train_ws *w) {
    if (!w) return;
    if (w->gt) w->api->train_free(w->gt);
    prism_adapter_free(w->layout);
    if (w->acts) {
        int n = w->recompute ? 1 : w->n_layers;
        for (int i = 0; i < n; i++) acts_free(&w->acts[i]);
        free(w->acts);
    }
    float *p[] = {w->xs, w->hf, w->rf, w->dx, w->dh, w->dq, w->dk, w->dv, w->datt, w->dg, w->du, w->dtmp,
                  w->lora_tmp, w->logits, w->dlogits, w->hrows, w->drows, w->yscr};
    for (size_t i = 0; i < sizeof p / sizeof *p; i++) free(p[i]);
    free(w);
}

/* Largest rank any adapter may use with this workspace; grown on demand. */
static int ws_ensure_rank(train_ws *w, const prism_model *m, int32_t r) {
    if (r <= w->max_r) return 1;
    const int64_t T = w->max_T, f = sizeof(float);
    int n = w->recompute ? 1 : w->n_layers;
    for (int i = 0; i < n; i++)
        for (int t = 0; t < LORA_N_TARGETS; t++) {
            float *p = realloc(w->acts[i].mid[t], (size_t)(T * r * f));
            if (!p) return 0;
            w->acts[i].mid[t] = p;
        }
    float *p = realloc(w->lora_tmp, (size_t)(T * r * f));
    if (!p) return 0;
    w->lora_tmp = p;
    w->max_r = r;
    (void)m;
    return 1;
}

prism_status train_ws_new(const prism_model *m, int32_t max_tokens, bool recompute, train_ws **out) {
    *out = NULL;
    const prism_config *c = &m->cfg;
    if (max_tokens <= 0) return prism_error(PRISM_E_ARG, "training sequence length must be positive (got %d)", max_tokens);
    train_ws *w = calloc(1, sizeof *w);
    if (!w) return prism_error(PRISM_E_NOMEM, "out of memory");
    if (m->gpu) { /* the device holds everything; the session is made with the first adapter */
        w->max_T = max_tokens;
        w->pass_T = max_tokens;
        w->n_layers = c->n_layers;
        w->recompute = recompute;
        w->api = m->gpu_api;
        *out = w;
        return PRISM_OK;
    }
    const int64_t T = max_tokens, H = c->hidden, qd = (int64_t)c->n_heads * c->head_dim,
                  kvd = (int64_t)c->n_kv_heads * c->head_dim, F = c->ffn, V = c->vocab, f = sizeof(float);
    w->max_T = max_tokens;
    w->n_layers = c->n_layers;
    w->recompute = recompute;
    int fail = 0;
    w->xs = zalloc((size_t)(c->n_layers + 1) * T * H * f, &fail);
    int n = recompute ? 1 : c->n_layers;
    w->acts = calloc((size_t)n, sizeof *w->acts);
    if (!w->acts) fail = 1;
    for (int i = 0; !fail && i < n; i++) fail = !acts_alloc(&w->acts[i], c, T, 0);
    w->hf = zalloc(T * H * f, &fail), w->rf = zalloc(T * f, &fail);
    w->dx = zalloc(T * H * f, &fail), w->dh = zalloc(T * H * f, &fail);
    w->dq = zalloc(T * qd * f, &fail), w->dk = zalloc(T * kvd * f, &fail), w->dv = zalloc(T * kvd * f, &fail);
    w->datt = zalloc(T * qd * f, &fail);
    w->dg = zalloc(T * F * f, &fail), w->du = zalloc(T * F * f, &fail);
    int64_t wide = F > qd ? F : qd;
    wide = wide > H ? wide : H;
    w->dtmp = zalloc(T * wide * f, &fail);
    w->hrows = zalloc((size_t)CHUNK * H * f, &fail), w->drows = zalloc((size_t)CHUNK * H * f, &fail);
    w->yscr = zalloc(T * H * f, &fail);
    w->lora_tmp = zalloc(f, &fail);
    w->logits = zalloc((size_t)CHUNK * V * f, &fail), w->dlogits = zalloc((size_t)CHUNK * V * f, &fail);
    if (fail) {
        train_ws_free(w);
        return prism_error(PRISM_E_NOMEM, "out of memory for a %d-token training workspace%s", max_tokens,
                           recompute ? "" : " (try activation recomputation)");
    }
    *out = w;
    return PRISM_OK;
}

/* ------------------------------------------------------------------ forward */

/* y[T,out] = x·Wᵀ + b, plus s·(x·Aᵀ)·Bᵀ when adapted (mid := x·Aᵀ saved). */
static void lin_fwd(float *y, const float *x, const linear_w *W, const float *bias, const lora_module *mod, float *mid,
                    int64_t T, float *scratch) {
    kern_matmul(y, x, W->w, W->dt, bias, T, W->in, W->out, PRISM_PRECISION_EXACT);
    if (!mod || !mod->r) return;
    kern_matmul(mid, x, mod->A, ST_F32, NULL, T, mod->in, mod->r, PRISM_PRECISION_EXACT);
    kern_matmul(scratch, mid, mod->B, ST_F32, NULL, T, mod->r, mod->out, PRISM_PRECISION_EXACT);
    const int64_t n = T * mod->out;
    for (int64_t i = 0; i < n; i++) y[i] += mod->scale * scratch[i];
}

static const lora_module *module_of(const prism_adapter *ad, int32_t l, lora_target t) {
    if (!ad || l >= ad->n_layers) return NULL;
    const lora_module *m = lora_mod(ad, l, t);
    return m->r ? m : NULL;
}

static void layer_fwd(const prism_model *m, const prism_adapter *ad, int32_t l, layer_acts *A, const float *x,
                      float *y, int64_t T, float *scratch) {
    const prism_config *c = &m->cfg;
    const layer_w *L = &m->layers[l];
    const int64_t H = c->hidden, hd = c->head_dim, nh = c->n_heads, nkv = c->n_kv_heads, qd = nh * hd,
                  kvd = nkv * hd, F = c->ffn, group = nh / nkv;
    const float eps = c->rms_eps;
#pragma omp parallel for schedule(static) if (T * H >= 16384)
    for (int64_t t = 0; t < T; t++) {
        rmsnorm(A->h1 + t * H, x + t * H, L->attn_norm, H, eps);
        float ss = 0;
        for (int64_t i = 0; i < H; i++) ss += x[t * H + i] * x[t * H + i];
        A->r1[t] = 1.0f / sqrtf(ss / (float)H + eps);
    }
    lin_fwd(A->q, A->h1, &L->wq, L->bq, module_of(ad, l, LORA_Q), A->mid[LORA_Q], T, scratch);
    lin_fwd(A->k, A->h1, &L->wk, L->bk, module_of(ad, l, LORA_K), A->mid[LORA_K], T, scratch);
    lin_fwd(A->v, A->h1, &L->wv, L->bv, module_of(ad, l, LORA_V), A->mid[LORA_V], T, scratch);
#pragma omp parallel for schedule(static) if (T * H >= 16384)
    for (int64_t t = 0; t < T; t++) {
        float *q = A->q + t * qd, *k = A->k + t * kvd;
        if (c->qk_norm) {
            memcpy(A->qraw + t * qd, q, (size_t)qd * sizeof(float));
            memcpy(A->kraw + t * kvd, k, (size_t)kvd * sizeof(float));
            for (int64_t h = 0; h < nh; h++) {
                float ss = 0;
                for (int64_t d = 0; d < hd; d++) ss += q[h * hd + d] * q[h * hd + d];
                A->rq[t * nh + h] = 1.0f / sqrtf(ss / (float)hd + eps);
                rmsnorm(q + h * hd, q + h * hd, L->q_norm, hd, eps);
            }
            for (int64_t h = 0; h < nkv; h++) {
                float ss = 0;
                for (int64_t d = 0; d < hd; d++) ss += k[h * hd + d] * k[h * hd + d];
                A->rk[t * nkv + h] = 1.0f / sqrtf(ss / (float)hd + eps);
                rmsnorm(k + h * hd, k + h * hd, L->k_norm, hd, eps);
            }
        }
        rope_apply(q, (int32_t)nh, (int32_t)hd, (int32_t)t, m->rope_inv_freq);
        rope_apply(k, (int32_t)nkv, (int32_t)hd, (int32_t)t, m->rope_inv_freq);
    }
    const float scale = 1.0f / sqrtf((float)hd);
    const int32_t win = c->sliding_window;
#pragma omp parallel for collapse(2) schedule(dynamic, 4)
    for (int64_t h = 0; h < nh; h++) {
        for (int64_t t = 0; t < T; t++) {
            float *P = A->P + (h * T + t) * T, *o = A->att + t * qd + h * hd;
            const float *q = A->q + t * qd + h * hd;
            const int64_t kh = h / group;
            int64_t first = win > 0 && t - win + 1 > 0 ? t - win + 1 : 0;
            float mx = -INFINITY;
            for (int64_t j = first; j <= t; j++) {
                const float *k = A->k + j * kvd + kh * hd;
                float s = 0;
                for (int64_t d = 0; d < hd; d++) s += q[d] * k[d];
                P[j] = s * scale;
                mx = P[j] > mx ? P[j] : mx;
            }
            float sum = 0;
            for (int64_t j = first; j <= t; j++) sum += (P[j] = expf(P[j] - mx));
            for (int64_t j = 0; j < first; j++) P[j] = 0;
            for (int64_t j = t + 1; j < T; j++) P[j] = 0;
            for (int64_t d = 0; d < hd; d++) o[d] = 0;
            for (int64_t j = first; j <= t; j++) {
                P[j] /= sum;
                const float *v = A->v + j * kvd + kh * hd;
                for (int64_t d = 0; d < hd; d++) o[d] += P[j] * v[d];
            }
        }
    }
    lin_fwd(A->xmid, A->att, &L->wo, L->bo, module_of(ad, l, LORA_O), A->mid[LORA_O], T, scratch);
    for (int64_t i = 0; i < T * H; i++) A->xmid[i] += x[i];
#pragma omp parallel for schedule(static) if (T * H >= 16384)
    for (int64_t t = 0; t < T; t++) {
        const float *xm = A->xmid + t * H;
        rmsnorm(A->h2 + t * H, xm, L->ffn_norm, H, eps);
        float ss = 0;
        for (int64_t i = 0; i < H; i++) ss += xm[i] * xm[i];
        A->r2[t] = 1.0f / sqrtf(ss / (float)H + eps);
    }
    lin_fwd(A->g, A->h2, &L->wg, L->bg, module_of(ad, l, LORA_GATE), A->mid[LORA_GATE], T, scratch);
    lin_fwd(A->u, A->h2, &L->wu, L->bu, module_of(ad, l, LORA_UP), A->mid[LORA_UP], T, scratch);
#pragma omp parallel for schedule(static) if (T * F >= 16384)
    for (int64_t i = 0; i < T * F; i++) {
        float gv = A->g[i];
        A->a[i] = gv / (1.0f + expf(-gv)) * A->u[i];
    }
    lin_fwd(y, A->a, &L->wd, L->bd, module_of(ad, l, LORA_DOWN), A->mid[LORA_DOWN], T, scratch);
    for (int64_t i = 0; i < T * H; i++) y[i] += A->xmid[i];
}

/* ------------------------------------------------------------------ backward */

/* dx[n] += d/dx of y = w ⊙ x · r (r = 1/rms(x)) given dy. */
static void rmsnorm_bwd(float *dx, const float *x, const float *w, float r, const float *dy, int64_t n) {
    float dot = 0;
    for (int64_t i = 0; i < n; i++) dot += dy[i] * w[i] * x[i];
    const float c = r * r * r * dot / (float)n;
    for (int64_t i = 0; i < n; i++) dx[i] += r * dy[i] * w[i] - c * x[i];
}

/* Backward of lin_fwd: dx += dy·W (+ s·(dy·B)·A); grad dA, dB accumulate. */
static void lin_bwd(float *dx, const float *dy, const float *x, const linear_w *W, const lora_module *mod,
                    const float *mid, lora_module *gmod, int64_t T, float *tmp) {
    mm_dx_acc(dx, dy, W->w, W->dt, T, W->out, W->in, 1.0f);
    if (!mod) return;
    const int64_t r = mod->r;
    memset(tmp, 0, (size_t)(T * r) * sizeof(float));
    mm_dx_acc(tmp, dy, mod->B, ST_F32, T, mod->out, r, 1.0f);    /* tmp = dy·B  (T, r) */
    mm_outer_acc(gmod->B, dy, mid, T, mod->out, r, mod->scale);   /* dB += s·dyᵀ·mid */
    mm_outer_acc(gmod->A, tmp, x, T, r, mod->in, mod->scale);     /* dA += s·tmpᵀ·x */
    mm_dx_acc(dx, tmp, mod->A, ST_F32, T, r, mod->in, mod->scale); /* dx += s·tmp·A */
}

/* dy: gradient w.r.t. the layer output (T,H); on return w->dx holds the
 * gradient w.r.t. the layer input. dy may alias w->dx. */
static void layer_bwd(train_ws *w, const prism_model *m, const prism_adapter *ad, prism_adapter *grad, int32_t l,
                      const layer_acts *A, const float *x, int64_t T) {
    const prism_config *c = &m->cfg;
    const layer_w *L = &m->layers[l];
    const int64_t H = c->hidden, hd = c->head_dim, nh = c->n_heads, nkv = c->n_kv_heads, qd = nh * hd,
                  kvd = nkv * hd, F = c->ffn, group = nh / nkv;
    lora_module *gm[LORA_N_TARGETS];
    const lora_module *mm[LORA_N_TARGETS];
    for (int t = 0; t < LORA_N_TARGETS; t++) {
        mm[t] = module_of(ad, l, (lora_target)t);
        gm[t] = mm[t] ? lora_mod(grad, l, (lora_target)t) : NULL;
    }
    float *dx = w->dx; /* gradient w.r.t. y, becomes gradient w.r.t. xmid, then x */

    /* MLP: y = xmid + a·Wdᵀ; a = silu(g)·u */
    float *da = w->dtmp;
    memset(da, 0, (size_t)(T * F) * sizeof(float));
    lin_bwd(da, dx, A->a, &L->wd, mm[LORA_DOWN], A->mid[LORA_DOWN], gm[LORA_DOWN], T, w->lora_tmp);
#pragma omp parallel for schedule(static) if (T * F >= 16384)
    for (int64_t i = 0; i < T * F; i++) {
        const float g = A->g[i], sg = 1.0f / (1.0f + expf(-g));
        w->du[i] = da[i] * g * sg;
        w->dg[i] = da[i] * A->u[i] * sg * (1.0f + g * (1.0f - sg));
    }
    float *dh = w->dh;
    memset(dh, 0, (size_t)(T * H) * sizeof(float));
    lin_bwd(dh, w->dg, A->h2, &L->wg, mm[LORA_GATE], A->mid[LORA_GATE], gm[LORA_GATE], T, w->lora_tmp);
    lin_bwd(dh, w->du, A->h2, &L->wu, mm[LORA_UP], A->mid[LORA_UP], gm[LORA_UP], T, w->lora_tmp);
    for (int64_t t = 0; t < T; t++) rmsnorm_bwd(dx + t * H, A->xmid + t * H, L->ffn_norm, A->r2[t], dh + t * H, H);

    /* attention: xmid = x + att·Woᵀ */
    memset(w->datt, 0, (size_t)(T * qd) * sizeof(float));
    lin_bwd(w->datt, dx, A->att, &L->wo, mm[LORA_O], A->mid[LORA_O], gm[LORA_O], T, w->lora_tmp);
    memset(w->dq, 0, (size_t)(T * qd) * sizeof(float));
    memset(w->dk, 0, (size_t)(T * kvd) * sizeof(float));
    memset(w->dv, 0, (size_t)(T * kvd) * sizeof(float));
    const float scale = 1.0f / sqrtf((float)hd);
    /* one kv head per task: it owns dk/dv of its head, so no races */
#pragma omp parallel for schedule(dynamic, 1)
    for (int64_t kh = 0; kh < nkv; kh++) {
        float *dP = malloc((size_t)T * sizeof(float));
        for (int64_t h = kh * group; h < (kh + 1) * group; h++) {
            for (int64_t t = 0; t < T; t++) {
                const float *P = A->P + (h * T + t) * T, *da_ = w->datt + t * qd + h * hd, *q = A->q + t * qd + h * hd;
                float sum = 0;
                for (int64_t j = 0; j <= t; j++) {
                    if (P[j] == 0.0f) { dP[j] = 0; continue; }
                    const float *v = A->v + j * kvd + kh * hd;
                    float s = 0;
                    for (int64_t d = 0; d < hd; d++) s += da_[d] * v[d];
                    dP[j] = s;
                    sum += P[j] * s;
                    float *dv = w->dv + j * kvd + kh * hd;
                    for (int64_t d = 0; d < hd; d++) dv[d] += P[j] * da_[d];
                }
                float *dq = w->dq + t * qd + h * hd;
                for (int64_t j = 0; j <= t; j++) {
                    if (P[j] == 0.0f) continue;
                    const float ds = P[j] * (dP[j] - sum) * scale;
                    const float *k = A->k + j * kvd + kh * hd;
                    float *dk = w->dk + j * kvd + kh * hd;
                    for (int64_t d = 0; d < hd; d++) {
                        dq[d] += ds * k[d];
                        dk[d] += ds * q[d];
                    }
                }
            }
        }
        free(dP);
    }
    /* RoPE is a rotation: its backward rotates by the opposite angle. */
    for (int64_t t = 0; t < T; t++) {
        rope_apply(w->dq + t * qd, (int32_t)nh, (int32_t)hd, -(int32_t)t, m->rope_inv_freq);
        rope_apply(w->dk + t * kvd, (int32_t)nkv, (int32_t)hd, -(int32_t)t, m->rope_inv_freq);
    }
    if (c->qk_norm) {
        float *tmp = w->dtmp; /* reuse: (T, max(qd, F)) */
        memset(tmp, 0, (size_t)(T * qd) * sizeof(float));
        for (int64_t t = 0; t < T; t++)
            for (int64_t h = 0; h < nh; h++)
                rmsnorm_bwd(tmp + t * qd + h * hd, A->qraw + t * qd + h * hd, L->q_norm, A->rq[t * nh + h],
                            w->dq + t * qd + h * hd, hd);
        memcpy(w->dq, tmp, (size_t)(T * qd) * sizeof(float));
        memset(tmp, 0, (size_t)(T * kvd) * sizeof(float));
        for (int64_t t = 0; t < T; t++)
            for (int64_t h = 0; h < nkv; h++)
                rmsnorm_bwd(tmp + t * kvd + h * hd, A->kraw + t * kvd + h * hd, L->k_norm, A->rk[t * nkv + h],
                            w->dk + t * kvd + h * hd, hd);
        memcpy(w->dk, tmp, (size_t)(T * kvd) * sizeof(float));
    }
    memset(dh, 0, (size_t)(T * H) * sizeof(float));
    lin_bwd(dh, w->dq, A->h1, &L->wq, mm[LORA_Q], A->mid[LORA_Q], gm[LORA_Q], T, w->lora_tmp);
    lin_bwd(dh, w->dk, A->h1, &L->wk, mm[LORA_K], A->mid[LORA_K], gm[LORA_K], T, w->lora_tmp);
    lin_bwd(dh, w->dv, A->h1, &L->wv, mm[LORA_V], A->mid[LORA_V], gm[LORA_V], T, w->lora_tmp);
    for (int64_t t = 0; t < T; t++) rmsnorm_bwd(dx + t * H, x + t * H, L->attn_norm, A->r1[t], dh + t * H, H);
}

/* ------------------------------------------------------------------ losses */

/* dhf[rows[i]] += drows[i] for the n gradient rows of a loss chunk, serially
 * (KL positions may repeat). */
static void add_rows(float *dhf, const float *drows, const int32_t *rows, int n, int64_t H) {
    for (int i = 0; i < n; i++) {
        float *d = dhf + (int64_t)rows[i] * H;
        const float *s = drows + (int64_t)i * H;
        for (int64_t k = 0; k < H; k++) d[k] += s[k];
    }
}

/* Top-k KL rows without the LM head's products: the loss sees only the
 * student logits at the teacher's k indices, z_j = h·W_lm[ti_j], so a row
 * takes k dot products and adds Σ_j dz_j·W_lm[ti_j] into its gradient — k·H
 * instead of V·H work per row, twice. -1 when out of memory. */
static double kl_rows_sparse(train_ws *w, const prism_model *m, const train_example *ex, const int32_t *rows, int n,
                             const int32_t *row_term, float *dhf) {
    const int64_t H = m->cfg.hidden, K = ex->k;
    double loss = 0;
    int fail = 0;
#pragma omp parallel for schedule(dynamic, 1) reduction(+ : loss) reduction(| : fail) if (n > 1)
    for (int i = 0; i < n; i++) {
        float *z = malloc((size_t)(2 * K + H) * sizeof(float)), *dz = z ? z + K : NULL, *wrow = z ? dz + K : NULL;
        int32_t *iota = malloc((size_t)K * sizeof(int32_t));
        if (!z || !iota) {
            free(z), free(iota);
            fail = 1;
            continue;
        }
        const int32_t p = row_term[i], *ti = ex->teacher_indices + (int64_t)p * K;
        const float *h = w->hf + (int64_t)rows[i] * H;
        for (int64_t j = 0; j < K; j++) {
            kern_embed_row(wrow, m->lm_head.w, m->lm_head.dt, ti[j], H);
            double acc = 0;
            for (int64_t e = 0; e < H; e++) acc += (double)h[e] * wrow[e];
            z[j] = (float)acc, dz[j] = 0.0f, iota[j] = (int32_t)j;
        }
        loss += topk_kl_row(z, ex->teacher_values + (int64_t)p * K, iota, (int32_t)K, ex->temperature, dz);
        float *d = w->drows + (int64_t)i * H;
        memset(d, 0, (size_t)H * sizeof(float));
        for (int64_t j = 0; j < K; j++) {
            kern_embed_row(wrow, m->lm_head.w, m->lm_head.dt, ti[j], H);
            for (int64_t e = 0; e < H; e++) d[e] += dz[j] * wrow[e];
        }
        free(z), free(iota);
    }
    if (fail) return -1;
    add_rows(dhf, w->drows, rows, n, H);
    return loss;
}

/* Logits of rows (n rows of hf) -> loss terms and dlogits; accumulates dhf rows. */
static double loss_rows(train_ws *w, const prism_model *m, const train_example *ex, const int32_t *rows, int n,
                        const int32_t *row_term, float *dhf, float *logits_out) {
    const int64_t H = m->cfg.hidden, V = m->cfg.vocab;
    if (ex->loss == LOSS_KL && !logits_out && (int64_t)ex->k * 4 <= V) { /* dense matmuls are faster per flop */
        const double l = kl_rows_sparse(w, m, ex, rows, n, row_term, dhf);
        if (l >= 0) return l;
    }
    float *hrows = w->hrows;
    for (int i = 0; i < n; i++) memcpy(hrows + i * H, w->hf + (int64_t)rows[i] * H, (size_t)H * sizeof(float));
    kern_matmul(w->logits, hrows, m->lm_head.w, m->lm_head.dt, NULL, n, H, V, PRISM_PRECISION_EXACT);
    if (logits_out)
        for (int i = 0; i < n; i++) memcpy(logits_out + (int64_t)rows[i] * V, w->logits + i * V, (size_t)V * sizeof(float));
    double loss = 0;
#pragma omp parallel for schedule(dynamic, 1) reduction(+ : loss) if (n > 1)
    for (int i = 0; i < n; i++) {
        const float *lg = w->logits + i * V;
        float *dl = w->dlogits + i * V;
        memset(dl, 0, (size_t)V * sizeof(float));
        if (ex->loss == LOSS_CE) {
            const int32_t label = ex->labels[rows[i] + 1];
            float mx = -INFINITY;
            for (int64_t v = 0; v < V; v++) mx = lg[v] > mx ? lg[v] : mx;
            double sum = 0;
            for (int64_t v = 0; v < V; v++) sum += exp((double)lg[v] - mx);
            loss += log(sum) + mx - lg[label];
            for (int64_t v = 0; v < V; v++) dl[v] = (float)(exp((double)lg[v] - mx) / sum);
            dl[label] -= 1.0f;
        } else {
            const int32_t K = ex->k, p = row_term[i];
            loss += topk_kl_row(lg, ex->teacher_values + (int64_t)p * K, ex->teacher_indices + (int64_t)p * K, K,
                                ex->temperature, dl);
        }
    }
    /* dhf[rows] += dlogits·W_lm, one pass over the LM head for the whole chunk */
    memset(w->drows, 0, (size_t)n * H * sizeof(float));
    mm_dx_acc(w->drows, w->dlogits, m->lm_head.w, m->lm_head.dt, n, V, H, 1.0f);
    add_rows(dhf, w->drows, rows, n, H);
    return loss;
}

/* ------------------------------------------------------------------ CUDA models */

static gpu_lora_desc *descs_of(const prism_adapter *a, int32_t n_layers) {
    const int64_t n = (int64_t)n_layers * LORA_N_TARGETS;
    gpu_lora_desc *d = calloc((size_t)n, sizeof *d);
    if (d && a)
        for (int64_t i = 0; i < n; i++)
            d[i] = (gpu_lora_desc){a->mod[i].r, a->mod[i].scale, a->mod[i].in, a->mod[i].out, a->mod[i].A, a->mod[i].B};
    return d;
}

static gpu_lora_dst *dsts_of(prism_adapter *a) {
    const int64_t n = (int64_t)a->n_layers * LORA_N_TARGETS;
    gpu_lora_dst *d = calloc((size_t)n, sizeof *d);
    if (d)
        for (int64_t i = 0; i < n; i++) d[i] = (gpu_lora_dst){a->mod[i].A, a->mod[i].B};
    return d;
}

static bool same_layout(const prism_adapter *x, const prism_adapter *a, int32_t n_layers) {
    for (int64_t i = 0; i < (int64_t)n_layers * LORA_N_TARGETS; i++) {
        const int32_t r = a ? a->mod[i].r : 0;
        if (x->mod[i].r != r || (r && (x->mod[i].in != a->mod[i].in || x->mod[i].out != a->mod[i].out ||
                                       x->mod[i].scale != a->mod[i].scale)))
            return false;
    }
    return true;
}

/* The device session for a's shapes (made, or remade when the shapes change). */
static prism_status gpu_session(train_ws *w, const prism_model *m, const prism_adapter *a) {
    if (w->gt && same_layout(w->layout, a, w->n_layers)) return PRISM_OK;
    if (w->gt) w->api->train_free(w->gt);
    w->gt = NULL;
    prism_adapter_free(w->layout);
    w->layout = NULL;
    prism_status st = PRISM_OK;
    if (a) st = lora_alloc_like(a, &w->layout);
    else {
        prism_lora_params lp = prism_lora_default_params();
        lp.targets = 0;
        st = prism_adapter_new(m, lp, &w->layout);
    }
    if (st) return st;
    gpu_lora_desc *d = descs_of(w->layout, w->n_layers);
    if (!d) return prism_error(PRISM_E_NOMEM, "out of memory");
    char err[1024] = "";
    bool rc = w->recompute && !w->keep_if_fits;
    for (;;) { /* activations kept if allowed and they fit; packed passes as long as asked or as memory allows */
        st = (prism_status)w->api->train_new(m->gpu, d, w->pass_T, w->max_T, rc, &w->gt, err, sizeof err);
        if (st != (prism_status)PRISM_GPU_E_NOMEM) break;
        if (!rc && w->recompute) {
            rc = true;
            continue;
        }
        if (w->pass_T == w->max_T) break;
        const int32_t half = w->pass_T / 2;
        w->pass_T = half > w->max_T ? half : w->max_T;
    }
    w->dev_recompute = rc;
    free(d);
    return gpu_check(st, err);
}

/* The example fits the workspace and its ids are in the vocabulary. */
static prism_status example_check(const train_ws *w, const prism_model *m, const train_example *ex) {
    const int64_t T = ex->n_tokens, V = m->cfg.vocab;
    if (T <= 0 || T > w->max_T)
        return prism_error(PRISM_E_ARG, "training sequence of %lld tokens (workspace holds %d)", (long long)T, w->max_T);
    for (int64_t t = 0; t < T; t++)
        if (ex->tokens[t] < 0 || ex->tokens[t] >= V)
            return prism_error(PRISM_E_ARG, "token %d at position %lld is outside the vocabulary", ex->tokens[t], (long long)t);
    if (ex->loss == LOSS_KL) {
        if (ex->k <= 0 || ex->k > V || !(ex->temperature > 0) || ex->n_pos < 0)
            return prism_error(PRISM_E_ARG, "KL example needs 1 <= k <= vocab and temperature > 0 (k %d, T %g)", ex->k, ex->temperature);
        for (int32_t p = 0; p < ex->n_pos; p++)
            if (ex->positions[p] < 0 || ex->positions[p] >= T)
                return prism_error(PRISM_E_ARG, "KL position %d is outside the %lld-token sequence", ex->positions[p], (long long)T);
        for (int64_t i = 0; i < (int64_t)ex->n_pos * ex->k; i++)
            if (ex->teacher_indices[i] < 0 || ex->teacher_indices[i] >= V)
                return prism_error(PRISM_E_ARG, "teacher top-k index %d is outside the vocabulary", ex->teacher_indices[i]);
    } else {
        for (int64_t t = 0; t < T; t++)
            if (ex->labels[t] != -100 && (ex->labels[t] < 0 || ex->labels[t] >= V))
                return prism_error(PRISM_E_ARG, "label %d at position %lld is outside the vocabulary", ex->labels[t], (long long)t);
    }
    return PRISM_OK;
}

static gpu_train_example gpu_ex(const train_example *ex) {
    return (gpu_train_example){ex->loss == LOSS_KL, ex->n_tokens, ex->tokens, ex->labels, ex->n_pos, ex->k,
                               ex->positions, ex->teacher_values, ex->teacher_indices, ex->temperature};
}

/* train_batch_grad on the device: a's values uploaded, the examples run in
 * packed passes, the gradient downloaded and added into grad. */
static prism_status gpu_batch_grad(train_ws *w, const prism_model *m, const prism_adapter *a, prism_adapter *grad,
                                   const train_example *exs, int32_t n, double *loss_sum, int64_t *count,
                                   float *logits_out) {
    prism_status st = gpu_session(w, m, a);
    if (st) return st;
    char err[1024] = "";
    gpu_lora_desc *d = descs_of(a, w->n_layers);
    gpu_lora_dst *dst = dsts_of(w->layout);
    gpu_train_example *gx = malloc((size_t)n * sizeof *gx);
    if (!d || !dst || !gx) st = prism_error(PRISM_E_NOMEM, "out of memory");
    if (!st && a) st = (prism_status)w->api->train_set(w->gt, GPU_TRAIN_PARAMS, d, err, sizeof err);
    if (!st) st = (prism_status)w->api->train_zero_grad(w->gt, err, sizeof err);
    for (int32_t i = 0; i < n && gx; i++) gx[i] = gpu_ex(&exs[i]);
    for (int32_t i = 0; i < n && !st;) { /* greedy passes of up to pass_T tokens */
        int32_t j = i, tok = 0;
        while (j < n && (j == i || tok + exs[j].n_tokens <= w->pass_T)) tok += exs[j++].n_tokens;
        double ls = 0;
        int64_t c = 0;
        st = (prism_status)w->api->train_batch(w->gt, gx + i, j - i, &ls, &c, logits_out, err, sizeof err);
        *loss_sum += ls, *count += c;
        if (logits_out) logits_out += (int64_t)tok * m->cfg.vocab;
        i = j;
    }
    if (!st && a && grad) st = (prism_status)w->api->train_get(w->gt, GPU_TRAIN_GRADS, dst, err, sizeof err);
    free(d);
    free(dst);
    free(gx);
    if (st) return gpu_check(st, err);
    if (a && grad)
        for (int64_t i = 0; i < (int64_t)a->n_layers * LORA_N_TARGETS; i++) {
            const lora_module *s = &w->layout->mod[i];
            lora_module *g = &grad->mod[i];
            if (!s->r) continue;
            for (int64_t k = 0; k < (int64_t)s->r * s->in; k++) g->A[k] += s->A[k];
            for (int64_t k = 0; k < (int64_t)s->r * s->out; k++) g->B[k] += s->B[k];
        }
    return PRISM_OK;
}

bool train_ws_on_gpu(const train_ws *w) { return w && w->api; }

void train_ws_set_pass_tokens(train_ws *w, int32_t tokens) {
    if (w->api && !w->gt) w->pass_T = tokens > w->max_T ? tokens : w->max_T;
}

int32_t train_ws_pass_tokens(const train_ws *w) { return w->api ? w->pass_T : w->max_T; }

void train_ws_keep_if_fits(train_ws *w) {
    if (w->api && !w->gt) w->keep_if_fits = true;
}

bool train_ws_recomputes(const train_ws *w) { return w->api && w->gt ? w->dev_recompute : w->recompute; }

prism_status train_ws_gpu_load(train_ws *w, const prism_model *m, const prism_adapter *a, const prism_adapter *mo,
                               const prism_adapter *vo) {
    prism_status st = gpu_session(w, m, a);
    if (st) return st;
    const prism_adapter *src[3] = {a, mo, vo};
    const int32_t which[3] = {GPU_TRAIN_PARAMS, GPU_TRAIN_M, GPU_TRAIN_V};
    char err[1024] = "";
    for (int i = 0; i < 3 && !st; i++) {
        gpu_lora_desc *d = descs_of(src[i], w->n_layers);
        if (!d) return prism_error(PRISM_E_NOMEM, "out of memory");
        st = (prism_status)w->api->train_set(w->gt, which[i], d, err, sizeof err);
        free(d);
    }
    return gpu_check(st, err);
}

prism_status train_ws_gpu_store(train_ws *w, prism_adapter *a, prism_adapter *mo, prism_adapter *vo) {
    prism_adapter *dstv[3] = {a, mo, vo};
    const int32_t which[3] = {GPU_TRAIN_PARAMS, GPU_TRAIN_M, GPU_TRAIN_V};
    char err[1024] = "";
    prism_status st = PRISM_OK;
    for (int i = 0; i < 3 && !st; i++) {
        gpu_lora_dst *d = dsts_of(dstv[i]);
        if (!d) return prism_error(PRISM_E_NOMEM, "out of memory");
        st = (prism_status)w->api->train_get(w->gt, which[i], d, err, sizeof err);
        free(d);
    }
    a->version++;
    return gpu_check(st, err);
}

prism_status train_ws_gpu_zero(train_ws *w) {
    char err[1024] = "";
    return gpu_check((prism_status)w->api->train_zero_grad(w->gt, err, sizeof err), err);
}

prism_status train_ws_gpu_batch(train_ws *w, const prism_model *m, const train_example *exs, int32_t n,
                                double *loss_sum, int64_t *count) {
    *loss_sum = 0;
    *count = 0;
    gpu_train_example *gx = malloc((size_t)(n > 0 ? n : 1) * sizeof *gx);
    if (!gx) return prism_error(PRISM_E_NOMEM, "out of memory");
    prism_status st = PRISM_OK;
    for (int32_t i = 0; i < n && !st; i++) {
        st = example_check(w, m, &exs[i]);
        gx[i] = gpu_ex(&exs[i]);
    }
    char err[1024] = "";
    if (!st) st = gpu_check((prism_status)w->api->train_batch(w->gt, gx, n, loss_sum, count, NULL, err, sizeof err), err);
    free(gx);
    return st;
}

prism_status train_ws_gpu_step(train_ws *w, int64_t count, double max_grad_norm, double lr, const adamw_params *hp,
                               int64_t step, double *norm) {
    char err[1024] = "";
    prism_status st = (prism_status)w->api->train_scale_norm(w->gt, count > 0 ? 1.0 / (double)count : 1.0, norm, err,
                                                             sizeof err);
    if (st) return gpu_check(st, err);
    double coef = 1.0;
    if (max_grad_norm > 0) { /* as lora_clip_grad_norm */
        double c = max_grad_norm / (*norm + 1e-6);
        if (c < 1.0) coef = c;
    }
    st = (prism_status)w->api->train_adamw(w->gt, coef, lr, hp->beta1, hp->beta2, hp->eps, hp->weight_decay, step, err,
                                           sizeof err);
    return gpu_check(st, err);
}

prism_status train_example_grad(train_ws *w, const prism_model *m, const prism_adapter *a, prism_adapter *grad,
                                const train_example *ex, double *loss_sum, int64_t *count, float *logits_out) {
    const prism_config *c = &m->cfg;
    const int64_t T = ex->n_tokens, H = c->hidden, V = c->vocab;
    *loss_sum = 0;
    *count = 0;
    if (a && (a->n_layers != c->n_layers || !grad || grad->n_layers != a->n_layers))
        return prism_error(PRISM_E_ARG, "adapter and gradient buffers do not match the model's %d layers", c->n_layers);
    prism_status vst = example_check(w, m, ex);
    if (vst) return vst;
    if (w->api) return gpu_batch_grad(w, m, a, grad, ex, 1, loss_sum, count, logits_out);
    int32_t max_r = 0;
    int32_t first_adapted = c->n_layers;
    if (a)
        for (int32_t l = 0; l < c->n_layers; l++)
            for (int t = 0; t < LORA_N_TARGETS; t++) {
                const lora_module *mod = lora_mod(a, l, (lora_target)t);
                if (mod->r > max_r) max_r = mod->r;
                if (mod->r && l < first_adapted) first_adapted = l;
            }
    if (!ws_ensure_rank(w, m, max_r)) return prism_error(PRISM_E_NOMEM, "out of memory");

    /* forward */
    float *x0 = w->xs;
    for (int64_t t = 0; t < T; t++) kern_embed_row(x0 + t * H, m->embed.w, m->embed.dt, ex->tokens[t], H);
    float *scratch = w->dtmp; /* LoRA up-projection scratch during forward: (T, max(F, qd, H)) */
    for (int32_t l = 0; l < c->n_layers; l++) {
        layer_acts *A = &w->acts[w->recompute ? 0 : l];
        layer_fwd(m, a, l, A, w->xs + (int64_t)l * w->max_T * H, w->xs + (int64_t)(l + 1) * w->max_T * H, T, scratch);
    }
    const float *xl = w->xs + (int64_t)c->n_layers * w->max_T * H;
#pragma omp parallel for schedule(static) if (T * H >= 16384)
    for (int64_t t = 0; t < T; t++) {
        rmsnorm(w->hf + t * H, xl + t * H, m->final_norm, H, c->rms_eps);
        float ss = 0;
        for (int64_t i = 0; i < H; i++) ss += xl[t * H + i] * xl[t * H + i];
        w->rf[t] = 1.0f / sqrtf(ss / (float)H + c->rms_eps);
    }

    /* loss over the scored rows, in chunks, accumulating dhf into w->dx */
    float *dhf = w->dx;
    memset(dhf, 0, (size_t)(T * H) * sizeof(float));
    int32_t rows[CHUNK], terms[CHUNK];
    int n = 0;
    double loss = 0;
    int64_t cnt = 0;
    if (ex->loss == LOSS_CE) {
        for (int64_t t = 0; t + 1 < T; t++) {
            if (ex->labels[t + 1] == -100) continue;
            rows[n] = (int32_t)t, terms[n] = 0, cnt++;
            if (++n == CHUNK) loss += loss_rows(w, m, ex, rows, n, terms, dhf, logits_out), n = 0;
        }
        if (n) loss += loss_rows(w, m, ex, rows, n, terms, dhf, logits_out);
    } else {
        for (int32_t p = 0; p < ex->n_pos; p++) {
            rows[n] = ex->positions[p], terms[n] = p;
            if (++n == CHUNK) loss += loss_rows(w, m, ex, rows, n, terms, dhf, logits_out), n = 0;
        }
        if (n) loss += loss_rows(w, m, ex, rows, n, terms, dhf, logits_out);
        cnt = ex->n_pos;
    }
    if (logits_out) {
        /* rows not scored: plain logits (no gradient) */
        int8_t *scored = calloc((size_t)T, 1);
        if (!scored) return prism_error(PRISM_E_NOMEM, "out of memory");
        if (ex->loss == LOSS_CE) {
            for (int64_t t = 0; t + 1 < T; t++) scored[t] = ex->labels[t + 1] != -100;
        } else {
            for (int32_t p = 0; p < ex->n_pos; p++) scored[ex->positions[p]] = 1;
        }
        for (int64_t t0 = 0; t0 < T; t0 += CHUNK) {
            int64_t tn = T - t0 < CHUNK ? T - t0 : CHUNK;
            kern_matmul(w->logits, w->hf + t0 * H, m->lm_head.w, m->lm_head.dt, NULL, tn, H, V, PRISM_PRECISION_EXACT);
            for (int64_t i = 0; i < tn; i++)
                if (!scored[t0 + i]) memcpy(logits_out + (t0 + i) * V, w->logits + i * V, (size_t)V * sizeof(float));
        }
        free(scored);
    }
    *loss_sum = loss;
    *count = cnt;
    if (!a || first_adapted >= c->n_layers) return PRISM_OK;

    /* backward: final norm, then layers down to the first adapted one */
    float *dx = w->dh; /* gradient w.r.t. the final residual */
    memset(dx, 0, (size_t)(T * H) * sizeof(float));
    for (int64_t t = 0; t < T; t++) rmsnorm_bwd(dx + t * H, xl + t * H, m->final_norm, w->rf[t], dhf + t * H, H);
    memcpy(w->dx, dx, (size_t)(T * H) * sizeof(float));
    for (int32_t l = c->n_layers - 1; l >= first_adapted; l--) {
        layer_acts *A = &w->acts[w->recompute ? 0 : l];
        const float *xin = w->xs + (int64_t)l * w->max_T * H;
        if (w->recompute) layer_fwd(m, a, l, A, xin, w->yscr, T, scratch); /* rebuild this layer's internals */
        layer_bwd(w, m, a, grad, l, A, xin, T);
    }
    return PRISM_OK;
}

prism_status train_batch_grad(train_ws *w, const prism_model *m, const prism_adapter *a, prism_adapter *grad,
                              const train_example *exs, int32_t n, double *loss_sum, int64_t *count, float *logits_out) {
    *loss_sum = 0;
    *count = 0;
    if (n < 1) return prism_error(PRISM_E_ARG, "a training batch needs at least one example (got %d)", n);
    if (!w->api) {
        for (int32_t i = 0; i < n; i++) {
            double ls = 0;
            int64_t c = 0;
            prism_status st = train_example_grad(w, m, a, grad, &exs[i], &ls, &c, logits_out);
            if (st) return st;
            *loss_sum += ls, *count += c;
            if (logits_out) logits_out += (int64_t)exs[i].n_tokens * m->cfg.vocab;
        }
        return PRISM_OK;
    }
    const prism_config *c = &m->cfg;
    if (a && (a->n_layers != c->n_layers || !grad || grad->n_layers != a->n_layers))
        return prism_error(PRISM_E_ARG, "adapter and gradient buffers do not match the model's %d layers", c->n_layers);
    for (int32_t i = 0; i < n; i++) {
        prism_status st = example_check(w, m, &exs[i]);
        if (st) return st;
    }
    return gpu_batch_grad(w, m, a, grad, exs, n, loss_sum, count, logits_out);
}
