// fraqtl: calibration capture - accumulates uncentered second moments of post-RoPE K and
// of V per (layer, KV head) from llama.cpp's graph evaluation callback, in float64.
// Never holds activations: each ubatch is folded into the moment matrices and dropped.
#include "llama-fraqtl.h"

#include "ggml.h"
#include "ggml-backend.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

struct llama_fraqtl_calib {
    int32_t n_layer;
    int32_t n_head_kv;
    int32_t hd_k;
    int32_t hd_v;
    std::vector<std::vector<double>> mk; // [layer] -> [head][hd_k][hd_k]
    std::vector<std::vector<double>> mv; // [layer] -> [head][hd_v][hd_v]
    std::vector<std::vector<double>> mq; // [layer] -> [KV head][hd_k][hd_k], summed over its query heads
    std::vector<int64_t> nk;             // rows folded per layer
    std::vector<int64_t> nv;
    std::vector<int64_t> nq;
    int32_t n_head = 0;                  // 0: queries are not captured
    std::vector<float> buf;
};

struct llama_fraqtl_calib * llama_fraqtl_calib_init(int32_t n_layer, int32_t n_head_kv, int32_t head_dim_k, int32_t head_dim_v) {
    if (n_layer <= 0 || n_head_kv <= 0 || head_dim_k <= 0 || head_dim_v <= 0) {
        return nullptr;
    }
    auto * c = new llama_fraqtl_calib;
    c->n_layer   = n_layer;
    c->n_head_kv = n_head_kv;
    c->hd_k      = head_dim_k;
    c->hd_v      = head_dim_v;
    c->mk.assign(n_layer, std::vector<double>((size_t) n_head_kv*head_dim_k*head_dim_k, 0.0));
    c->mv.assign(n_layer, std::vector<double>((size_t) n_head_kv*head_dim_v*head_dim_v, 0.0));
    c->nk.assign(n_layer, 0);
    c->nv.assign(n_layer, 0);
    return c;
}

void llama_fraqtl_calib_free(struct llama_fraqtl_calib * calib) {
    delete calib;
}

// fold rows x[t][h][d] (t = token) into m[h] += x x^T (upper triangle, mirrored on read)
static void fraqtl_calib_fold(std::vector<double> & m, const float * x, int64_t n_tokens, int32_t n_head, int32_t hd) {
    std::vector<double> row(hd);
    for (int64_t t = 0; t < n_tokens; ++t) {
        for (int32_t h = 0; h < n_head; ++h) {
            const float * xr = x + (t*n_head + h)*hd;
            for (int32_t i = 0; i < hd; ++i) {
                row[i] = xr[i];
            }
            double * mh = m.data() + (size_t) h*hd*hd;
            for (int32_t i = 0; i < hd; ++i) {
                const double xi = row[i];
                double * mi = mh + (size_t) i*hd;
                for (int32_t j = i; j < hd; ++j) {
                    mi[j] += xi*row[j];
                }
            }
        }
    }
}

static int fraqtl_calib_layer(const char * name, const char * prefix) {
    const size_t n = strlen(prefix);
    if (strncmp(name, prefix, n) != 0) {
        return -1;
    }
    char * end = nullptr;
    const long il = strtol(name + n, &end, 10);
    return (end && *end == '\0') ? (int) il : -1;
}

static bool fraqtl_calib_eval_q(llama_fraqtl_calib * c, struct ggml_tensor * t, int il, bool ask) {
    // post-RoPE queries, folded into the moments of the KV head each query head reads
    if (c->n_head <= 0 || t->op != GGML_OP_ROPE || t->ne[0] != c->hd_k || t->ne[1] != c->n_head || !ggml_is_contiguous(t)) {
        return ask ? false : true;
    }
    if (ask) {
        return true;
    }
    const int64_t n_tokens = t->ne[2]*t->ne[3];
    const int32_t hd  = c->hd_k;
    const int32_t gqa = c->n_head/c->n_head_kv;
    c->buf.resize((size_t) ggml_nelements(t));
    ggml_backend_tensor_get(t, c->buf.data(), 0, ggml_nbytes(t));
    std::vector<double> row(hd);
    for (int64_t tok = 0; tok < n_tokens; ++tok) {
        for (int32_t h = 0; h < c->n_head; ++h) {
            const float * xr = c->buf.data() + (tok*c->n_head + h)*hd;
            for (int32_t i = 0; i < hd; ++i) {
                row[i] = xr[i];
            }
            double * mh = c->mq[il].data() + (size_t) (h/gqa)*hd*hd;
            for (int32_t i = 0; i < hd; ++i) {
                for (int32_t j = i; j < hd; ++j) {
                    mh[(size_t) i*hd + j] += row[i]*row[j];
                }
            }
        }
    }
    c->nq[il] += n_tokens;
    return true;
}

