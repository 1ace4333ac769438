/* template.c — chat templates without a Jinja interpreter.
 *
 * prism_chat_load reads tokenizer_config.json's "chat_template" (a string,
 * or a list of {name, template} of which "default" is used), recognises the
 * family from markers that only that family's real template contains, and
 * prism_chat_render then reproduces in C what that Jinja template renders
 * for plain system/user/assistant messages (no tools, no date_string):
 *
 *   chatml        Qwen2.5-Instruct: ChatML, default system prompt "You are Qwen..."
 *   chatml-plain  generic ChatML with no default system prompt
 *   qwen3         Qwen3: no default system, <think> handling of assistant turns
 *   qwen3-nothink Qwen3 with enable_thinking=false (empty think block after the prompt)
 *   llama3        Llama-3-Instruct: BOS, headers, trimmed contents
 *   llama3.1      Llama-3.1/3.2-Instruct: always a system block with the knowledge
 *                 cutoff and the templates' fallback date "26 Jul 2024"
 *   mistral       Mistral-7B-Instruct-v0.3: "[INST] u[/INST] a</s>", system text
 *                 prepended to the LAST user message (and dropped otherwise)
 *   mistral-v0.1  Mistral-7B-Instruct-v0.1 template with system support:
 *                 " [INST] u [/INST] a</s>", system text on the FIRST user message
 *   llama2        Llama-2-chat: "<s>[INST] <<SYS>>\n...\n<</SYS>>\n\n..." (stripped)
 *   raw           contents concatenated, for base models
 *
 * Where the real template calls raise_exception (Mistral, Llama-2: roles must
 * alternate), render fails with PRISM_E_ARG and the template's message.
 * Whitespace handling mirrors Jinja's: "trim" and str.strip() remove Python's
 * Unicode whitespace; .lstrip('\n') and friends remove only newlines.
 * Reference renderings: tests/data/chat/expected.jsonl (scripts/chat-fixtures).
 */
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/error.h"

typedef enum {
    FAM_CHATML,
    FAM_CHATML_PLAIN,
    FAM_QWEN3,
    FAM_QWEN3_NOTHINK,
    FAM_LLAMA3,
    FAM_LLAMA31,
    FAM_MISTRAL,
    FAM_MISTRAL_V01,
    FAM_LLAMA2,
    FAM_RAW,
} chat_family;

static const struct {
    const char *name;
    chat_family fam;
} k_families[] = {
    {"chatml", FAM_CHATML},     {"chatml-plain", FAM_CHATML_PLAIN}, {"qwen3", FAM_QWEN3},
    {"qwen3-nothink", FAM_QWEN3_NOTHINK}, {"llama3", FAM_LLAMA3},  {"llama3.1", FAM_LLAMA31},
    {"mistral", FAM_MISTRAL},   {"mistral-v0.1", FAM_MISTRAL_V01},  {"llama2", FAM_LLAMA2},
    {"raw", FAM_RAW},
};
#define N_FAMILIES (sizeof k_families / sizeof k_families[0])

#define NAMES_LIST "chatml|chatml-plain|qwen3|qwen3-nothink|llama3|llama3.1|mistral|mistral-v0.1|llama2|raw"

struct prism_chat {
    chat_family fam;
    /* The original Llama-3-Instruct template has no add_generation_prompt test
     * and always ends with the assistant header. */
    bool always_gen_prompt;
};

/* ------------------------------------------------------------ growable text */
typedef struct {
    char *p;
    size_t n, cap;
    bool oom;
} sbuf;

static void sb_putn(sbuf *b, const char *s, size_t n) {
    if (b->oom) return;
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->n + n + 1) cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) { b->oom = true; return; }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
}

static void sb_put(sbuf *b, const char *s) { sb_putn(b, s, strlen(s)); }

/* A view into a message's content; never owns memory. */
typedef struct {
    const char *p;
    size_t n;
} span;

static span sp(const char *s) { return (span){s, strlen(s)}; }
static void sb_span(sbuf *b, span s) { sb_putn(b, s.p, s.n); }

