/* bench_gpu.c — the CUDA backend on models of the exact shapes of
 * Qwen2.5-0.5B and Qwen2.5-7B with random BF16 weights made on the GPU (no
 * checkpoint files): prefill of a 512-token prompt, greedy decode of 128 new
 * tokens at batch 1 and batch 32, peak device memory, and the decode roofline
 * (weight bytes per step over the copy bandwidth measured on the same card).
 *
 *   bench_gpu [--shape 0.5b|7b|all|tiny] [--device N] [--runs R] [--new N] [--train 0|1]
 *             [--only prefill|decode1|decode32|train|gemm] [--train-seqs N] [--train-pass N] [--train-loss ce|kl]
 *             [--train-targets q,k,v,o,gate,up,down|attn|mlp|all] [--lora-decode 0|1]
 *
 * --only runs one phase (and its setup) alone, for a profiler
 * (scripts/gpu_profile.sh); --train-seqs sets the sequences per training step,
 * --train-pass the sequences per packed pass (default: all of a step's),
 * --train-loss kl top-64 KL at every position instead of CE, --train-targets
 * the adapted projections (default all seven: fewer say what LoRA costs). With the 7B shape
 * it ends with the frozen GEMMs of a training pass timed one by one (--only gemm:
 * those alone), the rate the bulk of a training step can reach on the card.
 *
 * --lora-decode 1 (the default without --only) also times decode with a LoRA adapter (r = 16, all seven
 * projections; PRISM's routed generation) on the batch-1 sequence and on half of the batch-32 ones, against the
 * base model's step in the same run.
 *
 * Prints a Markdown table (BENCHMARKS.md) and one line per measurement; the
 * batch-32 line also gives sampled decode (temperature 0.7, bootstrap's kind
 * of draw) with the draw on the device and, as its baseline in the same run,
 * on the host from copied logits.
 */
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gpu/device.h"
#include "lora/lora.h"
#include "model/forward.h"
#include "model/model.h"
#include "train/grad.h"
#include "util/timer.h"

static void die(const char *what) {
    fprintf(stderr, "bench_gpu: %s: %s\n", what, prism_last_error());
    exit(1);
}

static prism_config shape(const char *name) {
    prism_config c;
    memset(&c, 0, sizeof c);
    c.arch = ARCH_QWEN2;
    snprintf(c.model_type, sizeof c.model_type, "qwen2");
    c.rms_eps = 1e-6f;
    c.rope_theta = 1e6f;
    c.rope = ROPE_DEFAULT;
    c.qkv_bias = false; /* random weights: biases add nothing to the cost */
    c.max_pos = 32768;
    c.bos_id = -1;
    if (!strcmp(name, "tiny")) { /* smoke test (the CPU emulator) */
        snprintf(c.arch_name, sizeof c.arch_name, "tiny shape");
        c.n_layers = 2, c.hidden = 128, c.n_heads = 4, c.n_kv_heads = 2, c.head_dim = 32, c.ffn = 256;
        c.vocab = 512, c.tie_embeddings = false;
    } else if (!strcmp(name, "7b")) {
        snprintf(c.arch_name, sizeof c.arch_name, "Qwen2.5-7B shape");
        c.n_layers = 28, c.hidden = 3584, c.n_heads = 28, c.n_kv_heads = 4, c.head_dim = 128, c.ffn = 18944;
        c.vocab = 152064, c.tie_embeddings = false;
    } else {
        snprintf(c.arch_name, sizeof c.arch_name, "Qwen2.5-0.5B shape");
        c.n_layers = 24, c.hidden = 896, c.n_heads = 14, c.n_kv_heads = 2, c.head_dim = 64, c.ffn = 4864;
        c.vocab = 151936, c.tie_embeddings = true;
    }
    return c;
}

/* A token id from the LCG state *rng (the same stream for every run). */
static int32_t random_token(uint64_t *rng, int32_t vocab) {
    *rng = *rng * 6364136223846793005ull + 1442695040888963407ull;
    return (int32_t)((*rng >> 33) % (uint64_t)vocab);
}