static bool fraqtl_calib_eval(struct ggml_tensor * t, bool ask, void * user_data) {
    auto * c = (llama_fraqtl_calib *) user_data;
    const int iq = fraqtl_calib_layer(t->name, "Qcur-");
    if (iq >= 0 && iq < c->n_layer && t->type == GGML_TYPE_F32) {
        return fraqtl_calib_eval_q(c, t, iq, ask);
    }
    int il = fraqtl_calib_layer(t->name, "Kcur-");
    bool is_k = true;
    if (il < 0) {
        il = fraqtl_calib_layer(t->name, "Vcur-");
        is_k = false;
    }
    if (il < 0 || il >= c->n_layer || t->type != GGML_TYPE_F32) {
        return ask ? false : true;
    }
    const int32_t hd = is_k ? c->hd_k : c->hd_v;
    // post-RoPE K is the ROPE node; V is its per-head reshape (the 2D projection shares the name)
    const bool wanted = is_k ? (t->op == GGML_OP_ROPE) : (t->op == GGML_OP_RESHAPE || t->op == GGML_OP_VIEW);
    if (!wanted || t->ne[0] != hd || t->ne[1] != c->n_head_kv || !ggml_is_contiguous(t)) {
        return ask ? false : true;
    }
    if (ask) {
        return true;
    }
    const int64_t n_tokens = t->ne[2]*t->ne[3];
    c->buf.resize((size_t) ggml_nelements(t));
    ggml_backend_tensor_get(t, c->buf.data(), 0, ggml_nbytes(t));
    if (is_k) {
        fraqtl_calib_fold(c->mk[il], c->buf.data(), n_tokens, c->n_head_kv, hd);
        c->nk[il] += n_tokens;
    } else {
        fraqtl_calib_fold(c->mv[il], c->buf.data(), n_tokens, c->n_head_kv, hd);
        c->nv[il] += n_tokens;
    }
    return true;
}

ggml_backend_sched_eval_callback llama_fraqtl_calib_callback(void) {
    return fraqtl_calib_eval;
}

bool llama_fraqtl_calib_enable_q(struct llama_fraqtl_calib * calib, int32_t n_head) {
    if (!calib || n_head <= 0 || n_head % calib->n_head_kv != 0) {
        return false;
    }
    calib->n_head = n_head;
    calib->mq.assign(calib->n_layer, std::vector<double>((size_t) calib->n_head_kv*calib->hd_k*calib->hd_k, 0.0));
    calib->nq.assign(calib->n_layer, 0);
    return true;
}

int64_t llama_fraqtl_calib_tokens(const struct llama_fraqtl_calib * calib, int32_t il, char kind) {
    if (!calib || il < 0 || il >= calib->n_layer) {
        return -1;
    }
    switch (kind) {
        case 'k': return calib->nk[il];
        case 'v': return calib->nv[il];
        case 'q': return calib->n_head > 0 ? calib->nq[il] : -1;
        default:  return -1;
    }
}

bool llama_fraqtl_calib_moments(const struct llama_fraqtl_calib * calib, int32_t il, char kind, double * out) {
    if (!calib || il < 0 || il >= calib->n_layer || (kind != 'k' && kind != 'v' && kind != 'q') ||
        (kind == 'q' && calib->n_head <= 0)) {
        return false;
    }
    const int32_t hd = kind == 'v' ? calib->hd_v : calib->hd_k;
    const auto & m = kind == 'k' ? calib->mk[il] : kind == 'v' ? calib->mv[il] : calib->mq[il];
    for (int32_t h = 0; h < calib->n_head_kv; ++h) {
        const double * mh = m.data() + (size_t) h*hd*hd;
        double * oh = out + (size_t) h*hd*hd;
        for (int32_t i = 0; i < hd; ++i) {
            for (int32_t j = 0; j < hd; ++j) {
                oh[(size_t) i*hd + j] = i <= j ? mh[(size_t) i*hd + j] : mh[(size_t) j*hd + i];
            }
        }
    }
    return true;
}

bool llama_fraqtl_calib_add_moments(struct llama_fraqtl_calib * calib, int32_t il, char kind, const double * in, int64_t n_tokens) {
    // resume support: fold moments saved by an interrupted run back in
    if (!calib || il < 0 || il >= calib->n_layer || (kind != 'k' && kind != 'v')) {
        return false;
    }
    const int32_t hd = kind == 'k' ? calib->hd_k : calib->hd_v;
    auto & m = kind == 'k' ? calib->mk[il] : calib->mv[il];
    for (size_t i = 0; i < m.size(); ++i) {
        m[i] += in[i];
    }
    (void) hd;
    (kind == 'k' ? calib->nk[il] : calib->nv[il]) += n_tokens;
    return true;
}
