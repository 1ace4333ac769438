/* test_gpu.c — the CUDA backend.
 *
 * Everywhere: device strings, and the errors a user gets when CUDA cannot be
 * used (a build without the module, a machine without a driver or GPU) —
 * clear, PRISM_E_UNSUPPORTED, the model directory named, nothing leaked.
 *
 * On a machine with a usable GPU (scripts/gpu_check.sh sets
 * PRISM_REQUIRE_GPU=1 so that a broken setup fails instead of skipping), for
 * every fixture architecture ($PRISM_FIXTURES), in F32 (exact: relative L2
 * error per logits row < 1e-4) and in BF16 (fast: < 3e-2, and within 1.5× of
 * what BF16 costs transformers itself on the same inputs — see TOL):
 *   - logits of a [2, 48] batch against transformers' reference and against
 *     the CPU engine, and every hidden state;
 *   - the BF16 sharded checkpoint against its reference;
 *   - the 300-token sequence: prefill, then a decode step (split-K attention);
 *   - greedy continuation: GPU tokens == transformers' generate() tokens;
 *   - one batch mixing base and LoRA sequences of different lengths, prefill
 *     then decode steps, against the CPU engine with the same adapter;
 *   - layer-range execution (layer 0, then adapter chosen, then 1..L-1, the
 *     PRISM routed prefill) == running the adapter from the start;
 *   - device argmax == argmax of the copied logits;
 *   - Mistral with a sliding window of 7 (the fixture has none): prefill in
 *     two chunks, then decode steps, against the CPU engine;
 *   - sampling on the device: draws == the host's on the same logits, and a
 *     sampled generation == the CPU's;
 *   - the PRISM gate on the device == on the host from the same rows. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>

#include "lora/lora.h"
#include "model/forward.h"
#include "model/safetensors.h"
#include "test.h"
#include "test_fixture.h"
#include "test_run_dir.h"

static const char *ARCHS[] = {"llama3", "qwen2", "qwen3", "mistral"};
/* Relative L2 error allowed per logits row. EXACT runs F32 end to end: CPU-level
 * agreement. FAST runs BF16 weights, activations and KV cache; on these tiny
 * random models (hidden 96, logits near zero mean, strong cancellation) BF16
 * arithmetic itself moves the logits by more than 1e-2: transformers' own bf16
 * run (reference-bf16) is 1.2-1.6e-2 from its F32 one, and prism on the GPU is
 * 0.8-1.1e-2 from the CPU's F32 result on the same BF16 weights (emulator). So
 * the bound is 3e-2, the error against the F32 reference must stay within 1.5×
 * of transformers' bf16 error on the same inputs, and greedy tokens must be
 * identical. */
static double TOL = 1e-4;
static prism_precision PREC = PRISM_PRECISION_EXACT;
static const char *PNAME = "exact";

static prism_model *load(const char *dir, int32_t device) {
    prism_model_params mp = prism_model_default_params();
    mp.precision = device < 0 ? PRISM_PRECISION_EXACT : PREC;
    mp.device = device;
    prism_model *m = NULL;
    if (prism_model_load(dir, mp, &m)) {
        CHECK(0, "load %s on %s: %s", dir, device < 0 ? "cpu" : "cuda", prism_last_error());
        return NULL;
    }
    return m;
}

/* ------------------------------------------------------------ without a GPU */

static void test_device_strings(void) {
    int32_t d = 99;
    CHECK(prism_device_parse("cpu", &d) == PRISM_OK && d == PRISM_DEVICE_CPU, "cpu");
    CHECK(prism_device_parse("cuda", &d) == PRISM_OK && d == 0, "cuda");
    CHECK(prism_device_parse("cuda:3", &d) == PRISM_OK && d == 3, "cuda:3");
    CHECK(prism_device_parse("cuda:", &d) == PRISM_E_ARG, "cuda: rejected");
    CHECK(prism_device_parse("cuda:-1", &d) == PRISM_E_ARG, "cuda:-1 rejected");
    CHECK(prism_device_parse("tpu", &d) == PRISM_E_ARG && strstr(prism_last_error(), "tpu"), "tpu rejected, named");
    /* $PRISM_DEVICE sets the default; a bad value is an error at load, naming the variable */
    setenv("PRISM_DEVICE", "cuda:x", 1);
    prism_model_params mp = prism_model_default_params();
    prism_model *m = NULL;
    prism_status st = prism_model_load("models/stories260K", mp, &m);
    CHECK(st == PRISM_E_ARG && m == NULL && strstr(prism_last_error(), "PRISM_DEVICE"), "bad PRISM_DEVICE: %s",
          prism_last_error());
    setenv("PRISM_DEVICE", "cpu", 1);
    mp = prism_model_default_params();
    CHECK(mp.device == PRISM_DEVICE_CPU, "PRISM_DEVICE=cpu");
    unsetenv("PRISM_DEVICE");
}

