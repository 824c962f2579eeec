/* jinja_lex.c — template source to tokens, as jinja2's lexer does it with
 * transformers' settings (trim_blocks=True, lstrip_blocks=True):
 *   - text up to the next "{{", "{%" or "{#" is data;
 *   - "{%-" / "{{-" / "{#-" strip all whitespace before the tag; "-%}" / "-}}" /
 *     "-#}" strip all whitespace after it;
 *   - lstrip_blocks: spaces and tabs between the start of a line and a block or
 *     comment tag are dropped ("{%+" keeps them);
 *   - trim_blocks: the first newline after a block or comment tag is dropped
 *     ("+%}" keeps it);
 *   - comments vanish; {% raw %}...{% endraw %} is data;
 *   - inside a tag: names, numbers, strings (Python escapes), operators; the
 *     closing "}}" / "%}" only counts outside brackets.
 * The source given here is already newline-normalized (jinja_parse). */
#include <stdlib.h>
#include <string.h>

#include "jinja_impl.h"

typedef struct lexer {
    jx_env *env;
    jx_arena *a;
    const char *s;
    size_t n, pos;
    jx_tok *toks;
    size_t ntoks, cap;
    size_t loc_off; /* line/column cursor: offset loc_off is at line loc_line, column loc_col */
    int loc_line, loc_col;
} lexer;

/* Line and column (in code points, 1-based) of offset off. Tokens come in
 * order, so the cursor only moves forward, and a one-line template stays linear. */
static void locate(lexer *L, size_t off, int *line, int *col) {
    if (off < L->loc_off) { /* an error pointing back at the start of a tag */
        L->loc_off = 0;
        L->loc_line = 1;
        L->loc_col = 1;
    }
    for (size_t i = L->loc_off; i < off; i++) {
        if (L->s[i] == '\n') {
            L->loc_line++;
            L->loc_col = 1;
        } else if (((unsigned char)L->s[i] & 0xc0) != 0x80)
            L->loc_col++;
    }
    L->loc_off = off;
    *line = L->loc_line;
    *col = L->loc_col;
}

_Noreturn static void lex_fail(lexer *L, size_t off, const char *what) {
    int line, col;
    locate(L, off, &line, &col);
    jx_throw(L->env, MOE_EFORMAT, "%d:%d: %s", line, col, what);
}

static jx_tok *emit(lexer *L, jx_ttype type, size_t off) {
    if (L->ntoks == L->cap) {
        size_t cap = L->cap ? L->cap * 2 : 256;
        L->toks = jx_grow(L->a, L->toks, L->cap * sizeof(jx_tok), cap * sizeof(jx_tok));
        L->cap = cap;
    }
    jx_tok *t = &L->toks[L->ntoks++];
    memset(t, 0, sizeof *t);
    t->type = type;
    locate(L, off, &t->line, &t->col);
    return t;
}

static void emit_data(lexer *L, size_t from, size_t to) {
    if (to <= from) return;
    jx_tok *t = emit(L, T_DATA, from);
    t->p = L->s + from;
    t->n = to - from;
}

/* Whitespace as Python's regex \s (and str.isspace) sees it. */
static size_t ws_len(const char *s, size_t n, size_t i) {
    size_t adv;
    int32_t c = ju_decode(s + i, n - i, &adv);
    return ju_isspace(c) ? adv : 0;
}

static size_t skip_ws(const char *s, size_t n, size_t i) {
    size_t k;
    while (i < n && (k = ws_len(s, n, i)) > 0)
        i += k;
    return i;
}

/* End of [from, to) once trailing whitespace is removed. */
static size_t rstrip_end(const char *s, size_t from, size_t to) {
    size_t end = from, i = from, adv;
    while (i < to) {
        int32_t c = ju_decode(s + i, to - i, &adv);
        i += adv;
        if (!ju_isspace(c)) end = i;
    }
    return end;
}

