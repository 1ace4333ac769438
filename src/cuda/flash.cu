/* flash.cu — the LoRA trainer's attention on tensor cores (BF16 WMMA, F32
 * accumulation), flash-attention style: no (heads, n, n) probability matrix
 * is ever stored. The forward keeps one log-sum-exp per row; the backward
 * recomputes the probabilities from it, as FlashAttention-2 does.
 *
 * Layout (train.cu): q, k, v (BF16) and their gradients (F32) are head-major
 * per sequence — sequence s of n tokens starting at pass row off holds head h
 * at rows (off·heads + h·n + position)·hd. The output O and its gradient dO are
 * the pass's rows (T, nh·hd) as the o projection's GEMMs use them: O written
 * in BF16 (that GEMM's input), dO read in F32 (its output). Tiles are FT = 64
 * positions of one sequence (flash_tile: the sequence's first row, length,
 * first position).
 *
 * Blocks are 4 warps; a warp owns 16 rows of a tile (queries in the forward
 * and in dQ, keys in dK/dV). Tiles of q, k, v and dO go through shared memory
 * as BF16, zero-padded to HDP = 16·NF dims and to FT rows — zero rows and
 * columns add nothing to any product, and padding is never stale garbage
 * (a NaN there would survive a zero weight). Scores, masks, softmax and the
 * scale stay in F32.
 *  - forward, per (query tile, head): S = QKᵀ per key tile, online softmax,
 *    O = O·α + PV with O in registers — the accumulator fragments' layout is
 *    unspecified, so each lane learns the rows of its elements from a
 *    fragment loaded with row numbers (same type, same layout) and scales
 *    them by their row's α; out O/l and lse = m + ln l.
 *  - dK, dV per (key tile, query head), over the query tiles that see the
 *    tile: Pᵀ = exp(scale·KQᵀ − lse), dV += Pᵀ dO, dPᵀ = V dOᵀ,
 *    dSᵀ = Pᵀ ⊙ (dPᵀ − D)·scale, dK += dSᵀ Q; accumulators stay in registers.
 *    Each query head writes its own part of its KV head's dK and dV (part
 *    h mod group, part_stride floats apart), which the reader sums in part
 *    order, as FlashAttention-2 does for grouped queries: no atomics, and
 *    the result does not depend on scheduling. A block per (tile, KV head)
 *    walking the whole group was run 6's slowest kernel: at Qwen2.5-7B's 7
 *    query heads a KV head, 256 blocks of up to 56 tile steps (a long causal
 *    tail), now 1,792 of up to 8.
 *  - dQ per (query tile, head) over its key tiles: dQ += dS K.
 * D = rowsum(dO ⊙ O) comes from the row-major attention output and its
 * gradient (k_flash_dot). Masks: causal, and the sliding window (key > query
 * − window) of Mistral. Shared memory at hd = 128: 61 KB per forward block,
 * 95 KB per backward block, within sm_86/89's 99 KB. */
#include <math.h>

#include "cuda/common.cuh"

#ifndef PRISM_CUDA_EMU
#include <mma.h>
#endif
using namespace nvcuda;

#define FT FLASH_TILE /* positions per tile */
#define FTHREADS 128 /* 4 warps of 16 rows */

#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
#define FLASH_ARCH 1 /* BF16 WMMA exists from sm_80 */
typedef wmma::fragment<wmma::matrix_a, 16, 16, 16, bf16, wmma::row_major> fa_row;
typedef wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::col_major> fb_col;
typedef wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::row_major> fb_row;
typedef wmma::fragment<wmma::accumulator, 16, 16, 16, float> facc;
#else
#define FLASH_ARCH 0
#endif

template <int NF> struct fl {
    static constexpr int HDP = 16 * NF, LDB = HDP + 8 /* BF16 tile rows */, LDS = FT + 4 /* F32 score rows */,
                         LDP = FT + 8 /* BF16 probability rows */;
    static constexpr int TILE = FT * LDB * 2, SC = FT * LDS * 4, PR = FT * LDP * 2;
    static constexpr int fwd = 2 * TILE + SC + PR + 3 * FT * 4;
    static constexpr int bwd = 4 * TILE + SC + PR + 2 * FT * 4;
};

