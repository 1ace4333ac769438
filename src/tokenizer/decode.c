/* decode.c — ids -> text as HF Tokenizer::decode: ids become token strings
 * (special added tokens dropped when skip_special), then the decoder chain
 * (ByteLevel, Replace, ByteFallback, Fuse, Strip, Metaspace) runs over the
 * list of strings, and the results are concatenated. prism_decoder streams
 * the same text the way HF's DecodeStream does: it re-decodes a short window
 * of recent ids and emits only the new suffix, holding back text that ends in
 * an incomplete UTF-8 sequence (U+FFFD). */
#include "tokenizer/tokenizer_internal.h"
#include "util/error.h"

#include <stdlib.h>
#include <string.h>

static const char REPL_CHAR[] = "\xEF\xBF\xBD";

/* <0xNN> -> byte value, or -1 */
static int byte_token(const char *s, size_t n) {
    if (n != 6 || memcmp(s, "<0x", 3) != 0 || s[5] != '>') return -1;
    int v = 0;
    for (int i = 3; i < 5; i++) {
        char c = s[i];
        int d = c >= '0' && c <= '9' ? c - '0' : c >= 'A' && c <= 'F' ? c - 'A' + 10 : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
        if (d < 0) return -1;
        v = v * 16 + d;
    }
    return v;
}

static int dec_step(const tk_dec *d, const tk_pieces *in, tk_pieces *out, tk_buf *tmp) {
    tk_pieces_reset(out);
    switch (d->kind) {
    case DEC_BYTELEVEL: { /* all tokens -> one byte string -> lossy UTF-8 */
        tmp->len = 0;
        for (size_t i = 0; i < in->n; i++) {
            const char *s = in->buf.p + in->off[i];
            size_t n = in->len[i], mark = tmp->len;
            bool ok = true;
            for (size_t j = 0; j < n && ok;) {
                int l;
                uint32_t cp = tk_u8dec(s + j, n - j, &l);
                if (cp < 0x144 && tk_cp_to_byte[cp] >= 0) tk_buf_putc(tmp, (char)tk_cp_to_byte[cp]);
                else ok = false;
                j += (size_t)l;
            }
            if (!ok) { /* a char outside the byte alphabet: the token's own UTF-8 is used */
                tmp->len = mark;
                tk_buf_put(tmp, s, n);
            }
        }
        tk_buf lossy = {0};
        tk_buf_put_lossy(&lossy, tmp->p ? tmp->p : "", tmp->len);
        int r = lossy.oom || tk_pieces_add(out, lossy.p, lossy.len, false);
        if (lossy.len == 0) r = 0;
        free(lossy.p);
        return r;
    }
    case DEC_BYTEFALLBACK: {
        tmp->len = 0; /* pending bytes */
        int r = 0;
        for (size_t i = 0; i <= in->n && !r; i++) {
            int b = i < in->n ? byte_token(in->buf.p + in->off[i], in->len[i]) : -1;
            if (b >= 0) { tk_buf_putc(tmp, (char)b); continue; }
            if (tmp->len) {
                if (tk_u8invalid(tmp->p, tmp->len) == (size_t)-1) r = tk_pieces_add(out, tmp->p, tmp->len, false);
                else
                    for (size_t k = 0; k < tmp->len && !r; k++) r = tk_pieces_add(out, REPL_CHAR, 3, false);
                tmp->len = 0;
            }
            if (i < in->n && !r) r = tk_pieces_add(out, in->buf.p + in->off[i], in->len[i], false);
        }
        return r;
    }
    case DEC_FUSE: {
        tmp->len = 0;
        for (size_t i = 0; i < in->n; i++) tk_buf_put(tmp, in->buf.p + in->off[i], in->len[i]);
        return tmp->oom || (tmp->len && tk_pieces_add(out, tmp->p, tmp->len, false));
    }
    default: break;
    }
    /* per-token decoders */
    for (size_t i = 0; i < in->n; i++) {
        const char *s = in->buf.p + in->off[i];
        size_t n = in->len[i];
        tmp->len = 0;
        if (d->kind == DEC_REPLACE || d->kind == DEC_METASPACE) {
            const char *pat = d->kind == DEC_REPLACE ? d->a : d->repl;
            const char *with = d->kind == DEC_REPLACE ? d->b : " ";
            if (d->kind == DEC_METASPACE && i == 0 && d->prepend != PREPEND_NEVER) with = "";
            size_t pl = strlen(pat), wl = strlen(with), j = 0;
            while (pl && j < n) {
                const char *hit = pl <= n - j ? memmem(s + j, n - j, pat, pl) : NULL;
                if (!hit) break;
                tk_buf_put(tmp, s + j, (size_t)(hit - (s + j)));
                tk_buf_put(tmp, with, wl);
                j = (size_t)(hit - s) + pl;
            }
            tk_buf_put(tmp, s + j, n - j);
        } else if (d->kind == DEC_STRIP) {
            size_t a = 0, b = n;
            for (int k = 0; k < d->strip_start && a < b; k++) {
                int l;
                if (tk_u8dec(s + a, b - a, &l) != d->strip_cp) break;
                a += (size_t)l;
            }
            for (int k = 0; k < d->strip_stop && b > a; k++) {
                size_t p = b - 1;
                while (p > a && ((unsigned char)s[p] & 0xC0) == 0x80) p--;
                int l;
                if (tk_u8dec(s + p, b - p, &l) != d->strip_cp) break;
                b = p;
            }
            tk_buf_put(tmp, s + a, b - a);
        }
        if (tmp->oom) return -1;
        /* keep empty strings out: they contribute nothing to the joined text, but
         * Metaspace's "first token" is by position, so keep a placeholder */
        if (tmp->len) {
            if (tk_pieces_add(out, tmp->p, tmp->len, false)) return -1;
        } else if (tk_pieces_add(out, "", 0, false)) return -1;
    }
    return 0;
}

