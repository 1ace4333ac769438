/* bootstrap.c — the PRISM pipeline (see bootstrap.h for the stages). */
#include "prism/bootstrap.h"

#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "generate/oneshot.h"
#include "lora/lora.h"
#include "model/forward.h"
#include "prism/judge.h"
#include "prism/runinfo.h"
#include "prism/store.h"
#include "prism/text.h"
#include "train/data.h"
#include "train/trainer.h"
#include "util/error.h"
#include "util/timer.h"

const char *const BOOTSTRAP_DEFAULT_DOMAINS =
    "writing,roleplay,reasoning,math,coding,extraction,stem,humanities,critic,safety_monitor,helpful,compliant";

static const char *STAGES[] = {"personas", "queries", "answers", "judge", "features", "gate", "distill"};
enum { N_STAGES = 7 };

bootstrap_params bootstrap_default_params(void) {
    bootstrap_params p;
    memset(&p, 0, sizeof p);
    p.persona_length = PERSONA_FULL;
    p.queries_per_domain = 50;
    p.query_temperature = 0.9f;
    p.max_query_tokens = 96;
    p.answer_temperature = 0.7f;
    p.max_answer_tokens = 512;
    p.judge_max_bytes = JUDGE_MAX_ANSWER_BYTES;
    p.batch = 16;
    p.gate = gate_train_default_params();
    p.route_rate = -1;
    p.lora = prism_lora_default_params();
    p.lr = 2e-4;
    p.weight_decay = 0.01;
    p.warmup_ratio = 0.1;
    p.max_grad_norm = 1.0;
    p.schedule = "linear";
    p.micro_batch = 1;
    p.grad_accum = 16;
    p.epochs = 10;
    p.max_len = 1024;
    p.kl_topk = 64;
    p.kl_temperature = 2.0f;
    p.recompute = true;
    return p;
}

/* ------------------------------------------------------------------ run state */

typedef struct {
    const bootstrap_params *p;
    prism_model *m;
    prism_tokenizer *tok;
    prism_chat *chat;
    char run[4096];
    char **domains;
    int n_domains;
    FILE *log;           /* RUN_DIR/log.jsonl: machine-readable events */
    json_t *summary;     /* prism.json */
    double t0;
} boot;

static char *path_in(const boot *b, const char *name) {
    static _Thread_local char buf[4400];
    snprintf(buf, sizeof buf, "%s/%s", b->run, name);
    return buf;
}

static void log_event(boot *b, const char *stage, const char *event, json_t *extra) {
    json_t *e = extra ? extra : json_object();
    json_object_set_new(e, "t", json_real(prism_now() - b->t0));
    json_object_set_new(e, "stage", json_string(stage));
    json_object_set_new(e, "event", json_string(event));
    if (b->log) {
        char *s = json_dumps(e, JSON_COMPACT);
        if (s) fprintf(b->log, "%s\n", s), fflush(b->log);
        free(s);
    }
    json_decref(e);
}

typedef struct {
    const char *stage;
    int64_t total, done, at_start, printed;
    double t_start, last_print;
} progress;

static void progress_update(boot *b, progress *pr, int64_t done) {
    pr->done = done;
    double now = prism_now();
    bool last = done >= pr->total;
    if ((!last && now - pr->last_print < 1.0) || done == pr->printed) return;
    pr->printed = done;
    pr->last_print = now;
    double el = now - pr->t_start, rate = el > 0 ? (double)(done - pr->at_start) / el : 0;
    double eta = rate > 0 ? (double)(pr->total - done) / rate : 0;
    if (!b->p->quiet)
        fprintf(stderr, "[%s] %lld/%lld  %.2f/s  ETA %.0fs%s", pr->stage, (long long)done, (long long)pr->total, rate,
                eta, isatty(2) && !last ? "\r" : "\n");
    log_event(b, pr->stage, "progress", json_pack("{s:I, s:I, s:f, s:f}", "done", (json_int_t)done, "total",
                                                 (json_int_t)pr->total, "rate", rate, "eta_s", eta));
}

static void progress_start(boot *b, progress *pr, const char *stage, int64_t total, int64_t already) {
    pr->stage = stage;
    pr->total = total;
    pr->done = pr->at_start = already;
    pr->printed = -1;
    pr->t_start = prism_now();
    pr->last_print = 0;
    log_event(b, stage, "start", json_pack("{s:I, s:I}", "total", (json_int_t)total, "already", (json_int_t)already));
}

static prism_status save_summary(boot *b) {
    json_object_set_new(b->summary, "updated_s", json_real(prism_now() - b->t0));
    return write_json_atomic(path_in(b, "prism.json"), b->summary);
}

static uint64_t mix_seed(uint64_t seed, const char *tag, int64_t a, int64_t b2) {
    uint64_t h = fnv1a64(tag, strlen(tag), 1469598103934665603ull ^ seed);
    h = fnv1a64(&a, sizeof a, h);
    return fnv1a64(&b2, sizeof b2, h);
}

static char *xstrdup(const char *s) {
    char *d = strdup(s ? s : "");
    return d;
}

static char *trim_dup(const char *s) {
    while (*s == ' ' || *s == '\n' || *s == '\t' || *s == '\r') s++;
    size_t n = strlen(s);
    while (n && (s[n - 1] == ' ' || s[n - 1] == '\n' || s[n - 1] == '\t' || s[n - 1] == '\r')) n--;
    char *d = malloc(n + 1);
    if (d) memcpy(d, s, n), d[n] = 0;
    return d;
}

/* ------------------------------------------------------------------ model calls */

static prism_status prompt_ids(boot *b, const char *system, const char *user, int32_t **ids, int32_t *n) {
    char *text = NULL;
    size_t nn = 0;
    prism_status st = prism_chat_render_turns(b->chat, system, &user, NULL, 1, true, &text);
    if (!st) st = prism_tokenize(b->tok, text, strlen(text), false, ids, &nn);
    free(text);
    *n = (int32_t)nn;
    if (!st && nn == 0) st = prism_error(PRISM_E_ARG, "empty prompt");
    return st;
}

