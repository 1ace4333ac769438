/* backend.cu — the CUDA module's host side: devices, weight upload, adapters,
 * contexts and the forward pass, behind the table of gpu.h.
 *
 * One layer on the device (T tokens, all kernels on the context's stream):
 *   xb  = bf16(RMSNorm(x))                        k_rmsnorm / previous k_add_rmsnorm
 *   y   = xb·[Wq|Wk|Wv]ᵀ (+ LoRA q, k, v)           one GEMM, SGMV
 *   q, cache[k, v] = RoPE(norm(y + b))             k_qkv_post (inside k_attention
 *   xb  = attention(q, cache)                      k_attention   when decoding)
 *   y   = xb·Woᵀ (+ LoRA o); x += y + bo; xb = bf16(RMSNorm(x))
 *   y   = xb·[Wg|Wu]ᵀ (+ LoRA gate, up); xb = bf16(silu(g)·u)    (one k_gemv_glu
 *                                                                   for few tokens)
 *   y   = xb·Wdᵀ (+ LoRA down); x += y + bd; xb = next layer's norm of x
 * GEMMs are cuBLAS (BF16 in, F32 out, F32 accumulation) except for up to
 * GEMV_MAX_T tokens, where the bandwidth-bound k_gemv reads each weight once.
 * A decode step is replayed from a CUDA graph; on sm_90 its kernels are
 * chained by programmatic dependent launch (common.cuh). */
#include <dlfcn.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda/common.cuh"

#ifndef PRISM_CUDA_ARCHS
#define PRISM_CUDA_ARCHS "?"
#endif
#define STR_(x) #x
#define STR(x) STR_(x)

/* ------------------------------------------------------------------ errors */

int gpu_fail(char *err, size_t errn, int code, const char *fmt, ...) {
    if (err && errn) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errn, fmt, ap);
        va_end(ap);
    }
    return code;
}

int cuda_fail(char *err, size_t errn, cudaError_t e, const char *what) {
    if (e == cudaErrorMemoryAllocation) {
        size_t fr = 0, tot = 0;
        cudaMemGetInfo(&fr, &tot);
        return gpu_fail(err, errn, PRISM_GPU_E_NOMEM, "%s: out of GPU memory (%.2f GiB free of %.2f GiB)", what,
                        fr / 1073741824.0, tot / 1073741824.0);
    }
    if (e == cudaErrorNoKernelImageForDevice || e == cudaErrorInvalidDeviceFunction)
        return gpu_fail(err, errn, PRISM_GPU_E_UNSUPPORTED,
                        "%s: %s — this build covers compute capabilities %s; rebuild with CUDA_ARCHS set for this GPU",
                        what, cudaGetErrorString(e), PRISM_CUDA_ARCHS);
    return gpu_fail(err, errn, PRISM_GPU_E_DEVICE, "%s: CUDA error %s (%s)", what, cudaGetErrorName(e),
                    cudaGetErrorString(e));
}

static const char *blas_str(cublasStatus_t s) {
    switch (s) {
    case CUBLAS_STATUS_NOT_INITIALIZED: return "not initialized";
    case CUBLAS_STATUS_ALLOC_FAILED: return "allocation failed";
    case CUBLAS_STATUS_INVALID_VALUE: return "invalid value";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "architecture mismatch";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "execution failed";
    case CUBLAS_STATUS_INTERNAL_ERROR: return "internal error";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "not supported";
    default: return "error";
    }
}

#define BL(call, what)                                                                                  \
    do {                                                                                                \
        cublasStatus_t b_ = (call);                                                                     \
        if (b_ != CUBLAS_STATUS_SUCCESS)                                                                \
            return gpu_fail(err, errn, PRISM_GPU_E_DEVICE, "%s: cuBLAS %s (%d)", (what), blas_str(b_), (int)b_); \
    } while (0)

/* ------------------------------------------------------------------ memory accounting */

static int64_t g_bytes_now, g_bytes_peak;

void account(int64_t delta) {
    int64_t now = __atomic_add_fetch(&g_bytes_now, delta, __ATOMIC_RELAXED), peak;
    while (now > (peak = __atomic_load_n(&g_bytes_peak, __ATOMIC_RELAXED)) &&
           !__atomic_compare_exchange_n(&g_bytes_peak, &peak, now, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
    }
}

static int dalloc(void **p, size_t bytes, const char *what, char *err, size_t errn) {
    *p = NULL;
    if (bytes == 0) return 0;
    cudaError_t e = cudaMalloc(p, bytes);
    if (e != cudaSuccess) {
        *p = NULL;
        cudaGetLastError();
        char w[160];
        snprintf(w, sizeof w, "allocating %.1f MiB for %s", bytes / 1048576.0, what);
        return cuda_fail(err, errn, e, w);
    }
    account((int64_t)bytes);
    return 0;
}

/* ------------------------------------------------------------------ devices */

static int set_device(int32_t dev, char *err, size_t errn) {
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess) {
        cudaGetLastError();
        void *drv = dlopen("libcuda.so.1", RTLD_LAZY | RTLD_LOCAL);
        if (!drv)
            return gpu_fail(err, errn, PRISM_GPU_E_DEVICE,
                            "no usable CUDA device: this machine has no NVIDIA driver (libcuda.so.1 not found)");
        dlclose(drv);
        return gpu_fail(err, errn, PRISM_GPU_E_DEVICE, "no usable CUDA device: %s (%s)", cudaGetErrorString(e),
                        cudaGetErrorName(e));
    }
    if (n == 0) return gpu_fail(err, errn, PRISM_GPU_E_DEVICE, "no CUDA device found");
    if (dev < 0 || dev >= n)
        return gpu_fail(err, errn, PRISM_GPU_E_ARG, "CUDA device %d does not exist (this machine has %d: 0..%d)", dev,
                        n, n - 1);
    CU(cudaSetDevice(dev), "cudaSetDevice");
    return 0;
}

static int device_count(int32_t *n, char *err, size_t errn) {
    int k = 0;
    cudaError_t e = cudaGetDeviceCount(&k);
    if (e != cudaSuccess) {
        cudaGetLastError();
        *n = 0;
        return gpu_fail(err, errn, PRISM_GPU_E_DEVICE, "no usable CUDA device: %s", cudaGetErrorString(e));
    }
    *n = k;
    return 0;
}

static int device_info(int32_t dev, gpu_device_info *info, char *err, size_t errn) {
    int rc = set_device(dev, err, errn);
    if (rc) return rc;
    cudaDeviceProp p;
    CU(cudaGetDeviceProperties(&p, dev), "cudaGetDeviceProperties");
    memset(info, 0, sizeof *info);
    snprintf(info->name, sizeof info->name, "%.127s", p.name);
    info->cc_major = p.major;
    info->cc_minor = p.minor;
    info->n_sm = p.multiProcessorCount;
    size_t fr = 0, tot = 0;
    CU(cudaMemGetInfo(&fr, &tot), "cudaMemGetInfo");
    info->mem_total = (int64_t)tot;
    info->mem_free = (int64_t)fr;
    int v = 0;
    cudaDriverGetVersion(&v);
    info->driver_version = v;
    cudaRuntimeGetVersion(&v);
    info->runtime_version = v;
    return 0;
}

/* ------------------------------------------------------------------ model */

static int model_alloc(gpu_model *m, void **p, size_t bytes, const char *what, char *err, size_t errn) {
    if (m->n_allocs == m->cap_allocs) {
        int cap = m->cap_allocs ? 2 * m->cap_allocs : 64;
        void **a = (void **)realloc(m->allocs, (size_t)cap * sizeof *a);
        if (!a) return gpu_fail(err, errn, PRISM_GPU_E_NOMEM, "out of host memory");
        m->allocs = a;
        m->cap_allocs = cap;
    }
    int rc = dalloc(p, bytes, what, err, errn);
    if (rc) return rc;
    m->allocs[m->n_allocs++] = *p;
    m->bytes += (int64_t)bytes;
    return 0;
}

static inline uint16_t f32_to_bf16_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40); /* NaN stays NaN */
    u += 0x7fffu + ((u >> 16) & 1u);                                        /* round to nearest even */
    return (uint16_t)(u >> 16);
}

