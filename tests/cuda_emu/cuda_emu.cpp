/* cuda_emu.cpp — the fiber scheduler, runtime and cuBLAS stand-ins behind
 * cuda_emu.h (see there for what this is and is not). */
#undef _FORTIFY_SOURCE /* fibers longjmp between stacks, which __longjmp_chk refuses */
#include "cuda_emu.h"

#include <dlfcn.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <ucontext.h>
#include <unistd.h>

#include <unordered_map>
#include <vector>

uint3_ threadIdx, blockIdx;
dim3 blockDim, gridDim;

namespace {

enum { RUN, WAIT_BLOCK, WAIT_WARP, DONE };
const size_t STACK = 128 * 1024;

/* Each fiber is started once (makecontext) and then loops: run the kernel
 * body for a block, report DONE, wait for the next block. Switches are
 * _setjmp/_longjmp, which save no signal mask: no system call per switch. */
struct Fiber {
    ucontext_t ctx;
    jmp_buf jb;
    char *stack = nullptr;
    int started = 0;
    int state = DONE;
    uint3_ tid{0, 0, 0};
};

std::vector<Fiber> fibers;
std::vector<float> xf;
std::vector<int> xi;
std::vector<double> xd;
std::vector<float> xw; /* WMMA operands, 512 floats per warp */
std::vector<char> dyn;
jmp_buf sched;
int cur = -1;
const std::function<void()> *body;
uint64_t rng = 0x9e3779b97f4a7c15ull;

void wait(int kind) {
    if (cur < 0) {
        fprintf(stderr, "cuda_emu: barrier outside a kernel\n");
        abort();
    }
    fibers[cur].state = kind;
    if (!_setjmp(fibers[cur].jb)) _longjmp(sched, 1);
}

void fiber_main() {
    for (;;) {
        (*body)();
        wait(DONE);
    }
}

/* Runs fiber i until it waits or finishes. */
void resume(int i) {
    cur = i;
    threadIdx = fibers[i].tid;
    if (!_setjmp(sched)) {
        if (fibers[i].started) _longjmp(fibers[i].jb, 1);
        fibers[i].started = 1;
        setcontext(&fibers[i].ctx);
    }
}

uint64_t next_rand() {
    rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
    return rng;
}

} // namespace

