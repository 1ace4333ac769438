/* test_fixture.h — what the parity tests share: reading a reference tensor of
 * the fixtures as F32, and a context for a fixture model. Both exit(2) on an
 * error, which is a broken fixture set or setup rather than a failed check. */
#ifndef PRISM_TEST_FIXTURE_H
#define PRISM_TEST_FIXTURE_H

#include <stdio.h>
#include <stdlib.h>

#include "model/forward.h"
#include "model/safetensors.h"

static inline float *fixture_f32(st_set *s, const char *name, int64_t *numel) {
    const st_tensor *t = st_find(s, name);
    if (!t) { fprintf(stderr, "reference tensor %s missing\n", name); exit(2); }
    float *d = malloc((size_t)t->numel * sizeof(float));
    if (!d || st_read_f32(s, t, d)) { fprintf(stderr, "%s: %s\n", name, d ? prism_last_error() : "out of memory"); exit(2); }
    if (numel) *numel = t->numel;
    return d;
}

/* nseq sequences of up to 512 positions, batches of up to 512 tokens */
static inline prism_ctx *fixture_ctx(prism_model *m, int nseq) {
    prism_ctx_params cp = prism_ctx_default_params();
    cp.n_seq_max = nseq;
    cp.n_ctx = 512;
    cp.n_batch = 512;
    prism_ctx *c = NULL;
    if (prism_ctx_new(m, cp, &c)) { fprintf(stderr, "ctx: %s\n", prism_last_error()); exit(2); }
    return c;
}

#endif
