/* jinja_methods.c — the Python methods templates call on values
 * (message.content.strip(), text.split('</think>'), tool.items(), d.get(k)),
 * the globals jinja2 and transformers provide (range, dict, namespace,
 * raise_exception, strftime_now), and Python's `%` formatting.
 *
 * Attribute lookup runs through jinja2's ImmutableSandboxedEnvironment, so
 * methods that modify a list or dict (append, pop, update, ...) are "unsafe":
 * they look up as an undefined value whose use fails with the sandbox's
 * message, exactly as transformers does. Python methods this file does not
 * implement are found (so `is defined` holds) but fail with MOE_EUNSUPPORTED
 * when called. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "jinja_impl.h"

/* ------------------------------------------------------ string helpers -- */

static int in_chars(jv chars, int32_t c) {
    size_t i = 0, adv;
    while (i < chars.s.n) {
        if (ju_decode(chars.s.p + i, chars.s.n - i, &adv) == c) return 1;
        i += adv;
    }
    return 0;
}

jv jx_str_strip(jx_render *R, jv s, jv chars, int left, int right) {
    int ws = !jx_given(chars) || chars.kind == JV_NONE;
    if (!ws && chars.kind != JV_STR) jx_fail(R, "strip arg must be None or str");
    size_t i = 0, adv, start = 0, end = s.s.n;
    if (left) {
        while (i < s.s.n) {
            int32_t c = ju_decode(s.s.p + i, s.s.n - i, &adv);
            if (ws ? !ju_isspace(c) : !in_chars(chars, c)) break;
            i += adv;
        }
        start = i;
    }
    if (right) {
        /* the end of the last code point that is not stripped */
        size_t last = start;
        i = start;
        while (i < s.s.n) {
            int32_t c = ju_decode(s.s.p + i, s.s.n - i, &adv);
            i += adv;
            if (ws ? !ju_isspace(c) : !in_chars(chars, c)) last = i;
        }
        end = last;
    }
    return jv_str(s.s.p + start, end - start);
}

static int is_cased(int32_t c) { return ju_iscased_lower(c) || ju_iscased_upper(c); }

/* Python lower-cases a capital sigma to final sigma at the end of a word. */
static int32_t lower_sigma(jv s, size_t at, size_t adv) {
    int before = 0, after = 0;
    size_t i = 0, a2;
    while (i < at) {
        before = is_cased(ju_decode(s.s.p + i, s.s.n - i, &a2));
        i += a2;
    }
    if (at + adv < s.s.n) after = is_cased(ju_decode(s.s.p + at + adv, s.s.n - at - adv, &a2));
    return before && !after ? 0x3c2 : 0x3c3;
}

jv jx_str_case(jx_render *R, jv s, int mode) {
    if (ju_is_ascii(s.s.p, s.s.n) && (mode == CASE_UPPER || mode == CASE_LOWER)) {
        int need = 0;
        for (size_t k = 0; k < s.s.n && !need; k++) {
            char c = s.s.p[k];
            need = mode == CASE_UPPER ? (c >= 'a' && c <= 'z') : (c >= 'A' && c <= 'Z');
        }
        if (!need) return s;
    }
    jx_sb b = {.a = &R->arena};
    size_t i = 0, adv;
    int prev_cased = 0, first = 1;
    while (i < s.s.n) {
        int32_t c = ju_decode(s.s.p + i, s.s.n - i, &adv), o[3];
        int how;
        switch (mode) {
        case CASE_UPPER: how = JU_UPPER; break;
        case CASE_CAPITALIZE: how = first ? JU_TITLE : JU_LOWER; break;
        case CASE_TITLE: how = prev_cased ? JU_LOWER : JU_TITLE; break;
        case CASE_SWAP: how = ju_iscased_upper(c) ? JU_LOWER : ju_iscased_lower(c) ? JU_UPPER : -1; break;
        default: how = JU_LOWER;
        }
        int n = 1;
        if (how < 0)
            o[0] = c;
        else if (how == JU_LOWER && c == 0x3a3)
            o[0] = lower_sigma(s, i, adv);
        else
            n = ju_case_full(c, how, o);
        prev_cased = is_cased(c);
        first = 0;
        if (n == 1 && o[0] == c)
            jx_sb_put(&b, s.s.p + i, adv);
        else
            for (int k = 0; k < n; k++)
                jx_sb_put_cp(&b, o[k]);
        i += adv;
    }
    return jv_str(b.p ? b.p : "", b.n);
}

static const char *find_sub(const char *h, size_t hn, const char *n, size_t nn) {
    if (nn == 0) return h;
    if (nn > hn) return NULL;
    for (size_t i = 0; i + nn <= hn; i++)
        if (h[i] == n[0] && memcmp(h + i, n, nn) == 0) return h + i;
    return NULL;
}

static const char *rfind_sub(const char *h, size_t hn, const char *n, size_t nn) {
    if (nn > hn) return NULL;
    for (size_t i = hn - nn + 1; i > 0; i--)
        if (memcmp(h + i - 1, n, nn) == 0) return h + i - 1;
    return NULL;
}

jv jx_str_replace(jx_render *R, jv s, jv old, jv rep, int64_t count) {
    jx_sb b = {.a = &R->arena};
    if (old.s.n == 0) {
        /* Python inserts `rep` before every code point and at the end */
        size_t i = 0, adv;
        int64_t done = 0;
        while (i <= s.s.n) {
            if (count < 0 || done < count) {
                jx_sb_put(&b, rep.s.p, rep.s.n);
                done++;
            }
            if (i == s.s.n) break;
            ju_decode(s.s.p + i, s.s.n - i, &adv);
            jx_sb_put(&b, s.s.p + i, adv);
            i += adv;
        }
        return jv_str(b.p ? b.p : "", b.n);
    }
    const char *p = s.s.p, *end = s.s.p + s.s.n;
    int64_t done = 0;
    while (count < 0 || done < count) {
        const char *hit = find_sub(p, (size_t)(end - p), old.s.p, old.s.n);
        if (!hit) break;
        jx_sb_put(&b, p, (size_t)(hit - p));
        jx_sb_put(&b, rep.s.p, rep.s.n);
        p = hit + old.s.n;
        done++;
    }
    if (done == 0) return s;
    jx_sb_put(&b, p, (size_t)(end - p));
    return jv_str(b.p ? b.p : "", b.n);
}

