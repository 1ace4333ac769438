/* http.c — libmicrohttpd glue. One thread per connection (MHD's internal
 * threads): the access handler collects the body (413 past --max-body),
 * checks the bearer key (401), parses the request (api.c), queues it for the
 * scheduler (429 when the queue is full) and waits on the request's
 * condition variable. Non-streamed requests are answered when done; streamed
 * ones once prefilled (the route header is known then), with a content-reader
 * callback that turns each published piece of text into an SSE event.
 *
 * While waiting, the connection's socket is polled: a peer that has closed
 * it cancels the request, and the scheduler frees its slot at the next step.
 * A failed write ends the stream the same way (MHD then frees the reader). */
#include <arpa/inet.h>
#include <errno.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "server/server.h"
#include "util/error.h"
#include "util/timer.h"

enum { EP_OTHER = 0, EP_HEALTH, EP_METRICS, EP_MODELS, EP_CHAT, EP_COMPLETIONS };
static const char *const k_ep_names[] = {"other", "health", "metrics", "models", "chat_completions", "completions"};

typedef struct {
    int ep;
    char *body;
    size_t n, cap;
    bool answered;
    api_error deferred;   /* status != 0: answer this once the body has been read (and discarded) */
} conn_ctx;

typedef struct {
    srv *s;
    srv_req *r;
    int fd;
    size_t sent;          /* bytes of r->text already turned into events */
    char *pending;        /* events not yet handed to MHD */
    size_t pn, poff;
    bool first_sent, done_sent;
} stream_ctx;

/* ---------------------------------------------------------------- helpers */

static bool client_gone(int fd) {
    if (fd < 0) return false;
    struct pollfd p = {.fd = fd, .events = POLLIN | POLLRDHUP};
    if (poll(&p, 1, 0) <= 0) return false;
    if (p.revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL)) return true;
    if (p.revents & POLLIN) {
        char ch;
        ssize_t k = recv(fd, &ch, 1, MSG_PEEK | MSG_DONTWAIT);
        return k == 0 || (k < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR);
    }
    return false;
}

static int conn_fd(struct MHD_Connection *c) {
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
    return ci ? ci->connect_fd : -1;
}

static void timed_wait(pthread_cond_t *cv, pthread_mutex_t *mu, int ms) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_nsec += (long)ms * 1000000L;
    ts.tv_sec += ts.tv_nsec / 1000000000L;
    ts.tv_nsec %= 1000000000L;
    pthread_cond_timedwait(cv, mu, &ts);
}

static void add_route_headers(struct MHD_Response *resp, const srv_req *r) {
    if (!r) return;
    MHD_add_response_header(resp, "X-Prism-Route", r->routed_adapter ? "adapter" : "base");
    if (r->gate_prob >= 0) {
        char p[32];
        snprintf(p, sizeof p, "%.6f", r->gate_prob);
        MHD_add_response_header(resp, "X-Prism-Gate-Probability", p);
    }
}

/* Queues body (taken) with status; counts it in the metrics. */
static enum MHD_Result respond(srv *s, struct MHD_Connection *c, conn_ctx *cc, int status, const char *ctype, char *body,
                               const srv_req *r, bool close) {
    if (!body) {
        body = strdup("{\"error\":{\"message\":\"out of memory\",\"type\":\"server_error\",\"param\":null,\"code\":null}}");
        status = 500;
        if (!body) return MHD_NO;
    }
    struct MHD_Response *resp = MHD_create_response_from_buffer(strlen(body), body, MHD_RESPMEM_MUST_FREE);
    if (!resp) {
        free(body);
        return MHD_NO;
    }
    MHD_add_response_header(resp, "Content-Type", ctype);
    add_route_headers(resp, r);
    if (status == 401) MHD_add_response_header(resp, "WWW-Authenticate", "Bearer");
    if (close) MHD_add_response_header(resp, "Connection", "close");
    enum MHD_Result ret = MHD_queue_response(c, (unsigned)status, resp);
    MHD_destroy_response(resp);
    cc->answered = true;
    metrics_request(s->metrics, k_ep_names[cc->ep], status);
    return ret;
}

