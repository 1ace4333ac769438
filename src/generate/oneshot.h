/* oneshot.h — generation of a set of prompts in a context made for them: the
 * batch-and-forget pattern of `prism bootstrap` and `prism eval`. */
#ifndef PRISM_GENERATE_ONESHOT_H
#define PRISM_GENERATE_ONESHOT_H

#include <stdint.h>

#include "prism.h"

/* Generates continuations of n token prompts together in a fresh context of
 * longest prompt + max_new + 1 positions (at most n_ctx_max). Sampling is by
 * temperature alone (0 = greedy; top-k/top-p off) with one seed per prompt;
 * router NULL = unrouted. out[n] is filled as by prism_generate (the caller
 * clears each with prism_generation_clear). */
prism_status generate_oneshot(prism_model *m, const prism_tokenizer *t, int32_t n_ctx_max, const int32_t *const *ids,
                              const int32_t *lens, int n, int32_t max_new, float temperature, const uint64_t *seeds,
                              const prism_router *router, prism_route_mode route, prism_generation *out);

#endif
