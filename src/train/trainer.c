/* trainer.c — the LoRA training loop.
 *
 * An optimizer step takes the next batch_size × grad_accum examples of the
 * epoch's order (fewer at the end of an epoch; steps never span epochs):
 *   grad = Σ d(loss_sum)/d(A,B) / Σ count      (mean over every scored token of the step)
 *   clip to max_grad_norm, lr = base · schedule(step), AdamW.
 * Epoch e's order is a Fisher–Yates shuffle driven by splitmix64(seed, e), so
 * a checkpoint only needs (step, epoch, position) to continue exactly. */
#include "train/trainer.h"

#include <jansson.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "model/model.h"
#include "util/error.h"
#include "util/timer.h"

enum { TEACHER_CHUNK = 256 };
/* CUDA: tokens of one packed training pass, at least (when a step has them)
 * and at most; the device session halves the pass while its memory is short. */
enum { PASS_MIN_TOKENS = 4096, PASS_MAX_TOKENS = 1 << 16 };

trainer_params trainer_default_params(void) {
    return (trainer_params){.loss = LOSS_CE, .epochs = 1, .batch_size = 1, .grad_accum = 1, .lr = 2e-4,
                            .schedule = SCHED_LINEAR, .adamw = adamw_default_params(), .max_grad_norm = 1.0,
                            .seed = 42, .shuffle = true, .recompute = true};
}

int64_t trainer_total_steps(const train_data *d, const trainer_params *p) {
    int64_t per = (int64_t)p->batch_size * p->grad_accum;
    int64_t spe = per > 0 ? (d->n + per - 1) / per : 0;
    return p->max_steps > 0 ? p->max_steps : spe * p->epochs; /* as HF: max_steps overrides epochs */
}