/* ------------------------------------------------------------ whitespace */
/* Length of the UTF-8 whitespace character (Python str.isspace) starting at
 * s (n bytes available), or 0. */
static size_t ws_at(const unsigned char *s, size_t n) {
    if (n >= 1 && ((s[0] >= 0x09 && s[0] <= 0x0d) || (s[0] >= 0x1c && s[0] <= 0x20))) return 1;
    if (n >= 2 && s[0] == 0xc2 && (s[1] == 0x85 || s[1] == 0xa0)) return 2;
    if (n >= 3) {
        unsigned cp = ((s[0] & 0x0fu) << 12) | ((s[1] & 0x3fu) << 6) | (s[2] & 0x3fu);
        if ((s[0] & 0xf0) == 0xe0 && (s[1] & 0xc0) == 0x80 && (s[2] & 0xc0) == 0x80 &&
            (cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200a) || cp == 0x2028 || cp == 0x2029 ||
             cp == 0x202f || cp == 0x205f || cp == 0x3000))
            return 3;
    }
    return 0;
}

/* Whitespace character ending at s[n-1], or 0. */
static size_t ws_before(const unsigned char *s, size_t n) {
    for (size_t k = 1; k <= 3 && k <= n; k++)
        if (ws_at(s + n - k, k) == k) return k;
    return 0;
}

/* Jinja |trim and Python str.strip(): Unicode whitespace on both ends. */
static span trim(span s) {
    size_t k;
    while (s.n && (k = ws_at((const unsigned char *)s.p, s.n))) { s.p += k; s.n -= k; }
    while (s.n && (k = ws_before((const unsigned char *)s.p, s.n))) s.n -= k;
    return s;
}

static span lstrip_nl(span s) {
    while (s.n && s.p[0] == '\n') { s.p++; s.n--; }
    return s;
}

static span rstrip_nl(span s) {
    while (s.n && s.p[s.n - 1] == '\n') s.n--;
    return s;
}

/* First/last occurrence of needle in s; NULL if absent. */
static const char *find_first(span s, const char *needle) {
    size_t m = strlen(needle);
    for (size_t i = 0; i + m <= s.n; i++)
        if (!memcmp(s.p + i, needle, m)) return s.p + i;
    return NULL;
}

static const char *find_last(span s, const char *needle) {
    size_t m = strlen(needle);
    for (size_t i = s.n >= m ? s.n - m + 1 : 0; i-- > 0;)
        if (!memcmp(s.p + i, needle, m)) return s.p + i;
    return NULL;
}

/* ------------------------------------------------------------ families */
static bool is_role(const prism_chat_message *m, const char *role) { return !strcmp(m->role, role); }

/* Roles must alternate user/assistant/... after the optional system message,
 * as Mistral's and Llama-2's templates check. */
static prism_status check_alternation(const prism_chat_message *m, size_t n, const char *what) {
    for (size_t i = 0; i < n; i++)
        if (is_role(&m[i], "user") != (i % 2 == 0)) return prism_error(PRISM_E_ARG, "chat template: %s", what);
    return PRISM_OK;
}

static void render_chatml(sbuf *b, const prism_chat_message *m, size_t n, bool gen, bool qwen_default) {
    size_t i = 0;
    if (qwen_default) {
        /* Qwen2.5: a leading system message is emitted once; otherwise its default. */
        sb_put(b, "<|im_start|>system\n");
        if (n && is_role(&m[0], "system")) {
            sb_put(b, m[0].content);
            i = 1;
        } else {
            sb_put(b, "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.");
        }
        sb_put(b, "<|im_end|>\n");
    }
    for (; i < n; i++) {
        sb_put(b, "<|im_start|>");
        sb_put(b, m[i].role);
        sb_put(b, "\n");
        sb_put(b, m[i].content);
        sb_put(b, "<|im_end|>\n");
    }
    if (gen) sb_put(b, "<|im_start|>assistant\n");
}

