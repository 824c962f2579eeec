/* safetensors.h — read (mmap) and write .safetensors files.
 *
 * Layout: u64 little-endian N, N bytes of JSON header {name: {dtype, shape,
 * data_offsets:[begin,end]}, "__metadata__": {...}}, then the data block;
 * offsets are relative to the data block. Every header field is validated
 * before use: dtype known, shape non-negative and its byte size not
 * overflowing, offsets inside the file and matching the shape, no two tensors
 * overlapping. Tensor data are pointers into the mapping, never copied.
 */
#ifndef MOE_FORMAT_SAFETENSORS_H
#define MOE_FORMAT_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "../base/file.h"

typedef enum st_dtype {
    ST_F32, ST_F16, ST_BF16, ST_F64, ST_I8, ST_U8, ST_I16, ST_U16, ST_I32, ST_U32,
    ST_I64, ST_U64, ST_BOOL, ST_F8_E4M3, ST_F8_E5M2, ST_N_DTYPES
} st_dtype;

#define ST_MAX_DIMS 8

typedef struct st_tensor {
    char *name;
    st_dtype dtype;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    const void *data;  /* into the file's mapping */
    size_t nbytes;
} st_tensor;

typedef struct st_file {
    char *path;
    file_map map;
    st_tensor *tensors; /* [n], sorted by name */
    size_t n;
} st_file;

const char *st_dtype_name(st_dtype d);
size_t st_dtype_size(st_dtype d);
/* -1 when `name` ("F32", "BF16", ...) is not a safetensors dtype. */
int st_dtype_parse(const char *name);

/* Opens and validates `path`. On failure *out is NULL and the message names
 * the file (and the tensor where one is at fault). */
moe_status st_file_open(const char *path, st_file **out);
void st_file_close(st_file *f);
/* Validates an in-memory image (the fuzzers' entry). `f->path` is used in
 * messages; on success f->tensors point into buf. */
moe_status st_parse(st_file *f, const unsigned char *buf, size_t len);
void st_file_clear(st_file *f);
/* Binary search; NULL when absent. */
const st_tensor *st_file_find(const st_file *f, const char *name);

/* ------------------------------------------------------------ writing -- */

typedef struct st_out_tensor {
    const char *name;
    st_dtype dtype;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    /* fills `n` bytes of the tensor starting at byte `off` into buf */
    void (*fill)(void *ctx, const struct st_out_tensor *t, size_t off, void *buf, size_t n);
    void *ctx;
} st_out_tensor;

/* Writes `n` tensors to `path` in order, streaming their data through each
 * fill callback in chunks; `progress` (may be NULL) is called with bytes done
 * and bytes total. */
moe_status st_write(const char *path, const st_out_tensor *t, size_t n,
                    void (*progress)(void *ctx, uint64_t done, uint64_t total), void *pctx);

#endif
