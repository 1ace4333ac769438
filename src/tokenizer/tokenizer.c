/* tokenizer.c — loads a Hugging Face tokenizer.json (+ tokenizer_config.json)
 * into hash tables and runs encode():
 *   added tokens are split out of the raw text (longest match first), each
 *   remaining segment is normalized, pre-tokenized and BPE-encoded, then the
 *   post-processor adds BOS/EOS-style tokens when add_special is set. */
#include "tokenizer/tokenizer_internal.h"
#include "util/error.h"

#include <errno.h>
#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

static const char GPT2_REGEX[] = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

static pthread_once_t g_bytelevel_once = PTHREAD_ONCE_INIT;

/* ---------------------------------------------------------------- small JSON helpers */
static const char *jstr(const json_t *o, const char *key) {
    const json_t *v = json_object_get(o, key);
    return json_is_string(v) ? json_string_value(v) : NULL;
}

static bool jbool(const json_t *o, const char *key, bool dflt) {
    const json_t *v = json_object_get(o, key);
    return json_is_boolean(v) ? json_is_true(v) : dflt;
}

static char *dupstr(const char *s) {
    size_t n = strlen(s) + 1;
    char *p = malloc(n);
    if (p) memcpy(p, s, n);
    return p;
}

/* pattern: {"String": s} or {"Regex": r}; returns the text, *is_regex set */
static const char *jpattern(const json_t *o, bool *is_regex) {
    const json_t *p = json_object_get(o, "pattern");
    const char *s;
    if ((s = jstr(p, "String"))) { *is_regex = false; return s; }
    if ((s = jstr(p, "Regex"))) { *is_regex = true; return s; }
    return NULL;
}

static int read_file(const char *path, char **data, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return -1;
    size_t cap = 1 << 16, n = 0;
    char *p = malloc(cap);
    size_t r;
    while (p && (r = fread(p + n, 1, cap - n, f)) > 0) {
        n += r;
        if (n == cap) {
            char *q = realloc(p, cap *= 2);
            if (!q) { free(p); p = NULL; }
            else p = q;
        }
    }
    int err = ferror(f);
    fclose(f);
    if (!p || err) { free(p); errno = p ? EIO : ENOMEM; return -1; }
    *data = p;
    *len = n;
    return 0;
}

/* Parses a JSON file; PRISM_E_IO if unreadable, PRISM_E_FORMAT with line:column if malformed. */
static prism_status load_json(const char *path, size_t flags, json_t **out) {
    char *data;
    size_t len;
    if (read_file(path, &data, &len)) return prism_error(PRISM_E_IO, "%s: %s", path, strerror(errno));
    json_error_t je;
    *out = json_loadb(data, len, JSON_ALLOW_NUL | flags, &je);
    free(data);
    if (!*out) return prism_error(PRISM_E_FORMAT, "%s:%d:%d: malformed JSON: %s", path, je.line, je.column, je.text);
    return PRISM_OK;
}

/* ---------------------------------------------------------------- components */
static prism_status parse_normalizer(prism_tokenizer *t, const json_t *j, const char *path) {
    if (!j || json_is_null(j)) return PRISM_OK;
    const char *type = jstr(j, "type");
    if (!type) return prism_error(PRISM_E_FORMAT, "%s: normalizer without \"type\"", path);
    if (!strcmp(type, "Sequence")) {
        const json_t *arr = json_object_get(j, "normalizers");
        size_t i;
        const json_t *v;
        json_array_foreach(arr, i, v) {
            prism_status st = parse_normalizer(t, v, path);
            if (st) return st;
        }
        return PRISM_OK;
    }
    tk_norm *n = realloc(t->norm, (size_t)(t->n_norm + 1) * sizeof *n);
    if (!n) return prism_error(PRISM_E_NOMEM, "%s: out of memory", path);
    t->norm = n;
    n = &t->norm[t->n_norm];
    memset(n, 0, sizeof *n);
    if (!strcmp(type, "NFC")) n->kind = NORM_NFC;
    else if (!strcmp(type, "NFD")) n->kind = NORM_NFD;
    else if (!strcmp(type, "NFKC")) n->kind = NORM_NFKC;
    else if (!strcmp(type, "NFKD")) n->kind = NORM_NFKD;
    else if (!strcmp(type, "Lowercase")) n->kind = NORM_LOWERCASE;
    else if (!strcmp(type, "Strip")) {
        n->kind = NORM_STRIP;
        n->left = jbool(j, "strip_left", true);
        n->right = jbool(j, "strip_right", true);
    } else if (!strcmp(type, "Prepend")) {
        const char *p = jstr(j, "prepend");
        if (!p) return prism_error(PRISM_E_FORMAT, "%s: Prepend normalizer without \"prepend\"", path);
        n->kind = NORM_PREPEND;
        n->a = dupstr(p);
    } else if (!strcmp(type, "Replace")) {
        bool rx = false;
        const char *p = jpattern(j, &rx), *c = jstr(j, "content");
        if (!p || !c) return prism_error(PRISM_E_FORMAT, "%s: Replace normalizer needs pattern and content", path);
        n->kind = NORM_REPLACE;
        n->b = dupstr(c);
        if (rx) {
            if (!(n->re = tk_regex_compile(p, false, path))) return PRISM_E_UNSUPPORTED;
        } else n->a = dupstr(p);
    } else
        return prism_error(PRISM_E_UNSUPPORTED, "%s: normalizer type \"%s\" is not supported", path, type);
    t->n_norm++;
    if ((n->kind == NORM_PREPEND && !n->a) || (n->kind == NORM_REPLACE && (!n->b || (!n->re && !n->a))))
        return prism_error(PRISM_E_NOMEM, "%s: out of memory", path);
    return PRISM_OK;
}

