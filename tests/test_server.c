/* test_server.c — `prism serve` end to end on a loopback port with the
 * embedded stories260K model and a PRISM run built here (an adapter with
 * non-zero B, a gate whose threshold splits the test prompts, prism.json):
 *
 *  - curl: health, models, chat and completions (plain and SSE), the route
 *    in the `prism` object and the X-Prism-Route header, gate probabilities
 *    equal to the library's, greedy ids equal to `prism generate --ids-out`;
 *  - 32 concurrent clients with mixed routes (auto, forced, a named adapter,
 *    the base model) each get exactly the ids they get alone;
 *  - errors: malformed JSON, wrong types, n > 1, context, unknown model,
 *    405/404, 413, 401, 429 — each an OpenAI error object;
 *  - a few hundred fuzzed bodies, client disconnects (queued and streaming),
 *    /metrics, SIGTERM with a stream in flight (finishes, exit 0);
 *  - the `openai` npm package (tests/server/openai_client.mjs) when node and
 *    npm can install it; otherwise the test says so and relies on the above.
 *
 * PRISM_SERVER_BIN selects the binary (e.g. build-asan/prism for the
 * AddressSanitizer run, see README "Serving"); default ./build/prism. */
#include <arpa/inet.h>
#include <errno.h>
#include <jansson.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "lora/lora.h"
#include "model/forward.h"
#include "prism/gate.h"
#include "prism/runinfo.h"
#include "prism/store.h"
#include "test.h"
#include "test_run_dir.h"

#define MODEL "models/stories260K"
static const char *BIN = "./build/prism";
static char RUN[64];

/* ---------------------------------------------------------------- process helpers */

typedef struct {
    pid_t pid;
    int port;
    char log[128];
} server;

/* Starts `BIN serve --port 0 ARGS`, waits for "listening on http://...:PORT". */
static int server_start(server *sv, const char *args) {
    snprintf(sv->log, sizeof sv->log, "%s/server-%d.log", RUN, rand() % 100000);
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "exec %s serve --model " MODEL " --port 0 %s 2>%s", BIN, args, sv->log);
    sv->pid = fork();
    if (sv->pid == 0) {
        execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
        _exit(127);
    }
    sv->port = 0;
    for (int k = 0; k < 600 && !sv->port; k++) { /* up to 60 s (ASan builds start slowly) */
        usleep(100000);
        char *log = test_slurp(sv->log, NULL), *p = strstr(log, "listening on http://127.0.0.1:");
        if (p) sv->port = atoi(p + strlen("listening on http://127.0.0.1:"));
        int st;
        if (!sv->port && waitpid(sv->pid, &st, WNOHANG) == sv->pid) {
            fprintf(stderr, "server exited early: %s\n", log);
            free(log);
            sv->pid = 0;
            return 0;
        }
        free(log);
    }
    return sv->port;
}

/* SIGTERM; returns the exit status (-1 if it had to be killed). */
static int server_stop(server *sv) {
    if (!sv->pid) return -1;
    kill(sv->pid, SIGTERM);
    for (int k = 0; k < 300; k++) {
        int st;
        if (waitpid(sv->pid, &st, WNOHANG) == sv->pid) {
            sv->pid = 0;
            return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + (WIFSIGNALED(st) ? WTERMSIG(st) : 0);
        }
        usleep(100000);
    }
    kill(sv->pid, SIGKILL);
    waitpid(sv->pid, NULL, 0);
    sv->pid = 0;
    return -1;
}

/* ---------------------------------------------------------------- a raw HTTP/1.1 client */

typedef struct {
    int status;
    char *head; /* status line + headers */
    char *body; /* de-chunked */
    size_t n;
} resp;

static void resp_free(resp *r) {
    free(r->head);
    free(r->body);
    memset(r, 0, sizeof *r);
}

static int connect_port(int port) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
    if (connect(fd, (struct sockaddr *)&a, sizeof a)) { close(fd); return -1; }
    return fd;
}

static void send_all(int fd, const char *p, size_t n) {
    while (n) {
        ssize_t k = send(fd, p, n, MSG_NOSIGNAL);
        if (k <= 0) return;
        p += k;
        n -= (size_t)k;
    }
}

static void send_request(int fd, const char *method, const char *path, const char *hdrs, const char *body, size_t blen) {
    char h[2048];
    int k = snprintf(h, sizeof h, "%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n%s", method, path, hdrs ? hdrs : "");
    if (body) k += snprintf(h + k, sizeof h - (size_t)k, "Content-Type: application/json\r\nContent-Length: %zu\r\n", blen);
    k += snprintf(h + k, sizeof h - (size_t)k, "\r\n");
    send_all(fd, h, (size_t)k);
    if (body) send_all(fd, body, blen);
}

static int http(int port, const char *method, const char *path, const char *hdrs, const char *body, size_t blen, resp *out) {
    memset(out, 0, sizeof *out);
    int fd = connect_port(port);
    if (fd < 0) return -1;
    send_request(fd, method, path, hdrs, body, blen);
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap);
    ssize_t k;
    while ((k = recv(fd, buf + n, cap - n - 1, 0)) > 0) {
        n += (size_t)k;
        if (n + 1 == cap) buf = realloc(buf, cap *= 2);
    }
    close(fd);
    buf[n] = 0;
    char *sep = strstr(buf, "\r\n\r\n");
    if (strncmp(buf, "HTTP/1.1 ", 9) || !sep) { free(buf); return -1; }
    out->status = atoi(buf + 9);
    *sep = 0;
    out->head = strdup(buf);
    const char *b = sep + 4;
    size_t bl = n - (size_t)(b - buf);
    out->body = malloc(bl + 1);
    if (strcasestr(out->head, "Transfer-Encoding: chunked")) {
        size_t o = 0;
        const char *p = b;
        for (;;) {
            unsigned long len = strtoul(p, NULL, 16);
            const char *d = strstr(p, "\r\n");
            if (!d || len == 0) break;
            memcpy(out->body + o, d + 2, len);
            o += len;
            p = d + 2 + len + 2;
        }
        out->n = o;
    } else {
        memcpy(out->body, b, bl);
        out->n = bl;
    }
    out->body[out->n] = 0;
    free(buf);
    return out->status;
}