static jv str_arg(jx_render *R, jv v, const char *what) {
    if (v.kind != JV_STR) {
        if (v.kind == JV_UNDEF && v.why) jx_undef_error(R, v);
        jx_fail(R, "%s: must be str, not %s", what, jv_type_name(v));
    }
    return v;
}

/* Python's str.split / str.rsplit */
static jv str_split(jx_render *R, jv s, jv sep, int64_t maxsplit, int from_right) {
    jv out = jv_new_list(R, JV_LIST, 0);
    const char *p = s.s.p;
    size_t n = s.s.n, adv;
    if (!jx_given(sep) || sep.kind == JV_NONE) {
        /* runs of whitespace; work on code point boundaries */
        size_t cnt = ju_count(p, n), *off = jx_alloc(&R->arena, (cnt + 1) * sizeof *off);
        unsigned char *sp = jx_alloc(&R->arena, cnt + 1);
        for (size_t i = 0, o = 0; i < cnt; i++) {
            off[i] = o;
            sp[i] = (unsigned char)ju_isspace(ju_decode(p + o, n - o, &adv));
            o += adv;
        }
        off[cnt] = n;
        if (!from_right) {
            size_t i = 0;
            int64_t splits = 0;
            while (i < cnt) {
                while (i < cnt && sp[i])
                    i++;
                if (i == cnt) break;
                if (maxsplit >= 0 && splits == maxsplit) {
                    jv_list_push(R, out, jv_str(p + off[i], n - off[i]));
                    break;
                }
                size_t j = i;
                while (j < cnt && !sp[j])
                    j++;
                jv_list_push(R, out, jv_str(p + off[i], off[j] - off[i]));
                splits++;
                i = j;
            }
            return out;
        }
        jv rev = jv_new_list(R, JV_LIST, 0);
        size_t i = cnt;
        int64_t splits = 0;
        while (i > 0) {
            while (i > 0 && sp[i - 1])
                i--;
            if (i == 0) break;
            if (maxsplit >= 0 && splits == maxsplit) {
                jv_list_push(R, rev, jv_str(p, off[i]));
                break;
            }
            size_t j = i;
            while (j > 0 && !sp[j - 1])
                j--;
            jv_list_push(R, rev, jv_str(p + off[j], off[i] - off[j]));
            splits++;
            i = j;
        }
        for (size_t k = rev.l->n; k > 0; k--)
            jv_list_push(R, out, rev.l->v[k - 1]);
        return out;
    }
    str_arg(R, sep, "split() separator");
    if (sep.s.n == 0) jx_fail(R, "empty separator");
    if (!from_right) {
        const char *q = p, *end = p + n;
        int64_t splits = 0;
        for (;;) {
            const char *hit =
                (maxsplit < 0 || splits < maxsplit) ? find_sub(q, (size_t)(end - q), sep.s.p, sep.s.n) : NULL;
            if (!hit) {
                jv_list_push(R, out, jv_str(q, (size_t)(end - q)));
                return out;
            }
            jv_list_push(R, out, jv_str(q, (size_t)(hit - q)));
            q = hit + sep.s.n;
            splits++;
        }
    }
    jv rev = jv_new_list(R, JV_LIST, 0);
    size_t end = n;
    int64_t splits = 0;
    for (;;) {
        const char *hit = (maxsplit < 0 || splits < maxsplit) ? rfind_sub(p, end, sep.s.p, sep.s.n) : NULL;
        if (!hit) {
            jv_list_push(R, rev, jv_str(p, end));
            break;
        }
        size_t h = (size_t)(hit - p);
        jv_list_push(R, rev, jv_str(hit + sep.s.n, end - h - sep.s.n));
        end = h;
        splits++;
    }
    for (size_t k = rev.l->n; k > 0; k--)
        jv_list_push(R, out, rev.l->v[k - 1]);
    return out;
}

static jv str_splitlines(jx_render *R, jv s, int keepends) {
    jv out = jv_new_list(R, JV_LIST, 0);
    size_t i = 0, adv;
    while (i < s.s.n) {
        size_t start = i, end = s.s.n, next = s.s.n;
        while (i < s.s.n) {
            int32_t c = ju_decode(s.s.p + i, s.s.n - i, &adv);
            if (ju_islinebreak(c)) {
                end = i;
                next = i + adv;
                if (c == '\r' && next < s.s.n && s.s.p[next] == '\n') next++;
                break;
            }
            i += adv;
        }
        jv_list_push(R, out, jv_str(s.s.p + start, (keepends ? next : end) - start));
        i = next;
    }
    return out;
}

/* Byte range of code points [start, end) of s, Python-clamped; start/end may be not given or None. */
static void cp_range(jx_render *R, jv s, jv start, jv end, size_t *b0, size_t *b1) {
    int64_t len = (int64_t)ju_count(s.s.p, s.s.n), a = 0, b = len;
    if (jx_given(start) && start.kind != JV_NONE) {
        if (start.kind != JV_INT) jx_fail(R, "slice indices must be integers or None");
        a = start.i < 0 ? start.i + len : start.i;
        if (a < 0) a = 0;
    }
    if (jx_given(end) && end.kind != JV_NONE) {
        if (end.kind != JV_INT) jx_fail(R, "slice indices must be integers or None");
        b = end.i < 0 ? end.i + len : end.i;
        if (b < 0) b = 0;
    }
    if (a > len) a = len;
    if (b > len) b = len;
    if (b < a) b = a;
    *b0 = ju_offset(s.s.p, s.s.n, (size_t)a);
    *b1 = ju_offset(s.s.p, s.s.n, (size_t)b);
}

