/* lora.cu — per-sequence LoRA inside one batch, in the segmented
 * gather-matmul style of Punica / S-LoRA (SGMV): the batch rows are grouped by
 * adapter into segments once per forward call, and each adapted projection
 * then costs two launches whatever the number of adapters:
 *   shrink: t[row] = x[row]·Aᵀ          (rank r <= LORA_RMAX)
 *   expand: y[row] += scale · t[row]·Bᵀ
 * Blocks take LORA_ROWS rows of one segment, so each A / Bᵀ element read from
 * memory serves up to LORA_ROWS rows.
 *
 * Few tiles (decode: a batch-1 step is one tile) would leave the shrink to one
 * block walking the whole input width, 64 columns a step — at Qwen2.5-7B's
 * down projection 296 dependent steps, hundreds of µs a layer. So the shrink's
 * input columns are cut into S slices (lora_slices: enough blocks to fill the
 * GPU, at least one 64-column step each), each writing its partial product,
 * and the expand sums the S partials of each (row, rank) in slice order before
 * using them (a group of threads per value, a fixed shuffle tree: the result
 * does not depend on the schedule). PRISM_CUDA_LORA_SLICES=0: one slice, the
 * old kernels' path, as the baseline.
 *
 * The projections that share an input go as one launch pair: q, k and v, then
 * gate and up (blockIdx.z: which of them; 8 launches a layer, not 14). */
#include "cuda/common.cuh"

#define LORA_KCH 64 /* input columns staged per step of the shrink */

/* Up to three projections of one input, launched together: module index (layer · LT_N + target) and the
 * column their output starts at in y, for blockIdx.z = 0, 1, 2; tz: floats of lora_t per projection. */
typedef struct {
    int32_t mi[3], col[3];
    int64_t tz;
} lora_grp;

/* a[blockIdx.z] without a dynamically indexed copy of the parameter in local memory */
static __device__ __forceinline__ int32_t by_z(const int32_t (&a)[3]) {
    return blockIdx.z == 0 ? a[0] : blockIdx.z == 1 ? a[1] : a[2];
}

/* Projection blockIdx.z, slice blockIdx.y (input columns [y·ks, y·ks + ks)) of tile blockIdx.x, into
 * t + z·tz: with S == 1, t[row][j] (row = the tile's rows in segment order, LORA_RMAX a row); else the partial
 * part[((y·n_tiles + tile)·LORA_ROWS + r)][j]. */
template <class A>
__global__ void lora_shrink(const lora_tile *__restrict__ tiles, const dmod *const *__restrict__ segtab,
                            const int32_t *__restrict__ rows, lora_grp gp, const A *__restrict__ x, int32_t ldx,
                            float *__restrict__ t, int32_t ks, int32_t S) {
    __shared__ float Xs[LORA_ROWS][LORA_KCH];
    __shared__ float As[LORA_RMAX][LORA_KCH + 1];
    const lora_tile tl = tiles[blockIdx.x];
    const dmod md = segtab[tl.seg][by_z(gp.mi)];
    t += blockIdx.z * gp.tz;
    if (md.r == 0) return;
    const int tid = threadIdx.x, nt = blockDim.x;
    const int n_out = tl.n * md.r;
    float acc[LORA_ROWS * LORA_RMAX / 256];
#pragma unroll
    for (int k = 0; k < LORA_ROWS * LORA_RMAX / 256; k++) acc[k] = 0.0f;
    const int32_t d_end = min(md.in, (int32_t)blockIdx.y * ks + ks);
    for (int32_t d0 = blockIdx.y * ks; d0 < d_end; d0 += LORA_KCH) {
        const int dn = min(LORA_KCH, d_end - d0);
        for (int e = tid; e < LORA_ROWS * LORA_KCH; e += nt) {
            const int r = e / LORA_KCH, d = e % LORA_KCH;
            Xs[r][d] = r < tl.n && d < dn ? ldA(x + (int64_t)rows[tl.row0 + r] * ldx + d0 + d) : 0.0f;
        }
        for (int e = tid; e < md.r * LORA_KCH; e += nt) {
            const int j = e / LORA_KCH, d = e % LORA_KCH;
            As[j][d] = d < dn ? md.A[(int64_t)j * md.in + d0 + d] : 0.0f;
        }
        __syncthreads();
#pragma unroll
        for (int k = 0; k < LORA_ROWS * LORA_RMAX / 256; k++) {
            const int e = tid + k * 256;
            if (e < n_out) {
                const int r = e / md.r, j = e % md.r;
                float s = 0.0f;
                for (int d = 0; d < LORA_KCH; d++) s += Xs[r][d] * As[j][d];
                acc[k] += s;
            }
        }
        __syncthreads();
    }
#pragma unroll
    for (int k = 0; k < LORA_ROWS * LORA_RMAX / 256; k++) {
        const int e = tid + k * 256;
        if (e >= n_out) continue;
        const int64_t row = S == 1 ? tl.row0 + e / md.r
                                   : ((int64_t)blockIdx.y * gridDim.x + blockIdx.x) * LORA_ROWS + e / md.r;
        t[row * LORA_RMAX + e % md.r] = acc[k];
    }
}

