/* quantize.c — moe_quantize: a float hub model -> the mlx-community layout.
 *
 * The input is loaded as the engine loads it (moe_model_load: config parsed,
 * files mapped, every weight bound as a view with its shape checked, per
 * expert or transformers-5 fused), so "missing tensor" and "wrong shape" read
 * as they do everywhere else. mlx_layout.c lists the output tensors; each
 * one's source is found by role in the loaded model, and st_write streams it
 * through a fill callback that produces whole output rows on demand (on
 * every core): packed values, scales or biases of one row of one expert,
 * quantized from the mapped input (mlx_quant.c). Memory stays a few rows plus
 * the scales and biases of one entry (kept from its values pass for the two
 * tensors that follow it), whatever the model's size.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "../base/err.h"
#include "../base/file.h"
#include "../base/half.h"
#include "../base/pool.h"
#include "../format/mlx_quant.h"
#include "mlx_layout.h"
#include "model.h"

void moe_quantize_params_defaults(moe_quantize_params *p) {
    memset(p, 0, sizeof *p);
    p->bits = 4;
    p->group_size = 64;
}

/* ------------------------------------------------------------ sources -- */

typedef struct src {
    const ml_entry *e;
    wtensor *w;        /* [max(E, 1)] the input rows of each expert (one view for a Linear, vector or conv) */
    st_dtype in, out;  /* dtype of the input rows; dtype written (mlx-lm casts to config's torch_dtype) */
    int shift;         /* a zero-centred norm of a hub model: written as w + 1 */
} src;

typedef struct scratch {    /* one thread's */
    float *f;               /* [max cols] an input row as float32 (casts) */
    unsigned char *cast;    /* [max cols * 4] an input row in the output dtype (casts) */
} scratch;

/* What the fill callbacks share. Tensors are written in order, an entry's
 * values before its scales and biases: the values pass keeps every row's
 * scales and biases in `cs` / `cb` for the two tensors after it, so the
 * input is quantized once. */
typedef struct writer {
    pool *pool;
    scratch *sc;            /* [pool threads] */
    unsigned char *row;     /* [max output row bytes] a row cut by a chunk boundary */
    unsigned char *cs, *cb; /* [the largest entry's rows x groups] its scales and biases, output dtype */
    const src *cached;      /* the entry whose scales and biases cs / cb hold; NULL: none */
} writer;

typedef struct out_ctx {    /* the fill context of one output tensor */
    const src *s;
    int what;               /* ML_VALUES, ML_SCALES, ML_BIASES */
    size_t row_bytes;       /* bytes of one output row */
    size_t sb_row;          /* bytes of one row of scales (quantized entries) */
    writer *wr;
} out_ctx;

static st_dtype st_of(wfmt f) { return f == WF_F16 ? ST_F16 : f == WF_BF16 ? ST_BF16 : ST_F32; }
static wfmt wfmt_of(st_dtype d) { return d == ST_F16 ? WF_F16 : d == ST_BF16 ? WF_BF16 : WF_F32; }

/* Input row r (over all experts) of s, in the output dtype: the mapped row
 * itself, or its conversion in sc->cast. */
static const void *input_row(const src *s, int64_t r, scratch *sc) {
    int64_t rows = s->e->rows;
    const wtensor *w = &s->w[r / rows];
    const unsigned char *p = (const unsigned char *)w->data + (size_t)(r % rows) * w->row_bytes;
    if (s->in == s->out) return p;
    be_get_row(&(wtensor){.fmt = w->fmt, .rows = 1, .cols = w->cols, .data = p, .row_bytes = w->row_bytes}, 0, sc->f);
    for (int64_t k = 0; k < w->cols; k++) mlxq_store(sc->cast, s->out, k, sc->f[k]);
    return sc->cast;
}

/* x rounded to dtype d. */
static float round_to(st_dtype d, float x) {
    if (d == ST_BF16) return bf16_to_f32(f32_to_bf16(x));
    if (d == ST_F16) return f16_to_f32(f32_to_f16(x));
    return x;
}

