/* cmd_generate.c — `prism generate`: one or more prompts, generated as one batch. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/adapter_opt.h"
#include "cli/prism_opt.h"
#include "cli/cli.h"
#include "util/timer.h"

enum { SET_TEMP = 1, SET_TOPK = 2, SET_TOPP = 4, SET_MINP = 8, SET_REP = 16 };

bool cli_gen_opt(cli_gen *o, int argc, char **argv, int *i) {
    const char *a = argv[*i];
    prism_sampling_params *s = &o->g.sampling;
    if (!strcmp(a, "--temp") || !strcmp(a, "--temperature")) s->temperature = (float)cli_double(a, cli_value(argc, argv, i), 0, 100), o->set |= SET_TEMP;
    else if (!strcmp(a, "--top-k")) s->top_k = (int32_t)cli_long(a, cli_value(argc, argv, i), 0, 1 << 24), o->set |= SET_TOPK;
    else if (!strcmp(a, "--top-p")) s->top_p = (float)cli_double(a, cli_value(argc, argv, i), 0, 1), o->set |= SET_TOPP;
    else if (!strcmp(a, "--min-p")) s->min_p = (float)cli_double(a, cli_value(argc, argv, i), 0, 1), o->set |= SET_MINP;
    else if (!strcmp(a, "--repeat-penalty")) s->repeat_penalty = (float)cli_double(a, cli_value(argc, argv, i), 0.01, 100), o->set |= SET_REP;
    else if (!strcmp(a, "--repeat-last-n")) s->repeat_last_n = (int32_t)cli_long(a, cli_value(argc, argv, i), -1, 1 << 20);
    else if (!strcmp(a, "--seed")) s->seed = (uint64_t)cli_long(a, cli_value(argc, argv, i), 0, 0x7fffffffffffffffL);
    else if (!strcmp(a, "-n") || !strcmp(a, "--max-tokens")) o->g.max_new_tokens = (int32_t)cli_long(a, cli_value(argc, argv, i), 1, 1 << 20);
    else if (!strcmp(a, "--ignore-eos")) o->g.ignore_eos = true;
    else if (!strcmp(a, "--stop")) {
        if (o->g.n_stop == 64) cli_usage_error("--stop: at most 64 stop strings");
        const char *v = cli_value(argc, argv, i);
        if (!*v) cli_usage_error("--stop: empty stop string");
        o->stops[o->g.n_stop++] = v;
        o->g.stop = o->stops;
    } else return false;
    return true;
}

void cli_gen_finish(cli_gen *o, const prism_model *m) {
    prism_sampling_params d = prism_model_sampling_defaults(m), *s = &o->g.sampling;
    if (!(o->set & SET_TEMP)) s->temperature = d.temperature;
    if (!(o->set & SET_TOPK)) s->top_k = d.top_k;
    if (!(o->set & SET_TOPP)) s->top_p = d.top_p;
    if (!(o->set & SET_REP)) s->repeat_penalty = d.repeat_penalty;
}

typedef struct { int kind; const char *text; } prompt_arg; /* kind: 0 prompt, 1 chat, 2 ids */

static bool stream_cb(void *user, int32_t i, int32_t token, const char *text) {
    (void)user, (void)i, (void)token;
    fputs(text, stdout);
    fflush(stdout);
    return true;
}

static void print_ids(const int32_t *ids, int32_t n) {
    putchar('[');
    for (int32_t k = 0; k < n; k++) printf(k ? ", %d" : "%d", ids[k]);
    puts("]");
}

