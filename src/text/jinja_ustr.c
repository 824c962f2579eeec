/* jinja_ustr.c — code-point helpers for the template interpreter: Python
 * strings are sequences of code points, so lengths, indexes, slices, strip()
 * and the case methods work on decoded UTF-8. Character classes and case
 * mappings come from utf8proc (simple, one-to-one mappings). */
#include <string.h>
#include <utf8proc.h>

#include "jinja_impl.h"

int32_t ju_decode(const char *p, size_t n, size_t *adv) {
    const unsigned char *s = (const unsigned char *)p;
    unsigned c = s[0];
    if (c < 0x80) {
        *adv = 1;
        return (int32_t)c;
    }
    int len = c >= 0xf0 && c < 0xf5 ? 4 : c >= 0xe0 ? 3 : c >= 0xc2 && c < 0xe0 ? 2 : 0;
    if (c >= 0xf5) len = 0;
    if (len == 0 || (size_t)len > n) {
        *adv = 1;
        return 0xfffd;
    }
    int32_t cp = (int32_t)(c & (0x7f >> len));
    for (int i = 1; i < len; i++) {
        if ((s[i] & 0xc0) != 0x80) {
            *adv = 1;
            return 0xfffd;
        }
        cp = (cp << 6) | (s[i] & 0x3f);
    }
    /* overlong or out of range forms decode byte by byte */
    if ((len == 3 && cp < 0x800) || (len == 4 && (cp < 0x10000 || cp > 0x10ffff))) {
        *adv = 1;
        return 0xfffd;
    }
    *adv = (size_t)len;
    return cp;
}

size_t ju_encode(int32_t cp, char out[4]) {
    unsigned u = (unsigned)cp;
    if (u < 0x80) {
        out[0] = (char)u;
        return 1;
    }
    if (u < 0x800) {
        out[0] = (char)(0xc0 | (u >> 6));
        out[1] = (char)(0x80 | (u & 0x3f));
        return 2;
    }
    if (u < 0x10000) {
        out[0] = (char)(0xe0 | (u >> 12));
        out[1] = (char)(0x80 | ((u >> 6) & 0x3f));
        out[2] = (char)(0x80 | (u & 0x3f));
        return 3;
    }
    if (u > 0x10ffff) u = 0xfffd;
    out[0] = (char)(0xf0 | (u >> 18));
    out[1] = (char)(0x80 | ((u >> 12) & 0x3f));
    out[2] = (char)(0x80 | ((u >> 6) & 0x3f));
    out[3] = (char)(0x80 | (u & 0x3f));
    return 4;
}

int ju_is_ascii(const char *p, size_t n) {
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)p[i] >= 0x80) return 0;
    return 1;
}

size_t ju_count(const char *p, size_t n) {
    if (ju_is_ascii(p, n)) return n;
    size_t count = 0, i = 0, adv;
    while (i < n) {
        ju_decode(p + i, n - i, &adv);
        i += adv;
        count++;
    }
    return count;
}

size_t ju_offset(const char *p, size_t n, size_t idx) {
    size_t i = 0, adv;
    while (idx > 0 && i < n) {
        ju_decode(p + i, n - i, &adv);
        i += adv;
        idx--;
    }
    return i;
}

int ju_isspace(int32_t c) {
    if (c < 0x80) return (c >= 0x09 && c <= 0x0d) || (c >= 0x1c && c <= 0x20);
    return c == 0x85 || c == 0xa0 || c == 0x1680 || (c >= 0x2000 && c <= 0x200a) || c == 0x2028 || c == 0x2029 ||
           c == 0x202f || c == 0x205f || c == 0x3000;
}

int ju_islinebreak(int32_t c) {
    return c == '\n' || c == '\r' || c == 0x0b || c == 0x0c || c == 0x1c || c == 0x1d || c == 0x1e || c == 0x85 ||
           c == 0x2028 || c == 0x2029;
}

int32_t ju_upper(int32_t c) { return c < 0x80 ? (c >= 'a' && c <= 'z' ? c - 32 : c) : utf8proc_toupper(c); }
int32_t ju_lower(int32_t c) { return c < 0x80 ? (c >= 'A' && c <= 'Z' ? c + 32 : c) : utf8proc_tolower(c); }
int32_t ju_title(int32_t c) { return c < 0x80 ? ju_upper(c) : utf8proc_totitle(c); }

static utf8proc_category_t cat(int32_t c) { return utf8proc_category(c); }

int ju_isalpha(int32_t c) {
    if (c < 0x80) return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
    utf8proc_category_t k = cat(c);
    return k == UTF8PROC_CATEGORY_LU || k == UTF8PROC_CATEGORY_LL || k == UTF8PROC_CATEGORY_LT ||
           k == UTF8PROC_CATEGORY_LM || k == UTF8PROC_CATEGORY_LO;
}

