/* text.c — query cleaning, near-duplicate detection and UTF-8 truncation for
 * the PRISM data pipeline (the rules are listed in text.h). */
#include "prism/text.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* ---------------------------------------------------------------- UTF-8 */

/* Length of the valid UTF-8 sequence at p (n bytes available) and its code
 * point; 0 when the bytes there are not valid UTF-8 (overlong, surrogate,
 * truncated, > U+10FFFF). */
static size_t utf8_decode(const unsigned char *p, size_t n, uint32_t *cp) {
    if (n == 0) return 0;
    unsigned c = p[0];
    if (c < 0x80) {
        *cp = c;
        return 1;
    }
    size_t len;
    uint32_t v, min;
    if ((c & 0xE0) == 0xC0) len = 2, v = c & 0x1F, min = 0x80;
    else if ((c & 0xF0) == 0xE0) len = 3, v = c & 0x0F, min = 0x800;
    else if ((c & 0xF8) == 0xF0) len = 4, v = c & 0x07, min = 0x10000;
    else return 0;
    if (n < len) return 0;
    for (size_t i = 1; i < len; i++) {
        if ((p[i] & 0xC0) != 0x80) return 0;
        v = (v << 6) | (p[i] & 0x3F);
    }
    if (v < min || v > 0x10FFFF || (v >= 0xD800 && v <= 0xDFFF)) return 0;
    *cp = v;
    return len;
}

size_t utf8_count(const char *s) {
    size_t n = 0;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) n += (*p & 0xC0) != 0x80;
    return n;
}

size_t utf8_prefix_len(const char *s, size_t max_bytes) {
    size_t len = strlen(s);
    if (len <= max_bytes) return len;
    /* s[cut] starts the first code point left out; back up over at most three
     * continuation bytes to its lead byte. */
    size_t cut = max_bytes;
    for (int k = 0; k < 3 && cut > 0 && ((unsigned char)s[cut] & 0xC0) == 0x80; k++) cut--;
    if (((unsigned char)s[cut] & 0xC0) == 0x80) cut = max_bytes; /* stray continuation bytes: nothing to split */
    return cut;
}

static char *dup_n(const char *s, size_t n) {
    char *r = malloc(n + 1);
    if (!r) return NULL;
    memcpy(r, s, n);
    r[n] = 0;
    return r;
}

char *truncate_utf8(const char *s, size_t max_bytes) { return dup_n(s, utf8_prefix_len(s, max_bytes)); }

static bool ascii_space(unsigned char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }

char *truncate_utf8_words(const char *s, size_t max_bytes) {
    size_t cut = utf8_prefix_len(s, max_bytes);
    if (s[cut] == 0) return dup_n(s, cut);
    size_t end = cut;
    if (!ascii_space((unsigned char)s[cut])) {
        size_t j = cut;
        while (j > 0 && !ascii_space((unsigned char)s[j - 1])) j--;
        if (j > 0 && j - 1 >= max_bytes / 2) end = j - 1;
    }
    while (end > 0 && ascii_space((unsigned char)s[end - 1])) end--;
    if (end < max_bytes / 2 && end < cut) end = cut; /* all whitespace: keep the plain cut */
    return dup_n(s, end);
}

/* ---------------------------------------------------------------- query cleaning */

/* Copy of raw with invalid UTF-8 replaced by U+FFFD and control characters
 * other than '\n' replaced by spaces. */
static char *sanitize(const char *raw) {
    size_t n = strlen(raw);
    char *out = malloc(3 * n + 1), *o = out;
    if (!out) return NULL;
    const unsigned char *p = (const unsigned char *)raw, *end = p + n;
    while (p < end) {
        uint32_t cp;
        size_t k = utf8_decode(p, (size_t)(end - p), &cp);
        if (k == 0) {
            memcpy(o, "\xEF\xBF\xBD", 3);
            o += 3;
            p++;
        } else if ((cp < 0x20 && cp != '\n') || cp == 0x7F) {
            *o++ = ' ';
            p++;
        } else {
            memcpy(o, p, k);
            o += k;
            p += k;
        }
    }
    *o = 0;
    return out;
}

/* A line being cleaned: bytes [b, e) of s. */
typedef struct {
    const char *s;
    size_t b, e;
} span;

