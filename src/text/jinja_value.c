/* jinja_value.c — the arena, string builders, and the values a template
 * computes with, behaving as the Python objects jinja2 would hold: equality,
 * ordering, truth, str() and repr() (a list renders as "['a', 1]", a float as
 * Python's shortest repr), and json.dumps for the `tojson` filter. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../base/err.h"
#include "jinja_impl.h"

/* ---------------------------------------------------------------- errors -- */

_Noreturn void jx_throw(jx_env *env, moe_status st, const char *fmt, ...) {
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    env->st = moe_err(st, "%s", msg);
    longjmp(env->jb, 1);
}

/* ----------------------------------------------------------------- arena -- */

struct jx_chunk {
    jx_chunk *next;
    size_t used, cap;
    _Alignas(16) unsigned char data[];
};

enum { CHUNK_MIN = 64 * 1024 };

void *jx_alloc(jx_arena *a, size_t n) {
    n = (n + 15) & ~(size_t)15;
    if (n == 0) n = 16;
    jx_chunk *c = a->head;
    if (!c || c->cap - c->used < n) {
        size_t cap = n > CHUNK_MIN ? n : CHUNK_MIN;
        if (c && cap < c->cap * 2 && c->cap * 2 <= 16u * 1024 * 1024) cap = c->cap * 2;
        if (cap > a->limit || a->total > a->limit - cap)
            jx_throw(a->env, MOE_ENOMEM, "template needs more than %zu MiB of memory", a->limit >> 20);
        c = malloc(sizeof *c + cap);
        if (!c) jx_throw(a->env, MOE_ENOMEM, "out of memory (%zu bytes) rendering a template", cap);
        c->next = a->head;
        c->used = 0;
        c->cap = cap;
        a->head = c;
        a->total += cap;
    }
    void *p = c->data + c->used;
    c->used += n;
    memset(p, 0, n);
    return p;
}

void *jx_grow(jx_arena *a, void *p, size_t old, size_t n) {
    if (n <= old) return p;
    jx_chunk *c = a->head;
    size_t old_r = (old + 15) & ~(size_t)15, n_r = (n + 15) & ~(size_t)15;
    if (p && c && (unsigned char *)p + old_r == c->data + c->used && c->cap - (c->used - old_r) >= n_r) {
        memset(c->data + c->used, 0, n_r - old_r);
        c->used += n_r - old_r;
        return p;
    }
    void *q = jx_alloc(a, n);
    if (old) memcpy(q, p, old);
    return q;
}

char *jx_memdup(jx_arena *a, const void *p, size_t n) {
    char *q = jx_alloc(a, n + 1);
    if (n) memcpy(q, p, n);
    return q;
}

void jx_arena_release(jx_arena *a) {
    jx_chunk *c = a->head;
    while (c) {
        jx_chunk *next = c->next;
        free(c);
        c = next;
    }
    a->head = NULL;
    a->total = 0;
}

/* ------------------------------------------------------- string builder -- */

void jx_sb_put(jx_sb *b, const char *p, size_t n) {
    if (n == 0) return;
    if (b->cap - b->n <= n) {
        size_t cap = b->cap ? b->cap : 64;
        while (cap - b->n <= n)
            cap *= 2;
        b->p = jx_grow(b->a, b->p, b->cap, cap);
        b->cap = cap;
    }
    memcpy(b->p + b->n, p, n);
    b->n += n;
    b->p[b->n] = 0;
}

void jx_sb_putc(jx_sb *b, char c) { jx_sb_put(b, &c, 1); }
void jx_sb_puts(jx_sb *b, const char *s) { jx_sb_put(b, s, strlen(s)); }

void jx_sb_printf(jx_sb *b, const char *fmt, ...) {
    char buf[256];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    if (n < 0) return;
    if ((size_t)n < sizeof buf) {
        jx_sb_put(b, buf, (size_t)n);
        return;
    }
    char *big = jx_alloc(b->a, (size_t)n + 1);
    va_start(ap, fmt);
    vsnprintf(big, (size_t)n + 1, fmt, ap);
    va_end(ap);
    jx_sb_put(b, big, (size_t)n);
}