prism_status tk_decode(const prism_tokenizer *t, const int32_t *ids, size_t n_ids, bool skip_special, tk_buf *out) {
    tk_pieces a = {0}, b = {0};
    tk_buf tmp = {0};
    int fail = 0;
    out->len = 0;
    tk_buf_put(out, "", 0);
    for (size_t i = 0; i < n_ids && !fail; i++) {
        int32_t id = ids[i];
        if (id < 0 || id >= t->n_vocab || !t->tok_str[id]) continue; /* unknown ids are skipped, as in HF */
        if (skip_special && t->is_special[id]) continue;
        fail = tk_pieces_add(&a, t->tok_str[id], t->tok_len[id], false);
    }
    if (!t->has_decoder) {
        for (size_t i = 0; i < a.n; i++) {
            if (i) tk_buf_putc(out, ' ');
            tk_buf_put(out, a.buf.p + a.off[i], a.len[i]);
        }
    } else {
        for (int k = 0; k < t->n_dec && !fail; k++) {
            fail = dec_step(&t->dec[k], &a, &b, &tmp);
            tk_pieces swap = a;
            a = b;
            b = swap;
        }
        for (size_t i = 0; i < a.n; i++) tk_buf_put(out, a.buf.p + a.off[i], a.len[i]);
    }
    fail |= out->oom;
    tk_pieces_free(&a);
    tk_pieces_free(&b);
    free(tmp.p);
    return fail ? prism_error(PRISM_E_NOMEM, "tokenizer: out of memory while decoding") : PRISM_OK;
}

prism_status prism_detokenize(const prism_tokenizer *t, const int32_t *ids, size_t n_ids, bool skip_special, char **text) {
    if (!t || !text || (n_ids && !ids)) return prism_error(PRISM_E_ARG, "prism_detokenize: NULL argument");
    *text = NULL;
    tk_buf out = {0};
    prism_status st = tk_decode(t, ids, n_ids, skip_special, &out);
    if (st != PRISM_OK) { free(out.p); return st; }
    *text = out.p;
    return PRISM_OK;
}

