/* test_safetensors.c — the parser accepts a good image and refuses each kind
 * of corruption with a message saying what is wrong; the writer's output
 * parses back to the same tensors. */
#include <stdlib.h>
#include <unistd.h>

#include "../src/format/safetensors.h"
#include "test.h"

/* image = u64 len + header + data */
static unsigned char *image(const char *hdr, size_t data_len, size_t *len) {
    size_t h = strlen(hdr);
    *len = 8 + h + data_len;
    unsigned char *b = calloc(1, *len);
    for (int i = 0; i < 8; i++) b[i] = (unsigned char)((uint64_t)h >> (8 * i));
    memcpy(b + 8, hdr, h);
    return b;
}

static void expect(const char *what, const char *hdr, size_t data_len, moe_status want, const char *msg) {
    size_t len;
    unsigned char *b = image(hdr, data_len, &len);
    st_file f = {.path = "x.safetensors"};
    moe_status st = st_parse(&f, b, len);
    CHECK(st == want, "%s: status %s, want %s (%s)", what, moe_status_name(st), moe_status_name(want), moe_errmsg());
    if (want != MOE_OK) CHECK(strstr(moe_errmsg(), msg) != NULL, "%s: message \"%s\" lacks \"%s\"", what, moe_errmsg(), msg);
    if (st == MOE_OK) st_file_clear(&f);
    free(b);
}

static void fill_seq(void *ctx, const st_out_tensor *t, size_t off, void *buf, size_t n) {
    (void)ctx; (void)t;
    for (size_t i = 0; i < n; i++) ((unsigned char *)buf)[i] = (unsigned char)(off + i);
}

int main(void) {
    const char *good = "{\"__metadata__\":{\"format\":\"pt\"},"
                       "\"b\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[8,32]},"
                       "\"a\":{\"dtype\":\"BF16\",\"shape\":[4],\"data_offsets\":[0,8]}}";
    size_t len;
    unsigned char *b = image(good, 32, &len);
    st_file f = {.path = "good.safetensors"};
    CHECK(st_parse(&f, b, len) == MOE_OK, "good image parses: %s", moe_errmsg());
    CHECK(f.n == 2, "two tensors (metadata skipped), got %zu", f.n);
    const st_tensor *t = st_file_find(&f, "b");
    CHECK(t && t->dtype == ST_F32 && t->ndim == 2 && t->shape[0] == 2 && t->shape[1] == 3 && t->nbytes == 24, "tensor b");
    CHECK(t && (const unsigned char *)t->data == b + 8 + strlen(good) + 8, "b's data is a pointer into the image");
    CHECK(st_file_find(&f, "a") && !st_file_find(&f, "c"), "lookup");
    st_file_clear(&f);
    free(b);

    expect("empty", "", 0, MOE_EFORMAT, "not valid JSON");
    expect("not an object", "[1,2]", 0, MOE_EFORMAT, "not a JSON object");
    expect("bad json", "{\"a\":", 0, MOE_EFORMAT, "not valid JSON");
    expect("unknown dtype", "{\"a\":{\"dtype\":\"Q9\",\"shape\":[1],\"data_offsets\":[0,1]}}", 1, MOE_EFORMAT, "unknown dtype Q9");
    expect("no shape", "{\"a\":{\"dtype\":\"F32\",\"data_offsets\":[0,4]}}", 4, MOE_EFORMAT, "missing shape");
    expect("negative dim", "{\"a\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}", 4, MOE_EFORMAT, "non-negative");
    expect("offsets past end", "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 4, MOE_EFORMAT, "outside");
    expect("size mismatch", "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,4]}}", 8, MOE_EFORMAT, "bytes of data");
    expect("reversed offsets", "{\"a\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[4,0]}}", 8, MOE_EFORMAT, "outside");
    expect("overflowing shape",
           "{\"a\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296,4294967296],\"data_offsets\":[0,4]}}", 4,
           MOE_EFORMAT, "overflows");
    expect("overlap",
           "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
           "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}", 12, MOE_EFORMAT, "overlap");
    expect("duplicate key",
           "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
           "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 8, MOE_EFORMAT, "not valid JSON");
    expect("offsets not numbers", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[\"0\",4]}}", 4, MOE_EFORMAT,
           "data_offsets");

    /* an empty tensor at a non-empty one's offset is fine, whatever the key order */
    expect("empty first", "{\"z\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[0,0]},"
           "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4, MOE_OK, "");
    expect("empty last", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
           "\"z\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[0,0]}}", 4, MOE_OK, "");

    /* header length beyond the file, and a file too short for a length */
    b = image(good, 32, &len);
    st_file g = {.path = "trunc.safetensors"};
    CHECK(st_parse(&g, b, 20) == MOE_EFORMAT && strstr(moe_errmsg(), "truncated"), "truncated header: %s", moe_errmsg());
    CHECK(st_parse(&g, b, 5) == MOE_EFORMAT && strstr(moe_errmsg(), "truncated"), "5-byte file: %s", moe_errmsg());
    CHECK(st_parse(&g, b, len - 1) == MOE_EFORMAT && strstr(moe_errmsg(), "outside"), "data cut short: %s", moe_errmsg());
    b[7] = 0x40; /* absurd header length */
    CHECK(st_parse(&g, b, len) == MOE_EFORMAT && strstr(moe_errmsg(), "too large"), "huge header: %s", moe_errmsg());
    free(b);

    /* writer -> file -> reader */
    char path[] = "/tmp/moe_st_XXXXXX";
    int fd = mkstemp(path);
    close(fd);
    st_out_tensor out[2] = {{"w", ST_BF16, 2, {3, 5}, fill_seq, NULL}, {"v", ST_F32, 1, {7}, fill_seq, NULL}};
    CHECK(st_write(path, out, 2, NULL, NULL) == MOE_OK, "write: %s", moe_errmsg());
    st_file *rf;
    CHECK(st_file_open(path, &rf) == MOE_OK, "reopen: %s", moe_errmsg());
    if (rf) {
        const st_tensor *w = st_file_find(rf, "w"), *v = st_file_find(rf, "v");
        CHECK(w && w->dtype == ST_BF16 && w->shape[0] == 3 && w->shape[1] == 5 && w->nbytes == 30, "w round trip");
        CHECK(v && v->dtype == ST_F32 && v->nbytes == 28 && ((const unsigned char *)v->data)[5] == 5, "v round trip");
        CHECK(w && ((uintptr_t)w->data - (uintptr_t)rf->map.data) % 8 == 0, "data block is 8-byte aligned");
        st_file_close(rf);
    }
    unlink(path);
    CHECK(st_file_open("/nonexistent/x.safetensors", &rf) == MOE_EIO && strstr(moe_errmsg(), "/nonexistent/x.safetensors"),
          "missing file names the path: %s", moe_errmsg());
    st_file_close(NULL);
    TEST_DONE();
}
