/* model.c — the model calls of the evaluation: chat rendering, fitting a
 * prompt into the context, batched next-token logits (MMLU letters, judge
 * verdicts) and batched generation, each optionally through the PRISM router
 * (route = PRISM_ROUTE_ADAPTER: adapter always on; PRISM_ROUTE_AUTO: gated). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "eval/eval.h"
#include "generate/oneshot.h"
#include "model/model.h"
#include "util/error.h"

/* Tokens per prefill call when scoring: bounds activation memory (batch x FFN
 * floats) while keeping several prompts in one matmul. */
#define LOGITS_TOKENS_PER_CALL 4096

prism_status lm_open(const char *dir, const char *chat_template, prism_model_params mp, int32_t n_ctx, eval_lm *out) {
    memset(out, 0, sizeof *out);
    prism_status st = prism_model_load(dir, mp, &out->m);
    if (!st) st = prism_tokenizer_load(dir, &out->tok);
    if (!st) st = prism_chat_load(dir, chat_template, &out->chat);
    if (st) {
        lm_close(out);
        return st;
    }
    int32_t mx = out->m->cfg.max_pos;
    out->n_ctx = n_ctx > 0 ? (n_ctx < mx ? n_ctx : mx) : (mx < 4096 ? mx : 4096);
    out->owned = true;
    return PRISM_OK;
}

void lm_close(eval_lm *l) {
    if (!l) return;
    prism_chat_free(l->chat);
    prism_tokenizer_free(l->tok);
    prism_model_free(l->m);
    memset(l, 0, sizeof *l);
}

prism_status lm_render(const eval_lm *l, const char *system, const char *const *user, const char *const *assistant,
                       int n_user, char **text) {
    if (n_user < 1 || n_user > 7) return prism_error(PRISM_E_ARG, "lm_render: 1..7 user turns");
    return prism_chat_render_turns(l->chat, system, user, assistant, (size_t)n_user, true, text);
}

prism_status lm_tokenize_fit(const eval_lm *l, const char *text, int32_t budget, int32_t **ids, int32_t *n, int32_t *cut) {
    size_t nn = 0;
    *ids = NULL, *n = 0, *cut = 0;
    prism_status st = prism_tokenize(l->tok, text, strlen(text), false, ids, &nn);
    if (st) return st;
    if (nn == 0) {
        free(*ids);
        *ids = NULL;
        return prism_error(PRISM_E_ARG, "empty prompt");
    }
    if (budget < 2) budget = 2;
    if ((int64_t)nn > budget) {
        int32_t *v = *ids, bos = prism_tokenizer_bos(l->tok);
        size_t keep_head = (bos >= 0 && v[0] == bos) ? 1 : 0;
        size_t tail = (size_t)budget - keep_head;
        memmove(v + keep_head, v + nn - tail, tail * sizeof *v);
        *cut = (int32_t)(nn - (size_t)budget);
        nn = (size_t)budget;
    }
    *n = (int32_t)nn;
    return PRISM_OK;
}

