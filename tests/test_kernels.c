/* test_kernels.c — kern_matmul and kern_embed_row against an independent
 * double-precision reference, for every ISA tier this CPU has.
 *
 * The reference decodes BF16/F16 with ldexp() from the bit fields (not with
 * the library's helpers) and accumulates in double. Each tier must match it
 * to 1e-6 relative error (||y - ref|| / ||ref||) in EXACT mode and to 5e-3 in
 * FAST mode (x rounded to BF16), and must match the generic tier's output
 * to 1e-6 in EXACT mode. Shapes include odd K and N, T from 1 to 130, K
 * beyond the kernels' K blocks, a W pointer 2 bytes off alignment, and bias
 * on and off. */
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/kernels.h"
#include "test.h"

/* ------------------------------------------------------------- independent decoding */

static double ref_bf16(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    int sign = u >> 31, e = (u >> 23) & 0xff;
    uint32_t m = u & 0x7fffff;
    double v;
    if (e == 0xff) v = m ? NAN : INFINITY;
    else if (e == 0) v = ldexp((double)m, -149);
    else v = ldexp((double)(m | 0x800000), e - 150);
    return sign ? -v : v;
}

static double ref_f16(uint16_t h) {
    int sign = h >> 15, e = (h >> 10) & 0x1f, m = h & 0x3ff;
    double v;
    if (e == 31) v = m ? NAN : INFINITY;
    else if (e == 0) v = ldexp((double)m, -24);
    else v = ldexp((double)(m | 0x400), e - 25);
    return sign ? -v : v;
}

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static double urand(void) { /* uniform [-1, 1) */
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (double)(rng_state >> 11) / 9007199254740992.0 * 2.0 - 1.0;
}

/* ------------------------------------------------------------- conversions */

static void test_embed_exhaustive(void) {
    /* Table of all 65536 codes, read back row by row through kern_embed_row. */
    uint16_t *tab = malloc(65536 * 2);
    float *out = malloc(256 * sizeof(float));
    for (int i = 0; i < 65536; i++) tab[i] = (uint16_t)i;
    const st_dtype dts[2] = {ST_BF16, ST_F16};
    for (int d = 0; d < 2; d++) {
        int bad = 0, first_bad = -1;
        for (int row = 0; row < 256; row++) {
            kern_embed_row(out, tab, dts[d], row, 256);
            for (int i = 0; i < 256; i++) {
                int code = row * 256 + i;
                double want = dts[d] == ST_BF16 ? ref_bf16((uint16_t)code) : ref_f16((uint16_t)code);
                int ok = isnan(want) ? isnan(out[i]) : (double)out[i] == want && !signbit(out[i]) == !signbit(want);
                if (!ok && !bad++) first_bad = code;
            }
        }
        CHECK(bad == 0, "%s: %d of 65536 codes decode wrong, first 0x%04x", st_dtype_name(dts[d]), bad, first_bad);
    }
    /* F32 table, unaligned: exact copy */
    unsigned char *raw = malloc(4 * 100 + 2);
    float vals[100];
    for (int i = 0; i < 100; i++) vals[i] = (float)urand();
    memcpy(raw + 2, vals, sizeof vals);
    kern_embed_row(out, raw + 2, ST_F32, 3, 25);
    CHECK(memcmp(out, vals + 75, 25 * sizeof(float)) == 0, "F32 embed row 3 differs");
    free(raw);
    free(tab);
    free(out);
}

/* ------------------------------------------------------------- matmul */

typedef struct {
    int64_t T, K, N;
} shape;

typedef struct {
    const char *isa;
    double worst[3][2]; /* [dtype][prec] worst rel error vs the double reference */
    double worst_vs_generic[3];
    int n_cases;
} tier_stats;

static const char *prec_name(prism_precision p) { return p == PRISM_PRECISION_FAST ? "FAST" : "EXACT"; }

