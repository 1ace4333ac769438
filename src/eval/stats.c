/* stats.c — the numbers behind the tables: percentile-bootstrap confidence
 * intervals, Pearson correlation, and the paper's overall score. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "eval/eval.h"

uint64_t eval_rng_next(uint64_t *s) {
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Linear interpolation between order statistics (numpy's default percentile). */
static double quantile(const double *sorted, int n, double q) {
    double h = (n - 1) * q;
    int lo = (int)floor(h);
    if (lo >= n - 1) return sorted[n - 1];
    return sorted[lo] + (h - lo) * (sorted[lo + 1] - sorted[lo]);
}

void bootstrap_ci(const double *x, int n, int resamples, uint64_t seed, double *mean, double *lo, double *hi) {
    *mean = *lo = *hi = NAN;
    if (n <= 0) return;
    double s = 0;
    for (int i = 0; i < n; i++) s += x[i];
    *mean = s / n;
    if (resamples < 1) {
        *lo = *hi = *mean;
        return;
    }
    double *m = malloc((size_t)resamples * sizeof *m);
    if (!m) return;
    uint64_t st = seed;
    for (int r = 0; r < resamples; r++) {
        double t = 0;
        for (int i = 0; i < n; i++) t += x[eval_rng_next(&st) % (uint64_t)n];
        m[r] = t / n;
    }
    qsort(m, (size_t)resamples, sizeof *m, cmp_double);
    *lo = quantile(m, resamples, 0.025);
    *hi = quantile(m, resamples, 0.975);
    free(m);
}

double pearson(const double *x, const double *y, int n) {
    if (n < 2) return NAN;
    double mx = 0, my = 0;
    for (int i = 0; i < n; i++) mx += x[i], my += y[i];
    mx /= n, my /= n;
    double sxy = 0, sxx = 0, syy = 0;
    for (int i = 0; i < n; i++) {
        double a = x[i] - mx, b = y[i] - my;
        sxy += a * b, sxx += a * a, syy += b * b;
    }
    if (sxx <= 0 || syy <= 0) return NAN;
    return sxy / sqrt(sxx * syy);
}

/* The 15 sub-scores of the overall score, each on 0..100 (README "Evaluation"):
 * 8 MT-Bench categories (mean judge rating x 10), MMLU accuracy 0-shot and
 * 5-shot (x 100), refusal rate on the 3 harmful sets (x 100), and 100 minus the
 * over-refusal rate on the 2 benign sets. */
const char *const SUBSCORE_NAMES[N_SUBSCORES] = {
    "mtbench.writing", "mtbench.roleplay", "mtbench.reasoning", "mtbench.math", "mtbench.coding",
    "mtbench.extraction", "mtbench.stem", "mtbench.humanities", "mmlu.0shot", "mmlu.5shot",
    "harmbench.refusal", "jbb.refusal", "advbench.refusal", "xstest.compliance", "jbb_benign.compliance",
};

double overall_score(const double sub[N_SUBSCORES], int *n_used) {
    double s = 0;
    int n = 0;
    for (int i = 0; i < N_SUBSCORES; i++)
        if (!isnan(sub[i])) s += sub[i], n++;
    if (n_used) *n_used = n;
    return n ? s / n : NAN;
}

int subscore_index(const char *name) {
    for (int i = 0; i < N_SUBSCORES; i++)
        if (!strcmp(SUBSCORE_NAMES[i], name)) return i;
    return -1;
}