static inline float f16_to_f32(uint16_t h) {
    uint32_t s = (uint32_t)(h & 0x8000u) << 16, e = (h >> 10) & 0x1f, f = h & 0x3ffu, u;
    if (e == 0) {
        if (f == 0) u = s;
        else { /* subnormal */
            e = 113;
            while (!(f & 0x400u)) f <<= 1, e--;
            u = s | (e << 23) | ((f & 0x3ffu) << 13);
        }
    } else if (e == 31) u = s | 0x7f800000u | (f << 13);
    else u = s | ((e + 112) << 23) | (f << 13);
    float r;
    memcpy(&r, &u, 4);
    return r;
}

/* Host staging for dtype conversion, 16 Mi elements at a time. */
#define STAGE_ELEMS (16u << 20)

static inline float bf16_bits_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* One weight into dst (f32 ? F32 : BF16), converted on the host through stage. */
static int upload_w(void *dst, int f32, const gpu_linear *g, void *stage, const char *what, char *err, size_t errn) {
    const int64_t n = g->out * g->in;
    if ((g->dt == GPU_DT_BF16 && !f32) || (g->dt == GPU_DT_F32 && f32)) {
        CU(cudaMemcpy(dst, g->w, (size_t)n * (f32 ? 4 : 2), cudaMemcpyHostToDevice), what);
        return 0;
    }
    for (int64_t i0 = 0; i0 < n; i0 += STAGE_ELEMS) {
        const int64_t k = n - i0 < (int64_t)STAGE_ELEMS ? n - i0 : (int64_t)STAGE_ELEMS;
        for (int64_t j = 0; j < k; j++) {
            float v = g->dt == GPU_DT_F32    ? ((const float *)g->w)[i0 + j]
                      : g->dt == GPU_DT_BF16 ? bf16_bits_to_f32(((const uint16_t *)g->w)[i0 + j])
                                             : f16_to_f32(((const uint16_t *)g->w)[i0 + j]);
            if (f32) ((float *)stage)[j] = v;
            else ((uint16_t *)stage)[j] = f32_to_bf16_bits(v);
        }
        CU(cudaMemcpy((char *)dst + (size_t)i0 * (f32 ? 4 : 2), stage, (size_t)k * (f32 ? 4 : 2), cudaMemcpyHostToDevice),
           what);
    }
    return 0;
}

/* Uploads the matrices parts[0..n) stacked by rows into one [Σout, in] weight. */
static int upload_stacked(gpu_model *m, const gpu_model_desc *d, dlin *out, const gpu_linear *const *parts, int n,
                          void *stage, const char *what, char *err, size_t errn) {
    int64_t rows = 0;
    for (int i = 0; i < n; i++) rows += parts[i]->out;
    out->out = rows;
    out->in = parts[0]->in;
    int rc = model_alloc(m, &out->w, (size_t)(rows * out->in) * m->asz, what, err, errn);
    if (rc) return rc;
    if (d->random_init) {
        k_fill_uniform(0, m->f32, out->w, rows * out->in, 1.0f / sqrtf((float)out->in), d->seed + (uint64_t)m->n_allocs);
        return 0;
    }
    int64_t off = 0;
    for (int i = 0; i < n; i++) {
        if ((rc = upload_w((char *)out->w + (size_t)(off * out->in) * m->asz, m->f32, parts[i], stage, what, err, errn)))
            return rc;
        off += parts[i]->out;
    }
    return 0;
}

/* A vector of F32: the concatenation of srcs (a NULL part is zeros, or ones with
 * fill_one); *dst stays NULL when every part is NULL and !fill_one. */
static int upload_vec(gpu_model *m, float **dst, const float *const *srcs, const int64_t *lens, int n, int fill_one,
                      const char *what, char *err, size_t errn) {
    int any = fill_one;
    int64_t total = 0;
    for (int i = 0; i < n; i++) any |= srcs[i] != NULL, total += lens[i];
    *dst = NULL;
    if (!any) return 0;
    int rc = model_alloc(m, (void **)dst, (size_t)total * 4, what, err, errn);
    if (rc) return rc;
    int64_t off = 0;
    for (int i = 0; i < n; i++) {
        if (srcs[i]) CU(cudaMemcpy(*dst + off, srcs[i], (size_t)lens[i] * 4, cudaMemcpyHostToDevice), what);
        else k_fill_f32(0, *dst + off, lens[i], fill_one ? 1.0f : 0.0f);
        off += lens[i];
    }
    return 0;
}

static void model_free(gpu_model *m) {
    if (!m) return;
    cudaSetDevice(m->dev);
    for (int i = 0; i < m->n_allocs; i++) cudaFree(m->allocs[i]);
    account(-m->bytes);
    free(m->allocs);
    free(m->layers);
    free(m);
}

static int model_new(const gpu_model_desc *d, int32_t dev, gpu_model **out, char *err, size_t errn) {
    *out = NULL;
    int rc = set_device(dev, err, errn);
    if (rc) return rc;
    cudaDeviceProp p;
    CU(cudaGetDeviceProperties(&p, dev), "cudaGetDeviceProperties");
    if (p.major < 8)
        return gpu_fail(err, errn, PRISM_GPU_E_UNSUPPORTED,
                        "CUDA device %d (%s) has compute capability %d.%d; prism's CUDA backend needs 8.0 or newer "
                        "(BF16 tensor cores: A100, RTX 30xx/40xx, L4, H100)",
                        dev, p.name, p.major, p.minor);
    if (d->head_dim % 2 || d->head_dim > 512 || d->n_heads % d->n_kv_heads)
        return gpu_fail(err, errn, PRISM_GPU_E_UNSUPPORTED, "head_dim %d / %d heads / %d KV heads not supported on CUDA",
                        d->head_dim, d->n_heads, d->n_kv_heads);
    int optin = 0;
    CU(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev), "cudaDeviceGetAttribute");
    int att_smem = 0;
    if ((rc = attention_setup(optin, &att_smem, err, errn))) return rc;
    /* weights fit? */
    const int64_t H = d->hidden, hd = d->head_dim, qd = (int64_t)d->n_heads * hd, kvd = (int64_t)d->n_kv_heads * hd,
                  F = d->ffn, V = d->vocab;
    const int64_t wbytes = (d->f32 ? 4 : 2) * (d->n_layers * (H * (qd + 2 * kvd) + qd * H + 3 * F * H) + V * H * (d->tied ? 1 : 2));
    size_t fr = 0, tot = 0;
    CU(cudaMemGetInfo(&fr, &tot), "cudaMemGetInfo");
    if ((size_t)wbytes > fr)
        return gpu_fail(err, errn, PRISM_GPU_E_NOMEM,
                        "the %s weights need %.2f GiB but CUDA device %d (%s) has %.2f GiB free of %.2f GiB",
                        d->f32 ? "F32 (--precision exact)" : "BF16", wbytes / 1073741824.0, dev, p.name, fr / 1073741824.0, tot / 1073741824.0);

    gpu_model *m = (gpu_model *)calloc(1, sizeof *m);
    if (!m) return gpu_fail(err, errn, PRISM_GPU_E_NOMEM, "out of host memory");
    m->dev = dev;
    m->n_layers = d->n_layers, m->H = d->hidden, m->nh = d->n_heads, m->nkv = d->n_kv_heads, m->hd = d->head_dim;
    m->F = d->ffn, m->V = d->vocab, m->window = d->sliding_window, m->eps = d->rms_eps;
    m->smem_optin = optin;
    m->att_smem = att_smem;
    m->f32 = d->f32 != 0;
    m->asz = m->f32 ? 4 : 2;
    m->n_sm = p.multiProcessorCount;
    m->cc_major = p.major;
    m->layers = (dlayer *)calloc((size_t)d->n_layers, sizeof *m->layers);
    void *stage = d->random_init ? NULL : malloc((size_t)STAGE_ELEMS * 4);
    if (!m->layers || (!d->random_init && !stage)) {
        free(stage);
        model_free(m);
        return gpu_fail(err, errn, PRISM_GPU_E_NOMEM, "out of host memory");
    }
