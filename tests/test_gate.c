/* test_gate.c — the PRISM gate MLP: GELU against a double-precision erf
 * reference and finite differences, the hand-written backward against
 * finite differences of the loss, training on separable and XOR-like
 * synthetic features, determinism across thread counts, threshold
 * calibration, safetensors round trip and error paths. */
#include <omp.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>

#include "model/safetensors.h"
#include "prism/gate.h"
#include "test.h"

static char g_tmp[64];

static const char *tpath(const char *name) {
    static char p[512];
    snprintf(p, sizeof p, "%s/%s", g_tmp, name);
    return p;
}

/* Independent PRNG for the test data (xorshift64*, Box–Muller). */
static uint64_t g_rng = 0x243f6a8885a308d3ull;
static double urand(void) {
    g_rng ^= g_rng >> 12;
    g_rng ^= g_rng << 25;
    g_rng ^= g_rng >> 27;
    return (double)((g_rng * 2685821657736338717ull) >> 11) * 0x1p-53;
}
static double nrand(void) {
    double u = urand(), v = urand();
    return sqrt(-2.0 * log(u + 1e-300)) * cos(2 * M_PI * v);
}

static double gelu_ref(double x) { return 0.5 * x * (1.0 + erf(x / sqrt(2.0))); }

static void test_gelu(void) {
    float got[121], want[121], dgot[121], dwant[121], dfd[121];
    for (int i = 0; i < 121; i++) {
        double x = -6.0 + 0.1 * i;
        got[i] = gate_gelu((float)x);
        want[i] = (float)gelu_ref(x);
        dgot[i] = gate_gelu_grad((float)x);
        dwant[i] = (float)(0.5 * (1 + erf(x / sqrt(2.0))) + x * exp(-0.5 * x * x) / sqrt(2 * M_PI));
        double h = 1e-5;
        dfd[i] = (float)((gelu_ref(x + h) - gelu_ref(x - h)) / (2 * h));
    }
    check_close("gelu vs double erf reference", got, want, 121, 1e-6);
    check_close("gelu' vs analytic double", dgot, dwant, 121, 1e-6);
    check_close("gelu' vs finite differences", dgot, dfd, 121, 1e-6);
    CHECK(gate_gelu(0.0f) == 0.0f && gate_gelu_grad(0.0f) == 0.5f, "gelu(0) %g gelu'(0) %g", gate_gelu(0.0f),
          gate_gelu_grad(0.0f));
}

/* Every parameter's gradient against a central difference of the loss. */
static void test_backward_fd(void) {
    const int in = 7, n = 5;
    gate_mlp *g = gate_mlp_new(in, 11);
    float X[5 * 7], w[5] = {0.7f, 1.3f, 1.0f, 2.0f, 0.5f};
    int8_t y[5] = {1, 0, 0, 1, 0};
    for (int i = 0; i < n * in; i++) X[i] = (float)(3.0 * nrand() + 2.0);
    for (int i = 0; i < in; i++) {
        g->mu[i] = (float)(2.0 + 0.3 * nrand());
        g->sigma[i] = (float)(2.0 + urand());
    }
    /* larger weights so the GELUs are exercised beyond their linear part */
    for (int64_t i = 0; i < g->n_params; i++) g->params[i] *= 3.0f;
    float *grad = malloc((size_t)g->n_params * sizeof *grad), *fd = malloc((size_t)g->n_params * sizeof *fd);
    double loss;
    CHECK(gate_loss_grad(g, X, y, w, n, &loss, grad) == PRISM_OK, "%s", prism_last_error());
    for (int64_t i = 0; i < g->n_params; i++) {
        float p0 = g->params[i];
        const float h = 1e-2f;
        double lp, lm;
        g->params[i] = p0 + h;
        gate_loss_grad(g, X, y, w, n, &lp, NULL);
        g->params[i] = p0 - h;
        gate_loss_grad(g, X, y, w, n, &lm, NULL);
        g->params[i] = p0;
        fd[i] = (float)((lp - lm) / (2.0 * h));
    }
    int64_t nw1 = (int64_t)GATE_H1 * in;
    check_close("backward dW1 vs finite differences", grad, fd, (size_t)nw1, 1e-2);
    check_close("backward db1 vs finite differences", grad + nw1, fd + nw1, GATE_H1, 1e-2);
    int64_t o2 = nw1 + GATE_H1;
    check_close("backward dW2 vs finite differences", grad + o2, fd + o2, GATE_H2 * GATE_H1, 1e-2);
    int64_t o3 = o2 + GATE_H2 * GATE_H1;
    check_close("backward db2,dw3,db3 vs finite differences", grad + o3, fd + o3, (size_t)(g->n_params - o3), 1e-2);
    free(grad);
    free(fd);
    gate_mlp_free(g);
}

