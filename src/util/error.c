/* error.c — per-thread last-error message; the library reports, the CLI decides. */
#include "util/error.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static _Thread_local char g_msg[2048];

prism_status prism_error(prism_status code, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(g_msg, sizeof g_msg, fmt, ap);
    va_end(ap);
    return code;
}

void prism_error_prefix(const char *fmt, ...) {
    char pre[1024], old[sizeof g_msg];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(pre, sizeof pre, fmt, ap);
    va_end(ap);
    memcpy(old, g_msg, sizeof old);
    size_t n = strlen(pre);
    if (n > sizeof g_msg - 3) n = sizeof g_msg - 3;
    memcpy(g_msg, pre, n);
    g_msg[n++] = ':';
    g_msg[n++] = ' ';
    size_t rest = strlen(old);
    if (rest > sizeof g_msg - 1 - n) rest = sizeof g_msg - 1 - n;
    memcpy(g_msg + n, old, rest);
    g_msg[n + rest] = 0;
}

void prism_error_clear(void) { g_msg[0] = 0; }

const char *prism_last_error(void) { return g_msg; }

const char *prism_status_str(prism_status s) {
    switch (s) {
    case PRISM_OK: return "ok";
    case PRISM_E_IO: return "I/O error";
    case PRISM_E_FORMAT: return "malformed input";
    case PRISM_E_UNSUPPORTED: return "unsupported";
    case PRISM_E_ARG: return "invalid argument";
    case PRISM_E_NOMEM: return "out of memory";
    case PRISM_E_RANGE: return "out of capacity";
    }
    return "unknown error";
}