static int parse_prepend_scheme(const json_t *j, tk_prepend_scheme *out) {
    const char *s = jstr(j, "prepend_scheme");
    if (s) {
        if (!strcmp(s, "always")) *out = PREPEND_ALWAYS;
        else if (!strcmp(s, "first")) *out = PREPEND_FIRST;
        else if (!strcmp(s, "never")) *out = PREPEND_NEVER;
        else return -1;
    } else
        *out = jbool(j, "add_prefix_space", true) ? PREPEND_ALWAYS : PREPEND_NEVER;
    return 0;
}

static int parse_replacement(const json_t *j, char repl[8]) {
    const char *r = jstr(j, "replacement");
    if (!r) r = "\xE2\x96\x81"; /* U+2581 */
    if (strlen(r) >= 8) return -1;
    strcpy(repl, r);
    return 0;
}

static prism_status parse_pretokenizer(prism_tokenizer *t, const json_t *j, const char *path) {
    if (!j || json_is_null(j)) return PRISM_OK;
    const char *type = jstr(j, "type");
    if (!type) return prism_error(PRISM_E_FORMAT, "%s: pre_tokenizer without \"type\"", path);
    if (!strcmp(type, "Sequence")) {
        const json_t *arr = json_object_get(j, "pretokenizers");
        size_t i;
        const json_t *v;
        json_array_foreach(arr, i, v) {
            prism_status st = parse_pretokenizer(t, v, path);
            if (st) return st;
        }
        return PRISM_OK;
    }
    tk_pre *p = realloc(t->pre, (size_t)(t->n_pre + 1) * sizeof *p);
    if (!p) return prism_error(PRISM_E_NOMEM, "%s: out of memory", path);
    t->pre = p;
    p = &t->pre[t->n_pre];
    memset(p, 0, sizeof *p);
    if (!strcmp(type, "Split")) {
        bool rx = false;
        const char *pat = jpattern(j, &rx), *beh = jstr(j, "behavior");
        if (!pat || !beh) return prism_error(PRISM_E_FORMAT, "%s: Split pre-tokenizer needs pattern and behavior", path);
        static const char *names[] = {"Removed", "Isolated", "MergedWithPrevious", "MergedWithNext", "Contiguous"};
        int b = -1;
        for (int k = 0; k < 5; k++)
            if (!strcmp(beh, names[k])) b = k;
        if (b < 0) return prism_error(PRISM_E_UNSUPPORTED, "%s: Split behavior \"%s\" is not supported", path, beh);
        p->kind = PRE_SPLIT;
        p->behavior = (tk_split_behavior)b;
        p->invert = jbool(j, "invert", false);
        if (!(p->re = tk_regex_compile(pat, !rx, path))) return PRISM_E_UNSUPPORTED;
    } else if (!strcmp(type, "ByteLevel")) {
        p->kind = PRE_BYTELEVEL;
        p->add_prefix_space = jbool(j, "add_prefix_space", true);
        if (jbool(j, "use_regex", true) && !(p->re = tk_regex_compile(GPT2_REGEX, false, path)))
            return PRISM_E_UNSUPPORTED;
        t->bytelevel = true;
    } else if (!strcmp(type, "Metaspace")) {
        p->kind = PRE_METASPACE;
        if (parse_replacement(j, p->repl) || parse_prepend_scheme(j, &p->prepend))
            return prism_error(PRISM_E_UNSUPPORTED, "%s: Metaspace pre-tokenizer options not supported", path);
        p->split = jbool(j, "split", true);
    } else if (!strcmp(type, "Digits")) {
        p->kind = PRE_DIGITS;
        p->individual_digits = jbool(j, "individual_digits", false);
    } else
        return prism_error(PRISM_E_UNSUPPORTED, "%s: pre_tokenizer type \"%s\" is not supported", path, type);
    t->n_pre++;
    return PRISM_OK;
}

