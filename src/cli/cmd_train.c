/* cmd_train.c — `prism train-lora`: train a LoRA adapter on a JSONL file
 * (masked cross-entropy or top-k KL self-distillation), with checkpoints
 * that --resume continues exactly. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "train/trainer.h"

int cmd_train(int argc, char **argv);

static volatile sig_atomic_t g_interrupted;
static void on_sigint(int sig) { (void)sig; g_interrupted = 1; }

typedef struct { bool quiet, said; } progress_ctx;

static void fmt_time(char *b, size_t n, double s) {
    if (!(s >= 0) || s > 1e8) { snprintf(b, n, "?"); return; }
    long t = (long)(s + 0.5);
    snprintf(b, n, "%ld:%02ld:%02ld", t / 3600, t / 60 % 60, t % 60);
}

static bool on_progress(void *user, const train_progress *p) {
    progress_ctx *c = user;
    if (!c->quiet && !c->said && p->pass_tokens) {
        fprintf(stderr, "train-lora: on the GPU in passes of up to %d tokens, activations %s\n", p->pass_tokens,
                p->recompute ? "recomputed (a whole pass's do not fit)" : "kept");
        c->said = true;
    }
    if (!c->quiet) {
        char eta[32], el[32];
        fmt_time(eta, sizeof eta, p->eta_s);
        fmt_time(el, sizeof el, p->elapsed_s);
        fprintf(stderr, "step %lld/%lld  epoch %d  loss %.4f  lr %.3e  grad-norm %.4f  %.0f tok/s  elapsed %s  ETA %s\n",
                (long long)p->step, (long long)p->total_steps, p->epoch + 1, p->loss, p->lr, p->grad_norm,
                p->tokens_per_s, el, eta);
    }
    return !g_interrupted;
}

/* "q,k,v,o,gate,up,down", "attn", "mlp", "all"; also the *_proj names (lora_parse_targets). */
static uint32_t parse_targets(const char *s) {
    uint32_t bits = 0;
    char bad[64];
    if (lora_parse_targets(s, &bits, bad, sizeof bad)) {
        if (!bad[0]) cli_usage_error("--targets: empty list");
        cli_usage_error("--targets: unknown module \"%s\" (use q,k,v,o,gate,up,down, attn, mlp or all)", bad);
    }
    return bits;
}

/* "B:E" (end exclusive, E may be empty = last layer), or "all". */
static void parse_layers(const char *s, int32_t *begin, int32_t *end) {
    if (!strcmp(s, "all")) { *begin = 0; *end = 0; return; }
    char *e;
    long b = strtol(s, &e, 10);
    if (e == s || *e != ':' || b < 0) cli_usage_error("--layers: expected B:E (layers B..E-1) or all, got \"%s\"", s);
    const char *q = e + 1;
    long en = 0;
    if (*q) {
        en = strtol(q, &e, 10);
        if (e == q || *e || en <= b) cli_usage_error("--layers: expected B:E with E > B, got \"%s\"", s);
    }
    *begin = (int32_t)b;
    *end = (int32_t)en;
}