static int post(int port, const char *path, const char *json, resp *out) {
    return http(port, "POST", path, NULL, json, strlen(json), out);
}

/* The error object of a response: {"error": {"message", "type", "param", "code"}}. */
static int is_error_object(const char *body, const char *param, const char *code) {
    json_t *j = json_loads(body, 0, NULL), *e = json_object_get(j, "error");
    int ok = json_is_object(e) && json_is_string(json_object_get(e, "message")) && json_is_string(json_object_get(e, "type")) &&
             json_object_get(e, "param") && json_object_get(e, "code");
    if (ok && param) ok = json_is_string(json_object_get(e, "param")) && !strcmp(json_string_value(json_object_get(e, "param")), param);
    if (ok && code) ok = json_is_string(json_object_get(e, "code")) && !strcmp(json_string_value(json_object_get(e, "code")), code);
    json_decref(j);
    return ok;
}

/* ---------------------------------------------------------------- the PRISM run */

enum { NQ = 8 };
static const char *QUESTIONS[NQ] = {"Tell me a story about a dog.", "What is two plus two?", "Write a poem about the sea.",
                                    "Why is the sky blue?", "Who was the king?", "Can you help me with my homework please?",
                                    "Lily found a ball.", "What do cats like to eat for dinner?"};
static float PROB[NQ], THR;

/* Gate probability of each question as the server sees it: llama2 template, layer 0, last token. */
static void gate_probs(prism_model *m) {
    prism_tokenizer *tok;
    prism_chat *chat;
    prism_ctx *c;
    prism_tokenizer_load(MODEL, &tok);
    prism_chat_load(MODEL, "llama2", &chat);
    prism_ctx_new(m, prism_ctx_default_params(), &c);
    prism_router *r = NULL;
    CHECK(prism_router_load(m, RUN, &r) == PRISM_OK, "router_load: %s", prism_last_error());
    for (int i = 0; i < NQ && r; i++) {
        prism_chat_message msg = {"user", QUESTIONS[i]};
        char *text;
        int32_t *ids, pos[512], seq[512] = {0};
        size_t n;
        prism_chat_render(chat, &msg, 1, true, &text);
        prism_tokenize(tok, text, strlen(text), false, &ids, &n);
        for (size_t k = 0; k < n; k++) pos[k] = (int32_t)k;
        prism_ctx_seq_clear(c, 0);
        prism_batch b = {(int32_t)n, ids, pos, seq, NULL};
        prism_decode_layers(c, &b, 0, 1);
        PROB[i] = prism_router_prob(r, prism_get_hidden(c, (int32_t)n - 1));
        free(text);
        free(ids);
    }
    prism_router_free(r);
    prism_ctx_free(c);
    prism_chat_free(chat);
    prism_tokenizer_free(tok);
}

/* ---------------------------------------------------------------- request / response helpers */

static char *chat_body(const char *model, const char *q, int max_tokens, bool stream, const char *extra) {
    json_t *msg = json_pack("[{s:s, s:s}]", "role", "user", "content", q);
    json_t *o = json_pack("{s:s, s:o, s:i, s:f, s:b, s:b, s:b}", "model", model, "messages", msg, "max_tokens", max_tokens,
                          "temperature", 0.0, "stream", stream, "ignore_eos", 1, "return_token_ids", 1);
    char *s = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    if (extra) { /* splice ,"k":v before the closing brace */
        size_t n = strlen(s);
        s = realloc(s, n + strlen(extra) + 3);
        s[n - 1] = 0;
        strcat(s, ",");
        strcat(s, extra);
        strcat(s, "}");
    }
    return s;
}

typedef struct {
    int status;
    int32_t ids[512];
    int n_ids;
    char route[16];
    double gate;
    char text[8192];
    char header_route[16];
} gen_result;

static void parse_gen(const resp *r, gen_result *g) {
    memset(g, 0, sizeof *g);
    g->status = r->status;
    g->gate = -1;
    const char *h = r->head ? strcasestr(r->head, "X-Prism-Route: ") : NULL;
    if (h) sscanf(h + 15, "%15[a-z]", g->header_route);
    json_t *j = json_loads(r->body ? r->body : "", 0, NULL);
    json_t *c0 = json_array_get(json_object_get(j, "choices"), 0), *ids = json_object_get(c0, "token_ids");
    for (size_t i = 0; i < json_array_size(ids) && i < 512; i++) g->ids[g->n_ids++] = (int32_t)json_integer_value(json_array_get(ids, i));
    json_t *p = json_object_get(j, "prism");
    if (json_is_string(json_object_get(p, "route"))) snprintf(g->route, sizeof g->route, "%s", json_string_value(json_object_get(p, "route")));
    if (json_is_number(json_object_get(p, "gate_probability"))) g->gate = json_number_value(json_object_get(p, "gate_probability"));
    json_t *t = json_object_get(json_object_get(c0, "message"), "content");
    if (!t) t = json_object_get(c0, "text");
    if (json_is_string(t)) snprintf(g->text, sizeof g->text, "%s", json_string_value(t));
    json_decref(j);
}

static int parse_ids(const char *s, int32_t *ids, int max) {
    int n = 0;
    const char *p = strchr(s, '[');
    if (!p) return -1;
    p++;
    while (*p && *p != ']' && n < max) {
        ids[n++] = (int32_t)strtol(p, (char **)&p, 10);
        while (*p == ',' || *p == ' ') p++;
    }
    return n;
}

static int same_ids(const int32_t *a, int na, const int32_t *b, int nb) {
    return na == nb && na > 0 && !memcmp(a, b, (size_t)na * sizeof *a);
}

/* ---------------------------------------------------------------- tests */

