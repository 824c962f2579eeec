/* test_jinja.c — unit tests of the Jinja interpreter (src/text/jinja*.c) and
 * the chat-template layer (src/text/chat.c): each construct, whitespace
 * control, Python value semantics, and the error paths (syntax errors with
 * line:col, unsupported tags / filters / methods, raise_exception, runtime
 * errors, resource limits). The expected outputs are jinja2's (checked with
 * transformers' environment); tests/jinja/test_chat_templates.c compares whole
 * real templates against transformers itself. */
#include <jansson.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "src/text/chat.h"
#include "src/text/jinja.h"
#include "tests/test.h"

/* Renders src with the JSON context text ctx (NULL: none). Returns the output
 * (caller frees) or NULL, with *st set. */
static char *render(const char *src, const char *ctx, moe_status *st) {
    json_t *c = NULL;
    if (ctx) {
        json_error_t e;
        c = json_loads(ctx, 0, &e);
        if (!c) {
            fprintf(stderr, "bad test context %s: %s\n", ctx, e.text);
            *st = MOE_EINVAL;
            return NULL;
        }
    }
    jinja_tmpl *t = NULL;
    char *out = NULL;
    *st = jinja_parse(src, strlen(src), &t);
    if (*st == MOE_OK) *st = jinja_render(t, c, &out, NULL);
    jinja_free(t);
    json_decref(c);
    return out;
}

static void expect(const char *src, const char *ctx, const char *want) {
    moe_status st;
    char *out = render(src, ctx, &st);
    CHECK(st == MOE_OK && strcmp(out, want) == 0, "%s\n  want [%s]\n  got  [%s] (%s: %s)", src, want, out ? out : "",
          moe_status_name(st), st ? moe_errmsg() : "");
    free(out);
}

/* Expects failure with `want_st` and a message containing `needle`. */
static void expect_err(const char *src, const char *ctx, moe_status want_st, const char *needle) {
    moe_status st;
    char *out = render(src, ctx, &st);
    CHECK(st == want_st && out == NULL && strstr(moe_errmsg(), needle) != NULL,
          "%s\n  want %s containing [%s]\n  got %s [%s]", src, moe_status_name(want_st), needle, moe_status_name(st),
          st ? moe_errmsg() : out);
    free(out);
}

/* ------------------------------------------------------------ constructs -- */

