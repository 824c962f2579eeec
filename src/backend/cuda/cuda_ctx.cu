/* cuda_ctx.cu — the CUDA context: one device, one stream, the first error,
 * device memory, and a staging area for the small host arrays (token ids,
 * positions, routing weights) that operations read.
 *
 * Errors are sticky: the first failed CUDA call is kept with its message and
 * every later operation is skipped, so the forward pass needs no checks
 * between operations; cuda_sync and cuda_download report it. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_internal.h"

extern "C" moe_status moe_err(moe_status st, const char *fmt, ...);

int cuda_device_count(void) {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        cudaGetLastError(); /* clear: no driver is not an error to keep */
        return 0;
    }
    return n;
}

bool cuda_check(cuda_ctx *c, cudaError_t e, const char *what) {
    if (e == cudaSuccess) return true;
    if (c && c->capturing) { /* the capture fails, not the context: the work is issued again plainly */
        c->capture_failed = 1;
        cudaGetLastError();
        return false;
    }
    if (c && c->err == MOE_OK) {
        c->err = e == cudaErrorMemoryAllocation ? MOE_ENOMEM : MOE_EIO;
        snprintf(c->msg, sizeof c->msg, "CUDA: %s: %s", what, cudaGetErrorString(e));
    }
    return false;
}

bool cuda_launched(cuda_ctx *c, const char *what) { return cuda_check(c, cudaGetLastError(), what); }

moe_status cuda_ctx_new(int device, cuda_ctx **out) {
    *out = NULL;
    int n = cuda_device_count();
    if (n == 0) return moe_err(MOE_EUNSUPPORTED, "CUDA: no device (no GPU, or no driver)");
    if (device < 0 || device >= n)
        return moe_err(MOE_EINVAL, "CUDA: device %d does not exist (%d device%s present)", device, n, n == 1 ? "" : "s");
    cuda_ctx *c = (cuda_ctx *)calloc(1, sizeof *c);
    if (!c) return moe_err(MOE_ENOMEM, "out of memory");
    c->device = device;
    cudaError_t e = cudaSetDevice(device);
    cudaDeviceProp p;
    if (e == cudaSuccess) e = cudaGetDeviceProperties(&p, device);
    if (e == cudaSuccess) e = cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking);
    if (e == cudaSuccess) e = cudaMallocHost(&c->stage, CUDA_STAGE_BYTES);
    if (e == cudaSuccess) e = cudaMalloc(&c->stage_dev, CUDA_STAGE_BYTES);
    if (e == cudaSuccess) e = cudaEventCreateWithFlags(&c->stage_done, cudaEventDisableTiming);
    if (e != cudaSuccess) {
        moe_status st = moe_err(e == cudaErrorMemoryAllocation ? MOE_ENOMEM : MOE_EUNSUPPORTED, "CUDA: device %d: %s",
                                device, cudaGetErrorString(e));
        cuda_ctx_free(c);
        return st;
    }
    const char *gr = getenv("MOE_CUDA_GRAPHS");
    c->no_graphs = gr && !strcmp(gr, "0");
    const char *gp = getenv("MOE_CUDA_GROUPED");
    c->no_grouped = gp && !strcmp(gp, "0");
    c->n_sm = p.multiProcessorCount;
    c->cc = p.major * 10 + p.minor;
    snprintf(c->name, sizeof c->name, "%s, sm_%d, %.1f GiB", p.name, c->cc, (double)p.totalGlobalMem / (1 << 30));
    *out = c;
    return MOE_OK;
}

void cuda_ctx_free(cuda_ctx *c) {
    if (!c) return;
    cudaSetDevice(c->device);
    if (c->stream) cudaStreamSynchronize(c->stream);
    for (size_t i = 0; i < c->n_allocs; i++) cudaFree(c->allocs[i]);
    free(c->allocs);
    free(c->xtabs);
    cudaFree(c->scratch);
    cudaFree(c->stage_dev);
    if (c->stage) cudaFreeHost(c->stage);
    if (c->stage_done) cudaEventDestroy(c->stage_done);
    if (c->stream) cudaStreamDestroy(c->stream);
    free(c);
}

const char *cuda_ctx_name(const cuda_ctx *c) { return c->name; }

void cuda_mem_info(cuda_ctx *c, size_t *free_b, size_t *total_b) {
    *free_b = *total_b = 0;
    cuda_check(c, cudaMemGetInfo(free_b, total_b), "cudaMemGetInfo");
}

