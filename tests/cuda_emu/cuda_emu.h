/* cuda_emu.h — runs prism's CUDA module on the CPU, for tests on machines
 * without a GPU (CI). the files src/cuda/NAME.cu are compiled as C++ against this header
 * instead of the CUDA toolkit: kernel launches (rewritten from <<<...>>> by
 * the Makefile) run every block, one after another, with each CUDA thread a
 * fiber (ucontext) on one OS thread; __syncthreads and warp shuffles are
 * barriers of the fiber scheduler, which reports divergent barriers (a hang
 * on a GPU) and runs the threads of each phase in a shuffled order so that a
 * missing barrier shows up as a wrong result. The runtime calls the module
 * uses map onto host memory, and cublasGemmEx onto a reference GEMM with
 * BF16 inputs and F32 accumulation.
 *
 * What it cannot show: timing, real concurrency between blocks, the memory
 * model of a GPU, or compiler-specific behaviour of nvcc. gpu_check.sh runs
 * the same tests on a real GPU. */
#ifndef PRISM_CUDA_EMU_H
#define PRISM_CUDA_EMU_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <functional>
#include <type_traits>

/* ------------------------------------------------------------ language */
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static /* blocks run one at a time: a static is the block's shared memory */
#define __launch_bounds__(...)

struct dim3 {
    unsigned x, y, z;
    dim3(unsigned a = 1, unsigned b = 1, unsigned c = 1) : x(a), y(b), z(c) {}
};
struct uint3_ {
    unsigned x, y, z;
};
extern uint3_ threadIdx, blockIdx; /* the running fiber's */
extern dim3 blockDim, gridDim;

struct uint4 {
    unsigned x, y, z, w;
};
struct float2 {
    float x, y;
};
struct float4 {
    float x, y, z, w;
};
static inline float2 make_float2(float a, float b) { return float2{a, b}; }
static inline float4 make_float4(float a, float b, float c, float d) { return float4{a, b, c, d}; }
static inline uint4 make_uint4(unsigned a, unsigned b, unsigned c, unsigned d) { return uint4{a, b, c, d}; }
template <class T> static inline T __ldg(const T *p) { return *p; }
template <class T> static inline T __ldcg(const T *p) { return *p; }
/* blocks run one at a time, their threads as fibers of one OS thread */
static inline int atomicAdd(int *p, int v) {
    const int o = *p;
    *p = o + v;
    return o;
}
static inline float atomicAdd(float *p, float v) {
    const float o = *p;
    *p = o + v;
    return o;
}
static inline void __threadfence(void) {}
/* correctly rounded, never fused (what the host's separate * and - give) */
static inline float __fmul_rn(float a, float b) { return a * b; }
static inline float __fsub_rn(float a, float b) { return a - b; }
static inline int min(int a, int b) { return a < b ? a : b; }
static inline int max(int a, int b) { return a > b ? a : b; }

namespace emu {
void syncthreads();
float shfl_xor(float v, int lane_mask);
int shfl_xor(int v, int lane_mask);
double shfl_xor(double v, int lane_mask);
void syncwarp();
void *dyn_smem();
} // namespace emu
#define __syncthreads() emu::syncthreads()
#define __syncwarp() emu::syncwarp()
#define __shfl_xor_sync(mask, v, o) emu::shfl_xor((v), (o))
#define PRISM_DYN_SMEM(type, name) type *name = (type *)emu::dyn_smem()

/* ------------------------------------------------------------ bfloat16 */
struct __nv_bfloat16 {
    uint16_t x;
};
struct __nv_bfloat162 {
    __nv_bfloat16 x, y;
};
static inline float __bfloat162float(__nv_bfloat16 b) {
    uint32_t u = (uint32_t)b.x << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}
static inline __nv_bfloat16 __float2bfloat16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    __nv_bfloat16 b;
    if ((u & 0x7fffffffu) > 0x7f800000u) b.x = (uint16_t)((u >> 16) | 0x40);
    else b.x = (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
    return b;
}
static inline float2 __bfloat1622float2(__nv_bfloat162 v) {
    return float2{__bfloat162float(v.x), __bfloat162float(v.y)};
}

