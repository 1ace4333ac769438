/* generate.c — batched generation: one prefill over every prompt, then one
 * decode step per iteration for all live sequences, each with its own
 * sampler, stop conditions and incremental detokenizer. */
#include <stdlib.h>
#include <string.h>

#include "generate/rows.h"
#include "generate/stop.h"
#include "model/forward.h"
#include "util/buf.h"
#include "util/error.h"
#include "util/timer.h"

prism_generate_params prism_generate_default_params(void) {
    prism_generate_params p;
    memset(&p, 0, sizeof p);
    p.sampling = prism_sampling_default_params();
    p.max_new_tokens = 256;
    return p;
}

void prism_generation_clear(prism_generation *g) {
    if (!g) return;
    free(g->tokens);
    free(g->text);
    memset(g, 0, sizeof *g);
}

typedef struct {
    prism_sampler *sampler;
    prism_decoder *dec;
    int32_t *hist;      /* prompt + generated ids */
    size_t n_hist, cap_hist;
    char *text;         /* generated text so far */
    size_t n_text, cap_text;
    size_t emitted;     /* bytes of text already passed to the callback */
    int32_t next;       /* token to feed at the next step */
    int live;
} gen_seq;

static int push_id(gen_seq *s, int32_t id) { return buf_push_i32(&s->hist, &s->n_hist, &s->cap_hist, id); }

static int push_text(gen_seq *s, const char *t) { return buf_push_text(&s->text, &s->n_text, &s->cap_text, t, strlen(t)); }

/* The rows of sequences bs[0..nb) (take NULL: all; else those with take[k]) into g's rows. */
static void rows_of(gen_rows *g, gen_seq *S, const int32_t *bs, const int8_t *take, int32_t nb) {
    for (int32_t k = 0; k < nb; k++) {
        gen_seq *s = &S[bs[k]];
        g->rows[k] = (take && !take[k]) ? (gen_row){0} : (gen_row){s->sampler, s->hist, s->n_hist, &s->next};
    }
}

/* After a prefill batch's head: the first token of each sequence whose prompt ends in batch b. */
static prism_status prefill_sample(prism_ctx *c, gen_seq *S, const prism_batch *b, const int32_t *prompt_lens,
                                   int8_t *take, gen_rows *g) {
    for (int32_t k = 0; k < b->n_tokens; k++) take[k] = b->pos[k] == prompt_lens[b->seq[k]] - 1;
    rows_of(g, S, b->seq, take, b->n_tokens);
    return gen_sample_rows(c, g, b->n_tokens);
}

