/* jinja_filters.c — jinja2's built-in filters and tests, with Python's
 * semantics, plus transformers' `tojson` (json.dumps with ensure_ascii=False,
 * keys in their given order). Filters that jinja2 implements as generators
 * (map, select, unique, items, ...) return lists here: the same when iterated,
 * joined, counted or passed to |list, which is how templates use them.
 * Filters jinja2 has and this file lacks are refused by name when the template
 * is parsed. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "jinja_impl.h"

typedef jv (*filter_fn)(jx_render *R, jv v, jx_args *a);
typedef int (*test_fn)(jx_render *R, jv v, jx_args *a);

/* ------------------------------------------------------------- arguments -- */

void jx_bind(jx_render *R, const char *fname, jx_args *a, const char *const *names, int n, jv *out) {
    for (int i = 0; i < n; i++)
        out[i] = jv_undef(NULL);
    if (a->npos > n) jx_fail(R, "%s() takes at most %d argument(s) (%d given)", fname, n, a->npos);
    for (int i = 0; i < a->npos; i++)
        out[i] = a->pos[i];
    for (int k = 0; k < a->nkw; k++) {
        int i = 0;
        while (i < n && strcmp(names[i], a->kwn[k]) != 0)
            i++;
        if (i == n) jx_fail(R, "%s() got an unexpected keyword argument '%s'", fname, a->kwn[k]);
        if (jx_given(out[i])) jx_fail(R, "%s() got multiple values for argument '%s'", fname, a->kwn[k]);
        out[i] = a->kwv[k];
    }
}

static int given(jv v) { return jx_given(v); }
static int opt_bool(jv v, int dflt) { return given(v) ? jv_truthy(v) : dflt; }

static int64_t need_int(jx_render *R, jv v, const char *what) {
    if (v.kind == JV_INT) return v.i;
    if (v.kind == JV_BOOL) return v.b;
    if (v.kind == JV_FLOAT && v.f == floor(v.f) && fabs(v.f) < 9e18) return (int64_t)v.f;
    if (v.kind == JV_UNDEF) jx_undef_error(R, v);
    jx_fail(R, "%s: expected an integer, got %s", what, jv_type_name(v));
}

static jv need_str(jx_render *R, jv v) {
    if (v.kind == JV_UNDEF && v.why) return jv_str("", 0);
    return jv_to_str(R, v);
}

static jv as_list(jx_render *R, jv v) { return jx_iter_list(R, v); }

/* jinja2's make_attrgetter: "a.b.0" walks getitem with each part (digits as ints). */
static jv attr_path(jx_render *R, jv item, jv attribute, jv dflt) {
    if (!given(attribute) || attribute.kind == JV_NONE) return item;
    if (attribute.kind != JV_STR) {
        item = jx_getitem(R, item, attribute);
        return item.kind == JV_UNDEF && given(dflt) && dflt.kind != JV_NONE ? dflt : item;
    }
    const char *p = attribute.s.p, *end = p + attribute.s.n;
    for (;;) {
        const char *dot = memchr(p, '.', (size_t)(end - p));
        const char *e = dot ? dot : end;
        int digits = e > p;
        int64_t num = 0;
        for (const char *c = p; c < e; c++) {
            if (*c < '0' || *c > '9' || num > INT64_MAX / 10 - 10) {
                digits = 0;
                break;
            }
            num = num * 10 + (*c - '0');
        }
        item = jx_getitem(R, item, digits ? jv_int(num) : jv_str(p, (size_t)(e - p)));
        if (given(dflt) && dflt.kind != JV_NONE && item.kind == JV_UNDEF) item = dflt;
        if (!dot) return item;
        p = dot + 1;
    }
}

static jv ignore_case(jx_render *R, jv v) { return v.kind == JV_STR ? jx_str_case(R, v, CASE_LOWER) : v; }

/* ------------------------------------------------------------ sorting -- */

static void merge_sort(jx_render *R, jv *v, jv *tmp, size_t n, int (*cmp)(jx_render *, jv, jv, void *), void *ctx) {
    if (n < 2) return;
    size_t h = n / 2;
    merge_sort(R, v, tmp, h, cmp, ctx);
    merge_sort(R, v + h, tmp, n - h, cmp, ctx);
    size_t i = 0, j = h, k = 0;
    while (i < h && j < n)
        tmp[k++] = cmp(R, v[j], v[i], ctx) < 0 ? v[j++] : v[i++];
    while (i < h)
        tmp[k++] = v[i++];
    while (j < n)
        tmp[k++] = v[j++];
    memcpy(v, tmp, n * sizeof *v);
}

void jx_sort(jx_render *R, jv *v, size_t n, int (*cmp)(jx_render *, jv, jv, void *), void *ctx) {
    if (n < 2) return;
    jv *tmp = jx_alloc(&R->arena, n * sizeof *tmp);
    merge_sort(R, v, tmp, n, cmp, ctx);
}

/* Sorting pairs (key, item) stored as 2-element tuples. */
typedef struct sort_ctx {
    int reverse;
} sort_ctx;

static int cmp_keyed(jx_render *R, jv a, jv b, void *ctx) {
    int c = jv_cmp(R, a.l->v[0], b.l->v[0]);
    return ((sort_ctx *)ctx)->reverse ? -c : c;
}

static jv pair(jx_render *R, jv a, jv b) {
    jv t = jv_new_list(R, JV_TUPLE, 2);
    jv_list_push(R, t, a);
    jv_list_push(R, t, b);
    return t;
}

/* sorted(items, key=keys[i], reverse) */
static jv sorted_by(jx_render *R, jv items, jv keys, int reverse) {
    size_t n = items.l->n;
    jv *pairs = jx_alloc(&R->arena, (n ? n : 1) * sizeof(jv));
    for (size_t i = 0; i < n; i++)
        pairs[i] = pair(R, keys.l->v[i], items.l->v[i]);
    sort_ctx c = {reverse};
    jx_sort(R, pairs, n, cmp_keyed, &c);
    jv out = jv_new_list(R, JV_LIST, n);
    for (size_t i = 0; i < n; i++)
        jv_list_push(R, out, pairs[i].l->v[1]);
    return out;
}

/* --------------------------------------------------------------- filters -- */

