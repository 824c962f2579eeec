/* err.c — per-thread error message (see err.h). Thread-local, so a server's
 * threads never see each other's failures. */
#include "err.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static _Thread_local char g_msg[1024];

moe_status moe_err(moe_status st, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(g_msg, sizeof g_msg, fmt, ap);
    va_end(ap);
    return st;
}

moe_status moe_err_prefix(moe_status st, const char *prefix) {
    char tmp[sizeof g_msg];
    memcpy(tmp, g_msg, sizeof g_msg);
    size_t n = strlen(prefix);
    if (n > sizeof g_msg - 3) n = sizeof g_msg - 3;
    memcpy(g_msg, prefix, n);
    memcpy(g_msg + n, ": ", 2);
    size_t room = sizeof g_msg - n - 3, m = strlen(tmp);
    if (m > room) m = room;
    memcpy(g_msg + n + 2, tmp, m);
    g_msg[n + 2 + m] = 0;
    return st;
}

void moe_err_clear(void) { g_msg[0] = 0; }

const char *moe_errmsg(void) { return g_msg; }

const char *moe_status_name(moe_status st) {
    switch (st) {
    case MOE_OK: return "MOE_OK";
    case MOE_EIO: return "MOE_EIO";
    case MOE_EFORMAT: return "MOE_EFORMAT";
    case MOE_EUNSUPPORTED: return "MOE_EUNSUPPORTED";
    case MOE_ENOMEM: return "MOE_ENOMEM";
    case MOE_EINVAL: return "MOE_EINVAL";
    case MOE_ERANGE: return "MOE_ERANGE";
    }
    return "MOE_E?";
}
