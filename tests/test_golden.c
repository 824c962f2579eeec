/* test_golden.c — moe against transformers: for a fixture directory written by
 * tools/gen_fixtures.py (golden.json, logits_*.f32, model/), every position's
 * logits within the tolerance and the greedy continuation token for token.
 * Each check runs several ways that must agree with the reference: the whole
 * sequence in one batch, in small batches (sliding-window ring buffer
 * crossing batch boundaries), one token at a time (decode path), and on every
 * instruction set the CPU has. With KV_BITS (8 or 4) the KV cache is
 * quantized and ATOL is relative (see tol(); tests/CMakeLists.txt derives
 * it). With AMX_RTOL the "amx" ISA runs too, against that relative
 * tolerance. usage: test_golden FIXTURE_DIR [ATOL [KV_BITS [AMX_RTOL]]]  */
#include <jansson.h>
#include <math.h>
#include <stdlib.h>

#include "f32file.h"
#include "moe.h"
#include "test.h"

static int g_kv_bits;   /* moe_seq_params.kv_bits of every sequence */
static int g_rel;       /* the amx runs: a relative tolerance, as for a quantized KV cache */
static double g_ref_rms; /* quantized KV: the largest RMS of a reference's compared logits */

/* The bound on max |got - ref| over `count` logits: atol; with a quantized KV
 * cache, 4 x atol x max |ref|, after checking that the RMS of got - ref is
 * within atol x the RMS of ref (the error is spread over every logit; where a
 * MoE router's choice flips, one position moves much more than the rest). */
static double tol(const float *got, const float *ref, size_t count, double atol, const char *what) {
    if (!g_kv_bits && !g_rel) return atol;
    double se = 0, sr = 0, mr = 0;
    for (size_t i = 0; i < count; i++) {
        se += ((double)got[i] - ref[i]) * ((double)got[i] - ref[i]);
        sr += (double)ref[i] * ref[i];
        mr = fabs(ref[i]) > mr ? fabs(ref[i]) : mr;
    }
    double rms_e = sqrt(se / (double)count), rms_r = sqrt(sr / (double)count);
    g_ref_rms = rms_r > g_ref_rms ? rms_r : g_ref_rms;
    CHECK(rms_e <= atol * rms_r, "%s: kv_bits %d: RMS error %.3g > %.3g x RMS %.3g", what, g_kv_bits, rms_e, atol, rms_r);
    return 4 * atol * mr;
}

static int32_t *ints(json_t *a, size_t *n) {
    *n = json_array_size(a);
    int32_t *v = malloc((*n ? *n : 1) * sizeof *v);
    for (size_t i = 0; i < *n; i++) v[i] = (int32_t)json_integer_value(json_array_get(a, i));
    return v;
}