/* What a user without a usable GPU sees. */
static void test_unavailable(const char *why) {
    prism_model_params mp = prism_model_default_params();
    mp.device = 0;
    prism_model *m = NULL;
    prism_status st = prism_model_load("models/stories260K", mp, &m);
    CHECK(st == PRISM_E_UNSUPPORTED && m == NULL, "load on cuda without a GPU: status %d", st);
    const char *e = prism_last_error();
    CHECK(strstr(e, "models/stories260K") != NULL, "error names the model: %s", e);
    CHECK(strstr(e, "CUDA") != NULL || strstr(e, "cuda") != NULL, "error says CUDA: %s", e);
    CHECK(strstr(e, why) != NULL || strstr(why, e) != NULL || strlen(e) > 20, "error explains: %s", e);
    char *out = NULL;
    int rc = test_run("./build/prism generate -m models/stories260K --chat-template llama2 -p Once -n 2 --device cuda", &out);
    CHECK(rc == 1 && out && strstr(out, "CUDA"), "CLI exits 1 with the reason (rc %d): %s", rc, out ? out : "");
    free(out);
    rc = test_run("./build/prism info --device cuda", &out);
    CHECK(rc == 1 && out && strstr(out, "CUDA"), "prism info --device cuda explains (rc %d): %s", rc, out ? out : "");
    free(out);
    rc = test_run("./build/prism generate -m models/stories260K -p Once -n 2 --device cuda:x", &out);
    CHECK(rc == 2 && out && strstr(out, "--device"), "bad --device is a usage error (rc %d): %s", rc, out ? out : "");
    free(out);
    /* the CPU still works in the same process after the failed CUDA load */
    mp.device = PRISM_DEVICE_CPU;
    CHECK(prism_model_load("models/stories260K", mp, &m) == PRISM_OK, "cpu load after: %s", prism_last_error());
    prism_model_free(m);
}

/* ------------------------------------------------------------ with a GPU */

