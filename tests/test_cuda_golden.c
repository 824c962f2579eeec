/* test_cuda_golden.c — the CUDA backend against transformers and against the
 * CPU: for each fixture directory (tests/golden*, written by
 * tools/gen_fixtures.py), the logits of every sequence on the GPU, fed whole,
 * in batches of 4 and token by token (each path its own kernels: prompt
 * matmuls, small-batch and one-token decode), within a relative tolerance of
 * the reference; the same for the CPU's float32 logits, so a GPU error is
 * told apart from a CPU one; and the greedy continuation token for token.
 *
 * Tolerances are relative: RMS of the error <= RTOL x RMS of the logits.
 * Calls of 4 tokens and 1 token with MOE_CUDA_FLOAT_DECODE=1 (the float32
 * matrix x vector kernels) are held to RTOL_DECODE at every position. The
 * approximate calls are judged as the CPU's approximate ISAs are
 * (test_golden.c): whole-sequence calls (tensor cores with float16 operands,
 * or int8-rounded inputs for a sequence of up to 8 tokens) against
 * RTOL_PROMPT, and, where RTOL_INT8 > 0, the 4- and 1-token calls with the
 * backend's default decode (Q4/Q8 weights on int8-rounded inputs) against
 * RTOL_INT8: every position within 3x the bound and all of them together
 * within it, except positions at or after a call that the rounding routed
 * differently from the CPU's float32 kernels (a router near tie tipped: that
 * position's logits change wholesale, and through its keys and values those
 * of later ones); at most one position in eight of the fixture. The greedy
 * continuation may leave the reference's only where its top-2 gap is within
 * reach of the prompt tolerance. Exits 77 (skipped) where no GPU is present.
 * usage: test_cuda_golden RTOL_PROMPT RTOL_DECODE RTOL_INT8 FIXTURE_DIR...  */
#include "f32file.h"
#include "gpu_test.h"
#include "test.h"

static moe_model *load(const char *dir, const char *device) {
    moe_load_params lp;
    moe_load_params_defaults(&lp);
    lp.device = device;
    moe_model *m = NULL;
    moe_status st = moe_model_load(dir, &lp, &m);
    CHECK(st == MOE_OK, "load %s on %s: %s", dir, device, moe_errmsg());
    return m;
}

