/* api.c — the OpenAI wire format: request bodies of /v1/chat/completions and
 * /v1/completions validated into srv_req (field by field, with the
 * offending field named in a 400), and the JSON of responses, SSE chunks,
 * /v1/models and error objects.
 *
 * Sampling fields the request leaves out take the model's
 * generation_config.json defaults (as vLLM does), so a model without one is
 * greedy unless the request sets a temperature. */
#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "server/server.h"
#include "util/timer.h"

void *api_fail(api_error *e, int status, const char *type, const char *param, const char *code, const char *fmt, ...) {
    e->status = status;
    e->type = type;
    snprintf(e->param, sizeof e->param, "%s", param ? param : "");
    e->code = code;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->message, sizeof e->message, fmt, ap);
    va_end(ap);
    return NULL;
}

#define BAD(param, ...) api_fail(e, 400, "invalid_request_error", param, NULL, __VA_ARGS__)

const char *api_finish_name(srv_finish f) {
    switch (f) {
    case SRV_FINISH_EOS:
    case SRV_FINISH_STOP: return "stop";
    case SRV_FINISH_LENGTH:
    case SRV_FINISH_CONTEXT: return "length";
    case SRV_FINISH_ABORT: return "abort";
    default: return NULL;
    }
}

/* ---------------------------------------------------------------- request lifetime */

static srv_req *req_new(void) {
    srv_req *r = calloc(1, sizeof *r);
    if (!r) return NULL;
    pthread_cond_init(&r->cv, NULL);
    r->refs = 1;
    r->gate_prob = -1;
    r->finish = SRV_FINISH_NONE;
    return r;
}

static void req_free(srv_req *r) {
    free(r->prompt);
    for (int i = 0; i < r->n_stop; i++) free(r->stop[i]);
    free(r->text);
    free(r->gen);
    pthread_cond_destroy(&r->cv);
    free(r);
}

void srv_req_cancel(srv *s, srv_req *r) {
    if (r->state != RQ_DONE && !r->cancelled) {
        r->cancelled = true;
        sched_wake(s);
    }
}

void srv_req_release(srv *s, srv_req *r) {
    (void)s;
    if (r && --r->refs == 0) req_free(r);
}

/* ---------------------------------------------------------------- field readers */

/* Each returns 1 if the field is present (not null), 0 if absent or null,
 * -1 after filling e when it has the wrong type or range. */
static int opt_number(json_t *o, const char *key, double lo, double hi, double *out, api_error *e) {
    json_t *v = json_object_get(o, key);
    if (!v || json_is_null(v)) return 0;
    if (!json_is_number(v)) return BAD(key, "'%s' must be a number", key), -1;
    double x = json_number_value(v);
    if (!(x >= lo && x <= hi)) return BAD(key, "'%s' must be between %g and %g, got %g", key, lo, hi, x), -1;
    *out = x;
    return 1;
}

static int opt_int(json_t *o, const char *key, long long lo, long long hi, long long *out, api_error *e) {
    json_t *v = json_object_get(o, key);
    if (!v || json_is_null(v)) return 0;
    if (json_is_real(v) && json_real_value(v) == floor(json_real_value(v)) && fabs(json_real_value(v)) < 9e15) {
        *out = (long long)json_real_value(v);
    } else if (json_is_integer(v)) {
        *out = json_integer_value(v);
    } else {
        return BAD(key, "'%s' must be an integer", key), -1;
    }
    if (*out < lo || *out > hi) return BAD(key, "'%s' must be between %lld and %lld, got %lld", key, lo, hi, *out), -1;
    return 1;
}

static int opt_bool(json_t *o, const char *key, bool *out, api_error *e) {
    json_t *v = json_object_get(o, key);
    if (!v || json_is_null(v)) return 0;
    if (!json_is_boolean(v)) return BAD(key, "'%s' must be a boolean", key), -1;
    *out = json_is_true(v);
    return 1;
}

/* Fields of the OpenAI API that prism does not implement: refused when set
 * to anything but their neutral value, so a client never silently gets
 * something else than it asked for. */
