// fraqtl: CUDA kernels for the D2 KV-cache block types (see ggml-fraqtl.h).
//
// - Block types: d2_p8/p16/p32 and the int8-protected d2_p8i8/p16i8/p32i8 (D2-lite); the 2-bit-tail
//   d2_p*b2 types have no kernels here, so a context with them cannot be created on the GPU.
// - set_rows into a D2 cache: the reference quantizer (scale search included), one thread per
//   64-block, so the codes match the CPU's except where fp16 rounding differs.
// - flash attention over a D2 cache: src[5]/src[6] of the FLASH_ATTN_EXT node are the f16
//   exact copies of the sink and window tokens and src[7] the I32 row map: its first n_kv entries
//   say which cells an exact copy replaces (rows[i] - n_kv, when rows[i] >= n_kv), the next ones
//   the cell each copy stands for (-1: none), so exact rows cost O(window).
//   One query token: a split-KV kernel whose blocks copy tiles of whole positions (all KV heads)
//   into shared memory; each warp decodes one head's 16-row slice to f16 and scores it and
//   multiplies P·V with tensor cores (Q in f16, f32 accumulation). The exact rows are masked
//   there and attended by a second launch of the same kernel over the copies (an f16 cache), and
//   both launches' partial results are merged by log-sum-exp. More tokens: each KV head is
//   dequantized to f16 in turn and upstream's f16 kernels run on it, so the scratch is one head's
//   worth of the context, not the whole cache.
#pragma once

#include "common.cuh"
#include "ggml-fraqtl.h"

// a SET_ROWS into any D2 type; the 2-bit-tail types are not supported (CPU only)
bool ggml_fraqtl_cuda_set_rows_applies(const ggml_tensor * dst);
bool ggml_fraqtl_cuda_set_rows_supported(const ggml_tensor * op);
void ggml_fraqtl_cuda_set_rows(ggml_backend_cuda_context & ctx, ggml_tensor * dst);

// D2's rotations by a fraqtl_rot_* matrix, f32: a prompt's (MUL_MAT, > 1 token) and the inverse
// at any number of tokens (OUT_PROD): our own kernel, so that D2 never loads cuBLAS
bool ggml_fraqtl_cuda_mul_mat_applies(const ggml_tensor * src0, const ggml_tensor * src1, const ggml_tensor * dst);
void ggml_fraqtl_cuda_mul_mat(ggml_backend_cuda_context & ctx, const ggml_tensor * src0, const ggml_tensor * src1, ggml_tensor * dst);
bool ggml_fraqtl_cuda_out_prod_applies(const ggml_tensor * dst);
void ggml_fraqtl_cuda_out_prod(ggml_backend_cuda_context & ctx, ggml_tensor * dst);

// a FLASH_ATTN_EXT node whose K or V is a D2 type (supported: see the block types above)
bool   ggml_fraqtl_cuda_fattn_applies(const ggml_tensor * dst);
bool   ggml_fraqtl_cuda_fattn_supported(int device, const ggml_tensor * dst);
size_t ggml_fraqtl_cuda_fattn_alloc_size(int device, const ggml_tensor * dst);
void   ggml_fraqtl_cuda_flash_attn_ext(ggml_backend_cuda_context & ctx, ggml_tensor * dst);
