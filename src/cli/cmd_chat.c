/* cmd_chat.c — `prism chat`: interactive multi-turn chat with streaming.
 * Each turn re-renders the whole conversation with the chat template; the
 * KV cache keeps the longest common token prefix, so only the new turn is
 * prefilled. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli/adapter_opt.h"
#include "cli/prism_opt.h"
#include "cli/cli.h"

static bool stream_cb(void *user, int32_t i, int32_t token, const char *text) {
    (void)user, (void)i, (void)token;
    fputs(text, stdout);
    fflush(stdout);
    return true;
}

int cmd_chat(int argc, char **argv) {
    cli_common c = {.precision = PRISM_PRECISION_FAST};
    cli_gen o = {.g = prism_generate_default_params()};
    const char *system = NULL;
    bool stats = false;
    cli_adapters ad = {0};
    cli_prism pr = {0};
    for (int i = 1; i < argc; i++) {
        if (cli_common_opt(&c, argc, argv, &i) || cli_gen_opt(&o, argc, argv, &i) || cli_adapter_opt(&ad, argc, argv, &i) ||
            cli_prism_opt(&pr, argc, argv, &i))
            continue;
        if (!strcmp(argv[i], "--system")) system = cli_value(argc, argv, &i);
        else if (!strcmp(argv[i], "--stats")) stats = true;
        else cli_usage_error("chat: unknown option \"%s\"", argv[i]);
    }
    prism_model *m = cli_load_model(&c, NULL);
    cli_gen_finish(&o, m);
    const prism_adapter *adapter = cli_adapters_load(&ad, m);
    /* PRISM: the gate decides on the first user turn; the route is held for the conversation */
    o.g.router = cli_prism_load(&pr, m, adapter != NULL);
    o.g.route = pr.route;
    o.g.reuse_cache = true;
    prism_tokenizer *tok = NULL;
    prism_chat *chat = NULL;
    if (prism_tokenizer_load(c.model, &tok)) cli_die("loading tokenizer");
    if (prism_chat_load(c.model, c.chat_template, &chat)) cli_die("chat template");
    prism_ctx_params cp = prism_ctx_default_params();
    cp.n_ctx = c.n_ctx;
    prism_ctx *ctx = NULL;
    if (prism_ctx_new(m, cp, &ctx)) cli_die("creating context");
    cli_adapters_apply(ctx, adapter, 1);

    size_t cap = 64, n = 0;
    prism_chat_message *msgs = malloc(cap * sizeof *msgs);
    if (system) msgs[n++] = (prism_chat_message){"system", strdup(system)};
    bool tty = isatty(0);
    if (tty) fprintf(stderr, "prism chat (%s template) — /reset clears the conversation, /exit or Ctrl-D quits\n", prism_chat_name(chat));
    char *line = NULL;
    size_t lcap = 0;
    for (;;) {
        if (tty) fputs("> ", stderr);
        ssize_t len = getline(&line, &lcap, stdin);
        if (len < 0) break;
        while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r')) line[--len] = 0;
        if (!len) continue;
        if (!strcmp(line, "/exit") || !strcmp(line, "/quit")) break;
        if (!strcmp(line, "/reset")) {
            for (size_t k = system ? 1 : 0; k < n; k++) free((char *)msgs[k].content);
            n = system ? 1 : 0;
            prism_ctx_seq_clear(ctx, 0); /* a new conversation: routed afresh */
            continue;
        }
        if (n + 2 > cap) msgs = realloc(msgs, (cap *= 2) * sizeof *msgs);
        msgs[n++] = (prism_chat_message){"user", strdup(line)};
        char *text = NULL;
        int32_t *ids = NULL;
        size_t nids = 0;
        if (prism_chat_render(chat, msgs, n, true, &text)) cli_die("rendering chat");
        if (prism_tokenize(tok, text, strlen(text), false, &ids, &nids)) cli_die("tokenizing");
        free(text);
        prism_generation g;
        prism_generate_stats st;
        const int32_t *pp = ids;
        int32_t plen = (int32_t)nids;
        if (prism_generate(ctx, tok, &pp, &plen, 1, &o.g, stream_cb, NULL, &g, &st)) {
            fprintf(stderr, "\nprism: %s\n", prism_last_error());
            free((char *)msgs[--n].content);
            free(ids);
            continue;
        }
        putchar('\n');
        fflush(stdout);
        if (stats)
            fprintf(stderr, "[prefill %lld tokens %.1f tok/s, decode %lld tokens %.1f tok/s]\n", (long long)st.prefill_tokens,
                    st.prefill_s > 0 ? st.prefill_tokens / st.prefill_s : 0.0, (long long)st.decode_tokens,
                    st.decode_s > 0 ? st.decode_tokens / st.decode_s : 0.0);
        if (stats && o.g.router) cli_prism_print(&g, 0, 1);
        msgs[n++] = (prism_chat_message){"assistant", g.text ? g.text : strdup("")};
        g.text = NULL;
        prism_generation_clear(&g);
        free(ids);
    }
    for (size_t k = 0; k < n; k++) free((char *)msgs[k].content);
    free(msgs);
    free(line);
    prism_ctx_free(ctx);
    cli_adapters_free(&ad);
    cli_prism_free(&pr);
    prism_chat_free(chat);
    prism_tokenizer_free(tok);
    prism_model_free(m);
    return 0;
}