/* Generates n chat completions together (one fixed window); outs[i] malloc'd. */
static prism_status gen_window(boot *b, int n, const char *const *systems, const char *const *users,
                               const uint64_t *seeds, float temp, int32_t max_new, char **outs, int32_t *n_tok,
                               const char **finish) {
    int32_t **ids = calloc((size_t)n, sizeof *ids), *lens = calloc((size_t)n, sizeof *lens);
    prism_generation *g = calloc((size_t)n, sizeof *g);
    prism_status st = (!ids || !lens || !g) ? prism_error(PRISM_E_NOMEM, "out of memory") : PRISM_OK;
    for (int i = 0; !st && i < n; i++) st = prompt_ids(b, systems ? systems[i] : NULL, users[i], &ids[i], &lens[i]);
    if (!st)
        st = generate_oneshot(b->m, b->tok, b->m->cfg.max_pos, (const int32_t *const *)ids, lens, n, max_new, temp, seeds,
                              NULL, PRISM_ROUTE_AUTO, g);
    for (int i = 0; !st && i < n; i++) {
        outs[i] = g[i].text ? g[i].text : xstrdup("");
        g[i].text = NULL;
        if (n_tok) n_tok[i] = g[i].n_tokens;
        if (finish) finish[i] = g[i].finish == PRISM_FINISH_EOS ? "eos" : g[i].finish == PRISM_FINISH_LENGTH ? "length" : "other";
    }
    for (int i = 0; i < n; i++) {
        if (ids) free(ids[i]);
        if (g) prism_generation_clear(&g[i]);
    }
    free(ids);
    free(lens);
    free(g);
    return st;
}

/* Logits of the first reply token, or the layer-0 hidden state, at the last
 * token of a chat prompt (one sequence, one prefill). */
static prism_status last_token_pass(boot *b, const int32_t *ids, int32_t n, bool layer0_only, float *out) {
    prism_ctx_params cp = prism_ctx_default_params();
    cp.n_ctx = n;
    cp.n_batch = n;
    prism_ctx *ctx = NULL;
    prism_status st = prism_ctx_new(b->m, cp, &ctx);
    if (st) return st;
    int32_t *pos = malloc((size_t)n * sizeof *pos), *seq = calloc((size_t)n, sizeof *seq);
    if (!pos || !seq) st = prism_error(PRISM_E_NOMEM, "out of memory");
    for (int32_t i = 0; !st && i < n; i++) pos[i] = i;
    prism_batch bt = {n, ids, pos, seq, NULL};
    if (!st) st = prism_decode_layers(ctx, &bt, 0, layer0_only ? 1 : b->m->cfg.n_layers);
    if (!st && layer0_only) memcpy(out, prism_get_hidden(ctx, n - 1), (size_t)b->m->cfg.hidden * sizeof(float));
    if (!st && !layer0_only) {
        st = prism_decode_head(ctx);
        if (!st) memcpy(out, prism_get_logits(ctx, n - 1), (size_t)b->m->cfg.vocab * sizeof(float));
    }
    free(pos);
    free(seq);
    prism_ctx_free(ctx);
    return st;
}

/* ------------------------------------------------------------------ stage settings */

static prism_status check_stage(boot *b, const char *stage, json_t *settings) {
    char *txt = json_dumps(settings, JSON_SORT_KEYS | JSON_COMPACT);
    json_t *all = json_object_get(b->summary, "settings");
    json_object_set(all, stage, settings);
    json_decref(settings);
    if (!txt) return prism_error(PRISM_E_NOMEM, "out of memory");
    char *why = NULL;
    prism_status st = stage_check(b->run, stage, txt, &why);
    free(txt);
    if (st && why) {
        prism_error(st, "%s", why);
    }
    free(why);
    return st;
}

/* Settings of each stage include those of the stages before it, so a change
 * upstream invalidates everything downstream. */
static json_t *settings_personas(boot *b) {
    const bootstrap_params *p = b->p;
    json_t *d = json_array();
    for (int i = 0; i < b->n_domains; i++) json_array_append_new(d, json_string(b->domains[i]));
    static const char *len_names[] = {"min", "half", "full"};
    return json_pack("{s:o, s:s, s:s?, s:I, s:s}", "domains", d, "persona_length", len_names[p->persona_length],
                     "personas_dir", p->personas_dir, "seed", (json_int_t)p->seed, "chat_template", prism_chat_name(b->chat));
}

static json_t *settings_queries(boot *b) {
    json_t *s = settings_personas(b);
    json_object_set_new(s, "queries_per_domain", json_integer(b->p->queries_per_domain));
    json_object_set_new(s, "max_candidates", json_integer(b->p->max_candidates));
    json_object_set_new(s, "query_temperature", json_real(b->p->query_temperature));
    json_object_set_new(s, "max_query_tokens", json_integer(b->p->max_query_tokens));
    json_object_set_new(s, "batch", json_integer(b->p->batch));
    return s;
}

static json_t *settings_answers(boot *b) {
    json_t *s = settings_queries(b);
    json_object_set_new(s, "answer_temperature", json_real(b->p->answer_temperature));
    json_object_set_new(s, "max_answer_tokens", json_integer(b->p->max_answer_tokens));
    return s;
}

static json_t *settings_judge(boot *b) {
    json_t *s = settings_answers(b);
    json_object_set_new(s, "judge_mode", json_string(b->p->judge_text ? "text" : "prob"));
    json_object_set_new(s, "judge_max_bytes", json_integer(b->p->judge_max_bytes));
    return s;
}

static json_t *settings_gate(boot *b) {
    json_t *s = settings_judge(b);
    const gate_train_params *g = &b->p->gate;
    json_object_set_new(s, "gate", json_pack("{s:i, s:f, s:f, s:i, s:f, s:I, s:b, s:f}", "epochs", g->epochs, "lr", g->lr,
                                             "weight_decay", g->weight_decay, "batch_size", g->batch_size, "holdout",
                                             g->holdout_frac, "seed", (json_int_t)g->seed, "balance", g->balance,
                                             "route_rate", b->p->route_rate));
    return s;
}

static json_t *settings_distill(boot *b) {
    json_t *s = settings_judge(b);
    const bootstrap_params *p = b->p;
    json_object_set_new(
        s, "distill",
        json_pack("{s:i, s:f, s:b, s:i, s:i, s:i, s:f, s:f, s:f, s:f, s:s, s:i, s:i, s:i, s:i, s:i, s:f}", "r", p->lora.r,
                  "alpha", p->lora.alpha, "rslora", p->lora.use_rslora, "targets", (int)p->lora.targets, "layer_begin",
                  p->lora.layer_begin, "layer_end", p->lora.layer_end, "lr", p->lr, "weight_decay", p->weight_decay,
                  "warmup_ratio", p->warmup_ratio, "max_grad_norm", p->max_grad_norm, "schedule", p->schedule,
                  "micro_batch", p->micro_batch, "grad_accum", p->grad_accum, "epochs", p->epochs, "max_len",
                  p->max_len, "kl_topk", p->kl_topk, "kl_temperature", p->kl_temperature));
    return s;
}

/* ------------------------------------------------------------------ stage 1: personas */