/* Rows [0, rows) of src (hd floats each, ld apart) into the BF16 tile dst
 * (FT rows of LDB, zeros past rows and past hd). Every thread of the block. */
template <int NF>
static __device__ __forceinline__ void stage(bf16 *dst, const float *src, int rows, int hd, int64_t ld) {
    constexpr int HDP = fl<NF>::HDP, LDB = fl<NF>::LDB;
    if ((hd & 3) == 0 && (ld & 3) == 0) {
        constexpr int V4 = HDP / 4;
        for (int e = threadIdx.x; e < FT * V4; e += FTHREADS) {
            const int r = e / V4, d = (e - r * V4) * 4;
            float4 v = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
            if (r < rows && d < hd) v = __ldg((const float4 *)(src + (int64_t)r * ld + d));
            bf16 *o = dst + r * LDB + d;
            o[0] = __float2bfloat16(v.x), o[1] = __float2bfloat16(v.y), o[2] = __float2bfloat16(v.z),
            o[3] = __float2bfloat16(v.w);
        }
    } else {
        for (int e = threadIdx.x; e < FT * HDP; e += FTHREADS) {
            const int r = e / HDP, d = e - r * HDP;
            dst[r * LDB + d] = __float2bfloat16(r < rows && d < hd ? src[(int64_t)r * ld + d] : 0.0f);
        }
    }
}

/* The same from BF16 rows (q, k, v): 16-byte copies when rows allow. */
template <int NF>
static __device__ __forceinline__ void stage(bf16 *dst, const bf16 *src, int rows, int hd, int64_t ld) {
    constexpr int HDP = fl<NF>::HDP, LDB = fl<NF>::LDB;
    if ((hd & 7) == 0 && (ld & 7) == 0) {
        constexpr int V8 = HDP / 8;
        for (int e = threadIdx.x; e < FT * V8; e += FTHREADS) {
            const int r = e / V8, d = (e - r * V8) * 8;
            uint4 v = make_uint4(0u, 0u, 0u, 0u);
            if (r < rows && d < hd) v = __ldg((const uint4 *)(src + (int64_t)r * ld + d));
            *(uint4 *)(dst + r * LDB + d) = v;
        }
    } else {
        const bf16 zero = __float2bfloat16(0.0f);
        for (int e = threadIdx.x; e < FT * HDP; e += FTHREADS) {
            const int r = e / HDP, d = e - r * HDP;
            dst[r * LDB + d] = r < rows && d < hd ? src[(int64_t)r * ld + d] : zero;
        }
    }
}

static __device__ __forceinline__ bool visible(int32_t key, int32_t query, int32_t n, int32_t window) {
    return key <= query && query < n && key >= first_key(query, window);
}

#if FLASH_ARCH
/* The 16 × 16 blocks of a warp's accumulators acc[f] (rows r0.., columns
 * 16 f..) into global rows dst (hd floats each, rows < rows_ok), through the
 * warp's 16 rows of the F32 scratch sc (row stride ld). */
template <int NF>
static __device__ __forceinline__ void store_rows(float *dst, int rows_ok, int hd, int r0, float *sc, int ld,
                                                  facc *acc) {
    const int lane = threadIdx.x & 31;
#pragma unroll
    for (int f = 0; f < NF; f++) {
        wmma::store_matrix_sync(sc, acc[f], ld, wmma::mem_row_major);
        __syncwarp();
        for (int e = lane; e < 256; e += 32) {
            const int r = e >> 4, d = 16 * f + (e & 15);
            if (r0 + r < rows_ok && d < hd) dst[(int64_t)(r0 + r) * hd + d] = sc[r * ld + (e & 15)];
        }
        __syncwarp();
    }
}