static prism_status parse_decoder(prism_tokenizer *t, const json_t *j, const char *path) {
    if (!j || json_is_null(j)) return PRISM_OK;
    const char *type = jstr(j, "type");
    if (!type) return prism_error(PRISM_E_FORMAT, "%s: decoder without \"type\"", path);
    t->has_decoder = true;
    if (!strcmp(type, "Sequence")) {
        const json_t *arr = json_object_get(j, "decoders");
        size_t i;
        const json_t *v;
        json_array_foreach(arr, i, v) {
            prism_status st = parse_decoder(t, v, path);
            if (st) return st;
        }
        return PRISM_OK;
    }
    tk_dec *d = realloc(t->dec, (size_t)(t->n_dec + 1) * sizeof *d);
    if (!d) return prism_error(PRISM_E_NOMEM, "%s: out of memory", path);
    t->dec = d;
    d = &t->dec[t->n_dec];
    memset(d, 0, sizeof *d);
    if (!strcmp(type, "ByteLevel")) d->kind = DEC_BYTELEVEL;
    else if (!strcmp(type, "ByteFallback")) {
        d->kind = DEC_BYTEFALLBACK;
        t->dec_byte_runs = true;
    }
    else if (!strcmp(type, "Fuse")) d->kind = DEC_FUSE;
    else if (!strcmp(type, "Replace")) {
        bool rx = false;
        const char *p = jpattern(j, &rx), *c = jstr(j, "content");
        if (!p || !c || rx) return prism_error(PRISM_E_UNSUPPORTED, "%s: Replace decoder supports a String pattern only", path);
        d->kind = DEC_REPLACE;
        d->a = dupstr(p);
        d->b = dupstr(c);
        if (!d->a || !d->b) { t->n_dec++; return prism_error(PRISM_E_NOMEM, "%s: out of memory", path); }
    } else if (!strcmp(type, "Strip")) {
        const char *c = jstr(j, "content");
        int l;
        d->kind = DEC_STRIP;
        d->strip_cp = c && *c ? tk_u8dec(c, strlen(c), &l) : ' ';
        d->strip_start = (int)json_integer_value(json_object_get(j, "start"));
        d->strip_stop = (int)json_integer_value(json_object_get(j, "stop"));
    } else if (!strcmp(type, "Metaspace")) {
        d->kind = DEC_METASPACE;
        if (parse_replacement(j, d->repl) || parse_prepend_scheme(j, &d->prepend))
            return prism_error(PRISM_E_UNSUPPORTED, "%s: Metaspace decoder options not supported", path);
    } else
        return prism_error(PRISM_E_UNSUPPORTED, "%s: decoder type \"%s\" is not supported", path, type);
    t->n_dec++;
    return PRISM_OK;
}

static int post_add(int32_t **v, int *n, int32_t id) {
    int32_t *p = realloc(*v, (size_t)(*n + 1) * sizeof *p);
    if (!p) return -1;
    p[(*n)++] = id;
    *v = p;
    return 0;
}

static int32_t lookup(const prism_tokenizer *t, const char *s) {
    int32_t id = tk_strmap_get(&t->added_map, s, strlen(s));
    return id >= 0 ? id : tk_strmap_get(&t->vocab, s, strlen(s));
}

