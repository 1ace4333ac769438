/* pretokenize.c — tokenizer.json pre-tokenizers: Split (regex or literal, with
 * the five delimiter behaviours and invert), ByteLevel (GPT-2 byte -> code
 * point mapping, optional GPT-2 regex), Metaspace (space -> U+2581 with the
 * always/first/never prepend schemes), Digits. Regexes are compiled as written
 * in the file with PCRE2 (UTF + UCP, JIT when available). */
#include "tokenizer/tokenizer_internal.h"
#include "util/error.h"

#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

uint32_t tk_byte_to_cp[256];
int16_t tk_cp_to_byte[0x144];

void tk_bytelevel_init(void) {
    int extra = 0;
    for (int i = 0; i < 0x144; i++) tk_cp_to_byte[i] = -1;
    for (int b = 0; b < 256; b++) {
        bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
        uint32_t cp = printable ? (uint32_t)b : (uint32_t)(256 + extra++);
        tk_byte_to_cp[b] = cp;
        tk_cp_to_byte[cp] = (int16_t)b;
    }
}

pcre2_code *tk_regex_compile(const char *pattern, bool literal, const char *what) {
    int err;
    PCRE2_SIZE at;
    uint32_t opt = PCRE2_UTF | PCRE2_UCP | (literal ? PCRE2_LITERAL : 0);
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)pattern, PCRE2_ZERO_TERMINATED, opt, &err, &at, NULL);
    if (!re) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(err, msg, sizeof msg);
        prism_error(PRISM_E_UNSUPPORTED, "%s: regex /%s/ does not compile at offset %zu: %s", what, pattern, (size_t)at,
                    (const char *)msg);
        return NULL;
    }
    pcre2_jit_compile(re, PCRE2_JIT_COMPLETE); /* falls back to the interpreter if JIT is unavailable */
    return re;
}

/* ---------------------------------------------------------------- piece lists */
void tk_pieces_reset(tk_pieces *p) {
    p->n = 0;
    p->buf.len = 0;
}

void tk_pieces_free(tk_pieces *p) {
    free(p->buf.p);
    free(p->off);
    free(p->len);
    free(p->first);
    memset(p, 0, sizeof *p);
}

int tk_pieces_add(tk_pieces *p, const char *s, size_t n, bool first) {
    if (n == 0) return 0; /* HF drops empty splits */
    if (p->n == p->cap) {
        size_t cap = p->cap ? p->cap * 2 : 64;
        size_t *off = realloc(p->off, cap * sizeof *off);
        if (off) p->off = off;
        size_t *len = realloc(p->len, cap * sizeof *len);
        if (len) p->len = len;
        bool *fi = realloc(p->first, cap * sizeof *fi);
        if (fi) p->first = fi;
        if (!off || !len || !fi) return -1;
        p->cap = cap;
    }
    p->off[p->n] = p->buf.len;
    p->len[p->n] = n;
    p->first[p->n] = first;
    p->n++;
    tk_buf_put(&p->buf, s, n);
    return p->buf.oom ? -1 : 0;
}

/* ---------------------------------------------------------------- splitting */
typedef struct {
    size_t a, b;
    bool match;
} span;

typedef struct {
    span *v;
    size_t n, cap;
} spans;

static int spans_add(spans *s, size_t a, size_t b, bool m) {
    if (a == b) return 0;
    if (s->n == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 64;
        span *v = realloc(s->v, cap * sizeof *v);
        if (!v) return -1;
        s->v = v;
        s->cap = cap;
    }
    s->v[s->n++] = (span){a, b, m};
    return 0;
}