prism_status prism_generate(prism_ctx *c, const prism_tokenizer *t, const int32_t *const *prompts,
                            const int32_t *prompt_lens, int32_t n, const prism_generate_params *p, prism_token_cb cb,
                            void *user, prism_generation *out, prism_generate_stats *stats) {
    if (n <= 0) return prism_error(PRISM_E_ARG, "no prompts");
    if (n > c->p.n_seq_max)
        return prism_error(PRISM_E_RANGE, "%d prompts but the context holds %d sequences", n, c->p.n_seq_max);
    const prism_config *cfg = &c->m->cfg;
    const int32_t V = cfg->vocab;
    const int32_t *eos = p->eos_ids ? p->eos_ids : cfg->eos_ids;
    const int32_t n_eos = p->eos_ids ? p->n_eos : cfg->n_eos;
    int64_t total_prompt = 0;
    for (int32_t i = 0; i < n; i++) {
        if (prompt_lens[i] <= 0) return prism_error(PRISM_E_ARG, "prompt %d is empty", i);
        if (prompt_lens[i] >= c->p.n_ctx)
            return prism_error(PRISM_E_RANGE, "prompt %d has %d tokens; the context holds %d", i, prompt_lens[i], c->p.n_ctx);
        for (int32_t j = 0; j < prompt_lens[i]; j++)
            if (prompts[i][j] < 0 || prompts[i][j] >= V)
                return prism_error(PRISM_E_ARG, "prompt %d: token %d at position %d is outside the vocabulary (0..%d)", i, prompts[i][j], j, V - 1);
        total_prompt += prompt_lens[i];
    }
    memset(out, 0, sizeof *out * (size_t)n);
    for (int32_t i = 0; i < n; i++) out[i].gate_prob = -1.0f;
    gen_seq *S = calloc((size_t)n, sizeof *S);
    int32_t *bt = malloc((size_t)c->p.n_batch * 3 * sizeof(int32_t));
    int32_t *start = malloc((size_t)n * sizeof(int32_t));
    gen_rows g = {0};
    int8_t *take = malloc((size_t)c->p.n_batch);
    int32_t *grow = malloc((size_t)c->p.n_batch * sizeof *grow); /* routed: batch rows the gate reads, */
    float *gprob = malloc((size_t)c->p.n_batch * sizeof *gprob); /* and its probabilities */
    float *h0 = NULL;   /* routed: (cap_kept, H) layer-0 outputs whose layers 1..L-1 wait for a route */
    int32_t *kb = NULL; /* their batches: tokens, positions, sequences (cap_kept each) */
    int64_t cap_kept = 0;
    prism_status st = PRISM_OK;
    if (!S || !bt || !start || !take || !grow || !gprob) { st = prism_error(PRISM_E_NOMEM, "out of memory"); goto done; }
    if ((st = gen_rows_init(&g, c->p.n_batch, V))) goto done;
    int32_t *bp = bt + c->p.n_batch, *bs = bp + c->p.n_batch;
    for (int32_t i = 0; i < n; i++) {
        prism_sampling_params sp = p->sampling;
        sp.seed = p->seeds ? p->seeds[i] : p->sampling.seed + (uint64_t)i;
        S[i].sampler = prism_sampler_new(sp);
        S[i].dec = t ? prism_decoder_new(t, true) : NULL;
        if (!S[i].sampler || (t && !S[i].dec) || !push_text(&S[i], "")) { st = prism_error(PRISM_E_NOMEM, "out of memory"); goto done; }
        for (int32_t j = 0; j < prompt_lens[i]; j++)
            if (!push_id(&S[i], prompts[i][j])) { st = prism_error(PRISM_E_NOMEM, "out of memory"); goto done; }
        /* Keep the cached prefix the prompt shares (at least one token is
         * always recomputed: its logits start the generation). */
        int32_t keep = 0;
        if (p->reuse_cache) {
            const int32_t *have = prism_ctx_seq_tokens(c, i);
            int32_t nh = prism_ctx_seq_len(c, i);
            while (keep < nh && keep < prompt_lens[i] - 1 && have[keep] == prompts[i][keep]) keep++;
        }
        prism_ctx_seq_truncate(c, i, keep);
        start[i] = keep;
        S[i].live = 1;
    }

    /* Prefill: pack every prompt into batches of up to n_batch tokens; sample
     * each sequence's first token from the logits of its last prompt token.
     * With a router, each batch runs layer 0, the gate reads it at each fresh
     * sequence's last prompt token, and layers 1..L-1 go straight on from
     * layer 0's output (on a GPU it never leaves the device) — unless a fresh
     * prompt continues into the next batch: its route is not known yet, so the
     * batch's layer-0 output is kept on the host and its layers 1..L-1 run,
     * in order, once the routes of every batch kept are known. One prefill in
     * total, even for prompts longer than a batch. */
    double t0 = prism_now();
    total_prompt = 0;
    for (int32_t i = 0; i < n; i++) total_prompt += prompt_lens[i] - start[i];
    const int routed = p->router != NULL;
    const int64_t H = cfg->hidden;
    {
        int32_t cur = 0, off = start[0];
        int64_t n_kept = 0; /* routed: tokens whose layers 1..L-1 wait, rows of h0 and kb, batch after batch */
        while (cur < n) {
            int32_t nb = 0;
            while (cur < n && nb < c->p.n_batch) {
                int32_t tk = prompt_lens[cur] - off;
                if (tk > c->p.n_batch - nb) tk = c->p.n_batch - nb;
                for (int32_t j = 0; j < tk; j++, nb++) {
                    bt[nb] = prompts[cur][off + j];
                    bp[nb] = off + j;
                    bs[nb] = cur;
                }
                off += tk;
                if (off == prompt_lens[cur] && ++cur < n) off = start[cur];
            }
            prism_batch b = {.n_tokens = nb, .token = bt, .pos = bp, .seq = bs, .want_logits = NULL};
            if (!routed) {
                if ((st = prism_decode(c, &b))) goto done;
                if ((st = prefill_sample(c, S, &b, prompt_lens, take, &g))) goto done;
                continue;
            }
            if ((st = forward_unchecked(c, &b, NULL, 0, 1))) goto done;
            /* every route of this batch and of those kept is known unless a fresh prompt goes on past it */
            const int known = !(cur < n && off > start[cur] && start[cur] == 0);
            const int keep = !known || n_kept > 0;
            if (keep) { /* layer 0's rows and the batch itself, for layers 1..L-1 later */
                if (n_kept + nb > cap_kept) {
                    int64_t cap = cap_kept ? cap_kept : c->p.n_batch;
                    while (cap < n_kept + nb) cap *= 2;
                    float *h = realloc(h0, (size_t)cap * (size_t)H * sizeof(float));
                    if (h) h0 = h;
                    int32_t *k3 = h ? realloc(kb, (size_t)cap * 3 * sizeof(int32_t)) : NULL;
                    if (!k3) { st = prism_error(PRISM_E_NOMEM, "out of memory for %lld routed prompt tokens", (long long)cap); goto done; }
                    kb = k3;
                    memmove(kb + 2 * cap, kb + 2 * cap_kept, (size_t)n_kept * sizeof(int32_t)); /* seq, then pos */
                    memmove(kb + cap, kb + cap_kept, (size_t)n_kept * sizeof(int32_t));
                    cap_kept = cap;
                }
                const float *hx = forward_hidden_rows(c, 0, nb);
                if (!hx) { st = PRISM_E_NOMEM; goto done; }
                memcpy(h0 + n_kept * H, hx, (size_t)nb * (size_t)H * sizeof(float));
                memcpy(kb + n_kept, bt, (size_t)nb * sizeof(int32_t));
                memcpy(kb + cap_kept + n_kept, bp, (size_t)nb * sizeof(int32_t));
                memcpy(kb + 2 * cap_kept + n_kept, bs, (size_t)nb * sizeof(int32_t));
            }
            /* the gate at each fresh sequence's last prompt token here (a continued one keeps its route), all at
             * once: on a GPU it reads the residual stream there */
            int32_t ng = 0;
            for (int32_t k = 0; k < nb; k++)
                if (bp[k] == prompt_lens[bs[k]] - 1 && start[bs[k]] == 0) grow[ng++] = k;
            if ((st = prism_router_route_rows(p->router, c, &b, grow, ng, p->route, gprob, NULL))) goto done;
            for (int32_t i = 0; i < ng; i++) out[bs[grow[i]]].gate_prob = gprob[i];
            for (int32_t k = 0; k < nb; k++)
                if (bp[k] == prompt_lens[bs[k]] - 1) out[bs[k]].routed_adapter = c->seq_adapter[bs[k]] != NULL;
            if (!keep) { /* layers 1..L-1 straight on from layer 0's output */
                if ((st = prism_decode_layers(c, &b, 1, cfg->n_layers)) || (st = prism_decode_head(c)) ||
                    (st = prefill_sample(c, S, &b, prompt_lens, take, &g)))
                    goto done;
                continue;
            }
            n_kept += nb;
            if (!known) continue;
            for (int64_t i0 = 0; i0 < n_kept; i0 += c->p.n_batch) { /* the batches kept, in order */
                const int32_t m = (int32_t)(n_kept - i0 < c->p.n_batch ? n_kept - i0 : c->p.n_batch);
                prism_batch bk = {.n_tokens = m, .token = kb + i0, .pos = kb + cap_kept + i0, .seq = kb + 2 * cap_kept + i0,
                                  .want_logits = NULL};
                if ((st = forward_unchecked(c, &bk, h0 + i0 * H, 1, cfg->n_layers)) || (st = prism_decode_head(c)) ||
                    (st = prefill_sample(c, S, &bk, prompt_lens, take, &g)))
                    goto done;
            }
            n_kept = 0;
        }
    }
    double t1 = prism_now();
    if (stats) {
        stats->prefill_s = t1 - t0;
        stats->prefill_tokens = total_prompt;
        stats->decode_tokens = 0;
    }

    /* Decode: accept each live sequence's sampled token, then run one step for all. */
    int64_t decoded = 0;
    for (;;) {
        int32_t nb = 0;
        for (int32_t i = 0; i < n; i++) {
            gen_seq *s = &S[i];
            if (!s->live) continue;
            int32_t id = s->next;
            int is_eos = 0;
            for (int32_t k = 0; k < n_eos; k++) is_eos |= id == eos[k];
            if (is_eos && !p->ignore_eos) {
                s->live = 0;
                out[i].finish = PRISM_FINISH_EOS;
                if (s->dec && !push_text(s, prism_decoder_flush(s->dec))) { st = prism_error(PRISM_E_NOMEM, "out of memory"); goto done; }
                if (cb && s->emitted < s->n_text) cb(user, i, id, s->text + s->emitted);
                continue;
            }
            if (!push_id(s, id)) { st = prism_error(PRISM_E_NOMEM, "out of memory"); goto done; }
            out[i].n_tokens++;
            if (s->dec) {
                const char *piece = prism_decoder_push(s->dec, id);
                if (!piece || !push_text(s, piece)) { st = prism_error(PRISM_E_NOMEM, "out of memory"); goto done; }
            }
            int at_limit = out[i].n_tokens >= p->max_new_tokens || (int32_t)s->n_hist >= c->p.n_ctx;
            if (at_limit && s->dec && !push_text(s, prism_decoder_flush(s->dec))) { st = prism_error(PRISM_E_NOMEM, "out of memory"); goto done; }
            const char *hit = p->n_stop ? stop_find(s->text, p->stop, p->n_stop) : NULL;
            int stop_now = 0;
            if (hit) {
                s->n_text = (size_t)(hit - s->text);
                s->text[s->n_text] = 0;
                out[i].finish = PRISM_FINISH_STOP;
                stop_now = 1;
            } else if (out[i].n_tokens >= p->max_new_tokens) {
                out[i].finish = PRISM_FINISH_LENGTH;
                stop_now = 1;
            } else if ((int32_t)s->n_hist >= c->p.n_ctx) {
                out[i].finish = PRISM_FINISH_CONTEXT;
                stop_now = 1;
            }
            if (cb) {
                /* Stream the text that can no longer become part of a stop string. */
                size_t upto = stop_now ? s->n_text : s->n_text - stop_holdback(s->text, s->n_text, p->stop, p->n_stop);
                char saved = s->text[upto];
                s->text[upto] = 0;
                int go = cb(user, i, id, s->text + s->emitted);
                s->text[upto] = saved;
                s->emitted = upto;
                if (!go && !stop_now) { out[i].finish = PRISM_FINISH_STOP; stop_now = 1; }
            }
            if (stop_now) { s->live = 0; continue; }
            bt[nb] = id;
            bp[nb] = (int32_t)s->n_hist - 1;
            bs[nb] = i;
            nb++;
        }
        if (nb == 0) break;
        prism_batch b = {.n_tokens = nb, .token = bt, .pos = bp, .seq = bs, .want_logits = NULL};
        if ((st = prism_decode(c, &b))) goto done;
        decoded += nb;
        rows_of(&g, S, bs, NULL, nb);
        if ((st = gen_sample_rows(c, &g, nb))) goto done;
    }
    if (stats) {
        stats->decode_s = prism_now() - t1;
        stats->decode_tokens = decoded;
    }
    for (int32_t i = 0; i < n; i++) {
        gen_seq *s = &S[i];
        int32_t k = out[i].n_tokens;
        out[i].tokens = malloc((size_t)(k ? k : 1) * sizeof(int32_t));
        if (!out[i].tokens) { st = prism_error(PRISM_E_NOMEM, "out of memory"); goto done; }
        memcpy(out[i].tokens, s->hist + prompt_lens[i], (size_t)k * sizeof(int32_t));
        out[i].text = s->text;
        s->text = NULL;
    }
done:
    if (S) {
        for (int32_t i = 0; i < n; i++) {
            prism_sampler_free(S[i].sampler);
            prism_decoder_free(S[i].dec);
            free(S[i].hist);
            free(S[i].text);
        }
    }
    if (st && out)
        for (int32_t i = 0; i < n; i++) prism_generation_clear(&out[i]);
    free(S);
    free(bt);
    free(start);
    gen_rows_free(&g);
    free(take);
    free(grow);
    free(gprob);
    free(h0);
    free(kb);
    return st;
}
