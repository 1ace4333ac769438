/* error.h — thread-local error message behind prism_last_error(). */
#ifndef PRISM_UTIL_ERROR_H
#define PRISM_UTIL_ERROR_H

#include "prism.h"

/* Records a printf-style message and returns code, so callers can write
 *   return prism_error(PRISM_E_FORMAT, "%s: tensor %s: ...", path, name); */
prism_status prism_error(prism_status code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Prefixes the current message with "ctx: " (for adding a file name upstream). */
void prism_error_prefix(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void prism_error_clear(void);

#endif
