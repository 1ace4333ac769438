/* bench_server.c — load test for `prism serve`: starts the server (or uses
 * --port of a running one), sends a bounded number of chat requests from C
 * concurrent clients (raw HTTP/1.1 on loopback, one connection per request),
 * and reports requests/s, completion tokens/s, latency percentiles and the
 * server's resident memory after a warm-up round and after the run.
 *
 *   ./build/bench/bench_server [--requests 2000] [--clients 32] [--max-tokens 64]
 *       [--model models/stories260K] [--prism RUN_DIR] [--max-batch 32] [--bin ./build/prism]
 *
 * Requests rotate over a few questions and, with --prism, over the routed
 * model and both forced routes, so the batch mixes base and adapter slots. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static int g_port, g_max_tokens = 64, g_requests = 2000, g_prism;
static int g_next, g_done_tok, g_fail;
static double *g_lat;
static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* POSTs body; returns the usage.completion_tokens of a 200 answer, -1 otherwise. */
static int request(const char *body) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)g_port)};
    inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
    if (connect(fd, (struct sockaddr *)&a, sizeof a)) { close(fd); return -1; }
    char req[4096];
    int n = snprintf(req, sizeof req, "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                     "Content-Type: application/json\r\nContent-Length: %zu\r\n\r\n%s", strlen(body), body);
    if (send(fd, req, (size_t)n, MSG_NOSIGNAL) != n) { close(fd); return -1; }
    char buf[65536];
    size_t got = 0;
    ssize_t k;
    while ((k = recv(fd, buf + got, sizeof buf - got - 1, 0)) > 0) got += (size_t)k;
    close(fd);
    buf[got] = 0;
    const char *u = strstr(buf, "\"completion_tokens\":");
    return !strncmp(buf, "HTTP/1.1 200", 12) && u ? atoi(u + 20) : -1;
}

static void *client(void *arg) {
    (void)arg;
    static const char *qs[] = {"Tell me a story about a dog.", "What is two plus two?", "Write a poem about the sea.",
                               "Why is the sky blue?", "Who was the king?"};
    static const char *models[] = {"stories260K", "stories260K:base", "stories260K:adapter"};
    for (;;) {
        pthread_mutex_lock(&g_mu);
        int i = g_next < g_requests ? g_next++ : -1;
        pthread_mutex_unlock(&g_mu);
        if (i < 0) return NULL;
        char body[1024];
        snprintf(body, sizeof body, "{\"model\":\"%s\",\"messages\":[{\"role\":\"user\",\"content\":\"%s\"}],\"max_tokens\":%d,"
                 "\"temperature\":0.7,\"seed\":%d,\"ignore_eos\":true}", g_prism ? models[i % 3] : "stories260K", qs[i % 5], g_max_tokens, i);
        double t0 = now();
        int tok = request(body);
        double dt = now() - t0;
        pthread_mutex_lock(&g_mu);
        if (tok < 0) g_fail++;
        else g_done_tok += tok;
        g_lat[i] = dt;
        pthread_mutex_unlock(&g_mu);
    }
}

static long rss_kb(pid_t pid) {
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "r");
    long kb = -1;
    while (f && fgets(line, sizeof line, f))
        if (!strncmp(line, "VmRSS:", 6)) kb = atol(line + 6);
    if (f) fclose(f);
    return kb;
}

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static void run_round(int requests, int clients, double *secs) {
    g_next = 0;
    g_done_tok = 0;
    g_fail = 0;
    g_requests = requests;
    pthread_t *th = malloc((size_t)clients * sizeof *th);
    double t0 = now();
    for (int i = 0; i < clients; i++) pthread_create(&th[i], NULL, client, NULL);
    for (int i = 0; i < clients; i++) pthread_join(th[i], NULL);
    *secs = now() - t0;
    free(th);
}