static jv f_abs(jx_render *R, jv v, jx_args *a) {
    jx_bind(R, "abs", a, NULL, 0, NULL);
    if (v.kind == JV_INT) {
        if (v.i == INT64_MIN) jx_unsupported(R, "integer overflow (beyond 64 bits)");
        return jv_int(v.i < 0 ? -v.i : v.i);
    }
    if (v.kind == JV_BOOL) return jv_int(v.b);
    if (v.kind == JV_FLOAT) return jv_float(fabs(v.f));
    if (v.kind == JV_UNDEF) jx_undef_error(R, v);
    jx_fail(R, "bad operand type for abs(): '%s'", jv_type_name(v));
}

static jv f_attr(jx_render *R, jv v, jx_args *a) {
    static const char *const names[] = {"name"};
    jv arg[1];
    jx_bind(R, "attr", a, names, 1, arg);
    jv name = need_str(R, arg[0]);
    int found;
    if (v.kind == JV_UNDEF) jx_undef_error(R, v);
    if (v.kind == JV_NS || v.kind == JV_LOOP) return jx_getattr(R, v, name.s.p, name.s.n);
    jv m = jx_method_bind(R, v, name.s.p, name.s.n, &found);
    return found ? m : jx_undef_attr(R, v, name.s.p, name.s.n);
}

static jv f_batch(jx_render *R, jv v, jx_args *a) {
    static const char *const names[] = {"linecount", "fill_with"};
    jv arg[2];
    jx_bind(R, "batch", a, names, 2, arg);
    int64_t n = need_int(R, arg[0], "batch");
    if (n <= 0) jx_fail(R, "batch: linecount must be positive");
    jv items = as_list(R, v), out = jv_new_list(R, JV_LIST, 0), cur = jv_new_list(R, JV_LIST, 0);
    for (size_t i = 0; i < items.l->n; i++) {
        if ((int64_t)cur.l->n == n) {
            jv_list_push(R, out, cur);
            cur = jv_new_list(R, JV_LIST, 0);
        }
        jv_list_push(R, cur, items.l->v[i]);
    }
    if (cur.l->n) {
        if (given(arg[1]) && arg[1].kind != JV_NONE)
            while ((int64_t)cur.l->n < n)
                jv_list_push(R, cur, arg[1]);
        jv_list_push(R, out, cur);
    }
    return out;
}

static jv f_capitalize(jx_render *R, jv v, jx_args *a) {
    jx_bind(R, "capitalize", a, NULL, 0, NULL);
    return jx_str_case(R, need_str(R, v), CASE_CAPITALIZE);
}

static jv f_center(jx_render *R, jv v, jx_args *a) {
    static const char *const names[] = {"width"};
    jv arg[1];
    jx_bind(R, "center", a, names, 1, arg);
    jv s = need_str(R, v);
    int64_t width = given(arg[0]) ? need_int(R, arg[0], "center") : 80;
    int64_t len = (int64_t)ju_count(s.s.p, s.s.n);
    if (width <= len) return s;
    if (width > (1 << 24)) jx_fail(R, "center: width too large");
    int64_t marg = width - len, left = marg / 2 + (marg & width & 1);
    jx_sb b = {.a = &R->arena};
    for (int64_t i = 0; i < left; i++)
        jx_sb_putc(&b, ' ');
    jx_sb_put(&b, s.s.p, s.s.n);
    for (int64_t i = 0; i < marg - left; i++)
        jx_sb_putc(&b, ' ');
    return jv_str(b.p, b.n);
}

static jv f_default(jx_render *R, jv v, jx_args *a) {
    static const char *const names[] = {"default_value", "boolean"};
    jv arg[2];
    jx_bind(R, "default", a, names, 2, arg);
    jv dflt = given(arg[0]) ? arg[0] : jv_str("", 0);
    if (v.kind == JV_UNDEF || (opt_bool(arg[1], 0) && !jv_truthy(v))) return dflt;
    return v;
}

static jv f_dictsort(jx_render *R, jv v, jx_args *a) {
    static const char *const names[] = {"case_sensitive", "by", "reverse"};
    jv arg[3];
    jx_bind(R, "dictsort", a, names, 3, arg);
    if (v.kind != JV_DICT) jx_fail(R, "dictsort: expected a mapping, got %s", jv_type_name(v));
    int pos = 0;
    if (given(arg[1])) {
        jv by = need_str(R, arg[1]);
        if (by.s.n == 5 && !memcmp(by.s.p, "value", 5))
            pos = 1;
        else if (!(by.s.n == 3 && !memcmp(by.s.p, "key", 3)))
            jx_fail(R, "You can only sort by either \"key\" or \"value\"");
    }
    jv items = jv_new_list(R, JV_LIST, v.d->n), keys = jv_new_list(R, JV_LIST, v.d->n);
    for (size_t i = 0; i < v.d->n; i++) {
        jv_list_push(R, items, pair(R, v.d->k[i], v.d->v[i]));
        jv k = pos ? v.d->v[i] : v.d->k[i];
        jv_list_push(R, keys, opt_bool(arg[0], 0) ? k : ignore_case(R, k));
    }
    return sorted_by(R, items, keys, opt_bool(arg[2], 0));
}

static jv f_escape(jx_render *R, jv v, jx_args *a) {
    jx_bind(R, "escape", a, NULL, 0, NULL);
    jv s = need_str(R, v);
    jx_sb b = {.a = &R->arena};
    for (size_t i = 0; i < s.s.n; i++) {
        switch (s.s.p[i]) {
        case '&': jx_sb_puts(&b, "&amp;"); break;
        case '<': jx_sb_puts(&b, "&lt;"); break;
        case '>': jx_sb_puts(&b, "&gt;"); break;
        case '\'': jx_sb_puts(&b, "&#39;"); break;
        case '"': jx_sb_puts(&b, "&#34;"); break;
        default: jx_sb_putc(&b, s.s.p[i]);
        }
    }
    return jv_str(b.p ? b.p : "", b.n);
}

static jv first_or_last(jx_render *R, jv v, int last) {
    if (v.kind == JV_STR) {
        if (v.s.n == 0)
            return jv_undef(last ? "No last item, sequence was empty." : "No first item, sequence was empty.");
        size_t n = ju_count(v.s.p, v.s.n);
        return jx_getitem(R, v, jv_int(last ? (int64_t)n - 1 : 0));
    }
    jv l = as_list(R, v);
    if (l.l->n == 0) return jv_undef(last ? "No last item, sequence was empty." : "No first item, sequence was empty.");
    return l.l->v[last ? l.l->n - 1 : 0];
}

static jv f_first(jx_render *R, jv v, jx_args *a) {
    jx_bind(R, "first", a, NULL, 0, NULL);
    return first_or_last(R, v, 0);
}