/* Every allocation is kept in c->allocs so that cuda_ctx_free releases what a
 * caller did not: a failed model load leaves nothing behind. */
void *cuda_alloc(cuda_ctx *c, size_t bytes) {
    if (c->err) return NULL;
    if (c->n_allocs == c->cap_allocs) {
        size_t cap = c->cap_allocs ? 2 * c->cap_allocs : 64;
        void **a = (void **)realloc(c->allocs, cap * sizeof *a);
        if (!a) {
            c->err = MOE_ENOMEM;
            snprintf(c->msg, sizeof c->msg, "out of memory");
            return NULL;
        }
        c->allocs = a, c->cap_allocs = cap;
    }
    void *p = NULL;
    /* out of memory is the caller's to report: the context stays usable */
    if (cudaMalloc(&p, bytes ? bytes : 1) != cudaSuccess) {
        cudaGetLastError();
        return NULL;
    }
    if (!cuda_check(c, cudaMemsetAsync(p, 0, bytes, c->stream), "cudaMemset")) {
        cudaFree(p);
        return NULL;
    }
    c->allocs[c->n_allocs++] = p;
    return p;
}

void cuda_free(cuda_ctx *c, void *p) {
    if (!p) return;
    for (size_t i = 0; i < c->n_allocs; i++)
        if (c->allocs[i] == p) {
            cudaStreamSynchronize(c->stream); /* work may still read it */
            cudaFree(p);
            c->allocs[i] = c->allocs[--c->n_allocs];
            return;
        }
}

/* ----------------------------------------------- copies beside the stream -- */

struct cuda_mover { cudaStream_t stream; };
struct cuda_fence { cudaEvent_t ev; };

/* A moe_err for a failed call of another thread's copy (the context keeps none). */
static moe_status mover_err(cudaError_t e, const char *what) {
    cudaGetLastError();
    return moe_err(e == cudaErrorMemoryAllocation ? MOE_ENOMEM : MOE_EIO, "CUDA: %s: %s", what, cudaGetErrorString(e));
}

/* Pinned through registration of an aligned allocation (cudaMallocHost only
 * promises 256 bytes; the expert store reads with O_DIRECT into it). */
void *cuda_host_alloc(cuda_ctx *c, size_t bytes) {
    cudaSetDevice(c->device);
    size_t n = (bytes + 4095) & ~(size_t)4095;
    void *p = NULL;
    if (posix_memalign(&p, 4096, n ? n : 4096)) {
        moe_err(MOE_ENOMEM, "out of memory (%.1f MB of pinned host memory)", (double)bytes / 1e6);
        return NULL;
    }
    cudaError_t e = cudaHostRegister(p, n ? n : 4096, cudaHostRegisterPortable);
    if (e != cudaSuccess) {
        free(p);
        mover_err(e, "cudaHostRegister");
        return NULL;
    }
    return p;
}

void cuda_host_free(cuda_ctx *c, void *p) {
    if (!p) return;
    cudaSetDevice(c->device);
    cudaHostUnregister(p);
    free(p);
}

cuda_mover *cuda_mover_new(cuda_ctx *c) {
    cudaSetDevice(c->device);
    cuda_mover *mv = (cuda_mover *)calloc(1, sizeof *mv);
    if (!mv) {
        moe_err(MOE_ENOMEM, "out of memory");
        return NULL;
    }
    cudaError_t e = cudaStreamCreateWithFlags(&mv->stream, cudaStreamNonBlocking);
    if (e != cudaSuccess) {
        free(mv);
        mover_err(e, "cudaStreamCreate");
        return NULL;
    }
    return mv;
}

void cuda_mover_free(cuda_ctx *c, cuda_mover *mv) {
    if (!mv) return;
    cudaSetDevice(c->device);
    cudaStreamSynchronize(mv->stream);
    cudaStreamDestroy(mv->stream);
    free(mv);
}

moe_status cuda_mover_upload(cuda_ctx *c, cuda_mover *mv, void *dst, const void *src, size_t bytes, cuda_fence *f) {
    cudaError_t e = cudaSetDevice(c->device);
    if (e == cudaSuccess && f) e = cudaStreamWaitEvent(mv->stream, f->ev, 0);
    if (e == cudaSuccess) e = cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, mv->stream);
    if (e == cudaSuccess) e = cudaStreamSynchronize(mv->stream);
    return e == cudaSuccess ? MOE_OK : mover_err(e, "upload beside the stream");
}

