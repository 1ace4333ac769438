/* router.c — PRISM routed inference: the gate reads the hidden state after
 * layer 0 at a prompt's last token and picks, per sequence, the base model or
 * the persona adapter for layers 1..L-1 (layer 0 is never adapted, so the
 * feature is the same whatever the route). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gpu/device.h"
#include "lora/lora.h"
#include "model/forward.h"
#include "prism/gate.h"
#include "prism/runinfo.h"
#include "util/error.h"

struct prism_router {
    prism_adapter *adapter;
    gate_mlp *gate;
    const prism_model *model; /* the model it was loaded for */
    gpu_gate *dgate;          /* the gate on that model's GPU, or NULL */
    const prism_gpu_api *api;
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
    r->model = m;
    if (m->gpu) { /* the gate runs where the residual stream is */
        const gpu_gate_desc d = {r->gate->in, GATE_H1, GATE_H2, r->gate->mu};
        char err[1024] = "";
        st = gpu_check((prism_status)m->gpu_api->gate_new(m->gpu, &d, &r->dgate, err, sizeof err), err);
        if (st) goto fail;
        r->api = m->gpu_api;
    }
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
    if (r->dgate) r->api->gate_free(r->dgate);
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

prism_status prism_router_decide_rows(const prism_router *r, prism_ctx *c, const int32_t *rows, int32_t n, bool *on,
                                      float *prob) {
    if (n <= 0) return PRISM_OK;
    if (c->m->cfg.hidden != r->gate->in)
        return prism_error(PRISM_E_ARG, "the gate reads %d features, the context's model has hidden size %d", r->gate->in,
                           c->m->cfg.hidden);
    float *lg = malloc((size_t)n * sizeof *lg);
    if (!lg) return prism_error(PRISM_E_NOMEM, "out of memory");
    prism_status st = PRISM_OK;
    if (c->gpu && r->dgate && c->m == r->model) {
        st = forward_gate_logits(c, r->dgate, rows, n, lg);
    } else {
        for (int32_t i = 0; i < n && !st; i++) {
            const float *h = forward_hidden_rows(c, rows[i], 1);
            if (!h) st = PRISM_E_ARG;
            else lg[i] = gate_mlp_logit(r->gate, h);
        }
    }
    for (int32_t i = 0; i < n && !st; i++) {
        if (on) on[i] = lg[i] >= r->gate->threshold_logit; /* as gate_mlp_route */
        if (prob) prob[i] = gate_logit_prob(lg[i]);
    }
    free(lg);
    return st;
}

prism_status prism_router_route_rows(const prism_router *r, prism_ctx *c, const prism_batch *b, const int32_t *rows,
                                     int32_t n, prism_route_mode mode, float *prob, bool *adapter) {
    if (mode != PRISM_ROUTE_AUTO && mode != PRISM_ROUTE_BASE && mode != PRISM_ROUTE_ADAPTER)
        return prism_error(PRISM_E_ARG, "unknown route mode %d", (int)mode);
    if (n <= 0) return PRISM_OK;
    for (int32_t i = 0; i < n; i++)
        if (rows[i] < 0 || rows[i] >= b->n_tokens)
            return prism_error(PRISM_E_ARG, "row %d is outside the batch of %d", rows[i], b->n_tokens);
    bool *on = malloc((size_t)n * sizeof *on);
    if (!on) return prism_error(PRISM_E_NOMEM, "out of memory");
    prism_status st = prism_router_decide_rows(r, c, rows, n, on, prob);
    for (int32_t i = 0; i < n && !st; i++) {
        const bool ad = mode == PRISM_ROUTE_ADAPTER || (mode == PRISM_ROUTE_AUTO && on[i]);
        st = prism_ctx_seq_set_adapter(c, b->seq[rows[i]], ad ? r->adapter : NULL);
        if (adapter) adapter[i] = ad;
    }
    free(on);
    return st;
}

prism_status prism_decode_routed(prism_ctx *c, const prism_batch *b, const prism_router *r, prism_route_mode mode,
                                 float *probs, bool *routed) {
    prism_status st = prism_decode_layers(c, b, 0, 1);
    if (st) return st;
    /* the gate at each fresh sequence's last token in the batch, all at once */
    int32_t *rows = malloc((size_t)b->n_tokens * sizeof *rows), n = 0;
    float *pr = malloc((size_t)b->n_tokens * sizeof *pr);
    if (!rows || !pr) st = prism_error(PRISM_E_NOMEM, "out of memory");
    for (int32_t i = 0; i < b->n_tokens && !st; i++) {
        int32_t s = b->seq[i];
        int last = 1, fresh = 0;
        for (int32_t j = i + 1; j < b->n_tokens; j++) last &= b->seq[j] != s;
        for (int32_t j = 0; last && j < b->n_tokens; j++) fresh |= b->seq[j] == s && b->pos[j] == 0;
        if (last && fresh) rows[n++] = i;
    }
    if (!st) st = prism_router_route_rows(r, c, b, rows, n, mode, pr, NULL);
    for (int32_t k = 0; k < n && !st && probs; k++) probs[b->seq[rows[k]]] = pr[k];
    free(rows), free(pr);
    if (st) return st;
    if (routed)
        for (int32_t i = 0; i < b->n_tokens; i++) routed[b->seq[i]] = c->seq_adapter[b->seq[i]] != NULL;
    st = prism_decode_layers(c, b, 1, c->m->cfg.n_layers);
    return st ? st : prism_decode_head(c);
}