static jv f_last(jx_render *R, jv v, jx_args *a) {
    jx_bind(R, "last", a, NULL, 0, NULL);
    return first_or_last(R, v, 1);
}

/* Python's float(str): optional whitespace, sign, digits with '_', inf, nan. */
static int parse_py_float(const char *p, size_t n, double *out) {
    char buf[128];
    size_t k = 0, i = 0;
    while (i < n && ju_isspace((unsigned char)p[i]))
        i++;
    while (n > i && ju_isspace((unsigned char)p[n - 1]))
        n--;
    if (i == n || n - i >= sizeof buf || memchr(p + i, 0, n - i)) return 0;
    for (; i < n; i++) {
        if (p[i] == '_') {
            if (k == 0 || i + 1 >= n || !(p[i + 1] >= '0' && p[i + 1] <= '9') ||
                !(buf[k - 1] >= '0' && buf[k - 1] <= '9'))
                return 0;
            continue;
        }
        buf[k++] = p[i];
    }
    buf[k] = 0;
    const char *s = buf + (buf[0] == '+' || buf[0] == '-');
    if (!strcasecmp(s, "inf") || !strcasecmp(s, "infinity") || !strcasecmp(s, "nan")) {
        double x = (s[0] | 32) == 'n' ? NAN : INFINITY;
        *out = buf[0] == '-' ? -x : x;
        return 1;
    }
    for (const char *c = s; *c; c++)
        if (!strchr("0123456789.eE+-", *c)) return 0;
    char *end;
    *out = strtod(buf, &end);
    return *end == 0 && end != buf;
}

/* Python's int(str, base): whitespace, sign, a 0x/0o/0b prefix matching the
 * base (base 0: the prefix decides), digits with single '_'. */
static int parse_py_int(const char *p, size_t n, int base, int64_t *out) {
    size_t i = 0;
    while (i < n && ju_isspace((unsigned char)p[i]))
        i++;
    while (n > i && ju_isspace((unsigned char)p[n - 1]))
        n--;
    int neg = 0;
    if (i < n && (p[i] == '+' || p[i] == '-')) neg = p[i++] == '-';
    if (i == n) return 0;
    if (i + 1 < n && p[i] == '0') {
        char x = (char)(p[i + 1] | 32);
        int pb = x == 'x' ? 16 : x == 'o' ? 8 : x == 'b' ? 2 : 0;
        if (pb && (base == 0 || base == pb)) {
            base = pb;
            i += 2;
            if (i < n && p[i] == '_') i++;
        }
    }
    if (base == 0) {
        base = 10;
        /* base 0 reads decimals without leading zeros (except 0 itself) */
        size_t k = i;
        while (k < n && (p[k] == '0' || p[k] == '_'))
            k++;
        if (k > i && k < n) return 0;
    }
    if (i == n) return 0;
    uint64_t v = 0;
    int any = 0;
    for (; i < n; i++) {
        if (p[i] == '_' && any && i + 1 < n && p[i + 1] != '_') continue;
        int d = p[i] >= '0' && p[i] <= '9'                 ? p[i] - '0'
                : (p[i] | 32) >= 'a' && (p[i] | 32) <= 'z' ? (p[i] | 32) - 'a' + 10
                                                           : 99;
        if (d >= base) return 0;
        if (v > (UINT64_MAX - (uint64_t)d) / (uint64_t)base) return -1;
        v = v * (uint64_t)base + (uint64_t)d;
        any = 1;
    }
    if (!any || v > (uint64_t)INT64_MAX + (uint64_t)neg) return any ? -1 : 0;
    *out = neg ? (int64_t)(0 - v) : (int64_t)v;
    return 1;
}

static jv f_float(jx_render *R, jv v, jx_args *a) {
    static const char *const names[] = {"default"};
    jv arg[1];
    jx_bind(R, "float", a, names, 1, arg);
    jv dflt = given(arg[0]) ? arg[0] : jv_float(0.0);
    double d;
    switch (v.kind) {
    case JV_FLOAT: return v;
    case JV_INT:
    case JV_BOOL: return jv_float(jv_num(v));
    case JV_STR: return parse_py_float(v.s.p, v.s.n, &d) ? jv_float(d) : dflt;
    case JV_UNDEF: jx_undef_error(R, v);
    default: return dflt;
    }
}

static jv f_int(jx_render *R, jv v, jx_args *a) {
    static const char *const names[] = {"default", "base"};
    jv arg[2];
    jx_bind(R, "int", a, names, 2, arg);
    jv dflt = given(arg[0]) ? arg[0] : jv_int(0);
    int64_t base = given(arg[1]) ? need_int(R, arg[1], "int") : 10, i;
    double d;
    switch (v.kind) {
    case JV_INT: return v;
    case JV_BOOL: return jv_int(v.b);
    case JV_FLOAT:
        if (!isfinite(v.f)) jx_fail(R, "cannot convert float %s to integer", isnan(v.f) ? "NaN" : "infinity");
        if (fabs(v.f) >= 9.2e18) jx_unsupported(R, "integer overflow (beyond 64 bits)");
        return jv_int((int64_t)v.f);
    case JV_STR: {
        if (base != 0 && (base < 2 || base > 36)) return dflt;
        int r = parse_py_int(v.s.p, v.s.n, (int)base, &i);
        if (r == 1) return jv_int(i);
        if (r < 0) jx_unsupported(R, "integer overflow (beyond 64 bits)");
        if (parse_py_float(v.s.p, v.s.n, &d)) {
            if (!isfinite(d)) jx_fail(R, "cannot convert float %s to integer", isnan(d) ? "NaN" : "infinity");
            if (fabs(d) >= 9.2e18) jx_unsupported(R, "integer overflow (beyond 64 bits)");
            return jv_int((int64_t)d);
        }
        return dflt;
    }
    case JV_UNDEF: jx_undef_error(R, v);
    default: return dflt;
    }
}

static jv f_format(jx_render *R, jv v, jx_args *a) {
    jv s = need_str(R, v);
    if (a->nkw) {
        jv d = jv_new_dict(R, JV_DICT, (size_t)a->nkw);
        for (int i = 0; i < a->nkw; i++)
            jv_dict_set(R, d, jv_str(a->kwn[i], strlen(a->kwn[i])), a->kwv[i]);
        return jx_percent_format(R, s, d);
    }
    jv t = jv_new_list(R, JV_TUPLE, (size_t)a->npos);
    for (int i = 0; i < a->npos; i++)
        jv_list_push(R, t, a->pos[i]);
    return jx_percent_format(R, s, t);
}