/* The warp's 16 rows of S (F32 at s, row stride LDS) = A·Bᵀ over the HDP
 * dims: A's 16 × 16 fragment of dims 16 f.. is a(f) (from registers, or
 * loaded by a), B the FT rows of a BF16 tile. Scores and dP. */
template <int NF, class AF> static __device__ __forceinline__ void rows_x_tile(float *s, AF a, const bf16 *B) {
    typedef fl<NF> L;
#pragma unroll
    for (int kb = 0; kb < FT / 16; kb++) {
        facc acc;
        wmma::fill_fragment(acc, 0.0f);
#pragma unroll
        for (int f = 0; f < NF; f++) {
            fb_col bf;
            wmma::load_matrix_sync(bf, B + 16 * kb * L::LDB + 16 * f, L::LDB);
            wmma::mma_sync(acc, a(f), bf, acc);
        }
        wmma::store_matrix_sync(s + 16 * kb, acc, L::LDS, wmma::mem_row_major);
    }
}

/* The warp's 16 rows × FT of a BF16 probability-like matrix (P, Pᵀ, dS, dSᵀ at p, row stride LDP) as fragments. */
template <int NF> static __device__ __forceinline__ void load_prob_rows(fa_row *pa, const bf16 *p) {
#pragma unroll
    for (int kb = 0; kb < FT / 16; kb++) wmma::load_matrix_sync(pa[kb], p + 16 * kb, fl<NF>::LDP);
}

/* acc += P·X for one block of 16 dims: P the warp's rows as load_prob_rows left them, X_f the FT rows of
 * a BF16 tile from dim 16 f on (row stride LDB). */
template <int NF> static __device__ __forceinline__ void mma_prob_tile(facc &acc, const fa_row *pa, const bf16 *xf) {
#pragma unroll
    for (int kb = 0; kb < FT / 16; kb++) {
        fb_row x;
        wmma::load_matrix_sync(x, xf + 16 * kb * fl<NF>::LDB, fl<NF>::LDB);
        wmma::mma_sync(acc, pa[kb], x, acc);
    }
}
#endif

/* Dynamic shared memory, aligned for WMMA (256-bit pointers). */
#ifdef PRISM_CUDA_EMU
#define FLASH_SMEM(name) PRISM_DYN_SMEM(float, name)
#else
#define FLASH_SMEM(name) extern __shared__ __align__(128) float name[]
#endif