static int affix_match(jx_render *R, jv s, jv affix, jv start, jv end, int suffix, int *valid) {
    size_t b0, b1;
    cp_range(R, s, start, end, &b0, &b1);
    *valid = 1;
    if (jv_is_seq(affix)) {
        for (size_t i = 0; i < affix.l->n; i++) {
            int v;
            if (affix_match(R, s, affix.l->v[i], start, end, suffix, &v)) return 1;
        }
        return 0;
    }
    str_arg(R, affix, suffix ? "endswith first arg" : "startswith first arg");
    if (b1 - b0 < affix.s.n) {
        /* Python: an empty affix matches even at start == len */
        return affix.s.n == 0 && b0 <= b1;
    }
    return memcmp(s.s.p + (suffix ? b1 - affix.s.n : b0), affix.s.p, affix.s.n) == 0;
}

static jv pad(jx_render *R, jv s, int64_t width, jv fill, int how /* -1 ljust, 0 center, 1 rjust */) {
    int64_t len = (int64_t)ju_count(s.s.p, s.s.n);
    if (width <= len) return s;
    if (width > (1 << 24)) jx_fail(R, "width too large");
    if (jx_given(fill) && (fill.kind != JV_STR || ju_count(fill.s.p, fill.s.n) != 1))
        jx_fail(R, "The fill character must be exactly one character long");
    const char *f = jx_given(fill) ? fill.s.p : " ";
    size_t fn = jx_given(fill) ? fill.s.n : 1;
    int64_t marg = width - len, left = how < 0 ? 0 : how > 0 ? marg : marg / 2 + (marg & width & 1);
    jx_sb b = {.a = &R->arena};
    for (int64_t i = 0; i < left; i++)
        jx_sb_put(&b, f, fn);
    jx_sb_put(&b, s.s.p, s.s.n);
    for (int64_t i = 0; i < marg - left; i++)
        jx_sb_put(&b, f, fn);
    return jv_str(b.p, b.n);
}

/* ----------------------------------------------------- Python formatting -- */

/* One printf-style conversion of `v` with Python's rules. */
static void percent_one(jx_render *R, jx_sb *b, char conv, const char *flags, int width, int prec, jv v) {
    char spec[32], buf[512];
    if (conv == 's' || conv == 'r' || conv == 'a') {
        jx_sb t = {.a = &R->arena};
        if (conv == 's')
            jv_write_str(R, &t, v);
        else
            jv_write_repr(R, &t, v);
        jv s = jv_str(t.p ? t.p : "", t.n);
        if (prec >= 0) s = jx_slice(R, s, jv_none(), jv_int(prec), jv_none());
        int64_t len = (int64_t)ju_count(s.s.p, s.s.n);
        int left = strchr(flags, '-') != NULL;
        if (!left)
            for (int64_t i = len; i < width; i++)
                jx_sb_putc(b, ' ');
        jx_sb_put(b, s.s.p, s.s.n);
        if (left)
            for (int64_t i = len; i < width; i++)
                jx_sb_putc(b, ' ');
        return;
    }
    if (conv == 'c') {
        if (v.kind == JV_STR && ju_count(v.s.p, v.s.n) == 1)
            jx_sb_put(b, v.s.p, v.s.n);
        else if (v.kind == JV_INT && v.i >= 0 && v.i <= 0x10ffff)
            jx_sb_put_cp(b, (int32_t)v.i);
        else
            jx_fail(R, "%%c requires int or char");
        return;
    }
    if (v.kind == JV_UNDEF) jx_undef_error(R, v);
    if (!jv_is_num(v)) jx_fail(R, "%%%c format: a real number is required, not %s", conv, jv_type_name(v));
    if (width > 256 || prec > 256) jx_fail(R, "format width or precision too large");
    if (conv == 'd' || conv == 'i' || conv == 'u' || conv == 'x' || conv == 'X' || conv == 'o') {
        if (v.kind == JV_FLOAT && (conv == 'x' || conv == 'X' || conv == 'o'))
            jx_fail(R, "%%%c format: an integer is required, not float", conv);
        if (v.kind == JV_FLOAT && !(fabs(v.f) < 9.2e18))
            jx_unsupported(R, "%%%c of a float beyond 64-bit integers", conv);
        long long x = v.kind == JV_FLOAT ? (long long)trunc(v.f) : v.kind == JV_BOOL ? v.b : (long long)v.i;
        char c = conv == 'i' || conv == 'u' ? 'd' : conv;
        if (prec < 0) {
            snprintf(spec, sizeof spec, "%%%s*ll%c", flags, c);
            snprintf(buf, sizeof buf, spec, width, x);
        } else {
            snprintf(spec, sizeof spec, "%%%s*.*ll%c", flags, c);
            snprintf(buf, sizeof buf, spec, width, prec, x);
        }
        jx_sb_puts(b, buf);
        return;
    }
    if (conv && strchr("eEfFgG", conv)) {
        snprintf(spec, sizeof spec, "%%%s*.*%c", flags, conv);
        jx_sb_printf(b, spec, width, prec < 0 ? 6 : prec, jv_num(v)); /* %f of 1e300 is long */
        return;
    }
    jx_unsupported(R, "unsupported format character '%c'", conv);
}