static jv f_indent(jx_render *R, jv v, jx_args *a) {
    static const char *const names[] = {"width", "first", "blank"};
    jv arg[3];
    jx_bind(R, "indent", a, names, 3, arg);
    jv s = need_str(R, v);
    jx_sb ind = {.a = &R->arena};
    if (given(arg[0]) && arg[0].kind == JV_STR)
        jx_sb_put(&ind, arg[0].s.p, arg[0].s.n);
    else {
        int64_t w = given(arg[0]) ? need_int(R, arg[0], "indent") : 4;
        if (w > (1 << 20)) jx_fail(R, "indent: width too large");
        for (int64_t i = 0; i < w; i++)
            jx_sb_putc(&ind, ' ');
    }
    int first = opt_bool(arg[1], 0), blank = opt_bool(arg[2], 0);
    /* s += "\n", then splitlines() */
    jx_sb text = {.a = &R->arena};
    jx_sb_put(&text, s.s.p, s.s.n);
    jx_sb_putc(&text, '\n');
    jx_sb out = {.a = &R->arena};
    size_t i = 0, line = 0;
    while (i < text.n) {
        size_t start = i, end, adv;
        for (;;) {
            int32_t c = ju_decode(text.p + i, text.n - i, &adv);
            if (ju_islinebreak(c)) {
                end = i;
                i += adv;
                if (c == '\r' && i < text.n && text.p[i] == '\n') i++;
                break;
            }
            i += adv;
        }
        if (line > 0) {
            jx_sb_putc(&out, '\n');
            if (blank || end > start) jx_sb_put(&out, ind.p, ind.n);
        }
        jx_sb_put(&out, text.p + start, end - start);
        line++;
    }
    if (first) {
        jx_sb o2 = {.a = &R->arena};
        jx_sb_put(&o2, ind.p, ind.n);
        jx_sb_put(&o2, out.p, out.n);
        out = o2;
    }
    return jv_str(out.p ? out.p : "", out.n);
}

static jv f_items(jx_render *R, jv v, jx_args *a) {
    jx_bind(R, "items", a, NULL, 0, NULL);
    if (v.kind == JV_UNDEF) return jv_new_list(R, JV_LIST, 0);
    if (v.kind != JV_DICT) jx_fail(R, "Can only get item pairs from a mapping.");
    jv out = jv_new_list(R, JV_LIST, v.d->n);
    for (size_t i = 0; i < v.d->n; i++)
        jv_list_push(R, out, pair(R, v.d->k[i], v.d->v[i]));
    return out;
}

static jv f_join(jx_render *R, jv v, jx_args *a) {
    static const char *const names[] = {"d", "attribute"};
    jv arg[2];
    jx_bind(R, "join", a, names, 2, arg);
    jv sep = given(arg[0]) ? need_str(R, arg[0]) : jv_str("", 0);
    jv items = as_list(R, v);
    jx_sb b = {.a = &R->arena};
    for (size_t i = 0; i < items.l->n; i++) {
        if (i) jx_sb_put(&b, sep.s.p, sep.s.n);
        jv_write_str(R, &b, attr_path(R, items.l->v[i], arg[1], jv_undef(NULL)));
    }
    return jv_str(b.p ? b.p : "", b.n);
}

static jv f_length(jx_render *R, jv v, jx_args *a) {
    jx_bind(R, "length", a, NULL, 0, NULL);
    switch (v.kind) {
    case JV_UNDEF: return jv_int(0);
    case JV_STR: return jv_int((int64_t)ju_count(v.s.p, v.s.n));
    case JV_LIST:
    case JV_TUPLE: return jv_int((int64_t)v.l->n);
    case JV_DICT: return jv_int((int64_t)v.d->n);
    case JV_LOOP: return jv_int(v.loop->length);
    default: jx_fail(R, "object of type '%s' has no len()", jv_type_name(v));
    }
}

static jv f_list(jx_render *R, jv v, jx_args *a) {
    jx_bind(R, "list", a, NULL, 0, NULL);
    jv l = as_list(R, v), out = jv_new_list(R, JV_LIST, l.l->n);
    for (size_t i = 0; i < l.l->n; i++)
        jv_list_push(R, out, l.l->v[i]);
    return out;
}

static jv f_lower(jx_render *R, jv v, jx_args *a) {
    jx_bind(R, "lower", a, NULL, 0, NULL);
    return jx_str_case(R, need_str(R, v), CASE_LOWER);
}

static jv f_upper(jx_render *R, jv v, jx_args *a) {
    jx_bind(R, "upper", a, NULL, 0, NULL);
    return jx_str_case(R, need_str(R, v), CASE_UPPER);
}

static jv f_title(jx_render *R, jv v, jx_args *a) {
    jx_bind(R, "title", a, NULL, 0, NULL);
    /* jinja2's do_title: split on runs of [-\s({\[<]; each word gets its first
     * character upper-cased and the rest lower-cased */
    jv s = need_str(R, v);
    jx_sb b = {.a = &R->arena};
    int prev_sep = 1;
    size_t i = 0, adv;
    while (i < s.s.n) {
        int32_t c = ju_decode(s.s.p + i, s.s.n - i, &adv);
        int sep = ju_isspace(c) || c == '-' || c == '(' || c == '{' || c == '[' || c == '<';
        int32_t o[3];
        int n = sep ? (o[0] = c, 1) : ju_case_full(c, prev_sep ? JU_UPPER : JU_LOWER, o);
        for (int k = 0; k < n; k++)
            jx_sb_put_cp(&b, o[k]);
        prev_sep = sep;
        i += adv;
    }
    return jv_str(b.p ? b.p : "", b.n);
}

static jv f_map(jx_render *R, jv v, jx_args *a) {
    jv items = as_list(R, v), out = jv_new_list(R, JV_LIST, items.l->n);
    if (a->npos == 0) {
        jv attribute = jv_undef(NULL), dflt = jv_undef(NULL);
        for (int k = 0; k < a->nkw; k++) {
            if (!strcmp(a->kwn[k], "attribute"))
                attribute = a->kwv[k];
            else if (!strcmp(a->kwn[k], "default"))
                dflt = a->kwv[k];
            else
                jx_fail(R, "Unexpected keyword argument '%s'", a->kwn[k]);
        }
        if (!given(attribute)) jx_fail(R, "map requires a filter argument");
        for (size_t i = 0; i < items.l->n; i++)
            jv_list_push(R, out, attr_path(R, items.l->v[i], attribute, dflt));
        return out;
    }
    jv name = need_str(R, a->pos[0]);
    char *fname = jx_memdup(&R->arena, name.s.p, name.s.n);
    int fid = jx_filter_find(fname);
    if (fid < 0) jx_unsupported(R, "no filter named '%s'", fname);
    jx_args rest = *a;
    rest.pos++;
    rest.npos--;
    for (size_t i = 0; i < items.l->n; i++)
        jv_list_push(R, out, jx_filter_call(R, fid, items.l->v[i], &rest));
    return out;
}