static enum MHD_Result respond_error(srv *s, struct MHD_Connection *c, conn_ctx *cc, const api_error *e, bool close) {
    return respond(s, c, cc, e->status, "application/json", api_error_json(e), NULL, close);
}

static enum MHD_Result respond_json(srv *s, struct MHD_Connection *c, conn_ctx *cc, char *body) {
    return respond(s, c, cc, 200, "application/json", body, NULL, false);
}

/* ---------------------------------------------------------------- streaming */

static int pending_add(stream_ctx *sc, char *ev) {
    if (!ev) return 0;
    size_t n = strlen(ev);
    if (sc->poff == sc->pn) sc->pn = sc->poff = 0;
    char *p = realloc(sc->pending, sc->pn + n + 1);
    if (!p) {
        free(ev);
        return 0;
    }
    memcpy(p + sc->pn, ev, n);
    sc->pn += n;
    sc->pending = p;
    free(ev);
    return 1;
}

static ssize_t stream_read(void *cls, uint64_t pos, char *buf, size_t max) {
    (void)pos;
    stream_ctx *sc = cls;
    srv *s = sc->s;
    srv_req *r = sc->r;
    while (sc->poff == sc->pn) {
        if (sc->done_sent) return MHD_CONTENT_READER_END_OF_STREAM;
        pthread_mutex_lock(&s->mu);
        while (sc->first_sent && r->n_text == sc->sent && r->state != RQ_DONE) {
            timed_wait(&r->cv, &s->mu, 50);
            if (client_gone(sc->fd)) {
                srv_req_cancel(s, r);
                pthread_mutex_unlock(&s->mu);
                return MHD_CONTENT_READER_END_WITH_ERROR;
            }
        }
        int ok = 1;
        if (!sc->first_sent) {
            ok &= pending_add(sc, api_sse_chunk(s, r, "", 0, true, SRV_FINISH_NONE, false));
            sc->first_sent = true;
        }
        if (r->n_text > sc->sent) {
            ok &= pending_add(sc, api_sse_chunk(s, r, r->text + sc->sent, r->n_text - sc->sent, false, SRV_FINISH_NONE, false));
            sc->sent = r->n_text;
        }
        if (r->state == RQ_DONE && r->n_text == sc->sent) {
            if (r->err_status) {
                api_error e = {.status = r->err_status, .type = "server_error"};
                snprintf(e.message, sizeof e.message, "%s", r->err_msg);
                char *js = api_error_json(&e);
                size_t n = js ? strlen(js) : 0;
                char *ev = js ? malloc(n + 9) : NULL;
                if (ev) snprintf(ev, n + 9, "data: %s\n\n", js);
                free(js);
                ok &= pending_add(sc, ev);
            } else {
                ok &= pending_add(sc, api_sse_chunk(s, r, NULL, 0, false, r->finish, false));
                if (r->include_usage) ok &= pending_add(sc, api_sse_chunk(s, r, NULL, 0, false, SRV_FINISH_NONE, true));
            }
            ok &= pending_add(sc, strdup("data: [DONE]\n\n"));
            sc->done_sent = true;
        }
        pthread_mutex_unlock(&s->mu);
        if (!ok) return MHD_CONTENT_READER_END_WITH_ERROR;
    }
    size_t n = sc->pn - sc->poff < max ? sc->pn - sc->poff : max;
    memcpy(buf, sc->pending + sc->poff, n);
    sc->poff += n;
    return (ssize_t)n;
}

static void stream_free(void *cls) {
    stream_ctx *sc = cls;
    pthread_mutex_lock(&sc->s->mu);
    srv_req_cancel(sc->s, sc->r); /* no-op when it finished */
    srv_req_release(sc->s, sc->r);
    pthread_mutex_unlock(&sc->s->mu);
    free(sc->pending);
    free(sc);
}

/* ---------------------------------------------------------------- generation endpoints */

