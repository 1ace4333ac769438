/* gate.cu — the PRISM gate (src/prism/gate.h) on the device. Routing needs
 * the gate's logit at a few rows of the residual stream after layer 0 (each
 * fresh sequence's last prompt token). Computed here, one float per row comes
 * back to the host instead of a hidden state, and no host core spends
 * ~in·(128 + 64) multiply-adds per sequence while the GPU waits for the route.
 *
 * One block per row, F32 throughout, the exact GELU (erff) as on the host:
 * the standardised row (x − mu)/sigma in shared memory, then a warp per unit
 * of each layer (the lanes stride the unit's weight row: coalesced loads),
 * the layer's values in shared memory for the next one. The sums run in
 * another order than the host's, so the logits agree to rounding. */
#include "cuda/common.cuh"

#define GATE_THREADS 256

struct gpu_gate {
    int dev;
    int32_t in, h1, h2;
    float *p; /* mu, sigma (in each) | w1 (h1, in) | b1 (h1) | w2 (h2, h1) | b2 (h2) | w3 (h2) | b3 (1) */
    int64_t bytes;
};

static int64_t gate_floats(int32_t in, int32_t h1, int32_t h2) {
    return 2 * (int64_t)in + (int64_t)h1 * in + h1 + (int64_t)h2 * h1 + h2 + h2 + 1;
}

static __device__ __forceinline__ float gelu_exact(float x) { return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f)); }

/* out[j] = b[j] + w[j, :]·v (GELU'd if gelu) for j < n_out, a warp per j; v (n_in) in shared memory. */
static __device__ __forceinline__ void gate_dense(float *out, const float *__restrict__ w, const float *__restrict__ b,
                                                  const float *v, int32_t n_in, int32_t n_out, bool gelu) {
    const int lane = threadIdx.x & 31, nw = blockDim.x >> 5;
    for (int32_t j = threadIdx.x >> 5; j < n_out; j += nw) {
        const float *wr = w + (int64_t)j * n_in;
        float acc = 0.0f;
        for (int32_t i = lane; i < n_in; i += 32) acc = fmaf(wr[i], v[i], acc);
        acc = warp_sum(acc) + b[j];
        if (lane == 0) out[j] = gelu ? gelu_exact(acc) : acc;
    }
}

/* logit[i] = the gate at row rows[i] of x (T, in). Shared memory: (in + h1 + h2) floats. */
__global__ void __launch_bounds__(GATE_THREADS) gate_kernel(float *logit, const float *__restrict__ x,
                                                            const int32_t *__restrict__ rows, const float *__restrict__ p,
                                                            int32_t in, int32_t h1, int32_t h2) {
    PRISM_DYN_SMEM(float, sm);
    float *xs = sm, *a1 = xs + in, *a2 = a1 + h1;
    const float *mu = p, *sigma = mu + in, *w1 = sigma + in, *b1 = w1 + (int64_t)h1 * in, *w2 = b1 + h1,
                *b2 = w2 + (int64_t)h2 * h1, *w3 = b2 + h2, *b3 = w3 + h2;
    const float *xr = x + (int64_t)rows[blockIdx.x] * in;
    for (int32_t i = threadIdx.x; i < in; i += blockDim.x) xs[i] = (xr[i] - mu[i]) / sigma[i];
    __syncthreads();
    gate_dense(a1, w1, b1, xs, in, h1, true);
    __syncthreads();
    gate_dense(a2, w2, b2, a1, h1, h2, true);
    __syncthreads();
    if (threadIdx.x < 32) gate_dense(logit + blockIdx.x, w3, b3, a2, h2, 1, false);
}

static size_t gate_smem(const gpu_gate *g) { return (size_t)(g->in + g->h1 + g->h2) * sizeof(float); }

static void gate_free(gpu_gate *g) {
    if (!g) return;
    cudaSetDevice(g->dev);
    cudaFree(g->p);
    account(-g->bytes);
    free(g);
}