static char *display_domain(const char *d) {
    char *s = xstrdup(d);
    for (char *c = s; *c; c++)
        if (*c == '_') *c = ' ';
    return s;
}

static char *persona_request(const char *domain, int length) {
    char *dn = display_domain(domain), *out = malloc(1024);
    if (!out) return NULL;
    if (length == PERSONA_MIN)
        snprintf(out, 1024,
                 "Write a one-sentence description of an expert assistant persona for the domain \"%s\", in the "
                 "second person, starting with \"You are\". Reply with the sentence only.", dn);
    else
        snprintf(out, 1024,
                 "Write a description of an expert assistant persona for the domain \"%s\", in the second person, "
                 "starting with \"You are\", in about %d words: the expertise, the way this expert thinks and the "
                 "standards the expert holds. Reply with the description only.", dn, length == PERSONA_HALF ? 60 : 150);
    free(dn);
    return out;
}

/* First sentence of s (for the min form), trimmed. */
static void keep_first_sentence(char *s) {
    for (char *c = s; *c; c++)
        if ((*c == '.' || *c == '!' || *c == '?') && (c[1] == ' ' || c[1] == '\n' || c[1] == 0)) {
            c[1] = 0;
            return;
        }
}

static prism_status stage_personas(boot *b, jstore *st_p) {
    const bootstrap_params *p = b->p;
    progress pr;
    progress_start(b, &pr, "personas", b->n_domains, (int64_t)jstore_count(st_p));
    const int B = p->batch;
    for (int w0 = 0; w0 < b->n_domains; w0 += B) {
        int n = b->n_domains - w0 < B ? b->n_domains - w0 : B, missing = 0;
        for (int i = 0; i < n; i++) missing += !jstore_get(st_p, b->domains[w0 + i]);
        if (!missing) continue;
        char *texts[256] = {0};
        const char *users[256];
        uint64_t seeds[256];
        prism_status st = PRISM_OK;
        if (p->personas_dir) {
            for (int i = 0; !st && i < n; i++) {
                char path[4400];
                snprintf(path, sizeof path, "%s/%s.txt", p->personas_dir, b->domains[w0 + i]);
                FILE *f = fopen(path, "rb");
                if (!f) { st = prism_error(PRISM_E_IO, "%s: cannot open (--personas needs one file per domain): %s", path, strerror(errno)); break; }
                char buf[16384];
                size_t r = fread(buf, 1, sizeof buf - 1, f);
                fclose(f);
                buf[r] = 0;
                texts[i] = trim_dup(buf);
                if (!texts[i] || !texts[i][0]) st = prism_error(PRISM_E_FORMAT, "%s: empty persona", path);
            }
        } else {
            for (int i = 0; i < n; i++) {
                users[i] = persona_request(b->domains[w0 + i], p->persona_length);
                seeds[i] = mix_seed(p->seed, "persona", w0 + i, 0);
            }
            const int32_t max_new = p->persona_length == PERSONA_MIN ? 64 : p->persona_length == PERSONA_HALF ? 140 : 320;
            st = gen_window(b, n, NULL, users, seeds, 0.7f, max_new, texts, NULL, NULL);
            for (int i = 0; i < n; i++) free((char *)users[i]);
        }
        for (int i = 0; !st && i < n; i++) {
            const char *d = b->domains[w0 + i];
            if (jstore_get(st_p, d)) continue;
            char *t = trim_dup(texts[i]);
            if (p->persona_length == PERSONA_MIN) keep_first_sentence(t);
            bool fallback = !t[0];
            if (fallback) {
                free(t);
                char *dn = display_domain(d);
                t = malloc(strlen(dn) + 64);
                sprintf(t, "You are an expert in %s.", dn);
                free(dn);
            }
            st = jstore_append_new(st_p, json_pack("{s:s, s:s, s:s, s:s, s:b}", "key", d, "domain", d, "persona", t, "source",
                                                   p->personas_dir ? "file" : "model", "fallback", fallback));
            free(t);
        }
        for (int i = 0; i < n; i++) free(texts[i]);
        if (st) return st;
        progress_update(b, &pr, (int64_t)jstore_count(st_p));
    }
    progress_update(b, &pr, b->n_domains);
    return PRISM_OK;
}

static const char *persona_of(jstore *st_p, const char *domain) {
    return json_string_value(json_object_get(jstore_get(st_p, domain), "persona"));
}

/* ------------------------------------------------------------------ stage 2: queries */

static char *query_request(const char *persona) {
    static const char *tail =
        "\n\nWrite one challenging, specific and realistic question that a user might ask and that this expert "
        "would excel at answering. Reply with the question only, on a single line.";
    size_t n = strlen(persona) + strlen(tail) + 64;
    char *s = malloc(n);
    if (s) snprintf(s, n, "Here is an expert:\n\n%s%s", persona, tail);
    return s;
}

static prism_status stage_queries(boot *b, jstore *st_p, jstore *st_q) {
    const bootstrap_params *p = b->p;
    const int N = p->queries_per_domain, MAXC = p->max_candidates, B = p->batch;
    progress pr;
    int64_t already = 0;
    for (size_t i = 0; i < jstore_count(st_q); i++) already += json_is_true(json_object_get(jstore_at(st_q, i), "accepted"));
    progress_start(b, &pr, "queries", (int64_t)N * b->n_domains, already);
    int64_t total_acc = 0;
    for (int d = 0; d < b->n_domains; d++) {
        const char *dom = b->domains[d], *persona = persona_of(st_p, dom);
        dedup_set *dd = dedup_new(0.7);
        int accepted = 0;
        prism_status st = dd ? PRISM_OK : prism_error(PRISM_E_NOMEM, "out of memory");
        char *req = query_request(persona);
        for (int c0 = 0; !st && accepted < N && c0 < MAXC; c0 += B) {
            int n = MAXC - c0 < B ? MAXC - c0 : B, recorded = 0;
            char key[512];
            for (int i = 0; i < n; i++) {
                snprintf(key, sizeof key, "%s/c%d", dom, c0 + i);
                recorded += jstore_get(st_q, key) != NULL;
            }
            char *texts[256] = {0};
            if (recorded < n) {
                /* Regenerate the whole window: the same batch as an uninterrupted run. */
                const char *users[256];
                uint64_t seeds[256];
                for (int i = 0; i < n; i++) users[i] = req, seeds[i] = mix_seed(p->seed, dom, c0 + i, 1);
                st = gen_window(b, n, NULL, users, seeds, p->query_temperature, p->max_query_tokens, texts, NULL, NULL);
            }
            for (int i = 0; !st && i < n && accepted < N; i++) {
                snprintf(key, sizeof key, "%s/c%d", dom, c0 + i);
                const json_t *rec = jstore_get(st_q, key);
                if (rec) { /* replay */
                    if (json_is_true(json_object_get(rec, "accepted"))) {
                        dedup_add(dd, json_string_value(json_object_get(rec, "query")));
                        accepted++;
                    }
                    continue;
                }
                char *q = clean_query(texts[i]);
                const char *reason = !q ? "short" : (!dedup_add(dd, q) ? "duplicate" : "ok");
                bool ok = !strcmp(reason, "ok");
                json_t *r = json_pack("{s:s, s:s, s:i, s:s, s:s?, s:b, s:s}", "key", key, "domain", dom, "candidate", c0 + i,
                                      "raw", texts[i], "query", q, "accepted", ok, "reason", reason);
                if (ok) json_object_set_new(r, "index", json_integer(accepted));
                st = jstore_append_new(st_q, r);
                accepted += ok;
                free(q);
            }
            for (int i = 0; i < n; i++) free(texts[i]);
            progress_update(b, &pr, total_acc + accepted);
        }
        free(req);
        dedup_free(dd);
        if (st) return st;
        if (accepted < N && !p->quiet)
            fprintf(stderr, "[queries] %s: only %d distinct queries of %d after %d candidates\n", dom, accepted, N, MAXC);
        total_acc += accepted;
    }
    progress_update(b, &pr, pr.total);
    return PRISM_OK;
}

