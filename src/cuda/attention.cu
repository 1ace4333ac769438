/* attention.cu — causal GQA attention over the BF16 KV cache, one kernel for
 * prefill and decode (flash-attention style: keys stream through shared
 * memory in chunks with an online softmax, nothing of size T x keys is ever
 * stored), plus split-K for decode.
 *
 * A block takes one tile — up to `tq` consecutive positions of one sequence —
 * and one KV head, so its rows are (token, query head of that KV head's
 * group): every key and value is read once for the whole group. With split-K
 * (few tiles, long contexts: decode) the key range is cut into n_split parts
 * whose partial (max, sum, unnormalised output) the last of them to finish
 * combines (a ticket per tile and KV head) with PRISM_CUDA_DECODE_FUSE
 * naming combine, else a second kernel (the default: faster on H100 and H200).
 *
 * Masks: row (token at position p) sees keys [first(p), p] where first(p) =
 * p - window + 1 for sliding-window models (Mistral), else 0. */
#include <math.h>

#include "cuda/common.cuh"

int attention_smem(int32_t rows, int32_t hd, int32_t new_tokens) {
    /* Q (rows, hd + 1) | K (KC, hd + 1) | V (KC, hd) | S (rows, KC) | m, l, alpha (rows) | new K, V (new_tokens, hd) */
    return (int)sizeof(float) *
           (rows * (hd + 1) + ATT_KC * (hd + 1) + ATT_KC * hd + rows * ATT_KC + 3 * rows + 2 * new_tokens * hd);
}

static __device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

/* Rows r = w + 4 i (i < 8) of warp w: R <= ATT_MAX_ROWS = 32. Each lane owns
 * the dims lane + 32 j (j < DPL) of those rows' outputs, in registers.
 * Scores: thread t computes a 2 x 4 tile (rows 2 (t >> 3) + {0, 1}, keys
 * 4 (t & 7) + {0..3}) of S, or with R <= 8 (decode: one token's group of
 * heads, which would leave 3 of the 4 warps idle) row t >> 4 and keys
 * 2 (t & 15) + {0, 1}; the softmax of a row is one warp, a lane per key.
 *
 * With pp.on (a batch whose every sequence is one tile: decode), the block
 * does k_qkv_post's work for its own rows from the GEMV output pp.y: q rows
 * into Qs, the tile's new k and v rows of its KV head into shared memory
 * (rounded to A, as read back from the cache), which its chunks use for
 * positions >= p0; split 0 also writes them to the cache. */