static int gate_new(gpu_model *m, const gpu_gate_desc *d, gpu_gate **out, char *err, size_t errn) {
    *out = NULL;
    if (d->in != m->H || d->h1 <= 0 || d->h2 <= 0 || !d->p)
        return gpu_fail(err, errn, PRISM_GPU_E_ARG, "gate of %d → %d → %d → 1 for a model of hidden size %d", d->in,
                        d->h1, d->h2, m->H);
    CU(cudaSetDevice(m->dev), "cudaSetDevice");
    gpu_gate *g = (gpu_gate *)calloc(1, sizeof *g);
    if (!g) return gpu_fail(err, errn, PRISM_GPU_E_NOMEM, "out of host memory");
    g->dev = m->dev, g->in = d->in, g->h1 = d->h1, g->h2 = d->h2;
    const size_t smem = gate_smem(g);
    if (smem > (size_t)m->smem_optin) {
        free(g);
        return gpu_fail(err, errn, PRISM_GPU_E_UNSUPPORTED, "the gate needs %zu bytes of shared memory, the device has %d",
                        smem, m->smem_optin);
    }
    cudaError_t e = smem > 48 * 1024 ? cudaFuncSetAttribute(gate_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem)
                                     : cudaSuccess;
    const size_t bytes = (size_t)gate_floats(d->in, d->h1, d->h2) * sizeof(float);
    if (e == cudaSuccess) e = cudaMalloc((void **)&g->p, bytes);
    if (e == cudaSuccess) {
        g->bytes = (int64_t)bytes;
        account(g->bytes);
        e = cudaMemcpy(g->p, d->p, bytes, cudaMemcpyHostToDevice);
    }
    if (e != cudaSuccess) {
        cudaGetLastError();
        gate_free(g);
        return cuda_fail(err, errn, e, "uploading the gate");
    }
    *out = g;
    return 0;
}

static int gate_logits(gpu_ctx *c, const gpu_gate *g, const int32_t *rows, int32_t n, float *out, char *err,
                       size_t errn) {
    CU(cudaSetDevice(c->m->dev), "cudaSetDevice");
    if (g->dev != c->m->dev || g->in != c->m->H)
        return gpu_fail(err, errn, PRISM_GPU_E_ARG, "the gate (device %d, %d features) and the context (device %d, hidden "
                        "size %d) differ", g->dev, g->in, c->m->dev, c->m->H);
    if (n < 0 || n > c->n_batch) return gpu_fail(err, errn, PRISM_GPU_E_ARG, "%d gate rows (the context holds %d)", n, c->n_batch);
    for (int32_t i = 0; i < n; i++)
        if (rows[i] < 0 || rows[i] >= c->T)
            return gpu_fail(err, errn, PRISM_GPU_E_ARG, "gate row %d of a batch of %d", rows[i], c->T);
    if (n == 0) return 0;
    /* the sampling scratch (B × 16 bytes): the gate runs after layer 0, sampling after the head */
    int32_t *drows = (int32_t *)c->samp;
    float *dl = (float *)(drows + c->n_batch);
    CU(cudaMemcpyAsync(drows, rows, (size_t)n * 4, cudaMemcpyHostToDevice, c->s), "uploading the gate's rows");
    gate_kernel<<<n, GATE_THREADS, gate_smem(g), c->s>>>(dl, c->x, drows, g->p, g->in, g->h1, g->h2);
    CU(cudaGetLastError(), "the gate");
    CU(cudaMemcpyAsync(out, dl, (size_t)n * 4, cudaMemcpyDeviceToHost, c->s), "copying the gate's logits");
    CU(cudaStreamSynchronize(c->s), "the gate");
    return 0;
}

void gpu_gate_api(prism_gpu_api *api) {
    api->gate_new = gate_new;
    api->gate_free = gate_free;
    api->gate_logits = gate_logits;
}
