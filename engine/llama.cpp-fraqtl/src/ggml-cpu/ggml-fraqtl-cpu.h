// fraqtl: D2 on the CPU backend, called from ggml-cpu/ops.cpp (patch 0006).
//
// FLASH_ATTN_EXT over a D2 cache: src[5]/src[6] of the node are the f16 exact copies of the sink
// and window tokens and src[7] the I32 row map (row ic of K/V is read from copy rows[ic] - n_kv
// when rows[ic] >= n_kv). The per-head loop in ops.cpp reads those rows in place; this file holds
// the one-token decode that decodes each row of a KV head once for all the query heads sharing it.
#pragma once

#include "ggml.h"

struct ggml_compute_params;

// A one-token FLASH_ATTN_EXT node over a compressed (non-f16) D2 cache that the shared decode
// below can do: an F32 query, as many K as V heads, whole GQA groups, K and V with a to_float.
// FRAQTL_D2_PER_HEAD=1 (read once per process) keeps ops.cpp's per-head loop (the tests compare
// the two).
bool ggml_fraqtl_cpu_d2_decode_applies(const ggml_tensor * dst);

// The rows [ic_start, ic_end) of the cache for every query head, as partials for
// ggml_flash_attn_ext_reduce_partials (ops.cpp's split-KV layout: head h's [M, S, VKQ] at
// partials + h*partial_stride).
void ggml_fraqtl_cpu_flash_attn_ext_d2_decode(
        const ggml_compute_params * params,
        ggml_tensor * dst,
        int64_t ic_start, int64_t ic_end,
        float * partials, int64_t partial_stride);