static prism_status parse_post(prism_tokenizer *t, const json_t *j, const char *path) {
    if (!j || json_is_null(j)) return PRISM_OK;
    const char *type = jstr(j, "type");
    if (!type) return prism_error(PRISM_E_FORMAT, "%s: post_processor without \"type\"", path);
    if (!strcmp(type, "ByteLevel")) return PRISM_OK; /* only adjusts offsets */
    if (!strcmp(type, "Sequence")) {
        size_t i;
        const json_t *v;
        json_array_foreach(json_object_get(j, "processors"), i, v) {
            prism_status st = parse_post(t, v, path);
            if (st) return st;
        }
        return PRISM_OK;
    }
    if (!strcmp(type, "TemplateProcessing")) {
        const json_t *single = json_object_get(j, "single"), *specials = json_object_get(j, "special_tokens");
        bool after = false;
        size_t i;
        const json_t *item;
        json_array_foreach(single, i, item) {
            const json_t *st = json_object_get(item, "SpecialToken");
            if (!st) { after = true; continue; } /* {"Sequence": {"id": "A"}} */
            const char *name = jstr(st, "id");
            const json_t *ids = json_object_get(json_object_get(specials, name ? name : ""), "ids");
            if (!name || !json_is_array(ids))
                return prism_error(PRISM_E_FORMAT, "%s: TemplateProcessing special token \"%s\" not in special_tokens", path,
                                   name ? name : "?");
            size_t k;
            const json_t *id;
            json_array_foreach(ids, k, id) {
                if (post_add(after ? &t->post.post : &t->post.pre, after ? &t->post.n_post : &t->post.n_pre,
                             (int32_t)json_integer_value(id)))
                    return prism_error(PRISM_E_NOMEM, "%s: out of memory", path);
            }
        }
        return PRISM_OK;
    }
    if (!strcmp(type, "RobertaProcessing") || !strcmp(type, "BertProcessing")) {
        const json_t *cls = json_array_get(json_object_get(j, "cls"), 1), *sep = json_array_get(json_object_get(j, "sep"), 1);
        if (!json_is_integer(cls) || !json_is_integer(sep))
            return prism_error(PRISM_E_FORMAT, "%s: %s without cls/sep", path, type);
        if (post_add(&t->post.pre, &t->post.n_pre, (int32_t)json_integer_value(cls)) ||
            post_add(&t->post.post, &t->post.n_post, (int32_t)json_integer_value(sep)))
            return prism_error(PRISM_E_NOMEM, "%s: out of memory", path);
        return PRISM_OK;
    }
    return prism_error(PRISM_E_UNSUPPORTED, "%s: post_processor type \"%s\" is not supported", path, type);
}

/* ---------------------------------------------------------------- model */
static int cmp_added(const void *a, const void *b) {
    const tk_added *x = a, *y = b;
    if (x->normalized != y->normalized) return x->normalized ? 1 : -1;
    unsigned char cx = (unsigned char)x->pat[0], cy = (unsigned char)y->pat[0];
    if (cx != cy) return cx < cy ? -1 : 1;
    if (x->pat_len != y->pat_len) return x->pat_len > y->pat_len ? -1 : 1;
    return x->id < y->id ? -1 : x->id > y->id;
}

/* Normalized added tokens are searched for in normalized text, so their pattern
 * is their content passed through the normalizer (as HF does); then the tokens
 * are indexed by group and first byte. */
static prism_status index_added(prism_tokenizer *t, const char *path) {
    tk_buf nb = {0};
    for (int i = 0; i < t->n_added; i++) {
        tk_added *a = &t->added[i];
        a->pat = a->content;
        a->pat_len = a->len;
        if (!a->normalized || !t->n_norm) continue;
        prism_status st = tk_normalize(t->norm, t->n_norm, a->content, a->len, &nb);
        if (st) { free(nb.p); return st; }
        if (nb.len == 0) continue; /* normalizes to nothing: keep matching the raw content */
        if (!(a->pat = malloc(nb.len + 1))) { a->pat = a->content; free(nb.p); return prism_error(PRISM_E_NOMEM, "%s: out of memory", path); }
        memcpy(a->pat, nb.p, nb.len + 1);
        a->pat_len = (uint32_t)nb.len;
        t->tok_str[a->id] = a->pat; /* HF's id_to_token gives the normalized form too */
        t->tok_len[a->id] = a->pat_len;
    }
    free(nb.p);
    qsort(t->added, (size_t)t->n_added, sizeof *t->added, cmp_added);
    for (int g = 0; g < 2; g++)
        for (int c = 0, k = 0; c <= 256; c++) {
            while (k < t->n_added && ((int)t->added[k].normalized < g ||
                                      ((int)t->added[k].normalized == g && (unsigned char)t->added[k].pat[0] < c)))
                k++;
            t->added_first[g][c] = k;
        }
    return PRISM_OK;
}

