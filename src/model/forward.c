/* forward.c — the transformer forward pass over a batch of tokens from any
 * mix of sequences, with a per-sequence F32 KV cache.
 *
 * One layer (Llama / Mistral / Qwen2 / Qwen3, pre-norm):
 *   xb = RMSNorm(x)                       input_layernorm
 *   q, k, v = xb·Wqᵀ(+b), xb·Wkᵀ(+b), xb·Wvᵀ(+b)
 *   q, k = RMSNorm per head               Qwen3 q_norm / k_norm only
 *   q, k = RoPE(q, k, pos)
 *   cache[seq][pos] = k, v
 *   a = softmax(q·Kᵀ/√hd) V over the sequence's cached positions ≤ pos (GQA)
 *   x += a·Woᵀ
 *   x += (silu(xb·Wgᵀ) * xb·Wuᵀ)·Wdᵀ, xb = RMSNorm(x) post_attention_layernorm
 * then final RMSNorm and the LM head for the tokens that asked for logits. */
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "gpu/device.h"
#include "kernels/kernels.h"
#include "model/forward.h"
#include "model/layers.h"
#include "model/rope.h"
#include "util/error.h"

/* Below this many elements a loop runs on one thread: waking the team costs
 * more than the work. */
#define PAR_MIN 16384

prism_ctx_params prism_ctx_default_params(void) {
    prism_ctx_params p = {.n_seq_max = 1, .n_ctx = 0, .n_batch = 512};
    return p;
}

static void *xcalloc(size_t n, size_t sz, int *fail) {
    void *p = calloc(n ? n : 1, sz);
    if (!p) *fail = 1;
    return p;
}

/* A context on the model's CUDA device: the module holds the KV cache and the
 * activations; the host keeps the batch metadata, fetched hidden rows and logits. */
static prism_status ctx_new_gpu(prism_ctx *x, prism_ctx **out) {
    const prism_model *m = x->m;
    const int64_t B = x->p.n_batch, H = m->cfg.hidden;
    int fail = 0;
    x->seq_len = xcalloc((size_t)x->p.n_seq_max, sizeof(int32_t), &fail);
    x->seq_tok = xcalloc((size_t)x->p.n_seq_max * (size_t)x->p.n_ctx, sizeof(int32_t), &fail);
    x->x = xcalloc((size_t)(B * H), sizeof(float), &fail);
    x->b_token = xcalloc((size_t)B, sizeof(int32_t), &fail);
    x->b_pos = xcalloc((size_t)B, sizeof(int32_t), &fail);
    x->b_seq = xcalloc((size_t)B, sizeof(int32_t), &fail);
    x->out_row = xcalloc((size_t)B, sizeof(int32_t), &fail);
    x->seq_adapter = xcalloc((size_t)x->p.n_seq_max, sizeof(*x->seq_adapter), &fail);
    x->hid_ok = xcalloc((size_t)B, 1, &fail);
    x->tok_ad = xcalloc((size_t)B, sizeof(*x->tok_ad), &fail);
    x->amax = xcalloc((size_t)B, sizeof(int32_t), &fail);
    x->lora_rows = xcalloc((size_t)B, sizeof(int32_t), &fail); /* reused as the head's row list */
    x->n_threads = 1;
    if (fail) {
        prism_ctx_free(x);
        return prism_error(PRISM_E_NOMEM, "out of memory");
    }
    char err[1024] = "";
    prism_status st = (prism_status)m->gpu_api->ctx_new(m->gpu, x->p.n_seq_max, x->p.n_ctx, x->p.n_batch, &x->gpu,
                                                        err, sizeof err);
    if (st) {
        prism_ctx_free(x);
        return gpu_check(st, err);
    }
    *out = x;
    return PRISM_OK;
}