static void test_arch(const char *arch) {
    char dir[1024], path[1024];
    snprintf(dir, sizeof dir, "%s/%s/model", fixtures_root(), arch);
    snprintf(path, sizeof path, "%s/%s/reference.safetensors", fixtures_root(), arch);
    st_set *ref = NULL;
    if (st_open(path, &ref)) { CHECK(0, "open %s: %s", path, prism_last_error()); return; }
    prism_model *mc = load(dir, PRISM_DEVICE_CPU), *mg = load(dir, 0);
    if (!mc || !mg) { prism_model_free(mc); prism_model_free(mg); st_close(ref); return; }
    const int L = mg->cfg.n_layers, H = mg->cfg.hidden, V = mg->cfg.vocab;

    /* [2, T] batch: logits and hidden states */
    int64_t n;
    float *idsf = fixture_f32(ref, "input_ids", &n);
    const int T = (int)(n / 2);
    int32_t *ids = malloc(n * sizeof *ids), *pos = malloc(n * sizeof *pos), *seq = malloc(n * sizeof *seq);
    int8_t *want = malloc(n);
    for (int64_t i = 0; i < n; i++) ids[i] = (int32_t)idsf[i], seq[i] = (int32_t)(i / T), pos[i] = (int32_t)(i % T), want[i] = 1;
    prism_ctx *cg = fixture_ctx(mg, 4), *cc = fixture_ctx(mc, 4);
    prism_batch b = {(int32_t)n, ids, pos, seq, want};
    CHECK(prism_decode(cg, &b) == PRISM_OK, "%s gpu decode: %s", arch, prism_last_error());
    CHECK(prism_decode(cc, &b) == PRISM_OK, "%s cpu decode: %s", arch, prism_last_error());
    float *ref_logits = fixture_f32(ref, "logits", NULL);
    double worst_ref = 0, worst_cpu = 0;
    int argmax_ok = 1;
    for (int64_t i = 0; i < n; i++) {
        const float *g = prism_get_logits(cg, (int32_t)i), *c = prism_get_logits(cc, (int32_t)i);
        if (!g || !c) { CHECK(0, "%s logits row %lld missing", arch, (long long)i); break; }
        double e1 = rel_err(g, ref_logits + i * V, V), e2 = rel_err(g, c, V);
        worst_ref = e1 > worst_ref ? e1 : worst_ref;
        worst_cpu = e2 > worst_cpu ? e2 : worst_cpu;
        int32_t am = 0;
        for (int j = 1; j < V; j++) am = g[j] > g[am] ? j : am;
        argmax_ok &= prism_get_argmax(cg, (int32_t)i) == am;
    }
    if (PREC == PRISM_PRECISION_FAST) { /* against what BF16 costs transformers on the same inputs */
        char pb[1100];
        snprintf(pb, sizeof pb, "%s/%s/reference-bf16.safetensors", fixtures_root(), arch);
        st_set *rb = NULL;
        int64_t nb16 = 0;
        float *ib16 = st_open(pb, &rb) == PRISM_OK ? fixture_f32(rb, "input_ids", &nb16) : NULL;
        float *lb16 = ib16 && nb16 == n && !memcmp(ib16, idsf, (size_t)n * sizeof *ib16) ? fixture_f32(rb, "logits", NULL) : NULL;
        if (lb16) {
            double hf = 0;
            for (int64_t i = 0; i < n; i++) hf = fmax(hf, rel_err(lb16 + i * V, ref_logits + i * V, V));
            CHECK(worst_ref < 1.5 * hf, "%s BF16 logits vs the F32 reference: rel err %.3g, transformers' own bf16 %.3g", arch,
                  worst_ref, hf);
            printf("%s %s BF16 cost on the logits: %.2e for prism on the GPU, %.2e for transformers in bf16 (bound 1.5x)\n",
                   PNAME, arch, worst_ref, hf);
        }
        free(ib16), free(lb16);
        if (rb) st_close(rb);
    }
    CHECK(worst_ref < TOL, "%s logits vs transformers: rel err %.3g", arch, worst_ref);
    CHECK(worst_cpu < TOL, "%s logits vs cpu: rel err %.3g", arch, worst_cpu);
    CHECK(argmax_ok, "%s device argmax == argmax of the logits", arch);
    printf("%s %s logits [2,%d]: rel err %.2e vs transformers, %.2e vs cpu\n", PNAME, arch, T, worst_ref, worst_cpu);
    free(ref_logits);
    /* hidden states after each layer (HF hidden_states[l + 1]) */
    double worst_h = 0;
    for (int l = 0; l < L; l++) {
        char name[64];
        snprintf(name, sizeof name, "hidden_%d", l + 1);
        if (!st_find(ref, name) || l + 1 == L) continue; /* the last one is final-normed: covered by logits */
        for (int k = 0; k < 2; k++) prism_ctx_seq_clear(cg, k);
        CHECK(prism_decode_layers(cg, &b, 0, l + 1) == PRISM_OK, "%s layers [0,%d): %s", arch, l + 1, prism_last_error());
        float *hr = fixture_f32(ref, name, NULL);
        for (int64_t i = 0; i < n; i++) {
            const float *h = prism_get_hidden(cg, (int32_t)i);
            if (!h) { CHECK(0, "%s hidden row missing", arch); break; }
            double e = rel_err(h, hr + i * H, H);
            worst_h = e > worst_h ? e : worst_h;
        }
        free(hr);
    }
    CHECK(worst_h < 3 * TOL, "%s hidden states vs transformers: rel err %.3g", arch, worst_h);
    printf("%s %s hidden states: rel err %.2e\n", PNAME, arch, worst_h);

    /* 300-token sequence: prefill all but the last, then one decode step (split-K) */
    float *lf = fixture_f32(ref, "long_input_ids", &n);
    float *long_logits = fixture_f32(ref, "long_logits", NULL);
    const int LT = (int)n;
    int32_t *lids = malloc(n * sizeof *lids), *lpos = malloc(n * sizeof *lpos), *lseq = calloc(n, sizeof *lseq);
    for (int i = 0; i < LT; i++) lids[i] = (int32_t)lf[i], lpos[i] = i;
    prism_ctx_seq_clear(cg, 0);
    prism_batch pre = {LT - 1, lids, lpos, lseq, NULL}, step = {1, lids + LT - 1, lpos + LT - 1, lseq, NULL};
    CHECK(prism_decode(cg, &pre) == PRISM_OK && prism_decode(cg, &step) == PRISM_OK, "%s long: %s", arch, prism_last_error());
    const float *g = prism_get_logits(cg, 0);
    double el = g ? rel_err(g, long_logits + (int64_t)(LT - 1) * V, V) : 1;
    CHECK(el < TOL, "%s 300-token decode step vs transformers: rel err %.3g", arch, el);
    printf("%s %s %d-token decode step: rel err %.2e\n", PNAME, arch, LT, el);
    free(lf), free(long_logits), free(lids), free(lpos), free(lseq);

    /* greedy continuation == transformers' generate() */
    int64_t np, no;
    float *gp = fixture_f32(ref, "greedy_prompt", &np), *go = fixture_f32(ref, "greedy_output", &no);
    int32_t *prompt = malloc(np * sizeof *prompt);
    for (int64_t i = 0; i < np; i++) prompt[i] = (int32_t)gp[i];
    prism_generate_params gpar = prism_generate_default_params();
    gpar.sampling.temperature = 0;
    gpar.max_new_tokens = (int32_t)(no - np);
    gpar.ignore_eos = true;
    const int32_t *pp[1] = {prompt};
    int32_t pl[1] = {(int32_t)np};
    prism_generation out[1];
    memset(out, 0, sizeof out);
    CHECK(prism_generate(cg, NULL, pp, pl, 1, &gpar, NULL, NULL, out, NULL) == PRISM_OK, "%s generate: %s", arch, prism_last_error());
    int same = out[0].n_tokens == (int)(no - np);
    for (int i = 0; same && i < out[0].n_tokens; i++) same = out[0].tokens[i] == (int32_t)go[np + i];
    CHECK(same, "%s greedy continuation on the GPU differs from transformers' generate()", arch);
    printf("%s %s greedy %d tokens %s\n", PNAME, arch, out[0].n_tokens, same ? "identical" : "DIFFER");
    prism_generation_clear(&out[0]);
    free(gp), free(go), free(prompt);

    /* LoRA: a batch of base + adapter sequences of different lengths, then decode steps */
    snprintf(path, sizeof path, "%s/%s/adapter", fixtures_root(), arch);
    prism_adapter *ac = NULL, *ag = NULL;
    if (prism_adapter_load(mc, path, &ac) || prism_adapter_load(mg, path, &ag)) {
        CHECK(0, "%s adapter: %s", arch, prism_last_error());
    } else {
        const int lens[3] = {T, T - 7, 5};
        const prism_adapter *which_c[3] = {NULL, ac, ac}, *which_g[3] = {NULL, ag, ag};
        int32_t mt[3 * 64], mp_[3 * 64], ms[3 * 64];
        int k = 0;
        for (int s = 0; s < 3; s++) {
            prism_ctx_seq_clear(cg, s), prism_ctx_seq_clear(cc, s);
            prism_ctx_seq_set_adapter(cg, s, which_g[s]), prism_ctx_seq_set_adapter(cc, s, which_c[s]);
            for (int i = 0; i < lens[s]; i++) mt[k] = ids[(s % 2) * T + i], mp_[k] = i, ms[k] = s, k++;
        }
        double worst = 0;
        prism_batch mb = {k, mt, mp_, ms, NULL};
        for (int stepi = 0; stepi < 5; stepi++) {
            CHECK(prism_decode(cg, &mb) == PRISM_OK && prism_decode(cc, &mb) == PRISM_OK, "%s mixed: %s", arch, prism_last_error());
            int32_t nt = 0;
            for (int i = 0; i < mb.n_tokens; i++) {
                int last = 1;
                for (int j = i + 1; j < mb.n_tokens; j++) last &= ms[j] != ms[i];
                if (!last) continue;
                const float *a = prism_get_logits(cg, i), *c = prism_get_logits(cc, i);
                double e = a && c ? rel_err(a, c, V) : 1;
                worst = e > worst ? e : worst;
                /* next step: each sequence continues with the CPU's greedy token */
                int32_t best = prism_get_argmax(cc, i);
                mt[nt] = best, mp_[nt] = prism_ctx_seq_len(cc, ms[i]), ms[nt] = ms[i], nt++;
            }
            mb.n_tokens = nt;
        }
        CHECK(worst < TOL, "%s mixed base/LoRA batch, prefill + 4 decode steps, vs cpu: rel err %.3g", arch, worst);
        printf("%s %s mixed base/LoRA batch: rel err %.2e vs cpu\n", PNAME, arch, worst);

        /* routed prefill: layer 0, then the adapter, then layers 1..L-1 == adapter from the start */
        prism_batch one = {T, ids, pos, seq, NULL};
        prism_ctx_seq_clear(cg, 0);
        prism_ctx_seq_set_adapter(cg, 0, ag);
        CHECK(prism_decode(cg, &one) == PRISM_OK, "%s: %s", arch, prism_last_error());
        float *full = malloc((size_t)V * sizeof(float));
        memcpy(full, prism_get_logits(cg, T - 1), (size_t)V * sizeof(float));
        prism_ctx_seq_clear(cg, 0);
        prism_ctx_seq_set_adapter(cg, 0, NULL);
        prism_status st = prism_decode_layers(cg, &one, 0, 1);
        const float *h0 = st ? NULL : prism_get_hidden(cg, T - 1);
        CHECK(h0 != NULL, "%s layer-0 hidden: %s", arch, prism_last_error());
        prism_ctx_seq_set_adapter(cg, 0, ag);
        st = st ? st : prism_decode_layers(cg, &one, 1, L);
        st = st ? st : prism_decode_head(cg);
        const float *split = st ? NULL : prism_get_logits(cg, T - 1);
        double es = split ? rel_err(split, full, V) : 1;
        CHECK(es < 1e-5, "%s routed (split) prefill == adapter from the start: rel err %.3g", arch, es);
        free(full);
        prism_ctx_seq_set_adapter(cg, 0, NULL);
        prism_ctx_seq_set_adapter(cg, 1, NULL), prism_ctx_seq_set_adapter(cg, 2, NULL);
        prism_ctx_seq_set_adapter(cc, 1, NULL), prism_ctx_seq_set_adapter(cc, 2, NULL);
    }
    prism_ctx_free(cg);
    prism_ctx_free(cc);
    prism_adapter_free(ag);
    prism_adapter_free(ac);
    prism_model_free(mg);
    prism_model_free(mc);
    st_close(ref);

    /* BF16 sharded checkpoint */
    snprintf(dir, sizeof dir, "%s/%s/model-bf16-sharded", fixtures_root(), arch);
    snprintf(path, sizeof path, "%s/%s/reference-bf16.safetensors", fixtures_root(), arch);
    if (st_open(path, &ref) == PRISM_OK) {
        prism_model *mb16 = load(dir, 0);
        if (mb16) {
            prism_ctx *c16 = fixture_ctx(mb16, 2);
            float *rl = fixture_f32(ref, "logits", NULL);
            int64_t nn = 0;
            float *rid = fixture_f32(ref, "input_ids", &nn);
            for (int64_t i = 0; i < nn; i++) ids[i] = (int32_t)rid[i];
            prism_batch bb = {(int32_t)nn, ids, pos, seq, want};
            double w16 = 1;
            if (prism_decode(c16, &bb) == PRISM_OK) {
                w16 = 0;
                for (int64_t i = 0; i < nn; i++) {
                    double e = rel_err(prism_get_logits(c16, (int32_t)i), rl + i * V, V);
                    w16 = e > w16 ? e : w16;
                }
            }
            /* the reference rounded RoPE's inv_freq to BF16 too (see test_parity): ~2.4e-3 even when exact */
            CHECK(w16 < (TOL > 1e-2 ? TOL : 1e-2), "%s BF16 sharded checkpoint vs reference: rel err %.3g", arch, w16);
            printf("%s %s BF16 sharded: rel err %.2e\n", PNAME, arch, w16);
            free(rl), free(rid);
            prism_ctx_free(c16);
            prism_model_free(mb16);
        }
        st_close(ref);
    }
    free(idsf), free(ids), free(pos), free(seq), free(want);
}

