/* test_delta.c — the gated DeltaNet operations (backend/cpu/delta.c) against
 * plain double-precision references written from their definitions: the
 * causal conv with its carried state, and the delta rule token by token and
 * in chunks (several chunk sizes, lengths around the chunk, a non-zero
 * incoming state, a sequence split over calls), on every ISA the CPU has. */
#include <math.h>
#include <stdlib.h>

#include "../src/backend/backend.h"
#include "test.h"

static uint64_t g_rng = 0x9e3779b97f4a7c15ull;
static float urand(void) { /* uniform in [-1, 1) */
    g_rng = g_rng * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((double)(g_rng >> 11) / (double)(1ull << 53) * 2 - 1);
}
static float *rnd(size_t n, float scale) {
    float *v = malloc((n ? n : 1) * sizeof *v);
    for (size_t i = 0; i < n; i++) v[i] = urand() * scale;
    return v;
}

static double rel_err(const float *got, const double *want, size_t n) {
    double e = 0, r = 0;
    for (size_t i = 0; i < n; i++) {
        e = fmax(e, fabs(got[i] - want[i]));
        r = fmax(r, fabs(want[i]));
    }
    return e / (r > 0 ? r : 1);
}

/* The delta rule from its definition, in double: state [nv x dk x dv] in/out. */
static void ref_delta(const float *q, const float *k, const float *v, int64_t ld, const float *g, const float *beta,
                      int64_t n, int nk, int nv, int dk, int dv, double *S, double *out) {
    double *u = malloc(sizeof *u * (size_t)dv);
    for (int64_t t = 0; t < n; t++)
        for (int h = 0; h < nv; h++) {
            int kh = h / (nv / nk);
            const float *qt = q + t * ld + kh * dk, *kt = k + t * ld + kh * dk, *vt = v + t * ld + h * dv;
            double *Sh = S + (size_t)h * dk * dv, d = exp(g[t * nv + h]);
            for (int c = 0; c < dv; c++) {
                double acc = 0;
                for (int r = 0; r < dk; r++) acc += (Sh[r * dv + c] *= d) * kt[r];
                u[c] = (vt[c] - acc) * beta[t * nv + h];
            }
            for (int c = 0; c < dv; c++) {
                double o = 0;
                for (int r = 0; r < dk; r++) o += (Sh[r * dv + c] += kt[r] * u[c]) * qt[r];
                out[(t * nv + h) * dv + c] = o;
            }
        }
    free(u);
}