/* lstrip_blocks: where the text [from, to) before a block tag ends once the
 * whitespace between the last line start and the tag is dropped. */
static size_t lstrip_end(const char *s, size_t from, size_t to, int line_starting) {
    size_t lp = from;
    int has_nl = 0;
    for (size_t i = to; i > from; i--)
        if (s[i - 1] == '\n') {
            lp = i;
            has_nl = 1;
            break;
        }
    if (!has_nl && !line_starting) return to;
    if (lp == to) return to;
    if (skip_ws(s, to, lp) != to) return to;
    return lp;
}

static int starts(const lexer *L, size_t i, const char *lit) {
    size_t k = strlen(lit);
    return i + k <= L->n && memcmp(L->s + i, lit, k) == 0;
}

static int is_digit(char c) { return c >= '0' && c <= '9'; }
static int is_name0(char c) { return c == '_' || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); }
static int is_name(char c) { return is_name0(c) || is_digit(c); }

/* {% raw %}: after "{%" and its sign at i, matches \s* raw \s* (-%}\s* | %}).
 * Returns the offset after it, or 0 if this is not a raw tag. */
static size_t match_raw(const lexer *L, size_t i) {
    i = skip_ws(L->s, L->n, i);
    if (!starts(L, i, "raw")) return 0;
    i += 3;
    if (i < L->n && is_name(L->s[i])) return 0;
    i = skip_ws(L->s, L->n, i);
    if (starts(L, i, "-%}")) return skip_ws(L->s, L->n, i + 3);
    if (starts(L, i, "%}")) return i + 2;
    return 0;
}

/* The end of a raw block: finds {%[-+] endraw (+%}|-%}\s*|%}\n?). Sets *body_end
 * to where the raw text stops (before the tag, whitespace control applied by the
 * caller), *sign, and returns the offset after the tag. */
static size_t find_endraw(lexer *L, size_t from, size_t *tag, char *sign) {
    for (size_t i = from; i + 1 < L->n; i++) {
        if (L->s[i] != '{' || L->s[i + 1] != '%') continue;
        size_t j = i + 2;
        char sg = 0;
        if (j < L->n && (L->s[j] == '-' || L->s[j] == '+')) sg = L->s[j++];
        j = skip_ws(L->s, L->n, j);
        if (!starts(L, j, "endraw")) continue;
        j = skip_ws(L->s, L->n, j + 6);
        if (starts(L, j, "+%}"))
            j += 3;
        else if (starts(L, j, "-%}"))
            j = skip_ws(L->s, L->n, j + 3);
        else if (starts(L, j, "%}")) {
            j += 2;
            if (j < L->n && L->s[j] == '\n') j++;
        } else
            continue;
        *tag = i;
        *sign = sg;
        return j;
    }
    lex_fail(L, from, "missing end of raw directive");
}

/* (\d+_)*\d+ : digits with single underscores between; returns the end or i. */
static size_t digits(const char *s, size_t n, size_t i) {
    if (i >= n || !is_digit(s[i])) return i;
    while (i < n && is_digit(s[i])) {
        i++;
        if (i + 1 < n && s[i] == '_' && is_digit(s[i + 1])) i++;
    }
    return i;
}

/* A float as jinja2 lexes it: 1.5, 1e3, 1.5e-3 (not after a '.'). 0 if none. */
static size_t match_float(const lexer *L, size_t i) {
    if (i > 0 && L->s[i - 1] == '.') return 0;
    size_t j = digits(L->s, L->n, i);
    if (j == i) return 0;
    size_t k = j;
    int frac = 0;
    if (k < L->n && L->s[k] == '.') {
        size_t m = digits(L->s, L->n, k + 1);
        if (m > k + 1) {
            k = m;
            frac = 1;
        }
    }
    if (k < L->n && (L->s[k] == 'e' || L->s[k] == 'E')) {
        size_t m = k + 1;
        if (m < L->n && (L->s[m] == '+' || L->s[m] == '-')) m++;
        size_t e = digits(L->s, L->n, m);
        if (e > m) return e;
    }
    return frac ? k : 0;
}

