/* cmd_serve.c — `prism serve`: the OpenAI-compatible HTTP server
 * (src/server/). Loads the model, tokenizer, chat template, the PRISM run
 * and named adapters, starts the server, then waits for SIGINT/SIGTERM and
 * shuts down gracefully (exit 0). */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli/cli.h"
#include "server/server.h"

static const char *SERVE_USAGE =
    "usage: prism serve --model DIR [options]\n"
    "  --prism RUN_DIR        serve the PRISM routed model: \"<name>\" routes by the gate,\n"
    "                         \"<name>:base\" / \"<name>:adapter\" force a route\n"
    "  --adapter NAME=DIR     serve a LoRA adapter under the model id NAME (repeatable;\n"
    "                         DIR alone names it after the directory)\n"
    "  --host ADDR            IPv4 address to bind (default 127.0.0.1)\n"
    "  --port N               TCP port (default 8080; 0 = any free port, printed at start)\n"
    "  --api-key KEY          require \"Authorization: Bearer KEY\" on /v1/* (or $PRISM_API_KEY)\n"
    "  --max-batch N          sequences decoded together = KV-cache slots (default 8)\n"
    "  --queue N              requests waiting for a slot before 429 (default 64)\n"
    "  --ctx N                tokens per sequence, prompt + completion (default min(max_position_embeddings, 4096))\n"
    "  --batch-tokens N       prompt tokens per prefill batch (default 512; at least --max-batch)\n"
    "  --max-body BYTES       request body limit before 413 (default 1048576)\n"
    "  --chat-template NAME   chat template for /v1/chat/completions (see prism --help)\n"
    "  --served-model-name S  model id of the base model (default: the model directory's name)\n"
    "  --shutdown-timeout S   seconds in-flight requests may finish after SIGTERM (default 10)\n"
    "  --threads N  --precision exact|fast\n";

static void base_name(const char *dir, char *out, size_t n) {
    size_t len = strlen(dir);
    while (len > 1 && dir[len - 1] == '/') len--;
    size_t b = len;
    while (b > 0 && dir[b - 1] != '/') b--;
    snprintf(out, n, "%.*s", (int)(len - b), dir + b);
}

