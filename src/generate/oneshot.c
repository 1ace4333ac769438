/* oneshot.c — a fresh, right-sized context per batch of prompts. */
#include "generate/oneshot.h"

#include "util/error.h"

prism_status generate_oneshot(prism_model *m, const prism_tokenizer *t, int32_t n_ctx_max, const int32_t *const *ids,
                              const int32_t *lens, int n, int32_t max_new, float temperature, const uint64_t *seeds,
                              const prism_router *router, prism_route_mode route, prism_generation *out) {
    int32_t maxlen = 0;
    for (int i = 0; i < n; i++) maxlen = lens[i] > maxlen ? lens[i] : maxlen;
    prism_ctx_params cp = prism_ctx_default_params();
    cp.n_seq_max = n;
    cp.n_ctx = maxlen + max_new + 1;
    if (cp.n_ctx > n_ctx_max) cp.n_ctx = n_ctx_max;
    if (maxlen >= cp.n_ctx)
        return prism_error(PRISM_E_RANGE, "a prompt of %d tokens leaves no room to generate in %d positions", maxlen, cp.n_ctx);
    prism_ctx *ctx = NULL;
    prism_status st = prism_ctx_new(m, cp, &ctx);
    if (st) return st;
    prism_generate_params gp = prism_generate_default_params();
    gp.sampling.temperature = temperature;
    gp.sampling.top_p = 1.0f;
    gp.sampling.top_k = 0;
    gp.max_new_tokens = max_new;
    gp.seeds = seeds;
    gp.router = router;
    gp.route = route;
    st = prism_generate(ctx, t, ids, lens, n, &gp, NULL, NULL, out, NULL);
    prism_ctx_free(ctx);
    return st;
}