/* ------------------------------------------------------------ WMMA (16 x 16 x 16)
 * A fragment is distributed over the warp as on a GPU: lane l holds elements
 * 8 l .. 8 l + 7 of the row-major 16 x 16 tile (an arbitrary mapping, as the
 * real one is unspecified: code that relies on it is wrong anyway). Loads
 * and stores touch only the lane's own elements, without a barrier, so a
 * missing __syncwarp between a store and another lane's load shows;
 * mma_sync exchanges the operands through per-warp scratch between two warp
 * barriers (every lane must call it, as on a GPU). */
namespace emu {
float *wmma_scratch(); /* 512 floats for the calling thread's warp */
void wmma_check(const void *p, unsigned ldm, int elem); /* aborts where a GPU would fault or misread */
}
namespace nvcuda {
namespace wmma {
struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };
template <class Use, int M, int N, int K, class T, class Layout = void> struct fragment {
    static_assert(M == 16 && N == 16 && K == 16, "the emulator has the 16 x 16 x 16 shape only");
    static const int num_elements = 8;
    float x[8];
};
static inline float wmma_f(float v) { return v; }
static inline float wmma_f(__nv_bfloat16 v) { return __bfloat162float(v); }
static inline int wmma_lane() { return (int)((threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z)) & 31); }
template <class Use, class T, class Layout, class P>
static inline void load_matrix_sync(fragment<Use, 16, 16, 16, T, Layout> &f, const P *p, unsigned ldm) {
    const int col = std::is_same<Layout, col_major>::value, l = wmma_lane();
    emu::wmma_check(p, ldm, (int)sizeof(P));
    for (int e = 0; e < 8; e++) {
        const int i = (8 * l + e) / 16, j = (8 * l + e) % 16;
        f.x[e] = wmma_f(col ? p[j * ldm + i] : p[i * ldm + j]);
    }
}
template <class P>
static inline void load_matrix_sync(fragment<accumulator, 16, 16, 16, float> &f, const P *p, unsigned ldm, layout_t lay) {
    const int l = wmma_lane();
    emu::wmma_check(p, ldm, (int)sizeof(P));
    for (int e = 0; e < 8; e++) {
        const int i = (8 * l + e) / 16, j = (8 * l + e) % 16;
        f.x[e] = lay == mem_col_major ? p[j * ldm + i] : p[i * ldm + j];
    }
}
static inline void store_matrix_sync(float *p, const fragment<accumulator, 16, 16, 16, float> &f, unsigned ldm, layout_t lay) {
    const int l = wmma_lane();
    emu::wmma_check(p, ldm, 4);
    for (int e = 0; e < 8; e++) {
        const int i = (8 * l + e) / 16, j = (8 * l + e) % 16;
        (lay == mem_col_major ? p[j * ldm + i] : p[i * ldm + j]) = f.x[e];
    }
}
template <class Use, class T, class Layout>
static inline void fill_fragment(fragment<Use, 16, 16, 16, T, Layout> &f, float v) {
    for (int e = 0; e < 8; e++) f.x[e] = std::is_same<T, float>::value ? v : __bfloat162float(__float2bfloat16(v));
}
template <class TA, class LA, class TB, class LB>
static inline void mma_sync(fragment<accumulator, 16, 16, 16, float> &d, const fragment<matrix_a, 16, 16, 16, TA, LA> &a,
                            const fragment<matrix_b, 16, 16, 16, TB, LB> &b,
                            const fragment<accumulator, 16, 16, 16, float> &c) {
    float *sc = emu::wmma_scratch(); /* A (16 x 16) | B (16 x 16), row-major */
    const int l = wmma_lane();
    for (int e = 0; e < 8; e++) sc[8 * l + e] = a.x[e], sc[256 + 8 * l + e] = b.x[e];
    emu::syncwarp();
    float o[8];
    for (int e = 0; e < 8; e++) {
        const int i = (8 * l + e) / 16, j = (8 * l + e) % 16;
        float acc = c.x[e];
        for (int k = 0; k < 16; k++) acc += sc[i * 16 + k] * sc[256 + k * 16 + j];
        o[e] = acc;
    }
    emu::syncwarp(); /* every lane has read the operands before the next mma writes them */
    for (int e = 0; e < 8; e++) d.x[e] = o[e];
}
} // namespace wmma
} // namespace nvcuda