static size_t sp_len(const span *l) { return l->e - l->b; }
static const unsigned char *sp_at(const span *l, size_t i) { return (const unsigned char *)l->s + l->b + i; }

static bool starts_with(const span *l, size_t at, const char *pfx) {
    size_t k = strlen(pfx);
    return at + k <= sp_len(l) && memcmp(l->s + l->b + at, pfx, k) == 0;
}

static bool ends_with(const span *l, const char *sfx) {
    size_t k = strlen(sfx);
    return k <= sp_len(l) && memcmp(l->s + l->e - k, sfx, k) == 0;
}

static const char *const k_spaces[] = {"\xC2\xA0", "\xE3\x80\x80", "\xEF\xBB\xBF"}; /* NBSP, U+3000, BOM */

static bool trim(span *l) {
    size_t b0 = l->b, e0 = l->e;
    for (bool again = true; again && l->b < l->e;) {
        again = false;
        if (ascii_space(*sp_at(l, 0))) {
            l->b++;
            again = true;
            continue;
        }
        for (size_t i = 0; i < 3; i++)
            if (starts_with(l, 0, k_spaces[i])) {
                l->b += strlen(k_spaces[i]);
                again = true;
                break;
            }
    }
    for (bool again = true; again && l->b < l->e;) {
        again = false;
        if (ascii_space(*sp_at(l, sp_len(l) - 1))) {
            l->e--;
            again = true;
            continue;
        }
        for (size_t i = 0; i < 3; i++)
            if (ends_with(l, k_spaces[i])) {
                l->e -= strlen(k_spaces[i]);
                again = true;
                break;
            }
    }
    return l->b != b0 || l->e != e0;
}

/* True at the end of the line or before whitespace (ASCII or NBSP/U+3000). */
static bool boundary(const span *l, size_t at) {
    if (at >= sp_len(l)) return true;
    if (ascii_space(*sp_at(l, at))) return true;
    return starts_with(l, at, k_spaces[0]) || starts_with(l, at, k_spaces[1]);
}

static size_t skip_marks(const span *l, size_t i) {
    while (i < sp_len(l) && (*sp_at(l, i) == '*' || *sp_at(l, i) == '_')) i++;
    return i;
}

static size_t skip_blanks(const span *l, size_t i) {
    while (i < sp_len(l) && (*sp_at(l, i) == ' ' || *sp_at(l, i) == '\t')) i++;
    return i;
}

static size_t skip_digits(const span *l, size_t i, size_t *nd) {
    size_t j = i;
    while (j < sp_len(l) && *sp_at(l, j) >= '0' && *sp_at(l, j) <= '9') j++;
    *nd = j - i;
    return j;
}

static const char *const k_bullets[] = {"- ", "* ", "+ ", "\xE2\x80\xA2", "\xC2\xB7", "\xE2\x80\x93", "\xE2\x80\x94"};

static bool strip_bullet(span *l) {
    for (size_t i = 0; i < sizeof k_bullets / sizeof *k_bullets; i++) {
        size_t k = strlen(k_bullets[i]);
        if (starts_with(l, 0, k_bullets[i]) && (k_bullets[i][k - 1] == ' ' || boundary(l, k))) {
            l->b += k;
            return true;
        }
    }
    if (sp_len(l) == 1 && strchr("-*+", *sp_at(l, 0))) { /* a bullet with nothing after it */
        l->b++;
        return true;
    }
    return false;
}

static bool strip_heading(span *l) {
    size_t i = 0;
    while (i < sp_len(l) && *sp_at(l, i) == '#') i++;
    if (i == 0 || i > 6 || !boundary(l, i)) return false;
    l->b += i;
    return true;
}

/* "1." "1)" "1:" "1 -" "(1)" "[1]" "#1" "#1:" "**1.**", followed by a space or the end. */
static bool strip_number(span *l) {
    size_t i = skip_marks(l, 0), nd;
    unsigned char open = i < sp_len(l) ? *sp_at(l, i) : 0;
    if (open == '(' || open == '[' || open == '#') i++;
    else open = 0;
    i = skip_digits(l, i, &nd);
    if (nd == 0 || nd > 3) return false;
    bool marked = open == '#';
    if (open == '(' || open == '[') {
        if (i >= sp_len(l) || *sp_at(l, i) != (open == '(' ? ')' : ']')) return false;
        i++;
        marked = true;
    }
    i = skip_marks(l, i);
    if (i < sp_len(l) && strchr(".):", *sp_at(l, i))) {
        i++;
        marked = true;
    } else if (starts_with(l, i, " - ") || starts_with(l, i, " \xE2\x80\x93 ")) {
        i += *sp_at(l, i + 1) == '-' ? 2 : 4;
        marked = true;
    }
    i = skip_marks(l, i);
    if (!marked || !boundary(l, i)) return false;
    l->b += i;
    return true;
}