template <class A, int DPL>
__global__ void __launch_bounds__(ATT_THREADS)
    attention_kernel(const float *__restrict__ q, const A *kc, const A *vc, /* written with pp.on */
                     const att_tile *__restrict__ tiles, A *__restrict__ out, float *__restrict__ part_o,
                     float2 *__restrict__ part_ml, int32_t *__restrict__ tickets, int32_t T, int32_t nh, int32_t nkv,
                     int32_t hd, int32_t n_ctx, int32_t window, float scale, att_post pp) {
    static_assert(ATT_THREADS == 128 && ATT_KC == 32, "the thread layout assumes 4 warps and 32-key chunks");
    constexpr int EPV = 16 / sizeof(A), RPW = ATT_MAX_ROWS / 4;
    PRISM_DYN_SMEM(float, sm);
    pdl_wait();
    pdl_trigger();
    const att_tile tile = tiles[blockIdx.x];
    const int32_t kh = blockIdx.y, split = blockIdx.z, n_split = gridDim.z;
    const int32_t group = nh / nkv, R = tile.n * group, hp = hd + 1;
    const int64_t kvd = (int64_t)nkv * hd, qd = (int64_t)nh * hd;
    float *Qs = sm, *Ks = Qs + R * hp, *Vs = Ks + ATT_KC * hp, *S = Vs + ATT_KC * hd, *rm = S + R * ATT_KC,
          *rl = rm + R, *ra = rl + R, *NK = ra + R, *NV = NK + tile.n * hd;
    const int tid = threadIdx.x, lane = tid & 31, w = tid >> 5;

    /* rows: r = t * group + g -> token i0 + t, head kh * group + g */
    if (pp.on) {
        for (int r = w; r < R + 2 * tile.n; r += ATT_THREADS / 32) {
            const int t = r < R ? r / group : r < R + tile.n ? r - R : r - R - tile.n;
            const int64_t col = r < R ? (int64_t)(kh * group + r - t * group) * hd
                                      : (r < R + tile.n ? qd : qd + kvd) + (int64_t)kh * hd;
            const float *src = pp.y + (int64_t)(tile.i0 + t) * pp.qkv_n + col, *b = pp.bqkv ? pp.bqkv + col : NULL;
            const int32_t p = tile.p0 + t;
            if (r < R) qkv_post_row(Qs + r * hp, src, b, pp.q_norm, true, pp.inv_freq, p, hd, pp.eps, scale, lane);
            else if (r < R + tile.n) qkv_post_row(NK + t * hd, src, b, pp.k_norm, true, pp.inv_freq, p, hd, pp.eps, 1.0f, lane);
            else qkv_post_row(NV + t * hd, src, b, (const float *)NULL, false, pp.inv_freq, p, hd, pp.eps, 1.0f, lane);
        }
        __syncthreads();
        A *kw = (A *)kc + ((int64_t)tile.seq * n_ctx + tile.p0) * kvd + (int64_t)kh * hd;
        A *vw = (A *)vc + ((int64_t)tile.seq * n_ctx + tile.p0) * kvd + (int64_t)kh * hd;
        for (int e = tid; e < tile.n * hd; e += ATT_THREADS) {
            A kr, vr;
            stA(&kr, NK[e]), stA(&vr, NV[e]);
            NK[e] = ldA(&kr), NV[e] = ldA(&vr);
            if (split == 0) {
                const int t = e / hd, d = e - t * hd;
                kw[t * kvd + d] = kr, vw[t * kvd + d] = vr;
            }
        }
    } else {
        for (int e = tid; e < R * hd; e += ATT_THREADS) {
            const int r = e / hd, d = e - r * hd, t = r / group, g = r - t * group;
            Qs[r * hp + d] = q[(int64_t)(tile.i0 + t) * qd + (int64_t)(kh * group + g) * hd + d] * scale;
        }
    }
    for (int r = tid; r < R; r += ATT_THREADS) rm[r] = -INFINITY, rl[r] = 0.0f;
    float o[RPW][DPL];
#pragma unroll
    for (int i = 0; i < RPW; i++)
#pragma unroll
        for (int j = 0; j < DPL; j++) o[i][j] = 0.0f;

    const int32_t kbeg = first_key(tile.p0, window), kend = tile.p0 + tile.n; /* keys [kbeg, kend) */
    int32_t span = (kend - kbeg + n_split - 1) / n_split;
    span = (span + ATT_KC - 1) / ATT_KC * ATT_KC;
    const int32_t s0 = kbeg + split * span, s1 = min(kend, s0 + span);
    const A *kb = kc + (int64_t)tile.seq * n_ctx * kvd + (int64_t)kh * hd;
    const A *vb = vc + (int64_t)tile.seq * n_ctx * kvd + (int64_t)kh * hd;
    const int vec = hd % EPV == 0, vpr = hd / EPV;
    const int r0 = (tid >> 3) * 2, k0 = (tid & 7) * 4; /* this thread's score tile */
    __syncthreads();

    for (int32_t c0 = s0; c0 < s1; c0 += ATT_KC) {
        const int32_t nk = min(ATT_KC, s1 - c0);
        /* stage the chunk's keys and values as F32, 16-byte loads when rows allow */
        if (vec) {
            for (int e = tid; e < ATT_KC * vpr; e += ATT_THREADS) {
                const int k = e / vpr, v = e - k * vpr;
                float kf[EPV], vf[EPV];
                if (k < nk && pp.on && c0 + k >= tile.p0) { /* this tile's own key: computed above */
#pragma unroll
                    for (int j = 0; j < EPV; j++)
                        kf[j] = NK[(c0 + k - tile.p0) * hd + v * EPV + j], vf[j] = NV[(c0 + k - tile.p0) * hd + v * EPV + j];
                } else if (k < nk) {
                    unpack16(__ldg((const uint4 *)(kb + (int64_t)(c0 + k) * kvd) + v), kb, kf);
                    unpack16(__ldg((const uint4 *)(vb + (int64_t)(c0 + k) * kvd) + v), vb, vf);
                } else {
#pragma unroll
                    for (int j = 0; j < EPV; j++) kf[j] = vf[j] = 0.0f;
                }
#pragma unroll
                for (int j = 0; j < EPV; j++) Ks[k * hp + v * EPV + j] = kf[j], Vs[k * hd + v * EPV + j] = vf[j];
            }
        } else {
            for (int e = tid; e < ATT_KC * hd; e += ATT_THREADS) {
                const int k = e / hd, d = e - k * hd;
                const bool in = k < nk, own = in && pp.on && c0 + k >= tile.p0;
                Ks[k * hp + d] = own ? NK[(c0 + k - tile.p0) * hd + d] : in ? ldA(kb + (int64_t)(c0 + k) * kvd + d) : 0.0f;
                Vs[k * hd + d] = own ? NV[(c0 + k - tile.p0) * hd + d] : in ? ldA(vb + (int64_t)(c0 + k) * kvd + d) : 0.0f;
            }
        }
        __syncthreads();
        if (R <= 8) { /* decode (R = a KV group's heads): every warp, a row and 2 keys per thread */
            const int r = tid >> 4, k = (tid & 15) * 2;
            if (r < R) {
                float a0 = 0.0f, a1 = 0.0f, b0 = 0.0f, b1 = 0.0f; /* keys k, k + 1; even and odd dims */
                const float *qr = Qs + r * hp, *kr = Ks + k * hp;
                int d = 0;
                for (; d + 1 < hd; d += 2) {
                    const float q0 = qr[d], q1 = qr[d + 1];
                    a0 += q0 * kr[d], b0 += q1 * kr[d + 1], a1 += q0 * kr[hp + d], b1 += q1 * kr[hp + d + 1];
                }
                if (d < hd) a0 += qr[d] * kr[d], a1 += qr[d] * kr[hp + d];
                const int32_t p = tile.p0 + r / group, fk = first_key(p, window);
                const int32_t key = c0 + k;
                S[r * ATT_KC + k] = k < nk && key <= p && key >= fk ? a0 + b0 : -INFINITY;
                S[r * ATT_KC + k + 1] = k + 1 < nk && key + 1 <= p && key + 1 >= fk ? a1 + b1 : -INFINITY;
            }
        } else if (r0 < R) {
            float acc[2][4] = {{0.0f, 0.0f, 0.0f, 0.0f}, {0.0f, 0.0f, 0.0f, 0.0f}};
            const float *q0 = Qs + r0 * hp, *q1 = Qs + (r0 + 1 < R ? r0 + 1 : r0) * hp, *kr = Ks + k0 * hp;
            for (int d = 0; d < hd; d++) {
                const float a0 = q0[d], a1 = q1[d];
                const float b0 = kr[d], b1 = kr[hp + d], b2 = kr[2 * hp + d], b3 = kr[3 * hp + d];
                acc[0][0] += a0 * b0, acc[0][1] += a0 * b1, acc[0][2] += a0 * b2, acc[0][3] += a0 * b3;
                acc[1][0] += a1 * b0, acc[1][1] += a1 * b1, acc[1][2] += a1 * b2, acc[1][3] += a1 * b3;
            }
#pragma unroll
            for (int i = 0; i < 2; i++) {
                const int r = r0 + i;
                if (r >= R) break;
                const int32_t p = tile.p0 + r / group, fk = first_key(p, window);
#pragma unroll
                for (int j = 0; j < 4; j++) {
                    const int32_t key = c0 + k0 + j;
                    S[r * ATT_KC + k0 + j] = k0 + j < nk && key <= p && key >= fk ? acc[i][j] : -INFINITY;
                }
            }
        }
        __syncthreads();
        for (int r = w; r < R; r += 4) { /* online softmax, one warp per row, a lane per key */
            const float sc = S[r * ATT_KC + lane], mold = rm[r];
            const float mx = warp_max(fmaxf(mold, sc));
            if (mx == -INFINITY) { /* nothing visible yet */
                S[r * ATT_KC + lane] = 0.0f;
                if (lane == 0) ra[r] = 1.0f;
                continue;
            }
            const float pk = sc == -INFINITY ? 0.0f : expf(sc - mx);
            S[r * ATT_KC + lane] = pk;
            const float sum = warp_sum(pk);
            __syncwarp(); /* every lane has read rm[r] before lane 0 updates it */
            if (lane == 0) {
                const float alpha = mold == -INFINITY ? 0.0f : expf(mold - mx);
                rl[r] = rl[r] * alpha + sum;
                rm[r] = mx;
                ra[r] = alpha;
            }
        }
        __syncthreads();
#pragma unroll
        for (int i = 0; i < RPW; i++) {
            const int r = w + 4 * i;
            if (r < R) {
                const float alpha = ra[r];
#pragma unroll
                for (int j = 0; j < DPL; j++) o[i][j] *= alpha;
            }
        }
        for (int k = 0; k < nk; k++) {
            float vv[DPL];
#pragma unroll
            for (int j = 0; j < DPL; j++) vv[j] = lane + 32 * j < hd ? Vs[k * hd + lane + 32 * j] : 0.0f;
#pragma unroll
            for (int i = 0; i < RPW; i++) {
                const int r = w + 4 * i;
                if (r < R) {
                    const float pk = S[r * ATT_KC + k];
#pragma unroll
                    for (int j = 0; j < DPL; j++) o[i][j] += pk * vv[j];
                }
            }
        }
        __syncthreads(); /* K, V and S are overwritten by the next chunk */
    }

#pragma unroll
    for (int i = 0; i < RPW; i++) {
        const int r = w + 4 * i;
        if (r >= R) continue;
        const int t = r / group, h = kh * group + r - t * group;
        const int64_t ti = tile.i0 + t;
        const float l = rl[r];
#pragma unroll
        for (int j = 0; j < DPL; j++) {
            const int d = lane + 32 * j;
            if (d >= hd) continue;
            if (n_split == 1) stA(out + ti * qd + (int64_t)h * hd + d, l > 0.0f ? o[i][j] / l : 0.0f);
            else part_o[((int64_t)split * T + ti) * qd + (int64_t)h * hd + d] = o[i][j];
        }
        if (n_split > 1 && lane == 0) part_ml[((int64_t)split * T + ti) * nh + h] = make_float2(rm[r], l);
    }
    if (n_split == 1 || !tickets) return;
    /* the last split block of this (tile, KV head) to finish combines them:
     * out = Σ_s o_s e^{m_s - M} / Σ_s l_s e^{m_s - M} */
    __shared__ int last;
    __threadfence(); /* this block's partials are visible before its ticket */
    __syncthreads();
    if (tid == 0) {
        int32_t *tk = tickets + (int64_t)blockIdx.x * gridDim.y + kh;
        last = atomicAdd(tk, 1) == n_split - 1;
        if (last) *tk = 0; /* for the next launch (graph replays) */
    }
    __syncthreads();
    if (!last) return;
    __threadfence();
    /* a warp per row: lane s < n_split (<= ATT_MAX_SPLIT <= ATT_KC) reads split s's (max, sum) once; the row's
     * weights e^{m_s - M} / L go to S. Then each output element is one pass of independent loads over the splits
     * (before: every element re-read every split's (max, sum) twice, a chain of L2 round trips) */
    static_assert(ATT_MAX_SPLIT <= ATT_KC && ATT_MAX_SPLIT <= 32, "a split per lane, the weights in S's rows");
    for (int r = w; r < R; r += ATT_THREADS / 32) {
        const int t = r / group, h = kh * group + r - t * group;
        const int64_t ti = tile.i0 + t;
        const float2 ml = lane < n_split ? __ldcg(&part_ml[((int64_t)lane * T + ti) * nh + h]) : make_float2(-INFINITY, 0.0f);
        const float M = warp_max(ml.x);
        const float wgt = ml.x == -INFINITY ? 0.0f : expf(ml.x - M), L = warp_sum(ml.y * wgt);
        if (lane < n_split) S[r * ATT_KC + lane] = L > 0.0f ? wgt / L : 0.0f;
    }
    __syncthreads();
    for (int e = tid; e < R * hd; e += ATT_THREADS) {
        const int r = e / hd, d = e - r * hd, t = r / group, h = kh * group + r - t * group;
        const int64_t ti = tile.i0 + t;
        const float *po = part_o + ti * qd + (int64_t)h * hd + d, *wr = S + r * ATT_KC;
        const int64_t step = (int64_t)T * qd;
        float acc = 0.0f;
#pragma unroll 8
        for (int s2 = 0; s2 < n_split; s2++) acc += __ldcg(po + s2 * step) * wr[s2];
        stA(out + ti * qd + (int64_t)h * hd + d, acc);
    }
}