/* ------------------------------------------------------------ runtime */
typedef enum {
    cudaSuccess = 0,
    cudaErrorInvalidValue = 1,
    cudaErrorMemoryAllocation = 2,
    cudaErrorNoDevice = 100,
    cudaErrorInvalidDeviceFunction = 98,
    cudaErrorNoKernelImageForDevice = 209,
} cudaError_t;
typedef struct emu_stream *cudaStream_t;
typedef enum { cudaMemcpyHostToDevice, cudaMemcpyDeviceToHost, cudaMemcpyDeviceToDevice } cudaMemcpyKind;
enum { cudaStreamNonBlocking = 1 };
typedef enum { cudaDevAttrMaxSharedMemoryPerBlockOptin = 97 } cudaDeviceAttr;
typedef enum { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 } cudaFuncAttribute;
struct cudaDeviceProp {
    char name[256];
    int major, minor, multiProcessorCount;
};
#define CUDART_VERSION 13000

cudaError_t cudaGetDeviceCount(int *n);
cudaError_t cudaSetDevice(int d);
cudaError_t cudaGetDeviceProperties(cudaDeviceProp *p, int d);
cudaError_t cudaDeviceGetAttribute(int *v, cudaDeviceAttr a, int d);
cudaError_t cudaMemGetInfo(size_t *fr, size_t *tot);
cudaError_t cudaDriverGetVersion(int *v);
cudaError_t cudaRuntimeGetVersion(int *v);
cudaError_t cudaMalloc(void **p, size_t n);
cudaError_t cudaMallocHost(void **p, size_t n);
cudaError_t cudaFree(void *p);
cudaError_t cudaFreeHost(void *p);
cudaError_t cudaMemcpy(void *d, const void *s, size_t n, cudaMemcpyKind k);
cudaError_t cudaMemcpyAsync(void *d, const void *s, size_t n, cudaMemcpyKind k, cudaStream_t st);
cudaError_t cudaMemsetAsync(void *d, int v, size_t n, cudaStream_t st);
cudaError_t cudaMemset(void *d, int v, size_t n);
cudaError_t cudaStreamCreateWithFlags(cudaStream_t *s, unsigned f);
cudaError_t cudaStreamDestroy(cudaStream_t s);
cudaError_t cudaStreamSynchronize(cudaStream_t s);
cudaError_t cudaDeviceSynchronize(void);
cudaError_t cudaGetLastError(void);
cudaError_t cudaPeekAtLastError(void);
const char *cudaGetErrorString(cudaError_t e);
const char *cudaGetErrorName(cudaError_t e);
typedef struct emu_event *cudaEvent_t;
cudaError_t cudaEventCreate(cudaEvent_t *e);
cudaError_t cudaEventDestroy(cudaEvent_t e);
cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t s);
cudaError_t cudaEventSynchronize(cudaEvent_t e);
cudaError_t cudaEventElapsedTime(float *ms, cudaEvent_t a, cudaEvent_t b);
/* A kernel's static shared memory and its dynamic shared memory share the device's opt-in limit: a kernel may not
 * be given max(dynamic) = the whole limit when it has static shared memory too. The emulator cannot see a kernel's
 * statics, so it assumes EMU_STATIC_SMEM bytes of them in every kernel (a GPU answers cudaErrorInvalidValue). That
 * is stricter than a GPU for a kernel without statics given the whole limit (gate.cu could ask for that much):
 * none of prism's does today. */
#define EMU_STATIC_SMEM 16
struct cudaFuncAttributes {
    size_t sharedSizeBytes;
    int maxThreadsPerBlock, numRegs;
};
template <class F> cudaError_t cudaFuncGetAttributes(cudaFuncAttributes *a, F) {
    *a = cudaFuncAttributes{EMU_STATIC_SMEM, 1024, 32};
    return cudaSuccess;
}
namespace emu {
void set_smem_optin(const void *k, int bytes); /* what cudaFuncSetAttribute allowed the kernel */
}
template <class F> cudaError_t cudaFuncSetAttribute(F f, cudaFuncAttribute a, int v) {
    if (a != cudaFuncAttributeMaxDynamicSharedMemorySize) return cudaErrorInvalidValue;
    if (v < 0 || v > 227 * 1024 - EMU_STATIC_SMEM) return cudaErrorInvalidValue;
    emu::set_smem_optin((const void *)f, v);
    return cudaSuccess;
}