static jv min_max(jx_render *R, jv v, jx_args *a, int want_max) {
    static const char *const names[] = {"case_sensitive", "attribute"};
    jv arg[2];
    jx_bind(R, want_max ? "max" : "min", a, names, 2, arg);
    jv items = as_list(R, v);
    if (items.l->n == 0) return jv_undef("No aggregated item, sequence was empty.");
    int cs = opt_bool(arg[0], 0);
    size_t best = 0;
    jv bk = attr_path(R, items.l->v[0], arg[1], jv_undef(NULL));
    if (!cs) bk = ignore_case(R, bk);
    for (size_t i = 1; i < items.l->n; i++) {
        jv k = attr_path(R, items.l->v[i], arg[1], jv_undef(NULL));
        if (!cs) k = ignore_case(R, k);
        int c = jv_cmp(R, k, bk);
        if (want_max ? c > 0 : c < 0) {
            best = i;
            bk = k;
        }
    }
    return items.l->v[best];
}

static jv f_max(jx_render *R, jv v, jx_args *a) { return min_max(R, v, a, 1); }
static jv f_min(jx_render *R, jv v, jx_args *a) { return min_max(R, v, a, 0); }

static jv select_reject(jx_render *R, jv v, jx_args *a, int select, int by_attr) {
    jv out = jv_new_list(R, JV_LIST, 0);
    if (!jv_truthy(v)) return out;
    jv items = as_list(R, v);
    int off = 0;
    jv attribute = jv_undef(NULL);
    if (by_attr) {
        if (a->npos < 1) jx_fail(R, "Missing parameter for attribute name");
        attribute = a->pos[0];
        off = 1;
    }
    int tid = -1;
    jx_args rest = *a;
    if (a->npos > off) {
        jv name = need_str(R, a->pos[off]);
        char *tname = jx_memdup(&R->arena, name.s.p, name.s.n);
        tid = jx_test_find(tname);
        if (tid < 0) jx_unsupported(R, "no test named '%s'", tname);
        rest.pos += off + 1;
        rest.npos -= off + 1;
    }
    for (size_t i = 0; i < items.l->n; i++) {
        jv x = by_attr ? attr_path(R, items.l->v[i], attribute, jv_undef(NULL)) : items.l->v[i];
        int r = tid >= 0 ? jx_test_call(R, tid, x, &rest) : jv_truthy(x);
        if (r == select) jv_list_push(R, out, items.l->v[i]);
    }
    return out;
}

static jv f_select(jx_render *R, jv v, jx_args *a) { return select_reject(R, v, a, 1, 0); }
static jv f_reject(jx_render *R, jv v, jx_args *a) { return select_reject(R, v, a, 0, 0); }
static jv f_selectattr(jx_render *R, jv v, jx_args *a) { return select_reject(R, v, a, 1, 1); }
static jv f_rejectattr(jx_render *R, jv v, jx_args *a) { return select_reject(R, v, a, 0, 1); }

static jv f_replace(jx_render *R, jv v, jx_args *a) {
    static const char *const names[] = {"old", "new", "count"};
    jv arg[3];
    jx_bind(R, "replace", a, names, 3, arg);
    if (!given(arg[0]) || !given(arg[1])) jx_fail(R, "replace() missing required arguments 'old' and 'new'");
    int64_t count = given(arg[2]) && arg[2].kind != JV_NONE ? need_int(R, arg[2], "replace") : -1;
    return jx_str_replace(R, need_str(R, v), need_str(R, arg[0]), need_str(R, arg[1]), count);
}

static jv f_reverse(jx_render *R, jv v, jx_args *a) {
    jx_bind(R, "reverse", a, NULL, 0, NULL);
    if (v.kind == JV_STR) return jx_slice(R, v, jv_none(), jv_none(), jv_int(-1));
    jv l = as_list(R, v), out = jv_new_list(R, JV_LIST, l.l->n);
    for (size_t i = l.l->n; i > 0; i--)
        jv_list_push(R, out, l.l->v[i - 1]);
    return out;
}

/* Python's round(x, n) for floats: correctly rounded, ties to even. */
static double py_round(double x, int64_t nd) {
    if (!isfinite(x) || nd > 308) return x;
    if (nd < -308) return copysign(0.0, x);
    char buf[512];
    if (nd >= 0) {
        snprintf(buf, sizeof buf, "%.*f", (int)nd, x);
        return strtod(buf, NULL);
    }
    double p = pow(10.0, (double)-nd), y = x / p, r = nearbyint(y);
    return r * p;
}

static jv f_round(jx_render *R, jv v, jx_args *a) {
    static const char *const names[] = {"precision", "method"};
    jv arg[2];
    jx_bind(R, "round", a, names, 2, arg);
    int64_t nd = given(arg[0]) ? need_int(R, arg[0], "round") : 0;
    jv method = given(arg[1]) ? need_str(R, arg[1]) : jv_str("common", 6);
    if (v.kind == JV_UNDEF) jx_undef_error(R, v);
    if (!jv_is_num(v)) jx_fail(R, "type %s doesn't define __round__ method", jv_type_name(v));
    double x = jv_num(v);
    if (method.s.n == 6 && !memcmp(method.s.p, "common", 6)) {
        if (v.kind != JV_FLOAT) {
            if (nd >= 0) return v.kind == JV_BOOL ? jv_int(v.b) : v;
            double r = py_round(x, nd);
            if (!(fabs(r) < 9.2e18)) jx_unsupported(R, "integer overflow (beyond 64 bits)");
            return jv_int((int64_t)r);
        }
        return jv_float(py_round(x, nd));
    }
    int ceil_ = method.s.n == 4 && !memcmp(method.s.p, "ceil", 4);
    int floor_ = method.s.n == 5 && !memcmp(method.s.p, "floor", 5);
    if (!ceil_ && !floor_) jx_fail(R, "method must be common, ceil or floor");
    double p = pow(10.0, (double)nd);
    return jv_float((ceil_ ? ceil(x * p) : floor(x * p)) / p);
}

static jv f_safe(jx_render *R, jv v, jx_args *a) {
    jx_bind(R, "safe", a, NULL, 0, NULL);
    return need_str(R, v);
}