static prism_status logits_group(const eval_lm *l, const prism_router *r, int route, int32_t *const *ids,
                                 const int32_t *lens, int n, float *out, float *probs, bool *routed) {
    int32_t total = 0, maxlen = 0;
    for (int i = 0; i < n; i++) total += lens[i], maxlen = lens[i] > maxlen ? lens[i] : maxlen;
    prism_ctx_params cp = prism_ctx_default_params();
    cp.n_seq_max = n;
    cp.n_ctx = maxlen;
    cp.n_batch = total;
    prism_ctx *ctx = NULL;
    prism_status st = prism_ctx_new(l->m, cp, &ctx);
    if (st) return st;
    int32_t *tok = malloc((size_t)total * 3 * sizeof(int32_t)), *pos = tok + total, *seq = pos + total;
    float *pr = calloc((size_t)n, sizeof *pr);
    bool *ro = calloc((size_t)n, sizeof *ro);
    if (!tok || !pr || !ro) st = prism_error(PRISM_E_NOMEM, "out of memory");
    int32_t k = 0;
    for (int i = 0; !st && i < n; i++)
        for (int32_t j = 0; j < lens[i]; j++) tok[k] = ids[i][j], pos[k] = j, seq[k] = i, k++;
    prism_batch b = {total, tok, pos, seq, NULL};
    if (!st) st = route >= 0 ? prism_decode_routed(ctx, &b, r, (prism_route_mode)route, pr, ro) : prism_decode(ctx, &b);
    const int32_t V = l->m->cfg.vocab;
    int32_t end = 0;
    for (int i = 0; !st && i < n; i++) {
        end += lens[i];
        const float *lg = prism_get_logits(ctx, end - 1);
        if (!lg) { st = prism_error(PRISM_E_ARG, "no logits for prompt %d", i); break; }
        memcpy(out + (size_t)i * (size_t)V, lg, (size_t)V * sizeof(float));
        if (probs) probs[i] = route >= 0 ? pr[i] : -1.0f;
        if (routed) routed[i] = route >= 0 && ro[i];
    }
    free(tok);
    free(pr);
    free(ro);
    prism_ctx_free(ctx);
    return st;
}

prism_status lm_last_logits(const eval_lm *l, const prism_router *r, int route, int32_t *const *ids, const int32_t *lens,
                            int n, float *out, float *probs, bool *routed) {
    const int32_t V = l->m->cfg.vocab;
    for (int i0 = 0; i0 < n;) {
        int g = 0;
        int32_t tot = 0;
        while (i0 + g < n && (g == 0 || tot + lens[i0 + g] <= LOGITS_TOKENS_PER_CALL)) tot += lens[i0 + g++];
        prism_status st = logits_group(l, r, route, ids + i0, lens + i0, g, out + (size_t)i0 * (size_t)V,
                                       probs ? probs + i0 : NULL, routed ? routed + i0 : NULL);
        if (st) return st;
        i0 += g;
    }
    return PRISM_OK;
}

static double log_softmax_at(const float *lg, int32_t V, int32_t id) {
    float mx = -INFINITY;
    for (int32_t v = 0; v < V; v++) mx = lg[v] > mx ? lg[v] : mx;
    double sum = 0;
    for (int32_t v = 0; v < V; v++) sum += exp((double)lg[v] - mx);
    return (double)lg[id] - mx - log(sum);
}