/* Output row r of tensor o into dst[o->row_bytes]. */
static void produce_row(const out_ctx *o, int64_t r, unsigned char *dst, scratch *sc) {
    const src *s = o->s;
    const ml_entry *e = s->e;
    writer *wr = o->wr;
    int cached = wr->cached == s;
    if (s->shift) { /* mlx-lm's sanitize: w + 1.0 in the input's dtype; then the cast to the output's */
        be_get_row(&s->w[0], 0, sc->f);
        for (int64_t k = 0; k < e->cols; k++) mlxq_store(dst, s->out, k, round_to(s->in, sc->f[k] + 1.0f));
        return;
    }
    if (e->bits && o->what != ML_VALUES && cached) {
        memcpy(dst, (o->what == ML_SCALES ? wr->cs : wr->cb) + (size_t)r * o->sb_row, o->row_bytes);
        return;
    }
    const void *in = input_row(s, r, sc);
    if (!e->bits) {
        memcpy(dst, in, o->row_bytes);
    } else if (o->what == ML_VALUES) {
        mlxq_quantize_row(in, s->out, e->cols, e->bits, e->group, dst, cached ? wr->cs + (size_t)r * o->sb_row : NULL,
                          cached ? wr->cb + (size_t)r * o->sb_row : NULL, s->out);
    } else {
        mlxq_quantize_row(in, s->out, e->cols, e->bits, e->group, NULL, o->what == ML_SCALES ? dst : NULL,
                          o->what == ML_BIASES ? dst : NULL, s->out);
    }
}

typedef struct rows_job { const out_ctx *o; int64_t r0, n, per_item; unsigned char *dst; } rows_job;

static void rows_item(void *ctx, int64_t i, int tid) {
    const rows_job *j = ctx;
    int64_t a = i * j->per_item, b = a + j->per_item < j->n ? a + j->per_item : j->n;
    for (int64_t r = a; r < b; r++) produce_row(j->o, j->r0 + r, j->dst + (size_t)r * j->o->row_bytes, &j->o->wr->sc[tid]);
}

/* st_write's callback: bytes [off, off+n) of the tensor. Whole rows are
 * produced in place, spread over the pool's threads; a row cut by the chunk
 * boundary is produced into a scratch row and the part wanted copied. */
static void fill(void *ctx, const st_out_tensor *t, size_t off, void *buf, size_t n) {
    (void)t;
    const out_ctx *o = ctx;
    writer *wr = o->wr;
    if (o->s->e->bits && o->what == ML_VALUES && off == 0) wr->cached = o->s; /* this pass fills the cache */
    size_t rb = o->row_bytes, skip = off % rb;
    int64_t r = (int64_t)(off / rb);
    unsigned char *dst = buf;
    if (skip) { /* the end of a row begun in the last chunk */
        size_t take = rb - skip < n ? rb - skip : n;
        produce_row(o, r++, wr->row, &wr->sc[0]);
        memcpy(dst, wr->row + skip, take);
        dst += take;
        n -= take;
    }
    int64_t whole = (int64_t)(n / rb);
    if (whole > 0) {
        int64_t items = 4 * (int64_t)pool_threads(wr->pool);
        rows_job j = {o, r, whole, (whole + items - 1) / items, dst};
        pool_run(wr->pool, rows_item, &j, (whole + j.per_item - 1) / j.per_item);
        r += whole;
        dst += (size_t)whole * rb;
        n -= (size_t)whole * rb;
    }
    if (n) { /* the start of a row the next chunk ends */
        produce_row(o, r, wr->row, &wr->sc[0]);
        memcpy(dst, wr->row, n);
    }
}

/* ----------------------------------------------------- input checking -- */

typedef struct in_tensor { const st_tensor *t; int used; } in_tensor;

static int cmp_addr(const void *a, const void *b) {
    const unsigned char *x = ((const in_tensor *)a)->t->data, *y = ((const in_tensor *)b)->t->data;
    return x < y ? -1 : x > y;
}

/* Marks the input tensor holding address p as used. */
static void mark(in_tensor *all, size_t n, const void *p) {
    size_t lo = 0, hi = n;
    while (lo < hi) { /* the last tensor starting at or before p */
        size_t mid = lo + (hi - lo) / 2;
        if ((const unsigned char *)all[mid].t->data <= (const unsigned char *)p) lo = mid + 1;
        else hi = mid;
    }
    if (lo > 0) all[lo - 1].used = 1;
}

static const st_tensor *find_raw(const moe_model *m, const char *name) {
    for (int i = 0; i < m->n_shards; i++) {
        const st_tensor *t = st_file_find(m->shards[i], name);
        if (t) return t;
    }
    return NULL;
}