prism_status prism_ctx_new(prism_model *m, prism_ctx_params p, prism_ctx **out) {
    *out = NULL;
    const prism_config *c = &m->cfg;
    if (p.n_ctx <= 0) p.n_ctx = c->max_pos < 4096 ? c->max_pos : 4096;
    if (p.n_seq_max <= 0 || p.n_seq_max > 4096)
        return prism_error(PRISM_E_ARG, "n_seq_max must be in 1..4096 (got %d)", p.n_seq_max);
    if (p.n_batch <= 0 || p.n_batch > 65536)
        return prism_error(PRISM_E_ARG, "n_batch must be in 1..65536 (got %d)", p.n_batch);
    if (p.n_ctx > (1 << 20)) return prism_error(PRISM_E_ARG, "n_ctx %d is too large", p.n_ctx);
    prism_ctx *x = calloc(1, sizeof *x);
    if (!x) return prism_error(PRISM_E_NOMEM, "out of memory");
    x->m = m;
    x->p = p;
    const int64_t H = c->hidden, qd = (int64_t)c->n_heads * c->head_dim, kvd = (int64_t)c->n_kv_heads * c->head_dim;
    const int64_t B = p.n_batch, F = c->ffn;
    x->kv_dim = kvd;
    int fail = 0;
    if (m->gpu) return ctx_new_gpu(x, out);
    /* calloc of a large block maps zero pages lazily: untouched cache costs nothing. */
    const size_t per_layer = (size_t)p.n_seq_max * (size_t)p.n_ctx * (size_t)kvd;
    x->k_cache = xcalloc((size_t)c->n_layers, sizeof(float *), &fail);
    x->v_cache = xcalloc((size_t)c->n_layers, sizeof(float *), &fail);
    for (int l = 0; !fail && l < c->n_layers; l++) {
        x->k_cache[l] = xcalloc(per_layer, sizeof(float), &fail);
        x->v_cache[l] = xcalloc(per_layer, sizeof(float), &fail);
    }
    x->seq_len = xcalloc((size_t)p.n_seq_max, sizeof(int32_t), &fail);
    x->seq_tok = xcalloc((size_t)p.n_seq_max * (size_t)p.n_ctx, sizeof(int32_t), &fail);
    x->x = xcalloc((size_t)(B * H), sizeof(float), &fail);
    x->xb = xcalloc((size_t)(B * H), sizeof(float), &fail);
    x->q = xcalloc((size_t)(B * qd), sizeof(float), &fail);
    x->k = xcalloc((size_t)(B * kvd), sizeof(float), &fail);
    x->v = xcalloc((size_t)(B * kvd), sizeof(float), &fail);
    x->att = xcalloc((size_t)(B * qd), sizeof(float), &fail);
    x->g = xcalloc((size_t)(B * F), sizeof(float), &fail);
    x->u = xcalloc((size_t)(B * F), sizeof(float), &fail);
    x->n_threads = omp_get_max_threads();
    x->scores = xcalloc((size_t)x->n_threads * (size_t)p.n_ctx, sizeof(float), &fail);
    x->b_token = xcalloc((size_t)B, sizeof(int32_t), &fail);
    x->b_pos = xcalloc((size_t)B, sizeof(int32_t), &fail);
    x->b_seq = xcalloc((size_t)B, sizeof(int32_t), &fail);
    x->out_row = xcalloc((size_t)B, sizeof(int32_t), &fail);
    x->seq_adapter = xcalloc((size_t)p.n_seq_max, sizeof(*x->seq_adapter), &fail);
    x->lora_rows = xcalloc((size_t)B, sizeof(int32_t), &fail);
    x->att_done = xcalloc((size_t)B, 1, &fail);
    if (fail) {
        prism_ctx_free(x);
        return prism_error(PRISM_E_NOMEM, "out of memory allocating a context of %d sequences x %d tokens (KV cache %.1f MiB)",
                           p.n_seq_max, p.n_ctx, (double)per_layer * 2 * c->n_layers * 4 / (1 << 20));
    }
    *out = x;
    return PRISM_OK;
}

void prism_ctx_free(prism_ctx *x) {
    if (!x) return;
    if (x->gpu) x->m->gpu_api->ctx_free(x->gpu);
    free(x->hid_ok);
    free(x->tok_ad);
    free(x->amax);
    for (int l = 0; x->k_cache && l < x->m->cfg.n_layers; l++) {
        if (x->k_cache) free(x->k_cache[l]);
        if (x->v_cache) free(x->v_cache[l]);
    }
    free(x->k_cache);
    free(x->v_cache);
    void *bufs[] = {x->seq_len, x->seq_tok, x->x, x->xb, x->q, x->k, x->v, x->att, x->g, x->u, x->scores, x->b_token,
                    x->b_pos, x->b_seq, x->out_row, x->logits, x->gather, (void *)x->seq_adapter, x->lora_rows,
                    x->lora_buf, x->att_buf, x->att_done};
    for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++) free(bufs[i]);
    free(x);
}

void prism_ctx_seq_clear(prism_ctx *x, int32_t seq) {
    if (seq >= 0 && seq < x->p.n_seq_max) x->seq_len[seq] = 0;
}

int32_t prism_ctx_seq_len(const prism_ctx *x, int32_t seq) {
    return seq >= 0 && seq < x->p.n_seq_max ? x->seq_len[seq] : 0;
}

void prism_ctx_seq_truncate(prism_ctx *x, int32_t seq, int32_t len) {
    if (seq >= 0 && seq < x->p.n_seq_max && len >= 0 && len < x->seq_len[seq]) x->seq_len[seq] = len;
}

const int32_t *prism_ctx_seq_tokens(const prism_ctx *x, int32_t seq) {
    return seq >= 0 && seq < x->p.n_seq_max ? x->seq_tok + (size_t)seq * (size_t)x->p.n_ctx : NULL;
}

