/* timer.h — monotonic wall clock in seconds. */
#ifndef PRISM_UTIL_TIMER_H
#define PRISM_UTIL_TIMER_H

#include <time.h>

static inline double prism_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

#endif
