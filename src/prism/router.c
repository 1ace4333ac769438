/* router.c — PRISM routed inference: the gate reads the hidden state after
 * layer 0 at a prompt's last token and picks, per sequence, the base model or
 * the persona adapter for layers 1..L-1 (layer 0 is never adapted, so the
 * feature is the same whatever the route). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lora/lora.h"
#include "model/forward.h"
#include "prism/gate.h"
#include "prism/runinfo.h"
#include "util/error.h"

struct prism_router {
    prism_adapter *adapter;
    gate_mlp *gate;
};

int prism_route_mode_parse(const char *s) {
    if (!s) return -1;
    if (!strcmp(s, "auto")) return PRISM_ROUTE_AUTO;
    if (!strcmp(s, "base")) return PRISM_ROUTE_BASE;
    if (!strcmp(s, "adapter")) return PRISM_ROUTE_ADAPTER;
    return -1;
}

prism_status prism_router_load(const prism_model *m, const char *run_dir, prism_router **out) {
    *out = NULL;
    char path[4200];
    prism_status st = runinfo_check_model(run_dir, m);
    if (st) return st;
    prism_router *r = calloc(1, sizeof *r);
    if (!r) return prism_error(PRISM_E_NOMEM, "out of memory");
    snprintf(path, sizeof path, "%s/adapter", run_dir);
    if ((st = prism_adapter_load(m, path, &r->adapter))) goto fail;
    for (int t = 0; t < LORA_N_TARGETS; t++)
        if (lora_mod(r->adapter, 0, (lora_target)t)->r) {
            st = prism_error(PRISM_E_FORMAT, "%s: the PRISM adapter adapts layer 0, which the gate reads; it must start at layer 1", path);
            goto fail;
        }
    snprintf(path, sizeof path, "%s/gate.safetensors", run_dir);
    if ((st = gate_load(path, m->cfg.hidden, &r->gate))) goto fail;
    *out = r;
    return PRISM_OK;
fail:
    prism_router_free(r);
    return st;
}

void prism_router_free(prism_router *r) {
    if (!r) return;
    prism_adapter_free(r->adapter);
    gate_mlp_free(r->gate);
    free(r);
}

const prism_adapter *prism_router_adapter(const prism_router *r) { return r->adapter; }
float prism_router_threshold(const prism_router *r) { return r->gate->threshold; }
float prism_router_prob(const prism_router *r, const float *hidden) { return gate_mlp_prob(r->gate, hidden); }
bool prism_router_decide(const prism_router *r, const float *hidden, float *prob) {
    float p;
    bool on = gate_mlp_route(r->gate, hidden, &p);
    if (prob) *prob = p;
    return on;
}

prism_status prism_decode_routed(prism_ctx *c, const prism_batch *b, const prism_router *r, prism_route_mode mode,
                                 float *probs, bool *routed) {
    prism_status st = prism_decode_layers(c, b, 0, 1);
    if (st) return st;
    for (int32_t i = 0; i < b->n_tokens; i++) {
        int32_t s = b->seq[i];
        int last = 1, fresh = 0;
        for (int32_t j = i + 1; j < b->n_tokens; j++) last &= b->seq[j] != s;
        if (!last) continue;
        for (int32_t j = 0; j < b->n_tokens; j++) fresh |= b->seq[j] == s && b->pos[j] == 0;
        if (fresh) {
            float prob;
            const float *h = forward_hidden_rows(c, i, 1);
            if (!h) return PRISM_E_NOMEM;
            bool on = prism_router_decide(r, h, &prob);
            bool ad = mode == PRISM_ROUTE_ADAPTER || (mode == PRISM_ROUTE_AUTO && on);
            prism_ctx_seq_set_adapter(c, s, ad ? r->adapter : NULL);
            if (probs) probs[s] = prob;
        }
        if (routed) routed[s] = c->seq_adapter[s] != NULL;
    }
    st = prism_decode_layers(c, b, 1, c->m->cfg.n_layers);
    return st ? st : prism_decode_head(c);
}
