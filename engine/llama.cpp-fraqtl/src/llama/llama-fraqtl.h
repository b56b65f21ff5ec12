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
// Calibration capture: uncentered second moments (float64) of post-RoPE K and of V per
// (layer, KV head). Pass llama_fraqtl_calib_callback() as cb_eval and the handle as
// cb_eval_user_data in llama_context_params, evaluate text, then read the moments.

struct llama_fraqtl_calib;

LLAMA_API struct llama_fraqtl_calib * llama_fraqtl_calib_init(
        int32_t n_layer, int32_t n_head_kv, int32_t head_dim_k, int32_t head_dim_v);
LLAMA_API void llama_fraqtl_calib_free(struct llama_fraqtl_calib * calib);
LLAMA_API ggml_backend_sched_eval_callback llama_fraqtl_calib_callback(void);

// rows folded into layer il's moments for kind 'k' or 'v' (-1 on a bad argument)
LLAMA_API int64_t llama_fraqtl_calib_tokens(const struct llama_fraqtl_calib * calib, int32_t il, char kind);

// writes n_head_kv * head_dim * head_dim doubles (symmetric, row-major per head)
LLAMA_API bool llama_fraqtl_calib_moments(const struct llama_fraqtl_calib * calib, int32_t il, char kind, double * out);

// adds moments saved by an interrupted run (same layout), counting n_tokens rows
LLAMA_API bool llama_fraqtl_calib_add_moments(struct llama_fraqtl_calib * calib, int32_t il, char kind, const double * in, int64_t n_tokens);

#ifdef __cplusplus
}
#endif