void jx_sb_put_cp(jx_sb *b, int32_t cp) {
    char u[4];
    jx_sb_put(b, u, ju_encode(cp, u));
}

/* ------------------------------------------------------ lists and dicts -- */

jv jv_new_list(jx_render *R, jv_kind kind, size_t cap) {
    jv v = {.kind = kind};
    v.l = jx_alloc(&R->arena, sizeof *v.l);
    if (cap) {
        v.l->v = jx_alloc(&R->arena, cap * sizeof(jv));
        v.l->cap = cap;
    }
    return v;
}

void jv_list_push(jx_render *R, jv list, jv item) {
    jv_list *l = list.l;
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 8;
        l->v = jx_grow(&R->arena, l->v, l->cap * sizeof(jv), cap * sizeof(jv));
        l->cap = cap;
    }
    l->v[l->n++] = item;
}

jv jv_new_dict(jx_render *R, jv_kind kind, size_t cap) {
    jv v = {.kind = kind};
    v.d = jx_alloc(&R->arena, sizeof *v.d);
    if (cap) {
        v.d->k = jx_alloc(&R->arena, cap * sizeof(jv));
        v.d->v = jx_alloc(&R->arena, cap * sizeof(jv));
        v.d->cap = cap;
    }
    return v;
}

jv *jv_dict_get(jv dict, jv key) {
    jv_dict *d = dict.d;
    if (key.kind == JV_STR) return jv_dict_gets(dict, key.s.p, key.s.n);
    for (size_t i = 0; i < d->n; i++)
        if (jv_eq(d->k[i], key)) return &d->v[i];
    return NULL;
}

jv *jv_dict_gets(jv dict, const char *key, size_t n) {
    jv_dict *d = dict.d;
    for (size_t i = 0; i < d->n; i++)
        if (d->k[i].kind == JV_STR && d->k[i].s.n == n && memcmp(d->k[i].s.p, key, n) == 0) return &d->v[i];
    return NULL;
}

void jv_dict_set(jx_render *R, jv dict, jv key, jv val) {
    jv *slot = jv_dict_get(dict, key);
    if (slot) {
        *slot = val;
        return;
    }
    jv_dict *d = dict.d;
    if (d->n == d->cap) {
        size_t cap = d->cap ? d->cap * 2 : 8;
        d->k = jx_grow(&R->arena, d->k, d->cap * sizeof(jv), cap * sizeof(jv));
        d->v = jx_grow(&R->arena, d->v, d->cap * sizeof(jv), cap * sizeof(jv));
        d->cap = cap;
    }
    d->k[d->n] = key;
    d->v[d->n] = val;
    d->n++;
}

jv jv_from_json(jx_render *R, const json_t *j) {
    switch (json_typeof(j)) {
    case JSON_OBJECT: {
        jv d = jv_new_dict(R, JV_DICT, json_object_size(j));
        const char *k;
        json_t *v;
        /* json_object_foreach wants a non-const object; iteration does not modify it */
        json_object_foreach((json_t *)j, k, v) jv_dict_set(R, d, jv_str(k, strlen(k)), jv_from_json(R, v));
        return d;
    }
    case JSON_ARRAY: {
        jv l = jv_new_list(R, JV_LIST, json_array_size(j));
        size_t i;
        json_t *v;
        json_array_foreach(j, i, v) jv_list_push(R, l, jv_from_json(R, v));
        return l;
    }
    case JSON_STRING: return jv_str(json_string_value(j), json_string_length(j));
    case JSON_INTEGER: return jv_int(json_integer_value(j));
    case JSON_REAL: return jv_float(json_real_value(j));
    case JSON_TRUE: return jv_bool(1);
    case JSON_FALSE: return jv_bool(0);
    default: return jv_none();
    }
}

/* ------------------------------------------------------ Python semantics -- */

const char *jv_type_name(jv v) {
    switch (v.kind) {
    case JV_UNDEF: return "Undefined";
    case JV_NONE: return "NoneType";
    case JV_BOOL: return "bool";
    case JV_INT: return "int";
    case JV_FLOAT: return "float";
    case JV_STR: return "str";
    case JV_LIST: return "list";
    case JV_TUPLE: return "tuple";
    case JV_DICT: return "dict";
    case JV_NS: return "Namespace";
    case JV_FUNC: return v.fn->kind == F_MACRO ? "Macro" : "builtin_function_or_method";
    case JV_LOOP: return "LoopContext";
    }
    return "object";
}