static void test_basics(int port) {
    resp r;
    char *out, cmd[512];
    snprintf(cmd, sizeof cmd, "curl -s -i http://127.0.0.1:%d/health", port);
    int rc = test_run(cmd, &out);
    CHECK(rc == 0 && strstr(out, "200 OK") && strstr(out, "\"ok\""), "curl /health: %.300s", out);
    free(out);
    snprintf(cmd, sizeof cmd, "curl -s http://127.0.0.1:%d/v1/models", port);
    test_run(cmd, &out);
    json_t *j = json_loads(out, 0, NULL), *data = json_object_get(j, "data");
    const char *want[4] = {"stories260K", "stories260K:base", "stories260K:adapter", "persona"};
    int found = 0;
    for (size_t i = 0; i < json_array_size(data); i++)
        for (int k = 0; k < 4; k++)
            found += !strcmp(json_string_value(json_object_get(json_array_get(data, i), "id")), want[k]);
    CHECK(json_array_size(data) == 4 && found == 4 && !strcmp(json_string_value(json_object_get(j, "object")), "list"),
          "/v1/models lists the routed model, both forced routes and the named adapter: %.400s", out);
    json_decref(j);
    free(out);
    CHECK(http(port, "GET", "/v1/chat/completions", NULL, NULL, 0, &r) == 405 && is_error_object(r.body, NULL, NULL), "GET on a POST endpoint: 405 (%d)", r.status);
    resp_free(&r);
    CHECK(http(port, "GET", "/v2/nothing", NULL, NULL, 0, &r) == 404 && is_error_object(r.body, NULL, NULL), "unknown path: 404 (%d)", r.status);
    resp_free(&r);
    printf("ok   health, models, 404/405\n");
}

/* Non-streamed and streamed chat through curl; routes and gate probabilities. */
static void test_chat_curl(int port) {
    char cmd[4096], *out;
    int auto_ok = 1, n_adapter = 0;
    for (int i = 0; i < NQ; i++) {
        char *body = chat_body("stories260K", QUESTIONS[i], 24, false, NULL);
        snprintf(cmd, sizeof cmd, "curl -s -i http://127.0.0.1:%d/v1/chat/completions -H 'Content-Type: application/json' -d '%s'", port, body);
        free(body);
        test_run(cmd, &out);
        resp r = {.status = atoi(out + 9), .head = strdup(out)};
        char *b = strstr(out, "\r\n\r\n");
        r.body = strdup(b ? b + 4 : "");
        gen_result g;
        parse_gen(&r, &g);
        bool want_ad = PROB[i] >= THR;
        n_adapter += want_ad;
        int ok = g.status == 200 && !strcmp(g.route, want_ad ? "adapter" : "base") && !strcmp(g.header_route, g.route) &&
                 fabs(g.gate - PROB[i]) < 1e-5 && g.n_ids == 24;
        if (!ok) fprintf(stderr, "question %d: status %d route %s header %s gate %.6f (library %.6f, threshold %.6f) ids %d\n%.500s\n", i,
                         g.status, g.route, g.header_route, g.gate, PROB[i], THR, g.n_ids, out);
        auto_ok &= ok;
        resp_free(&r);
        free(out);
    }
    CHECK(auto_ok, "auto route = gate decision, header = JSON route, gate probability = library's");
    CHECK(n_adapter > 0 && n_adapter < NQ, "the gate splits the questions (%d of %d on the adapter)", n_adapter, NQ);
    printf("%s chat via curl: %d of %d questions routed to the adapter, as the gate says\n", auto_ok ? "ok  " : "FAIL", n_adapter, NQ);

    /* streaming: deltas concatenate to the non-streamed text; [DONE] closes */
    for (int m = 0; m < 2; m++) {
        const char *model = m ? "stories260K:adapter" : "stories260K:base";
        char *body = chat_body(model, QUESTIONS[0], 30, false, NULL);
        resp r;
        post(port, "/v1/chat/completions", body, &r);
        gen_result plain;
        parse_gen(&r, &plain);
        resp_free(&r);
        free(body);
        body = chat_body(model, QUESTIONS[0], 30, true, "\"stream_options\":{\"include_usage\":true}");
        snprintf(cmd, sizeof cmd, "curl -s -N -i http://127.0.0.1:%d/v1/chat/completions -H 'Content-Type: application/json' -d '%s'", port, body);
        free(body);
        test_run(cmd, &out);
        char text[8192] = "", *p = strstr(out, "\r\n\r\n");
        int events = 0, done = 0, usage_ok = 0, role = 0, finish = 0, bad = 0;
        for (p = p ? strstr(p, "data: ") : NULL; p; p = strstr(p + 6, "data: ")) {
            if (!strncmp(p, "data: [DONE]", 12)) { done++; continue; }
            char *end = strstr(p, "\n\n");
            if (!end) { bad++; break; }
            json_t *j = json_loadb(p + 6, (size_t)(end - p - 6), 0, NULL);
            if (!j) { bad++; continue; }
            events++;
            json_t *c0 = json_array_get(json_object_get(j, "choices"), 0);
            json_t *d = json_object_get(c0, "delta");
            if (json_is_string(json_object_get(d, "role"))) role++;
            if (json_is_string(json_object_get(d, "content"))) strncat(text, json_string_value(json_object_get(d, "content")), sizeof text - strlen(text) - 1);
            if (json_is_string(json_object_get(c0, "finish_reason"))) finish++;
            json_t *u = json_object_get(j, "usage");
            if (json_is_object(u) && json_integer_value(json_object_get(u, "completion_tokens")) == 30) usage_ok++;
            if (!strcmp(json_string_value(json_object_get(j, "object")), "chat.completion.chunk") == 0) bad++;
            json_decref(j);
        }
        int ok = strstr(out, "text/event-stream") && strstr(out, m ? "X-Prism-Route: adapter" : "X-Prism-Route: base") && done == 1 &&
                 !bad && role == 1 && finish == 1 && usage_ok == 1 && !strcmp(text, plain.text) && events >= 3 &&
                 strstr(out, "data: [DONE]\n\n") && !strstr(strstr(out, "data: [DONE]"), "}");
        CHECK(ok, "%s stream: events %d done %d role %d finish %d usage %d bad %d\nstream text \"%s\"\nplain text  \"%s\"\n%.600s", model,
              events, done, role, finish, usage_ok, bad, text, plain.text, out);
        printf("%s SSE stream on %s: %d events, text == non-streamed text, usage chunk, [DONE]\n", ok ? "ok  " : "FAIL", model, events);
        free(out);
    }
}