static enum MHD_Result handle_generate(srv *s, struct MHD_Connection *c, conn_ctx *cc) {
    api_error e = {0};
    srv_req *r = api_parse(s, cc->ep == EP_CHAT ? SRV_CHAT : SRV_COMPLETION, cc->body ? cc->body : "", cc->n, &e);
    if (!r) return respond_error(s, c, cc, &e, false);
    const int fd = conn_fd(c);
    pthread_mutex_lock(&s->mu);
    int rc = sched_submit(s, r);
    if (rc) {
        srv_req_release(s, r);
        pthread_mutex_unlock(&s->mu);
        if (rc == 429)
            api_fail(&e, 429, "rate_limit_error", NULL, "queue_full",
                     "The server is busy: %d requests are already waiting (--queue); retry later", s->cfg.queue_cap);
        else
            api_fail(&e, 503, "server_error", NULL, "shutting_down", "The server is shutting down");
        return respond_error(s, c, cc, &e, false);
    }
    /* A stream starts once the route is known; a plain response when done. */
    while (r->stream ? !r->started && r->state != RQ_DONE : r->state != RQ_DONE) {
        timed_wait(&r->cv, &s->mu, 50);
        if (r->state != RQ_DONE && client_gone(fd)) {
            srv_req_cancel(s, r);
            srv_req_release(s, r);
            pthread_mutex_unlock(&s->mu);
            metrics_request(s->metrics, k_ep_names[cc->ep], 499);
            return MHD_NO; /* closes the connection */
        }
    }
    if (r->state == RQ_DONE && r->err_status) {
        api_fail(&e, r->err_status, r->err_status == 503 ? "server_error" : "server_error", NULL, NULL, "%s", r->err_msg);
        srv_req_release(s, r);
        pthread_mutex_unlock(&s->mu);
        return respond_error(s, c, cc, &e, false);
    }
    if (!r->stream) {
        char *body = api_response_json(s, r);
        srv_req copy_hdr = {.routed_adapter = r->routed_adapter, .gate_prob = r->gate_prob};
        srv_req_release(s, r);
        pthread_mutex_unlock(&s->mu);
        return respond(s, c, cc, 200, "application/json", body, &copy_hdr, false);
    }
    stream_ctx *sc = calloc(1, sizeof *sc);
    struct MHD_Response *resp = sc ? MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16 * 1024, stream_read, sc, stream_free) : NULL;
    if (!resp) {
        srv_req_cancel(s, r);
        srv_req_release(s, r);
        pthread_mutex_unlock(&s->mu);
        free(sc);
        api_fail(&e, 500, "server_error", NULL, NULL, "out of memory");
        return respond_error(s, c, cc, &e, false);
    }
    sc->s = s;
    sc->r = r; /* the stream owns the connection's reference now */
    sc->fd = fd;
    add_route_headers(resp, r);
    pthread_mutex_unlock(&s->mu);
    MHD_add_response_header(resp, "Content-Type", "text/event-stream");
    MHD_add_response_header(resp, "Cache-Control", "no-cache");
    enum MHD_Result ret = MHD_queue_response(c, 200, resp);
    MHD_destroy_response(resp);
    cc->answered = true;
    metrics_request(s->metrics, k_ep_names[cc->ep], 200);
    return ret;
}

/* ---------------------------------------------------------------- the access handler */