static jv f_sort(jx_render *R, jv v, jx_args *a) {
    static const char *const names[] = {"reverse", "case_sensitive", "attribute"};
    jv arg[3];
    jx_bind(R, "sort", a, names, 3, arg);
    jv items = as_list(R, v), keys = jv_new_list(R, JV_LIST, items.l->n);
    for (size_t i = 0; i < items.l->n; i++) {
        jv k = attr_path(R, items.l->v[i], arg[2], jv_undef(NULL));
        jv_list_push(R, keys, opt_bool(arg[1], 0) ? k : ignore_case(R, k));
    }
    return sorted_by(R, items, keys, opt_bool(arg[0], 0));
}

static jv f_string(jx_render *R, jv v, jx_args *a) {
    jx_bind(R, "string", a, NULL, 0, NULL);
    return need_str(R, v);
}

static jv f_sum(jx_render *R, jv v, jx_args *a) {
    static const char *const names[] = {"attribute", "start"};
    jv arg[2];
    jx_bind(R, "sum", a, names, 2, arg);
    jv items = as_list(R, v), acc = given(arg[1]) ? arg[1] : jv_int(0);
    for (size_t i = 0; i < items.l->n; i++) {
        jv x = attr_path(R, items.l->v[i], arg[0], jv_undef(NULL));
        if (x.kind == JV_UNDEF) jx_undef_error(R, x);
        if (acc.kind == JV_STR) jx_fail(R, "sum() can't sum strings [use ''.join(seq) instead]");
        if (!(jv_is_num(acc) && jv_is_num(x)))
            jx_fail(R, "unsupported operand type(s) for +: '%s' and '%s'", jv_type_name(acc), jv_type_name(x));
        if (acc.kind != JV_FLOAT && x.kind != JV_FLOAT) {
            int64_t r;
            if (__builtin_add_overflow(acc.kind == JV_BOOL ? acc.b : acc.i, x.kind == JV_BOOL ? x.b : x.i, &r))
                jx_unsupported(R, "integer overflow (beyond 64 bits)");
            acc = jv_int(r);
        } else
            acc = jv_float(jv_num(acc) + jv_num(x));
    }
    return acc;
}

static jv f_tojson(jx_render *R, jv v, jx_args *a) {
    static const char *const names[] = {"ensure_ascii", "indent", "separators", "sort_keys"};
    jv arg[4];
    jx_bind(R, "tojson", a, names, 4, arg);
    jx_json_opts o = {0};
    o.ensure_ascii = opt_bool(arg[0], 0);
    o.sort_keys = opt_bool(arg[3], 0);
    jx_sb ind = {.a = &R->arena};
    if (given(arg[1]) && arg[1].kind != JV_NONE) {
        if (arg[1].kind == JV_STR)
            jx_sb_put(&ind, arg[1].s.p, arg[1].s.n);
        else {
            int64_t w = need_int(R, arg[1], "tojson indent");
            if (w > 1024) jx_fail(R, "tojson: indent too large");
            for (int64_t i = 0; i < w; i++)
                jx_sb_putc(&ind, ' ');
        }
        o.indent = ind.p ? ind.p : "";
        o.indent_n = ind.n;
    }
    if (given(arg[2]) && arg[2].kind != JV_NONE) {
        jv s = arg[2];
        if (!jv_is_seq(s) || s.l->n != 2 || s.l->v[0].kind != JV_STR || s.l->v[1].kind != JV_STR)
            jx_fail(R, "tojson: separators must be a pair of strings");
        o.item_sep = jx_memdup(&R->arena, s.l->v[0].s.p, s.l->v[0].s.n);
        o.key_sep = jx_memdup(&R->arena, s.l->v[1].s.p, s.l->v[1].s.n);
    }
    jx_sb b = {.a = &R->arena};
    jv_write_json(R, &b, v, &o, 0);
    return jv_str(b.p ? b.p : "", b.n);
}

static jv f_trim(jx_render *R, jv v, jx_args *a) {
    static const char *const names[] = {"chars"};
    jv arg[1];
    jx_bind(R, "trim", a, names, 1, arg);
    return jx_str_strip(R, need_str(R, v), arg[0], 1, 1);
}

static jv f_truncate(jx_render *R, jv v, jx_args *a) {
    static const char *const names[] = {"length", "killwords", "end", "leeway"};
    jv arg[4];
    jx_bind(R, "truncate", a, names, 4, arg);
    jv s = need_str(R, v);
    int64_t length = given(arg[0]) ? need_int(R, arg[0], "truncate") : 255;
    jv end = given(arg[2]) ? need_str(R, arg[2]) : jv_str("...", 3);
    int64_t leeway = given(arg[3]) && arg[3].kind != JV_NONE ? need_int(R, arg[3], "truncate") : 5;
    int64_t end_len = (int64_t)ju_count(end.s.p, end.s.n), len = (int64_t)ju_count(s.s.p, s.s.n);
    if (length < end_len) jx_fail(R, "expected length >= %lld, got %lld", (long long)end_len, (long long)length);
    if (leeway < 0) jx_fail(R, "expected leeway >= 0, got %lld", (long long)leeway);
    if (len <= length || len - length <= leeway) return s; /* len, length >= 0: no overflow */
    jv head = jx_slice(R, s, jv_none(), jv_int(length - end_len), jv_none());
    if (!opt_bool(arg[1], 0)) {
        /* rsplit(" ", 1)[0] */
        for (size_t i = head.s.n; i > 0; i--)
            if (head.s.p[i - 1] == ' ') {
                head.s.n = i - 1;
                break;
            }
    }
    jx_sb b = {.a = &R->arena};
    jx_sb_put(&b, head.s.p, head.s.n);
    jx_sb_put(&b, end.s.p, end.s.n);
    return jv_str(b.p, b.n);
}

static jv f_unique(jx_render *R, jv v, jx_args *a) {
    static const char *const names[] = {"case_sensitive", "attribute"};
    jv arg[2];
    jx_bind(R, "unique", a, names, 2, arg);
    jv items = as_list(R, v), out = jv_new_list(R, JV_LIST, 0), seen = jv_new_list(R, JV_LIST, 0);
    for (size_t i = 0; i < items.l->n; i++) {
        jv k = attr_path(R, items.l->v[i], arg[1], jv_undef(NULL));
        if (!opt_bool(arg[0], 0)) k = ignore_case(R, k);
        int dup = 0;
        for (size_t j = 0; j < seen.l->n && !dup; j++)
            dup = jv_eq(seen.l->v[j], k);
        if (!dup) {
            jv_list_push(R, seen, k);
            jv_list_push(R, out, items.l->v[i]);
        }
    }
    return out;
}