int32_t prism_ctx_n_vocab(const prism_ctx *x) { return x->m->cfg.vocab; }
int32_t prism_ctx_n_embd(const prism_ctx *x) { return x->m->cfg.hidden; }
int32_t prism_ctx_n_layers(const prism_ctx *x) { return x->m->cfg.n_layers; }

/* Checks a new batch against the cache and copies its metadata. */
static prism_status batch_begin(prism_ctx *x, const prism_batch *b, int check_positions) {
    const prism_config *c = &x->m->cfg;
    if (!b || b->n_tokens <= 0 || !b->token || !b->pos || !b->seq)
        return prism_error(PRISM_E_ARG, "empty batch");
    if (b->n_tokens > x->p.n_batch)
        return prism_error(PRISM_E_ARG, "batch of %d tokens exceeds the context's n_batch %d", b->n_tokens, x->p.n_batch);
    int32_t *next = malloc((size_t)x->p.n_seq_max * sizeof *next);
    if (!next) return prism_error(PRISM_E_NOMEM, "out of memory");
    memcpy(next, x->seq_len, (size_t)x->p.n_seq_max * sizeof *next);
    prism_status st = PRISM_OK;
    for (int32_t i = 0; i < b->n_tokens && !st; i++) {
        int32_t s = b->seq[i], p = b->pos[i], t = b->token[i];
        if (t < 0 || t >= c->vocab)
            st = prism_error(PRISM_E_ARG, "token %d at batch index %d is outside the vocabulary (0..%d)", t, i, c->vocab - 1);
        else if (s < 0 || s >= x->p.n_seq_max)
            st = prism_error(PRISM_E_ARG, "sequence id %d at batch index %d is outside 0..%d", s, i, x->p.n_seq_max - 1);
        else if (p >= x->p.n_ctx)
            st = prism_error(PRISM_E_RANGE, "sequence %d is full: position %d exceeds the context size %d", s, p, x->p.n_ctx);
        else if (check_positions && p != next[s])
            st = prism_error(PRISM_E_ARG, "sequence %d: batch index %d has position %d, expected %d (positions must continue the cache)", s, i, p, next[s]);
        else
            next[s]++;
    }
    free(next);
    if (st) return st;
    x->n_tokens = b->n_tokens;
    memcpy(x->b_token, b->token, (size_t)b->n_tokens * sizeof(int32_t));
    memcpy(x->b_pos, b->pos, (size_t)b->n_tokens * sizeof(int32_t));
    memcpy(x->b_seq, b->seq, (size_t)b->n_tokens * sizeof(int32_t));
    /* Logit rows: requested ones, or by default the last token of each sequence. */
    x->n_out = 0;
    for (int32_t i = 0; i < b->n_tokens; i++) {
        int want;
        if (b->want_logits) {
            want = b->want_logits[i] != 0;
        } else {
            want = 1;
            for (int32_t j = i + 1; j < b->n_tokens; j++)
                if (b->seq[j] == b->seq[i]) { want = 0; break; }
        }
        x->out_row[i] = want ? x->n_out++ : -1;
    }
    x->layers_done = 0;
    x->head_done = 0;
    return PRISM_OK;
}

static void embed(prism_ctx *x) {
    const prism_model *m = x->m;
    const int64_t H = m->cfg.hidden;
#pragma omp parallel for schedule(static) if (x->n_tokens * H >= PAR_MIN)
    for (int32_t i = 0; i < x->n_tokens; i++) kern_embed_row(x->x + i * H, m->embed.w, m->embed.dt, x->b_token[i], H);
}

prism_status prism_ctx_seq_set_adapter(prism_ctx *x, int32_t seq, const prism_adapter *a) {
    if (seq < 0 || seq >= x->p.n_seq_max)
        return prism_error(PRISM_E_ARG, "sequence id %d is outside 0..%d", seq, x->p.n_seq_max - 1);
    if (a && a->n_layers != x->m->cfg.n_layers)
        return prism_error(PRISM_E_ARG, "adapter %s has %d layers, the model %d", a->name ? a->name : "", a->n_layers,
                           x->m->cfg.n_layers);
    x->seq_adapter[seq] = a;
    return PRISM_OK;
}

/* y[rows] += scale · (in[rows]·Aᵀ)·Bᵀ for every adapter present in the batch:
 * tokens are grouped by their sequence's adapter, so base and adapted
 * sequences (and several adapters) share one forward pass. */
