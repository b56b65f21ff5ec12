// fraqtl: D2 KV-cache block types for ggml.
//
// A D2 block holds 64 coefficients of one KV head already rotated into its per-(layer, head)
// eigenbasis, with the basis columns permuted so that each block starts with its share of the
// protected (highest-variance) directions:
//
//   [ fp16 scale d | P protected coefficients, fp16 | 64-P tail codes, 3 bits each, packed ]
//
// Tail codes q in [-4, 3] are stored as q+4, eight codes in three bytes (little-endian,
// code j at bits 3j..3j+2); a tail value is q*d. Block sizes: P8 = 39 B, P16 = 52 B, P32 = 78 B.
//
// The 2-bit-tail types d2_p8b2/p16b2/p32b2 (D2-lite) share the layout with 2-bit codes:
//
//   [ fp16 scale d | P protected coefficients, fp16 | 64-P tail codes, 2 bits each, packed ]
//
// Tail codes c in [0, 3], four to a byte (code j of a byte at bits 2j..2j+1, tail coefficient
// i in byte i/4); a tail value is (2c - 3)*d, i.e. the symmetric levels -3d, -d, d, 3d.
// Block sizes: P8 = 32 B, P16 = 46 B, P32 = 74 B. ggml_is_d2() and ggml_d2_protected() keep
// meaning the 3-bit types only (the CUDA kernels read those); ggml_is_d2b2() names these.
//
// The int8-protected types d2_p8i8/p16i8/p32i8 (D2-lite) keep d2_p*'s 3-bit tail and store
// the protected coefficients as int8 codes with a second fp16 scale:
//
//   [ fp16 tail scale d | fp16 protected scale dp | P int8 codes | 64-P tail codes, 3 bits ]
//
// A protected value is q*dp with q in [-127, 127] (dp = max |protected| / 127); the tail is
// exactly d2_p*'s (codes q+4, eight in three bytes, value q*d). Block sizes: P8 = 33 B,
// P16 = 38 B, P32 = 48 B. ggml_is_d2i8() names these.
#pragma once

#include "ggml.h"

#include <stdbool.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define QK_D2 64

#define GGML_D2_P8_SIZE  (2 +  8*2 + (QK_D2 -  8)*3/8)
#define GGML_D2_P16_SIZE (2 + 16*2 + (QK_D2 - 16)*3/8)
#define GGML_D2_P32_SIZE (2 + 32*2 + (QK_D2 - 32)*3/8)

#define GGML_D2_P8B2_SIZE  (2 +  8*2 + (QK_D2 -  8)/4)
#define GGML_D2_P16B2_SIZE (2 + 16*2 + (QK_D2 - 16)/4)
#define GGML_D2_P32B2_SIZE (2 + 32*2 + (QK_D2 - 32)/4)

#define GGML_D2_P8I8_SIZE  (4 +  8 + (QK_D2 -  8)*3/8)
#define GGML_D2_P16I8_SIZE (4 + 16 + (QK_D2 - 16)*3/8)
#define GGML_D2_P32I8_SIZE (4 + 32 + (QK_D2 - 32)*3/8)

// protected coefficients per block of a D2 type, 0 for any other type
GGML_API int  ggml_d2_protected(enum ggml_type type);
GGML_API bool ggml_is_d2(enum ggml_type type);

// the same for the 2-bit-tail types (d2_p8b2/p16b2/p32b2)
GGML_API int  ggml_d2b2_protected(enum ggml_type type);
GGML_API bool ggml_is_d2b2(enum ggml_type type);

// the same for the int8-protected types (d2_p8i8/p16i8/p32i8)
GGML_API int  ggml_d2i8_protected(enum ggml_type type);
GGML_API bool ggml_is_d2i8(enum ggml_type type);

GGML_API void quantize_row_d2_p8_ref (const float * GGML_RESTRICT x, void * GGML_RESTRICT y, int64_t k);
GGML_API void quantize_row_d2_p16_ref(const float * GGML_RESTRICT x, void * GGML_RESTRICT y, int64_t k);
GGML_API void quantize_row_d2_p32_ref(const float * GGML_RESTRICT x, void * GGML_RESTRICT y, int64_t k);

GGML_API void dequantize_row_d2_p8 (const void * GGML_RESTRICT x, float * GGML_RESTRICT y, int64_t k);
GGML_API void dequantize_row_d2_p16(const void * GGML_RESTRICT x, float * GGML_RESTRICT y, int64_t k);
GGML_API void dequantize_row_d2_p32(const void * GGML_RESTRICT x, float * GGML_RESTRICT y, int64_t k);

