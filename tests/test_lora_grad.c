/* test_lora_grad.c — LoRA against transformers + peft (lora_ce / lora_kl
 * fixtures) for every architecture: logits with the adapter (training forward
 * and inference engine), masked-CE and top-k-KL losses, every LoRA gradient;
 * mixed base/adapter batches; recomputation == stored activations; a batch
 * (packed into one pass on a CUDA model) == its examples one by one; and
 * finite-difference checks of the backward pass. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lora/lora.h"
#include "model/forward.h"
#include "model/safetensors.h"
#include "test.h"
#include "test_fixture.h"
#include "train/grad.h"

static const char *ARCHS[] = {"llama3", "qwen2", "qwen3", "mistral"};

static int32_t *rdi(st_set *s, const char *name, int64_t *n) {
    int64_t k;
    float *f = fixture_f32(s, name, &k);
    int32_t *r = malloc((size_t)k * sizeof(int32_t));
    for (int64_t i = 0; i < k; i++) r[i] = (int32_t)f[i];
    free(f);
    if (n) *n = k;
    return r;
}

static void zero_grad(prism_adapter *g) {
    for (int64_t i = 0; i < (int64_t)g->n_layers * LORA_N_TARGETS; i++) {
        lora_module *m = &g->mod[i];
        if (!m->r) continue;
        memset(m->A, 0, (size_t)(m->r * m->in) * sizeof(float));
        memset(m->B, 0, (size_t)(m->out * m->r) * sizeof(float));
    }
}

/* Compares grad/count against every grad.<peft name> of the fixture. */
static void check_grads_tol(const char *label, st_set *ref, const prism_adapter *g, double count, double tol) {
    double worst = 0;
    const char *worst_name = "";
    int n = 0;
    for (int32_t l = 0; l < g->n_layers; l++)
        for (int t = 0; t < LORA_N_TARGETS; t++) {
            const lora_module *m = lora_mod(g, l, (lora_target)t);
            if (!m->r) continue;
            for (int ab = 0; ab < 2; ab++) {
                char name[256];
                snprintf(name, sizeof name, "grad.base_model.model.model.layers.%d.%s.%s.lora_%c.default.weight", l,
                         lora_target_parent[t], lora_target_names[t], ab ? 'B' : 'A');
                int64_t k;
                float *want = fixture_f32(ref, name, &k);
                const float *got = ab ? m->B : m->A;
                float *scaled = malloc((size_t)k * sizeof(float));
                for (int64_t i = 0; i < k; i++) scaled[i] = (float)(got[i] / count);
                double e = rel_err(scaled, want, (size_t)k);
                CHECK(e < tol, "%s %s rel err %.3e", label, name, e);
                if (e > worst) worst = e, worst_name = lora_target_names[t];
                n++;
                free(want);
                free(scaled);
            }
        }
    printf("%s %-40s %d tensors, worst rel_err %.3e (%s) (tol %g)\n", worst < tol ? "ok  " : "FAIL", label, n, worst,
           worst_name, tol);
}

static void check_grads(const char *label, st_set *ref, const prism_adapter *g, double count) {
    check_grads_tol(label, ref, g, count, 1e-4);
}

static prism_model *load_model(const char *arch) {
    char dir[1024];
    snprintf(dir, sizeof dir, "%s/%s/model", fixtures_root(), arch);
    prism_model_params mp = prism_model_default_params();
    mp.precision = PRISM_PRECISION_EXACT;
    prism_model *m = NULL;
    if (prism_model_load(dir, mp, &m)) { fprintf(stderr, "%s\n", prism_last_error()); exit(2); }
    return m;
}

