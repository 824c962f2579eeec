/* synth.c — moe synth: a model of a real model's shapes with random weights,
 * written in the hub layout, so speed can be measured without downloading
 * the real thing. Weights are uniform in [-0.035, 0.035] (std ~0.02, like a
 * fresh initialisation; a MoE's embedding and routers differ, see below),
 * norms are 1 (Qwen3-Next's about 1 as applied, and its gated DeltaNet
 * parameters as the model initialises them: k_norm_c and below); each value
 * is a hash of (seed, tensor,
 * index), so the files are the same on every run. With bits, the tensors are
 * those of the mlx-community quantized layout (mlx_layout.c, shared with moe
 * quantize): random packed values, and scales and biases that dequantize
 * them to the same range.
 *
 * Routing (MoE shapes). Real routers have favourite experts, different in
 * each layer; with skew s, the expert of popularity rank r in a layer is
 * chosen with frequency ~ 1/r^s (at most SKEW_CAP of the tokens), each layer
 * ranking its experts in its own random order; s = 0: all alike. Only the
 * weights carry it; the forward pass is the usual one:
 * - every embedding row gets a component along one direction u (±1, constant
 *   over blocks of 128 columns, so a quantized group's bias can carry it),
 *   so rmsnorm(x) has nearly the same component along u for every token;
 * - router row e adds beta_e * u, beta_e by the expert's rank: e's logit is
 *   then beta_e (in units of the logits' spread between tokens, which
 *   follows from the router's weight scale) plus what varies by token,
 *   roughly Gaussian and independent between experts; zipf_offsets solves
 *   for the beta whose top-k frequencies under that noise are Zipf(s). Each
 *   row's own random component along u is measured and taken out;
 * - random attention and FFN outputs add to the residual stream and would
 *   drown the embedding (Mixtral's shape: the stream's RMS grows by ~2.5 per
 *   layer, from an embedding's 0.02). Worse, random attention over a long
 *   prompt is nearly an average of the whole prefix, the same for every
 *   token: without a remedy, most of the stream is one shared vector (in
 *   the qwen3, olmoe and qwen1.5 shapes 36-88% of it by the second layer,
 *   measured) and every router sends the tokens to the same few experts
 *   (8 of 128 took 99.9% of qwen3's fourth layer). So the embedding is
 *   scaled to SKEW_K times what all the layers can add (layer_out_rms):
 *   the routers then read mostly the token's own embedding, and u's share
 *   holds in every layer (olmoe's 16 layers route alike, measured).
 * Scaling the embedding changes nothing else: every block reads the stream
 * through an RMS norm. Dense shapes keep plain random weights. */
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "../base/err.h"
#include "../base/file.h"
#include "../base/half.h"
#include "../format/mlx_quant.h"
#include "../format/safetensors.h"
#include "config.h"
#include "mlx_layout.h"

/* Gated DeltaNet layers (Qwen3-Next): key / value heads and head dims, conv
 * kernel; every full_every-th layer is full attention, with RoPE on
 * rot_factor of each head. */
typedef struct hybrid_shape {
    int nk, nv, dk, dv, conv, full_every;
    double rot_factor;
} hybrid_shape;

static const hybrid_shape k_next = {16, 32, 128, 128, 4, 4, 0.25}, k_test_next = {2, 4, 16, 16, 4, 4, 0.25};

typedef struct shape {
    const char *name, *model_type;
    int vocab, hidden, layers, heads, kv_heads, head_dim, inter;
    int experts, top_k, moe_inter, shared_inter, window;
    double rope_theta, eps;
    int norm_topk, qkv_bias, max_pos;
    const hybrid_shape *lin; /* NULL: attention in every layer */
} shape;

/* Qwen3-Next-80B-A3B and Qwen3-Coder-Next (its coding fine-tune, rope_theta
 * 5e6 against 1e7) have one shape: 80B parameters, ~45 GB at 4 bits. */
#define QWEN3_NEXT(name, theta) \
    {name, "qwen3_next", 151936, 2048, 48, 16, 2, 256, 5120, 512, 10, 512, 512, 0, theta, 1e-6, 1, 0, 262144, &k_next}

static const shape k_shapes[] = {
    {"mistral-7b", "mistral", 32000, 4096, 32, 32, 8, 128, 14336, 0, 0, 0, 0, 4096, 10000, 1e-5, 0, 0, 32768, NULL},
    {"mixtral-8x7b", "mixtral", 32000, 4096, 32, 32, 8, 128, 14336, 8, 2, 14336, 0, 0, 1e6, 1e-5, 1, 0, 32768, NULL},
    {"qwen3-30b-a3b", "qwen3_moe", 151936, 2048, 48, 32, 4, 128, 6144, 128, 8, 768, 0, 0, 1e6, 1e-6, 1, 0, 32768, NULL},
    {"qwen1.5-moe-a2.7b", "qwen2_moe", 151936, 2048, 24, 16, 16, 128, 5632, 60, 4, 1408, 5632, 0, 1e6, 1e-6, 0, 1, 32768, NULL},
    {"olmoe-1b-7b", "olmoe", 50304, 2048, 16, 16, 16, 128, 1024, 64, 8, 1024, 0, 0, 1e4, 1e-5, 0, 0, 32768, NULL},
    QWEN3_NEXT("qwen3-coder-next", 5e6),
    QWEN3_NEXT("qwen3-next-80b-a3b", 1e7),
    /* not real models: MoEs small enough for the tests (tests/synth) */
    {"test-moe", "mixtral", 512, 64, 4, 4, 2, 16, 128, 16, 2, 32, 0, 0, 1e4, 1e-5, 1, 0, 32768, NULL},
    {"test-next", "qwen3_next", 512, 64, 4, 4, 2, 32, 128, 32, 4, 64, 32, 0, 1e6, 1e-6, 1, 0, 4096, &k_test_next},
};