static prism_status lora_apply(prism_ctx *x, float *y, const float *in, int32_t layer, lora_target t, int64_t T) {
    const prism_adapter *done[16];
    int n_done = 0;
    for (int64_t i0 = 0; i0 < T; i0++) {
        const prism_adapter *a = x->seq_adapter[x->b_seq[i0]];
        if (!a) continue;
        int seen = 0;
        for (int k = 0; k < n_done; k++) seen |= done[k] == a;
        if (seen) continue;
        if (n_done < 16) done[n_done++] = a;
        const lora_module *mod = lora_mod(a, layer, t);
        if (!mod->r) continue;
        int64_t n = 0;
        for (int64_t i = i0; i < T; i++)
            if (x->seq_adapter[x->b_seq[i]] == a) x->lora_rows[n++] = (int32_t)i;
        const int64_t in_f = mod->in, out_f = mod->out, r = mod->r;
        size_t need = (size_t)(n * (in_f + r + out_f));
        if (need > x->lora_cap) {
            float *b = realloc(x->lora_buf, need * sizeof(float));
            if (!b) return prism_error(PRISM_E_NOMEM, "out of memory for LoRA scratch");
            x->lora_buf = b;
            x->lora_cap = need;
        }
        const int all = n == T;
        float *xin = all ? (float *)in : x->lora_buf, *mid = x->lora_buf + n * in_f, *up = mid + n * r;
        if (!all)
            for (int64_t k = 0; k < n; k++) memcpy(xin + k * in_f, in + x->lora_rows[k] * in_f, (size_t)in_f * sizeof(float));
        kern_matmul(mid, xin, mod->A, ST_F32, NULL, n, in_f, r, PRISM_PRECISION_EXACT);
        kern_matmul(up, mid, mod->B, ST_F32, NULL, n, r, out_f, PRISM_PRECISION_EXACT);
        const float s = mod->scale;
        for (int64_t k = 0; k < n; k++) {
            float *yr = y + (int64_t)x->lora_rows[k] * out_f;
            const float *ur = up + k * out_f;
            for (int64_t j = 0; j < out_f; j++) yr[j] += s * ur[j];
        }
    }
    return PRISM_OK;
}

static inline void lora_linear(prism_ctx *x, float *y, const float *in, int32_t layer, lora_target t, int64_t T) {
    if (x->n_adapted && lora_apply(x, y, in, layer, t, T)) x->lora_failed = 1;
}

static inline void linear(prism_ctx *x, float *y, const float *in, const linear_w *w, const float *bias, int64_t T,
                          int32_t layer, lora_target t) {
    kern_matmul(y, in, w->w, w->dt, bias, T, w->in, w->out, x->m->params.precision);
    lora_linear(x, y, in, layer, t, T);
}

/* Shortest run of consecutive positions worth the blocked attention. */
#define ATT_BLOCK_MIN 32

/* Causal attention for n consecutive tokens (batch rows i0..i0+n-1) of one
 * sequence, all heads, as matrix products per head: S = Q·Kᵀ·scale over the
 * cached keys 0..p_last, masked and softmaxed row by row, then O = P·V.
 * Returns false (nothing written) if scratch memory is unavailable. */
static bool attend_run(prism_ctx *x, int l, int64_t i0, int64_t n, float scale) {
    const prism_config *c = &x->m->cfg;
    const int64_t hd = c->head_dim, nh = c->n_heads, nkv = c->n_kv_heads, qd = nh * hd, kvd = nkv * hd,
                  group = nh / nkv;
    const int32_t p0 = x->b_pos[i0], window = c->sliding_window;
    const int64_t nk = (int64_t)p0 + n; /* keys 0..p_last */
    const size_t need = (size_t)(2 * nk * hd + 2 * n * hd + n * nk);
    if (need > x->att_cap) {
        float *b = realloc(x->att_buf, need * sizeof(float));
        if (!b) return false;
        x->att_buf = b;
        x->att_cap = need;
    }
    float *K = x->att_buf, *V = K + nk * hd, *Q = V + nk * hd, *O = Q + n * hd, *S = O + n * hd;
    const size_t base = (size_t)x->b_seq[i0] * (size_t)x->p.n_ctx * (size_t)kvd;
    const float *kc = x->k_cache[l] + base, *vc = x->v_cache[l] + base;
    for (int64_t kh = 0; kh < nkv; kh++) {
        for (int64_t j = 0; j < nk; j++) {
            memcpy(K + j * hd, kc + j * kvd + kh * hd, (size_t)hd * sizeof(float));
            memcpy(V + j * hd, vc + j * kvd + kh * hd, (size_t)hd * sizeof(float));
        }
        for (int64_t h = kh * group; h < (kh + 1) * group; h++) {
            for (int64_t r = 0; r < n; r++) memcpy(Q + r * hd, x->q + (i0 + r) * qd + h * hd, (size_t)hd * sizeof(float));
            kern_matmul(S, Q, K, ST_F32, NULL, n, hd, nk, PRISM_PRECISION_EXACT);
#pragma omp parallel for schedule(static) if (n * nk >= PAR_MIN)
            for (int64_t r = 0; r < n; r++)
                softmax_causal(S + r * nk, nk, window > 0 && p0 + r - window + 1 > 0 ? p0 + r - window + 1 : 0,
                               p0 + r + 1, scale);
            memset(O, 0, (size_t)(n * hd) * sizeof(float));
            if (!kern_matmul_dx_acc(O, S, V, ST_F32, n, nk, hd))
                mm_pv(O, S, V, n, nk, hd);
            for (int64_t r = 0; r < n; r++) memcpy(x->att + (i0 + r) * qd + h * hd, O + r * hd, (size_t)hd * sizeof(float));
        }
    }
    return true;
}