/* ------------------------------------------------------------------ forward */
template <int NF>
__global__ void __launch_bounds__(FTHREADS)
    tk_flash_fwd(const bf16 *__restrict__ qh, const bf16 *__restrict__ kh, const bf16 *__restrict__ vh,
                 bf16 *__restrict__ out, float *__restrict__ lse, const flash_tile *__restrict__ tiles, int32_t nh,
                 int32_t nkv, int32_t hd, int32_t window, float scale) {
#if FLASH_ARCH
    typedef fl<NF> L;
    FLASH_SMEM(smf);
    bf16 *Ks = (bf16 *)smf, *Vs = Ks + FT * L::LDB;
    float *Ss = (float *)(Vs + FT * L::LDB);
    bf16 *Ps = (bf16 *)(Ss + FT * L::LDS);
    float *rm = (float *)(Ps + FT * L::LDP), *rl = rm + FT, *ra = rl + FT; /* per row: max, sum, rescale */
    const flash_tile tl = tiles[blockIdx.x];
    const int32_t h = blockIdx.y, g = h / (nh / nkv), n = tl.n, q0 = tl.start, nq = min(FT, n - q0);
    const int tid = threadIdx.x, lane = tid & 31, w = tid >> 5;
    const bf16 *Q = qh + ((int64_t)tl.off * nh + (int64_t)h * n + q0) * hd;
    const bf16 *K = kh + ((int64_t)tl.off * nkv + (int64_t)g * n) * hd, *V = vh + (K - kh);

    bf16 *Qs = (bf16 *)Ss; /* Q passes through the score buffer into registers */
    stage<NF>(Qs, Q, nq, hd, hd);
    for (int r = tid; r < FT; r += FTHREADS) rm[r] = -INFINITY, rl[r] = 0.0f;
    __syncthreads();
    fa_row qf[NF];
#pragma unroll
    for (int f = 0; f < NF; f++) wmma::load_matrix_sync(qf[f], Qs + 16 * w * L::LDB + 16 * f, L::LDB);
    __syncthreads();
    facc o[NF], rid; /* O's 16 rows × HDP of this warp; rid: each element's row (0..15), in the same layout */
    float *sc = Ss + 16 * w * L::LDS; /* the warp's own score rows */
    for (int e = lane; e < 256; e += 32) sc[(e >> 4) * L::LDS + (e & 15)] = (float)(e >> 4);
    __syncwarp();
    wmma::load_matrix_sync(rid, sc, L::LDS, wmma::mem_row_major);
    __syncwarp(); /* read before the first scores overwrite it */
#pragma unroll
    for (int f = 0; f < NF; f++) wmma::fill_fragment(o[f], 0.0f);

    const int32_t kbeg = first_key(q0, window) / FT * FT, kend = q0 + nq; /* key tiles */
    const int r = 16 * w + (lane >> 1), half = (lane & 1) * 32, i = q0 + r; /* this lane's row and key half */
    for (int32_t k0 = kbeg; k0 < kend; k0 += FT) {
        stage<NF>(Ks, K + (int64_t)k0 * hd, min(FT, n - k0), hd, hd);
        stage<NF>(Vs, V + (int64_t)k0 * hd, min(FT, n - k0), hd, hd);
        __syncthreads();
        rows_x_tile<NF>(Ss + 16 * w * L::LDS, [&](int f) -> const fa_row & { return qf[f]; }, Ks); /* S = QKᵀ */
        __syncwarp();
        { /* online softmax: two lanes per row, 32 keys each */
            float *sr = Ss + r * L::LDS + half;
            float mx = -INFINITY;
#pragma unroll 8
            for (int j = 0; j < 32; j++) {
                const float v = visible(k0 + half + j, i, n, window) ? sr[j] * scale : -INFINITY;
                sr[j] = v;
                mx = fmaxf(mx, v);
            }
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
            const float mold = rm[r], mnew = fmaxf(mold, mx);
            float sum = 0.0f;
            bf16 *pr = Ps + r * L::LDP + half;
#pragma unroll 8
            for (int j = 0; j < 32; j++) {
                const float p = sr[j] == -INFINITY ? 0.0f : expf(sr[j] - mnew);
                sum += p;
                pr[j] = __float2bfloat16(p);
            }
            sum += __shfl_xor_sync(0xffffffffu, sum, 1);
            const float alpha = mold == -INFINITY ? 0.0f : expf(mold - mnew);
            __syncwarp(); /* both lanes of the row have read rm[r] */
            if (!(lane & 1)) rm[r] = mnew, rl[r] = rl[r] * alpha + sum, ra[r] = alpha;
        }
        __syncwarp();
        fa_row pf[FT / 16];
        load_prob_rows<NF>(pf, Ps + 16 * w * L::LDP);
        const float *al = ra + 16 * w;
#pragma unroll
        for (int f = 0; f < NF; f++) { /* O (16 rows, dims 16 f..) = O·α + P V */
#pragma unroll
            for (int e = 0; e < o[f].num_elements; e++) o[f].x[e] *= al[(int)rid.x[e]];
            mma_prob_tile<NF>(o[f], pf, Vs + 16 * f);
        }
        __syncthreads(); /* K and V are restaged */
    }
    /* O / l into the tile's rows of head h, in BF16, through the warp's own score rows */
    const int64_t qd = (int64_t)nh * hd;
    bf16 *O = out + (int64_t)(tl.off + q0 + 16 * w) * qd + (int64_t)h * hd; /* the warp's first row */
#pragma unroll
    for (int f = 0; f < NF; f++) {
        wmma::store_matrix_sync(sc, o[f], L::LDS, wmma::mem_row_major);
        __syncwarp();
        for (int e = lane; e < 256; e += 32) {
            const int rr = e >> 4, d = 16 * f + (e & 15);
            if (16 * w + rr < nq && d < hd)
                O[(int64_t)rr * qd + d] = __float2bfloat16(sc[rr * L::LDS + (e & 15)] / rl[16 * w + rr]);
        }
        __syncwarp();
    }
    if (lane < 16 && 16 * w + lane < nq)
        lse[(int64_t)tl.off * nh + (int64_t)h * n + q0 + 16 * w + lane] = rm[16 * w + lane] + logf(rl[16 * w + lane]);
#endif
}