/* in-dimensional features; the label is which side of a random hyperplane
 * (offset so 1 in 5 is a win) with a margin; dimensions get wildly
 * different scales and offsets. */
static void make_separable(int in, int n, float *X, int8_t *y) {
    double u[256], nu = 0;
    for (int i = 0; i < in; i++) {
        u[i] = nrand();
        nu += u[i] * u[i];
    }
    for (int i = 0; i < in; i++) u[i] /= sqrt(nu);
    int n_pos = n / 5, cp = 0, cn = 0, r = 0;
    const double t = 0.8416, margin = 0.5; /* 80th percentile of N(0,1) */
    while (r < n) {
        double z[256], s = 0;
        for (int i = 0; i < in; i++) s += u[i] * (z[i] = nrand());
        int label;
        if (s > t + margin && cp < n_pos) label = 1, cp++;
        else if (s < t - margin && cn < n - n_pos) label = 0, cn++;
        else continue;
        for (int i = 0; i < in; i++) {
            double scale = i % 4 == 0 ? 1000.0 : i % 4 == 1 ? 1e-3 : i % 4 == 2 ? 1.0 : 50.0;
            X[r * in + i] = (float)(z[i] * scale + (i % 3 == 0 ? 500.0 : -3.0));
        }
        y[r++] = (int8_t)label;
    }
}

static gate_mlp *g_trained; /* in = 64, from test_separable */
static float g_X[400 * 64];

static void test_separable(void) {
    const int in = 64, n = 400;
    static int8_t y[400];
    make_separable(in, n, g_X, y);
    gate_mlp *g = gate_mlp_new(in, 1);
    gate_train_params p = gate_train_default_params();
    p.seed = 5;
    gate_train_report rep;
    prism_status rc = gate_train(g, g_X, y, n, &p, &rep);
    CHECK(rc == PRISM_OK, "%s", prism_last_error());
    printf("separable: train %d holdout %d (wins %d, retains %d) acc %.4f holdout acc %.4f balanced %.4f loss %.4g steps %lld\n",
           rep.n_train, rep.n_holdout, rep.n_holdout_pos, rep.n_holdout_neg, rep.train_acc, rep.holdout_acc,
           rep.holdout_bal_acc, rep.final_train_loss, (long long)rep.steps);
    CHECK(rep.n_pos == 80 && rep.n_neg == 320, "pos %d neg %d", rep.n_pos, rep.n_neg);
    CHECK(rep.n_holdout_pos == 16 && rep.n_holdout_neg == 64 && rep.n_train == 320 && rep.n_holdout == 80,
          "split %d/%d, holdout wins %d retains %d", rep.n_train, rep.n_holdout, rep.n_holdout_pos, rep.n_holdout_neg);
    CHECK(rep.steps == 200 * 10, "steps %lld", (long long)rep.steps);
    CHECK(rep.holdout_acc >= 0.98, "holdout accuracy %.4f", rep.holdout_acc);
    CHECK(rep.holdout_bal_acc >= 0.95, "holdout balanced accuracy %.4f", rep.holdout_bal_acc);
    CHECK(rep.train_acc >= 0.99, "train accuracy %.4f", rep.train_acc);
    CHECK(rep.note[0] == 0, "note \"%s\"", rep.note);
    /* mu/sigma absorb the scales: sigma ~ 1000 on dims 0,4,.. and ~1e-3 on 1,5,.. */
    CHECK(g->sigma[0] > 500 && g->sigma[0] < 2000 && g->sigma[1] > 5e-4f && g->sigma[1] < 2e-3f,
          "sigma[0] %g sigma[1] %g", g->sigma[0], g->sigma[1]);
    /* batched probabilities equal the single-row call bit for bit */
    float probs[400];
    gate_mlp_probs(g, g_X, n, probs);
    int same = 1;
    for (int r = 0; r < n; r++) same &= probs[r] == gate_mlp_prob(g, g_X + r * in);
    CHECK(same, "gate_mlp_probs differs from gate_mlp_prob");
    g_trained = g;
}