/* Weights: random values exactly representable in dt, stored 2 bytes past an
 * aligned address. wref receives the same values in double. */
static unsigned char *make_weights(st_dtype dt, int64_t n, double *wref, unsigned char **base) {
    size_t es = st_dtype_size(dt);
    *base = malloc((size_t)n * es + 2 + 64);
    unsigned char *W = *base + 2;
    for (int64_t i = 0; i < n; i++) {
        float f = (float)urand();
        if (dt == ST_BF16) {
            uint16_t h = st_f32_to_bf16(f);
            memcpy(W + 2 * i, &h, 2);
            wref[i] = ref_bf16(h);
        } else if (dt == ST_F16) {
            uint16_t h = st_f32_to_f16(f);
            memcpy(W + 2 * i, &h, 2);
            wref[i] = ref_f16(h);
        } else {
            memcpy(W + 4 * i, &f, 4);
            wref[i] = f;
        }
    }
    return W;
}

static void run_shape(shape s, st_dtype dt, int with_bias, tier_stats *tiers, int n_tiers) {
    const int64_t T = s.T, K = s.K, N = s.N;
    double *wref = malloc((size_t)(N * K) * sizeof(double));
    unsigned char *wbase;
    unsigned char *W = make_weights(dt, N * K, wref, &wbase);
    float *x = malloc((size_t)(T * K) * sizeof(float));
    float *bias = malloc((size_t)N * sizeof(float));
    float *ref = malloc((size_t)(T * N) * sizeof(float));
    float *gen = malloc((size_t)(T * N) * sizeof(float));
    float *y = malloc((size_t)(T * N) * sizeof(float));
    for (int64_t i = 0; i < T * K; i++) x[i] = (float)urand();
    for (int64_t i = 0; i < N; i++) bias[i] = (float)urand();
    for (int64_t t = 0; t < T; t++)
        for (int64_t n = 0; n < N; n++) {
            double acc = with_bias ? bias[n] : 0.0;
            for (int64_t k = 0; k < K; k++) acc += (double)x[t * K + k] * wref[n * K + k];
            ref[t * N + n] = (float)acc;
        }
    const float *b = with_bias ? bias : NULL;
    int d = dt == ST_F32 ? 0 : dt == ST_BF16 ? 1 : 2;

    kern_force_isa("generic");
    kern_matmul(gen, x, W, dt, b, T, K, N, PRISM_PRECISION_EXACT);
    for (int ti = 0; ti < n_tiers; ti++) {
        tier_stats *ts = &tiers[ti];
        kern_force_isa(ts->isa);
        for (int p = 0; p < 2; p++) {
            prism_precision prec = p ? PRISM_PRECISION_FAST : PRISM_PRECISION_EXACT;
            for (int64_t i = 0; i < T * N; i++) y[i] = NAN; /* every output must be written */
            kern_matmul(y, x, W, dt, b, T, K, N, prec);
            double e = rel_err(y, ref, (size_t)(T * N));
            double tol = p ? 5e-3 : 1e-6;
            CHECK(e < tol, "%s %s %s T=%lld K=%lld N=%lld bias=%d: rel_err %.3e vs double reference", ts->isa,
                  st_dtype_name(dt), prec_name(prec), (long long)T, (long long)K, (long long)N, with_bias, e);
            if (!(e <= ts->worst[d][p])) ts->worst[d][p] = e; /* NaN sticks */
            if (!p) {
                double eg = rel_err(y, gen, (size_t)(T * N));
                CHECK(eg < 1e-6, "%s %s T=%lld K=%lld N=%lld bias=%d: rel_err %.3e vs generic", ts->isa,
                      st_dtype_name(dt), (long long)T, (long long)K, (long long)N, with_bias, eg);
                if (!(eg <= ts->worst_vs_generic[d])) ts->worst_vs_generic[d] = eg;
            }
        }
        ts->n_cases++;
    }
    kern_force_isa(NULL);
    free(wref);
    free(wbase);
    free(x);
    free(bias);
    free(ref);
    free(gen);
    free(y);
}