/* ------------------------------------------------------------------ dK, dV */
template <int NF>
__global__ void __launch_bounds__(FTHREADS)
    tk_flash_bwd_kv(const bf16 *__restrict__ qh, const bf16 *__restrict__ kh, const bf16 *__restrict__ vh,
                    const float *__restrict__ dout, const float *__restrict__ lse, const float *__restrict__ Dr,
                    float *__restrict__ dkh, float *__restrict__ dvh, int64_t part_stride,
                    const flash_tile *__restrict__ tiles, int32_t nh, int32_t nkv, int32_t hd, int32_t window,
                    float scale) {
#if FLASH_ARCH
    typedef fl<NF> L;
    FLASH_SMEM(smf);
    bf16 *Ks = (bf16 *)smf, *Vs = Ks + FT * L::LDB, *Qs = Vs + FT * L::LDB, *Ds = Qs + FT * L::LDB;
    float *St = (float *)(Ds + FT * L::LDB);
    bf16 *PT = (bf16 *)(St + FT * L::LDS);
    float *ls = (float *)(PT + FT * L::LDP), *dd = ls + FT;
    const flash_tile tl = tiles[blockIdx.x];
    const int32_t h = blockIdx.y, group = nh / nkv, g = h / group, n = tl.n, k0 = tl.start, nk = min(FT, n - k0);
    const int tid = threadIdx.x, lane = tid & 31, w = tid >> 5;
    const int64_t kvo = ((int64_t)tl.off * nkv + (int64_t)g * n + k0) * hd, po = (int64_t)(h - g * group) * part_stride;
    stage<NF>(Ks, kh + kvo, nk, hd, hd);
    stage<NF>(Vs, vh + kvo, nk, hd, hd);
    facc dk[NF], dv[NF];
#pragma unroll
    for (int f = 0; f < NF; f++) wmma::fill_fragment(dk[f], 0.0f), wmma::fill_fragment(dv[f], 0.0f);
    const int r = 16 * w + (lane >> 1), half = (lane & 1) * 32, key = k0 + r; /* this lane's key and query half */
    const int32_t qend = window > 0 && k0 + nk - 1 + window < n ? k0 + nk - 1 + window : n;
    const int64_t ro = (int64_t)tl.off * nh + (int64_t)h * n; /* row of position 0 of head h */
    for (int32_t q0 = k0; q0 < qend; q0 += FT) {
        const int32_t nq = min(FT, n - q0);
        __syncthreads(); /* the previous tile's Q, dO, lse, D are done with */
        stage<NF>(Qs, qh + (ro + q0) * hd, nq, hd, hd);
        stage<NF>(Ds, dout + (int64_t)(tl.off + q0) * nh * hd + (int64_t)h * hd, nq, hd, (int64_t)nh * hd);
        for (int e = tid; e < FT; e += FTHREADS)
            ls[e] = e < nq ? lse[ro + q0 + e] : 0.0f, dd[e] = e < nq ? Dr[ro + q0 + e] : 0.0f;
        __syncthreads();
        const auto kw = [&](int f) { /* the warp's 16 keys, dims 16 f.. */
            fa_row a;
            wmma::load_matrix_sync(a, Ks + 16 * w * L::LDB + 16 * f, L::LDB);
            return a;
        };
        const auto vw = [&](int f) {
            fa_row a;
            wmma::load_matrix_sync(a, Vs + 16 * w * L::LDB + 16 * f, L::LDB);
            return a;
        };
        rows_x_tile<NF>(St + 16 * w * L::LDS, kw, Qs); /* Sᵀ = K Qᵀ */
        __syncwarp();
        float p[32];
        float *sr = St + r * L::LDS + half;
        bf16 *pr = PT + r * L::LDP + half;
#pragma unroll
        for (int j = 0; j < 32; j++) {
            const int32_t i = q0 + half + j;
            p[j] = key < n && visible(key, i, n, window) ? expf(sr[j] * scale - ls[half + j]) : 0.0f;
            pr[j] = __float2bfloat16(p[j]);
        }
        __syncwarp();
        fa_row pa[FT / 16];
        load_prob_rows<NF>(pa, PT + 16 * w * L::LDP);
#pragma unroll
        for (int f = 0; f < NF; f++) mma_prob_tile<NF>(dv[f], pa, Ds + 16 * f); /* dV += Pᵀ dO */
        rows_x_tile<NF>(St + 16 * w * L::LDS, vw, Ds); /* dPᵀ = V dOᵀ */
        __syncwarp();
#pragma unroll
        for (int j = 0; j < 32; j++) pr[j] = __float2bfloat16(p[j] * (sr[j] - dd[half + j]) * scale); /* dSᵀ */
        __syncwarp();
        load_prob_rows<NF>(pa, PT + 16 * w * L::LDP);
#pragma unroll
        for (int f = 0; f < NF; f++) mma_prob_tile<NF>(dk[f], pa, Qs + 16 * f); /* dK += dSᵀ Q */
    }
    __syncwarp();
    float *sc = St + 16 * w * L::LDS; /* the warp's own rows of St */
    store_rows<NF>(dkh + po + kvo, nk, hd, 16 * w, sc, L::LDS, dk);
    store_rows<NF>(dvh + po + kvo, nk, hd, 16 * w, sc, L::LDS, dv);
#endif
}

