/* lora.cu — per-sequence LoRA inside one batch, in the segmented
 * gather-matmul style of Punica / S-LoRA (SGMV): the batch rows are grouped by
 * adapter into segments once per forward call, and each adapted projection
 * then costs two launches whatever the number of adapters:
 *   shrink: t[row] = x[row]·Aᵀ          (rank r <= LORA_RMAX)
 *   expand: y[row] += scale · t[row]·Bᵀ
 * Blocks take LORA_ROWS rows of one segment, so each A / Bᵀ element read from
 * memory serves up to LORA_ROWS rows. */
#include "cuda/common.cuh"

#define LORA_KCH 64 /* input columns staged per step of the shrink */

template <class A>
__global__ void lora_shrink(const lora_tile *__restrict__ tiles, const dmod *const *__restrict__ segtab,
                            const int32_t *__restrict__ rows, int32_t mod_index, const A *__restrict__ x,
                            int32_t ldx, float *__restrict__ t) {
    __shared__ float Xs[LORA_ROWS][LORA_KCH];
    __shared__ float As[LORA_RMAX][LORA_KCH + 1];
    const lora_tile tl = tiles[blockIdx.x];
    const dmod md = segtab[tl.seg][mod_index];
    if (md.r == 0) return;
    const int tid = threadIdx.x, nt = blockDim.x;
    const int n_out = tl.n * md.r;
    float acc[LORA_ROWS * LORA_RMAX / 256];
#pragma unroll
    for (int k = 0; k < LORA_ROWS * LORA_RMAX / 256; k++) acc[k] = 0.0f;
    for (int32_t d0 = 0; d0 < md.in; d0 += LORA_KCH) {
        const int dn = min(LORA_KCH, md.in - d0);
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
        if (e < n_out) t[(int64_t)(tl.row0 + e / md.r) * LORA_RMAX + e % md.r] = acc[k];
    }
}

__global__ void lora_expand(const lora_tile *__restrict__ tiles, const dmod *const *__restrict__ segtab,
                            const int32_t *__restrict__ rows, int32_t mod_index, const float *__restrict__ t,
                            float *__restrict__ y, int32_t ldy, int32_t col_off) {
    __shared__ float Ts[LORA_ROWS][LORA_RMAX];
    const lora_tile tl = tiles[blockIdx.x];
    const dmod md = segtab[tl.seg][mod_index];
    if (md.r == 0) return;
    for (int e = threadIdx.x; e < LORA_ROWS * LORA_RMAX; e += blockDim.x) {
        const int r = e / LORA_RMAX, j = e % LORA_RMAX;
        Ts[r][j] = r < tl.n && j < md.r ? t[(int64_t)(tl.row0 + r) * LORA_RMAX + j] : 0.0f;
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
    for (int r = 0; r < tl.n; r++) y[(int64_t)rows[tl.row0 + r] * ldy + col_off + o] += md.scale * acc[r];
}

void k_lora(const gpu_ctx *c, int32_t layer, int32_t target, const void *x, int32_t ldx, float *y, int32_t ldy,
            int32_t col_off) {
    if (c->n_ltiles == 0) return;
    const gpu_model *m = c->m;
    const int32_t out = target == LT_Q ? (int32_t)c->qd
                        : target == LT_K || target == LT_V ? (int32_t)c->kvd
                        : target == LT_GATE || target == LT_UP ? m->F
                                                              : m->H;
    const int32_t mi = layer * LT_N + target;
    if (m->f32) lora_shrink<float><<<c->n_ltiles, 256, 0, c->s>>>(c->d_ltiles, c->d_segtab, c->d_rows, mi, (const float *)x, ldx, c->lora_t);
    else lora_shrink<bf16><<<c->n_ltiles, 256, 0, c->s>>>(c->d_ltiles, c->d_segtab, c->d_rows, mi, (const bf16 *)x, ldx, c->lora_t);
    dim3 grid(c->n_ltiles, (out + 255) / 256);
    lora_expand<<<grid, 256, 0, c->s>>>(c->d_ltiles, c->d_segtab, c->d_rows, mi, c->lora_t, y, ldy, col_off);
}
