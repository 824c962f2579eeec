/* jinja_eval.c — runs a parsed template: scopes, statements, expressions,
 * jinja2's (sandboxed) attribute and item lookup, calls and macros, and
 * jinja_render() itself.
 *
 * Scoping as jinja2 has it: a for loop's body, a macro, a call or filter block
 * and `with` get their own scope, so `set` inside a loop does not leak out (a
 * namespace() is how templates carry state across iterations); `if` does not.
 * Lookup goes from the innermost scope out to the template's top level, then
 * the caller's context, then the globals (range, namespace, raise_exception,
 * ...). Python operators keep Python's meaning: 7 / 2 is 3.5, -7 // 2 is -4,
 * "a" * 3 is "aaa", `and` / `or` return an operand. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../base/err.h"
#include "jinja_impl.h"

enum { FLOW_NORMAL, FLOW_BREAK, FLOW_CONTINUE };
enum { MAX_CALL_DEPTH = 100, MAX_NEST = 1000 };
static const size_t RENDER_MEMORY_LIMIT = (size_t)256 << 20; /* far beyond any real prompt */

/* ---------------------------------------------------------------- errors -- */

_Noreturn void jx_fail(jx_render *R, const char *fmt, ...) {
    char msg[900];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    jx_throw(&R->env, MOE_EINVAL, "line %d: %s", R->line, msg);
}

_Noreturn void jx_unsupported(jx_render *R, const char *fmt, ...) {
    char msg[900];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    jx_throw(&R->env, MOE_EUNSUPPORTED, "line %d: %s", R->line, msg);
}

_Noreturn void jx_undef_error(jx_render *R, jv u) { jx_fail(R, "%s", u.why ? u.why : "undefined value"); }

char *jx_strf(jx_render *R, const char *fmt, ...) {
    char tmp[256];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n < 0) n = 0;
    if ((size_t)n < sizeof tmp) return jx_memdup(&R->arena, tmp, (size_t)n);
    char *s = jx_alloc(&R->arena, (size_t)n + 1);
    va_start(ap, fmt);
    vsnprintf(s, (size_t)n + 1, fmt, ap);
    va_end(ap);
    return s;
}

/* jinja2's object_type_repr: "dict object", "None", ... */
static const char *type_repr(jv obj) {
    switch (obj.kind) {
    case JV_NONE: return "None";
    case JV_NS: return "jinja2.utils.Namespace object";
    case JV_LOOP: return "jinja2.runtime.LoopContext object";
    case JV_FUNC: return obj.fn->kind == F_MACRO ? "jinja2.runtime.Macro object" : "builtin_function_or_method object";
    case JV_DICT: return "dict object";
    case JV_LIST: return "list object";
    case JV_TUPLE: return "tuple object";
    case JV_STR: return "str object";
    case JV_INT: return "int object";
    case JV_FLOAT: return "float object";
    case JV_BOOL: return "bool object";
    default: return "object";
    }
}

static char *repr_of(jx_render *R, jv v) {
    jx_sb b = {.a = &R->arena};
    jv_write_repr(R, &b, v);
    return b.p ? b.p : "''";
}

jv jx_undef_attr(jx_render *R, jv obj, const char *name, size_t n) {
    return jv_undef(jx_strf(R, "'%s' has no attribute %s", type_repr(obj), repr_of(R, jv_str(name, n))));
}

jv jx_undef_item(jx_render *R, jv obj, jv key) {
    if (key.kind == JV_STR) return jx_undef_attr(R, obj, key.s.p, key.s.n);
    return jv_undef(jx_strf(R, "%s has no element %s", type_repr(obj), repr_of(R, key)));
}

/* Every recursion of a render (expressions, statements, macro calls) goes
 * through jx_eval or exec_body; bounding their nesting bounds the C stack,
 * whatever a template does (a recursive macro over a deep body). */
static void nest_enter(jx_render *R) {
    if (++R->nest > MAX_NEST) jx_fail(R, "template nested too deeply at run time (maximum recursion depth exceeded)");
}

/* ---------------------------------------------------------------- scopes -- */

static jx_scope *scope_new(jx_render *R, jx_scope *parent) {
    jx_scope *s = jx_alloc(&R->arena, sizeof *s);
    s->parent = parent;
    return s;
}

static jv *scope_find(jx_scope *s, const char *name) {
    for (; s; s = s->parent)
        for (size_t i = 0; i < s->n; i++)
            if (strcmp(s->names[i], name) == 0) return &s->vals[i];
    return NULL;
}

static void scope_set(jx_render *R, jx_scope *s, const char *name, jv v) {
    for (size_t i = 0; i < s->n; i++)
        if (strcmp(s->names[i], name) == 0) {
            s->vals[i] = v;
            return;
        }
    if (s->n == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 8;
        s->names = jx_grow(&R->arena, s->names, s->cap * sizeof *s->names, cap * sizeof *s->names);
        s->vals = jx_grow(&R->arena, s->vals, s->cap * sizeof *s->vals, cap * sizeof *s->vals);
        s->cap = cap;
    }
    s->names[s->n] = name;
    s->vals[s->n] = v;
    s->n++;
}

