/* cuda_membw.cu — the GPU's achievable memory-read bandwidth: the roofline
 * that `moe bench --device cuda` decode speed is compared against, measured
 * as bench/membw.c measures the CPU's. Every thread reads 16-byte vectors of
 * a buffer much larger than the L2 cache and sums them (so nothing is
 * optimised away); the best of R passes is reported.
 * usage: cuda_membw [MIB=4096] [REPS=20]   prints one JSON line */
#include <cuda_runtime.h>
#include <stdio.h>
#include <stdlib.h>

__global__ void read_sum(const uint4 *p, size_t n, unsigned *out) {
    unsigned acc = 0;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        uint4 v = p[i];
        acc ^= v.x ^ v.y ^ v.z ^ v.w;
    }
    if (acc == 0x9e3779b9u) atomicAdd(out, acc); /* practically never: keeps the loads */
}

int main(int argc, char **argv) {
    size_t mib = argc > 1 ? (size_t)atol(argv[1]) : 4096;
    int reps = argc > 2 ? atoi(argv[2]) : 20;
    size_t bytes = mib << 20, n = bytes / sizeof(uint4);
    uint4 *p;
    unsigned *out;
    cudaDeviceProp prop;
    if (cudaGetDeviceProperties(&prop, 0) != cudaSuccess || cudaMalloc(&p, bytes) != cudaSuccess ||
        cudaMalloc(&out, sizeof *out) != cudaSuccess) {
        fprintf(stderr, "cuda_membw: no device or out of memory\n");
        return 1;
    }
    cudaMemset(p, 1, bytes);
    cudaEvent_t a, b;
    cudaEventCreate(&a);
    cudaEventCreate(&b);
    int blocks = prop.multiProcessorCount * 8;
    float best = 1e30f;
    for (int r = 0; r < reps + 1; r++) {
        cudaEventRecord(a);
        read_sum<<<blocks, 512>>>(p, n, out);
        cudaEventRecord(b);
        cudaEventSynchronize(b);
        float ms;
        cudaEventElapsedTime(&ms, a, b);
        if (r > 0 && ms < best) best = ms; /* the first pass warms up */
    }
    if (cudaGetLastError() != cudaSuccess) {
        fprintf(stderr, "cuda_membw: kernel failed\n");
        return 1;
    }
    printf("{\"device\": \"%s\", \"mib\": %zu, \"read_gbps\": %.1f}\n", prop.name, mib, (double)bytes / (best * 1e-3) / 1e9);
    return 0;
}