static void layer_forward(prism_ctx *x, int l) {
    const prism_model *m = x->m;
    const prism_config *c = &m->cfg;
    const layer_w *L = &m->layers[l];
    const int64_t T = x->n_tokens, H = c->hidden, hd = c->head_dim, nh = c->n_heads, nkv = c->n_kv_heads;
    const int64_t qd = nh * hd, kvd = nkv * hd, F = c->ffn, group = nh / nkv;
    const float eps = c->rms_eps;

    /* attention block */
#pragma omp parallel for schedule(static) if (T * H >= PAR_MIN)
    for (int64_t i = 0; i < T; i++) rmsnorm(x->xb + i * H, x->x + i * H, L->attn_norm, H, eps);
    {
        const kern_mm qkv[3] = {{x->q, L->wq.w, L->wq.dt, L->bq, L->wq.out},
                                {x->k, L->wk.w, L->wk.dt, L->bk, L->wk.out},
                                {x->v, L->wv.w, L->wv.dt, L->bv, L->wv.out}};
        kern_matmul_group(qkv, 3, x->xb, T, H, m->params.precision);
        lora_linear(x, x->q, x->xb, l, LORA_Q, T);
        lora_linear(x, x->k, x->xb, l, LORA_K, T);
        lora_linear(x, x->v, x->xb, l, LORA_V, T);
    }
#pragma omp parallel for schedule(static) if (T * qd >= PAR_MIN)
    for (int64_t i = 0; i < T; i++) {
        float *q = x->q + i * qd, *k = x->k + i * kvd;
        if (c->qk_norm) {
            for (int64_t h = 0; h < nh; h++) rmsnorm(q + h * hd, q + h * hd, L->q_norm, hd, eps);
            for (int64_t h = 0; h < nkv; h++) rmsnorm(k + h * hd, k + h * hd, L->k_norm, hd, eps);
        }
        rope_apply(q, (int32_t)nh, (int32_t)hd, x->b_pos[i], m->rope_inv_freq);
        rope_apply(k, (int32_t)nkv, (int32_t)hd, x->b_pos[i], m->rope_inv_freq);
        size_t row = ((size_t)x->b_seq[i] * (size_t)x->p.n_ctx + (size_t)x->b_pos[i]) * (size_t)kvd;
        memcpy(x->k_cache[l] + row, k, (size_t)kvd * sizeof(float));
        memcpy(x->v_cache[l] + row, x->v + i * kvd, (size_t)kvd * sizeof(float));
    }
    const float scale = 1.0f / sqrtf((float)hd);
    const int32_t window = c->sliding_window;
    /* Prefill runs (many consecutive positions of one sequence) go through
     * matrix products; single tokens (decode) through the per-query loop. */
    memset(x->att_done, 0, (size_t)T);
    for (int64_t i = 0; i < T;) {
        int64_t j = i + 1;
        while (j < T && x->b_seq[j] == x->b_seq[i] && x->b_pos[j] == x->b_pos[j - 1] + 1) j++;
        if (j - i >= ATT_BLOCK_MIN && attend_run(x, l, i, j - i, scale)) memset(x->att_done + i, 1, (size_t)(j - i));
        i = j;
    }
    int64_t att_work = 0; /* ~ query·key products left to the per-query loop */
    for (int64_t i = 0; i < T; i++) att_work += x->att_done[i] ? 0 : (int64_t)(x->b_pos[i] + 1) * qd;
#pragma omp parallel for collapse(2) schedule(dynamic, 1) if (att_work >= PAR_MIN)
    for (int64_t i = 0; i < T; i++) {
        for (int64_t h = 0; h < nh; h++) {
            if (x->att_done[i]) continue;
            const int32_t pos = x->b_pos[i];
            const size_t base = (size_t)x->b_seq[i] * (size_t)x->p.n_ctx * (size_t)kvd;
            int32_t first = window > 0 && pos - window + 1 > 0 ? pos - window + 1 : 0;
            float *scores = x->scores + (size_t)omp_get_thread_num() * (size_t)x->p.n_ctx;
            attend_head(x->att + i * qd + h * hd, x->q + i * qd + h * hd, x->k_cache[l] + base, x->v_cache[l] + base,
                        kvd, (h / group) * hd, first, pos + 1, (int32_t)hd, scale, scores);
        }
    }
    linear(x, x->xb, x->att, &L->wo, L->bo, T, l, LORA_O);
#pragma omp parallel for schedule(static) if (T * H >= PAR_MIN)
    for (int64_t i = 0; i < T * H; i++) x->x[i] += x->xb[i];

    /* MLP block */
#pragma omp parallel for schedule(static) if (T * H >= PAR_MIN)
    for (int64_t i = 0; i < T; i++) rmsnorm(x->xb + i * H, x->x + i * H, L->ffn_norm, H, eps);
    {
        const kern_mm gu[2] = {{x->g, L->wg.w, L->wg.dt, L->bg, L->wg.out}, {x->u, L->wu.w, L->wu.dt, L->bu, L->wu.out}};
        kern_matmul_group(gu, 2, x->xb, T, H, m->params.precision);
        lora_linear(x, x->g, x->xb, l, LORA_GATE, T);
        lora_linear(x, x->u, x->xb, l, LORA_UP, T);
    }
#pragma omp parallel for schedule(static) if (T * F >= PAR_MIN)
    for (int64_t i = 0; i < T; i++) swiglu(x->g + i * F, x->u + i * F, F);
    linear(x, x->xb, x->g, &L->wd, L->bd, T, l, LORA_DOWN);
#pragma omp parallel for schedule(static) if (T * H >= PAR_MIN)
    for (int64_t i = 0; i < T * H; i++) x->x[i] += x->xb[i];
}