static jv lookup(jx_render *R, jx_scope *sc, const char *name) {
    jv *v = scope_find(sc, name);
    if (v) return *v;
    jv g = jx_global_find(R, name);
    if (g.kind != JV_UNDEF) return g;
    return jv_undef(jx_strf(R, "%s is undefined", repr_of(R, jv_str(name, strlen(name)))));
}

/* ------------------------------------------------------- lookup and call -- */

static jv loop_attr(jx_render *R, jv obj, const char *name, size_t n) {
    jx_loop *L = obj.loop;
#define IS(s) (n == sizeof s - 1 && memcmp(name, s, n) == 0)
    if (IS("index")) return jv_int(L->index0 + 1);
    if (IS("index0")) return jv_int(L->index0);
    if (IS("revindex")) return jv_int(L->length - L->index0);
    if (IS("revindex0")) return jv_int(L->length - L->index0 - 1);
    if (IS("first")) return jv_bool(L->index0 == 0);
    if (IS("last")) return jv_bool(L->index0 == L->length - 1);
    if (IS("length")) return jv_int(L->length);
    if (IS("depth")) return jv_int(L->depth);
    if (IS("depth0")) return jv_int(L->depth - 1);
    if (IS("previtem")) return L->index0 > 0 ? L->items.l->v[L->index0 - 1] : jv_undef("there is no previous item");
    if (IS("nextitem"))
        return L->index0 + 1 < L->length ? L->items.l->v[L->index0 + 1] : jv_undef("there is no next item");
    if (IS("cycle")) {
        jv_func *f = jx_alloc(&R->arena, sizeof *f);
        f->kind = F_CYCLE;
        f->name = "cycle";
        f->self = obj;
        jv v = {.kind = JV_FUNC};
        v.fn = f;
        return v;
    }
    if (IS("changed")) jx_unsupported(R, "loop.changed() is not supported");
#undef IS
    return jx_undef_attr(R, obj, name, n);
}

jv jx_getattr(jx_render *R, jv obj, const char *name, size_t n) {
    int found;
    switch (obj.kind) {
    case JV_UNDEF: jx_undef_error(R, obj);
    case JV_LOOP: return loop_attr(R, obj, name, n);
    case JV_NS: {
        jv *v = jv_dict_gets(obj, name, n);
        return v ? *v : jx_undef_attr(R, obj, name, n);
    }
    case JV_DICT: {
        /* Python's getattr first: d.items is the method even when "items" is a key */
        jv m = jx_method_bind(R, obj, name, n, &found);
        if (found) return m;
        jv *v = jv_dict_gets(obj, name, n);
        return v ? *v : jx_undef_attr(R, obj, name, n);
    }
    case JV_FUNC: return jx_undef_attr(R, obj, name, n);
    default: {
        jv m = jx_method_bind(R, obj, name, n, &found);
        return found ? m : jx_undef_attr(R, obj, name, n);
    }
    }
}

static int index_of(jv key, int64_t *out) {
    if (key.kind == JV_INT)
        *out = key.i;
    else if (key.kind == JV_BOOL)
        *out = key.b;
    else
        return 0;
    return 1;
}

jv jx_getitem(jx_render *R, jv obj, jv key) {
    int64_t i;
    switch (obj.kind) {
    case JV_UNDEF: jx_undef_error(R, obj);
    case JV_DICT: {
        jv *v = jv_dict_get(obj, key);
        if (v) return *v;
        break;
    }
    case JV_LIST:
    case JV_TUPLE:
        if (index_of(key, &i)) {
            int64_t len = (int64_t)obj.l->n;
            if (i < 0) i += len;
            if (i >= 0 && i < len) return obj.l->v[i];
            return jx_undef_item(R, obj, key);
        }
        break;
    case JV_STR:
        if (index_of(key, &i)) {
            int64_t len = (int64_t)ju_count(obj.s.p, obj.s.n);
            if (i < 0) i += len;
            if (i < 0 || i >= len) return jx_undef_item(R, obj, key);
            size_t off = ju_offset(obj.s.p, obj.s.n, (size_t)i), adv;
            ju_decode(obj.s.p + off, obj.s.n - off, &adv);
            return jv_str(obj.s.p + off, adv);
        }
        break;
    default: break;
    }
    /* obj[key] failed: a string key falls back to getattr, as jinja2 does */
    if (key.kind == JV_STR && obj.kind != JV_DICT) return jx_getattr(R, obj, key.s.p, key.s.n);
    if (key.kind == JV_STR) {
        int found;
        jv m = jx_method_bind(R, obj, key.s.p, key.s.n, &found);
        if (found) return m;
    }
    return jx_undef_item(R, obj, key);
}

