/* test_golden.c — moe against transformers: for a fixture directory written by
 * tools/gen_fixtures.py (golden.json, logits_*.f32, model/), every position's
 * logits within the tolerance and the greedy continuation token for token.
 * Each check runs several ways that must agree with the reference: the whole
 * sequence in one batch, in small batches (sliding-window ring buffer
 * crossing batch boundaries), one token at a time (decode path), and on every
 * instruction set the CPU has. With KV_BITS (8 or 4) the KV cache is
 * quantized and ATOL is relative (see tol(); tests/CMakeLists.txt derives
 * it). With APPROX_RTOL the ISAs whose arithmetic is not float32's run too,
 * "avx512vnni" (Q4/Q8 decode on int8-rounded inputs) and "amx" (bf16 prompt
 * matmuls), judged position by position (judge_approx()).
 * usage: test_golden FIXTURE_DIR [ATOL [KV_BITS [APPROX_RTOL]]]  */
#include <jansson.h>
#include <math.h>
#include <stdlib.h>

#include "f32file.h"
#include "moe.h"
#include "test.h"

static int g_kv_bits;   /* moe_seq_params.kv_bits of every sequence */
static double g_ref_rms; /* relative tolerances: the largest RMS of a reference's compared logits */

/* The bound on max |got - ref| over `count` logits: atol; with a quantized KV
 * cache, 4 x atol x max |ref|, after checking that the RMS of got - ref is
 * within atol x the RMS of ref (the error is spread over every logit; where a
 * MoE router's choice flips, one position moves much more than the rest). */