/* logits of tokens[n] fed in batches of `batch` tokens per eval call (0: one call) */
static float *run(moe_model *m, const int32_t *tok, size_t n, int batch, int n_batch, int V) {
    moe_seq_params sp;
    moe_seq_params_defaults(&sp);
    sp.kv_bits = g_kv_bits;
    sp.n_ctx = (int)n + 32;
    sp.n_batch = n_batch;
    moe_seq *s;
    if (moe_seq_new(m, &sp, &s) != MOE_OK) return NULL;
    float *out = malloc(n * (size_t)V * sizeof *out);
    size_t step = batch ? (size_t)batch : n;
    for (size_t off = 0; off < n; off += step) {
        size_t k = n - off < step ? n - off : step;
        if (moe_seq_eval(s, tok + off, k, out + off * (size_t)V, 1) != MOE_OK) {
            free(out);
            out = NULL;
            break;
        }
    }
    moe_seq_free(s);
    return out;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: test_golden FIXTURE_DIR [ATOL [KV_BITS [AMX_RTOL]]]\n");
        return 2;
    }
    const char *dir = argv[1];
    double atol = argc > 2 ? atof(argv[2]) : 1e-4;
    g_kv_bits = argc > 3 ? atoi(argv[3]) : 0;
    char path[1024];
    snprintf(path, sizeof path, "%s/golden.json", dir);
    json_error_t je;
    json_t *g = json_load_file(path, 0, &je);
    if (!g) {
        fprintf(stderr, "%s: %s\n", path, je.text);
        return 2;
    }
    snprintf(path, sizeof path, "%s/model", dir);
    /* "amx" (bf16 products on AMX tiles, from 4 tokens a call) runs when AMX_RTOL
     * (argv[4]) is given, against it as a relative tolerance (tol()); its
     * whole-batch logits must differ from avx512's (f32_logits), or the tiles
     * did not run */
    const char *isas[] = {"scalar", "avx2", "avx512", "amx"};
    double float_atol = atol, amx_atol = argc > 4 ? atof(argv[4]) : 0;
    float *f32_logits[8] = {NULL};
    for (int ii = 0; ii < 3 + (amx_atol > 0); ii++) {
        setenv("MOE_ISA", isas[ii], 1);
        setenv("MOE_AMX_MIN_TOKENS", "4", 1);
        atol = ii == 3 ? amx_atol : float_atol;
        g_rel = ii == 3;
        moe_model *m;
        moe_status st = moe_model_load(path, NULL, &m);
        if (st == MOE_EUNSUPPORTED && ii > 0) { printf("%s: not on this CPU, skipped\n", isas[ii]); continue; }
        CHECK(st == MOE_OK, "load %s: %s", path, moe_errmsg());
        if (st) break;
        int V = moe_model_config(m)->vocab_size;
        if (moe_model_config(m)->sliding_window > 0) /* the ring buffer bounds memory whatever the context */
            CHECK(moe_model_kv_bytes(m, 1 << 20) == moe_model_kv_bytes(m, 4096), "KV cache grows with n_ctx under a window");
        CHECK(V == json_integer_value(json_object_get(g, "vocab_size")), "vocab size");
        size_t si;
        json_t *seq;
        json_array_foreach(json_object_get(g, "sequences"), si, seq) {
            size_t n, nref = 0;
            int32_t *tok = ints(json_object_get(seq, "tokens"), &n);
            char lp[1024];
            snprintf(lp, sizeof lp, "%s/%s", dir, json_string_value(json_object_get(seq, "logits")));
            float *ref = read_f32(lp, &nref);
            CHECK(ref && nref == n * (size_t)V, "%s: %zu floats for %zu x %d", lp, nref, n, V);
            /* whole batch; batches of 4 with n_batch 4; token by token */
            int modes[3][2] = {{0, 0}, {4, 4}, {1, 1}};
            for (int md = 0; md < 3 && ref && nref == n * (size_t)V; md++) {
                if (ii == 0 && md > 0 && n > 16) continue; /* scalar: one pass on long sequences is enough */
                float *got = run(m, tok, n, modes[md][0], modes[md][1], V);
                CHECK(got != NULL, "eval: %s", moe_errmsg());
                if (!got) continue;
                double worst = 0;
                size_t at = 0;
                for (size_t i = 0; i < n * (size_t)V; i++) {
                    double e = fabs((double)got[i] - ref[i]);
                    if (!(e <= worst)) { worst = e; at = i; }
                }
                CHECK(worst <= tol(got, ref, n * (size_t)V, atol, lp), "%s seq %zu (len %zu) %s, batch %d: max |diff| %.3g at position %zu token %zu", isas[ii],
                      si, n, lp, modes[md][0], worst, at / (size_t)V, at % (size_t)V);
                if (md == 0 && si == 1) printf("%s: seq %zu max |diff| %.3g\n", isas[ii], si, worst);
                if (md == 0 && ii == 3 && n >= 4)
                    CHECK(si < 8 && f32_logits[si] && memcmp(got, f32_logits[si], n * (size_t)V * sizeof *got),
                          "amx seq %zu: the same logits as avx512, so AMX did not run", si);
                if (md == 0 && ii == 2 && si < 8) f32_logits[si] = got;
                else free(got);
            }
            /* truncate back and evaluate the tail again: same logits as the reference */
            if (ref && nref == n * (size_t)V && n > 8) {
                moe_seq_params sp;
                moe_seq_params_defaults(&sp);
                sp.kv_bits = g_kv_bits;
                sp.n_ctx = (int)n + 32;
                sp.n_batch = 4;
                moe_seq *s;
                CHECK(moe_seq_new(m, &sp, &s) == MOE_OK, "seq");
                int window = moe_model_config(m)->sliding_window, hybrid = moe_model_config(m)->n_linear_layers > 0;
                size_t back = window ? 3 : n / 2; /* cap = window + 3 with n_batch 4 */
                if (hybrid) { /* a recurrent state goes back only to a saved one */
                    CHECK(moe_seq_eval(s, tok, n - back, NULL, 0) == MOE_OK && moe_seq_snapshot(s) == MOE_OK, "eval, snapshot");
                    CHECK(moe_seq_eval(s, tok + n - back, back, NULL, 0) == MOE_OK, "eval");
                    CHECK(moe_seq_truncate(s, (int64_t)(n - back - 1)) == MOE_ERANGE, "no state saved at %zu", n - back - 1);
                    CHECK(moe_seq_restore_point(s, (int64_t)(n - back - 1)) == 0 &&
                              moe_seq_restore_point(s, (int64_t)(n - 1)) == (int64_t)(n - back) &&
                              moe_seq_restore_point(s, (int64_t)n) == (int64_t)n,
                          "restore points");
                } else {
                    CHECK(moe_seq_eval(s, tok, n, NULL, 0) == MOE_OK, "eval");
                }
                if (window) CHECK(moe_seq_truncate(s, (int64_t)(n - back - 2)) == MOE_ERANGE, "too far back under a window");
                CHECK(moe_seq_truncate(s, (int64_t)(n - back)) == MOE_OK, "truncate %zu back: %s", back, moe_errmsg());
                size_t nt;
                const int32_t *kept = moe_seq_tokens(s, &nt);
                CHECK(nt == n - back && !memcmp(kept, tok, nt * sizeof *kept), "moe_seq_tokens after truncate");
                float *got = malloc(back * (size_t)V * sizeof *got);
                CHECK(moe_seq_eval(s, tok + n - back, back, got, 1) == MOE_OK, "re-eval: %s", moe_errmsg());
                double worst = 0;
                for (size_t i = 0; i < back * (size_t)V; i++) {
                    double e = fabs((double)got[i] - ref[(n - back) * (size_t)V + i]);
                    if (!(e <= worst)) worst = e;
                }
                CHECK(worst <= tol(got, ref + (n - back) * (size_t)V, back * (size_t)V, atol, lp),
                      "%s seq %zu: after truncating %zu back, max |diff| %.3g", isas[ii], si, back, worst);
                free(got);
                moe_seq_free(s);
            }
            free(ref);
            free(tok);
        }
        /* greedy continuation through the generation iterator */
        json_t *gr = json_object_get(g, "greedy");
        if (gr) {
            size_t np, ne;
            int32_t *prompt = ints(json_object_get(gr, "prompt"), &np), *want = ints(json_object_get(gr, "tokens"), &ne);
            moe_seq *s;
            moe_sampler *smp;
            moe_sampler_params spp;
            moe_sampler_params_defaults(&spp);
            spp.temperature = 0;
            moe_seq_params sp;
            moe_seq_params_defaults(&sp);
            sp.kv_bits = g_kv_bits;
            sp.n_ctx = (int)(np + ne + 1);
            sp.n_batch = 4;
            CHECK(moe_seq_new(m, &sp, &s) == MOE_OK && moe_sampler_new(&spp, &smp) == MOE_OK, "greedy setup");
            CHECK(moe_seq_eval(s, prompt, np, NULL, 0) == MOE_OK, "prompt: %s", moe_errmsg());
            size_t same = 0;
            for (size_t i = 0; i < ne; i++) {
                int32_t t = -1;
                moe_generate_next(s, smp, &t);
                if (t == want[i] && same == i) same++;
            }
            /* quantized KV: the argmax may flip where the reference's top-2 gap is within twice the RMS error */
            size_t need = ne;
            double gap = same < ne ? json_number_value(json_array_get(json_object_get(gr, "step_gaps"), same)) : 0;
            if ((g_kv_bits || g_rel) && same < ne && gap <= 2 * atol * g_ref_rms) need = same;
            CHECK(same >= need, "%s greedy: first %zu of %zu tokens match (gap at %zu: %.3g)", isas[ii], same, ne, same, gap);
            moe_sampler_free(smp);
            moe_seq_free(s);
            free(prompt);
            free(want);
        }
        moe_model_free(m);
    }
    for (int i = 0; i < 8; i++) free(f32_logits[i]);
    json_decref(g);
    TEST_DONE();
}