/* Labels, longest first so "user query" wins over "user". */
static const char *const k_labels[] = {"generated question", "example question", "sample question", "generated query",
                                       "example query", "sample query", "user question", "new question",
                                       "user query", "user prompt", "question", "prompt", "query", "user", "q"};

static bool match_ci(const span *l, size_t at, const char *word) {
    size_t k = strlen(word);
    if (at + k > sp_len(l)) return false;
    for (size_t i = 0; i < k; i++) {
        unsigned char c = *sp_at(l, at + i);
        if (c >= 'A' && c <= 'Z') c = (unsigned char)(c - 'A' + 'a');
        if (c != (unsigned char)word[i]) return false;
    }
    return true;
}

/* "Question:", "Q1:", "Question #2.", "**Question 1**:", "__Query:__", "Query：" ... */
static bool strip_label(span *l) {
    size_t i0 = skip_marks(l, 0);
    for (size_t w = 0; w < sizeof k_labels / sizeof *k_labels; w++) {
        if (!match_ci(l, i0, k_labels[w])) continue;
        size_t i = i0 + strlen(k_labels[w]), nd = 0;
        unsigned char c = i < sp_len(l) ? *sp_at(l, i) : 0;
        if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')) continue; /* "Questions", "Queryable" */
        i = skip_blanks(l, i);
        if (i < sp_len(l) && *sp_at(l, i) == '#') i++;
        i = skip_digits(l, i, &nd);
        if (nd > 3) continue;
        i = skip_marks(l, i);
        i = skip_blanks(l, i);
        bool wide = false;
        if (starts_with(l, i, ":")) i++;
        else if (starts_with(l, i, "\xEF\xBC\x9A")) i += 3, wide = true; /* full-width colon: no space after */
        else if (nd > 0 && i < sp_len(l) && strchr(".)-", *sp_at(l, i))) i++;
        else continue;
        i = skip_marks(l, i);
        if (!wide && !boundary(l, i)) continue;
        l->b += i;
        return true;
    }
    return false;
}

/* Quote characters: both-ends set and the subset that may be stripped alone. */
static const char *const k_quotes[] = {"\"", "`", "\xE2\x80\x9C", "\xE2\x80\x9D", "\xE2\x80\x9E", "\xC2\xAB",
                                       "\xC2\xBB", "\xE2\x80\xB9", "\xE2\x80\xBA", "\xE3\x80\x8C", "\xE3\x80\x8D",
                                       "\xE3\x80\x8E", "\xE3\x80\x8F"};
#define N_QUOTES (sizeof k_quotes / sizeof *k_quotes)
#define N_LONE_QUOTES 11 /* the first 11: not 『 』 (rare alone) */
static const char *const k_squotes_open[] = {"'", "\xE2\x80\x98"};
static const char *const k_squotes_close[] = {"'", "\xE2\x80\x99"};

static size_t quote_at_start(const span *l, const char *const *set, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (starts_with(l, 0, set[i])) return strlen(set[i]);
    return 0;
}

static size_t quote_at_end(const span *l, const char *const *set, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (ends_with(l, set[i])) return strlen(set[i]);
    return 0;
}

/* True when any quote character of the set occurs in bytes [from, to) of the line. */
static bool has_quote(const span *l, size_t from, size_t to) {
    for (size_t i = from; i < to; i++)
        for (size_t q = 0; q < N_QUOTES; q++)
            if (i + strlen(k_quotes[q]) <= to && starts_with(l, i, k_quotes[q])) return true;
    return false;
}