static prism_status parse_model(prism_tokenizer *t, const json_t *root, const char *path) {
    const json_t *model = json_object_get(root, "model");
    if (!json_is_object(model)) return prism_error(PRISM_E_FORMAT, "%s: no \"model\" object", path);
    const char *type = jstr(model, "type");
    if (type && strcmp(type, "BPE"))
        return prism_error(PRISM_E_UNSUPPORTED, "%s: model type \"%s\" is not supported (prism implements BPE only)", path,
                           type);
    const json_t *vocab = json_object_get(model, "vocab"), *merges = json_object_get(model, "merges");
    if (!json_is_object(vocab) || !json_is_array(merges))
        return prism_error(PRISM_E_FORMAT, "%s: BPE model needs a \"vocab\" object and a \"merges\" array", path);
    const char *pfx = jstr(model, "continuing_subword_prefix"), *sfx = jstr(model, "end_of_word_suffix");
    if ((pfx && *pfx) || (sfx && *sfx))
        return prism_error(PRISM_E_UNSUPPORTED, "%s: BPE continuing_subword_prefix/end_of_word_suffix are not supported", path);
    const json_t *dropout = json_object_get(model, "dropout");
    if (json_is_number(dropout) && json_number_value(dropout) > 0)
        return prism_error(PRISM_E_UNSUPPORTED, "%s: BPE dropout is not supported", path);
    t->byte_fallback = jbool(model, "byte_fallback", false);
    t->fuse_unk = jbool(model, "fuse_unk", false);
    t->ignore_merges = jbool(model, "ignore_merges", false);

    /* sizes: ids and string pool */
    const json_t *added = json_object_get(root, "added_tokens");
    int64_t max_id = -1;
    size_t pool = 0;
    const char *key;
    const json_t *v;
    json_object_foreach((json_t *)vocab, key, v) {
        if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > INT32_MAX - 1)
            return prism_error(PRISM_E_FORMAT, "%s: vocab entry \"%s\" has no valid id", path, key);
        if (json_integer_value(v) > max_id) max_id = json_integer_value(v);
        pool += strlen(key) + 1; /* jansson object keys cannot hold NUL */
    }
    size_t i;
    json_array_foreach(added, i, v) {
        const json_t *c = json_object_get(v, "content"), *id = json_object_get(v, "id");
        if (!json_is_string(c) || !json_is_integer(id) || json_integer_value(id) < 0 || json_integer_value(id) > INT32_MAX - 1)
            return prism_error(PRISM_E_FORMAT, "%s: added_tokens[%zu] needs \"id\" and \"content\"", path, i);
        if (json_string_length(c) == 0) return prism_error(PRISM_E_FORMAT, "%s: added_tokens[%zu] is empty", path, i);
        if (json_integer_value(id) > max_id) max_id = json_integer_value(id);
        pool += json_string_length(c) + 1;
    }
    t->n_vocab = (int32_t)(max_id + 1);
    t->strpool = malloc(pool ? pool : 1);
    t->tok_str = calloc((size_t)t->n_vocab + 1, sizeof *t->tok_str);
    t->tok_len = calloc((size_t)t->n_vocab + 1, sizeof *t->tok_len);
    t->is_special = calloc((size_t)t->n_vocab + 1, 1);
    t->is_added = calloc((size_t)t->n_vocab + 1, sizeof *t->is_added);
    size_t n_added = json_array_size(added);
    t->added = calloc(n_added + 1, sizeof *t->added);
    if (!t->strpool || !t->tok_str || !t->tok_len || !t->is_special || !t->is_added || !t->added ||
        tk_strmap_init(&t->vocab, (uint32_t)json_object_size(vocab)) || tk_strmap_init(&t->added_map, (uint32_t)n_added + 1))
        return prism_error(PRISM_E_NOMEM, "%s: out of memory for the vocabulary", path);

    char *w = t->strpool;
    json_object_foreach((json_t *)vocab, key, v) {
        size_t l = strlen(key);
        int32_t id = (int32_t)json_integer_value(v);
        memcpy(w, key, l + 1);
        t->tok_str[id] = w;
        t->tok_len[id] = (uint32_t)l;
        if (tk_strmap_put(&t->vocab, w, (uint32_t)l, id)) return prism_error(PRISM_E_NOMEM, "%s: out of memory", path);
        w += l + 1;
    }
    json_array_foreach(added, i, v) {
        const json_t *c = json_object_get(v, "content");
        size_t l = json_string_length(c);
        int32_t id = (int32_t)json_integer_value(json_object_get(v, "id"));
        memcpy(w, json_string_value(c), l);
        w[l] = 0;
        tk_added *a = &t->added[t->n_added++];
        a->content = w;
        a->len = (uint32_t)l;
        a->id = id;
        a->special = jbool(v, "special", false);
        a->lstrip = jbool(v, "lstrip", false);
        a->rstrip = jbool(v, "rstrip", false);
        a->single_word = jbool(v, "single_word", false);
        a->normalized = jbool(v, "normalized", !a->special);
        t->tok_str[id] = w;
        t->tok_len[id] = (uint32_t)l;
        t->is_special[id] = a->special;
        t->is_added[id] = true;
        if (tk_strmap_put(&t->added_map, w, (uint32_t)l, id)) return prism_error(PRISM_E_NOMEM, "%s: out of memory", path);
        w += l + 1;
    }

    /* merges: "a b" strings or ["a", "b"] pairs; rank = position */
    if (tk_merges_init(&t->merges, json_array_size(merges))) return prism_error(PRISM_E_NOMEM, "%s: out of memory", path);
    tk_buf joined = {0};
    json_array_foreach(merges, i, v) {
        const char *a, *b;
        size_t la, lb;
        if (json_is_string(v)) {
            a = json_string_value(v);
            const char *sp = strchr(a, ' ');
            if (!sp) { free(joined.p); return prism_error(PRISM_E_FORMAT, "%s: merges[%zu] \"%s\" is not \"a b\"", path, i, a); }
            la = (size_t)(sp - a);
            b = sp + 1;
            lb = strlen(b);
        } else if (json_is_array(v) && json_array_size(v) == 2 && json_is_string(json_array_get(v, 0)) &&
                   json_is_string(json_array_get(v, 1))) {
            a = json_string_value(json_array_get(v, 0));
            b = json_string_value(json_array_get(v, 1));
            la = json_string_length(json_array_get(v, 0));
            lb = json_string_length(json_array_get(v, 1));
        } else {
            free(joined.p);
            return prism_error(PRISM_E_FORMAT, "%s: merges[%zu] is neither \"a b\" nor [a, b]", path, i);
        }
        joined.len = 0;
        tk_buf_put(&joined, a, la);
        tk_buf_put(&joined, b, lb);
        int32_t ia = tk_strmap_get(&t->vocab, a, la), ib = tk_strmap_get(&t->vocab, b, lb);
        int32_t im = joined.oom ? -1 : tk_strmap_get(&t->vocab, joined.p, joined.len);
        if (ia < 0 || ib < 0 || im < 0) {
            prism_status st = joined.oom ? prism_error(PRISM_E_NOMEM, "%s: out of memory", path)
                                         : prism_error(PRISM_E_FORMAT, "%s: merges[%zu] (%.*s + %.*s) refers to a token not in the vocab",
                                                       path, i, (int)la, a, (int)lb, b);
            free(joined.p);
            return st;
        }
        tk_merges_put(&t->merges, ia, ib, (uint32_t)i, im);
    }
    free(joined.p);

    t->unk_id = -1;
    const char *unk = jstr(model, "unk_token");
    if (unk) t->unk_id = tk_strmap_get(&t->vocab, unk, strlen(unk));
    for (int b = 0; b < 256; b++) {
        char name[8];
        snprintf(name, sizeof name, "<0x%02X>", b);
        t->byte_ids[b] = t->byte_fallback ? tk_strmap_get(&t->vocab, name, 6) : -1;
    }
    return PRISM_OK;
}

