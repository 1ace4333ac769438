/* bench_train.c — LoRA training throughput on the CPU (forward, loss,
 * backward to every LoRA tensor) for one sequence:
 *   build/bench/bench_train MODEL_DIR [--tokens 512] [--rank 16] [--no-recompute]
 * Reports tokens/s, the achieved GFLOP/s against the F32 FMA peak, and peak RSS. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "lora/lora.h"
#include "train/grad.h"
#include "util/timer.h"

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: bench_train MODEL_DIR [--tokens N] [--rank R] [--no-recompute]\n");
        return 2;
    }
    int T = 512, r = 16;
    bool recompute = true;
    for (int i = 2; i < argc; i++) {
        if (!strcmp(argv[i], "--tokens") && i + 1 < argc) T = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--rank") && i + 1 < argc) r = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--no-recompute")) recompute = false;
    }
    prism_model_params mp = prism_model_default_params();
    mp.precision = PRISM_PRECISION_EXACT;
    prism_model *m;
    prism_adapter *a, *g;
    train_ws *w;
    if (prism_model_load(argv[1], mp, &m)) { fprintf(stderr, "%s\n", prism_last_error()); return 1; }
    prism_lora_params lp = prism_lora_default_params();
    lp.r = r;
    lp.alpha = 2.0f * r;
    if (prism_adapter_new(m, lp, &a) || lora_alloc_like(a, &g) || train_ws_new(m, T, recompute, &w)) {
        fprintf(stderr, "%s\n", prism_last_error());
        return 1;
    }
    int32_t *tok = malloc(T * sizeof *tok), *lab = malloc(T * sizeof *lab);
    for (int i = 0; i < T; i++) tok[i] = lab[i] = 1000 + (i * 7919) % 50000;
    for (int i = 0; i < T / 4; i++) lab[i] = -100; /* a prompt part, unscored */
    train_example ex = {.loss = LOSS_CE, .n_tokens = T, .tokens = tok, .labels = lab};
    double ls, best = 1e30;
    int64_t c;
    for (int rep = 0; rep < 3; rep++) {
        double t0 = prism_now();
        if (train_example_grad(w, m, a, g, &ex, &ls, &c, NULL)) { fprintf(stderr, "%s\n", prism_last_error()); return 1; }
        double dt = prism_now() - t0;
        if (dt < best) best = dt;
    }
    prism_model_info f;
    prism_model_get_info(m, &f);
    /* matmul FLOPs: forward 2·P·T, input gradients 2·P·T, recomputed forward 2·P·T
     * (P = parameters of the layers and the LM head; the embedding lookup is free) */
    double P = (double)f.n_params - (f.tied_embeddings ? 0 : (double)f.vocab * f.hidden);
    double flops = (recompute ? 6.0 : 4.0) * P * T;
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    printf("model %s (%.1f M params), LoRA r=%d alpha=%d on q,k,v,o,gate,up,down of layers 1..%d, %d tokens, %s\n", argv[1],
           f.n_params / 1e6, r, 2 * r, f.n_layers - 1, T, recompute ? "recomputation" : "stored activations");
    printf("train step (forward + loss + backward): %.3f s, %.1f tokens/s, ~%.0f GFLOP/s, peak RSS %.2f GiB\n", best, T / best,
           flops / best / 1e9, ru.ru_maxrss / 1048576.0);
    train_ws_free(w);
    prism_adapter_free(a);
    prism_adapter_free(g);
    prism_model_free(m);
    free(tok), free(lab);
    return 0;
}