/* Fills every sequence of the batch with n_prompt tokens (one prefill call). */
static double prefill(prism_ctx *c, int32_t n_seq, int32_t n_prompt, int32_t vocab, uint64_t *rng) {
    const int32_t n = n_seq * n_prompt;
    int32_t *tok = malloc(n * sizeof *tok), *pos = malloc(n * sizeof *pos), *seq = malloc(n * sizeof *seq);
    for (int32_t i = 0; i < n; i++) {
        tok[i] = random_token(rng, vocab);
        seq[i] = i / n_prompt, pos[i] = i % n_prompt;
    }
    for (int32_t s = 0; s < n_seq; s++) prism_ctx_seq_clear(c, s);
    prism_batch b = {n, tok, pos, seq, NULL};
    double t0 = prism_now();
    if (prism_decode(c, &b)) die("prefill");
    if (prism_get_argmax(c, n - 1) < 0) die("prefill argmax"); /* waits for the device */
    double t = prism_now() - t0;
    free(tok), free(pos), free(seq);
    return t;
}

/* LoRA training: r = 16 on all seven projections, steps of n_seq sequences x
 * T tokens (CE on every next token, or with kl top-64 KL at every position
 * against random teacher logits) in packed passes of `pass` tokens; tokens/s
 * of the best of `steps` steps after one warm-up step. */
static double train_tps(prism_model *m, int32_t n_seq, int32_t T, int32_t pass, int steps, bool recompute, bool kl,
                        uint32_t targets, uint64_t *rng) {
    prism_lora_params lp = prism_lora_default_params();
    lp.r = 16;
    lp.targets = targets;
    prism_adapter *a = NULL, *mo = NULL, *vo = NULL;
    train_ws *w = NULL;
    if (prism_adapter_new(m, lp, &a) || lora_alloc_like(a, &mo) || lora_alloc_like(a, &vo) ||
        train_ws_new(m, T, recompute, &w))
        die("training setup");
    train_ws_set_pass_tokens(w, pass);
    if (train_ws_gpu_load(w, m, a, mo, vo)) die("training setup");
    const int32_t per = train_ws_pass_tokens(w) / T; /* sequences per pass */
    if (per * T != pass) fprintf(stderr, "bench_gpu: training passes of %d sequences (asked %d tokens)\n", per, pass);
    int32_t *tok = malloc((size_t)n_seq * T * sizeof *tok), *lab = malloc((size_t)n_seq * T * sizeof *lab);
    train_example *ex = malloc((size_t)n_seq * sizeof *ex);
    enum { K = 64 };
    int32_t *kpos = malloc((size_t)T * sizeof *kpos), *tidx = malloc((size_t)n_seq * T * K * sizeof *tidx);
    float *tval = malloc((size_t)n_seq * T * K * sizeof *tval);
    for (int32_t i = 0; i < T; i++) kpos[i] = i;
    for (int64_t i = 0; i < (int64_t)n_seq * T * K; i++)
        tidx[i] = random_token(rng, m->cfg.vocab), tval[i] = (float)(random_token(rng, 1000) % 1000) / 100.0f;
    adamw_params hp = adamw_default_params();
    double best = 1e30;
    for (int st = 0; st <= steps; st++) {
        double t0 = prism_now(), loss, norm;
        int64_t cnt, total = 0;
        if (train_ws_gpu_zero(w)) die("zero");
        for (int32_t s = 0; s < n_seq; s++) {
            for (int32_t i = 0; i < T; i++) tok[s * T + i] = lab[s * T + i] = random_token(rng, m->cfg.vocab);
            ex[s] = kl ? (train_example){.loss = LOSS_KL, .n_tokens = T, .tokens = tok + s * T, .n_pos = T, .k = K,
                                         .positions = kpos, .teacher_values = tval + (int64_t)s * T * K,
                                         .teacher_indices = tidx + (int64_t)s * T * K, .temperature = 2.0f}
                       : (train_example){.loss = LOSS_CE, .n_tokens = T, .tokens = tok + s * T, .labels = lab + s * T};
        }
        for (int32_t s = 0; s < n_seq; s += per) {
            if (train_ws_gpu_batch(w, m, ex + s, n_seq - s < per ? n_seq - s : per, &loss, &cnt)) die("pass");
            total += cnt;
        }
        if (train_ws_gpu_step(w, total, 1.0, 1e-4, &hp, st + 1, &norm)) die("step");
        if (train_ws_gpu_zero(w)) die("zero"); /* waits for the step */
        double t = prism_now() - t0;
        if (st > 0 && t < best) best = t;
    }
    free(tok), free(lab), free(ex), free(kpos), free(tidx), free(tval);
    train_ws_free(w);
    prism_adapter_free(a), prism_adapter_free(mo), prism_adapter_free(vo);
    return (double)n_seq * T / best;
}