/* bos/eos from tokenizer_config.json: a string or {"content": ...}; absent -> *id untouched */
static void config_token(const prism_tokenizer *t, const json_t *cfg, const char *key, int32_t *id, bool *found) {
    const json_t *v = json_object_get(cfg, key);
    if (!v) return;
    *found = true;
    if (json_is_object(v)) v = json_object_get(v, "content");
    *id = json_is_string(v) ? lookup(t, json_string_value(v)) : -1;
}

prism_status prism_tokenizer_load(const char *dir, prism_tokenizer **out) {
    if (!dir || !out) return prism_error(PRISM_E_ARG, "prism_tokenizer_load: NULL argument");
    *out = NULL;
    pthread_once(&g_bytelevel_once, tk_bytelevel_init);
    size_t dl = strlen(dir);
    char *path = malloc(dl + 32);
    if (!path) return prism_error(PRISM_E_NOMEM, "out of memory");
    snprintf(path, dl + 32, "%s/tokenizer.json", dir);
    json_t *root = NULL;
    prism_status st = load_json(path, 0, &root);
    prism_tokenizer *t = NULL;
    if (st == PRISM_OK && !json_is_object(root)) st = prism_error(PRISM_E_FORMAT, "%s: top level is not an object", path);
    if (st == PRISM_OK && !(t = calloc(1, sizeof *t))) st = prism_error(PRISM_E_NOMEM, "out of memory");
    if (st == PRISM_OK) st = parse_model(t, root, path);
    if (st == PRISM_OK) st = parse_normalizer(t, json_object_get(root, "normalizer"), path);
    if (st == PRISM_OK) st = parse_pretokenizer(t, json_object_get(root, "pre_tokenizer"), path);
    if (st == PRISM_OK) st = index_added(t, path);
    if (st == PRISM_OK) st = parse_decoder(t, json_object_get(root, "decoder"), path);
    if (st == PRISM_OK) st = parse_post(t, json_object_get(root, "post_processor"), path);
    json_decref(root);
    if (st == PRISM_OK) {
        t->bos = t->post.n_pre ? t->post.pre[0] : -1;
        t->eos = t->post.n_post ? t->post.post[t->post.n_post - 1] : -1;
        snprintf(path, dl + 32, "%s/tokenizer_config.json", dir);
        FILE *f = fopen(path, "rb");
        if (f) {
            fclose(f);
            json_t *cfg = NULL;
            /* model_max_length can be 1e30 written as an integer */
            st = load_json(path, JSON_DECODE_INT_AS_REAL, &cfg);
            if (st == PRISM_OK) {
                bool found = false;
                config_token(t, cfg, "bos_token", &t->bos, &found);
                config_token(t, cfg, "eos_token", &t->eos, &found);
                json_decref(cfg);
            }
        }
    }
    free(path);
    if (st != PRISM_OK) {
        prism_tokenizer_free(t);
        return st;
    }
    *out = t;
    return PRISM_OK;
}