jv jx_percent_format(jx_render *R, jv fmt, jv args) {
    jx_sb b = {.a = &R->arena};
    size_t argi = 0, nargs = args.kind == JV_TUPLE ? args.l->n : 1;
    int mapping = args.kind == JV_DICT;
    const char *p = fmt.s.p, *end = fmt.s.p + fmt.s.n;
    while (p < end) {
        const char *pc = memchr(p, '%', (size_t)(end - p));
        if (!pc) {
            jx_sb_put(&b, p, (size_t)(end - p));
            break;
        }
        jx_sb_put(&b, p, (size_t)(pc - p));
        p = pc + 1;
        if (p >= end) jx_fail(R, "incomplete format");
        if (*p == '%') {
            jx_sb_putc(&b, '%');
            p++;
            continue;
        }
        jv val;
        int have_val = 0;
        if (*p == '(') {
            const char *close = memchr(p, ')', (size_t)(end - p));
            if (!close) jx_fail(R, "incomplete format key");
            if (!mapping) jx_fail(R, "format requires a mapping");
            jv *v = jv_dict_gets(args, p + 1, (size_t)(close - p - 1));
            if (!v) jx_fail(R, "KeyError: '%.*s'", (int)(close - p - 1), p + 1);
            val = *v;
            have_val = 1;
            p = close + 1;
        }
        char flags[8];
        int nf = 0;
        while (p < end && strchr("-+ #0", *p) && *p) {
            if (!memchr(flags, *p, (size_t)nf)) flags[nf++] = *p; /* each flag once: 5 at most */
            p++;
        }
        flags[nf] = 0;
        int width = 0, prec = -1;
        if (p < end && *p == '*') jx_unsupported(R, "'*' width in %% formatting");
        /* numbers past 1 << 24 saturate (and are refused below) instead of overflowing */
        for (; p < end && *p >= '0' && *p <= '9'; p++)
            if (width < 1 << 24) width = width * 10 + (*p - '0');
        if (p < end && *p == '.') {
            p++;
            prec = 0;
            for (; p < end && *p >= '0' && *p <= '9'; p++)
                if (prec < 1 << 24) prec = prec * 10 + (*p - '0');
        }
        if (p < end && (*p == 'l' || *p == 'h' || *p == 'L')) p++;
        if (p >= end) jx_fail(R, "incomplete format");
        char conv = *p++;
        if (!have_val) {
            if (mapping)
                val = args;
            else {
                if (argi >= nargs) jx_fail(R, "not enough arguments for format string");
                val = args.kind == JV_TUPLE ? args.l->v[argi] : args;
                argi++;
            }
        }
        if (width > 1 << 20) jx_fail(R, "format width too large");
        percent_one(R, &b, conv, flags, width, prec, val);
    }
    if (!mapping && argi < nargs) jx_fail(R, "not all arguments converted during string formatting");
    return jv_str(b.p ? b.p : "", b.n);
}

/* str.format: {} {0} {name} with an optional !s / !r; specs are refused. */
static jv str_format(jx_render *R, jv fmt, jx_args *a) {
    jx_sb b = {.a = &R->arena};
    const char *p = fmt.s.p, *end = p + fmt.s.n;
    int auto_idx = 0;
    while (p < end) {
        char c = *p;
        if (c == '{' && p + 1 < end && p[1] == '{') {
            jx_sb_putc(&b, '{');
            p += 2;
            continue;
        }
        if (c == '}' && p + 1 < end && p[1] == '}') {
            jx_sb_putc(&b, '}');
            p += 2;
            continue;
        }
        if (c == '}') jx_fail(R, "Single '}' encountered in format string");
        if (c != '{') {
            jx_sb_putc(&b, c);
            p++;
            continue;
        }
        const char *close = memchr(p, '}', (size_t)(end - p));
        if (!close) jx_fail(R, "Single '{' encountered in format string");
        const char *f = p + 1, *fe = close;
        char conv = 's';
        const char *bang = memchr(f, '!', (size_t)(fe - f)), *colon = memchr(f, ':', (size_t)(fe - f));
        if (colon && (!bang || colon < bang)) {
            if (colon + 1 != fe) jx_unsupported(R, "format specs in str.format ('%.*s')", (int)(fe - f), f);
            fe = colon;
        }
        if (bang) {
            if (bang + 2 != fe || (bang[1] != 's' && bang[1] != 'r')) jx_unsupported(R, "str.format conversion");
            conv = bang[1];
            fe = bang;
        }
        jv val;
        if (fe == f) {
            if (auto_idx >= a->npos)
                jx_fail(R, "Replacement index %d out of range for positional args tuple", auto_idx);
            val = a->pos[auto_idx++];
        } else if (*f >= '0' && *f <= '9') {
            long idx = strtol(f, NULL, 10); /* saturates on overflow */
            if (idx >= a->npos) jx_fail(R, "Replacement index %ld out of range for positional args tuple", idx);
            val = a->pos[idx];
        } else {
            int k = 0;
            while (k < a->nkw && !(strlen(a->kwn[k]) == (size_t)(fe - f) && !memcmp(a->kwn[k], f, (size_t)(fe - f))))
                k++;
            if (k == a->nkw) jx_fail(R, "KeyError: '%.*s'", (int)(fe - f), f);
            val = a->kwv[k];
        }
        if (conv == 'r')
            jv_write_repr(R, &b, val);
        else
            jv_write_str(R, &b, val);
        p = close + 1;
    }
    return jv_str(b.p ? b.p : "", b.n);
}

/* --------------------------------------------------------------- methods -- */

enum {
    M_UNSUPPORTED,
    /* str */
    M_CAPITALIZE,
    M_CASEFOLD,
    M_CENTER,
    M_COUNT,
    M_ENDSWITH,
    M_FIND,
    M_FORMAT,
    M_INDEX,
    M_ISALNUM,
    M_ISALPHA,
    M_ISDECIMAL,
    M_ISDIGIT,
    M_ISLOWER,
    M_ISNUMERIC,
    M_ISSPACE,
    M_ISUPPER,
    M_JOIN,
    M_LJUST,
    M_LOWER,
    M_LSTRIP,
    M_PARTITION,
    M_REMOVEPREFIX,
    M_REMOVESUFFIX,
    M_REPLACE,
    M_RFIND,
    M_RINDEX,
    M_RJUST,
    M_RPARTITION,
    M_RSPLIT,
    M_RSTRIP,
    M_SPLIT,
    M_SPLITLINES,
    M_STARTSWITH,
    M_STRIP,
    M_SWAPCASE,
    M_TITLE,
    M_UPPER,
    M_ZFILL,
    /* list, tuple */
    M_LCOPY,
    M_LCOUNT,
    M_LINDEX,
    /* dict */
    M_DCOPY,
    M_GET,
    M_ITEMS,
    M_KEYS,
    M_VALUES,
};

