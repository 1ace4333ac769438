/* util.c — byte buffers, UTF-8 helpers (incl. Rust's from_utf8_lossy rules) and
 * the open-addressing string -> id hash map used for vocabularies. */
#include "tokenizer/tokenizer_internal.h"

#include <stdlib.h>
#include <string.h>

void tk_buf_put(tk_buf *b, const void *s, size_t n) {
    if (b->oom) return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 64;
        while (cap < b->len + n + 1) cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) { b->oom = true; return; }
        b->p = p;
        b->cap = cap;
    }
    if (n) memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = 0;
}

void tk_buf_put_cp(tk_buf *b, uint32_t cp) {
    char u[4];
    int n;
    if (cp < 0x80) { u[0] = (char)cp; n = 1; }
    else if (cp < 0x800) { u[0] = (char)(0xC0 | cp >> 6); u[1] = (char)(0x80 | (cp & 0x3F)); n = 2; }
    else if (cp < 0x10000) {
        u[0] = (char)(0xE0 | cp >> 12); u[1] = (char)(0x80 | ((cp >> 6) & 0x3F)); u[2] = (char)(0x80 | (cp & 0x3F)); n = 3;
    } else {
        u[0] = (char)(0xF0 | cp >> 18); u[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
        u[2] = (char)(0x80 | ((cp >> 6) & 0x3F)); u[3] = (char)(0x80 | (cp & 0x3F)); n = 4;
    }
    tk_buf_put(b, u, (size_t)n);
}

uint32_t tk_u8dec(const char *s, size_t n, int *len) {
    const unsigned char *u = (const unsigned char *)s;
    int l = tk_u8len(u[0]);
    if ((size_t)l > n) l = 1;
    *len = l;
    switch (l) {
    case 1: return u[0];
    case 2: return (uint32_t)(u[0] & 0x1F) << 6 | (u[1] & 0x3F);
    case 3: return (uint32_t)(u[0] & 0x0F) << 12 | (uint32_t)(u[1] & 0x3F) << 6 | (u[2] & 0x3F);
    default: return (uint32_t)(u[0] & 0x07) << 18 | (uint32_t)(u[1] & 0x3F) << 12 | (uint32_t)(u[2] & 0x3F) << 6 | (u[3] & 0x3F);
    }
}

/* Number of bytes of the longest valid prefix of a UTF-8 sequence at s (0 if s[0]
 * cannot start one); *complete says whether that prefix is a whole character. */
static size_t u8_valid_prefix(const unsigned char *s, size_t n, bool *complete) {
    unsigned char c = s[0];
    *complete = false;
    if (c < 0x80) { *complete = true; return 1; }
    int need;
    unsigned char lo = 0x80, hi = 0xBF;
    if (c >= 0xC2 && c <= 0xDF) need = 1;
    else if (c >= 0xE0 && c <= 0xEF) { need = 2; if (c == 0xE0) lo = 0xA0; if (c == 0xED) hi = 0x9F; }
    else if (c >= 0xF0 && c <= 0xF4) { need = 3; if (c == 0xF0) lo = 0x90; if (c == 0xF4) hi = 0x8F; }
    else return 0;
    size_t i = 1;
    for (int k = 0; k < need; k++, i++) {
        if (i >= n || s[i] < lo || s[i] > hi) return i;
        lo = 0x80; hi = 0xBF;
    }
    *complete = true;
    return i;
}

size_t tk_u8invalid(const char *s, size_t n) {
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0;
    while (i < n) {
        if (u[i] < 0x80) { i++; continue; }
        bool ok;
        size_t l = u8_valid_prefix(u + i, n - i, &ok);
        if (!ok) return i;
        i += l;
    }
    return (size_t)-1;
}

void tk_buf_put_lossy(tk_buf *b, const char *s, size_t n) {
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0, run = 0; /* run: start of pending valid bytes */
    while (i < n) {
        if (u[i] < 0x80) { i++; continue; }
        bool ok;
        size_t l = u8_valid_prefix(u + i, n - i, &ok);
        if (ok) { i += l; continue; }
        tk_buf_put(b, s + run, i - run);
        tk_buf_put(b, "\xEF\xBF\xBD", 3);
        i += l ? l : 1;
        run = i;
    }
    tk_buf_put(b, s + run, n - run);
}

bool tk_is_space_cp(uint32_t c) {
    return (c >= 9 && c <= 13) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 || (c >= 0x2000 && c <= 0x200A) ||
           c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

/* ---------------------------------------------------------------- string map */
static uint64_t hash_bytes(const char *s, size_t n) {
    uint64_t h = 0xcbf29ce484222325ull; /* FNV-1a */
    for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)s[i]) * 0x100000001b3ull;
    return h ^ (h >> 29);
}

