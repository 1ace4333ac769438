/* test.h — minimal test harness: CHECK counts, check_close reports the worst
 * difference, TEST_MAIN_END prints "N passed, N failed" and sets the exit code. */
#ifndef PRISM_TEST_H
#define PRISM_TEST_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

static int t_pass, t_fail;

#define CHECK(cond, ...)                                                              \
    do {                                                                              \
        if (cond) {                                                                   \
            t_pass++;                                                                 \
        } else {                                                                      \
            t_fail++;                                                                 \
            fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond);           \
            fprintf(stderr, __VA_ARGS__);                                             \
            fputc('\n', stderr);                                                      \
        }                                                                             \
    } while (0)

/* Relative error ||a-b|| / ||b|| over n values; prints label, error, worst element. */
static inline double rel_err(const float *a, const float *b, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)a[i] - b[i];
        num += d * d;
        den += (double)b[i] * b[i];
    }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

static inline int check_close(const char *label, const float *a, const float *b, size_t n, double tol) {
    double e = rel_err(a, b, n);
    size_t worst = 0;
    double wd = -1;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - b[i]);
        if (d > wd || d != d) { wd = d; worst = i; }
    }
    int ok = e < tol && e == e;
    if (ok) t_pass++; else t_fail++;
    fprintf(ok ? stdout : stderr, "%s %-40s rel_err %.3e (tol %.0e) worst |diff| %.3e at %zu (got %.6g want %.6g)\n",
            ok ? "ok  " : "FAIL", label, e, tol, wd, worst, n ? a[worst] : 0.0, n ? b[worst] : 0.0);
    return ok;
}

#define TEST_MAIN_END()                                          \
    do {                                                         \
        printf("%d passed, %d failed\n", t_pass, t_fail);        \
        return t_fail ? 1 : 0;                                   \
    } while (0)

static inline const char *fixtures_root(void) {
    const char *r = getenv("PRISM_FIXTURES");
    return r && *r ? r : "../shared/fixtures";
}

#endif