int jv_truthy(jv v) {
    switch (v.kind) {
    case JV_UNDEF:
    case JV_NONE: return 0;
    case JV_BOOL: return v.b;
    case JV_INT: return v.i != 0;
    case JV_FLOAT: return v.f != 0.0;
    case JV_STR: return v.s.n != 0;
    case JV_LIST:
    case JV_TUPLE: return v.l->n != 0;
    case JV_DICT: return v.d->n != 0;
    default: return 1;
    }
}

double jv_num(jv v) {
    switch (v.kind) {
    case JV_BOOL: return v.b;
    case JV_INT: return (double)v.i;
    case JV_FLOAT: return v.f;
    default: return 0;
    }
}

static int64_t num_int(jv v) { return v.kind == JV_BOOL ? v.b : v.i; }

enum { MAX_NEST = 200 }; /* nesting of values walked by ==, <, str() and tojson */

static int eq_depth(jv a, jv b, int depth);

int jv_eq(jv a, jv b) { return eq_depth(a, b, 0); }

/* Python's ==; past MAX_NEST levels (a namespace that holds itself) values compare unequal */
static int eq_depth(jv a, jv b, int depth) {
    if (depth > MAX_NEST) return 0;
    if (jv_is_num(a) && jv_is_num(b)) {
        if (a.kind != JV_FLOAT && b.kind != JV_FLOAT) return num_int(a) == num_int(b);
        return jv_num(a) == jv_num(b);
    }
    if (a.kind != b.kind) return 0;
    switch (a.kind) {
    case JV_UNDEF:
    case JV_NONE: return 1;
    case JV_STR: return a.s.n == b.s.n && memcmp(a.s.p, b.s.p, a.s.n) == 0;
    case JV_LIST:
    case JV_TUPLE:
        if (a.l->n != b.l->n) return 0;
        for (size_t i = 0; i < a.l->n; i++)
            if (!eq_depth(a.l->v[i], b.l->v[i], depth + 1)) return 0;
        return 1;
    case JV_DICT:
        if (a.d->n != b.d->n) return 0;
        for (size_t i = 0; i < a.d->n; i++) {
            jv *o = jv_dict_get(b, a.d->k[i]);
            if (!o || !eq_depth(a.d->v[i], *o, depth + 1)) return 0;
        }
        return 1;
    case JV_NS: return a.d == b.d;
    case JV_FUNC: return a.fn == b.fn;
    case JV_LOOP: return a.loop == b.loop;
    default: return 0;
    }
}

static int cmp_depth(jx_render *R, jv a, jv b, int depth);

int jv_cmp(jx_render *R, jv a, jv b) { return cmp_depth(R, a, b, 0); }

static int cmp_depth(jx_render *R, jv a, jv b, int depth) {
    if (depth > MAX_NEST) jx_fail(R, "maximum recursion depth exceeded in comparison");
    if (jv_is_num(a) && jv_is_num(b)) {
        if (a.kind != JV_FLOAT && b.kind != JV_FLOAT) return (num_int(a) > num_int(b)) - (num_int(a) < num_int(b));
        double x = jv_num(a), y = jv_num(b);
        return (x > y) - (x < y);
    }
    if (a.kind == JV_STR && b.kind == JV_STR) {
        /* UTF-8 byte order is code point order */
        size_t n = a.s.n < b.s.n ? a.s.n : b.s.n;
        int c = n ? memcmp(a.s.p, b.s.p, n) : 0;
        if (c) return c;
        return (a.s.n > b.s.n) - (a.s.n < b.s.n);
    }
    if (a.kind == b.kind && jv_is_seq(a)) {
        size_t n = a.l->n < b.l->n ? a.l->n : b.l->n;
        for (size_t i = 0; i < n; i++)
            if (!jv_eq(a.l->v[i], b.l->v[i])) return cmp_depth(R, a.l->v[i], b.l->v[i], depth + 1);
        return (a.l->n > b.l->n) - (a.l->n < b.l->n);
    }
    if (a.kind == JV_UNDEF) jx_undef_error(R, a);
    if (b.kind == JV_UNDEF) jx_undef_error(R, b);
    jx_fail(R, "'<' not supported between instances of '%s' and '%s'", jv_type_name(a), jv_type_name(b));
}