/* Python's slice.indices + iteration for a sequence of `len` elements. */
static size_t slice_indices(jx_render *R, int64_t len, jv start, jv stop, jv step, int64_t **out) {
    int64_t st = 1, a, b;
    if (jx_given(step) && step.kind != JV_NONE) {
        if (!index_of(step, &st)) jx_fail(R, "slice indices must be integers or None");
        if (st == 0) jx_fail(R, "slice step cannot be zero");
    }
    int64_t lower = st > 0 ? 0 : -1, upper = st > 0 ? len : len - 1;
    if (!jx_given(start) || start.kind == JV_NONE)
        a = st < 0 ? upper : lower;
    else {
        if (!index_of(start, &a)) jx_fail(R, "slice indices must be integers or None");
        if (a < 0)
            a = a + len < lower ? lower : a + len;
        else if (a > upper)
            a = upper;
    }
    if (!jx_given(stop) || stop.kind == JV_NONE)
        b = st < 0 ? lower : upper;
    else {
        if (!index_of(stop, &b)) jx_fail(R, "slice indices must be integers or None");
        if (b < 0)
            b = b + len < lower ? lower : b + len;
        else if (b > upper)
            b = upper;
    }
    size_t count = 0;
    if (st > 0 && a < b) count = (size_t)((b - a - 1) / st + 1);
    if (st < 0 && a > b) count = (size_t)((a - b - 1) / -st + 1);
    int64_t *idx = jx_alloc(&R->arena, (count ? count : 1) * sizeof *idx);
    for (size_t k = 0; k < count; k++)
        idx[k] = a + (int64_t)k * st;
    *out = idx;
    return count;
}

jv jx_slice(jx_render *R, jv obj, jv start, jv stop, jv step) {
    int64_t *idx;
    if (obj.kind == JV_UNDEF) jx_undef_error(R, obj);
    if (jv_is_seq(obj)) {
        size_t k = slice_indices(R, (int64_t)obj.l->n, start, stop, step, &idx);
        jv out = jv_new_list(R, obj.kind, k);
        for (size_t i = 0; i < k; i++)
            jv_list_push(R, out, obj.l->v[idx[i]]);
        return out;
    }
    if (obj.kind == JV_STR) {
        size_t len = ju_count(obj.s.p, obj.s.n), adv;
        size_t *off = jx_alloc(&R->arena, (len + 1) * sizeof *off);
        for (size_t i = 0, o = 0; i <= len; i++) {
            off[i] = o;
            if (i < len) {
                ju_decode(obj.s.p + o, obj.s.n - o, &adv);
                o += adv;
            }
        }
        size_t k = slice_indices(R, (int64_t)len, start, stop, step, &idx);
        jx_sb b = {.a = &R->arena};
        for (size_t i = 0; i < k; i++)
            jx_sb_put(&b, obj.s.p + off[idx[i]], off[idx[i] + 1] - off[idx[i]]);
        return jv_str(b.p ? b.p : "", b.n);
    }
    return jv_undef(jx_strf(R, "'%s' object is not subscriptable", jv_type_name(obj)));
}

jv jx_iter_list(jx_render *R, jv v) {
    switch (v.kind) {
    case JV_LIST:
    case JV_TUPLE: return v;
    case JV_UNDEF: return jv_new_list(R, JV_LIST, 0);
    case JV_DICT: {
        jv l = jv_new_list(R, JV_LIST, v.d->n);
        for (size_t i = 0; i < v.d->n; i++)
            jv_list_push(R, l, v.d->k[i]);
        return l;
    }
    case JV_STR: {
        jv l = jv_new_list(R, JV_LIST, v.s.n);
        size_t i = 0, adv;
        while (i < v.s.n) {
            ju_decode(v.s.p + i, v.s.n - i, &adv);
            jv_list_push(R, l, jv_str(v.s.p + i, adv));
            i += adv;
        }
        return l;
    }
    default: jx_fail(R, "'%s' object is not iterable", jv_type_name(v));
    }
}

static int exec_body(jx_render *R, const jx_body *b, jx_scope *sc);

static jv call_macro(jx_render *R, jv_func *fn, jx_args *a) {
    jx_macro *m = fn->macro;
    if (R->depth >= MAX_CALL_DEPTH) jx_fail(R, "maximum recursion depth exceeded in macro '%s'", m->name);
    jx_scope *sc = scope_new(R, fn->closure);
    unsigned char *set = jx_alloc(&R->arena, (size_t)m->nparams + 1);
    jv varargs = jv_new_list(R, JV_TUPLE, 0), kwargs = jv_new_dict(R, JV_DICT, 0);
    for (int i = 0; i < a->npos; i++) {
        if (i < m->nparams) {
            scope_set(R, sc, m->params[i], a->pos[i]);
            set[i] = 1;
        } else if (m->uses_varargs)
            jv_list_push(R, varargs, a->pos[i]);
        else
            jx_fail(R, "macro '%s' takes not more than %d argument(s)", m->name, m->nparams);
    }
    for (int k = 0; k < a->nkw; k++) {
        int i = 0;
        while (i < m->nparams && strcmp(m->params[i], a->kwn[k]) != 0)
            i++;
        if (i < m->nparams) {
            if (set[i]) jx_fail(R, "macro '%s' got multiple values for argument '%s'", m->name, a->kwn[k]);
            scope_set(R, sc, m->params[i], a->kwv[k]);
            set[i] = 1;
        } else if (!strcmp(a->kwn[k], "caller") && m->uses_caller) {
            scope_set(R, sc, "caller", a->kwv[k]);
        } else if (m->uses_kwargs)
            jv_dict_set(R, kwargs, jv_str(a->kwn[k], strlen(a->kwn[k])), a->kwv[k]);
        else
            jx_fail(R, "macro '%s' takes no keyword argument '%s'", m->name, a->kwn[k]);
    }
    int saved_line = R->line;
    for (int i = 0; i < m->nparams; i++) {
        if (set[i]) continue;
        if (m->defaults[i])
            scope_set(R, sc, m->params[i], jx_eval(R, m->defaults[i], sc));
        else
            scope_set(R, sc, m->params[i], jv_undef(jx_strf(R, "parameter '%s' was not provided", m->params[i])));
    }
    if (fn->caller.kind == JV_FUNC)
        scope_set(R, sc, "caller", fn->caller);
    else if (m->uses_caller && !scope_find(sc, "caller"))
        scope_set(R, sc, "caller", jv_undef("No caller defined"));
    if (m->uses_varargs) scope_set(R, sc, "varargs", varargs);
    if (m->uses_kwargs) scope_set(R, sc, "kwargs", kwargs);

    jx_sb buf = {.a = &R->arena};
    jx_sb *saved = R->out;
    R->out = &buf;
    R->depth++;
    exec_body(R, &m->body, sc);
    R->depth--;
    R->out = saved;
    R->line = saved_line;
    return jv_str(buf.p ? buf.p : "", buf.n);
}

