/* rows.h — the next token of each row of a batch just headed, drawn the one way
 * prism_generate and the server both draw it. */
#ifndef PRISM_GENERATE_ROWS_H
#define PRISM_GENERATE_ROWS_H

#include <stddef.h>
#include <stdint.h>

#include "prism.h"

/* One batch row to sample: its sequence's sampler and history (prompt +
 * generated ids, for the repetition penalty), and where its token goes.
 * sampler NULL: the row is not sampled. */
typedef struct {
    prism_sampler *sampler;
    const int32_t *hist;
    size_t n_hist;
    int32_t *next;
} gen_row;

/* What gen_sample_rows works in, for batches of up to cap rows. */
typedef struct {
    gen_row *rows; /* (cap) filled by the caller */
    float *lg;     /* (threads, vocab) a logits copy per sampling thread */
    float *dinv;   /* (cap) rows drawn on the device: 1/temperature (0: not there), */
    double *du;    /* their uniforms, */
    int32_t *did;  /* and the ids drawn */
    int32_t cap, vocab, threads;
} gen_rows;

prism_status gen_rows_init(gen_rows *g, int32_t cap, int32_t vocab);
void gen_rows_free(gen_rows *g);

/* The next token of every row g->rows[0..n) of c's last batch (n: its row
 * count) that has a sampler: greedy rows by the argmax (on the device for a
 * CUDA context: no logits copied); on a CUDA context the rows that draw from
 * the whole softmax by the device, each with its sampler's next uniform; the
 * rest by their sampler on the host from a copy of the logits, rows in
 * parallel (each has its own sampler and generator; with a GPU doing the
 * forward pass, a full-vocabulary softmax per row on one host core would take
 * as long as the step). */
prism_status gen_sample_rows(prism_ctx *c, gen_rows *g, int32_t n);

#endif