typedef struct method_def {
    const char *name;
    int id;
} method_def;

static const method_def k_str_methods[] = {
    {"capitalize", M_CAPITALIZE},
    {"casefold", M_CASEFOLD},
    {"center", M_CENTER},
    {"count", M_COUNT},
    {"encode", M_UNSUPPORTED},
    {"endswith", M_ENDSWITH},
    {"expandtabs", M_UNSUPPORTED},
    {"find", M_FIND},
    {"format", M_FORMAT},
    {"format_map", M_UNSUPPORTED},
    {"index", M_INDEX},
    {"isalnum", M_ISALNUM},
    {"isalpha", M_ISALPHA},
    {"isascii", M_UNSUPPORTED},
    {"isdecimal", M_ISDECIMAL},
    {"isdigit", M_ISDIGIT},
    {"isidentifier", M_UNSUPPORTED},
    {"islower", M_ISLOWER},
    {"isnumeric", M_ISNUMERIC},
    {"isprintable", M_UNSUPPORTED},
    {"isspace", M_ISSPACE},
    {"istitle", M_UNSUPPORTED},
    {"isupper", M_ISUPPER},
    {"join", M_JOIN},
    {"ljust", M_LJUST},
    {"lower", M_LOWER},
    {"lstrip", M_LSTRIP},
    {"maketrans", M_UNSUPPORTED},
    {"partition", M_PARTITION},
    {"removeprefix", M_REMOVEPREFIX},
    {"removesuffix", M_REMOVESUFFIX},
    {"replace", M_REPLACE},
    {"rfind", M_RFIND},
    {"rindex", M_RINDEX},
    {"rjust", M_RJUST},
    {"rpartition", M_RPARTITION},
    {"rsplit", M_RSPLIT},
    {"rstrip", M_RSTRIP},
    {"split", M_SPLIT},
    {"splitlines", M_SPLITLINES},
    {"startswith", M_STARTSWITH},
    {"strip", M_STRIP},
    {"swapcase", M_SWAPCASE},
    {"title", M_TITLE},
    {"translate", M_UNSUPPORTED},
    {"upper", M_UPPER},
    {"zfill", M_ZFILL},
};
static const method_def k_list_methods[] = {{"copy", M_LCOPY}, {"count", M_LCOUNT}, {"index", M_LINDEX}};
static const method_def k_tuple_methods[] = {{"count", M_LCOUNT}, {"index", M_LINDEX}};
static const method_def k_dict_methods[] = {{"copy", M_DCOPY}, {"fromkeys", M_UNSUPPORTED},
                                            {"get", M_GET},    {"items", M_ITEMS},
                                            {"keys", M_KEYS},  {"values", M_VALUES}};
static const method_def k_num_methods[] = {{"as_integer_ratio", M_UNSUPPORTED},
                                           {"bit_count", M_UNSUPPORTED},
                                           {"bit_length", M_UNSUPPORTED},
                                           {"conjugate", M_UNSUPPORTED},
                                           {"denominator", M_UNSUPPORTED},
                                           {"from_bytes", M_UNSUPPORTED},
                                           {"hex", M_UNSUPPORTED},
                                           {"imag", M_UNSUPPORTED},
                                           {"is_integer", M_UNSUPPORTED},
                                           {"numerator", M_UNSUPPORTED},
                                           {"real", M_UNSUPPORTED},
                                           {"to_bytes", M_UNSUPPORTED}};
/* Methods the immutable sandbox refuses: they would modify the object. */
static const char *const k_list_unsafe[] = {"append", "clear",   "extend", "insert", "pop",
                                            "remove", "reverse", "sort",   NULL};
static const char *const k_dict_unsafe[] = {"clear", "pop", "popitem", "setdefault", "update", NULL};

static const method_def *find_method(const method_def *defs, size_t n, const char *name, size_t len) {
    for (size_t i = 0; i < n; i++)
        if (strlen(defs[i].name) == len && memcmp(defs[i].name, name, len) == 0) return &defs[i];
    return NULL;
}

static int in_names(const char *const *list, const char *name, size_t len) {
    for (; *list; list++)
        if (strlen(*list) == len && memcmp(*list, name, len) == 0) return 1;
    return 0;
}

jv jx_method_bind(jx_render *R, jv obj, const char *name, size_t n, int *found) {
    const method_def *m = NULL;
    *found = 0;
#define FIND(tab) find_method(tab, sizeof tab / sizeof *tab, name, n)
    switch (obj.kind) {
    case JV_STR: m = FIND(k_str_methods); break;
    case JV_LIST:
        if (in_names(k_list_unsafe, name, n)) {
            *found = 1;
            return jv_undef(jx_strf(R, "access to attribute '%.*s' of 'list' object is unsafe.", (int)n, name));
        }
        m = FIND(k_list_methods);
        break;
    case JV_TUPLE: m = FIND(k_tuple_methods); break;
    case JV_DICT:
        if (in_names(k_dict_unsafe, name, n)) {
            *found = 1;
            return jv_undef(jx_strf(R, "access to attribute '%.*s' of 'dict' object is unsafe.", (int)n, name));
        }
        m = FIND(k_dict_methods);
        break;
    case JV_INT:
    case JV_FLOAT:
    case JV_BOOL: m = FIND(k_num_methods); break;
    default: break;
    }
#undef FIND
    if (!m) return jv_undef(NULL);
    *found = 1;
    jv_func *f = jx_alloc(&R->arena, sizeof *f);
    f->kind = F_METHOD;
    f->id = m->id;
    f->name = m->name;
    f->self = obj;
    jv v = {.kind = JV_FUNC};
    v.fn = f;
    return v;
}

static jv opt_arg(jx_args *a, int i) { return i < a->npos ? a->pos[i] : jv_undef(NULL); }

