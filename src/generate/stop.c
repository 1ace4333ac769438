/* stop.c — stop-string matching shared by prism_generate and prism serve. */
#include "generate/stop.h"

#include <string.h>

const char *stop_find(const char *text, const char *const *stop, int32_t n_stop) {
    const char *first = NULL;
    for (int32_t k = 0; k < n_stop; k++) {
        if (!stop[k][0]) continue;
        const char *f = strstr(text, stop[k]);
        if (f && (!first || f < first)) first = f;
    }
    return first;
}

size_t stop_holdback(const char *text, size_t n, const char *const *stop, int32_t n_stop) {
    size_t best = 0;
    for (int32_t k = 0; k < n_stop; k++) {
        size_t ls = strlen(stop[k]);
        for (size_t len = ls > 0 ? ls - 1 : 0; len > best; len--)
            if (len <= n && !memcmp(text + n - len, stop[k], len)) { best = len; break; }
    }
    return best;
}