/* Accepted queries in (domain, index) order. */
typedef struct {
    char key[256];
    const char *domain, *query, *persona;
    int domain_index, index;
} query_item;

static int collect_queries(boot *b, jstore *st_p, jstore *st_q, query_item **out) {
    int cap = 64, n = 0;
    query_item *v = malloc((size_t)cap * sizeof *v);
    for (int d = 0; d < b->n_domains; d++)
        for (size_t i = 0; i < jstore_count(st_q); i++) {
            const json_t *r = jstore_at(st_q, i);
            if (strcmp(json_string_value(json_object_get(r, "domain")), b->domains[d]) != 0 ||
                !json_is_true(json_object_get(r, "accepted")))
                continue;
            if (n == cap) v = realloc(v, (size_t)(cap *= 2) * sizeof *v);
            snprintf(v[n].key, sizeof v[n].key, "%s/%d", b->domains[d], (int)json_integer_value(json_object_get(r, "index")));
            v[n].domain = b->domains[d];
            v[n].domain_index = d;
            v[n].index = (int)json_integer_value(json_object_get(r, "index"));
            v[n].query = json_string_value(json_object_get(r, "query"));
            v[n].persona = persona_of(st_p, b->domains[d]);
            n++;
        }
    *out = v;
    return n;
}

/* ------------------------------------------------------------------ stage 3: answers */

static prism_status stage_answers(boot *b, const query_item *qs, int nq, jstore *st_a) {
    const bootstrap_params *p = b->p;
    const int W = p->batch / 2 > 0 ? p->batch / 2 : 1;
    progress pr;
    progress_start(b, &pr, "answers", nq, (int64_t)jstore_count(st_a));
    for (int w0 = 0; w0 < nq; w0 += W) {
        int n = nq - w0 < W ? nq - w0 : W, missing = 0;
        for (int i = 0; i < n; i++) missing += !jstore_get(st_a, qs[w0 + i].key);
        if (!missing) continue;
        const char *systems[256], *users[256], *fin[256];
        uint64_t seeds[256];
        char *outs[256] = {0};
        int32_t ntok[256];
        for (int i = 0; i < n; i++) {
            const query_item *q = &qs[w0 + i];
            systems[2 * i] = NULL, users[2 * i] = q->query;
            systems[2 * i + 1] = q->persona, users[2 * i + 1] = q->query;
            seeds[2 * i] = mix_seed(p->seed, q->key, 0, 2);
            seeds[2 * i + 1] = mix_seed(p->seed, q->key, 1, 2);
        }
        prism_status st = gen_window(b, 2 * n, systems, users, seeds, p->answer_temperature, p->max_answer_tokens, outs,
                                     ntok, fin);
        for (int i = 0; !st && i < n; i++) {
            const query_item *q = &qs[w0 + i];
            if (jstore_get(st_a, q->key)) continue;
            st = jstore_append_new(st_a, json_pack("{s:s, s:s, s:i, s:s, s:s, s:s, s:i, s:i, s:s, s:s}", "key", q->key,
                                                   "domain", q->domain, "index", q->index, "query", q->query, "base",
                                                   outs[2 * i], "persona", outs[2 * i + 1], "base_tokens", ntok[2 * i],
                                                   "persona_tokens", ntok[2 * i + 1], "base_finish", fin[2 * i],
                                                   "persona_finish", fin[2 * i + 1]));
        }
        for (int i = 0; i < 2 * n; i++) free(outs[i]);
        if (st) return st;
        progress_update(b, &pr, (int64_t)jstore_count(st_a));
    }
    progress_update(b, &pr, nq);
    return PRISM_OK;
}

/* ------------------------------------------------------------------ stage 4: judge */

static prism_status judge_once(boot *b, const judge_tokens *jt, const char *q, const char *a, const char *bb,
                               uint64_t seed, judge_vote *v, int32_t *cap_used) {
    /* Answers are cut to judge_max_bytes; if the prompt still does not fit the
     * model's context (with room for the reply), the cap is halved until it does. */
    size_t cap = (size_t)b->p->judge_max_bytes;
    char *prompt = NULL;
    prism_status st = PRISM_OK;
    for (;;) {
        prompt = judge_prompt(q, a, bb, cap);
        if (!prompt) return prism_error(PRISM_E_NOMEM, "out of memory");
        int32_t *ids = NULL, n = 0;
        if ((st = prompt_ids(b, NULL, prompt, &ids, &n))) { free(prompt); return st; }
        free(ids);
        if (n + 8 < b->m->cfg.max_pos) break;
        free(prompt);
        if (cap <= 16)
            return prism_error(PRISM_E_RANGE, "judge: the question alone (%d tokens) does not fit the model's %d positions", n, b->m->cfg.max_pos);
        cap /= 2;
    }
    *cap_used = (int32_t)cap;
    if (b->p->judge_text) {
        const char *users[1] = {prompt};
        char *out[1] = {0};
        st = gen_window(b, 1, NULL, users, &seed, 0.0f, 8, out, NULL, NULL);
        if (!st) *v = judge_vote_from_text(out[0]);
        free(out[0]);
    } else {
        int32_t *ids = NULL, n = 0;
        st = prompt_ids(b, NULL, prompt, &ids, &n);
        float *lg = st ? NULL : malloc((size_t)b->m->cfg.vocab * sizeof(float));
        if (!st && !lg) st = prism_error(PRISM_E_NOMEM, "out of memory");
        if (!st) st = last_token_pass(b, ids, n, false, lg);
        if (!st) *v = judge_vote_from_logits(lg, b->m->cfg.vocab, jt);
        free(lg);
        free(ids);
    }
    free(prompt);
    return st;
}

