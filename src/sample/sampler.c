/* sampler.c — token sampling from logits, in the order llama.cpp and HF use:
 *
 *   repetition penalty  each distinct id in the last repeat_last_n history
 *                       tokens: logit > 0 ? logit / p : logit * p (HF/CTRL)
 *   temperature         <= 0: greedy argmax (lowest id on ties); else logit / T
 *   top-k               the k largest logits (heap selection, O(V log k))
 *   top-p               the smallest set, by decreasing probability, whose
 *                       probability sums to >= top_p (at least one token);
 *                       without top-k a max-heap over the vocabulary is popped
 *                       only as far as needed instead of sorting all of it
 *   min-p               tokens with prob >= min_p * max prob
 *                       (i.e. logit >= max logit + log(min_p))
 *   draw                from the kept tokens' renormalised probabilities
 *
 * Ties between equal logits are broken by lower id everywhere, and the PRNG
 * is xoshiro256** seeded through splitmix64, so a seed gives the same tokens
 * on every run and machine (up to expf differences in the last ulp).
 *
 * Defaults (HF generate's): temperature 1, top_k 0, top_p 1, min_p 0,
 * repeat_penalty 1, repeat_last_n 64, seed 0.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "util/error.h"

struct prism_sampler {
    prism_sampling_params p;
    uint64_t rng[4]; /* xoshiro256** state */
    /* scratch, grown to the vocabulary size on first use */
    int32_t *idx;  /* [cap] candidate ids */
    float *val;    /* [cap] candidate logits, then exp(logit - max) */
    int32_t *hist; /* [hist_cap] distinct ids of the penalty window */
    size_t cap, hist_cap;
};

prism_sampling_params prism_sampling_default_params(void) {
    return (prism_sampling_params){
        .temperature = 1.0f,
        .top_k = 0,
        .top_p = 1.0f,
        .min_p = 0.0f,
        .repeat_penalty = 1.0f,
        .repeat_last_n = 64,
        .seed = 0,
    };
}

/* ------------------------------------------------------------ PRNG */
static uint64_t splitmix64(uint64_t *x) {
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static inline uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

static uint64_t xoshiro_next(uint64_t s[4]) {
    uint64_t r = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return r;
}

/* Uniform in [0, 1) with 53 random bits. */
static double rng_uniform(uint64_t s[4]) { return (double)(xoshiro_next(s) >> 11) * 0x1.0p-53; }

prism_sampler *prism_sampler_new(prism_sampling_params p) {
    prism_sampler *s = calloc(1, sizeof *s);
    if (!s) {
        prism_error(PRISM_E_NOMEM, "prism_sampler_new: out of memory");
        return NULL;
    }
    s->p = p;
    uint64_t x = p.seed;
    for (int i = 0; i < 4; i++) s->rng[i] = splitmix64(&x);
    return s;
}

void prism_sampler_free(prism_sampler *s) {
    if (!s) return;
    free(s->idx);
    free(s->val);
    free(s->hist);
    free(s);
}

/* ------------------------------------------------------------ ordering helpers */
/* a ranks before b: larger logit, then lower id. */
static inline bool better(float va, int32_t ia, float vb, int32_t ib) { return va > vb || (va == vb && ia < ib); }

static void swap_cand(int32_t *idx, float *val, size_t a, size_t b) {
    int32_t ti = idx[a];
    idx[a] = idx[b];
    idx[b] = ti;
    float tv = val[a];
    val[a] = val[b];
    val[b] = tv;
}

/* Sift down in a heap whose root is the "most extreme" element: for a
 * min-heap (worst at root, max_heap = false) or max-heap (best at root). */
static void sift_down(int32_t *idx, float *val, size_t n, size_t i, bool max_heap) {
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        if (max_heap) {
            if (l < n && better(val[l], idx[l], val[m], idx[m])) m = l;
            if (r < n && better(val[r], idx[r], val[m], idx[m])) m = r;
        } else {
            if (l < n && better(val[m], idx[m], val[l], idx[l])) m = l;
            if (r < n && better(val[m], idx[m], val[r], idx[r])) m = r;
        }
        if (m == i) return;
        swap_cand(idx, val, i, m);
        i = m;
    }
}