#define T_(x)                 \
    do {                      \
        if ((rc = (x))) goto fail; \
    } while (0)
    {
        const gpu_linear *e1[] = {&d->embed};
        dlin tmp;
        T_(upload_stacked(m, d, &tmp, e1, 1, stage, "embed_tokens", err, errn));
        m->embed = tmp.w;
        if (d->tied) m->lm_head = m->embed;
        else {
            const gpu_linear *h1[] = {&d->lm_head};
            T_(upload_stacked(m, d, &tmp, h1, 1, stage, "lm_head", err, errn));
            m->lm_head = tmp.w;
        }
        const float *fn[] = {d->final_norm};
        const int64_t lh[] = {H};
        T_(upload_vec(m, &m->final_norm, fn, lh, 1, 1, "model.norm", err, errn));
        const float *rf[] = {d->rope_inv_freq};
        const int64_t lr[] = {hd / 2};
        T_(upload_vec(m, &m->inv_freq, rf, lr, 1, 0, "rope", err, errn));
    }
    for (int l = 0; l < d->n_layers; l++) {
        const gpu_layer_desc *s = &d->layers[l];
        dlayer *L = &m->layers[l];
        char what[64];
        snprintf(what, sizeof what, "layer %d", l);
        const gpu_linear *qkv[] = {&s->wq, &s->wk, &s->wv}, *o[] = {&s->wo}, *gu[] = {&s->wg, &s->wu}, *dn[] = {&s->wd};
        T_(upload_stacked(m, d, &L->wqkv, qkv, 3, stage, what, err, errn));
        T_(upload_stacked(m, d, &L->wo, o, 1, stage, what, err, errn));
        T_(upload_stacked(m, d, &L->wgu, gu, 2, stage, what, err, errn));
        T_(upload_stacked(m, d, &L->wd, dn, 1, stage, what, err, errn));
        const float *an[] = {s->attn_norm}, *fnn[] = {s->ffn_norm}, *qn[] = {s->q_norm}, *kn[] = {s->k_norm};
        const int64_t lH[] = {H}, lhd[] = {hd};
        T_(upload_vec(m, &L->attn_norm, an, lH, 1, 1, what, err, errn));
        T_(upload_vec(m, &L->ffn_norm, fnn, lH, 1, 1, what, err, errn));
        if (s->q_norm) T_(upload_vec(m, &L->q_norm, qn, lhd, 1, 0, what, err, errn));
        if (s->k_norm) T_(upload_vec(m, &L->k_norm, kn, lhd, 1, 0, what, err, errn));
        const float *bqkv[] = {s->bq, s->bk, s->bv}, *bo[] = {s->bo}, *bgu[] = {s->bg, s->bu}, *bd[] = {s->bd};
        const int64_t lqkv[] = {qd, kvd, kvd}, lgu[] = {F, F};
        T_(upload_vec(m, &L->bqkv, bqkv, lqkv, 3, 0, what, err, errn));
        T_(upload_vec(m, &L->bo, bo, lH, 1, 0, what, err, errn));
        T_(upload_vec(m, &L->bgu, bgu, lgu, 2, 0, what, err, errn));
        T_(upload_vec(m, &L->bd, bd, lH, 1, 0, what, err, errn));
    }
#undef T_
    free(stage);
    stage = NULL;
    CU(cudaDeviceSynchronize(), "uploading weights");
    *out = m;
    return 0;
fail:
    free(stage);
    model_free(m);
    return rc;
}

static void model_memory(const gpu_model *m, int64_t *now, int64_t *peak) {
    (void)m;
    if (now) *now = __atomic_load_n(&g_bytes_now, __ATOMIC_RELAXED);
    if (peak) *peak = __atomic_load_n(&g_bytes_peak, __ATOMIC_RELAXED);
}

/* ------------------------------------------------------------------ adapters */

static void adapter_free(gpu_adapter *a) {
    if (!a) return;
    cudaSetDevice(a->dev);
    cudaFree(a->mem);
    cudaFree(a->tab);
    account(-a->bytes);
    free(a->host_tab);
    free(a);
}

static int adapter_new(gpu_model *m, const gpu_lora_desc *mods, gpu_adapter **out, char *err, size_t errn) {
    *out = NULL;
    int rc = set_device(m->dev, err, errn);
    if (rc) return rc;
    const int64_t n = (int64_t)m->n_layers * LT_N;
    int64_t floats = 0;
    for (int64_t i = 0; i < n; i++) {
        if (mods[i].r <= 0) continue;
        if (mods[i].r > LORA_RMAX)
            return gpu_fail(err, errn, PRISM_GPU_E_UNSUPPORTED,
                            "layer %lld: rank %d; the CUDA LoRA kernels support ranks up to %d", (long long)(i / LT_N),
                            mods[i].r, LORA_RMAX);
        floats += (int64_t)mods[i].r * (mods[i].in + mods[i].out);
    }
    gpu_adapter *a = (gpu_adapter *)calloc(1, sizeof *a);
    float *host = (float *)malloc((size_t)(floats ? floats : 1) * 4);
    if (a) a->host_tab = (dmod *)calloc((size_t)n, sizeof(dmod));
    if (!a || !host || !a->host_tab) {
        free(host);
        if (a) free(a->host_tab);
        free(a);
        return gpu_fail(err, errn, PRISM_GPU_E_NOMEM, "out of host memory");
    }
    a->dev = m->dev;
    a->n_layers = m->n_layers;
    if ((rc = dalloc(&a->mem, (size_t)floats * 4, "LoRA adapter", err, errn)) ||
        (rc = dalloc((void **)&a->tab, (size_t)n * sizeof(dmod), "LoRA adapter table", err, errn))) {
        a->bytes = 0;
        if (a->mem) cudaFree(a->mem), account(-(int64_t)floats * 4);
        free(host);
        free(a->host_tab);
        free(a);
        return rc;
    }
    a->bytes = floats * 4 + n * (int64_t)sizeof(dmod);
    int64_t off = 0;
    for (int64_t i = 0; i < n; i++) {
        const gpu_lora_desc *s = &mods[i];
        dmod *d = &a->host_tab[i];
        if (s->r <= 0) continue;
        d->r = s->r, d->scale = s->scale, d->in = (int32_t)s->in, d->out = (int32_t)s->out;
        float *A = host + off, *Bt = A + (int64_t)s->r * s->in;
        memcpy(A, s->A, (size_t)(s->r * s->in) * 4);
        for (int64_t o = 0; o < s->out; o++)
            for (int32_t j = 0; j < s->r; j++) Bt[(int64_t)j * s->out + o] = s->B[o * s->r + j];
        d->A = (const float *)a->mem + off;
        d->Bt = d->A + (int64_t)s->r * s->in;
        off += (int64_t)s->r * (s->in + s->out);
    }
    cudaError_t e = cudaMemcpy(a->mem, host, (size_t)floats * 4, cudaMemcpyHostToDevice);
    if (e == cudaSuccess) e = cudaMemcpy(a->tab, a->host_tab, (size_t)n * sizeof(dmod), cudaMemcpyHostToDevice);
    free(host);
    if (e != cudaSuccess) {
        adapter_free(a);
        return cuda_fail(err, errn, e, "uploading a LoRA adapter");
    }
    *out = a;
    return 0;
}

/* ------------------------------------------------------------------ contexts */

static void ctx_free(gpu_ctx *c) {
    if (!c) return;
    cudaSetDevice(c->m->dev);
    if (c->s) cudaStreamSynchronize(c->s);
    for (int i = 0; i < GRAPH_CACHE; i++)
        if (c->graphs[i].exec) cudaGraphExecDestroy(c->graphs[i].exec);
    void *d[] = {c->kc, c->vc, c->x, c->xb, c->y, c->q, c->part_o, c->part_ml, c->att_tickets, c->lora_t, c->gath, c->logits, c->act, c->amax, c->amax_pv, c->amax_pi,
                 c->samp, c->meta_d, c->blas_ws};
    for (size_t i = 0; i < sizeof d / sizeof *d; i++) cudaFree(d[i]);
    if (c->meta_h) cudaFreeHost(c->meta_h);
    if (c->logits_h) cudaFreeHost(c->logits_h);
    if (c->blas) cublasDestroy(c->blas);
    if (c->s) cudaStreamDestroy(c->s);
    account(-c->bytes);
    free(c->seg_ad);
    free(c);
}