/* Graphs: a capture records every launch, copy and GEMM with its arguments
 * by value; a replay runs the records in order — so a graph reused for a
 * batch whose kernel arguments changed computes the wrong thing, as on a GPU. */
typedef struct emu_graph *cudaGraph_t;
typedef struct emu_graph *cudaGraphExec_t;
typedef enum { cudaStreamCaptureModeGlobal = 0, cudaStreamCaptureModeThreadLocal = 1 } cudaStreamCaptureMode;
cudaError_t cudaStreamBeginCapture(cudaStream_t s, cudaStreamCaptureMode mode);
cudaError_t cudaStreamEndCapture(cudaStream_t s, cudaGraph_t *g);
cudaError_t cudaGraphInstantiate(cudaGraphExec_t *e, cudaGraph_t g, unsigned long long flags);
cudaError_t cudaGraphLaunch(cudaGraphExec_t e, cudaStream_t s);
cudaError_t cudaGraphDestroy(cudaGraph_t g);
cudaError_t cudaGraphExecDestroy(cudaGraphExec_t e);

namespace emu {
/* while capturing: where launches are recorded */
extern std::function<void(std::function<void()>)> *capture;
struct cfg {
    dim3 grid, block;
    size_t smem;
    cfg(dim3 g, dim3 b, size_t s = 0, cudaStream_t = nullptr) : grid(g), block(b), smem(s) {}
};
void run(const cfg &c, const std::function<void()> &body);
/* more than 48 KiB of dynamic shared memory needs the kernel's opt-in (cudaFuncSetAttribute) of at least as
 * much: a GPU refuses the launch otherwise, so the emulator aborts */
void check_smem(const void *k, size_t smem);
template <class T> struct same { typedef T type; };
/* arguments convert to the kernel's parameter types at the call, as with <<<>>> */
extern const void *running_kernel; /* for CUDA_EMU_NAME: which kernel a launch number is */
template <class... P> void launch(const cfg &c, void (*k)(P...), typename same<P>::type... a) {
    check_smem((const void *)k, c.smem);
    std::function<void()> job = [c, k, a...]() {
        running_kernel = (const void *)k;
        run(c, [&]() { k(a...); });
    };
    if (capture) (*capture)(job);
    else job();
}
} // namespace emu

/* ------------------------------------------------------------ cuBLAS (the one call prism makes) */
typedef struct emu_blas *cublasHandle_t;
typedef enum {
    CUBLAS_STATUS_SUCCESS = 0,
    CUBLAS_STATUS_NOT_INITIALIZED = 1,
    CUBLAS_STATUS_ALLOC_FAILED = 3,
    CUBLAS_STATUS_INVALID_VALUE = 7,
    CUBLAS_STATUS_ARCH_MISMATCH = 8,
    CUBLAS_STATUS_EXECUTION_FAILED = 13,
    CUBLAS_STATUS_INTERNAL_ERROR = 14,
    CUBLAS_STATUS_NOT_SUPPORTED = 15,
} cublasStatus_t;
typedef enum { CUBLAS_OP_N = 0, CUBLAS_OP_T = 1 } cublasOperation_t;
typedef enum { CUDA_R_32F = 0, CUDA_R_16BF = 14 } cudaDataType;
typedef enum { CUBLAS_COMPUTE_32F = 68, CUBLAS_COMPUTE_32F_FAST_TF32 = 77 } cublasComputeType_t;
typedef enum { CUBLAS_GEMM_DEFAULT = -1 } cublasGemmAlgo_t;
cublasStatus_t cublasCreate(cublasHandle_t *h);
cublasStatus_t cublasDestroy(cublasHandle_t h);
cublasStatus_t cublasSetStream(cublasHandle_t h, cudaStream_t s);
cublasStatus_t cublasSetWorkspace(cublasHandle_t h, void *ws, size_t bytes);
cublasStatus_t cublasGemmEx(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                            const void *alpha, const void *A, cudaDataType at, int lda, const void *B, cudaDataType bt,
                            int ldb, const void *beta, void *C, cudaDataType ct, int ldc, cublasComputeType_t comp,
                            cublasGemmAlgo_t algo);
cublasStatus_t cublasGemmStridedBatchedEx(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n,
                                          int k, const void *alpha, const void *A, cudaDataType at, int lda,
                                          long long sa, const void *B, cudaDataType bt, int ldb, long long sb,
                                          const void *beta, void *C, cudaDataType ct, int ldc, long long sc, int batch,
                                          cublasComputeType_t comp, cublasGemmAlgo_t algo);