/* The input views of entry e in the loaded model. */
static moe_status resolve(const moe_model *m, const ml_entry *e, src *s) {
    const layer *L = e->layer >= 0 ? &m->layers[e->layer] : NULL;
    int64_t n = e->E ? e->E : 1;
    if (!(s->w = calloc((size_t)n, sizeof *s->w))) return moe_err(MOE_ENOMEM, "out of memory");
    s->e = e;
    if (e->kind == ML_VECTOR) {
        const st_tensor *t = find_raw(m, e->name);
        if (!t || t->ndim != 1 || t->shape[0] != e->cols)
            return moe_err(MOE_EFORMAT, "%s: tensor %s: %s", m->dir, e->name, t ? "not a vector of the expected size" : "missing");
        s->w[0] = (wtensor){.fmt = wfmt_of(t->dtype), .rows = 1, .cols = e->cols, .data = t->data,
                            .row_bytes = t->nbytes};
        return MOE_OK;
    }
    if (e->kind == ML_CONV) { /* [C, 1, K] (torch) or [C, K, 1] (MLX): the same bytes */
        const st_tensor *t = find_raw(m, e->name);
        int ok = t && t->ndim == 3 && t->shape[0] == e->rows &&
                 ((t->shape[1] == 1 && t->shape[2] == e->cols) || (t->shape[1] == e->cols && t->shape[2] == 1));
        if (!ok)
            return moe_err(MOE_EFORMAT, "%s: tensor %s: %s", m->dir, e->name,
                           t ? "not a conv weight of the expected shape" : "missing");
        s->w[0] = (wtensor){.fmt = wfmt_of(t->dtype), .rows = e->rows, .cols = e->cols, .data = t->data,
                            .row_bytes = t->nbytes / (size_t)e->rows};
        return MOE_OK;
    }
    for (int64_t x = 0; x < n; x++) {
        const expert *ex = e->E ? &L->experts[x] : NULL;
        const wtensor *w = NULL;
        switch (e->role) {
        case ML_EMBED: w = &m->embed; break;
        case ML_HEAD: w = &m->lm_head; break;
        case ML_Q: w = &L->wq; break;
        case ML_K: w = &L->wk; break;
        case ML_V: w = &L->wv; break;
        case ML_O: w = &L->wo; break;
        case ML_MLP_GATE: w = &L->mlp.gate; break;
        case ML_MLP_UP: w = &L->mlp.up; break;
        case ML_MLP_DOWN: w = &L->mlp.down; break;
        case ML_ROUTER: w = &L->router; break;
        case ML_SW_GATE: w = &ex->gate; break;
        case ML_SW_UP: w = &ex->up; break;
        case ML_SW_DOWN: w = &ex->down; break;
        case ML_SH_GATE: w = &L->shared.gate; break;
        case ML_SH_UP: w = &L->shared.up; break;
        case ML_SH_DOWN: w = &L->shared.down; break;
        case ML_SH_ROUTER: w = &L->shared_gate; break;
        case ML_LIN_QKVZ: w = &L->qkvz; break;
        case ML_LIN_BA: w = &L->ba; break;
        case ML_LIN_OUT: w = &L->out_proj; break;
        default: break;
        }
        if (!w || wfmt_is_quant(w->fmt) || w->rows != e->rows || w->cols != e->cols)
            return moe_err(MOE_EFORMAT, "%s: %s: no float weight of shape [%lld, %lld] in the input", m->dir, e->name,
                           (long long)e->rows, (long long)e->cols);
        if (x > 0 && w->fmt != s->w[0].fmt)
            return moe_err(MOE_EFORMAT, "%s: %s: experts stored in different dtypes (%s and %s)", m->dir, e->name,
                           wfmt_name(s->w[0].fmt), wfmt_name(w->fmt));
        s->w[x] = *w;
    }
    return MOE_OK;
}

/* Whether the norms of m's files are the hub's zero-centred ones (for a
 * family that has them): not if mlx-lm converted the files, which stacks the
 * experts as switch_mlp and gives conv weights MLX's shape [C, K, 1] (the
 * loader's test, model.c). */