static int refuse_unsupported(json_t *o, srv_endpoint ep, api_error *e) {
    double x;
    const char *pen[] = {"presence_penalty", "frequency_penalty"};
    for (int k = 0; k < 2; k++) {
        int got = opt_number(o, pen[k], -2, 2, &x, e);
        if (got < 0) return -1;
        if (got && x != 0) return BAD(pen[k], "'%s' is not supported (only 0)", pen[k]), -1;
    }
    json_t *v;
    if ((v = json_object_get(o, "logprobs")) && !json_is_null(v) && !json_is_false(v))
        return BAD("logprobs", "'logprobs' is not supported"), -1;
    if ((v = json_object_get(o, "top_logprobs")) && !json_is_null(v))
        return BAD("top_logprobs", "'top_logprobs' is not supported"), -1;
    if ((v = json_object_get(o, "logit_bias")) && !json_is_null(v) && !(json_is_object(v) && json_object_size(v) == 0))
        return BAD("logit_bias", "'logit_bias' is not supported"), -1;
    const char *tools[] = {"tools", "functions"};
    for (int k = 0; k < 2; k++)
        if ((v = json_object_get(o, tools[k])) && !json_is_null(v) && !(json_is_array(v) && json_array_size(v) == 0))
            return BAD(tools[k], "'%s' (tool calling) is not supported", tools[k]), -1;
    if ((v = json_object_get(o, "response_format")) && !json_is_null(v)) {
        json_t *t = json_is_object(v) ? json_object_get(v, "type") : NULL;
        if (!json_is_string(t) || strcmp(json_string_value(t), "text"))
            return BAD("response_format", "'response_format' other than {\"type\": \"text\"} is not supported"), -1;
    }
    if (ep == SRV_COMPLETION) {
        bool echo = false;
        if (opt_bool(o, "echo", &echo, e) < 0) return -1;
        if (echo) return BAD("echo", "'echo' is not supported"), -1;
        if ((v = json_object_get(o, "suffix")) && !json_is_null(v) && !(json_is_string(v) && !*json_string_value(v)))
            return BAD("suffix", "'suffix' is not supported"), -1;
        long long bo;
        int got = opt_int(o, "best_of", 1, 1, &bo, e);
        if (got < 0) return BAD("best_of", "'best_of' must be 1 (only one completion per request)"), -1;
    }
    return 0;
}

/* ---------------------------------------------------------------- model ids */

static int resolve_model(const srv *s, const char *id, srv_req *r, api_error *e) {
    const srv_config *c = &s->cfg;
    size_t nl = strlen(c->name);
    r->adapter = NULL;
    if (!strcmp(id, c->name)) {
        r->kind = c->router ? SRV_MODEL_ROUTED : SRV_MODEL_BASE;
        return 0;
    }
    if (!strncmp(id, c->name, nl) && id[nl] == ':') {
        const char *suf = id + nl + 1;
        if (!strcmp(suf, "base")) {
            r->kind = c->router ? SRV_MODEL_FORCE_BASE : SRV_MODEL_BASE;
            return 0;
        }
        if (!strcmp(suf, "adapter") && c->router) {
            r->kind = SRV_MODEL_FORCE_ADAPTER;
            return 0;
        }
    }
    for (int k = 0; k < c->n_adapters; k++)
        if (!strcmp(id, c->adapter_names[k])) {
            r->kind = SRV_MODEL_NAMED_ADAPTER;
            r->adapter = c->adapters[k];
            r->adapter_name = c->adapter_names[k];
            return 0;
        }
    api_fail(e, 404, "invalid_request_error", "model", "model_not_found",
             "The model '%.200s' does not exist; GET /v1/models lists the served models", id);
    return -1;
}

/* ---------------------------------------------------------------- prompts */

/* Appends the text of a message's content: a string, or an array of
 * {"type": "text", "text": "..."} parts. */