static prism_status run_layers(prism_ctx *x, int32_t lb, int32_t le, const float *x_in);

prism_status prism_decode_layers(prism_ctx *x, const prism_batch *b, int32_t lb, int32_t le) {
    const int32_t NL = x->m->cfg.n_layers;
    if (lb < 0 || le > NL || lb >= le)
        return prism_error(PRISM_E_ARG, "layer range [%d, %d) is not within [0, %d)", lb, le, NL);
    if (lb == 0) {
        prism_status st = batch_begin(x, b, 1);
        if (st) return st;
        if (!x->gpu) embed(x);
    } else {
        if (x->layers_done != lb || x->head_done)
            return prism_error(PRISM_E_ARG, "layers [%d, %d) requested but the current batch has run layers [0, %d)", lb, le, x->layers_done);
        if (!b || b->n_tokens != x->n_tokens || memcmp(b->token, x->b_token, (size_t)x->n_tokens * sizeof(int32_t)) ||
            memcmp(b->seq, x->b_seq, (size_t)x->n_tokens * sizeof(int32_t)) ||
            memcmp(b->pos, x->b_pos, (size_t)x->n_tokens * sizeof(int32_t)))
            return prism_error(PRISM_E_ARG, "layers [%d, %d): the batch differs from the one that ran layers [0, %d)", lb, le, lb);
    }
    return run_layers(x, lb, le, NULL);
}

/* Layers [lb, le) on the device; x_in as in gpu.h's forward. */
static prism_status run_layers_gpu(prism_ctx *x, int32_t lb, int32_t le, const float *x_in) {
    const prism_model *m = x->m;
    for (int32_t i = 0; i < x->n_tokens; i++) {
        const prism_adapter *a = x->seq_adapter[x->b_seq[i]];
        x->tok_ad[i] = NULL;
        if (a) {
            prism_status st = gpu_adapter_for(m, a, &x->tok_ad[i]);
            if (st) return st;
        }
    }
    gpu_batch gb = {x->n_tokens, x->b_token, x->b_pos, x->b_seq, (const gpu_adapter *const *)x->tok_ad};
    char err[1024] = "";
    memset(x->hid_ok, 0, (size_t)x->n_tokens);
    prism_status st = (prism_status)m->gpu_api->forward(x->gpu, &gb, lb, le, x_in, err, sizeof err);
    if (st) {
        x->layers_done = 0;
        return gpu_check(st, err);
    }
    return PRISM_OK;
}

static prism_status run_layers(prism_ctx *x, int32_t lb, int32_t le, const float *x_in) {
    const int32_t NL = x->m->cfg.n_layers;
    if (x->gpu) {
        prism_status st = run_layers_gpu(x, lb, le, x_in);
        if (st) return st;
    } else {
        x->n_adapted = 0;
        for (int32_t i = 0; i < x->n_tokens; i++) x->n_adapted += x->seq_adapter[x->b_seq[i]] != NULL;
        x->lora_failed = 0;
        for (int32_t l = lb; l < le; l++) layer_forward(x, l);
        if (x->lora_failed) {
            x->layers_done = 0; /* the batch is unusable; it must be run again from layer 0 */
            return prism_error(PRISM_E_NOMEM, "out of memory applying LoRA adapters");
        }
    }
    x->layers_done = le;
    if (le == NL)
        for (int32_t i = 0; i < x->n_tokens; i++) {
            x->seq_len[x->b_seq[i]] = x->b_pos[i] + 1;
            x->seq_tok[(size_t)x->b_seq[i] * (size_t)x->p.n_ctx + (size_t)x->b_pos[i]] = x->b_token[i];
        }
    return PRISM_OK;
}