static double tol(const float *got, const float *ref, size_t count, double atol, const char *what) {
    if (!g_kv_bits) return atol;
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

/* An approximate ISA's logits got[n x V] against ref[n x V]. A position meets
 * the tolerance alone when the RMS and the max of its error are within 3 rtol
 * of its logits' RMS and max |logit|; those positions together within rtol
 * (RMS error over all of them). The others, outliers, are allowed only where
 * flip[i] says this ISA's routing of that position's eval call differs from
 * the float32 kernels' (which reproduce the reference's: they meet ATOL): a
 * router near tie that the rounding tipped changes that position's logits
 * wholesale, and a little those of the positions attending to it. Returns
 * the number of outliers (main caps them at one position in eight). */
static size_t judge_approx(const float *got, const float *ref, size_t n, int V, const unsigned char *flip, double rtol,
                           const char *what) {
    double se = 0, sr = 0;
    size_t outliers = 0;
    for (size_t i = 0; i < n; i++) {
        double pe = 0, pr = 0, me = 0, mr = 0;
        for (int v = 0; v < V; v++) {
            double e = fabs((double)got[i * V + v] - ref[i * V + v]), r = fabs(ref[i * V + v]);
            pe += e * e;
            pr += r * r;
            if (!(e <= me)) me = e; /* a NaN sticks */
            if (r > mr) mr = r;
        }
        if (sqrt(pr / V) > g_ref_rms) g_ref_rms = sqrt(pr / V);
        if (pe <= 9 * rtol * rtol * pr && me <= 3 * rtol * mr) {
            se += pe;
            sr += pr;
            continue;
        }
        outliers++;
        CHECK(flip[i] && isfinite(pe), "%s position %zu: RMS error %.3g of the logits' RMS, max %.3g of max |logit| "
              "(bound %.3g), and routed as the float32 kernels route it", what, i, sqrt(pe / pr), me / mr, 3 * rtol);
    }
    CHECK(se <= rtol * rtol * sr, "%s: RMS error over the positions within %.3g: %.3g of the logits' RMS > %.3g", what,
          3 * rtol, sqrt(se / sr), rtol);
    return outliers;
}

/* Entries of a routing record (take_routes): n_layers x n_experts. */
static size_t route_len(const moe_model *m) {
    return (size_t)moe_model_config(m)->n_layers * (size_t)moe_model_config(m)->n_experts;
}

/* How often each MoE layer of m chose each expert since the last call (or
 * the load): counts[n_layers x n_experts], zeros for dense layers; then reset. */
static void take_routes(moe_model *m, int64_t *counts) {
    size_t E = (size_t)moe_model_config(m)->n_experts;
    for (int l = 0; E && l < moe_model_config(m)->n_layers; l++)
        if (moe_model_expert_counts(m, l, counts + l * E) != MOE_OK) memset(counts + l * E, 0, E * sizeof *counts);
    moe_model_reset_expert_counts(m);
}

static int32_t *ints(json_t *a, size_t *n) {
    *n = json_array_size(a);
    int32_t *v = malloc((*n ? *n : 1) * sizeof *v);
    for (size_t i = 0; i < *n; i++) v[i] = (int32_t)json_integer_value(json_array_get(a, i));
    return v;
}

/* logits of tokens[n] fed in batches of `batch` tokens per eval call (0: one
 * call); routes (NULL: not wanted) [n x route_len(m)]: at each position, the
 * routing of the eval call that held it (take_routes) */
static float *run(moe_model *m, const int32_t *tok, size_t n, int batch, int n_batch, int V, int64_t *routes) {
    moe_seq_params sp;
    moe_seq_params_defaults(&sp);
    sp.kv_bits = g_kv_bits;
    sp.n_ctx = (int)n + 32;
    sp.n_batch = n_batch;
    moe_seq *s;
    if (moe_seq_new(m, &sp, &s) != MOE_OK) return NULL;
    float *out = malloc(n * (size_t)V * sizeof *out);
    size_t step = batch ? (size_t)batch : n, rl = route_len(m);
    for (size_t off = 0; off < n; off += step) {
        size_t k = n - off < step ? n - off : step;
        moe_model_reset_expert_counts(m);
        if (moe_seq_eval(s, tok + off, k, out + off * (size_t)V, 1) != MOE_OK) {
            free(out);
            out = NULL;
            break;
        }
        if (routes) take_routes(m, routes + off * rl);
        for (size_t i = 1; routes && i < k; i++) memcpy(routes + (off + i) * rl, routes + off * rl, rl * sizeof *routes);
    }
    moe_seq_free(s);
    return out;
}

/* Evaluates tok[n], truncates `back` tokens back (through a snapshot where
 * the model has recurrent layers), checks the sequence's bookkeeping, and
 * returns the logits of those tokens evaluated again [back x V]; routes (NULL:
 * not wanted) [route_len(m)]: the routing of that last eval call. */
static float *truncated_tail(moe_model *m, const int32_t *tok, size_t n, size_t back, int V, int64_t *routes) {
    moe_seq_params sp;
    moe_seq_params_defaults(&sp);
    sp.kv_bits = g_kv_bits;
    sp.n_ctx = (int)n + 32;
    sp.n_batch = 4;
    moe_seq *s;
    CHECK(moe_seq_new(m, &sp, &s) == MOE_OK, "seq");
    if (!s) return NULL;
    int window = moe_model_config(m)->sliding_window, hybrid = moe_model_config(m)->n_linear_layers > 0;
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
    moe_model_reset_expert_counts(m);
    CHECK(moe_seq_eval(s, tok + n - back, back, got, 1) == MOE_OK, "re-eval: %s", moe_errmsg());
    if (routes) take_routes(m, routes);
    moe_seq_free(s);
    return got;
}

/* flip[i] = 1 where routes a and b [n x rl] differ at position i */
static unsigned char *route_flips(const int64_t *a, const int64_t *b, size_t n, size_t rl) {
    unsigned char *flip = malloc(n ? n : 1);
    for (size_t i = 0; i < n; i++) flip[i] = memcmp(a + i * rl, b + i * rl, rl * sizeof *a) != 0;
    return flip;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: test_golden FIXTURE_DIR [ATOL [KV_BITS [APPROX_RTOL]]]\n");
        return 2;
    }
    const char *dir = argv[1];
    double atol = argc > 2 ? atof(argv[2]) : 1e-4, rtol = argc > 4 ? atof(argv[4]) : 0;
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
    /* The float32 ISAs, then (with APPROX_RTOL) the approximate ones, each
     * beside avx512's model (fm, kept from its turn): its logits of the same
     * calls show that the approximation ran (they differ in the mode that
     * takes it: whole batches from 4 tokens for "amx", a Q4/Q8 model's
     * token-by-token decode for "avx512vnni"), its routing where the
     * approximation tipped a router (judge_approx) */
    const char *isas[] = {"scalar", "avx2", "avx512", "avx512vnni", "amx"};
    const int differs_in[] = {-1, -1, -1, 2, 0};
    moe_model *fm = NULL;
    for (int ii = 0; ii < 3 + 2 * (rtol > 0); ii++) {
        int approx = ii >= 3;
        setenv("MOE_ISA", isas[ii], 1);
        setenv("MOE_AMX_MIN_TOKENS", "4", 1);
        moe_model *m;
        moe_status st = moe_model_load(path, NULL, &m);
        if (st == MOE_EUNSUPPORTED && ii > 0) { printf("%s: not on this CPU, skipped\n", isas[ii]); continue; }
        CHECK(st == MOE_OK, "load %s: %s", path, moe_errmsg());
        if (st) break;
        int V = moe_model_config(m)->vocab_size, qbits = moe_model_config(m)->quant_bits;
        size_t rl = route_len(m);
        if (moe_model_config(m)->sliding_window > 0) /* the ring buffer bounds memory whatever the context */
            CHECK(moe_model_kv_bytes(m, 1 << 20) == moe_model_kv_bytes(m, 4096), "KV cache grows with n_ctx under a window");
        CHECK(V == json_integer_value(json_object_get(g, "vocab_size")), "vocab size");
        size_t outliers[3] = {0}, positions[3] = {0};
        const int modes[3][2] = {{0, 0}, {4, 4}, {1, 1}}; /* whole batch; batches of 4 with n_batch 4; token by token */
        size_t si;
        json_t *seq;
        json_array_foreach(json_object_get(g, "sequences"), si, seq) {
            size_t n, nref = 0;
            int32_t *tok = ints(json_object_get(seq, "tokens"), &n);
            char lp[1024], what[1200];
            snprintf(lp, sizeof lp, "%s/%s", dir, json_string_value(json_object_get(seq, "logits")));
            float *ref = read_f32(lp, &nref);
            CHECK(ref && nref == n * (size_t)V, "%s: %zu floats for %zu x %d", lp, nref, n, V);
            int64_t *routes = malloc((n * rl + 1) * sizeof *routes), *froutes = malloc((n * rl + 1) * sizeof *froutes);
            for (int md = 0; md < 3 && ref && nref == n * (size_t)V; md++) {
                if (ii == 0 && md > 0 && n > 16) continue; /* scalar: one pass on long sequences is enough */
                float *got = run(m, tok, n, modes[md][0], modes[md][1], V, routes);
                CHECK(got != NULL, "eval: %s", moe_errmsg());
                if (!got) continue;
                snprintf(what, sizeof what, "%s seq %zu (len %zu) %s, batch %d", isas[ii], si, n, lp, modes[md][0]);
                if (approx) {
                    float *fl = run(fm, tok, n, modes[md][0], modes[md][1], V, froutes);
                    unsigned char *flip = route_flips(routes, froutes, n, rl);
                    outliers[md] += judge_approx(got, ref, n, V, flip, rtol, what);
                    positions[md] += n;
                    if (md == differs_in[ii] && (md == 2 ? qbits == 4 || qbits == 8 : n >= 4))
                        CHECK(fl && memcmp(got, fl, n * (size_t)V * sizeof *got), "%s: the logits of avx512, so %s did not run",
                              what, isas[ii]);
                    free(flip);
                    free(fl);
                } else {
                    double worst = 0;
                    size_t at = 0;
                    for (size_t i = 0; i < n * (size_t)V; i++) {
                        double e = fabs((double)got[i] - ref[i]);
                        if (!(e <= worst)) { worst = e; at = i; }
                    }
                    CHECK(worst <= tol(got, ref, n * (size_t)V, atol, lp), "%s: max |diff| %.3g at position %zu token %zu",
                          what, worst, at / (size_t)V, at % (size_t)V);
                    if (md == 0 && si == 1) printf("%s: seq %zu max |diff| %.3g\n", isas[ii], si, worst);
                }
                free(got);
            }
            /* truncate back and evaluate the tail again: same logits as the reference */
            if (ref && nref == n * (size_t)V && n > 8) {
                size_t back = moe_model_config(m)->sliding_window ? 3 : n / 2; /* cap = window + 3 with n_batch 4 */
                const float *rt = ref + (n - back) * (size_t)V;
                float *got = truncated_tail(m, tok, n, back, V, routes);
                snprintf(what, sizeof what, "%s seq %zu: after truncating %zu back", isas[ii], si, back);
                if (got && approx) {
                    free(truncated_tail(fm, tok, n, back, V, froutes));
                    unsigned char *flip = malloc(back);
                    memset(flip, memcmp(routes, froutes, rl * sizeof *routes) != 0, back);
                    judge_approx(got, rt, back, V, flip, rtol, what);
                    free(flip);
                } else if (got) {
                    double worst = 0;
                    for (size_t i = 0; i < back * (size_t)V; i++) {
                        double e = fabs((double)got[i] - rt[i]);
                        if (!(e <= worst)) worst = e;
                    }
                    CHECK(worst <= tol(got, rt, back * (size_t)V, atol, lp), "%s: max |diff| %.3g", what, worst);
                }
                free(got);
            }
            free(routes);
            free(froutes);
            free(ref);
            free(tok);
        }
        for (int md = 0; md < 3 && approx; md++) {
            CHECK(8 * outliers[md] <= positions[md], "%s, batch %d: %zu outliers in %zu positions, more than one in eight",
                  isas[ii], modes[md][0], outliers[md], positions[md]);
            if (outliers[md]) printf("%s, batch %d: %zu outliers in %zu positions\n", isas[ii], modes[md][0], outliers[md], positions[md]);
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
            /* relative tolerances: the argmax may flip where the reference's top-2 gap is within twice the RMS error */
            double rel = approx ? rtol : g_kv_bits ? atol : 0;
            size_t need = ne;
            double gap = same < ne ? json_number_value(json_array_get(json_object_get(gr, "step_gaps"), same)) : 0;
            if (rel > 0 && same < ne && gap <= 2 * rel * g_ref_rms) need = same;
            CHECK(same >= need, "%s greedy: first %zu of %zu tokens match (gap at %zu: %.3g)", isas[ii], same, ne, same, gap);
            moe_sampler_free(smp);
            moe_seq_free(s);
            free(prompt);
            free(want);
        }
        if (ii == 2) fm = m;
        else moe_model_free(m);
    }
    moe_model_free(fm);
    json_decref(g);
    TEST_DONE();
}