static int content_text(json_t *c, char **out, size_t idx, api_error *e) {
    char param[64];
    snprintf(param, sizeof param, "messages[%zu].content", idx);
    if (json_is_string(c)) {
        *out = strdup(json_string_value(c));
        return *out ? 0 : (api_fail(e, 500, "server_error", NULL, NULL, "out of memory"), -1);
    }
    if (!json_is_array(c)) return BAD(param, "'%s' must be a string or an array of text parts", param), -1;
    size_t n = 0, i;
    json_t *part;
    json_array_foreach(c, i, part) {
        json_t *ty = json_object_get(part, "type"), *tx = json_object_get(part, "text");
        if (!json_is_object(part) || !json_is_string(ty) || strcmp(json_string_value(ty), "text") || !json_is_string(tx))
            return BAD(param, "'%s[%zu]' must be {\"type\": \"text\", \"text\": string} (only text is supported)", param, i), -1;
        n += json_string_length(tx);
    }
    char *buf = malloc(n + 1);
    if (!buf) return api_fail(e, 500, "server_error", NULL, NULL, "out of memory"), -1;
    size_t at = 0;
    json_array_foreach(c, i, part) {
        json_t *tx = json_object_get(part, "text");
        memcpy(buf + at, json_string_value(tx), json_string_length(tx));
        at += json_string_length(tx);
    }
    buf[at] = 0;
    *out = buf;
    return 0;
}

static int chat_prompt(srv *s, json_t *o, srv_req *r, api_error *e) {
    json_t *msgs = json_object_get(o, "messages");
    if (!msgs) return BAD("messages", "'messages' is required"), -1;
    if (!json_is_array(msgs) || json_array_size(msgs) == 0)
        return BAD("messages", "'messages' must be a non-empty array"), -1;
    if (!s->cfg.chat)
        return BAD("messages", "this server has no chat template (%s); start it with --chat-template NAME or use /v1/completions",
                   s->cfg.chat_error), -1;
    size_t n = json_array_size(msgs);
    prism_chat_message *pm = calloc(n, sizeof *pm);
    char **texts = calloc(n, sizeof *texts);
    int rc = -1;
    char *rendered = NULL;
    if (!pm || !texts) { api_fail(e, 500, "server_error", NULL, NULL, "out of memory"); goto out; }
    for (size_t i = 0; i < n; i++) {
        json_t *m = json_array_get(msgs, i);
        char param[64];
        snprintf(param, sizeof param, "messages[%zu]", i);
        if (!json_is_object(m)) { BAD(param, "'%s' must be an object with 'role' and 'content'", param); goto out; }
        json_t *role = json_object_get(m, "role"), *content = json_object_get(m, "content");
        snprintf(param, sizeof param, "messages[%zu].role", i);
        if (!json_is_string(role)) { BAD(param, "'%s' must be a string", param); goto out; }
        const char *ro = json_string_value(role);
        if (!strcmp(ro, "developer")) ro = "system"; /* OpenAI's newer name for the system role */
        if (strcmp(ro, "system") && strcmp(ro, "user") && strcmp(ro, "assistant")) {
            BAD(param, "'%s' must be system, developer, user or assistant, got '%.40s'", param, ro);
            goto out;
        }
        if (!content || json_is_null(content)) {
            snprintf(param, sizeof param, "messages[%zu].content", i);
            BAD(param, "'%s' is required", param);
            goto out;
        }
        if (content_text(content, &texts[i], i, e)) goto out;
        pm[i].role = ro;
        pm[i].content = texts[i];
    }
    pthread_mutex_lock(&s->tok_mu);
    prism_status st = prism_chat_render(s->cfg.chat, pm, n, true, &rendered);
    if (st) {
        BAD("messages", "%s", prism_last_error());
    } else {
        size_t nid = 0;
        st = prism_tokenize(s->cfg.tok, rendered, strlen(rendered), false, &r->prompt, &nid);
        if (st) BAD("messages", "tokenizing the conversation: %s", prism_last_error());
        r->n_prompt = (int32_t)nid;
    }
    pthread_mutex_unlock(&s->tok_mu);
    rc = st ? -1 : 0;
out:
    for (size_t i = 0; texts && i < n; i++) free(texts[i]);
    free(texts);
    free(pm);
    free(rendered);
    return rc;
}