// dot product of a D2 row with an f32 row (the CPU vec_dot; vec_dot_type is F32)
GGML_API void ggml_vec_dot_d2_p8_f32 (int n, float * GGML_RESTRICT s, size_t bs, const void * GGML_RESTRICT vx, size_t bx, const void * GGML_RESTRICT vy, size_t by, int nrc);
GGML_API void ggml_vec_dot_d2_p16_f32(int n, float * GGML_RESTRICT s, size_t bs, const void * GGML_RESTRICT vx, size_t bx, const void * GGML_RESTRICT vy, size_t by, int nrc);
GGML_API void ggml_vec_dot_d2_p32_f32(int n, float * GGML_RESTRICT s, size_t bs, const void * GGML_RESTRICT vx, size_t bx, const void * GGML_RESTRICT vy, size_t by, int nrc);

GGML_API void quantize_row_d2_p8b2_ref (const float * GGML_RESTRICT x, void * GGML_RESTRICT y, int64_t k);
GGML_API void quantize_row_d2_p16b2_ref(const float * GGML_RESTRICT x, void * GGML_RESTRICT y, int64_t k);
GGML_API void quantize_row_d2_p32b2_ref(const float * GGML_RESTRICT x, void * GGML_RESTRICT y, int64_t k);

GGML_API void dequantize_row_d2_p8b2 (const void * GGML_RESTRICT x, float * GGML_RESTRICT y, int64_t k);
GGML_API void dequantize_row_d2_p16b2(const void * GGML_RESTRICT x, float * GGML_RESTRICT y, int64_t k);
GGML_API void dequantize_row_d2_p32b2(const void * GGML_RESTRICT x, float * GGML_RESTRICT y, int64_t k);

GGML_API void ggml_vec_dot_d2_p8b2_f32 (int n, float * GGML_RESTRICT s, size_t bs, const void * GGML_RESTRICT vx, size_t bx, const void * GGML_RESTRICT vy, size_t by, int nrc);
GGML_API void ggml_vec_dot_d2_p16b2_f32(int n, float * GGML_RESTRICT s, size_t bs, const void * GGML_RESTRICT vx, size_t bx, const void * GGML_RESTRICT vy, size_t by, int nrc);
GGML_API void ggml_vec_dot_d2_p32b2_f32(int n, float * GGML_RESTRICT s, size_t bs, const void * GGML_RESTRICT vx, size_t bx, const void * GGML_RESTRICT vy, size_t by, int nrc);

GGML_API void quantize_row_d2_p8i8_ref (const float * GGML_RESTRICT x, void * GGML_RESTRICT y, int64_t k);
GGML_API void quantize_row_d2_p16i8_ref(const float * GGML_RESTRICT x, void * GGML_RESTRICT y, int64_t k);
GGML_API void quantize_row_d2_p32i8_ref(const float * GGML_RESTRICT x, void * GGML_RESTRICT y, int64_t k);

GGML_API void dequantize_row_d2_p8i8 (const void * GGML_RESTRICT x, float * GGML_RESTRICT y, int64_t k);
GGML_API void dequantize_row_d2_p16i8(const void * GGML_RESTRICT x, float * GGML_RESTRICT y, int64_t k);
GGML_API void dequantize_row_d2_p32i8(const void * GGML_RESTRICT x, float * GGML_RESTRICT y, int64_t k);

GGML_API void ggml_vec_dot_d2_p8i8_f32 (int n, float * GGML_RESTRICT s, size_t bs, const void * GGML_RESTRICT vx, size_t bx, const void * GGML_RESTRICT vy, size_t by, int nrc);
GGML_API void ggml_vec_dot_d2_p16i8_f32(int n, float * GGML_RESTRICT s, size_t bs, const void * GGML_RESTRICT vx, size_t bx, const void * GGML_RESTRICT vy, size_t by, int nrc);
GGML_API void ggml_vec_dot_d2_p32i8_f32(int n, float * GGML_RESTRICT s, size_t bs, const void * GGML_RESTRICT vx, size_t bx, const void * GGML_RESTRICT vy, size_t by, int nrc);

// row validation for state loading (every family): finite scales and fp16 protected values
GGML_API bool ggml_d2_validate_row(enum ggml_type type, const void * data, size_t nbytes);

#ifdef __cplusplus
}
#endif
