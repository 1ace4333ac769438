/* test_sampler.c — the sampler against closed-form expectations: greedy is
 * the argmax; a seed reproduces its draws; 20000 draws follow the softmax;
 * top-k / top-p / min-p keep exactly the token sets computed here by sorting;
 * the repetition penalty divides positive and multiplies negative logits of
 * the penalised window only. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "prism.h"
#include "test.h"

#define N_DRAWS 20000
/* about 5 standard deviations of a frequency over N_DRAWS draws at p = 0.5 */
#define TOL 0.015

static prism_sampling_params params(float temp, int32_t top_k, float top_p, float min_p, uint64_t seed) {
    prism_sampling_params p = prism_sampling_default_params();
    p.temperature = temp;
    p.top_k = top_k;
    p.top_p = top_p;
    p.min_p = min_p;
    p.seed = seed;
    return p;
}

/* Draws N_DRAWS tokens; counts[n] receives the frequencies. */
static void draw(prism_sampling_params p, const float *logits, int32_t n, int *counts) {
    prism_sampler *s = prism_sampler_new(p);
    float *work = malloc(n * sizeof *work);
    memset(counts, 0, n * sizeof *counts);
    for (int d = 0; d < N_DRAWS; d++) {
        memcpy(work, logits, n * sizeof *work);
        int32_t t = prism_sampler_sample(s, work, n, NULL, 0);
        if (t >= 0 && t < n) counts[t]++;
    }
    free(work);
    prism_sampler_free(s);
}

/* softmax(logits / temp) restricted to keep[] (renormalised). */
static void expected_probs(const float *logits, int32_t n, float temp, const bool *keep, double *out) {
    double mx = -INFINITY, sum = 0;
    for (int32_t i = 0; i < n; i++)
        if (keep[i] && logits[i] / temp > mx) mx = logits[i] / temp;
    for (int32_t i = 0; i < n; i++) sum += out[i] = keep[i] ? exp(logits[i] / temp - mx) : 0;
    for (int32_t i = 0; i < n; i++) out[i] /= sum;
}

/* Frequencies vs probabilities: excluded tokens never drawn, worst |diff| < tol. */
static void check_distribution(const char *label, const int *counts, const double *prob, int32_t n, double tol) {
    double worst = 0;
    int32_t wi = 0, bad = -1;
    for (int32_t i = 0; i < n; i++) {
        if (prob[i] == 0 && counts[i]) bad = i;
        double d = fabs((double)counts[i] / N_DRAWS - prob[i]);
        if (d > worst) { worst = d; wi = i; }
    }
    CHECK(bad < 0, "%s: excluded token %d drawn %d times", label, bad, bad >= 0 ? counts[bad] : 0);
    int ok = worst < tol;
    CHECK(ok, "%s: frequency of token %d is %.4f, probability %.4f", label, wi, (double)counts[wi] / N_DRAWS, prob[wi]);
    printf("%s %-40s worst |freq - prob| %.4f (tol %.3f) at token %d\n", ok ? "ok  " : "FAIL", label, worst, tol, wi);
}

static const float k5[5] = {1.0f, 2.0f, 0.5f, -1.0f, 1.5f};

static void test_defaults(void) {
    prism_sampling_params p = prism_sampling_default_params();
    CHECK(p.temperature == 1.0f && p.top_k == 0 && p.top_p == 1.0f && p.min_p == 0.0f && p.repeat_penalty == 1.0f &&
              p.repeat_last_n == 64 && p.seed == 0,
          "HF-like defaults");
}

static void test_greedy(void) {
    float l[6] = {0.1f, 3.0f, -2.0f, 3.0f, 2.9f, 0.0f};
    prism_sampler *s = prism_sampler_new(params(0.0f, 0, 1.0f, 0.0f, 7));
    CHECK(prism_sampler_sample(s, l, 6, NULL, 0) == 1, "greedy takes the argmax, lowest id on ties");
    float l2[5];
    memcpy(l2, k5, sizeof l2);
    CHECK(prism_sampler_sample(s, l2, 5, NULL, 0) == 1, "greedy argmax");
    prism_sampler_free(s);
    s = prism_sampler_new(params(-1.0f, 0, 1.0f, 0.0f, 7));
    CHECK(prism_sampler_sample(s, l, 6, NULL, 0) == 1, "negative temperature is greedy");
    prism_sampler_free(s);

    /* top_k = 1 equals greedy on random logits, at any temperature */
    srand(1);
    int same = 0;
    for (int trial = 0; trial < 200; trial++) {
        float r[300], g[300];
        for (int i = 0; i < 300; i++) r[i] = g[i] = (float)rand() / RAND_MAX * 10.0f - 5.0f;
        prism_sampler *k1 = prism_sampler_new(params(1.5f, 1, 1.0f, 0.0f, (uint64_t)trial));
        prism_sampler *gr = prism_sampler_new(params(0.0f, 0, 1.0f, 0.0f, 0));
        same += prism_sampler_sample(k1, r, 300, NULL, 0) == prism_sampler_sample(gr, g, 300, NULL, 0);
        prism_sampler_free(k1);
        prism_sampler_free(gr);
    }
    CHECK(same == 200, "top_k=1 matched greedy in %d/200 trials", same);
}