/* One block per (token, head): out = Σ_s o_s e^{m_s - M} / Σ_s l_s e^{m_s - M}. */
template <class A>
__global__ void attention_combine(const float *__restrict__ part_o, const float2 *__restrict__ part_ml,
                                  A *__restrict__ out, int32_t T, int32_t nh, int32_t hd, int32_t n_split) {
    pdl_wait();
    pdl_trigger();
    const int64_t i = blockIdx.x;
    const int32_t h = blockIdx.y;
    const int64_t qd = (int64_t)nh * hd;
    float M = -INFINITY;
    for (int s = 0; s < n_split; s++) M = fmaxf(M, part_ml[((int64_t)s * T + i) * nh + h].x);
    float L = 0.0f;
    for (int s = 0; s < n_split; s++) {
        const float2 ml = part_ml[((int64_t)s * T + i) * nh + h];
        if (ml.x != -INFINITY) L += ml.y * expf(ml.x - M);
    }
    for (int d = threadIdx.x; d < hd; d += blockDim.x) {
        float acc = 0.0f;
        for (int s = 0; s < n_split; s++) {
            const float2 ml = part_ml[((int64_t)s * T + i) * nh + h];
            if (ml.x != -INFINITY) acc += part_o[((int64_t)s * T + i) * qd + (int64_t)h * hd + d] * expf(ml.x - M);
        }
        stA(out + i * qd + (int64_t)h * hd + d, L > 0.0f ? acc / L : 0.0f);
    }
}