/* Python's repr(float): the shortest digits that read back to the same
 * double; positional when the exponent is in [-5, 16), else 1e+16 style. */
void jx_float_repr(double f, char buf[40]) {
    if (isnan(f)) {
        strcpy(buf, "nan");
        return;
    }
    if (isinf(f)) {
        strcpy(buf, f < 0 ? "-inf" : "inf");
        return;
    }
    if (f == 0) {
        strcpy(buf, signbit(f) ? "-0.0" : "0.0");
        return;
    }
    char e[40];
    for (int prec = 0; prec < 17; prec++) {
        snprintf(e, sizeof e, "%.*e", prec, f);
        if (strtod(e, NULL) == f) break;
    }
    /* e: [-]d[.ddd]e[+-]xx; split into sign, digits, exponent */
    const char *p = e;
    int neg = 0;
    if (*p == '-') neg = 1, p++;
    char digits[24];
    int nd = 0;
    for (; *p && *p != 'e'; p++)
        if (*p != '.') digits[nd++] = *p;
    while (nd > 1 && digits[nd - 1] == '0')
        nd--;
    int exp10 = atoi(p + 1);
    char *o = buf;
    if (neg) *o++ = '-';
    if (exp10 < -4 || exp10 >= 16) {
        *o++ = digits[0];
        if (nd > 1) {
            *o++ = '.';
            for (int i = 1; i < nd; i++)
                *o++ = digits[i];
        }
        sprintf(o, "e%c%02d", exp10 < 0 ? '-' : '+', exp10 < 0 ? -exp10 : exp10);
        return;
    }
    if (exp10 < 0) {
        *o++ = '0';
        *o++ = '.';
        for (int i = 0; i < -exp10 - 1; i++)
            *o++ = '0';
        for (int i = 0; i < nd; i++)
            *o++ = digits[i];
    } else {
        for (int i = 0; i <= exp10; i++)
            *o++ = i < nd ? digits[i] : '0';
        *o++ = '.';
        if (nd > exp10 + 1)
            for (int i = exp10 + 1; i < nd; i++)
                *o++ = digits[i];
        else
            *o++ = '0';
    }
    *o = 0;
}

/* Python's repr(str): single quotes unless the text has ' and no ". */
static void write_str_repr(jx_sb *b, const char *p, size_t n) {
    char q = '\'';
    if (memchr(p, '\'', n) && !memchr(p, '"', n)) q = '"';
    jx_sb_putc(b, q);
    size_t i = 0;
    while (i < n) {
        size_t adv;
        int32_t cp = ju_decode(p + i, n - i, &adv);
        if (cp == q || cp == '\\') {
            jx_sb_putc(b, '\\');
            jx_sb_putc(b, (char)cp);
        } else if (cp == '\n')
            jx_sb_puts(b, "\\n");
        else if (cp == '\r')
            jx_sb_puts(b, "\\r");
        else if (cp == '\t')
            jx_sb_puts(b, "\\t");
        else if (cp < 0x20 || (cp >= 0x7f && cp < 0xa1) || cp == 0xad)
            jx_sb_printf(b, "\\x%02x", cp);
        else if ((cp >= 0x2000 && cp <= 0x200f) || (cp >= 0x2028 && cp <= 0x202f) || (cp >= 0x205f && cp <= 0x206f) ||
                 cp == 0x3000 || cp == 0xfeff || (cp >= 0xd800 && cp <= 0xdfff))
            jx_sb_printf(b, "\\u%04x", cp);
        else
            jx_sb_put(b, p + i, adv);
        i += adv;
    }
    jx_sb_putc(b, q);
}