int tk_strmap_init(tk_strmap *m, uint32_t expected) {
    memset(m, 0, sizeof *m);
    uint32_t sz = 16;
    while (sz < expected * 2u) sz *= 2;
    m->slots = calloc(sz, sizeof *m->slots);
    m->cap = expected > 4 ? expected : 4;
    m->key = malloc(m->cap * sizeof *m->key);
    m->klen = malloc(m->cap * sizeof *m->klen);
    m->val = malloc(m->cap * sizeof *m->val);
    m->mask = sz - 1;
    return m->slots && m->key && m->klen && m->val ? 0 : -1;
}

void tk_strmap_free(tk_strmap *m) {
    free(m->slots);
    free(m->key);
    free(m->klen);
    free(m->val);
    memset(m, 0, sizeof *m);
}

static int strmap_grow(tk_strmap *m) {
    uint32_t sz = (m->mask + 1) * 2;
    uint32_t *slots = calloc(sz, sizeof *slots);
    if (!slots) return -1;
    for (uint32_t i = 0; i < m->n; i++) {
        uint32_t h = (uint32_t)hash_bytes(m->key[i], m->klen[i]) & (sz - 1);
        while (slots[h]) h = (h + 1) & (sz - 1);
        slots[h] = i + 1;
    }
    free(m->slots);
    m->slots = slots;
    m->mask = sz - 1;
    return 0;
}

int tk_strmap_put(tk_strmap *m, const char *k, uint32_t klen, int32_t v) {
    uint32_t h = (uint32_t)hash_bytes(k, klen) & m->mask;
    for (; m->slots[h]; h = (h + 1) & m->mask) {
        uint32_t i = m->slots[h] - 1;
        if (m->klen[i] == klen && memcmp(m->key[i], k, klen) == 0) { m->val[i] = v; return 0; }
    }
    if (m->n == m->cap) {
        uint32_t cap = m->cap * 2;
        const char **key = realloc(m->key, cap * sizeof *key);
        if (key) m->key = key;
        uint32_t *kl = realloc(m->klen, cap * sizeof *kl);
        if (kl) m->klen = kl;
        int32_t *val = realloc(m->val, cap * sizeof *val);
        if (val) m->val = val;
        if (!key || !kl || !val) return -1;
        m->cap = cap;
    }
    m->key[m->n] = k;
    m->klen[m->n] = klen;
    m->val[m->n] = v;
    m->slots[h] = ++m->n;
    if (m->n * 2 > m->mask + 1) return strmap_grow(m);
    return 0;
}

int32_t tk_strmap_get(const tk_strmap *m, const char *k, size_t klen) {
    if (!m->slots) return -1;
    uint32_t h = (uint32_t)hash_bytes(k, klen) & m->mask;
    for (; m->slots[h]; h = (h + 1) & m->mask) {
        uint32_t i = m->slots[h] - 1;
        if (m->klen[i] == klen && memcmp(m->key[i], k, klen) == 0) return m->val[i];
    }
    return -1;
}
