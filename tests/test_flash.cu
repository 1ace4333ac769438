/* test_flash.cu — the LoRA trainer's tensor-core attention (src/cuda/flash.cu)
 * against a double-precision reference of the same math, on random inputs:
 * output (BF16 rows) and log-sum-exp of the forward, D = rowsum(dO ⊙ O), and dQ, dK, dV
 * — for several sequences packed in one pass (lengths across and inside the
 * 64-position tiles), grouped-query heads, a sliding window, head dims that
 * pad to 16, 32, 64 and 128 and one that is not a multiple of 4.
 *
 * Built two ways: by nvcc for a GPU (scripts/gpu_check.sh), and for the CPU
 * against tests/cuda_emu (make build/emu/test_flash; run by run_all.sh). q, k
 * and v are BF16 as the trainer stores them; the reference rounds them and dO
 * to BF16 as the kernels do, so what is left
 * is the BF16 rounding of probabilities and of dS: tolerances 1e-2 of each
 * tensor's largest magnitude (2e-2 for gradients). A wrong mask or tile
 * boundary shows as an error of order 1. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <vector>

#include "cuda/common.cuh"

static int passed, failed;

static void check(bool ok, const char *what, double v, double tol) {
    printf("%s %s: %.3e (tol %.1e)\n", ok ? "ok  " : "FAIL", what, v, tol);
    ok ? passed++ : failed++;
}

static float bf(float x) { return __bfloat162float(__float2bfloat16(x)); }

static uint64_t rs = 88172645463325252ull;
static float urand(void) {
    rs ^= rs << 13, rs ^= rs >> 7, rs ^= rs << 17;
    return (float)((rs >> 11) * (1.0 / 9007199254740992.0)) * 2.0f - 1.0f;
}

static float *dev(const std::vector<float> &h) {
    float *d = NULL;
    if (cudaMalloc((void **)&d, h.size() * 4 + 16) != cudaSuccess) {
        fprintf(stderr, "cudaMalloc failed\n");
        exit(2);
    }
    cudaMemcpy(d, h.data(), h.size() * 4, cudaMemcpyHostToDevice);
    return d;
}
static bf16 *dev_bf(const std::vector<float> &h) {
    std::vector<bf16> b(h.size());
    for (size_t i = 0; i < h.size(); i++) b[i] = __float2bfloat16(h[i]);
    bf16 *d = NULL;
    if (cudaMalloc((void **)&d, b.size() * sizeof(bf16) + 16) != cudaSuccess) {
        fprintf(stderr, "cudaMalloc failed\n");
        exit(2);
    }
    cudaMemcpy(d, b.data(), b.size() * sizeof(bf16), cudaMemcpyHostToDevice);
    return d;
}
static std::vector<float> host(const float *d, size_t n) {
    std::vector<float> h(n);
    cudaMemcpy(h.data(), d, n * 4, cudaMemcpyDeviceToHost);
    return h;
}

static double rel_max(const std::vector<float> &x, const std::vector<double> &r) {
    double e = 0, m = 0;
    for (size_t i = 0; i < r.size(); i++) {
        if (!isfinite(x[i])) return INFINITY; /* unwritten (the outputs start as NaN) or overflowed */
        e = fmax(e, fabs(x[i] - r[i])), m = fmax(m, fabs(r[i]));
    }
    return e / (m > 0 ? m : 1);
}