static jv f_wordcount(jx_render *R, jv v, jx_args *a) {
    jx_bind(R, "wordcount", a, NULL, 0, NULL);
    jv s = need_str(R, v);
    int64_t n = 0;
    int in_word = 0;
    size_t i = 0, adv;
    while (i < s.s.n) {
        int32_t c = ju_decode(s.s.p + i, s.s.n - i, &adv);
        int w = ju_isalpha(c) || ju_isnumeric(c) || c == '_';
        if (w && !in_word) n++;
        in_word = w;
        i += adv;
    }
    return jv_int(n);
}

static const struct {
    const char *name;
    filter_fn fn;
} k_filters[] = {
    {"abs", f_abs},
    {"attr", f_attr},
    {"batch", f_batch},
    {"capitalize", f_capitalize},
    {"center", f_center},
    {"count", f_length},
    {"d", f_default},
    {"default", f_default},
    {"dictsort", f_dictsort},
    {"e", f_escape},
    {"escape", f_escape},
    {"first", f_first},
    {"float", f_float},
    {"format", f_format},
    {"indent", f_indent},
    {"int", f_int},
    {"items", f_items},
    {"join", f_join},
    {"last", f_last},
    {"length", f_length},
    {"list", f_list},
    {"lower", f_lower},
    {"map", f_map},
    {"max", f_max},
    {"min", f_min},
    {"reject", f_reject},
    {"rejectattr", f_rejectattr},
    {"replace", f_replace},
    {"reverse", f_reverse},
    {"round", f_round},
    {"safe", f_safe},
    {"select", f_select},
    {"selectattr", f_selectattr},
    {"sort", f_sort},
    {"string", f_string},
    {"sum", f_sum},
    {"title", f_title},
    {"tojson", f_tojson},
    {"trim", f_trim},
    {"truncate", f_truncate},
    {"unique", f_unique},
    {"upper", f_upper},
    {"wordcount", f_wordcount},
};

int jx_filter_find(const char *name) {
    for (size_t i = 0; i < sizeof k_filters / sizeof *k_filters; i++)
        if (strcmp(k_filters[i].name, name) == 0) return (int)i;
    return -1;
}

jv jx_filter_call(jx_render *R, int id, jv v, jx_args *a) { return k_filters[id].fn(R, v, a); }

/* ----------------------------------------------------------------- tests -- */

static jv test_arg(jx_render *R, const char *name, jx_args *a) {
    static const char *const names[] = {"other"};
    jv arg[1];
    jx_bind(R, name, a, names, 1, arg);
    if (!given(arg[0])) jx_fail(R, "%s() missing 1 required positional argument", name);
    return arg[0];
}

static int t_defined(jx_render *R, jv v, jx_args *a) {
    jx_bind(R, "defined", a, NULL, 0, NULL);
    return v.kind != JV_UNDEF;
}
static int t_undefined(jx_render *R, jv v, jx_args *a) { return !t_defined(R, v, a); }
static int t_none(jx_render *R, jv v, jx_args *a) {
    jx_bind(R, "none", a, NULL, 0, NULL);
    return v.kind == JV_NONE;
}
static int t_string(jx_render *R, jv v, jx_args *a) {
    jx_bind(R, "string", a, NULL, 0, NULL);
    return v.kind == JV_STR;
}
static int t_number(jx_render *R, jv v, jx_args *a) {
    jx_bind(R, "number", a, NULL, 0, NULL);
    return jv_is_num(v);
}
static int t_integer(jx_render *R, jv v, jx_args *a) {
    jx_bind(R, "integer", a, NULL, 0, NULL);
    return v.kind == JV_INT;
}
static int t_float(jx_render *R, jv v, jx_args *a) {
    jx_bind(R, "float", a, NULL, 0, NULL);
    return v.kind == JV_FLOAT;
}
static int t_boolean(jx_render *R, jv v, jx_args *a) {
    jx_bind(R, "boolean", a, NULL, 0, NULL);
    return v.kind == JV_BOOL;
}
static int t_true(jx_render *R, jv v, jx_args *a) {
    jx_bind(R, "true", a, NULL, 0, NULL);
    return v.kind == JV_BOOL && v.b;
}
static int t_false(jx_render *R, jv v, jx_args *a) {
    jx_bind(R, "false", a, NULL, 0, NULL);
    return v.kind == JV_BOOL && !v.b;
}
static int t_mapping(jx_render *R, jv v, jx_args *a) {
    jx_bind(R, "mapping", a, NULL, 0, NULL);
    return v.kind == JV_DICT;
}
static int t_iterable(jx_render *R, jv v, jx_args *a) {
    jx_bind(R, "iterable", a, NULL, 0, NULL);
    return v.kind == JV_STR || jv_is_seq(v) || v.kind == JV_DICT || v.kind == JV_UNDEF || v.kind == JV_LOOP;
}
static int t_sequence(jx_render *R, jv v, jx_args *a) {
    jx_bind(R, "sequence", a, NULL, 0, NULL);
    return v.kind == JV_STR || jv_is_seq(v) || v.kind == JV_DICT || v.kind == JV_UNDEF;
}
static int t_callable(jx_render *R, jv v, jx_args *a) {
    jx_bind(R, "callable", a, NULL, 0, NULL);
    return v.kind == JV_FUNC || v.kind == JV_UNDEF;
}
static int t_escaped(jx_render *R, jv v, jx_args *a) {
    (void)v;
    jx_bind(R, "escaped", a, NULL, 0, NULL);
    return 0;
}

static jv mod2(jx_render *R, jv v, jv d, const char *name) {
    if (v.kind == JV_UNDEF) jx_undef_error(R, v);
    if (!jv_is_num(v) || !jv_is_num(d)) jx_fail(R, "%s: expected numbers, got %s", name, jv_type_name(v));
    if (jv_num(d) == 0) jx_fail(R, "integer division or modulo by zero");
    if (v.kind != JV_FLOAT && d.kind != JV_FLOAT) {
        int64_t x = v.kind == JV_BOOL ? v.b : v.i, y = d.kind == JV_BOOL ? d.b : d.i;
        if (y == -1) return jv_int(0);
        int64_t m = x % y;
        if (m != 0 && ((m < 0) != (y < 0))) m += y;
        return jv_int(m);
    }
    double m = fmod(jv_num(v), jv_num(d));
    if (m != 0 && ((m < 0) != (jv_num(d) < 0))) m += jv_num(d);
    return jv_float(m);
}