/* ------------------------------------------------------------------ dQ */
template <int NF>
__global__ void __launch_bounds__(FTHREADS)
    tk_flash_bwd_q(const bf16 *__restrict__ qh, const bf16 *__restrict__ kh, const bf16 *__restrict__ vh,
                   const float *__restrict__ dout, const float *__restrict__ lse, const float *__restrict__ Dr,
                   float *__restrict__ dqh, const flash_tile *__restrict__ tiles, int32_t nh, int32_t nkv, int32_t hd,
                   int32_t window, float scale) {
#if FLASH_ARCH
    typedef fl<NF> L;
    FLASH_SMEM(smf);
    bf16 *Ks = (bf16 *)smf, *Vs = Ks + FT * L::LDB, *Qs = Vs + FT * L::LDB, *Ds = Qs + FT * L::LDB;
    float *Ss = (float *)(Ds + FT * L::LDB);
    bf16 *dS = (bf16 *)(Ss + FT * L::LDS);
    float *ls = (float *)(dS + FT * L::LDP), *dd = ls + FT;
    const flash_tile tl = tiles[blockIdx.x];
    const int32_t h = blockIdx.y, g = h / (nh / nkv), n = tl.n, q0 = tl.start, nq = min(FT, n - q0);
    const int tid = threadIdx.x, lane = tid & 31, w = tid >> 5;
    const int64_t ro = (int64_t)tl.off * nh + (int64_t)h * n + q0;
    const bf16 *K = kh + ((int64_t)tl.off * nkv + (int64_t)g * n) * hd, *V = vh + (K - kh);
    stage<NF>(Qs, qh + ro * hd, nq, hd, hd);
    stage<NF>(Ds, dout + (int64_t)(tl.off + q0) * nh * hd + (int64_t)h * hd, nq, hd, (int64_t)nh * hd);
    for (int e = tid; e < FT; e += FTHREADS) ls[e] = e < nq ? lse[ro + e] : 0.0f, dd[e] = e < nq ? Dr[ro + e] : 0.0f;
    __syncthreads();
    fa_row qf[NF], of[NF];
#pragma unroll
    for (int f = 0; f < NF; f++) {
        wmma::load_matrix_sync(qf[f], Qs + 16 * w * L::LDB + 16 * f, L::LDB);
        wmma::load_matrix_sync(of[f], Ds + 16 * w * L::LDB + 16 * f, L::LDB);
    }
    facc dq[NF];
#pragma unroll
    for (int f = 0; f < NF; f++) wmma::fill_fragment(dq[f], 0.0f);
    const int r = 16 * w + (lane >> 1), half = (lane & 1) * 32, i = q0 + r;
    const float li = ls[r], di = dd[r];
    const int32_t kbeg = first_key(q0, window) / FT * FT, kend = q0 + nq; /* key tiles */
    for (int32_t k0 = kbeg; k0 < kend; k0 += FT) {
        __syncthreads(); /* the previous K, V are done with */
        stage<NF>(Ks, K + (int64_t)k0 * hd, min(FT, n - k0), hd, hd);
        stage<NF>(Vs, V + (int64_t)k0 * hd, min(FT, n - k0), hd, hd);
        __syncthreads();
        rows_x_tile<NF>(Ss + 16 * w * L::LDS, [&](int f) -> const fa_row & { return qf[f]; }, Ks); /* S = Q Kᵀ */
        __syncwarp();
        float p[32];
        float *sr = Ss + r * L::LDS + half;
#pragma unroll
        for (int j = 0; j < 32; j++) p[j] = visible(k0 + half + j, i, n, window) ? expf(sr[j] * scale - li) : 0.0f;
        __syncwarp(); /* S is read before dP overwrites it */
        rows_x_tile<NF>(Ss + 16 * w * L::LDS, [&](int f) -> const fa_row & { return of[f]; }, Vs); /* dP = dO Vᵀ */
        __syncwarp();
        bf16 *dr = dS + r * L::LDP + half;
#pragma unroll
        for (int j = 0; j < 32; j++) dr[j] = __float2bfloat16(p[j] * (sr[j] - di) * scale);
        __syncwarp();
        fa_row sa[FT / 16];
        load_prob_rows<NF>(sa, dS + 16 * w * L::LDP);
#pragma unroll
        for (int f = 0; f < NF; f++) mma_prob_tile<NF>(dq[f], sa, Ks + 16 * f); /* dQ += dS K */
    }
    __syncwarp();
    store_rows<NF>(dqh + ro * hd, nq, hd, 16 * w, Ss + 16 * w * L::LDS, L::LDS, dq);
#endif
}