static prism_status ensure_logits(prism_ctx *x) {
    const int64_t H = x->m->cfg.hidden, V = x->m->cfg.vocab;
    if (x->n_out <= x->cap_out) return PRISM_OK;
    float *lg = realloc(x->logits, (size_t)x->n_out * (size_t)V * sizeof(float));
    if (!lg) return prism_error(PRISM_E_NOMEM, "out of memory for %d x %lld logits", x->n_out, (long long)V);
    x->logits = lg;
    float *ga = realloc(x->gather, (size_t)x->n_out * (size_t)H * sizeof(float));
    if (!ga) return prism_error(PRISM_E_NOMEM, "out of memory");
    x->gather = ga;
    x->cap_out = x->n_out;
    return PRISM_OK;
}

static prism_status decode_head_gpu(prism_ctx *x) {
    prism_status st;
    int32_t *rows = x->lora_rows; /* (B): the batch rows that want logits, in logit-row order */
    for (int32_t i = 0; i < x->n_tokens; i++)
        if (x->out_row[i] >= 0) rows[x->out_row[i]] = i;
    char err[1024] = "";
    memset(x->hid_ok, 0, (size_t)x->n_tokens);
    x->gpu_logits = NULL;
    x->amax_ok = 0;
    st = (prism_status)x->m->gpu_api->head(x->gpu, rows, x->n_out, err, sizeof err);
    if (st) return gpu_check(st, err);
    x->head_done = 1;
    return PRISM_OK;
}

prism_status prism_decode_head(prism_ctx *x) {
    const prism_model *m = x->m;
    const int64_t H = m->cfg.hidden, V = m->cfg.vocab;
    if (x->layers_done != m->cfg.n_layers || x->head_done)
        return prism_error(PRISM_E_ARG, "prism_decode_head needs a batch that has run all %d layers", m->cfg.n_layers);
    if (x->gpu) return decode_head_gpu(x);
#pragma omp parallel for schedule(static) if (x->n_tokens * H >= PAR_MIN)
    for (int32_t i = 0; i < x->n_tokens; i++) rmsnorm(x->x + i * H, x->x + i * H, m->final_norm, H, m->cfg.rms_eps);
    x->head_done = 1;
    if (x->n_out == 0) return PRISM_OK;
    prism_status st = ensure_logits(x);
    if (st) return st;
    for (int32_t i = 0; i < x->n_tokens; i++)
        if (x->out_row[i] >= 0) memcpy(x->gather + x->out_row[i] * H, x->x + i * H, (size_t)H * sizeof(float));
    kern_matmul(x->logits, x->gather, m->lm_head.w, m->lm_head.dt, NULL, x->n_out, H, V, m->params.precision);
    return PRISM_OK;
}

prism_status prism_decode(prism_ctx *x, const prism_batch *b) {
    prism_status st = prism_decode_layers(x, b, 0, x->m->cfg.n_layers);
    return st ? st : prism_decode_head(x);
}

const float *prism_get_logits(const prism_ctx *x, int32_t i) {
    if (!x->head_done || i < 0 || i >= x->n_tokens || x->out_row[i] < 0) return NULL;
    if (x->gpu) {
        prism_ctx *w = (prism_ctx *)x; /* logits are copied from the device on first use */
        if (!w->gpu_logits) {
            char err[1024] = "";
            prism_status st = (prism_status)x->m->gpu_api->logits(x->gpu, &w->gpu_logits, err, sizeof err);
            if (st) {
                gpu_check(st, err);
                return NULL;
            }
        }
        return w->gpu_logits + (size_t)x->out_row[i] * (size_t)x->m->cfg.vocab;
    }
    return x->logits + (size_t)x->out_row[i] * (size_t)x->m->cfg.vocab;
}

