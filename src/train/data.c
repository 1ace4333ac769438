/* data.c — the JSONL training-data reader: parse, validate, render chat
 * conversations, tokenize, find assistant spans, truncate to max_len.
 *
 * Assistant spans: for assistant message i, the tokens of
 *   render(messages[:i], add_generation_prompt=true)   (everything before the reply)
 *   render(messages[:i+1], add_generation_prompt=false) (through its end-of-turn)
 * must both be prefixes of the tokens of the whole conversation; the tokens
 * between them are the reply. */
#include "train/data.h"

#include <errno.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/error.h"

enum { MAX_DIAG = 100 };

typedef struct {
    const char *name;
    int32_t line;
    train_data *d;
    char msg[512];          /* the problem found on this line, "" if none */
} ctx_t;

static void diag_add(train_data *d, const char *s) {
    if (d->n_diag >= MAX_DIAG) return;
    char **nd = realloc(d->diag, (size_t)(d->n_diag + 1) * sizeof *nd);
    if (!nd) return;
    d->diag = nd;
    d->diag[d->n_diag] = strdup(s);
    if (d->diag[d->n_diag]) d->n_diag++;
}

/* Records the line's error (first one wins) and returns false. */
static bool bad(ctx_t *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static bool bad(ctx_t *c, const char *fmt, ...) {
    if (c->msg[0]) return false;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->msg, sizeof c->msg, fmt, ap);
    va_end(ap);
    return false;
}