static const char *const k_cases[][3] = {
    /* template, context, output */
    {"Hello {{ name }}!", "{\"name\": \"W\"}", "Hello W!"},
    {"{# comment #}a{# multi\nline #}b", NULL, "ab"},
    {"{{ 1 }} {{ 1.5 }} {{ true }} {{ none }} {{ 'x' }} {{ [1, 'a'] }} {{ {'k': none} }} {{ (1,) }}", NULL,
     "1 1.5 True None x [1, 'a'] {'k': None} (1,)"},
    {"{{ 'a\\tb\\n' }}|{{ \"q\\\"\" }}|{{ 'caf\\u00e9' }}", NULL, "a\tb\n|q\"|caf\xc3\xa9"},
    {"{{ 7 / 2 }} {{ 7 // 2 }} {{ -7 // 2 }} {{ 7 % 3 }} {{ -7 % 3 }} {{ 2 ** 10 }} {{ 1 + 2 * 3 }} {{ 'a' ~ 1 ~ none "
     "}}",
     NULL, "3.5 3 -4 1 2 1024 7 a1None"},
    {"{{ 1 < 2 }} {{ 1 == 1.0 }} {{ 'a' != 'b' }} {{ 2 >= 3 }} {{ 1 < 2 < 3 }} {{ 'b' in 'abc' }} {{ 3 not in [1, 2] "
     "}}",
     NULL, "True True True False True True True"},
    {"{{ 0 or 'x' }} {{ 1 and 'y' }} {{ not none }} {{ 'a' if 0 else 'b' }} [{{ 'a' if 0 }}]", NULL, "x y True b []"},
    /* attribute and item access; missing is undefined (renders empty) */
    {"{{ m.role }} {{ m['role'] }} [{{ m.missing }}] [{{ m['missing'] }}] [{{ l[5] }}] {{ l[-1] }} {{ l.0 }}",
     "{\"m\": {\"role\": \"user\"}, \"l\": [1, 2]}", "user user [] [] [] 2 1"},
    {"{{ s[::-1] }} {{ s[1:] }} {{ s[:2] }} {{ l[::2] }} {{ 'h\xc3\xa9llo'[1] }}", "{\"s\": \"abc\", \"l\": [1, 2, 3]}",
     "cba bc ab [1, 3] \xc3\xa9"},
    /* if / elif / else */
    {"{% if x > 1 %}big{% elif x == 1 %}one{% else %}small{% endif %}", "{\"x\": 1}", "one"},
    /* for: loop variables, else, filter, unpacking, break / continue */
    {"{% for x in 'ab' %}{{ loop.index }}{{ loop.index0 }}{{ loop.first }}{{ loop.last }}{{ loop.length }}"
     "{{ loop.revindex }};{% endfor %}",
     NULL, "10TrueFalse22;21FalseTrue21;"},
    {"{% for x in [1, 2, 3] %}{{ loop.previtem }}<{{ x }}>{{ loop.nextitem }}|{% endfor %}", NULL, "<1>2|1<2>3|2<3>|"},
    {"{% for x in [] %}x{% else %}empty{% endfor %}", NULL, "empty"},
    {"{% for x in range(6) if x is even %}{{ x }}/{{ loop.length }} {% endfor %}", NULL, "0/3 2/3 4/3 "},
    {"{% for k, v in d.items() %}{{ k }}={{ v }};{% endfor %}{% for k, v in d|items %}{{ k }}{% endfor %}",
     "{\"d\": {\"b\": 1, \"a\": 2}}", "b=1;a=2;ba"},
    {"{% for x in range(10) %}{% if x == 1 %}{% continue %}{% endif %}{% if x == 4 %}{% break %}{% endif %}{{ x }}"
     "{% endfor %}",
     NULL, "023"},
    {"{% set x = 1 %}{% for i in [1] %}{% set x = 2 %}{{ x }}{% endfor %}{{ x }}", NULL, "21"},
    /* set, block set, namespace */
    {"{% set a, b = 1, 2 %}{{ a }}{{ b }}{% set s %} in {{ a }} {% endset %}[{{ s }}]{% set t | trim %} x {% endset "
     "%}[{{ t }}]",
     NULL, "12[ in 1 ][x]"},
    {"{% set ns = namespace(n=0, seen=false) %}{% for i in [1, 2] %}{% set ns.n = ns.n + i %}{% endfor %}{{ ns.n }}"
     "{% set ns.seen = true %}{{ ns.seen }}",
     NULL, "3True"},
    /* macro, call, caller */
    {"{% macro m(a, b='B') %}{{ a }}{{ b }}{% endmacro %}{{ m(1) }}{{ m(1, 2) }}{{ m(b=3, a=4) }}", NULL, "1B1243"},
    {"{% macro box() %}[{{ caller() }}]{% endmacro %}{% call box() %}in{% endcall %}", NULL, "[in]"},
    {"{% macro rows(l) %}{% for x in l %}{{ caller(x) }}{% endfor %}{% endmacro %}{% call(v) rows([1, 2]) %}<{{ v }}>"
     "{% endcall %}",
     NULL, "<1><2>"},
    {"{% filter upper %}abc{% endfilter %}{% with a = 5 %}{{ a }}{% endwith %}", NULL, "ABC5"},
    {"a{% generation %}b{% endgeneration %}c{% raw %}{{ x }}{% endraw %}", NULL, "abc{{ x }}"},
    /* whitespace control and transformers' trim_blocks / lstrip_blocks */
    {"{% if true %}\nyes\n{% endif %}\nno", NULL, "yes\nno"},
    {"  {% if true %}\n  x\n  {% endif %}\n", NULL, "  x\n"},
    {"a  {%- if true -%}  b  {%- endif -%}  c", NULL, "abc"},
    {"a\n  {{- 'b' -}}  \n  c", NULL, "abc"},
    {"  {%+ if true %}x{% endif +%}\ny", NULL, "  x\ny"},
    {"a\n    {# c #}\nb", NULL, "a\nb"},
    {"line\n", NULL, "line"},
    {"a\r\nb\r\n", NULL, "a\nb"},
    /* tests */
    {"{{ x is defined }}{{ y is defined }}{{ n is none }}{{ 's' is string }}{{ 1 is number }}{{ 1 is integer }}"
     "{{ 1.0 is float }}{{ d is mapping }}{{ l is iterable }}{{ l is sequence }}{{ true is boolean }}",
     "{\"x\": 1, \"n\": null, \"d\": {}, \"l\": []}", "TrueFalseTrueTrueTrueTrueTrueTrueTrueTrueTrue"},
    {"{{ 3 is odd }}{{ 4 is even }}{{ 9 is divisibleby 3 }}{{ x is not none }}{{ true is true }}{{ 0 is false }}"
     "{{ 2 is in [1, 2] }}{{ 'a' is eq 'a' }}",
     "{\"x\": 0}", "TrueTrueTrueTrueTrueFalseTrueTrue"},
    /* filters */
    {"[{{ '  a  '|trim }}] {{ 'h\xc3\xa9'|length }} {{ [1, 2]|count }} {{ none|default('d') }}{{ x|default('d') }}"
     "{{ x|d('e') }} {{ [1, 2]|join(',') }}",
     NULL, "[a] 2 2 Nonede 1,2"},
    {"{{ 'ab'|upper }}{{ 'AB'|lower }} {{ 'hello world'|capitalize }} {{ 'hello world'|title }} "
     "{{ 'aXa'|replace('a', 'b') }}",
     NULL, "ABab Hello world Hello World bXb"},
    {"{{ [3, 1]|first }}{{ [3, 1]|last }} {{ 'ab'|list }} {{ 1|string }} {{ '42'|int + 1 }} {{ '1.5'|float }} "
     "{{ -2|abs }} {{ 2.5|round }} {{ 2.567|round(2) }}",
     NULL, "31 ['a', 'b'] 1 43 1.5 2 2.0 2.57"},
    {"{{ d|tojson }} {{ d|tojson(indent=2) }} {{ 'caf\xc3\xa9'|tojson }}", "{\"d\": {\"b\": [1, 2.0], \"a\": null}}",
     "{\"b\": [1, 2.0], \"a\": null} {\n  \"b\": [\n    1,\n    2.0\n  ],\n  \"a\": null\n} \"caf\xc3\xa9\""},
    {"{{ ms|selectattr('role', 'equalto', 'user')|map(attribute='c')|join }} {{ ms|rejectattr('role', 'eq', "
     "'user')|list|length }}"
     " {{ ms|map(attribute='role')|unique|list }}",
     "{\"ms\": [{\"role\": \"user\", \"c\": 1}, {\"role\": \"bot\", \"c\": 2}, {\"role\": \"user\", \"c\": 3}]}",
     "13 1 ['user', 'bot']"},
    {"{{ d|items|list }} {{ d|dictsort }} {{ [2, 1]|sort }} {{ 'a\\nb'|indent(2, true) }} {{ [1, 2]|sum }} "
     "{{ [1, 3]|max }}",
     "{\"d\": {\"b\": 1, \"a\": 2}}", "[('b', 1), ('a', 2)] [('a', 2), ('b', 1)] [1, 2]   a\n  b 3 3"},
    /* methods */
    {"[{{ s.strip() }}][{{ s.lstrip() }}][{{ s.rstrip() }}] {{ 'a,b'.split(',') }} {{ 'a b'.split() }} "
     "{{ 'x</t>y'.split('</t>')[-1] }}",
     "{\"s\": \" x \"}", "[x][x ][ x] ['a', 'b'] ['a', 'b'] y"},
    {"{{ s.startswith('<a') }}{{ s.endswith('>') }} {{ s.upper() }} {{ s.replace('a', 'b') }} {{ 'ab'.title() }} "
     "{{ '{}-{}'.format(1, 2) }}",
     "{\"s\": \"<a>\"}", "TrueTrue <A> <b> Ab 1-2"},
    {"{{ d.get('a') }} {{ d.get('z', 0) }} {{ d.get('z') }} {{ d.keys()|list }} {{ d.values()|list }}",
     "{\"d\": {\"a\": 1}}", "1 0 None ['a'] [1]"},
    /* undefined: empty, falsy, iterable as nothing, equal to itself */
    {"[{{ u }}]{{ u is undefined }}{{ not u }}{{ u|length }}{% for x in u %}x{% endfor %}{{ u == u }}{{ u ~ 'x' }}",
     NULL, "[]TrueTrue0Truex"},
};