/* The server's greedy ids equal `prism generate --ids-out` for the same prompts and routes. */
static void test_vs_cli(int port) {
    struct { const char *model, *route; int q; } cases[] = {
        {"stories260K", "auto", 0}, {"stories260K", "auto", 1}, {"stories260K:adapter", "adapter", 2}, {"stories260K:base", "base", 3}};
    int all = 1;
    for (int k = 0; k < 4; k++) {
        char cmd[1024], *out;
        snprintf(cmd, sizeof cmd, "%s generate --model " MODEL " --prism %s --route %s --chat '%s' --chat-template llama2 -n 40 "
                 "--ignore-eos --temp 0 --ids-out", BIN, RUN, cases[k].route, QUESTIONS[cases[k].q]);
        test_run(cmd, &out);
        int32_t ref[64];
        int nref = parse_ids(out, ref, 64);
        free(out);
        char *body = chat_body(cases[k].model, QUESTIONS[cases[k].q], 40, false, NULL);
        resp r;
        post(port, "/v1/chat/completions", body, &r);
        free(body);
        gen_result g;
        parse_gen(&r, &g);
        resp_free(&r);
        int ok = same_ids(g.ids, g.n_ids, ref, nref);
        CHECK(ok, "%s / question %d: server ids == prism generate --route %s ids (%d vs %d)", cases[k].model, cases[k].q, cases[k].route, g.n_ids, nref);
        all &= ok;
    }
    /* completions: a raw prompt (BOS added) == prism generate --prompt on the base model */
    char cmd[512], *out;
    snprintf(cmd, sizeof cmd, "%s generate --model " MODEL " --prompt 'Once upon a time' -n 32 --ignore-eos --temp 0 --ids-out", BIN);
    test_run(cmd, &out);
    int32_t ref[64];
    int nref = parse_ids(out, ref, 64);
    free(out);
    resp r;
    post(port, "/v1/completions", "{\"model\":\"stories260K:base\",\"prompt\":\"Once upon a time\",\"max_tokens\":32,\"temperature\":0,"
                                  "\"ignore_eos\":true,\"return_token_ids\":true}", &r);
    gen_result g;
    parse_gen(&r, &g);
    json_t *j = json_loads(r.body, 0, NULL);
    int usage_ok = json_integer_value(json_object_get(json_object_get(j, "usage"), "prompt_tokens")) == 5 &&
                   json_integer_value(json_object_get(json_object_get(j, "usage"), "completion_tokens")) == 32 &&
                   !strcmp(json_string_value(json_object_get(j, "object")), "text_completion");
    json_decref(j);
    resp_free(&r);
    CHECK(same_ids(g.ids, g.n_ids, ref, nref) && usage_ok, "/v1/completions ids == prism generate --prompt ids, usage counts");
    printf("%s greedy ids equal prism generate --ids-out (auto, forced routes, completions)\n", all ? "ok  " : "FAIL");
    /* stop strings: the text ends before the stop string, finish_reason "stop" */
    char text[8192];
    snprintf(text, sizeof text, "%s", g.text);
    char *cut = strstr(text, " girl");
    if (cut) {
        *cut = 0;
        post(port, "/v1/completions", "{\"model\":\"stories260K:base\",\"prompt\":\"Once upon a time\",\"max_tokens\":32,\"temperature\":0,"
                                      "\"stop\":[\"zzz\",\" girl\"]}", &r);
        j = json_loads(r.body, 0, NULL);
        json_t *c0 = json_array_get(json_object_get(j, "choices"), 0);
        CHECK(r.status == 200 && !strcmp(json_string_value(json_object_get(c0, "text")), text) &&
              !strcmp(json_string_value(json_object_get(c0, "finish_reason")), "stop"), "stop string: %s", r.body);
        json_decref(j);
        resp_free(&r);
    }
}

typedef struct {
    int port;
    const char *model;
    int q;
    gen_result g;
} job;

static void *job_run(void *arg) {
    job *jb = arg;
    char *body = chat_body(jb->model, QUESTIONS[jb->q], 48, false, NULL);
    resp r;
    post(jb->port, "/v1/chat/completions", body, &r);
    parse_gen(&r, &jb->g);
    resp_free(&r);
    free(body);
    return NULL;
}

/* 32 clients at once, mixed routes: each gets exactly the ids it gets alone. */
static void test_concurrency(int port) {
    const char *models[5] = {"stories260K", "stories260K:base", "stories260K:adapter", "persona", "stories260K"};
    enum { NJ = 32 };
    job alone[NJ], together[NJ];
    for (int i = 0; i < NJ; i++) {
        alone[i] = (job){port, models[i % 5], (i * 3) % NQ, {0}};
        together[i] = alone[i];
        job_run(&alone[i]); /* one at a time */
    }
    pthread_t th[NJ];
    for (int i = 0; i < NJ; i++) pthread_create(&th[i], NULL, job_run, &together[i]);
    for (int i = 0; i < NJ; i++) pthread_join(th[i], NULL);
    int same = 0, routes_ok = 1;
    for (int i = 0; i < NJ; i++) {
        int ok = together[i].g.status == 200 && same_ids(together[i].g.ids, together[i].g.n_ids, alone[i].g.ids, alone[i].g.n_ids) &&
                 !strcmp(together[i].g.route, alone[i].g.route) && together[i].g.n_ids == 48;
        if (!ok) fprintf(stderr, "client %d (%s, q%d): status %d, %d ids (alone %d), route %s (alone %s)\n", i, models[i % 5],
                         together[i].q, together[i].g.status, together[i].g.n_ids, alone[i].g.n_ids, together[i].g.route, alone[i].g.route);
        same += ok;
    }
    /* a request routed to the adapter equals the forced adapter, and the named adapter equals both */
    for (int i = 0; i < NJ; i++) {
        if (strcmp(alone[i].model, "stories260K")) continue;
        for (int k = 0; k < NJ; k++) {
            if (alone[k].q != alone[i].q) continue;
            bool ad = !strcmp(alone[i].g.route, "adapter");
            if ((ad && !strcmp(alone[k].model, "stories260K:adapter")) || (!ad && !strcmp(alone[k].model, "stories260K:base")) ||
                (ad && !strcmp(alone[k].model, "persona")))
                routes_ok &= same_ids(alone[i].g.ids, alone[i].g.n_ids, alone[k].g.ids, alone[k].g.n_ids);
        }
    }
    int differ = 0;
    for (int i = 0; i < NJ; i++)
        for (int k = 0; k < NJ; k++)
            if (alone[i].q == alone[k].q && !strcmp(alone[i].g.route, "base") && !strcmp(alone[k].g.route, "adapter"))
                differ |= !same_ids(alone[i].g.ids, alone[i].g.n_ids, alone[k].g.ids, alone[k].g.n_ids);
    CHECK(same == NJ, "%d of %d concurrent clients got exactly their ids alone", same, NJ);
    CHECK(routes_ok, "auto-routed ids equal the forced route's; the named adapter equals the forced adapter");
    CHECK(differ, "the adapter changes some outputs (else the route checks prove nothing)");
    printf("%s %d concurrent clients (auto, base, adapter, named adapter): %d identical to alone\n", same == NJ ? "ok  " : "FAIL", NJ, same);
}