/* A context buffer (uninitialised). */
static int calloc_dev(gpu_ctx *c, void **p, size_t bytes, const char *what, char *err, size_t errn) {
    int rc = dalloc(p, bytes, what, err, errn);
    if (!rc) c->bytes += (int64_t)bytes;
    return rc;
}

static size_t align16(size_t x) { return (x + 15) & ~(size_t)15; }

static int ctx_new(gpu_model *m, int32_t n_seq, int32_t n_ctx, int32_t B, gpu_ctx **out, char *err, size_t errn) {
    *out = NULL;
    int rc = set_device(m->dev, err, errn);
    if (rc) return rc;
    gpu_ctx *c = (gpu_ctx *)calloc(1, sizeof *c);
    if (!c) return gpu_fail(err, errn, PRISM_GPU_E_NOMEM, "out of host memory");
    c->m = m;
    c->n_seq = n_seq, c->n_ctx = n_ctx, c->n_batch = B;
    c->kvd = (int64_t)m->nkv * m->hd;
    c->qd = (int64_t)m->nh * m->hd;
    c->qkv_n = c->qd + 2 * c->kvd;
    const int32_t group = m->nh / m->nkv;
    /* attention rows per block: as many tokens x group heads as fit in 32 rows and in shared memory */
    if (group > ATT_MAX_ROWS || m->hd > ATT_MAX_HD) {
        free(c);
        return gpu_fail(err, errn, PRISM_GPU_E_UNSUPPORTED,
                        "attention for %d query heads per KV head of dim %d: the CUDA kernel takes at most %d and %d",
                        group, m->hd, ATT_MAX_ROWS, ATT_MAX_HD);
    }
    int32_t rows = ATT_MAX_ROWS / group * group;
    while (rows > group && attention_smem(rows, m->hd, rows / group) > m->att_smem) rows -= group;
    if (attention_smem(rows, m->hd, rows / group) > m->att_smem) {
        free(c);
        return gpu_fail(err, errn, PRISM_GPU_E_UNSUPPORTED,
                        "attention for %d heads per KV head of dim %d needs %d bytes of shared memory; this GPU offers %d",
                        group, m->hd, attention_smem(rows, m->hd, rows / group), m->att_smem);
    }
    c->att_rows = rows;
    c->tq = rows / group;
    c->seg_ad = (const gpu_adapter **)calloc((size_t)B, sizeof *c->seg_ad);
    if (!c->seg_ad) {
        free(c);
        return gpu_fail(err, errn, PRISM_GPU_E_NOMEM, "out of host memory");
    }
    const int64_t H = m->H, F = m->F;
    const size_t kv = (size_t)m->n_layers * n_seq * n_ctx * c->kvd * m->asz;
    int64_t xbw = H > c->qd ? H : c->qd;
    if (F > xbw) xbw = F;
    int64_t yw = c->qkv_n > 2 * F ? c->qkv_n : 2 * F;
    if (H > yw) yw = H;
    const int64_t ts = B < ATT_SPLIT_TOKENS ? B : ATT_SPLIT_TOKENS;
    /* LoRA's shrink output: a row per adapted token, or its slices' partials (lora.cu: 2 · n_sm tiles at most) */
    const int64_t lora_rows = B > 2 * (int64_t)m->n_sm * LORA_ROWS ? B : 2 * (int64_t)m->n_sm * LORA_ROWS;
    c->lora_tz = lora_rows * LORA_RMAX;
    CU(cudaStreamCreateWithFlags(&c->s, cudaStreamNonBlocking), "cudaStreamCreate");
    if ((rc = calloc_dev(c, (void **)&c->kc, kv, "the K cache", err, errn)) ||
        (rc = calloc_dev(c, (void **)&c->vc, kv, "the V cache", err, errn)) ||
        (rc = calloc_dev(c, (void **)&c->x, (size_t)(B * H) * 4, "activations", err, errn)) ||
        (rc = calloc_dev(c, (void **)&c->xb, (size_t)(B * xbw) * m->asz, "activations", err, errn)) ||
        (rc = calloc_dev(c, (void **)&c->y, (size_t)(B * yw) * 4, "activations", err, errn)) ||
        (rc = calloc_dev(c, (void **)&c->q, (size_t)(B * c->qd) * 4, "activations", err, errn)) ||
        (rc = calloc_dev(c, (void **)&c->part_o, (size_t)(ATT_MAX_SPLIT * ts * c->qd) * 4, "attention", err, errn)) ||
        (rc = calloc_dev(c, (void **)&c->part_ml, (size_t)(ATT_MAX_SPLIT * ts * m->nh) * 8, "attention", err, errn)) ||
        (rc = calloc_dev(c, (void **)&c->att_tickets, (size_t)(ts * m->nkv) * 4, "attention", err, errn)) ||
        (rc = calloc_dev(c, (void **)&c->lora_t, (size_t)(3 * lora_rows * LORA_RMAX) * 4, "LoRA", err, errn)) ||
        (rc = calloc_dev(c, (void **)&c->gath, (size_t)(B * H) * m->asz, "activations", err, errn)) ||
        (rc = calloc_dev(c, (void **)&c->act, (size_t)(GEMV_MAX_T * F) * m->asz, "activations", err, errn)) ||
        (rc = calloc_dev(c, (void **)&c->amax, (size_t)B * 4, "argmax", err, errn)) ||
        (rc = calloc_dev(c, (void **)&c->amax_pv, (size_t)B * AMAX_PARTS * 4, "argmax", err, errn)) ||
        (rc = calloc_dev(c, (void **)&c->amax_pi, (size_t)B * AMAX_PARTS * 4, "argmax", err, errn)) ||
        (rc = calloc_dev(c, &c->samp, (size_t)B * 16, "sampling", err, errn))) {
        ctx_free(c);
        return rc;
    }
    cudaError_t ze = cudaMemsetAsync(c->att_tickets, 0, (size_t)(ts * m->nkv) * 4, c->s);
    if (ze != cudaSuccess) {
        ctx_free(c);
        return gpu_fail(err, errn, PRISM_GPU_E_DEVICE, "clearing the attention tickets: %s", cudaGetErrorString(ze));
    }
    /* metadata block: tok, pos, seq, rows, hrows (B each) | tiles (B) | lora tiles (2B) | segment table (B) */
    size_t off = 0;
    const size_t o_tok = off; off = align16(off + (size_t)B * 4);
    const size_t o_pos = off; off = align16(off + (size_t)B * 4);
    const size_t o_seq = off; off = align16(off + (size_t)B * 4);
    const size_t o_rows = off; off = align16(off + (size_t)B * 4);
    const size_t o_hrows = off; off = align16(off + (size_t)B * 4);
    const size_t o_tiles = off; off = align16(off + (size_t)B * sizeof(att_tile));
    const size_t o_lt = off; off = align16(off + (size_t)2 * B * sizeof(lora_tile));
    const size_t o_seg = off; off = align16(off + (size_t)B * sizeof(void *));
    c->meta_bytes = off;
    if ((rc = calloc_dev(c, &c->meta_d, off, "batch metadata", err, errn))) {
        ctx_free(c);
        return rc;
    }
    cudaError_t e = cudaMallocHost(&c->meta_h, off);
    if (e != cudaSuccess) {
        c->meta_h = NULL;
        ctx_free(c);
        return cuda_fail(err, errn, e, "pinned batch metadata");
    }
    char *base = (char *)c->meta_d;
    c->d_tok = (int32_t *)(base + o_tok), c->d_pos = (int32_t *)(base + o_pos), c->d_seq = (int32_t *)(base + o_seq);
    c->d_rows = (int32_t *)(base + o_rows), c->d_hrows = (int32_t *)(base + o_hrows);
    c->d_tiles = (att_tile *)(base + o_tiles), c->d_ltiles = (lora_tile *)(base + o_lt);
    c->d_segtab = (const dmod **)(base + o_seg);
    const size_t ws = (size_t)32 << 20;
    if ((rc = calloc_dev(c, &c->blas_ws, ws, "cuBLAS workspace", err, errn))) {
        ctx_free(c);
        return rc;
    }
    const char *ge = getenv("PRISM_CUDA_GRAPHS");
    c->graphs_off = ge && *ge == '0';
    cublasStatus_t bs = cublasCreate(&c->blas);
    if (bs == CUBLAS_STATUS_SUCCESS) bs = cublasSetStream(c->blas, c->s);
    if (bs == CUBLAS_STATUS_SUCCESS) bs = cublasSetWorkspace(c->blas, c->blas_ws, ws);
    if (bs != CUBLAS_STATUS_SUCCESS) {
        if (bs != CUBLAS_STATUS_SUCCESS && c->blas == NULL) c->blas = NULL;
        ctx_free(c);
        return gpu_fail(err, errn, PRISM_GPU_E_DEVICE, "cublasCreate: %s", blas_str(bs));
    }
    /* the KV cache needs no clearing: attention only reads positions written */
    *out = c;
    return 0;
}