jv jx_call(jx_render *R, jv fn, jx_args *args) {
    if (fn.kind == JV_UNDEF) jx_undef_error(R, fn);
    if (fn.kind != JV_FUNC) jx_fail(R, "'%s' object is not callable", jv_type_name(fn));
    switch (fn.fn->kind) {
    case F_METHOD: return jx_method_call(R, fn.fn, args);
    case F_GLOBAL: return jx_global_call(R, fn.fn, args);
    case F_MACRO: return call_macro(R, fn.fn, args);
    case F_CYCLE: {
        if (args->npos == 0) jx_fail(R, "no items for cycling given");
        jx_loop *L = fn.fn->self.loop;
        return args->pos[L->index0 % args->npos];
    }
    }
    jx_fail(R, "not callable");
}

/* ------------------------------------------------------------ operators -- */

static jv concat_str(jx_render *R, jv a, jv b) {
    char *p = jx_alloc(&R->arena, a.s.n + b.s.n + 1);
    if (a.s.n) memcpy(p, a.s.p, a.s.n);
    if (b.s.n) memcpy(p + a.s.n, b.s.p, b.s.n);
    return jv_str(p, a.s.n + b.s.n);
}

static int64_t as_int(jv v) { return v.kind == JV_BOOL ? v.b : v.i; }
static int is_intlike(jv v) { return v.kind == JV_INT || v.kind == JV_BOOL; }

_Noreturn static void bad_operands(jx_render *R, const char *op, jv a, jv b) {
    jx_fail(R, "unsupported operand type(s) for %s: '%s' and '%s'", op, jv_type_name(a), jv_type_name(b));
}

static jv repeat(jx_render *R, jv seq, int64_t times) {
    if (times < 0) times = 0;
    if (seq.kind == JV_STR) {
        if (seq.s.n && (uint64_t)times > (RENDER_MEMORY_LIMIT / seq.s.n)) jx_fail(R, "repeated string too long");
        jx_sb b = {.a = &R->arena};
        for (int64_t i = 0; i < times; i++)
            jx_sb_put(&b, seq.s.p, seq.s.n);
        return jv_str(b.p ? b.p : "", b.n);
    }
    if (seq.l->n && (uint64_t)times > (RENDER_MEMORY_LIMIT / (seq.l->n * sizeof(jv))))
        jx_fail(R, "repeated list too long");
    jv out = jv_new_list(R, seq.kind, seq.l->n * (size_t)times);
    for (int64_t i = 0; i < times; i++)
        for (size_t k = 0; k < seq.l->n; k++)
            jv_list_push(R, out, seq.l->v[k]);
    return out;
}

/* CPython's float floor division and modulo */
static void float_divmod(double vx, double wx, double *floordiv, double *mod) {
    double m = fmod(vx, wx), div = (vx - m) / wx;
    if (m != 0) {
        if ((wx < 0) != (m < 0)) {
            m += wx;
            div -= 1.0;
        }
    } else
        m = copysign(0.0, wx);
    double fd;
    if (div != 0) {
        fd = floor(div);
        if (div - fd > 0.5) fd += 1.0;
    } else
        fd = copysign(0.0, vx / wx);
    *floordiv = fd;
    *mod = m;
}

static jv int_pow(jx_render *R, int64_t base, int64_t exp) {
    int64_t r = 1;
    while (exp > 0) {
        if (exp & 1)
            if (__builtin_mul_overflow(r, base, &r)) jx_unsupported(R, "integer overflow in '**' (beyond 64 bits)");
        exp >>= 1;
        if (exp && __builtin_mul_overflow(base, base, &base))
            jx_unsupported(R, "integer overflow in '**' (beyond 64 bits)");
    }
    return jv_int(r);
}