/* ---------------------------------------------------------------- streaming */
struct prism_decoder {
    const prism_tokenizer *t;
    bool skip_special;
    int32_t *ids; /* window of recent ids */
    size_t n, cap;
    size_t prefix_index; /* ids[0..prefix_index) were decoded into prefix */
    tk_buf prefix;       /* text of the window already emitted */
    tk_buf cur, out;
};

prism_decoder *prism_decoder_new(const prism_tokenizer *t, bool skip_special) {
    if (!t) return NULL;
    prism_decoder *d = calloc(1, sizeof *d);
    if (!d) return NULL;
    d->t = t;
    d->skip_special = skip_special;
    tk_buf_put(&d->prefix, "", 0);
    tk_buf_put(&d->out, "", 0);
    if (d->prefix.oom || d->out.oom) { prism_decoder_free(d); return NULL; }
    return d;
}

void prism_decoder_free(prism_decoder *d) {
    if (!d) return;
    free(d->ids);
    free(d->prefix.p);
    free(d->cur.p);
    free(d->out.p);
    free(d);
}

static bool ends_incomplete(const tk_buf *b) {
    return b->len >= 3 && memcmp(b->p + b->len - 3, REPL_CHAR, 3) == 0;
}

const char *prism_decoder_push(prism_decoder *d, int32_t id) {
    if (!d) return NULL;
    if (d->n == d->cap) {
        size_t cap = d->cap ? d->cap * 2 : 16;
        int32_t *p = realloc(d->ids, cap * sizeof *p);
        if (!p) return NULL;
        d->ids = p;
        d->cap = cap;
    }
    d->ids[d->n++] = id;
    d->out.len = 0;
    d->out.p[0] = 0;
    const prism_tokenizer *t = d->t;
    if (d->skip_special && prism_tokenizer_is_special(t, id)) return d->out.p; /* invisible: cannot end a byte run */
    /* ByteFallback renders a run of byte tokens as UTF-8 only if the whole run
     * is valid, so nothing is final while the run may still grow. */
    if (t->dec_byte_runs && id >= 0 && id < t->n_vocab && t->tok_str[id] && !t->is_added[id] &&
        byte_token(t->tok_str[id], t->tok_len[id]) >= 0)
        return d->out.p;
    if (tk_decode(d->t, d->ids, d->n, d->skip_special, &d->cur) != PRISM_OK) return NULL;
    if (d->cur.len > d->prefix.len && !ends_incomplete(&d->cur) &&
        memcmp(d->cur.p, d->prefix.p, d->prefix.len) == 0) {
        tk_buf_put(&d->out, d->cur.p + d->prefix.len, d->cur.len - d->prefix.len);
        /* the window becomes the ids since the previous emission: enough left
         * context for decoders that look at neighbours (Strip, Metaspace) */
        size_t new_prefix_index = d->n - d->prefix_index;
        memmove(d->ids, d->ids + d->prefix_index, new_prefix_index * sizeof *d->ids);
        d->n = new_prefix_index;
        d->prefix_index = new_prefix_index;
        if (tk_decode(d->t, d->ids, d->n, d->skip_special, &d->prefix) != PRISM_OK) return NULL;
    }
    return d->out.oom ? NULL : d->out.p;
}

const char *prism_decoder_flush(prism_decoder *d) {
    if (!d) return NULL;
    d->out.len = 0;
    d->out.p[0] = 0;
    if (d->n) {
        if (tk_decode(d->t, d->ids, d->n, d->skip_special, &d->cur) != PRISM_OK) return NULL;
        if (d->cur.len > d->prefix.len && memcmp(d->cur.p, d->prefix.p, d->prefix.len) == 0)
            tk_buf_put(&d->out, d->cur.p + d->prefix.len, d->cur.len - d->prefix.len);
    }
    d->n = 0;
    d->prefix_index = 0;
    d->prefix.len = 0;
    d->prefix.p[0] = 0;
    return d->out.oom ? NULL : d->out.p;
}