cuda_fence *cuda_fence_new(cuda_ctx *c) {
    cudaSetDevice(c->device);
    cuda_fence *f = (cuda_fence *)calloc(1, sizeof *f);
    if (!f) {
        moe_err(MOE_ENOMEM, "out of memory");
        return NULL;
    }
    cudaError_t e = cudaEventCreateWithFlags(&f->ev, cudaEventDisableTiming);
    if (e != cudaSuccess) {
        free(f);
        mover_err(e, "cudaEventCreate");
        return NULL;
    }
    return f;
}

void cuda_fence_free(cuda_ctx *c, cuda_fence *f) {
    if (!f) return;
    cudaSetDevice(c->device);
    cudaEventDestroy(f->ev);
    free(f);
}

void cuda_fence_record(cuda_ctx *c, cuda_fence *f) {
    CUDA_LIVE(c);
    cuda_check(c, cudaEventRecord(f->ev, c->stream), "cudaEventRecord");
}

/* A slot of `bytes` (rounded up to 256) in the staging ring: its host and
 * device addresses. The copy of one call may still be in flight when the next
 * stages, so each call takes the next part of the buffer, and wraps to the
 * start only after the stream has passed the previous wrap. While capturing,
 * the slot comes from the graph's own buffer instead, never reused. */
static bool stage_slot(cuda_ctx *c, size_t bytes, char **h, char **d) {
    bytes = (bytes + 255) & ~(size_t)255;
    if (c->capturing) {
        cuda_graph *g = c->capturing;
        if (g->stage_used + bytes > CUDA_GRAPH_STAGE_BYTES) {
            c->capture_failed = 1;
            return false;
        }
        *h = (char *)g->stage_h + g->stage_used, *d = (char *)g->stage_d + g->stage_used;
        g->stage_used += bytes;
        return true;
    }
    if (bytes > CUDA_STAGE_BYTES) {
        c->err = MOE_EINVAL;
        snprintf(c->msg, sizeof c->msg, "CUDA: %zu bytes of host arguments exceed the staging buffer", bytes);
        return false;
    }
    if (c->stage_used + bytes > CUDA_STAGE_BYTES) {
        if (!cuda_check(c, cudaStreamSynchronize(c->stream), "staging")) return false;
        c->stage_used = 0;
    }
    *h = (char *)c->stage + c->stage_used, *d = (char *)c->stage_dev + c->stage_used;
    c->stage_used += bytes;
    return true;
}

void cuda_upload(cuda_ctx *c, void *dst, const void *src, size_t bytes) {
    if (c->err || !bytes) return;
    if (c->capturing) { /* an upload reads the host now: not something a replay can repeat */
        c->capture_failed = 1;
        return;
    }
    char *h, *d;
    if (bytes <= CUDA_STAGE_BYTES / 16) { /* small (a step's token ids, positions): through the ring, no wait */
        if (!stage_slot(c, bytes, &h, &d)) return;
        memcpy(h, src, bytes);
        cuda_check(c, cudaMemcpyAsync(dst, h, bytes, cudaMemcpyHostToDevice, c->stream), "upload");
        return;
    }
    /* pageable source: the copy has read src when it returns */
    cuda_check(c, cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, c->stream), "upload");
    cuda_check(c, cudaStreamSynchronize(c->stream), "upload");
}

void cuda_copy(cuda_ctx *c, void *dst, const void *src, size_t bytes) {
    if (c->err || !bytes) return;
    cuda_check(c, cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, c->stream), "device copy");
}

void cuda_zero(cuda_ctx *c, void *p, size_t bytes) {
    if (c->err || !bytes) return;
    cuda_check(c, cudaMemsetAsync(p, 0, bytes, c->stream), "cudaMemset");
}

moe_status cuda_sync(cuda_ctx *c) {
    if (!c->err) cuda_check(c, cudaStreamSynchronize(c->stream), "kernel");
    return c->err ? moe_err(c->err, "%s", c->msg) : MOE_OK;
}

moe_status cuda_download(cuda_ctx *c, void *dst, const void *src, size_t bytes) {
    if (!c->err && bytes) cuda_check(c, cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, c->stream), "download");
    return cuda_sync(c);
}

/* Host arrays an operation reads go through a pinned staging slot (stage_slot), copied on the stream. */
const void *cuda_stage(cuda_ctx *c, const void *src, size_t bytes) {
    if (c->err) return NULL;
    char *h, *d;
    if (!stage_slot(c, bytes, &h, &d)) return NULL;
    memcpy(h, src, bytes);
    if (!cuda_check(c, cudaMemcpyAsync(d, h, bytes, cudaMemcpyHostToDevice, c->stream), "staging")) return NULL;
    return d;
}