static void no_kwargs(jx_render *R, jv_func *fn, jx_args *a) {
    if (a->nkw) jx_fail(R, "%s() takes no keyword arguments", fn->name);
}

static void nargs(jx_render *R, jv_func *fn, jx_args *a, int lo, int hi) {
    if (a->npos < lo || a->npos > hi) {
        if (lo == hi) jx_fail(R, "%s() takes exactly %d argument(s) (%d given)", fn->name, lo, a->npos);
        jx_fail(R, "%s() takes from %d to %d arguments (%d given)", fn->name, lo, hi, a->npos);
    }
}

static int64_t int_arg(jx_render *R, jv v, int64_t dflt) {
    if (!jx_given(v) || v.kind == JV_NONE) return dflt;
    if (v.kind == JV_INT) return v.i;
    if (v.kind == JV_BOOL) return v.b;
    if (v.kind == JV_UNDEF) jx_undef_error(R, v);
    jx_fail(R, "'%s' object cannot be interpreted as an integer", jv_type_name(v));
}

static int str_all(jv s, int (*pred)(int32_t)) {
    if (s.s.n == 0) return 0;
    size_t i = 0, adv;
    while (i < s.s.n) {
        if (!pred(ju_decode(s.s.p + i, s.s.n - i, &adv))) return 0;
        i += adv;
    }
    return 1;
}
static int is_alnum(int32_t c) { return ju_isalpha(c) || ju_isnumeric(c); }

static jv str_find(jx_render *R, jv s, jx_args *a, int rev, int raise) {
    jv sub = str_arg(R, a->pos[0], "find() argument");
    size_t b0, b1;
    cp_range(R, s, opt_arg(a, 1), opt_arg(a, 2), &b0, &b1);
    const char *hit =
        rev ? rfind_sub(s.s.p + b0, b1 - b0, sub.s.p, sub.s.n) : find_sub(s.s.p + b0, b1 - b0, sub.s.p, sub.s.n);
    if (!hit) {
        if (raise) jx_fail(R, "substring not found");
        return jv_int(-1);
    }
    return jv_int((int64_t)ju_count(s.s.p, (size_t)(hit - s.s.p)));
}