int32_t prism_get_argmax(const prism_ctx *x, int32_t i) {
    if (!x->head_done || i < 0 || i >= x->n_tokens || x->out_row[i] < 0) return -1;
    if (x->gpu) {
        prism_ctx *w = (prism_ctx *)x;
        if (!w->amax_ok) {
            char err[1024] = "";
            prism_status st = (prism_status)x->m->gpu_api->argmax(x->gpu, w->amax, err, sizeof err);
            if (st) {
                gpu_check(st, err);
                return -1;
            }
            w->amax_ok = 1;
        }
        return x->amax[x->out_row[i]];
    }
    const float *l = x->logits + (size_t)x->out_row[i] * (size_t)x->m->cfg.vocab;
    int32_t best = 0;
    for (int32_t j = 1; j < x->m->cfg.vocab; j++)
        if (l[j] > l[best]) best = j;
    return best;
}

bool forward_samples_on_device(const prism_ctx *x) {
    static int off = -1;
    if (off < 0) off = getenv("PRISM_CUDA_SAMPLE") && *getenv("PRISM_CUDA_SAMPLE") == '0';
    return x->gpu && x->m->gpu_api->sample && !off;
}

prism_status forward_sample_softmax(prism_ctx *x, const float *inv_t, const double *u, int32_t *out) {
    if (!forward_samples_on_device(x) || !x->head_done)
        return prism_error(PRISM_E_ARG, "no logits on the device to sample from");
    const int32_t n = x->n_out;
    float *t = calloc((size_t)(n > 0 ? n : 1), sizeof *t);
    double *uu = calloc((size_t)(n > 0 ? n : 1), sizeof *uu);
    int32_t *o = malloc((size_t)(n > 0 ? n : 1) * sizeof *o);
    prism_status st = PRISM_OK;
    if (!t || !uu || !o) {
        st = prism_error(PRISM_E_NOMEM, "out of memory");
        goto done;
    }
    for (int32_t k = 0; k < x->n_tokens; k++)
        if (x->out_row[k] >= 0) t[x->out_row[k]] = inv_t[k], uu[x->out_row[k]] = u[k];
    char err[1024] = "";
    st = (prism_status)x->m->gpu_api->sample(x->gpu, t, uu, o, err, sizeof err);
    if (st) {
        st = gpu_check(st, err);
        goto done;
    }
    for (int32_t k = 0; k < x->n_tokens; k++) out[k] = x->out_row[k] >= 0 ? o[x->out_row[k]] : -1;
done:
    free(t), free(uu), free(o);
    return st;
}

const float *forward_hidden_rows(prism_ctx *x, int32_t i0, int32_t n) {
    if (i0 < 0 || n <= 0 || i0 + n > x->n_tokens || x->layers_done == 0) {
        prism_error(PRISM_E_ARG, "hidden rows [%d, %d) are not in the last batch", i0, i0 + n);
        return NULL;
    }
    const int64_t H = x->m->cfg.hidden;
    if (x->gpu) {
        int32_t need = 0;
        for (int32_t i = i0; i < i0 + n; i++) need |= !x->hid_ok[i];
        if (need) {
            char err[1024] = "";
            prism_status st = (prism_status)x->m->gpu_api->hidden(x->gpu, i0, n, x->x + i0 * H, err, sizeof err);
            if (st) {
                gpu_check(st, err);
                return NULL;
            }
            memset(x->hid_ok + i0, 1, (size_t)n);
        }
    }
    return x->x + (size_t)i0 * (size_t)H;
}

prism_status forward_gate_logits(prism_ctx *x, const struct gpu_gate *g, const int32_t *rows, int32_t n, float *out) {
    if (!x->gpu || !g) return prism_error(PRISM_E_ARG, "the device gate needs a CUDA context");
    if (x->layers_done == 0) return prism_error(PRISM_E_ARG, "the gate reads a batch that has run no layer");
    char err[1024] = "";
    return gpu_check((prism_status)x->m->gpu_api->gate_logits(x->gpu, g, rows, n, out, err, sizeof err), err);
}

const float *prism_get_hidden(const prism_ctx *x, int32_t i) {
    if (i < 0 || i >= x->n_tokens || x->layers_done == 0) return NULL;
    return forward_hidden_rows((prism_ctx *)x, i, 1); /* a device row is fetched into the host copy */
}

prism_status forward_unchecked(prism_ctx *x, const prism_batch *b, const float *x_in, int32_t lb, int32_t le) {
    const int32_t NL = x->m->cfg.n_layers;
    if (lb < 0 || le > NL || lb >= le)
        return prism_error(PRISM_E_ARG, "layer range [%d, %d) is not within [0, %d)", lb, le, NL);
    if (lb > 0 && !x_in) return prism_error(PRISM_E_ARG, "forward_unchecked: layers from %d need the input rows", lb);
    prism_status st = batch_begin(x, b, 0);
    if (st) return st;
    if (x->gpu) return run_layers(x, lb, le, x_in);
    if (lb == 0 && !x_in) embed(x);
    else memcpy(x->x, x_in, (size_t)x->n_tokens * (size_t)x->m->cfg.hidden * sizeof(float));
    return run_layers(x, lb, le, NULL);
}
