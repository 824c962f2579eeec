/* jinja_impl.h — what the jinja*.c files share: the arena, values, tokens,
 * the syntax tree and the render state. Nothing outside src/text/jinja*.c
 * includes it; the API is jinja.h.
 *
 * Memory: a parsed template lives in one arena (its tokens' text, the tree,
 * constant values); a render allocates everything (values, scopes, output)
 * from a second arena that is dropped whole when the render ends. So values
 * carry no reference counts, and an error anywhere is a longjmp back to the
 * entry point (jinja_parse / jinja_render), which frees the arena: nothing can
 * leak on an error path. Strings are (pointer, length) views, not
 * NUL-terminated, into the template's arena, the caller's json_t context, or
 * the render arena; all outlive the render.
 */
#ifndef MOE_TEXT_JINJA_IMPL_H
#define MOE_TEXT_JINJA_IMPL_H

#include <jansson.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include "jinja.h"

/* ---------------------------------------------------------------- errors -- */

/* Where a failure jumps: jinja_parse / jinja_render set it up with setjmp and
 * return env.st after moe_err() recorded the message. */
typedef struct jx_env {
    jmp_buf jb;
    moe_status st;
} jx_env;

_Noreturn void jx_throw(jx_env *env, moe_status st, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* ----------------------------------------------------------------- arena -- */

typedef struct jx_chunk jx_chunk;
typedef struct jx_arena {
    jx_chunk *head;
    size_t total; /* bytes taken from malloc so far */
    size_t limit; /* a request past this fails with MOE_ENOMEM (runaway templates) */
    jx_env *env;  /* where a failed allocation jumps */
} jx_arena;

void *jx_alloc(jx_arena *a, size_t n); /* zeroed, 16-byte aligned; never NULL (jumps on failure) */
/* Grows p (old bytes) to n bytes; in place when p is the arena's latest allocation. */
void *jx_grow(jx_arena *a, void *p, size_t old, size_t n);
char *jx_memdup(jx_arena *a, const void *p, size_t n); /* copy + NUL */
void jx_arena_release(jx_arena *a);

/* A growable byte string in an arena. */
typedef struct jx_sb {
    jx_arena *a;
    char *p;
    size_t n, cap;
} jx_sb;

void jx_sb_put(jx_sb *b, const char *p, size_t n);
void jx_sb_putc(jx_sb *b, char c);
void jx_sb_puts(jx_sb *b, const char *s);
void jx_sb_printf(jx_sb *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void jx_sb_put_cp(jx_sb *b, int32_t cp); /* one code point as UTF-8 */

/* --------------------------------------------------------------- unicode -- */

/* Decodes one code point at p (n > 0 bytes left); *adv gets its length.
 * Invalid UTF-8 decodes byte by byte (as U+FFFD), so every input terminates. */
int32_t ju_decode(const char *p, size_t n, size_t *adv);
size_t ju_encode(int32_t cp, char out[4]);
size_t ju_count(const char *p, size_t n);            /* code points */
size_t ju_offset(const char *p, size_t n, size_t i); /* byte offset of code point i (n if past the end) */
int ju_is_ascii(const char *p, size_t n);
int ju_isspace(int32_t cp);     /* Python's str.isspace */
int ju_islinebreak(int32_t cp); /* Python's str.splitlines boundaries */
int32_t ju_upper(int32_t cp);
int32_t ju_lower(int32_t cp);
int32_t ju_title(int32_t cp);
int ju_isalpha(int32_t cp);
int ju_isdigit(int32_t cp);
int ju_isnumeric(int32_t cp);
int ju_iscased_lower(int32_t cp); /* a lowercase letter */
int ju_iscased_upper(int32_t cp); /* an uppercase or titlecase letter */
/* Python's full case mapping of one code point (ß -> "SS"): writes 1 to 3 code points, returns how many. */
enum { JU_UPPER, JU_LOWER, JU_TITLE };
int ju_case_full(int32_t cp, int mode, int32_t out[3]);

/* ---------------------------------------------------------------- values -- */

typedef enum jv_kind {
    JV_UNDEF, /* jinja2's Undefined: renders "", falsy, an error when used further */
    JV_NONE,
    JV_BOOL,
    JV_INT,
    JV_FLOAT,
    JV_STR,
    JV_LIST,
    JV_TUPLE,
    JV_DICT,
    JV_NS,   /* namespace(): a dict whose entries are attributes */
    JV_FUNC, /* a bound method, a global function, a macro */
    JV_LOOP, /* the `loop` variable of a for loop */
} jv_kind;

typedef struct jv jv;
typedef struct jv_list {
    size_t n, cap;
    jv *v; /* (n) */
} jv_list;
typedef struct jv_dict {
    size_t n, cap;
    jv *k, *v; /* (n) keys and values, in insertion order */
} jv_dict;

struct jv_func;
struct jx_loop;

struct jv {
    jv_kind kind;
    union {
        int b;
        int64_t i;
        double f;
        struct {
            const char *p;
            size_t n;
        } s;
        jv_list *l; /* JV_LIST, JV_TUPLE */
        jv_dict *d; /* JV_DICT, JV_NS */
        struct jv_func *fn;
        struct jx_loop *loop;
        const char *why; /* JV_UNDEF: jinja2's message when it is misused (NUL-terminated) */
    };
};

static inline jv jv_undef(const char *why) {
    jv v = {.kind = JV_UNDEF};
    v.why = why;
    return v;
}
static inline jv jv_none(void) {
    jv v = {.kind = JV_NONE};
    return v;
}
static inline jv jv_bool(int b) {
    jv v = {.kind = JV_BOOL};
    v.b = !!b;
    return v;
}
static inline jv jv_int(int64_t i) {
    jv v = {.kind = JV_INT};
    v.i = i;
    return v;
}
static inline jv jv_float(double f) {
    jv v = {.kind = JV_FLOAT};
    v.f = f;
    return v;
}
static inline jv jv_str(const char *p, size_t n) {
    jv v = {.kind = JV_STR};
    v.s.p = p ? p : "";
    v.s.n = n;
    return v;
}
static inline int jv_is_num(jv v) { return v.kind == JV_INT || v.kind == JV_FLOAT || v.kind == JV_BOOL; }
static inline int jv_is_seq(jv v) { return v.kind == JV_LIST || v.kind == JV_TUPLE; }

typedef struct jx_render jx_render;

jv jv_new_list(jx_render *R, jv_kind kind, size_t cap); /* JV_LIST or JV_TUPLE */
void jv_list_push(jx_render *R, jv list, jv item);
jv jv_new_dict(jx_render *R, jv_kind kind, size_t cap); /* JV_DICT or JV_NS */
void jv_dict_set(jx_render *R, jv dict, jv key, jv val);
jv *jv_dict_get(jv dict, jv key);                     /* NULL when absent */
jv *jv_dict_gets(jv dict, const char *key, size_t n); /* by string key */
jv jv_from_json(jx_render *R, const json_t *j);

const char *jv_type_name(jv v); /* Python's type(v).__name__: "dict", "str", ... */
int jv_truthy(jv v);
int jv_eq(jv a, jv b);                /* Python == */
int jv_cmp(jx_render *R, jv a, jv b); /* <0, 0, >0 as Python's <, for numbers, strings, sequences; else TypeError */
double jv_num(jv v);                  /* a number as double */
void jv_write_str(jx_render *R, jx_sb *b, jv v);  /* Python str(v) */
void jv_write_repr(jx_render *R, jx_sb *b, jv v); /* Python repr(v) */
jv jv_to_str(jx_render *R, jv v);                 /* str(v) as a JV_STR */
void jx_float_repr(double f, char buf[40]);       /* Python repr(float) */

typedef struct jx_json_opts {
    int ensure_ascii;
    const char *indent; /* NULL: one line */
    size_t indent_n;
    const char *item_sep, *key_sep; /* NULL: json.dumps' defaults */
    int sort_keys;
} jx_json_opts;
void jv_write_json(jx_render *R, jx_sb *b, jv v, const jx_json_opts *o, int level);

/* --------------------------------------------------------------- tokens -- */

typedef enum jx_ttype {
    T_EOF,
    T_DATA,
    T_VAR_BEGIN,
    T_VAR_END,
    T_BLOCK_BEGIN,
    T_BLOCK_END,
    T_NAME,
    T_STRING,
    T_INT,
    T_FLOAT,
    T_OP,
} jx_ttype;

/* Operators: a single character is its own code; these are the rest. */
enum { OP_FLOORDIV = 256, OP_POW, OP_EQ, OP_NE, OP_LE, OP_GE, OP_IN, OP_NOTIN };

typedef struct jx_tok {
    jx_ttype type;
    int op;        /* T_OP */
    int line, col; /* 1-based */
    const char *p; /* T_DATA, T_NAME, T_STRING (decoded): text; NUL-terminated */
    size_t n;
    int64_t i; /* T_INT */
    double f;  /* T_FLOAT */
} jx_tok;

/* Splits normalized template source into tokens, applying whitespace control,
 * trim_blocks and lstrip_blocks; comments vanish, raw blocks become data. The
 * array ends with T_EOF. */
void jx_lex(jx_env *env, jx_arena *a, const char *src, size_t len, jx_tok **toks, size_t *ntoks);

/* ------------------------------------------------------------------ tree -- */

typedef enum jx_nkind {
    N_CONST,  /* value */
    N_NAME,   /* name */
    N_LIST,   /* items */
    N_TUPLE,  /* items */
    N_DICT,   /* items: key, value, key, value, ... */
    N_ATTR,   /* a.name */
    N_ITEM,   /* a[b] */
    N_SLICE,  /* items[0..2]: start, stop, step (each may be NULL) */
    N_CALL,   /* a(items, kw) */
    N_FILTER, /* a | name(items, kw); a NULL: the block's output (filter blocks, block set) */
    N_TEST,   /* a is name(items, kw) */
    N_NEG,
    N_POS,
    N_NOT,
    N_AND,
    N_OR,
    N_BINOP, /* a op b: + - * / // % ** ~ */
    N_CMP,   /* a ops[0] items[0] ops[1] items[1] ... */
    N_COND,  /* a if b else c (c may be NULL) */
} jx_nkind;

typedef struct jx_node jx_node;
struct jx_node {
    jx_nkind kind;
    int op;
    int line, col;
    jv value;         /* N_CONST */
    const char *name; /* N_NAME, N_ATTR, N_FILTER, N_TEST */
    int fid;          /* N_FILTER, N_TEST: index into the filter / test table */
    jx_node *a, *b, *c;
    jx_node **items; /* (nitems) */
    int nitems;
    int *ops;             /* N_CMP: (nitems) */
    const char **kwnames; /* (nkw) */
    jx_node **kwvals;     /* (nkw) */
    int nkw;
    jx_node *star, *dstar; /* *args, **kwargs of a call */
};

typedef struct jx_stmt jx_stmt;
typedef struct jx_body {
    jx_stmt **v; /* (n) */
    int n;
} jx_body;

/* What `for` and `set` assign to: a name, a tuple of names, or ns.attr. */
typedef struct jx_target {
    const char **names; /* (n) */
    int n;
    int is_tuple;
    const char *attr; /* set ns.attr = ...: names[0] is the namespace */
} jx_target;

typedef struct jx_macro {
    const char *name;
    const char **params; /* (nparams) */
    jx_node **defaults;  /* (nparams), NULL where a parameter has none */
    int nparams;
    jx_body body;
    int uses_caller, uses_varargs, uses_kwargs; /* the body names caller / varargs / kwargs */
} jx_macro;

typedef enum jx_skind {
    S_TEXT,     /* text */
    S_OUT,      /* {{ expr }} */
    S_IF,       /* conds[i] -> bodies[i]; else_body */
    S_FOR,      /* for target in expr [if cond]: body; else_body */
    S_SET,      /* set target = expr */
    S_SETBLOCK, /* set target [| filter]: body */
    S_MACRO,    /* macro */
    S_CALL,     /* call[(caller params)] expr: caller's body in macro */
    S_FILTER,   /* filter expr(NULL input): body */
    S_WITH,     /* with names = values: body */
    S_BREAK,
    S_CONTINUE,
    S_BLOCK, /* a plain body ({% generation %}) */
} jx_skind;

struct jx_stmt {
    jx_skind kind;
    int line;
    const char *text; /* S_TEXT */
    size_t text_len;
    jx_node *expr;
    jx_node *cond;   /* S_FOR: the loop filter */
    jx_node **conds; /* S_IF (nconds) */
    jx_body *bodies; /* S_IF (nconds) */
    int nconds;
    jx_target target;
    jx_target *wtargets; /* S_WITH (nwith) */
    jx_node **wvals;     /* S_WITH (nwith) */
    int nwith;
    jx_body body, else_body;
    jx_macro *macro;
};

struct jinja_tmpl {
    jx_arena arena;
    jx_body body;
};

/* Parses tokens into t->body (in t->arena). */
void jx_parse_tokens(jx_env *env, jinja_tmpl *t, jx_tok *toks, size_t ntoks);

/* --------------------------------------------------------------- render -- */

typedef struct jx_scope jx_scope;
struct jx_scope {
    jx_scope *parent;
    const char **names; /* (n) */
    jv *vals;           /* (n) */
    size_t n, cap;
};

typedef struct jx_loop {
    int64_t index0, length;
    jv items; /* the iterated list, for previtem / nextitem */
    int depth;
} jx_loop;

/* Callables. */
typedef enum jx_fkind { F_METHOD, F_GLOBAL, F_MACRO, F_CYCLE } jx_fkind;
typedef struct jv_func {
    jx_fkind kind;
    int id;            /* F_METHOD / F_GLOBAL: which */
    const char *name;  /* for messages */
    jv self;           /* F_METHOD: the bound object; F_CYCLE: the loop */
    jx_macro *macro;   /* F_MACRO */
    jx_scope *closure; /* F_MACRO: where it was defined */
    jv caller;         /* F_MACRO called from {% call %}: the caller macro (else undefined) */
} jv_func;

/* Arguments of a call, filter or test. */
typedef struct jx_args {
    jv *pos; /* (npos) */
    int npos;
    const char **kwn; /* (nkw) */
    jv *kwv;          /* (nkw) */
    int nkw;
} jx_args;

struct jx_render {
    jx_env env;
    jx_arena arena;
    const jinja_tmpl *t;
    jx_sb *out;        /* where output goes now */
    jx_scope *globals; /* the caller's context */
    int line;          /* line of the statement being run, for messages */
    int depth;         /* nesting of macro calls */
    int nest;          /* nesting of jx_eval / statement bodies (bounds the C stack) */
};

/* Fails the render: MOE_EINVAL with "line N: " + message (jinja2's runtime errors). */
_Noreturn void jx_fail(jx_render *R, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Fails the render with MOE_EUNSUPPORTED. */
_Noreturn void jx_unsupported(jx_render *R, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Raises jinja2's UndefinedError for a misused undefined value. */
_Noreturn void jx_undef_error(jx_render *R, jv u);
/* An undefined for "obj has no attribute name" / "has no element". */
jv jx_undef_attr(jx_render *R, jv obj, const char *name, size_t n);
jv jx_undef_item(jx_render *R, jv obj, jv key);
char *jx_strf(jx_render *R, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Evaluation, shared by the filters and methods. */
jv jx_eval(jx_render *R, const jx_node *n, jx_scope *sc);
jv jx_getattr(jx_render *R, jv obj, const char *name, size_t n); /* jinja2's getattr (sandboxed) */
jv jx_getitem(jx_render *R, jv obj, jv key);                     /* jinja2's getitem */
jv jx_call(jx_render *R, jv fn, jx_args *args);
jv jx_iter_list(jx_render *R, jv v); /* list(v): lists, tuples, strings (chars), dicts (keys) */
jv jx_slice(jx_render *R, jv obj, jv start, jv stop, jv step);

/* Filters and tests (jinja_filters.c): looked up by name at parse time. */
int jx_filter_find(const char *name); /* -1 when unknown */
int jx_test_find(const char *name);
jv jx_filter_call(jx_render *R, int id, jv v, jx_args *args);
int jx_test_call(jx_render *R, int id, jv v, jx_args *args);

/* Globals and methods (jinja_methods.c). */
jv jx_global_find(jx_render *R, const char *name);                               /* undefined when not a global */
jv jx_method_bind(jx_render *R, jv obj, const char *name, size_t n, int *found); /* *found = 0: no such method */
jv jx_method_call(jx_render *R, jv_func *fn, jx_args *args);
jv jx_global_call(jx_render *R, jv_func *fn, jx_args *args);
/* Python's `%` string formatting. */
jv jx_percent_format(jx_render *R, jv fmt, jv args);
/* String operations shared by filters and methods; s must be a JV_STR. */
jv jx_str_strip(jx_render *R, jv s, jv chars, int left, int right); /* chars: JV_STR, or not given / None */
enum { CASE_UPPER, CASE_LOWER, CASE_CAPITALIZE, CASE_TITLE, CASE_SWAP };
jv jx_str_case(jx_render *R, jv s, int mode);                         /* Python's str.upper() etc. */
jv jx_str_replace(jx_render *R, jv s, jv old, jv rep, int64_t count); /* count < 0: all */
/* Stable merge sort of n values by `cmp` (which may fail the render). */
void jx_sort(jx_render *R, jv *v, size_t n, int (*cmp)(jx_render *, jv, jv, void *), void *ctx);

/* Argument binding: fills out[i] for names[i] from positional then keyword
 * arguments; a missing one is JV_UNDEF with why == NULL. Fails on surplus. */
void jx_bind(jx_render *R, const char *fname, jx_args *args, const char *const *names, int n, jv *out);
static inline int jx_given(jv v) { return !(v.kind == JV_UNDEF && v.why == NULL); }

#endif