static jv str_method(jx_render *R, jv_func *fn, jv s, jx_args *a) {
    switch (fn->id) {
    case M_CAPITALIZE: nargs(R, fn, a, 0, 0); return jx_str_case(R, s, CASE_CAPITALIZE);
    case M_CASEFOLD:
    case M_LOWER: nargs(R, fn, a, 0, 0); return jx_str_case(R, s, CASE_LOWER);
    case M_UPPER: nargs(R, fn, a, 0, 0); return jx_str_case(R, s, CASE_UPPER);
    case M_TITLE: nargs(R, fn, a, 0, 0); return jx_str_case(R, s, CASE_TITLE);
    case M_SWAPCASE: nargs(R, fn, a, 0, 0); return jx_str_case(R, s, CASE_SWAP);
    case M_CENTER:
    case M_LJUST:
    case M_RJUST:
        nargs(R, fn, a, 1, 2);
        return pad(R, s, int_arg(R, a->pos[0], 0), opt_arg(a, 1), fn->id == M_LJUST ? -1 : fn->id == M_RJUST ? 1 : 0);
    case M_ZFILL: {
        nargs(R, fn, a, 1, 1);
        int64_t width = int_arg(R, a->pos[0], 0), len = (int64_t)ju_count(s.s.p, s.s.n);
        if (width <= len) return s;
        if (width > 1 << 24) jx_fail(R, "width too large");
        jx_sb b = {.a = &R->arena};
        size_t sign = s.s.n && (s.s.p[0] == '+' || s.s.p[0] == '-');
        jx_sb_put(&b, s.s.p, sign);
        for (int64_t i = len; i < width; i++)
            jx_sb_putc(&b, '0');
        jx_sb_put(&b, s.s.p + sign, s.s.n - sign);
        return jv_str(b.p, b.n);
    }
    case M_COUNT: {
        nargs(R, fn, a, 1, 3);
        jv sub = str_arg(R, a->pos[0], "count() argument");
        size_t b0, b1;
        cp_range(R, s, opt_arg(a, 1), opt_arg(a, 2), &b0, &b1);
        if (sub.s.n == 0) return jv_int((int64_t)ju_count(s.s.p + b0, b1 - b0) + 1);
        int64_t k = 0;
        const char *p = s.s.p + b0, *end = s.s.p + b1, *hit;
        while ((hit = find_sub(p, (size_t)(end - p), sub.s.p, sub.s.n)) != NULL) {
            k++;
            p = hit + sub.s.n;
        }
        return jv_int(k);
    }
    case M_STARTSWITH:
    case M_ENDSWITH: {
        nargs(R, fn, a, 1, 3);
        int valid;
        return jv_bool(affix_match(R, s, a->pos[0], opt_arg(a, 1), opt_arg(a, 2), fn->id == M_ENDSWITH, &valid));
    }
    case M_FIND: nargs(R, fn, a, 1, 3); return str_find(R, s, a, 0, 0);
    case M_RFIND: nargs(R, fn, a, 1, 3); return str_find(R, s, a, 1, 0);
    case M_INDEX: nargs(R, fn, a, 1, 3); return str_find(R, s, a, 0, 1);
    case M_RINDEX: nargs(R, fn, a, 1, 3); return str_find(R, s, a, 1, 1);
    case M_FORMAT: return str_format(R, s, a);
    case M_ISALNUM: nargs(R, fn, a, 0, 0); return jv_bool(str_all(s, is_alnum));
    case M_ISALPHA: nargs(R, fn, a, 0, 0); return jv_bool(str_all(s, ju_isalpha));
    case M_ISDECIMAL:
    case M_ISDIGIT: nargs(R, fn, a, 0, 0); return jv_bool(str_all(s, ju_isdigit));
    case M_ISNUMERIC: nargs(R, fn, a, 0, 0); return jv_bool(str_all(s, ju_isnumeric));
    case M_ISSPACE: nargs(R, fn, a, 0, 0); return jv_bool(str_all(s, ju_isspace));
    case M_ISLOWER:
    case M_ISUPPER: {
        nargs(R, fn, a, 0, 0);
        int cased = 0;
        size_t i = 0, adv;
        while (i < s.s.n) {
            int32_t c = ju_decode(s.s.p + i, s.s.n - i, &adv);
            if (fn->id == M_ISLOWER ? ju_iscased_upper(c) : ju_iscased_lower(c)) return jv_bool(0);
            if (ju_iscased_lower(c) || ju_iscased_upper(c)) cased = 1;
            i += adv;
        }
        return jv_bool(cased);
    }
    case M_JOIN: {
        nargs(R, fn, a, 1, 1);
        jv items = jx_iter_list(R, a->pos[0]);
        jx_sb b = {.a = &R->arena};
        for (size_t i = 0; i < items.l->n; i++) {
            if (items.l->v[i].kind != JV_STR)
                jx_fail(R, "sequence item %zu: expected str instance, %s found", i, jv_type_name(items.l->v[i]));
            if (i) jx_sb_put(&b, s.s.p, s.s.n);
            jx_sb_put(&b, items.l->v[i].s.p, items.l->v[i].s.n);
        }
        return jv_str(b.p ? b.p : "", b.n);
    }
    case M_STRIP: nargs(R, fn, a, 0, 1); return jx_str_strip(R, s, opt_arg(a, 0), 1, 1);
    case M_LSTRIP: nargs(R, fn, a, 0, 1); return jx_str_strip(R, s, opt_arg(a, 0), 1, 0);
    case M_RSTRIP: nargs(R, fn, a, 0, 1); return jx_str_strip(R, s, opt_arg(a, 0), 0, 1);
    case M_SPLIT:
    case M_RSPLIT: {
        static const char *const names[] = {"sep", "maxsplit"};
        jv arg[2];
        jx_bind(R, fn->name, a, names, 2, arg);
        return str_split(R, s, arg[0], int_arg(R, arg[1], -1), fn->id == M_RSPLIT);
    }
    case M_SPLITLINES: {
        static const char *const names[] = {"keepends"};
        jv arg[1];
        jx_bind(R, fn->name, a, names, 1, arg);
        return str_splitlines(R, s, jx_given(arg[0]) && jv_truthy(arg[0]));
    }
    case M_REPLACE: {
        nargs(R, fn, a, 2, 3);
        jv old = str_arg(R, a->pos[0], "replace() argument 1"), rep = str_arg(R, a->pos[1], "replace() argument 2");
        return jx_str_replace(R, s, old, rep, int_arg(R, opt_arg(a, 2), -1));
    }
    case M_REMOVEPREFIX:
    case M_REMOVESUFFIX: {
        nargs(R, fn, a, 1, 1);
        jv x = str_arg(R, a->pos[0], fn->name);
        if (x.s.n > s.s.n) return s;
        if (fn->id == M_REMOVEPREFIX)
            return memcmp(s.s.p, x.s.p, x.s.n) == 0 ? jv_str(s.s.p + x.s.n, s.s.n - x.s.n) : s;
        return memcmp(s.s.p + s.s.n - x.s.n, x.s.p, x.s.n) == 0 ? jv_str(s.s.p, s.s.n - x.s.n) : s;
    }
    case M_PARTITION:
    case M_RPARTITION: {
        nargs(R, fn, a, 1, 1);
        jv sep = str_arg(R, a->pos[0], fn->name);
        if (sep.s.n == 0) jx_fail(R, "empty separator");
        const char *hit = fn->id == M_PARTITION ? find_sub(s.s.p, s.s.n, sep.s.p, sep.s.n)
                                                : rfind_sub(s.s.p, s.s.n, sep.s.p, sep.s.n);
        jv t = jv_new_list(R, JV_TUPLE, 3);
        if (!hit) {
            jv e = jv_str("", 0);
            jv_list_push(R, t, fn->id == M_PARTITION ? s : e);
            jv_list_push(R, t, e);
            jv_list_push(R, t, fn->id == M_PARTITION ? e : s);
            return t;
        }
        size_t h = (size_t)(hit - s.s.p);
        jv_list_push(R, t, jv_str(s.s.p, h));
        jv_list_push(R, t, sep);
        jv_list_push(R, t, jv_str(hit + sep.s.n, s.s.n - h - sep.s.n));
        return t;
    }
    }
    jx_unsupported(R, "str.%s() is not supported", fn->name);
}

jv jx_method_call(jx_render *R, jv_func *fn, jx_args *a) {
    jv self = fn->self;
    if (fn->id == M_UNSUPPORTED) jx_unsupported(R, "%s.%s() is not supported", jv_type_name(self), fn->name);
    if (fn->id != M_FORMAT && fn->id != M_SPLIT && fn->id != M_RSPLIT && fn->id != M_SPLITLINES) no_kwargs(R, fn, a);
    if (self.kind == JV_STR) return str_method(R, fn, self, a);
    switch (fn->id) {
    case M_LCOPY: {
        nargs(R, fn, a, 0, 0);
        jv out = jv_new_list(R, JV_LIST, self.l->n);
        for (size_t i = 0; i < self.l->n; i++)
            jv_list_push(R, out, self.l->v[i]);
        return out;
    }
    case M_LCOUNT: {
        nargs(R, fn, a, 1, 1);
        int64_t k = 0;
        for (size_t i = 0; i < self.l->n; i++)
            k += jv_eq(self.l->v[i], a->pos[0]);
        return jv_int(k);
    }
    case M_LINDEX:
        nargs(R, fn, a, 1, 1);
        for (size_t i = 0; i < self.l->n; i++)
            if (jv_eq(self.l->v[i], a->pos[0])) return jv_int((int64_t)i);
        jx_fail(R, "value is not in %s", jv_type_name(self));
    case M_DCOPY: {
        nargs(R, fn, a, 0, 0);
        jv out = jv_new_dict(R, JV_DICT, self.d->n);
        for (size_t i = 0; i < self.d->n; i++)
            jv_dict_set(R, out, self.d->k[i], self.d->v[i]);
        return out;
    }
    case M_GET: {
        nargs(R, fn, a, 1, 2);
        jv *v = jv_dict_get(self, a->pos[0]);
        return v ? *v : a->npos > 1 ? a->pos[1] : jv_none();
    }
    case M_ITEMS:
    case M_KEYS:
    case M_VALUES: {
        nargs(R, fn, a, 0, 0);
        jv out = jv_new_list(R, JV_LIST, self.d->n);
        for (size_t i = 0; i < self.d->n; i++) {
            if (fn->id == M_KEYS)
                jv_list_push(R, out, self.d->k[i]);
            else if (fn->id == M_VALUES)
                jv_list_push(R, out, self.d->v[i]);
            else {
                jv t = jv_new_list(R, JV_TUPLE, 2);
                jv_list_push(R, t, self.d->k[i]);
                jv_list_push(R, t, self.d->v[i]);
                jv_list_push(R, out, t);
            }
        }
        return out;
    }
    }
    jx_unsupported(R, "%s.%s() is not supported", jv_type_name(self), fn->name);
}