static bool strip_quotes(span *l) {
    size_t a = quote_at_start(l, k_quotes, N_QUOTES), z = quote_at_end(l, k_quotes, N_QUOTES);
    if (a && z && a + z <= sp_len(l)) {
        l->b += a;
        l->e -= z;
        return true;
    }
    a = quote_at_start(l, k_squotes_open, 2);
    z = quote_at_end(l, k_squotes_close, 2);
    if (a && z && a + z <= sp_len(l)) {
        l->b += a;
        l->e -= z;
        return true;
    }
    a = quote_at_start(l, k_quotes, N_LONE_QUOTES);
    if (a && !has_quote(l, a, sp_len(l))) {
        l->b += a;
        return true;
    }
    z = quote_at_end(l, k_quotes, N_LONE_QUOTES);
    if (z && !has_quote(l, 0, sp_len(l) - z)) {
        l->e -= z;
        return true;
    }
    return false;
}

static bool strip_emphasis(span *l) {
    static const char *const marks[] = {"***", "___", "**", "__", "*", "_"};
    for (size_t m = 0; m < 6; m++) {
        size_t k = strlen(marks[m]);
        if (sp_len(l) <= 2 * k || !starts_with(l, 0, marks[m]) || !ends_with(l, marks[m])) continue;
        bool inside = false;
        for (size_t i = k; i + k <= sp_len(l) - k && !inside; i++) inside = starts_with(l, i, marks[m]);
        if (inside) continue;
        l->b += k;
        l->e -= k;
        return true;
    }
    return false;
}

char *clean_query(const char *raw) {
    if (!raw) return NULL;
    char *s = sanitize(raw);
    if (!s) return NULL;
    char *result = NULL;
    for (size_t pos = 0; s[pos] && !result;) {
        const char *nl = strchr(s + pos, '\n');
        size_t end = nl ? (size_t)(nl - s) : strlen(s);
        span l = {s, pos, end};
        pos = nl ? end + 1 : end;
        trim(&l);
        if (starts_with(&l, 0, "```")) continue; /* code fence */
        for (bool changed = true; changed && l.b < l.e;) {
            changed = strip_label(&l) || strip_number(&l) || strip_bullet(&l) || strip_heading(&l) ||
                      strip_quotes(&l) || strip_emphasis(&l);
            trim(&l);
        }
        if (l.b == l.e) continue;
        result = dup_n(s + l.b, sp_len(&l));
        if (!result) break;
    }
    free(s);
    if (result && utf8_count(result) < CLEAN_QUERY_MIN_CHARS) {
        free(result);
        result = NULL;
    }
    return result;
}

/* ---------------------------------------------------------------- near-duplicates */

#define SHINGLE 3 /* code points; see text.h for why 3 */

typedef struct {
    char *norm;      /* normalised text */
    uint64_t *sh;    /* [n] sorted distinct shingle hashes */
    size_t n;
} shingles;

static void shingles_clear(shingles *x) {
    free(x->norm);
    free(x->sh);
}

static int cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static uint64_t hash_cps(const uint32_t *cp, size_t n) {
    uint64_t h = 0xcbf29ce484222325ULL;
    for (size_t i = 0; i < n; i++)
        for (int b = 0; b < 4; b++) {
            h ^= (cp[i] >> (8 * b)) & 0xFF;
            h *= 0x100000001b3ULL;
        }
    return h;
}

/* Normalises text and builds its shingle set; false on allocation failure. */
static bool shingles_build(const char *text, shingles *x) {
    memset(x, 0, sizeof *x);
    size_t len = strlen(text);
    x->norm = malloc(len + 1);
    uint32_t *cps = malloc((len + 1) * sizeof *cps);
    if (!x->norm || !cps) goto fail;
    size_t nb = 0, nc = 0;
    const unsigned char *p = (const unsigned char *)text, *end = p + len;
    bool pending_space = false;
    while (p < end) {
        uint32_t cp;
        size_t k = utf8_decode(p, (size_t)(end - p), &cp);
        if (k == 0) cp = 0xFFFD, k = 1;
        bool keep = cp >= 0x80 || (cp >= '0' && cp <= '9') || (cp >= 'a' && cp <= 'z') || (cp >= 'A' && cp <= 'Z');
        if (cp == 0xA0 || cp == 0x3000) keep = false;
        if (!keep) {
            pending_space = nc > 0;
            p += k;
            continue;
        }
        if (pending_space) {
            x->norm[nb++] = ' ';
            cps[nc++] = ' ';
            pending_space = false;
        }
        if (cp >= 'A' && cp <= 'Z') cp += 'a' - 'A';
        if (cp < 0x80) x->norm[nb++] = (char)cp;
        else {
            memcpy(x->norm + nb, p, k);
            nb += k;
        }
        cps[nc++] = cp;
        p += k;
    }
    x->norm[nb] = 0;
    size_t ns = nc == 0 ? 0 : nc < SHINGLE ? 1 : nc - SHINGLE + 1;
    x->sh = malloc((ns ? ns : 1) * sizeof *x->sh);
    if (!x->sh) goto fail;
    for (size_t i = 0; i < ns; i++) x->sh[i] = hash_cps(cps + i, nc < SHINGLE ? nc : SHINGLE);
    qsort(x->sh, ns, sizeof *x->sh, cmp_u64);
    size_t u = 0;
    for (size_t i = 0; i < ns; i++)
        if (u == 0 || x->sh[i] != x->sh[u - 1]) x->sh[u++] = x->sh[i];
    x->n = u;
    free(cps);
    return true;
fail:
    free(cps);
    shingles_clear(x);
    memset(x, 0, sizeof *x);
    return false;
}