/* The mistral fixture with "sliding_window": 7, in a temporary directory
 * (the weights symlinked): the window's masks in prefill chunks and decode. */
static void test_window(void) {
    char src[1024], dir[] = "/tmp/prism-gpu-window-XXXXXX", path[1200], target[2048];
    snprintf(src, sizeof src, "%s/mistral/model", fixtures_root());
    if (!mkdtemp(dir)) { CHECK(0, "mkdtemp"); return; }
    snprintf(path, sizeof path, "%s/config.json", src);
    json_error_t je;
    json_t *cfg = json_load_file(path, 0, &je);
    CHECK(cfg != NULL, "read %s: %s", path, je.text);
    if (!cfg) return;
    json_object_set_new(cfg, "sliding_window", json_integer(7));
    snprintf(path, sizeof path, "%s/config.json", dir);
    CHECK(json_dump_file(cfg, path, 0) == 0, "write %s", path);
    json_decref(cfg);
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    snprintf(target, sizeof target, "%s/model.safetensors", src);
    if (target[0] != '/') {
        char cwd[512];
        if (getcwd(cwd, sizeof cwd)) snprintf(target, sizeof target, "%s/%s/model.safetensors", cwd, src);
    }
    CHECK(symlink(target, path) == 0, "symlink %s", path);
    prism_model *mc = load(dir, PRISM_DEVICE_CPU), *mg = load(dir, 0);
    if (mc && mg) {
        CHECK(mg->cfg.sliding_window == 7, "window read: %d", mg->cfg.sliding_window);
        const int V = mg->cfg.vocab, T = 40;
        prism_ctx *cg = fixture_ctx(mg, 2), *cc = fixture_ctx(mc, 2);
        int32_t ids[2 * T];
        for (int i = 0; i < 2 * T; i++) ids[i] = (i * 37 + 11) % V;
        double worst = 0;
        /* two chunks (tokens 0..29 of both, then 30..39), then 3 decode steps */
        for (int part = 0; part < 5; part++) {
            int32_t bt[2 * T], bp[2 * T], bs[2 * T], n = 0;
            for (int sq = 0; sq < 2; sq++) {
                const int a = part == 0 ? 0 : part == 1 ? 30 : 40 + part - 2, e = part == 0 ? 30 : part == 1 ? 40 : a + 1;
                for (int p = a; p < e; p++) bt[n] = p < T ? ids[sq * T + p] : (p * 13 + sq) % V, bp[n] = p, bs[n] = sq, n++;
            }
            prism_batch b = {n, bt, bp, bs, NULL};
            CHECK(prism_decode(cg, &b) == PRISM_OK, "window gpu decode: %s", prism_last_error());
            CHECK(prism_decode(cc, &b) == PRISM_OK, "window cpu decode: %s", prism_last_error());
            for (int i = 0; i < n; i++) {
                const float *g = prism_get_logits(cg, i), *c = prism_get_logits(cc, i);
                if (!g || !c) continue; /* only the last row of each sequence has logits */
                double e = rel_err(g, c, V);
                worst = e > worst ? e : worst;
            }
        }
        CHECK(worst < TOL, "sliding window 7: gpu vs cpu rel err %.3g", worst);
        printf("%s mistral sliding window 7 (2 chunks + 3 decode steps): rel err %.2e vs cpu\n", PNAME, worst);
        prism_ctx_free(cg), prism_ctx_free(cc);
    }
    prism_model_free(mc), prism_model_free(mg);
    unlink(path);
    snprintf(path, sizeof path, "%s/config.json", dir);
    unlink(path);
    rmdir(dir);
}