/* --------------------------------------------------------------- globals -- */

enum { G_RANGE, G_DICT, G_NAMESPACE, G_RAISE, G_STRFTIME, G_UNSUPPORTED };

static const method_def k_globals[] = {
    {"range", G_RANGE},           {"dict", G_DICT},          {"namespace", G_NAMESPACE}, {"raise_exception", G_RAISE},
    {"strftime_now", G_STRFTIME}, {"cycler", G_UNSUPPORTED}, {"joiner", G_UNSUPPORTED},  {"lipsum", G_UNSUPPORTED},
};

jv jx_global_find(jx_render *R, const char *name) {
    const method_def *g = find_method(k_globals, sizeof k_globals / sizeof *k_globals, name, strlen(name));
    if (!g) return jv_undef(NULL);
    jv_func *f = jx_alloc(&R->arena, sizeof *f);
    f->kind = F_GLOBAL;
    f->id = g->id;
    f->name = g->name;
    jv v = {.kind = JV_FUNC};
    v.fn = f;
    return v;
}

/* dict(...) / namespace(...): an optional mapping or list of pairs, then keywords. */
static jv make_dict(jx_render *R, jv_kind kind, const char *fname, jx_args *a) {
    jv d = jv_new_dict(R, kind, 0);
    if (a->npos > 1) jx_fail(R, "%s expected at most 1 argument, got %d", fname, a->npos);
    if (a->npos == 1) {
        jv src = a->pos[0];
        if (src.kind == JV_DICT || src.kind == JV_NS) {
            for (size_t i = 0; i < src.d->n; i++)
                jv_dict_set(R, d, src.d->k[i], src.d->v[i]);
        } else {
            jv items = jx_iter_list(R, src);
            for (size_t i = 0; i < items.l->n; i++) {
                jv p = items.l->v[i];
                if (!jv_is_seq(p) || p.l->n != 2)
                    jx_fail(R, "dictionary update sequence element #%zu has the wrong length", i);
                jv_dict_set(R, d, p.l->v[0], p.l->v[1]);
            }
        }
    }
    for (int k = 0; k < a->nkw; k++)
        jv_dict_set(R, d, jv_str(a->kwn[k], strlen(a->kwn[k])), a->kwv[k]);
    return d;
}

jv jx_global_call(jx_render *R, jv_func *fn, jx_args *a) {
    switch (fn->id) {
    case G_RANGE: {
        if (a->nkw) jx_fail(R, "range() takes no keyword arguments");
        if (a->npos < 1 || a->npos > 3) jx_fail(R, "range expected 1 to 3 arguments, got %d", a->npos);
        int64_t start = 0, stop, step = 1;
        if (a->npos == 1)
            stop = int_arg(R, a->pos[0], 0);
        else {
            start = int_arg(R, a->pos[0], 0);
            stop = int_arg(R, a->pos[1], 0);
            if (a->npos == 3) step = int_arg(R, a->pos[2], 1);
        }
        if (step == 0) jx_fail(R, "range() arg 3 must not be zero");
        int64_t n = 0;
        if (step > 0 && start < stop) n = (int64_t)(((__int128)stop - start - 1) / step + 1);
        if (step < 0 && start > stop) n = (int64_t)(((__int128)start - stop - 1) / -step + 1);
        if (n > 100000) jx_fail(R, "Range too big. The sandbox blocks ranges larger than MAX_RANGE (100000).");
        jv out = jv_new_list(R, JV_LIST, (size_t)n);
        for (int64_t i = 0; i < n; i++)
            jv_list_push(R, out, jv_int(start + i * step));
        return out;
    }
    case G_DICT: return make_dict(R, JV_DICT, "dict", a);
    case G_NAMESPACE: return make_dict(R, JV_NS, "namespace", a);
    case G_RAISE: {
        jv msg = a->npos > 0 ? a->pos[0] : a->nkw > 0 ? a->kwv[0] : jv_str("", 0);
        jv s = jv_to_str(R, msg);
        /* exactly the template's message, as transformers' TemplateError carries it */
        jx_throw(&R->env, MOE_EINVAL, "%.*s", (int)s.s.n, s.s.p);
    }
    case G_STRFTIME: {
        if (a->npos != 1 || a->pos[0].kind != JV_STR) jx_fail(R, "strftime_now() takes one format string");
        char *fmt = jx_memdup(&R->arena, a->pos[0].s.p, a->pos[0].s.n), buf[512];
        time_t now = time(NULL);
        struct tm tm;
        localtime_r(&now, &tm);
        size_t n = strftime(buf, sizeof buf, fmt, &tm);
        return jv_str(jx_memdup(&R->arena, buf, n), n);
    }
    }
    jx_unsupported(R, "the global '%s' is not supported", fn->name);
}
