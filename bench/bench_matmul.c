/* bench_matmul.c — kern_matmul on Qwen2.5-0.5B shapes with BF16 weights.
 *
 * Decode (T = 1): GB/s of weights streamed, against the read bandwidth of a
 * multi-threaded streaming sum over 1 GiB. Weight copies are rotated so that
 * more than 256 MiB is touched between reuses (the 32 MiB L3 cannot help, as
 * in a real forward pass).
 * Prefill (T = 128, 512): GFLOP/s (2·T·K·N per call) in EXACT and FAST, plus
 * the matmul-only prompt-processing rate of the whole model (24 layers of
 * q, k, v, o, gate, up, down).
 * Usage: bench_matmul [isa]   (isa: avx512bf16, avx512, avx2, generic) */
#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/kernels.h"

static double now(void) { return omp_get_wtime(); }

static uint64_t rng = 88172645463325252ull;
static float frand(void) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (float)((double)(rng >> 11) / 9007199254740992.0 * 2.0 - 1.0);
}

/* Best-of-5 read bandwidth of a parallel sum over 1 GiB (GB/s, 1e9 B).
 * Eight independent sums per thread keep the loop load-bound. */
static double read_bandwidth(void) {
    const size_t n = (size_t)1 << 27; /* uint64 words = 1 GiB */
    uint64_t *buf = malloc(n * sizeof(uint64_t));
    if (!buf) return 0;
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) buf[i] = i; /* first touch by the reading thread */
    double best = 0;
    volatile uint64_t sink = 0;
    for (int rep = 0; rep < 5; rep++) {
        double t0 = now();
        uint64_t total = 0;
#pragma omp parallel for schedule(static) reduction(+ : total)
        for (size_t i = 0; i < n; i += 8) {
            uint64_t s = 0;
            for (int j = 0; j < 8; j++) s += buf[i + j];
            total += s;
        }
        double dt = now() - t0;
        sink += total;
        if (n * 8 / dt / 1e9 > best) best = n * 8 / dt / 1e9;
    }
    (void)sink;
    free(buf);
    return best;
}

typedef struct {
    const char *name;
    int64_t K, N;
} shape;

/* n_copies weight matrices of N×K BF16 (random). */
static uint16_t **make_copies(int64_t K, int64_t N, int n_copies) {
    uint16_t **w = malloc(n_copies * sizeof *w);
    for (int c = 0; c < n_copies; c++) {
        w[c] = malloc((size_t)(K * N) * 2);
        for (int64_t i = 0; i < K * N; i++) w[c][i] = st_f32_to_bf16(frand() * 0.05f);
    }
    return w;
}

static void free_copies(uint16_t **w, int n) {
    for (int c = 0; c < n; c++) free(w[c]);
    free(w);
}

/* Seconds per call: best of 5 batches of reps calls (rotating weight
 * copies), so that a batch disturbed by another process does not count. */
static double time_calls(uint16_t **w, int n_copies, float *y, const float *x, int64_t T, int64_t K, int64_t N,
                         prism_precision prec, int reps) {
    kern_matmul(y, x, w[0], ST_BF16, NULL, T, K, N, prec); /* warm-up */
    double best = 1e30;
    for (int b = 0; b < 5; b++) {
        double t0 = now();
        for (int r = 0; r < reps; r++) kern_matmul(y, x, w[r % n_copies], ST_BF16, NULL, T, K, N, prec);
        double t = (now() - t0) / reps;
        if (t < best) best = t;
    }
    return best;
}