static double parse_float(lexer *L, size_t from, size_t to) {
    char buf[128];
    size_t k = 0;
    for (size_t i = from; i < to && k + 1 < sizeof buf; i++)
        if (L->s[i] != '_') buf[k++] = L->s[i];
    buf[k] = 0;
    return strtod(buf, NULL);
}

static size_t lex_int(lexer *L, size_t i, int64_t *out) {
    const char *s = L->s;
    int base = 10;
    size_t j = i;
    if (s[i] == '0' && i + 1 < L->n && strchr("bBoOxX", s[i + 1]) && s[i + 1]) {
        char b = (char)(s[i + 1] | 32);
        base = b == 'b' ? 2 : b == 'o' ? 8 : 16;
        j = i + 2;
    }
    uint64_t v = 0;
    int any = 0, overflow = 0;
    for (;;) {
        size_t k = j;
        if (k < L->n && s[k] == '_' && any) k++;
        if (k >= L->n) break;
        int d;
        char c = s[k];
        if (c >= '0' && c <= '9')
            d = c - '0';
        else if ((c | 32) >= 'a' && (c | 32) <= 'f')
            d = (c | 32) - 'a' + 10;
        else
            break;
        if (d >= base) break;
        if (base == 10 && any && v == 0 && s[i] == '0' && d != 0) break; /* 0(_?0)* : no leading zeros */
        if (v > (UINT64_MAX - (uint64_t)d) / (uint64_t)base) overflow = 1;
        v = v * (uint64_t)base + (uint64_t)d;
        any = 1;
        j = k + 1;
    }
    if (!any) lex_fail(L, i, "invalid integer literal");
    if (overflow || v > INT64_MAX) lex_fail(L, i, "integer literal out of range");
    *out = (int64_t)v;
    return j;
}

static int hexval(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    c = (char)(c | 32);
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
}

/* A quoted string at i; decodes Python's unicode-escape sequences. */
static size_t lex_string(lexer *L, size_t i, jx_tok *t) {
    char q = L->s[i];
    size_t j = i + 1;
    while (j < L->n && L->s[j] != q)
        j += L->s[j] == '\\' && j + 1 < L->n ? 2 : 1;
    if (j >= L->n) lex_fail(L, i, "unterminated string");
    jx_sb b = {.a = L->a};
    for (size_t k = i + 1; k < j;) {
        char c = L->s[k];
        if (c != '\\') {
            size_t e = k;
            while (e < j && L->s[e] != '\\')
                e++;
            jx_sb_put(&b, L->s + k, e - k);
            k = e;
            continue;
        }
        char e = L->s[k + 1];
        k += 2;
        switch (e) {
        case '\n': break;
        case '\\': jx_sb_putc(&b, '\\'); break;
        case '\'': jx_sb_putc(&b, '\''); break;
        case '"': jx_sb_putc(&b, '"'); break;
        case 'a': jx_sb_putc(&b, '\a'); break;
        case 'b': jx_sb_putc(&b, '\b'); break;
        case 'f': jx_sb_putc(&b, '\f'); break;
        case 'n': jx_sb_putc(&b, '\n'); break;
        case 'r': jx_sb_putc(&b, '\r'); break;
        case 't': jx_sb_putc(&b, '\t'); break;
        case 'v': jx_sb_putc(&b, '\v'); break;
        case 'x':
        case 'u':
        case 'U': {
            int nd = e == 'x' ? 2 : e == 'u' ? 4 : 8;
            uint32_t cp = 0;
            for (int d = 0; d < nd; d++) {
                int h = k + (size_t)d < j ? hexval(L->s[k + (size_t)d]) : -1;
                if (h < 0) lex_fail(L, k - 2, "truncated \\x, \\u or \\U escape in a string");
                cp = cp * 16 + (uint32_t)h;
            }
            if (cp > 0x10ffff) lex_fail(L, k - 2, "illegal Unicode character in a string");
            k += (size_t)nd;
            jx_sb_put_cp(&b, (int32_t)cp);
            break;
        }
        case 'N': lex_fail(L, k - 2, "\\N{...} escapes are not supported");
        default:
            if (e >= '0' && e <= '7') {
                int32_t cp = e - '0';
                for (int d = 0; d < 2 && k < j && L->s[k] >= '0' && L->s[k] <= '7'; d++)
                    cp = cp * 8 + (L->s[k++] - '0');
                jx_sb_put_cp(&b, cp);
            } else {
                jx_sb_putc(&b, '\\');
                k--; /* the character after the backslash is ordinary text */
            }
        }
    }
    t->p = b.p ? b.p : "";
    t->n = b.n;
    return j + 1;
}

