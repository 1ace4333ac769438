/* metrics.c — server counters and histograms in the Prometheus text
 * exposition format (version 0.0.4): requests by endpoint and status, prompt
 * and completion tokens, route decisions, request latency and time to first
 * token, queue depth, running batch size, resident memory. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#include <unistd.h>

#include "server/server.h"

enum { N_BUCKETS = 14, MAX_SERIES = 64 };
static const double k_buckets[N_BUCKETS] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120};

typedef struct {
    uint64_t count[N_BUCKETS + 1]; /* last: +Inf */
    double sum;
    uint64_t n;
} histogram;

typedef struct {
    char endpoint[32];
    int status;
    uint64_t n;
} series;

struct srv_metrics {
    pthread_mutex_t mu;
    series req[MAX_SERIES];
    int n_req;
    uint64_t prompt_tokens, completion_tokens;
    uint64_t route_base, route_adapter;
    histogram latency, ttft;
};

srv_metrics *metrics_new(void) {
    srv_metrics *m = calloc(1, sizeof *m);
    if (m) pthread_mutex_init(&m->mu, NULL);
    return m;
}

void metrics_free(srv_metrics *m) {
    if (!m) return;
    pthread_mutex_destroy(&m->mu);
    free(m);
}

void metrics_request(srv_metrics *m, const char *endpoint, int status) {
    pthread_mutex_lock(&m->mu);
    int k = 0;
    while (k < m->n_req && !(m->req[k].status == status && !strcmp(m->req[k].endpoint, endpoint))) k++;
    if (k == m->n_req && m->n_req < MAX_SERIES) {
        snprintf(m->req[k].endpoint, sizeof m->req[k].endpoint, "%s", endpoint);
        m->req[k].status = status;
        m->n_req++;
    }
    if (k < m->n_req) m->req[k].n++;
    pthread_mutex_unlock(&m->mu);
}

void metrics_tokens(srv_metrics *m, int64_t prompt, int64_t completion) {
    pthread_mutex_lock(&m->mu);
    m->prompt_tokens += (uint64_t)prompt;
    m->completion_tokens += (uint64_t)completion;
    pthread_mutex_unlock(&m->mu);
}

void metrics_route(srv_metrics *m, bool adapter) {
    pthread_mutex_lock(&m->mu);
    if (adapter) m->route_adapter++;
    else m->route_base++;
    pthread_mutex_unlock(&m->mu);
}

static void observe(histogram *h, double v) {
    int b = 0;
    while (b < N_BUCKETS && v > k_buckets[b]) b++;
    h->count[b]++;
    h->sum += v;
    h->n++;
}

void metrics_latency(srv_metrics *m, double seconds, double ttft) {
    pthread_mutex_lock(&m->mu);
    observe(&m->latency, seconds);
    if (ttft >= 0) observe(&m->ttft, ttft);
    pthread_mutex_unlock(&m->mu);
}

typedef struct {
    char *p;
    size_t n, cap;
    int oom;
} sbuf;

static void sb_printf(sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_printf(sbuf *b, const char *fmt, ...) {
    if (b->oom) return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int k = vsnprintf(b->p + b->n, b->cap - b->n, fmt, ap);
        va_end(ap);
        if (k < 0) { b->oom = 1; return; }
        if ((size_t)k < b->cap - b->n) { b->n += (size_t)k; return; }
        size_t cap = (b->cap + (size_t)k + 1) * 2;
        char *p = realloc(b->p, cap);
        if (!p) { b->oom = 1; return; }
        b->p = p;
        b->cap = cap;
    }
}

static void render_hist(sbuf *b, const char *name, const char *help, const histogram *h) {
    sb_printf(b, "# HELP %s %s\n# TYPE %s histogram\n", name, help, name);
    uint64_t cum = 0;
    for (int k = 0; k < N_BUCKETS; k++) {
        cum += h->count[k];
        sb_printf(b, "%s_bucket{le=\"%g\"} %llu\n", name, k_buckets[k], (unsigned long long)cum);
    }
    cum += h->count[N_BUCKETS];
    sb_printf(b, "%s_bucket{le=\"+Inf\"} %llu\n%s_sum %.6f\n%s_count %llu\n", name, (unsigned long long)cum, name, h->sum,
              name, (unsigned long long)h->n);
}

static long rss_bytes(void) {
    FILE *f = fopen("/proc/self/statm", "r");
    long pages = 0, rss = 0;
    if (f) {
        if (fscanf(f, "%ld %ld", &pages, &rss) != 2) rss = 0;
        fclose(f);
    }
    return rss * sysconf(_SC_PAGESIZE);
}

char *metrics_render(srv_metrics *m, int queued, int running, int slots) {
    sbuf b = {.p = malloc(4096), .cap = 4096};
    if (!b.p) return NULL;
    b.p[0] = 0;
    pthread_mutex_lock(&m->mu);
    sb_printf(&b, "# HELP prism_requests_total HTTP requests answered, by endpoint and status code.\n"
                  "# TYPE prism_requests_total counter\n");
    for (int k = 0; k < m->n_req; k++)
        sb_printf(&b, "prism_requests_total{endpoint=\"%s\",status=\"%d\"} %llu\n", m->req[k].endpoint, m->req[k].status,
                  (unsigned long long)m->req[k].n);
    sb_printf(&b, "# HELP prism_prompt_tokens_total Prompt tokens of finished generations.\n"
                  "# TYPE prism_prompt_tokens_total counter\nprism_prompt_tokens_total %llu\n",
              (unsigned long long)m->prompt_tokens);
    sb_printf(&b, "# HELP prism_completion_tokens_total Generated tokens.\n"
                  "# TYPE prism_completion_tokens_total counter\nprism_completion_tokens_total %llu\n",
              (unsigned long long)m->completion_tokens);
    sb_printf(&b, "# HELP prism_route_total Requests by the route they ran on (after the gate or a forced route).\n"
                  "# TYPE prism_route_total counter\nprism_route_total{route=\"base\"} %llu\nprism_route_total{route=\"adapter\"} %llu\n",
              (unsigned long long)m->route_base, (unsigned long long)m->route_adapter);
    render_hist(&b, "prism_request_duration_seconds", "Time from admission to the queue to the last token.", &m->latency);
    render_hist(&b, "prism_time_to_first_token_seconds", "Time from admission to the queue to the first generated token.",
                &m->ttft);
    pthread_mutex_unlock(&m->mu);
    sb_printf(&b, "# HELP prism_queue_depth Requests waiting for a batch slot.\n# TYPE prism_queue_depth gauge\n"
                  "prism_queue_depth %d\n", queued);
    sb_printf(&b, "# HELP prism_running_requests Sequences in the running batch.\n# TYPE prism_running_requests gauge\n"
                  "prism_running_requests %d\n", running);
    sb_printf(&b, "# HELP prism_batch_slots KV-cache slots (--max-batch).\n# TYPE prism_batch_slots gauge\n"
                  "prism_batch_slots %d\n", slots);
    sb_printf(&b, "# HELP prism_resident_memory_bytes Resident set size of the server process.\n"
                  "# TYPE prism_resident_memory_bytes gauge\nprism_resident_memory_bytes %ld\n", rss_bytes());
    if (b.oom) { free(b.p); return NULL; }
    return b.p;
}
