/* device.c — the host side of the CUDA backend: finds and loads the module
 * prism-cuda.so (dlopen, so libprism and the prism binary never link CUDA),
 * describes a loaded model to it, and keeps adapters' device copies current.
 *
 * Module search order: $PRISM_CUDA_MODULE; next to the executable; one
 * directory up (build/tests/x -> build/); ../lib/prism/ from the executable;
 * then the dynamic loader's own path. */
#include <dlfcn.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "gpu/device.h"
#include "lora/lora.h"
#include "util/error.h"

static const prism_gpu_api *g_api;
static char g_load_error[PATH_MAX + 1024];
static char g_module_path[PATH_MAX + 64];
static pthread_once_t g_once = PTHREAD_ONCE_INIT;

static void *try_open(const char *path, char *why, size_t n) {
    void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        const char *e = dlerror();
        /* "cannot open shared object file" on the module itself just means "not here";
         * anything else (a missing libcudart/libcublas, a bad ELF) is the reason to report. */
        if (e && !(strstr(e, path) && strstr(e, "No such file"))) snprintf(why, n, "%s", e);
    } else {
        snprintf(g_module_path, sizeof g_module_path, "%s", path);
    }
    return h;
}

static void load_once(void) {
    char exe[PATH_MAX], cand[PATH_MAX + 64], why[768] = "";
    void *h = NULL;
    const char *env = getenv("PRISM_CUDA_MODULE");
    if (env && *env) {
        h = try_open(env, why, sizeof why);
        if (!h && !why[0]) snprintf(why, sizeof why, "%s (PRISM_CUDA_MODULE) does not exist", env);
    } else {
        ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
        if (n > 0) {
            exe[n] = 0;
            char *slash = strrchr(exe, '/');
            if (slash) *slash = 0;
            const char *rel[] = {"/prism-cuda.so", "/../prism-cuda.so", "/../lib/prism/prism-cuda.so"};
            for (size_t i = 0; !h && !why[0] && i < sizeof rel / sizeof *rel; i++) {
                snprintf(cand, sizeof cand, "%s%s", exe, rel[i]);
                if (access(cand, F_OK) == 0) h = try_open(cand, why, sizeof why);
            }
        }
        if (!h && !why[0]) h = try_open("prism-cuda.so", why, sizeof why);
    }
    if (!h) {
        if (why[0])
            snprintf(g_load_error, sizeof g_load_error, "the CUDA module could not be loaded: %s", why);
        else
            snprintf(g_load_error, sizeof g_load_error,
                     "this prism was built without CUDA: prism-cuda.so was not found next to the executable "
                     "(build it with `make CUDA=1` on a machine with nvcc and cuBLAS, or set PRISM_CUDA_MODULE)");
        return;
    }
    prism_gpu_api_fn fn = (prism_gpu_api_fn)dlsym(h, PRISM_GPU_API_SYMBOL);
    const prism_gpu_api *api = fn ? fn() : NULL;
    if (!api) {
        snprintf(g_load_error, sizeof g_load_error, "%s: not a prism CUDA module (no %s)", g_module_path,
                 PRISM_GPU_API_SYMBOL);
        return;
    }
    if (api->abi != PRISM_GPU_ABI) {
        snprintf(g_load_error, sizeof g_load_error, "%s: module interface %d, this prism expects %d (rebuild both)",
                 g_module_path, api->abi, PRISM_GPU_ABI);
        return;
    }
    g_api = api;
}

prism_status gpu_api(const prism_gpu_api **out) {
    pthread_once(&g_once, load_once);
    *out = g_api;
    if (!g_api) return prism_error(PRISM_E_UNSUPPORTED, "%s", g_load_error);
    return PRISM_OK;
}

const char *gpu_module_path(void) { return g_module_path; }

_Static_assert((int)PRISM_GPU_E_UNSUPPORTED == (int)PRISM_E_UNSUPPORTED && (int)PRISM_GPU_E_ARG == (int)PRISM_E_ARG &&
                   (int)PRISM_GPU_E_NOMEM == (int)PRISM_E_NOMEM && (int)PRISM_GPU_E_RANGE == (int)PRISM_E_RANGE,
               "gpu.h status codes must equal prism_status");

prism_status gpu_check(prism_status st, const char *err) {
    if (!st) return PRISM_OK;
    if ((int)st == PRISM_GPU_E_DEVICE) st = PRISM_E_UNSUPPORTED;
    return prism_error(st, "%s", err[0] ? err : "CUDA backend failed");
}

prism_status prism_device_parse(const char *s, int32_t *device) {
    if (!s || !*s || !strcmp(s, "cpu")) {
        *device = PRISM_DEVICE_CPU;
        return PRISM_OK;
    }
    if (!strcmp(s, "cuda") || !strcmp(s, "gpu")) {
        *device = 0;
        return PRISM_OK;
    }
    if (!strncmp(s, "cuda:", 5)) {
        char *end;
        long v = strtol(s + 5, &end, 10);
        if (end != s + 5 && !*end && v >= 0 && v < 1024) {
            *device = (int32_t)v;
            return PRISM_OK;
        }
    }
    return prism_error(PRISM_E_ARG, "unknown device \"%s\" (expected cpu, cuda or cuda:N)", s);
}

