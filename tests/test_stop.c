/* test_stop.c — stop strings across token boundaries, held-back text that
 * turns out not to be a stop, several stop strings, UTF-8 safety. */
#include <stdlib.h>

#include "moe.h"
#include "test.h"

/* feeds pieces[] (NULL-terminated) and returns everything emitted */
static char *run(const char *const *stops, size_t ns, const char *const *pieces, int *stopped, int *stop_at) {
    moe_stop *s;
    static char out[1024];
    out[0] = 0;
    *stop_at = -1;
    if (moe_stop_new(stops, ns, &s) != MOE_OK) return NULL;
    size_t n;
    for (int i = 0; pieces[i]; i++) {
        const char *e = moe_stop_feed(s, pieces[i], strlen(pieces[i]), &n, stopped);
        CHECK(strlen(e) == n, "emit length");
        strncat(out, e, n);
        if (*stopped && *stop_at < 0) *stop_at = i;
    }
    const char *e = moe_stop_flush(s, &n);
    strncat(out, e, n);
    moe_stop_free(s);
    return out;
}

int main(void) {
    int st, at;
    const char *one[] = {"</s>"};
    char *o = run(one, 1, (const char *[]){"Hello", " wor", "ld<", "/", "s>", " more", NULL}, &st, &at);
    CHECK(st && at == 4 && !strcmp(o, "Hello world"), "stop spanning three pieces: '%s' at %d", o, at);
    o = run(one, 1, (const char *[]){"a<", "/x", "> b", NULL}, &st, &at);
    CHECK(!st && !strcmp(o, "a</x> b"), "held-back prefix released when it is not a stop: '%s'", o);
    o = run(one, 1, (const char *[]){"tail <", "/s", NULL}, &st, &at);
    CHECK(!st && !strcmp(o, "tail </s"), "flush releases an unfinished prefix: '%s'", o);

    /* what is shown before a decision: only text that cannot start a stop */
    moe_stop *s;
    size_t n;
    CHECK(moe_stop_new(one, 1, &s) == MOE_OK, "new");
    const char *e = moe_stop_feed(s, "x </", 4, &n, &st);
    CHECK(n == 2 && !memcmp(e, "x ", 2) && !st, "holds back '</': emitted %zu", n);
    e = moe_stop_feed(s, "s>y", 3, &n, &st);
    CHECK(n == 0 && st, "then stops without emitting the stop string");
    e = moe_stop_feed(s, "later", 5, &n, &st);
    CHECK(n == 0 && st, "nothing after a stop");
    moe_stop_reset(s);
    e = moe_stop_feed(s, "again", 5, &n, &st);
    CHECK(n == 5 && !st, "reset starts over");
    moe_stop_free(s);

    /* several stops: the earliest in the text wins */
    const char *two[] = {"STOP", "\n\n"};
    o = run(two, 2, (const char *[]){"ab\n", "\ncdSTOP", NULL}, &st, &at);
    CHECK(st && !strcmp(o, "ab"), "first of two stops: '%s'", o);
    o = run(two, 2, (const char *[]){"xSTO", "P\n\n", NULL}, &st, &at);
    CHECK(st && !strcmp(o, "x"), "STOP before the blank line: '%s'", o);

    /* no stop strings: everything passes at once */
    CHECK(moe_stop_new(NULL, 0, &s) == MOE_OK, "no stops");
    e = moe_stop_feed(s, "abc", 3, &n, &st);
    CHECK(n == 3 && !st, "pass-through");
    moe_stop_free(s);

    /* UTF-8: a held-back boundary never splits a character */
    const char *u[] = {"\xc3\xa9!"}; /* "é!" */
    CHECK(moe_stop_new(u, 1, &s) == MOE_OK, "utf8 stop");
    e = moe_stop_feed(s, "caf\xc3\xa9", 5, &n, &st);
    CHECK(n == 3 && !st, "holds back the whole é, emitted %zu", n);
    e = moe_stop_feed(s, " ok", 3, &n, &st);
    CHECK(n == 5 && !memcmp(e, "\xc3\xa9 ok", 5), "then releases it whole");
    moe_stop_free(s);

    const char *bad[] = {""};
    CHECK(moe_stop_new(bad, 1, &s) == MOE_EINVAL && s == NULL, "empty stop string refused");
    moe_stop_free(NULL);
    TEST_DONE();
}