static void render_qwen3(sbuf *b, const prism_chat_message *m, size_t n, bool gen, bool nothink) {
    if (n && is_role(&m[0], "system")) {
        sb_put(b, "<|im_start|>system\n");
        sb_put(b, m[0].content);
        sb_put(b, "<|im_end|>\n");
    }
    /* last_query_index: the last user message that is not a bare
     * <tool_response>...</tool_response> (len-1 when there is none). */
    size_t last_query = n ? n - 1 : 0;
    for (size_t i = n; i-- > 0;) {
        if (!is_role(&m[i], "user")) continue;
        const char *s = m[i].content;
        size_t len = strlen(s), a = strlen("<tool_response>"), z = strlen("</tool_response>");
        if (len >= a && len >= z && !memcmp(s, "<tool_response>", a) && !memcmp(s + len - z, "</tool_response>", z))
            continue;
        last_query = i;
        break;
    }
    for (size_t i = 0; i < n; i++) {
        if (is_role(&m[i], "user") || (is_role(&m[i], "system") && i > 0)) {
            sb_put(b, "<|im_start|>");
            sb_put(b, m[i].role);
            sb_put(b, "\n");
            sb_put(b, m[i].content);
            sb_put(b, "<|im_end|>\n");
        } else if (is_role(&m[i], "assistant")) {
            span content = sp(m[i].content), reasoning = {"", 0};
            const char *close = find_first(content, "</think>");
            if (close) {
                /* content.split('</think>')[-1].lstrip('\n') */
                const char *lastc = find_last(content, "</think>") + strlen("</think>");
                span after = {lastc, (size_t)(content.p + content.n - lastc)};
                /* content.split('</think>')[0].rstrip('\n').split('<think>')[-1].lstrip('\n') */
                span before = rstrip_nl((span){content.p, (size_t)(close - content.p)});
                const char *open = find_last(before, "<think>");
                if (open) {
                    open += strlen("<think>");
                    before = (span){open, (size_t)(before.p + before.n - open)};
                }
                reasoning = lstrip_nl(before);
                content = lstrip_nl(after);
            }
            sb_put(b, "<|im_start|>assistant\n");
            if (i > last_query && (i == n - 1 || reasoning.n)) {
                sb_put(b, "<think>\n");
                sb_span(b, rstrip_nl(lstrip_nl(reasoning)));
                sb_put(b, "\n</think>\n\n");
                sb_span(b, lstrip_nl(content));
            } else {
                sb_span(b, content);
            }
            sb_put(b, "<|im_end|>\n");
        }
    }
    if (gen) {
        sb_put(b, "<|im_start|>assistant\n");
        if (nothink) sb_put(b, "<think>\n\n</think>\n\n");
    }
}

static void llama3_block(sbuf *b, const char *role, span content) {
    sb_put(b, "<|start_header_id|>");
    sb_put(b, role);
    sb_put(b, "<|end_header_id|>\n\n");
    sb_span(b, trim(content));
    sb_put(b, "<|eot_id|>");
}

static void render_llama3(sbuf *b, const prism_chat_message *m, size_t n, bool gen) {
    if (n) sb_put(b, "<|begin_of_text|>");
    for (size_t i = 0; i < n; i++) llama3_block(b, m[i].role, sp(m[i].content));
    if (gen) sb_put(b, "<|start_header_id|>assistant<|end_header_id|>\n\n");
}

static void render_llama31(sbuf *b, const prism_chat_message *m, size_t n, bool gen) {
    size_t i = 0;
    sb_put(b, "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
              "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n");
    if (n && is_role(&m[0], "system")) {
        sb_span(b, trim(sp(m[0].content)));
        i = 1;
    }
    sb_put(b, "<|eot_id|>");
    for (; i < n; i++) llama3_block(b, m[i].role, sp(m[i].content));
    if (gen) sb_put(b, "<|start_header_id|>assistant<|end_header_id|>\n\n");
}

static const char k_mistral_alt[] =
    "After the optional system message, conversation roles must alternate user/assistant/user/assistant/...";
static const char k_mistral_roles[] =
    "Only user and assistant roles are supported, with the exception of an initial optional system message!";

/* v0.3: "[INST] " + (system + "\n\n" on the last message) + user + "[/INST]",
 *       " " + assistant|trim + "</s>".
 * v0.1: " [INST] " + (system + "\n\n" on the first message) + user + " [/INST]",
 *       " " + assistant + "</s>". Neither has a separate generation prompt. */