static int op_code(const lexer *L, size_t i, size_t *len) {
    static const struct {
        const char *s;
        int op;
    } two[] = {{"//", OP_FLOORDIV}, {"**", OP_POW}, {"==", OP_EQ}, {"!=", OP_NE}, {">=", OP_GE}, {"<=", OP_LE}};
    for (size_t k = 0; k < sizeof two / sizeof *two; k++)
        if (starts(L, i, two[k].s)) {
            *len = 2;
            return two[k].op;
        }
    if (strchr("+-/*%~[](){}<>=.:|,;", L->s[i]) && L->s[i]) {
        *len = 1;
        return (unsigned char)L->s[i];
    }
    return 0;
}

/* Tokens inside {{ }} or {% %} from L->pos; returns once the closing tag is
 * consumed (leaving L->pos after it and any whitespace it strips). */
static void lex_tag(lexer *L, char kind, size_t open) {
    char stack[64];
    int depth = 0;
    const char *close = kind == '%' ? "%}" : "}}";
    for (;;) {
        size_t i = L->pos;
        if (i >= L->n)
            lex_fail(L, open,
                     kind == '%' ? "unexpected end of template, expected '%}'"
                                 : "unexpected end of template, expected '}}'");
        if (depth == 0) {
            if (L->s[i] == '-' && starts(L, i + 1, close)) {
                emit(L, kind == '%' ? T_BLOCK_END : T_VAR_END, i);
                L->pos = skip_ws(L->s, L->n, i + 3);
                return;
            }
            if (kind == '%' && L->s[i] == '+' && starts(L, i + 1, close)) {
                emit(L, T_BLOCK_END, i);
                L->pos = i + 3;
                return;
            }
            if (starts(L, i, close)) {
                emit(L, kind == '%' ? T_BLOCK_END : T_VAR_END, i);
                L->pos = i + 2;
                if (kind == '%' && L->pos < L->n && L->s[L->pos] == '\n') L->pos++;
                return;
            }
        }
        size_t w = ws_len(L->s, L->n, i);
        if (w) {
            L->pos = skip_ws(L->s, L->n, i);
            continue;
        }
        char c = L->s[i];
        size_t e;
        if (is_digit(c) && (e = match_float(L, i)) != 0) {
            jx_tok *t = emit(L, T_FLOAT, i);
            t->f = parse_float(L, i, e);
            t->p = L->s + i;
            t->n = e - i;
            L->pos = e;
        } else if (is_digit(c)) {
            jx_tok *t = emit(L, T_INT, i);
            L->pos = lex_int(L, i, &t->i);
            t->p = L->s + i;
            t->n = L->pos - i;
        } else if (is_name0(c)) {
            e = i;
            while (e < L->n && is_name(L->s[e]))
                e++;
            jx_tok *t = emit(L, T_NAME, i);
            t->p = jx_memdup(L->a, L->s + i, e - i);
            t->n = e - i;
            L->pos = e;
        } else if (c == '\'' || c == '"') {
            jx_tok *t = emit(L, T_STRING, i);
            L->pos = lex_string(L, i, t);
        } else {
            size_t len;
            int op = op_code(L, i, &len);
            if (!op) {
                char msg[64];
                snprintf(msg, sizeof msg, "unexpected char '%c'", c);
                lex_fail(L, i, msg);
            }
            if (op == '(' || op == '[' || op == '{') {
                if (depth == (int)sizeof stack) lex_fail(L, i, "brackets nested too deeply");
                stack[depth++] = op == '(' ? ')' : op == '[' ? ']' : '}';
            } else if (op == ')' || op == ']' || op == '}') {
                char msg[64];
                if (depth == 0) {
                    snprintf(msg, sizeof msg, "unexpected '%c'", op);
                    lex_fail(L, i, msg);
                }
                if (stack[depth - 1] != op) {
                    snprintf(msg, sizeof msg, "unexpected '%c', expected '%c'", op, stack[depth - 1]);
                    lex_fail(L, i, msg);
                }
                depth--;
            }
            jx_tok *t = emit(L, T_OP, i);
            t->op = op;
            t->p = L->s + i;
            t->n = len;
            L->pos = i + len;
        }
    }
}