static bool auth_ok(srv *s, struct MHD_Connection *c) {
    if (!s->cfg.api_key) return true;
    const char *h = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Authorization");
    if (!h || strncasecmp(h, "Bearer ", 7)) return false;
    h += 7;
    while (*h == ' ') h++;
    const char *k = s->cfg.api_key;
    size_t hl = strlen(h), kl = strlen(k);
    unsigned char diff = hl != kl;
    for (size_t i = 0; i < hl && i < kl; i++) diff |= (unsigned char)(h[i] ^ k[i]); /* no early exit */
    return diff == 0;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url, const char *method,
                                  const char *version, const char *upload, size_t *upload_size, void **con_cls) {
    (void)version;
    srv *s = cls;
    conn_ctx *cc = *con_cls;
    api_error e = {0};
    if (!cc) {
        if (!(cc = calloc(1, sizeof *cc))) return MHD_NO;
        *con_cls = cc;
        pthread_mutex_lock(&s->mu);
        s->open_requests++;
        pthread_mutex_unlock(&s->mu);
        if (!strcmp(url, "/health")) cc->ep = EP_HEALTH;
        else if (!strcmp(url, "/metrics")) cc->ep = EP_METRICS;
        else if (!strcmp(url, "/v1/models")) cc->ep = EP_MODELS;
        else if (!strcmp(url, "/v1/chat/completions")) cc->ep = EP_CHAT;
        else if (!strcmp(url, "/v1/completions")) cc->ep = EP_COMPLETIONS;
        /* A wrong key is answered once the body is in (and discarded): libmicrohttpd
         * cannot answer in the middle of an upload. An announced body over the
         * limit is refused before it is sent. */
        if (!strncmp(url, "/v1/", 4) && !auth_ok(s, c))
            api_fail(&cc->deferred, 401, "invalid_request_error", NULL, "invalid_api_key",
                     "Incorrect or missing API key: send the header \"Authorization: Bearer KEY\"");
        const char *cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
        if (cl && strtoull(cl, NULL, 10) > s->cfg.max_body) {
            api_fail(&e, 413, "invalid_request_error", NULL, "request_too_large",
                     "The request body (%s bytes) exceeds the limit of %zu bytes (--max-body)", cl, s->cfg.max_body);
            return respond_error(s, c, cc, &e, true);
        }
        return MHD_YES;
    }
    if (*upload_size) {
        size_t k = *upload_size;
        *upload_size = 0;
        if (cc->answered || cc->deferred.status) return MHD_YES; /* discarded */
        if (cc->n + k > s->cfg.max_body) {
            free(cc->body);
            cc->body = NULL;
            cc->n = cc->cap = 0;
            api_fail(&cc->deferred, 413, "invalid_request_error", NULL, "request_too_large",
                     "The request body exceeds the limit of %zu bytes (--max-body)", s->cfg.max_body);
            return MHD_YES;
        }
        if (cc->n + k + 1 > cc->cap) {
            size_t cap = (cc->n + k + 1) * 2;
            if (cap > s->cfg.max_body + 1) cap = s->cfg.max_body + 1;
            char *p = realloc(cc->body, cap);
            if (!p) return MHD_NO;
            cc->body = p;
            cc->cap = cap;
        }
        memcpy(cc->body + cc->n, upload, k);
        cc->n += k;
        cc->body[cc->n] = 0;
        return MHD_YES;
    }

    if (cc->answered) return MHD_YES;
    if (cc->deferred.status) return respond_error(s, c, cc, &cc->deferred, cc->deferred.status == 413);
    const bool get = !strcmp(method, "GET") || !strcmp(method, "HEAD"), post = !strcmp(method, "POST");
    switch (cc->ep) {
    case EP_HEALTH:
        if (!get) break;
        if (s->shutting_down) return respond(s, c, cc, 503, "application/json", strdup("{\"status\":\"shutting down\"}"), NULL, true);
        return respond(s, c, cc, 200, "application/json", strdup("{\"status\":\"ok\"}"), NULL, false);
    case EP_METRICS: {
        if (!get) break;
        int queued, running;
        pthread_mutex_lock(&s->mu);
        sched_gauges(s, &queued, &running);
        pthread_mutex_unlock(&s->mu);
        return respond(s, c, cc, 200, "text/plain; version=0.0.4; charset=utf-8",
                       metrics_render(s->metrics, queued, running, s->cfg.max_batch), NULL, false);
    }
    case EP_MODELS:
        if (!get) break;
        return respond_json(s, c, cc, api_models_json(s));
    case EP_CHAT:
    case EP_COMPLETIONS:
        if (!post) break;
        return handle_generate(s, c, cc);
    default:
        api_fail(&e, 404, "invalid_request_error", NULL, "not_found", "Unknown path %.200s %.200s", method, url);
        return respond_error(s, c, cc, &e, false);
    }
    api_fail(&e, 405, "invalid_request_error", NULL, "method_not_allowed", "Method %.20s is not allowed on %.200s", method, url);
    return respond_error(s, c, cc, &e, false);
}

