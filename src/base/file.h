/* file.h — read-only file mappings and small whole-file reads.
 * Weights are never copied: a tensor is a pointer into a mapping that lives as
 * long as the model. */
#ifndef MOE_BASE_FILE_H
#define MOE_BASE_FILE_H

#include <stddef.h>
#include "moe.h"

typedef struct file_map {
    const unsigned char *data; /* [size] bytes, read-only; NULL for an empty file */
    size_t size;
} file_map;

/* Maps `path` read-only. Errors name the path. */
moe_status file_map_open(const char *path, file_map *out);
void file_map_close(file_map *m);
/* Drops the pages of p[n] from mapping m (read-only file pages: refetched
 * from the file on the next touch), then, with fd >= 0 (the same file
 * opened again), from the page cache. Returns 0, doing nothing, when p[n]
 * is not inside the mapping: the same call on memory of one's own would zero
 * it. */
int file_map_drop(const file_map *m, int fd, const void *p, size_t n);
/* Reads a whole file into a NUL-terminated malloc'd buffer (caller frees),
 * refusing files larger than max_bytes. */
moe_status file_read_all(const char *path, size_t max_bytes, char **out, size_t *len);
int file_exists(const char *path);
/* snprintf into buf, or an MOE_EINVAL error naming the too-long path. */
moe_status path_join(char *buf, size_t cap, const char *dir, const char *name);

#endif