/* f(k) for each instantiation k of attention_kernel, until one fails */
template <class F> static cudaError_t each_attention_kernel(F f) {
    cudaError_t e = f(attention_kernel<bf16, 1>);
    if (e == cudaSuccess) e = f(attention_kernel<bf16, 2>);
    if (e == cudaSuccess) e = f(attention_kernel<bf16, 4>);
    if (e == cudaSuccess) e = f(attention_kernel<bf16, 8>);
    if (e == cudaSuccess) e = f(attention_kernel<float, 1>);
    if (e == cudaSuccess) e = f(attention_kernel<float, 2>);
    if (e == cudaSuccess) e = f(attention_kernel<float, 4>);
    if (e == cudaSuccess) e = f(attention_kernel<float, 8>);
    return e;
}

/* *dyn_max: the largest dynamic shared memory every attention_kernel launch can take — the device's opt-in
 * limit less the kernel's static shared memory (the split-K ticket's flag), which the two share — set as
 * each instantiation's opt-in. */
int attention_setup(int smem_optin, int *dyn_max, char *err, size_t errn) {
    int room = smem_optin;
    cudaError_t e = each_attention_kernel([&](auto k) {
        cudaFuncAttributes fa;
        const cudaError_t r = cudaFuncGetAttributes(&fa, k);
        if (r == cudaSuccess && smem_optin - (int)fa.sharedSizeBytes < room) room = smem_optin - (int)fa.sharedSizeBytes;
        return r;
    });
    if (e == cudaSuccess)
        e = each_attention_kernel([&](auto k) {
            return cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, room);
        });
    if (e != cudaSuccess)
        return gpu_fail(err, errn, PRISM_GPU_E_UNSUPPORTED,
                        "attention kernel (%d bytes of dynamic shared memory): %s (is this GPU covered by the build?)", room,
                        cudaGetErrorString(e));
    *dyn_max = room;
    return 0;
}

