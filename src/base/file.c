/* file.c — see file.h. */
#include "file.h"

#include <errno.h>
#include <stdint.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "err.h"

moe_status file_map_open(const char *path, file_map *out) {
    out->data = NULL;
    out->size = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return moe_err(MOE_EIO, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        return moe_err(MOE_EIO, "%s: cannot stat: %s", path, strerror(e));
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return moe_err(MOE_EIO, "%s: not a regular file", path);
    }
    if (st.st_size > 0) {
        void *p = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (p == MAP_FAILED) {
            int e = errno;
            close(fd);
            return moe_err(MOE_EIO, "%s: cannot map: %s", path, strerror(e));
        }
        out->data = p;
        out->size = (size_t)st.st_size;
    }
    close(fd);
    return MOE_OK;
}

void file_map_close(file_map *m) {
    if (m && m->data) munmap((void *)m->data, m->size);
    if (m) { m->data = NULL; m->size = 0; }
}

int file_map_drop(const file_map *m, int fd, const void *p, size_t n) {
    uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE), a = (uintptr_t)p, b = a + n;
    uintptr_t lo = (uintptr_t)m->data, hi = lo + m->size;
    if (!p || !n || !m->data || a < lo || b > hi) return 0;
    a = a / page * page; /* the mapping starts on a page and ends on one */
    b = (b + page - 1) / page * page;
    madvise((void *)a, b - a, MADV_DONTNEED);
    if (fd >= 0) posix_fadvise(fd, (off_t)(a - lo), (off_t)(b - a), POSIX_FADV_DONTNEED);
    return 1;
}

moe_status file_read_all(const char *path, size_t max_bytes, char **out, size_t *len) {
    *out = NULL;
    FILE *f = fopen(path, "rb");
    if (!f) return moe_err(MOE_EIO, "%s: cannot open: %s", path, strerror(errno));
    size_t cap = 4096, n = 0;
    char *buf = malloc(cap);
    while (buf) {
        if (n + 1 >= cap) {
            if (cap > max_bytes) {
                free(buf);
                fclose(f);
                return moe_err(MOE_EFORMAT, "%s: larger than %zu bytes", path, max_bytes);
            }
            char *nb = realloc(buf, cap * 2);
            if (!nb) { free(buf); buf = NULL; break; }
            buf = nb;
            cap *= 2;
        }
        size_t r = fread(buf + n, 1, cap - 1 - n, f);
        n += r;
        if (r == 0) break;
    }
    int err = ferror(f);
    fclose(f);
    if (!buf) return moe_err(MOE_ENOMEM, "%s: out of memory reading file", path);
    if (err) { free(buf); return moe_err(MOE_EIO, "%s: read error", path); }
    buf[n] = 0;
    *out = buf;
    if (len) *len = n;
    return MOE_OK;
}

int file_exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

moe_status path_join(char *buf, size_t cap, const char *dir, const char *name) {
    int n = snprintf(buf, cap, "%s/%s", dir, name);
    if (n < 0 || (size_t)n >= cap) return moe_err(MOE_EINVAL, "path too long: %s/%s", dir, name);
    return MOE_OK;
}