int main(int argc, char **argv) {
    int requests = 2000, clients = 32, max_batch = 32;
    const char *model = "models/stories260K", *prism = NULL, *bin = "./build/prism";
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : "";
        if (!strcmp(a, "--requests")) requests = atoi(v), i++;
        else if (!strcmp(a, "--clients")) clients = atoi(v), i++;
        else if (!strcmp(a, "--max-tokens")) g_max_tokens = atoi(v), i++;
        else if (!strcmp(a, "--max-batch")) max_batch = atoi(v), i++;
        else if (!strcmp(a, "--model")) model = v, i++;
        else if (!strcmp(a, "--prism")) prism = v, i++;
        else if (!strcmp(a, "--bin")) bin = v, i++;
        else if (!strcmp(a, "--port")) g_port = atoi(v), i++;
        else { fprintf(stderr, "bench_server: unknown option %s (see the comment at the top of bench/bench_server.c)\n", a); return 2; }
    }
    if (requests < 1 || clients < 1) return 2;
    g_prism = prism != NULL;
    pid_t pid = 0;
    char log[] = "/tmp/bench-server-XXXXXX";
    if (!g_port) {
        int lfd = mkstemp(log);
        char cmd[2048];
        snprintf(cmd, sizeof cmd, "exec %s serve --model %s --chat-template llama2 --port 0 --max-batch %d --queue %d %s%s 2>%s",
                 bin, model, max_batch, requests + clients, prism ? "--prism " : "", prism ? prism : "", log);
        close(lfd);
        if ((pid = fork()) == 0) { execl("/bin/sh", "sh", "-c", cmd, (char *)NULL); _exit(127); }
        for (int k = 0; k < 300 && !g_port; k++) {
            usleep(100000);
            FILE *f = fopen(log, "r");
            char line[512];
            while (f && fgets(line, sizeof line, f)) {
                char *p = strstr(line, "127.0.0.1:");
                if (p) g_port = atoi(p + 10);
            }
            if (f) fclose(f);
        }
        if (!g_port) { fprintf(stderr, "bench_server: the server did not start (see %s)\n", log); return 1; }
    }
    g_lat = calloc((size_t)(requests > 200 ? requests : 200), sizeof *g_lat);
    double secs;
    run_round(clients * 4 < 200 ? clients * 4 : 200, clients, &secs); /* warm-up */
    long rss0 = pid ? rss_kb(pid) : -1;
    /* two halves: memory after the first half and after the second shows whether it still grows */
    int half = requests / 2, tok1, fail1;
    double s1, s2;
    run_round(half, clients, &s1);
    long rss_half = pid ? rss_kb(pid) : -1;
    double *lat1 = malloc((size_t)(half > 0 ? half : 1) * sizeof *lat1);
    memcpy(lat1, g_lat, (size_t)half * sizeof *lat1);
    tok1 = g_done_tok, fail1 = g_fail;
    run_round(requests - half, clients, &s2);
    memmove(g_lat + half, g_lat, (size_t)(requests - half) * sizeof *g_lat);
    memcpy(g_lat, lat1, (size_t)half * sizeof *lat1);
    free(lat1);
    g_done_tok += tok1, g_fail += fail1, secs = s1 + s2;
    long rss1 = pid ? rss_kb(pid) : -1;
    qsort(g_lat, (size_t)requests, sizeof *g_lat, cmp);
    printf("requests      %d (%d clients, max_tokens %d, --max-batch %d%s), %d failed\n", requests, clients, g_max_tokens, max_batch,
           prism ? ", routed/base/adapter mix" : "", g_fail);
    printf("wall          %.2f s\n", secs);
    printf("throughput    %.1f requests/s, %.0f completion tokens/s\n", requests / secs, g_done_tok / secs);
    printf("latency       p50 %.1f ms, p90 %.1f ms, p99 %.1f ms\n", 1e3 * g_lat[requests / 2], 1e3 * g_lat[requests * 9 / 10],
           1e3 * g_lat[requests * 99 / 100]);
    if (pid) printf("server RSS    %.1f MiB after warm-up, %.1f MiB after %d requests, %.1f MiB after %d (%+.1f%% over the second half)\n",
                    rss0 / 1024.0, rss_half / 1024.0, half, rss1 / 1024.0, requests,
                    rss_half > 0 ? 100.0 * (double)(rss1 - rss_half) / (double)rss_half : 0.0);
    if (pid) {
        kill(pid, SIGTERM);
        int st;
        waitpid(pid, &st, 0);
        unlink(log);
    }
    free(g_lat);
    return g_fail ? 1 : 0;
}