/* n_new greedy steps for sequences 0..n_seq-1 (after prefill); seconds. */
static double decode(prism_ctx *c, int32_t n_seq, int32_t n_new) {
    int32_t *tok = malloc(n_seq * sizeof *tok), *pos = malloc(n_seq * sizeof *pos), *seq = malloc(n_seq * sizeof *seq);
    for (int32_t s = 0; s < n_seq; s++) tok[s] = 1, seq[s] = s;
    double t0 = prism_now();
    for (int32_t k = 0; k < n_new; k++) {
        for (int32_t s = 0; s < n_seq; s++) pos[s] = prism_ctx_seq_len(c, s);
        prism_batch b = {n_seq, tok, pos, seq, NULL};
        if (prism_decode(c, &b)) die("decode");
        for (int32_t s = 0; s < n_seq; s++)
            if ((tok[s] = prism_get_argmax(c, s)) < 0) die("argmax");
    }
    double t = prism_now() - t0;
    free(tok), free(pos), free(seq);
    return t;
}

/* A timed greedy decode of n_new tokens at batch n_seq after a fresh 16-token prompt, with adapter ad (NULL: the
 * base model) on every other sequence (the batch-1 one included) and reset after; warm: 4 untimed steps first
 * (the batch shape's graph, first launches, the adapter's upload); seconds. */
static double decode_run(prism_ctx *c, int32_t n_seq, const prism_adapter *ad, bool warm, int32_t n_new, int32_t vocab,
                         uint64_t *rng) {
    for (int32_t s = 0; s < n_seq && ad; s += 2)
        if (prism_ctx_seq_set_adapter(c, s, ad)) die("adapter");
    prefill(c, n_seq, 16, vocab, rng);
    if (warm) decode(c, n_seq, 4);
    const double t = decode(c, n_seq, n_new);
    for (int32_t s = 0; s < n_seq && ad; s += 2) prism_ctx_seq_set_adapter(c, s, NULL);
    return t;
}

/* The same with every sequence drawing at temperature 0.7: on the device (forward_sample_softmax), or on
 * the host from copied logits, rows in parallel, as generation did before; seconds. */
static double decode_sampled(prism_ctx *c, int32_t n_seq, int32_t n_new, int on_device, int32_t V) {
    int32_t *tok = malloc(n_seq * sizeof *tok), *pos = malloc(n_seq * sizeof *pos), *seq = malloc(n_seq * sizeof *seq);
    float *it = malloc(n_seq * sizeof *it), *lg = malloc((size_t)omp_get_max_threads() * V * sizeof *lg);
    double *u = malloc(n_seq * sizeof *u);
    prism_sampler **sm = malloc(n_seq * sizeof *sm);
    prism_sampling_params sp = prism_sampling_default_params();
    sp.temperature = 0.7f;
    for (int32_t s = 0; s < n_seq; s++) {
        tok[s] = 1, seq[s] = s, sp.seed = (uint64_t)s;
        if (!(sm[s] = prism_sampler_new(sp))) die("sampler");
    }
    double t0 = prism_now();
    for (int32_t k = 0; k < n_new; k++) {
        for (int32_t s = 0; s < n_seq; s++) pos[s] = prism_ctx_seq_len(c, s);
        prism_batch b = {n_seq, tok, pos, seq, NULL};
        if (prism_decode(c, &b)) die("decode");
        if (on_device) {
            for (int32_t s = 0; s < n_seq; s++)
                if (!prism_sampler_is_softmax(sm[s], V, &it[s])) die("a softmax sampler");
                else u[s] = prism_sampler_next_u(sm[s]);
            if (forward_sample_softmax(c, it, u, tok)) die("device sampling");
        } else {
            if (!prism_get_logits(c, 0)) die("logits");
#pragma omp parallel for schedule(dynamic, 1)
            for (int32_t s = 0; s < n_seq; s++) {
                float *w = lg + (size_t)omp_get_thread_num() * V;
                memcpy(w, prism_get_logits(c, s), (size_t)V * sizeof *w);
                tok[s] = prism_sampler_sample(sm[s], w, V, NULL, 0);
            }
        }
    }
    double t = prism_now() - t0;
    for (int32_t s = 0; s < n_seq; s++) prism_sampler_free(sm[s]);
    free(tok), free(pos), free(seq), free(it), free(lg), free(u), free(sm);
    return t;
}

