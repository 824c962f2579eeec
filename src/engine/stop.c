/* stop.c — user stop strings over streamed text. Text that could still be
 * the start of a stop string is held back until the next piece shows whether
 * it is; a stop string may span any number of tokens. The emitted text never
 * splits a UTF-8 character: hold-back boundaries are moved back to a
 * character start. */
#include <stdlib.h>
#include <string.h>

#include "../base/err.h"
#include "moe.h"

struct moe_stop {
    char **stops;      /* [n] */
    size_t *lens;      /* [n] */
    size_t n, max_len;
    char *pend;        /* held-back text [pend_len] */
    size_t pend_len, pend_cap;
    char *emit;        /* the last call's output */
    size_t emit_cap;
    int stopped;
};

moe_status moe_stop_new(const char *const *stops, size_t n, moe_stop **out) {
    *out = NULL;
    moe_stop *s = calloc(1, sizeof *s);
    if (!s) return moe_err(MOE_ENOMEM, "out of memory");
    s->stops = calloc(n ? n : 1, sizeof *s->stops);
    s->lens = calloc(n ? n : 1, sizeof *s->lens);
    if (!s->stops || !s->lens) {
        moe_stop_free(s);
        return moe_err(MOE_ENOMEM, "out of memory");
    }
    for (size_t i = 0; i < n; i++) {
        if (!stops[i] || !*stops[i]) {
            moe_stop_free(s);
            return moe_err(MOE_EINVAL, "stop string %zu is empty", i);
        }
        if (!(s->stops[i] = strdup(stops[i]))) {
            moe_stop_free(s);
            return moe_err(MOE_ENOMEM, "out of memory");
        }
        s->n = i + 1;
        s->lens[i] = strlen(stops[i]);
        if (s->lens[i] > s->max_len) s->max_len = s->lens[i];
    }
    *out = s;
    return MOE_OK;
}

void moe_stop_free(moe_stop *s) {
    if (!s) return;
    for (size_t i = 0; i < s->n; i++) free(s->stops[i]);
    free(s->stops);
    free(s->lens);
    free(s->pend);
    free(s->emit);
    free(s);
}

static int grow(char **buf, size_t *cap, size_t need) {
    if (need <= *cap) return 1;
    size_t nc = *cap ? *cap : 64;
    while (nc < need) nc *= 2;
    char *nb = realloc(*buf, nc);
    if (!nb) return 0;
    *buf = nb;
    *cap = nc;
    return 1;
}

/* Length of the longest suffix of p[0..len) that is a proper prefix of a stop string. */
static size_t partial_suffix(const moe_stop *s, const char *p, size_t len) {
    size_t best = 0;
    for (size_t i = 0; i < s->n; i++) {
        size_t m = s->lens[i] - 1 < len ? s->lens[i] - 1 : len;
        for (size_t k = m; k > best; k--)
            if (memcmp(p + len - k, s->stops[i], k) == 0) {
                best = k;
                break;
            }
    }
    return best;
}

const char *moe_stop_feed(moe_stop *s, const char *text, size_t len, size_t *emit_len, int *stopped) {
    *emit_len = 0;
    if (s->stopped) {
        *stopped = 1;
        return "";
    }
    if (!grow(&s->pend, &s->pend_cap, s->pend_len + len + 1) || !grow(&s->emit, &s->emit_cap, s->pend_len + len + 1)) {
        /* out of memory: pass the text through unchecked rather than lose it */
        *stopped = 0;
        *emit_len = len;
        return text;
    }
    memcpy(s->pend + s->pend_len, text, len);
    s->pend_len += len;
    /* earliest complete stop string */
    size_t cut = s->pend_len;
    for (size_t i = 0; i < s->n; i++) {
        if (s->lens[i] > s->pend_len) continue;
        for (size_t at = 0; at + s->lens[i] <= s->pend_len && at < cut; at++)
            if (memcmp(s->pend + at, s->stops[i], s->lens[i]) == 0) {
                cut = at;
                break;
            }
    }
    size_t out;
    if (cut < s->pend_len) {
        s->stopped = 1;
        out = cut;
    } else {
        out = s->pend_len - partial_suffix(s, s->pend, s->pend_len);
        while (out > 0 && out < s->pend_len && ((unsigned char)s->pend[out] & 0xc0) == 0x80) out--; /* whole characters */
    }
    memcpy(s->emit, s->pend, out);
    s->emit[out] = 0;
    memmove(s->pend, s->pend + out, s->pend_len - out);
    s->pend_len -= out;
    if (s->stopped) s->pend_len = 0;
    *stopped = s->stopped;
    *emit_len = out;
    return s->emit;
}

const char *moe_stop_flush(moe_stop *s, size_t *emit_len) {
    *emit_len = 0;
    if (s->stopped || !grow(&s->emit, &s->emit_cap, s->pend_len + 1)) return "";
    memcpy(s->emit, s->pend, s->pend_len);
    s->emit[s->pend_len] = 0;
    *emit_len = s->pend_len;
    s->pend_len = 0;
    return s->emit;
}

void moe_stop_reset(moe_stop *s) {
    s->pend_len = 0;
    s->stopped = 0;
}