/* Layer l of s is gated DeltaNet. */
static int is_linear(const shape *s, int l) { return s->lin && (l + 1) % s->lin->full_every != 0; }

const char *const *moe_synth_shapes(void) {
    static const char *names[sizeof k_shapes / sizeof *k_shapes + 1];
    for (size_t i = 0; i < sizeof k_shapes / sizeof *k_shapes; i++) names[i] = k_shapes[i].name;
    return names;
}

void moe_synth_params_defaults(moe_synth_params *p) {
    memset(p, 0, sizeof *p);
    p->dtype = "bf16";
    p->group_size = 64;
    p->skew = 1.0;
}

/* ---------------------------------------------------------- tensors -- */

/* A tensor's values: center + spread * (u - 1/2), u uniform in [0, 1) (or its log), plus
 * with routing skew row_u[r * row_step] * dir[c * (dir_len / cols)] at row r,
 * column c; U32 tensors (packed quantized values) get random bits. */
typedef struct gen {
    uint64_t seed;
    float center, spread;
    const float *dir;    /* [dir_len] the direction u (NULL: no skew term) */
    int64_t dir_len;     /* the hidden size; a tensor of fewer columns (a bias
                            per group) takes u at each group's first column */
    const float *row_u;  /* each row's coefficient of u */
    int64_t row_step;    /* 0: one coefficient for every row */
    int log;             /* the value is the log of center + spread * (u - 1/2) */
} gen;

static const gen k_weight = {.center = 0.0f, .spread = 0.07f}, k_norm = {.center = 1.0f, .spread = 0.0f};

/* Where a family stores its norms zero-centred (Qwen3-Next: applied as 1 + w),
 * they are 1 +- 0.05 as applied: w in the hub layout (k_norm_c), 1 + w in the
 * mlx-community one (k_norm_s), as mlx-lm's sanitize shifts them. Gated
 * DeltaNet: A_log = log(uniform(1, 16)) (decay rates e^A_log as the model
 * initialises them), dt_bias 1 +- 0.1, conv weights +-0.5 (4 taps keep their
 * input's scale roughly). */
static const gen k_norm_c = {.center = 0.0f, .spread = 0.1f}, k_norm_s = {.center = 1.0f, .spread = 0.1f},
                 k_a_log = {.center = 8.5f, .spread = 15.0f, .log = 1}, k_dt_bias = {.center = 1.0f, .spread = 0.2f},
                 k_conv = {.center = 0.0f, .spread = 1.0f};

/* The standard deviation of a random weight as written: uniform over
 * k_weight's range, or s*q + b with q uniform in 0..2^bits-1 and s its
 * range / (2^bits - 1) (write_quant). */
static double weight_std(int bits) {
    if (!bits) return k_weight.spread / sqrt(12.0);
    double n = (double)((1 << bits) - 1);
    return k_weight.spread / n * sqrt(n * (n + 2) / 12.0);
}

