/* scheduler.c — continuous batching. One thread owns the prism_ctx; its
 * n_seq_max KV slots hold the running requests. Each iteration:
 *
 *   1. drop cancelled requests (client gone) and free their slots;
 *   2. admit queued requests into free slots and prefill each one alone —
 *      routed requests run layer 0, the gate reads the last prompt token's
 *      hidden state and sets the slot's adapter, then layers 1..L-1 run, in
 *      chunks exactly as prism_generate does;
 *   3. accept every running slot's sampled token (EOS, stop strings,
 *      max_tokens, context) and publish the text that can be sent;
 *   4. run one decode step for every slot still live — base-model and
 *      adapter slots in the same batch — and sample each slot's next token.
 *
 * Steps 3-4 follow prism_generate token for token, so a greedy request
 * produces the ids it would produce alone. The mutex is held for steps 1-3
 * only; prefill and decode run unlocked. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "generate/rows.h"
#include "generate/stop.h"
#include "model/forward.h"
#include "server/server.h"
#include "util/buf.h"
#include "util/error.h"
#include "util/timer.h"

typedef struct {
    srv_req *req;            /* NULL = free */
    prism_sampler *sampler;
    prism_decoder *dec;
    int32_t *hist;           /* prompt + generated ids */
    size_t n_hist, cap_hist;
    char *text;              /* generated text (stop string cut when hit) */
    size_t n_text, cap_text;
    size_t emitted;          /* bytes of text published to the request */
    int32_t next;            /* sampled token, accepted at the next step */
    int32_t n_gen;
    bool fresh;              /* admitted, not yet prefilled */
} slot;

struct srv_sched {
    pthread_t th;
    bool th_started;
    pthread_cond_t cv;
    srv_req *head, *tail;    /* waiting requests, FIFO */
    int n_queued;
    slot *slots;
    int n_slots, n_running;
    prism_ctx *ctx;
    int32_t *bt, *bp, *bs;   /* (n_batch) batch tokens, positions, sequences */
    gen_rows rows;           /* (n_batch) the rows a batch samples */
    float *h0;               /* (prompt tokens, H) layer-0 outputs of a routed prefill */
    size_t h0_cap;
    bool draining;
    double deadline;
};

/* ---------------------------------------------------------------- slot buffers */

static int push_id(slot *s, int32_t id) { return buf_push_i32(&s->hist, &s->n_hist, &s->cap_hist, id); }

static void slot_reset(srv_sched *q, int i) {
    slot *s = &q->slots[i];
    prism_sampler_free(s->sampler);
    prism_decoder_free(s->dec);
    free(s->hist);
    free(s->text);
    memset(s, 0, sizeof *s);
    prism_ctx_seq_clear(q->ctx, i);
    prism_ctx_seq_set_adapter(q->ctx, i, NULL);
}

/* ---------------------------------------------------------------- request completion (under srv->mu) */

static void req_done(srv *s, srv_sched *q, int i, srv_finish fin, int err_status, const char *err) {
    slot *sl = &q->slots[i];
    srv_req *r = sl->req;
    r->finish = fin;
    r->n_gen = sl->n_gen;
    if (err_status) {
        r->err_status = err_status;
        snprintf(r->err_msg, sizeof r->err_msg, "%s", err);
    }
    if (sl->n_gen > 0 && (r->gen = malloc((size_t)sl->n_gen * sizeof(int32_t))))
        memcpy(r->gen, sl->hist + r->n_prompt, (size_t)sl->n_gen * sizeof(int32_t));
    r->state = RQ_DONE;
    double now = prism_now();
    metrics_tokens(s->metrics, r->n_prompt, sl->n_gen);
    metrics_latency(s->metrics, now - r->t_submit, r->t_first > 0 ? r->t_first - r->t_submit : -1);
    pthread_cond_broadcast(&r->cv);
    srv_req_release(s, r);
    slot_reset(q, i);
    q->n_running--;
}

static void queued_fail(srv *s, srv_req *r, int status, const char *msg) {
    r->state = RQ_DONE;
    r->finish = SRV_FINISH_ABORT;
    r->err_status = status;
    snprintf(r->err_msg, sizeof r->err_msg, "%s", msg);
    pthread_cond_broadcast(&r->cv);
    srv_req_release(s, r);
}