static json_t *vote_json(judge_vote v) {
    char c[2] = {v.choice, 0};
    return json_pack("{s:f, s:f, s:f, s:s}", "p_a", v.p_a, "p_b", v.p_b, "p_tie", v.p_tie, "choice", c[0] == 'T' ? "TIE" : c);
}

static prism_status stage_judge(boot *b, const query_item *qs, int nq, jstore *st_a, jstore *st_v) {
    judge_tokens jt;
    prism_status st = b->p->judge_text ? PRISM_OK : judge_tokens_find(b->tok, &jt);
    if (st) return st;
    progress pr;
    progress_start(b, &pr, "judge", nq, (int64_t)jstore_count(st_v));
    for (int i = 0; i < nq && !st; i++) {
        const query_item *q = &qs[i];
        if (jstore_get(st_v, q->key)) continue;
        const json_t *a = jstore_get(st_a, q->key);
        const char *base = json_string_value(json_object_get(a, "base")), *pers = json_string_value(json_object_get(a, "persona"));
        judge_vote o1, o2;
        int32_t cap1 = 0, cap2 = 0;
        /* order 1: A = base, B = persona; order 2: A = persona, B = base */
        st = judge_once(b, &jt, q->query, base, pers, mix_seed(b->p->seed, q->key, 0, 3), &o1, &cap1);
        if (!st) st = judge_once(b, &jt, q->query, pers, base, mix_seed(b->p->seed, q->key, 1, 3), &o2, &cap2);
        if (st) break;
        judge_outcome o = judge_decide(o1, o2);
        st = jstore_append_new(st_v, json_pack("{s:s, s:s, s:i, s:o, s:o, s:s, s:i, s:i}", "key", q->key, "domain", q->domain,
                                               "index", q->index, "order1", vote_json(o1), "order2", vote_json(o2),
                                               "outcome", judge_outcome_name(o), "label", o == OUTCOME_PERSONA,
                                               "answer_bytes_shown", cap1 < cap2 ? cap1 : cap2));
        progress_update(b, &pr, (int64_t)jstore_count(st_v));
    }
    if (!st) progress_update(b, &pr, nq);
    return st;
}

/* ------------------------------------------------------------------ stage 5: gate features */

/* The gate's input for a query: layer-0 hidden state at the last token of the
 * chat-templated query without persona — exactly what routed inference reads. */
static prism_status query_feature(boot *b, const char *query, float *out) {
    int32_t *ids = NULL, n = 0;
    prism_status st = prompt_ids(b, NULL, query, &ids, &n);
    if (!st) st = last_token_pass(b, ids, n, true, out);
    free(ids);
    return st;
}

static prism_status stage_features(boot *b, const query_item *qs, int nq, jstore *st_v) {
    const int64_t H = b->m->cfg.hidden;
    float *X = malloc((size_t)(nq ? nq : 1) * (size_t)H * sizeof(float));
    int32_t *y = malloc((size_t)(nq ? nq : 1) * sizeof(int32_t)), *dom = malloc((size_t)(nq ? nq : 1) * sizeof(int32_t));
    prism_status st = (!X || !y || !dom) ? prism_error(PRISM_E_NOMEM, "out of memory") : PRISM_OK;
    progress pr;
    progress_start(b, &pr, "features", nq, 0);
    json_t *keys = json_array();
    for (int i = 0; !st && i < nq; i++) {
        st = query_feature(b, qs[i].query, X + (int64_t)i * H);
        y[i] = (int32_t)json_integer_value(json_object_get(jstore_get(st_v, qs[i].key), "label"));
        dom[i] = qs[i].domain_index;
        json_array_append_new(keys, json_string(qs[i].key));
        progress_update(b, &pr, i + 1);
    }
    if (!st) {
        char *meta_keys = json_dumps(keys, JSON_COMPACT);
        json_t *meta = json_pack("{s:s, s:s}", "format", "prism-gate-features", "keys", meta_keys);
        char *meta_txt = json_dumps(meta, JSON_COMPACT);
        st_write_tensor t[3] = {
            {.name = "features", .dtype = ST_F32, .ndim = 2, .shape = {nq, H}, .data = X},
            {.name = "labels", .dtype = ST_I32, .ndim = 1, .shape = {nq}, .data = y},
            {.name = "domain", .dtype = ST_I32, .ndim = 1, .shape = {nq}, .data = dom},
        };
        st = st_write(path_in(b, "gate_features.safetensors"), t, 3, meta_txt);
        free(meta_keys);
        free(meta_txt);
        json_decref(meta);
    }
    json_decref(keys);
    free(X);
    free(y);
    free(dom);
    if (!st) progress_update(b, &pr, nq);
    return st;
}

typedef struct {
    int64_t n, H;
    float *X;
    int32_t *y, *dom;
} features;

static void features_free(features *f) {
    free(f->X);
    free(f->y);
    free(f->dom);
}

static prism_status features_load(const char *path, features *f) {
    memset(f, 0, sizeof *f);
    st_set *s = NULL;
    prism_status st = st_open(path, &s);
    if (st) return st;
    const st_tensor *tx = st_find(s, "features"), *ty = st_find(s, "labels"), *td = st_find(s, "domain");
    if (!tx || !ty || !td || tx->ndim != 2 || ty->numel != tx->shape[0] || td->numel != tx->shape[0]) {
        st_close(s);
        return prism_error(PRISM_E_FORMAT, "%s: expected tensors features [n, hidden], labels [n], domain [n]", path);
    }
    f->n = tx->shape[0], f->H = tx->shape[1];
    f->X = malloc((size_t)(tx->numel ? tx->numel : 1) * sizeof(float));
    float *tmp = malloc((size_t)(f->n ? f->n : 1) * sizeof(float) * 2);
    f->y = malloc((size_t)(f->n ? f->n : 1) * sizeof(int32_t));
    f->dom = malloc((size_t)(f->n ? f->n : 1) * sizeof(int32_t));
    st = st_read_f32(s, tx, f->X);
    if (!st) st = st_read_f32(s, ty, tmp);
    if (!st) st = st_read_f32(s, td, tmp + f->n);
    for (int64_t i = 0; !st && i < f->n; i++) f->y[i] = (int32_t)tmp[i], f->dom[i] = (int32_t)tmp[f->n + i];
    free(tmp);
    st_close(s);
    return st;
}