static void test_seeds(void) {
    float l[50], w[50];
    for (int i = 0; i < 50; i++) l[i] = sinf((float)i) * 2.0f;
    int32_t a[500], b[500], c[500];
    prism_sampler *sa = prism_sampler_new(params(1.0f, 0, 1.0f, 0.0f, 1234));
    prism_sampler *sb = prism_sampler_new(params(1.0f, 0, 1.0f, 0.0f, 1234));
    prism_sampler *sc = prism_sampler_new(params(1.0f, 0, 1.0f, 0.0f, 1235));
    for (int i = 0; i < 500; i++) {
        memcpy(w, l, sizeof w);
        a[i] = prism_sampler_sample(sa, w, 50, NULL, 0);
        memcpy(w, l, sizeof w);
        b[i] = prism_sampler_sample(sb, w, 50, NULL, 0);
        memcpy(w, l, sizeof w);
        c[i] = prism_sampler_sample(sc, w, 50, NULL, 0);
    }
    int diff = 0;
    for (int i = 0; i < 500; i++) diff += a[i] != c[i];
    CHECK(!memcmp(a, b, sizeof a), "same seed gives the same 500 draws");
    CHECK(diff > 250, "different seeds differ in only %d/500 draws", diff);
    prism_sampler_free(sa);
    prism_sampler_free(sb);
    prism_sampler_free(sc);
}

static void test_softmax(void) {
    int counts[5];
    double prob[5];
    bool all[5] = {1, 1, 1, 1, 1};
    draw(params(1.0f, 0, 1.0f, 0.0f, 42), k5, 5, counts);
    expected_probs(k5, 5, 1.0f, all, prob);
    check_distribution("softmax, T=1", counts, prob, 5, TOL);
    draw(params(0.5f, 0, 1.0f, 0.0f, 43), k5, 5, counts);
    expected_probs(k5, 5, 0.5f, all, prob);
    check_distribution("softmax, T=0.5", counts, prob, 5, TOL);
    draw(params(2.0f, 0, 1.0f, 0.0f, 44), k5, 5, counts);
    expected_probs(k5, 5, 2.0f, all, prob);
    check_distribution("softmax, T=2", counts, prob, 5, TOL);
}

static void test_top_k(void) {
    int counts[5];
    double prob[5];
    bool keep[5] = {0, 1, 0, 0, 1}; /* the two largest: 2.0 and 1.5 */
    draw(params(1.0f, 2, 1.0f, 0.0f, 5), k5, 5, counts);
    expected_probs(k5, 5, 1.0f, keep, prob);
    check_distribution("top_k=2", counts, prob, 5, TOL);
    bool keep3[5] = {1, 1, 0, 0, 1};
    draw(params(0.7f, 3, 1.0f, 0.0f, 6), k5, 5, counts);
    expected_probs(k5, 5, 0.7f, keep3, prob);
    check_distribution("top_k=3, T=0.7", counts, prob, 5, TOL);
}

/* probabilities 0.5 0.25 0.15 0.07 0.03 (shuffled ids) */
static const float kp_prob[5] = {0.15f, 0.5f, 0.03f, 0.25f, 0.07f};

static void test_top_p_min_p(void) {
    float l[5];
    for (int i = 0; i < 5; i++) l[i] = logf(kp_prob[i]);
    int counts[5];
    double prob[5];
    /* 0.5 + 0.25 = 0.75 < 0.8 <= 0.9 = 0.5 + 0.25 + 0.15 */
    bool keep3[5] = {1, 1, 0, 1, 0};
    draw(params(1.0f, 0, 0.8f, 0.0f, 8), l, 5, counts);
    expected_probs(l, 5, 1.0f, keep3, prob);
    check_distribution("top_p=0.8 keeps {0.5,0.25,0.15}", counts, prob, 5, TOL);
    bool keep1[5] = {0, 1, 0, 0, 0};
    draw(params(1.0f, 0, 0.1f, 0.0f, 9), l, 5, counts);
    expected_probs(l, 5, 1.0f, keep1, prob);
    check_distribution("top_p=0.1 keeps only the best", counts, prob, 5, 1e-9);
    bool keep2[5] = {0, 1, 0, 1, 0};
    draw(params(1.0f, 3, 0.7f, 0.0f, 10), l, 5, counts);
    expected_probs(l, 5, 1.0f, keep2, prob);
    check_distribution("top_k=3 + top_p=0.7", counts, prob, 5, TOL);

    /* min_p 0.2: prob >= 0.1 -> {0.5, 0.25, 0.15}; 0.5: prob >= 0.25 -> {0.5, 0.25} */
    draw(params(1.0f, 0, 1.0f, 0.2f, 11), l, 5, counts);
    expected_probs(l, 5, 1.0f, keep3, prob);
    check_distribution("min_p=0.2", counts, prob, 5, TOL);
    draw(params(1.0f, 0, 1.0f, 0.49f, 12), l, 5, counts);
    expected_probs(l, 5, 1.0f, keep2, prob);
    check_distribution("min_p=0.49", counts, prob, 5, TOL);
}

