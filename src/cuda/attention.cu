/* attention.cu — causal GQA attention over the BF16 KV cache, one kernel for
 * prefill and decode (flash-attention style: keys stream through shared
 * memory in chunks with an online softmax, nothing of size T x keys is ever
 * stored), plus split-K for decode.
 *
 * A block takes one tile — up to `tq` consecutive positions of one sequence —
 * and one KV head, so its rows are (token, query head of that KV head's
 * group): every key and value is read once for the whole group. With split-K
 * (few tiles, long contexts: decode) the key range is cut into n_split parts
 * whose partial (max, sum, unnormalised output) a second kernel combines.
 *
 * Masks: row (token at position p) sees keys [first(p), p] where first(p) =
 * p - window + 1 for sliding-window models (Mistral), else 0. */
#include <math.h>

#include "cuda/common.cuh"

static __device__ __forceinline__ int32_t first_key(int32_t p, int32_t window) {
    return window > 0 && p - window + 1 > 0 ? p - window + 1 : 0;
}

int attention_smem(int32_t rows, int32_t hd) {
    /* Q (rows, hd) | K (KC, hd + 1) | V (KC, hd) | S (rows, KC) | O (rows, hd) | m, l, alpha (rows) */
    return (int)sizeof(float) * (rows * hd + ATT_KC * (hd + 1) + ATT_KC * hd + rows * ATT_KC + rows * hd + 3 * rows);
}

template <class A>
__global__ void attention_kernel(const float *__restrict__ q, const A *__restrict__ kc, const A *__restrict__ vc,
                                 const att_tile *__restrict__ tiles, A *__restrict__ out, float *__restrict__ part_o,
                                 float2 *__restrict__ part_ml, int32_t T, int32_t nh, int32_t nkv, int32_t hd,
                                 int32_t n_ctx, int32_t window, float scale) {
    PRISM_DYN_SMEM(float, sm);
    const att_tile tile = tiles[blockIdx.x];
    const int32_t kh = blockIdx.y, split = blockIdx.z, n_split = gridDim.z;
    const int32_t group = nh / nkv, R = tile.n * group;
    const int64_t kvd = (int64_t)nkv * hd, qd = (int64_t)nh * hd;
    float *Qs = sm, *Ks = Qs + R * hd, *Vs = Ks + ATT_KC * (hd + 1), *S = Vs + ATT_KC * hd, *O = S + R * ATT_KC,
          *rm = O + R * hd, *rl = rm + R, *ra = rl + R;
    const int tid = threadIdx.x, nt = blockDim.x;

    /* rows: r = t * group + g -> token i0 + t, head kh * group + g */
    for (int e = tid; e < R * hd; e += nt) {
        const int r = e / hd, d = e % hd, t = r / group, g = r % group;
        Qs[e] = q[(int64_t)(tile.i0 + t) * qd + (int64_t)(kh * group + g) * hd + d] * scale;
        O[e] = 0.0f;
    }
    for (int r = tid; r < R; r += nt) rm[r] = -INFINITY, rl[r] = 0.0f;

    const int32_t kbeg = first_key(tile.p0, window), kend = tile.p0 + tile.n; /* keys [kbeg, kend) */
    int32_t span = (kend - kbeg + n_split - 1) / n_split;
    span = (span + ATT_KC - 1) / ATT_KC * ATT_KC;
    const int32_t s0 = kbeg + split * span, s1 = min(kend, s0 + span);
    const A *kb = kc + (int64_t)tile.seq * n_ctx * kvd + (int64_t)kh * hd;
    const A *vb = vc + (int64_t)tile.seq * n_ctx * kvd + (int64_t)kh * hd;
    __syncthreads();

    for (int32_t c0 = s0; c0 < s1; c0 += ATT_KC) {
        const int32_t nk = min(ATT_KC, s1 - c0);
        for (int e = tid; e < ATT_KC * hd; e += nt) {
            const int k = e / hd, d = e % hd;
            float kv = 0.0f, vv = 0.0f;
            if (k < nk) {
                kv = ldA(kb + (int64_t)(c0 + k) * kvd + d);
                vv = ldA(vb + (int64_t)(c0 + k) * kvd + d);
            }
            Ks[k * (hd + 1) + d] = kv;
            Vs[k * hd + d] = vv;
        }
        __syncthreads();
        for (int e = tid; e < R * ATT_KC; e += nt) {
            const int r = e / ATT_KC, k = e % ATT_KC, key = c0 + k;
            const int32_t p = tile.p0 + r / group;
            float sc = -INFINITY;
            if (k < nk && key <= p && key >= first_key(p, window)) {
                const float *qr = Qs + r * hd, *kr = Ks + k * (hd + 1);
                float acc = 0.0f;
                for (int d = 0; d < hd; d++) acc += qr[d] * kr[d];
                sc = acc;
            }
            S[e] = sc;
        }
        __syncthreads();
        for (int r = tid; r < R; r += nt) {
            float *sr = S + r * ATT_KC;
            float mx = rm[r];
            for (int k = 0; k < ATT_KC; k++) mx = fmaxf(mx, sr[k]);
            if (mx == -INFINITY) { /* nothing visible yet */
                ra[r] = 1.0f;
                for (int k = 0; k < ATT_KC; k++) sr[k] = 0.0f;
                continue;
            }
            const float alpha = rm[r] == -INFINITY ? 0.0f : expf(rm[r] - mx);
            float sum = 0.0f;
            for (int k = 0; k < ATT_KC; k++) {
                const float pk = sr[k] == -INFINITY ? 0.0f : expf(sr[k] - mx);
                sr[k] = pk;
                sum += pk;
            }
            rl[r] = rl[r] * alpha + sum;
            rm[r] = mx;
            ra[r] = alpha;
        }
        __syncthreads();
        for (int e = tid; e < R * hd; e += nt) {
            const int r = e / hd, d = e % hd;
            const float *sr = S + r * ATT_KC;
            float acc = O[e] * ra[r];
            for (int k = 0; k < nk; k++) acc += sr[k] * Vs[k * hd + d];
            O[e] = acc;
        }
        __syncthreads();
    }

    for (int e = tid; e < R * hd; e += nt) {
        const int r = e / hd, d = e % hd, t = r / group, h = kh * group + r % group;
        const int64_t i = tile.i0 + t;
        if (n_split == 1) {
            stA(out + i * qd + (int64_t)h * hd + d, rl[r] > 0.0f ? O[e] / rl[r] : 0.0f);
        } else {
            part_o[((int64_t)split * T + i) * qd + (int64_t)h * hd + d] = O[e];
            if (d == 0) part_ml[((int64_t)split * T + i) * nh + h] = make_float2(rm[r], rl[r]);
        }
    }
}