int cmd_train(int argc, char **argv) {
    cli_common c = {.precision = PRISM_PRECISION_EXACT};
    trainer_params tp = trainer_default_params();
    prism_lora_params lp = prism_lora_default_params();
    train_data_params dp = {.loss = LOSS_CE, .max_len = 1024, .kl_topk = 64, .kl_temperature = 2.0f};
    const char *data_path = NULL, *out = NULL, *save_dtype = "F32";
    bool quiet = false, alpha_set = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (cli_common_opt(&c, argc, argv, &i)) continue;
        if (!strcmp(a, "--data")) data_path = cli_value(argc, argv, &i);
        else if (!strcmp(a, "--out") || !strcmp(a, "-o")) out = cli_value(argc, argv, &i);
        else if (!strcmp(a, "--loss")) {
            const char *v = cli_value(argc, argv, &i);
            if (!strcmp(v, "ce")) tp.loss = LOSS_CE;
            else if (!strcmp(v, "kl")) tp.loss = LOSS_KL;
            else cli_usage_error("--loss: expected ce or kl, got \"%s\"", v);
        } else if (!strcmp(a, "--rank") || !strcmp(a, "-r")) lp.r = (int32_t)cli_long(a, cli_value(argc, argv, &i), 1, 4096);
        else if (!strcmp(a, "--alpha")) lp.alpha = (float)cli_double(a, cli_value(argc, argv, &i), 1e-6, 1e6), alpha_set = true;
        else if (!strcmp(a, "--rslora")) lp.use_rslora = true;
        else if (!strcmp(a, "--targets")) lp.targets = parse_targets(cli_value(argc, argv, &i));
        else if (!strcmp(a, "--layers")) parse_layers(cli_value(argc, argv, &i), &lp.layer_begin, &lp.layer_end);
        else if (!strcmp(a, "--lr")) tp.lr = cli_double(a, cli_value(argc, argv, &i), 0, 10);
        else if (!strcmp(a, "--schedule")) {
            const char *v = cli_value(argc, argv, &i);
            int s = lr_schedule_parse(v);
            if (s < 0) cli_usage_error("--schedule: expected linear, cosine or constant, got \"%s\"", v);
            tp.schedule = (lr_schedule)s;
        } else if (!strcmp(a, "--warmup")) tp.warmup_steps = cli_long(a, cli_value(argc, argv, &i), 0, 1L << 40);
        else if (!strcmp(a, "--weight-decay")) tp.adamw.weight_decay = cli_double(a, cli_value(argc, argv, &i), 0, 10);
        else if (!strcmp(a, "--max-grad-norm")) tp.max_grad_norm = cli_double(a, cli_value(argc, argv, &i), 0, 1e9);
        else if (!strcmp(a, "--epochs")) tp.epochs = (int32_t)cli_long(a, cli_value(argc, argv, &i), 1, 1 << 20);
        else if (!strcmp(a, "--max-steps")) tp.max_steps = cli_long(a, cli_value(argc, argv, &i), 1, 1L << 40);
        else if (!strcmp(a, "--batch-size")) tp.batch_size = (int32_t)cli_long(a, cli_value(argc, argv, &i), 1, 1 << 20);
        else if (!strcmp(a, "--grad-accum")) tp.grad_accum = (int32_t)cli_long(a, cli_value(argc, argv, &i), 1, 1 << 20);
        else if (!strcmp(a, "--max-len")) dp.max_len = (int32_t)cli_long(a, cli_value(argc, argv, &i), 2, 1 << 22);
        else if (!strcmp(a, "--skip-long")) dp.skip_long = true;
        else if (!strcmp(a, "--seed")) tp.seed = (uint64_t)cli_long(a, cli_value(argc, argv, &i), 0, 0x7fffffffffffffffL);
        else if (!strcmp(a, "--no-shuffle")) tp.shuffle = false;
        else if (!strcmp(a, "--save-every")) tp.save_every = cli_long(a, cli_value(argc, argv, &i), 1, 1L << 40);
        else if (!strcmp(a, "--stop-at-step")) tp.stop_at_step = cli_long(a, cli_value(argc, argv, &i), 1, 1L << 40);
        else if (!strcmp(a, "--resume")) tp.resume = true;
        else if (!strcmp(a, "--save-dtype")) {
            save_dtype = cli_value(argc, argv, &i);
            if (strcmp(save_dtype, "F32") && strcmp(save_dtype, "BF16") && strcmp(save_dtype, "F16"))
                cli_usage_error("--save-dtype: expected F32, BF16 or F16, got \"%s\"", save_dtype);
        } else if (!strcmp(a, "--kl-topk")) dp.kl_topk = (int32_t)cli_long(a, cli_value(argc, argv, &i), 1, 1 << 24);
        else if (!strcmp(a, "--kl-temperature")) dp.kl_temperature = (float)cli_double(a, cli_value(argc, argv, &i), 1e-3, 1e3);
        else if (!strcmp(a, "--no-recompute")) tp.recompute = false;
        else if (!strcmp(a, "--quiet") || !strcmp(a, "-q")) quiet = true;
        else cli_usage_error("train-lora: unknown option \"%s\"", a);
    }
    if (!data_path) cli_usage_error("train-lora: --data FILE.jsonl is required");
    if (!out) cli_usage_error("train-lora: --out ADAPTER_DIR is required");
    if (!alpha_set) lp.alpha = 2.0f * (float)lp.r;
    lp.seed = tp.seed;
    dp.loss = tp.loss;
    tp.out_dir = out;

    prism_model *m = cli_load_model(&c, NULL);
    prism_tokenizer *tok = NULL;
    prism_chat *chat = NULL;
    char chat_err[512] = "";
    if (prism_tokenizer_load(c.model, &tok)) snprintf(chat_err, sizeof chat_err, "tokenizer: %s", prism_last_error());
    else if (prism_chat_load(c.model, c.chat_template, &chat)) snprintf(chat_err, sizeof chat_err, "%s", prism_last_error());
    prism_model_info info;
    prism_model_get_info(m, &info);
    dp.n_vocab = info.vocab;
    dp.tok = tok;
    dp.chat = chat;
    dp.chat_error = chat_err[0] ? chat_err : NULL;

    train_data *d = NULL;
    prism_status st = train_data_load(data_path, &dp, &d);
    if (d)
        for (int32_t k = 0; k < d->n_diag; k++) fprintf(stderr, "%s\n", d->diag[k]);
    if (st) {
        if (d && d->n_errors > d->n_diag) fprintf(stderr, "... (%d bad lines in all)\n", d->n_errors);
        if (d && d->n_errors) fprintf(stderr, "prism: train-lora: %s: fix the lines above; nothing was trained\n", data_path);
        else fprintf(stderr, "prism: train-lora: %s; nothing was trained\n", prism_last_error());
        train_data_free(d);
        prism_chat_free(chat);
        prism_tokenizer_free(tok);
        prism_model_free(m);
        return 1;
    }
    prism_adapter *ad = NULL;
    if (prism_adapter_new(m, lp, &ad)) cli_die("creating the adapter");
    progress_ctx pc = {quiet, false};
    tp.progress = on_progress;
    tp.user = &pc;
    int64_t total = trainer_total_steps(d, &tp);
    if (!quiet)
        fprintf(stderr, "train-lora: %d examples (%lld scored %s), %lld steps of %d x %d examples, r=%d alpha=%g, %lld trainable "
                        "parameters, loss %s%s\n",
                d->n, (long long)d->n_scored, tp.loss == LOSS_CE ? "tokens" : "positions", (long long)total,
                tp.batch_size, tp.grad_accum, lp.r, (double)lp.alpha, (long long)ad->n_params,
                tp.loss == LOSS_CE ? "ce" : "kl", tp.resume ? ", resuming" : "");
    signal(SIGINT, on_sigint);
    train_result res;
    if (trainer_run(m, ad, d, &tp, &res)) cli_die("train-lora");
    signal(SIGINT, SIG_DFL);
    int rc = 0;
    if (res.finished) {
        if (prism_adapter_save(ad, out, save_dtype)) cli_die("saving the adapter");
        if (!quiet)
            fprintf(stderr, "train-lora: done, %lld steps, last loss %.4f; adapter written to %s (%s)\n",
                    (long long)res.steps_done, res.last_loss, out, save_dtype);
    } else {
        fprintf(stderr, "train-lora: stopped after step %lld of %lld; checkpoint in %s/checkpoint (continue with --resume)\n",
                (long long)res.steps_done, (long long)res.total_steps, out);
        rc = g_interrupted ? 130 : 0;
    }
    prism_adapter_free(ad);
    train_data_free(d);
    prism_chat_free(chat);
    prism_tokenizer_free(tok);
    prism_model_free(m);
    return rc;
}
