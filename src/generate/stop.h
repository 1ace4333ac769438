/* stop.h — stop strings for streamed generation (prism_generate and the server). */
#ifndef PRISM_GENERATE_STOP_H
#define PRISM_GENERATE_STOP_H

#include <stddef.h>
#include <stdint.h>

/* First occurrence in text of any non-empty stop string, or NULL. */
const char *stop_find(const char *text, const char *const *stop, int32_t n_stop);

/* Length of the longest suffix of text[0..n) that is a proper prefix of a
 * stop string: that much must be held back from streaming until resolved. */
size_t stop_holdback(const char *text, size_t n, const char *const *stop, int32_t n_stop);

#endif