static void test_constructs(void) {
    for (size_t i = 0; i < sizeof k_cases / sizeof *k_cases; i++)
        expect(k_cases[i][0], k_cases[i][1], k_cases[i][2]);
}

/* ---------------------------------------------------------------- errors -- */

static void test_syntax_errors(void) {
    expect_err("{% if x %}open", NULL, MOE_EFORMAT,
               "1:15: unexpected end of template: expected 'elif' or 'else' or 'endif'");
    expect_err("a\n{{ 1 + }}", NULL, MOE_EFORMAT, "2:8: unexpected 'end of print statement'");
    expect_err("{{ x", NULL, MOE_EFORMAT, "1:1: unexpected end of template, expected '}}'");
    expect_err("{% for x in %}{% endfor %}", NULL, MOE_EFORMAT,
               "1:13: expected an expression, got 'end of statement block'");
    expect_err("{% for x y %}", NULL, MOE_EFORMAT, "1:10: expected 'in', got 'y'");
    expect_err("{% endif %}", NULL, MOE_EFORMAT, "1:4: unexpected 'endif': no tag is open");
    expect_err("{% for x in y %}{% endif %}", NULL, MOE_EFORMAT,
               "unexpected 'endif': the innermost open tag is 'for' of line 1");
    expect_err("{% frobnicate %}", NULL, MOE_EFORMAT, "1:4: unknown tag 'frobnicate'");
    expect_err("{{ 'abc }}", NULL, MOE_EFORMAT, "1:4: unterminated string");
    expect_err("{{ (1 }}", NULL, MOE_EFORMAT, "unexpected '}', expected ')'");
    expect_err("{{ 1 ] }}", NULL, MOE_EFORMAT, "1:6: unexpected ']'");
    expect_err("{# never closed", NULL, MOE_EFORMAT, "1:1: missing end of comment tag");
    expect_err("{{ x is is y }}", NULL, MOE_EUNSUPPORTED, "no test named 'is'");
    expect_err("{% break %}", NULL, MOE_EFORMAT, "'break' outside of a for loop");
    expect_err("{% macro f(a=1, b) %}{% endmacro %}", NULL, MOE_EFORMAT,
               "non-default argument follows default argument");
    expect_err("{{ 'a' @ 'b' }}", NULL, MOE_EFORMAT, "1:8: unexpected char '@'");
    expect_err("{% set 1 = 2 %}", NULL, MOE_EFORMAT, "expected a name to assign to");
    expect_err("{% call 'x' %}{% endcall %}", NULL, MOE_EFORMAT, "expected call");
}