static int completion_prompt(srv *s, json_t *o, srv_req *r, api_error *e) {
    json_t *p = json_object_get(o, "prompt");
    if (!p || json_is_null(p)) return BAD("prompt", "'prompt' is required"), -1;
    if (json_is_array(p) && json_array_size(p) == 1 && json_is_string(json_array_get(p, 0))) p = json_array_get(p, 0);
    if (json_is_string(p)) {
        size_t nid = 0;
        pthread_mutex_lock(&s->tok_mu);
        prism_status st = prism_tokenize(s->cfg.tok, json_string_value(p), json_string_length(p), true, &r->prompt, &nid);
        pthread_mutex_unlock(&s->tok_mu);
        if (st) return BAD("prompt", "tokenizing the prompt: %s", prism_last_error()), -1;
        r->n_prompt = (int32_t)nid;
        return 0;
    }
    if (!json_is_array(p) || json_array_size(p) == 0)
        return BAD("prompt", "'prompt' must be a string, an array with one string, or an array of token ids"), -1;
    size_t n = json_array_size(p), i;
    json_t *v;
    json_array_foreach(p, i, v) {
        if (json_is_array(v) || json_is_string(v))
            return BAD("prompt", "only one prompt per request is supported (got an array of %zu prompts)", n), -1;
        if (!json_is_integer(v)) return BAD("prompt", "'prompt' token ids must be integers (element %zu)", i), -1;
    }
    r->prompt = malloc(json_array_size(p) * sizeof(int32_t));
    if (!r->prompt) return api_fail(e, 500, "server_error", NULL, NULL, "out of memory"), -1;
    const int32_t V = prism_tokenizer_n_vocab(s->cfg.tok);
    json_array_foreach(p, i, v) {
        json_int_t id = json_integer_value(v);
        if (id < 0 || id >= V) return BAD("prompt", "token id %lld at index %zu is outside the vocabulary (0..%d)", (long long)id, i, V - 1), -1;
        r->prompt[i] = (int32_t)id;
    }
    r->n_prompt = (int32_t)json_array_size(p);
    return 0;
}

static int parse_stop(json_t *o, srv_req *r, api_error *e) {
    json_t *v = json_object_get(o, "stop");
    if (!v || json_is_null(v)) return 0;
    json_t *one[1] = {v};
    size_t n = 1;
    if (json_is_array(v)) n = json_array_size(v);
    else if (!json_is_string(v)) return BAD("stop", "'stop' must be a string or an array of strings"), -1;
    if (n > SRV_MAX_STOP) return BAD("stop", "at most %d stop strings, got %zu", SRV_MAX_STOP, n), -1;
    for (size_t i = 0; i < n; i++) {
        json_t *x = json_is_array(v) ? json_array_get(v, i) : one[0];
        if (!json_is_string(x)) return BAD("stop", "'stop[%zu]' must be a string", i), -1;
        size_t len = json_string_length(x);
        if (len == 0) continue; /* an empty stop string matches nothing */
        if (len > 1024) return BAD("stop", "stop strings are limited to 1024 bytes (stop[%zu] has %zu)", i, len), -1;
        if (memchr(json_string_value(x), 0, len)) return BAD("stop", "'stop[%zu]' contains a NUL character", i), -1;
        if (!(r->stop[r->n_stop] = strdup(json_string_value(x)))) return api_fail(e, 500, "server_error", NULL, NULL, "out of memory"), -1;
        r->n_stop++;
    }
    return 0;
}

