/* args.c — option parsing shared by the subcommands. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "util/timer.h"

_Noreturn void cli_die(const char *what) {
    fprintf(stderr, "prism: %s: %s\n", what, prism_last_error());
    exit(1);
}

_Noreturn void cli_usage_error(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fputs("prism: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputs(" (see prism --help)\n", stderr);
    va_end(ap);
    exit(2);
}

const char *cli_value(int argc, char **argv, int *i) {
    if (*i + 1 >= argc) cli_usage_error("option %s needs a value", argv[*i]);
    return argv[++*i];
}

long cli_long(const char *opt, const char *v, long lo, long hi) {
    char *end;
    errno = 0;
    long x = strtol(v, &end, 10);
    if (errno || end == v || *end) cli_usage_error("%s: expected an integer, got \"%s\"", opt, v);
    if (x < lo || x > hi) cli_usage_error("%s: %ld is outside %ld..%ld", opt, x, lo, hi);
    return x;
}

double cli_double(const char *opt, const char *v, double lo, double hi) {
    char *end;
    errno = 0;
    double x = strtod(v, &end);
    if (errno || end == v || *end || x != x) cli_usage_error("%s: expected a number, got \"%s\"", opt, v);
    if (x < lo || x > hi) cli_usage_error("%s: %g is outside %g..%g", opt, x, lo, hi);
    return x;
}

bool cli_common_opt(cli_common *c, int argc, char **argv, int *i) {
    const char *a = argv[*i];
    if (!strcmp(a, "--model") || !strcmp(a, "-m")) c->model = cli_value(argc, argv, i);
    else if (!strcmp(a, "--threads") || !strcmp(a, "-t")) c->threads = (int32_t)cli_long(a, cli_value(argc, argv, i), 1, 1024);
    else if (!strcmp(a, "--ctx")) c->n_ctx = (int32_t)cli_long(a, cli_value(argc, argv, i), 1, 1 << 20);
    else if (!strcmp(a, "--chat-template")) c->chat_template = cli_value(argc, argv, i);
    else if (!strcmp(a, "--device")) c->device = cli_value(argc, argv, i);
    else if (!strcmp(a, "--precision")) {
        const char *v = cli_value(argc, argv, i);
        if (!strcmp(v, "exact")) c->precision = PRISM_PRECISION_EXACT;
        else if (!strcmp(v, "fast")) c->precision = PRISM_PRECISION_FAST;
        else cli_usage_error("--precision: expected exact or fast, got \"%s\"", v);
    } else return false;
    return true;
}

int32_t *cli_parse_ids(const char *opt, const char *s, int32_t *n) {
    size_t cap = 16;
    int32_t *ids = malloc(cap * sizeof *ids);
    *n = 0;
    const char *p = s;
    while (*p == ' ' || *p == '[') p++;
    while (*p && *p != ']') {
        char *end;
        errno = 0;
        long v = strtol(p, &end, 10);
        if (end == p || errno || v < 0 || v > INT32_MAX) cli_usage_error("%s: malformed id list at \"%.20s\" (expected 1,2,3)", opt, p);
        if ((size_t)*n == cap) ids = realloc(ids, (cap *= 2) * sizeof *ids);
        ids[(*n)++] = (int32_t)v;
        p = end;
        while (*p == ' ' || *p == '\n') p++;
        if (*p == ',') p++;
        else if (*p && *p != ']') cli_usage_error("%s: malformed id list at \"%.20s\" (expected 1,2,3)", opt, p);
        while (*p == ' ' || *p == '\n') p++;
    }
    if (*n == 0) cli_usage_error("%s: empty id list", opt);
    return ids;
}

char *cli_read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "prism: %s: cannot open: %s\n", path, strerror(errno));
        exit(1);
    }
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap);
    size_t r;
    while ((r = fread(buf + n, 1, cap - n - 1, f)) > 0) {
        n += r;
        if (cap - n - 1 == 0) buf = realloc(buf, cap *= 2);
    }
    if (ferror(f)) {
        fprintf(stderr, "prism: %s: read error\n", path);
        exit(1);
    }
    fclose(f);
    buf[n] = 0;
    if (len) *len = n;
    return buf;
}

prism_model *cli_load_model(const cli_common *c, double *load_s) {
    if (!c->model) cli_usage_error("--model DIR is required");
    prism_model_params mp = prism_model_default_params();
    mp.n_threads = c->threads;
    mp.precision = c->precision;
    cli_apply_device(c->device, &mp);
    double t0 = prism_now();
    prism_model *m = NULL;
    if (prism_model_load(c->model, mp, &m)) cli_die("loading model");
    if (load_s) *load_s = prism_now() - t0;
    return m;
}

void cli_apply_device(const char *device, prism_model_params *mp) {
    if (!device) return;
    if (prism_device_parse(device, &mp->device)) cli_usage_error("--device: %s", prism_last_error());
}