static prism_status render_mistral(sbuf *b, const prism_chat_message *m, size_t n, bool v01) {
    const char *sys = NULL;
    if (n && is_role(&m[0], "system")) { sys = m[0].content; m++; n--; }
    prism_status st = check_alternation(m, n, k_mistral_alt);
    if (st) return st;
    sb_put(b, "<s>");
    for (size_t i = 0; i < n; i++) {
        if (is_role(&m[i], "user")) {
            bool with_sys = sys && (v01 ? i == 0 : i == n - 1);
            sb_put(b, v01 ? " [INST] " : "[INST] ");
            if (with_sys) { sb_put(b, sys); sb_put(b, "\n\n"); }
            sb_put(b, m[i].content);
            sb_put(b, v01 ? " [/INST]" : "[/INST]");
        } else if (is_role(&m[i], "assistant")) {
            sb_put(b, " ");
            if (v01) sb_put(b, m[i].content); else sb_span(b, trim(sp(m[i].content)));
            sb_put(b, "</s>");
        } else {
            return prism_error(PRISM_E_ARG, "chat template: %s", k_mistral_roles);
        }
    }
    return PRISM_OK;
}

/* Llama-2-chat; other roles after the first message are skipped, as the template does. */
static prism_status render_llama2(sbuf *b, const prism_chat_message *m, size_t n) {
    const char *sys = NULL;
    if (n && is_role(&m[0], "system")) { sys = m[0].content; m++; n--; }
    prism_status st = check_alternation(m, n, "Conversation roles must alternate user/assistant/user/assistant/...");
    if (st) return st;
    sbuf first = {0};
    for (size_t i = 0; i < n; i++) {
        span content = sp(m[i].content);
        if (i == 0 && sys) {
            sb_put(&first, "<<SYS>>\n");
            sb_put(&first, sys);
            sb_put(&first, "\n<</SYS>>\n\n");
            sb_put(&first, m[i].content);
            if (first.oom) { b->oom = true; break; }
            content = (span){first.p, first.n};
        }
        if (is_role(&m[i], "user")) {
            sb_put(b, "<s>[INST] ");
            sb_span(b, trim(content));
            sb_put(b, " [/INST]");
        } else if (is_role(&m[i], "assistant")) {
            sb_put(b, " ");
            sb_span(b, trim(content));
            sb_put(b, " </s>");
        }
    }
    free(first.p);
    return PRISM_OK;
}

/* ------------------------------------------------------------ detection */
static prism_status family_by_name(const char *name, prism_chat *c) {
    for (size_t i = 0; i < N_FAMILIES; i++)
        if (!strcmp(name, k_families[i].name)) {
            c->fam = k_families[i].fam;
            c->always_gen_prompt = false;
            return PRISM_OK;
        }
    return prism_error(PRISM_E_ARG, "unknown chat template name '%s'; expected one of " NAMES_LIST, name);
}

static bool has(const char *s, const char *marker) { return strstr(s, marker) != NULL; }

/* Markers are substrings of the real templates' source; see the file comment. */
static bool detect(const char *t, prism_chat *c) {
    c->always_gen_prompt = false;
    if (has(t, "<|im_start|>")) {
        if (has(t, "</think>") && has(t, "reasoning_content") && has(t, "enable_thinking")) {
            c->fam = FAM_QWEN3;
            return true;
        }
        if (has(t, "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.")) {
            c->fam = FAM_CHATML;
            return true;
        }
        /* Plain ChatML: no hard-coded system prompt and no reasoning handling. */
        if (!has(t, "<|im_start|>system\\n") && !has(t, "think") && has(t, "message['content']") &&
            has(t, "<|im_end|>")) {
            c->fam = FAM_CHATML_PLAIN;
            return true;
        }
        return false;
    }
    if (has(t, "<|start_header_id|>") && has(t, "<|eot_id|>")) {
        if (has(t, "Cutting Knowledge Date: December 2023")) {
            c->fam = FAM_LLAMA31;
            return true;
        }
        if (has(t, "| trim")) {
            c->fam = FAM_LLAMA3;
            c->always_gen_prompt = !has(t, "add_generation_prompt");
            return true;
        }
        return false;
    }
    if (has(t, "[INST]")) {
        if (has(t, "<<SYS>>") && has(t, "content.strip()")) {
            c->fam = FAM_LLAMA2;
            return true;
        }
        if (has(t, "loop.last and system_message is defined") && has(t, "\"[INST] \"") &&
            has(t, "\"[/INST]\"")) {
            c->fam = FAM_MISTRAL;
            return true;
        }
        if (has(t, "loop.first and system_message is defined") && has(t, "' [INST] '") &&
            has(t, "' [/INST]'")) {
            c->fam = FAM_MISTRAL_V01;
            return true;
        }
    }
    return false;
}