static void test_arch(const char *arch) {
    char path[1024], label[256];
    prism_model *m = load_model(arch);
    const int64_t V = m->cfg.vocab;
    snprintf(path, sizeof path, "%s/%s/adapter", fixtures_root(), arch);
    prism_adapter *a = NULL, *g = NULL;
    if (prism_adapter_load(m, path, &a)) { CHECK(0, "adapter: %s", prism_last_error()); prism_model_free(m); return; }
    CHECK(lora_alloc_like(a, &g) == PRISM_OK, "grad alloc");

    /* ---- masked cross-entropy, batch of 2 sequences */
    snprintf(path, sizeof path, "%s/%s/lora_ce.safetensors", fixtures_root(), arch);
    st_set *ce = NULL;
    if (st_open(path, &ce)) { CHECK(0, "%s", prism_last_error()); return; }
    int64_t n;
    int32_t *ids = rdi(ce, "input_ids", &n), *labels = rdi(ce, "labels", NULL);
    const int B = 2, T = (int)(n / 2);
    float *want_logits = fixture_f32(ce, "logits", NULL), *want_loss = fixture_f32(ce, "loss", NULL);
    float *logits = malloc((size_t)B * T * V * sizeof(float));
    for (int rc = 0; rc < 4; rc++) { /* stored, recompute, as one batch: stored, recompute */
        train_ws *w = NULL;
        CHECK(train_ws_new(m, 64, rc & 1, &w) == PRISM_OK, "ws: %s", prism_last_error());
        zero_grad(g);
        double loss = 0;
        int64_t count = 0;
        train_example exs[2];
        for (int b = 0; b < B; b++)
            exs[b] = (train_example){.loss = LOSS_CE, .n_tokens = T, .tokens = ids + b * T, .labels = labels + b * T};
        if (rc < 2) {
            for (int b = 0; b < B; b++) {
                double ls;
                int64_t c;
                prism_status st = train_example_grad(w, m, a, g, &exs[b], &ls, &c, logits + (size_t)b * T * V);
                CHECK(st == PRISM_OK, "grad: %s", prism_last_error());
                loss += ls, count += c;
            }
        } else {
            train_ws_set_pass_tokens(w, 2 * 64);
            prism_status st = train_batch_grad(w, m, a, g, exs, B, &loss, &count, logits);
            CHECK(st == PRISM_OK, "batch grad: %s", prism_last_error());
            CHECK(train_ws_pass_tokens(w) == (train_ws_on_gpu(w) ? 128 : 64), "pass tokens %d", train_ws_pass_tokens(w));
        }
        const char *mode = rc == 0 ? "stored" : rc == 1 ? "recompute" : rc == 2 ? "one batch" : "one batch, recompute";
        snprintf(label, sizeof label, "%s CE logits with adapter (%s)", arch, mode);
        check_close(label, logits, want_logits, (size_t)B * T * V, 1e-5);
        float lossf = (float)(loss / count);
        snprintf(label, sizeof label, "%s CE loss (%s)", arch, mode);
        check_close(label, &lossf, want_loss, 1, 1e-5);
        snprintf(label, sizeof label, "%s CE grads (%s)", arch, mode);
        check_grads(label, ce, g, (double)count);
        train_ws_free(w);
    }

    /* ---- a CUDA model in BF16 (--precision fast): the packed training path with BF16 GEMM inputs */
    if (m->gpu) {
        snprintf(path, sizeof path, "%s/%s/model", fixtures_root(), arch);
        prism_model_params mp = prism_model_default_params();
        mp.precision = PRISM_PRECISION_FAST;
        prism_model *mf = NULL;
        prism_adapter *af = NULL, *gf = NULL;
        train_ws *w = NULL;
        char apath[1024];
        snprintf(apath, sizeof apath, "%s/%s/adapter", fixtures_root(), arch);
        if (prism_model_load(path, mp, &mf) || prism_adapter_load(mf, apath, &af) || lora_alloc_like(af, &gf) ||
            train_ws_new(mf, 64, false, &w)) {
            CHECK(0, "bf16 setup: %s", prism_last_error());
        } else {
            train_ws_set_pass_tokens(w, 128);
            const train_example exs[2] = {{.loss = LOSS_CE, .n_tokens = T, .tokens = ids, .labels = labels},
                                          {.loss = LOSS_CE, .n_tokens = T, .tokens = ids + T, .labels = labels + T}};
            double loss = 0;
            int64_t count = 0;
            CHECK(train_batch_grad(w, mf, af, gf, exs, 2, &loss, &count, NULL) == PRISM_OK, "bf16: %s", prism_last_error());
            float lossf = (float)(loss / count);
            snprintf(label, sizeof label, "%s CE loss, BF16 on the device", arch);
            check_close(label, &lossf, want_loss, 1, 1e-2);
            snprintf(label, sizeof label, "%s CE grads, BF16 on the device", arch);
            check_grads_tol(label, ce, gf, (double)count, 5e-2);
        }
        train_ws_free(w);
        prism_adapter_free(af), prism_adapter_free(gf);
        prism_model_free(mf);
    }

    /* ---- inference engine with the adapter; mixed base/adapter batch */
    {
        snprintf(path, sizeof path, "%s/%s/reference.safetensors", fixtures_root(), arch);
        st_set *ref = NULL;
        st_open(path, &ref);
        float *base_logits = fixture_f32(ref, "logits", NULL);
        prism_ctx_params cp = prism_ctx_default_params();
        cp.n_seq_max = 4;
        cp.n_ctx = 64;
        cp.n_batch = 4 * T;
        prism_ctx *c = NULL;
        CHECK(prism_ctx_new(m, cp, &c) == PRISM_OK, "ctx");
        /* seq 0: seq A on base; seq 1: seq A on adapter; seq 2: seq B on adapter; seq 3: seq B on base */
        int32_t *tok = malloc(4 * T * sizeof(int32_t)), *pos = malloc(4 * T * sizeof(int32_t)), *sq = malloc(4 * T * sizeof(int32_t));
        int8_t *wl = malloc(4 * T);
        const int src[4] = {0, 0, 1, 1};
        for (int s = 0; s < 4; s++)
            for (int t = 0; t < T; t++) tok[s * T + t] = ids[src[s] * T + t], pos[s * T + t] = t, sq[s * T + t] = s, wl[s * T + t] = 1;
        prism_ctx_seq_set_adapter(c, 1, a);
        prism_ctx_seq_set_adapter(c, 2, a);
        prism_batch b = {4 * T, tok, pos, sq, wl};
        CHECK(prism_decode(c, &b) == PRISM_OK, "decode: %s", prism_last_error());
        float *got = malloc((size_t)T * V * sizeof(float));
        const float *want[4] = {base_logits, want_logits, want_logits + (size_t)T * V, base_logits + (size_t)T * V};
        const char *what[4] = {"base", "adapter", "adapter", "base"};
        for (int s = 0; s < 4; s++) {
            for (int t = 0; t < T; t++) memcpy(got + (size_t)t * V, prism_get_logits(c, s * T + t), V * sizeof(float));
            snprintf(label, sizeof label, "%s mixed batch seq %d (%s)", arch, s, what[s]);
            check_close(label, got, want[s], (size_t)T * V, 1e-5);
        }
        /* one adapted sequence decoded token by token == its prefill */
        prism_ctx_seq_clear(c, 1);
        double worst = 0;
        for (int t = 0; t < T; t++) {
            int32_t tk = ids[t], ps = t, s1 = 1;
            prism_batch one = {1, &tk, &ps, &s1, NULL};
            CHECK(prism_decode(c, &one) == PRISM_OK, "step");
            double e = rel_err(prism_get_logits(c, 0), want_logits + (size_t)t * V, V);
            worst = e > worst ? e : worst;
        }
        CHECK(worst < 1e-5, "%s adapter incremental decode rel err %.3e", arch, worst);
        printf("ok   %s adapter decode step by step: worst rel_err %.3e\n", arch, worst);
        free(tok); free(pos); free(sq); free(wl); free(got); free(base_logits);
        prism_ctx_free(c);
        st_close(ref);
    }
    free(ids); free(labels); free(want_logits); free(want_loss); free(logits);

    /* ---- top-k KL self-distillation */
    snprintf(path, sizeof path, "%s/%s/lora_kl.safetensors", fixtures_root(), arch);
    st_set *kl = NULL;
    if (st_open(path, &kl)) { CHECK(0, "%s", prism_last_error()); return; }
    int64_t nt, np, npre, nk;
    int32_t *kids = rdi(kl, "input_ids", &nt), *kpos = rdi(kl, "positions", &np), *prefix = rdi(kl, "prefix_ids", &npre);
    int32_t *tidx = rdi(kl, "teacher_topk_indices", &nk);
    float *tval = fixture_f32(kl, "teacher_topk_values", NULL), *temp = fixture_f32(kl, "temperature", NULL), *kloss = fixture_f32(kl, "loss", NULL);
    const int K = (int)(nk / np);
    {
        /* the teacher: base model on prefix + sequence; its top-k at each position */
        prism_ctx_params cp = prism_ctx_default_params();
        cp.n_ctx = 128;
        prism_ctx *c = NULL;
        prism_ctx_new(m, cp, &c);
        int L = (int)(npre + nt);
        int32_t *tk = malloc(L * sizeof(int32_t)), *ps = malloc(L * sizeof(int32_t)), *sq = calloc(L, sizeof(int32_t));
        int8_t *wl = calloc(L, 1);
        for (int i = 0; i < L; i++) tk[i] = i < npre ? prefix[i] : kids[i - npre], ps[i] = i;
        for (int p = 0; p < np; p++) wl[npre + kpos[p]] = 1;
        prism_batch b = {L, tk, ps, sq, wl};
        CHECK(prism_decode(c, &b) == PRISM_OK, "teacher decode");
        float *tv = malloc((size_t)np * K * sizeof(float));
        int same_idx = 1;
        for (int p = 0; p < np; p++) {
            const float *lg = prism_get_logits(c, (int)npre + kpos[p]);
            for (int j = 0; j < K; j++) {
                tv[p * K + j] = lg[tidx[p * K + j]];
                /* the fixture's index at rank j must be a top-K logit here too */
                int above = 0;
                for (int v = 0; v < V; v++) above += lg[v] > lg[tidx[p * K + j]];
                same_idx &= above < K;
            }
        }
        snprintf(label, sizeof label, "%s teacher top-%d values (prism base + prefix)", arch, K);
        check_close(label, tv, tval, (size_t)np * K, 1e-5);
        CHECK(same_idx, "%s teacher top-k indices are prism's top-k", arch);
        free(tk); free(ps); free(sq); free(wl); free(tv);
        prism_ctx_free(c);
    }
    train_ws *w = NULL;
    train_ws_new(m, 64, true, &w);
    zero_grad(g);
    train_example ex = {.loss = LOSS_KL, .n_tokens = (int32_t)nt, .tokens = kids, .n_pos = (int32_t)np, .k = K,
                        .positions = kpos, .teacher_values = tval, .teacher_indices = tidx, .temperature = temp[0]};
    double ls;
    int64_t c;
    CHECK(train_example_grad(w, m, a, g, &ex, &ls, &c, NULL) == PRISM_OK, "kl grad: %s", prism_last_error());
    float lossf = (float)(ls / c);
    snprintf(label, sizeof label, "%s KL loss (k=%d, T=%g)", arch, K, temp[0]);
    check_close(label, &lossf, kloss, 1, 1e-5);
    snprintf(label, sizeof label, "%s KL grads", arch);
    check_grads(label, kl, g, (double)c);
    { /* again with the student's logits asked for: every logit is computed (the dense path) */
        float *lg = malloc((size_t)nt * V * sizeof(float));
        zero_grad(g);
        CHECK(train_example_grad(w, m, a, g, &ex, &ls, &c, lg) == PRISM_OK, "kl grad: %s", prism_last_error());
        float lf = (float)(ls / c);
        snprintf(label, sizeof label, "%s KL loss, all logits", arch);
        check_close(label, &lf, kloss, 1, 1e-5);
        snprintf(label, sizeof label, "%s KL grads, all logits", arch);
        check_grads(label, kl, g, (double)c);
        free(lg);
    }

    /* ---- a batch of different lengths and both losses == its examples one by one */
    {
        snprintf(path, sizeof path, "%s/%s/lora_ce.safetensors", fixtures_root(), arch);
        st_set *ce2 = NULL;
        st_open(path, &ce2);
        int64_t n2;
        int32_t *cids = rdi(ce2, "input_ids", &n2), *clab = rdi(ce2, "labels", NULL);
        const int32_t Tc = (int32_t)(n2 / 2);
        const train_example exs[4] = {
            {.loss = LOSS_CE, .n_tokens = Tc, .tokens = cids + Tc, .labels = clab + Tc},
            ex, /* KL */
            {.loss = LOSS_CE, .n_tokens = Tc - 3, .tokens = cids, .labels = clab},
            {.loss = LOSS_CE, .n_tokens = 2, .tokens = cids + 5, .labels = clab + 5},
        };
        prism_adapter *g1 = NULL, *g2 = NULL;
        lora_alloc_like(a, &g1);
        lora_alloc_like(a, &g2);
        double l1 = 0, l2 = 0;
        int64_t c1 = 0, c2 = 0;
        for (int i = 0; i < 4; i++) {
            double ls;
            int64_t cc;
            CHECK(train_example_grad(w, m, a, g1, &exs[i], &ls, &cc, NULL) == PRISM_OK, "grad: %s", prism_last_error());
            l1 += ls, c1 += cc;
        }
        for (int rc = 0; rc < 2; rc++) {
            train_ws *wb = NULL;
            train_ws_new(m, 64, rc, &wb);
            train_ws_set_pass_tokens(wb, 4 * 64);
            zero_grad(g2);
            CHECK(train_batch_grad(wb, m, a, g2, exs, 4, &l2, &c2, NULL) == PRISM_OK, "batch: %s", prism_last_error());
            double worst = 0;
            for (int64_t i = 0; i < (int64_t)a->n_layers * LORA_N_TARGETS; i++) {
                const lora_module *x = &g1->mod[i], *y = &g2->mod[i];
                if (!x->r) continue;
                double e = rel_err(y->A, x->A, (size_t)(x->r * x->in)), e2 = rel_err(y->B, x->B, (size_t)(x->r * x->out));
                worst = e > worst ? e : worst;
                worst = e2 > worst ? e2 : worst;
            }
            const double le = fabs(l2 - l1) / fabs(l1);
            CHECK(c2 == c1 && le < 1e-6 && worst < 1e-5, "%s batch of 4 (%s): count %lld/%lld, loss rel %.2e, grads rel %.2e",
                  arch, rc ? "recompute" : "stored", (long long)c2, (long long)c1, le, worst);
            printf("%s %s batch of 4 (CE, KL, CE, CE; %s) == one by one: loss rel %.2e, grads rel %.2e (tol 1e-5)\n",
                   c2 == c1 && le < 1e-6 && worst < 1e-5 ? "ok  " : "FAIL", arch, rc ? "recompute" : "stored", le, worst);
            train_ws_free(wb);
        }
        prism_adapter_free(g1);
        prism_adapter_free(g2);
        free(cids);
        free(clab);
        st_close(ce2);
    }

    /* ---- finite differences of the KL loss w.r.t. a few A and B entries (double-sided) */
    {
        const int probes[][3] = {{1, LORA_Q, 0}, {1, LORA_V, 1}, {2, LORA_O, 0}, {2, LORA_DOWN, 1}, {1, LORA_GATE, 0}, {2, LORA_K, 1}};
        double worst = 0;
        for (size_t pi = 0; pi < sizeof probes / sizeof *probes; pi++) {
            int l = probes[pi][0] < a->n_layers ? probes[pi][0] : a->n_layers - 1;
            lora_module *mod = lora_mod(a, l, (lora_target)probes[pi][1]);
            const lora_module *gm = lora_mod(g, l, (lora_target)probes[pi][1]);
            float *par = probes[pi][2] ? mod->B : mod->A;
            const float *gp = probes[pi][2] ? gm->B : gm->A;
            int64_t idx = (probes[pi][2] ? mod->out * mod->r : mod->r * mod->in) / 3;
            const float h = 1e-2f, save = par[idx];
            prism_adapter *g2 = NULL;
            lora_alloc_like(a, &g2);
            double lp, lm;
            int64_t cc;
            par[idx] = save + h;
            train_example_grad(w, m, a, g2, &ex, &lp, &cc, NULL);
            par[idx] = save - h;
            train_example_grad(w, m, a, g2, &ex, &lm, &cc, NULL);
            par[idx] = save;
            prism_adapter_free(g2);
            double fd = (lp - lm) / (2 * h), an = gp[idx];
            double e = fabs(fd - an) / (fabs(an) + 1e-3);
            worst = e > worst ? e : worst;
            CHECK(e < 2e-2, "%s FD %s.%c[%lld]: analytic %.6g finite-difference %.6g", arch,
                  lora_target_names[probes[pi][1]], probes[pi][2] ? 'B' : 'A', (long long)idx, an, fd);
        }
        printf("%s %s finite differences of 6 LoRA entries: worst rel %.2e (tol 2e-2)\n", worst < 2e-2 ? "ok  " : "FAIL", arch, worst);
    }
    train_ws_free(w);
    free(kids); free(kpos); free(prefix); free(tidx); free(tval); free(temp); free(kloss);
    st_close(kl);
    st_close(ce);
    prism_adapter_free(g);
    prism_adapter_free(a);
    prism_model_free(m);
}

int main(void) {
    const char *only = getenv("PRISM_TEST_ARCH"); /* one architecture: bisecting, or under compute-sanitizer */
    int ran = 0;
    for (size_t i = 0; i < sizeof ARCHS / sizeof *ARCHS; i++)
        if (!only || !strcmp(only, ARCHS[i])) test_arch(ARCHS[i]), ran++;
    CHECK(ran > 0, "PRISM_TEST_ARCH=%s names no fixture architecture (llama3, qwen2, qwen3, mistral)", only);
    TEST_MAIN_END();
}