static void test_xor(void) {
    const int in = 4, n = 400;
    float X[400 * 4];
    int8_t y[400];
    for (int r = 0; r < n; r++) {
        double a = 2 * urand() - 1, b = 2 * urand() - 1;
        X[r * in + 0] = (float)a;
        X[r * in + 1] = (float)b;
        X[r * in + 2] = (float)nrand();
        X[r * in + 3] = (float)nrand();
        y[r] = a * b > 0;
    }
    gate_mlp *g = gate_mlp_new(in, 3);
    gate_train_params p = gate_train_default_params();
    gate_train_report rep;
    CHECK(gate_train(g, X, y, n, &p, &rep) == PRISM_OK, "%s", prism_last_error());
    printf("xor: train acc %.4f holdout acc %.4f balanced %.4f loss %.4g\n", rep.train_acc, rep.holdout_acc,
           rep.holdout_bal_acc, rep.final_train_loss);
    CHECK(rep.holdout_acc >= 0.85, "XOR holdout accuracy %.4f (chance 0.5)", rep.holdout_acc);
    gate_mlp_free(g);
}

static int same_gate(const gate_mlp *a, const gate_mlp *b) {
    return a->in == b->in && !memcmp(a->mu, b->mu, (size_t)a->in * 4) && !memcmp(a->sigma, b->sigma, (size_t)a->in * 4) &&
           !memcmp(a->params, b->params, (size_t)a->n_params * 4) &&
           !memcmp(&a->threshold, &b->threshold, 4) && !memcmp(&a->threshold_logit, &b->threshold_logit, 4);
}

/* Same seeds → bit-identical weights, with 1 thread or several (sizes large
 * enough that the parallel paths run). */
static void test_determinism(void) {
    const int in = 1100, n = 70;
    float *X = malloc((size_t)n * in * sizeof *X);
    int8_t y[70];
    for (int r = 0; r < n; r++) {
        y[r] = r % 3 == 0;
        for (int i = 0; i < in; i++) X[r * in + i] = (float)(nrand() + (y[r] && i < 10 ? 1.5 : 0));
    }
    gate_train_params p = gate_train_default_params();
    p.epochs = 3;
    p.seed = 9;
    gate_mlp *a = gate_mlp_new(in, 4), *b = gate_mlp_new(in, 4), *c = gate_mlp_new(in, 4), *d = gate_mlp_new(in, 5);
    CHECK(same_gate(a, b) && !same_gate(a, d), "initialisation is not a function of the seed");
    int nt = omp_get_max_threads();
    omp_set_num_threads(1);
    gate_train(a, X, y, n, &p, NULL);
    omp_set_num_threads(nt > 1 ? nt : 2);
    gate_train(b, X, y, n, &p, NULL);
    gate_train(c, X, y, n, &p, NULL);
    omp_set_num_threads(nt);
    CHECK(same_gate(b, c), "two runs with the same seed differ");
    CHECK(same_gate(a, b), "1 thread and %d threads differ", nt > 1 ? nt : 2);
    p.seed = 10;
    gate_train(d, X, y, n, &p, NULL);
    CHECK(!same_gate(c, d), "different seeds gave identical gates");
    gate_mlp_free(a);
    gate_mlp_free(b);
    gate_mlp_free(c);
    gate_mlp_free(d);
    free(X);
}

static int64_t count_routed(const gate_mlp *g, const float *X, int n) {
    int64_t c = 0;
    for (int r = 0; r < n; r++) c += gate_mlp_route(g, X + r * g->in, NULL);
    return c;
}