static uint64_t mix64(uint64_t x) {
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

srv_req *api_parse(srv *s, srv_endpoint ep, const char *body, size_t len, api_error *e) {
    json_error_t jerr;
    json_t *o = json_loadb(body, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!o) return BAD(NULL, "malformed JSON body: %s (line %d, column %d)", jerr.text, jerr.line, jerr.column);
    srv_req *r = NULL;
    if (!json_is_object(o)) { BAD(NULL, "the request body must be a JSON object"); goto fail; }
    if (!(r = req_new())) { api_fail(e, 500, "server_error", NULL, NULL, "out of memory"); goto fail; }
    r->endpoint = ep;

    json_t *model = json_object_get(o, "model");
    if (model && !json_is_null(model) && !json_is_string(model)) { BAD("model", "'model' must be a string"); goto fail; }
    const char *mid = json_is_string(model) ? json_string_value(model) : s->cfg.name;
    snprintf(r->model_id, sizeof r->model_id, "%s", mid);
    if (strlen(mid) >= sizeof r->model_id) {
        api_fail(e, 404, "invalid_request_error", "model", "model_not_found", "The model '%.64s...' does not exist", mid);
        goto fail;
    }

    long long n = 1, mt = -1, seed = 0, topk = 0;
    double temp, topp, minp, rep;
    bool stream = false;
    int got;
    if (opt_int(o, "n", 1, 1LL << 40, &n, e) < 0) goto fail;
    if (n != 1) { BAD("n", "only n=1 is supported, got n=%lld", n); goto fail; }
    if (opt_bool(o, "stream", &stream, e) < 0) goto fail;
    r->stream = stream;
    json_t *so = json_object_get(o, "stream_options");
    if (so && !json_is_null(so)) {
        if (!json_is_object(so)) { BAD("stream_options", "'stream_options' must be an object"); goto fail; }
        bool iu = false;
        if (opt_bool(so, "include_usage", &iu, e) < 0) { snprintf(e->param, sizeof e->param, "stream_options.include_usage"); goto fail; }
        r->include_usage = iu;
    }
    if (opt_bool(o, "return_token_ids", &r->return_token_ids, e) < 0) goto fail; /* vLLM extensions */
    if (opt_bool(o, "ignore_eos", &r->ignore_eos, e) < 0) goto fail;
    if (refuse_unsupported(o, ep, e)) goto fail;

    r->sampling = s->defaults;
    if ((got = opt_number(o, "temperature", 0, 2, &temp, e)) < 0) goto fail;
    if (got) r->sampling.temperature = (float)temp;
    if ((got = opt_number(o, "top_p", 0, 1, &topp, e)) < 0) goto fail;
    if (got) r->sampling.top_p = (float)topp;
    if ((got = opt_int(o, "top_k", -1, 1 << 24, &topk, e)) < 0) goto fail;
    if (got) r->sampling.top_k = topk < 0 ? 0 : (int32_t)topk;
    if ((got = opt_number(o, "min_p", 0, 1, &minp, e)) < 0) goto fail;
    if (got) r->sampling.min_p = (float)minp;
    if ((got = opt_number(o, "repetition_penalty", 0.01, 100, &rep, e)) < 0) goto fail;
    if (got) r->sampling.repeat_penalty = (float)rep;
    if ((got = opt_int(o, "seed", INT64_MIN, INT64_MAX, &seed, e)) < 0) goto fail;
    r->sampling.seed = got ? (uint64_t)seed : mix64((uint64_t)time(NULL) ^ mix64(__atomic_add_fetch(&s->seed_counter, 1, __ATOMIC_RELAXED)));
    int got_mt = opt_int(o, "max_tokens", 1, 1LL << 40, &mt, e);
    if (got_mt < 0) goto fail;
    if (!got_mt && ep == SRV_CHAT) {
        if ((got_mt = opt_int(o, "max_completion_tokens", 1, 1LL << 40, &mt, e)) < 0) goto fail;
    }
    if (parse_stop(o, r, e)) goto fail;

    if (ep == SRV_CHAT ? chat_prompt(s, o, r, e) : completion_prompt(s, o, r, e)) goto fail;
    if (r->n_prompt <= 0) { BAD(ep == SRV_CHAT ? "messages" : "prompt", "the prompt is empty after tokenization"); goto fail; }
    const int32_t ctx = s->n_ctx;
    const char *pparam = ep == SRV_CHAT ? "messages" : "prompt";
    if (r->n_prompt >= ctx) {
        api_fail(e, 400, "invalid_request_error", pparam, "context_length_exceeded",
                 "This model's maximum context length is %d tokens; the prompt has %d tokens (at least one must be left "
                 "for the completion)", ctx, r->n_prompt);
        goto fail;
    }
    if (got_mt && mt > (long long)(ctx - r->n_prompt)) {
        api_fail(e, 400, "invalid_request_error", "max_tokens", "context_length_exceeded",
                 "This model's maximum context length is %d tokens. However, you requested %lld tokens (%d in the "
                 "prompt, %lld for the completion). Reduce the prompt or max_tokens.", ctx, r->n_prompt + mt, r->n_prompt, mt);
        goto fail;
    }
    r->max_tokens = got_mt ? (int32_t)mt : ep == SRV_CHAT ? ctx - r->n_prompt : (16 < ctx - r->n_prompt ? 16 : ctx - r->n_prompt);
    if (resolve_model(s, mid, r, e)) goto fail;

    uint64_t h = mix64(mix64((uint64_t)(prism_now() * 1e9)) ^ __atomic_add_fetch(&s->seed_counter, 1, __ATOMIC_RELAXED));
    snprintf(r->id, sizeof r->id, "%s-%016llx%08llx", ep == SRV_CHAT ? "chatcmpl" : "cmpl", (unsigned long long)h,
             (unsigned long long)(mix64(h) >> 32));
    r->created = (int64_t)time(NULL);
    json_decref(o);
    return r;
fail:
    json_decref(o);
    if (r) req_free(r);
    return NULL;
}

/* ---------------------------------------------------------------- responses */

/* A JSON string from bytes that may not be valid UTF-8 (invalid bytes -> U+FFFD). */
static json_t *jstr(const char *p, size_t n) {
    json_t *j = json_stringn(p, n);
    if (j) return j;
    char *buf = malloc(n * 3 + 1);
    if (!buf) return json_string("");
    size_t o = 0;
    for (size_t i = 0; i < n;) {
        unsigned char c = (unsigned char)p[i];
        int len = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
        int ok = len > 0 && i + (size_t)len <= n && (len > 1 || c != 0);
        for (int k = 1; ok && k < len; k++) ok = ((unsigned char)p[i + k] >> 6) == 2;
        if (ok && len > 1 && json_stringn(p + i, (size_t)len) == NULL) ok = 0; /* overlong / surrogate */
        if (ok) {
            memcpy(buf + o, p + i, (size_t)len);
            o += (size_t)len;
            i += (size_t)len;
        } else {
            memcpy(buf + o, "\xEF\xBF\xBD", 3);
            o += 3;
            i++;
        }
    }
    j = json_stringn(buf, o);
    free(buf);
    return j ? j : json_string("");
}

static char *dump(json_t *j) {
    char *s = j ? json_dumps(j, JSON_COMPACT) : NULL;
    json_decref(j);
    return s;
}

char *api_error_json(const api_error *e) {
    json_t *err = json_pack("{s:s, s:s, s:o, s:o}", "message", e->message, "type", e->type ? e->type : "invalid_request_error",
                            "param", e->param[0] ? json_string(e->param) : json_null(), "code",
                            e->code ? json_string(e->code) : json_null());
    return dump(json_pack("{s:o}", "error", err));
}

static json_t *prism_obj(const srv *s, const srv_req *r) {
    json_t *p = json_object();
    json_object_set_new(p, "route", json_string(r->routed_adapter ? "adapter" : "base"));
    json_object_set_new(p, "gate_probability", r->gate_prob >= 0 ? json_real(r->gate_prob) : json_null());
    const char *mode = r->kind == SRV_MODEL_ROUTED ? "auto" : r->kind == SRV_MODEL_FORCE_BASE ? "base"
                     : r->kind == SRV_MODEL_FORCE_ADAPTER ? "adapter" : "none";
    json_object_set_new(p, "route_mode", json_string(mode));
    if (r->kind == SRV_MODEL_NAMED_ADAPTER) json_object_set_new(p, "adapter", json_string(r->adapter_name));
    else if (r->routed_adapter && s->cfg.router) json_object_set_new(p, "adapter", json_string(prism_adapter_name(prism_router_adapter(s->cfg.router))));
    return p;
}

static json_t *usage_obj(const srv_req *r) {
    return json_pack("{s:i, s:i, s:i}", "prompt_tokens", (json_int_t)r->n_prompt, "completion_tokens", (json_int_t)r->n_gen,
                     "total_tokens", (json_int_t)(r->n_prompt + r->n_gen));
}

static json_t *token_ids(const srv_req *r) {
    json_t *a = json_array();
    for (int32_t i = 0; r->gen && i < r->n_gen; i++) json_array_append_new(a, json_integer(r->gen[i]));
    return a;
}

char *api_response_json(const srv *s, const srv_req *r) {
    json_t *choice = json_object();
    json_object_set_new(choice, "index", json_integer(0));
    if (r->endpoint == SRV_CHAT) {
        json_object_set_new(choice, "message", json_pack("{s:s, s:o}", "role", "assistant", "content", jstr(r->text ? r->text : "", r->n_text)));
    } else {
        json_object_set_new(choice, "text", jstr(r->text ? r->text : "", r->n_text));
    }
    json_object_set_new(choice, "logprobs", json_null());
    const char *fin = api_finish_name(r->finish);
    json_object_set_new(choice, "finish_reason", fin ? json_string(fin) : json_null());
    if (r->return_token_ids) json_object_set_new(choice, "token_ids", token_ids(r));
    json_t *o = json_object();
    json_object_set_new(o, "id", json_string(r->id));
    json_object_set_new(o, "object", json_string(r->endpoint == SRV_CHAT ? "chat.completion" : "text_completion"));
    json_object_set_new(o, "created", json_integer(r->created));
    json_object_set_new(o, "model", json_string(r->model_id));
    json_object_set_new(o, "choices", json_pack("[o]", choice));
    json_object_set_new(o, "usage", usage_obj(r));
    json_object_set_new(o, "prism", prism_obj(s, r));
    return dump(o);
}

char *api_sse_chunk(const srv *s, const srv_req *r, const char *delta, size_t n, bool first, srv_finish fin, bool usage) {
    json_t *o = json_object();
    json_object_set_new(o, "id", json_string(r->id));
    json_object_set_new(o, "object", json_string(r->endpoint == SRV_CHAT ? "chat.completion.chunk" : "text_completion"));
    json_object_set_new(o, "created", json_integer(r->created));
    json_object_set_new(o, "model", json_string(r->model_id));
    json_t *choices = json_array();
    if (!usage) {
        json_t *c = json_object();
        json_object_set_new(c, "index", json_integer(0));
        if (r->endpoint == SRV_CHAT) {
            json_t *d = json_object();
            if (first) json_object_set_new(d, "role", json_string("assistant"));
            if (fin == SRV_FINISH_NONE) json_object_set_new(d, "content", jstr(delta ? delta : "", n));
            json_object_set_new(c, "delta", d);
        } else {
            json_object_set_new(c, "text", jstr(delta ? delta : "", n));
        }
        json_object_set_new(c, "logprobs", json_null());
        const char *fn = api_finish_name(fin);
        json_object_set_new(c, "finish_reason", fn ? json_string(fn) : json_null());
        if (fin != SRV_FINISH_NONE && r->return_token_ids) json_object_set_new(c, "token_ids", token_ids(r));
        json_array_append_new(choices, c);
    }
    json_object_set_new(o, "choices", choices);
    if (usage) json_object_set_new(o, "usage", usage_obj(r));
    else if (r->include_usage) json_object_set_new(o, "usage", json_null());
    if (first || fin != SRV_FINISH_NONE) json_object_set_new(o, "prism", prism_obj(s, r));
    char *js = dump(o);
    if (!js) return NULL;
    size_t jl = strlen(js);
    char *ev = malloc(jl + 9);
    if (ev) {
        memcpy(ev, "data: ", 6);
        memcpy(ev + 6, js, jl);
        memcpy(ev + 6 + jl, "\n\n", 3);
    }
    free(js);
    return ev;
}

char *api_models_json(const srv *s) {
    const srv_config *c = &s->cfg;
    json_t *data = json_array();
    int64_t created = (int64_t)time(NULL);
    char id[300];
#define MODEL_ENTRY(ID, ROOT, PARENT, DESC)                                                                          \
    json_array_append_new(data, json_pack("{s:s, s:s, s:I, s:s, s:s, s:o, s:s}", "id", ID, "object", "model", "created", \
                                          (json_int_t)created, "owned_by", "prism", "root", ROOT, "parent",            \
                                          (PARENT) ? json_string(PARENT) : json_null(), "description", DESC))
    MODEL_ENTRY(c->name, c->name, (const char *)NULL,
                c->router ? "PRISM routed: the gate picks the base model or the persona adapter per request" : "base model");
    snprintf(id, sizeof id, "%s:base", c->name);
    MODEL_ENTRY(id, c->name, c->name, "base model (forced; the PRISM gate is still scored)");
    if (c->router) {
        snprintf(id, sizeof id, "%s:adapter", c->name);
        MODEL_ENTRY(id, c->name, c->name, "PRISM persona adapter (forced; the gate is still scored)");
    }
    for (int k = 0; k < c->n_adapters; k++) MODEL_ENTRY(c->adapter_names[k], c->adapter_names[k], c->name, "LoRA adapter");
#undef MODEL_ENTRY
    return dump(json_pack("{s:s, s:o}", "object", "list", "data", data));
}