namespace emu {

std::function<void(std::function<void()>)> *capture;
const void *running_kernel;

void syncthreads() { wait(WAIT_BLOCK); }

float shfl_xor(float v, int m) {
    const int t = cur;
    xf[t] = v;
    wait(WAIT_WARP);
    const float r = xf[(t & ~31) | ((t & 31) ^ m)];
    wait(WAIT_WARP);
    return r;
}

int shfl_xor(int v, int m) {
    const int t = cur;
    xi[t] = v;
    wait(WAIT_WARP);
    const int r = xi[(t & ~31) | ((t & 31) ^ m)];
    wait(WAIT_WARP);
    return r;
}

double shfl_xor(double v, int m) {
    const int t = cur;
    xd[t] = v;
    wait(WAIT_WARP);
    const double r = xd[(t & ~31) | ((t & 31) ^ m)];
    wait(WAIT_WARP);
    return r;
}

void syncwarp() { wait(WAIT_WARP); }

float *wmma_scratch() { return xw.data() + (size_t)(cur >> 5) * 512; }

/* 128-byte aligned, as a GPU's dynamic shared memory is at least (WMMA needs 32) */
void *dyn_smem() { return (void *)(((uintptr_t)dyn.data() + 127) & ~(uintptr_t)127); }

void wmma_check(const void *p, unsigned ldm, int elem) {
    if ((uintptr_t)p % 32 || (ldm * elem) % 16) {
        fprintf(stderr, "cuda_emu: WMMA %p with ldm %u (%d-byte elements): the pointer must be 256-bit aligned and "
                        "ldm a multiple of 16 bytes\n", p, ldm, elem);
        abort();
    }
}

static std::unordered_map<const void *, int> g_smem_optin;
void set_smem_optin(const void *k, int bytes) { g_smem_optin[k] = bytes; }
void check_smem(const void *k, size_t smem) {
    if (smem <= 48 * 1024) return;
    const auto it = g_smem_optin.find(k);
    if (it != g_smem_optin.end() && smem <= (size_t)it->second) return;
    Dl_info di;
    fprintf(stderr, "cuda_emu: a launch of %s asks for %zu bytes of dynamic shared memory, over 48 KiB, but its opt-in "
                    "(cudaFuncSetAttribute) is %d bytes: a GPU refuses it\n",
            dladdr(k, &di) && di.dli_sname ? di.dli_sname : "a kernel", smem,
            it == g_smem_optin.end() ? 0 : it->second);
    abort();
}

void run(const cfg &c, const std::function<void()> &fn) {
    /* Each block's thread order comes from (seed, launch number, block), so
     * CUDA_EMU_SEED picks another set of orders and CUDA_EMU_ONLY=a:b confines
     * the shuffling to launches a..b-1 (to bisect a race) without changing
     * the orders of the others. */
    static uint64_t seed, launch_no, only_a = 0, only_b = UINT64_MAX;
    static int init;
    if (!init) {
        init = 1;
        const char *e = getenv("CUDA_EMU_SEED");
        seed = e && *e ? strtoull(e, NULL, 10) : 0;
        if ((e = getenv("CUDA_EMU_ONLY")) && *e) sscanf(e, "%lu:%lu", &only_a, &only_b);
    }
    const uint64_t this_launch = launch_no++;
    if ((getenv("CUDA_EMU_NAME") && strtoull(getenv("CUDA_EMU_NAME"), NULL, 10) == this_launch) || getenv("CUDA_EMU_LOG")) {
        Dl_info di;
        if (dladdr(running_kernel, &di) && di.dli_sname)
            fprintf(stderr, "cuda_emu: launch %lu is %s, grid (%u,%u,%u) block (%u,%u,%u) smem %zu\n", this_launch,
                    di.dli_sname, c.grid.x, c.grid.y, c.grid.z, c.block.x, c.block.y, c.block.z, c.smem);
    }
    const int shuffle = this_launch >= only_a && this_launch < only_b;
    const int n = (int)(c.block.x * c.block.y * c.block.z);
    if (n <= 0 || n > 1024 || c.block.x > 1024) {
        fprintf(stderr, "cuda_emu: invalid block of %d threads\n", n);
        abort();
    }
    if (!c.grid.x || !c.grid.y || !c.grid.z || c.grid.y > 65535 || c.grid.z > 65535) {
        /* a GPU refuses the launch (cudaErrorInvalidConfiguration): the kernel never runs */
        fprintf(stderr, "cuda_emu: invalid grid (%u,%u,%u): y and z must be 1..65535\n", c.grid.x, c.grid.y, c.grid.z);
        abort();
    }
    if (c.smem > 227 * 1024) {
        fprintf(stderr, "cuda_emu: %zu bytes of dynamic shared memory exceed the H100's 227 KiB\n", c.smem);
        abort();
    }
    if ((int)fibers.size() < n) {
        fibers.resize((size_t)n);
        xf.resize((size_t)n);
        xi.resize((size_t)n);
        xd.resize((size_t)n);
        xw.resize((size_t)(n + 31) / 32 * 512);
    }
    for (int i = 0; i < n; i++)
        if (!fibers[i].stack) {
            Fiber &f = fibers[i];
            f.stack = (char *)malloc(STACK);
            getcontext(&f.ctx);
            f.ctx.uc_stack.ss_sp = f.stack;
            f.ctx.uc_stack.ss_size = STACK;
            f.ctx.uc_link = nullptr;
            makecontext(&f.ctx, fiber_main, 0);
        }
    dyn.assign(c.smem + 16 + 128, 0);
    body = &fn;
    gridDim = c.grid;
    blockDim = c.block;
    std::vector<int> order((size_t)n);
    for (unsigned bz = 0; bz < c.grid.z; bz++)
        for (unsigned by = 0; by < c.grid.y; by++)
            for (unsigned bx = 0; bx < c.grid.x; bx++) {
                blockIdx = uint3_{bx, by, bz};
                rng = (seed + 1) * 0x9e3779b97f4a7c15ull ^ (this_launch << 20) ^ ((uint64_t)bx << 40) ^ ((uint64_t)by << 8) ^ bz;
                rng = rng ? rng : 1;
                for (int i = 0; i < n; i++) {
                    Fiber &f = fibers[i];
                    f.tid = uint3_{(unsigned)i % c.block.x, (unsigned)i / c.block.x % c.block.y,
                                   (unsigned)i / (c.block.x * c.block.y)};
                    f.state = RUN;
                }
                for (;;) {
                    /* run every runnable thread to its next barrier, in a shuffled order */
                    int m = 0;
                    for (int i = 0; i < n; i++)
                        if (fibers[i].state == RUN) order[m++] = i;
                    for (int i = shuffle ? m - 1 : 0; i > 0; i--) {
                        int j = (int)(next_rand() % (uint64_t)(i + 1)), t = order[i];
                        order[i] = order[j], order[j] = t;
                    }
                    for (int k = 0; k < m; k++) resume(order[k]);
                    cur = -1;
                    int live = 0, at_block = 0, released = 0;
                    for (int i = 0; i < n; i++) {
                        live += fibers[i].state != DONE;
                        at_block += fibers[i].state == WAIT_BLOCK;
                    }
                    if (!live) break;
                    for (int w = 0; w < n; w += 32) { /* warps whose live lanes all wait at a shuffle */
                        int wl = 0, ww = 0;
                        for (int i = w; i < n && i < w + 32; i++)
                            wl += fibers[i].state != DONE, ww += fibers[i].state == WAIT_WARP;
                        if (wl && ww == wl) {
                            for (int i = w; i < n && i < w + 32; i++)
                                if (fibers[i].state == WAIT_WARP) fibers[i].state = RUN;
                            released = 1;
                        }
                    }
                    if (!released && at_block == live) {
                        for (int i = 0; i < n; i++)
                            if (fibers[i].state == WAIT_BLOCK) fibers[i].state = RUN;
                        released = 1;
                    }
                    if (!released) {
                        fprintf(stderr,
                                "cuda_emu: block (%u,%u,%u) deadlocks: %d live threads, %d at __syncthreads, the "
                                "rest at a partial warp shuffle (divergent barrier)\n",
                                bx, by, bz, live, at_block);
                        abort();
                    }
                }
            }
    body = nullptr;
}

} // namespace emu