/* Adapters that leave some projections unadapted (q and v only; o and up only; down only) on
 * the embedded model: a base sequence and an adapted one in one batch, device against CPU. */
static void test_partial_adapters(void) {
    const char *dir = "models/stories260K";
    prism_model *cpu = load(dir, PRISM_DEVICE_CPU), *dev = load(dir, 0);
    if (!cpu || !dev) {
        CHECK(0, "loading %s: %s", dir, prism_last_error());
        prism_model_free(cpu), prism_model_free(dev);
        return;
    }
    enum { T = 12, V = 512 };
    const int32_t ids[T] = {1, 5, 77, 300, 12, 9, 400, 33, 2, 18, 99, 250};
    const uint32_t sets[3] = {PRISM_LORA_Q | PRISM_LORA_V, PRISM_LORA_O | PRISM_LORA_UP, PRISM_LORA_DOWN};
    for (int k = 0; k < 3; k++) {
        prism_lora_params lp = prism_lora_default_params();
        lp.r = 4, lp.seed = 3, lp.targets = sets[k];
        prism_adapter *ad[2] = {NULL, NULL};
        if (prism_adapter_new(cpu, lp, &ad[0]) || prism_adapter_new(dev, lp, &ad[1])) {
            CHECK(0, "adapters: %s", prism_last_error());
            break;
        }
        for (int i = 0; i < LORA_N_TARGETS; i++) /* B = 0 at init: give the adapter an effect */
            for (int32_t l = 0; l < ad[0]->n_layers; l++) {
                lora_module *m0 = lora_mod(ad[0], l, (lora_target)i), *m1 = lora_mod(ad[1], l, (lora_target)i);
                for (int64_t j = 0; m0->r && j < m0->r * m0->out; j++) m0->B[j] = m1->B[j] = 0.05f * (float)((j * 7 + l) % 13 - 6);
            }
        static float lg[2][2 * T * V]; /* [cpu, device][base rows | adapted rows] */
        for (int d = 0; d < 2; d++) {
            prism_ctx_params cp = prism_ctx_default_params();
            cp.n_seq_max = 2, cp.n_ctx = 64, cp.n_batch = 2 * T;
            prism_ctx *c = NULL;
            int32_t tok[2 * T], pos[2 * T], sq[2 * T];
            int8_t wl[2 * T];
            for (int q = 0; q < 2; q++)
                for (int t = 0; t < T; t++) tok[q * T + t] = ids[t], pos[q * T + t] = t, sq[q * T + t] = q, wl[q * T + t] = 1;
            prism_batch b = {2 * T, tok, pos, sq, wl};
            if (prism_ctx_new(d ? dev : cpu, cp, &c) || prism_ctx_seq_set_adapter(c, 1, ad[d]) || prism_decode(c, &b)) {
                CHECK(0, "partial adapter decode: %s", prism_last_error());
                prism_ctx_free(c);
                continue;
            }
            for (int r = 0; r < 2 * T; r++) memcpy(lg[d] + (size_t)r * V, prism_get_logits(c, r), V * sizeof(float));
            prism_ctx_free(c);
        }
        double e = 0, mx = 0, effect = 0;
        for (size_t i = 0; i < 2 * T * V; i++) e = fmax(e, fabs(lg[0][i] - lg[1][i])), mx = fmax(mx, fabs(lg[0][i]));
        for (size_t i = 0; i < T * V; i++) effect = fmax(effect, fabs(lg[0][T * V + i] - lg[0][i]));
        const bool ok = e / mx < TOL && effect / mx > 0.05;
        CHECK(ok, "partial adapter 0x%x: device vs cpu rel %.3g (the adapter moves logits by %.3g)", sets[k], e / mx,
              effect / mx);
        printf("%s %s stories260K adapter on targets 0x%02x, with a base sequence: rel err %.2e vs cpu (adapter "
               "effect %.2f)\n", ok ? "ok  " : "FAIL", PNAME, sets[k], e / mx, effect / mx);
        prism_adapter_free(ad[0]), prism_adapter_free(ad[1]);
    }
    prism_model_free(cpu), prism_model_free(dev);
}