void prism_tokenizer_free(prism_tokenizer *t) {
    if (!t) return;
    tk_strmap_free(&t->vocab);
    tk_strmap_free(&t->added_map);
    tk_merges_free(&t->merges);
    free(t->strpool);
    free(t->tok_str);
    free(t->tok_len);
    free(t->is_special);
    free(t->is_added);
    for (int i = 0; i < t->n_added; i++)
        if (t->added[i].pat != t->added[i].content) free(t->added[i].pat);
    free(t->added);
    for (int i = 0; i < t->n_norm; i++) {
        free(t->norm[i].a);
        free(t->norm[i].b);
        pcre2_code_free(t->norm[i].re);
    }
    free(t->norm);
    for (int i = 0; i < t->n_pre; i++) pcre2_code_free(t->pre[i].re);
    free(t->pre);
    for (int i = 0; i < t->n_dec; i++) {
        free(t->dec[i].a);
        free(t->dec[i].b);
    }
    free(t->dec);
    free(t->post.pre);
    free(t->post.post);
    free(t);
}

int32_t prism_tokenizer_n_vocab(const prism_tokenizer *t) { return t ? t->n_vocab : 0; }
int32_t prism_tokenizer_bos(const prism_tokenizer *t) { return t ? t->bos : -1; }
int32_t prism_tokenizer_eos(const prism_tokenizer *t) { return t ? t->eos : -1; }

int32_t prism_tokenizer_token_id(const prism_tokenizer *t, const char *piece) {
    if (!t || !piece) return -1;
    return lookup(t, piece);
}

bool prism_tokenizer_is_special(const prism_tokenizer *t, int32_t id) {
    return t && id >= 0 && id < t->n_vocab && t->is_special[id];
}

/* ---------------------------------------------------------------- encode */
static bool is_word_char(uint32_t cp) {
    if (cp == '_') return true;
    utf8proc_category_t c = utf8proc_category((utf8proc_int32_t)cp);
    return (c >= UTF8PROC_CATEGORY_LU && c <= UTF8PROC_CATEGORY_LO) || (c >= UTF8PROC_CATEGORY_ND && c <= UTF8PROC_CATEGORY_NO) ||
           (c >= UTF8PROC_CATEGORY_MN && c <= UTF8PROC_CATEGORY_ME);
}

static uint32_t cp_before(const char *s, size_t at) {
    size_t p = at - 1;
    while (p > 0 && ((unsigned char)s[p] & 0xC0) == 0x80) p--;
    int l;
    return tk_u8dec(s + p, at - p, &l);
}

/* Finds the leftmost-longest added token of group g in s[from..n); returns its
 * index or -1, with the span to remove (lstrip/rstrip whitespace included) in *a, *b. */
static int find_added(const prism_tokenizer *t, int g, const char *s, size_t from, size_t n, size_t *a, size_t *b) {
    if (t->added_first[g][0] == t->added_first[g][256]) return -1;
    for (size_t i = from; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        for (int k = t->added_first[g][c]; k < t->added_first[g][c + 1]; k++) {
            const tk_added *ad = &t->added[k];
            if (ad->pat_len > n - i || memcmp(s + i, ad->pat, ad->pat_len) != 0) continue;
            size_t e = i + ad->pat_len;
            if (ad->single_word) {
                int l;
                if (i > 0 && is_word_char(cp_before(s, i))) continue;
                if (e < n && is_word_char(tk_u8dec(s + e, n - e, &l))) continue;
            }
            size_t sa = i, sb = e;
            while (ad->lstrip && sa > from) {
                size_t p = sa - 1;
                while (p > from && ((unsigned char)s[p] & 0xC0) == 0x80) p--;
                int l;
                if (!tk_is_space_cp(tk_u8dec(s + p, sa - p, &l))) break;
                sa = p;
            }
            while (ad->rstrip && sb < n) {
                int l;
                if (!tk_is_space_cp(tk_u8dec(s + sb, n - sb, &l))) break;
                sb += (size_t)l;
            }
            *a = sa;
            *b = sb;
            return k;
        }
    }
    return -1;
}