static void test_errors(int port) {
    struct { const char *path, *body; int status; const char *param, *code; } cases[] = {
        {"/v1/chat/completions", "{\"messages\": [", 400, NULL, NULL},
        {"/v1/chat/completions", "[1,2,3]", 400, NULL, NULL},
        {"/v1/chat/completions", "", 400, NULL, NULL},
        {"/v1/chat/completions", "{\"model\":\"stories260K\"}", 400, "messages", NULL},
        {"/v1/chat/completions", "{\"messages\":\"hi\"}", 400, "messages", NULL},
        {"/v1/chat/completions", "{\"messages\":[]}", 400, "messages", NULL},
        {"/v1/chat/completions", "{\"messages\":[{\"role\":\"wizard\",\"content\":\"x\"}]}", 400, "messages[0].role", NULL},
        {"/v1/chat/completions", "{\"messages\":[{\"role\":\"user\",\"content\":5}]}", 400, "messages[0].content", NULL},
        {"/v1/chat/completions", "{\"messages\":[{\"role\":\"user\"}]}", 400, "messages[0].content", NULL},
        {"/v1/chat/completions", "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"temperature\":\"hot\"}", 400, "temperature", NULL},
        {"/v1/chat/completions", "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"temperature\":7}", 400, "temperature", NULL},
        {"/v1/chat/completions", "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"top_p\":-1}", 400, "top_p", NULL},
        {"/v1/chat/completions", "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"max_tokens\":0}", 400, "max_tokens", NULL},
        {"/v1/chat/completions", "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"max_tokens\":1.5}", 400, "max_tokens", NULL},
        {"/v1/chat/completions", "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"max_tokens\":100000}", 400, "max_tokens", "context_length_exceeded"},
        {"/v1/chat/completions", "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"n\":2}", 400, "n", NULL},
        {"/v1/chat/completions", "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"stream\":\"yes\"}", 400, "stream", NULL},
        {"/v1/chat/completions", "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"stop\":5}", 400, "stop", NULL},
        {"/v1/chat/completions", "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"stop\":[\"a\",1]}", 400, "stop", NULL},
        {"/v1/chat/completions", "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"seed\":\"x\"}", 400, "seed", NULL},
        {"/v1/chat/completions", "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"model\":7}", 400, "model", NULL},
        {"/v1/chat/completions", "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"model\":\"gpt-4\"}", 404, "model", "model_not_found"},
        {"/v1/chat/completions", "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"logprobs\":true}", 400, "logprobs", NULL},
        {"/v1/chat/completions", "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"stream_options\":5}", 400, "stream_options", NULL},
        {"/v1/chat/completions", "{\"messages\":[{\"role\":\"user\",\"content\":\"a\"},{\"role\":\"user\",\"content\":\"b\"}]}", 400, "messages", NULL},
        {"/v1/completions", "{\"prompt\":[\"a\",\"b\"]}", 400, "prompt", NULL},
        {"/v1/completions", "{\"prompt\":[1,2,99999]}", 400, "prompt", NULL},
        {"/v1/completions", "{\"prompt\":{}}", 400, "prompt", NULL},
        {"/v1/completions", "{}", 400, "prompt", NULL},
        {"/v1/completions", "{\"prompt\":\"x\",\"echo\":true}", 400, "echo", NULL},
        {"/v1/completions", "{\"prompt\":\"x\",\"model\":\"stories260K:nope\"}", 404, "model", "model_not_found"},
    };
    int n = (int)(sizeof cases / sizeof cases[0]), ok_all = 1;
    for (int k = 0; k < n; k++) {
        resp r;
        post(port, cases[k].path, cases[k].body, &r);
        int ok = r.status == cases[k].status && is_error_object(r.body, cases[k].param, cases[k].code);
        CHECK(ok, "%s %s -> %d %s (want %d, param %s)", cases[k].path, cases[k].body, r.status, r.body, cases[k].status,
              cases[k].param ? cases[k].param : "null");
        ok_all &= ok;
        resp_free(&r);
    }
    /* context: a prompt longer than the context (ids) */
    char big[8192] = "{\"prompt\":[1";
    for (int k = 0; k < 600; k++) strcat(big, ",300");
    strcat(big, "]}");
    resp r;
    post(port, "/v1/completions", big, &r);
    CHECK(r.status == 400 && is_error_object(r.body, "prompt", "context_length_exceeded"), "601-token prompt: %d %s", r.status, r.body);
    resp_free(&r);
    /* body over --max-body (announced, and chunked) */
    size_t bn = 300000;
    char *huge = malloc(bn + 1);
    memset(huge, 'a', bn);
    huge[bn] = 0;
    http(port, "POST", "/v1/completions", NULL, huge, bn, &r);
    CHECK(r.status == 413 && is_error_object(r.body, NULL, "request_too_large"), "300 kB body: %d %.200s", r.status, r.body ? r.body : "");
    resp_free(&r);
    char cmd[256], *out;
    snprintf(huge, bn, "{\"prompt\":\"%0*d\"}", 250000, 0);
    FILE *f = fopen("/tmp/prism-test-server-big.json", "w");
    fputs(huge, f);
    fclose(f);
    snprintf(cmd, sizeof cmd, "curl -s -i -H 'Transfer-Encoding: chunked' http://127.0.0.1:%d/v1/completions --data-binary @/tmp/prism-test-server-big.json", port);
    test_run(cmd, &out);
    CHECK(strstr(out, " 413 ") && strstr(out, "request_too_large"), "chunked body over the limit: %.300s", out);
    free(out);
    unlink("/tmp/prism-test-server-big.json");
    free(huge);
    printf("%s %d malformed / invalid requests answered with OpenAI error objects (400/404/413)\n", ok_all ? "ok  " : "FAIL", n + 3);
}