/* D (head-major rows, as lse) = Σ_d dO·O per row and head, from the row-major
 * (T, nh·hd) attention output and its gradient; a warp per head. dO is
 * rounded to BF16 first: dS = P ⊙ (dP − D) sums to zero over a row only if D
 * is made from the same dO as dP, and any bias there adds up over the
 * thousand queries of a key's dK. */
__global__ void tk_flash_dot(float *__restrict__ D, const float *__restrict__ dout, const bf16 *__restrict__ out,
                             const int32_t *__restrict__ sofs, const int32_t *__restrict__ slen, int32_t nh,
                             int32_t hd) {
    const int64_t t = blockIdx.x, qd = (int64_t)nh * hd;
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    const int32_t o = sofs[t], n = slen[t];
    for (int32_t h = w; h < nh; h += blockDim.x >> 5) {
        float s = 0.0f;
        for (int d = lane; d < hd; d += 32) /* dO rounded as the backward kernels stage it: Σ_j P·dP = D exactly */
            s += __bfloat162float(__float2bfloat16(dout[t * qd + (int64_t)h * hd + d])) *
                 __bfloat162float(out[t * qd + (int64_t)h * hd + d]);
        s = warp_sum(s);
        if (lane == 0) D[(int64_t)o * nh + (int64_t)h * n + (t - o)] = s;
    }
}

/* ------------------------------------------------------------------ launchers */
static int nf_of(int32_t hd) { return hd <= 16 ? 1 : hd <= 32 ? 2 : hd <= 64 ? 4 : hd <= 128 ? 8 : 0; }