static void run_case(int32_t hd, int32_t nh, int32_t nkv, int32_t window, std::vector<int32_t> lens, float amp) {
    char what[256];
    int32_t T = 0;
    for (int32_t n : lens) T += n;
    const int64_t qd = (int64_t)nh * hd, kvd = (int64_t)nkv * hd;
    const int32_t group = nh / nkv;
    const float scale = 1.0f / sqrtf((float)hd);
    std::vector<float> q(T * qd), k(T * kvd), v(T * kvd), dO(T * qd);
    for (auto &x : q) x = amp * urand();
    for (auto &x : k) x = amp * urand();
    for (auto &x : v) x = urand();
    for (auto &x : dO) x = urand();
    /* reference (head-major per sequence, as the kernels' layout) */
    std::vector<double> O(T * qd), lse(T * nh), D(T * nh), dq(T * qd, 0.0), dk(T * kvd, 0.0), dv(T * kvd, 0.0);
    std::vector<flash_tile> tiles;
    std::vector<int32_t> sofs(T), slen(T);
    int32_t off = 0;
    for (int32_t n : lens) {
        for (int32_t p = 0; p < n; p += FLASH_TILE) tiles.push_back(flash_tile{off, n, p});
        for (int32_t i = 0; i < n; i++) sofs[off + i] = off, slen[off + i] = n;
        for (int32_t h = 0; h < nh; h++) {
            const int32_t g = h / group;
            auto Q = [&](int32_t i, int32_t d) { return (double)bf(q[((int64_t)off * nh + (int64_t)h * n + i) * hd + d]); };
            auto K = [&](int32_t j, int32_t d) { return (double)bf(k[((int64_t)off * nkv + (int64_t)g * n + j) * hd + d]); };
            auto V = [&](int32_t j, int32_t d) { return (double)bf(v[((int64_t)off * nkv + (int64_t)g * n + j) * hd + d]); };
            auto G = [&](int32_t i, int32_t d) { return (double)bf(dO[((int64_t)off * nh + (int64_t)h * n + i) * hd + d]); };
            std::vector<double> P(n), dP(n);
            for (int32_t i = 0; i < n; i++) {
                const int32_t j0 = window > 0 && i - window + 1 > 0 ? i - window + 1 : 0;
                double mx = -INFINITY, l = 0;
                for (int32_t j = j0; j <= i; j++) {
                    double s = 0;
                    for (int32_t d = 0; d < hd; d++) s += Q(i, d) * K(j, d);
                    P[j] = s * scale, mx = fmax(mx, P[j]);
                }
                for (int32_t j = j0; j <= i; j++) P[j] = exp(P[j] - mx), l += P[j];
                for (int32_t j = j0; j <= i; j++) P[j] /= l;
                const int64_t row = (int64_t)off * nh + (int64_t)h * n + i;
                lse[row] = mx + log(l);
                double Di = 0;
                for (int32_t d = 0; d < hd; d++) {
                    double o = 0;
                    for (int32_t j = j0; j <= i; j++) o += P[j] * V(j, d);
                    O[row * hd + d] = o;
                    Di += o * G(i, d);
                }
                D[row] = Di;
                for (int32_t j = j0; j <= i; j++) {
                    double s = 0;
                    for (int32_t d = 0; d < hd; d++) s += G(i, d) * V(j, d);
                    const double ds = P[j] * (s - Di) * scale;
                    const int64_t kr = (int64_t)off * nkv + (int64_t)g * n + j;
                    for (int32_t d = 0; d < hd; d++) {
                        dq[row * hd + d] += ds * K(j, d);
                        dk[kr * hd + d] += ds * Q(i, d);
                        dv[kr * hd + d] += P[j] * G(i, d);
                    }
                }
            }
        }
        off += n;
    }
    /* device */
    bf16 *d_q = dev_bf(q), *d_k = dev_bf(k), *d_v = dev_bf(v); /* the trainer stores them so */
    float *d_lse = dev(std::vector<float>(T * nh, NAN));
    bf16 *d_o = dev_bf(std::vector<float>(T * qd, NAN)); /* O: the pass's rows (T, nh·hd), NaN until written */
    float *d_dq = dev(std::vector<float>(T * qd, NAN)), *d_dk = dev(std::vector<float>(group * T * kvd, NAN));
    float *d_dv = dev(std::vector<float>(group * T * kvd, NAN)), *d_D = dev(std::vector<float>(T * nh, NAN));
    flash_tile *d_tiles = NULL;
    int32_t *d_meta = NULL;
    cudaMalloc((void **)&d_tiles, tiles.size() * sizeof(flash_tile));
    cudaMemcpy(d_tiles, tiles.data(), tiles.size() * sizeof(flash_tile), cudaMemcpyHostToDevice);
    cudaMalloc((void **)&d_meta, (size_t)T * 8);
    cudaMemcpy(d_meta, sofs.data(), (size_t)T * 4, cudaMemcpyHostToDevice);
    cudaMemcpy(d_meta + T, slen.data(), (size_t)T * 4, cudaMemcpyHostToDevice);
    const int nt = (int)tiles.size();
    k_flash_fwd(0, d_q, d_k, d_v, d_o, d_lse, d_tiles, nt, nh, nkv, hd, window, scale);
    std::vector<float> gl = host(d_lse, T * nh), go(T * qd);
    std::vector<bf16> orow(T * qd);
    cudaMemcpy(orow.data(), d_o, orow.size() * sizeof(bf16), cudaMemcpyDeviceToHost);
    /* O's rows back to the reference's head-major layout; dO into rows, as the kernels read it */
    std::vector<float> drow(T * qd);
    for (int32_t t = 0; t < T; t++)
        for (int32_t h = 0; h < nh; h++)
            for (int32_t d = 0; d < hd; d++) {
                const int64_t hm = ((int64_t)sofs[t] * nh + (int64_t)h * slen[t] + (t - sofs[t])) * hd + d;
                go[hm] = __bfloat162float(orow[t * qd + h * hd + d]), drow[t * qd + h * hd + d] = dO[hm];
            }
    float *d_drow = dev(drow);
    k_flash_dot(0, d_D, d_drow, d_o, d_meta, d_meta + T, T, nh, hd);
    k_flash_bwd(0, d_q, d_k, d_v, d_drow, d_lse, d_D, d_dq, d_dk, d_dv, T * kvd, d_tiles, nt, nh, nkv, hd, window,
                scale);
    const cudaError_t e = cudaDeviceSynchronize();
    std::vector<float> gD = host(d_D, T * nh), gq = host(d_dq, T * qd), pk = host(d_dk, group * T * kvd),
                       pv = host(d_dv, group * T * kvd), gk(T * kvd, 0.0f), gv(T * kvd, 0.0f);
    for (int32_t p = 0; p < group; p++) /* every part written: a NaN left in one fails the check */
        for (int64_t i = 0; i < T * kvd; i++) gk[i] += pk[p * T * kvd + i], gv[i] += pv[p * T * kvd + i];
    char lens_s[64] = "";
    for (size_t i = 0; i < lens.size(); i++)
        snprintf(lens_s + strlen(lens_s), sizeof lens_s - strlen(lens_s), "%s%d", i ? "+" : "", lens[i]);
    /* one check: "<case>: <name>", value v against tol (v < tol passes; tol 0: v itself is the verdict) */
    auto expect = [&](const char *name, bool ok, double v, double tol) {
        snprintf(what, sizeof what, "hd %d, %d/%d heads, window %d, sequences %s: %s", hd, nh, nkv, window, lens_s, name);
        check(ok, what, v, tol);
    };
    auto close = [&](const char *name, const std::vector<float> &x, const std::vector<double> &ref, double tol) {
        const double r = rel_max(x, ref);
        expect(name, r < tol, r, tol);
    };
    expect("kernels ran", e == cudaSuccess, (double)e, 0);
    double el = 0;
    for (int64_t i = 0; i < T * nh; i++) el = isfinite(gl[i]) ? fmax(el, fabs(gl[i] - lse[i])) : INFINITY;
    close("O", go, O, 1e-2);
    expect("lse (abs)", el < 1e-2, el, 1e-2);
    close("D", gD, D, 1e-2);
    close("dQ", gq, dq, 2e-2);
    close("dK", gk, dk, 2e-2);
    close("dV", gv, dv, 2e-2);
    for (float *p : {d_lse, d_dq, d_dk, d_dv, d_D, d_drow}) cudaFree(p);
    for (bf16 *p : {d_q, d_k, d_v, d_o}) cudaFree(p);
    cudaFree(d_tiles), cudaFree(d_meta);
}