static void test_calibration(void) {
    gate_mlp *g = g_trained;
    const int n = 400;
    float l[400];
    gate_mlp_logits(g, g_X, n, l);
    int distinct = 1;
    for (int i = 0; i < n; i++)
        for (int j = i + 1; j < n; j++) distinct &= l[i] != l[j];
    CHECK(distinct, "test needs distinct logits");
    int64_t routed;
    CHECK(gate_calibrate(g, g_X, n, 0.3, &routed) == PRISM_OK, "%s", prism_last_error());
    CHECK(routed == 120 && count_routed(g, g_X, n) == 120, "route rate 0.3: %lld / %lld routed of 400",
          (long long)routed, (long long)count_routed(g, g_X, n));
    /* the probability threshold agrees with the logit one */
    int64_t by_prob = 0;
    for (int r = 0; r < n; r++) by_prob += gate_mlp_prob(g, g_X + r * g->in) >= g->threshold;
    CHECK(by_prob >= 120, "prob >= threshold routes %lld", (long long)by_prob);
    CHECK(gate_calibrate(g, g_X, n, 0.0, &routed) == PRISM_OK && routed == 0 && count_routed(g, g_X, n) == 0,
          "route rate 0: %lld routed", (long long)routed);
    CHECK(gate_calibrate(g, g_X, n, 1.0, &routed) == PRISM_OK && routed == n && g->threshold == 0.0f,
          "route rate 1: %lld routed, threshold %g", (long long)routed, g->threshold);
    CHECK(gate_calibrate(g, g_X, n, 0.1234, &routed) == PRISM_OK && routed == 49, "route rate 0.1234: %lld",
          (long long)routed);
    CHECK(gate_calibrate(g, g_X, n, 1.5, NULL) == PRISM_E_ARG, "route rate 1.5 accepted");
    CHECK(gate_calibrate(g, g_X, n, NAN, NULL) == PRISM_E_ARG, "route rate NaN accepted");
    /* Saturated probabilities (logits > ~17 round to 1.0f) still calibrate, on logits. */
    float b3 = g->b3[0];
    g->b3[0] += 60.0f;
    int ones = 0;
    for (int r = 0; r < n; r++) ones += gate_mlp_prob(g, g_X + r * g->in) == 1.0f;
    CHECK(gate_calibrate(g, g_X, n, 0.3, &routed) == PRISM_OK && routed == 120, "saturated: %lld routed (%d probs == 1)",
          (long long)routed, ones);
    CHECK(ones > 120, "saturation case not exercised (%d probs == 1)", ones);
    g->b3[0] = b3;
    CHECK(gate_set_threshold(g, 0.5f) == PRISM_OK && g->threshold_logit == 0.0f, "threshold 0.5 -> logit %g",
          g->threshold_logit);
    CHECK(gate_set_threshold(g, 1.5f) == PRISM_E_ARG, "threshold 1.5 accepted");
}