static int hub_norms(const moe_model *m) {
    for (int f = 0; f < m->n_shards; f++)
        for (size_t i = 0; i < m->shards[f]->n; i++) {
            const st_tensor *t = &m->shards[f]->tensors[i];
            size_t len = strlen(t->name);
            if (strstr(t->name, ".switch_mlp.")) return 0;
            int conv = len > 13 && !strcmp(t->name + len - 13, "conv1d.weight");
            if (conv && t->ndim == 3 && t->shape[1] > 1 && t->shape[2] == 1) return 0;
        }
    return 1;
}

/* Every input tensor is F32/F16/BF16, none looks quantized. */
static moe_status check_float(const moe_model *m) {
    for (int f = 0; f < m->n_shards; f++)
        for (size_t i = 0; i < m->shards[f]->n; i++) {
            const st_tensor *t = &m->shards[f]->tensors[i];
            size_t len = strlen(t->name);
            if (t->dtype == ST_U32 || (len > 7 && strcmp(t->name + len - 7, ".scales") == 0))
                return moe_err(MOE_EFORMAT, "%s: already quantized (tensor %s is %s); moe quantize needs a float model",
                               m->dir, t->name, st_dtype_name(t->dtype));
            if (t->dtype != ST_F32 && t->dtype != ST_F16 && t->dtype != ST_BF16)
                return moe_err(MOE_EFORMAT, "%s: not a float model: tensor %s is %s (F32, F16 or BF16 expected)", m->dir,
                               t->name, st_dtype_name(t->dtype));
        }
    return MOE_OK;
}

/* Every input tensor is written, except what mlx-lm also drops: precomputed
 * RoPE frequencies, a tied head, Qwen3-Next's multi-token-prediction layers. */
static moe_status check_all_used(const moe_model *m, const src *srcs, size_t n_src) {
    size_t n = 0;
    for (int f = 0; f < m->n_shards; f++) n += m->shards[f]->n;
    in_tensor *all = calloc(n ? n : 1, sizeof *all);
    if (!all) return moe_err(MOE_ENOMEM, "out of memory");
    n = 0;
    for (int f = 0; f < m->n_shards; f++)
        for (size_t i = 0; i < m->shards[f]->n; i++)
            if (m->shards[f]->tensors[i].nbytes) all[n++].t = &m->shards[f]->tensors[i];
    qsort(all, n, sizeof *all, cmp_addr);
    for (size_t i = 0; i < n_src; i++)
        for (int64_t x = 0; x < (srcs[i].e->E ? srcs[i].e->E : 1); x++) mark(all, n, srcs[i].w[x].data);
    moe_status st = MOE_OK;
    for (size_t i = 0; i < n && !st; i++) {
        const char *nm = all[i].t->name;
        if (all[i].used || strstr(nm, "rotary_emb.inv_freq")) continue;
        if (m->cfg.fam->hybrid && strncmp(nm, "mtp.", 4) == 0) continue; /* Qwen3-Next's multi-token prediction */
        if (m->cfg.pub.tie_word_embeddings && strcmp(nm, "lm_head.weight") == 0) continue;
        st = moe_err(MOE_EFORMAT, "%s: tensor %s is not part of a %s model with this config.json", m->dir, nm,
                     m->cfg.pub.model_type);
    }
    free(all);
    return st;
}

/* ---------------------------------------------------------- directory -- */

static int is_model_file(const char *name) {
    size_t n = strlen(name);
    return strcmp(name, "config.json") == 0 || strcmp(name, "model.safetensors.index.json") == 0 ||
           (n > 12 && strcmp(name + n - 12, ".safetensors") == 0);
}

/* Removes the model files in dir; with keep_out, refuses (MOE_EINVAL) at the first one instead. */
static moe_status clear_model(const char *dir, int keep_out) {
    DIR *d = opendir(dir);
    if (!d) return moe_err(MOE_EIO, "%s: cannot read: %s", dir, strerror(errno));
    moe_status st = MOE_OK;
    struct dirent *de;
    char path[4200];
    while (!st && (de = readdir(d)) != NULL) {
        if (!is_model_file(de->d_name)) continue;
        if (keep_out) st = moe_err(MOE_EINVAL, "%s: already holds a model (%s); --force replaces it", dir, de->d_name);
        else if (!(st = path_join(path, sizeof path, dir, de->d_name)) && unlink(path) != 0)
            st = moe_err(MOE_EIO, "%s: cannot remove: %s", path, strerror(errno));
    }
    closedir(d);
    return st;
}

/* Creates out, refusing the input itself and, unless force, a
 * directory that holds a model; with force the old model files go. */
