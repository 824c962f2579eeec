/* fuzz_safetensors.c — libFuzzer harness for st_parse, the reader of
 * untrusted .safetensors images. On success every tensor must be findable by
 * name and its whole data range must lie inside the input (ASan checks the
 * reads: libFuzzer's input buffer is exactly `size` bytes). */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../src/format/safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    st_file f = {.path = "fuzz"};
    if (st_parse(&f, data, size) != MOE_OK) {
        if (f.tensors || f.n) abort(); /* a failed parse leaves nothing behind */
        return 0;
    }
    volatile unsigned sum = 0;
    for (size_t i = 0; i < f.n; i++) {
        const st_tensor *t = &f.tensors[i];
        if (!t->name || st_file_find(&f, t->name) != t) abort(); /* sorted, unique names */
        if ((unsigned)t->dtype >= ST_N_DTYPES || t->ndim < 0 || t->ndim > ST_MAX_DIMS) abort();
        uint64_t n = st_dtype_size(t->dtype);
        for (int d = 0; d < t->ndim; d++) n *= (uint64_t)t->shape[d];
        if (n != t->nbytes) abort();
        const unsigned char *p = t->data;
        if (t->nbytes && (p < data || p + t->nbytes > data + size)) abort();
        for (size_t b = 0; b < t->nbytes; b++) sum += p[b];
    }
    (void)sum;
    st_file_clear(&f);
    return 0;
}