static void write_value(jx_render *R, jx_sb *b, jv v, int repr, int depth) {
    char num[40];
    if (depth > MAX_NEST) jx_fail(R, "maximum recursion depth exceeded while getting the repr of an object");
    switch (v.kind) {
    case JV_UNDEF:
        if (repr) jx_sb_puts(b, "Undefined");
        return;
    case JV_NONE: jx_sb_puts(b, "None"); return;
    case JV_BOOL: jx_sb_puts(b, v.b ? "True" : "False"); return;
    case JV_INT: jx_sb_printf(b, "%lld", (long long)v.i); return;
    case JV_FLOAT:
        jx_float_repr(v.f, num);
        jx_sb_puts(b, num);
        return;
    case JV_STR:
        if (repr)
            write_str_repr(b, v.s.p, v.s.n);
        else
            jx_sb_put(b, v.s.p, v.s.n);
        return;
    case JV_LIST:
    case JV_TUPLE:
        jx_sb_putc(b, v.kind == JV_LIST ? '[' : '(');
        for (size_t i = 0; i < v.l->n; i++) {
            if (i) jx_sb_puts(b, ", ");
            write_value(R, b, v.l->v[i], 1, depth + 1);
        }
        if (v.kind == JV_TUPLE && v.l->n == 1) jx_sb_putc(b, ',');
        jx_sb_putc(b, v.kind == JV_LIST ? ']' : ')');
        return;
    case JV_NS:
        jx_sb_puts(b, "<Namespace ");
        /* fallthrough */
    case JV_DICT:
        jx_sb_putc(b, '{');
        for (size_t i = 0; i < v.d->n; i++) {
            if (i) jx_sb_puts(b, ", ");
            write_value(R, b, v.d->k[i], 1, depth + 1);
            jx_sb_puts(b, ": ");
            write_value(R, b, v.d->v[i], 1, depth + 1);
        }
        jx_sb_putc(b, '}');
        if (v.kind == JV_NS) jx_sb_putc(b, '>');
        return;
    case JV_FUNC:
        if (v.fn->kind == F_MACRO)
            jx_sb_printf(b, "<Macro '%s'>", v.fn->name);
        else
            jx_sb_printf(b, "<built-in method %s>", v.fn->name);
        return;
    case JV_LOOP:
        jx_sb_printf(b, "<LoopContext %lld/%lld>", (long long)v.loop->index0 + 1, (long long)v.loop->length);
        return;
    }
}

void jv_write_str(jx_render *R, jx_sb *b, jv v) { write_value(R, b, v, 0, 0); }
void jv_write_repr(jx_render *R, jx_sb *b, jv v) { write_value(R, b, v, 1, 0); }

jv jv_to_str(jx_render *R, jv v) {
    if (v.kind == JV_STR) return v;
    if (v.kind == JV_UNDEF) return jv_str("", 0);
    jx_sb b = {.a = &R->arena};
    write_value(R, &b, v, 0, 0);
    return jv_str(b.p ? b.p : "", b.n);
}

/* ------------------------------------------------------------ json.dumps -- */

static void json_quote(jx_sb *b, const char *p, size_t n, int ensure_ascii) {
    jx_sb_putc(b, '"');
    size_t i = 0;
    while (i < n) {
        size_t adv;
        int32_t cp = ju_decode(p + i, n - i, &adv);
        switch (cp) {
        case '"': jx_sb_puts(b, "\\\""); break;
        case '\\': jx_sb_puts(b, "\\\\"); break;
        case '\n': jx_sb_puts(b, "\\n"); break;
        case '\r': jx_sb_puts(b, "\\r"); break;
        case '\t': jx_sb_puts(b, "\\t"); break;
        case '\b': jx_sb_puts(b, "\\b"); break;
        case '\f': jx_sb_puts(b, "\\f"); break;
        default:
            if (cp < 0x20)
                jx_sb_printf(b, "\\u%04x", cp);
            else if (cp < 0x80 || !ensure_ascii)
                jx_sb_put(b, p + i, adv);
            else if (cp < 0x10000)
                jx_sb_printf(b, "\\u%04x", cp);
            else {
                int32_t c = cp - 0x10000;
                jx_sb_printf(b, "\\u%04x\\u%04x", 0xd800 + (c >> 10), 0xdc00 + (c & 0x3ff));
            }
        }
        i += adv;
    }
    jx_sb_putc(b, '"');
}

static void json_newline(jx_sb *b, const jx_json_opts *o, int level) {
    jx_sb_putc(b, '\n');
    for (int i = 0; i < level; i++)
        jx_sb_put(b, o->indent, o->indent_n);
}