static prism_status load_template(const char *path, prism_chat *c) {
    FILE *f = fopen(path, "rb");
    if (!f) return prism_error(PRISM_E_IO, "%s: cannot open: %s", path, strerror(errno));
    json_error_t err;
    json_t *root = json_loadf(f, 0, &err);
    fclose(f);
    if (!root)
        return prism_error(PRISM_E_FORMAT, "%s: line %d, column %d: %s", path, err.line, err.column, err.text);
    prism_status st = PRISM_OK;
    json_t *ct = json_is_object(root) ? json_object_get(root, "chat_template") : NULL;
    const char *text = NULL;
    if (json_is_string(ct)) {
        text = json_string_value(ct);
    } else if (json_is_array(ct)) {
        size_t i;
        json_t *e;
        json_array_foreach(ct, i, e) {
            json_t *nm = json_object_get(e, "name"), *tp = json_object_get(e, "template");
            if (json_is_string(nm) && json_is_string(tp) && !strcmp(json_string_value(nm), "default"))
                text = json_string_value(tp);
        }
        if (!text)
            st = prism_error(PRISM_E_UNSUPPORTED,
                             "%s: chat_template list has no entry named \"default\"; pass --chat-template " NAMES_LIST,
                             path);
    } else if (!json_is_object(root)) {
        st = prism_error(PRISM_E_FORMAT, "%s: expected a JSON object", path);
    } else if (ct && !json_is_null(ct)) {
        st = prism_error(PRISM_E_FORMAT, "%s: chat_template is neither a string nor a list", path);
    } else {
        st = prism_error(PRISM_E_UNSUPPORTED,
                         "%s: the model has no chat template; pass --chat-template NAME (" NAMES_LIST
                         "; raw for base models)",
                         path);
    }
    if (text && !detect(text, c)) {
        char head[61];
        size_t k = 0;
        for (const char *p = text; *p && k < 60; p++) head[k++] = (*p == '\n' || *p == '\r') ? ' ' : *p;
        head[k] = 0;
        st = prism_error(PRISM_E_UNSUPPORTED,
                         "%s: chat template not recognised (starts with '%s'); pass --chat-template " NAMES_LIST,
                         path, head);
    }
    json_decref(root);
    return st;
}

/* ------------------------------------------------------------ public API */
prism_status prism_chat_load(const char *dir, const char *name_override, prism_chat **out) {
    if (!out) return prism_error(PRISM_E_ARG, "prism_chat_load: out is NULL");
    *out = NULL;
    prism_chat c = {0};
    prism_status st;
    if (name_override) {
        st = family_by_name(name_override, &c);
    } else {
        if (!dir) return prism_error(PRISM_E_ARG, "prism_chat_load: dir is NULL");
        size_t n = strlen(dir) + sizeof "/tokenizer_config.json";
        char *path = malloc(n);
        if (!path) return prism_error(PRISM_E_NOMEM, "prism_chat_load: out of memory");
        snprintf(path, n, "%s/tokenizer_config.json", dir);
        st = load_template(path, &c);
        free(path);
    }
    if (st) return st;
    *out = malloc(sizeof **out);
    if (!*out) return prism_error(PRISM_E_NOMEM, "prism_chat_load: out of memory");
    **out = c;
    return PRISM_OK;
}

