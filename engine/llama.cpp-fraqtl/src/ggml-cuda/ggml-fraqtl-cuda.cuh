// fraqtl: CUDA kernels for the D2 KV-cache block types (see ggml-fraqtl.h).
//
// - set_rows into a D2 cache: the reference quantizer (scale search included), one thread per
//   64-block, so the codes match the CPU's except where fp16 rounding differs.
// - flash attention over a D2 cache: src[5]/src[6] of the FLASH_ATTN_EXT node are the f16
//   exact copies of the sink and window tokens and src[7] the I32 row map (row i of K/V is
//   read from exact slot rows[i] - n_kv when rows[i] >= n_kv), so exact rows cost O(window).
//   One query token: a split-KV kernel whose blocks copy tiles of whole positions (all KV heads)
//   into shared memory; each warp decodes one head's 16-row slice to f16 and scores it and
//   multiplies P·V with tensor cores (Q in f16, f32 accumulation). More tokens: each KV head is dequantized to f16 in turn and upstream's f16 kernels
//   run on it, so the scratch is one head's worth of the context, not the whole cache.
#pragma once

#include "common.cuh"
#include "ggml-fraqtl.h"

bool ggml_fraqtl_cuda_set_rows_supported(const ggml_tensor * op);
void ggml_fraqtl_cuda_set_rows(ggml_backend_cuda_context & ctx, ggml_tensor * dst);

// a FLASH_ATTN_EXT node whose K or V is a D2 type
bool   ggml_fraqtl_cuda_fattn_applies(const ggml_tensor * dst);
bool   ggml_fraqtl_cuda_fattn_supported(int device, const ggml_tensor * dst);
size_t ggml_fraqtl_cuda_fattn_alloc_size(int device, const ggml_tensor * dst);
void   ggml_fraqtl_cuda_flash_attn_ext(ggml_backend_cuda_context & ctx, ggml_tensor * dst);
