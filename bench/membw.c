/* bench/membw.c — the memory-read bandwidth probe: the roofline for decoding
 * is (bytes of weights read per token) / (this number). Each thread sums its
 * slice of a buffer much larger than the caches, repeatedly; the best pass is
 * reported in GB/s (1e9 bytes).   usage: membw [MiB=1024] [threads=all] [passes=5] */
#if defined(__x86_64__)
#include <immintrin.h>
#elif defined(__aarch64__)
#include <arm_neon.h>
#endif
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

typedef struct { const float *p; size_t n; double sum; pthread_barrier_t *bar; } job;

/* The sum of p[0..n), n a multiple of 32, in four independent vector sums. */
#if defined(__x86_64__)
__attribute__((target("avx2"))) static double sum_simd(const float *p, size_t n) {
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    for (size_t i = 0; i + 32 <= n; i += 32) {
        a0 = _mm256_add_ps(a0, _mm256_load_ps(p + i));
        a1 = _mm256_add_ps(a1, _mm256_load_ps(p + i + 8));
        a2 = _mm256_add_ps(a2, _mm256_load_ps(p + i + 16));
        a3 = _mm256_add_ps(a3, _mm256_load_ps(p + i + 24));
    }
    float t[8];
    _mm256_storeu_ps(t, _mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
    return t[0] + t[1] + t[2] + t[3] + t[4] + t[5] + t[6] + t[7];
}
#elif defined(__aarch64__)
static double sum_simd(const float *p, size_t n) {
    float32x4_t a0 = vdupq_n_f32(0.0f), a1 = a0, a2 = a0, a3 = a0;
    for (size_t i = 0; i + 16 <= n; i += 16) {
        a0 = vaddq_f32(a0, vld1q_f32(p + i));
        a1 = vaddq_f32(a1, vld1q_f32(p + i + 4));
        a2 = vaddq_f32(a2, vld1q_f32(p + i + 8));
        a3 = vaddq_f32(a3, vld1q_f32(p + i + 12));
    }
    return vaddvq_f32(vaddq_f32(vaddq_f32(a0, a1), vaddq_f32(a2, a3)));
}
#else
static double sum_simd(const float *p, size_t n) {
    float a[4] = {0, 0, 0, 0};
    for (size_t i = 0; i < n; i += 4)
        for (int l = 0; l < 4; l++) a[l] += p[i + l];
    return a[0] + a[1] + a[2] + a[3];
}
#endif

static void *run(void *arg) {
    job *j = arg;
    pthread_barrier_wait(j->bar);
    j->sum += sum_simd(j->p, j->n);
    pthread_barrier_wait(j->bar);
    return NULL;
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

int main(int argc, char **argv) {
    size_t mib = argc > 1 ? (size_t)atol(argv[1]) : 1024;
    int nth = argc > 2 ? atoi(argv[2]) : (int)sysconf(_SC_NPROCESSORS_ONLN);
    int passes = argc > 3 ? atoi(argv[3]) : 5;
    if (mib < 64 || nth < 1 || passes < 1) {
        fprintf(stderr, "usage: membw [MiB>=64] [threads>=1] [passes>=1]\n");
        return 1;
    }
    size_t n = mib << 18; /* floats */
    float *buf = aligned_alloc(64, n * sizeof(float));
    if (!buf) {
        fprintf(stderr, "membw: cannot allocate %zu MiB\n", mib);
        return 1;
    }
    for (size_t i = 0; i < n; i++) buf[i] = (float)(i & 7);
    double best = 0, sink = 0;
    for (int p = 0; p < passes; p++) {
        pthread_barrier_t bar;
        pthread_barrier_init(&bar, NULL, (unsigned)nth + 1);
        job *jobs = calloc((size_t)nth, sizeof *jobs);
        pthread_t *th = calloc((size_t)nth, sizeof *th);
        size_t per = n / (size_t)nth / 32 * 32;
        for (int t = 0; t < nth; t++) {
            jobs[t] = (job){buf + per * (size_t)t, per, 0, &bar};
            pthread_create(&th[t], NULL, run, &jobs[t]);
        }
        pthread_barrier_wait(&bar);
        double t0 = now_s();
        pthread_barrier_wait(&bar);
        double dt = now_s() - t0;
        for (int t = 0; t < nth; t++) {
            pthread_join(th[t], NULL);
            sink += jobs[t].sum;
        }
        double gbs = (double)(per * (size_t)nth * sizeof(float)) / dt / 1e9;
        if (gbs > best) best = gbs;
        free(jobs);
        free(th);
        pthread_barrier_destroy(&bar);
    }
    printf("{\"read_gbps\": %.2f, \"threads\": %d, \"mib\": %zu, \"checksum\": %.0f}\n", best, nth, mib, sink);
    free(buf);
    return 0;
}
