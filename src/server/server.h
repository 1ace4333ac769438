/* server.h — the OpenAI-compatible server behind `prism serve`.
 *
 * Four parts, one file each:
 *   http.c      libmicrohttpd glue: one thread per connection, body limit,
 *               bearer check, routing of paths, client-disconnect detection,
 *               SSE streaming through a content-reader callback.
 *   api.c       OpenAI request JSON -> srv_req (validation, chat template,
 *               tokenization, context checks); responses, SSE chunks, errors.
 *   scheduler.c continuous batching on its own thread: the only user of the
 *               prism_ctx. Requests wait in a bounded queue, take a free KV
 *               slot between decode steps, are prefilled alone (routed ones
 *               through layer 0 -> gate -> layers 1..L-1) and then decode
 *               together, each slot on its own adapter (or the base model).
 *   metrics.c   counters and histograms, rendered as Prometheus text.
 *
 * Locking: one mutex (srv->mu) guards the queue, the slots' requests and the
 * shared fields of every srv_req; each request has its own condition variable
 * that the scheduler signals when it publishes progress. */
#ifndef PRISM_SERVER_H
#define PRISM_SERVER_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "prism.h"

enum { SRV_MAX_ADAPTERS = 16, SRV_MAX_STOP = 16 };

/* What a model id in a request selects. */
typedef enum {
    SRV_MODEL_BASE = 0,      /* "<name>" without --prism, or "<name>:base" */
    SRV_MODEL_ROUTED,        /* "<name>" with --prism: the gate decides */
    SRV_MODEL_FORCE_BASE,    /* "<name>:base" with --prism (gate scored, base used) */
    SRV_MODEL_FORCE_ADAPTER, /* "<name>:adapter" with --prism */
    SRV_MODEL_NAMED_ADAPTER, /* an --adapter NAME=DIR */
} srv_model_kind;

typedef struct {
    /* set by the caller of srv_start */
    prism_model *model;
    prism_tokenizer *tok;
    prism_chat *chat;               /* NULL: /v1/chat/completions answers 400 */
    char chat_error[512];           /* why chat is NULL */
    prism_router *router;           /* --prism RUN_DIR, or NULL */
    const char *adapter_names[SRV_MAX_ADAPTERS];
    prism_adapter *adapters[SRV_MAX_ADAPTERS];
    int n_adapters;
    char name[256];                 /* served name of the base model */
    const char *host;
    int port;
    const char *api_key;            /* NULL = no auth */
    int32_t max_batch;              /* KV slots = sequences decoded together */
    int32_t queue_cap;              /* requests waiting for a slot before 429 */
    int32_t n_ctx;                  /* tokens per sequence (0 = model default) */
    int32_t n_batch;                /* prompt tokens per prefill batch (0 = the library's default, 512) */
    size_t max_body;                /* request body bytes before 413 */
    double shutdown_timeout;        /* seconds in-flight work may take after SIGTERM */
    int max_connections;
} srv_config;

typedef enum { SRV_FINISH_NONE = -1, SRV_FINISH_LENGTH = 0, SRV_FINISH_EOS, SRV_FINISH_STOP, SRV_FINISH_CONTEXT,
               SRV_FINISH_ABORT } srv_finish;

typedef enum { RQ_QUEUED = 0, RQ_RUNNING, RQ_DONE } srv_req_state;

typedef enum { SRV_CHAT = 0, SRV_COMPLETION = 1 } srv_endpoint;

typedef struct srv_req {
    /* ---- immutable once submitted */
    srv_endpoint endpoint;
    char id[48];
    char model_id[256];
    int64_t created;
    double t_submit;
    int32_t *prompt;             /* (n_prompt) token ids */
    int32_t n_prompt;
    prism_sampling_params sampling;
    int32_t max_tokens;
    char *stop[SRV_MAX_STOP];
    int32_t n_stop;
    srv_model_kind kind;
    const prism_adapter *adapter; /* NAMED_ADAPTER / BASE: the adapter to run (NULL = base) */
    const char *adapter_name;
    bool stream, include_usage, return_token_ids, ignore_eos;
    /* ---- shared, under srv->mu */
    pthread_cond_t cv;
    int refs;                    /* holders: the connection, the stream, the scheduler */
    srv_req_state state;
    bool cancelled;              /* the client went away: the scheduler frees the slot */
    bool started;                /* prefill done: route known */
    bool routed_adapter;
    float gate_prob;             /* -1 when no gate ran */
    char *text;                  /* text safe to send (stop strings resolved) */
    size_t n_text, cap_text;
    int32_t n_gen;               /* generated tokens (EOS excluded) */
    int32_t *gen;                /* (n_gen) generated ids, set when done */
    srv_finish finish;
    int err_status;              /* != 0: failed with this HTTP status */
    char err_msg[256];
    double t_first;              /* time of the first token (0 = none yet) */
    struct srv_req *next;        /* queue link */
} srv_req;