static int t_odd(jx_render *R, jv v, jx_args *a) {
    jx_bind(R, "odd", a, NULL, 0, NULL);
    return jv_num(mod2(R, v, jv_int(2), "odd")) == 1;
}
static int t_even(jx_render *R, jv v, jx_args *a) {
    jx_bind(R, "even", a, NULL, 0, NULL);
    return jv_num(mod2(R, v, jv_int(2), "even")) == 0;
}
static int t_divisibleby(jx_render *R, jv v, jx_args *a) {
    static const char *const names[] = {"num"};
    jv arg[1];
    jx_bind(R, "divisibleby", a, names, 1, arg);
    if (!given(arg[0])) jx_fail(R, "divisibleby() missing 1 required positional argument: 'num'");
    return jv_num(mod2(R, v, arg[0], "divisibleby")) == 0;
}
static int t_eq(jx_render *R, jv v, jx_args *a) { return jv_eq(v, test_arg(R, "eq", a)); }
static int t_ne(jx_render *R, jv v, jx_args *a) { return !jv_eq(v, test_arg(R, "ne", a)); }
static int t_lt(jx_render *R, jv v, jx_args *a) { return jv_cmp(R, v, test_arg(R, "lt", a)) < 0; }
static int t_le(jx_render *R, jv v, jx_args *a) { return jv_cmp(R, v, test_arg(R, "le", a)) <= 0; }
static int t_gt(jx_render *R, jv v, jx_args *a) { return jv_cmp(R, v, test_arg(R, "gt", a)) > 0; }
static int t_ge(jx_render *R, jv v, jx_args *a) { return jv_cmp(R, v, test_arg(R, "ge", a)) >= 0; }

static int t_in(jx_render *R, jv v, jx_args *a) {
    static const char *const names[] = {"seq"};
    jv arg[1];
    jx_bind(R, "in", a, names, 1, arg);
    jv seq = arg[0];
    if (seq.kind == JV_STR) {
        if (v.kind != JV_STR) jx_fail(R, "'in <string>' requires string as left operand, not %s", jv_type_name(v));
        for (size_t i = 0; i + v.s.n <= seq.s.n; i++)
            if (memcmp(seq.s.p + i, v.s.p, v.s.n) == 0) return 1;
        return 0;
    }
    if (seq.kind == JV_DICT) return jv_dict_get(seq, v) != NULL;
    if (seq.kind == JV_UNDEF) return 0;
    if (!jv_is_seq(seq)) jx_fail(R, "argument of type '%s' is not iterable", jv_type_name(seq));
    for (size_t i = 0; i < seq.l->n; i++)
        if (jv_eq(seq.l->v[i], v)) return 1;
    return 0;
}

static int t_sameas(jx_render *R, jv v, jx_args *a) {
    jv o = test_arg(R, "sameas", a);
    if (v.kind != o.kind) return 0;
    switch (v.kind) {
    case JV_NONE: return 1;
    case JV_BOOL: return v.b == o.b;
    case JV_INT: return v.i == o.i && v.i >= -5 && v.i <= 256; /* CPython's small-int cache */
    case JV_STR: return v.s.p == o.s.p && v.s.n == o.s.n;
    case JV_LIST:
    case JV_TUPLE: return v.l == o.l;
    case JV_DICT:
    case JV_NS: return v.d == o.d;
    case JV_FUNC: return v.fn == o.fn;
    default: return 0;
    }
}

static int case_test(jx_render *R, jv v, jx_args *a, int upper) {
    jx_bind(R, upper ? "upper" : "lower", a, NULL, 0, NULL);
    jv s = need_str(R, v);
    int cased = 0;
    size_t i = 0, adv;
    while (i < s.s.n) {
        int32_t c = ju_decode(s.s.p + i, s.s.n - i, &adv);
        if (upper ? ju_iscased_lower(c) : ju_iscased_upper(c)) return 0;
        if (ju_iscased_lower(c) || ju_iscased_upper(c)) cased = 1;
        i += adv;
    }
    return cased;
}
static int t_lower(jx_render *R, jv v, jx_args *a) { return case_test(R, v, a, 0); }
static int t_upper(jx_render *R, jv v, jx_args *a) { return case_test(R, v, a, 1); }

static int t_filter(jx_render *R, jv v, jx_args *a) {
    jx_bind(R, "filter", a, NULL, 0, NULL);
    if (v.kind != JV_STR) return 0;
    char *name = jx_memdup(&R->arena, v.s.p, v.s.n);
    return jx_filter_find(name) >= 0;
}
static int t_test(jx_render *R, jv v, jx_args *a) {
    jx_bind(R, "test", a, NULL, 0, NULL);
    if (v.kind != JV_STR) return 0;
    char *name = jx_memdup(&R->arena, v.s.p, v.s.n);
    return jx_test_find(name) >= 0;
}

static const struct {
    const char *name;
    test_fn fn;
} k_tests[] = {
    {"boolean", t_boolean},
    {"callable", t_callable},
    {"defined", t_defined},
    {"divisibleby", t_divisibleby},
    {"eq", t_eq},
    {"equalto", t_eq},
    {"==", t_eq},
    {"escaped", t_escaped},
    {"even", t_even},
    {"false", t_false},
    {"filter", t_filter},
    {"float", t_float},
    {"ge", t_ge},
    {">=", t_ge},
    {"gt", t_gt},
    {"greaterthan", t_gt},
    {">", t_gt},
    {"in", t_in},
    {"integer", t_integer},
    {"iterable", t_iterable},
    {"le", t_le},
    {"<=", t_le},
    {"lower", t_lower},
    {"lt", t_lt},
    {"lessthan", t_lt},
    {"<", t_lt},
    {"mapping", t_mapping},
    {"ne", t_ne},
    {"!=", t_ne},
    {"none", t_none},
    {"number", t_number},
    {"odd", t_odd},
    {"sameas", t_sameas},
    {"sequence", t_sequence},
    {"string", t_string},
    {"test", t_test},
    {"true", t_true},
    {"undefined", t_undefined},
    {"upper", t_upper},
};

int jx_test_find(const char *name) {
    for (size_t i = 0; i < sizeof k_tests / sizeof *k_tests; i++)
        if (strcmp(k_tests[i].name, name) == 0) return (int)i;
    return -1;
}

int jx_test_call(jx_render *R, int id, jv v, jx_args *a) { return k_tests[id].fn(R, v, a); }