int ju_isdigit(int32_t c) {
    if (c < 0x80) return c >= '0' && c <= '9';
    return cat(c) == UTF8PROC_CATEGORY_ND;
}

int ju_isnumeric(int32_t c) {
    if (c < 0x80) return c >= '0' && c <= '9';
    utf8proc_category_t k = cat(c);
    return k == UTF8PROC_CATEGORY_ND || k == UTF8PROC_CATEGORY_NL || k == UTF8PROC_CATEGORY_NO;
}

int ju_iscased_lower(int32_t c) {
    if (c < 0x80) return c >= 'a' && c <= 'z';
    return cat(c) == UTF8PROC_CATEGORY_LL;
}

int ju_iscased_upper(int32_t c) {
    if (c < 0x80) return c >= 'A' && c <= 'Z';
    utf8proc_category_t k = cat(c);
    return k == UTF8PROC_CATEGORY_LU || k == UTF8PROC_CATEGORY_LT;
}

/* Python's full case mappings where they differ from the one-to-one ones
 * (SpecialCasing.txt, unconditional entries): ß -> SS / Ss, ligatures, ... */
static const struct {
    int32_t c;
    int32_t upper[3], title[3], lower[3];
} k_special[] = {
    {0x00df, {0x53, 0x53, 0}, {0x53, 0x73, 0}, {0xdf, 0, 0}},
    {0x0130, {0x130, 0, 0}, {0x130, 0, 0}, {0x69, 0x307, 0}},
    {0x0149, {0x2bc, 0x4e, 0}, {0x2bc, 0x4e, 0}, {0x149, 0, 0}},
    {0x01f0, {0x4a, 0x30c, 0}, {0x4a, 0x30c, 0}, {0x1f0, 0, 0}},
    {0x0390, {0x399, 0x308, 0x301}, {0x399, 0x308, 0x301}, {0x390, 0, 0}},
    {0x03b0, {0x3a5, 0x308, 0x301}, {0x3a5, 0x308, 0x301}, {0x3b0, 0, 0}},
    {0x0587, {0x535, 0x552, 0}, {0x535, 0x582, 0}, {0x587, 0, 0}},
    {0x1e96, {0x48, 0x331, 0}, {0x48, 0x331, 0}, {0x1e96, 0, 0}},
    {0x1e97, {0x54, 0x308, 0}, {0x54, 0x308, 0}, {0x1e97, 0, 0}},
    {0x1e98, {0x57, 0x30a, 0}, {0x57, 0x30a, 0}, {0x1e98, 0, 0}},
    {0x1e99, {0x59, 0x30a, 0}, {0x59, 0x30a, 0}, {0x1e99, 0, 0}},
    {0x1e9a, {0x41, 0x2be, 0}, {0x41, 0x2be, 0}, {0x1e9a, 0, 0}},
    {0xfb00, {0x46, 0x46, 0}, {0x46, 0x66, 0}, {0xfb00, 0, 0}},
    {0xfb01, {0x46, 0x49, 0}, {0x46, 0x69, 0}, {0xfb01, 0, 0}},
    {0xfb02, {0x46, 0x4c, 0}, {0x46, 0x6c, 0}, {0xfb02, 0, 0}},
    {0xfb03, {0x46, 0x46, 0x49}, {0x46, 0x66, 0x69}, {0xfb03, 0, 0}},
    {0xfb04, {0x46, 0x46, 0x4c}, {0x46, 0x66, 0x6c}, {0xfb04, 0, 0}},
    {0xfb05, {0x53, 0x54, 0}, {0x53, 0x74, 0}, {0xfb05, 0, 0}},
    {0xfb06, {0x53, 0x54, 0}, {0x53, 0x74, 0}, {0xfb06, 0, 0}},
};

int ju_case_full(int32_t c, int mode, int32_t out[3]) {
    if (c >= 0xdf) {
        for (size_t i = 0; i < sizeof k_special / sizeof *k_special; i++) {
            if (k_special[i].c != c) continue;
            const int32_t *m = mode == JU_UPPER   ? k_special[i].upper
                               : mode == JU_TITLE ? k_special[i].title
                                                  : k_special[i].lower;
            int n = 0;
            while (n < 3 && m[n]) {
                out[n] = m[n];
                n++;
            }
            return n;
        }
    }
    out[0] = mode == JU_UPPER ? ju_upper(c) : mode == JU_TITLE ? ju_title(c) : ju_lower(c);
    return 1;
}