static void test_unsupported(void) {
    expect_err("{{ x|frobnicate }}", NULL, MOE_EUNSUPPORTED, "1:6: no filter named 'frobnicate'");
    expect_err("{{ x|groupby('a') }}", NULL, MOE_EUNSUPPORTED, "no filter named 'groupby'");
    expect_err("{{ x is frobnicated }}", NULL, MOE_EUNSUPPORTED, "1:9: no test named 'frobnicated'");
    expect_err("{% include 'other.j2' %}", NULL, MOE_EUNSUPPORTED, "the 'include' tag is not supported");
    expect_err("{% extends 'base' %}", NULL, MOE_EUNSUPPORTED, "the 'extends' tag is not supported");
    expect_err("{% for x in y recursive %}{% endfor %}", NULL, MOE_EUNSUPPORTED,
               "recursive for loops are not supported");
    expect_err("{{ 'abc'.zfill }}{{ 'abc'.expandtabs() }}", NULL, MOE_EUNSUPPORTED,
               "line 1: str.expandtabs() is not supported");
    expect_err("{{ cycler(1, 2) }}", NULL, MOE_EUNSUPPORTED, "the global 'cycler' is not supported");
    expect_err("{{ 9223372036854775807 + 1 }}", NULL, MOE_EUNSUPPORTED, "integer overflow");
}