static void heapify(int32_t *idx, float *val, size_t n, bool max_heap) {
    for (size_t i = n / 2; i-- > 0;) sift_down(idx, val, n, i, max_heap);
}

static int cmp_i32(const void *a, const void *b) {
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    return (x > y) - (x < y);
}

static bool reserve(prism_sampler *s, size_t n) {
    if (n <= s->cap) return true;
    int32_t *idx = realloc(s->idx, n * sizeof *idx);
    if (idx) s->idx = idx;
    float *val = realloc(s->val, n * sizeof *val);
    if (val) s->val = val;
    if (!idx || !val) return false;
    s->cap = n;
    return true;
}

/* ------------------------------------------------------------ stages */
static void apply_repeat_penalty(prism_sampler *s, float *logits, int32_t n_vocab, const int32_t *history,
                                 size_t n_history) {
    float pen = s->p.repeat_penalty;
    if (pen == 1.0f || !history || !n_history || s->p.repeat_last_n == 0) return;
    size_t w = s->p.repeat_last_n < 0 ? n_history : (size_t)s->p.repeat_last_n;
    if (w > n_history) w = n_history;
    if (w > s->hist_cap) {
        int32_t *h = realloc(s->hist, w * sizeof *h);
        if (!h) return; /* cannot fail a pick over scratch memory; penalty skipped */
        s->hist = h;
        s->hist_cap = w;
    }
    memcpy(s->hist, history + n_history - w, w * sizeof *s->hist);
    qsort(s->hist, w, sizeof *s->hist, cmp_i32);
    for (size_t i = 0; i < w; i++) {
        int32_t id = s->hist[i];
        if ((i && id == s->hist[i - 1]) || id < 0 || id >= n_vocab) continue;
        float l = logits[id];
        logits[id] = l > 0 ? l / pen : l * pen;
    }
}

static int32_t argmax(const float *logits, int32_t n) {
    int32_t best = 0;
    for (int32_t i = 1; i < n; i++)
        if (logits[i] > logits[best]) best = i;
    return best;
}

bool prism_sampler_is_greedy(const prism_sampler *s) {
    return s && (!(s->p.temperature > 0.0f) || s->p.top_k == 1) && s->p.repeat_penalty == 1.0f;
}

/* temperature > 0 and no truncation: the draw is over the whole vocabulary (prism_sample_softmax) */
static bool softmax_only(const prism_sampling_params *p, int32_t n_vocab) {
    return p->temperature > 0.0f && (p->top_k <= 0 || p->top_k >= n_vocab) && p->top_k != 1 && !(p->top_p < 1.0f) &&
           !(p->min_p > 0.0f);
}

bool prism_sampler_is_softmax(const prism_sampler *s, int32_t n_vocab, float *inv_t) {
    if (!s || n_vocab <= 1 || !softmax_only(&s->p, n_vocab) || s->p.repeat_penalty != 1.0f) return false;
    *inv_t = 1.0f / s->p.temperature;
    return true;
}

double prism_sampler_next_u(prism_sampler *s) { return rng_uniform(s->rng); }

int32_t prism_sample_softmax(const float *logits, int32_t n_vocab, float inv_t, double u) {
    float vmax = logits[0] * inv_t;
    for (int32_t i = 1; i < n_vocab; i++) {
        const float v = logits[i] * inv_t;
        vmax = v > vmax ? v : vmax;
    }
    double total = 0;
    for (int32_t i = 0; i < n_vocab; i++) total += expf(logits[i] * inv_t - vmax);
    const double target = u * total;
    double cum = 0;
    for (int32_t i = 0; i < n_vocab; i++) {
        cum += expf(logits[i] * inv_t - vmax);
        if (target < cum) return i;
    }
    /* rounding left the target at the very top: the last token with nonzero mass */
    for (int32_t i = n_vocab; i-- > 0;)
        if (expf(logits[i] * inv_t - vmax) > 0) return i;
    return 0;
}