static jv binop(jx_render *R, int op, jv a, jv b) {
    if (op == '~') {
        jv sa = jv_to_str(R, a), sb = jv_to_str(R, b);
        return concat_str(R, sa, sb);
    }
    if (a.kind == JV_UNDEF) jx_undef_error(R, a);
    if (b.kind == JV_UNDEF) jx_undef_error(R, b);
    int64_t r;
    int ints = is_intlike(a) && is_intlike(b), nums = jv_is_num(a) && jv_is_num(b);
    switch (op) {
    case '+':
        if (ints) {
            if (__builtin_add_overflow(as_int(a), as_int(b), &r))
                jx_unsupported(R, "integer overflow (beyond 64 bits)");
            return jv_int(r);
        }
        if (nums) return jv_float(jv_num(a) + jv_num(b));
        if (a.kind == JV_STR && b.kind == JV_STR) return concat_str(R, a, b);
        if (a.kind == b.kind && jv_is_seq(a)) {
            jv out = jv_new_list(R, a.kind, a.l->n + b.l->n);
            for (size_t i = 0; i < a.l->n; i++)
                jv_list_push(R, out, a.l->v[i]);
            for (size_t i = 0; i < b.l->n; i++)
                jv_list_push(R, out, b.l->v[i]);
            return out;
        }
        if (a.kind == JV_STR || a.kind == JV_LIST || a.kind == JV_TUPLE)
            jx_fail(R, "can only concatenate %s (not \"%s\") to %s", jv_type_name(a), jv_type_name(b), jv_type_name(a));
        bad_operands(R, "+", a, b);
    case '-':
        if (ints) {
            if (__builtin_sub_overflow(as_int(a), as_int(b), &r))
                jx_unsupported(R, "integer overflow (beyond 64 bits)");
            return jv_int(r);
        }
        if (nums) return jv_float(jv_num(a) - jv_num(b));
        bad_operands(R, "-", a, b);
    case '*':
        if (ints) {
            if (__builtin_mul_overflow(as_int(a), as_int(b), &r))
                jx_unsupported(R, "integer overflow (beyond 64 bits)");
            return jv_int(r);
        }
        if (nums) return jv_float(jv_num(a) * jv_num(b));
        if ((a.kind == JV_STR || jv_is_seq(a)) && is_intlike(b)) return repeat(R, a, as_int(b));
        if ((b.kind == JV_STR || jv_is_seq(b)) && is_intlike(a)) return repeat(R, b, as_int(a));
        bad_operands(R, "*", a, b);
    case '/':
        if (!nums) bad_operands(R, "/", a, b);
        if (jv_num(b) == 0) jx_fail(R, "division by zero");
        if (ints) return jv_float((double)as_int(a) / (double)as_int(b));
        return jv_float(jv_num(a) / jv_num(b));
    case OP_FLOORDIV:
    case '%':
        if (op == '%' && a.kind == JV_STR) return jx_percent_format(R, a, b);
        if (!nums) bad_operands(R, op == '%' ? "%" : "//", a, b);
        if (ints) {
            int64_t x = as_int(a), y = as_int(b);
            if (y == 0) jx_fail(R, "integer division or modulo by zero");
            if (x == INT64_MIN && y == -1) jx_unsupported(R, "integer overflow (beyond 64 bits)");
            int64_t q = x / y, m = x % y;
            if (m != 0 && ((m < 0) != (y < 0))) {
                q -= 1;
                m += y;
            }
            return jv_int(op == '%' ? m : q);
        } else {
            double fd, m;
            if (jv_num(b) == 0) jx_fail(R, op == '%' ? "float modulo" : "float floor division by zero");
            float_divmod(jv_num(a), jv_num(b), &fd, &m);
            return jv_float(op == '%' ? m : fd);
        }
    case OP_POW:
        if (!nums) bad_operands(R, "** or pow()", a, b);
        if (ints && as_int(b) >= 0) return int_pow(R, as_int(a), as_int(b));
        if (jv_num(a) == 0 && jv_num(b) < 0) jx_fail(R, "0.0 cannot be raised to a negative power");
        return jv_float(pow(jv_num(a), jv_num(b)));
    }
    jx_fail(R, "unknown operator");
}

static int contains(jx_render *R, jv item, jv container) {
    switch (container.kind) {
    case JV_UNDEF: return 0;
    case JV_STR:
        if (item.kind != JV_STR)
            jx_fail(R, "'in <string>' requires string as left operand, not %s", jv_type_name(item));
        if (item.s.n == 0) return 1;
        if (item.s.n > container.s.n) return 0;
        for (size_t i = 0; i + item.s.n <= container.s.n; i++)
            if (memcmp(container.s.p + i, item.s.p, item.s.n) == 0) return 1;
        return 0;
    case JV_LIST:
    case JV_TUPLE:
        for (size_t i = 0; i < container.l->n; i++)
            if (jv_eq(container.l->v[i], item)) return 1;
        return 0;
    case JV_DICT: return jv_dict_get(container, item) != NULL;
    default: jx_fail(R, "argument of type '%s' is not iterable", jv_type_name(container));
    }
}

static int compare(jx_render *R, int op, jv a, jv b) {
    switch (op) {
    case OP_EQ: return jv_eq(a, b);
    case OP_NE: return !jv_eq(a, b);
    case '<': return jv_cmp(R, a, b) < 0;
    case '>': return jv_cmp(R, a, b) > 0;
    case OP_LE: return jv_cmp(R, a, b) <= 0;
    case OP_GE: return jv_cmp(R, a, b) >= 0;
    case OP_IN: return contains(R, a, b);
    case OP_NOTIN: return !contains(R, a, b);
    }
    return 0;
}