static void test_runtime_errors(void) {
    /* raise_exception: MOE_EINVAL with exactly the template's message */
    moe_status st;
    char *out =
        render("{% if true %}{{ raise_exception('Roles must alternate: ' ~ n) }}{% endif %}", "{\"n\": 3}", &st);
    CHECK(st == MOE_EINVAL && !out && strcmp(moe_errmsg(), "Roles must alternate: 3") == 0, "raise_exception: %s %s",
          moe_status_name(st), moe_errmsg());
    /* jinja2's runtime errors: MOE_EINVAL with the line */
    expect_err("a\n{{ x.y }}", NULL, MOE_EINVAL, "line 2: 'x' is undefined");
    expect_err("{{ m.a.b }}", "{\"m\": {}}", MOE_EINVAL, "line 1: 'dict object' has no attribute 'a'");
    expect_err("{{ x + 1 }}", NULL, MOE_EINVAL, "'x' is undefined");
    expect_err("{{ 'a' + 1 }}", NULL, MOE_EINVAL, "can only concatenate str (not \"int\") to str");
    expect_err("{{ 1 / 0 }}", NULL, MOE_EINVAL, "division by zero");
    expect_err("{% for x in none %}{% endfor %}", NULL, MOE_EINVAL, "'NoneType' object is not iterable");
    expect_err("{{ [].append(1) }}", NULL, MOE_EINVAL, "access to attribute 'append' of 'list' object is unsafe.");
    expect_err("{{ x|tojson }}", NULL, MOE_EINVAL, "Object of type Undefined is not JSON serializable");
    expect_err("{% set d = {} %}{% set d.a = 1 %}", NULL, MOE_EINVAL,
               "cannot assign attribute on non-namespace object");
    expect_err("{{ range(200000)|length }}", NULL, MOE_EINVAL, "Range too big");
    expect_err("{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}", NULL, MOE_EINVAL, "maximum recursion depth exceeded");
    expect_err("{% for a, b in [[1]] %}{% endfor %}", NULL, MOE_EINVAL,
               "not enough values to unpack (expected 2, got 1)");
    expect_err("{{ 'x'() }}", NULL, MOE_EINVAL, "'str' object is not callable");
}

static void test_limits(void) {
    /* deep nesting is refused, not a stack overflow */
    size_t n = 20000;
    char *deep = malloc(2 * n + 8);
    memcpy(deep, "{{ ", 3);
    for (size_t i = 0; i < n; i++)
        deep[3 + i] = '(';
    deep[3 + n] = '1';
    for (size_t i = 0; i < n; i++)
        deep[4 + n + i] = ')';
    memcpy(deep + 4 + 2 * n, " }}", 4);
    moe_status st;
    char *out = render(deep, NULL, &st);
    CHECK(st == MOE_EFORMAT && !out, "deep parentheses: %s", moe_status_name(st));
    free(deep);
    size_t k = 5000, len = 0;
    char *ifs = malloc(k * 22 + 1);
    for (size_t i = 0; i < k; i++)
        len += (size_t)sprintf(ifs + len, "{%% if true %%}");
    out = render(ifs, NULL, &st);
    CHECK(st == MOE_EFORMAT && !out, "deep if nesting: %s", moe_status_name(st));
    free(ifs);
    /* long operator and filter chains parse flat but evaluate recursively: refused, not a stack overflow */
    char *chain = malloc(20 * 5000 + 16);
    len = (size_t)sprintf(chain, "{{ 1");
    for (size_t i = 0; i < 5000; i++)
        len += (size_t)sprintf(chain + len, " + 1");
    strcpy(chain + len, " }}");
    out = render(chain, NULL, &st);
    CHECK(st == MOE_EINVAL && !out && strstr(moe_errmsg(), "nested too deeply"), "long + chain: %s", moe_errmsg());
    len = (size_t)sprintf(chain, "{{ 'a'");
    for (size_t i = 0; i < 5000; i++)
        len += (size_t)sprintf(chain + len, "|upper");
    strcpy(chain + len, " }}");
    out = render(chain, NULL, &st);
    CHECK(st == MOE_EINVAL && !out, "long filter chain: %s", moe_errmsg());
    free(chain);
    /* a runaway template hits the render's memory budget, not the machine's */
    out = render("{% set ns = namespace(s='x') %}{% for i in range(100000) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
                 NULL, &st);
    CHECK(st == MOE_ENOMEM && !out, "runaway growth: %s %s", moe_status_name(st), moe_errmsg());
    /* a namespace that holds itself: refused when printed, not a stack overflow */
    out = render("{% set ns = namespace() %}{% set ns.me = [ns] %}{{ ns == ns }}{{ ns }}", NULL, &st);
    CHECK(st == MOE_EINVAL && !out && strstr(moe_errmsg(), "maximum recursion depth"), "cycle: %s", moe_errmsg());
    /* an embedded NUL in the source is ordinary data */
    jinja_tmpl *t;
    char *o;
    size_t olen;
    CHECK(jinja_parse("a\0b{{ 1 }}", 10, &t) == MOE_OK, "NUL in source: %s", moe_errmsg());
    CHECK(jinja_render(t, NULL, &o, &olen) == MOE_OK && olen == 4 && memcmp(o, "a\0b1", 4) == 0, "NUL render");
    free(o);
    jinja_free(t);
    jinja_free(NULL);
}