/* Covers s[0..n) with match / non-match spans of re. */
static int regex_spans(const pcre2_code *re, const char *s, size_t n, pcre2_match_data *md, spans *out) {
    size_t pos = 0, last = 0;
    out->n = 0;
    while (pos < n) {
        int rc = pcre2_match(re, (PCRE2_SPTR)s, n, pos, PCRE2_NO_UTF_CHECK, md, NULL);
        if (rc < 0) break;
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
        if (ov[1] == ov[0]) { /* empty match: skip one character */
            pos = ov[0] + (size_t)tk_u8len((unsigned char)s[ov[0]]);
            continue;
        }
        if (spans_add(out, last, ov[0], false) || spans_add(out, ov[0], ov[1], true)) return -1;
        last = pos = ov[1];
    }
    return spans_add(out, last, n, false);
}

/* Applies an HF SplitDelimiterBehavior to spans in place (result: pieces to keep). */
static void apply_behavior(spans *s, tk_split_behavior b) {
    size_t k = 0;
    bool prev = false;
    switch (b) {
    case SPLIT_ISOLATED: return;
    case SPLIT_REMOVED:
        for (size_t i = 0; i < s->n; i++)
            if (!s->v[i].match) s->v[k++] = s->v[i];
        break;
    case SPLIT_MERGED_PREV:
        for (size_t i = 0; i < s->n; i++) {
            if (s->v[i].match && !prev && k > 0) s->v[k - 1].b = s->v[i].b;
            else s->v[k++] = s->v[i];
            prev = s->v[i].match;
        }
        break;
    case SPLIT_MERGED_NEXT: {
        /* walk backwards, merging a match into the piece after it */
        size_t w = s->n;
        for (size_t i = s->n; i-- > 0;) {
            span cur = s->v[i];
            if (cur.match && !prev && w < s->n) s->v[w].a = cur.a;
            else s->v[--w] = cur;
            prev = cur.match;
        }
        memmove(s->v, s->v + w, (s->n - w) * sizeof *s->v);
        k = s->n - w;
        break;
    }
    case SPLIT_CONTIGUOUS:
        for (size_t i = 0; i < s->n; i++) {
            if (k > 0 && s->v[i].match == prev) s->v[k - 1].b = s->v[i].b;
            else s->v[k++] = s->v[i];
            prev = s->v[i].match;
        }
        break;
    }
    s->n = k;
}

static int is_numeric_cp(uint32_t cp) {
    utf8proc_category_t c = utf8proc_category((utf8proc_int32_t)cp);
    return c == UTF8PROC_CATEGORY_ND || c == UTF8PROC_CATEGORY_NL || c == UTF8PROC_CATEGORY_NO;
}

static int digit_spans(const char *s, size_t n, spans *out) {
    out->n = 0;
    size_t last = 0;
    for (size_t i = 0; i < n;) {
        int l;
        uint32_t cp = tk_u8dec(s + i, n - i, &l);
        if (is_numeric_cp(cp)) {
            if (spans_add(out, last, i, false) || spans_add(out, i, i + (size_t)l, true)) return -1;
            last = i + (size_t)l;
        }
        i += (size_t)l;
    }
    return spans_add(out, last, n, false);
}