int32_t prism_sampler_sample(prism_sampler *s, float *logits, int32_t n_vocab, const int32_t *history,
                             size_t n_history) {
    if (!s || !logits || n_vocab <= 0) return -1;
    const prism_sampling_params *p = &s->p;
    apply_repeat_penalty(s, logits, n_vocab, history, n_history);
    if (!(p->temperature > 0.0f) || p->top_k == 1) return argmax(logits, n_vocab);
    if (softmax_only(p, n_vocab)) return prism_sample_softmax(logits, n_vocab, 1.0f / p->temperature, rng_uniform(s->rng));
    if (!reserve(s, (size_t)n_vocab)) return argmax(logits, n_vocab); /* no scratch: degrade to greedy */

    const float inv_t = 1.0f / p->temperature;
    int32_t *idx = s->idx;
    float *val = s->val;
    size_t m; /* number of candidates in idx/val */
    bool sorted = false;

    if (p->top_k > 0 && p->top_k < n_vocab) {
        /* keep the k best in a min-heap whose root is the worst kept */
        size_t k = (size_t)p->top_k;
        for (size_t i = 0; i < k; i++) { idx[i] = (int32_t)i; val[i] = logits[i] * inv_t; }
        heapify(idx, val, k, false);
        for (int32_t i = (int32_t)k; i < n_vocab; i++) {
            float v = logits[i] * inv_t;
            if (better(v, i, val[0], idx[0])) {
                idx[0] = i;
                val[0] = v;
                sift_down(idx, val, k, 0, false);
            }
        }
        /* heap sort: pop worst to the back -> best first */
        for (size_t n = k; n > 1; n--) {
            swap_cand(idx, val, 0, n - 1);
            sift_down(idx, val, n - 1, 0, false);
        }
        m = k;
        sorted = true;
    } else {
        for (int32_t i = 0; i < n_vocab; i++) { idx[i] = i; val[i] = logits[i] * inv_t; }
        m = (size_t)n_vocab;
    }

    float vmax = val[0];
    if (!sorted)
        for (size_t i = 1; i < m; i++) vmax = val[i] > vmax ? val[i] : vmax;

    if (p->top_p < 1.0f) {
        double total = 0;
        for (size_t i = 0; i < m; i++) total += expf(val[i] - vmax);
        const double target = (double)p->top_p * total;
        if (!sorted) {
            /* pop a max-heap only until the kept mass reaches top_p: the popped
             * elements collect, best first, at the back; move them to the front */
            heapify(idx, val, m, true);
            size_t n = m, kept = 0;
            double cum = 0;
            while (n > 0 && (kept == 0 || cum < target)) {
                cum += expf(val[0] - vmax);
                swap_cand(idx, val, 0, n - 1);
                n--;
                kept++;
                sift_down(idx, val, n, 0, true);
            }
            size_t base = m - kept;
            for (size_t i = 0; i < kept / 2; i++) swap_cand(idx, val, base + i, m - 1 - i);
            memmove(idx, idx + base, kept * sizeof *idx);
            memmove(val, val + base, kept * sizeof *val);
            m = kept;
            sorted = true;
        } else {
            size_t kept = 0;
            double cum = 0;
            while (kept < m && (kept == 0 || cum < target)) cum += expf(val[kept++] - vmax);
            m = kept;
        }
    }

    if (p->min_p > 0.0f) {
        const float floor_v = vmax + logf(p->min_p);
        size_t j = 0;
        for (size_t i = 0; i < m; i++)
            if (val[i] >= floor_v || val[i] == vmax) { idx[j] = idx[i]; val[j] = val[i]; j++; }
        m = j;
    }

    double total = 0;
    for (size_t i = 0; i < m; i++) total += (val[i] = expf(val[i] - vmax));
    double u = rng_uniform(s->rng) * total, cum = 0;
    for (size_t i = 0; i < m; i++) {
        cum += val[i];
        if (u < cum) return idx[i];
    }
    /* rounding left u at the very top: the last token with nonzero mass */
    for (size_t i = m; i-- > 0;)
        if (val[i] > 0) return idx[i];
    return idx[0];
}