static void test_save_load(void) {
    gate_mlp *g = g_trained;
    gate_calibrate(g, g_X, 400, 0.25, NULL);
    const char *path = tpath("gate.safetensors");
    prism_status rc = gate_save(g, path, "{\"persona\": \"pirate\", \"route_rate\": \"0.25\"}");
    CHECK(rc == PRISM_OK, "%s", prism_last_error());
    gate_mlp *h = NULL;
    rc = gate_load(path, 64, &h);
    CHECK(rc == PRISM_OK && h, "%s", prism_last_error());
    if (h) {
        CHECK(same_gate(g, h), "round trip is not bit-identical");
        float pg[400], ph[400];
        gate_mlp_probs(g, g_X, 400, pg);
        gate_mlp_probs(h, g_X, 400, ph);
        CHECK(!memcmp(pg, ph, sizeof pg), "probabilities differ after reload");
        CHECK(count_routed(h, g_X, 400) == 100, "reloaded gate routes %lld", (long long)count_routed(h, g_X, 400));
        gate_mlp_free(h);
    }
    /* metadata kept and tagged */
    st_set *s = NULL;
    CHECK(st_open(path, &s) == PRISM_OK && st_count(s) == 10, "tensor count");
    st_close(s);
    FILE *f = fopen(path, "rb");
    char head[1024] = "";
    if (f) {
        size_t k = fread(head, 1, sizeof head - 1, f);
        head[k] = 0;
        fclose(f);
    }
    CHECK(strstr(head + 8, "\"format\":\"prism-gate\"") && strstr(head + 8, "\"hidden\":\"64\"") &&
              strstr(head + 8, "\"persona\":\"pirate\""),
          "metadata missing: %.200s", head + 8);

    /* wrong hidden size */
    h = NULL;
    rc = gate_load(path, 32, &h);
    CHECK(rc == PRISM_E_FORMAT && !h && strstr(prism_last_error(), "gate was trained for hidden size 64, model has 32") &&
              strstr(prism_last_error(), path),
          "wrong hidden size: %d %s", rc, prism_last_error());
    /* truncated */
    f = fopen(path, "rb");
    char *buf = malloc(1 << 20);
    size_t len = f ? fread(buf, 1, 1 << 20, f) : 0;
    if (f) fclose(f);
    FILE *o = fopen(tpath("trunc.safetensors"), "wb");
    fwrite(buf, 1, len - 100, o);
    fclose(o);
    rc = gate_load(tpath("trunc.safetensors"), 64, &h);
    CHECK(rc != PRISM_OK && !h, "truncated file loaded");
    printf("truncated: %s\n", prism_last_error());
    free(buf);
    /* missing tensor, non-gate file, NaN */
    float z[GATE_H1 * 64] = {0}, one = 1.0f;
    st_write_tensor ts[] = {
        {"mu", ST_F32, 1, {64}, z},    {"sigma", ST_F32, 1, {64}, z},  {"w1", ST_F32, 2, {GATE_H1, 64}, z},
        {"b1", ST_F32, 1, {GATE_H1}, z}, {"w2", ST_F32, 2, {GATE_H2, GATE_H1}, z}, {"w3", ST_F32, 1, {GATE_H2}, z},
        {"b3", ST_F32, 1, {1}, z},     {"threshold", ST_F32, 1, {1}, &one},
    };
    st_write(tpath("missing.safetensors"), ts, 8, "{\"format\":\"prism-gate\"}");
    rc = gate_load(tpath("missing.safetensors"), 64, &h);
    CHECK(rc == PRISM_E_FORMAT && strstr(prism_last_error(), "b2"), "missing b2: %d %s", rc, prism_last_error());
    st_write(tpath("other.safetensors"), ts, 8, NULL);
    rc = gate_load(tpath("other.safetensors"), 64, &h);
    CHECK(rc == PRISM_E_FORMAT && strstr(prism_last_error(), "not a prism gate"), "non-gate: %d %s", rc,
          prism_last_error());
    gate_mlp *q = gate_mlp_new(64, 2);
    q->w2[5] = NAN;
    gate_save(q, tpath("nan.safetensors"), NULL);
    rc = gate_load(tpath("nan.safetensors"), 0, &h);
    CHECK(rc == PRISM_E_FORMAT && strstr(prism_last_error(), "w2"), "NaN: %d %s", rc, prism_last_error());
    gate_mlp_free(q);
    /* a file with only the probability threshold (spec tensors): the logit is derived */
    float thr = 0.7f, thr_logit = 5.0f;
    st_write_tensor full[] = {
        {"mu", ST_F32, 1, {64}, g->mu},       {"sigma", ST_F32, 1, {64}, g->sigma},
        {"w1", ST_F32, 2, {GATE_H1, 64}, g->w1}, {"b1", ST_F32, 1, {GATE_H1}, g->b1},
        {"w2", ST_F32, 2, {GATE_H2, GATE_H1}, g->w2}, {"b2", ST_F32, 1, {GATE_H2}, g->b2},
        {"w3", ST_F32, 1, {GATE_H2}, g->w3},  {"b3", ST_F32, 1, {1}, g->b3},
        {"threshold", ST_F32, 1, {1}, &thr},  {"threshold_logit", ST_F32, 1, {1}, &thr_logit},
    };
    st_write(tpath("prob_only.safetensors"), full, 9, "{\"format\":\"prism-gate\"}");
    h = NULL;
    rc = gate_load(tpath("prob_only.safetensors"), 64, &h);
    CHECK(rc == PRISM_OK && h && fabsf(h->threshold_logit - (float)log(0.7 / 0.3)) < 1e-6f, "prob-only threshold: %s",
          prism_last_error());
    gate_mlp_free(h);
    st_write(tpath("disagree.safetensors"), full, 10, "{\"format\":\"prism-gate\"}");
    rc = gate_load(tpath("disagree.safetensors"), 64, &h);
    CHECK(rc == PRISM_E_FORMAT && strstr(prism_last_error(), "disagrees"), "threshold 0.7 with logit 5: %d %s", rc,
          prism_last_error());
    full[2].shape[0] = GATE_H1 / 2;
    full[2].shape[1] = 128;
    st_write(tpath("shape.safetensors"), full, 9, "{\"format\":\"prism-gate\"}");
    rc = gate_load(tpath("shape.safetensors"), 0, &h);
    CHECK(rc == PRISM_E_FORMAT && strstr(prism_last_error(), "w1"), "misshapen w1: %d %s", rc, prism_last_error());
    rc = gate_save(g, tpath("x.safetensors"), "[1, 2]");
    CHECK(rc == PRISM_E_ARG, "non-object metadata accepted");
}