/* Publishes text[emitted..upto) of slot i to its request. */
static int publish(slot *sl, size_t upto) {
    srv_req *r = sl->req;
    if (upto <= sl->emitted) return 1;
    if (!buf_push_text(&r->text, &r->n_text, &r->cap_text, sl->text + sl->emitted, upto - sl->emitted)) return 0;
    sl->emitted = upto;
    return 1;
}

/* ---------------------------------------------------------------- prefill (unlocked) */

/* The next tokens of the slots of rows k0..n-1 of the batch of n rows just headed (q->bs[k]: each row's
 * slot; a decode step: every row; a prefill: its last row), drawn as prism_generate draws them. */
static prism_status sample_rows(srv_sched *q, int32_t n, int32_t k0) {
    for (int32_t k = 0; k < n; k++) {
        slot *sl = &q->slots[q->bs[k]];
        q->rows.rows[k] = k < k0 ? (gen_row){0} : (gen_row){sl->sampler, sl->hist, sl->n_hist, &sl->next};
    }
    return gen_sample_rows(q->ctx, &q->rows, n);
}

/* A routed request's route, from row `row` of batch b, which has just run layer 0 (its prompt's last token). */
static prism_status route(srv *s, srv_req *r, prism_ctx *c, const prism_batch *b, int32_t row, float *prob,
                          bool *on_adapter) {
    const prism_route_mode mode = r->kind == SRV_MODEL_FORCE_ADAPTER ? PRISM_ROUTE_ADAPTER
                                  : r->kind == SRV_MODEL_FORCE_BASE  ? PRISM_ROUTE_BASE
                                                                     : PRISM_ROUTE_AUTO;
    return prism_router_route_rows(s->cfg.router, c, b, &row, 1, mode, prob, on_adapter);
}

/* A routed prompt that fits one batch runs layer 0, the gate at its last token, then layers 1..L-1 straight on
 * (on a GPU the residual stream never leaves the device). A longer one runs layer 0 over all its batches
 * first, their outputs kept on the host until the gate has read the last token, then layers 1..L-1 from them. */
static prism_status prefill(srv *s, srv_sched *q, int si) {
    slot *sl = &q->slots[si];
    srv_req *r = sl->req;
    prism_ctx *c = q->ctx;
    const int32_t nb = c->p.n_batch, n = r->n_prompt, L = c->m->cfg.n_layers;
    const int64_t H = c->m->cfg.hidden;
    const bool routed = r->kind == SRV_MODEL_ROUTED || r->kind == SRV_MODEL_FORCE_BASE || r->kind == SRV_MODEL_FORCE_ADAPTER;
    const bool kept = routed && n > nb;
    prism_status st;
    prism_ctx_seq_clear(c, si);
    if ((st = prism_ctx_seq_set_adapter(c, si, routed ? NULL : r->adapter))) return st;
    if (kept && (size_t)n * (size_t)H > q->h0_cap) {
        float *h = realloc(q->h0, (size_t)n * (size_t)H * sizeof(float));
        if (!h) return prism_error(PRISM_E_NOMEM, "out of memory for a routed prefill of %d tokens", n);
        q->h0 = h;
        q->h0_cap = (size_t)n * (size_t)H;
    }
    float prob = -1;
    bool on_adapter = !routed && r->adapter;
    for (int phase = kept ? 0 : 1; phase < 2; phase++) {
        for (int32_t off = 0; off < n; off += nb) {
            int32_t take = n - off < nb ? n - off : nb;
            for (int32_t j = 0; j < take; j++) {
                q->bt[j] = r->prompt[off + j];
                q->bp[j] = off + j;
                q->bs[j] = si;
            }
            prism_batch b = {.n_tokens = take, .token = q->bt, .pos = q->bp, .seq = q->bs, .want_logits = NULL};
            if (!routed) {
                if ((st = prism_decode(c, &b))) return st;
            } else if (phase == 0) { /* kept: layer 0 of every batch */
                if ((st = forward_unchecked(c, &b, NULL, 0, 1))) return st;
                const float *hx = forward_hidden_rows(c, 0, take);
                if (!hx) return PRISM_E_NOMEM;
                memcpy(q->h0 + (int64_t)off * H, hx, (size_t)take * (size_t)H * sizeof(float));
                if (off + take == n && (st = route(s, r, c, &b, take - 1, &prob, &on_adapter)))
                    return st;
            } else if (kept) {
                if ((st = forward_unchecked(c, &b, q->h0 + (int64_t)off * H, 1, L))) return st;
                if ((st = prism_decode_head(c))) return st;
            } else { /* one batch */
                if ((st = forward_unchecked(c, &b, NULL, 0, 1)) ||
                    (st = route(s, r, c, &b, take - 1, &prob, &on_adapter)) ||
                    (st = prism_decode_layers(c, &b, 1, L)) || (st = prism_decode_head(c)))
                    return st;
            }
            if (phase == 1 && off + take == n && (st = sample_rows(q, take, take - 1))) return st;
        }
    }
    r->gate_prob = prob;            /* read by others only once `started` is set under the lock */
    r->routed_adapter = on_adapter;
    return PRISM_OK;
}

