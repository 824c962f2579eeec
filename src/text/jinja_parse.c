/* jinja_parse.c — tokens to a syntax tree, following jinja2's parser
 * (jinja2/parser.py) rule for rule, so precedence and the odd corners match:
 *   cond:   or ['if' or ['else' cond]]
 *   or/and/not, then comparisons (chained; 'in', 'not in'),
 *   + -, then ~, then * / // %, then ** (left-associative), then unary - +,
 *   then primary with postfix .attr [item] (call), then | filter and 'is' test
 *   (so `x|length - 1` is (x|length) - 1 and `-x|abs` is abs(-x)).
 * Statements: if/elif/else, for/else (with a loop filter), set (name, tuple,
 * ns.attr, block set), macro, call, filter, with, break, continue,
 * generation. Unknown filters and tests are refused here, as jinja2 refuses
 * them when it compiles. */
#include <stdlib.h>
#include <string.h>

#include "../base/err.h"
#include "jinja_impl.h"

typedef struct parser {
    jx_env *env;
    jx_arena *a;
    jx_tok *t;
    size_t n, i;
    int depth;            /* expression nesting, bounded so a hostile template cannot exhaust the stack */
    int loop_depth;       /* enclosing for loops (for break / continue) */
    jx_macro *macros[64]; /* macros being parsed, innermost last */
    int nmacros;
} parser;

enum { MAX_DEPTH = 200 };

/* Appends x to an arena array (x is evaluated first: it may parse, and so allocate). */
#define VPUSH(P, arr, n, cap, x)                                                                                       \
    do {                                                                                                               \
        __typeof__((arr)[0]) x_ = (x);                                                                                 \
        if ((n) == (cap)) {                                                                                            \
            int nc_ = (cap) ? (cap)*2 : 4;                                                                             \
            (arr) = jx_grow((P)->a, (arr), (size_t)(cap) * sizeof *(arr), (size_t)nc_ * sizeof *(arr));                \
            (cap) = nc_;                                                                                               \
        }                                                                                                              \
        (arr)[(n)++] = x_;                                                                                             \
    } while (0)

static jx_tok *cur(parser *P) { return &P->t[P->i]; }
static jx_tok *peek(parser *P, size_t k) { return P->i + k < P->n ? &P->t[P->i + k] : &P->t[P->n - 1]; }
static jx_tok *advance(parser *P) {
    jx_tok *t = cur(P);
    if (P->i + 1 < P->n) P->i++;
    return t;
}

static const char *describe(jx_tok *t, char buf[64]) {
    switch (t->type) {
    case T_EOF: return "end of template";
    case T_DATA: return "template data";
    case T_VAR_BEGIN: return "begin of print statement";
    case T_VAR_END: return "end of print statement";
    case T_BLOCK_BEGIN: return "begin of statement block";
    case T_BLOCK_END: return "end of statement block";
    case T_STRING: return "string";
    case T_INT: return "integer";
    case T_FLOAT: return "float";
    case T_NAME:
    case T_OP: snprintf(buf, 64, "%.*s", (int)(t->n < 40 ? t->n : 40), t->p); return buf;
    }
    return "token";
}

