/* rows.c — sampling a batch's rows (see rows.h). */
#include "generate/rows.h"

#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/forward.h"
#include "util/error.h"

prism_status gen_rows_init(gen_rows *g, int32_t cap, int32_t vocab) {
    memset(g, 0, sizeof *g);
    const int n_thr = omp_get_max_threads();
    g->rows = calloc((size_t)cap, sizeof *g->rows);
    g->lg = malloc((size_t)vocab * (size_t)n_thr * sizeof *g->lg);
    g->dinv = malloc((size_t)cap * sizeof *g->dinv);
    g->du = malloc((size_t)cap * sizeof *g->du);
    g->did = malloc((size_t)cap * sizeof *g->did);
    g->cap = cap;
    g->threads = n_thr;
    g->vocab = vocab;
    if (!g->rows || !g->lg || !g->dinv || !g->du || !g->did) {
        gen_rows_free(g);
        return prism_error(PRISM_E_NOMEM, "out of memory for sampling %d rows", cap);
    }
    return PRISM_OK;
}

void gen_rows_free(gen_rows *g) {
    if (!g) return;
    free(g->rows);
    free(g->lg);
    free(g->dinv);
    free(g->du);
    free(g->did);
    memset(g, 0, sizeof *g);
}

/* Row k on the host: the argmax when greedy, else the sampler on a copy of the logits. */
static prism_status host_row(prism_ctx *c, int32_t k, const gen_row *r, float *lg, int32_t V) {
    if (prism_sampler_is_greedy(r->sampler)) {
        *r->next = prism_get_argmax(c, k);
        return *r->next < 0 ? prism_error(PRISM_E_ARG, "no logits for batch row %d: %s", k, prism_last_error()) : PRISM_OK;
    }
    const float *l = prism_get_logits(c, k);
    if (!l) return prism_error(PRISM_E_ARG, "no logits for batch row %d: %s", k, prism_last_error());
    memcpy(lg, l, (size_t)V * sizeof(float));
    *r->next = prism_sampler_sample(r->sampler, lg, V, r->hist, r->n_hist);
    return PRISM_OK;
}

prism_status gen_sample_rows(prism_ctx *c, gen_rows *g, int32_t n) {
    if (n < 0 || n > g->cap) return prism_error(PRISM_E_ARG, "%d rows to sample; room for %d", n, g->cap);
    const int32_t V = g->vocab;
    const bool on_dev = forward_samples_on_device(c);
    int32_t first_host = -1, first_greedy = -1;
    bool any_dev = false;
    for (int32_t k = 0; k < n; k++) {
        const gen_row *r = &g->rows[k];
        g->dinv[k] = 0.0f;
        if (!r->sampler) continue;
        if (prism_sampler_is_greedy(r->sampler)) {
            if (first_greedy < 0) first_greedy = k;
        } else if (on_dev && prism_sampler_is_softmax(r->sampler, V, &g->dinv[k])) {
            g->du[k] = prism_sampler_next_u(r->sampler);
            any_dev = true;
        } else if (first_host < 0) {
            first_host = k;
        }
    }
    if (any_dev) {
        prism_status st = forward_sample_softmax(c, g->dinv, g->du, g->did);
        if (st) return st;
        for (int32_t k = 0; k < n; k++)
            if (g->dinv[k] > 0.0f) *g->rows[k].next = g->did[k];
    }
    /* a CUDA context copies the logits / argmaxes on first use: do it once, before the threads */
    if ((first_host >= 0 && !prism_get_logits(c, first_host)) || (first_greedy >= 0 && prism_get_argmax(c, first_greedy) < 0))
        return prism_error(PRISM_E_ARG, "no logits: %s", prism_last_error());
    /* the first failing row; its message is rebuilt here (a worker thread's stays in that thread) */
    int32_t bad = n;
    char msg[512] = "";
#pragma omp parallel for schedule(dynamic, 1) num_threads(g->threads) \
    if (first_host >= 0 && n > 1 && (int64_t)n * V >= (1 << 17))
    for (int32_t k = 0; k < n; k++) {
        if (!g->rows[k].sampler || g->dinv[k] > 0.0f) continue;
        if (host_row(c, k, &g->rows[k], g->lg + (size_t)omp_get_thread_num() * (size_t)V, V)) {
#pragma omp critical
            if (k < bad) bad = k, snprintf(msg, sizeof msg, "%s", prism_last_error());
        }
    }
    return bad < n ? prism_error(PRISM_E_ARG, "%s", msg) : PRISM_OK;
}