/* ---------------------------------------------------------------- one accept pass (under srv->mu) */

/* Accepts slot i's sampled token as prism_generate does; returns 1 if the
 * slot stays live (and adds it to the batch at *nb), 0 if it finished. */
static int accept(srv *s, srv_sched *q, int i, int32_t *nb) {
    slot *sl = &q->slots[i];
    srv_req *r = sl->req;
    const prism_config *cfg = &q->ctx->m->cfg;
    const int32_t n_ctx = q->ctx->p.n_ctx;
    int32_t id = sl->next;
    bool is_eos = false;
    for (int32_t k = 0; k < cfg->n_eos; k++) is_eos |= id == cfg->eos_ids[k];
    if (is_eos && !r->ignore_eos) {
        const char *rest = prism_decoder_flush(sl->dec);
        if (!rest || !buf_push_text(&sl->text, &sl->n_text, &sl->cap_text, rest, strlen(rest)) || !publish(sl, sl->n_text))
            goto oom;
        req_done(s, q, i, SRV_FINISH_EOS, 0, NULL);
        return 0;
    }
    if (!push_id(sl, id)) goto oom;
    sl->n_gen++;
    if (r->t_first == 0) r->t_first = prism_now();
    const char *piece = prism_decoder_push(sl->dec, id);
    if (!piece || !buf_push_text(&sl->text, &sl->n_text, &sl->cap_text, piece, strlen(piece))) goto oom;
    const bool at_limit = sl->n_gen >= r->max_tokens || (int32_t)sl->n_hist >= n_ctx;
    if (at_limit) {
        const char *rest = prism_decoder_flush(sl->dec);
        if (!rest || !buf_push_text(&sl->text, &sl->n_text, &sl->cap_text, rest, strlen(rest))) goto oom;
    }
    const char *hit = r->n_stop ? stop_find(sl->text, (const char *const *)r->stop, r->n_stop) : NULL;
    srv_finish fin = SRV_FINISH_NONE;
    if (hit) {
        sl->n_text = (size_t)(hit - sl->text);
        sl->text[sl->n_text] = 0;
        fin = SRV_FINISH_STOP;
    } else if (sl->n_gen >= r->max_tokens) {
        fin = SRV_FINISH_LENGTH;
    } else if ((int32_t)sl->n_hist >= n_ctx) {
        fin = SRV_FINISH_CONTEXT;
    }
    size_t upto = fin != SRV_FINISH_NONE
                      ? sl->n_text
                      : sl->n_text - stop_holdback(sl->text, sl->n_text, (const char *const *)r->stop, r->n_stop);
    if (!publish(sl, upto)) goto oom;
    pthread_cond_broadcast(&r->cv);
    if (fin != SRV_FINISH_NONE) {
        req_done(s, q, i, fin, 0, NULL);
        return 0;
    }
    q->bt[*nb] = id;
    q->bp[*nb] = (int32_t)sl->n_hist - 1;
    q->bs[*nb] = i;
    ++*nb;
    return 1;
oom:
    req_done(s, q, i, SRV_FINISH_ABORT, 500, "out of memory while generating");
    return 0;
}