/* Sampling on the device: the draw from softmax(logits · inv_t) at a given uniform == the host's
 * prism_sample_softmax on the copied logits, for temperatures from peaked to flat and uniforms from 0 to
 * just below 1, rows without a temperature left alone; then a sampled generation on the device == the
 * same generation on the CPU (same seeds, F32). On the emulator both are exact (the host's expf). A GPU's
 * expf may differ from the host's by an ulp or two, and its F32 logits from the CPU's by ~1e-6, so a
 * draw whose uniform falls that close to a boundary may differ there: a GPU may miss 2 of the 90
 * draws, and one of the 3 sequences (a flip changes the rest of it). */
/* The PRISM gate on the device == on the host, both reading the device's layer-0 rows: the last tokens of four
 * sequences of a batch and one inner row, with a gate whose standardisation is not the identity. */
static void test_gate(const char *arch) {
    char dir[1024], run[] = "/tmp/prism-gpu-gate-XXXXXX", path[1100];
    snprintf(dir, sizeof dir, "%s/%s/model", fixtures_root(), arch);
    prism_model *mg = load(dir, 0);
    if (!mg || !mkdtemp(run)) { prism_model_free(mg); CHECK(0, "gate setup"); return; }
    const int32_t H = mg->cfg.hidden, V = mg->cfg.vocab;
    make_test_run(mg, run, 0.5f);
    gate_mlp *g = gate_mlp_new(H, 7);
    uint64_t x = 5;
    for (int32_t i = 0; g && i < H; i++) {
        x = x * 6364136223846793005ull + 1442695040888963407ull;
        g->mu[i] = ((float)(x >> 40) / (float)(1 << 24) - 0.5f);
        g->sigma[i] = 0.5f + 1.5f * (float)(x >> 40 & 0xffff) / 65536.0f;
    }
    snprintf(path, sizeof path, "%s/gate.safetensors", run);
    CHECK(g && gate_save(g, path, NULL) == PRISM_OK, "save gate: %s", prism_last_error());
    gate_mlp_free(g);
    prism_router *r = NULL;
    prism_ctx *c = fixture_ctx(mg, 4);
    CHECK(prism_router_load(mg, run, &r) == PRISM_OK, "router on the device: %s", prism_last_error());
    enum { NT = 29 };
    const int32_t len[4] = {5, 9, 3, 12};
    int32_t tok[NT], pos[NT], seq[NT], rows[5], n = 0;
    for (int s = 0, i = 0; s < 4; s++)
        for (int32_t p = 0; p < len[s]; p++, i++) {
            x = x * 6364136223846793005ull + 1442695040888963407ull;
            tok[i] = (int32_t)((x >> 33) % (uint64_t)V), pos[i] = p, seq[i] = s;
            if (p == len[s] - 1) rows[n++] = i;
        }
    rows[n++] = 7;
    prism_batch b = {NT, tok, pos, seq, NULL};
    bool on[5];
    float pd[5];
    if (r && c && prism_decode_layers(c, &b, 0, 1) == PRISM_OK) {
        CHECK(prism_router_decide_rows(r, c, rows, n, on, pd) == PRISM_OK, "device gate: %s", prism_last_error());
        double worst = 0;
        int same = 1;
        for (int i = 0; i < n; i++) {
            const float *h = prism_get_hidden(c, rows[i]);
            float ph = -1;
            const bool oh = h && prism_router_decide(r, h, &ph);
            worst = fmax(worst, fabs((double)pd[i] - ph));
            same &= oh == on[i] || fabs(ph - 0.5) < 1e-5;
        }
        CHECK(worst < 1e-6 && same, "%s gate on the device vs the host: |Δp| %.2e, same decisions %d", arch, worst, same);
        printf("%s %s gate on the device == on the host at 5 rows: |Δp| %.2e\n", PNAME, arch, worst);
        const int32_t bad = NT;
        CHECK(prism_router_decide_rows(r, c, &bad, 1, on, pd) == PRISM_E_ARG && strstr(prism_last_error(), "row"),
              "a row past the batch is refused: %s", prism_last_error());
    } else {
        CHECK(0, "%s gate: %s", arch, prism_last_error());
    }
    prism_ctx_free(c);
    prism_router_free(r);
    prism_model_free(mg);
    char cmd[128], *out = NULL;
    snprintf(cmd, sizeof cmd, "rm -rf %s", run);
    test_run(cmd, &out);
    free(out);
}