static uint64_t mix(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Element i of a float tensor generated by g, before the skew term. */
static float gen_value(const gen *g, size_t i) {
    float u = (float)(mix(g->seed + 0x9e3779b97f4a7c15ull * i) >> 40) * 0x1.0p-24f;
    float v = g->center + g->spread * (u - 0.5f);
    return g->log ? logf(v) : v;
}

static void fill(void *ctx, const st_out_tensor *t, size_t off, void *buf, size_t n) {
    const gen *g = ctx;
    unsigned char *o = buf;
    if (t->dtype == ST_U32) { /* 8 random bytes per hash */
        for (size_t i = 0; i < n;) {
            size_t p = off + i, b = p % 8, take = 8 - b < n - i ? 8 - b : n - i;
            uint64_t v = mix(g->seed + 0x9e3779b97f4a7c15ull * (p / 8));
            memcpy(o + i, (const unsigned char *)&v + b, take);
            i += take;
        }
        return;
    }
    size_t es = st_dtype_size(t->dtype), first = off / es, count = n / es;
    int64_t cols = t->shape[t->ndim - 1], r = (int64_t)first / cols, c = (int64_t)first % cols;
    int64_t step = g->dir ? g->dir_len / cols : 0;
    for (size_t i = 0; i < count; i++) {
        float v = gen_value(g, first + i);
        if (g->dir) {
            v += g->row_u[r * g->row_step] * g->dir[c * step];
            if (++c == cols) c = 0, r++;
        }
        mlxq_store(o, t->dtype, (int64_t)i, v);
    }
}

/* ---------------------------------------------------------- routing skew -- */

#define SKEW_C 8.0      /* u's part of an embedding row over its random part's projection on u, */
#define SKEW_SHARE 0.05 /* unless u's share of the stream would pass this */
#define SKEW_K 3.0      /* the embedding's RMS over what all the layers can add */
#define SKEW_CAP 0.9    /* the most tokens one expert is chosen for */
#define SKEW_BLOCK 128  /* u is constant over blocks of this many columns */

typedef struct skew_plan {
    float *dir;        /* [hidden] u: ±1, constant over blocks of SKEW_BLOCK columns */
    int64_t hidden;
    int experts;
    float gain;        /* the embedding's scale */
    float emb_u;       /* the embedding's coefficient of u (gain included) */
    float *router_u;   /* [layers x experts] router row e of layer l adds router_u[l * experts + e] * u */
} skew_plan;

static double norm_cdf(double x) { return 0.5 * erfc(-x / M_SQRT2); }

static double norm_quantile(double p) { /* bisection: a few hundred calls per model */
    double lo = -9, hi = 9;
    for (int i = 0; i < 60; i++) {
        double mid = 0.5 * (lo + hi);
        if (norm_cdf(mid) < p) lo = mid;
        else hi = mid;
    }
    return 0.5 * (lo + hi);
}

/* pi[r] = P(expert r is among the k largest of b[j] + z[j]), z iid N(0, 1):
 * integrated over r's own z on a grid, the number of others above it by the
 * Poisson-binomial recurrence, truncated at k. dp: [k] scratch. */
static void topk_inclusion(const double *b, int E, int k, double *pi, double *dp) {
    for (int r = 0; r < E; r++) {
        double acc = 0, wsum = 0;
        for (int zi = -24; zi <= 24; zi++) {
            double z = zi * 0.25, w = exp(-0.5 * z * z);
            for (int c = 0; c < k; c++) dp[c] = c == 0;
            for (int j = 0; j < E; j++) {
                if (j == r) continue;
                double q = norm_cdf(b[j] - b[r] - z); /* j lands above r */
                for (int c = k - 1; c > 0; c--) dp[c] = dp[c] * (1 - q) + dp[c - 1] * q;
                dp[0] *= 1 - q;
            }
            double p = 0;
            for (int c = 0; c < k; c++) p += dp[c];
            acc += w * p;
            wsum += w;
        }
        pi[r] = acc / wsum;
    }
}

/* b[r]: the logit offset (in units of the logits' Gaussian spread between
 * tokens) of the expert of rank r, so that top-k routing picks it for a share
 * of the tokens ~ k / r^s normalised, at most SKEW_CAP, the excess spread
 * over the others. Starts from each expert alone against a fixed threshold
 * (right for many experts) and corrects by the exact inclusion probabilities
 * (a few steps). 0 on success. */
static int zipf_offsets(int E, int k, double s, double *b) {
    double *t = malloc(3 * (size_t)E * sizeof *t), *pi = t + E, *dp = t + 2 * E;
    if (!t) return -1;
    int capped = 0;
    for (;;) {
        double sum = 0;
        for (int r = capped; r < E; r++) sum += pow(r + 1, -s);
        double scale = (k - capped * SKEW_CAP) / sum;
        if (capped < E - 1 && scale * pow(capped + 1, -s) > SKEW_CAP) { capped++; continue; }
        for (int r = 0; r < E; r++) t[r] = r < capped ? SKEW_CAP : scale * pow(r + 1, -s);
        break;
    }
    for (int r = 0; r < E; r++) b[r] = norm_quantile(t[r]);
    for (int it = 0; it < 10; it++) {
        topk_inclusion(b, E, k, pi, dp);
        double worst = 0;
        for (int r = 0; r < E; r++) {
            worst = fmax(worst, fabs(pi[r] - t[r]));
            b[r] += norm_quantile(t[r]) - norm_quantile(fmin(fmax(pi[r], 1e-12), 1 - 1e-12));
        }
        if (worst < 1e-4) break;
    }
    free(t);
    return 0;
}

/* The RMS per element that one layer can add to the residual stream, at
 * most, with weights of standard deviation sd and inputs of RMS 1: attention
 * reads values of RMS sd*sqrt(H), which the softmax average can only shrink,
 * through o_proj; gate and up give a = sd*sqrt(H), silu(g)*u has RMS below
 * a^2/sqrt(2), then down_proj; top-k weights sum to at most 1, so the mix is
 * no larger than one expert; a shared expert adds its own. */
static double layer_out_rms(const shape *s, double sd) {
    double a = sd * sqrt((double)s->hidden);
    /* gated DeltaNet's out_proj reads a unit-RMS norm times silu(z), z of RMS a: at most a, as attention's values */
    double vd = s->lin ? (double)s->lin->nv * s->lin->dv : 0;
    double att = sd * sqrt(fmax((double)s->heads * s->head_dim, vd)) * a;
    double ffn = sd * sqrt((double)s->moe_inter) * a * a / M_SQRT2;
    double shared = sd * sqrt((double)s->shared_inter) * a * a / M_SQRT2;
    return sqrt(att * att + ffn * ffn + shared * shared);
}

static void skew_plan_free(skew_plan *k) {
    free(k->dir);
    free(k->router_u);
}

/* The plan of p->skew for `layers` layers of shape s whose embedding, router
 * and other weights are quantized at these bits (0: float). */
static moe_status skew_plan_build(skew_plan *k, const moe_synth_params *p, const shape *s, int layers, int bits_embed,
                                  int bits_router, int bits_layers) {
    int64_t H = s->hidden;
    int E = s->experts;
    memset(k, 0, sizeof *k);
    k->hidden = H;
    k->experts = E;
    double *b = malloc((size_t)E * sizeof *b);
    int *perm = malloc((size_t)E * sizeof *perm);
    k->dir = malloc((size_t)H * sizeof *k->dir);
    k->router_u = malloc((size_t)layers * (size_t)E * sizeof *k->router_u);
    if (!b || !perm || !k->dir || !k->router_u || zipf_offsets(E, s->top_k, p->skew, b)) {
        free(b);
        free(perm);
        skew_plan_free(k);
        return moe_err(MOE_ENOMEM, "out of memory");
    }
    uint64_t seed = mix(p->seed ^ 0x736b6577ull);
    for (int64_t c = 0; c < H; c++) k->dir[c] = mix(seed + (uint64_t)(c / SKEW_BLOCK)) >> 63 ? 1.0f : -1.0f;
    /* The embedding: RMS SKEW_K * sqrt(layers) * layer_out_rms; along the unit
     * vector u / sqrt(H), a part c times the random part's projection (std
     * sd_e), so that every token's rmsnorm(x) has nearly the same component
     * along u: a fraction c^2 / (c^2 + H) of its square. The larger c, the
     * steadier that component from token to token; but what all tokens share
     * also reaches every block's input, so their outputs share a part too,
     * which routers read at random (measured on the test shape, H = 64:
     * routing follows Zipf closest with u's share at 5-10%, less closely at
     * 20%, worse at 50% and 80%). So c = SKEW_C, less where u's share would
     * pass SKEW_SHARE (only below H = 1216). */
    double c = fmin(SKEW_C, sqrt(SKEW_SHARE / (1 - SKEW_SHARE) * (double)H));
    double sd_e = weight_std(bits_embed), rms = SKEW_K * sqrt((double)layers) * layer_out_rms(s, weight_std(bits_layers));
    k->gain = (float)(rms / sd_e);
    k->emb_u = (float)(k->gain * sd_e * c / sqrt((double)H));
    /* rmsnorm(x) . u is then H c / sqrt(c^2 + H), and the rest of rmsnorm(x)
     * has norm H / sqrt(c^2 + H): a router row adding b * u moves its logit
     * by b H c / sqrt(c^2 + H), against a spread between tokens of sd_r H /
     * sqrt(c^2 + H) from its random part; so b = beta * sd_r / c. */
    double unit = weight_std(bits_router) / c;
    for (int l = 0; l < layers; l++) {
        for (int e = 0; e < E; e++) perm[e] = e;
        for (int e = E - 1; e > 0; e--) { /* the layer's ranking: Fisher-Yates */
            int j = (int)(mix(seed ^ (0x9e3779b97f4a7c15ull * (uint64_t)(l + 1)) ^ (uint64_t)e) % (uint64_t)(e + 1));
            int x = perm[e];
            perm[e] = perm[j];
            perm[j] = x;
        }
        for (int r = 0; r < E; r++) k->router_u[(size_t)l * E + perm[r]] = (float)(b[r] * unit);
    }
    free(b);
    free(perm);
    return MOE_OK;
}

/* Adds the plan to the generator of an embedding tensor (its values, or its
 * scales and biases when quantized: all scaled by gain, u in the values or
 * biases), or to a router's. Packed values ignore it. */
static void skew_embed(gen *g, const skew_plan *k, int with_u) {
    g->center *= k->gain;
    g->spread *= k->gain;
    if (!with_u) return;
    g->dir = k->dir;
    g->dir_len = k->hidden;
    g->row_u = &k->emb_u;
    g->row_step = 0;
}

/* Field j of a packed row as MLX lays it out (mlx_quant.h); p has a byte
 * to spare after the row. */
static unsigned packed_field(const unsigned char *p, int bits, int64_t j) {
    int64_t bit = j * bits;
    unsigned v = p[bit >> 3] | (unsigned)p[(bit >> 3) + 1] << 8;
    return (v >> (bit & 7)) & ((1u << bits) - 1);
}

/* Router row e's random part has a component along u like any random vector
 * (about its weights' std per unit of u; more where quantized groups have
 * offsets), which would move e's logit by about its spread between tokens
 * times c / sqrt(H) at random. So router_u[layer] is set to the rank's
 * coefficient minus each row's component, measured on the row as written.
 * Float router: values g; quantized: packed values t/gv, scales gs, biases
 * gb. 0 on success. */
static int skew_router(skew_plan *k, int layer, const gen *g, const st_out_tensor *t, const gen *gv, const gen *gs,
                       const gen *gb, int bits, int group) {
    int64_t H = k->hidden, row_bytes = bits ? H * bits / 8 : 0, groups = bits ? H / group : 0;
    unsigned char *row = calloc((size_t)row_bytes + 1, 1);
    if (!row) return -1;
    float *ru = k->router_u + (size_t)layer * k->experts;
    for (int e = 0; e < k->experts; e++) {
        double dot = 0;
        if (!bits)
            for (int64_t c = 0; c < H; c++) dot += k->dir[c] * gen_value(g, (size_t)(e * H + c));
        else
            fill((void *)gv, t, (size_t)(e * row_bytes), row, (size_t)row_bytes);
        for (int64_t j = 0; j < groups; j++) {
            double q = 0;
            for (int64_t c = j * group; c < (j + 1) * group; c++) q += packed_field(row, bits, c);
            size_t i = (size_t)(e * groups + j);
            dot += k->dir[j * group] * (gen_value(gs, i) * q + gen_value(gb, i) * group);
        }
        ru[e] -= (float)(dot / (double)H);
    }
    free(row);
    return 0;
}

/* The generator of a router's float values or quantized biases. */
static void skew_router_gen(gen *g, const skew_plan *k, int layer) {
    g->dir = k->dir;
    g->dir_len = k->hidden;
    g->row_u = k->router_u + (size_t)layer * k->experts;
    g->row_step = 1;
}

typedef struct tlist {
    st_out_tensor *t;
    gen *g;
    char **names;
    size_t n, cap;
    st_dtype dtype;
    uint64_t seed;
    int oom;
} tlist;

static void add(tlist *l, const gen *kind, int64_t d0, int64_t d1, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
static void add(tlist *l, const gen *kind, int64_t d0, int64_t d1, const char *fmt, ...) {
    if (l->oom) return;
    if (l->n == l->cap) {
        size_t nc = l->cap ? l->cap * 2 : 256;
        st_out_tensor *t = realloc(l->t, nc * sizeof *t);
        if (t) l->t = t;
        gen *g = realloc(l->g, nc * sizeof *g);
        if (g) l->g = g;
        char **nm = realloc(l->names, nc * sizeof *nm);
        if (nm) l->names = nm;
        if (!t || !g || !nm) { l->oom = 1; return; }
        l->cap = nc;
    }
    char buf[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    if (!(l->names[l->n] = strdup(buf))) { l->oom = 1; return; }
    l->g[l->n] = *kind;
    l->g[l->n].seed = mix(l->seed ^ (0x51ed27ull * (l->n + 1)));
    l->t[l->n] = (st_out_tensor){l->names[l->n], l->dtype, d1 ? 2 : 1, {d0, d1}, fill, NULL};
    l->n++;
}

static void add_mlp(tlist *l, const char *prefix, const char *const names[3], int64_t inter, int64_t H) {
    add(l, &k_weight, inter, H, "%s.%s.weight", prefix, names[0]);
    add(l, &k_weight, inter, H, "%s.%s.weight", prefix, names[1]);
    add(l, &k_weight, H, inter, "%s.%s.weight", prefix, names[2]);
}

/* Layer p's attention (self_attn); nrm: its q/k norms' generator. */
static void add_attention(tlist *l, const shape *s, const family *f, const gen *nrm, const char *p) {
    int64_t H = s->hidden, qd = (int64_t)s->heads * s->head_dim, kvd = (int64_t)s->kv_heads * s->head_dim;
    int64_t qrows = qd * (f->attn_gate ? 2 : 1); /* with an output gate: query and gate per head */
    add(l, &k_weight, qrows, H, "%s.self_attn.q_proj.weight", p);
    add(l, &k_weight, kvd, H, "%s.self_attn.k_proj.weight", p);
    add(l, &k_weight, kvd, H, "%s.self_attn.v_proj.weight", p);
    add(l, &k_weight, H, qd, "%s.self_attn.o_proj.weight", p);
    if (s->qkv_bias) {
        add(l, &k_weight, qrows, 0, "%s.self_attn.q_proj.bias", p);
        add(l, &k_weight, kvd, 0, "%s.self_attn.k_proj.bias", p);
        add(l, &k_weight, kvd, 0, "%s.self_attn.v_proj.bias", p);
    }
    if (f->qk_norm != QK_NORM_NONE) {
        int full = f->qk_norm == QK_NORM_FULL;
        add(l, nrm, full ? qd : s->head_dim, 0, "%s.self_attn.q_norm.weight", p);
        add(l, nrm, full ? kvd : s->head_dim, 0, "%s.self_attn.k_norm.weight", p);
    }
}

/* Layer p's gated DeltaNet (linear_attn). */
static void add_linear(tlist *l, const shape *s, const char *p) {
    const hybrid_shape *y = s->lin;
    int64_t H = s->hidden, nv = y->nv, kd = (int64_t)y->nk * y->dk, vd = nv * y->dv;
    add(l, &k_weight, 2 * kd + 2 * vd, H, "%s.linear_attn.in_proj_qkvz.weight", p);
    add(l, &k_weight, 2 * nv, H, "%s.linear_attn.in_proj_ba.weight", p);
    add(l, &k_conv, 2 * kd + vd, 1, "%s.linear_attn.conv1d.weight", p);
    if (!l->oom) { /* [C, 1, K], torch's Conv1d */
        l->t[l->n - 1].ndim = 3;
        l->t[l->n - 1].shape[2] = y->conv;
    }
    add(l, &k_a_log, nv, 0, "%s.linear_attn.A_log", p);
    add(l, &k_dt_bias, nv, 0, "%s.linear_attn.dt_bias", p);
    add(l, &k_norm, y->dv, 0, "%s.linear_attn.norm.weight", p);
    add(l, &k_weight, H, vd, "%s.linear_attn.out_proj.weight", p);
}

/* The hub layout's tensors; k: the routing skew's plan, or NULL. */
static void build(tlist *l, const shape *s, const family *f, int layers, skew_plan *k) {
    int64_t H = s->hidden;
    static const char *const dense[3] = {"gate_proj", "up_proj", "down_proj"};
    const gen *nrm = f->centred_norms ? &k_norm_c : &k_norm;
    add(l, &k_weight, s->vocab, H, "model.embed_tokens.weight");
    if (k && !l->oom) skew_embed(&l->g[l->n - 1], k, 1);
    for (int i = 0; i < layers; i++) {
        char p[128], q[160];
        snprintf(p, sizeof p, "model.layers.%d", i);
        add(l, nrm, H, 0, "%s.input_layernorm.weight", p);
        add(l, nrm, H, 0, "%s.post_attention_layernorm.weight", p);
        if (is_linear(s, i)) add_linear(l, s, p);
        else add_attention(l, s, f, nrm, p);
        if (!s->experts) {
            snprintf(q, sizeof q, "%s.mlp", p);
            add_mlp(l, q, dense, s->inter, H);
            continue;
        }
        add(l, &k_weight, s->experts, H, "%s.%s.gate.weight", p, f->moe_block);
        if (k && !l->oom) {
            gen *g = &l->g[l->n - 1];
            if (skew_router(k, i, g, NULL, NULL, NULL, NULL, 0, 0)) l->oom = 1;
            skew_router_gen(g, k, i);
        }
        for (int e = 0; e < s->experts; e++) {
            snprintf(q, sizeof q, "%s.%s.experts.%d", p, f->moe_block, e);
            add_mlp(l, q, f->expert_names, s->moe_inter, H);
        }
        if (s->shared_inter) {
            snprintf(q, sizeof q, "%s.%s.shared_expert", p, f->moe_block);
            add_mlp(l, q, dense, s->shared_inter, H);
            add(l, &k_weight, 1, H, "%s.%s.shared_expert_gate.weight", p, f->moe_block);
        }
    }
    add(l, nrm, H, 0, "model.norm.weight");
    add(l, &k_weight, s->vocab, H, "lm_head.weight");
    for (size_t i = 0; i < l->n; i++) l->t[i].ctx = &l->g[i];
}

/* Qwen3-Next's keys: the gated DeltaNet shapes, which layers are which (as
 * full_attention_interval and as layer_types, as transformers writes both),
 * every layer MoE. 0 on success. */
static int add_linear_config(json_t *c, const shape *s, int layers) {
    const hybrid_shape *y = s->lin;
    json_t *types = json_array();
    for (int l = 0; types && l < layers; l++)
        if (json_array_append_new(types, json_string(is_linear(s, l) ? "linear_attention" : "full_attention"))) {
            json_decref(types);
            types = NULL;
        }
    json_t *x = types ? json_pack("{s:i, s:i, s:i, s:i, s:i, s:i, s:o, s:f, s:i, s:[], s:b}", "linear_num_key_heads",
                                  y->nk, "linear_num_value_heads", y->nv, "linear_key_head_dim", y->dk,
                                  "linear_value_head_dim", y->dv, "linear_conv_kernel_dim", y->conv,
                                  "full_attention_interval", y->full_every, "layer_types", types, "partial_rotary_factor",
                                  y->rot_factor, "decoder_sparse_step", 1, "mlp_only_layers", "attention_bias", 0)
                      : NULL;
    int bad = !x || json_object_update(c, x);
    json_decref(x);
    return bad;
}

static json_t *make_config(const shape *s, int layers, const char *dtype) {
    json_t *c = json_pack("{s:[s], s:s, s:i, s:i, s:i, s:i, s:i, s:i, s:i, s:i, s:f, s:f, s:s, s:b, s:s, s:i, s:i}",
                          "architectures", "SyntheticForCausalLM", "model_type", s->model_type, "vocab_size", s->vocab,
                          "hidden_size", s->hidden, "num_hidden_layers", layers, "num_attention_heads", s->heads,
                          "num_key_value_heads", s->kv_heads, "head_dim", s->head_dim, "intermediate_size", s->inter,
                          "max_position_embeddings", s->max_pos, "rope_theta", s->rope_theta,
                          "rms_norm_eps", s->eps,
                          "hidden_act", "silu", "tie_word_embeddings", 0, "torch_dtype", dtype, "bos_token_id", 1,
                          "eos_token_id", 2);
    if (!c) return NULL;
    json_object_set_new(c, "sliding_window", s->window ? json_integer(s->window) : json_null());
    if (s->experts) {
        json_object_set_new(c, strcmp(s->model_type, "mixtral") ? "num_experts" : "num_local_experts", json_integer(s->experts));
        json_object_set_new(c, "num_experts_per_tok", json_integer(s->top_k));
        json_object_set_new(c, "moe_intermediate_size", json_integer(s->moe_inter));
        json_object_set_new(c, "norm_topk_prob", json_boolean(s->norm_topk));
        if (s->shared_inter) json_object_set_new(c, "shared_expert_intermediate_size", json_integer(s->shared_inter));
    }
    if (s->lin && add_linear_config(c, s, layers)) {
        json_decref(c);
        return NULL;
    }
    return c;
}

static moe_status write_json(json_t *c, const char *path) {
    int rc = json_dump_file(c, path, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    return rc ? moe_err(MOE_EIO, "%s: cannot write", path) : MOE_OK;
}

/* The float model in the hub layout: one model.safetensors. */
static moe_status write_float(const moe_synth_params *p, const shape *s, int layers, st_dtype dtype, const char *dir) {
    tlist l = {0};
    l.dtype = dtype;
    l.seed = mix(p->seed + 1);
    skew_plan k;
    int skewed = s->experts > 0;
    moe_status st = skewed ? skew_plan_build(&k, p, s, layers, 0, 0, 0) : MOE_OK;
    if (st) return st;
    build(&l, s, family_find(s->model_type), layers, skewed ? &k : NULL);
    char path[4200];
    if (l.oom) st = moe_err(MOE_ENOMEM, "out of memory");
    if (!st) st = path_join(path, sizeof path, dir, "model.safetensors");
    if (!st) st = st_write(path, l.t, l.n, p->progress, p->progress_ctx);
    for (size_t i = 0; i < l.n; i++) free(l.names[i]);
    free(l.names);
    free(l.t);
    free(l.g);
    if (skewed) skew_plan_free(&k);
    return st;
}

/* The generator of a vector or conv weight of the mlx-community layout. */
static gen vector_gen(const ml_entry *e) {
    switch (e->role) {
    case ML_ATTN_NORM: case ML_FFN_NORM: case ML_Q_NORM: case ML_K_NORM: case ML_FINAL_NORM:
        return e->shift ? k_norm_s : k_norm;
    case ML_LIN_NORM: return k_norm;
    case ML_LIN_CONV: return k_conv;
    case ML_LIN_A_LOG: return k_a_log;
    case ML_LIN_DT_BIAS: return k_dt_bias;
    default: return k_weight; /* Linear biases */
    }
}

/* The bits of the first entry of `role` in l (0: float or none). */
static int role_bits(const ml_layout *l, ml_role role) {
    for (size_t i = 0; i < l->n; i++)
        if (l->e[i].role == role) return l->e[i].bits;
    return 0;
}

/* The quantized mlx-community layout, laid out as moe quantize writes it:
 * the config (parsed as a loader would) gives the layout; packed values are
 * random bits; scales s ~ range/n_bins and biases b ~ -range/2, so that
 * s*q + b spans the float model's [-0.035, 0.035]. The routing skew's u
 * rides on the biases of the embedding and the routers (constant over a
 * group, as u is). */
static moe_status write_quant(const moe_synth_params *p, const shape *s, int layers, json_t *cfg, st_dtype dtype,
                              const char *dir) {
    char *text = json_dumps(cfg, 0);
    if (!text) return moe_err(MOE_ENOMEM, "out of memory");
    model_config mc;
    moe_status st = config_parse(&mc, text, "synth config.json");
    free(text);
    if (st) return st;
    ml_layout lay;
    ml_tensors ts = {0};
    gen *g = NULL;
    st_dtype *dts = NULL;
    if ((st = ml_layout_build(&mc, p->bits, p->group_size, 1, &lay))) {
        config_free(&mc);
        return st;
    }
    if (!(dts = malloc((lay.n ? lay.n : 1) * sizeof *dts))) st = moe_err(MOE_ENOMEM, "out of memory");
    for (size_t i = 0; !st && i < lay.n; i++) dts[i] = dtype;
    if (!st) st = ml_tensors_build(&lay, dts, &ts);
    if (!st && !(g = calloc(ts.n ? ts.n : 1, sizeof *g))) st = moe_err(MOE_ENOMEM, "out of memory");
    skew_plan k;
    int skewed = 0;
    if (!st && s->experts &&
        !(st = skew_plan_build(&k, p, s, layers, role_bits(&lay, ML_EMBED), role_bits(&lay, ML_ROUTER),
                               role_bits(&lay, ML_SW_GATE))))
        skewed = 1;
    uint64_t seed = mix(p->seed + 1);
    for (size_t i = 0; !st && i < ts.n; i++) {
        const ml_entry *e = &lay.e[ts.entry[i]];
        float n_bins = e->bits ? (float)((1 << e->bits) - 1) : 1.0f;
        if (e->kind != ML_MATRIX) g[i] = vector_gen(e);
        else if (!e->bits || ts.what[i] == ML_VALUES) g[i] = k_weight;
        else if (ts.what[i] == ML_SCALES) g[i] = (gen){.center = 0.07f / n_bins, .spread = 0.014f / n_bins};
        else g[i] = (gen){.center = -0.035f, .spread = 0.007f};
        g[i].seed = mix(seed ^ (0x51ed27ull * (i + 1)));
        if (skewed && e->role == ML_EMBED) skew_embed(&g[i], &k, ts.what[i] != ML_SCALES);
        /* a router's tensors come as values, scales, biases (ml_tensors_build) */
        if (skewed && e->role == ML_ROUTER && (!e->bits || ts.what[i] == ML_BIASES)) {
            if (e->bits ? skew_router(&k, e->layer, NULL, &ts.t[i - 2], &g[i - 2], &g[i - 1], &g[i], e->bits, e->group)
                        : skew_router(&k, e->layer, &g[i], NULL, NULL, NULL, NULL, 0, 0))
                st = moe_err(MOE_ENOMEM, "out of memory");
            skew_router_gen(&g[i], &k, e->layer);
        }
        ts.t[i].fill = fill;
        ts.t[i].ctx = &g[i];
    }
    json_t *q = st ? NULL : ml_layout_quant_json(&lay);
    if (!st && (!q || json_object_set(cfg, "quantization", q) || json_object_set_new(cfg, "quantization_config", json_deep_copy(q))))
        st = moe_err(MOE_ENOMEM, "out of memory");
    json_decref(q);
    if (!st) st = ml_write(dir, ts.t, ts.n, ML_SHARD_BYTES, ml_layout_params(&lay), p->progress, p->progress_ctx);
    char path[4200];
    if (!st && !(st = path_join(path, sizeof path, dir, "config.json"))) st = write_json(cfg, path);
    if (skewed) skew_plan_free(&k);
    free(g);
    free(dts);
    ml_tensors_free(&ts);
    ml_layout_free(&lay);
    config_free(&mc);
    return st;
}

moe_status moe_synth(const moe_synth_params *p, const char *out_dir) {
    const shape *s = NULL;
    for (size_t i = 0; p && p->like && i < sizeof k_shapes / sizeof *k_shapes; i++)
        if (!strcmp(p->like, k_shapes[i].name)) s = &k_shapes[i];
    if (!s) {
        char names[512] = "";
        for (size_t i = 0, n = 0; i < sizeof k_shapes / sizeof *k_shapes; i++)
            n += (size_t)snprintf(names + n, n < sizeof names ? sizeof names - n : 0, "%s%s", i ? ", " : "",
                                  k_shapes[i].name);
        return moe_err(MOE_EINVAL, "synth: unknown shape \"%s\" (%s)", p && p->like ? p->like : "", names);
    }
    if (!(p->skew >= 0 && p->skew <= 4)) return moe_err(MOE_EINVAL, "synth: skew %g (0 to 4)", p->skew);
    const char *dt = p->dtype ? p->dtype : "bf16";
    st_dtype dtype = !strcmp(dt, "bf16") ? ST_BF16 : !strcmp(dt, "f16") ? ST_F16 : !strcmp(dt, "f32") ? ST_F32 : ST_N_DTYPES;
    if (dtype == ST_N_DTYPES) return moe_err(MOE_EINVAL, "synth: dtype \"%s\" (bf16, f16 or f32)", dt);
    int group = p->group_size ? p->group_size : 64;
    if (p->bits && !mlxq_valid(p->bits, group))
        return moe_err(MOE_EINVAL, "synth: %d bits in groups of %d is not supported (bits 2, 3, 4, 5, 6 or 8; "
                                   "group size 32, 64 or 128)", p->bits, group);
    int layers = p->n_layers > 0 ? p->n_layers : s->layers;
    if (mkdir(out_dir, 0755) != 0 && errno != EEXIST) return moe_err(MOE_EIO, "%s: cannot create: %s", out_dir, strerror(errno));
    const char *tdt = dtype == ST_BF16 ? "bfloat16" : dtype == ST_F16 ? "float16" : "float32";
    json_t *cfg = make_config(s, layers, tdt);
    if (!cfg) return moe_err(MOE_ENOMEM, "out of memory");
    moe_status st;
    if (p->bits) {
        moe_synth_params q = *p;
        q.group_size = group;
        st = write_quant(&q, s, layers, cfg, dtype, out_dir);
    } else {
        char path[4200];
        if (!(st = path_join(path, sizeof path, out_dir, "config.json")) && !(st = write_json(cfg, path)))
            st = write_float(p, s, layers, dtype, out_dir);
    }
    json_decref(cfg);
    return st;
}