int flash_smem(int32_t hd) {
    switch (nf_of(hd)) {
    case 1: return fl<1>::bwd > fl<1>::fwd ? fl<1>::bwd : fl<1>::fwd;
    case 2: return fl<2>::bwd > fl<2>::fwd ? fl<2>::bwd : fl<2>::fwd;
    case 4: return fl<4>::bwd > fl<4>::fwd ? fl<4>::bwd : fl<4>::fwd;
    case 8: return fl<8>::bwd > fl<8>::fwd ? fl<8>::bwd : fl<8>::fwd;
    }
    return -1;
}

template <int NF> static cudaError_t flash_optin(void) {
    cudaError_t e = cudaFuncSetAttribute(tk_flash_fwd<NF>, cudaFuncAttributeMaxDynamicSharedMemorySize, fl<NF>::fwd);
    if (e == cudaSuccess) e = cudaFuncSetAttribute(tk_flash_bwd_kv<NF>, cudaFuncAttributeMaxDynamicSharedMemorySize, fl<NF>::bwd);
    if (e == cudaSuccess) e = cudaFuncSetAttribute(tk_flash_bwd_q<NF>, cudaFuncAttributeMaxDynamicSharedMemorySize, fl<NF>::bwd);
    return e;
}

int flash_setup(int32_t hd, int cc_major, int smem_optin) {
    const int need = flash_smem(hd);
    if (need < 0 || cc_major < 8 || need > smem_optin) return -1;
    cudaError_t e = cudaErrorInvalidValue;
    switch (nf_of(hd)) {
    case 1: e = flash_optin<1>(); break;
    case 2: e = flash_optin<2>(); break;
    case 4: e = flash_optin<4>(); break;
    case 8: e = flash_optin<8>(); break;
    }
    return e == cudaSuccess ? 0 : -1;
}

void k_flash_fwd(cudaStream_t s, const bf16 *q, const bf16 *k, const bf16 *v, bf16 *o, float *lse,
                 const flash_tile *tiles, int32_t n_tiles, int32_t nh, int32_t nkv, int32_t hd, int32_t window,
                 float scale) {
    dim3 grid(n_tiles, nh);
    switch (nf_of(hd)) {
#define CASE(NF) \
    case NF: tk_flash_fwd<NF><<<grid, FTHREADS, fl<NF>::fwd, s>>>(q, k, v, o, lse, tiles, nh, nkv, hd, window, scale); break;
        CASE(1) CASE(2) CASE(4) CASE(8)
#undef CASE
    }
}

void k_flash_bwd(cudaStream_t s, const bf16 *q, const bf16 *k, const bf16 *v, const float *dout,
                 const float *lse, const float *D, float *dq, float *dk, float *dv, int64_t part_stride,
                 const flash_tile *tiles, int32_t n_tiles, int32_t nh, int32_t nkv, int32_t hd, int32_t window,
                 float scale) {
    dim3 gkv(n_tiles, nh), gq(n_tiles, nh);
    switch (nf_of(hd)) {
#define CASE(NF)                                                                                                  \
    case NF:                                                                                                      \
        tk_flash_bwd_kv<NF><<<gkv, FTHREADS, fl<NF>::bwd, s>>>(q, k, v, dout, lse, D, dk, dv, part_stride, tiles, \
                                                               nh, nkv, hd, window, scale);                      \
        tk_flash_bwd_q<NF><<<gq, FTHREADS, fl<NF>::bwd, s>>>(q, k, v, dout, lse, D, dq, tiles, nh, nkv, hd,      \
                                                             window, scale);                                     \
        break;
        CASE(1) CASE(2) CASE(4) CASE(8)
#undef CASE
    }
}

void k_flash_dot(cudaStream_t s, float *D, const float *dout, const bf16 *out, const int32_t *sofs,
                 const int32_t *slen, int32_t T, int32_t nh, int32_t hd) {
    tk_flash_dot<<<T, 128, 0, s>>>(D, dout, out, sofs, slen, nh, hd);
}