static double jaccard(const shingles *a, const shingles *b) {
    if (a->n == 0 && b->n == 0) return 1.0;
    size_t i = 0, j = 0, common = 0;
    while (i < a->n && j < b->n) {
        if (a->sh[i] == b->sh[j]) common++, i++, j++;
        else if (a->sh[i] < b->sh[j]) i++;
        else j++;
    }
    return (double)common / (double)(a->n + b->n - common);
}

static bool is_dup(const shingles *a, const shingles *b, double th) {
    if (!strcmp(a->norm, b->norm)) return true;
    size_t lo = a->n < b->n ? a->n : b->n, hi = a->n < b->n ? b->n : a->n;
    if (hi && (double)lo / (double)hi < th) return false; /* Jaccard <= lo/hi */
    return jaccard(a, b) >= th;
}

double text_similarity(const char *a, const char *b) {
    shingles x, y;
    if (!shingles_build(a, &x)) return 0.0;
    if (!shingles_build(b, &y)) {
        shingles_clear(&x);
        return 0.0;
    }
    double r = !strcmp(x.norm, y.norm) ? 1.0 : jaccard(&x, &y);
    shingles_clear(&x);
    shingles_clear(&y);
    return r;
}

bool near_duplicate(const char *a, const char *b, double threshold) {
    if (threshold <= 0) threshold = NEAR_DUP_THRESHOLD;
    shingles x, y;
    if (!shingles_build(a, &x)) return false;
    if (!shingles_build(b, &y)) {
        shingles_clear(&x);
        return false;
    }
    bool r = is_dup(&x, &y, threshold);
    shingles_clear(&x);
    shingles_clear(&y);
    return r;
}

struct dedup_set {
    double threshold;
    shingles *e;
    size_t n, cap;
};

dedup_set *dedup_new(double threshold) {
    dedup_set *d = calloc(1, sizeof *d);
    if (d) d->threshold = threshold > 0 ? threshold : NEAR_DUP_THRESHOLD;
    return d;
}

static bool find_dup(const dedup_set *d, const shingles *x) {
    for (size_t i = 0; i < d->n; i++)
        if (is_dup(&d->e[i], x, d->threshold)) return true;
    return false;
}

bool dedup_contains(const dedup_set *d, const char *text) {
    shingles x;
    if (!shingles_build(text, &x)) return false;
    bool r = find_dup(d, &x);
    shingles_clear(&x);
    return r;
}

bool dedup_add(dedup_set *d, const char *text) {
    shingles x;
    if (!shingles_build(text, &x)) return true;
    if (find_dup(d, &x)) {
        shingles_clear(&x);
        return false;
    }
    if (d->n == d->cap) {
        size_t nc = d->cap ? 2 * d->cap : 64;
        shingles *e = realloc(d->e, nc * sizeof *e);
        if (!e) {
            shingles_clear(&x);
            return true;
        }
        d->e = e;
        d->cap = nc;
    }
    d->e[d->n++] = x;
    return true;
}

size_t dedup_count(const dedup_set *d) { return d->n; }

void dedup_free(dedup_set *d) {
    if (!d) return;
    for (size_t i = 0; i < d->n; i++) shingles_clear(&d->e[i]);
    free(d->e);
    free(d);
}