prism_status lm_score_choices(const eval_lm *l, const prism_router *r, int route, int32_t *const *ids, const int32_t *lens,
                              int n, const int32_t *const *cont, const int32_t *cont_len, int n_choices, float *lp,
                              float *probs, bool *routed) {
    const int32_t V = l->m->cfg.vocab;
    int32_t total = 0, maxlen = 0, maxc = 0;
    for (int i = 0; i < n; i++) total += lens[i], maxlen = lens[i] > maxlen ? lens[i] : maxlen;
    for (int k = 0; k < n_choices; k++) maxc = cont_len[k] > maxc ? cont_len[k] : maxc;
    prism_ctx_params cp = prism_ctx_default_params();
    cp.n_seq_max = n;
    cp.n_ctx = maxlen + maxc;
    cp.n_batch = total > n * maxc ? total : n * maxc;
    prism_ctx *ctx = NULL;
    prism_status st = prism_ctx_new(l->m, cp, &ctx);
    if (st) return st;
    size_t cap = (size_t)(total > n * maxc ? total : n * maxc);
    int32_t *tok = malloc(cap * 3 * sizeof(int32_t)), *pos = tok + cap, *seq = pos + cap;
    float *pr = calloc((size_t)n, sizeof *pr);
    bool *ro = calloc((size_t)n, sizeof *ro);
    int8_t *want = malloc(cap);
    if (!tok || !pr || !ro || !want) st = prism_error(PRISM_E_NOMEM, "out of memory");
    int32_t k = 0;
    for (int i = 0; !st && i < n; i++)
        for (int32_t j = 0; j < lens[i]; j++) tok[k] = ids[i][j], pos[k] = j, seq[k] = i, k++;
    prism_batch b = {total, tok, pos, seq, NULL};
    if (!st) st = route >= 0 ? prism_decode_routed(ctx, &b, r, (prism_route_mode)route, pr, ro) : prism_decode(ctx, &b);
    int32_t end = 0;
    for (int i = 0; !st && i < n; i++) {
        end += lens[i];
        const float *lg = prism_get_logits(ctx, end - 1);
        for (int c = 0; c < n_choices; c++) lp[(size_t)i * n_choices + c] = (float)log_softmax_at(lg, V, cont[c][0]);
        if (probs) probs[i] = route >= 0 ? pr[i] : -1.0f;
        if (routed) routed[i] = route >= 0 && ro[i];
    }
    /* multi-token continuations: feed tokens 0..len-2 and score 1..len-1 */
    for (int c = 0; !st && c < n_choices; c++) {
        if (cont_len[c] < 2) continue;
        int32_t m = cont_len[c] - 1, nt = 0;
        for (int i = 0; i < n; i++)
            for (int32_t j = 0; j < m; j++) tok[nt] = cont[c][j], pos[nt] = lens[i] + j, seq[nt] = i, want[nt] = 1, nt++;
        prism_batch bc = {nt, tok, pos, seq, want};
        if ((st = prism_decode(ctx, &bc))) break;
        for (int i = 0; i < n; i++) {
            double s = 0;
            for (int32_t j = 0; j < m; j++) s += log_softmax_at(prism_get_logits(ctx, i * m + j), V, cont[c][j + 1]);
            lp[(size_t)i * n_choices + c] += (float)s;
            prism_ctx_seq_truncate(ctx, i, lens[i]);
        }
    }
    free(tok);
    free(pr);
    free(ro);
    free(want);
    prism_ctx_free(ctx);
    return st;
}

prism_status lm_generate(const eval_lm *l, const prism_router *r, int route, int32_t *const *ids, const int32_t *lens,
                         int n, int32_t max_new, float temperature, const uint64_t *seeds, lm_output *out) {
    prism_generation *g = calloc((size_t)n, sizeof *g);
    if (!g) return prism_error(PRISM_E_NOMEM, "out of memory");
    prism_status st = generate_oneshot(l->m, l->tok, l->n_ctx, (const int32_t *const *)ids, lens, n, max_new, temperature,
                                       seeds, route >= 0 ? r : NULL, route >= 0 ? (prism_route_mode)route : PRISM_ROUTE_AUTO, g);
    for (int i = 0; !st && i < n; i++) {
        out[i].text = g[i].text ? g[i].text : strdup("");
        g[i].text = NULL;
        out[i].n_tokens = g[i].n_tokens;
        out[i].finish = g[i].finish == PRISM_FINISH_EOS ? "eos" : g[i].finish == PRISM_FINISH_LENGTH ? "length"
                      : g[i].finish == PRISM_FINISH_STOP ? "stop" : "context";
        out[i].gate_prob = route >= 0 ? g[i].gate_prob : -1.0f;
        out[i].routed = route >= 0 && g[i].routed_adapter;
    }
    for (int i = 0; i < n; i++) prism_generation_clear(&g[i]);
    free(g);
    return st;
}

void lm_output_clear(lm_output *o) {
    free(o->text);
    memset(o, 0, sizeof *o);
}

prism_status lm_first_token(const eval_lm *l, const char *word, int32_t *id) {
    int32_t *ids = NULL;
    size_t n = 0;
    prism_status st = prism_tokenize(l->tok, word, strlen(word), false, &ids, &n);
    if (!st && n == 0) st = prism_error(PRISM_E_UNSUPPORTED, "\"%s\" tokenizes to nothing", word);
    if (!st) *id = ids[0];
    free(ids);
    return st;
}