/* One block per (token, head): out = Σ_s o_s e^{m_s - M} / Σ_s l_s e^{m_s - M}. */
template <class A>
__global__ void attention_combine(const float *__restrict__ part_o, const float2 *__restrict__ part_ml,
                                  A *__restrict__ out, int32_t T, int32_t nh, int32_t hd, int32_t n_split) {
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

int attention_setup(int smem_optin, char *err, size_t errn) {
    cudaError_t e = cudaFuncSetAttribute(attention_kernel<bf16>, cudaFuncAttributeMaxDynamicSharedMemorySize, smem_optin);
    if (e == cudaSuccess)
        e = cudaFuncSetAttribute(attention_kernel<float>, cudaFuncAttributeMaxDynamicSharedMemorySize, smem_optin);
    if (e != cudaSuccess)
        return gpu_fail(err, errn, PRISM_GPU_E_UNSUPPORTED, "attention kernel: %s (is this GPU covered by the build?)",
                        cudaGetErrorString(e));
    return 0;
}

template <class A> static void attention_t(const gpu_ctx *c, int32_t layer, A *out) {
    const gpu_model *m = c->m;
    const int64_t lay = (int64_t)layer * c->n_seq * c->n_ctx * c->kvd;
    dim3 grid(c->n_tiles, m->nkv, c->n_split);
    const int smem = attention_smem(c->att_rows, m->hd);
    attention_kernel<A><<<grid, ATT_THREADS, smem, c->s>>>(c->q, (const A *)c->kc + lay, (const A *)c->vc + lay, c->d_tiles, out, c->part_o, c->part_ml, c->T, m->nh, m->nkv, m->hd, c->n_ctx, m->window, 1.0f / sqrtf((float)m->hd));
    if (c->n_split > 1) {
        dim3 g2(c->T, m->nh);
        attention_combine<A><<<g2, 128, 0, c->s>>>(c->part_o, c->part_ml, out, c->T, m->nh, m->hd, c->n_split);
    }
}

void k_attention(const gpu_ctx *c, int32_t layer, void *out) {
    if (c->m->f32) attention_t<float>(c, layer, (float *)out);
    else attention_t<bf16>(c, layer, (bf16 *)out);
}
