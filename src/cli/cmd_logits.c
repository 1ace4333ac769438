/* cmd_logits.c — `prism logits`: F32 logits of every position to a safetensors file. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/adapter_opt.h"
#include "cli/cli.h"
#include "cli/prism_opt.h"
#include "model/safetensors.h"

int cmd_logits(int argc, char **argv) {
    cli_common c = {.precision = PRISM_PRECISION_EXACT};
    const char *ids_s = NULL, *prompt = NULL, *out = NULL;
    cli_adapters ad = {0};
    cli_prism pr = {0};
    bool stats = false;
    for (int i = 1; i < argc; i++) {
        if (cli_common_opt(&c, argc, argv, &i) || cli_adapter_opt(&ad, argc, argv, &i) || cli_prism_opt(&pr, argc, argv, &i))
            continue;
        if (!strcmp(argv[i], "--stats")) { stats = true; continue; }
        if (!strcmp(argv[i], "--ids")) ids_s = cli_value(argc, argv, &i);
        else if (!strcmp(argv[i], "--prompt")) prompt = cli_value(argc, argv, &i);
        else if (!strcmp(argv[i], "--out") || !strcmp(argv[i], "-o")) out = cli_value(argc, argv, &i);
        else cli_usage_error("logits: unknown option \"%s\"", argv[i]);
    }
    if (!ids_s == !prompt) cli_usage_error("logits: give exactly one of --ids 1,2,3 or --prompt TEXT");
    if (!out) cli_usage_error("logits: --out F.safetensors is required");
    prism_model *m = cli_load_model(&c, NULL);
    const prism_adapter *adapter = cli_adapters_load(&ad, m);
    prism_router *router = cli_prism_load(&pr, m, adapter != NULL);
    int32_t n = 0, *ids = NULL;
    if (ids_s) {
        ids = cli_parse_ids("--ids", ids_s, &n);
    } else {
        prism_tokenizer *tok = NULL;
        size_t nn = 0;
        if (prism_tokenizer_load(c.model, &tok)) cli_die("loading tokenizer");
        if (prism_tokenize(tok, prompt, strlen(prompt), true, &ids, &nn)) cli_die("tokenizing");
        prism_tokenizer_free(tok);
        n = (int32_t)nn;
        if (!n) cli_usage_error("logits: empty prompt");
    }
    prism_ctx_params cp = prism_ctx_default_params();
    cp.n_ctx = c.n_ctx ? c.n_ctx : n;
    if (cp.n_batch > n || router) cp.n_batch = n; /* routed: one prefill, the gate at the last token */
    prism_ctx *ctx = NULL;
    if (prism_ctx_new(m, cp, &ctx)) cli_die("creating context");
    cli_adapters_apply(ctx, adapter, 1);
    const int32_t V = prism_ctx_n_vocab(ctx);
    float *logits = malloc((size_t)n * V * sizeof(float));
    int32_t *pos = malloc((size_t)n * sizeof *pos), *seq = calloc((size_t)n, sizeof *seq);
    int8_t *want = malloc((size_t)n);
    if (!logits || !pos || !seq || !want) {
        fprintf(stderr, "prism: logits: out of memory for %d x %d logits\n", n, V);
        return 1;
    }
    for (int32_t k = 0; k < n; k++) pos[k] = k, want[k] = 1;
    for (int32_t s = 0; s < n; s += cp.n_batch) {
        int32_t nb = n - s < cp.n_batch ? n - s : cp.n_batch;
        prism_batch b = {nb, ids + s, pos + s, seq + s, want + s};
        if (router) {
            prism_generation g = {0};
            if (prism_decode_routed(ctx, &b, router, pr.route, &g.gate_prob, &g.routed_adapter)) cli_die("forward pass");
            if (stats) cli_prism_print(&g, 0, 1);
        } else if (prism_decode(ctx, &b)) {
            cli_die("forward pass");
        }
        for (int32_t k = 0; k < nb; k++) memcpy(logits + (size_t)(s + k) * V, prism_get_logits(ctx, k), (size_t)V * sizeof(float));
    }
    st_write_tensor t = {.name = "logits", .dtype = ST_F32, .ndim = 2, .shape = {n, V}, .data = logits};
    if (st_write(out, &t, 1, NULL)) cli_die("writing logits");
    fprintf(stderr, "wrote %s: logits [%d, %d] F32\n", out, n, V);
    free(logits); free(pos); free(seq); free(want); free(ids);
    prism_ctx_free(ctx);
    cli_adapters_free(&ad);
    cli_prism_free(&pr);
    prism_model_free(m);
    return 0;
}