prism_status prism_device_describe(int32_t device, char *buf, size_t n) {
    if (device < 0) {
        snprintf(buf, n, "cpu");
        return PRISM_OK;
    }
    const prism_gpu_api *api;
    prism_status st = gpu_api(&api);
    if (st) return st;
    char err[512] = "";
    gpu_device_info info;
    if ((st = (prism_status)api->device_info(device, &info, err, sizeof err))) return gpu_check(st, err);
    snprintf(buf, n, "cuda:%d %s (sm_%d%d, %d SMs, %.1f GiB, %.1f GiB free; %s)", device, info.name, info.cc_major,
             info.cc_minor, info.n_sm, info.mem_total / 1073741824.0, info.mem_free / 1073741824.0, api->build);
    return PRISM_OK;
}

static gpu_linear lin(const linear_w *w) {
    gpu_linear g = {w->w, w->dt == ST_F32 ? GPU_DT_F32 : w->dt == ST_F16 ? GPU_DT_F16 : GPU_DT_BF16, w->out, w->in};
    return g;
}

prism_status gpu_model_attach(prism_model *m, int32_t device, int random_init, uint64_t seed) {
    const prism_gpu_api *api;
    prism_status st = gpu_api(&api);
    if (st) {
        prism_error_prefix("%s", m->dir);
        return st;
    }
    const prism_config *c = &m->cfg;
    gpu_layer_desc *L = calloc((size_t)c->n_layers, sizeof *L);
    if (!L) return prism_error(PRISM_E_NOMEM, "out of memory");
    for (int l = 0; l < c->n_layers; l++) {
        const layer_w *w = &m->layers[l];
        L[l] = (gpu_layer_desc){.wq = lin(&w->wq), .wk = lin(&w->wk), .wv = lin(&w->wv), .wo = lin(&w->wo),
                                .wg = lin(&w->wg), .wu = lin(&w->wu), .wd = lin(&w->wd),
                                .attn_norm = w->attn_norm, .ffn_norm = w->ffn_norm, .q_norm = w->q_norm,
                                .k_norm = w->k_norm, .bq = w->bq, .bk = w->bk, .bv = w->bv, .bo = w->bo,
                                .bg = w->bg, .bu = w->bu, .bd = w->bd};
    }
    gpu_model_desc d = {.n_layers = c->n_layers, .hidden = c->hidden, .n_heads = c->n_heads,
                        .n_kv_heads = c->n_kv_heads, .head_dim = c->head_dim, .ffn = c->ffn, .vocab = c->vocab,
                        .sliding_window = c->sliding_window, .rms_eps = c->rms_eps,
                        .rope_inv_freq = m->rope_inv_freq, .embed = lin(&m->embed), .lm_head = lin(&m->lm_head),
                        .tied = m->lm_head.w == m->embed.w && c->tie_embeddings, .final_norm = m->final_norm,
                        .layers = L, .random_init = random_init, .seed = seed,
                        .f32 = m->params.precision == PRISM_PRECISION_EXACT};
    char err[1024] = "";
    gpu_model *g = NULL;
    st = (prism_status)api->model_new(&d, device, &g, err, sizeof err);
    free(L);
    if ((st = gpu_check(st, err))) prism_error_prefix("%s", m->dir);
    if (st) return st;
    static uint64_t serial;
    m->gpu = g;
    m->gpu_api = api;
    m->gpu_serial = __atomic_add_fetch(&serial, 1, __ATOMIC_RELAXED);
    m->params.device = device;
    return PRISM_OK;
}

void gpu_model_detach(prism_model *m) {
    if (m && m->gpu) m->gpu_api->model_free(m->gpu);
    if (m) m->gpu = NULL;
}

prism_status gpu_adapter_for(const prism_model *m, const prism_adapter *a, const gpu_adapter **out) {
    prism_adapter *w = (prism_adapter *)a; /* the device copy is a cache of the host adapter */
    if (w->gpu && w->gpu_serial == m->gpu_serial && w->gpu_version == w->version) {
        *out = w->gpu;
        return PRISM_OK;
    }
    if (w->gpu) w->gpu_api->adapter_free(w->gpu);
    w->gpu = NULL;
    const int64_t n = (int64_t)a->n_layers * LORA_N_TARGETS;
    gpu_lora_desc *d = calloc((size_t)n, sizeof *d);
    if (!d) return prism_error(PRISM_E_NOMEM, "out of memory");
    for (int64_t i = 0; i < n; i++) {
        const lora_module *mod = &a->mod[i];
        d[i] = (gpu_lora_desc){mod->r, mod->scale, mod->in, mod->out, mod->A, mod->B};
    }
    char err[1024] = "";
    gpu_adapter *g = NULL;
    prism_status st = (prism_status)m->gpu_api->adapter_new(m->gpu, d, &g, err, sizeof err);
    free(d);
    if ((st = gpu_check(st, err))) prism_error_prefix("adapter %s", prism_adapter_name(a));
    if (st) return st;
    w->gpu = g;
    w->gpu_api = m->gpu_api;
    w->gpu_serial = m->gpu_serial;
    w->gpu_version = w->version;
    *out = g;
    return PRISM_OK;
}

void gpu_adapter_release(prism_adapter *a) {
    if (a && a->gpu) a->gpu_api->adapter_free(a->gpu);
    if (a) a->gpu = NULL;
}