typedef struct {
    float v;
    int32_t i;
} vi;

static int cmp_desc(const void *a, const void *b) {
    const vi *x = a, *y = b;
    if (x->v != y->v) return x->v < y->v ? 1 : -1;
    return (x->i > y->i) - (x->i < y->i);
}

/* A Qwen-sized vocabulary: the kept set from a full sort done here, and
 * every draw must fall in it. Also times the pick. */
static void test_large_vocab(void) {
    const int32_t V = 151936;
    float *l = malloc(V * sizeof *l), *w = malloc(V * sizeof *w);
    vi *s = malloc(V * sizeof *s);
    bool *keep = calloc(V, 1);
    srand(3);
    for (int32_t i = 0; i < V; i++) {
        float u = ((float)rand() + 1.0f) / ((float)RAND_MAX + 2.0f);
        l[i] = -logf(-logf(u)) * 1.5f + (i % 97 == 0 ? 6.0f : 0.0f); /* heavy head on every 97th id */
        s[i] = (vi){l[i], i};
    }
    qsort(s, V, sizeof *s, cmp_desc);
    const float top_p = 0.6f;
    const struct {
        const char *label;
        int32_t top_k;
    } cases[] = {{"V=151936 top_p=0.6", 0}, {"V=151936 top_k=40 top_p=0.6", 40}, {"V=151936 top_k=8 top_p=0.6", 8}};
    for (int c = 0; c < 3; c++) {
        /* kept set: top-k of the sorted logits, then top-p of their renormalised mass */
        int32_t k = cases[c].top_k ? cases[c].top_k : V, n_keep = 0;
        double total = 0, cum = 0;
        for (int32_t i = 0; i < k; i++) total += exp(s[i].v - s[0].v);
        while (n_keep == 0 || cum < top_p * total) cum += exp(s[n_keep++].v - s[0].v);
        memset(keep, 0, V);
        for (int32_t i = 0; i < n_keep; i++) keep[s[i].i] = true;
        prism_sampler *sm = prism_sampler_new(params(1.0f, cases[c].top_k, top_p, 0.0f, 99));
        int32_t *seen = calloc(V, sizeof *seen);
        int outside = 0, distinct = 0;
        const int draws = 400;
        clock_t t0 = clock();
        for (int d = 0; d < draws; d++) {
            memcpy(w, l, V * sizeof *w);
            int32_t t = prism_sampler_sample(sm, w, V, NULL, 0);
            if (t < 0 || t >= V || !keep[t]) outside++;
            else if (!seen[t]++) distinct++;
        }
        double ms = 1e3 * (double)(clock() - t0) / CLOCKS_PER_SEC / draws;
        CHECK(outside == 0, "%s: %d draws outside the kept set of %d", cases[c].label, outside, n_keep);
        CHECK(distinct > 1, "%s: only %d distinct tokens", cases[c].label, distinct);
        CHECK(distinct == n_keep || n_keep > 12, "%s: drew %d of the %d kept tokens", cases[c].label, distinct, n_keep);
        printf("ok   %-40s kept set %d, %d distinct drawn, %.2f ms/pick (incl. copy)\n", cases[c].label, n_keep,
               distinct, ms);
        free(seen);
        prism_sampler_free(sm);
    }
    free(l);
    free(w);
    free(s);
    free(keep);
}