static void fixture(const char *dir, double rtol, double rtol_dec, double rtol_i8) {
    char path[1024];
    snprintf(path, sizeof path, "%s/golden.json", dir);
    json_error_t je;
    json_t *g = json_load_file(path, 0, &je);
    CHECK(g != NULL, "%s: %s", path, g ? "" : je.text);
    if (!g) return;
    snprintf(path, sizeof path, "%s/model", dir);
    moe_model *gpu = load(path, "cuda"), *cpu = load(path, "cpu");
    if (!gpu || !cpu) {
        moe_model_free(gpu);
        moe_model_free(cpu);
        json_decref(g);
        return;
    }
    int V = moe_model_config(gpu)->vocab_size;
    /* a sequence too large for the GPU: a clean MOE_ENOMEM naming it, and the model still works */
    moe_seq_params big;
    moe_seq_params_defaults(&big);
    big.n_ctx = 1 << 30;
    moe_seq *bs = NULL;
    if (moe_model_config(gpu)->sliding_window == 0) { /* a window bounds the cache whatever the context */
        moe_status bst = moe_seq_new(gpu, &big, &bs);
        CHECK(bst == MOE_ENOMEM && !bs && strstr(moe_errmsg(), "GPU out of memory"), "%s: a 2^30-token sequence: %d (%s)",
              dir, bst, moe_errmsg());
        moe_seq_free(bs);
    }
    size_t si;
    json_t *seq;
    double worst[5] = {0, 0, 0, 0, 0}, worst_cpu = 0, ref_rms = 0;
    size_t n_positions[5] = {0}, n_off[5] = {0}; /* per mode: positions judged, outliers */
    const size_t steps[5] = {0, 4, 1, 4, 1};     /* tokens a call per mode (0: whole) */
    json_array_foreach(json_object_get(g, "sequences"), si, seq) {
        size_t n, nref = 0;
        int32_t *tok = ints(json_object_get(seq, "tokens"), &n);
        char lp[1024];
        snprintf(lp, sizeof lp, "%s/%s", dir, json_string_value(json_object_get(seq, "logits")));
        float *ref = read_f32(lp, &nref);
        CHECK(ref && nref == n * (size_t)V, "%s: %zu floats for %zu x %d", lp, nref, n, V);
        float *c = ref && nref == n * (size_t)V ? run(cpu, tok, n, 0, V, NULL) : NULL;
        for (size_t i = 0; c && i < n * (size_t)V; i += (size_t)V) {
            double ss = 0;
            for (int j = 0; j < V; j++) ss += (double)ref[i + (size_t)j] * ref[i + (size_t)j];
            ref_rms = fmax(ref_rms, sqrt(ss / V));
        }
        if (c) worst_cpu = fmax(worst_cpu, rel_rms(c, ref, n * (size_t)V));
        /* whole prompts; then calls of 4 and of 1 token, in float32 (MOE_CUDA_FLOAT_DECODE)
         * and as the backend decodes by default (Q4/Q8 weights on int8-rounded inputs) */
        uint64_t *rg = malloc(n * sizeof *rg), *rc = malloc(n * sizeof *rc);
        for (int md = 0; md < 5 && c; md++) {
            int i8 = md >= 3, approx = md != 1 && md != 2; /* whole calls: tensor cores, or int8 decode up to 8 tokens */
            if (i8 && rtol_i8 <= 0) continue;
            if (!approx) setenv("MOE_CUDA_FLOAT_DECODE", "1", 1);
            float *got = run(gpu, tok, n, steps[md], V, rg);
            unsetenv("MOE_CUDA_FLOAT_DECODE");
            CHECK(got != NULL, "%s seq %zu step %zu: GPU eval failed", dir, si, steps[md]);
            if (!got) continue;
            float *cref = approx ? run(cpu, tok, n, steps[md], V, rc) : NULL; /* the float32 routing of the same calls */
            /* float32 calls: every position within the bound. Approximate ones, as the CPU's
             * approximate ISAs (test_golden.c): each position within 3x the bound, together
             * within the bound; beyond, only a position at or after a call the rounding
             * routed differently (a router near tie tipped), at most one in eight of the fixture */
            size_t outliers = 0;
            int flipped = 0; /* some call up to this position was routed differently */
            double bound = md == 0 ? rtol : i8 ? rtol_i8 : rtol_dec, se = 0, sr = 0;
            for (size_t p = 0; p < n; p++) {
                const float *gp = got + p * (size_t)V, *rp = ref + p * (size_t)V;
                flipped |= approx && cref && rg[p] != rc[p];
                double e = rel_rms(gp, rp, (size_t)V), pr = 0;
                for (int v = 0; v < V; v++) pr += (double)rp[v] * rp[v];
                if (e <= (approx ? 3 : 1) * bound) {
                    worst[md] = fmax(worst[md], e);
                    se += e * e * pr, sr += pr;
                    continue;
                }
                outliers++;
                CHECK(flipped, "%s seq %zu (len %zu) step %zu%s position %zu: relative RMS error %.3g > %.3g%s", dir, si,
                      n, steps[md], i8 ? " (int8 inputs)" : "", p, e, (approx ? 3 : 1) * bound,
                      approx ? ", and every call up to it routed as float32 routes" : "");
            }
            n_positions[md] += n;
            n_off[md] += outliers;
            CHECK(se <= bound * bound * sr, "%s seq %zu step %zu: relative RMS error over the positions within bounds %.3g > %.3g",
                  dir, si, steps[md], sqrt(se / sr), bound);
            /* the GPU against the CPU too (float32 calls): the same model, the same order of layers */
            if (!approx) {
                double ec = rel_rms(got, c, n * (size_t)V);
                CHECK(ec <= bound, "%s seq %zu step %zu: GPU vs CPU relative RMS %.3g", dir, si, steps[md], ec);
            }
            free(cref);
            free(got);
        }
        free(rg);
        free(rc);
        free(c);
        free(ref);
        free(tok);
    }
    size_t n_outliers = 0;
    for (int md = 0; md < 5; md++) {
        CHECK(n_off[md] * 8 <= n_positions[md], "%s step %zu%s: %zu of %zu positions off by a flipped routing", dir,
              steps[md], md >= 3 ? " (int8 inputs)" : "", n_off[md], n_positions[md]);
        n_outliers += n_off[md];
    }
    /* greedy continuation: the reference's tokens, except after a step whose top-2 gap is within reach of the error */
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
        sp.n_ctx = (int)(np + ne + 1);
        CHECK(moe_seq_new(gpu, &sp, &s) == MOE_OK && moe_sampler_new(&spp, &smp) == MOE_OK, "greedy setup");
        CHECK(moe_seq_eval(s, prompt, np, NULL, 0) == MOE_OK, "prompt: %s", moe_errmsg());
        size_t same = 0;
        for (size_t i = 0; i < ne; i++) {
            int32_t t = -1;
            moe_generate_next(s, smp, &t);
            if (t == want[i] && same == i) same++;
        }
        double gap = same < ne ? json_number_value(json_array_get(json_object_get(gr, "step_gaps"), same)) : 0;
        CHECK(same == ne || gap <= 2 * fmax(rtol, rtol_i8) * ref_rms, "%s greedy: first %zu of %zu tokens match (top-2 gap at %zu: %.3g)", dir, same, ne,
              same, gap);
        moe_sampler_free(smp);
        moe_seq_free(s);
        free(prompt);
        free(want);
    }
    printf("%s: worst relative RMS error per position: whole %.3g; float32 decode: batches of 4 %.3g, token by token "
           "%.3g; int8 inputs: %.3g, %.3g, %zu positions off by a flipped routing (CPU float32: %.3g)\n", dir, worst[0],
           worst[1], worst[2], worst[3], worst[4], n_outliers, worst_cpu);
    moe_model_free(gpu);
    moe_model_free(cpu);
    json_decref(g);
}

int main(int argc, char **argv) {
    if (argc < 5) {
        fprintf(stderr, "usage: test_cuda_golden RTOL_PROMPT RTOL_DECODE RTOL_INT8 FIXTURE_DIR...\n");
        return 2;
    }
    if (!gpu_present()) return 77;
    double rtol = atof(argv[1]), rtol_dec = atof(argv[2]), rtol_i8 = atof(argv[3]);
    setenv("MOE_ISA", "scalar", 1); /* the CPU side in float32 whatever this CPU has */
    for (int i = 4; i < argc; i++) fixture(argv[i], rtol, rtol_dec, rtol_i8);
    TEST_DONE();
}