typedef struct srv_metrics srv_metrics;
typedef struct srv_sched srv_sched;

typedef struct srv {
    srv_config cfg;
    pthread_mutex_t mu;
    srv_sched *sched;
    srv_metrics *metrics;
    pthread_mutex_t tok_mu;      /* tokenizer / chat renderer calls from connection threads */
    struct MHD_Daemon *daemon;
    volatile int shutting_down;
    int open_requests;           /* requests MHD has not completed yet (responses still being sent); under mu */
    uint64_t seed_counter;
    int32_t n_ctx;               /* the context's tokens per sequence */
    prism_sampling_params defaults;
} srv;

/* ---- server life (http.c) */
/* Loads nothing: cfg's handles must stay valid until srv_free. Starts the
 * scheduler thread and the HTTP daemon; fails with a message when the port
 * cannot be bound or the context cannot be allocated. */
prism_status srv_start(const srv_config *cfg, srv **out);
/* Stops accepting connections, lets in-flight requests finish for up to
 * cfg.shutdown_timeout seconds, cancels the rest, and stops every thread. */
void srv_stop(srv *s);
void srv_free(srv *s);
int srv_port(const srv *s);

/* ---- requests and responses (api.c) */
typedef struct {
    int status;          /* HTTP status */
    const char *type;    /* OpenAI error type, e.g. "invalid_request_error" */
    char param[64];      /* offending field ("" = null) */
    const char *code;    /* NULL = null */
    char message[512];
} api_error;

/* Sets e and returns NULL (for one-line error returns). */
void *api_fail(api_error *e, int status, const char *type, const char *param, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 6, 7)));
/* Parses and validates an OpenAI request body into a new request (one
 * reference, held by the caller), tokenized and checked against the context. */
srv_req *api_parse(srv *s, srv_endpoint ep, const char *body, size_t len, api_error *e);
void srv_req_release(srv *s, srv_req *r); /* drops a reference (caller holds srv->mu) */
/* The client went away: the scheduler drops the request at its next step
 * (caller holds srv->mu). */
void srv_req_cancel(srv *s, srv_req *r);
/* {"error": {"message", "type", "param", "code"}} (caller frees). */
char *api_error_json(const api_error *e);
/* The whole non-streamed response of a finished request (caller holds srv->mu). */
char *api_response_json(const srv *s, const srv_req *r);
/* One SSE event "data: {...}\n\n" (caller frees): a delta of text (first =
 * the first chunk, which carries the role for chat), or, with fin set, the
 * closing chunk with its finish_reason; usage = the usage-only chunk. */
char *api_sse_chunk(const srv *s, const srv_req *r, const char *delta, size_t n, bool first, srv_finish fin, bool usage);
char *api_models_json(const srv *s);
const char *api_finish_name(srv_finish f);

/* ---- scheduler (scheduler.c) */
prism_status sched_new(srv *s, srv_sched **out);
/* Queues r (takes a reference). Returns 0, or 429 when the queue is full,
 * 503 when shutting down. Caller holds srv->mu. */
int sched_submit(srv *s, srv_req *r);
/* Wakes the scheduler (new work or a cancellation). Caller holds srv->mu. */
void sched_wake(srv *s);
/* Drain: no new admissions after the deadline, cancel the rest, join. */
void sched_stop(srv *s, double timeout_s);
void sched_free(srv_sched *q);
void sched_gauges(srv *s, int *queued, int *running); /* caller holds srv->mu */

/* ---- metrics (metrics.c) */
srv_metrics *metrics_new(void);
void metrics_free(srv_metrics *m);
void metrics_request(srv_metrics *m, const char *endpoint, int status);
void metrics_tokens(srv_metrics *m, int64_t prompt, int64_t completion);
void metrics_route(srv_metrics *m, bool adapter);
void metrics_latency(srv_metrics *m, double seconds, double ttft);
/* Prometheus text exposition (caller frees). */
char *metrics_render(srv_metrics *m, int queued, int running, int slots);

#endif