/* A device scratch area of at least `bytes`, valid until the next call (the
 * stream orders its users); grown by freeing and reallocating. */
void *cuda_scratch(cuda_ctx *c, size_t bytes) {
    if (c->err) return NULL;
    if (bytes > c->scratch_bytes && c->capturing) { /* moving it cannot be recorded */
        c->capture_failed = 1;
        return NULL;
    }
    if (bytes > c->scratch_bytes) {
        c->scratch_gen++; /* recorded graphs point at the old area */
        cudaStreamSynchronize(c->stream);
        cudaFree(c->scratch);
        c->scratch = NULL;
        c->scratch_bytes = 0;
        size_t want = bytes + bytes / 2;
        if (!cuda_check(c, cudaMalloc(&c->scratch, want), "scratch")) return NULL;
        c->scratch_bytes = want;
    }
    return c->scratch;
}

/* ------------------------------------------------------------- graphs -- */

static void graph_drop(cuda_graph *g) {
    if (g->exec) cudaGraphExecDestroy(g->exec);
    g->exec = NULL;
}

int cuda_graph_begin(cuda_ctx *c, cuda_graph **gp, uint64_t key) {
    if (c->err || c->capturing || c->no_graphs) return 1; /* the plain path reports the error; no nesting */
    if (!*gp && !(*gp = (cuda_graph *)calloc(1, sizeof **gp))) return 1;
    cuda_graph *g = *gp;
    key = key << 1 | (cuda_decode_float(c) ? 1u : 0u);
    if (g->key != key || !g->calls) {
        graph_drop(g);
        g->key = key, g->calls = 0, g->broken = 0;
    }
    if (g->broken) return 1;
    if (g->exec && g->scratch_gen == c->scratch_gen) {
        if (cuda_check(c, cudaGraphLaunch(g->exec, c->stream), "graph launch")) c->replays++;
        return 0;
    }
    graph_drop(g);                /* stale: the scratch area moved */
    if (g->calls++ == 0) return 1; /* the first call runs plainly: it sizes the scratch area */
    if (!g->stage_h) {
        if (cudaMallocHost(&g->stage_h, CUDA_GRAPH_STAGE_BYTES) != cudaSuccess ||
            cudaMalloc(&g->stage_d, CUDA_GRAPH_STAGE_BYTES) != cudaSuccess) {
            cudaGetLastError();
            g->broken = 1;
            return 1;
        }
    }
    g->stage_used = 0;
    if (cudaStreamBeginCapture(c->stream, cudaStreamCaptureModeThreadLocal) != cudaSuccess) {
        cudaGetLastError();
        g->broken = 1;
        return 1;
    }
    c->capturing = g, c->capture_failed = 0;
    g->scratch_gen = c->scratch_gen;
    return 1;
}

int cuda_graph_end(cuda_ctx *c, cuda_graph *g) {
    if (!g || c->capturing != g) return 0; /* a plain run or a replay: done */
    c->capturing = NULL;
    cudaGraph_t graph = NULL;
    bool ok = cudaStreamEndCapture(c->stream, &graph) == cudaSuccess && graph && !c->capture_failed &&
              g->scratch_gen == c->scratch_gen;
    if (ok) ok = cudaGraphInstantiateWithFlags(&g->exec, graph, 0) == cudaSuccess;
    if (graph) cudaGraphDestroy(graph);
    if (!ok) { /* nothing ran: have the caller issue the work plainly, and never capture this key again */
        cudaGetLastError();
        graph_drop(g);
        g->broken = 1;
        return 1;
    }
    c->captures++;
    if (cuda_check(c, cudaGraphLaunch(g->exec, c->stream), "graph launch")) c->replays++;
    return 0;
}

void cuda_graph_free(cuda_ctx *c, cuda_graph *g) {
    if (!g) return;
    cudaStreamSynchronize(c->stream); /* a replay may still run */
    graph_drop(g);
    if (g->stage_h) cudaFreeHost(g->stage_h);
    cudaFree(g->stage_d);
    free(g);
}

void cuda_scratch_reserve(cuda_ctx *c, size_t bytes) { cuda_scratch(c, bytes); }

void cuda_graph_counts(const cuda_ctx *c, uint64_t *replays, uint64_t *captures) {
    *replays = c->replays, *captures = c->captures;
}
