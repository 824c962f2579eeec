/* jinja.h — a Jinja2 subset interpreter for chat templates.
 *
 * Renders the templates found in tokenizer_config.json the way Hugging Face
 * transformers does: jinja2's ImmutableSandboxedEnvironment with
 * trim_blocks=True, lstrip_blocks=True, the loopcontrols extension
 * (break/continue), the {% generation %} tag, and the globals
 * raise_exception() and strftime_now(); `tojson` is json.dumps with
 * ensure_ascii=False. Values follow Python's rules (str() of a list is its
 * repr, 7/2 is 3.5, strings are sequences of code points, ...), so the output
 * is byte-identical to transformers' apply_chat_template for the constructs
 * it supports. Anything else is refused by name, never guessed:
 * at parse time for unknown tags, filters and tests; at render time for
 * Python methods this interpreter lacks.
 *
 * Supported: {{ }}, {% %}, {# #}, whitespace control (-, +), raw; if/elif/else;
 * for (else, loop filter, tuple targets, loop.index/index0/revindex/first/
 * last/length/previtem/nextitem/cycle, break, continue); set (names, tuples,
 * ns.attr, block set with filters); macro, call (caller), filter, with,
 * generation. Expressions: literals (strings with Python escapes, ints, floats,
 * booleans, none, lists, tuples, dicts), .attr, [item], slices, calls with
 * keywords and *args / **kwargs, + - * / // % ** ~, comparisons (chained), in,
 * not in, and / or / not, x if c else y, `is` tests, `|` filters. Filters:
 * abs attr batch capitalize center count d default dictsort e escape first float
 * format indent int items join last length list lower map max min reject
 * rejectattr replace reverse round safe select selectattr sort string sum title
 * tojson trim truncate unique upper wordcount. Tests: boolean callable defined
 * divisibleby eq/equalto/== escaped even false filter float ge/gt/le/lt/ne (and
 * symbols) in integer iterable lower mapping none number odd sameas sequence
 * string test true undefined upper. Globals: range, dict, namespace,
 * raise_exception, strftime_now. String, list and dict methods as Python's
 * (strip, split, startswith, format, get, items, ...); methods that would
 * modify a list or dict are refused as the immutable sandbox refuses them.
 * Not supported: include / import / extends / block, recursive loops,
 * loop.changed, the filters groupby, slice, striptags, urlize, wordwrap,
 * xmlattr, pprint, random, filesizeformat, urlencode, forceescape.
 *
 * Thread-safety: a parsed template is read-only; any number of threads may
 * render the same jinja_tmpl at once.
 */
#ifndef MOE_TEXT_JINJA_H
#define MOE_TEXT_JINJA_H

#include <jansson.h>
#include <stddef.h>

#include "moe.h"

typedef struct jinja_tmpl jinja_tmpl;

/* Parses template source `src` (`len` bytes, need not be NUL-terminated).
 * On success *out owns the template (free with jinja_free). On failure *out is
 * NULL and the message says where: "line:col: expected ..., got ...".
 * MOE_EFORMAT for syntax errors; MOE_EUNSUPPORTED for a tag, filter or test
 * this interpreter does not implement (named in the message). */
moe_status jinja_parse(const char *src, size_t len, jinja_tmpl **out);

/* Frees a template; NULL is a no-op. */
void jinja_free(jinja_tmpl *t);

/* Renders `t` with the keys of the JSON object `ctx` as the template's global
 * variables (`ctx` may be NULL: no variables). On success *out is a malloc'd,
 * NUL-terminated string the caller frees, and *out_len (if not NULL) its
 * length in bytes. On failure *out is NULL and:
 *   MOE_EINVAL        raise_exception("msg") was called (the message is exactly
 *                     "msg"), or the template failed at run time as jinja2
 *                     would (undefined attribute of an undefined value, a
 *                     type error, ...; the message starts with "line N: ")
 *   MOE_EUNSUPPORTED  a construct or Python method this interpreter lacks
 *   MOE_ENOMEM        out of memory, or the render outgrew its memory budget
 *                     (a runaway template)
 * `ctx` is only read, and must not change during the call. */
moe_status jinja_render(const jinja_tmpl *t, const json_t *ctx, char **out, size_t *out_len);

#endif