/* blockDim.x == 256 (the shrink's S partials summed by groups of G threads: G | 32) */
__global__ void lora_expand(const lora_tile *__restrict__ tiles, const dmod *const *__restrict__ segtab,
                            const int32_t *__restrict__ rows, lora_grp gp, const float *__restrict__ t,
                            float *__restrict__ y, int32_t ldy, int32_t S) {
    __shared__ float Ts[LORA_ROWS][LORA_RMAX];
    const lora_tile tl = tiles[blockIdx.x];
    const dmod md = segtab[tl.seg][by_z(gp.mi)];
    const int32_t col_off = by_z(gp.col);
    t += blockIdx.z * gp.tz;
    if (md.r == 0) return;
    if (S == 1) {
        for (int e = threadIdx.x; e < LORA_ROWS * LORA_RMAX; e += blockDim.x) {
            const int r = e / LORA_RMAX, j = e % LORA_RMAX;
            Ts[r][j] = r < tl.n && j < md.r ? t[(int64_t)(tl.row0 + r) * LORA_RMAX + j] : 0.0f;
        }
    } else {
        for (int e = threadIdx.x; e < LORA_ROWS * LORA_RMAX; e += blockDim.x) Ts[e / LORA_RMAX][e % LORA_RMAX] = 0.0f;
        __syncthreads();
        /* value e = (r, j), e < n·r: G threads sum slices g, g + G, ... then a shuffle tree */
        const int ne = tl.n * md.r;
        int G = 1;
        while (G < 32 && G < S && 2 * G * ne <= (int)blockDim.x) G *= 2;
        const int g = threadIdx.x % G, per = blockDim.x / G;
        for (int e0 = 0; e0 < ne; e0 += per) { /* every thread, every round: the shuffles */
            const int e = e0 + (int)threadIdx.x / G, r = e / md.r, j = e % md.r;
            float v = 0.0f;
            if (e < ne) {
#pragma unroll 8 /* the loads issued together; the adds stay in slice order */
                for (int32_t sl = g; sl < S; sl += G)
                    v += t[(((int64_t)sl * gridDim.x + blockIdx.x) * LORA_ROWS + r) * LORA_RMAX + j];
            }
            for (int o = G / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
            if (g == 0 && e < ne) Ts[r][j] = v;
        }
    }
    __syncthreads();
    const int32_t o = blockIdx.y * blockDim.x + threadIdx.x;
    if (o >= md.out) return;
    float acc[LORA_ROWS];
#pragma unroll
    for (int r = 0; r < LORA_ROWS; r++) acc[r] = 0.0f;
    for (int j = 0; j < md.r; j++) {
        const float b = md.Bt[(int64_t)j * md.out + o];
#pragma unroll
        for (int r = 0; r < LORA_ROWS; r++) acc[r] += Ts[r][j] * b;
    }
#pragma unroll /* acc stays in registers */
    for (int r = 0; r < LORA_ROWS; r++)
        if (r < tl.n) y[(int64_t)rows[tl.row0 + r] * ldy + col_off + o] += md.scale * acc[r];
}

/* Input-column slices for a shrink over `in` columns of n_tiles tiles: 1 with PRISM_CUDA_LORA_SLICES=0, or
 * when the tiles alone make two blocks per SM; else enough slices of whole 64-column steps to make about that
 * many blocks (their partials: lora_t holds 2 · n_sm · LORA_ROWS rows), LORA_MAX_SLICES at most: each expand
 * block sums every value's S partials, 8 loads at a time per thread when a full tile leaves one thread a value.
 * *ks: columns per slice. */
#define LORA_MAX_SLICES 64
static int32_t lora_slices(const gpu_ctx *c, int32_t in, int32_t n_tiles, int32_t *ks) {
    static int off = -1;
    if (off < 0) off = getenv("PRISM_CUDA_LORA_SLICES") && *getenv("PRISM_CUDA_LORA_SLICES") == '0';
    const int32_t want = 2 * c->m->n_sm / n_tiles, steps = (in + LORA_KCH - 1) / LORA_KCH;
    int32_t S = off || want < 2 ? 1 : want < steps ? want : steps;
    if (S > LORA_MAX_SLICES) S = LORA_MAX_SLICES;
    const int32_t per = (steps + S - 1) / S; /* 64-column steps per slice */
    *ks = per * LORA_KCH;
    return S > 1 ? (steps + per - 1) / per : 1; /* no empty slice */
}

void k_lora(const gpu_ctx *c, int32_t layer, const int32_t *targets, const int32_t *cols, int32_t n, const void *x,
            int32_t ldx, float *y, int32_t ldy) {
    if (c->n_ltiles == 0) return;
    const gpu_model *m = c->m;
    lora_grp gp;
    int32_t max_out = 0;
    for (int32_t z = 0; z < n; z++) {
        const int32_t tg = targets[z], out = tg == LT_Q                    ? (int32_t)c->qd
                                             : tg == LT_K || tg == LT_V    ? (int32_t)c->kvd
                                             : tg == LT_GATE || tg == LT_UP ? m->F
                                                                            : m->H;
        gp.mi[z] = layer * LT_N + tg, gp.col[z] = cols[z];
        if (out > max_out) max_out = out;
    }
    gp.tz = c->lora_tz;
    const int32_t in = targets[0] == LT_O ? (int32_t)c->qd : targets[0] == LT_DOWN ? m->F : m->H; /* the group's */
    int32_t ks;
    const int32_t S = lora_slices(c, in, c->n_ltiles, &ks);
    const dim3 gs(c->n_ltiles, S, n);
    if (m->f32) lora_shrink<float><<<gs, 256, 0, c->s>>>(c->d_ltiles, c->d_segtab, c->d_rows, gp, (const float *)x, ldx, c->lora_t, ks, S);
    else lora_shrink<bf16><<<gs, 256, 0, c->s>>>(c->d_ltiles, c->d_segtab, c->d_rows, gp, (const bf16 *)x, ldx, c->lora_t, ks, S);
    const dim3 grid(c->n_ltiles, (max_out + 255) / 256, n);
    lora_expand<<<grid, 256, 0, c->s>>>(c->d_ltiles, c->d_segtab, c->d_rows, gp, c->lora_t, y, ldy, S);
}
