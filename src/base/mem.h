/* mem.h — how much memory this process may still use, and how much it used.
 * For sizing the expert cache and for benchmarks' peak RSS. */
#ifndef MOE_BASE_MEM_H
#define MOE_BASE_MEM_H

#include <stdint.h>

/* Bytes that can still be allocated without swapping or hitting a limit:
 * /proc/meminfo's MemAvailable, capped by the process's cgroup (v2: limit
 * less usage, counting its file cache as reclaimable; v1 likewise). -1 when
 * nothing can be read. $MOE_TEST_MEM_AVAILABLE (bytes) overrides it, for tests. */
int64_t mem_available(void);
/* Peak resident set size of this process in bytes (getrusage). */
int64_t mem_peak_rss(void);

#endif