/* ---------------------------------------------------------- expressions -- */

static void eval_args(jx_render *R, const jx_node *n, jx_scope *sc, jx_args *a) {
    memset(a, 0, sizeof *a);
    jv star = n->star ? jx_eval(R, n->star, sc) : jv_none();
    jv dstar = n->dstar ? jx_eval(R, n->dstar, sc) : jv_none();
    if (n->star) star = jx_iter_list(R, star);
    if (n->dstar && dstar.kind != JV_DICT)
        jx_fail(R, "argument after ** must be a mapping, not %s", jv_type_name(dstar));
    size_t npos = (size_t)n->nitems + (n->star ? star.l->n : 0);
    size_t nkw = (size_t)n->nkw + (n->dstar ? dstar.d->n : 0);
    a->pos = jx_alloc(&R->arena, (npos ? npos : 1) * sizeof(jv));
    for (int i = 0; i < n->nitems; i++)
        a->pos[a->npos++] = jx_eval(R, n->items[i], sc);
    if (n->star)
        for (size_t i = 0; i < star.l->n; i++)
            a->pos[a->npos++] = star.l->v[i];
    a->kwn = jx_alloc(&R->arena, (nkw ? nkw : 1) * sizeof(char *));
    a->kwv = jx_alloc(&R->arena, (nkw ? nkw : 1) * sizeof(jv));
    for (int i = 0; i < n->nkw; i++) {
        a->kwn[a->nkw] = n->kwnames[i];
        a->kwv[a->nkw++] = jx_eval(R, n->kwvals[i], sc);
    }
    if (n->dstar)
        for (size_t i = 0; i < dstar.d->n; i++) {
            jv k = dstar.d->k[i];
            if (k.kind != JV_STR) jx_fail(R, "keywords must be strings");
            a->kwn[a->nkw] = jx_memdup(&R->arena, k.s.p, k.s.n);
            a->kwv[a->nkw++] = dstar.d->v[i];
        }
}

/* A filter node applied to `input` (n->a NULL) or to its own operand. */
static jv eval_filter(jx_render *R, const jx_node *n, jx_scope *sc, const jv *input) {
    nest_enter(R);
    jv v = n->a ? (n->a->kind == N_FILTER ? eval_filter(R, n->a, sc, input) : jx_eval(R, n->a, sc)) : *input;
    jx_args a;
    eval_args(R, n, sc, &a);
    R->line = n->line;
    v = jx_filter_call(R, n->fid, v, &a);
    R->nest--;
    return v;
}

static jv eval_node(jx_render *R, const jx_node *n, jx_scope *sc);

jv jx_eval(jx_render *R, const jx_node *n, jx_scope *sc) {
    nest_enter(R);
    jv v = eval_node(R, n, sc);
    R->nest--;
    return v;
}