/* ------------------------------------------------------------ runtime */

static cudaError_t g_last = cudaSuccess;

cudaError_t cudaGetDeviceCount(int *n) {
    *n = 1;
    return cudaSuccess;
}
cudaError_t cudaSetDevice(int d) { return d == 0 ? cudaSuccess : cudaErrorInvalidValue; }
cudaError_t cudaGetDeviceProperties(cudaDeviceProp *p, int) {
    memset(p, 0, sizeof *p);
    snprintf(p->name, sizeof p->name, "prism CUDA emulator (CPU)");
    p->major = 9, p->minor = 0, p->multiProcessorCount = 8;
    return cudaSuccess;
}
cudaError_t cudaDeviceGetAttribute(int *v, cudaDeviceAttr, int) {
    *v = 227 * 1024;
    return cudaSuccess;
}
/* Device memory: half the machine's, or $CUDA_EMU_MEMORY bytes (read at
 * each call, so a test can make allocations fail); what cudaMalloc hands out
 * is counted against it. */
static std::unordered_map<void *, size_t> g_allocs;
static size_t g_used;
static size_t device_memory(void) {
    const char *e = getenv("CUDA_EMU_MEMORY");
    if (e && *e) return (size_t)strtoull(e, NULL, 10);
    return (size_t)sysconf(_SC_PHYS_PAGES) * (size_t)sysconf(_SC_PAGESIZE) / 2;
}
cudaError_t cudaMemGetInfo(size_t *fr, size_t *tot) {
    const size_t mem = device_memory();
    *fr = mem > g_used ? mem - g_used : 0, *tot = mem;
    return cudaSuccess;
}
cudaError_t cudaDriverGetVersion(int *v) {
    *v = 13000;
    return cudaSuccess;
}
cudaError_t cudaRuntimeGetVersion(int *v) {
    *v = 13000;
    return cudaSuccess;
}
cudaError_t cudaMalloc(void **p, size_t n) {
    *p = NULL;
    if (g_used + n > device_memory()) return g_last = cudaErrorMemoryAllocation;
    /* poisoned, as device memory is not zeroed */
    *p = aligned_alloc(256, (n + 255) / 256 * 256);
    if (!*p) return g_last = cudaErrorMemoryAllocation;
    memset(*p, 0xA5, n);
    g_allocs[*p] = n;
    g_used += n;
    return cudaSuccess;
}
cudaError_t cudaMallocHost(void **p, size_t n) {
    *p = aligned_alloc(256, (n + 255) / 256 * 256);
    if (!*p) return g_last = cudaErrorMemoryAllocation;
    memset(*p, 0xA5, n);
    return cudaSuccess;
}
cudaError_t cudaFree(void *p) {
    auto it = g_allocs.find(p);
    if (it != g_allocs.end()) g_used -= it->second, g_allocs.erase(it);
    free(p);
    return cudaSuccess;
}
cudaError_t cudaFreeHost(void *p) {
    free(p);
    return cudaSuccess;
}
cudaError_t cudaMemcpy(void *d, const void *s, size_t n, cudaMemcpyKind) {
    memmove(d, s, n);
    return cudaSuccess;
}
cudaError_t cudaMemcpyAsync(void *d, const void *s, size_t n, cudaMemcpyKind k, cudaStream_t) {
    if (emu::capture) {
        (*emu::capture)([d, s, n, k]() { cudaMemcpy(d, s, n, k); });
        return cudaSuccess;
    }
    return cudaMemcpy(d, s, n, k);
}
cudaError_t cudaMemset(void *d, int v, size_t n) {
    memset(d, v, n);
    return cudaSuccess;
}
cudaError_t cudaMemsetAsync(void *d, int v, size_t n, cudaStream_t) {
    if (emu::capture) {
        (*emu::capture)([d, v, n]() { memset(d, v, n); });
        return cudaSuccess;
    }
    memset(d, v, n);
    return cudaSuccess;
}