static uint64_t splitmix64(uint64_t *s) {
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static void epoch_order(int32_t *perm, int32_t n, uint64_t seed, int32_t epoch, bool shuffle) {
    for (int32_t i = 0; i < n; i++) perm[i] = i;
    if (!shuffle) return;
    uint64_t s = seed ^ (0xD1B54A32D192ED03ull * (uint64_t)(epoch + 1));
    for (int32_t i = n - 1; i > 0; i--) {
        int32_t j = (int32_t)(splitmix64(&s) % (uint64_t)(i + 1));
        int32_t t = perm[i];
        perm[i] = perm[j];
        perm[j] = t;
    }
}

/* ---------------------------------------------------------------- teacher top-k */

typedef struct { float v; int32_t i; } vi;

/* a ranks below b: smaller value, or equal value and larger index */
static inline bool below(vi a, vi b) { return a.v < b.v || (a.v == b.v && a.i > b.i); }

static void sift_down(vi *h, int32_t n, int32_t i) {
    for (;;) {
        int32_t l = 2 * i + 1, r = l + 1, s = i;
        if (l < n && below(h[l], h[s])) s = l;
        if (r < n && below(h[r], h[s])) s = r;
        if (s == i) return;
        vi t = h[i]; h[i] = h[s]; h[s] = t;
        i = s;
    }
}

static int cmp_desc(const void *a, const void *b) {
    const vi *x = a, *y = b;
    return below(*x, *y) ? 1 : below(*y, *x) ? -1 : 0;
}

/* The k largest of logits (V), descending (min-heap of the best k). */
static void topk_row(const float *logits, int32_t V, int32_t k, vi *heap, float *values, int32_t *indices) {
    for (int32_t i = 0; i < k; i++) heap[i] = (vi){logits[i], i};
    for (int32_t i = k / 2 - 1; i >= 0; i--) sift_down(heap, k, i);
    for (int32_t i = k; i < V; i++) {
        vi c = {logits[i], i};
        if (below(heap[0], c)) {
            heap[0] = c;
            sift_down(heap, k, 0);
        }
    }
    qsort(heap, (size_t)k, sizeof *heap, cmp_desc);
    for (int32_t i = 0; i < k; i++) values[i] = heap[i].v, indices[i] = heap[i].i;
}

prism_status teacher_topk(prism_ctx *ctx, const int32_t *tokens, int32_t n_tokens, const int32_t *positions,
                          int32_t n_pos, int32_t k, float *values, int32_t *indices) {
    const int32_t V = prism_ctx_n_vocab(ctx);
    if (k < 1 || k > V) return prism_error(PRISM_E_ARG, "teacher top-k: k = %d is outside 1..%d", k, V);
    int32_t end = 0;
    for (int32_t i = 0; i < n_pos; i++) {
        if (positions[i] < 0 || positions[i] >= n_tokens)
            return prism_error(PRISM_E_ARG, "teacher top-k: position %d is outside 0..%d", positions[i], n_tokens - 1);
        if (positions[i] + 1 > end) end = positions[i] + 1;
    }
    int32_t *pos = malloc((size_t)(end ? end : 1) * sizeof *pos), *seq = calloc((size_t)(end ? end : 1), sizeof *seq);
    int8_t *want = calloc((size_t)(end ? end : 1), 1);
    vi *heap = malloc((size_t)k * sizeof *heap);
    prism_status st = pos && seq && want && heap ? PRISM_OK : prism_error(PRISM_E_NOMEM, "teacher top-k: out of memory");
    for (int32_t i = 0; !st && i < end; i++) pos[i] = i;
    for (int32_t i = 0; !st && i < n_pos; i++) want[positions[i]] = 1;
    if (!st) st = prism_ctx_seq_set_adapter(ctx, 0, NULL);
    if (!st) prism_ctx_seq_clear(ctx, 0);
    for (int32_t s = 0; !st && s < end; s += TEACHER_CHUNK) {
        int32_t nb = end - s < TEACHER_CHUNK ? end - s : TEACHER_CHUNK;
        /* index of each wanted token among the batch's logits */
        prism_batch b = {nb, tokens + s, pos + s, seq + s, want + s};
        if ((st = prism_decode(ctx, &b))) break;
        for (int32_t i = 0; i < n_pos; i++) {
            int32_t p = positions[i];
            if (p < s || p >= s + nb) continue;
            const float *lg = prism_get_logits(ctx, p - s);
            if (!lg) { st = prism_error(PRISM_E_ARG, "teacher top-k: no logits for position %d", p); break; }
            topk_row(lg, V, k, heap, values + (size_t)i * k, indices + (size_t)i * k);
        }
    }
    prism_ctx_seq_clear(ctx, 0);
    free(pos); free(seq); free(want); free(heap);
    return st;
}

/* ---------------------------------------------------------------- settings a resume must match */

static char *config_json(const prism_adapter *a, const train_data *d, const trainer_params *p, int64_t total) {
    char seed[32], hash[32], layers[32];
    int32_t lb = -1, le = -1;
    for (int32_t l = 0; l < a->n_layers; l++)
        for (int t = 0; t < LORA_N_TARGETS; t++)
            if (lora_mod(a, l, (lora_target)t)->r) {
                if (lb < 0) lb = l;
                le = l + 1;
            }
    snprintf(layers, sizeof layers, "%d:%d", lb, le);
    snprintf(seed, sizeof seed, "%llu", (unsigned long long)p->seed);
    snprintf(hash, sizeof hash, "%016llx", (unsigned long long)d->hash);
    json_t *o = json_pack("{s:s, s:i, s:I, s:i, s:i, s:f, s:s, s:I, s:f, s:f, s:f, s:f, s:f, s:s, s:b, s:s, s:i, "
                          "s:I, s:i, s:f, s:b, s:i, s:s}",
                          "loss", p->loss == LOSS_KL ? "kl" : "ce", "epochs", p->epochs, "max_steps",
                          (json_int_t)p->max_steps, "batch_size", p->batch_size, "grad_accum", p->grad_accum, "lr",
                          p->lr, "schedule", lr_schedule_name(p->schedule), "warmup_steps", (json_int_t)p->warmup_steps,
                          "beta1", p->adamw.beta1, "beta2", p->adamw.beta2, "eps", p->adamw.eps, "weight_decay",
                          p->adamw.weight_decay, "max_grad_norm", p->max_grad_norm, "seed", seed, "shuffle",
                          (int)p->shuffle, "data_hash", hash, "n_examples", d->n, "total_steps", (json_int_t)total,
                          "lora_r", a->r, "lora_alpha", (double)a->alpha, "use_rslora", (int)a->use_rslora,
                          "lora_targets", (int)a->targets, "lora_layers", layers);
    if (!o) return NULL;
    char *s = json_dumps(o, JSON_SORT_KEYS | JSON_COMPACT | JSON_REAL_PRECISION(17));
    json_decref(o);
    return s;
}

/* Names the first setting that differs between the checkpoint and this run. */
static prism_status config_check(const char *saved, const char *now, const char *dir) {
    if (!strcmp(saved, now)) return PRISM_OK;
    json_t *a = json_loads(saved, 0, NULL), *b = json_loads(now, 0, NULL);
    const char *key;
    json_t *val;
    char what[512] = "the settings differ";
    json_object_foreach(b, key, val) {
        json_t *old = json_object_get(a, key);
        if (old && json_equal(old, val)) continue;
        char *s1 = old ? json_dumps(old, JSON_ENCODE_ANY | JSON_REAL_PRECISION(17)) : NULL;
        char *s2 = json_dumps(val, JSON_ENCODE_ANY | JSON_REAL_PRECISION(17));
        snprintf(what, sizeof what, "%s was %s, now %s", key, s1 ? s1 : "(absent)", s2 ? s2 : "?");
        free(s1);
        free(s2);
        break;
    }
    json_decref(a);
    json_decref(b);
    return prism_error(PRISM_E_ARG, "%s/checkpoint: cannot resume with different settings: %s", dir, what);
}

/* ---------------------------------------------------------------- the loop */

prism_status trainer_run(prism_model *m, prism_adapter *a, const train_data *d, const trainer_params *p,
                         train_result *res) {
    memset(res, 0, sizeof *res);
    if (p->batch_size < 1 || p->grad_accum < 1)
        return prism_error(PRISM_E_ARG, "batch size %d and gradient accumulation %d must be at least 1", p->batch_size,
                           p->grad_accum);
    if (p->epochs < 1 && p->max_steps < 1) return prism_error(PRISM_E_ARG, "epochs must be at least 1");
    if (!(p->lr >= 0) || p->warmup_steps < 0) return prism_error(PRISM_E_ARG, "lr and warm-up steps must be >= 0");
    if (!d->n) return prism_error(PRISM_E_ARG, "no training examples");
    if ((p->resume || p->save_every || p->stop_at_step) && !p->out_dir)
        return prism_error(PRISM_E_ARG, "checkpoints need an output directory");
    if (p->loss == LOSS_CE) {
        for (int32_t i = 0; i < d->n; i++)
            if (!d->items[i].labels) return prism_error(PRISM_E_ARG, "line %d: not a CE example", d->items[i].line);
    } else {
        for (int32_t i = 0; i < d->n; i++)
            if (d->items[i].labels) return prism_error(PRISM_E_ARG, "line %d: not a KL example", d->items[i].line);
    }
    const int64_t total = trainer_total_steps(d, p), per_step = (int64_t)p->batch_size * p->grad_accum;
    res->total_steps = total;

    prism_adapter *g = NULL, *mo = NULL, *vo = NULL;
    train_ws *ws = NULL;
    prism_ctx *tctx = NULL;
    int32_t *perm = malloc((size_t)d->n * sizeof *perm);
    float *tval = NULL;
    int32_t *tidx = NULL;
    size_t tcap = 0;
    char *cfg = config_json(a, d, p, total), *saved = NULL;
    train_state s = {.seed = p->seed};
    prism_status st = perm && cfg ? PRISM_OK : prism_error(PRISM_E_NOMEM, "trainer: out of memory");
    if (!st) st = lora_alloc_like(a, &g);
    if (!st) st = lora_alloc_like(a, &mo);
    if (!st) st = lora_alloc_like(a, &vo);
    if (!st && p->resume) {
        st = checkpoint_load(p->out_dir, a, mo, vo, &s, &saved);
        if (!st) st = config_check(saved, cfg, p->out_dir);
        if (!st && (s.step > total || (p->max_steps <= 0 && s.epoch > p->epochs) || s.pos > d->n))
            st = prism_error(PRISM_E_FORMAT, "%s/checkpoint: step %lld / epoch %d / position %d do not fit this run",
                             p->out_dir, (long long)s.step, s.epoch, s.pos);
    }
    if (!st) st = train_ws_new(m, d->max_tokens, p->recompute, &ws);
    if (!st && d->max_teacher_tokens > 0) {
        prism_ctx_params cp = prism_ctx_default_params();
        cp.n_seq_max = 1;
        cp.n_ctx = d->max_teacher_tokens;
        cp.n_batch = TEACHER_CHUNK;
        st = prism_ctx_new(m, cp, &tctx);
    }
    /* CUDA models: parameters, gradients and moments stay on the device between
     * steps, and a step's sequences run packed into passes of a micro-batch's
     * worth of tokens (at least PASS_MIN_TOKENS when the step has them). */
    const bool dev = !st && train_ws_on_gpu(ws);
    train_example *pk = NULL; /* the pass being packed */
    size_t *pk_toff = NULL;   /* where each one's teacher top-k lies in tval / tidx */
    int32_t pk_n = 0, pk_tokens = 0, pk_cap = 0, pass_T = 0;
    if (dev) {
        int64_t want = (int64_t)p->batch_size * d->max_tokens, floor = per_step * (int64_t)d->max_tokens;
        if (floor > PASS_MIN_TOKENS) floor = PASS_MIN_TOKENS;
        if (want < floor) want = floor;
        if (want > PASS_MAX_TOKENS) want = PASS_MAX_TOKENS;
        train_ws_set_pass_tokens(ws, (int32_t)want);
        train_ws_keep_if_fits(ws);
        st = train_ws_gpu_load(ws, m, a, mo, vo);
        pass_T = train_ws_pass_tokens(ws);
        pk_cap = (int32_t)(per_step < pass_T ? per_step : pass_T);
        pk = malloc((size_t)pk_cap * sizeof *pk);
        pk_toff = malloc((size_t)pk_cap * sizeof *pk_toff);
        if (!st && (!pk || !pk_toff)) st = prism_error(PRISM_E_NOMEM, "trainer: out of memory");
    }
    if (st) goto done;
    epoch_order(perm, d->n, s.seed, s.epoch, p->shuffle);

    const double t0 = prism_now();
    const int64_t step0 = s.step;
    int64_t run_tokens = 0;
    while (s.step < total) {
        if (s.pos >= d->n) {
            s.epoch++;
            s.pos = 0;
            epoch_order(perm, d->n, s.seed, s.epoch, p->shuffle);
        }
        const int32_t n_ex = (int32_t)(d->n - s.pos < per_step ? d->n - s.pos : per_step);
        if (dev) {
            if ((st = train_ws_gpu_zero(ws))) break;
        } else {
            lora_zero(g);
        }
        double loss_sum = 0;
        int64_t count = 0, tokens = 0;
        size_t tused = 0; /* teacher values held for the pass being packed */
        int32_t pk_first = 0;
        for (int32_t j = 0; j <= n_ex && !st; j++) {
            const train_item *it = j < n_ex ? &d->items[perm[s.pos + j]] : NULL;
            if (dev && pk_n && (!it || pk_tokens + it->n_tokens > pass_T || pk_n == pk_cap)) { /* run the pass */
                for (int32_t e = 0; e < pk_n; e++)
                    if (pk_toff[e] != SIZE_MAX) pk[e].teacher_values = tval + pk_toff[e], pk[e].teacher_indices = tidx + pk_toff[e];
                double ls = 0;
                int64_t cnt = 0;
                st = train_ws_gpu_batch(ws, m, pk, pk_n, &ls, &cnt);
                if (st) {
                    const int l0 = d->items[perm[s.pos + pk_first]].line, l1 = d->items[perm[s.pos + pk_first + pk_n - 1]].line;
                    if (pk_n == 1) prism_error_prefix("line %d", l0);
                    else prism_error_prefix("lines %d..%d (one pass)", l0, l1);
                    break;
                }
                loss_sum += ls;
                count += cnt;
                pk_n = 0, pk_tokens = 0, tused = 0;
            }
            if (!it) break;
            if (dev && !pk_n) pk_first = j;
            const float *vals = NULL;
            const int32_t *idx = NULL;
            if (p->loss == LOSS_KL && it->teacher_tokens) {
                size_t need = tused + (size_t)it->n_pos * it->k;
                if (need > tcap) {
                    if (need < 2 * tcap) need = 2 * tcap;
                    float *nv = realloc(tval, need * sizeof *nv);
                    if (nv) tval = nv;
                    int32_t *ni = realloc(tidx, need * sizeof *ni);
                    if (ni) tidx = ni;
                    if (!nv || !ni) { st = prism_error(PRISM_E_NOMEM, "trainer: out of memory for teacher top-k"); break; }
                    tcap = need;
                }
                st = teacher_topk(tctx, it->teacher_tokens, it->n_teacher, it->teacher_positions, it->n_pos, it->k,
                                  tval + tused, tidx + tused);
                if (st) { prism_error_prefix("line %d: teacher", it->line); break; }
                vals = tval + tused;
                idx = tidx + tused;
            }
            train_example ex = train_item_example(it, p->loss, vals, idx);
            tokens += it->n_tokens;
            if (dev) { /* packed; its teacher values stay until the pass runs */
                pk_toff[pk_n] = vals ? tused : SIZE_MAX; /* tval may move before the pass runs */
                pk[pk_n++] = ex;
                pk_tokens += it->n_tokens;
                if (vals) tused += (size_t)it->n_pos * it->k;
                continue;
            }
            double ls = 0;
            int64_t cnt = 0;
            st = train_example_grad(ws, m, a, g, &ex, &ls, &cnt, NULL);
            if (st) { prism_error_prefix("line %d", it->line); break; }
            loss_sum += ls;
            count += cnt;
        }
        if (st) break;
        s.pos += n_ex;
        double norm = 0;
        const double lr = p->lr * lr_factor(p->schedule, s.step, p->warmup_steps, total);
        const int32_t epoch_now = s.epoch;
        if (dev) {
            s.step++;
            if ((st = train_ws_gpu_step(ws, count, p->max_grad_norm, lr, &p->adamw, s.step, &norm))) break;
        } else {
            if (count > 0) lora_mul(g, 1.0 / (double)count);
            norm = lora_clip_grad_norm(g, p->max_grad_norm);
            s.step++;
            lora_adamw_step(a, g, mo, vo, s.step, lr, &p->adamw);
            a->version++;
        }
        s.tokens_seen += tokens;
        s.last_loss = count > 0 ? loss_sum / (double)count : 0.0;
        run_tokens += tokens;
        res->steps_done = s.step;
        res->last_loss = s.last_loss;

        bool go_on = true;
        if (p->progress) {
            double el = prism_now() - t0;
            train_progress pr = {.step = s.step, .total_steps = total, .epoch = epoch_now, .loss = s.last_loss,
                                 .lr = lr, .grad_norm = norm, .scored = count, .tokens = tokens,
                                 .tokens_per_s = el > 0 ? (double)run_tokens / el : 0, .elapsed_s = el,
                                 .eta_s = el / (double)(s.step - step0) * (double)(total - s.step),
                                 .pass_tokens = dev ? pass_T : 0, .recompute = train_ws_recomputes(ws)};
            go_on = p->progress(p->user, &pr);
        }
        if (p->stop_at_step > 0 && s.step >= p->stop_at_step) go_on = false;
        bool last = s.step == total || !go_on;
        if (p->out_dir && (last || (p->save_every > 0 && s.step % p->save_every == 0))) {
            if (dev && (st = train_ws_gpu_store(ws, a, mo, vo))) break;
            if ((st = checkpoint_save(p->out_dir, a, mo, vo, &s, cfg))) break;
        }
        if (!go_on) break;
    }
    if (dev && !st) st = train_ws_gpu_store(ws, a, mo, vo); /* the trained values back into a */
    res->steps_done = s.step;
    res->finished = !st && s.step == total;
done:
    free(perm); free(tval); free(tidx); free(cfg); free(saved); free(pk); free(pk_toff);
    prism_ctx_free(tctx);
    train_ws_free(ws);
    prism_adapter_free(g);
    prism_adapter_free(mo);
    prism_adapter_free(vo);
    return st;
}