static void test_repeat_penalty(void) {
    const float base[6] = {2.0f, -2.0f, 1.0f, 0.5f, -0.5f, 0.0f};
    const int32_t hist[] = {0, 1, 1, 4, 99, -3};
    struct {
        int32_t last_n;
        float want[6];
    } cases[] = {
        {-1, {1.0f, -4.0f, 1.0f, 0.5f, -1.0f, 0.0f}}, /* all: 0, 1 (once), 4; 99 and -3 out of range */
        {64, {1.0f, -4.0f, 1.0f, 0.5f, -1.0f, 0.0f}},
        {4, {2.0f, -4.0f, 1.0f, 0.5f, -1.0f, 0.0f}}, /* window {1, 4, 99, -3} */
        {0, {2.0f, -2.0f, 1.0f, 0.5f, -0.5f, 0.0f}},
    };
    for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
        prism_sampling_params p = params(0.0f, 0, 1.0f, 0.0f, 0);
        p.repeat_penalty = 2.0f;
        p.repeat_last_n = cases[c].last_n;
        prism_sampler *s = prism_sampler_new(p);
        float l[6];
        memcpy(l, base, sizeof l);
        int32_t t = prism_sampler_sample(s, l, 6, hist, 6);
        CHECK(!memcmp(l, cases[c].want, sizeof l), "repeat_last_n=%d: logits %g %g %g %g %g %g", cases[c].last_n,
              l[0], l[1], l[2], l[3], l[4], l[5]);
        /* token 0 stays the max (tied with token 2 at 1.0 when penalised: lowest id) */
        CHECK(t == 0, "repeat_last_n=%d: greedy after penalty picked %d", cases[c].last_n, t);
        prism_sampler_free(s);
    }
    /* the penalty flips the greedy choice */
    prism_sampling_params p = params(0.0f, 0, 1.0f, 0.0f, 0);
    p.repeat_penalty = 1.5f;
    prism_sampler *s = prism_sampler_new(p);
    float l[3] = {3.0f, 2.5f, 1.0f};
    int32_t h[] = {0};
    CHECK(prism_sampler_sample(s, l, 3, h, 1) == 1, "penalised token 0 (3/1.5=2) loses to 2.5");
    prism_sampler_free(s);
}

/* prism_sampler_is_softmax: which samplers draw from the whole softmax, and that their draws are
 * prism_sample_softmax at prism_sampler_next_u's uniforms (what a GPU context draws instead). */
static void test_softmax_split(void) {
    float l[300], w[300];
    for (int i = 0; i < 300; i++) l[i] = sinf((float)i * 0.7f) * 3.0f;
    float it = 0;
    const struct {
        prism_sampling_params p;
        bool softmax;
    } cases[] = {
        {params(0.7f, 0, 1.0f, 0.0f, 5), true},   {params(1.3f, 300, 1.0f, 0.0f, 6), true},
        {params(1.0f, 299, 1.0f, 0.0f, 7), false}, {params(1.0f, 0, 0.9f, 0.0f, 8), false},
        {params(1.0f, 0, 1.0f, 0.05f, 9), false},  {params(0.0f, 0, 1.0f, 0.0f, 10), false},
        {params(1.0f, 1, 1.0f, 0.0f, 11), false},
    };
    for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
        prism_sampler *a = prism_sampler_new(cases[c].p), *b = prism_sampler_new(cases[c].p);
        const bool is = prism_sampler_is_softmax(a, 300, &it);
        CHECK(is == cases[c].softmax, "case %zu: is_softmax %d", c, is);
        if (is) {
            CHECK(it == 1.0f / cases[c].p.temperature, "case %zu: 1/temperature %g", c, it);
            int same = 0;
            for (int i = 0; i < 400; i++) {
                memcpy(w, l, sizeof w);
                const int32_t x = prism_sampler_sample(a, w, 300, NULL, 0);
                same += x == prism_sample_softmax(l, 300, it, prism_sampler_next_u(b));
            }
            CHECK(same == 400, "case %zu: sampler == prism_sample_softmax at next_u in %d/400 draws", c, same);
        }
        prism_sampler_free(a), prism_sampler_free(b);
    }
    /* repetition penalty: not a softmax-only draw (the penalty needs the history) */
    prism_sampling_params rp = params(1.0f, 0, 1.0f, 0.0f, 3);
    rp.repeat_penalty = 1.2f;
    prism_sampler *r = prism_sampler_new(rp);
    CHECK(!prism_sampler_is_softmax(r, 300, &it), "a repetition penalty is not softmax-only");
    prism_sampler_free(r);
    /* the edges of the draw: u = 0 -> the first id of nonzero weight; u just below 1 -> the last */
    const float e[5] = {-INFINITY, 1.0f, 2.0f, 0.5f, -INFINITY};
    CHECK(prism_sample_softmax(e, 5, 1.0f, 0.0) == 1, "u = 0 draws the first weighted id");
    CHECK(prism_sample_softmax(e, 5, 1.0f, 1.0 - 0x1.0p-53) == 3, "u -> 1 draws the last weighted id");
    printf("ok   softmax-only samplers: classified, and drawn as prism_sample_softmax at next_u\n");
}

int main(void) {
    test_defaults();
    test_softmax_split();
    test_greedy();
    test_seeds();
    test_softmax();
    test_top_k();
    test_top_p_min_p();
    test_repeat_penalty();
    test_large_vocab();
    prism_sampler_free(NULL);
    TEST_MAIN_END();
}