static void warn(ctx_t *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void warn(ctx_t *c, const char *fmt, ...) {
    char m[512], full[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(m, sizeof m, fmt, ap);
    va_end(ap);
    snprintf(full, sizeof full, "%s:%d: warning: %s", c->name, c->line, m);
    diag_add(c->d, full);
    c->d->n_warnings++;
}

static void item_free(train_item *it) {
    free(it->tokens); free(it->labels); free(it->positions); free(it->teacher_values);
    free(it->teacher_indices); free(it->teacher_tokens); free(it->teacher_positions);
    memset(it, 0, sizeof *it);
}

/* ---------------------------------------------------------------- JSON helpers */

/* Reads a JSON array of integers in [lo, hi] (or -100 when allow_ignore). */
static bool int_array(ctx_t *c, json_t *a, const char *what, int32_t lo, int32_t hi, bool allow_ignore, int32_t **out,
                      int32_t *n) {
    if (!json_is_array(a)) return bad(c, "\"%s\" must be an array of integers", what);
    size_t len = json_array_size(a);
    int32_t *v = malloc((len ? len : 1) * sizeof *v);
    if (!v) return bad(c, "out of memory");
    for (size_t i = 0; i < len; i++) {
        json_t *e = json_array_get(a, i);
        if (!json_is_integer(e)) { free(v); return bad(c, "\"%s\"[%zu] is not an integer", what, i); }
        json_int_t x = json_integer_value(e);
        if (!(allow_ignore && x == -100) && (x < lo || x > hi)) {
            free(v);
            return bad(c, "\"%s\"[%zu] = %lld is outside %d..%d", what, i, (long long)x, lo, hi);
        }
        v[i] = (int32_t)x;
    }
    *out = v;
    *n = (int32_t)len;
    return true;
}

/* (rows, k) matrix of numbers (ints when is_int) with a common row length. */
static bool matrix(ctx_t *c, json_t *a, const char *what, bool is_int, int32_t n_vocab, void **out, int32_t *rows,
                   int32_t *k) {
    if (!json_is_array(a)) return bad(c, "\"%s\" must be an array of arrays", what);
    size_t r = json_array_size(a), kk = 0;
    for (size_t i = 0; i < r; i++) {
        json_t *row = json_array_get(a, i);
        if (!json_is_array(row)) return bad(c, "\"%s\"[%zu] is not an array", what, i);
        if (i == 0) kk = json_array_size(row);
        if (json_array_size(row) != kk || kk == 0)
            return bad(c, "\"%s\"[%zu] has %zu values, row 0 has %zu (rows must be equal and non-empty)", what, i,
                       json_array_size(row), kk);
    }
    void *v = malloc((r * kk > 0 ? r * kk : 1) * 4);
    if (!v) return bad(c, "out of memory");
    for (size_t i = 0; i < r; i++) {
        json_t *row = json_array_get(a, i);
        for (size_t j = 0; j < kk; j++) {
            json_t *e = json_array_get(row, j);
            if (is_int) {
                json_int_t x = json_is_integer(e) ? json_integer_value(e) : -1;
                if (!json_is_integer(e) || x < 0 || x >= n_vocab) {
                    free(v);
                    return bad(c, "\"%s\"[%zu][%zu] must be a token id in 0..%d", what, i, j, n_vocab - 1);
                }
                ((int32_t *)v)[i * kk + j] = (int32_t)x;
            } else {
                if (!json_is_number(e)) { free(v); return bad(c, "\"%s\"[%zu][%zu] is not a number", what, i, j); }
                double x = json_number_value(e);
                if (x != x || x > 3e38 || x < -3e38) { free(v); return bad(c, "\"%s\"[%zu][%zu] is not finite", what, i, j); }
                ((float *)v)[i * kk + j] = (float)x;
            }
        }
    }
    *out = v;
    *rows = (int32_t)r;
    *k = (int32_t)kk;
    return true;
}

/* ---------------------------------------------------------------- chat lines */

static bool tokenize(ctx_t *c, const train_data_params *p, const prism_chat_message *m, size_t n, bool gen,
                     int32_t **ids, size_t *n_ids) {
    char *text = NULL;
    if (prism_chat_render(p->chat, m, n, gen, &text)) return bad(c, "chat template: %s", prism_last_error());
    prism_status st = prism_tokenize(p->tok, text, strlen(text), false, ids, n_ids);
    free(text);
    if (st) return bad(c, "tokenizer: %s", prism_last_error());
    return true;
}

static bool is_prefix(const int32_t *a, size_t na, const int32_t *b, size_t nb) {
    return na <= nb && (na == 0 || !memcmp(a, b, na * sizeof *a));
}

/* Tokens of msgs and the [begin, end) token span of each assistant message
 * (spans: 2 per message, -1 for other roles). */
static bool render_spans(ctx_t *c, const train_data_params *p, const prism_chat_message *m, size_t n, int32_t **ids,
                         size_t *n_ids, int32_t *spans) {
    if (!tokenize(c, p, m, n, false, ids, n_ids)) return false;
    for (size_t i = 0; i < n; i++) {
        spans[2 * i] = spans[2 * i + 1] = -1;
        if (strcmp(m[i].role, "assistant")) continue;
        int32_t *a = NULL, *b = NULL;
        size_t na = 0, nb = 0;
        bool ok = tokenize(c, p, m, i, true, &a, &na) && tokenize(c, p, m, i + 1, false, &b, &nb);
        if (ok && (!is_prefix(a, na, *ids, *n_ids) || !is_prefix(b, nb, *ids, *n_ids) || nb <= na))
            ok = bad(c, "the chat template does not render message %zu (assistant) as a prefix of the whole "
                        "conversation; give precomputed \"input_ids\" and \"labels\" instead", i);
        spans[2 * i] = (int32_t)na;
        spans[2 * i + 1] = (int32_t)nb;
        free(a);
        free(b);
        if (!ok) { free(*ids); *ids = NULL; return false; }
    }
    return true;
}

static bool chat_line(ctx_t *c, const train_data_params *p, json_t *root, train_item *it) {
    json_t *msgs = json_object_get(root, "messages");
    if (!p->tok || !p->chat) {
        if (c->d->no_chat_reported) return bad(c, "\"messages\" lines need a chat template (see above)");
        c->d->no_chat_reported = true;
        return bad(c, "\"messages\" lines need the model's tokenizer and chat template%s%s", p->chat_error ? ": " : "",
                   p->chat_error ? p->chat_error : "");
    }
    if (!json_is_array(msgs) || json_array_size(msgs) == 0) return bad(c, "\"messages\" must be a non-empty array");
    size_t n = json_array_size(msgs);
    prism_chat_message *m = calloc(n + 1, sizeof *m), *tm = calloc(n + 1, sizeof *tm);
    int32_t *spans = malloc((n + 1) * 2 * sizeof *spans), *tspans = malloc((n + 1) * 2 * sizeof *tspans);
    int32_t *ids = NULL, *tids = NULL;
    size_t n_ids = 0, n_tids = 0;
    char *merged = NULL;
    bool ok = m && tm && spans && tspans ? true : bad(c, "out of memory");
    int n_asst = 0;
    for (size_t i = 0; ok && i < n; i++) {
        json_t *e = json_array_get(msgs, i);
        json_t *role = json_object_get(e, "role"), *content = json_object_get(e, "content");
        if (!json_is_object(e)) ok = bad(c, "messages[%zu] is not an object", i);
        else if (!json_is_string(role)) ok = bad(c, "messages[%zu]: \"role\" is missing or not a string", i);
        else if (!json_is_string(content)) ok = bad(c, "messages[%zu]: \"content\" is missing or not a string", i);
        else {
            m[i].role = json_string_value(role);
            m[i].content = json_string_value(content);
            if (strcmp(m[i].role, "system") && strcmp(m[i].role, "user") && strcmp(m[i].role, "assistant"))
                ok = bad(c, "messages[%zu]: role \"%s\" is not system, user or assistant", i, m[i].role);
            else if (!strcmp(m[i].role, "assistant")) {
                n_asst++;
                if (!*m[i].content) ok = bad(c, "messages[%zu]: empty assistant turn", i);
            }
        }
    }
    if (ok && !n_asst) ok = bad(c, "no assistant message to train on");
    if (ok) ok = render_spans(c, p, m, n, &ids, &n_ids, spans);
    const char *persona = NULL;
    if (ok && p->loss == LOSS_KL) {
        json_t *ts = json_object_get(root, "teacher_system");
        if (!ts) ok = bad(c, "--loss kl needs \"teacher_system\" (or precomputed teacher_topk_*) on \"messages\" lines");
        else if (!json_is_string(ts) || !*json_string_value(ts)) ok = bad(c, "\"teacher_system\" must be a non-empty string");
        else persona = json_string_value(ts);
    }
    if (ok && persona) {
        /* The teacher's conversation: the persona as (the start of) the system
         * prompt, or on the first user message for templates without one. */
        bool sys_role = prism_chat_has_system_role(p->chat);
        size_t tn = 0;
        int32_t shift = 0; /* teacher message index = student index + shift */
        if (sys_role && strcmp(m[0].role, "system")) {
            tm[tn++] = (prism_chat_message){"system", persona};
            shift = 1;
        }
        for (size_t i = 0; i < n; i++) tm[tn++] = m[i];
        size_t target = SIZE_MAX;
        for (size_t i = 0; i < tn && target == SIZE_MAX; i++)
            if (sys_role ? (!strcmp(tm[i].role, "system") && shift == 0) : !strcmp(tm[i].role, "user")) target = i;
        if (target != SIZE_MAX) {
            size_t len = strlen(persona) + strlen(tm[target].content) + 3;
            merged = malloc(len);
            if (!merged) ok = bad(c, "out of memory");
            else {
                snprintf(merged, len, "%s\n\n%s", persona, tm[target].content);
                tm[target].content = merged;
            }
        } else if (!sys_role) ok = bad(c, "no user message to carry \"teacher_system\"");
        if (ok) ok = render_spans(c, p, tm, tn, &tids, &n_tids, tspans);
        /* align: each student reply must be the same tokens in the teacher's sequence */
        int32_t np = 0;
        for (size_t i = 0; ok && i < n; i++) {
            if (spans[2 * i] < 0) continue;
            int32_t s0 = spans[2 * i], s1 = spans[2 * i + 1], t0 = tspans[2 * (i + shift)], t1 = tspans[2 * (i + shift) + 1];
            if (s1 - s0 != t1 - t0 || memcmp(ids + s0, tids + t0, (size_t)(s1 - s0) * sizeof *ids))
                ok = bad(c, "messages[%zu]: the reply tokenizes differently after the teacher's system prompt", i);
            np += s1 - s0;
        }
        if (ok) {
            it->positions = malloc((size_t)np * sizeof(int32_t));
            it->teacher_positions = malloc((size_t)np * sizeof(int32_t));
            if (!it->positions || !it->teacher_positions) ok = bad(c, "out of memory");
        }
        for (size_t i = 0; ok && i < n; i++) {
            if (spans[2 * i] < 0) continue;
            int32_t s0 = spans[2 * i], s1 = spans[2 * i + 1], t0 = tspans[2 * (i + shift)];
            for (int32_t s = s0; s < s1; s++) {
                if (s == 0) continue; /* nothing predicts the first token */
                it->positions[it->n_pos] = s - 1;
                it->teacher_positions[it->n_pos++] = t0 + (s - s0) - 1;
            }
        }
        it->k = p->kl_topk;
        it->temperature = p->kl_temperature;
        it->teacher_tokens = tids;
        it->n_teacher = (int32_t)n_tids;
        tids = NULL;
    } else if (ok) {
        it->labels = malloc((n_ids ? n_ids : 1) * sizeof(int32_t));
        if (!it->labels) ok = bad(c, "out of memory");
        for (size_t t = 0; ok && t < n_ids; t++) it->labels[t] = -100;
        for (size_t i = 0; ok && i < n; i++)
            for (int32_t s = spans[2 * i]; s >= 0 && s < spans[2 * i + 1]; s++) it->labels[s] = ids[s];
    }
    if (ok) {
        it->tokens = ids;
        it->n_tokens = (int32_t)n_ids;
        ids = NULL;
    }
    free(m); free(tm); free(spans); free(tspans); free(ids); free(tids); free(merged);
    return ok;
}

/* ---------------------------------------------------------------- precomputed lines */

static bool ids_line(ctx_t *c, const train_data_params *p, json_t *root, train_item *it) {
    const int32_t V = p->n_vocab;
    if (!int_array(c, json_object_get(root, "input_ids"), "input_ids", 0, V - 1, false, &it->tokens, &it->n_tokens))
        return false;
    if (it->n_tokens < 2) return bad(c, "\"input_ids\" needs at least 2 tokens");
    const int32_t T = it->n_tokens;
    bool has_kl = json_object_get(root, "teacher_topk_values") || json_object_get(root, "teacher_topk_indices") ||
                  json_object_get(root, "positions");
    if (p->loss == LOSS_CE) {
        json_t *l = json_object_get(root, "labels");
        if (!l) return bad(c, has_kl ? "this is a KL line (teacher_topk_*) but --loss is ce; it needs \"labels\""
                                     : "\"input_ids\" lines need \"labels\" for --loss ce");
        int32_t nl = 0;
        if (!int_array(c, l, "labels", 0, V - 1, true, &it->labels, &nl)) return false;
        if (nl != T) return bad(c, "\"labels\" has %d values, \"input_ids\" %d", nl, T);
        int32_t counted = 0;
        for (int32_t t = 1; t < T; t++) counted += it->labels[t] != -100;
        if (!counted) return bad(c, "every label is -100: nothing to train on");
        return true;
    }
    json_t *tv = json_object_get(root, "teacher_topk_values"), *ti = json_object_get(root, "teacher_topk_indices");
    json_t *pos = json_object_get(root, "positions"), *temp = json_object_get(root, "temperature");
    if (!tv || !ti || !pos)
        return bad(c, "--loss kl needs \"positions\", \"teacher_topk_values\" and \"teacher_topk_indices\" on "
                      "\"input_ids\" lines");
    int32_t rv = 0, kv = 0, ri = 0, ki = 0;
    if (!int_array(c, pos, "positions", 0, T - 1, false, &it->positions, &it->n_pos)) return false;
    if (!it->n_pos) return bad(c, "\"positions\" is empty");
    if (!matrix(c, tv, "teacher_topk_values", false, V, (void **)&it->teacher_values, &rv, &kv)) return false;
    if (!matrix(c, ti, "teacher_topk_indices", true, V, (void **)&it->teacher_indices, &ri, &ki)) return false;
    if (rv != it->n_pos || ri != it->n_pos || kv != ki)
        return bad(c, "teacher_topk_values is %dx%d and teacher_topk_indices %dx%d; both must be %d (positions) x k", rv,
                   kv, ri, ki, it->n_pos);
    it->k = kv;
    it->temperature = p->kl_temperature;
    if (temp) {
        if (!json_is_number(temp) || json_number_value(temp) <= 0) return bad(c, "\"temperature\" must be a positive number");
        it->temperature = (float)json_number_value(temp);
    }
    return true;
}

/* ---------------------------------------------------------------- truncation */

/* Cuts the example to max_len tokens; false if nothing is left to score. */
static bool truncate_item(train_item *it, int32_t max_len) {
    if (it->n_tokens <= max_len) return true;
    it->n_tokens = max_len;
    if (it->labels) {
        for (int32_t t = 1; t < max_len; t++)
            if (it->labels[t] != -100) return true;
        return false;
    }
    int32_t keep = 0, k = it->k;
    for (int32_t i = 0; i < it->n_pos; i++) {
        if (it->positions[i] >= max_len - 1) continue; /* its target token was cut */
        it->positions[keep] = it->positions[i];
        if (it->teacher_positions) it->teacher_positions[keep] = it->teacher_positions[i];
        if (it->teacher_values) {
            memmove(it->teacher_values + (size_t)keep * k, it->teacher_values + (size_t)i * k, (size_t)k * sizeof(float));
            memmove(it->teacher_indices + (size_t)keep * k, it->teacher_indices + (size_t)i * k, (size_t)k * sizeof(int32_t));
        }
        keep++;
    }
    it->n_pos = keep;
    if (it->teacher_tokens && keep) {
        int32_t last = 0;
        for (int32_t i = 0; i < keep; i++) last = it->teacher_positions[i] > last ? it->teacher_positions[i] : last;
        it->n_teacher = last + 1;
    }
    return keep > 0;
}

/* ---------------------------------------------------------------- file */

static int64_t scored(const train_item *it) {
    if (!it->labels) return it->n_pos;
    int64_t n = 0;
    for (int32_t t = 1; t < it->n_tokens; t++) n += it->labels[t] != -100;
    return n;
}

prism_status train_data_parse(const char *name, const char *text, size_t len, const train_data_params *p,
                              train_data **out) {
    *out = NULL;
    if (p->max_len < 2) return prism_error(PRISM_E_ARG, "max_len %d: must be at least 2", p->max_len);
    if (p->loss == LOSS_KL && (p->kl_topk < 1 || p->kl_topk > p->n_vocab))
        return prism_error(PRISM_E_ARG, "KL top-k %d is outside 1..%d", p->kl_topk, p->n_vocab);
    train_data *d = calloc(1, sizeof *d);
    if (!d) return prism_error(PRISM_E_NOMEM, "out of memory reading %s", name);
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < len; i++) h = (h ^ (uint8_t)text[i]) * 1099511628211ull;
    d->hash = h;
    size_t cap = 0;
    char first[1024] = "";
    const char *s = text, *end = text + len;
    int32_t line = 0;
    while (s < end) {
        const char *nl = memchr(s, '\n', (size_t)(end - s));
        const char *e = nl ? nl : end;
        line++;
        size_t n = (size_t)(e - s);
        const char *next = nl ? nl + 1 : end;
        while (n && (s[n - 1] == '\r' || s[n - 1] == ' ' || s[n - 1] == '\t')) n--;
        size_t lead = 0;
        while (lead < n && (s[lead] == ' ' || s[lead] == '\t')) lead++;
        if (lead == n) { s = next; continue; } /* blank line */
        ctx_t c = {.name = name, .line = line, .d = d};
        train_item it = {.line = line};
        json_error_t je;
        json_t *root = json_loadb(s, n, JSON_REJECT_DUPLICATES, &je);
        if (!root) bad(&c, "malformed JSON: %s (column %d)", je.text, je.column);
        else if (!json_is_object(root)) bad(&c, "expected a JSON object");
        else if (json_object_get(root, "messages")) chat_line(&c, p, root, &it);
        else if (json_object_get(root, "input_ids")) ids_line(&c, p, root, &it);
        else bad(&c, "expected \"messages\" (chat) or \"input_ids\" (precomputed)");
        json_decref(root);
        if (!c.msg[0] && it.n_tokens > p->max_len) {
            int32_t was = it.n_tokens;
            if (p->skip_long) {
                warn(&c, "%d tokens > --max-len %d: skipped", was, p->max_len);
                item_free(&it);
            } else if (!truncate_item(&it, p->max_len)) {
                warn(&c, "%d tokens > --max-len %d and nothing to train on is left after truncation: skipped", was,
                     p->max_len);
                item_free(&it);
            } else {
                warn(&c, "%d tokens > --max-len %d: truncated", was, p->max_len);
            }
        }
        if (c.msg[0]) {
            char full[1024];
            snprintf(full, sizeof full, "%s:%d: %s", name, line, c.msg);
            diag_add(d, full);
            if (!d->n_errors) snprintf(first, sizeof first, "%s", full);
            d->n_errors++;
            item_free(&it);
        } else if (it.n_tokens) {
            if ((size_t)d->n == cap) {
                size_t nc = cap ? cap * 2 : 64;
                train_item *ni = realloc(d->items, nc * sizeof *ni);
                if (!ni) { item_free(&it); train_data_free(d); return prism_error(PRISM_E_NOMEM, "out of memory reading %s", name); }
                d->items = ni;
                cap = nc;
            }
            d->n_scored += scored(&it);
            if (it.n_tokens > d->max_tokens) d->max_tokens = it.n_tokens;
            if (it.n_teacher > d->max_teacher_tokens) d->max_teacher_tokens = it.n_teacher;
            d->items[d->n++] = it;
        }
        s = next;
    }
    d->n_lines = line;
    *out = d;
    if (d->n_errors > 1) return prism_error(PRISM_E_FORMAT, "%s (%d bad lines in all)", first, d->n_errors);
    if (d->n_errors) return prism_error(PRISM_E_FORMAT, "%s", first);
    if (!d->n) return prism_error(PRISM_E_FORMAT, "%s: no training examples", name);
    return PRISM_OK;
}

prism_status train_data_load(const char *path, const train_data_params *p, train_data **out) {
    *out = NULL;
    FILE *f = fopen(path, "rb");
    if (!f) return prism_error(PRISM_E_IO, "%s: cannot open: %s", path, strerror(errno));
    size_t cap = 1 << 16, n = 0, r;
    char *buf = malloc(cap);
    while (buf && (r = fread(buf + n, 1, cap - n, f)) > 0) {
        n += r;
        if (n == cap) {
            char *nb = realloc(buf, cap *= 2);
            if (!nb) { free(buf); buf = NULL; }
            buf = nb;
        }
    }
    bool err = ferror(f);
    fclose(f);
    if (!buf) return prism_error(PRISM_E_NOMEM, "%s: out of memory reading the file", path);
    if (err) { free(buf); return prism_error(PRISM_E_IO, "%s: read error", path); }
    prism_status st = train_data_parse(path, buf, n, p, out);
    free(buf);
    return st;
}

void train_data_free(train_data *d) {
    if (!d) return;
    for (int32_t i = 0; i < d->n; i++) item_free(&d->items[i]);
    for (int32_t i = 0; i < d->n_diag; i++) free(d->diag[i]);
    free(d->items);
    free(d->diag);
    free(d);
}

train_example train_item_example(const train_item *it, loss_kind loss, const float *values, const int32_t *indices) {
    train_example ex = {.loss = loss, .n_tokens = it->n_tokens, .tokens = it->tokens};
    if (loss == LOSS_CE) {
        ex.labels = it->labels;
    } else {
        ex.n_pos = it->n_pos;
        ex.k = it->k;
        ex.positions = it->positions;
        ex.teacher_values = values ? values : it->teacher_values;
        ex.teacher_indices = indices ? indices : it->teacher_indices;
        ex.temperature = it->temperature;
    }
    return ex;
}