template <class A> static void attention_t(const gpu_ctx *c, int32_t layer, A *out) {
    const gpu_model *m = c->m;
    const int64_t lay = (int64_t)layer * c->n_seq * c->n_ctx * c->kvd;
    dim3 grid(c->n_tiles, m->nkv, c->n_split);
    const int smem = attention_smem(c->att_rows, m->hd, c->att_fused ? c->tq : 0);
    const dlayer *L = &m->layers[layer];
    const att_post pp = {c->att_fused, c->y, L->bqkv, L->q_norm, L->k_norm, m->inv_freq, c->qkv_n, m->eps};
    const A *kc = (const A *)c->kc + lay, *vc = (const A *)c->vc + lay;
    const float scale = 1.0f / sqrtf((float)m->hd);
    int32_t *tickets = c->n_split > 1 && !unfused(UF_COMBINE) ? c->att_tickets : NULL;
    switch (m->hd <= 32 ? 1 : m->hd <= 64 ? 2 : m->hd <= 128 ? 4 : 8) { /* hd <= ATT_MAX_HD, checked by ctx_new */
#define CASE(n) \
    case n: PDL_LAUNCH((attention_kernel<A, n>), grid, ATT_THREADS, smem, c->s, (const float *)c->q, kc, vc, (const att_tile *)c->d_tiles, out, c->part_o, c->part_ml, tickets, c->T, m->nh, m->nkv, m->hd, c->n_ctx, m->window, scale, pp); break;
        CASE(1) CASE(2) CASE(4) CASE(8)
#undef CASE
    }
    if (c->n_split > 1 && !tickets) {
        dim3 g2(c->T, m->nh);
        PDL_LAUNCH(attention_combine<A>, g2, 128, 0, c->s, (const float *)c->part_o, (const float2 *)c->part_ml, out, c->T, m->nh, m->hd, c->n_split);
    }
}

void k_attention(const gpu_ctx *c, int32_t layer, void *out) {
    if (c->m->f32) attention_t<float>(c, layer, (float *)out);
    else attention_t<bf16>(c, layer, (bf16 *)out);
}