static jv eval_node(jx_render *R, const jx_node *n, jx_scope *sc) {
    R->line = n->line;
    switch (n->kind) {
    case N_CONST: return n->value;
    case N_NAME: return lookup(R, sc, n->name);
    case N_LIST:
    case N_TUPLE: {
        jv l = jv_new_list(R, n->kind == N_LIST ? JV_LIST : JV_TUPLE, (size_t)n->nitems);
        for (int i = 0; i < n->nitems; i++)
            jv_list_push(R, l, jx_eval(R, n->items[i], sc));
        return l;
    }
    case N_DICT: {
        jv d = jv_new_dict(R, JV_DICT, (size_t)n->nitems / 2);
        for (int i = 0; i + 1 < n->nitems; i += 2) {
            jv k = jx_eval(R, n->items[i], sc);
            if (k.kind == JV_LIST || k.kind == JV_DICT || k.kind == JV_NS || k.kind == JV_UNDEF)
                jx_fail(R, "unhashable type: '%s'", jv_type_name(k));
            jv_dict_set(R, d, k, jx_eval(R, n->items[i + 1], sc));
        }
        return d;
    }
    case N_ATTR: {
        jv obj = jx_eval(R, n->a, sc);
        R->line = n->line;
        return jx_getattr(R, obj, n->name, strlen(n->name));
    }
    case N_ITEM: {
        jv obj = jx_eval(R, n->a, sc);
        if (n->b->kind == N_SLICE) {
            jv parts[3];
            for (int i = 0; i < 3; i++)
                parts[i] = n->b->items[i] ? jx_eval(R, n->b->items[i], sc) : jv_none();
            R->line = n->line;
            return jx_slice(R, obj, parts[0], parts[1], parts[2]);
        }
        jv key = jx_eval(R, n->b, sc);
        R->line = n->line;
        return jx_getitem(R, obj, key);
    }
    case N_SLICE: jx_fail(R, "a slice outside of [ ]");
    case N_CALL: {
        jv fn = jx_eval(R, n->a, sc);
        jx_args a;
        eval_args(R, n, sc, &a);
        R->line = n->line;
        return jx_call(R, fn, &a);
    }
    case N_FILTER: return eval_filter(R, n, sc, NULL);
    case N_TEST: {
        jv v = jx_eval(R, n->a, sc);
        jx_args a;
        eval_args(R, n, sc, &a);
        R->line = n->line;
        return jv_bool(jx_test_call(R, n->fid, v, &a));
    }
    case N_NEG:
    case N_POS: {
        jv v = jx_eval(R, n->a, sc);
        if (v.kind == JV_UNDEF) jx_undef_error(R, v);
        if (!jv_is_num(v))
            jx_fail(R, "bad operand type for unary %c: '%s'", n->kind == N_NEG ? '-' : '+', jv_type_name(v));
        if (n->kind == N_POS) return v.kind == JV_BOOL ? jv_int(v.b) : v;
        if (v.kind == JV_FLOAT) return jv_float(-v.f);
        if (as_int(v) == INT64_MIN) jx_unsupported(R, "integer overflow (beyond 64 bits)");
        return jv_int(-as_int(v));
    }
    case N_NOT: return jv_bool(!jv_truthy(jx_eval(R, n->a, sc)));
    case N_AND: {
        jv l = jx_eval(R, n->a, sc);
        return jv_truthy(l) ? jx_eval(R, n->b, sc) : l;
    }
    case N_OR: {
        jv l = jx_eval(R, n->a, sc);
        return jv_truthy(l) ? l : jx_eval(R, n->b, sc);
    }
    case N_BINOP: {
        jv a = jx_eval(R, n->a, sc);
        jv b = jx_eval(R, n->b, sc);
        R->line = n->line;
        return binop(R, n->op, a, b);
    }
    case N_CMP: {
        jv left = jx_eval(R, n->a, sc);
        for (int i = 0; i < n->nitems; i++) {
            jv right = jx_eval(R, n->items[i], sc);
            R->line = n->line;
            if (!compare(R, n->ops[i], left, right)) return jv_bool(0);
            left = right;
        }
        return jv_bool(1);
    }
    case N_COND:
        if (jv_truthy(jx_eval(R, n->b, sc))) return jx_eval(R, n->a, sc);
        if (n->c) return jx_eval(R, n->c, sc);
        return jv_undef(jx_strf(
            R, "the inline if-expression on line %d evaluated to false and no else section was defined.", n->line));
    }
    jx_fail(R, "bad expression");
}

/* ----------------------------------------------------------- statements -- */

static void out_value(jx_render *R, jv v) { jv_write_str(R, R->out, v); }

static void assign(jx_render *R, jx_scope *sc, const jx_target *t, jv v) {
    if (t->attr) {
        jv *ns = scope_find(sc, t->names[0]);
        if (!ns || ns->kind != JV_NS) jx_fail(R, "cannot assign attribute on non-namespace object");
        jv_dict_set(R, *ns, jv_str(t->attr, strlen(t->attr)), v);
        return;
    }
    if (!t->is_tuple) {
        scope_set(R, sc, t->names[0], v);
        return;
    }
    if (v.kind == JV_UNDEF) jx_undef_error(R, v);
    jv items = jx_iter_list(R, v);
    if (items.l->n < (size_t)t->n) jx_fail(R, "not enough values to unpack (expected %d, got %zu)", t->n, items.l->n);
    if (items.l->n > (size_t)t->n) jx_fail(R, "too many values to unpack (expected %d)", t->n);
    for (int i = 0; i < t->n; i++)
        scope_set(R, sc, t->names[i], items.l->v[i]);
}

static jv render_to_string(jx_render *R, const jx_body *b, jx_scope *sc) {
    jx_sb buf = {.a = &R->arena};
    jx_sb *saved = R->out;
    R->out = &buf;
    exec_body(R, b, sc);
    R->out = saved;
    return jv_str(buf.p ? buf.p : "", buf.n);
}

static int exec_for(jx_render *R, const jx_stmt *s, jx_scope *sc) {
    jv seq = jx_iter_list(R, jx_eval(R, s->expr, sc));
    if (s->cond) {
        jv kept = jv_new_list(R, JV_LIST, seq.l->n);
        for (size_t i = 0; i < seq.l->n; i++) {
            jx_scope *fs = scope_new(R, sc);
            assign(R, fs, &s->target, seq.l->v[i]);
            if (jv_truthy(jx_eval(R, s->cond, fs))) jv_list_push(R, kept, seq.l->v[i]);
        }
        seq = kept;
    }
    if (seq.l->n == 0) {
        if (s->else_body.n) exec_body(R, &s->else_body, scope_new(R, sc));
        return FLOW_NORMAL;
    }
    jx_loop *L = jx_alloc(&R->arena, sizeof *L);
    L->length = (int64_t)seq.l->n;
    L->items = seq;
    L->depth = 1; /* depth counts recursive loop() calls, which moe does not support */
    jv lv = {.kind = JV_LOOP};
    lv.loop = L;
    for (size_t i = 0; i < seq.l->n; i++) {
        L->index0 = (int64_t)i;
        jx_scope *is = scope_new(R, sc);
        assign(R, is, &s->target, seq.l->v[i]);
        scope_set(R, is, "loop", lv);
        if (exec_body(R, &s->body, is) == FLOW_BREAK) break;
    }
    return FLOW_NORMAL;
}

