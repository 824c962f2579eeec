/* err.h — the thread's last error message behind moe_errmsg().
 *
 * Library code reports failure by returning a moe_status and, at the point of
 * failure, calling moe_err(status, fmt, ...), which records a one-line message
 * for the calling thread and returns the status so the two go together:
 *     return moe_err(MOE_EFORMAT, "%s: tensor %s: shape [%lld] != [%d]", ...);
 */
#ifndef MOE_BASE_ERR_H
#define MOE_BASE_ERR_H

#include "moe.h"

moe_status moe_err(moe_status st, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Prefixes the current message with "prefix: " (to add the file or tensor an
 * inner function did not know); returns st unchanged. */
moe_status moe_err_prefix(moe_status st, const char *prefix);
void moe_err_clear(void);

#endif