struct emu_graph {
    std::vector<std::function<void()>> jobs;
};
static emu_graph *g_capturing;
static std::function<void(std::function<void()>)> g_record = [](std::function<void()> j) {
    g_capturing->jobs.push_back(std::move(j));
};
cudaError_t cudaStreamBeginCapture(cudaStream_t, cudaStreamCaptureMode) {
    if (g_capturing) return cudaErrorInvalidValue;
    g_capturing = new emu_graph;
    emu::capture = &g_record;
    return cudaSuccess;
}
cudaError_t cudaStreamEndCapture(cudaStream_t, cudaGraph_t *g) {
    *g = g_capturing;
    g_capturing = nullptr;
    emu::capture = nullptr;
    return *g ? cudaSuccess : cudaErrorInvalidValue;
}
cudaError_t cudaGraphInstantiate(cudaGraphExec_t *e, cudaGraph_t g, unsigned long long) {
    *e = new emu_graph(*g);
    return cudaSuccess;
}
cudaError_t cudaGraphLaunch(cudaGraphExec_t e, cudaStream_t) {
    for (auto &j : e->jobs) j();
    return cudaSuccess;
}
cudaError_t cudaGraphDestroy(cudaGraph_t g) {
    delete g;
    return cudaSuccess;
}
cudaError_t cudaGraphExecDestroy(cudaGraphExec_t e) {
    delete e;
    return cudaSuccess;
}
cudaError_t cudaStreamCreateWithFlags(cudaStream_t *s, unsigned) {
    *s = (cudaStream_t)malloc(1);
    return cudaSuccess;
}
cudaError_t cudaStreamDestroy(cudaStream_t s) {
    free(s);
    return cudaSuccess;
}
cudaError_t cudaStreamSynchronize(cudaStream_t) { return cudaSuccess; }
cudaError_t cudaDeviceSynchronize(void) { return cudaSuccess; }
cudaError_t cudaGetLastError(void) {
    cudaError_t e = g_last;
    g_last = cudaSuccess;
    return e;
}
cudaError_t cudaPeekAtLastError(void) { return g_last; }
const char *cudaGetErrorString(cudaError_t e) { return e == cudaSuccess ? "no error" : "emulated CUDA error"; }
const char *cudaGetErrorName(cudaError_t e) { return e == cudaSuccess ? "cudaSuccess" : "cudaErrorEmulated"; }

