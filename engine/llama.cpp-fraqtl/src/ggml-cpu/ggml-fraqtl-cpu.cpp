// fraqtl: D2 on the CPU backend (see ggml-fraqtl-cpu.h). Compiled into the ggml-cpu target next to
// ops.cpp, with its flags, so that the vec.h kernels here are ops.cpp's.
#include "ggml-fraqtl-cpu.h"

#include "ggml-cpu.h"
#include "ggml-impl.h"
#include "ggml.h"
#include "vec.h"

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <vector>

bool ggml_fraqtl_cpu_d2_decode_applies(const ggml_tensor * dst) {
    // read once: a function-local static is initialised once, whichever compute thread comes first
    static const bool fq_per_head = [] {
        const char * env = getenv("FRAQTL_D2_PER_HEAD");
        return env && env[0] == '1';
    }();
    const ggml_tensor * q = dst->src[0];
    const ggml_tensor * k = dst->src[1];
    const ggml_tensor * v = dst->src[2];
    return !fq_per_head && dst->src[7] && (q->ne[1] == 1 && q->ne[3] == 1) && q->type == GGML_TYPE_F32 &&
           k->type != GGML_TYPE_F16 && v->type != GGML_TYPE_F16 && k->ne[2] == v->ne[2] && q->ne[2] % k->ne[2] == 0 &&
           ggml_get_type_traits(k->type)->to_float && ggml_get_type_traits(v->type)->to_float;
}