static void test_sampling(void) {
    char desc[512] = "";
    prism_device_describe(0, desc, sizeof desc);
    const bool emu = strstr(desc, "emulator") != NULL;
    char dir[1024];
    snprintf(dir, sizeof dir, "%s/llama3/model", fixtures_root());
    PREC = PRISM_PRECISION_EXACT, PNAME = "exact/f32";
    prism_model *mc = load(dir, PRISM_DEVICE_CPU), *mg = load(dir, 0);
    if (!mc || !mg) { prism_model_free(mc); prism_model_free(mg); return; }
    const int32_t V = mg->cfg.vocab;
    prism_ctx *cg = fixture_ctx(mg, 4);
    CHECK(forward_samples_on_device(cg), "the device context samples on the device");
    enum { N = 11 };
    int32_t tok[N], pos[N], seq[N];
    for (int i = 0; i < N; i++) tok[i] = (i * 37 + 5) % V, seq[i] = i < 4 ? 0 : i < 9 ? 1 : 2, pos[i] = i < 4 ? i : i < 9 ? i - 4 : i - 9;
    prism_batch b = {N, tok, pos, seq, NULL};
    CHECK(prism_decode(cg, &b) == PRISM_OK, "decode: %s", prism_last_error());
    const int32_t rows[3] = {3, 8, 10}; /* each sequence's last token: the rows with logits */
    float *host = malloc((size_t)3 * V * sizeof *host);
    for (int r = 0; r < 3; r++) {
        const float *l = prism_get_logits(cg, rows[r]);
        if (!l) { CHECK(0, "logits row %d", rows[r]); free(host); prism_ctx_free(cg); prism_model_free(mc); prism_model_free(mg); return; }
        memcpy(host + (size_t)r * V, l, (size_t)V * sizeof *host);
    }
    const float temps[] = {0.02f, 0.5f, 1.0f, 1.7f, 50.0f};
    const double us[] = {0.0, 1e-9, 0.1, 0.25, 0.5, 0.77, 0.9, 0.999999, 1.0 - 0x1.0p-53};
    float inv_t[N];
    double u[N];
    int32_t got[N];
    int draws = 0, same = 0, skipped = 1;
    for (size_t a = 0; a < sizeof temps / sizeof *temps; a++)
        for (size_t c = 0; c < sizeof us / sizeof *us; c++) {
            for (int k = 0; k < N; k++) inv_t[k] = 1.0f / temps[a], u[k] = us[c];
            for (int r = 0; r < 3; r++) u[rows[r]] = fmod(us[c] + 0.31 * r, 1.0);
            inv_t[rows[(a + c) % 3]] = 0.0f; /* one row a step not sampled there */
            CHECK(forward_sample_softmax(cg, inv_t, u, got) == PRISM_OK, "device sampling: %s", prism_last_error());
            for (int r = 0; r < 3; r++) {
                const int32_t k = rows[r];
                if (inv_t[k] == 0.0f) {
                    skipped &= got[k] == -1;
                    continue;
                }
                draws++;
                same += got[k] == prism_sample_softmax(host + (size_t)r * V, V, inv_t[k], u[k]);
            }
            skipped &= got[0] == -1 && got[5] == -1; /* rows without logits */
        }
    const bool dok = (same == draws || (!emu && same >= draws - 2)) && skipped;
    CHECK(dok, "device draws == host draws: %d/%d, unsampled rows -1: %d", same, draws, skipped);
    printf("%s device softmax draws == prism_sample_softmax on the copied logits: %d/%d (V = %d)\n",
           dok ? "ok  " : "FAIL", same, draws, V);
    free(host);
    /* a sampled generation, device vs CPU */
    prism_ctx *cc = fixture_ctx(mc, 4);
    prism_generate_params gp = prism_generate_default_params();
    gp.sampling.temperature = 0.9f;
    gp.sampling.seed = 77;
    gp.max_new_tokens = 24;
    gp.ignore_eos = true;
    const int32_t p0[] = {1, 2, 3, 4, 5}, p1[] = {9, 8}, p2[] = {7, 7, 7, 100};
    const int32_t *pp[3] = {p0, p1, p2}, pl[3] = {5, 2, 4};
    prism_generation og[3], oc[3];
    memset(og, 0, sizeof og), memset(oc, 0, sizeof oc);
    CHECK(prism_generate(cg, NULL, pp, pl, 3, &gp, NULL, NULL, og, NULL) == PRISM_OK, "device generate: %s", prism_last_error());
    CHECK(prism_generate(cc, NULL, pp, pl, 3, &gp, NULL, NULL, oc, NULL) == PRISM_OK, "cpu generate: %s", prism_last_error());
    int n_eq = 0, distinct = 0, len_ok = 1;
    for (int i = 0; i < 3; i++) {
        len_ok &= og[i].n_tokens == 24 && oc[i].n_tokens == 24;
        int eq = og[i].n_tokens == oc[i].n_tokens;
        for (int j = 0; eq && j < og[i].n_tokens; j++) eq = og[i].tokens[j] == oc[i].tokens[j];
        n_eq += eq;
        for (int j = 1; j < og[i].n_tokens; j++) distinct += og[i].tokens[j] != og[i].tokens[j - 1];
        prism_generation_clear(&og[i]), prism_generation_clear(&oc[i]);
    }
    const bool gok = len_ok && (n_eq == 3 || (!emu && n_eq >= 2)) && distinct > 10;
    CHECK(gok, "sampled generation: %d of 3 sequences device == cpu, %d token changes", n_eq, distinct);
    printf("%s sampled generation (T = 0.9, 3 x 24 tokens): %d of 3 sequences' device tokens == CPU tokens\n",
           gok ? "ok  " : "FAIL", n_eq);
    prism_ctx_free(cc);
    prism_ctx_free(cg);
    prism_model_free(mc);
    prism_model_free(mg);
}