/* ---------------------------------------------------------------- the loop */

static void *sched_main(void *arg) {
    srv *s = arg;
    srv_sched *q = s->sched;
    int *fresh = malloc((size_t)q->n_slots * sizeof *fresh);
    pthread_mutex_lock(&s->mu);
    for (;;) {
        while (!q->draining && q->n_running == 0 && !q->head) pthread_cond_wait(&q->cv, &s->mu);
        if (q->draining && prism_now() >= q->deadline) {
            while (q->head) {
                srv_req *r = q->head;
                q->head = r->next;
                q->n_queued--;
                queued_fail(s, r, 503, "the server is shutting down");
            }
            q->tail = NULL;
            for (int i = 0; i < q->n_slots; i++)
                if (q->slots[i].req) req_done(s, q, i, SRV_FINISH_ABORT, 0, NULL);
        }
        if (q->draining && q->n_running == 0 && !q->head) break;

        /* 1. cancelled requests leave; 2. queued ones take free slots */
        for (int i = 0; i < q->n_slots; i++)
            if (q->slots[i].req && q->slots[i].req->cancelled) req_done(s, q, i, SRV_FINISH_ABORT, 0, NULL);
        int n_fresh = 0;
        for (int i = 0; i < q->n_slots && q->head; i++) {
            if (q->slots[i].req) continue;
            srv_req *r = q->head;
            q->head = r->next;
            if (!q->head) q->tail = NULL;
            q->n_queued--;
            r->next = NULL;
            if (r->cancelled) {
                queued_fail(s, r, 499, "cancelled");
                i--;
                continue;
            }
            slot *sl = &q->slots[i];
            sl->req = r;
            r->state = RQ_RUNNING;
            q->n_running++;
            prism_sampling_params sp = r->sampling;
            sl->sampler = prism_sampler_new(sp);
            sl->dec = prism_decoder_new(s->cfg.tok, true);
            int ok = sl->sampler && sl->dec && buf_push_text(&sl->text, &sl->n_text, &sl->cap_text, "", 0);
            for (int32_t j = 0; ok && j < r->n_prompt; j++) ok = push_id(sl, r->prompt[j]);
            if (!ok) {
                req_done(s, q, i, SRV_FINISH_ABORT, 500, "out of memory");
                continue;
            }
            fresh[n_fresh++] = i;
        }
        pthread_mutex_unlock(&s->mu);
        prism_status pst[n_fresh > 0 ? n_fresh : 1];
        char perr[n_fresh > 0 ? n_fresh : 1][200];
        for (int k = 0; k < n_fresh; k++) {
            pst[k] = prefill(s, q, fresh[k]);
            if (pst[k]) snprintf(perr[k], sizeof perr[k], "prefill failed: %s", prism_last_error());
        }
        pthread_mutex_lock(&s->mu);
        for (int k = 0; k < n_fresh; k++) {
            srv_req *r = q->slots[fresh[k]].req;
            if (pst[k]) {
                req_done(s, q, fresh[k], SRV_FINISH_ABORT, 500, perr[k]);
                continue;
            }
            r->started = true;
            metrics_route(s->metrics, r->routed_adapter);
            pthread_cond_broadcast(&r->cv);
        }

        /* 3. accept the sampled tokens */
        int32_t nb = 0;
        for (int i = 0; i < q->n_slots; i++)
            if (q->slots[i].req && !q->slots[i].req->cancelled) accept(s, q, i, &nb);
        pthread_mutex_unlock(&s->mu);

        /* 4. one decode step for every live slot */
        prism_status st = PRISM_OK;
        if (nb > 0) {
            prism_batch b = {.n_tokens = nb, .token = q->bt, .pos = q->bp, .seq = q->bs, .want_logits = NULL};
            st = prism_decode(q->ctx, &b);
            if (!st) st = sample_rows(q, nb, 0);
        }
        pthread_mutex_lock(&s->mu);
        if (st) {
            char msg[256];
            snprintf(msg, sizeof msg, "decode failed: %s", prism_last_error());
            for (int32_t k = 0; k < nb; k++)
                if (q->slots[q->bs[k]].req) req_done(s, q, q->bs[k], SRV_FINISH_ABORT, 500, msg);
        }
    }
    pthread_mutex_unlock(&s->mu);
    free(fresh);
    return NULL;
}