// fraqtl D2, one query token: the rows [ic_start, ic_end) of the cache for every query head, as
// partials for ggml_flash_attn_ext_reduce_partials. Each row of a KV head is decoded once (a
// compressed row by its block type's to_float, an exact one from the f16 copy) and serves all
// the query heads that share it (GQA); the per-head loop decodes it once per query head.
void ggml_fraqtl_cpu_flash_attn_ext_d2_decode(
        const ggml_compute_params * params,
        ggml_tensor * dst,
        int64_t ic_start, int64_t ic_end,
        float * partials, int64_t partial_stride) {
    GGML_UNUSED(params);
    const ggml_tensor * q       = dst->src[0];
    const ggml_tensor * k       = dst->src[1];
    const ggml_tensor * v       = dst->src[2];
    const ggml_tensor * mask    = dst->src[3];
    const ggml_tensor * sinks   = dst->src[4];
    const ggml_tensor * exact_k = dst->src[5];
    const ggml_tensor * exact_v = dst->src[6];
    const int32_t     * rows    = (const int32_t *) dst->src[7]->data;

    const int64_t DK        = k->ne[0];
    const int64_t DV        = v->ne[0];
    const int64_t n_kv      = k->ne[1];
    const int64_t n_head    = q->ne[2];
    const int64_t n_head_kv = k->ne[2];
    const int64_t n_rep     = n_head/n_head_kv;

    float scale         = 1.0f;
    float max_bias      = 0.0f;
    float logit_softcap = 0.0f;
    memcpy(&scale,         (float *) dst->op_params + 0, sizeof(float));
    memcpy(&max_bias,      (float *) dst->op_params + 1, sizeof(float));
    memcpy(&logit_softcap, (float *) dst->op_params + 2, sizeof(float));
    if (logit_softcap != 0) {
        scale /= logit_softcap;
    }
    const uint32_t n_head_log2 = 1u << (uint32_t) floor(log2(n_head));
    const float m0 = powf(2.0f, -(max_bias       ) / n_head_log2);
    const float m1 = powf(2.0f, -(max_bias / 2.0f) / n_head_log2);

    ggml_to_float_t const k_to_float = ggml_get_type_traits(k->type)->to_float;
    ggml_to_float_t const v_to_float = ggml_get_type_traits(v->type)->to_float;

    // per query head of the group: accumulator, running max M, sum S, ALiBi slope, mask value, score
    std::vector<float> buf(DK + DV + n_rep*(DV + 5));
    float * K32   = buf.data();
    float * V32   = K32 + DK;
    float * acc   = V32 + DV;
    float * M     = acc + n_rep*DV;
    float * S     = M + n_rep;
    float * slope = S + n_rep;
    float * mv    = slope + n_rep;
    float * s     = mv + n_rep;
    std::vector<const float *>       qh(n_rep);
    std::vector<const ggml_fp16_t *> mp(n_rep);

    for (int64_t ik2 = 0; ik2 < n_head_kv; ++ik2) {
        for (int64_t j = 0; j < n_rep; ++j) {
            const int64_t h = ik2*n_rep + j;
            qh[j]    = (const float *) ((const char *) q->data + h*q->nb[2]);
            mp[j]    = mask ? (const ggml_fp16_t *) ((const char *) mask->data + (h % mask->ne[2])*mask->nb[2]) : nullptr;
            slope[j] = max_bias > 0.0f ? (h < n_head_log2 ? powf(m0, h + 1) : powf(m1, 2*(h - n_head_log2) + 1)) : 1.0f;
            M[j]     = -INFINITY;
            S[j]     = 0.0f;
        }
        memset(acc, 0, n_rep*DV*sizeof(float));

        for (int64_t ic = ic_start; ic < ic_end; ++ic) {
            bool any = false;
            for (int64_t j = 0; j < n_rep; ++j) {
                mv[j] = mp[j] ? slope[j]*GGML_CPU_FP16_TO_FP32(mp[j][ic]) : 0.0f;
                any   = any || mv[j] != -INFINITY;
            }
            if (!any) {
                continue;
            }
            const int64_t slot = rows[ic] >= n_kv ? rows[ic] - n_kv : -1;
            if (slot >= 0) {
                ggml_cpu_fp16_to_fp32((const ggml_fp16_t *) ((const char *) exact_k->data + slot*exact_k->nb[1]) + ik2*DK, K32, DK);
                ggml_cpu_fp16_to_fp32((const ggml_fp16_t *) ((const char *) exact_v->data + slot*exact_v->nb[1]) + ik2*DV, V32, DV);
            } else {
                k_to_float((const char *) k->data + ic*k->nb[1] + ik2*k->nb[2], K32, DK);
                v_to_float((const char *) v->data + ic*v->nb[1] + ik2*v->nb[2], V32, DV);
            }
            for (int64_t j = 0; j < n_rep; ++j) {
                if (mv[j] == -INFINITY) {
                    continue;
                }
                ggml_vec_dot_f32(DK, &s[j], 0, K32, 0, qh[j], 0, 1);
                s[j] *= scale;
                if (logit_softcap != 0.0f) {
                    s[j] = logit_softcap*tanhf(s[j]);
                }
                s[j] += mv[j];

                float ms = 1.0f;
                float vs = 1.0f;
                if (s[j] > M[j]) {
                    ms   = expf(M[j] - s[j]);
                    M[j] = s[j];
                    ggml_vec_scale_f32(DV, acc + j*DV, ms);
                } else {
                    vs = expf(s[j] - M[j]);
                }
                ggml_vec_mad_f32(DV, acc + j*DV, V32, vs);
                S[j] = S[j]*ms + vs;
            }
        }

        for (int64_t j = 0; j < n_rep; ++j) {
            const int64_t h = ik2*n_rep + j;
            if (sinks && ic_start == 0) { // the sink logit joins the first chunk's partials
                const float sink = ((const float *) sinks->data)[h];
                float ms = 1.0f;
                float vs = 1.0f;
                if (sink > M[j]) {
                    ms   = expf(M[j] - sink);
                    M[j] = sink;
                    ggml_vec_scale_f32(DV, acc + j*DV, ms);
                } else {
                    vs = expf(sink - M[j]);
                }
                S[j] = S[j]*ms + vs;
            }
            float * partial = partials + h*partial_stride;
            partial[0] = M[j];
            partial[1] = S[j];
            memcpy(partial + 2, acc + j*DV, DV*sizeof(float));
        }
    }
}
