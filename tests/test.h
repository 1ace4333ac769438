/* test.h — minimal test harness: CHECK counts, check_close reports the worst
 * difference, TEST_MAIN_END prints "N passed, N failed" and sets the exit code. */
#ifndef PRISM_TEST_H
#define PRISM_TEST_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

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

/* Runs cmd through the shell with stderr merged into stdout. Returns the exit
 * status (128 when killed by a signal, 127 when it cannot start); *out, when
 * out is not NULL, receives the output (caller frees). */
static inline int test_run(const char *cmd, char **out) {
    char full[8192];
    snprintf(full, sizeof full, "%s 2>&1", cmd);
    FILE *p = popen(full, "r");
    if (!p) {
        if (out) *out = strdup("");
        return 127;
    }
    size_t cap = 1 << 16, n = 0, r;
    char *buf = malloc(cap);
    while ((r = fread(buf + n, 1, cap - n - 1, p)) > 0) {
        n += r;
        if (n + 1 == cap) buf = realloc(buf, cap *= 2);
    }
    buf[n] = 0;
    int st = pclose(p);
    if (out) *out = buf;
    else free(buf);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128;
}

/* A whole file, NUL-terminated (caller frees); NULL if unreadable. *n, when
 * n is not NULL, receives its size. */
static inline char *test_slurp(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    if (len < 0) len = 0;
    char *s = malloc((size_t)len + 1);
    if (fread(s, 1, (size_t)len, f) != (size_t)len) len = 0;
    s[len] = 0;
    fclose(f);
    if (n) *n = (size_t)len;
    return s;
}

#endif