/* PRISM_CUDA_FUSE=0: the q|k|v post-processing and SwiGLU as kernels of their own (to bisect). */
int no_fusion(void) {
    static int v = -1;
    if (v < 0) v = getenv("PRISM_CUDA_FUSE") && *getenv("PRISM_CUDA_FUSE") == '0';
    return v;
}

/* The decode fusions, each on or off: PRISM_CUDA_DECODE_FUSE lists those on, of post (attention does the q|k|v
 * post-processing itself), combine (the split-K combine by attention's last block) and glu (SwiGLU in the
 * gate|up GEMV's epilogue); "none" for none; PRISM_CUDA_FUSE=0 turns all three off (and the trainer's
 * fusions). The default, post alone, is what measured fastest at 7B batch 1 on an H100 and an H200 (issue 5,
 * runs 5 and 6): combine off gained 5%, glu off 3%, post off lost 1% (H100). */
int unfused(int part) {
    static int mask = -1; /* published once, whole: a thread that reads it early parses again, the same */
    if (mask < 0) {
        const char *u = getenv("PRISM_CUDA_DECODE_FUSE");
        int on = UF_POST;
        if (u) {
            on = 0;
            while (*u) {
                const size_t n = strcspn(u, ",");
                if (n == 4 && !strncmp(u, "post", 4)) on |= UF_POST;
                else if (n == 7 && !strncmp(u, "combine", 7)) on |= UF_COMBINE;
                else if (n == 3 && !strncmp(u, "glu", 3)) on |= UF_GLU;
                else if (n && !(n == 4 && !strncmp(u, "none", 4)))
                    fprintf(stderr, "prism-cuda: PRISM_CUDA_DECODE_FUSE: '%.*s' is none of post, combine, glu, none: ignored\n",
                            (int)n, u);
                u += n + (u[n] == ',');
            }
        }
        if (no_fusion()) on = 0;
        mask = (UF_POST | UF_COMBINE | UF_GLU) & ~on;
    }
    return mask & part;
}

/* Keys per split-K block at least (PRISM_CUDA_SPLIT_KEYS, a multiple of
 * ATT_KC; default one chunk): fewer keys per block are fewer serial chunks in
 * the latency-bound batch-1 step, at the price of more partials to combine. */
static int32_t split_keys(void) {
    static int32_t v = 0;
    if (!v) {
        const char *e = getenv("PRISM_CUDA_SPLIT_KEYS");
        const long k = e ? strtol(e, NULL, 10) : ATT_KC;
        v = k >= ATT_KC && k <= 4096 ? (int32_t)(k / ATT_KC * ATT_KC) : ATT_KC;
    }
    return v;
}

/* Whether a product of T rows over K inputs takes the small-batch GEMV kernels. */
static int use_gemv(int32_t T, int64_t K) {
    static int no_gemv = -1; /* PRISM_CUDA_NO_GEMV=1: cuBLAS for every size (to bisect a mismatch) */
    if (no_gemv < 0) no_gemv = getenv("PRISM_CUDA_NO_GEMV") && *getenv("PRISM_CUDA_NO_GEMV") == '1';
    return T <= GEMV_MAX_T && K % 8 == 0 && !no_gemv;
}