int main(void) {
    int n = 0, optin = 0;
    cudaDeviceProp prop;
    if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0) { /* a failure where a GPU is required (gpu_check.sh) */
        const int req = getenv("PRISM_REQUIRE_GPU") && *getenv("PRISM_REQUIRE_GPU") == '1';
        printf("no CUDA device\n0 passed, %d failed\n", req);
        return req;
    }
    cudaGetDeviceProperties(&prop, 0);
    cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, 0);
    printf("device: %s (sm_%d%d, %d KiB shared memory per block)\n", prop.name, prop.major, prop.minor, optin / 1024);
    for (int hd : {6, 16, 24, 64, 128}) {
        const int ok = flash_setup(hd, prop.major, optin) == 0;
        char what[64];
        snprintf(what, sizeof what, "setup, hd %d", hd);
        check(ok, what, ok, 0);
    }
    check(flash_setup(256, prop.major, optin) != 0, "hd 256 refused (the cuBLAS path takes it)", 0, 0);
    run_case(16, 4, 2, 0, {150, 64, 10}, 1.0f);
    run_case(24, 6, 2, 40, {130, 70}, 1.0f);
    run_case(6, 2, 1, 0, {33, 1}, 2.0f);
    run_case(64, 4, 1, 0, {100}, 1.0f);
    run_case(128, 2, 2, 17, {70, 65}, 1.0f);
    run_case(128, 4, 2, 0, {129}, 3.0f); /* sharp softmax rows */
    /* windows whose edges fall on tile edges: a query tile's first key is
     * the last of a key tile (2), a key tile's last query starts a tile (66) */
    run_case(16, 2, 1, 2, {200}, 1.0f);
    run_case(16, 2, 1, 66, {200}, 1.0f);
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