_Noreturn static void fail_tok(parser *P, moe_status st, jx_tok *t, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
_Noreturn static void fail_tok(parser *P, moe_status st, jx_tok *t, const char *fmt, ...) {
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    jx_throw(P->env, st, "%d:%d: %s", t->line, t->col, msg);
}

_Noreturn static void expected(parser *P, const char *what) {
    char buf[64];
    fail_tok(P, MOE_EFORMAT, cur(P), "expected %s, got '%s'", what, describe(cur(P), buf));
}

static int is_op(jx_tok *t, int op) { return t->type == T_OP && t->op == op; }
static int is_name(jx_tok *t, const char *name) { return t->type == T_NAME && strcmp(t->p, name) == 0; }

static void expect_op(parser *P, int op, const char *what) {
    if (!is_op(cur(P), op)) expected(P, what);
    advance(P);
}

static const char *expect_name(parser *P) {
    if (cur(P)->type != T_NAME) expected(P, "a name");
    return advance(P)->p;
}

static void expect_block_end(parser *P) {
    if (cur(P)->type != T_BLOCK_END) expected(P, "'%}' (end of statement block)");
    advance(P);
}

static jx_node *mk(parser *P, jx_nkind kind, jx_tok *at) {
    jx_node *n = jx_alloc(P->a, sizeof *n);
    n->kind = kind;
    n->line = at->line;
    n->col = at->col;
    return n;
}

static void enter(parser *P) {
    if (++P->depth > MAX_DEPTH) fail_tok(P, MOE_EFORMAT, cur(P), "expression nested too deeply");
}

/* ------------------------------------------------------------ expressions -- */

static jx_node *parse_expression(parser *P, int with_cond);
static jx_node *parse_tuple(parser *P, int with_cond, const char *extra_end, int explicit_parens);
static jx_node *parse_unary(parser *P, int with_filter);
static jx_node *parse_primary(parser *P);
static jx_node *parse_postfix(parser *P, jx_node *node);
static jx_node *parse_filter(parser *P, jx_node *node, int start_inline);

/* (args, kw, *a, **kw) after the callee / filter / test name */
static void parse_call_args(parser *P, jx_node *n) {
    jx_tok *open = cur(P);
    expect_op(P, '(', "'('");
    int ncap = 0, kncap = 0, kvcap = 0, require_comma = 0;
    while (!is_op(cur(P), ')')) {
        if (require_comma) {
            expect_op(P, ',', "','");
            if (is_op(cur(P), ')')) break;
        }
        if (is_op(cur(P), '*')) {
            if (n->star || n->dstar) fail_tok(P, MOE_EFORMAT, open, "invalid syntax for function call expression");
            advance(P);
            n->star = parse_expression(P, 1);
        } else if (is_op(cur(P), OP_POW)) {
            if (n->dstar) fail_tok(P, MOE_EFORMAT, open, "invalid syntax for function call expression");
            advance(P);
            n->dstar = parse_expression(P, 1);
        } else if (cur(P)->type == T_NAME && is_op(peek(P, 1), '=')) {
            if (n->dstar) fail_tok(P, MOE_EFORMAT, open, "invalid syntax for function call expression");
            const char *key = advance(P)->p;
            advance(P);
            jx_node *v = parse_expression(P, 1);
            int nk = n->nkw;
            VPUSH(P, n->kwnames, nk, kncap, key);
            VPUSH(P, n->kwvals, n->nkw, kvcap, v);
        } else {
            if (n->star || n->dstar || n->nkw)
                fail_tok(P, MOE_EFORMAT, open, "invalid syntax for function call expression");
            VPUSH(P, n->items, n->nitems, ncap, parse_expression(P, 1));
        }
        require_comma = 1;
    }
    expect_op(P, ')', "')'");
}

static jx_node *parse_list(parser *P) {
    jx_node *n = mk(P, N_LIST, cur(P));
    advance(P);
    int cap = 0;
    while (!is_op(cur(P), ']')) {
        if (n->nitems) expect_op(P, ',', "','");
        if (is_op(cur(P), ']')) break;
        VPUSH(P, n->items, n->nitems, cap, parse_expression(P, 1));
    }
    expect_op(P, ']', "']'");
    return n;
}

static jx_node *parse_dict(parser *P) {
    jx_node *n = mk(P, N_DICT, cur(P));
    advance(P);
    int cap = 0;
    while (!is_op(cur(P), '}')) {
        if (n->nitems) expect_op(P, ',', "','");
        if (is_op(cur(P), '}')) break;
        jx_node *k = parse_expression(P, 1);
        expect_op(P, ':', "':'");
        jx_node *v = parse_expression(P, 1);
        VPUSH(P, n->items, n->nitems, cap, k);
        VPUSH(P, n->items, n->nitems, cap, v);
    }
    expect_op(P, '}', "'}'");
    return n;
}

static void note_name(parser *P, const char *name) {
    if (P->nmacros == 0) return;
    jx_macro *m = P->macros[P->nmacros - 1];
    if (strcmp(name, "caller") == 0)
        m->uses_caller = 1;
    else if (strcmp(name, "varargs") == 0)
        m->uses_varargs = 1;
    else if (strcmp(name, "kwargs") == 0)
        m->uses_kwargs = 1;
}

static jx_node *parse_primary(parser *P) {
    jx_tok *t = cur(P);
    jx_node *n;
    enter(P);
    switch (t->type) {
    case T_NAME:
        n = mk(P, N_CONST, t);
        if (!strcmp(t->p, "true") || !strcmp(t->p, "True"))
            n->value = jv_bool(1);
        else if (!strcmp(t->p, "false") || !strcmp(t->p, "False"))
            n->value = jv_bool(0);
        else if (!strcmp(t->p, "none") || !strcmp(t->p, "None"))
            n->value = jv_none();
        else {
            n->kind = N_NAME;
            n->name = t->p;
            note_name(P, t->p);
        }
        advance(P);
        break;
    case T_STRING: {
        n = mk(P, N_CONST, t);
        advance(P);
        if (cur(P)->type != T_STRING) {
            n->value = jv_str(t->p, t->n);
            break;
        }
        jx_sb b = {.a = P->a};
        jx_sb_put(&b, t->p, t->n);
        while (cur(P)->type == T_STRING) {
            jx_sb_put(&b, cur(P)->p, cur(P)->n);
            advance(P);
        }
        n->value = jv_str(b.p, b.n);
        break;
    }
    case T_INT:
        n = mk(P, N_CONST, t);
        n->value = jv_int(t->i);
        advance(P);
        break;
    case T_FLOAT:
        n = mk(P, N_CONST, t);
        n->value = jv_float(t->f);
        advance(P);
        break;
    case T_OP:
        if (t->op == '(') {
            advance(P);
            n = parse_tuple(P, 1, NULL, 1);
            expect_op(P, ')', "')'");
            break;
        }
        if (t->op == '[') {
            n = parse_list(P);
            break;
        }
        if (t->op == '{') {
            n = parse_dict(P);
            break;
        }
        /* fallthrough */
    default: {
        char buf[64];
        fail_tok(P, MOE_EFORMAT, t, "unexpected '%s'", describe(t, buf));
    }
    }
    P->depth--;
    return n;
}

/* One subscript inside [ ]: an expression or a slice a:b:c. */
static jx_node *parse_subscribed(parser *P) {
    jx_tok *at = cur(P);
    jx_node *parts[3] = {NULL, NULL, NULL};
    if (is_op(cur(P), ':'))
        advance(P);
    else {
        jx_node *e = parse_expression(P, 1);
        if (!is_op(cur(P), ':')) return e;
        advance(P);
        parts[0] = e;
    }
    if (!is_op(cur(P), ':') && !is_op(cur(P), ']') && !is_op(cur(P), ',')) parts[1] = parse_expression(P, 1);
    if (is_op(cur(P), ':')) {
        advance(P);
        if (!is_op(cur(P), ']') && !is_op(cur(P), ',')) parts[2] = parse_expression(P, 1);
    }
    jx_node *s = mk(P, N_SLICE, at);
    s->items = jx_alloc(P->a, 3 * sizeof *s->items);
    memcpy(s->items, parts, sizeof parts);
    s->nitems = 3;
    return s;
}

static jx_node *parse_subscript(parser *P, jx_node *node) {
    jx_tok *t = advance(P);
    if (t->op == '.') {
        jx_tok *a = cur(P);
        if (a->type == T_NAME) {
            advance(P);
            jx_node *n = mk(P, N_ATTR, a);
            n->a = node;
            n->name = a->p;
            return n;
        }
        if (a->type != T_INT) expected(P, "a name or number after '.'");
        advance(P);
        jx_node *k = mk(P, N_CONST, a);
        k->value = jv_int(a->i);
        jx_node *n = mk(P, N_ITEM, a);
        n->a = node;
        n->b = k;
        return n;
    }
    /* '[' */
    jx_node *args[8];
    int nargs = 0;
    while (!is_op(cur(P), ']')) {
        if (nargs) expect_op(P, ',', "','");
        if (nargs == 8) fail_tok(P, MOE_EFORMAT, cur(P), "too many subscripts");
        args[nargs++] = parse_subscribed(P);
    }
    expect_op(P, ']', "']'");
    jx_node *n = mk(P, N_ITEM, t);
    n->a = node;
    if (nargs == 1)
        n->b = args[0];
    else {
        jx_node *tup = mk(P, N_TUPLE, t);
        tup->items = jx_alloc(P->a, (size_t)(nargs ? nargs : 1) * sizeof *tup->items);
        memcpy(tup->items, args, (size_t)nargs * sizeof *args);
        tup->nitems = nargs;
        n->b = tup;
    }
    return n;
}

static jx_node *parse_postfix(parser *P, jx_node *node) {
    for (;;) {
        jx_tok *t = cur(P);
        if (is_op(t, '.') || is_op(t, '['))
            node = parse_subscript(P, node);
        else if (is_op(t, '(')) {
            jx_node *c = mk(P, N_CALL, t);
            c->a = node;
            parse_call_args(P, c);
            node = c;
        } else
            return node;
    }
}

static const char *dotted_name(parser *P) {
    const char *name = expect_name(P);
    while (is_op(cur(P), '.')) {
        advance(P);
        const char *part = expect_name(P);
        size_t a = strlen(name), b = strlen(part);
        char *j = jx_alloc(P->a, a + b + 2);
        memcpy(j, name, a);
        j[a] = '.';
        memcpy(j + a + 1, part, b);
        name = j;
    }
    return name;
}

static jx_node *parse_filter(parser *P, jx_node *node, int start_inline) {
    while (is_op(cur(P), '|') || start_inline) {
        if (!start_inline) advance(P);
        jx_tok *t = cur(P);
        const char *name = dotted_name(P);
        jx_node *f = mk(P, N_FILTER, t);
        f->a = node;
        f->name = name;
        f->fid = jx_filter_find(name);
        if (f->fid < 0) fail_tok(P, MOE_EUNSUPPORTED, t, "no filter named '%s'", name);
        if (is_op(cur(P), '(')) parse_call_args(P, f);
        node = f;
        start_inline = 0;
    }
    return node;
}

static jx_node *parse_test(parser *P, jx_node *node) {
    jx_tok *is = advance(P);
    int negated = 0;
    if (is_name(cur(P), "not")) {
        advance(P);
        negated = 1;
    }
    jx_tok *t = cur(P);
    const char *name = dotted_name(P);
    jx_node *n = mk(P, N_TEST, t);
    n->a = node;
    n->name = name;
    n->fid = jx_test_find(name);
    if (n->fid < 0) fail_tok(P, MOE_EUNSUPPORTED, t, "no test named '%s'", name);
    jx_tok *c = cur(P);
    if (is_op(c, '('))
        parse_call_args(P, n);
    else if ((c->type == T_NAME || c->type == T_STRING || c->type == T_INT || c->type == T_FLOAT || is_op(c, '(') ||
              is_op(c, '[') || is_op(c, '{')) &&
             !is_name(c, "else") && !is_name(c, "or") && !is_name(c, "and")) {
        if (is_name(c, "is")) fail_tok(P, MOE_EFORMAT, c, "You cannot chain multiple tests with is");
        jx_node *arg = parse_postfix(P, parse_primary(P));
        n->items = jx_alloc(P->a, sizeof *n->items);
        n->items[0] = arg;
        n->nitems = 1;
    }
    if (negated) {
        jx_node *no = mk(P, N_NOT, is);
        no->a = n;
        return no;
    }
    return n;
}

static jx_node *parse_filter_expr(parser *P, jx_node *node) {
    for (;;) {
        jx_tok *t = cur(P);
        if (is_op(t, '|'))
            node = parse_filter(P, node, 0);
        else if (is_name(t, "is"))
            node = parse_test(P, node);
        else if (is_op(t, '(')) {
            jx_node *c = mk(P, N_CALL, t);
            c->a = node;
            parse_call_args(P, c);
            node = c;
        } else
            return node;
    }
}

static jx_node *parse_unary(parser *P, int with_filter) {
    jx_tok *t = cur(P);
    jx_node *node;
    enter(P);
    if (is_op(t, '-') || is_op(t, '+')) {
        advance(P);
        node = mk(P, t->op == '-' ? N_NEG : N_POS, t);
        node->a = parse_unary(P, 0);
    } else
        node = parse_primary(P);
    node = parse_postfix(P, node);
    if (with_filter) node = parse_filter_expr(P, node);
    P->depth--;
    return node;
}

static jx_node *binop(parser *P, jx_tok *t, int op, jx_node *l, jx_node *r) {
    jx_node *n = mk(P, N_BINOP, t);
    n->op = op;
    n->a = l;
    n->b = r;
    return n;
}

static jx_node *parse_pow(parser *P) {
    jx_node *l = parse_unary(P, 1);
    while (is_op(cur(P), OP_POW)) {
        jx_tok *t = advance(P);
        l = binop(P, t, OP_POW, l, parse_unary(P, 1));
    }
    return l;
}

static jx_node *parse_math2(parser *P) {
    jx_node *l = parse_pow(P);
    while (is_op(cur(P), '*') || is_op(cur(P), '/') || is_op(cur(P), OP_FLOORDIV) || is_op(cur(P), '%')) {
        jx_tok *t = advance(P);
        l = binop(P, t, t->op, l, parse_pow(P));
    }
    return l;
}

static jx_node *parse_concat(parser *P) {
    jx_node *l = parse_math2(P);
    while (is_op(cur(P), '~')) {
        jx_tok *t = advance(P);
        l = binop(P, t, '~', l, parse_math2(P));
    }
    return l;
}

static jx_node *parse_math1(parser *P) {
    jx_node *l = parse_concat(P);
    while (is_op(cur(P), '+') || is_op(cur(P), '-')) {
        jx_tok *t = advance(P);
        l = binop(P, t, t->op, l, parse_concat(P));
    }
    return l;
}

static jx_node *parse_compare(parser *P) {
    jx_tok *start = cur(P);
    jx_node *expr = parse_math1(P);
    jx_node *n = NULL;
    int cap = 0, ocap = 0;
    for (;;) {
        jx_tok *t = cur(P);
        int op;
        if (t->type == T_OP &&
            (t->op == OP_EQ || t->op == OP_NE || t->op == '<' || t->op == '>' || t->op == OP_LE || t->op == OP_GE)) {
            op = t->op;
            advance(P);
        } else if (is_name(t, "in")) {
            op = OP_IN;
            advance(P);
        } else if (is_name(t, "not") && is_name(peek(P, 1), "in")) {
            op = OP_NOTIN;
            advance(P);
            advance(P);
        } else
            break;
        if (!n) {
            n = mk(P, N_CMP, start);
            n->a = expr;
        }
        int nops = n->nitems;
        VPUSH(P, n->ops, nops, ocap, op);
        VPUSH(P, n->items, n->nitems, cap, parse_math1(P));
    }
    return n ? n : expr;
}

static jx_node *parse_not(parser *P) {
    if (is_name(cur(P), "not")) {
        jx_tok *t = advance(P);
        enter(P);
        jx_node *n = mk(P, N_NOT, t);
        n->a = parse_not(P);
        P->depth--;
        return n;
    }
    return parse_compare(P);
}

static jx_node *parse_and(parser *P) {
    jx_node *l = parse_not(P);
    while (is_name(cur(P), "and")) {
        jx_tok *t = advance(P);
        jx_node *n = mk(P, N_AND, t);
        n->a = l;
        n->b = parse_not(P);
        l = n;
    }
    return l;
}

static jx_node *parse_or(parser *P) {
    jx_node *l = parse_and(P);
    while (is_name(cur(P), "or")) {
        jx_tok *t = advance(P);
        jx_node *n = mk(P, N_OR, t);
        n->a = l;
        n->b = parse_and(P);
        l = n;
    }
    return l;
}

static jx_node *parse_condexpr(parser *P) {
    jx_node *e = parse_or(P);
    while (is_name(cur(P), "if")) {
        jx_tok *t = advance(P);
        enter(P);
        jx_node *n = mk(P, N_COND, t);
        n->a = e;
        n->b = parse_or(P);
        if (is_name(cur(P), "else")) {
            advance(P);
            n->c = parse_condexpr(P);
        }
        P->depth--;
        e = n;
    }
    return e;
}

static jx_node *parse_expression(parser *P, int with_cond) {
    enter(P);
    jx_node *n = with_cond ? parse_condexpr(P) : parse_or(P);
    P->depth--;
    return n;
}

static int is_tuple_end(parser *P, const char *extra_end) {
    jx_tok *t = cur(P);
    if (t->type == T_VAR_END || t->type == T_BLOCK_END || is_op(t, ')')) return 1;
    return extra_end && is_name(t, extra_end);
}

static jx_node *parse_tuple(parser *P, int with_cond, const char *extra_end, int explicit_parens) {
    jx_tok *start = cur(P);
    jx_node **items = NULL;
    int n = 0, cap = 0, is_tuple = 0;
    for (;;) {
        if (n) expect_op(P, ',', "','");
        if (is_tuple_end(P, extra_end)) break;
        VPUSH(P, items, n, cap, parse_expression(P, with_cond));
        if (is_op(cur(P), ','))
            is_tuple = 1;
        else
            break;
    }
    if (!is_tuple) {
        if (n) return items[0];
        if (!explicit_parens) expected(P, "an expression");
    }
    jx_node *t = mk(P, N_TUPLE, start);
    t->items = items;
    t->nitems = n;
    return t;
}

/* ------------------------------------------------------------- statements -- */

static jx_body parse_body(parser *P, const char *const *ends, const char *open_tag, int open_line);

static int in_list(const char *name, const char *const *list) {
    for (; list && *list; list++)
        if (strcmp(name, *list) == 0) return 1;
    return 0;
}

/* Statements up to one of `ends` (consumed, with the name left in *which),
 * after the current tag's "%}". */
static jx_body parse_block(parser *P, const char *const *ends, const char *open_tag, int open_line,
                           const char **which) {
    expect_block_end(P);
    jx_body b = parse_body(P, ends, open_tag, open_line);
    *which = advance(P)->p; /* the end tag's name */
    return b;
}

/* name | name, name | (name, name) ; or ns.attr when with_ns */
static jx_target parse_target(parser *P, const char *extra_end, int with_ns) {
    jx_target tg = {0};
    int cap = 0;
    if (with_ns && cur(P)->type == T_NAME && is_op(peek(P, 1), '.')) {
        const char *ns = advance(P)->p;
        advance(P);
        tg.attr = expect_name(P);
        VPUSH(P, tg.names, tg.n, cap, ns);
        return tg;
    }
    int parens = 0;
    if (is_op(cur(P), '(')) {
        advance(P);
        parens = 1;
        tg.is_tuple = 1;
    }
    for (;;) {
        if (tg.n) {
            if (!is_op(cur(P), ',')) break;
            advance(P);
            tg.is_tuple = 1;
            if (parens ? is_op(cur(P), ')') : is_tuple_end(P, extra_end)) break;
        }
        if (cur(P)->type != T_NAME) expected(P, "a name to assign to");
        const char *name = advance(P)->p;
        if (!strcmp(name, "true") || !strcmp(name, "false") || !strcmp(name, "none") || !strcmp(name, "True") ||
            !strcmp(name, "False") || !strcmp(name, "None"))
            fail_tok(P, MOE_EFORMAT, &P->t[P->i - 1], "can't assign to 'const'");
        VPUSH(P, tg.names, tg.n, cap, name);
    }
    if (parens) expect_op(P, ')', "')'");
    return tg;
}

static jx_stmt *mk_stmt(parser *P, jx_skind kind, jx_tok *at) {
    jx_stmt *s = jx_alloc(P->a, sizeof *s);
    s->kind = kind;
    s->line = at->line;
    return s;
}

static jx_stmt *parse_for(parser *P, jx_tok *tag) {
    static const char *const ends[] = {"endfor", "else", NULL}, *const end2[] = {"endfor", NULL};
    jx_stmt *s = mk_stmt(P, S_FOR, tag);
    s->target = parse_target(P, "in", 0);
    if (!is_name(cur(P), "in")) expected(P, "'in'");
    advance(P);
    s->expr = parse_tuple(P, 0, "recursive", 0);
    if (is_name(cur(P), "if")) {
        advance(P);
        s->cond = parse_expression(P, 1);
    }
    if (is_name(cur(P), "recursive")) fail_tok(P, MOE_EUNSUPPORTED, cur(P), "recursive for loops are not supported");
    const char *which;
    P->loop_depth++;
    s->body = parse_block(P, ends, "for", tag->line, &which);
    P->loop_depth--;
    if (!strcmp(which, "else")) s->else_body = parse_block(P, end2, "for", tag->line, &which);
    return s;
}

static jx_stmt *parse_if(parser *P, jx_tok *tag) {
    static const char *const ends[] = {"elif", "else", "endif", NULL}, *const end2[] = {"endif", NULL};
    jx_stmt *s = mk_stmt(P, S_IF, tag);
    int ccap = 0, bcap = 0;
    for (;;) {
        jx_node *c = parse_tuple(P, 0, NULL, 0);
        const char *which;
        jx_body b = parse_block(P, ends, "if", tag->line, &which);
        int nb = s->nconds;
        VPUSH(P, s->conds, s->nconds, ccap, c);
        VPUSH(P, s->bodies, nb, bcap, b);
        if (!strcmp(which, "elif")) continue;
        if (!strcmp(which, "else")) s->else_body = parse_block(P, end2, "if", tag->line, &which);
        return s;
    }
}

static jx_stmt *parse_set(parser *P, jx_tok *tag) {
    static const char *const ends[] = {"endset", NULL};
    jx_stmt *s = mk_stmt(P, S_SET, tag);
    s->target = parse_target(P, NULL, 1);
    if (is_op(cur(P), '=')) {
        advance(P);
        s->expr = parse_tuple(P, 1, NULL, 0);
        return s;
    }
    s->kind = S_SETBLOCK;
    if (s->target.is_tuple) expected(P, "'='");
    s->expr = parse_filter(P, NULL, 0);
    const char *which;
    s->body = parse_block(P, ends, "set", tag->line, &which);
    return s;
}

/* (name [= default], ...) of a macro or a call block */
static void parse_signature(parser *P, jx_macro *m) {
    int pcap = 0, dcap = 0, ndef = 0;
    expect_op(P, '(', "'('");
    while (!is_op(cur(P), ')')) {
        if (m->nparams) expect_op(P, ',', "','");
        const char *name = expect_name(P);
        jx_node *def = NULL;
        if (is_op(cur(P), '=')) {
            advance(P);
            def = parse_expression(P, 1);
            ndef++;
        } else if (ndef)
            fail_tok(P, MOE_EFORMAT, cur(P), "non-default argument follows default argument");
        int np = m->nparams;
        VPUSH(P, m->params, m->nparams, pcap, name);
        VPUSH(P, m->defaults, np, dcap, def);
    }
    expect_op(P, ')', "')'");
}

static jx_body parse_macro_body(parser *P, jx_macro *m, const char *const *ends, const char *tag, int line) {
    if (P->nmacros == (int)(sizeof P->macros / sizeof *P->macros))
        fail_tok(P, MOE_EFORMAT, cur(P), "macros nested too deeply");
    P->macros[P->nmacros++] = m;
    int saved_loops = P->loop_depth;
    P->loop_depth = 0;
    const char *which;
    jx_body b = parse_block(P, ends, tag, line, &which);
    P->loop_depth = saved_loops;
    P->nmacros--;
    return b;
}

static jx_stmt *parse_macro(parser *P, jx_tok *tag) {
    static const char *const ends[] = {"endmacro", NULL};
    jx_stmt *s = mk_stmt(P, S_MACRO, tag);
    jx_macro *m = jx_alloc(P->a, sizeof *m);
    m->name = expect_name(P);
    parse_signature(P, m);
    m->body = parse_macro_body(P, m, ends, "macro", tag->line);
    s->macro = m;
    return s;
}

static jx_stmt *parse_call_block(parser *P, jx_tok *tag) {
    static const char *const ends[] = {"endcall", NULL};
    jx_stmt *s = mk_stmt(P, S_CALL, tag);
    jx_macro *m = jx_alloc(P->a, sizeof *m);
    m->name = "caller";
    if (is_op(cur(P), '(')) parse_signature(P, m);
    jx_tok *at = cur(P);
    s->expr = parse_expression(P, 1);
    if (s->expr->kind != N_CALL) fail_tok(P, MOE_EFORMAT, at, "expected call");
    m->body = parse_macro_body(P, m, ends, "call", tag->line);
    s->macro = m;
    return s;
}

static jx_stmt *parse_filter_block(parser *P, jx_tok *tag) {
    static const char *const ends[] = {"endfilter", NULL};
    jx_stmt *s = mk_stmt(P, S_FILTER, tag);
    s->expr = parse_filter(P, NULL, 1);
    const char *which;
    s->body = parse_block(P, ends, "filter", tag->line, &which);
    return s;
}

static jx_stmt *parse_with(parser *P, jx_tok *tag) {
    static const char *const ends[] = {"endwith", NULL};
    jx_stmt *s = mk_stmt(P, S_WITH, tag);
    int tcap = 0, vcap = 0;
    while (cur(P)->type != T_BLOCK_END) {
        if (s->nwith) expect_op(P, ',', "','");
        jx_target t = parse_target(P, NULL, 0);
        expect_op(P, '=', "'='");
        jx_node *v = parse_expression(P, 1);
        int nw = s->nwith;
        VPUSH(P, s->wtargets, s->nwith, tcap, t);
        VPUSH(P, s->wvals, nw, vcap, v);
    }
    const char *which;
    s->body = parse_block(P, ends, "with", tag->line, &which);
    return s;
}

static jx_stmt *parse_statement_named(parser *P, jx_tok *tag, const char *name);

static jx_stmt *parse_statement(parser *P) {
    jx_tok *tag = cur(P);
    if (tag->type != T_NAME) fail_tok(P, MOE_EFORMAT, tag, "tag name expected");
    const char *name = tag->p;
    advance(P);
    enter(P);
    jx_stmt *s = parse_statement_named(P, tag, name);
    P->depth--;
    return s;
}

static jx_stmt *parse_statement_named(parser *P, jx_tok *tag, const char *name) {
    static const char *const unsupported[] = {"include",    "import", "from",  "extends",   "block",
                                              "autoescape", "do",     "trans", "pluralize", NULL};
    static const char *const gen_end[] = {"endgeneration", NULL};
    if (!strcmp(name, "for")) return parse_for(P, tag);
    if (!strcmp(name, "if")) return parse_if(P, tag);
    if (!strcmp(name, "set")) return parse_set(P, tag);
    if (!strcmp(name, "macro")) return parse_macro(P, tag);
    if (!strcmp(name, "call")) return parse_call_block(P, tag);
    if (!strcmp(name, "filter")) return parse_filter_block(P, tag);
    if (!strcmp(name, "with")) return parse_with(P, tag);
    if (!strcmp(name, "break") || !strcmp(name, "continue")) {
        if (P->loop_depth == 0) fail_tok(P, MOE_EFORMAT, tag, "'%s' outside of a for loop", name);
        return mk_stmt(P, name[0] == 'b' ? S_BREAK : S_CONTINUE, tag);
    }
    if (!strcmp(name, "generation")) {
        jx_stmt *s = mk_stmt(P, S_BLOCK, tag);
        const char *which;
        s->body = parse_block(P, gen_end, "generation", tag->line, &which);
        return s;
    }
    if (in_list(name, unsupported)) fail_tok(P, MOE_EUNSUPPORTED, tag, "the '%s' tag is not supported", name);
    fail_tok(P, MOE_EFORMAT, tag, "unknown tag '%s'", name);
}

static jx_body parse_body(parser *P, const char *const *ends, const char *open_tag, int open_line) {
    jx_body b = {0};
    int cap = 0;
    for (;;) {
        jx_tok *t = cur(P);
        if (t->type == T_EOF) {
            if (!ends) return b;
            char want[128] = "";
            for (const char *const *e = ends; *e; e++) {
                size_t k = strlen(want);
                snprintf(want + k, sizeof want - k, "%s'%s'", e == ends ? "" : " or ", *e);
            }
            fail_tok(P, MOE_EFORMAT, t, "unexpected end of template: expected %s to close the '%s' tag of line %d",
                     want, open_tag, open_line);
        }
        if (t->type == T_DATA) {
            jx_stmt *s = mk_stmt(P, S_TEXT, t);
            s->text = t->p;
            s->text_len = t->n;
            advance(P);
            VPUSH(P, b.v, b.n, cap, s);
        } else if (t->type == T_VAR_BEGIN) {
            advance(P);
            jx_stmt *s = mk_stmt(P, S_OUT, t);
            s->expr = parse_tuple(P, 1, NULL, 0);
            if (cur(P)->type != T_VAR_END) expected(P, "'}}' (end of print statement)");
            advance(P);
            VPUSH(P, b.v, b.n, cap, s);
        } else if (t->type == T_BLOCK_BEGIN) {
            advance(P);
            if (cur(P)->type == T_NAME && in_list(cur(P)->p, ends)) return b;
            jx_tok *tag = cur(P);
            if (tag->type == T_NAME &&
                (!strncmp(tag->p, "end", 3) || !strcmp(tag->p, "else") || !strcmp(tag->p, "elif"))) {
                if (ends)
                    fail_tok(P, MOE_EFORMAT, tag, "unexpected '%s': the innermost open tag is '%s' of line %d", tag->p,
                             open_tag, open_line);
                fail_tok(P, MOE_EFORMAT, tag, "unexpected '%s': no tag is open", tag->p);
            }
            jx_stmt *s = parse_statement(P);
            expect_block_end(P);
            VPUSH(P, b.v, b.n, cap, s);
        } else {
            char buf[64];
            fail_tok(P, MOE_EFORMAT, t, "unexpected '%s'", describe(t, buf));
        }
    }
}

void jx_parse_tokens(jx_env *env, jinja_tmpl *t, jx_tok *toks, size_t ntoks) {
    parser P = {.env = env, .a = &t->arena, .t = toks, .n = ntoks};
    t->body = parse_body(&P, NULL, NULL, 0);
}

/* ------------------------------------------------------------------ API -- */

moe_status jinja_parse(const char *src, size_t len, jinja_tmpl **out) {
    *out = NULL;
    if (!src && len) return moe_err(MOE_EINVAL, "jinja_parse: NULL source");
    jinja_tmpl *t = calloc(1, sizeof *t);
    if (!t) return moe_err(MOE_ENOMEM, "out of memory parsing a template");
    jx_env env;
    t->arena.env = &env;
    t->arena.limit = (size_t)256 << 20;
    if (setjmp(env.jb)) {
        jx_arena_release(&t->arena);
        free(t);
        return env.st;
    }
    /* jinja2 normalizes \r\n and \r to \n and drops one trailing newline
     * (keep_trailing_newline=False) before lexing */
    char *s = jx_alloc(&t->arena, len + 1);
    size_t n = 0;
    for (size_t i = 0; i < len; i++) {
        if (src[i] == '\r') {
            s[n++] = '\n';
            if (i + 1 < len && src[i + 1] == '\n') i++;
        } else
            s[n++] = src[i];
    }
    if (n && s[n - 1] == '\n') n--;
    s[n] = 0;
    jx_tok *toks;
    size_t ntoks;
    jx_lex(&env, &t->arena, s, n, &toks, &ntoks);
    jx_parse_tokens(&env, t, toks, ntoks);
    t->arena.env = NULL; /* the template no longer allocates */
    *out = t;
    return MOE_OK;
}

void jinja_free(jinja_tmpl *t) {
    if (!t) return;
    jx_arena_release(&t->arena);
    free(t);
}