/* The frozen GEMMs of a packed training pass of the 7B shape (8 × 512 rows), each as train.cu calls it, and a
 * square product as the card's reference: how fast the bulk of a training step can go on this card. */
static void gemm_table(const prism_gpu_api *api, int32_t device, int reps) {
    enum { T = 4096, H = 3584, F = 18944, Q = 4608, L = 28, EX = 8, LT = 8 };
    const struct {
        const char *name;
        int ta, m, n, k, cbf;
        float beta;
    } g[] = {{"q|k|v forward", 1, Q, T, H, 1, 1.0f},           {"o forward", 1, H, T, H, 1, 1.0f},
             {"gate|up forward", 1, 2 * F, T, H, 1, 0.0f},     {"down forward", 1, H, T, F, 1, 1.0f},
             {"q|k|v input gradient", 0, H, T, Q, 1, 1.0f},    {"o input gradient", 0, H, T, H, 0, 0.0f},
             {"gate|up input gradient", 0, H, T, 2 * F, 1, 1.0f}, {"down input gradient", 0, F, T, H, 1, 0.0f},
             {"LM head forward, 256 loss rows (before)", 1, 152064, 256, H, 0, 0.0f},
             {"LM head forward, 1,024 loss rows", 1, 152064, 1024, H, 0, 0.0f},
             {"LM head input gradient, 1,024 rows, unsplit", 0, H, 1024, 152064, 0, 0.0f},
             {"8192³ (the card's reference)", 0, 8192, 8192, 8192, 1, 0.0f}};
    printf("\nQwen2.5-7B shape's frozen GEMMs in a training pass of %d rows, as train.cu calls them (BF16 operands, F32 "
           "accumulation, cuBLAS's default algorithm), mean of %d calls back to back; then the fastest of the %d algorithms cuBLASLt's "
           "heuristic ranks first (rank 0: its first choice), what choosing by measurement could gain:\n\n"
           "| GEMM | m × n × k | output | ms | TFLOP/s | cuBLASLt best ms | TFLOP/s | rank |\n"
           "|---|---|---|---|---|---|---|---|\n", T, reps, LT);
    double layer_ms = 0, layer_flop = 0, layer_lt = 0;
    int lt_ok = 1;
    for (size_t i = 0; i < sizeof g / sizeof *g; i++) {
        char err[512] = "";
        double ms = 0, lms = 0;
        int32_t pick = -1;
        if (api->gemm_bench(device, g[i].ta, g[i].m, g[i].n, g[i].k, g[i].cbf, g[i].beta, reps, 0, &ms, NULL, err, sizeof err)) {
            printf("| %s | failed: %s | | | | | | |\n", g[i].name, err);
            lt_ok = 0;
            continue;
        }
        const double flop = 2.0 * g[i].m * g[i].n * g[i].k;
        char lcol[600];
        if (api->gemm_bench(device, g[i].ta, g[i].m, g[i].n, g[i].k, g[i].cbf, g[i].beta, reps, LT, &lms, &pick, err,
                            sizeof err)) {
            snprintf(lcol, sizeof lcol, "failed: %s | | ", err);
            lt_ok = 0;
        } else {
            snprintf(lcol, sizeof lcol, "%.3f | %.0f | %d", lms, flop / (lms * 1e-3) / 1e12, pick);
        }
        printf("| %s | %d × %d × %d | %s%s | %.3f | %.0f | %s |\n", g[i].name, g[i].m, g[i].n, g[i].k,
               g[i].cbf ? "BF16" : "F32", g[i].beta != 0.0f ? " (+=)" : "", ms, flop / (ms * 1e-3) / 1e12, lcol);
        if (i < 8) layer_ms += ms, layer_flop += flop, layer_lt += lms < ms ? lms : ms;
    }
    printf("| the 8 projections' GEMMs × %d layers, per 512-token example | | | %.2f | %.0f | %s |\n", L,
           layer_ms * L / EX, layer_flop / (layer_ms * 1e-3) / 1e12,
           lt_ok ? "" : "(cuBLASLt incomplete)");
    if (lt_ok)
        printf("| the same with each GEMM's faster choice | | | | | %.2f | %.0f | |\n", layer_lt * L / EX,
               layer_flop / (layer_lt * 1e-3) / 1e12);
}

