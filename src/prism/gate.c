/* gate.c — PRISM gate MLP (in → 128 → 64 → 1, exact GELU): forward,
 * hand-written backward, class-balanced BCE training with AdamW, threshold
 * calibration, safetensors I/O. See gate.h for the model and file format.
 *
 * Determinism: every reduction has a fixed order whatever the thread count.
 * Rows run in parallel in the forward pass; parameter gradients are summed
 * over the batch in row order, one output unit per thread. */
#include "prism/gate.h"

#include <float.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/safetensors.h"
#include "train/optim.h"
#include "util/error.h"

enum { H1 = GATE_H1, H2 = GATE_H2, CHUNK = 256 };

/* ---------------------------------------------------------------- helpers */

static uint64_t splitmix64(uint64_t *s) {
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Uniform in [0, 1) with 24 random bits. */
static float rng_unit(uint64_t *s) { return (float)(splitmix64(s) >> 40) * 0x1p-24f; }

/* Uniform integer in [0, n), n > 0 (modulo bias < n / 2^64). */
static int64_t rng_below(uint64_t *s, int64_t n) { return (int64_t)(splitmix64(s) % (uint64_t)n); }

static void shuffle(int64_t *a, int64_t n, uint64_t *s) {
    for (int64_t i = n - 1; i > 0; i--) {
        int64_t j = rng_below(s, i + 1), t = a[i];
        a[i] = a[j];
        a[j] = t;
    }
}

float gate_gelu(float x) { return 0.5f * x * (1.0f + erff(x * (float)M_SQRT1_2)); }

/* d/dx 0.5·x·(1 + erf(x/√2)) = Φ(x) + x·φ(x). */
float gate_gelu_grad(float x) {
    const float inv_sqrt_2pi = 0.3989422804014327f;
    return 0.5f * (1.0f + erff(x * (float)M_SQRT1_2)) + x * inv_sqrt_2pi * expf(-0.5f * x * x);
}

static float sigmoidf_(float l) { return (float)(1.0 / (1.0 + exp(-(double)l))); }

/* BCE with logits, numerically stable: max(l,0) - l·y + log(1 + e^-|l|). */
static double bce(float l, int y) { return fmax(l, 0.0) - (double)l * y + log1p(exp(-fabs((double)l))); }

static float dot(const float *a, const float *b, int64_t n) {
    float s = 0;
#pragma omp simd reduction(+ : s)
    for (int64_t i = 0; i < n; i++) s += a[i] * b[i];
    return s;
}

/* ---------------------------------------------------------------- model */

static void set_pointers(gate_mlp *g, float *mem) {
    int64_t in = g->in;
    g->mu = mem;
    g->sigma = g->mu + in;
    g->params = g->sigma + in;
    g->w1 = g->params;
    g->b1 = g->w1 + (int64_t)H1 * in;
    g->w2 = g->b1 + H1;
    g->b2 = g->w2 + H2 * H1;
    g->w3 = g->b2 + H2;
    g->b3 = g->w3 + H2;
    g->n_params = (int64_t)H1 * in + H1 + H2 * H1 + H2 + H2 + 1;
}

static gate_mlp *gate_alloc(int32_t in) {
    if (in <= 0 || in > (1 << 24)) {
        prism_error(PRISM_E_ARG, "gate: feature size %d out of range", (int)in);
        return NULL;
    }
    gate_mlp *g = calloc(1, sizeof *g);
    int64_t n = 2 * (int64_t)in + (int64_t)H1 * in + H1 + H2 * H1 + H2 + H2 + 1;
    float *mem = g ? calloc((size_t)n, sizeof(float)) : NULL;
    if (!mem) {
        free(g);
        prism_error(PRISM_E_NOMEM, "gate: out of memory for hidden size %d", (int)in);
        return NULL;
    }
    g->in = in;
    set_pointers(g, mem);
    g->threshold = 0.5f;
    g->threshold_logit = 0.0f;
    return g;
}

/* torch.nn.Linear.reset_parameters: kaiming_uniform_(a=√5) on the weight is
 * U(-1/√fan_in, 1/√fan_in), and the bias uses the same bound. */
static void linear_init(float *w, float *b, int64_t out, int64_t fan_in, uint64_t *s) {
    float bound = (float)(1.0 / sqrt((double)fan_in));
    for (int64_t i = 0; i < out * fan_in; i++) w[i] = (2.0f * rng_unit(s) - 1.0f) * bound;
    for (int64_t i = 0; i < out; i++) b[i] = (2.0f * rng_unit(s) - 1.0f) * bound;
}

gate_mlp *gate_mlp_new(int32_t in, uint64_t seed) {
    gate_mlp *g = gate_alloc(in);
    if (!g) return NULL;
    for (int32_t i = 0; i < in; i++) g->sigma[i] = 1.0f;
    uint64_t s = seed;
    linear_init(g->w1, g->b1, H1, in, &s);
    linear_init(g->w2, g->b2, H2, H1, &s);
    linear_init(g->w3, g->b3, 1, H2, &s);
    return g;
}

void gate_mlp_free(gate_mlp *g) {
    if (!g) return;
    free(g->mu);
    free(g);
}

prism_status gate_set_threshold(gate_mlp *g, float p) {
    if (!g) return prism_error(PRISM_E_ARG, "gate_set_threshold: gate is NULL");
    if (!(p >= 0.0f && p <= 1.0f)) return prism_error(PRISM_E_ARG, "gate threshold %g is not in [0, 1]", p);
    g->threshold = p;
    g->threshold_logit = p == 0.0f ? -INFINITY : p == 1.0f ? INFINITY : (float)log((double)p / (1.0 - (double)p));
    return PRISM_OK;
}

static void set_threshold_logit(gate_mlp *g, float l) {
    g->threshold_logit = l;
    g->threshold = isinf(l) ? (l > 0 ? 1.0f : 0.0f) : sigmoidf_(l);
}

/* ---------------------------------------------------------------- forward */

/* Activations of one row (the backward pass reads them). */
typedef struct {
    float z1[H1], a1[H1]; /* pre/post-GELU, layer 1 */
    float z2[H2], a2[H2]; /* pre/post-GELU, layer 2 */
} gate_acts;

/* x (in): raw features when raw, else already standardised. The first layer
 * walks x in chunks of CHUNK so that both forms sum in the same order and
 * give bit-identical logits, without a heap buffer. */
static float forward(const gate_mlp *g, const float *x, bool raw, gate_acts *a) {
    const int64_t in = g->in;
    float buf[CHUNK];
    memcpy(a->z1, g->b1, sizeof a->z1);
    for (int64_t c = 0; c < in; c += CHUNK) {
        int64_t len = in - c < CHUNK ? in - c : CHUNK;
        const float *xc = x + c;
        if (raw) {
            for (int64_t i = 0; i < len; i++) buf[i] = (x[c + i] - g->mu[c + i]) / g->sigma[c + i];
            xc = buf;
        }
        for (int j = 0; j < H1; j++) a->z1[j] += dot(g->w1 + j * in + c, xc, len);
    }
    for (int j = 0; j < H1; j++) a->a1[j] = gate_gelu(a->z1[j]);
    for (int k = 0; k < H2; k++) {
        a->z2[k] = g->b2[k] + dot(g->w2 + k * H1, a->a1, H1);
        a->a2[k] = gate_gelu(a->z2[k]);
    }
    return g->b3[0] + dot(g->w3, a->a2, H2);
}

float gate_mlp_logit(const gate_mlp *g, const float *x) {
    gate_acts a;
    return forward(g, x, true, &a);
}

float gate_mlp_prob(const gate_mlp *g, const float *x) { return sigmoidf_(gate_mlp_logit(g, x)); }
float gate_logit_prob(float logit) { return sigmoidf_(logit); }

bool gate_mlp_route(const gate_mlp *g, const float *x, float *prob) {
    float l = gate_mlp_logit(g, x);
    if (prob) *prob = sigmoidf_(l);
    return l >= g->threshold_logit;
}

void gate_mlp_logits(const gate_mlp *g, const float *X, int64_t n, float *out) {
#pragma omp parallel for schedule(static) if (n * g->in > (1 << 16))
    for (int64_t r = 0; r < n; r++) out[r] = gate_mlp_logit(g, X + r * g->in);
}

void gate_mlp_probs(const gate_mlp *g, const float *X, int64_t n, float *out) {
    gate_mlp_logits(g, X, n, out);
    for (int64_t r = 0; r < n; r++) out[r] = sigmoidf_(out[r]);
}

/* Logits of the rows idx[0..m) of X. */
static void logits_of(const gate_mlp *g, const float *X, const int64_t *idx, int64_t m, float *out) {
#pragma omp parallel for schedule(static) if (m * g->in > (1 << 16))
    for (int64_t r = 0; r < m; r++) out[r] = gate_mlp_logit(g, X + idx[r] * g->in);
}

/* ---------------------------------------------------------------- backward */

/* Gradient of the batch loss Σ_b dlogit-weighted terms into grad (shaped like
 * g->params, overwritten). xs (B, in) standardised rows, acts (B), dl (B) =
 * ∂loss/∂logit per row; dz1 (B, H1), dz2 (B, H2) scratch. */
static void backward(const gate_mlp *g, const float *xs, const gate_acts *acts, const float *dl, int64_t B,
                     float *dz1, float *dz2, float *grad) {
    const int64_t in = g->in;
    float *gw1 = grad, *gb1 = gw1 + (int64_t)H1 * in, *gw2 = gb1 + H1, *gb2 = gw2 + H2 * H1, *gw3 = gb2 + H2,
          *gb3 = gw3 + H2;
    /* per-row deltas: dz2 = dl·w3 ⊙ gelu'(z2), dz1 = (W2ᵀ dz2) ⊙ gelu'(z1) */
#pragma omp parallel for schedule(static) if (B >= 16)
    for (int64_t b = 0; b < B; b++) {
        const gate_acts *a = &acts[b];
        float *d2 = dz2 + b * H2, *d1 = dz1 + b * H1;
        for (int k = 0; k < H2; k++) d2[k] = dl[b] * g->w3[k] * gate_gelu_grad(a->z2[k]);
        for (int j = 0; j < H1; j++) {
            float s = 0;
            for (int k = 0; k < H2; k++) s += g->w2[k * H1 + j] * d2[k];
            d1[j] = s * gate_gelu_grad(a->z1[j]);
        }
    }
    /* layer 3 */
    gb3[0] = 0;
    for (int k = 0; k < H2; k++) gw3[k] = 0;
    for (int64_t b = 0; b < B; b++) {
        gb3[0] += dl[b];
        for (int k = 0; k < H2; k++) gw3[k] += dl[b] * acts[b].a2[k];
    }
    /* layer 2: one output unit per iteration, rows summed in order */
    for (int k = 0; k < H2; k++) {
        float *gw = gw2 + k * H1;
        memset(gw, 0, H1 * sizeof(float));
        gb2[k] = 0;
        for (int64_t b = 0; b < B; b++) {
            float d = dz2[b * H2 + k];
            gb2[k] += d;
            const float *a1 = acts[b].a1;
#pragma omp simd
            for (int j = 0; j < H1; j++) gw[j] += d * a1[j];
        }
    }
    /* layer 1: the (H1, in) gradient dominates the cost */
#pragma omp parallel for schedule(static) if (B * in > (1 << 15))
    for (int j = 0; j < H1; j++) {
        float *gw = gw1 + j * in;
        memset(gw, 0, (size_t)in * sizeof(float));
        gb1[j] = 0;
        for (int64_t b = 0; b < B; b++) {
            float d = dz1[b * H1 + j];
            gb1[j] += d;
            if (d == 0.0f) continue;
            const float *x = xs + b * in;
#pragma omp simd
            for (int64_t i = 0; i < in; i++) gw[i] += d * x[i];
        }
    }
}

/* Scratch for one batch of up to cap rows. */
typedef struct {
    int64_t cap;
    float *xs;       /* (cap, in) standardised rows */
    gate_acts *acts; /* (cap) */
    float *dl;       /* (cap) ∂loss/∂logit */
    float *dz1;      /* (cap, H1) */
    float *dz2;      /* (cap, H2) */
} batch_buf;

static void batch_free(batch_buf *b) {
    free(b->xs);
    free(b->acts);
    free(b->dl);
    free(b->dz1);
    free(b->dz2);
}

static bool batch_alloc(batch_buf *b, int64_t cap, int64_t in) {
    b->cap = cap;
    b->xs = malloc((size_t)(cap * in) * sizeof *b->xs);
    b->acts = malloc((size_t)cap * sizeof *b->acts);
    b->dl = malloc((size_t)cap * sizeof *b->dl);
    b->dz1 = malloc((size_t)(cap * H1) * sizeof *b->dz1);
    b->dz2 = malloc((size_t)(cap * H2) * sizeof *b->dz2);
    if (b->xs && b->acts && b->dl && b->dz1 && b->dz2) return true;
    batch_free(b);
    return false;
}

/* Loss (1/bs)·Σ_b wt[r]·BCE(logit_r, y[r]) over rows r = idx[b] of X (all
 * rows 0..bs-1 when idx is NULL), and its gradient into grad (shaped like
 * g->params, overwritten) unless grad is NULL. */
static double batch_grad(const gate_mlp *g, const float *X, const int64_t *idx, int64_t bs, const int8_t *y,
                         const float *wt, batch_buf *bb, float *grad) {
    const int64_t in = g->in;
    double loss = 0;
#pragma omp parallel for schedule(static) reduction(+ : loss) if (bs * in > (1 << 15))
    for (int64_t b = 0; b < bs; b++) {
        int64_t r = idx ? idx[b] : b;
        const float *x = X + r * in;
        float *o = bb->xs + b * in;
        for (int64_t i = 0; i < in; i++) o[i] = (x[i] - g->mu[i]) / g->sigma[i];
        float l = forward(g, o, false, &bb->acts[b]);
        bb->dl[b] = wt[r] * (sigmoidf_(l) - (float)y[r]) / (float)bs;
        loss += wt[r] * bce(l, y[r]); /* reporting only: its summation order does not feed the weights */
    }
    if (grad) backward(g, bb->xs, bb->acts, bb->dl, bs, bb->dz1, bb->dz2, grad);
    return loss / (double)bs;
}

prism_status gate_loss_grad(const gate_mlp *g, const float *X, const int8_t *y, const float *w, int64_t n,
                            double *loss, float *grad) {
    if (!g || !X || !y || !w || n < 1) return prism_error(PRISM_E_ARG, "gate_loss_grad: bad arguments");
    batch_buf bb;
    if (!batch_alloc(&bb, n, g->in)) return prism_error(PRISM_E_NOMEM, "gate_loss_grad: out of memory");
    double l = batch_grad(g, X, NULL, n, y, w, &bb, grad);
    if (loss) *loss = l;
    batch_free(&bb);
    return PRISM_OK;
}

/* ---------------------------------------------------------------- training */

gate_train_params gate_train_default_params(void) {
    return (gate_train_params){
        .epochs = 200, .lr = 1e-3, .weight_decay = 1e-4, .batch_size = 32, .holdout_frac = 0.2, .seed = 0,
        .balance = true};
}

static prism_status check_train_args(const gate_mlp *g, const float *X, const int8_t *y, int64_t n,
                                     const gate_train_params *p, int64_t *n_pos) {
    if (!g || !X || !y || !p) return prism_error(PRISM_E_ARG, "gate_train: NULL argument");
    if (n < 2) return prism_error(PRISM_E_ARG, "gate_train: %lld examples; the gate needs at least one win and one retain", (long long)n);
    if (p->epochs < 0 || p->batch_size < 1 || !(p->lr > 0 && isfinite(p->lr)) ||
        !(p->weight_decay >= 0 && isfinite(p->weight_decay)) || !(p->holdout_frac >= 0 && p->holdout_frac < 1))
        return prism_error(PRISM_E_ARG,
                           "gate_train: bad parameters (epochs %d, lr %g, weight_decay %g, batch_size %d, holdout_frac %g)",
                           (int)p->epochs, p->lr, p->weight_decay, (int)p->batch_size, p->holdout_frac);
    *n_pos = 0;
    for (int64_t r = 0; r < n; r++) {
        if (y[r] != 0 && y[r] != 1)
            return prism_error(PRISM_E_ARG, "gate_train: label of example %lld is %d; expected 0 (retain) or 1 (win)",
                               (long long)r, (int)y[r]);
        *n_pos += y[r];
        const float *x = X + r * g->in;
        for (int64_t i = 0; i < g->in; i++)
            if (!isfinite(x[i]))
                return prism_error(PRISM_E_ARG, "gate_train: feature %lld of example %lld is %g", (long long)i,
                                   (long long)r, x[i]);
    }
    if (*n_pos == 0 || *n_pos == n)
        return prism_error(PRISM_E_ARG,
                           "gate_train: all %lld examples are %s; the gate needs both wins (adapter better, label 1) "
                           "and retains (base better, label 0) to learn a decision",
                           (long long)n, *n_pos ? "wins" : "retains");
    return PRISM_OK;
}

/* Population mean and std of the rows idx (m) of X, in double; sigma = 1
 * where std < 1e-6 (as sklearn's StandardScaler treats constant features),
 * so a dimension that never varied in training is not amplified ~1e6-fold
 * at inference. */
static void standardisation(gate_mlp *g, const float *X, const int64_t *idx, int64_t m) {
    const int64_t in = g->in;
#pragma omp parallel for schedule(static) if (m * in > (1 << 16))
    for (int64_t i = 0; i < in; i++) {
        double s = 0, ss = 0;
        for (int64_t r = 0; r < m; r++) s += X[idx[r] * in + i];
        double mean = s / (double)m;
        for (int64_t r = 0; r < m; r++) {
            double d = X[idx[r] * in + i] - mean;
            ss += d * d;
        }
        double sd = sqrt(ss / (double)m);
        g->mu[i] = (float)mean;
        g->sigma[i] = sd >= 1e-6 ? (float)sd : 1.0f;
    }
}

/* Accuracy of logits l (m) against labels of rows idx at threshold_logit;
 * per-class correct counts in ok[2] and totals in tot[2]. */
static void tally(const gate_mlp *g, const float *l, const int64_t *idx, int64_t m, const int8_t *y, int64_t ok[2],
                  int64_t tot[2]) {
    ok[0] = ok[1] = tot[0] = tot[1] = 0;
    for (int64_t r = 0; r < m; r++) {
        int c = y[idx[r]];
        tot[c]++;
        ok[c] += (l[r] >= g->threshold_logit) == (c == 1);
    }
}

prism_status gate_train(gate_mlp *g, const float *X, const int8_t *y, int64_t n, const gate_train_params *p,
                        gate_train_report *rep) {
    int64_t n_pos = 0;
    prism_status rc = check_train_args(g, X, y, n, p, &n_pos);
    if (rc) return rc;
    const int64_t in = g->in, B = p->batch_size < n ? p->batch_size : n;

    int64_t *cls = malloc((size_t)n * sizeof *cls);        /* class 0 rows, then class 1 rows */
    int64_t *train = malloc((size_t)n * sizeof *train);
    int64_t *hold = malloc((size_t)n * sizeof *hold);
    float *wt = malloc((size_t)n * sizeof *wt);             /* per-row loss weight */
    batch_buf bb;
    bool bb_ok = batch_alloc(&bb, B, in);
    float *grad = malloc((size_t)(3 * g->n_params) * sizeof *grad); /* gradient, Adam m, Adam v */
    float *lg = malloc((size_t)n * sizeof *lg);             /* evaluation logits */
    if (!cls || !train || !hold || !wt || !bb_ok || !grad || !lg) {
        rc = prism_error(PRISM_E_NOMEM, "gate_train: out of memory (%lld examples, hidden %lld)", (long long)n,
                         (long long)in);
        goto done;
    }
    float *am = grad + g->n_params, *av = am + g->n_params;
    memset(am, 0, 2 * (size_t)g->n_params * sizeof(float));

    /* Stratified split: a seeded shuffle per class, the first rows held out. */
    uint64_t rng = p->seed ^ 0x5851f42d4c957f2dull;
    int64_t n_c[2] = {n - n_pos, n_pos}, n_hold_c[2], n_train = 0, n_hold = 0, n_train_c[2];
    char note[192] = "";
    for (int c = 0; c < 2; c++) {
        int64_t *rows = cls + (c ? n_c[0] : 0), k = 0;
        for (int64_t r = 0; r < n; r++)
            if (y[r] == c) rows[k++] = r;
        shuffle(rows, k, &rng);
        int64_t h = n_c[c] < 2 ? 0 : llround(p->holdout_frac * (double)n_c[c]);
        if (h > n_c[c] - 1) h = n_c[c] - 1;
        n_hold_c[c] = h;
        n_train_c[c] = n_c[c] - h;
        for (int64_t r = 0; r < h; r++) hold[n_hold++] = rows[r];
        for (int64_t r = h; r < n_c[c]; r++) train[n_train++] = rows[r];
        if (p->holdout_frac > 0 && h == 0) {
            size_t len = strlen(note);
            snprintf(note + len, sizeof note - len, "%sno held-out %s (%lld in all)", len ? "; " : "",
                     c ? "wins" : "retains", (long long)n_c[c]);
        }
    }
    if (p->holdout_frac == 0) snprintf(note, sizeof note, "holdout_frac = 0: no held-out split");
    for (int64_t r = 0; r < n_train; r++) {
        int c = y[train[r]];
        wt[train[r]] = p->balance ? (float)((double)n_train / (2.0 * (double)n_train_c[c])) : 1.0f;
    }

    standardisation(g, X, train, n_train);

    /* Mini-batch AdamW over shuffled epochs; batch loss (1/B)·Σ w·BCE. */
    adamw_params hp = adamw_default_params();
    hp.weight_decay = p->weight_decay;
    int64_t step = 0;
    for (int32_t e = 0; e < p->epochs; e++) {
        shuffle(train, n_train, &rng);
        for (int64_t s = 0; s < n_train; s += B) {
            int64_t bs = n_train - s < B ? n_train - s : B;
            batch_grad(g, X, train + s, bs, y, wt, &bb, grad);
            adamw_update(g->params, grad, am, av, g->n_params, ++step, p->lr, &hp);
        }
    }
    for (int64_t i = 0; i < g->n_params; i++)
        if (!isfinite(g->params[i])) {
            rc = prism_error(PRISM_E_RANGE, "gate_train: training diverged (non-finite weights after %lld steps); "
                             "lower the learning rate", (long long)step);
            goto done;
        }

    if (rep) {
        memset(rep, 0, sizeof *rep);
        int64_t ok[2], tot[2];
        logits_of(g, X, train, n_train, lg);
        tally(g, lg, train, n_train, y, ok, tot);
        double loss = 0;
        for (int64_t r = 0; r < n_train; r++) loss += wt[train[r]] * bce(lg[r], y[train[r]]);
        rep->n_train = (int32_t)n_train;
        rep->n_holdout = (int32_t)n_hold;
        rep->n_pos = (int32_t)n_pos;
        rep->n_neg = (int32_t)(n - n_pos);
        rep->n_holdout_pos = (int32_t)n_hold_c[1];
        rep->n_holdout_neg = (int32_t)n_hold_c[0];
        rep->steps = step;
        rep->train_acc = (double)(ok[0] + ok[1]) / (double)n_train;
        rep->final_train_loss = loss / (double)n_train;
        rep->holdout_acc = rep->holdout_bal_acc = NAN;
        if (n_hold) {
            logits_of(g, X, hold, n_hold, lg);
            tally(g, lg, hold, n_hold, y, ok, tot);
            rep->holdout_acc = (double)(ok[0] + ok[1]) / (double)n_hold;
            double rec = 0;
            int present = 0;
            for (int c = 0; c < 2; c++)
                if (tot[c]) {
                    rec += (double)ok[c] / (double)tot[c];
                    present++;
                }
            rep->holdout_bal_acc = rec / present;
        }
        snprintf(rep->note, sizeof rep->note, "%s", note);
    }
done:
    free(cls);
    free(train);
    free(hold);
    free(wt);
    if (bb_ok) batch_free(&bb);
    free(grad);
    free(lg);
    return rc;
}

/* ---------------------------------------------------------------- calibration */

static int cmp_desc(const void *a, const void *b) {
    float x = *(const float *)a, y = *(const float *)b;
    return (x < y) - (x > y);
}

prism_status gate_calibrate(gate_mlp *g, const float *X, int64_t n, double route_rate, int64_t *routed) {
    if (!g || !X) return prism_error(PRISM_E_ARG, "gate_calibrate: NULL argument");
    if (n < 1) return prism_error(PRISM_E_ARG, "gate_calibrate: no rows to calibrate on");
    if (!(route_rate >= 0 && route_rate <= 1))
        return prism_error(PRISM_E_ARG, "gate_calibrate: route rate %g is not in [0, 1]", route_rate);
    for (int64_t i = 0; i < n * g->in; i++)
        if (!isfinite(X[i]))
            return prism_error(PRISM_E_ARG, "gate_calibrate: feature %lld of row %lld is %g", (long long)(i % g->in),
                               (long long)(i / g->in), X[i]);
    float *l = malloc((size_t)n * sizeof *l);
    if (!l) return prism_error(PRISM_E_NOMEM, "gate_calibrate: out of memory");
    gate_mlp_logits(g, X, n, l);
    float *sorted = malloc((size_t)n * sizeof *sorted);
    if (!sorted) {
        free(l);
        return prism_error(PRISM_E_NOMEM, "gate_calibrate: out of memory");
    }
    memcpy(sorted, l, (size_t)n * sizeof *sorted);
    qsort(sorted, (size_t)n, sizeof *sorted, cmp_desc);
    int64_t k = llround(route_rate * (double)n);
    if (k == 0) set_threshold_logit(g, nextafterf(sorted[0], INFINITY));
    else if (k == n) set_threshold_logit(g, -INFINITY);
    else set_threshold_logit(g, sorted[k - 1]);
    if (routed) {
        int64_t c = 0;
        for (int64_t r = 0; r < n; r++) c += l[r] >= g->threshold_logit;
        *routed = c;
    }
    free(sorted);
    free(l);
    return PRISM_OK;
}

/* ---------------------------------------------------------------- file */

prism_status gate_save(const gate_mlp *g, const char *path, const char *metadata_json) {
    if (!g || !path) return prism_error(PRISM_E_ARG, "gate_save: NULL argument");
    json_t *md;
    if (metadata_json) {
        json_error_t jerr;
        md = json_loads(metadata_json, 0, &jerr);
        if (!json_is_object(md)) {
            json_decref(md);
            return prism_error(PRISM_E_ARG, "%s: gate metadata is not a JSON object: %s", path,
                               md ? "not an object" : jerr.text);
        }
    } else {
        md = json_object();
    }
    char hidden[16];
    snprintf(hidden, sizeof hidden, "%d", (int)g->in);
    json_object_set_new(md, "format", json_string("prism-gate"));
    json_object_set_new(md, "hidden", json_string(hidden));
    char *mds = json_dumps(md, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(md);
    if (!mds) return prism_error(PRISM_E_NOMEM, "%s: cannot serialise gate metadata", path);
    const int64_t in = g->in;
    const st_write_tensor ts[] = {
        {"mu", ST_F32, 1, {in}, g->mu},
        {"sigma", ST_F32, 1, {in}, g->sigma},
        {"w1", ST_F32, 2, {H1, in}, g->w1},
        {"b1", ST_F32, 1, {H1}, g->b1},
        {"w2", ST_F32, 2, {H2, H1}, g->w2},
        {"b2", ST_F32, 1, {H2}, g->b2},
        {"w3", ST_F32, 1, {H2}, g->w3},
        {"b3", ST_F32, 1, {1}, g->b3},
        {"threshold", ST_F32, 1, {1}, &g->threshold},
        {"threshold_logit", ST_F32, 1, {1}, &g->threshold_logit},
    };
    prism_status rc = st_write(path, ts, sizeof ts / sizeof ts[0], mds);
    free(mds);
    return rc;
}

/* The "format" entry of a safetensors file's __metadata__ (copied into
 * fmt, "" if absent). The file was already validated by st_open. */
static prism_status read_format(const char *path, char *fmt, size_t cap) {
    fmt[0] = 0;
    FILE *f = fopen(path, "rb");
    if (!f) return prism_error(PRISM_E_IO, "%s: cannot open", path);
    unsigned char len8[8];
    uint64_t hl = 0;
    prism_status rc = PRISM_OK;
    if (fread(len8, 1, 8, f) != 8) rc = prism_error(PRISM_E_FORMAT, "%s: truncated header", path);
    for (int i = 0; i < 8; i++) hl |= (uint64_t)len8[i] << (8 * i);
    char *hdr = NULL;
    if (!rc && hl > (100u << 20)) rc = prism_error(PRISM_E_FORMAT, "%s: header of %llu bytes", path, (unsigned long long)hl);
    if (!rc && !(hdr = malloc(hl))) rc = prism_error(PRISM_E_NOMEM, "%s: out of memory", path);
    if (!rc && fread(hdr, 1, hl, f) != hl) rc = prism_error(PRISM_E_FORMAT, "%s: truncated header", path);
    fclose(f);
    if (!rc) {
        json_error_t jerr;
        json_t *root = json_loadb(hdr, hl, 0, &jerr);
        const char *s = json_string_value(json_object_get(json_object_get(root, "__metadata__"), "format"));
        if (s) snprintf(fmt, cap, "%s", s);
        json_decref(root);
    }
    free(hdr);
    return rc;
}

prism_status gate_load(const char *path, int32_t expected_in, gate_mlp **out) {
    if (!path || !out) return prism_error(PRISM_E_ARG, "gate_load: NULL argument");
    *out = NULL;
    st_set *s = NULL;
    prism_status rc = st_open(path, &s);
    if (rc) return rc;
    char fmt[64];
    rc = read_format(path, fmt, sizeof fmt);
    if (!rc && strcmp(fmt, "prism-gate") != 0)
        rc = prism_error(PRISM_E_FORMAT, "%s: not a prism gate file (__metadata__ format is \"%s\", expected \"prism-gate\")",
                         path, fmt);
    const st_tensor *tw1 = rc ? NULL : st_find(s, "w1");
    if (!rc && (!tw1 || tw1->ndim != 2 || tw1->shape[0] != H1 || tw1->shape[1] < 1 || tw1->shape[1] > (1 << 24)))
        rc = prism_error(PRISM_E_FORMAT, "%s: tensor w1 is %s; expected shape (%d, hidden)", path,
                         tw1 ? "misshapen" : "missing", H1);
    int32_t in = rc ? 0 : (int32_t)tw1->shape[1];
    if (!rc && expected_in > 0 && in != expected_in)
        rc = prism_error(PRISM_E_FORMAT, "%s: gate was trained for hidden size %d, model has %d", path, (int)in,
                         (int)expected_in);
    gate_mlp *g = rc ? NULL : gate_alloc(in);
    if (!rc && !g) rc = PRISM_E_NOMEM;
    if (!rc) {
        struct {
            const char *name;
            int ndim;
            int64_t shape[2];
            float *dst;
        } want[] = {
            {"mu", 1, {in}, g->mu},      {"sigma", 1, {in}, g->sigma},  {"w1", 2, {H1, in}, g->w1},
            {"b1", 1, {H1}, g->b1},      {"w2", 2, {H2, H1}, g->w2},    {"b2", 1, {H2}, g->b2},
            {"w3", 1, {H2}, g->w3},      {"b3", 1, {1}, g->b3},         {"threshold", 1, {1}, &g->threshold},
            {"threshold_logit", 1, {1}, &g->threshold_logit},
        };
        for (size_t i = 0; i < sizeof want / sizeof want[0] && !rc; i++) {
            const st_tensor *t = st_find(s, want[i].name);
            bool optional = !strcmp(want[i].name, "threshold_logit");
            if (!t) {
                if (!optional) rc = prism_error(PRISM_E_FORMAT, "%s: gate tensor %s is missing", path, want[i].name);
                else gate_set_threshold(g, g->threshold); /* derive it (validated below) */
                continue;
            }
            bool shape_ok = t->ndim == want[i].ndim && t->dtype != ST_I32 && t->dtype != ST_I64 && t->dtype != ST_OTHER;
            for (int d = 0; d < want[i].ndim && shape_ok; d++) shape_ok = t->shape[d] == want[i].shape[d];
            if (!shape_ok) {
                char got[96] = "", exp[48];
                for (int d = 0; d < t->ndim && d < 8; d++)
                    snprintf(got + strlen(got), sizeof got - strlen(got), "%s%lld", d ? ", " : "", (long long)t->shape[d]);
                if (want[i].ndim == 2)
                    snprintf(exp, sizeof exp, "%lld, %lld", (long long)want[i].shape[0], (long long)want[i].shape[1]);
                else
                    snprintf(exp, sizeof exp, "%lld", (long long)want[i].shape[0]);
                rc = prism_error(PRISM_E_FORMAT, "%s: gate tensor %s is %s (%s); expected float (%s)", path,
                                 want[i].name, st_dtype_name(t->dtype), got, exp);
                break;
            }
            rc = st_read_f32(s, t, want[i].dst);
            for (int64_t k = 0; k < t->numel && !rc; k++) {
                float v = want[i].dst[k];
                if (isnan(v) || (!optional && isinf(v)))
                    rc = prism_error(PRISM_E_FORMAT, "%s: gate tensor %s has a non-finite value at %lld", path,
                                     want[i].name, (long long)k);
            }
        }
    }
    if (!rc && !(g->threshold >= 0 && g->threshold <= 1))
        rc = prism_error(PRISM_E_FORMAT, "%s: gate threshold %g is not in [0, 1]", path, g->threshold);
    if (!rc) { /* a threshold edited by hand without its logit would be silently ignored */
        float p = isinf(g->threshold_logit) ? (g->threshold_logit > 0 ? 1.0f : 0.0f) : sigmoidf_(g->threshold_logit);
        if (fabsf(p - g->threshold) > 1e-6f)
            rc = prism_error(PRISM_E_FORMAT, "%s: gate threshold %g disagrees with threshold_logit %g (sigmoid %g)",
                             path, g->threshold, g->threshold_logit, p);
    }
    for (int32_t i = 0; !rc && i < in; i++)
        if (!(g->sigma[i] > 0)) rc = prism_error(PRISM_E_FORMAT, "%s: gate sigma[%d] = %g is not positive", path, (int)i, g->sigma[i]);
    st_close(s);
    if (rc) {
        gate_mlp_free(g);
        return rc;
    }
    *out = g;
    return PRISM_OK;
}