static unsigned rnd(uint64_t *s) {
    *s = *s * 6364136223846793005ull + 1442695040888963407ull;
    return (unsigned)(*s >> 33);
}

/* Fuzzed bodies: random bytes, truncations and mutations of valid requests, wrong types, huge fields, deep nesting. */
static void test_fuzz(int port) {
    const char *seeds[] = {
        "{\"model\":\"stories260K\",\"messages\":[{\"role\":\"user\",\"content\":\"Hi there\"}],\"max_tokens\":4,\"temperature\":0.5,\"stop\":[\"a\"]}",
        "{\"prompt\":\"Once upon\",\"max_tokens\":3,\"stream\":true,\"seed\":3,\"top_p\":0.9}",
        "{\"messages\":[{\"role\":\"system\",\"content\":\"s\"},{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"x\"}]}],\"max_tokens\":2}"};
    const char *fields[] = {"model", "messages", "prompt", "max_tokens", "temperature", "top_p", "stop", "seed", "n", "stream",
                            "stream_options", "top_k", "min_p", "repetition_penalty", "ignore_eos", "max_completion_tokens"};
    const char *values[] = {"null", "true", "-1", "0", "1e308", "-1e308", "3.5", "\"\"", "\"x\"", "[]", "{}", "[null]", "[[[]]]",
                            "{\"a\":{}}", "9223372036854775807", "-9223372036854775808", "\"\\u0000\"", "[1,\"a\"]", "\"\\ud800\""};
    uint64_t s = 12345;
#define RND() rnd(&s)
    int n_cases = 0, n_answered = 0, n_5xx = 0;
    char *buf = malloc(1 << 20);
    for (int it = 0; it < 360; it++) {
        size_t n = 0;
        const char *seed = seeds[RND() % 3];
        switch (it % 6) {
        case 0: /* random bytes */
            n = RND() % 400;
            for (size_t k = 0; k < n; k++) buf[k] = (char)RND();
            break;
        case 1: /* truncated */
            n = RND() % strlen(seed);
            memcpy(buf, seed, n);
            break;
        case 2: /* byte flips */
            n = strlen(seed);
            memcpy(buf, seed, n);
            for (int k = 0; k < 3; k++) buf[RND() % n] = (char)RND();
            break;
        case 3: { /* a field with a wrong-typed value */
            const char *f = fields[RND() % (sizeof fields / sizeof *fields)], *v = values[RND() % (sizeof values / sizeof *values)];
            n = (size_t)snprintf(buf, 1 << 20, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"prompt\":\"y\",\"max_tokens\":2,\"%s\":%s}", f, v);
            break;
        }
        case 4: { /* huge field */
            size_t len = 1000 + RND() % 200000;
            n = (size_t)snprintf(buf, 64, "{\"messages\":[{\"role\":\"user\",\"content\":\"");
            for (size_t k = 0; k < len; k++) buf[n++] = (char)('a' + RND() % 26);
            n += (size_t)snprintf(buf + n, 64, "\"}],\"max_tokens\":1}");
            break;
        }
        default: { /* deep nesting */
            int d = 10 + (int)(RND() % 5000);
            n = (size_t)snprintf(buf, 64, "{\"prompt\":");
            for (int k = 0; k < d; k++) buf[n++] = '[';
            for (int k = 0; k < d; k++) buf[n++] = ']';
            buf[n++] = '}';
        }
        }
        resp r;
        const char *path = RND() % 2 ? "/v1/chat/completions" : "/v1/completions";
        int st = http(port, "POST", path, NULL, buf, n, &r);
        n_cases++;
        n_answered += st == 200 || st == 400 || st == 404 || st == 413;
        n_5xx += st >= 500;
        if (!(st == 200 || st == 400 || st == 404 || st == 413)) fprintf(stderr, "fuzz case %d: status %d\n", it, st);
        resp_free(&r);
    }
    free(buf);
    resp r;
    int h = http(port, "GET", "/health", NULL, NULL, 0, &r);
    resp_free(&r);
    CHECK(n_answered == n_cases && n_5xx == 0 && h == 200, "fuzz: %d of %d answered 200/400/404/413, %d 5xx, /health %d", n_answered,
          n_cases, n_5xx, h);
    printf("%s fuzz: %d bodies, all answered, /health 200 after\n", n_answered == n_cases ? "ok  " : "FAIL", n_cases);
#undef RND
}

static double metric(int port, const char *line_prefix) {
    resp r;
    http(port, "GET", "/metrics", NULL, NULL, 0, &r);
    double v = -1;
    char key[256];
    snprintf(key, sizeof key, "\n%s", line_prefix); /* a sample line, not its # TYPE line */
    const char *p = r.body ? strstr(r.body, key) : NULL;
    if (p) v = atof(p + strlen(key));
    resp_free(&r);
    return v;
}

static void test_metrics(int port) {
    resp r;
    http(port, "GET", "/metrics", NULL, NULL, 0, &r);
    const char *want[] = {"# TYPE prism_requests_total counter", "prism_requests_total{endpoint=\"chat_completions\",status=\"200\"}",
                          "prism_requests_total{endpoint=\"chat_completions\",status=\"400\"}", "prism_prompt_tokens_total ",
                          "prism_completion_tokens_total ", "prism_queue_depth 0", "prism_running_requests 0", "prism_route_total{route=\"base\"}",
                          "prism_route_total{route=\"adapter\"}", "prism_request_duration_seconds_bucket{le=\"+Inf\"}",
                          "prism_request_duration_seconds_count", "prism_time_to_first_token_seconds_sum", "prism_resident_memory_bytes"};
    int ok = r.status == 200 && strstr(r.head, "text/plain");
    for (size_t k = 0; k < sizeof want / sizeof *want; k++)
        if (!r.body || !strstr(r.body, want[k])) { ok = 0; fprintf(stderr, "metrics: missing %s\n", want[k]); }
    CHECK(ok, "/metrics in Prometheus text format with every series");
    CHECK(metric(port, "prism_route_total{route=\"adapter\"} ") > 0 && metric(port, "prism_completion_tokens_total ") > 1000,
          "route and token counters move");
    resp_free(&r);
    printf("%s /metrics\n", ok ? "ok  " : "FAIL");
}