static int exec_stmt(jx_render *R, const jx_stmt *s, jx_scope *sc) {
    R->line = s->line;
    switch (s->kind) {
    case S_TEXT: jx_sb_put(R->out, s->text, s->text_len); return FLOW_NORMAL;
    case S_OUT: out_value(R, jx_eval(R, s->expr, sc)); return FLOW_NORMAL;
    case S_IF:
        for (int i = 0; i < s->nconds; i++)
            if (jv_truthy(jx_eval(R, s->conds[i], sc))) return exec_body(R, &s->bodies[i], sc);
        return exec_body(R, &s->else_body, sc);
    case S_FOR: return exec_for(R, s, sc);
    case S_SET: assign(R, sc, &s->target, jx_eval(R, s->expr, sc)); return FLOW_NORMAL;
    case S_SETBLOCK: {
        jv v = render_to_string(R, &s->body, scope_new(R, sc));
        if (s->expr) v = eval_filter(R, s->expr, sc, &v);
        assign(R, sc, &s->target, v);
        return FLOW_NORMAL;
    }
    case S_MACRO: {
        jv_func *f = jx_alloc(&R->arena, sizeof *f);
        f->kind = F_MACRO;
        f->name = s->macro->name;
        f->macro = s->macro;
        f->closure = sc;
        f->caller = jv_none();
        jv v = {.kind = JV_FUNC};
        v.fn = f;
        scope_set(R, sc, s->macro->name, v);
        return FLOW_NORMAL;
    }
    case S_CALL: {
        jv_func *c = jx_alloc(&R->arena, sizeof *c);
        c->kind = F_MACRO;
        c->name = "caller";
        c->macro = s->macro;
        c->closure = sc;
        c->caller = jv_none();
        jv callee = jx_eval(R, s->expr->a, sc);
        jx_args a;
        eval_args(R, s->expr, sc, &a);
        R->line = s->line;
        if (callee.kind == JV_UNDEF) jx_undef_error(R, callee);
        if (callee.kind != JV_FUNC || callee.fn->kind != F_MACRO)
            jx_unsupported(R, "{%% call %%} of something other than a macro");
        jv_func bound = *callee.fn;
        bound.caller.kind = JV_FUNC;
        bound.caller.fn = c;
        out_value(R, call_macro(R, &bound, &a));
        return FLOW_NORMAL;
    }
    case S_FILTER: {
        jv v = render_to_string(R, &s->body, scope_new(R, sc));
        out_value(R, eval_filter(R, s->expr, sc, &v));
        return FLOW_NORMAL;
    }
    case S_WITH: {
        jx_scope *ws = scope_new(R, sc);
        for (int i = 0; i < s->nwith; i++)
            assign(R, ws, &s->wtargets[i], jx_eval(R, s->wvals[i], sc));
        return exec_body(R, &s->body, ws);
    }
    case S_BREAK: return FLOW_BREAK;
    case S_CONTINUE: return FLOW_CONTINUE;
    case S_BLOCK: return exec_body(R, &s->body, scope_new(R, sc));
    }
    return FLOW_NORMAL;
}

static int exec_body(jx_render *R, const jx_body *b, jx_scope *sc) {
    nest_enter(R);
    for (int i = 0; i < b->n; i++) {
        int flow = exec_stmt(R, b->v[i], sc);
        if (flow != FLOW_NORMAL) {
            R->nest--;
            return flow;
        }
    }
    R->nest--;
    return FLOW_NORMAL;
}

/* ------------------------------------------------------------------ API -- */

moe_status jinja_render(const jinja_tmpl *t, const json_t *ctx, char **out, size_t *out_len) {
    *out = NULL;
    if (out_len) *out_len = 0;
    if (!t) return moe_err(MOE_EINVAL, "jinja_render: NULL template");
    if (ctx && !json_is_object(ctx)) return moe_err(MOE_EINVAL, "jinja_render: the context must be a JSON object");
    jx_render *R = calloc(1, sizeof *R);
    if (!R) return moe_err(MOE_ENOMEM, "out of memory rendering a template");
    R->arena.env = &R->env;
    R->arena.limit = RENDER_MEMORY_LIMIT;
    R->t = t;
    if (setjmp(R->env.jb)) {
        moe_status st = R->env.st;
        jx_arena_release(&R->arena);
        free(R);
        return st;
    }
    R->globals = scope_new(R, NULL);
    if (ctx) {
        const char *k;
        json_t *v;
        json_object_foreach((json_t *)ctx, k, v) scope_set(R, R->globals, k, jv_from_json(R, v));
    }
    jx_scope *top = scope_new(R, R->globals);
    jx_sb sb = {.a = &R->arena};
    R->out = &sb;
    exec_body(R, &t->body, top);
    char *s = malloc(sb.n + 1);
    if (!s) {
        jx_arena_release(&R->arena);
        free(R);
        return moe_err(MOE_ENOMEM, "out of memory (%zu bytes) for a rendered template", sb.n + 1);
    }
    if (sb.n) memcpy(s, sb.p, sb.n);
    s[sb.n] = 0;
    *out = s;
    if (out_len) *out_len = sb.n;
    jx_arena_release(&R->arena);
    free(R);
    return MOE_OK;
}