int cmd_generate(int argc, char **argv) {
    cli_common c = {.precision = PRISM_PRECISION_FAST};
    cli_gen o = {.g = prism_generate_default_params()};
    prompt_arg *pa = calloc((size_t)argc, sizeof *pa);
    int np = 0;
    const char *system = NULL;
    bool ids_out = false, stats = false;
    cli_adapters ad = {0};
    cli_prism pr = {0};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (cli_common_opt(&c, argc, argv, &i) || cli_gen_opt(&o, argc, argv, &i) || cli_adapter_opt(&ad, argc, argv, &i) ||
            cli_prism_opt(&pr, argc, argv, &i))
            continue;
        if (!strcmp(a, "--prompt") || !strcmp(a, "-p")) pa[np++] = (prompt_arg){0, cli_value(argc, argv, &i)};
        else if (!strcmp(a, "--chat")) pa[np++] = (prompt_arg){1, cli_value(argc, argv, &i)};
        else if (!strcmp(a, "--ids")) pa[np++] = (prompt_arg){2, cli_value(argc, argv, &i)};
        else if (!strcmp(a, "--system")) system = cli_value(argc, argv, &i);
        else if (!strcmp(a, "--ids-out")) ids_out = true;
        else if (!strcmp(a, "--stats")) stats = true;
        else cli_usage_error("generate: unknown option \"%s\"", a);
    }
    if (!np) cli_usage_error("generate: give --prompt TEXT, --chat TEXT or --ids 1,2,3");
    if (system && !(pa[0].kind == 1)) cli_usage_error("generate: --system applies to --chat prompts");

    double load_s = 0;
    prism_model *m = cli_load_model(&c, &load_s);
    cli_gen_finish(&o, m);
    const prism_adapter *adapter = cli_adapters_load(&ad, m);
    o.g.router = cli_prism_load(&pr, m, adapter != NULL);
    o.g.route = pr.route;
    prism_tokenizer *tok = NULL;
    bool need_tok = !ids_out || o.g.n_stop;
    for (int k = 0; k < np; k++) need_tok |= pa[k].kind != 2;
    if (need_tok && prism_tokenizer_load(c.model, &tok)) cli_die("loading tokenizer");
    prism_chat *chat = NULL;

    size_t nprompts = (size_t)(np > 0 ? np : 1);
    int32_t **ids = calloc(nprompts, sizeof *ids), *lens = calloc(nprompts, sizeof *lens);
    for (int k = 0; k < np; k++) {
        size_t n = 0;
        if (pa[k].kind == 2) {
            ids[k] = cli_parse_ids("--ids", pa[k].text, &lens[k]);
            continue;
        }
        const char *text = pa[k].text;
        char *rendered = NULL;
        if (pa[k].kind == 1) {
            if (!chat && prism_chat_load(c.model, c.chat_template, &chat)) cli_die("chat template");
            prism_chat_message msgs[2];
            size_t nm = 0;
            if (system) msgs[nm++] = (prism_chat_message){"system", system};
            msgs[nm++] = (prism_chat_message){"user", text};
            if (prism_chat_render(chat, msgs, nm, true, &rendered)) cli_die("rendering chat");
            text = rendered;
        }
        if (prism_tokenize(tok, text, strlen(text), pa[k].kind == 0, &ids[k], &n)) cli_die("tokenizing prompt");
        if (n == 0) cli_usage_error("generate: prompt %d is empty after tokenization", k + 1);
        lens[k] = (int32_t)n;
        free(rendered);
    }

    prism_ctx_params cp = prism_ctx_default_params();
    cp.n_seq_max = np;
    cp.n_ctx = c.n_ctx;
    prism_ctx *ctx = NULL;
    if (prism_ctx_new(m, cp, &ctx)) cli_die("creating context");
    cli_adapters_apply(ctx, adapter, np);
    prism_generation *out = calloc((size_t)np, sizeof *out);
    prism_generate_stats st;
    bool stream = np == 1 && !ids_out && tok;
    if (prism_generate(ctx, tok, (const int32_t *const *)ids, lens, np, &o.g, stream ? stream_cb : NULL, NULL, out, &st))
        cli_die("generating");
    for (int k = 0; k < np; k++) {
        if (ids_out) print_ids(out[k].tokens, out[k].n_tokens);
        else if (stream) putchar('\n');
        else printf("=== %d ===\n%s\n", k + 1, out[k].text ? out[k].text : "");
    }
    fflush(stdout);
    if (stats) {
        fprintf(stderr, "load: %.3f s\n", load_s);
        fprintf(stderr, "prefill: %lld tokens in %.3f s, %.1f tokens/s\n", (long long)st.prefill_tokens, st.prefill_s,
                st.prefill_s > 0 ? st.prefill_tokens / st.prefill_s : 0.0);
        fprintf(stderr, "decode: %lld tokens in %.3f s, %.1f tokens/s\n", (long long)st.decode_tokens, st.decode_s,
                st.decode_s > 0 ? st.decode_tokens / st.decode_s : 0.0);
        for (int k = 0; o.g.router && k < np; k++) cli_prism_print(&out[k], k, np);
    }
    for (int k = 0; k < np; k++) {
        prism_generation_clear(&out[k]);
        free(ids[k]);
    }
    free(out); free(ids); free(lens); free(pa);
    prism_ctx_free(ctx);
    cli_adapters_free(&ad);
    cli_prism_free(&pr);
    prism_chat_free(chat);
    prism_tokenizer_free(tok);
    prism_model_free(m);
    return 0;
}