/* y (T, N) = x (T, K)·Wᵀ */
static int gemm(gpu_ctx *c, float *y, const void *x, const dlin *w, int32_t T, char *err, size_t errn) {
    const int32_t N = (int32_t)w->out, K = (int32_t)w->in;
    if (use_gemv(T, K)) {
        k_gemv(c->s, c->m->f32, y, x, w->w, T, N, K);
        return 0;
    }
    const float one = 1.0f, zero = 0.0f;
    const cudaDataType at = c->m->f32 ? CUDA_R_32F : CUDA_R_16BF;
    /* column-major view: Yᵀ (N, T) = W (K, N)ᵀ · Xᵀ (K, T); F32 compute (no TF32 for F32 inputs) */
    BL(cublasGemmEx(c->blas, CUBLAS_OP_T, CUBLAS_OP_N, N, T, K, &one, w->w, at, K, x, at, K, &zero, y, CUDA_R_32F, N,
                    CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
       "GEMM");
    return 0;
}

/* Builds and uploads the batch metadata: attention tiles, LoRA segments. */
static int batch_meta(gpu_ctx *c, const gpu_batch *b, char *err, size_t errn) {
    const gpu_model *m = c->m;
    const int32_t T = b->n_tokens, B = c->n_batch;
    char *h = (char *)c->meta_h, *d = (char *)c->meta_d;
    int32_t *tok = (int32_t *)(h + ((char *)c->d_tok - d)), *pos = (int32_t *)(h + ((char *)c->d_pos - d));
    int32_t *seq = (int32_t *)(h + ((char *)c->d_seq - d)), *rows = (int32_t *)(h + ((char *)c->d_rows - d));
    att_tile *tiles = (att_tile *)(h + ((char *)c->d_tiles - d));
    lora_tile *lt = (lora_tile *)(h + ((char *)c->d_ltiles - d));
    const dmod **segtab = (const dmod **)(h + ((char *)c->d_segtab - d));
    memcpy(tok, b->token, (size_t)T * 4);
    memcpy(pos, b->pos, (size_t)T * 4);
    memcpy(seq, b->seq, (size_t)T * 4);
    /* attention tiles: runs of consecutive positions of one sequence, tq tokens at most */
    int32_t nt = 0, max_keys = 0;
    for (int32_t i = 0; i < T;) {
        int32_t j = i + 1;
        while (j < T && j - i < c->tq && b->seq[j] == b->seq[i] && b->pos[j] == b->pos[j - 1] + 1) j++;
        tiles[nt++] = (att_tile){i, j - i, b->seq[i], b->pos[i]};
        const int32_t keys = b->pos[j - 1] + 1 - first_key(b->pos[i], m->window);
        if (keys > max_keys) max_keys = keys;
        i = j;
    }
    c->T = T, c->n_tiles = nt, c->max_keys = max_keys;
    /* one tile per sequence (decode): attention does the q|k|v post-processing itself */
    c->att_fused = 1;
    for (int32_t a = 0; a < nt && c->att_fused; a++)
        for (int32_t b2 = a + 1; b2 < nt; b2++)
            if (tiles[a].seq == tiles[b2].seq) {
                c->att_fused = 0;
                break;
            }
    if (unfused(UF_POST) || nt > 64) c->att_fused = 0;
    c->n_split = 1;
    if (T <= ATT_SPLIT_TOKENS) {
        const int32_t sk = split_keys();
        const int32_t blocks = nt * m->nkv, want = (2 * m->n_sm + blocks - 1) / blocks, by_keys = (max_keys + sk - 1) / sk;
        int32_t ns = want < by_keys ? want : by_keys;
        c->n_split = ns < 1 ? 1 : ns > ATT_MAX_SPLIT ? ATT_MAX_SPLIT : ns;
    }
    /* LoRA segments: tokens grouped by adapter, in order of first appearance */
    int32_t ns = 0, nr = 0, nl = 0;
    for (int32_t i = 0; i < T; i++) {
        const gpu_adapter *a = b->adapter ? b->adapter[i] : NULL;
        if (!a) continue;
        int32_t s = 0;
        while (s < ns && c->seg_ad[s] != a) s++;
        if (s < ns) continue;
        c->seg_ad[ns++] = a;
        segtab[s] = a->tab;
        const int32_t r0 = nr;
        for (int32_t k = i; k < T; k++)
            if (b->adapter[k] == a) rows[nr++] = k;
        for (int32_t r = r0; r < nr; r += LORA_ROWS)
            lt[nl++] = (lora_tile){s, r, nr - r < LORA_ROWS ? nr - r : LORA_ROWS};
    }
    c->n_segs = ns, c->n_ltiles = nl;
    (void)B;
    CU(cudaMemcpyAsync(c->meta_d, c->meta_h, c->meta_bytes, cudaMemcpyHostToDevice, c->s), "uploading the batch");
    return 0;
}

/* Enqueues embeddings (embed) and layers [lb, le) for the current batch metadata.
 * Small batches without LoRA compute SwiGLU inside the gate|up GEMV; batches
 * of one tile per sequence do the q|k|v post-processing inside attention. */
static int enqueue_layers(gpu_ctx *c, int32_t T, int32_t lb, int32_t le, int embed, char *err, size_t errn) {
    gpu_model *m = c->m;
    const int32_t H = m->H, F = m->F;
    int rc;
    if (embed) k_embed(c->s, m->f32, c->x, m->embed, c->d_tok, T, H);
    const int lora = c->n_ltiles > 0;
    const int32_t qd = (int32_t)c->qd, kvd = (int32_t)c->kvd, qn = (int32_t)c->qkv_n;
    const int glu = !lora && !unfused(UF_GLU) && use_gemv(T, H) && use_gemv(T, F);
    static const int32_t LQKV[3] = {LT_Q, LT_K, LT_V}, LO[1] = {LT_O}, LGU[2] = {LT_GATE, LT_UP}, LD[1] = {LT_DOWN};
    const int32_t CQKV[3] = {0, qd, qd + kvd}, CGU[2] = {0, F}, C0[1] = {0}; /* their columns in y */
    for (int32_t l = lb; l < le; l++) {
        const dlayer *L = &m->layers[l];
        const int f = m->f32;
        if (l == lb) k_rmsnorm(c->s, f, c->xb, c->x, L->attn_norm, T, H, m->eps);
        if ((rc = gemm(c, c->y, c->xb, &L->wqkv, T, err, errn))) return rc;
        if (lora) k_lora(c, l, LQKV, CQKV, 3, c->xb, H, c->y, qn);
        if (!c->att_fused) k_qkv_post(c->s, c, l, T);
        k_attention(c, l, c->xb);
        if ((rc = gemm(c, c->y, c->xb, &L->wo, T, err, errn))) return rc;
        if (lora) k_lora(c, l, LO, C0, 1, c->xb, qd, c->y, H);
        k_add_rmsnorm(c->s, f, c->x, c->y, L->bo, c->xb, L->ffn_norm, T, H, m->eps);
        if (glu) {
            k_gemv_glu(c->s, f, c->act, c->xb, L->wgu.w, L->bgu, T, F, H);
            if ((rc = gemm(c, c->y, c->act, &L->wd, T, err, errn))) return rc;
        } else {
            if ((rc = gemm(c, c->y, c->xb, &L->wgu, T, err, errn))) return rc;
            if (lora) k_lora(c, l, LGU, CGU, 2, c->xb, H, c->y, 2 * F);
            k_swiglu(c->s, f, c->xb, c->y, L->bgu, T, F);
            if ((rc = gemm(c, c->y, c->xb, &L->wd, T, err, errn))) return rc;
        }
        if (lora) k_lora(c, l, LD, C0, 1, c->xb, F, c->y, H);
        k_add_rmsnorm(c->s, f, c->x, c->y, L->bd, c->xb, l + 1 < le ? m->layers[l + 1].attn_norm : NULL, T, H, m->eps);
    }
    return 0;
}

/* A whole-model step of a small batch from a cached graph (captured on the
 * first step of its shape). Returns 1 if it ran, 0 to run eagerly instead. */
static int forward_graph(gpu_ctx *c, int32_t T, char *err, size_t errn) {
    graph_ent *g = NULL, *lru = &c->graphs[0];
    for (int i = 0; i < GRAPH_CACHE; i++) {
        graph_ent *e = &c->graphs[i];
        if (e->exec && e->T == T && e->n_tiles == c->n_tiles && e->n_split == c->n_split && e->n_ltiles == c->n_ltiles &&
            e->att_fused == c->att_fused)
            g = e;
        if (e->used < lru->used) lru = e;
    }
    cudaGraph_t graph = NULL;
    if (!g) {
        cudaGraphExec_t exec = NULL;
        if (cudaStreamBeginCapture(c->s, cudaStreamCaptureModeThreadLocal) != cudaSuccess) goto off;
        {
            char e2[256];
            int rc = enqueue_layers(c, T, 0, c->m->n_layers, 1, e2, sizeof e2);
            cudaError_t ce = cudaStreamEndCapture(c->s, &graph);
            if (rc || ce != cudaSuccess || !graph) goto off;
        }
        if (cudaGraphInstantiate(&exec, graph, 0) != cudaSuccess) goto off;
        cudaGraphDestroy(graph);
        graph = NULL;
        if (lru->exec) cudaGraphExecDestroy(lru->exec);
        g = lru;
        *g = (graph_ent){T, c->n_tiles, c->n_split, c->n_ltiles, c->att_fused, exec, 0};
    }
    g->used = ++c->graph_clock;
    CU(cudaGraphLaunch(g->exec, c->s), "replaying the decode graph");
    return 1;
off: /* capture is not possible here (driver, cuBLAS): eager from now on */
    if (graph) cudaGraphDestroy(graph);
    cudaGetLastError();
    c->graphs_off = 1;
    return 0;
}

static int forward(gpu_ctx *c, const gpu_batch *b, int32_t lb, int32_t le, const float *x_in, char *err,
                   size_t errn) {
    gpu_model *m = c->m;
    const int32_t T = b->n_tokens, H = m->H;
    if (T <= 0 || T > c->n_batch) return gpu_fail(err, errn, PRISM_GPU_E_ARG, "batch of %d tokens (n_batch %d)", T, c->n_batch);
    if (lb < 0 || le > m->n_layers || lb >= le)
        return gpu_fail(err, errn, PRISM_GPU_E_ARG, "layer range [%d, %d)", lb, le);
    CU(cudaSetDevice(m->dev), "cudaSetDevice");
    /* the pinned metadata may still feed the previous call's upload */
    CU(cudaStreamSynchronize(c->s), "previous batch");
    c->head_pending = 0;
    int rc = batch_meta(c, b, err, errn);
    if (rc) return rc;
    c->n_out = 0;
    if (!x_in && lb == 0 && le == m->n_layers && T <= GRAPH_MAX_T && !c->graphs_off) {
        rc = forward_graph(c, T, err, errn);
        if (rc < 0 || rc > 1) return rc;
        if (rc == 1) {
            CU(cudaGetLastError(), "forward pass");
            return 0;
        }
    }
    if (x_in) CU(cudaMemcpyAsync(c->x, x_in, (size_t)T * H * 4, cudaMemcpyHostToDevice, c->s), "uploading hidden states");
    if ((rc = enqueue_layers(c, T, lb, le, !x_in && lb == 0, err, errn))) return rc;
    CU(cudaGetLastError(), "forward pass");
    return 0;
}

static int head(gpu_ctx *c, const int32_t *rows, int32_t n_out, char *err, size_t errn) {
    gpu_model *m = c->m;
    CU(cudaSetDevice(m->dev), "cudaSetDevice");
    if (n_out < 0 || n_out > c->T) return gpu_fail(err, errn, PRISM_GPU_E_ARG, "%d logit rows for %d tokens", n_out, c->T);
    k_rmsnorm_inplace(c->s, c->x, m->final_norm, c->T, m->H, m->eps);
    c->n_out = n_out;
    if (n_out > 0) {
        if (n_out > c->cap_logits) {
            if (c->logits) cudaFree(c->logits), account(-(int64_t)c->cap_logits * m->V * 4), c->bytes -= (int64_t)c->cap_logits * m->V * 4;
            if (c->logits_h) cudaFreeHost(c->logits_h);
            c->logits = NULL, c->logits_h = NULL, c->cap_logits = 0;
            int rc = calloc_dev(c, (void **)&c->logits, (size_t)n_out * m->V * 4, "logits", err, errn);
            if (rc) return rc;
            cudaError_t e = cudaMallocHost((void **)&c->logits_h, (size_t)n_out * m->V * 4);
            if (e != cudaSuccess) {
                c->logits_h = NULL;
                return cuda_fail(err, errn, e, "pinned logits");
            }
            c->cap_logits = n_out;
        }
        /* hrows lives in the metadata block's pinned twin: forward() synchronised before
         * refilling it, so only a second head() of the same batch may find its upload pending */
        if (c->head_pending) CU(cudaStreamSynchronize(c->s), "head");
        c->head_pending = 1;
        int32_t *hrows = (int32_t *)((char *)c->meta_h + ((char *)c->d_hrows - (char *)c->meta_d));
        memcpy(hrows, rows, (size_t)n_out * 4);
        CU(cudaMemcpyAsync(c->d_hrows, hrows, (size_t)n_out * 4, cudaMemcpyHostToDevice, c->s), "head rows");
        k_gather_rows(c->s, m->f32, c->gath, c->x, c->d_hrows, n_out, m->H);
        dlin w = {m->lm_head, m->V, m->H};
        int rc = gemm(c, c->logits, c->gath, &w, n_out, err, errn);
        if (rc) return rc;
        k_argmax(c->s, c->amax, c->amax_pv, c->amax_pi, c->logits, n_out, m->V);
    }
    CU(cudaGetLastError(), "LM head");
    return 0;
}

static int logits(gpu_ctx *c, const float **out, char *err, size_t errn) {
    CU(cudaSetDevice(c->m->dev), "cudaSetDevice");
    *out = NULL;
    if (c->n_out == 0) return 0;
    CU(cudaMemcpyAsync(c->logits_h, c->logits, (size_t)c->n_out * c->m->V * 4, cudaMemcpyDeviceToHost, c->s),
       "copying logits");
    CU(cudaStreamSynchronize(c->s), "copying logits");
    c->head_pending = 0;
    *out = c->logits_h;
    return 0;
}

static int argmax(gpu_ctx *c, int32_t *out, char *err, size_t errn) {
    CU(cudaSetDevice(c->m->dev), "cudaSetDevice");
    if (c->n_out == 0) return 0;
    CU(cudaMemcpyAsync(out, c->amax, (size_t)c->n_out * 4, cudaMemcpyDeviceToHost, c->s), "copying argmax");
    CU(cudaStreamSynchronize(c->s), "copying argmax");
    c->head_pending = 0;
    return 0;
}

static int sample(gpu_ctx *c, const float *inv_t, const double *u, int32_t *out, char *err, size_t errn) {
    CU(cudaSetDevice(c->m->dev), "cudaSetDevice");
    const int32_t n = c->n_out;
    if (n == 0) return 0;
    double *du = (double *)c->samp;
    float *dt = (float *)(du + c->n_batch);
    int32_t *dout = (int32_t *)(dt + c->n_batch);
    CU(cudaMemcpyAsync(du, u, (size_t)n * 8, cudaMemcpyHostToDevice, c->s), "uploading the sampling draws");
    CU(cudaMemcpyAsync(dt, inv_t, (size_t)n * 4, cudaMemcpyHostToDevice, c->s), "uploading the temperatures");
    k_sample_softmax(c->s, dout, c->logits, n, c->m->V, dt, du);
    CU(cudaGetLastError(), "sampling");
    CU(cudaMemcpyAsync(out, dout, (size_t)n * 4, cudaMemcpyDeviceToHost, c->s), "copying the sampled ids");
    CU(cudaStreamSynchronize(c->s), "sampling");
    c->head_pending = 0;
    return 0;
}

static int hidden(gpu_ctx *c, int32_t i0, int32_t n, float *out, char *err, size_t errn) {
    CU(cudaSetDevice(c->m->dev), "cudaSetDevice");
    if (i0 < 0 || n < 0 || i0 + n > c->T) return gpu_fail(err, errn, PRISM_GPU_E_ARG, "hidden rows [%d, %d)", i0, i0 + n);
    CU(cudaMemcpyAsync(out, c->x + (int64_t)i0 * c->m->H, (size_t)n * c->m->H * 4, cudaMemcpyDeviceToHost, c->s),
       "copying hidden states");
    CU(cudaStreamSynchronize(c->s), "copying hidden states");
    return 0;
}

static int copy_bandwidth(int32_t dev, int64_t bytes, int32_t reps, double *gbps, char *err, size_t errn) {
    int rc = set_device(dev, err, errn);
    if (rc) return rc;
    void *a = NULL, *b = NULL;
    if ((rc = dalloc(&a, (size_t)bytes, "bandwidth test", err, errn))) return rc;
    if ((rc = dalloc(&b, (size_t)bytes, "bandwidth test", err, errn))) {
        cudaFree(a), account(-bytes);
        return rc;
    }
    cudaEvent_t e0 = NULL, e1 = NULL;
    float best = 1e30f;
    cudaError_t e = cudaEventCreate(&e0);
    if (e == cudaSuccess) e = cudaEventCreate(&e1);
    if (e == cudaSuccess) e = cudaMemcpy(b, a, (size_t)bytes, cudaMemcpyDeviceToDevice); /* warm-up */
    for (int r = 0; e == cudaSuccess && r < reps; r++) {
        float ms = 0;
        if ((e = cudaEventRecord(e0, 0)) == cudaSuccess &&
            (e = cudaMemcpyAsync(b, a, (size_t)bytes, cudaMemcpyDeviceToDevice, 0)) == cudaSuccess &&
            (e = cudaEventRecord(e1, 0)) == cudaSuccess && (e = cudaEventSynchronize(e1)) == cudaSuccess &&
            (e = cudaEventElapsedTime(&ms, e0, e1)) == cudaSuccess && ms > 0 && ms < best)
            best = ms;
    }
    if (e0) cudaEventDestroy(e0);
    if (e1) cudaEventDestroy(e1);
    cudaFree(a), cudaFree(b), account(-2 * bytes);
    __atomic_store_n(&g_bytes_peak, __atomic_load_n(&g_bytes_now, __ATOMIC_RELAXED), __ATOMIC_RELAXED);
    if (e != cudaSuccess) return cuda_fail(err, errn, e, "bandwidth test");
    *gbps = 2.0 * (double)bytes / (best * 1e-3) / 1e9;
    return 0;
}

/* ------------------------------------------------------------------ cuBLASLt (common.cuh) */

void lt_prob_free(lt_prob *p) {
    if (p->lc) cublasLtMatrixLayoutDestroy(p->lc);
    if (p->lb) cublasLtMatrixLayoutDestroy(p->lb);
    if (p->la) cublasLtMatrixLayoutDestroy(p->la);
    if (p->op) cublasLtMatmulDescDestroy(p->op);
    memset(p, 0, sizeof *p);
}

cublasStatus_t lt_prob_make(lt_prob *p, cublasOperation_t oa, int m, int n, int k, int lda, int ldb, int ldc,
                            cudaDataType at, cudaDataType ct) {
    memset(p, 0, sizeof *p);
    const cublasOperation_t ob = CUBLAS_OP_N;
    cublasStatus_t s = cublasLtMatmulDescCreate(&p->op, CUBLAS_COMPUTE_32F, CUDA_R_32F);
    if (!s) s = cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_TRANSA, &oa, sizeof oa);
    if (!s) s = cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_TRANSB, &ob, sizeof ob);
    if (!s) s = cublasLtMatrixLayoutCreate(&p->la, at, oa == CUBLAS_OP_N ? m : k, oa == CUBLAS_OP_N ? k : m, lda);
    if (!s) s = cublasLtMatrixLayoutCreate(&p->lb, at, k, n, ldb);
    if (!s) s = cublasLtMatrixLayoutCreate(&p->lc, ct, m, n, ldc);
    if (s) lt_prob_free(p);
    return s;
}