/* inputs the fuzzer found (fuzz/fuzz_jinja.c) */
static void test_fuzz_regressions(void) {
    expect("{{ '' '' ~ 'x' }}{{ '%s' % ('' '') }}", NULL, "x");                        /* empty adjacent literals */
    expect("{{ '%000005d|%--3d|' % (42, 7) }}", NULL, "00042|7  |");                   /* repeated % flags */
    expect_err("{{ '\\UFFFFFFFF' }}", NULL, MOE_EFORMAT, "illegal Unicode character"); /* escape overflow */
    expect_err("{{ '%99999999999999999999d' % 1 }}", NULL, MOE_EINVAL, "too large");   /* width overflow */
    /* a NUL as the % conversion character */
    static const char nul_conv[] = "{{ '%#2\0x' % 1.5 }}";
    jinja_tmpl *t;
    char *out = NULL;
    CHECK(jinja_parse(nul_conv, sizeof nul_conv - 1, &t) == MOE_OK, "parse NUL conversion");
    CHECK(jinja_render(t, NULL, &out, NULL) == MOE_EUNSUPPORTED && !out, "NUL conversion: %s", moe_errmsg());
    jinja_free(t);
}

static void test_render_args(void) {
    jinja_tmpl *t;
    char *out = (char *)1;
    CHECK(jinja_parse("{{ x }}", 7, &t) == MOE_OK, "parse");
    json_t *arr = json_array();
    CHECK(jinja_render(t, arr, &out, NULL) == MOE_EINVAL && out == NULL, "a non-object context is refused");
    json_decref(arr);
    size_t n = 99;
    CHECK(jinja_render(t, NULL, &out, &n) == MOE_OK && n == 0 && strcmp(out, "") == 0, "NULL context");
    free(out);
    jinja_free(t);
}

/* One parsed template, rendered from several threads at once. */
typedef struct {
    const jinja_tmpl *t;
    int ok;
} thread_arg;

static void *render_many(void *p) {
    thread_arg *a = p;
    json_t *ctx = json_pack("{s:[s,s,s]}", "xs", "a", "b", "c");
    a->ok = 1;
    for (int i = 0; i < 200; i++) {
        char *out;
        if (jinja_render(a->t, ctx, &out, NULL) != MOE_OK || strcmp(out, "0a1b2c") != 0) a->ok = 0;
        free(out);
    }
    json_decref(ctx);
    return NULL;
}

static void test_threads(void) {
    jinja_tmpl *t;
    const char *src =
        "{% set ns = namespace(s='') %}{% for x in xs %}{% set ns.s = ns.s ~ loop.index0 ~ x %}{% endfor %}{{ ns.s }}";
    CHECK(jinja_parse(src, strlen(src), &t) == MOE_OK, "parse");
    pthread_t th[4];
    thread_arg args[4];
    for (int i = 0; i < 4; i++) {
        args[i].t = t;
        pthread_create(&th[i], NULL, render_many, &args[i]);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        CHECK(args[i].ok, "thread %d rendered wrongly", i);
    }
    jinja_free(t);
}

/* ---------------------------------------------------------- chat layer -- */

static char *apply(const char *cfg, const char *name, const char *messages, const char *tools, int agp,
                   moe_status *st) {
    chat_template *c = NULL;
    char *out = NULL;
    *st = chat_template_load(cfg, name, &c);
    if (*st != MOE_OK) return NULL;
    json_t *m = json_loads(messages, 0, NULL), *t = tools ? json_loads(tools, 0, NULL) : NULL;
    *st = chat_template_apply(c, m, t, agp, &out, NULL);
    json_decref(m);
    json_decref(t);
    chat_template_free(c);
    return out;
}