/* ---------------------------------------------------------------- the chain */
static int one_step(const tk_pre *q, const char *s, size_t n, bool first, tk_pieces *out, spans *sp, tk_buf *tmp,
                    pcre2_match_data *md) {
    switch (q->kind) {
    case PRE_SPLIT:
        if (regex_spans(q->re, s, n, md, sp)) return -1;
        if (q->invert)
            for (size_t i = 0; i < sp->n; i++) sp->v[i].match = !sp->v[i].match;
        apply_behavior(sp, q->behavior);
        for (size_t i = 0; i < sp->n; i++)
            if (tk_pieces_add(out, s + sp->v[i].a, sp->v[i].b - sp->v[i].a, first && sp->v[i].a == 0)) return -1;
        return 0;
    case PRE_DIGITS:
        if (digit_spans(s, n, sp)) return -1;
        apply_behavior(sp, q->individual_digits ? SPLIT_ISOLATED : SPLIT_CONTIGUOUS);
        for (size_t i = 0; i < sp->n; i++)
            if (tk_pieces_add(out, s + sp->v[i].a, sp->v[i].b - sp->v[i].a, first && sp->v[i].a == 0)) return -1;
        return 0;
    case PRE_BYTELEVEL: {
        tmp->len = 0;
        if (q->add_prefix_space && (n == 0 || s[0] != ' ')) tk_buf_putc(tmp, ' ');
        tk_buf_put(tmp, s, n);
        if (tmp->oom) return -1;
        const char *t = tmp->p;
        size_t tn = tmp->len;
        if (q->re) {
            if (regex_spans(q->re, t, tn, md, sp)) return -1;
        } else {
            sp->n = 0;
            if (spans_add(sp, 0, tn, false)) return -1;
        }
        for (size_t i = 0; i < sp->n; i++) {
            /* map each byte to its printable code point (at most 2 UTF-8 bytes) */
            size_t a = sp->v[i].a, b = sp->v[i].b;
            char small[256];
            char *m = (b - a) * 2 <= sizeof small ? small : malloc((b - a) * 2);
            if (!m) return -1;
            size_t k = 0;
            for (size_t j = a; j < b; j++) {
                uint32_t cp = tk_byte_to_cp[(unsigned char)t[j]];
                if (cp < 0x80) m[k++] = (char)cp;
                else { m[k++] = (char)(0xC0 | cp >> 6); m[k++] = (char)(0x80 | (cp & 0x3F)); }
            }
            int r = tk_pieces_add(out, m, k, first && a == 0);
            if (m != small) free(m);
            if (r) return -1;
        }
        return 0;
    }
    case PRE_METASPACE: {
        size_t rl = strlen(q->repl);
        tmp->len = 0;
        bool starts = n >= 1 && s[0] == ' ';
        bool starts_repl = n >= rl && memcmp(s, q->repl, rl) == 0;
        if (!starts && !starts_repl &&
            (q->prepend == PREPEND_ALWAYS || (q->prepend == PREPEND_FIRST && first)))
            tk_buf_put(tmp, q->repl, rl);
        for (size_t i = 0; i < n; i++) {
            if (s[i] == ' ') tk_buf_put(tmp, q->repl, rl);
            else tk_buf_putc(tmp, s[i]);
        }
        if (tmp->oom) return -1;
        if (!q->split) return tk_pieces_add(out, tmp->p, tmp->len, first);
        /* split before each replacement character (MergedWithNext) */
        size_t last = 0;
        for (size_t i = 0; i + rl <= tmp->len;) {
            if (memcmp(tmp->p + i, q->repl, rl) == 0) {
                if (i > last && tk_pieces_add(out, tmp->p + last, i - last, first && last == 0)) return -1;
                last = i;
                i += rl;
            } else i++;
        }
        return tk_pieces_add(out, tmp->p + last, tmp->len - last, first && last == 0);
    }
    }
    return 0;
}

prism_status tk_pretokenize(const tk_pre *steps, int n_steps, tk_pieces *in, tk_pieces *out, pcre2_match_data *md) {
    spans sp = {0};
    tk_buf tmp = {0};
    int fail = 0;
    tk_pieces_reset(out);
    if (n_steps == 0) {
        for (size_t i = 0; i < in->n && !fail; i++) fail = tk_pieces_add(out, in->buf.p + in->off[i], in->len[i], in->first[i]);
    }
    for (int k = 0; k < n_steps && !fail; k++) {
        if (k > 0) { /* previous output becomes the input */
            tk_pieces swap = *in;
            *in = *out;
            *out = swap;
            tk_pieces_reset(out);
        }
        for (size_t i = 0; i < in->n && !fail; i++)
            fail = one_step(&steps[k], in->buf.p + in->off[i], in->len[i], in->first[i], out, &sp, &tmp, md);
    }
    free(sp.v);
    free(tmp.p);
    return fail ? prism_error(PRISM_E_NOMEM, "tokenizer: out of memory") : PRISM_OK;
}