/* A streaming client that reads the first event and hangs up: the server cancels it. */
static void test_disconnect(int port) {
    double before = metric(port, "prism_completion_tokens_total ");
    int fd = connect_port(port);
    const char *body = "{\"model\":\"stories260K:base\",\"prompt\":\"Once\",\"max_tokens\":500,\"stream\":true,\"ignore_eos\":true}";
    send_request(fd, "POST", "/v1/completions", NULL, body, strlen(body));
    char buf[256];
    ssize_t k = recv(fd, buf, sizeof buf, 0);
    close(fd);
    for (int i = 0; i < 50 && metric(port, "prism_running_requests ") != 0; i++) usleep(20000);
    double after = metric(port, "prism_completion_tokens_total ");
    resp r;
    int h = http(port, "GET", "/health", NULL, NULL, 0, &r);
    resp_free(&r);
    CHECK(k > 0 && h == 200 && metric(port, "prism_running_requests ") == 0 && after - before < 500,
          "stream cut after the first bytes: cancelled after %.0f of 500 tokens, slot freed, healthy", after - before);
    printf("ok   streaming client hung up: cancelled after %.0f of 500 tokens\n", after - before);
}

static void test_node(int port) {
    char *out;
    if (test_run("node --version && npm --version", &out) != 0) {
        printf("SKIP openai npm client: node/npm not found (%s); the curl and raw-socket tests above cover the API\n", strtok(out, "\n"));
        free(out);
        return;
    }
    free(out);
    if (access("tests/server/node_modules/openai/package.json", R_OK) != 0) {
        int rc = test_run("cd tests/server && timeout 120 npm install --no-save --no-package-lock --no-audit --no-fund --silent "
                         "openai@4 >/dev/null 2>&1; test -f node_modules/openai/package.json", &out);
        free(out);
        if (rc != 0) {
            printf("SKIP openai npm client: `npm install openai` failed (no registry?); the curl and raw-socket tests above cover the API\n");
            return;
        }
    }
    char cmd[512];
    snprintf(cmd, sizeof cmd, "timeout 120 node tests/server/openai_client.mjs http://127.0.0.1:%d/v1 %.6f", port, THR);
    int rc = test_run(cmd, &out);
    int p = 0, f = 0;
    const char *line = NULL;
    for (const char *q = strstr(out, "node: "); q; q = strstr(q + 1, "node: "))
        if (sscanf(q, "node: %d passed, %d failed", &p, &f) == 2) line = q;
    fputs(out, f || rc ? stderr : stdout);
    CHECK(rc == 0 && line && f == 0 && p > 0, "openai npm client: %d passed, %d failed (exit %d)", p, f, rc);
    free(out);
}

typedef struct {
    int port;
    const char *body;
    int status;
} raw_job;

static void *raw_run(void *arg) {
    raw_job *j = arg;
    resp r;
    j->status = post(j->port, "/v1/completions", j->body, &r);
    resp_free(&r);
    return NULL;
}

/* One slot, a queue of 2, an API key: 401, 429, a queued client hanging up. */
static void test_limits(void) {
    server sv;
    if (!server_start(&sv, "--max-batch 1 --queue 2 --api-key sekret --max-body 4096")) { CHECK(0, "start limited server"); return; }
    int port = sv.port;
    resp r;
    const char *ok_body = "{\"prompt\":\"Once\",\"max_tokens\":4}";
    CHECK(post(port, "/v1/completions", ok_body, &r) == 401 && is_error_object(r.body, NULL, "invalid_api_key") && strstr(r.head, "WWW-Authenticate"),
          "no key: 401 (%d)", r.status);
    resp_free(&r);
    CHECK(http(port, "POST", "/v1/completions", "Authorization: Bearer wrong\r\n", ok_body, strlen(ok_body), &r) == 401, "wrong key: 401");
    resp_free(&r);
    CHECK(http(port, "POST", "/v1/completions", "Authorization: Bearer sekret\r\n", ok_body, strlen(ok_body), &r) == 200, "right key: 200 (%d %s)", r.status, r.body);
    resp_free(&r);
    CHECK(http(port, "GET", "/health", NULL, NULL, 0, &r) == 200, "/health needs no key");
    resp_free(&r);
    CHECK(server_stop(&sv) == 0, "SIGTERM: exit 0 (a sanitizer report would change it)");

    if (!server_start(&sv, "--max-batch 1 --queue 2")) { CHECK(0, "start limited server"); return; }
    port = sv.port;
    enum { NJ = 12 };
    raw_job jobs[NJ];
    pthread_t th[NJ];
    const char *long_body = "{\"prompt\":\"Once\",\"max_tokens\":500,\"ignore_eos\":true}";
    for (int i = 0; i < NJ; i++) {
        jobs[i] = (raw_job){port, long_body, 0};
        pthread_create(&th[i], NULL, raw_run, &jobs[i]);
    }
    for (int i = 0; i < NJ; i++) pthread_join(th[i], NULL);
    int n200 = 0, n429 = 0;
    for (int i = 0; i < NJ; i++) n200 += jobs[i].status == 200, n429 += jobs[i].status == 429;
    CHECK(n200 >= 1 && n429 >= 1 && n200 + n429 == NJ, "12 clients, 1 slot, queue 2: %d answered, %d got 429", n200, n429);
    printf("%s bounded queue: %d of %d clients answered, %d refused with 429\n", n429 ? "ok  " : "FAIL", n200, NJ, n429);

    /* a queued client hangs up: its request never runs (499 in the metrics) */
    for (int i = 0; i < 2; i++) {
        jobs[i] = (raw_job){port, long_body, 0};
        pthread_create(&th[i], NULL, raw_run, &jobs[i]);
    }
    usleep(20000);
    int fd = connect_port(port);
    send_request(fd, "POST", "/v1/completions", NULL, long_body, strlen(long_body));
    usleep(5000);
    close(fd);
    for (int i = 0; i < 2; i++) pthread_join(th[i], NULL);
    for (int i = 0; i < 100 && metric(port, "prism_requests_total{endpoint=\"completions\",status=\"499\"} ") < 1; i++) usleep(20000);
    CHECK(metric(port, "prism_requests_total{endpoint=\"completions\",status=\"499\"} ") >= 1 && jobs[0].status == 200 && jobs[1].status == 200,
          "a client that hangs up while queued is cancelled (499)");
    CHECK(http(port, "GET", "/health", NULL, NULL, 0, &r) == 200, "healthy after cancellations");
    resp_free(&r);
    CHECK(server_stop(&sv) == 0, "SIGTERM: exit 0");
}

