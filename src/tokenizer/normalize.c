/* normalize.c — tokenizer.json normalizers: NFC/NFD/NFKC/NFKD (utf8proc),
 * Prepend, Replace (literal or regex), Lowercase, Strip; a Sequence is a list
 * of these applied in order. */
#include "tokenizer/tokenizer_internal.h"
#include "util/error.h"

#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

static prism_status unicode_form(tk_norm_kind k, const char *s, size_t n, tk_buf *out) {
    utf8proc_option_t opt = UTF8PROC_STABLE;
    if (k == NORM_NFC || k == NORM_NFKC) opt |= UTF8PROC_COMPOSE;
    else opt |= UTF8PROC_DECOMPOSE;
    if (k == NORM_NFKC || k == NORM_NFKD) opt |= UTF8PROC_COMPAT;
    out->len = 0;
    if (n == 0) { tk_buf_put(out, "", 0); return PRISM_OK; }
    utf8proc_uint8_t *dst = NULL;
    utf8proc_ssize_t r = utf8proc_map((const utf8proc_uint8_t *)s, (utf8proc_ssize_t)n, &dst, opt);
    if (r < 0) return prism_error(PRISM_E_ARG, "tokenizer: unicode normalization failed: %s", utf8proc_errmsg(r));
    tk_buf_put(out, dst, (size_t)r);
    free(dst);
    return PRISM_OK;
}

/* Rust's str::to_lowercase, minus the context-dependent final sigma. */
static void lowercase(const char *s, size_t n, tk_buf *out) {
    out->len = 0;
    for (size_t i = 0; i < n;) {
        int l;
        uint32_t cp = tk_u8dec(s + i, n - i, &l);
        if (cp == 0x130) tk_buf_put(out, "i\xCC\x87", 3); /* İ -> i + combining dot above */
        else tk_buf_put_cp(out, (uint32_t)utf8proc_tolower((utf8proc_int32_t)cp));
        i += (size_t)l;
    }
    tk_buf_put(out, "", 0);
}

static void replace_literal(const char *pat, const char *with, const char *s, size_t n, tk_buf *out) {
    size_t pl = strlen(pat), wl = strlen(with);
    out->len = 0;
    size_t i = 0;
    if (pl == 0) { tk_buf_put(out, s, n); return; }
    while (i < n) {
        const char *hit = pl <= n - i ? memmem(s + i, n - i, pat, pl) : NULL;
        if (!hit) break;
        size_t at = (size_t)(hit - s);
        tk_buf_put(out, s + i, at - i);
        tk_buf_put(out, with, wl);
        i = at + pl;
    }
    tk_buf_put(out, s + i, n - i);
}

static prism_status replace_regex(const pcre2_code *re, const char *with, const char *s, size_t n, tk_buf *out) {
    pcre2_match_data *md = pcre2_match_data_create_from_pattern(re, NULL);
    if (!md) return prism_error(PRISM_E_NOMEM, "tokenizer: out of memory");
    out->len = 0;
    size_t i = 0, pos = 0;
    while (pos <= n) {
        int rc = pcre2_match(re, (PCRE2_SPTR)s, n, pos, PCRE2_NO_UTF_CHECK, md, NULL);
        if (rc < 0) break;
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
        tk_buf_put(out, s + i, ov[0] - i);
        tk_buf_put(out, with, strlen(with));
        i = ov[1];
        pos = ov[1] > ov[0] ? ov[1] : ov[1] + (ov[1] < n ? (size_t)tk_u8len((unsigned char)s[ov[1]]) : 1);
    }
    tk_buf_put(out, s + i, n - i);
    pcre2_match_data_free(md);
    return PRISM_OK;
}

static void strip_ws(bool left, bool right, const char *s, size_t n, tk_buf *out) {
    size_t a = 0, b = n;
    while (left && a < b) {
        int l;
        uint32_t cp = tk_u8dec(s + a, b - a, &l);
        if (!tk_is_space_cp(cp)) break;
        a += (size_t)l;
    }
    while (right && b > a) {
        size_t p = b - 1;
        while (p > a && ((unsigned char)s[p] & 0xC0) == 0x80) p--;
        int l;
        if (!tk_is_space_cp(tk_u8dec(s + p, b - p, &l))) break;
        b = p;
    }
    out->len = 0;
    tk_buf_put(out, s + a, b - a);
}

prism_status tk_normalize(const tk_norm *steps, int n_steps, const char *s, size_t n, tk_buf *out) {
    tk_buf tmp = {0};
    out->len = 0;
    tk_buf_put(out, s, n);
    prism_status st = PRISM_OK;
    for (int k = 0; k < n_steps && st == PRISM_OK; k++) {
        const tk_norm *q = &steps[k];
        const char *src = out->p;
        size_t sn = out->len;
        switch (q->kind) {
        case NORM_NFC: case NORM_NFD: case NORM_NFKC: case NORM_NFKD:
            st = unicode_form(q->kind, src, sn, &tmp);
            break;
        case NORM_PREPEND:
            tmp.len = 0;
            if (sn) tk_buf_put(&tmp, q->a, strlen(q->a));
            tk_buf_put(&tmp, src, sn);
            break;
        case NORM_REPLACE:
            if (q->re) st = replace_regex(q->re, q->b, src, sn, &tmp);
            else replace_literal(q->a, q->b, src, sn, &tmp);
            break;
        case NORM_LOWERCASE: lowercase(src, sn, &tmp); break;
        case NORM_STRIP: strip_ws(q->left, q->right, src, sn, &tmp); break;
        }
        tk_buf swap = *out;
        *out = tmp;
        tmp = swap;
    }
    free(tmp.p);
    if (st == PRISM_OK && (out->oom || tmp.oom)) st = prism_error(PRISM_E_NOMEM, "tokenizer: out of memory");
    return st;
}
