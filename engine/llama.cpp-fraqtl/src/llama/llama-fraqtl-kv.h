// fraqtl: D2 KV cache - internal interface used by the patched llama.cpp sources.
//
// The cache tensors keep llama.cpp's layout; only their type changes to a ggml D2 block type
// (see ggml-fraqtl.h). This state adds, per layer: the rotation matrices (K after RoPE and V
// into their eigenbases, columns permuted so every 64-block starts with its protected share,
// and V back out of it) and an f16 copy of the sink and recent-window tokens, which attention
// reads instead of their compressed rows.
#pragma once

#include "llama-fraqtl.h"

#include "ggml.h"
#include "ggml-backend.h"
#include "ggml-cpp.h"

#include <string>
#include <utility>
#include <vector>

struct llama_model;
struct llama_ubatch;
class llama_memory_i;
class llama_kv_cache;
class llama_kv_cache_context;

struct llama_fraqtl_kv {
    int32_t   n_head_kv = 0;
    int32_t   hd_k      = 0;
    int32_t   hd_v      = 0;
    int32_t   k_protect = 0;
    int32_t   v_protect = 0;
    int32_t   n_sink    = 0;
    int32_t   n_window  = 0;
    int32_t   n_exact   = 0; // n_sink + n_window; slot n_exact is the scratch slot
    ggml_type type_k    = GGML_TYPE_F16; // the widest K type (every layer's unless K is per layer)
    ggml_type type_v    = GGML_TYPE_F16;

    // indexed by model layer: K protected directions and cache type (kauto: per layer; 0 and
    // GGML_TYPE_COUNT where the layer has no KV cache)
    std::vector<int32_t>   k_protect_il;
    std::vector<ggml_type> type_k_il;

    // indexed by model layer; nullptr where the layer has no KV cache
    std::vector<ggml_tensor *> rot_k;   // [hd_k, hd_k, n_head_kv] f32: q or k -> coefficients
    std::vector<ggml_tensor *> rot_v;   // [hd_v, hd_v, n_head_kv] f32
    std::vector<ggml_tensor *> exact_k; // [hd_k*n_head_kv, n_exact + 1] f16, rotated; last row: scratch
    std::vector<ggml_tensor *> exact_v; // [hd_v*n_head_kv, n_exact + 1] f16, rotated

    std::vector<llama_pos> slot_pos;    // position held by each exact slot, -1 if none

    size_t basis_bytes = 0;
    size_t exact_bytes = 0;

    std::vector<std::pair<ggml_context_ptr, ggml_backend_buffer_ptr>> ctxs_bufs;

    // exact slot of position p, or -1 when exact copies are off
    int32_t slot_of(llama_pos p) const;

    // forget every exact copy (cache cleared or state loaded)
    void reset();
};

// ---------------------------------------------------------------------------------------
// context creation (llama-context.cpp)

// checks the model and the parameters, sets the cache types and enables flash attention;
// false (with llama_fraqtl_last_error set) if D2 cannot run on this model
bool llama_fraqtl_prepare_params(const llama_model & model, llama_context_params & params);

// the K protected directions of every model layer (0 without a KV cache): fp.k_protect, or for
// LLAMA_FRAQTL_PROTECT_AUTO the smallest count a block type has that covers the K sidecar's
// ranks of the layer's heads; throws std::runtime_error naming the file or the problem
std::vector<int32_t> llama_fraqtl_k_protect_layers(const llama_model & model, const llama_fraqtl_params & fp);

// While one lives on a thread, the llama_kv_cache constructed on that thread gives layer il's K
// tensor llama_fraqtl_layer_type_k(il, type_k): the D2 type of that layer when K protection is
// per layer (kauto), else type_k. A no-op for a null fparams or a uniform K type.
struct llama_fraqtl_layer_types {
    llama_fraqtl_layer_types(const llama_model & model, const llama_fraqtl_params * fparams);
    ~llama_fraqtl_layer_types();
    llama_fraqtl_layer_types(const llama_fraqtl_layer_types &) = delete;
    llama_fraqtl_layer_types & operator=(const llama_fraqtl_layer_types &) = delete;
};

ggml_type llama_fraqtl_layer_type_k(int32_t il, ggml_type type_k);

// loads the bases and allocates the D2 state of the memory module; throws on error
void llama_fraqtl_attach(const llama_model & model, const llama_fraqtl_params & fparams, llama_memory_i * mem);

void llama_fraqtl_set_error(const std::string & msg);

// ---------------------------------------------------------------------------------------
// graph building (llama-graph.cpp)

const llama_fraqtl_kv * llama_fraqtl_of(const llama_kv_cache_context * mctx);

ggml_tensor * llama_fraqtl_build_input_slots(ggml_context * ctx, const llama_fraqtl_kv * d2, const llama_ubatch & ubatch);
// I32 [n_kv]: for each attended row, the compressed row or n_kv + its exact slot
ggml_tensor * llama_fraqtl_build_input_rows(ggml_context * ctx, const llama_kv_cache_context * mctx);

void llama_fraqtl_set_inputs(const llama_kv_cache_context * mctx, const llama_ubatch * ubatch,
        ggml_tensor * slots, ggml_tensor * rows);

// rotates q, k (post-RoPE) and v into the D2 bases of layer il
void llama_fraqtl_rotate_qkv(ggml_context * ctx, const llama_fraqtl_kv * d2, int32_t il,
        ggml_tensor ** q, ggml_tensor ** k, ggml_tensor ** v);

// stores the exact copies of k_cur/v_cur; the flash-attention node made over the cache view
// k_view next receives the copies and the row map (llama_fraqtl_bind_exact) and reads the sink
// and window rows from them (CPU and CUDA kernels alike), so exact rows cost O(window)
void llama_fraqtl_build_kv(ggml_context * ctx, const llama_fraqtl_kv * d2, int32_t il,
        ggml_tensor * k_cur, ggml_tensor * v_cur, ggml_tensor * slots, ggml_tensor * rows,
        const ggml_tensor * k_view);

// called right after a flash-attention node is made (before it joins the graph): if its K is
// the D2 cache view llama_fraqtl_build_kv just handed out, attaches the exact K/V copies and
// the row map as src[5..7]
void llama_fraqtl_bind_exact(ggml_tensor * fa);

// rotates the attention output [hd_v*n_head, n_tokens] back out of the V basis
ggml_tensor * llama_fraqtl_unrotate_out(ggml_context * ctx, const llama_fraqtl_kv * d2, int32_t il, ggml_tensor * cur);