static void test_errors(void) {
    const int in = 3;
    float X[8 * 3];
    int8_t y[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    for (int i = 0; i < 8 * in; i++) X[i] = (float)nrand();
    gate_mlp *g = gate_mlp_new(in, 1);
    gate_train_params p = gate_train_default_params();
    p.epochs = 2;
    prism_status rc = gate_train(g, X, y, 8, &p, NULL);
    CHECK(rc == PRISM_E_ARG && strstr(prism_last_error(), "both wins"), "all retains: %d %s", rc, prism_last_error());
    for (int r = 0; r < 8; r++) y[r] = 1;
    rc = gate_train(g, X, y, 8, &p, NULL);
    CHECK(rc == PRISM_E_ARG && strstr(prism_last_error(), "all 8 examples are wins"), "all wins: %d %s", rc,
          prism_last_error());
    CHECK(gate_train(g, X, y, 0, &p, NULL) == PRISM_E_ARG, "n = 0 accepted");
    y[0] = 0;
    y[1] = 2;
    CHECK(gate_train(g, X, y, 8, &p, NULL) == PRISM_E_ARG, "label 2 accepted");
    y[1] = 1;
    X[5] = NAN;
    rc = gate_train(g, X, y, 8, &p, NULL);
    CHECK(rc == PRISM_E_ARG && strstr(prism_last_error(), "feature 2 of example 1"), "NaN: %s", prism_last_error());
    X[5] = 0;
    p.batch_size = 0;
    CHECK(gate_train(g, X, y, 8, &p, NULL) == PRISM_E_ARG, "batch_size 0 accepted");
    /* one retain among 8: trains, holds none of it out, and says so */
    p = gate_train_default_params();
    p.epochs = 2;
    gate_train_report rep;
    rc = gate_train(g, X, y, 8, &p, &rep);
    CHECK(rc == PRISM_OK && rep.n_holdout_neg == 0 && rep.n_holdout_pos == 1 && strstr(rep.note, "no held-out retains"),
          "single retain: rc %d holdout %d/%d note \"%s\"", rc, rep.n_holdout_neg, rep.n_holdout_pos, rep.note);
    CHECK(rep.holdout_bal_acc == rep.holdout_acc, "balanced accuracy over the one class present");
    CHECK(gate_mlp_new(0, 1) == NULL, "in = 0 accepted");
    gate_mlp_free(g);
    gate_mlp_free(NULL);
}

int main(void) {
    strcpy(g_tmp, "/tmp/prism_gate_XXXXXX");
    if (!mkdtemp(g_tmp)) {
        perror("mkdtemp");
        return 1;
    }
    test_gelu();
    test_backward_fd();
    test_separable();
    test_xor();
    test_determinism();
    if (g_trained) {
        test_calibration();
        test_save_load();
    }
    test_errors();
    gate_mlp_free(g_trained);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_tmp);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", g_tmp);
    TEST_MAIN_END();
}