/* ------------------------------------------------------------ cuBLASLt (the matmul prism tunes) */
typedef struct emu_lt *cublasLtHandle_t;
typedef struct emu_lt_desc *cublasLtMatmulDesc_t;
typedef struct emu_lt_layout *cublasLtMatrixLayout_t;
typedef struct emu_lt_pref *cublasLtMatmulPreference_t;
typedef struct {
    uint64_t data[8];
} cublasLtMatmulAlgo_t;
typedef struct {
    cublasLtMatmulAlgo_t algo;
    size_t workspaceSize;
    cublasStatus_t state;
    float wavesCount;
    int reserved[4];
} cublasLtMatmulHeuristicResult_t;
typedef enum { CUBLASLT_MATMUL_DESC_TRANSA = 3, CUBLASLT_MATMUL_DESC_TRANSB = 4 } cublasLtMatmulDescAttributes_t;
typedef enum {
    CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK = 3,
    CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES = 1
} cublasLtMatmulPreferenceAttributes_t;
typedef enum {
    CUBLASLT_REDUCTION_SCHEME_NONE = 0,
    CUBLASLT_REDUCTION_SCHEME_INPLACE = 1,
    CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE = 2,
    CUBLASLT_REDUCTION_SCHEME_OUTPUT_TYPE = 4,
    CUBLASLT_REDUCTION_SCHEME_MASK = 0x7
} cublasLtReductionScheme_t;
cublasStatus_t cublasLtCreate(cublasLtHandle_t *h);
cublasStatus_t cublasLtDestroy(cublasLtHandle_t h);
cublasStatus_t cublasLtMatmulDescCreate(cublasLtMatmulDesc_t *d, cublasComputeType_t comp, cudaDataType scale);
cublasStatus_t cublasLtMatmulDescDestroy(cublasLtMatmulDesc_t d);
cublasStatus_t cublasLtMatmulDescSetAttribute(cublasLtMatmulDesc_t d, cublasLtMatmulDescAttributes_t a, const void *v,
                                              size_t n);
cublasStatus_t cublasLtMatrixLayoutCreate(cublasLtMatrixLayout_t *l, cudaDataType t, uint64_t rows, uint64_t cols,
                                          int64_t ld);
cublasStatus_t cublasLtMatrixLayoutDestroy(cublasLtMatrixLayout_t l);
cublasStatus_t cublasLtMatmulPreferenceCreate(cublasLtMatmulPreference_t *p);
cublasStatus_t cublasLtMatmulPreferenceDestroy(cublasLtMatmulPreference_t p);
cublasStatus_t cublasLtMatmulPreferenceSetAttribute(cublasLtMatmulPreference_t p, cublasLtMatmulPreferenceAttributes_t a,
                                                    const void *v, size_t n);
cublasStatus_t cublasLtMatmulAlgoGetHeuristic(cublasLtHandle_t h, cublasLtMatmulDesc_t d, cublasLtMatrixLayout_t a,
                                              cublasLtMatrixLayout_t b, cublasLtMatrixLayout_t c,
                                              cublasLtMatrixLayout_t dl, cublasLtMatmulPreference_t p, int requested,
                                              cublasLtMatmulHeuristicResult_t *res, int *returned);
cublasStatus_t cublasLtMatmulAlgoCheck(cublasLtHandle_t h, cublasLtMatmulDesc_t d, cublasLtMatrixLayout_t a,
                                       cublasLtMatrixLayout_t b, cublasLtMatrixLayout_t c, cublasLtMatrixLayout_t dl,
                                       const cublasLtMatmulAlgo_t *algo, cublasLtMatmulHeuristicResult_t *res);
cublasStatus_t cublasLtMatmul(cublasLtHandle_t h, cublasLtMatmulDesc_t d, const void *alpha, const void *A,
                              cublasLtMatrixLayout_t a, const void *B, cublasLtMatrixLayout_t b, const void *beta,
                              const void *C, cublasLtMatrixLayout_t c, void *D, cublasLtMatrixLayout_t dl,
                              const cublasLtMatmulAlgo_t *algo, void *ws, size_t ws_bytes, cudaStream_t s);

#endif