/* ---------------------------------------------------------------- public */

prism_status sched_new(srv *s, srv_sched **out) {
    srv_sched *q = calloc(1, sizeof *q);
    if (!q) return prism_error(PRISM_E_NOMEM, "out of memory");
    pthread_cond_init(&q->cv, NULL);
    prism_ctx_params cp = prism_ctx_default_params();
    cp.n_seq_max = s->cfg.max_batch;
    cp.n_ctx = s->cfg.n_ctx;
    if (s->cfg.n_batch) cp.n_batch = s->cfg.n_batch;
    if (cp.n_batch < s->cfg.max_batch) cp.n_batch = s->cfg.max_batch; /* a decode step holds every slot */
    prism_status st = prism_ctx_new(s->cfg.model, cp, &q->ctx);
    if (st) { sched_free(q); return st; }
    q->n_slots = s->cfg.max_batch;
    int32_t nb = q->ctx->p.n_batch > q->n_slots ? q->ctx->p.n_batch : q->n_slots;
    q->slots = calloc((size_t)q->n_slots, sizeof *q->slots);
    q->bt = malloc((size_t)nb * 3 * sizeof(int32_t));
    if (!q->slots || !q->bt) { sched_free(q); return prism_error(PRISM_E_NOMEM, "out of memory"); }
    if ((st = gen_rows_init(&q->rows, nb, q->ctx->m->cfg.vocab))) { sched_free(q); return st; }
    q->bp = q->bt + nb;
    q->bs = q->bp + nb;
    s->n_ctx = q->ctx->p.n_ctx;
    s->sched = q;
    if (pthread_create(&q->th, NULL, sched_main, s)) {
        s->sched = NULL;
        sched_free(q);
        return prism_error(PRISM_E_NOMEM, "cannot start the scheduler thread");
    }
    q->th_started = true;
    *out = q;
    return PRISM_OK;
}

int sched_submit(srv *s, srv_req *r) {
    srv_sched *q = s->sched;
    if (s->shutting_down || q->draining) return 503;
    /* the queue bound counts requests that will wait: those beyond the free slots */
    if (q->n_queued >= s->cfg.queue_cap + (q->n_slots - q->n_running)) return 429;
    r->refs++;
    r->state = RQ_QUEUED;
    r->t_submit = prism_now();
    r->next = NULL;
    if (q->tail) q->tail->next = r;
    else q->head = r;
    q->tail = r;
    q->n_queued++;
    pthread_cond_signal(&q->cv);
    return 0;
}

void sched_wake(srv *s) {
    if (s->sched) pthread_cond_signal(&s->sched->cv);
}

void sched_gauges(srv *s, int *queued, int *running) {
    *queued = s->sched ? s->sched->n_queued : 0;
    *running = s->sched ? s->sched->n_running : 0;
}

void sched_stop(srv *s, double timeout_s) {
    srv_sched *q = s->sched;
    if (!q || !q->th_started) return;
    pthread_mutex_lock(&s->mu);
    q->draining = true;
    q->deadline = prism_now() + timeout_s;
    pthread_cond_signal(&q->cv);
    pthread_mutex_unlock(&s->mu);
    pthread_join(q->th, NULL);
    q->th_started = false;
}

void sched_free(srv_sched *q) {
    if (!q) return;
    for (int i = 0; q->slots && i < q->n_slots; i++) {
        prism_sampler_free(q->slots[i].sampler);
        prism_decoder_free(q->slots[i].dec);
        free(q->slots[i].hist);
        free(q->slots[i].text);
    }
    prism_ctx_free(q->ctx);
    pthread_cond_destroy(&q->cv);
    free(q->slots);
    free(q->bt);
    gen_rows_free(&q->rows);
    free(q->h0);
    free(q);
}