/* ------------------------------------------------------------------ stage 6: gate */

static prism_status stage_gate(boot *b) {
    features f;
    prism_status st = features_load(path_in(b, "gate_features.safetensors"), &f);
    if (st) return st;
    int64_t n_pos = 0;
    for (int64_t i = 0; i < f.n; i++) n_pos += f.y[i] == 1;
    gate_mlp *g = gate_mlp_new((int32_t)f.H, b->p->gate.seed ? b->p->gate.seed : b->p->seed);
    json_t *rep = json_object();
    if (!g) st = prism_error(PRISM_E_NOMEM, "out of memory");
    if (!st && (n_pos == 0 || n_pos == f.n)) {
        /* One class only: there is nothing to learn. A constant gate keeps
         * every query on the side that won (no wins: the base model). */
        memset(g->w3, 0, 64 * sizeof(float));
        g->b3[0] = n_pos ? 20.0f : -20.0f;
        st = gate_set_threshold(g, 0.5f);
        json_object_set_new(rep, "degenerate", json_string(n_pos ? "every query was a persona win: everything routes to the adapter"
                                                                 : "no persona wins: nothing routes to the adapter"));
        if (!b->p->quiet) fprintf(stderr, "[gate] %s\n", json_string_value(json_object_get(rep, "degenerate")));
    } else if (!st) {
        int8_t *y8 = malloc((size_t)f.n);
        for (int64_t i = 0; i < f.n; i++) y8[i] = (int8_t)f.y[i];
        gate_train_params gp = b->p->gate;
        if (!gp.seed) gp.seed = b->p->seed;
        gate_train_report r;
        st = gate_train(g, f.X, y8, f.n, &gp, &r);
        free(y8);
        if (!st) {
            json_object_set_new(rep, "n_train", json_integer(r.n_train));
            json_object_set_new(rep, "n_holdout", json_integer(r.n_holdout));
            json_object_set_new(rep, "train_accuracy", json_real(r.train_acc));
            json_object_set_new(rep, "holdout_accuracy", isnan(r.holdout_acc) ? json_null() : json_real(r.holdout_acc));
            json_object_set_new(rep, "holdout_balanced_accuracy", isnan(r.holdout_bal_acc) ? json_null() : json_real(r.holdout_bal_acc));
            json_object_set_new(rep, "final_train_loss", json_real(r.final_train_loss));
            if (r.note[0]) json_object_set_new(rep, "note", json_string(r.note));
            if (!b->p->quiet)
                fprintf(stderr, "[gate] train accuracy %.3f, held-out accuracy %.3f (%d train / %d held out)%s%s\n", r.train_acc,
                        r.holdout_acc, r.n_train, r.n_holdout, r.note[0] ? ": " : "", r.note);
        }
    }
    if (!st && b->p->route_rate >= 0) {
        int64_t routed = 0;
        st = gate_calibrate(g, f.X, f.n, b->p->route_rate, &routed);
        json_object_set_new(rep, "calibrated_route_rate", json_real(b->p->route_rate));
        json_object_set_new(rep, "calibrated_routed", json_integer(routed));
    }
    if (!st) {
        json_object_set_new(rep, "threshold", json_real(g->threshold));
        json_object_set_new(rep, "wins", json_integer(n_pos));
        json_object_set_new(rep, "retains", json_integer(f.n - n_pos));
        /* safetensors metadata values are strings: the report goes in as JSON text */
        char *txt = json_dumps(rep, JSON_COMPACT | JSON_SORT_KEYS);
        json_t *mj = json_pack("{s:s}", "report", txt ? txt : "{}");
        char *meta = json_dumps(mj, JSON_COMPACT);
        st = gate_save(g, path_in(b, "gate.safetensors"), meta);
        free(meta);
        free(txt);
        json_decref(mj);
    }
    json_object_set(b->summary, "gate", rep);
    json_decref(rep);
    gate_mlp_free(g);
    features_free(&f);
    return st;
}

/* ------------------------------------------------------------------ stage 7: distillation */

static bool train_cb(void *user, const train_progress *tp) {
    boot *b = user;
    if (!b->p->quiet)
        fprintf(stderr, "[distill] step %lld/%lld  loss %.4f  lr %.2e  |g| %.3f  %.0f tok/s  ETA %.0fs\n", (long long)tp->step,
                (long long)tp->total_steps, tp->loss, tp->lr, tp->grad_norm, tp->tokens_per_s, tp->eta_s);
    log_event(b, "distill", "progress", json_pack("{s:I, s:I, s:f, s:f}", "done", (json_int_t)tp->step, "total",
                                                  (json_int_t)tp->total_steps, "loss", tp->loss, "eta_s", tp->eta_s));
    return true;
}