static void test_isa_name(void) {
    __builtin_cpu_init();
    const char *want = "generic";
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) want = "avx2";
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq"))
        want = __builtin_cpu_supports("avx512bf16") ? "avx512bf16" : "avx512";
    /* PRISM_ISA caps the tier */
    static const char *const tiers[] = {"generic", "avx2", "avx512", "avx512bf16"};
    const char *cap = getenv("PRISM_ISA");
    int wi = 0, ci = 4;
    for (int k = 0; k < 4; k++) {
        if (!strcmp(want, tiers[k])) wi = k;
        if (cap && !strcmp(cap, tiers[k])) ci = k;
    }
    if (ci < wi) want = tiers[ci];
    CHECK(strcmp(kern_isa_name(), want) == 0, "kern_isa_name() = %s, CPU says %s", kern_isa_name(), want);
    kern_force_generic(1);
    CHECK(strcmp(kern_isa_name(), "generic") == 0, "forced generic, got %s", kern_isa_name());
    kern_force_generic(0);
    CHECK(strcmp(kern_isa_name(), want) == 0, "unforced: %s", kern_isa_name());
    CHECK(kern_force_isa("no-such-isa") == 0, "unknown tier accepted");
    printf("ISA: %s\n", want);
}

int main(void) {
    test_isa_name();
    test_embed_exhaustive();

    tier_stats tiers[4];
    int n_tiers = 0;
    const char *names[4] = {"generic", "avx2", "avx512", "avx512bf16"};
    for (int i = 0; i < 4; i++) {
        if (!kern_force_isa(names[i])) continue;
        memset(&tiers[n_tiers], 0, sizeof tiers[0]);
        tiers[n_tiers++].isa = names[i];
    }
    kern_force_isa(NULL);

    static const int64_t Ts[] = {1, 2, 3, 7, 16, 33, 130};
    static const int64_t KNs[][2] = {{1, 1},   {5, 3},    {17, 33},  {64, 64},   {100, 130},
                                     {257, 65}, {33, 200}, {896, 129}, {1101, 70}, {4864, 40}};
    static const st_dtype dts[3] = {ST_F32, ST_BF16, ST_F16};
    int idx = 0;
    for (size_t ti = 0; ti < sizeof Ts / sizeof Ts[0]; ti++)
        for (size_t kn = 0; kn < sizeof KNs / sizeof KNs[0]; kn++)
            for (int d = 0; d < 3; d++, idx++) {
                shape s = {Ts[ti], KNs[kn][0], KNs[kn][1]};
                run_shape(s, dts[d], idx % 2, tiers, n_tiers);
            }

    /* Odd thread counts exercise the T split of small-N GEMMs. */
    int saved = omp_get_max_threads();
    omp_set_num_threads(3);
    run_shape((shape){130, 300, 130}, ST_BF16, 1, tiers, n_tiers);
    run_shape((shape){40, 64, 192}, ST_F16, 0, tiers, n_tiers);
    omp_set_num_threads(1);
    run_shape((shape){33, 257, 100}, ST_BF16, 1, tiers, n_tiers);
    omp_set_num_threads(saved);

    for (int i = 0; i < n_tiers; i++) {
        printf("%-11s %3d cases  worst rel err vs double: EXACT F32 %.1e BF16 %.1e F16 %.1e | FAST BF16 %.1e"
               "  | vs generic %.1e %.1e %.1e\n",
               tiers[i].isa, tiers[i].n_cases, tiers[i].worst[0][0], tiers[i].worst[1][0], tiers[i].worst[2][0],
               tiers[i].worst[1][1], tiers[i].worst_vs_generic[0], tiers[i].worst_vs_generic[1],
               tiers[i].worst_vs_generic[2]);
    }
    TEST_MAIN_END();
}