struct emu_event {
    double t;
};
static double now_s() {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}
cudaError_t cudaEventCreate(cudaEvent_t *e) {
    *e = new emu_event{0};
    return cudaSuccess;
}
cudaError_t cudaEventDestroy(cudaEvent_t e) {
    delete e;
    return cudaSuccess;
}
cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t) {
    e->t = now_s();
    return cudaSuccess;
}
cudaError_t cudaEventSynchronize(cudaEvent_t) { return cudaSuccess; }
cudaError_t cudaEventElapsedTime(float *ms, cudaEvent_t a, cudaEvent_t b) {
    *ms = (float)((b->t - a->t) * 1e3);
    return cudaSuccess;
}

/* ------------------------------------------------------------ cuBLAS */

cublasStatus_t cublasCreate(cublasHandle_t *h) {
    *h = (cublasHandle_t)malloc(1);
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasDestroy(cublasHandle_t h) {
    free(h);
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasSetStream(cublasHandle_t, cudaStream_t) { return CUBLAS_STATUS_SUCCESS; }
cublasStatus_t cublasSetWorkspace(cublasHandle_t, void *, size_t) { return CUBLAS_STATUS_SUCCESS; }

static cublasStatus_t gemm_now(cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k, float al,
                               const void *A, cudaDataType at, int lda, const void *B, cudaDataType bt, int ldb,
                               float be, void *C, cudaDataType ct, int ldc, bool split_out = false);

cublasStatus_t cublasGemmEx(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                            const void *alpha, const void *A, cudaDataType at, int lda, const void *B, cudaDataType bt,
                            int ldb, const void *beta, void *C, cudaDataType ct, int ldc, cublasComputeType_t comp,
                            cublasGemmAlgo_t algo) {
    return cublasGemmStridedBatchedEx(h, ta, tb, m, n, k, alpha, A, at, lda, 0, B, bt, ldb, 0, beta, C, ct, ldc, 0, 1,
                                      comp, algo);
}

cublasStatus_t cublasGemmStridedBatchedEx(cublasHandle_t, cublasOperation_t ta, cublasOperation_t tb, int m, int n,
                                          int k, const void *alpha, const void *A, cudaDataType at, int lda,
                                          long long sa, const void *B, cudaDataType bt, int ldb, long long sb,
                                          const void *beta, void *C, cudaDataType ct, int ldc, long long sc, int batch,
                                          cublasComputeType_t, cublasGemmAlgo_t) {
    const float al = *(const float *)alpha, be = *(const float *)beta;
    if (batch < 0) return CUBLAS_STATUS_INVALID_VALUE;
    auto run = [=]() {
        const size_t ea = at == CUDA_R_16BF ? 2 : 4, eb = bt == CUDA_R_16BF ? 2 : 4, ec = ct == CUDA_R_16BF ? 2 : 4;
        for (int i = 0; i < batch; i++) {
            cublasStatus_t st = gemm_now(ta, tb, m, n, k, al, (const char *)A + i * sa * ea, at, lda,
                                         (const char *)B + i * sb * eb, bt, ldb, be, (char *)C + i * sc * ec, ct, ldc);
            if (st != CUBLAS_STATUS_SUCCESS) return st;
        }
        return CUBLAS_STATUS_SUCCESS;
    };
    if (emu::capture) {
        (*emu::capture)([=]() { run(); });
        return CUBLAS_STATUS_SUCCESS;
    }
    return run();
}

/* ------------------------------------------------------------ cuBLASLt: the same reference GEMM. Its
 * heuristic proposes EMU_LT_ALGOS "algorithms" (their index in data[0]) that compute the same thing; an
 * algorithm index past them is refused, as a real one that does not fit the problem is, and so is the last
 * one for a problem of another n than the heuristic was asked about (data[1]) — so that callers must check
 * (cublasLtMatmulAlgoCheck) before they reuse one. Layouts: the stored matrix, column-major, rows × cols at
 * ld; op(A) is m × k. C and D must be the same matrix. The last algorithm is a split-K one, as a real heuristic
 * proposes for some shapes: where the preference's reduction-scheme mask allows it (by default it does), its two
 * K halves are reduced in the output type, each rounded to BF16 before they are added, as cuBLASLt's OUTPUT_TYPE
 * and INPLACE schemes do; with the mask limited to COMPUTE_TYPE, in F32 (data[2]: the scheme). */
enum { EMU_LT_ALGOS = 3 };
struct emu_lt {
    int unused;
};
struct emu_lt_desc {
    cublasOperation_t ta, tb;
};
struct emu_lt_layout {
    cudaDataType t;
    uint64_t rows, cols;
    int64_t ld;
};
struct emu_lt_pref {
    size_t ws;
    uint32_t mask;
};
cublasStatus_t cublasLtCreate(cublasLtHandle_t *h) {
    *h = new emu_lt{0};
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtDestroy(cublasLtHandle_t h) {
    delete h;
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatmulDescCreate(cublasLtMatmulDesc_t *d, cublasComputeType_t comp, cudaDataType scale) {
    if (comp != CUBLAS_COMPUTE_32F || scale != CUDA_R_32F) return CUBLAS_STATUS_NOT_SUPPORTED;
    *d = new emu_lt_desc{CUBLAS_OP_N, CUBLAS_OP_N};
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatmulDescDestroy(cublasLtMatmulDesc_t d) {
    delete d;
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatmulDescSetAttribute(cublasLtMatmulDesc_t d, cublasLtMatmulDescAttributes_t a, const void *v,
                                              size_t n) {
    if (n != sizeof(cublasOperation_t)) return CUBLAS_STATUS_INVALID_VALUE;
    if (a == CUBLASLT_MATMUL_DESC_TRANSA) d->ta = *(const cublasOperation_t *)v;
    else if (a == CUBLASLT_MATMUL_DESC_TRANSB) d->tb = *(const cublasOperation_t *)v;
    else return CUBLAS_STATUS_INVALID_VALUE;
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatrixLayoutCreate(cublasLtMatrixLayout_t *l, cudaDataType t, uint64_t rows, uint64_t cols,
                                          int64_t ld) {
    if (ld < (int64_t)rows) return CUBLAS_STATUS_INVALID_VALUE;
    *l = new emu_lt_layout{t, rows, cols, ld};
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatrixLayoutDestroy(cublasLtMatrixLayout_t l) {
    delete l;
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatmulPreferenceCreate(cublasLtMatmulPreference_t *p) {
    *p = new emu_lt_pref{0, CUBLASLT_REDUCTION_SCHEME_MASK};
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatmulPreferenceDestroy(cublasLtMatmulPreference_t p) {
    delete p;
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatmulPreferenceSetAttribute(cublasLtMatmulPreference_t p, cublasLtMatmulPreferenceAttributes_t a,
                                                    const void *v, size_t n) {
    if (a == CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES && n == sizeof(size_t)) p->ws = *(const size_t *)v;
    else if (a == CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK && n == sizeof(uint32_t)) p->mask = *(const uint32_t *)v;
    else return CUBLAS_STATUS_INVALID_VALUE;
    return CUBLAS_STATUS_SUCCESS;
}
/* op(A) (m × k) · op(B) (k × n) into D (m × n): the shapes agree */
static bool lt_shapes(cublasLtMatmulDesc_t d, cublasLtMatrixLayout_t a, cublasLtMatrixLayout_t b,
                      cublasLtMatrixLayout_t c, cublasLtMatrixLayout_t dl) {
    const uint64_t m = dl->rows, n = dl->cols, ka = d->ta == CUBLAS_OP_N ? a->cols : a->rows,
                   kb = d->tb == CUBLAS_OP_N ? b->rows : b->cols;
    return (d->ta == CUBLAS_OP_N ? a->rows : a->cols) == m && (d->tb == CUBLAS_OP_N ? b->cols : b->rows) == n &&
           ka == kb && c->rows == m && c->cols == n && c->t == dl->t && c->ld == dl->ld;
}
/* the algorithm exists, and the last one only for the n it was proposed for */
static bool lt_fits(const cublasLtMatmulAlgo_t *algo, cublasLtMatrixLayout_t dl) {
    return algo->data[0] < EMU_LT_ALGOS && (algo->data[0] != EMU_LT_ALGOS - 1 || algo->data[1] == dl->cols);
}
cublasStatus_t cublasLtMatmulAlgoGetHeuristic(cublasLtHandle_t, cublasLtMatmulDesc_t d, cublasLtMatrixLayout_t a,
                                              cublasLtMatrixLayout_t b, cublasLtMatrixLayout_t c,
                                              cublasLtMatrixLayout_t dl, cublasLtMatmulPreference_t pref,
                                              int requested, cublasLtMatmulHeuristicResult_t *res, int *returned) {
    if (requested <= 0) return CUBLAS_STATUS_INVALID_VALUE;
    if (!lt_shapes(d, a, b, c, dl)) return CUBLAS_STATUS_INVALID_VALUE;
    int n = requested < EMU_LT_ALGOS ? requested : EMU_LT_ALGOS;
    for (int i = 0; i < n; i++) {
        memset(&res[i], 0, sizeof res[i]);
        res[i].algo.data[0] = (uint64_t)i;
        res[i].algo.data[1] = dl->cols;
        if (i == EMU_LT_ALGOS - 1) { /* split-K: the first reduction scheme the mask allows, cheapest first */
            const uint32_t mk = pref ? pref->mask : (uint32_t)CUBLASLT_REDUCTION_SCHEME_MASK;
            res[i].algo.data[2] = mk & CUBLASLT_REDUCTION_SCHEME_INPLACE       ? CUBLASLT_REDUCTION_SCHEME_INPLACE
                                  : mk & CUBLASLT_REDUCTION_SCHEME_OUTPUT_TYPE ? CUBLASLT_REDUCTION_SCHEME_OUTPUT_TYPE
                                  : mk & CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE ? CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE
                                                                                : CUBLASLT_REDUCTION_SCHEME_NONE;
        }
        res[i].state = CUBLAS_STATUS_SUCCESS;
        res[i].wavesCount = 1.0f;
    }
    *returned = n;
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatmulAlgoCheck(cublasLtHandle_t, cublasLtMatmulDesc_t d, cublasLtMatrixLayout_t a,
                                       cublasLtMatrixLayout_t b, cublasLtMatrixLayout_t c, cublasLtMatrixLayout_t dl,
                                       const cublasLtMatmulAlgo_t *algo, cublasLtMatmulHeuristicResult_t *res) {
    if (!lt_shapes(d, a, b, c, dl) || !lt_fits(algo, dl)) return CUBLAS_STATUS_INVALID_VALUE;
    if (res) memset(res, 0, sizeof *res), res->algo = *algo, res->state = CUBLAS_STATUS_SUCCESS;
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatmul(cublasLtHandle_t, cublasLtMatmulDesc_t d, const void *alpha, const void *A,
                              cublasLtMatrixLayout_t a, const void *B, cublasLtMatrixLayout_t b, const void *beta,
                              const void *C, cublasLtMatrixLayout_t c, void *D, cublasLtMatrixLayout_t dl,
                              const cublasLtMatmulAlgo_t *algo, void *, size_t, cudaStream_t) {
    if (!lt_shapes(d, a, b, c, dl) || C != D || a->t != b->t || (algo && !lt_fits(algo, dl)))
        return CUBLAS_STATUS_INVALID_VALUE;
    const float al = *(const float *)alpha, be = *(const float *)beta;
    const cublasOperation_t ta = d->ta, tb = d->tb;
    const int m = (int)dl->rows, n = (int)dl->cols, k = (int)(ta == CUBLAS_OP_N ? a->cols : a->rows);
    const int lda = (int)a->ld, ldb = (int)b->ld, ldc = (int)dl->ld;
    const cudaDataType at = a->t, bt = b->t, ct = dl->t;
    const bool split_out = algo && (algo->data[2] == CUBLASLT_REDUCTION_SCHEME_INPLACE ||
                                    algo->data[2] == CUBLASLT_REDUCTION_SCHEME_OUTPUT_TYPE);
    auto run = [=]() { return gemm_now(ta, tb, m, n, k, al, A, at, lda, B, bt, ldb, be, D, ct, ldc, split_out); };
    if (emu::capture) {
        (*emu::capture)([=]() { run(); });
        return CUBLAS_STATUS_SUCCESS;
    }
    return run();
}

static cublasStatus_t gemm_now(cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k, float al,
                               const void *A, cudaDataType at, int lda, const void *B, cudaDataType bt, int ldb,
                               float be, void *C, cudaDataType ct, int ldc, bool split_out) {
    /* C (m, n) = alpha · op(A) · op(B) + beta · C, column-major, BF16 or F32 in, F32 out (or BF16 out from BF16
     * in, as cuBLAS allows: F32 accumulation, beta·C read and the result rounded to BF16) */
    if (at != bt || (at != CUDA_R_16BF && at != CUDA_R_32F) ||
        (ct != CUDA_R_32F && !(ct == CUDA_R_16BF && at == CUDA_R_16BF)))
        return CUBLAS_STATUS_NOT_SUPPORTED;
    if (lda < (ta == CUBLAS_OP_N ? m : k) || ldb < (tb == CUBLAS_OP_N ? k : n) || ldc < m)
        return CUBLAS_STATUS_INVALID_VALUE;
    const bool h = at == CUDA_R_16BF;
    auto ld = [h](const void *p, int64_t i) {
        return h ? __bfloat162float(((const __nv_bfloat16 *)p)[i]) : ((const float *)p)[i];
    };
    float *c = (float *)C;
    for (int j = 0; j < n; j++)
        for (int i = 0; i < m; i++) {
            float s = 0.0f, s1 = 0.0f; /* s1: the second K half's sum, split_out only */
            for (int p = 0; p < k; p++)
                (split_out && p >= k / 2 ? s1 : s) += ld(A, ta == CUBLAS_OP_N ? i + (int64_t)p * lda : p + (int64_t)i * lda) *
                                                      ld(B, tb == CUBLAS_OP_N ? p + (int64_t)j * ldb : j + (int64_t)p * ldb);
            const int64_t o = i + (int64_t)j * ldc;
            if (ct == CUDA_R_16BF && split_out) { /* each half rounded to the output type, then reduced */
                __nv_bfloat16 *cb = (__nv_bfloat16 *)C;
                const float h0 = __bfloat162float(__float2bfloat16(al * s)), h1 = __bfloat162float(__float2bfloat16(al * s1));
                cb[o] = __float2bfloat16(h0 + h1 + (be != 0.0f ? be * __bfloat162float(cb[o]) : 0.0f));
            } else if (ct == CUDA_R_16BF) {
                __nv_bfloat16 *cb = (__nv_bfloat16 *)C;
                cb[o] = __float2bfloat16(al * (s + s1) + (be != 0.0f ? be * __bfloat162float(cb[o]) : 0.0f));
            } else {
                c[o] = al * (s + s1) + (be != 0.0f ? be * c[o] : 0.0f);
            }
        }
    return CUBLAS_STATUS_SUCCESS;
}