typedef struct {
    tk_buf norm;
    tk_pieces p0, p1;
    pcre2_match_data *md;
} encode_scratch;

static int append_ids(int32_t **ids, size_t *n, size_t *cap, const int32_t *v, size_t k);

/* One stretch of text between raw-matched added tokens: normalize, split out
 * normalized added tokens, pre-tokenize and BPE the rest. */
static prism_status encode_segment(const prism_tokenizer *t, const char *s, size_t n, bool at_start, encode_scratch *w,
                                   int32_t **ids, size_t *n_ids, size_t *cap) {
    prism_status st = tk_normalize(t->norm, t->n_norm, s, n, &w->norm);
    if (st) return st;
    const char *ns = w->norm.p;
    size_t nn = w->norm.len, pos = 0;
    while (pos < nn || (pos == 0 && nn == 0)) {
        size_t a = 0, b = 0;
        int k = find_added(t, 1, ns, pos, nn, &a, &b);
        size_t end = k >= 0 ? a : nn;
        tk_pieces_reset(&w->p0);
        if (tk_pieces_add(&w->p0, ns + pos, end - pos, at_start && pos == 0))
            return prism_error(PRISM_E_NOMEM, "tokenizer: out of memory");
        if ((st = tk_pretokenize(t->pre, t->n_pre, &w->p0, &w->p1, w->md))) return st;
        for (size_t i = 0; i < w->p1.n; i++)
            if ((st = tk_bpe_word(t, w->p1.buf.p + w->p1.off[i], w->p1.len[i], ids, n_ids, cap))) return st;
        if (k >= 0 && append_ids(ids, n_ids, cap, &t->added[k].id, 1)) return prism_error(PRISM_E_NOMEM, "tokenizer: out of memory");
        if (k < 0) break;
        pos = b;
    }
    return PRISM_OK;
}

static int append_ids(int32_t **ids, size_t *n, size_t *cap, const int32_t *v, size_t k) {
    if (*n + k > *cap) {
        size_t c = *cap ? *cap : 64;
        while (c < *n + k) c *= 2;
        int32_t *p = realloc(*ids, c * sizeof *p);
        if (!p) return -1;
        *ids = p;
        *cap = c;
    }
    if (k) memcpy(*ids + *n, v, k * sizeof *v);
    *n += k;
    return 0;
}

prism_status prism_tokenize(const prism_tokenizer *t, const char *text, size_t len, bool add_special, int32_t **ids,
                            size_t *n_ids) {
    if (!t || !ids || !n_ids || (len && !text)) return prism_error(PRISM_E_ARG, "prism_tokenize: NULL argument");
    *ids = NULL;
    *n_ids = 0;
    size_t bad = tk_u8invalid(text, len);
    if (bad != (size_t)-1) return prism_error(PRISM_E_ARG, "prism_tokenize: text is not valid UTF-8 (byte %zu)", bad);
    encode_scratch w = {0};
    pcre2_code *any_re = NULL;
    for (int i = 0; i < t->n_pre && !any_re; i++) any_re = t->pre[i].re;
    if (any_re && !(w.md = pcre2_match_data_create(16, NULL))) return prism_error(PRISM_E_NOMEM, "tokenizer: out of memory");
    int32_t *out = NULL;
    size_t n = 0, cap = 0;
    prism_status st = PRISM_OK;
    if (add_special && append_ids(&out, &n, &cap, t->post.pre, (size_t)t->post.n_pre)) st = PRISM_E_NOMEM;
    size_t pos = 0;
    while (st == PRISM_OK && pos < len) {
        size_t a = 0, b = 0;
        int k = find_added(t, 0, text, pos, len, &a, &b);
        size_t seg_end = k >= 0 ? a : len;
        if (seg_end > pos) st = encode_segment(t, text + pos, seg_end - pos, pos == 0, &w, &out, &n, &cap);
        if (st == PRISM_OK && k >= 0 && append_ids(&out, &n, &cap, &t->added[k].id, 1)) st = PRISM_E_NOMEM;
        pos = k >= 0 ? b : len;
    }
    if (st == PRISM_OK && add_special && append_ids(&out, &n, &cap, t->post.post, (size_t)t->post.n_post)) st = PRISM_E_NOMEM;
    if (st == PRISM_E_NOMEM) prism_error(st, "tokenizer: out of memory");
    free(w.norm.p);
    tk_pieces_free(&w.p0);
    tk_pieces_free(&w.p1);
    pcre2_match_data_free(w.md);
    if (st != PRISM_OK) { free(out); return st; }
    if (!out && !(out = malloc(sizeof *out))) return prism_error(PRISM_E_NOMEM, "tokenizer: out of memory");
    *ids = out;
    *n_ids = n;
    return PRISM_OK;
}