static void test_chat(void) {
    moe_status st;
    const char *msgs = "[{\"role\": \"user\", \"content\": \"hi\"}]";
    /* string template; special tokens as strings or {"content"} objects */
    char *out = apply("{\"chat_template\": \"{{ bos_token }}{{ messages[0].content }}{{ eos_token }}"
                      "{% if add_generation_prompt %}>{% endif %}{{ tools is none }}\","
                      "\"bos_token\": {\"__type\": \"AddedToken\", \"content\": \"<s>\"}, \"eos_token\": \"</s>\"}",
                      NULL, msgs, NULL, 1, &st);
    CHECK(st == MOE_OK && strcmp(out, "<s>hi</s>>True") == 0, "string template: %s [%s]", moe_errmsg(), out);
    free(out);
    /* a list of named templates: default, tool_use when tools are given, or by name */
    const char *list = "{\"chat_template\": [{\"name\": \"default\", \"template\": \"D\"},"
                       "{\"name\": \"tool_use\", \"template\": \"T{{ tools|length }}\"},"
                       "{\"name\": \"rag\", \"template\": \"R\"}]}";
    out = apply(list, NULL, msgs, NULL, 0, &st);
    CHECK(st == MOE_OK && strcmp(out, "D") == 0, "default template: [%s]", out);
    free(out);
    out = apply(list, NULL, msgs, "[{\"type\": \"function\"}]", 0, &st);
    CHECK(st == MOE_OK && strcmp(out, "T1") == 0, "tool_use template: [%s]", out);
    free(out);
    out = apply(list, "rag", msgs, "[]", 0, &st);
    CHECK(st == MOE_OK && strcmp(out, "R") == 0, "named template: [%s]", out);
    free(out);
    out = apply(list, "nope", msgs, NULL, 0, &st);
    CHECK(st == MOE_EUNSUPPORTED && strstr(moe_errmsg(), "no chat template named 'nope'"), "missing name: %s",
          moe_errmsg());
    /* load errors */
    chat_template *c = (chat_template *)1;
    CHECK(chat_template_load("{\"bos_token\": \"<s>\"}", NULL, &c) == MOE_EUNSUPPORTED && c == NULL &&
              strstr(moe_errmsg(), "no chat_template"),
          "absent template: %s", moe_errmsg());
    CHECK(chat_template_load("{\"chat_template\": 5}", NULL, &c) == MOE_EFORMAT, "template of the wrong type");
    CHECK(chat_template_load("{\"chat_template\": [{\"name\": \"x\"}]}", NULL, &c) == MOE_EFORMAT, "bad list entry");
    CHECK(chat_template_load("{\"chat_template\": [{\"name\": \"x\", \"template\": \"X\"}]}", NULL, &c) ==
              MOE_EUNSUPPORTED,
          "list without default");
    CHECK(chat_template_load("{not json", NULL, &c) == MOE_EFORMAT &&
              strstr(moe_errmsg(), "tokenizer_config.json: line 1"),
          "bad JSON: %s", moe_errmsg());
    CHECK(chat_template_load("{\"chat_template\": \"{% if %}\"}", NULL, &c) == MOE_EFORMAT &&
              strstr(moe_errmsg(), "tokenizer_config.json: chat_template: 1:7"),
          "syntax error: %s", moe_errmsg());
    CHECK(chat_template_load("{\"chat_template\": \"{{ x|nope }}\"}", NULL, &c) == MOE_EUNSUPPORTED, "unknown filter");
    /* apply errors */
    CHECK(chat_template_load("{\"chat_template\": \"{{ raise_exception('no ' ~ messages|length) }}\"}", NULL, &c) ==
              MOE_OK,
          "load");
    json_t *m = json_loads(msgs, 0, NULL), *obj = json_object();
    char *o = (char *)1;
    CHECK(chat_template_apply(c, m, NULL, 0, &o, NULL) == MOE_EINVAL && !o && strcmp(moe_errmsg(), "no 1") == 0,
          "raise_exception through chat: %s", moe_errmsg());
    CHECK(chat_template_apply(c, obj, NULL, 0, &o, NULL) == MOE_EINVAL, "messages must be an array");
    CHECK(chat_template_apply(c, m, obj, 0, &o, NULL) == MOE_EINVAL, "tools must be an array");
    CHECK(chat_template_apply(NULL, m, NULL, 0, &o, NULL) == MOE_EINVAL, "NULL template");
    json_decref(m);
    json_decref(obj);
    chat_template_free(c);
    chat_template_free(NULL);
}

int main(void) {
    test_constructs();
    test_syntax_errors();
    test_unsupported();
    test_runtime_errors();
    test_limits();
    test_fuzz_regressions();
    test_render_args();
    test_threads();
    test_chat();
    TEST_DONE();
}