static moe_status prepare_out(const char *in, const char *out, int force) {
    struct stat si, so;
    if (stat(in, &si) != 0) return moe_err(MOE_EIO, "%s: cannot open: %s", in, strerror(errno));
    if (stat(out, &so) != 0) { /* created with its parents, as mkdir -p */
        char p[4096];
        if (snprintf(p, sizeof p, "%s", out) >= (int)sizeof p) return moe_err(MOE_EINVAL, "%s: path too long", out);
        for (char *c = p + 1; *c; c++) {
            if (*c != '/') continue;
            *c = 0;
            if (mkdir(p, 0755) != 0 && errno != EEXIST) return moe_err(MOE_EIO, "%s: cannot create: %s", p, strerror(errno));
            *c = '/';
        }
        if (mkdir(out, 0755) != 0) return moe_err(MOE_EIO, "%s: cannot create: %s", out, strerror(errno));
        return MOE_OK;
    }
    if (!S_ISDIR(so.st_mode)) return moe_err(MOE_EINVAL, "%s: exists and is not a directory", out);
    if (so.st_dev == si.st_dev && so.st_ino == si.st_ino)
        return moe_err(MOE_EINVAL, "%s: the output directory is the input directory", out);
    moe_status st = clear_model(out, !force);
    if (!st && access(out, W_OK) != 0) st = moe_err(MOE_EIO, "%s: not writable: %s", out, strerror(errno));
    return st;
}

