/* mlx_quant.h — MLX's affine quantization (mx.quantize, mode "affine"),
 * bit for bit, and its packing.
 *
 * A row of `cols` values is cut into groups of `group` consecutive values
 * (32, 64 or 128); each group gets a scale s and a bias b, and each value an
 * unsigned q of `bits` bits (2, 3, 4, 5, 6 or 8) with w ~ s * q + b. All the
 * arithmetic is float32, in MLX's order (see mlxq_group_params), so the bytes
 * are those MLX writes. The q of a row form one little-endian bitstream: value
 * k at bits k*bits .. k*bits+bits-1, least significant first. That is MLX's
 * uint32 packing for 2/4/8 bits and its byte packing for 3/5/6 bits alike;
 * the stored tensor is U32 [..., cols*bits/32]. Scales and biases are stored
 * in the weight's own dtype (rounded to nearest even).
 *
 * The engine's reader of this layout is wfmt WF_Q2..WF_Q8 (backend.h) and
 * quant_at / wtensor_at (backend/cpu/kernels.h), which also dequantize.
 * Byte order: little-endian hosts only (as the rest of the loader).
 */
#ifndef MOE_FORMAT_MLX_QUANT_H
#define MOE_FORMAT_MLX_QUANT_H

#include <stddef.h>
#include <stdint.h>

#include "safetensors.h"

#define MLXQ_MAX_GROUP 128

/* 1 when MLX supports this pair: bits 2, 3, 4, 5, 6, 8 and group 32, 64, 128. */
int mlxq_valid(int bits, int group);

/* The scalar reference: one group at a time, as MLX's loop reads. */

/* The float32 scale and bias of one group w[n] (n >= 1), as MLX computes them:
 *   n_bins = 2^bits - 1; mask = |min| > |max|
 *   s = max((max - min) / n_bins, 1e-7), negated unless mask
 *   edge = mask ? min : max; q0 = rint(edge / s)
 *   q0 != 0: s = edge / q0, b = edge;   else b = 0 */
void mlxq_group_params(const float *w, int n, int bits, float *scale, float *bias);

/* q[k] = clamp(rint((w[k] - bias) / scale), 0, 2^bits - 1) for k < n (rint:
 * half to even). A NaN value gives 0. */
void mlxq_group_values(const float *w, int n, int bits, float scale, float bias, uint8_t *q);

/* Packs q[n] (each < 2^bits) into the bitstream dst[n*bits/8] (n*bits a
 * multiple of 8); dst's bytes are all written. */
void mlxq_pack(const uint8_t *q, int64_t n, int bits, unsigned char *dst);
/* mlxq_quantize_row (below) built from the three functions above. */
void mlxq_quantize_row_ref(const void *w, st_dtype in, int64_t cols, int bits, int group, void *packed, void *scales,
                           void *biases, st_dtype sdt);

/* The fast path. Quantizes one row w[cols] of dtype `in` (ST_F32, ST_F16 or ST_BF16; read
 * with memcpy, no alignment needed) with cols % group == 0:
 *   packed[cols*bits/8]            the bitstream (NULL: not wanted)
 *   scales[cols/group], biases[cols/group] in dtype `sdt` (ST_F32, ST_F16 or
 *   ST_BF16; NULL: not wanted).
 * Rows are independent: callers may quantize different rows on different
 * threads. The same bytes as mlxq_quantize_row_ref for every row without a
 * NaN (with one, MLX's own result is unspecified). */
void mlxq_quantize_row(const void *w, st_dtype in, int64_t cols, int bits, int group, void *packed, void *scales,
                       void *biases, st_dtype sdt);

/* Stores x at element k of a float row of dtype d (rounded to nearest even). */
void mlxq_store(void *row, st_dtype d, int64_t k, float x);

#endif