static prism_status stage_distill(boot *b, const query_item *qs, int nq, jstore *st_a, jstore *st_v) {
    const bootstrap_params *p = b->p;
    /* distill.jsonl: the wins, in prism train-lora's documented format */
    size_t cap = 1 << 16, len = 0;
    char *buf = malloc(cap);
    int wins = 0;
    for (int i = 0; i < nq; i++) {
        const json_t *v = jstore_get(st_v, qs[i].key);
        if (json_integer_value(json_object_get(v, "label")) != 1) continue;
        const json_t *a = jstore_get(st_a, qs[i].key);
        json_t *line = json_pack("{s:s, s:[{s:s, s:s}, {s:s, s:s}], s:s}", "key", qs[i].key, "messages", "role", "user",
                                 "content", qs[i].query, "role", "assistant", "content",
                                 json_string_value(json_object_get(a, "persona")), "teacher_system", qs[i].persona);
        char *s = json_dumps(line, JSON_COMPACT);
        json_decref(line);
        size_t n = strlen(s);
        if (len + n + 2 > cap) buf = realloc(buf, cap = (len + n + 2) * 2);
        memcpy(buf + len, s, n);
        len += n;
        buf[len++] = '\n';
        free(s);
        wins++;
    }
    char dpath[4400];
    snprintf(dpath, sizeof dpath, "%s", path_in(b, "distill.jsonl"));
    FILE *f = fopen(path_in(b, "distill.jsonl.tmp"), "wb");
    prism_status st = PRISM_OK;
    if (!f || fwrite(buf, 1, len, f) != len || fflush(f) || fsync(fileno(f)))
        st = prism_error(PRISM_E_IO, "%s: cannot write: %s", path_in(b, "distill.jsonl.tmp"), strerror(errno));
    if (f) fclose(f);
    free(buf);
    if (!st && rename(path_in(b, "distill.jsonl.tmp"), dpath) != 0)
        st = prism_error(PRISM_E_IO, "%s: cannot rename: %s", dpath, strerror(errno));
    if (st) return st;

    char adir[4400];
    snprintf(adir, sizeof adir, "%s", path_in(b, "adapter"));
    prism_adapter *a = NULL;
    prism_lora_params lp = p->lora;
    if (!lp.seed) lp.seed = p->seed;
    if ((st = prism_adapter_new(b->m, lp, &a))) return st;
    json_t *ds = json_object();
    json_object_set_new(ds, "examples", json_integer(wins));
    if (wins == 0) {
        json_object_set_new(ds, "skipped", json_string("no persona wins: the adapter is left at its initialisation (B = 0, identical to the base model)"));
        if (!p->quiet) fprintf(stderr, "[distill] no persona wins: saving an untrained adapter (identical to the base model)\n");
    } else {
        train_data_params dp;
        memset(&dp, 0, sizeof dp);
        dp.loss = LOSS_KL;
        dp.max_len = p->max_len;
        dp.n_vocab = b->m->cfg.vocab;
        dp.kl_topk = p->kl_topk;
        dp.kl_temperature = p->kl_temperature;
        dp.tok = b->tok;
        dp.chat = b->chat;
        train_data *d = NULL;
        st = train_data_load(dpath, &dp, &d);
        if (st && d)
            for (int i = 0; i < d->n_diag; i++) fprintf(stderr, "%s\n", d->diag[i]);
        if (!st) {
            trainer_params tp = trainer_default_params();
            tp.loss = LOSS_KL;
            tp.epochs = p->epochs;
            tp.batch_size = p->micro_batch;
            tp.grad_accum = p->grad_accum;
            tp.lr = p->lr;
            int sch = lr_schedule_parse(p->schedule);
            tp.schedule = sch < 0 ? SCHED_LINEAR : (lr_schedule)sch;
            tp.adamw.weight_decay = p->weight_decay;
            tp.max_grad_norm = p->max_grad_norm;
            tp.seed = p->seed;
            tp.recompute = p->recompute;
            tp.out_dir = adir;
            tp.save_every = 10;
            tp.progress = train_cb;
            tp.user = b;
            int64_t total = trainer_total_steps(d, &tp);
            tp.warmup_steps = (int64_t)(p->warmup_ratio * (double)total + 0.5);
            char ck[4500];
            snprintf(ck, sizeof ck, "%s/checkpoint", adir);
            struct stat sb;
            tp.resume = stat(ck, &sb) == 0;
            train_result res;
            st = trainer_run(b->m, a, d, &tp, &res);
            if (!st) {
                json_object_set_new(ds, "steps", json_integer(res.steps_done));
                json_object_set_new(ds, "final_loss", json_real(res.last_loss));
                json_object_set_new(ds, "scored_positions", json_integer(d->n_scored));
            }
        }
        train_data_free(d);
    }
    if (!st) st = prism_adapter_save(a, adir, "F32");
    json_object_set(b->summary, "distill", ds);
    json_decref(ds);
    prism_adapter_free(a);
    return st;
}

/* ------------------------------------------------------------------ the run */

static void count_by_domain(boot *b, const query_item *qs, int nq, jstore *st_v) {
    json_t *per = json_object();
    for (int d = 0; d < b->n_domains; d++) {
        int q = 0, w = 0, base = 0, tie = 0, dis = 0, judged = 0;
        for (int i = 0; i < nq; i++) {
            if (qs[i].domain_index != d) continue;
            q++;
            const json_t *v = st_v ? jstore_get(st_v, qs[i].key) : NULL;
            if (!v) continue;
            judged++;
            const char *o = json_string_value(json_object_get(v, "outcome"));
            w += !strcmp(o, "persona"), base += !strcmp(o, "base"), tie += !strcmp(o, "tie"), dis += !strcmp(o, "disagree");
        }
        json_object_set_new(per, b->domains[d], json_pack("{s:i, s:i, s:i, s:i, s:i, s:i, s:i}", "queries", q, "judged", judged,
                                                          "wins", w, "retains", judged - w, "base_wins", base, "ties", tie,
                                                          "disagreements", dis));
    }
    json_object_set_new(b->summary, "domains", per);
}

