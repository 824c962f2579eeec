/* cuda_internal.h — what the .cu files share: the context's fields, its error
 * and staging helpers, launch conventions. Included by CUDA sources only. */
#ifndef MOE_CUDA_INTERNAL_H
#define MOE_CUDA_INTERNAL_H

#include <cuda_runtime.h>

#include "cuda_ops.h"

#define CUDA_STAGE_BYTES ((size_t)4 << 20)

struct cuda_ctx {
    int device, n_sm, cc;         /* device index, multiprocessors, compute capability (90 = sm_90) */
    char name[320];
    cudaStream_t stream;
    moe_status err;               /* the first error, MOE_OK while none */
    char msg[256];                /* its message */
    void **allocs;                /* every cuda_alloc'd pointer still held [n_allocs] */
    size_t n_allocs, cap_allocs;
    void *scratch;                /* cuda_scratch's area [scratch_bytes] */
    size_t scratch_bytes;
    void *stage, *stage_dev;      /* pinned host / device staging [CUDA_STAGE_BYTES] */
    size_t stage_used;
    cudaEvent_t stage_done;
    int float_decode;             /* Q4/Q8 decode on float32 inputs, not int8-rounded ones (cuda_set_float_decode) */
    /* graphs (cuda_graph_begin) */
    int no_graphs;                /* MOE_CUDA_GRAPHS=0 when the context opened: every step issued plainly */
    int no_grouped;               /* MOE_CUDA_GROUPED=0: cuda_moe_grouped runs the experts one by one */
    struct cuda_graph *capturing; /* the graph the stream is being captured into, NULL */
    int capture_failed;           /* something issued during the capture cannot be recorded */
    uint64_t scratch_gen;         /* bumped whenever the scratch area moves */
    uint64_t replays, captures;
    /* MoE decode with the experts chosen on the device (cuda_moe_decode_sel) */
    void *xtabs;                  /* xtable [n_xtabs]: per layer, each expert's weights as the device reads them */
    int n_xtabs, cap_xtabs;
    void *seg_dev;                /* (dev) the launch tables the device fills from its choice */
};

/* A recorded step (cuda_ops.h). stage_*: the host arguments staged while
 * capturing, which every replay copies again from the same place. */
#define CUDA_GRAPH_STAGE_BYTES ((size_t)64 << 10)
struct cuda_graph {
    uint64_t key;
    int calls;              /* begins under this key; the first runs plainly */
    int broken;             /* capture failed under this key: never again */
    cudaGraphExec_t exec;   /* NULL until captured */
    uint64_t scratch_gen;   /* the context's when captured */
    void *stage_h, *stage_d; /* pinned host / device [CUDA_GRAPH_STAGE_BYTES] */
    size_t stage_used;
};

/* Q4/Q8 decode on float32 inputs for this call (the context's setting or MOE_CUDA_FLOAT_DECODE). */
bool cuda_decode_float(const cuda_ctx *c);

/* Records e (when it is an error and none is kept yet) with "CUDA: what: ..."; true on success. */
bool cuda_check(cuda_ctx *c, cudaError_t e, const char *what);
/* cuda_check of cudaGetLastError() after a launch. */
bool cuda_launched(cuda_ctx *c, const char *what);
/* A device copy of bytes of host memory src, enqueued on the stream, valid for
 * the work enqueued after it (until 4 MiB of later staging); NULL after an error. */
const void *cuda_stage(cuda_ctx *c, const void *src, size_t bytes);
/* Device scratch of at least bytes (one area per context, reused by every call). */
void *cuda_scratch(cuda_ctx *c, size_t bytes);

/* Skip an operation once the context has failed. */
#define CUDA_LIVE(c) \
    do {             \
        if ((c)->err) return; \
    } while (0)

static inline unsigned cuda_blocks(int64_t n, int per) { return (unsigned)((n + per - 1) / per); }

#ifdef __CUDACC__
#include <cuda_fp16.h>
/* ---- tensor cores (mma.sync m16n8k16, float16 operands, float32 sums): the
 * prompt matmuls (cuda_matmul.cu) and prompt attention (cuda_attn.cu) */

/* Two floats as a pair of float16, saturated at +-65504 (float16's largest):
 * a value beyond it keeps its sign and a large value instead of becoming
 * infinite. */
__device__ __forceinline__ uint32_t pack_h(float lo, float hi) {
    __half2 h = __floats2half2_rn(fminf(fmaxf(lo, -65504.0f), 65504.0f), fminf(fmaxf(hi, -65504.0f), 65504.0f));
    return *(uint32_t *)&h;
}

/* Four 8x8 float16 matrices from shared memory (trans: each transposed). */
__device__ __forceinline__ void ldmatrix_x4(uint32_t *r, const uint16_t *p, bool trans = false) {
    unsigned a = (unsigned)__cvta_generic_to_shared(p);
    if (trans)
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                     : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                     : "r"(a));
    else
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                     : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                     : "r"(a));
}

/* d += a (16x16, row) x b (16x8, col) */
__device__ __forceinline__ void mma_h(float *d, const uint32_t *a, const uint32_t *b) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
#endif

#endif