int main(int argc, char **argv) {
    const char *which = "all";
    int32_t device = 0, runs = 3, n_new = 128, n_prompt = 512, do_train = 1, train_seqs = 8, train_pass = 0,
            do_lora = -1;
    const char *only = NULL, *train_loss = "ce", *train_targets = "all";
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--shape") && i + 1 < argc) which = argv[++i];
        else if (!strcmp(argv[i], "--device") && i + 1 < argc) device = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--runs") && i + 1 < argc) runs = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--new") && i + 1 < argc) n_new = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--train") && i + 1 < argc) do_train = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--train-seqs") && i + 1 < argc) train_seqs = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--train-pass") && i + 1 < argc) train_pass = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--train-loss") && i + 1 < argc) train_loss = argv[++i];
        else if (!strcmp(argv[i], "--train-targets") && i + 1 < argc) train_targets = argv[++i];
        else if (!strcmp(argv[i], "--only") && i + 1 < argc) only = argv[++i];
        else if (!strcmp(argv[i], "--lora-decode") && i + 1 < argc) do_lora = atoi(argv[++i]);
        else {
            fprintf(stderr, "usage: bench_gpu [--shape 0.5b|7b|all|tiny] [--device N] [--runs R] [--new N] [--train 0|1]\n"
                            "                 [--only prefill|decode1|decode32|train|gemm] [--train-seqs N] [--train-pass N] [--train-loss ce|kl]\n"
                            "                 [--train-targets q,k,v,o,gate,up,down|attn|mlp|all] [--lora-decode 0|1]\n");
            return 2;
        }
    }
    const bool do_pf = !only || !strcmp(only, "prefill"), do_d1 = !only || !strcmp(only, "decode1"),
               do_d32 = !only || !strcmp(only, "decode32"),
               do_gemm = (!only || !strcmp(only, "gemm")) && (!strcmp(which, "7b") || !strcmp(which, "all"));
    if (only && !do_pf && !do_d1 && !do_d32 && strcmp(only, "train") && strcmp(only, "gemm")) {
        fprintf(stderr, "bench_gpu: --only takes prefill, decode1, decode32, train or gemm, not '%s'\n", only);
        return 2;
    }
    if (only && !strcmp(only, "gemm") && !do_gemm) {
        fprintf(stderr, "bench_gpu: --only gemm times the 7B shape's GEMMs: --shape 7b (or all)\n");
        return 2;
    }
    if (only && strcmp(only, "train")) do_train = 0;
    if (do_lora < 0) do_lora = !only; /* --only decode1 / decode32 time the base model alone unless asked */
    if (train_seqs < 1 || train_pass < 0 || train_pass > train_seqs) {
        fprintf(stderr, "bench_gpu: --train-seqs must be >= 1 and --train-pass 1..train-seqs\n");
        return 2;
    }
    if (!train_pass) train_pass = train_seqs;
    if (strcmp(train_loss, "ce") && strcmp(train_loss, "kl")) {
        fprintf(stderr, "bench_gpu: --train-loss takes ce or kl, not '%s'\n", train_loss);
        return 2;
    }
    const bool kl = !strcmp(train_loss, "kl");
    uint32_t targets = 0;
    if (lora_parse_targets(train_targets, &targets, NULL, 0)) {
        fprintf(stderr, "bench_gpu: --train-targets takes a list of q, k, v, o, gate, up, down, attn, mlp or all, not '%s'\n",
                train_targets);
        return 2;
    }
    if (runs < 1 || n_new < 1 || n_new > 600) {
        fprintf(stderr, "bench_gpu: --runs must be >= 1 and --new 1..600 (decode follows a 16-token prompt in a 640-position context)\n");
        return 2;
    }
    char desc[512];
    if (prism_device_describe(device, desc, sizeof desc)) die("device");
    const prism_gpu_api *api;
    if (gpu_api(&api)) die("module");
    char err[512] = "";
    double bw = 0;
    if (api->copy_bandwidth(device, (int64_t)1 << 30, 10, &bw, err, sizeof err)) {
        fprintf(stderr, "bench_gpu: %s\n", err);
        return 1;
    }
    printf("device: %s\ncopy bandwidth: %.0f GB/s (device-to-device, read + write, 1 GiB, best of 10)\n", desc, bw);
    const char *shapes[3] = {"0.5b", "7b", "tiny"};
    const bool table = !only || strcmp(only, "gemm");
    if (table) {
        printf("\n| shape | prefill 512 tok/s | decode b1 tok/s | b1 roofline | decode b32 tok/s | peak GiB (inference) | LoRA train tok/s, %d x 512 (passes of %d, %s) |\n",
               train_seqs, train_pass, kl ? "top-64 KL" : "CE");
        printf("|---|---|---|---|---|---|---|\n");
    }
    for (int si = 0; si < 3; si++) {
        if (!table) break; /* --only gemm */
        if (strcmp(which, shapes[si]) && (strcmp(which, "all") || si == 2)) continue;
        if (si == 2) n_prompt = 64;
        prism_config cfg = shape(shapes[si]);
        prism_model *m = NULL;
        double t0 = prism_now();
        if (model_new_random(&cfg, device, 42, &m)) die("random model");
        double t_init = prism_now() - t0;
        prism_ctx_params cp = prism_ctx_default_params();
        cp.n_seq_max = 32, cp.n_ctx = 640, cp.n_batch = 512;
        prism_ctx *c = NULL;
        if (prism_ctx_new(m, cp, &c)) die("context");
        uint64_t rng = 7;
        /* weights read per decode step: every matrix once (embedding rows are negligible; tied = one matrix) */
        const double wbytes = (double)m->weight_bytes - (cfg.tie_embeddings ? 0 : 2.0 * cfg.vocab * cfg.hidden);
        double best_pf = 1e30, best_d1 = 1e30, best_d32 = 1e30, best_s32[2] = {1e30, 1e30}, best_l1 = 1e30,
               best_l32 = 1e30;
        /* PRISM's routed decode: a LoRA adapter (r = 16 on all seven projections) on the batch-1 sequence, and on
         * half of the batch-32 ones (a mixed batch: base and adapter rows in one step) */
        prism_adapter *ad = NULL;
        if (do_lora && (do_d1 || do_d32)) {
            prism_lora_params lp = prism_lora_default_params();
            lp.r = 16;
            lp.targets = PRISM_LORA_ALL;
            if (prism_adapter_new(m, lp, &ad)) die("adapter");
        }
        if (do_pf) prefill(c, 1, n_prompt, cfg.vocab, &rng); /* warm-up: cuBLAS heuristics, first-touch */
        for (int r = 0; r < runs; r++) {
            double t;
            if (do_pf) {
                t = prefill(c, 1, n_prompt, cfg.vocab, &rng);
                best_pf = t < best_pf ? t : best_pf;
            }
            if (do_d1) {
                t = decode_run(c, 1, NULL, r == 0, n_new, cfg.vocab, &rng);
                best_d1 = t < best_d1 ? t : best_d1;
            }
            if (do_d1 && ad) {
                t = decode_run(c, 1, ad, r == 0, n_new, cfg.vocab, &rng);
                best_l1 = t < best_l1 ? t : best_l1;
            }
            if (do_d32) {
                t = decode_run(c, 32, NULL, r == 0, n_new, cfg.vocab, &rng);
                best_d32 = t < best_d32 ? t : best_d32;
                for (int dev = 0; dev < 2; dev++) { /* sampled: the draw on the host, then on the device */
                    prefill(c, 32, 16, cfg.vocab, &rng);
                    t = decode_sampled(c, 32, n_new, dev, cfg.vocab);
                    best_s32[dev] = t < best_s32[dev] ? t : best_s32[dev];
                }
            }
            if (do_d32 && ad) {
                t = decode_run(c, 32, ad, r == 0, n_new, cfg.vocab, &rng);
                best_l32 = t < best_l32 ? t : best_l32;
            }
        }
        int64_t now = 0, peak = 0;
        api->model_memory(m->gpu, &now, &peak);
        prism_ctx_free(c);
        c = NULL;
        prism_adapter_free(ad); /* after the context that used it */
        double scratch_bw;
        api->copy_bandwidth(device, 1 << 20, 1, &scratch_bw, err, sizeof err); /* resets the peak counter */
        const int32_t tT = si == 2 ? 64 : 512;
        const double tr = do_train ? train_tps(m, train_seqs, tT, train_pass * tT, 2, false, kl, targets, &rng) : 0;
        int64_t tnow = 0, tpeak = 0;
        api->model_memory(m->gpu, &tnow, &tpeak);
        const double pf = n_prompt / best_pf, d1 = n_new / best_d1, d32 = 32.0 * n_new / best_d32;
        const double roof = (wbytes / (bw * 1e9)) / (best_d1 / n_new);
        char spf[32] = "-", sd1[32] = "-", sroof[32] = "-", sd32[32] = "-", trs[64] = "not run";
        if (do_pf) snprintf(spf, sizeof spf, "%.0f", pf);
        if (do_d1) snprintf(sd1, sizeof sd1, "%.1f", d1), snprintf(sroof, sizeof sroof, "%.0f%%", 100 * roof);
        if (do_d32) snprintf(sd32, sizeof sd32, "%.0f", d32);
        if (do_train) snprintf(trs, sizeof trs, "%.0f (peak %.2f GiB)", tr, tpeak / 1073741824.0);
        printf("| %s | %s | %s | %s | %s | %.2f | %s |\n", cfg.arch_name, spf, sd1, sroof, sd32, peak / 1073741824.0, trs);
        fprintf(stderr, "%s: weights %.2f GB made on the GPU in %.1f s", cfg.arch_name, wbytes / 1e9, t_init);
        if (do_pf) fprintf(stderr, "; prefill %.1f ms", best_pf * 1e3);
        if (do_d1)
            fprintf(stderr, "; decode b1 %.2f ms/token (roofline %.2f ms at %.0f GB/s)", best_d1 / n_new * 1e3,
                    wbytes / (bw * 1e9) * 1e3, bw);
        if (do_d32)
            fprintf(stderr, "; decode b32 %.2f ms/step greedy, %.2f sampled at T = 0.7 on the device, %.2f with the host's draw",
                    best_d32 / n_new * 1e3, best_s32[1] / n_new * 1e3, best_s32[0] / n_new * 1e3);
        if (do_d1 && ad)
            fprintf(stderr, "; with a LoRA adapter (r 16, all seven projections): decode b1 %.2f ms/token (%+.1f%%)",
                    best_l1 / n_new * 1e3, 100.0 * (best_l1 / best_d1 - 1.0));
        if (do_d32 && ad)
            fprintf(stderr, "%s b32 with 16 of the 32 sequences on it %.2f ms/step (%+.1f%%)", do_d1 ? "," : "; with a LoRA adapter:",
                    best_l32 / n_new * 1e3, 100.0 * (best_l32 / best_d32 - 1.0));
        fprintf(stderr, "; peak %.2f GiB\n", peak / 1073741824.0);
        prism_model_free(m);
    }
    if (do_gemm) gemm_table(api, device, runs < 5 ? 5 : runs);
    return 0;
}
