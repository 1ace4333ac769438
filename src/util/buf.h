/* buf.h — growable arrays: token ids and NUL-terminated text. Both return 0
 * when out of memory (the buffer is then unchanged). */
#ifndef PRISM_UTIL_BUF_H
#define PRISM_UTIL_BUF_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static inline int buf_push_i32(int32_t **v, size_t *n, size_t *cap, int32_t x) {
    if (*n == *cap) {
        size_t c = *cap ? *cap * 2 : 256;
        int32_t *p = realloc(*v, c * sizeof *p);
        if (!p) return 0;
        *v = p;
        *cap = c;
    }
    (*v)[(*n)++] = x;
    return 1;
}

/* Appends len bytes of t; *buf stays NUL-terminated. */
static inline int buf_push_text(char **buf, size_t *n, size_t *cap, const char *t, size_t len) {
    if (*n + len + 1 > *cap) {
        size_t c = (*n + len + 1) * 2;
        char *p = realloc(*buf, c);
        if (!p) return 0;
        *buf = p;
        *cap = c;
    }
    memcpy(*buf + *n, t, len);
    *n += len;
    (*buf)[*n] = 0;
    return 1;
}

#endif