void prism_chat_free(prism_chat *c) { free(c); }

const char *prism_chat_name(const prism_chat *c) {
    for (size_t i = 0; i < N_FAMILIES; i++)
        if (k_families[i].fam == c->fam) return k_families[i].name;
    return "?";
}

bool prism_chat_has_system_role(const prism_chat *c) { return c->fam != FAM_MISTRAL && c->fam != FAM_MISTRAL_V01; }

prism_status prism_chat_render(const prism_chat *c, const prism_chat_message *msgs, size_t n_msgs,
                               bool add_generation_prompt, char **text) {
    if (!c || !text || (n_msgs && !msgs)) return prism_error(PRISM_E_ARG, "prism_chat_render: NULL argument");
    *text = NULL;
    for (size_t i = 0; i < n_msgs; i++) {
        if (!msgs[i].role || !msgs[i].content)
            return prism_error(PRISM_E_ARG, "prism_chat_render: message %zu has a NULL role or content", i);
        if (strcmp(msgs[i].role, "system") && strcmp(msgs[i].role, "user") && strcmp(msgs[i].role, "assistant"))
            return prism_error(PRISM_E_ARG, "prism_chat_render: message %zu: role '%s' is not system, user or assistant",
                               i, msgs[i].role);
    }
    bool gen = add_generation_prompt || c->always_gen_prompt;
    sbuf b = {0};
    sb_put(&b, ""); /* "" rather than NULL for empty renderings */
    prism_status st = PRISM_OK;
    switch (c->fam) {
    case FAM_CHATML: render_chatml(&b, msgs, n_msgs, gen, true); break;
    case FAM_CHATML_PLAIN: render_chatml(&b, msgs, n_msgs, gen, false); break;
    case FAM_QWEN3: render_qwen3(&b, msgs, n_msgs, gen, false); break;
    case FAM_QWEN3_NOTHINK: render_qwen3(&b, msgs, n_msgs, gen, true); break;
    case FAM_LLAMA3: render_llama3(&b, msgs, n_msgs, gen); break;
    case FAM_LLAMA31: render_llama31(&b, msgs, n_msgs, gen); break;
    case FAM_MISTRAL: st = render_mistral(&b, msgs, n_msgs, false); break;
    case FAM_MISTRAL_V01: st = render_mistral(&b, msgs, n_msgs, true); break;
    case FAM_LLAMA2: st = render_llama2(&b, msgs, n_msgs); break;
    case FAM_RAW:
        for (size_t i = 0; i < n_msgs; i++) sb_put(&b, msgs[i].content);
        break;
    }
    if (st) { free(b.p); return st; }
    if (b.oom) { free(b.p); return prism_error(PRISM_E_NOMEM, "prism_chat_render: out of memory"); }
    *text = b.p;
    return PRISM_OK;
}

prism_status prism_chat_render_turns(const prism_chat *c, const char *system, const char *const *user,
                                     const char *const *assistant, size_t n_user, bool add_generation_prompt,
                                     char **text) {
    *text = NULL;
    if (n_user < 1 || n_user > 64) return prism_error(PRISM_E_ARG, "prism_chat_render_turns: 1..64 user turns (got %zu)", n_user);
    prism_chat_message msgs[1 + 2 * 64];
    size_t n = 0;
    char *merged = NULL;
    if (system && !prism_chat_has_system_role(c)) {
        size_t len = strlen(system) + strlen(user[0]) + 3;
        if (!(merged = malloc(len))) return prism_error(PRISM_E_NOMEM, "out of memory");
        snprintf(merged, len, "%s\n\n%s", system, user[0]);
    } else if (system) {
        msgs[n++] = (prism_chat_message){"system", system};
    }
    for (size_t i = 0; i < n_user; i++) {
        msgs[n++] = (prism_chat_message){"user", i == 0 && merged ? merged : user[i]};
        if (i + 1 < n_user) msgs[n++] = (prism_chat_message){"assistant", assistant[i]};
    }
    prism_status st = prism_chat_render(c, msgs, n, add_generation_prompt, text);
    free(merged);
    return st;
}