int main(void) {
    test_device_strings();
    char desc[512];
    if (prism_device_describe(0, desc, sizeof desc) != PRISM_OK) {
        char why[1024];
        snprintf(why, sizeof why, "%s", prism_last_error());
        const char *req = getenv("PRISM_REQUIRE_GPU");
        if (req && *req == '1') CHECK(0, "PRISM_REQUIRE_GPU=1 but no usable GPU: %s", why);
        printf("no usable CUDA device here (%s): checking the errors users get; GPU parity skipped\n", why);
        test_unavailable(why);
    } else {
        printf("device: %s\n", desc);
        const char *only = getenv("PRISM_TEST_ARCH"); /* one architecture, when bisecting */
        for (int p = 0; p < 2; p++) {
            PREC = p ? PRISM_PRECISION_FAST : PRISM_PRECISION_EXACT;
            PNAME = p ? "fast/bf16" : "exact/f32";
            TOL = p ? 3e-2 : 1e-4;
            for (size_t i = 0; i < sizeof ARCHS / sizeof *ARCHS; i++)
                if (!only || !strcmp(only, ARCHS[i])) test_arch(ARCHS[i]);
            if (!only || !strcmp(only, "mistral")) test_window();
            test_gate(only ? only : "qwen3"); /* under compute-sanitizer too (one architecture) */
            if (!only) test_partial_adapters();
        }
        if (!only || !strcmp(only, "llama3")) test_sampling();
    }
    TEST_MAIN_END();
}