int main(int argc, char **argv) {
    if (argc > 1 && !kern_force_isa(argv[1])) {
        fprintf(stderr, "ISA %s not available on this CPU\n", argv[1]);
        return 1;
    }
    printf("kern_matmul: isa %s, %d threads\n", kern_isa_name(), omp_get_max_threads());
    const double bw = read_bandwidth();
    printf("read bandwidth (parallel sum over 1 GiB): %.1f GB/s\n\n", bw);

    static const shape shapes[] = {
        {"q/o  896->896", 896, 896},       {"k/v  896->128", 896, 128},    {"gate/up 896->4864", 896, 4864},
        {"down 4864->896", 4864, 896},     {"lm_head 896->151936", 896, 151936},
    };
    const int n_shapes = sizeof shapes / sizeof shapes[0];

    printf("decode T=1, BF16 weights (copies rotated, > 256 MiB between reuses)\n");
    printf("  %-22s %10s %9s %8s\n", "shape", "us/call", "GB/s", "of bw");
    float *x = malloc((size_t)512 * 4864 * sizeof(float));
    float *y = malloc((size_t)512 * 151936 * sizeof(float));
    for (int64_t i = 0; i < 512 * 4864; i++) x[i] = frand();
    for (int s = 0; s < n_shapes; s++) {
        const int64_t K = shapes[s].K, N = shapes[s].N, bytes = K * N * 2;
        int copies = (int)((((int64_t)256 << 20) + bytes - 1) / bytes) + 1;
        uint16_t **w = make_copies(K, N, copies);
        int reps = (int)(((int64_t)1 << 30) / bytes);
        if (reps < copies) reps = copies;
        double t = time_calls(w, copies, y, x, 1, K, N, PRISM_PRECISION_EXACT, reps);
        printf("  %-22s %10.1f %9.1f %7.0f%%\n", shapes[s].name, t * 1e6, bytes / t / 1e9, 100 * bytes / t / 1e9 / bw);
        free_copies(w, copies);
    }

    printf("\nprefill, BF16 weights: GFLOP/s (2*T*K*N per call)\n");
    printf("  %-22s %5s %10s %10s\n", "shape", "T", "EXACT", "FAST");
    double layer_s[2][2] = {{0}}; /* [T index][prec] seconds for one layer */
    static const int64_t Ts[2] = {128, 512};
    /* per layer: q, o (896->896), k, v (896->128), gate, up (896->4864), down */
    static const int per_layer[] = {2, 2, 2, 1, 0};
    for (int s = 0; s < n_shapes; s++) {
        const int64_t K = shapes[s].K, N = shapes[s].N;
        if (N > 100000) continue; /* the LM head runs on the last token only */
        uint16_t **w = make_copies(K, N, 1);
        for (int ti = 0; ti < 2; ti++) {
            const int64_t T = Ts[ti];
            double gf[2];
            for (int p = 0; p < 2; p++) {
                const double flop = 2.0 * T * K * N;
                int reps = (int)(4e9 / flop);
                if (reps < 3) reps = 3;
                double t = time_calls(w, 1, y, x, T, K, N, p ? PRISM_PRECISION_FAST : PRISM_PRECISION_EXACT, reps);
                gf[p] = flop / t / 1e9;
                layer_s[ti][p] += per_layer[s] * t;
            }
            printf("  %-22s %5lld %10.1f %10.1f\n", shapes[s].name, (long long)T, gf[0], gf[1]);
        }
        free_copies(w, 1);
    }
    printf("\nQwen2.5-0.5B matmuls only (24 layers, no LM head): prompt tokens/s\n");
    for (int ti = 0; ti < 2; ti++) {
        const double layer_flop = 2.0 * Ts[ti] * (2.0 * 896 * 896 + 2.0 * 896 * 128 + 3.0 * 896 * 4864);
        printf("  T=%-4lld EXACT %7.0f tok/s (%5.1f GFLOP/s)   FAST %7.0f tok/s (%5.1f GFLOP/s)\n",
               (long long)Ts[ti], Ts[ti] / (24 * layer_s[ti][0]), layer_flop / layer_s[ti][0] / 1e9,
               Ts[ti] / (24 * layer_s[ti][1]), layer_flop / layer_s[ti][1] / 1e9);
    }
    free(x);
    free(y);
    return 0;
}
