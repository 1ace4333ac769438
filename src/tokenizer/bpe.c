/* bpe.c — the BPE model of HF tokenizers: a word starts as one symbol per
 * character (or per byte with byte_fallback, or <unk>), then the adjacent pair
 * with the lowest merge rank is merged until none is left; ties go to the
 * leftmost pair. A binary min-heap keyed (rank, position) gives O(n log n). */
#include "tokenizer/tokenizer_internal.h"
#include "util/error.h"

#include <stdlib.h>
#include <string.h>

static inline uint64_t pair_key(int32_t a, int32_t b) { return ((uint64_t)(uint32_t)a << 32 | (uint32_t)b) + 1; }
static inline uint64_t pair_hash(uint64_t k) { k *= 0x9E3779B97F4A7C15ull; return k ^ (k >> 31); }

int tk_merges_init(tk_merges *m, size_t n) {
    uint64_t sz = 16;
    while (sz < n * 2 + 1) sz *= 2;
    m->keys = calloc(sz, sizeof *m->keys);
    m->rank = malloc(sz * sizeof *m->rank);
    m->merged = malloc(sz * sizeof *m->merged);
    m->mask = sz - 1;
    return m->keys && m->rank && m->merged ? 0 : -1;
}

void tk_merges_free(tk_merges *m) {
    free(m->keys);
    free(m->rank);
    free(m->merged);
    memset(m, 0, sizeof *m);
}

void tk_merges_put(tk_merges *m, int32_t a, int32_t b, uint32_t rank, int32_t merged) {
    uint64_t k = pair_key(a, b), h = pair_hash(k) & m->mask;
    while (m->keys[h] && m->keys[h] != k) h = (h + 1) & m->mask;
    m->keys[h] = k;
    m->rank[h] = rank;
    m->merged[h] = merged;
}

static inline bool merges_get(const tk_merges *m, int32_t a, int32_t b, uint32_t *rank, int32_t *merged) {
    uint64_t k = pair_key(a, b), h = pair_hash(k) & m->mask;
    for (; m->keys[h]; h = (h + 1) & m->mask)
        if (m->keys[h] == k) { *rank = m->rank[h]; *merged = m->merged[h]; return true; }
    return false;
}

/* ---------------------------------------------------------------- min-heap of (rank << 32 | pos) */
static void heap_push(uint64_t *h, size_t *n, uint64_t v) {
    size_t i = (*n)++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (h[p] <= v) break;
        h[i] = h[p];
        i = p;
    }
    h[i] = v;
}

static uint64_t heap_pop(uint64_t *h, size_t *n) {
    uint64_t top = h[0], v = h[--(*n)];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= *n) break;
        if (c + 1 < *n && h[c + 1] < h[c]) c++;
        if (h[c] >= v) break;
        h[i] = h[c];
        i = c;
    }
    if (*n) h[i] = v;
    return top;
}

static int push_id(int32_t **ids, size_t *n, size_t *cap, int32_t id) {
    if (*n == *cap) {
        size_t c = *cap ? *cap * 2 : 64;
        int32_t *p = realloc(*ids, c * sizeof *p);
        if (!p) return -1;
        *ids = p;
        *cap = c;
    }
    (*ids)[(*n)++] = id;
    return 0;
}

prism_status tk_bpe_word(const prism_tokenizer *t, const char *s, size_t n, int32_t **ids, size_t *n_ids,
                         size_t *cap) {
    if (t->ignore_merges) {
        int32_t id = tk_strmap_get(&t->vocab, s, n);
        if (id >= 0) return push_id(ids, n_ids, cap, id) ? prism_error(PRISM_E_NOMEM, "tokenizer: out of memory") : PRISM_OK;
    }
    /* symbols: sym[i] id, prv/nxt doubly linked list; at most n symbols (one per byte) */
    enum { SMALL = 64 };
    int32_t sym_s[SMALL], prv_s[SMALL], nxt_s[SMALL];
    uint64_t heap_s[3 * SMALL];
    int32_t *sym = sym_s, *prv = prv_s, *nxt = nxt_s;
    uint64_t *heap = heap_s;
    if (n > SMALL) {
        sym = malloc(n * sizeof *sym);
        prv = malloc(n * sizeof *prv);
        nxt = malloc(n * sizeof *nxt);
        heap = malloc(3 * n * sizeof *heap);
        if (!sym || !prv || !nxt || !heap) {
            free(sym); free(prv); free(nxt); free(heap);
            return prism_error(PRISM_E_NOMEM, "tokenizer: out of memory");
        }
    }
    size_t ns = 0;
    bool last_unk = false;
    for (size_t i = 0; i < n;) {
        size_t l = (size_t)tk_u8len((unsigned char)s[i]);
        if (l > n - i) l = n - i;
        int32_t id = tk_strmap_get(&t->vocab, s + i, l);
        if (id >= 0) {
            sym[ns++] = id;
            last_unk = false;
        } else {
            bool bytes_ok = t->byte_fallback;
            for (size_t j = 0; j < l && bytes_ok; j++) bytes_ok = t->byte_ids[(unsigned char)s[i + j]] >= 0;
            if (bytes_ok) {
                for (size_t j = 0; j < l; j++) sym[ns++] = t->byte_ids[(unsigned char)s[i + j]];
                last_unk = false;
            } else if (t->unk_id >= 0) {
                if (!(t->fuse_unk && last_unk)) sym[ns++] = t->unk_id;
                last_unk = true;
            }
        }
        i += l;
    }
    size_t nh = 0;
    for (size_t i = 0; i < ns; i++) {
        prv[i] = (int32_t)i - 1;
        nxt[i] = i + 1 < ns ? (int32_t)i + 1 : -1;
        uint32_t r;
        int32_t m;
        if (i + 1 < ns && merges_get(&t->merges, sym[i], sym[i + 1], &r, &m)) heap_push(heap, &nh, (uint64_t)r << 32 | i);
    }
    /* dead symbols get sym = -1 */
    while (nh) {
        uint64_t top = heap_pop(heap, &nh);
        uint32_t rank = (uint32_t)(top >> 32);
        int32_t pos = (int32_t)(top & 0xffffffffu);
        if (sym[pos] < 0 || nxt[pos] < 0) continue;
        int32_t right = nxt[pos];
        uint32_t r;
        int32_t m;
        if (!merges_get(&t->merges, sym[pos], sym[right], &r, &m) || r != rank) continue;
        sym[pos] = m;
        sym[right] = -1;
        nxt[pos] = nxt[right];
        if (nxt[right] >= 0) prv[nxt[right]] = pos;
        if (prv[pos] >= 0 && merges_get(&t->merges, sym[prv[pos]], sym[pos], &r, &m))
            heap_push(heap, &nh, (uint64_t)r << 32 | (uint32_t)prv[pos]);
        if (nxt[pos] >= 0 && merges_get(&t->merges, sym[pos], sym[nxt[pos]], &r, &m))
            heap_push(heap, &nh, (uint64_t)r << 32 | (uint32_t)pos);
    }
    int fail = 0;
    for (int32_t i = ns ? 0 : -1; i >= 0 && !fail; i = nxt[i]) fail = push_id(ids, n_ids, cap, sym[i]);
    if (sym != sym_s) { free(sym); free(prv); free(nxt); free(heap); }
    return fail ? prism_error(PRISM_E_NOMEM, "tokenizer: out of memory") : PRISM_OK;
}
