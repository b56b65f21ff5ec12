// fraqtl: D2 compressed KV cache for llama.cpp - public C API.
// Our own header; the patch series only wires it into the build.
#pragma once

#include "llama.h"
#include "ggml-backend.h"

#ifdef __cplusplus
extern "C" {
#endif

// Version of the fraqtl patch series compiled into this libllama ("fraqtl <semver>").
LLAMA_API const char * llama_fraqtl_version(void);

// ---------------------------------------------------------------------------------------
// D2 KV cache. Point llama_context_params.fraqtl at these parameters to enable it; the
// struct is read during llama_init_from_model only. On failure llama_init_from_model
// returns NULL and llama_fraqtl_last_error() says why.

enum llama_fraqtl_basis {
    LLAMA_FRAQTL_BASIS_SIDECAR = 0, // bases from the sidecar files (identity where a path is NULL)
    LLAMA_FRAQTL_BASIS_RANDOM  = 1, // seeded random orthonormal bases (control experiments)
};

// k_protect: each layer's K cache takes the smallest block type whose protected directions cover
// the largest rank the K sidecar gives that layer's heads (the whole head in f16 above 32 per
// 64-block). One type per layer because llama.cpp allocates one K tensor per layer: the heads
// of a layer share its type, so a head's rank is rounded up to its layer's.
#define LLAMA_FRAQTL_PROTECT_AUTO (-1)

struct llama_fraqtl_params {
    const char * k_sidecar;  // K basis, format v1 "RAQK" (NULL: identity)
    const char * v_sidecar;  // V basis, format v1 "FRAQ" (NULL: identity)
    int32_t      k_protect;  // fp16 directions per K head: 8, 16 or 32 per 64-block, or head_dim (all fp16),
                             // or LLAMA_FRAQTL_PROTECT_AUTO: per layer, from the K sidecar's ranks
    int32_t      v_protect;  // same for V
    int32_t      k_tail_bits; // bits per K tail code: 3 (d2_p*) or 2 (d2_p*b2, D2-lite)
    int32_t      v_tail_bits; // same for V
    int32_t      n_sink;     // first tokens kept exact (8)
    int32_t      n_window;   // most recent tokens kept exact (1024)
    int32_t      basis;      // enum llama_fraqtl_basis
    uint32_t     seed;       // for LLAMA_FRAQTL_BASIS_RANDOM
    int32_t      protect_bits; // bits per protected coefficient, K and V: 16 (fp16) or 8 (int8, d2_p*i8; 3-bit tails only)
};

LLAMA_API struct llama_fraqtl_params llama_fraqtl_default_params(void);

// the last D2 error of this thread ("" if none)
LLAMA_API const char * llama_fraqtl_last_error(void);

struct llama_fraqtl_memory {
    uint64_t k_bytes;     // K cache tensors
    uint64_t v_bytes;     // V cache tensors
    uint64_t exact_bytes; // D2 sink + window copies
    uint64_t basis_bytes; // D2 rotation matrices
    int32_t  type_k;      // ggml_type of the K cache
    int32_t  type_v;
    int32_t  d2;          // 1 if the D2 cache is active
};

// bytes llama.cpp allocated for the context's KV cache, for any cache type
LLAMA_API bool llama_fraqtl_get_memory(const struct llama_context * ctx, struct llama_fraqtl_memory * out);

// ---------------------------------------------------------------------------------------
// Calibration capture: uncentered second moments (float64) of post-RoPE K and of V per
// (layer, KV head). Pass llama_fraqtl_calib_callback() as cb_eval and the handle as
// cb_eval_user_data in llama_context_params, evaluate text, then read the moments.

struct llama_fraqtl_calib;

LLAMA_API struct llama_fraqtl_calib * llama_fraqtl_calib_init(
        int32_t n_layer, int32_t n_head_kv, int32_t head_dim_k, int32_t head_dim_v);
LLAMA_API void llama_fraqtl_calib_free(struct llama_fraqtl_calib * calib);
LLAMA_API ggml_backend_sched_eval_callback llama_fraqtl_calib_callback(void);

// also capture post-RoPE queries (kind 'q'): moments per KV head, summed over the query heads
// that read it; n_head must be a multiple of n_head_kv
LLAMA_API bool llama_fraqtl_calib_enable_q(struct llama_fraqtl_calib * calib, int32_t n_head);

// rows folded into layer il's moments for kind 'k', 'v' or 'q' (-1 on a bad argument)
LLAMA_API int64_t llama_fraqtl_calib_tokens(const struct llama_fraqtl_calib * calib, int32_t il, char kind);

// writes n_head_kv * head_dim * head_dim doubles (symmetric, row-major per head)
LLAMA_API bool llama_fraqtl_calib_moments(const struct llama_fraqtl_calib * calib, int32_t il, char kind, double * out);

// adds moments saved by an interrupted run (same layout), counting n_tokens rows
LLAMA_API bool llama_fraqtl_calib_add_moments(struct llama_fraqtl_calib * calib, int32_t il, char kind, const double * in, int64_t n_tokens);

#ifdef __cplusplus
}
#endif
