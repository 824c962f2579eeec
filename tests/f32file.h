/* f32file.h — reads a raw little-endian float32 file (logits) into a malloc'd
 * array; NULL when it cannot be read. Shared by f32cmp and test_golden. */
#ifndef MOE_TEST_F32FILE_H
#define MOE_TEST_F32FILE_H

#include <stdio.h>
#include <stdlib.h>

static float *read_f32(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    float *v = len >= 0 ? malloc((size_t)len + 4) : NULL;
    *n = v ? fread(v, 4, (size_t)len / 4, f) : 0;
    fclose(f);
    return v;
}

#endif