/* SIGTERM with a stream in flight: it finishes with [DONE], then exit 0; new connections are refused. */
typedef struct {
    int port;
    resp r;
} stream_job;

static void *stream_run(void *arg) {
    stream_job *j = arg;
    const char *body = "{\"model\":\"stories260K\",\"prompt\":\"Once\",\"max_tokens\":400,\"stream\":true,\"ignore_eos\":true}";
    post(j->port, "/v1/completions", body, &j->r);
    return NULL;
}

static void test_shutdown(server *sv) {
    stream_job sj = {.port = sv->port};
    pthread_t th;
    pthread_create(&th, NULL, stream_run, &sj);
    for (int i = 0; i < 100 && metric(sv->port, "prism_running_requests ") < 1; i++) usleep(2000);
    int code = server_stop(sv);
    pthread_join(th, NULL);
    int n_events = 0;
    for (const char *p = sj.r.body ? strstr(sj.r.body, "data: ") : NULL; p; p = strstr(p + 1, "data: ")) n_events++;
    CHECK(code == 0, "SIGTERM: exit %d", code);
    CHECK(sj.r.status == 200 && sj.r.body && strstr(sj.r.body, "data: [DONE]") && strstr(sj.r.body, "\"finish_reason\":\"length\""),
          "the in-flight stream finished (%d events) before exit: %.200s", n_events, sj.r.body ? sj.r.body : "");
    CHECK(connect_port(sv->port) < 0, "no longer listening after shutdown");
    printf("ok   SIGTERM: the in-flight stream finished with [DONE], exit 0\n");
    resp_free(&sj.r);
}

static void test_bad_start(void) {
    char cmd[512], *out;
    snprintf(cmd, sizeof cmd, "%s serve --model " MODEL " --prism /nonexistent-run --port 0", BIN);
    int rc = test_run(cmd, &out);
    CHECK(rc == 1 && strstr(out, "nonexistent-run"), "a missing run dir: exit 1 naming it: %s", out);
    free(out);
    snprintf(cmd, sizeof cmd, "%s serve --model " MODEL " --host not-an-ip --port 0", BIN);
    rc = test_run(cmd, &out);
    CHECK(rc == 1 && strstr(out, "--host"), "a bad --host: %s", out);
    free(out);
    snprintf(cmd, sizeof cmd, "%s serve --model " MODEL " --adapter =x", BIN);
    rc = test_run(cmd, &out);
    CHECK(rc == 2 && strstr(out, "NAME=DIR"), "--adapter =x: %s", out);
    free(out);
}

int main(void) {
    const char *b = getenv("PRISM_SERVER_BIN");
    if (b && *b) BIN = b;
    if (access(BIN, X_OK)) {
        fprintf(stderr, "%s not built\n", BIN);
        printf("0 passed, 1 failed\n");
        return 1;
    }
    printf("server binary: %s\n", BIN);
    srand((unsigned)getpid());
    snprintf(RUN, sizeof RUN, "/tmp/prism-server-XXXXXX");
    if (!mkdtemp(RUN)) return 1;

    prism_model_params mp = prism_model_default_params();
    prism_model *m = NULL;
    if (prism_model_load(MODEL, mp, &m)) { fprintf(stderr, "%s\n", prism_last_error()); return 1; }
    /* the threshold sits between the 4th and 5th gate probabilities of the questions */
    make_test_run(m, RUN, 0.5f);
    gate_probs(m);
    float sorted[NQ];
    memcpy(sorted, PROB, sizeof sorted);
    for (int i = 0; i < NQ; i++)
        for (int j = i + 1; j < NQ; j++)
            if (sorted[j] < sorted[i]) { float t = sorted[i]; sorted[i] = sorted[j]; sorted[j] = t; }
    THR = 0.5f * (sorted[NQ / 2 - 1] + sorted[NQ / 2]);
    make_test_run(m, RUN, THR);
    prism_model_free(m);

    test_bad_start();
    server sv;
    char args[512];
    snprintf(args, sizeof args, "--prism %s --adapter persona=%s/adapter --chat-template llama2 --max-batch 8 --queue 64 --max-body 200000", RUN, RUN);
    if (!server_start(&sv, args)) {
        CHECK(0, "server start");
    } else {
        test_basics(sv.port);
        test_chat_curl(sv.port);
        test_vs_cli(sv.port);
        test_concurrency(sv.port);
        test_errors(sv.port);
        test_fuzz(sv.port);
        test_disconnect(sv.port);
        test_metrics(sv.port);
        test_node(sv.port);
        test_shutdown(&sv);
        char *log = test_slurp(sv.log, NULL);
        CHECK(!strstr(log, "ERROR: AddressSanitizer") && !strstr(log, "runtime error:") && !strstr(log, "LeakSanitizer"),
              "server log has no sanitizer report: %.2000s", log);
        free(log);
    }
    test_limits();
    /* prompts longer than a prefill batch: the routed prefill runs layer 0 of every batch first, keeping its
     * outputs until the gate has read the last token; the ids still equal the CLI's (one batch there) */
    snprintf(args, sizeof args, "--prism %s --chat-template llama2 --max-batch 2 --batch-tokens 8", RUN);
    if (!server_start(&sv, args)) {
        CHECK(0, "server start (--batch-tokens 8)");
    } else {
        test_vs_cli(sv.port);
        CHECK(server_stop(&sv) == 0, "--batch-tokens 8 server: clean exit");
    }
    char cmd[256], *out;
    snprintf(cmd, sizeof cmd, "rm -rf %s", RUN);
    test_run(cmd, &out);
    free(out);
    TEST_MAIN_END();
}