static void test_delta(backend *be, const char *isa) {
    const int nk = 2, nv = 4, dk = 16, dv = 24;
    const int64_t ld = 2 * nk * dk + nv * dv + 5; /* q|k|v rows with a gap, as the model's conv output is not */
    const int64_t lens[] = {1, 2, 7, 16, 17, 63, 64, 65, 130};
    const int chunks[] = {0, 64, 16, 7};
    size_t st_n = (size_t)nv * dk * dv;
    for (size_t li = 0; li < sizeof lens / sizeof *lens; li++) {
        int64_t n = lens[li];
        float *qkv = rnd((size_t)(n * ld), 1), *g = rnd((size_t)(n * nv), 1), *beta = rnd((size_t)(n * nv), 1);
        for (int64_t t = 0; t < n; t++)
            for (int i = 0; i < nk; i++) { /* q, k unit rows as the model gives them, q scaled */
                float *qr = qkv + t * ld + i * dk, *kr = qkv + t * ld + nk * dk + i * dk;
                double sq = 0, sk = 0;
                for (int r = 0; r < dk; r++) sq += qr[r] * qr[r], sk += kr[r] * kr[r];
                for (int r = 0; r < dk; r++) qr[r] /= (float)(sqrt(sq) * sqrt(dk)), kr[r] /= (float)sqrt(sk);
            }
        for (int64_t i = 0; i < n * nv; i++) {
            g[i] = -fabsf(g[i]) * 3;  /* log decay <= 0, some strong */
            beta[i] = 0.5f + 0.5f * beta[i];
        }
        float *s0 = rnd(st_n, 0.5f);
        double *Sref = malloc(sizeof *Sref * st_n), *oref = malloc(sizeof *oref * (size_t)(n * nv * dv));
        for (size_t i = 0; i < st_n; i++) Sref[i] = s0[i];
        ref_delta(qkv, qkv + nk * dk, qkv + 2 * nk * dk, ld, g, beta, n, nk, nv, dk, dv, Sref, oref);
        for (size_t ci = 0; ci < sizeof chunks / sizeof *chunks; ci++) {
            int chunk = chunks[ci];
            float *S = malloc(sizeof *S * st_n), *out = malloc(sizeof *out * (size_t)(n * nv * dv));
            float *scratch = malloc(sizeof(float) * (size_t)backend_threads(be) * be_delta_scratch(chunk, dk, dv));
            memcpy(S, s0, sizeof *S * st_n);
            /* in two calls where the length allows: the state carries the first part over */
            int64_t n1 = n > 3 ? n / 3 : n;
            be_delta_rule(be, qkv, qkv + nk * dk, qkv + 2 * nk * dk, ld, g, beta, n1, nk, nv, dk, dv, chunk, S, out, scratch);
            if (n1 < n)
                be_delta_rule(be, qkv + n1 * ld, qkv + n1 * ld + nk * dk, qkv + n1 * ld + 2 * nk * dk, ld, g + n1 * nv,
                              beta + n1 * nv, n - n1, nk, nv, dk, dv, chunk, S, out + n1 * nv * dv, scratch);
            double eo = rel_err(out, oref, (size_t)(n * nv * dv)), es = rel_err(S, Sref, st_n);
            CHECK(eo < 2e-5 && es < 2e-5, "%s: delta rule n %lld chunk %d: output error %.3g, state error %.3g", isa,
                  (long long)n, chunk, eo, es);
            free(S);
            free(out);
            free(scratch);
        }
        free(qkv);
        free(g);
        free(beta);
        free(s0);
        free(Sref);
        free(oref);
    }
}

static void test_conv(backend *be, const char *isa) {
    const int64_t ch = 150; /* not a multiple of the work block */
    const int K = 4;
    const int64_t lens[] = {1, 2, 3, 9, 200};
    for (size_t li = 0; li < sizeof lens / sizeof *lens; li++) {
        int64_t n = lens[li];
        float *x = rnd((size_t)(n * ch), 2), *w = rnd((size_t)(ch * K), 1), *state = rnd((size_t)((K - 1) * ch), 2);
        float *out = malloc(sizeof *out * (size_t)(n * ch));
        double *want = malloc(sizeof *want * (size_t)(n * ch)), *wstate = malloc(sizeof *wstate * (size_t)((K - 1) * ch));
        for (int64_t c = 0; c < ch; c++) { /* the inputs as one line: state rows, then x */
            for (int64_t t = 0; t < n; t++) {
                double acc = 0;
                for (int r = 0; r < K; r++) {
                    int64_t p = t - (K - 1) + r; /* input index, < 0 in the state */
                    acc += w[c * K + r] * (p < 0 ? state[(K - 1 + p) * ch + c] : x[p * ch + c]);
                }
                want[t * ch + c] = acc / (1 + exp(-acc));
            }
            for (int r = 0; r < K - 1; r++) {
                int64_t p = n - (K - 1) + r;
                wstate[r * ch + c] = p < 0 ? state[(K - 1 + p) * ch + c] : x[p * ch + c];
            }
        }
        be_causal_conv(be, x, n, ch, K, w, state, out);
        double eo = rel_err(out, want, (size_t)(n * ch)), es = rel_err(state, wstate, (size_t)((K - 1) * ch));
        CHECK(eo < 1e-6 && es == 0, "%s: conv n %lld: output error %.3g, state error %.3g", isa, (long long)n, eo, es);
        free(x);
        free(w);
        free(state);
        free(out);
        free(want);
        free(wstate);
    }
}

int main(void) {
    const char *isas[] = {"scalar", "avx2", "avx512", "neon"};
    int ran = 0;
    for (size_t i = 0; i < sizeof isas / sizeof *isas; i++) {
        backend *be;
        if (backend_new(2, isas[i], &be) != MOE_OK) continue;
        test_conv(be, isas[i]);
        test_delta(be, isas[i]);
        backend_free(be);
        ran++;
    }
    CHECK(ran > 0, "no ISA could be started");
    TEST_DONE();
}