void jx_lex(jx_env *env, jx_arena *a, const char *src, size_t len, jx_tok **toks, size_t *ntoks) {
    lexer L = {.env = env, .a = a, .s = src, .n = len, .loc_line = 1, .loc_col = 1};
    int line_starting = 1;
    while (L.pos < L.n) {
        size_t q = L.pos;
        while (q + 1 < L.n && !(L.s[q] == '{' && (L.s[q + 1] == '{' || L.s[q + 1] == '%' || L.s[q + 1] == '#')))
            q++;
        if (q + 1 >= L.n) {
            emit_data(&L, L.pos, L.n);
            break;
        }
        char kind = L.s[q + 1];
        size_t after = q + 2;
        char sign = 0;
        if (after < L.n && (L.s[after] == '-' || L.s[after] == '+')) sign = L.s[after++];
        size_t raw_end = kind == '%' ? match_raw(&L, after) : 0;
        size_t text_end = q;
        if (sign == '-')
            text_end = rstrip_end(L.s, L.pos, q);
        else if (sign != '+' && kind != '{')
            text_end = lstrip_end(L.s, L.pos, q, line_starting);
        emit_data(&L, L.pos, text_end);

        if (raw_end) {
            size_t tag;
            char rsign;
            size_t next = find_endraw(&L, raw_end, &tag, &rsign);
            int ls = L.s[raw_end - 1] == '\n';
            size_t body_end = tag;
            if (rsign == '-')
                body_end = rstrip_end(L.s, raw_end, tag);
            else if (rsign != '+')
                body_end = lstrip_end(L.s, raw_end, tag, ls);
            emit_data(&L, raw_end, body_end);
            L.pos = next;
        } else if (kind == '#') {
            size_t c0 = after, e = c0;
            while (e + 1 < L.n && !(L.s[e] == '#' && L.s[e + 1] == '}'))
                e++;
            if (e + 1 >= L.n) lex_fail(&L, q, "missing end of comment tag");
            if (e > c0 && L.s[e - 1] == '-')
                L.pos = skip_ws(L.s, L.n, e + 2);
            else if (e > c0 && L.s[e - 1] == '+')
                L.pos = e + 2;
            else {
                L.pos = e + 2;
                if (L.pos < L.n && L.s[L.pos] == '\n') L.pos++;
            }
        } else {
            emit(&L, kind == '%' ? T_BLOCK_BEGIN : T_VAR_BEGIN, q);
            L.pos = after;
            lex_tag(&L, kind, q);
        }
        line_starting = L.pos > 0 && L.s[L.pos - 1] == '\n';
    }
    emit(&L, T_EOF, L.n);
    *toks = L.toks;
    *ntoks = L.ntoks;
}
