/* mem.c — memory probing (see mem.h). */
#include "mem.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

/* The first number in file `path` ("max" and unreadable files: -1). */
static int64_t read_num(const char *path) {
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    char buf[64] = "";
    int ok = fgets(buf, sizeof buf, f) != NULL;
    fclose(f);
    if (!ok || !strncmp(buf, "max", 3)) return -1;
    char *end;
    long long v = strtoll(buf, &end, 10);
    return end == buf || v < 0 ? -1 : (int64_t)v;
}

/* The value of `key` (e.g. "file ") in a "key value" stats file, or 0. */
static int64_t read_stat(const char *path, const char *key) {
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    char line[256];
    int64_t v = 0;
    size_t kl = strlen(key);
    while (fgets(line, sizeof line, f))
        if (!strncmp(line, key, kl)) {
            v = strtoll(line + kl, NULL, 10);
            break;
        }
    fclose(f);
    return v < 0 ? 0 : v;
}

/* What the cgroup of this process still allows, or -1 without a limit. */
static int64_t cgroup_room(void) {
    FILE *f = fopen("/proc/self/cgroup", "r");
    if (!f) return -1;
    char line[4096], v2[4096] = "", v1[4096] = "";
    while (fgets(line, sizeof line, f)) {
        line[strcspn(line, "\n")] = 0;
        if (!strncmp(line, "0::", 3)) snprintf(v2, sizeof v2, "%s", line + 3);
        char *m = strstr(line, ":memory:");
        if (m) snprintf(v1, sizeof v1, "%s", m + 8);
    }
    fclose(f);
    char path[4200];
    int64_t limit, usage, file;
    if (!*v1) { /* cgroup v2; in a hybrid setup the memory controller is v1's line */
        snprintf(path, sizeof path, "/sys/fs/cgroup%s/memory.max", strcmp(v2, "/") ? v2 : "");
        limit = read_num(path);
        if (limit < 0 && *v2 && strcmp(v2, "/")) limit = read_num("/sys/fs/cgroup/memory.max");
        snprintf(path, sizeof path, "/sys/fs/cgroup%s/memory.current", strcmp(v2, "/") ? v2 : "");
        usage = read_num(path);
        if (usage < 0) usage = read_num("/sys/fs/cgroup/memory.current");
        snprintf(path, sizeof path, "/sys/fs/cgroup%s/memory.stat", strcmp(v2, "/") ? v2 : "");
        file = read_stat(path, "file ");
    } else {
        snprintf(path, sizeof path, "/sys/fs/cgroup/memory%s/memory.limit_in_bytes", v1);
        limit = read_num(path);
        snprintf(path, sizeof path, "/sys/fs/cgroup/memory%s/memory.usage_in_bytes", v1);
        usage = read_num(path);
        snprintf(path, sizeof path, "/sys/fs/cgroup/memory%s/memory.stat", v1);
        file = read_stat(path, "cache ");
    }
    if (limit < 0 || limit >= ((int64_t)1 << 60)) return -1; /* v1 says "no limit" with a huge number */
    if (usage < 0) usage = 0;
    int64_t used = usage - file > 0 ? usage - file : 0;
    return limit > used ? limit - used : 0;
}

int64_t mem_available(void) {
    const char *t = getenv("MOE_TEST_MEM_AVAILABLE"); /* tests: a machine with that much memory */
    if (t && *t) {
        char *end;
        long long v = strtoll(t, &end, 10);
        if (!*end && v >= 0) return v;
    }
    int64_t avail = -1;
    FILE *f = fopen("/proc/meminfo", "r");
    if (f) {
        char line[256];
        while (fgets(line, sizeof line, f))
            if (!strncmp(line, "MemAvailable:", 13)) {
                avail = strtoll(line + 13, NULL, 10) * 1024;
                break;
            }
        fclose(f);
    }
    int64_t cg = cgroup_room();
    if (cg >= 0 && (avail < 0 || cg < avail)) avail = cg;
    return avail;
}

int64_t mem_peak_rss(void) {
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru)) return -1;
    return (int64_t)ru.ru_maxrss * 1024;
}