cublasStatus_t lt_heuristic(cublasLtHandle_t h, const lt_prob *p, size_t ws, int n,
                            cublasLtMatmulHeuristicResult_t *res, int *got) {
    cublasLtMatmulPreference_t pref = NULL;
    *got = 0;
    cublasStatus_t s = cublasLtMatmulPreferenceCreate(&pref);
    /* split-K partial sums kept in F32 (COMPUTE_TYPE), never reduced in a BF16 output (INPLACE, OUTPUT_TYPE): on
     * an H200 the heuristic's 8th proposal for the small test model's GEMMs rounded each part to BF16, and the
     * gradients moved 7.5e-2 from cuBLAS's default's (1e-2 is BF16's own cost) */
    const uint32_t red = CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE;
    if (!s) s = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws);
    if (!s) s = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK, &red, sizeof red);
    if (!s) s = cublasLtMatmulAlgoGetHeuristic(h, p->op, p->la, p->lb, p->lc, p->lc, pref, n, res, got);
    if (pref) cublasLtMatmulPreferenceDestroy(pref);
    return s;
}

/* Benchmarks: one cuBLAS GEMM as the trainer calls them (BF16 operands, F32 accumulation, a 32 MiB workspace):
 * C (m × n, ld m; F32, or BF16 with cbf) = op(A)·B + beta·C, op(A) = Aᵀ with ta (A k × m) else A (m × k),
 * B k × n. *ms: time_calls' mean of reps calls. lt > 0: the fastest of the first lt (at most 16) algorithms
 * cuBLASLt's heuristic proposes instead, its rank in *pick. */