/* A dict key as json.dumps converts it: str as is; int, float, bool, None to text. */
static jv json_key(jx_render *R, jv k) {
    char num[40];
    switch (k.kind) {
    case JV_STR: return k;
    case JV_BOOL: return jv_str(k.b ? "true" : "false", k.b ? 4 : 5);
    case JV_NONE: return jv_str("null", 4);
    case JV_INT:
    case JV_FLOAT: {
        if (k.kind == JV_INT)
            snprintf(num, sizeof num, "%lld", (long long)k.i);
        else
            jx_float_repr(k.f, num);
        return jv_str(jx_memdup(&R->arena, num, strlen(num)), strlen(num));
    }
    default: jx_fail(R, "keys must be str, int, float, bool or None, not %s", jv_type_name(k));
    }
}

static int key_cmp(const void *x, const void *y) {
    const jv *a = x, *b = y;
    size_t n = a[0].s.n < b[0].s.n ? a[0].s.n : b[0].s.n;
    int c = n ? memcmp(a[0].s.p, b[0].s.p, n) : 0;
    return c ? c : (a[0].s.n > b[0].s.n) - (a[0].s.n < b[0].s.n);
}

void jv_write_json(jx_render *R, jx_sb *b, jv v, const jx_json_opts *o, int level) {
    const char *item_sep = o->item_sep ? o->item_sep : (o->indent ? "," : ", ");
    const char *key_sep = o->key_sep ? o->key_sep : ": ";
    char num[40];
    if (level > MAX_NEST) jx_fail(R, "maximum recursion depth exceeded while encoding a JSON object");
    switch (v.kind) {
    case JV_NONE: jx_sb_puts(b, "null"); return;
    case JV_BOOL: jx_sb_puts(b, v.b ? "true" : "false"); return;
    case JV_INT: jx_sb_printf(b, "%lld", (long long)v.i); return;
    case JV_FLOAT:
        if (isnan(v.f))
            jx_sb_puts(b, "NaN");
        else if (isinf(v.f))
            jx_sb_puts(b, v.f < 0 ? "-Infinity" : "Infinity");
        else {
            jx_float_repr(v.f, num);
            jx_sb_puts(b, num);
        }
        return;
    case JV_STR: json_quote(b, v.s.p, v.s.n, o->ensure_ascii); return;
    case JV_LIST:
    case JV_TUPLE:
        if (v.l->n == 0) {
            jx_sb_puts(b, "[]");
            return;
        }
        jx_sb_putc(b, '[');
        for (size_t i = 0; i < v.l->n; i++) {
            if (i) jx_sb_puts(b, item_sep);
            if (o->indent) json_newline(b, o, level + 1);
            jv_write_json(R, b, v.l->v[i], o, level + 1);
        }
        if (o->indent) json_newline(b, o, level);
        jx_sb_putc(b, ']');
        return;
    case JV_DICT: {
        if (v.d->n == 0) {
            jx_sb_puts(b, "{}");
            return;
        }
        /* pairs of (key as text, value), sorted when asked */
        jv *kv = jx_alloc(&R->arena, v.d->n * 2 * sizeof(jv));
        for (size_t i = 0; i < v.d->n; i++) {
            kv[2 * i] = json_key(R, v.d->k[i]);
            kv[2 * i + 1] = v.d->v[i];
        }
        if (o->sort_keys) qsort(kv, v.d->n, 2 * sizeof(jv), key_cmp);
        jx_sb_putc(b, '{');
        for (size_t i = 0; i < v.d->n; i++) {
            if (i) jx_sb_puts(b, item_sep);
            if (o->indent) json_newline(b, o, level + 1);
            json_quote(b, kv[2 * i].s.p, kv[2 * i].s.n, o->ensure_ascii);
            jx_sb_puts(b, key_sep);
            jv_write_json(R, b, kv[2 * i + 1], o, level + 1);
        }
        if (o->indent) json_newline(b, o, level);
        jx_sb_putc(b, '}');
        return;
    }
    default: jx_fail(R, "Object of type %s is not JSON serializable", jv_type_name(v));
    }
}