int cmd_serve(int argc, char **argv) {
    /* Idle OpenMP workers spin by default, and between decode steps they
     * would take the cores the HTTP threads and the scheduler need (on few
     * cores, latency jumps by tens of ms). libgomp reads OMP_WAIT_POLICY only
     * at start-up, so the server re-executes itself once with it set. */
    if (!getenv("OMP_WAIT_POLICY")) {
        setenv("OMP_WAIT_POLICY", "passive", 1);
        execv("/proc/self/exe", argv - 1); /* argv - 1: main's argv ("prism", "serve", ...) */
        /* exec failed: carry on with spinning workers */
    }
    cli_common c = {.precision = PRISM_PRECISION_FAST};
    srv_config cfg = {.host = "127.0.0.1", .port = 8080, .max_batch = 8, .queue_cap = 64, .max_body = 1 << 20,
                      .shutdown_timeout = 10};
    const char *run_dir = NULL, *served = NULL;
    const char *adapter_dirs[SRV_MAX_ADAPTERS];
    char adapter_names[SRV_MAX_ADAPTERS][256];
    int max_conn = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (cli_common_opt(&c, argc, argv, &i)) continue;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            fputs(SERVE_USAGE, stdout);
            return 0;
        } else if (!strcmp(a, "--prism")) run_dir = cli_value(argc, argv, &i);
        else if (!strcmp(a, "--adapter")) {
            if (cfg.n_adapters == SRV_MAX_ADAPTERS) cli_usage_error("--adapter: at most %d adapters", SRV_MAX_ADAPTERS);
            const char *v = cli_value(argc, argv, &i), *eq = strchr(v, '=');
            int k = cfg.n_adapters++;
            if (eq) {
                if (eq == v || !eq[1]) cli_usage_error("--adapter: expected NAME=DIR, got \"%s\"", v);
                snprintf(adapter_names[k], sizeof adapter_names[k], "%.*s", (int)(eq - v), v);
                adapter_dirs[k] = eq + 1;
            } else {
                base_name(v, adapter_names[k], sizeof adapter_names[k]);
                adapter_dirs[k] = v;
            }
        } else if (!strcmp(a, "--host")) cfg.host = cli_value(argc, argv, &i);
        else if (!strcmp(a, "--port")) cfg.port = (int)cli_long(a, cli_value(argc, argv, &i), 0, 65535);
        else if (!strcmp(a, "--api-key")) cfg.api_key = cli_value(argc, argv, &i);
        else if (!strcmp(a, "--max-batch")) cfg.max_batch = (int32_t)cli_long(a, cli_value(argc, argv, &i), 1, 1024);
        else if (!strcmp(a, "--batch-tokens")) cfg.n_batch = (int32_t)cli_long(a, cli_value(argc, argv, &i), 1, 1 << 16);
        else if (!strcmp(a, "--queue")) cfg.queue_cap = (int32_t)cli_long(a, cli_value(argc, argv, &i), 0, 1 << 20);
        else if (!strcmp(a, "--max-body")) cfg.max_body = (size_t)cli_long(a, cli_value(argc, argv, &i), 64, 1L << 32);
        else if (!strcmp(a, "--served-model-name")) served = cli_value(argc, argv, &i);
        else if (!strcmp(a, "--shutdown-timeout")) cfg.shutdown_timeout = cli_double(a, cli_value(argc, argv, &i), 0, 86400);
        else if (!strcmp(a, "--max-connections")) max_conn = (int)cli_long(a, cli_value(argc, argv, &i), 1, 1 << 16);
        else cli_usage_error("serve: unknown option \"%s\"", a);
    }
    if (!cfg.api_key) {
        const char *k = getenv("PRISM_API_KEY");
        if (k && *k) cfg.api_key = k;
    }
    if (cfg.api_key && !*cfg.api_key) cli_usage_error("--api-key: empty key");
    prism_model *m = cli_load_model(&c, NULL);
    cfg.model = m;
    cfg.n_ctx = c.n_ctx;
    if (prism_tokenizer_load(c.model, &cfg.tok)) cli_die("loading tokenizer");
    if (prism_chat_load(c.model, c.chat_template, &cfg.chat)) {
        if (c.chat_template) cli_die("chat template");
        snprintf(cfg.chat_error, sizeof cfg.chat_error, "%s", prism_last_error());
        fprintf(stderr, "prism serve: warning: no chat template (%s); /v1/chat/completions will answer 400 — pass "
                        "--chat-template NAME\n", cfg.chat_error);
        cfg.chat = NULL;
    }
    if (run_dir && prism_router_load(m, run_dir, &cfg.router)) cli_die("loading the PRISM run");
    base_name(served ? served : c.model, cfg.name, sizeof cfg.name);
    if (served) snprintf(cfg.name, sizeof cfg.name, "%s", served);
    for (int k = 0; k < cfg.n_adapters; k++) {
        char what[4400];
        snprintf(what, sizeof what, "loading adapter %s", adapter_dirs[k]);
        if (prism_adapter_load(m, adapter_dirs[k], &cfg.adapters[k])) cli_die(what);
        cfg.adapter_names[k] = adapter_names[k];
        char forced[2][300];
        snprintf(forced[0], sizeof forced[0], "%s:base", cfg.name);
        snprintf(forced[1], sizeof forced[1], "%s:adapter", cfg.name);
        if (!strcmp(adapter_names[k], cfg.name) || !strcmp(adapter_names[k], forced[0]) || !strcmp(adapter_names[k], forced[1]))
            cli_usage_error("--adapter: the name \"%s\" clashes with the base model's ids", adapter_names[k]);
        for (int j = 0; j < k; j++)
            if (!strcmp(adapter_names[j], adapter_names[k])) cli_usage_error("--adapter: two adapters are named \"%s\"", adapter_names[k]);
    }
    cfg.max_connections = max_conn ? max_conn : cfg.max_batch + cfg.queue_cap + 64;

    /* Signals go to sigwait below, never to the server's threads (which inherit the mask). */
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    signal(SIGPIPE, SIG_IGN);

    srv *s = NULL;
    if (srv_start(&cfg, &s)) cli_die("serve");
    fprintf(stderr, "prism serve: listening on http://%s:%d  (model \"%s\"%s, %d slots, context %d, queue %d%s)\n", cfg.host,
            srv_port(s), cfg.name, cfg.router ? ", PRISM routed" : "", cfg.max_batch, s->n_ctx, cfg.queue_cap,
            cfg.api_key ? ", API key required" : "");
    fflush(stderr);
    int sig = 0;
    sigwait(&sigs, &sig);
    fprintf(stderr, "prism serve: %s: shutting down (in-flight requests get up to %g s)\n", sig == SIGINT ? "SIGINT" : "SIGTERM",
            cfg.shutdown_timeout);
    srv_stop(s);
    srv_free(s);
    for (int k = 0; k < cfg.n_adapters; k++) prism_adapter_free(cfg.adapters[k]);
    prism_router_free(cfg.router);
    prism_chat_free(cfg.chat);
    prism_tokenizer_free(cfg.tok);
    prism_model_free(m);
    fprintf(stderr, "prism serve: stopped\n");
    return 0;
}