static prism_status split_domains(boot *b, const char *list) {
    char *s = xstrdup(list), *save = NULL;
    for (char *t = strtok_r(s, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        char *d = trim_dup(t);
        if (!d[0]) { free(d); continue; }
        for (char *c = d; *c; c++)
            if (!((*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') || (*c >= '0' && *c <= '9') || *c == '_' || *c == '-')) {
                prism_status st = prism_error(PRISM_E_ARG, "--domains: \"%s\" is not a valid domain name (letters, digits, _ and - only)", d);
                free(d);
                free(s);
                return st;
            }
        for (int i = 0; i < b->n_domains; i++)
            if (!strcmp(b->domains[i], d)) {
                prism_status st = prism_error(PRISM_E_ARG, "--domains: \"%s\" is listed twice", d);
                free(d);
                free(s);
                return st;
            }
        b->domains = realloc(b->domains, (size_t)(b->n_domains + 1) * sizeof *b->domains);
        b->domains[b->n_domains++] = d;
    }
    free(s);
    if (b->n_domains == 0) return prism_error(PRISM_E_ARG, "--domains: no domain given");
    if (b->n_domains > 256) return prism_error(PRISM_E_ARG, "--domains: at most 256 domains");
    return PRISM_OK;
}

static prism_status validate(const bootstrap_params *p) {
    if (!p->model_dir || !p->run_dir) return prism_error(PRISM_E_ARG, "bootstrap needs --model DIR and --out RUN_DIR");
    if (p->queries_per_domain < 1 || p->queries_per_domain > 100000) return prism_error(PRISM_E_ARG, "--queries-per-domain must be in 1..100000");
    if (p->max_candidates < p->queries_per_domain) return prism_error(PRISM_E_ARG, "--max-candidates must be at least --queries-per-domain");
    if (p->batch < 1 || p->batch > 256) return prism_error(PRISM_E_ARG, "--batch must be in 1..256");
    if (p->max_answer_tokens < 1 || p->max_query_tokens < 1) return prism_error(PRISM_E_ARG, "token limits must be positive");
    if (p->judge_max_bytes < 16) return prism_error(PRISM_E_ARG, "--judge-max-bytes must be at least 16");
    if (p->route_rate > 1) return prism_error(PRISM_E_ARG, "--route-rate must be in 0..1");
    if (p->epochs < 1 || p->micro_batch < 1 || p->grad_accum < 1 || p->max_len < 2)
        return prism_error(PRISM_E_ARG, "--epochs, --micro-batch, --grad-accum must be >= 1 and --max-len >= 2");
    if (lr_schedule_parse(p->schedule) < 0) return prism_error(PRISM_E_ARG, "--schedule: expected linear, cosine or constant");
    if (p->persona_length < PERSONA_MIN || p->persona_length > PERSONA_FULL) return prism_error(PRISM_E_ARG, "--persona-length: expected min, half or full");
    return PRISM_OK;
}

static int stage_index(const char *name) {
    for (int i = 0; i < N_STAGES; i++)
        if (name && !strcmp(name, STAGES[i])) return i;
    return -1;
}

prism_status prism_bootstrap(const bootstrap_params *pin) {
    bootstrap_params pp = *pin;
    if (pp.max_candidates <= 0) pp.max_candidates = 4 * pp.queries_per_domain;
    const bootstrap_params *p = &pp;
    prism_status st = validate(p);
    if (st) return st;
    int last_stage = N_STAGES - 1;
    if (p->stop_after && (last_stage = stage_index(p->stop_after)) < 0)
        return prism_error(PRISM_E_ARG, "--stop-after: unknown stage \"%s\" (personas, queries, answers, judge, features, gate, distill)", p->stop_after);
    boot B;
    memset(&B, 0, sizeof B);
    boot *b = &B;
    b->p = p;
    b->t0 = prism_now();
    snprintf(b->run, sizeof b->run, "%s", p->run_dir);
    jstore *st_p = NULL, *st_q = NULL, *st_a = NULL, *st_v = NULL;
    query_item *qs = NULL;
    int nq = 0;
    if ((st = split_domains(b, p->domains ? p->domains : BOOTSTRAP_DEFAULT_DOMAINS))) goto out;
    prism_model_params mp = prism_model_default_params();
    if (p->device && (st = prism_device_parse(p->device, &mp.device))) goto out;
    if ((st = prism_model_load(p->model_dir, mp, &b->m))) goto out;
    if ((st = prism_tokenizer_load(p->model_dir, &b->tok))) goto out;
    if ((st = prism_chat_load(p->model_dir, p->chat_template, &b->chat))) goto out;
    if ((st = store_mkdir_p(b->run))) goto out;

    /* prism.json: keep what an earlier (interrupted) run recorded, but the base model must match */
    json_error_t je;
    b->summary = json_load_file(path_in(b, "prism.json"), 0, &je);
    if (b->summary && (st = runinfo_check_model(b->run, b->m))) goto out;
    if (!b->summary) b->summary = json_object();
    json_t *id = runinfo_model_identity(b->m);
    if (!id) { st = PRISM_E_IO; goto out; }
    json_object_set_new(b->summary, "version", json_integer(1));
    json_object_set_new(b->summary, "base_model", id);
    if (!json_is_object(json_object_get(b->summary, "settings"))) json_object_set_new(b->summary, "settings", json_object());
    if (!json_is_object(json_object_get(b->summary, "timings"))) json_object_set_new(b->summary, "timings", json_object());
    json_object_set_new(b->summary, "status", json_string("running"));
    if ((st = save_summary(b))) goto out;
    b->log = fopen(path_in(b, "log.jsonl"), "a");

    json_t *timings = json_object_get(b->summary, "timings");
#define STAGE(idx, settings_fn, body)                                                               \
    do {                                                                                            \
        if ((st = check_stage(b, STAGES[idx], settings_fn(b)))) goto out;                          \
        if (!stage_is_done(b->run, STAGES[idx])) {                                                  \
            double ts = prism_now();                                                                \
            body;                                                                                   \
            if (st) goto out;                                                                       \
            if ((st = stage_mark_done(b->run, STAGES[idx]))) goto out;                              \
            double prev = json_number_value(json_object_get(timings, STAGES[idx]));                 \
            json_object_set_new(timings, STAGES[idx], json_real(prev + prism_now() - ts));          \
            log_event(b, STAGES[idx], "done", NULL);                                                \
        } else if (!p->quiet) {                                                                     \
            fprintf(stderr, "[%s] already done\n", STAGES[idx]);                                   \
        }                                                                                           \
        if ((st = save_summary(b))) goto out;                                                      \
        if (idx == last_stage) goto out;                                                           \
    } while (0)

    if ((st = jstore_open(path_in(b, "personas.jsonl"), &st_p))) goto out;
    STAGE(0, settings_personas, st = stage_personas(b, st_p));
    json_object_set_new(b->summary, "personas", json_integer((json_int_t)jstore_count(st_p)));

    if ((st = jstore_open(path_in(b, "queries.jsonl"), &st_q))) goto out;
    STAGE(1, settings_queries, st = stage_queries(b, st_p, st_q));
    nq = collect_queries(b, st_p, st_q, &qs);
    count_by_domain(b, qs, nq, NULL);

    if ((st = jstore_open(path_in(b, "answers.jsonl"), &st_a))) goto out;
    STAGE(2, settings_answers, st = stage_answers(b, qs, nq, st_a));

    if ((st = jstore_open(path_in(b, "verdicts.jsonl"), &st_v))) goto out;
    STAGE(3, settings_judge, st = stage_judge(b, qs, nq, st_a, st_v));
    count_by_domain(b, qs, nq, st_v);

    STAGE(4, settings_judge, st = stage_features(b, qs, nq, st_v));
    STAGE(5, settings_gate, st = stage_gate(b));
    STAGE(6, settings_distill, st = stage_distill(b, qs, nq, st_a, st_v));
#undef STAGE
out:
    if (b->summary && b->m) {
        json_object_set_new(b->summary, "status", json_string(st ? "failed" : (stage_is_done(b->run, "distill") ? "complete" : "partial")));
        if (st) json_object_set_new(b->summary, "error", json_string(prism_last_error()));
        else json_object_del(b->summary, "error");
        char saved[2048];
        snprintf(saved, sizeof saved, "%s", prism_last_error());
        save_summary(b);
        if (st) prism_error(st, "%s", saved);
    }
    if (b->log) fclose(b->log);
    jstore_close(st_p);
    jstore_close(st_q);
    jstore_close(st_a);
    jstore_close(st_v);
    free(qs);
    json_decref(b->summary);
    for (int i = 0; i < b->n_domains; i++) free(b->domains[i]);
    free(b->domains);
    prism_chat_free(b->chat);
    prism_tokenizer_free(b->tok);
    prism_model_free(b->m);
    return st;
}