static moe_status copy_file(const char *from, const char *to) {
    int in = open(from, O_RDONLY | O_CLOEXEC);
    if (in < 0) return moe_err(MOE_EIO, "%s: cannot open: %s", from, strerror(errno));
    int out = open(to, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (out < 0) {
        close(in);
        return moe_err(MOE_EIO, "%s: cannot create: %s", to, strerror(errno));
    }
    char buf[1 << 16];
    ssize_t r;
    int ok = 1;
    while (ok && (r = read(in, buf, sizeof buf)) != 0) {
        ok = r > 0;
        for (ssize_t w = 0, k; ok && w < r; w += k) ok = (k = write(out, buf + w, (size_t)(r - w))) > 0;
    }
    close(in);
    if (close(out) != 0) ok = 0;
    return ok ? MOE_OK : moe_err(MOE_EIO, "copying %s to %s: %s", from, to, strerror(errno));
}

/* The input directory's other files: tokenizer, generation config, template, ... */
static moe_status copy_others(const char *in, const char *out) {
    DIR *d = opendir(in);
    if (!d) return moe_err(MOE_EIO, "%s: cannot read: %s", in, strerror(errno));
    moe_status st = MOE_OK;
    struct dirent *de;
    char from[4200], to[4200];
    while (!st && (de = readdir(d)) != NULL) {
        struct stat sb;
        if (is_model_file(de->d_name)) continue;
        if ((st = path_join(from, sizeof from, in, de->d_name)) || (st = path_join(to, sizeof to, out, de->d_name))) break;
        if (stat(from, &sb) == 0 && S_ISREG(sb.st_mode)) st = copy_file(from, to);
    }
    closedir(d);
    return st;
}

/* config.json: the input's text with "quantization" and
 * "quantization_config" added before its closing brace, so every other
 * value keeps its spelling. */
static moe_status write_config(const char *text, const ml_layout *l, const char *path) {
    json_t *q = ml_layout_quant_json(l);
    const char *nl = strchr(text, '\n');
    int ind = 0; /* the file's own indentation, read from its second line */
    while (nl && nl[1 + ind] == ' ') ind++;
    char *qs = q ? json_dumps(q, JSON_INDENT(ind ? ind : 2) | JSON_PRESERVE_ORDER) : NULL;
    json_decref(q);
    if (!qs) return moe_err(MOE_ENOMEM, "out of memory");
    size_t end = strlen(text);
    while (end > 0 && text[end - 1] != '}') end--;
    size_t body = end ? end - 1 : 0; /* the closing brace's offset */
    while (body > 0 && (text[body - 1] == ' ' || text[body - 1] == '\n' || text[body - 1] == '\r' || text[body - 1] == '\t')) body--;
    int empty = body > 0 && text[body - 1] == '{';
    FILE *f = fopen(path, "w");
    if (!f) {
        free(qs);
        return moe_err(MOE_EIO, "%s: cannot create: %s", path, strerror(errno));
    }
    fwrite(text, 1, body, f);
    const char *keys[2] = {"quantization", "quantization_config"};
    for (int k = 0; k < 2; k++) {
        fprintf(f, "%s\n%*s\"%s\": ", k || !empty ? "," : "", ind, "", keys[k]);
        for (const char *c = qs; *c; c++) { /* nested one level deeper */
            fputc(*c, f);
            if (*c == '\n') fprintf(f, "%*s", ind, "");
        }
    }
    fputs("\n}\n", f);
    free(qs);
    int bad = ferror(f);
    if (fclose(f) != 0 || bad) return moe_err(MOE_EIO, "%s: write failed", path);
    return MOE_OK;
}

/* ---------------------------------------------------------------- run -- */

typedef struct job {
    moe_model *m;
    char *config;          /* the input's config.json text */
    ml_layout layout;
    src *srcs;             /* [layout.n] */
    st_dtype *dtypes;      /* [layout.n] dtype each entry is written in */
    ml_tensors tensors;
    out_ctx *ctx;          /* [tensors.n] */
    writer wr;
} job;

static void job_free(job *j) {
    for (size_t i = 0; j->srcs && i < j->layout.n; i++) free(j->srcs[i].w);
    free(j->srcs);
    free(j->dtypes);
    free(j->ctx);
    for (int t = 0; j->wr.sc && t < pool_threads(j->wr.pool); t++) {
        free(j->wr.sc[t].f);
        free(j->wr.sc[t].cast);
    }
    free(j->wr.sc);
    pool_free(j->wr.pool);
    free(j->wr.row);
    free(j->wr.cs);
    free(j->wr.cb);
    ml_tensors_free(&j->tensors);
    ml_layout_free(&j->layout);
    free(j->config);
    moe_model_free(j->m);
}

/* Reads and checks the input; plans every output tensor. */
static moe_status plan(job *j, const char *in_dir, const moe_quantize_params *p) {
    char path[4200];
    moe_status st;
    if ((st = path_join(path, sizeof path, in_dir, "config.json")) || (st = file_read_all(path, 16u << 20, &j->config, NULL)))
        return st;
    json_t *cfg = json_loads(j->config, 0, NULL);
    if (cfg && (json_object_get(cfg, "quantization") || json_object_get(cfg, "quantization_config"))) {
        json_decref(cfg);
        return moe_err(MOE_EFORMAT, "%s: already quantized (config.json has a quantization entry); moe quantize needs a float model", in_dir);
    }
    json_t *td = cfg ? json_object_get(cfg, "torch_dtype") : NULL;
    const char *tds = json_is_string(td) ? json_string_value(td) : "";
    int cast = !strcmp(tds, "bfloat16") ? ST_BF16 : !strcmp(tds, "float16") ? ST_F16 : !strcmp(tds, "float32") ? ST_F32 : -1;
    json_decref(cfg);
    moe_load_params lp;
    moe_load_params_defaults(&lp);
    lp.load = MOE_LOAD_MMAP; /* each weight is read once, to quantize it: a copy would only cost */
    if ((st = moe_model_load(in_dir, &lp, &j->m)) || (st = check_float(j->m))) return st;
    const model_config *c = &j->m->cfg;
    if ((st = ml_layout_build(c, p->bits, p->group_size, !c->pub.tie_word_embeddings, &j->layout))) return st;
    size_t n = j->layout.n;
    j->srcs = calloc(n, sizeof *j->srcs);
    j->dtypes = calloc(n, sizeof *j->dtypes);
    if (!j->srcs || !j->dtypes) return moe_err(MOE_ENOMEM, "out of memory");
    int64_t max_cols = 1;
    size_t max_sb = 1; /* bytes of the largest entry's scales */
    int hub = c->fam->centred_norms && hub_norms(j->m);
    for (size_t i = 0; i < n; i++) {
        const ml_entry *e = &j->layout.e[i];
        if ((st = resolve(j->m, e, &j->srcs[i]))) return st;
        j->srcs[i].shift = e->shift && hub;
        j->srcs[i].in = st_of(j->srcs[i].w[0].fmt);
        j->srcs[i].out = j->dtypes[i] = cast >= 0 ? (st_dtype)cast : j->srcs[i].in;
        if (e->cols > max_cols) max_cols = e->cols;
        size_t sb = e->bits ? (size_t)(e->E ? e->E : 1) * (size_t)e->rows * (size_t)(e->cols / e->group) * 4 : 0;
        if (sb > max_sb) max_sb = sb;
    }
    if ((st = check_all_used(j->m, j->srcs, n)) || (st = ml_tensors_build(&j->layout, j->dtypes, &j->tensors))) return st;
    writer *wr = &j->wr;
    if (!(wr->pool = pool_new(0))) return moe_err(MOE_ENOMEM, "cannot start threads");
    j->ctx = calloc(j->tensors.n ? j->tensors.n : 1, sizeof *j->ctx);
    wr->sc = calloc((size_t)pool_threads(wr->pool), sizeof *wr->sc);
    wr->row = malloc((size_t)max_cols * 4);
    wr->cs = malloc(max_sb);
    wr->cb = malloc(max_sb);
    if (!j->ctx || !wr->sc || !wr->row || !wr->cs || !wr->cb) return moe_err(MOE_ENOMEM, "out of memory");
    for (int t = 0; t < pool_threads(wr->pool); t++)
        if (!(wr->sc[t].f = malloc((size_t)max_cols * sizeof(float))) || !(wr->sc[t].cast = malloc((size_t)max_cols * 4)))
            return moe_err(MOE_ENOMEM, "out of memory");
    for (size_t i = 0; i < j->tensors.n; i++) {
        st_out_tensor *t = &j->tensors.t[i];
        out_ctx *o = &j->ctx[i];
        const ml_entry *e = &j->layout.e[j->tensors.entry[i]];
        o->s = &j->srcs[j->tensors.entry[i]];
        o->what = j->tensors.what[i];
        /* a float entry's rows are its input's: a conv weight [C, K, 1] has C rows of K */
        o->row_bytes = (size_t)(e->bits ? t->shape[t->ndim - 1] : e->cols) * st_dtype_size(t->dtype);
        o->sb_row = e->bits ? (size_t)(e->cols / e->group) * st_dtype_size(o->s->out) : 0;
        o->wr = wr;
        t->fill = fill;
        t->ctx = o;
    }
    return MOE_OK;
}

static moe_status check_space(const char *dir, const ml_tensors *t) {
    uint64_t need = 1 << 20;
    for (size_t i = 0; i < t->n; i++) need += ml_tensor_bytes(&t->t[i]);
    struct statvfs vs;
    if (statvfs(dir, &vs) != 0) return MOE_OK; /* no answer: let the writes tell */
    uint64_t avail = (uint64_t)vs.f_bavail * vs.f_frsize;
    if (avail < need)
        return moe_err(MOE_EIO, "%s: the quantized model needs %.2f GB but only %.2f GB are free", dir, (double)need / 1e9,
                       (double)avail / 1e9);
    return MOE_OK;
}

moe_status moe_quantize(const char *in_dir, const char *out_dir, const moe_quantize_params *p) {
    moe_quantize_params def;
    if (!p) {
        moe_quantize_params_defaults(&def);
        p = &def;
    }
    if (!in_dir || !out_dir) return moe_err(MOE_EINVAL, "quantize: an input and an output directory are needed");
    if (!mlxq_valid(p->bits, p->group_size))
        return moe_err(MOE_EINVAL, "quantize: %d bits in groups of %d is not supported "
                                   "(bits 2, 3, 4, 5, 6 or 8; group size 32, 64 or 128)", p->bits, p->group_size);
    job j;
    memset(&j, 0, sizeof j);
    char path[4200];
    moe_status st = plan(&j, in_dir, p);
    if (!st) st = prepare_out(in_dir, out_dir, p->force);
    if (!st) {
        if (!(st = check_space(out_dir, &j.tensors)))
            st = ml_write(out_dir, j.tensors.t, j.tensors.n, ML_SHARD_BYTES, ml_layout_params(&j.layout), p->progress,
                          p->progress_ctx);
        if (!st && !(st = path_join(path, sizeof path, out_dir, "config.json"))) st = write_config(j.config, &j.layout, path);
        if (!st) st = copy_others(in_dir, out_dir);
        if (st) { /* leave no half model behind (what was there went with --force) */
            char msg[1024];
            snprintf(msg, sizeof msg, "%s", moe_errmsg());
            clear_model(out_dir, 0);
            st = moe_err(st, "%s", msg);
        }
    }
    job_free(&j);
    return st;
}