static int gemm_bench(int32_t dev, int32_t ta, int32_t m, int32_t n, int32_t k, int32_t cbf, float beta, int32_t reps,
                      int32_t lt, double *ms, int32_t *pick, char *err, size_t errn) {
    enum { LT_MAX = 16 };
    int rc = set_device(dev, err, errn);
    if (rc) return rc;
    if (m <= 0 || n <= 0 || k <= 0 || reps <= 0 || lt < 0)
        return gpu_fail(err, errn, PRISM_GPU_E_ARG, "GEMM %d x %d x %d (%d algorithms)", m, n, k, lt);
    if (pick) *pick = 0;
    const size_t ws = (size_t)32 << 20, sa = (size_t)m * k * 2, sb = (size_t)k * n * 2, sc = (size_t)m * n * (cbf ? 2 : 4);
    void *a = NULL, *b = NULL, *c = NULL, *w = NULL;
    if ((rc = dalloc(&a, sa, "GEMM benchmark", err, errn)) || (rc = dalloc(&b, sb, "GEMM benchmark", err, errn)) ||
        (rc = dalloc(&c, sc, "GEMM benchmark", err, errn)) || (rc = dalloc(&w, ws, "GEMM benchmark", err, errn))) {
        cudaFree(a), cudaFree(b), cudaFree(c);
        account(-(int64_t)((a ? sa : 0) + (b ? sb : 0) + (c ? sc : 0)));
        return rc;
    }
    const cublasOperation_t oa = ta ? CUBLAS_OP_T : CUBLAS_OP_N;
    const cudaDataType ct = cbf ? CUDA_R_16BF : CUDA_R_32F;
    const float one = 1.0f;
    cublasHandle_t h = NULL;
    cublasLtHandle_t lh = NULL;
    lt_prob p;
    memset(&p, 0, sizeof p);
    cublasLtMatmulHeuristicResult_t res[LT_MAX];
    int nres = 0;
    int32_t win = -1;
    float best = -1.0f;
    cudaEvent_t e0 = NULL, e1 = NULL;
    cudaError_t e = cudaMemset(a, 0x3c, sa); /* BF16 0x3c3c = 0.0115: finite, not denormal */
    if (e == cudaSuccess) e = cudaMemset(b, 0x3c, sb);
    if (e == cudaSuccess) e = cudaMemset(c, 0, sc);
    if (e == cudaSuccess) e = cudaEventCreate(&e0);
    if (e == cudaSuccess) e = cudaEventCreate(&e1);
    cublasStatus_t bs = CUBLAS_STATUS_SUCCESS;
    if (e == cudaSuccess && !lt) {
        bs = cublasCreate(&h);
        if (!bs) bs = cublasSetWorkspace(h, w, ws);
        if (!bs)
            best = time_calls(0, e0, e1, reps, [&] {
                return bs = cublasGemmEx(h, oa, CUBLAS_OP_N, m, n, k, &one, a, CUDA_R_16BF, ta ? k : m, b, CUDA_R_16BF,
                                         k, &beta, c, ct, m, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
            });
        e = best < 0 && !bs ? cudaGetLastError() : cudaSuccess;
    } else if (e == cudaSuccess) {
        bs = cublasLtCreate(&lh);
        if (!bs) bs = lt_prob_make(&p, oa, m, n, k, ta ? k : m, k, m, CUDA_R_16BF, ct);
        if (!bs) bs = lt_heuristic(lh, &p, ws, lt < LT_MAX ? lt : LT_MAX, res, &nres);
        for (int i = 0; !bs && i < nres; i++) {
            if (res[i].state != CUBLAS_STATUS_SUCCESS) continue;
            const float t = time_calls(0, e0, e1, reps, [&] {
                return cublasLtMatmul(lh, p.op, &one, a, p.la, b, p.lb, &beta, c, p.lc, c, p.lc, &res[i].algo, w, ws, 0);
            });
            if (t < 0) { /* this algorithm cannot run it after all: the next one */
                cudaDeviceSynchronize();
                cudaGetLastError();
                continue;
            }
            if (best < 0 || t < best) best = t, win = i;
        }
    }
    lt_prob_free(&p);
    if (lh) cublasLtDestroy(lh);
    if (h) cublasDestroy(h);
    if (e0) cudaEventDestroy(e0);
    if (e1) cudaEventDestroy(e1);
    cudaFree(a), cudaFree(b), cudaFree(c), cudaFree(w);
    account(-(int64_t)(sa + sb + sc + ws));
    if (bs != CUBLAS_STATUS_SUCCESS)
        return gpu_fail(err, errn, PRISM_GPU_E_DEVICE, "GEMM benchmark: cuBLAS %s (%d)", blas_str(bs), (int)bs);
    if (e != cudaSuccess) return cuda_fail(err, errn, e, "GEMM benchmark");
    if (best < 0) return lt ? gpu_fail(err, errn, PRISM_GPU_E_DEVICE, "cuBLASLt proposed %d algorithms, none ran", nres)
                            : gpu_fail(err, errn, PRISM_GPU_E_DEVICE, "GEMM benchmark: no call was timed");
    *ms = best;
    if (lt && pick) *pick = win;
    return 0;
}

/* ------------------------------------------------------------------ table */

static prism_gpu_api g_api = {
    PRISM_GPU_ABI,
    "CUDA runtime " STR(CUDART_VERSION) ", built for " PRISM_CUDA_ARCHS,
    device_count,
    device_info,
    model_new,
    model_free,
    model_memory,
    adapter_new,
    adapter_free,
    ctx_new,
    ctx_free,
    forward,
    head,
    logits,
    argmax,
    sample,
    hidden,
    NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, /* training: train.cu */
    copy_bandwidth,
    NULL, NULL, NULL, /* the gate: gate.cu */
    gemm_bench,
};

extern "C" __attribute__((visibility("default"))) const prism_gpu_api *prism_gpu_api_get(void) {
    if (!g_api.gate_new) gpu_gate_api(&g_api);
    if (!g_api.train_new) gpu_train_api(&g_api);
    return &g_api;
}