static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls, enum MHD_RequestTerminationCode toe) {
    (void)c, (void)toe;
    srv *s = cls;
    conn_ctx *cc = *con_cls;
    if (!cc) return;
    pthread_mutex_lock(&s->mu);
    s->open_requests--;
    pthread_mutex_unlock(&s->mu);
    free(cc->body);
    free(cc);
    *con_cls = NULL;
}

static void on_mhd_log(void *cls, const char *fmt, va_list ap) {
    (void)cls;
    char msg[512];
    vsnprintf(msg, sizeof msg, fmt, ap);
    size_t n = strlen(msg);
    while (n && msg[n - 1] == '\n') msg[--n] = 0;
    fprintf(stderr, "prism serve: libmicrohttpd: %s\n", msg);
}

/* ---------------------------------------------------------------- life */

prism_status srv_start(const srv_config *cfg, srv **out) {
    srv *s = calloc(1, sizeof *s);
    if (!s) return prism_error(PRISM_E_NOMEM, "out of memory");
    s->cfg = *cfg;
    pthread_mutex_init(&s->mu, NULL);
    pthread_mutex_init(&s->tok_mu, NULL);
    s->defaults = prism_model_sampling_defaults(cfg->model);
    if (!(s->metrics = metrics_new())) {
        srv_free(s);
        return prism_error(PRISM_E_NOMEM, "out of memory");
    }
    srv_sched *q;
    prism_status st = sched_new(s, &q);
    if (st) {
        srv_free(s);
        return st;
    }
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)cfg->port)};
    if (inet_pton(AF_INET, cfg->host, &addr.sin_addr) != 1) {
        srv_stop(s);
        srv_free(s);
        return prism_error(PRISM_E_ARG, "--host %s: expected an IPv4 address such as 127.0.0.1 or 0.0.0.0", cfg->host);
    }
    unsigned flags = MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_POLL | MHD_USE_ITC |
                     MHD_USE_ERROR_LOG;
    s->daemon = MHD_start_daemon(flags, (uint16_t)cfg->port, NULL, NULL, on_request, s,
                                 MHD_OPTION_EXTERNAL_LOGGER, on_mhd_log, s,
                                 MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&addr,
                                 MHD_OPTION_NOTIFY_COMPLETED, on_completed, s,
                                 MHD_OPTION_CONNECTION_LIMIT, (unsigned)cfg->max_connections,
                                 MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)120,
                                 MHD_OPTION_END);
    if (!s->daemon) {
        int err = errno;
        srv_stop(s);
        srv_free(s);
        return prism_error(PRISM_E_IO, "cannot listen on %s:%d: %s", cfg->host, cfg->port,
                           err ? strerror(err) : "libmicrohttpd failed to start");
    }
    *out = s;
    return PRISM_OK;
}

int srv_port(const srv *s) {
    const union MHD_DaemonInfo *di = s->daemon ? MHD_get_daemon_info(s->daemon, MHD_DAEMON_INFO_BIND_PORT) : NULL;
    return di ? di->port : s->cfg.port;
}

void srv_stop(srv *s) {
    if (!s) return;
    s->shutting_down = 1;
    if (s->daemon) {
        MHD_socket ls = MHD_quiesce_daemon(s->daemon); /* no new connections */
        if (ls != MHD_INVALID_SOCKET) close(ls);
    }
    double t0 = prism_now();
    sched_stop(s, s->cfg.shutdown_timeout);
    /* The scheduler has finished (or cancelled) every sequence; let the
     * connection threads deliver what is still queued — the last stream
     * chunks and [DONE] — before the daemon closes the sockets. */
    for (;;) {
        pthread_mutex_lock(&s->mu);
        int open = s->open_requests;
        pthread_mutex_unlock(&s->mu);
        if (open <= 0 || prism_now() - t0 > s->cfg.shutdown_timeout + 1.0) break;
        usleep(2000);
    }
    if (s->daemon) {
        MHD_stop_daemon(s->daemon);
        s->daemon = NULL;
    }
}

void srv_free(srv *s) {
    if (!s) return;
    if (s->daemon) MHD_stop_daemon(s->daemon);
    sched_free(s->sched);
    metrics_free(s->metrics);
    pthread_mutex_destroy(&s->mu);
    pthread_mutex_destroy(&s->tok_mu);
    free(s);
}
