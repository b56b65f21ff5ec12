// fraqtl: D2 KV cache - bases, exact sink/window copies and the graph pieces that use them.
#include "llama-fraqtl-kv.h"
#include "llama-fraqtl-sidecar.h"

#include "llama-impl.h"
#include "llama-model.h"
#include "llama-kv-cache.h"
#include "llama-kv-cache-iswa.h"
#include "llama-batch.h"

#include "ggml-alloc.h"

#include <cmath>
#include <cstdio>
#include <algorithm>
#include <cstring>
#include <map>
#include <random>
#include <stdexcept>

static thread_local std::string g_fraqtl_error;

void llama_fraqtl_set_error(const std::string & msg) {
    g_fraqtl_error = msg;
}

const char * llama_fraqtl_last_error(void) {
    return g_fraqtl_error.c_str();
}

struct llama_fraqtl_params llama_fraqtl_default_params(void) {
    llama_fraqtl_params p = {};
    p.k_sidecar = nullptr;
    p.v_sidecar = nullptr;
    p.k_protect = 16;
    p.v_protect = 32;
    p.k_tail_bits = 3;
    p.v_tail_bits = 3;
    p.protect_bits = 16;
    p.n_sink    = 8;
    p.n_window  = 1024;
    p.basis     = LLAMA_FRAQTL_BASIS_SIDECAR;
    p.seed      = 0;
    return p;
}

[[noreturn]] static void fraqtl_fail(const std::string & msg) {
    llama_fraqtl_set_error(msg);
    throw std::runtime_error(msg);
}

// cache type for P protected directions per head of width hd, tail codes of `bits` bits and
// protected coefficients of `pbits` bits; GGML_TYPE_COUNT if unsupported
static ggml_type fraqtl_type_for(int32_t protect, int32_t hd, int32_t bits, int32_t pbits) {
    if (protect == hd) {
        return GGML_TYPE_F16;
    }
    if (hd % 64 != 0 || protect % (hd/64) != 0 || (pbits == 8 && bits != 3)) {
        return GGML_TYPE_COUNT;
    }
    static const ggml_type types[3][3] = { // [tail 3, tail 2, int8 protected][P 8, 16, 32]
        { GGML_TYPE_D2_P8,   GGML_TYPE_D2_P16,   GGML_TYPE_D2_P32   },
        { GGML_TYPE_D2_P8B2, GGML_TYPE_D2_P16B2, GGML_TYPE_D2_P32B2 },
        { GGML_TYPE_D2_P8I8, GGML_TYPE_D2_P16I8, GGML_TYPE_D2_P32I8 },
    };
    const int family = pbits == 8 ? 2 : bits == 2 ? 1 : 0;
    switch (protect/(hd/64)) {
        case 8:  return types[family][0];
        case 16: return types[family][1];
        case 32: return types[family][2];
        default: return GGML_TYPE_COUNT;
    }
}

// the int32 ranks [n_layer*n_head_kv] of a K sidecar, header and ranks checked (the bases are
// read and checked when the cache is attached)
static std::vector<int32_t> fraqtl_read_ranks(const char * path, int32_t n_layer, int32_t n_head_kv, int32_t hd) {
    char msg[768];
    FILE * f = fopen(path, "rb");
    if (!f) {
        snprintf(msg, sizeof(msg), "sidecar %s: cannot open (%s)", path, strerror(errno));
        throw std::runtime_error(msg);
    }
    uint8_t hdr[LLAMA_FRAQTL_SIDECAR_HEADER];
    const size_t n_hdr = fread(hdr, 1, sizeof(hdr), f);
    long file_size = -1;
    if (fseek(f, 0, SEEK_END) == 0) {
        file_size = ftell(f);
    }
    std::vector<int32_t> ranks;
    try {
        const auto layout = llama_fraqtl_sidecar_check_header(path, hdr, n_hdr, file_size, 0x4B514152u, true,
                n_layer, n_head_kv, hd);
        ranks.resize(layout.n_ranks);
        if (fseek(f, LLAMA_FRAQTL_SIDECAR_HEADER, SEEK_SET) != 0 ||
                fread(ranks.data(), sizeof(int32_t), ranks.size(), f) != ranks.size()) {
            snprintf(msg, sizeof(msg), "sidecar %s: read error (%s)", path, strerror(errno));
            throw std::runtime_error(msg);
        }
    } catch (...) {
        fclose(f);
        throw;
    }
    fclose(f);
    for (size_t i = 0; i < ranks.size(); ++i) {
        if (ranks[i] < 8 || ranks[i] > hd) {
            snprintf(msg, sizeof(msg), "sidecar %s: rank %d of layer %zu head %zu is outside [8, %d]", path, ranks[i],
                    i/n_head_kv, i%n_head_kv, hd);
            throw std::runtime_error(msg);
        }
    }
    return ranks;
}

std::vector<int32_t> llama_fraqtl_k_protect_layers(const llama_model & model, const llama_fraqtl_params & fp) {
    const auto & hp = model.hparams;
    const int32_t n_layer = hp.n_layer();
    std::vector<int32_t> res(n_layer, 0);
    int32_t n_head_kv = -1;
    int32_t hd = -1;
    for (int32_t il = 0; il < n_layer; ++il) {
        if (hp.has_kv(il)) {
            n_head_kv = hp.n_head_kv(il);
            hd        = hp.n_embd_head_k(il);
            res[il]   = fp.k_protect;
        }
    }
    if (fp.k_protect != LLAMA_FRAQTL_PROTECT_AUTO || n_head_kv <= 0) {
        return res;
    }
    if (!fp.k_sidecar || fp.basis != LLAMA_FRAQTL_BASIS_SIDECAR) {
        throw std::runtime_error("D2 K protection from the sidecar's ranks (kauto) needs a K sidecar file");
    }
    const auto ranks = fraqtl_read_ranks(fp.k_sidecar, n_layer, n_head_kv, hd);
    const int32_t nb = hd/64;
    for (int32_t il = 0; il < n_layer; ++il) {
        if (!hp.has_kv(il)) {
            continue;
        }
        int32_t r = 0;
        for (int32_t h = 0; h < n_head_kv; ++h) {
            r = std::max(r, ranks[(size_t) il*n_head_kv + h]);
        }
        // one K tensor, hence one block type, per layer: the layer's largest head rank decides
        res[il] = hd;
        for (const int32_t p : { 8, 16, 32 }) {
            if (p*nb >= r) {
                res[il] = p*nb;
                break;
            }
        }
    }
    return res;
}

// per-layer K types for the llama_kv_cache being constructed on this thread (empty: none)
static thread_local std::vector<ggml_type> g_fraqtl_layer_types_k;

llama_fraqtl_layer_types::llama_fraqtl_layer_types(const llama_model & model, const llama_fraqtl_params * fp) {
    g_fraqtl_layer_types_k.clear();
    if (!fp || fp->k_protect != LLAMA_FRAQTL_PROTECT_AUTO) {
        return;
    }
    const auto protect = llama_fraqtl_k_protect_layers(model, *fp);
    for (uint32_t il = 0; il < protect.size(); ++il) {
        g_fraqtl_layer_types_k.push_back(protect[il] > 0
                ? fraqtl_type_for(protect[il], model.hparams.n_embd_head_k(il), fp->k_tail_bits, fp->protect_bits)
                : GGML_TYPE_COUNT);
    }
}

llama_fraqtl_layer_types::~llama_fraqtl_layer_types() {
    g_fraqtl_layer_types_k.clear();
}

ggml_type llama_fraqtl_layer_type_k(int32_t il, ggml_type type_k) {
    if (il >= 0 && (size_t) il < g_fraqtl_layer_types_k.size() && g_fraqtl_layer_types_k[il] != GGML_TYPE_COUNT) {
        return g_fraqtl_layer_types_k[il];
    }
    return type_k;
}

bool llama_fraqtl_prepare_params(const llama_model & model, llama_context_params & params) {
    const llama_fraqtl_params & fp = *params.fraqtl;
    const auto & hp = model.hparams;
    char msg[512];

    auto fail = [&](const char * text) {
        llama_fraqtl_set_error(text);
        LLAMA_LOG_ERROR("%s: %s\n", __func__, text);
        return false;
    };

    if (hp.is_swa_any()) {
        snprintf(msg, sizeof(msg), "D2 does not support models with sliding-window attention layers yet (%s)", model.arch_name().c_str());
        return fail(msg);
    }
    if (hp.is_mla() || hp.n_pos_per_embd() > 1) {
        snprintf(msg, sizeof(msg), "D2 does not support this attention type (%s)", model.arch_name().c_str());
        return fail(msg);
    }
    if (params.n_seq_max > 1) {
        snprintf(msg, sizeof(msg), "D2 supports one sequence per context (n_seq_max = %u)", params.n_seq_max);
        return fail(msg);
    }
    if ((fp.k_tail_bits != 2 && fp.k_tail_bits != 3) || (fp.v_tail_bits != 2 && fp.v_tail_bits != 3)) {
        snprintf(msg, sizeof(msg), "D2 tail bits K %d / V %d are not supported (2 or 3)", fp.k_tail_bits, fp.v_tail_bits);
        return fail(msg);
    }
    if (fp.protect_bits != 16 && !(fp.protect_bits == 8 && fp.k_tail_bits == 3 && fp.v_tail_bits == 3)) {
        snprintf(msg, sizeof(msg), "D2 protected coefficients of %d bits are not supported (16, or 8 with 3-bit tails)", fp.protect_bits);
        return fail(msg);
    }
    if (fp.n_sink < 0 || fp.n_window < 0) {
        return fail("D2 sink and window sizes must not be negative");
    }
    if (fp.basis != LLAMA_FRAQTL_BASIS_SIDECAR && fp.basis != LLAMA_FRAQTL_BASIS_RANDOM) {
        snprintf(msg, sizeof(msg), "D2 basis %d is unknown", fp.basis);
        return fail(msg);
    }

    int32_t hd_k = -1;
    int32_t hd_v = -1;
    for (uint32_t il = 0; il < hp.n_layer(); ++il) {
        if (!hp.has_kv(il)) {
            continue;
        }
        const int32_t k = hp.n_embd_head_k(il);
        const int32_t v = hp.n_embd_head_v(il);
        if ((hd_k >= 0 && k != hd_k) || (hd_v >= 0 && v != hd_v)) {
            return fail("D2 needs the same head size in every layer");
        }
        hd_k = k;
        hd_v = v;
    }
    if (hd_k <= 0 || hd_k % 64 != 0 || hd_v % 64 != 0) {
        snprintf(msg, sizeof(msg), "D2 needs head sizes that are multiples of 64 (K %d, V %d)", hd_k, hd_v);
        return fail(msg);
    }

    // kauto: every layer's K from the K sidecar's ranks; params.type_k is the widest of them
    int32_t k_protect = fp.k_protect;
    std::string k_layers;
    if (fp.k_protect == LLAMA_FRAQTL_PROTECT_AUTO) {
        std::vector<int32_t> per_layer;
        try {
            per_layer = llama_fraqtl_k_protect_layers(model, fp);
        } catch (const std::runtime_error & err) {
            return fail(err.what());
        }
        std::map<int32_t, int> count;
        k_protect = 0;
        for (const int32_t p : per_layer) {
            if (p > 0) {
                k_protect = std::max(k_protect, p);
                count[p]++;
            }
        }
        for (const auto & [p, n] : count) {
            k_layers += (k_layers.empty() ? "" : ", ") + std::to_string(n) + " x " +
                ggml_type_name(fraqtl_type_for(p, hd_k, fp.k_tail_bits, fp.protect_bits));
        }
    }
    const ggml_type tk = fraqtl_type_for(k_protect, hd_k, fp.k_tail_bits, fp.protect_bits);
    const ggml_type tv = fraqtl_type_for(fp.v_protect, hd_v, fp.v_tail_bits, fp.protect_bits);
    if (tk == GGML_TYPE_COUNT || tv == GGML_TYPE_COUNT) {
        snprintf(msg, sizeof(msg),
                "D2 protected directions K %d / V %d are not supported at head sizes %d / %d "
                "(use 8, 16 or 32 per 64 coefficients, or the whole head)", fp.k_protect, fp.v_protect, hd_k, hd_v);
        return fail(msg);
    }

    params.type_k = tk;
    params.type_v = tv;
    params.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_ENABLED; // D2 V blocks are read by flash attention only

    LLAMA_LOG_INFO("%s: D2 cache: K %s (%d fp16 of %d), V %s (%d fp16 of %d), sinks %d, window %d\n", __func__,
            ggml_type_name(tk), k_protect, hd_k, ggml_type_name(tv), fp.v_protect, hd_v, fp.n_sink, fp.n_window);
    if (!k_layers.empty()) {
        LLAMA_LOG_INFO("%s: D2 K per layer from the K sidecar's ranks: %s\n", __func__, k_layers.c_str());
    }
    return true;
}

// ---------------------------------------------------------------------------------------
// bases

// reads a sidecar in format v1 into U[layer][head][d][c] (f32); the checks live in
// llama-fraqtl-sidecar.h, where the fuzz harness drives them
static std::vector<float> fraqtl_read_sidecar(const char * path, uint32_t magic_want, bool has_ranks,
        int32_t n_layer, int32_t n_head_kv, int32_t hd) {
    char msg[768];
    FILE * f = fopen(path, "rb");
    if (!f) {
        snprintf(msg, sizeof(msg), "sidecar %s: cannot open (%s)", path, strerror(errno));
        fraqtl_fail(msg);
    }
    // the header first, then a payload only of the size this model implies: a large wrong
    // file is refused unread
    uint8_t hdr[LLAMA_FRAQTL_SIDECAR_HEADER];
    const size_t n_hdr = fread(hdr, 1, sizeof(hdr), f);
    long file_size = -1;
    if (fseek(f, 0, SEEK_END) == 0) {
        file_size = ftell(f);
    }
    std::vector<uint8_t> data;
    llama_fraqtl_sidecar_layout layout;
    try {
        layout = llama_fraqtl_sidecar_check_header(path, hdr, n_hdr, file_size, magic_want, has_ranks,
                n_layer, n_head_kv, hd);
        data.resize(layout.size);
        memcpy(data.data(), hdr, sizeof(hdr));
        const bool read_ok = fseek(f, sizeof(hdr), SEEK_SET) == 0 &&
            fread(data.data() + sizeof(hdr), 1, layout.size - sizeof(hdr), f) == layout.size - sizeof(hdr);
        if (!read_ok) {
            snprintf(msg, sizeof(msg), "sidecar %s: read error (%s)", path, strerror(errno));
            throw std::runtime_error(msg);
        }
        fclose(f);
        f = nullptr;
        llama_fraqtl_sidecar_check_payload(path, data.data(), layout, n_head_kv, hd);
    } catch (const std::runtime_error & err) {
        if (f) {
            fclose(f);
        }
        fraqtl_fail(err.what());
    }
    const uint8_t * u16 = data.data() + layout.u_offset;
    std::vector<float> u(layout.n_mat*hd*hd);
    for (size_t i = 0; i < u.size(); ++i) {
        ggml_fp16_t h;
        memcpy(&h, u16 + i*sizeof(h), sizeof(h));
        u[i] = ggml_fp16_to_fp32(h);
    }
    return u;
}

// Sidecars store U in fp16, whose rounding leaves U^T U a few 1e-3 away from I (no measurable
// KLD cost on SmolLM2, but a far-off basis would corrupt attention silently). Re-orthonormalize
// each basis in double (modified Gram-Schmidt in column order, so each leading span - the
// protected directions - is kept) and refuse a file whose basis is far from orthonormal.
static void fraqtl_orthonormalize(std::vector<float> & u, int32_t n_mat, int32_t n_head_kv, int32_t hd, const char * path) {
    std::vector<double> col((size_t) hd*hd); // col[c*hd + d]
    for (int32_t m = 0; m < n_mat; ++m) {
        float * um = u.data() + (size_t) m*hd*hd;
        double worst = 0.0;
        for (int32_t c = 0; c < hd; ++c) {
            for (int32_t d = 0; d < hd; ++d) {
                col[(size_t) c*hd + d] = um[(size_t) d*hd + c];
            }
        }
        for (int32_t c = 0; c < hd; ++c) {
            double * x = col.data() + (size_t) c*hd;
            for (int32_t p = 0; p < c; ++p) {
                const double * y = col.data() + (size_t) p*hd;
                double dot = 0.0;
                for (int32_t d = 0; d < hd; ++d) {
                    dot += x[d]*y[d];
                }
                worst = std::max(worst, std::fabs(dot));
                for (int32_t d = 0; d < hd; ++d) {
                    x[d] -= dot*y[d];
                }
            }
            double norm = 0.0;
            for (int32_t d = 0; d < hd; ++d) {
                norm += x[d]*x[d];
            }
            norm = std::sqrt(norm);
            worst = std::max(worst, std::fabs(norm - 1.0));
            if (!(norm > 0.5)) {
                worst = INFINITY;
                break;
            }
            for (int32_t d = 0; d < hd; ++d) {
                x[d] /= norm;
            }
        }
        if (worst > 0.05) {
            char msg[512];
            snprintf(msg, sizeof(msg), "sidecar %s: the basis of layer %d head %d is not orthonormal "
                    "(|U^T U - I| reaches %.3g; fp16 rounding gives about 0.005) - recalibrate or use another file",
                    path, m/n_head_kv, m%n_head_kv, worst);
            fraqtl_fail(msg);
        }
        for (int32_t c = 0; c < hd; ++c) {
            for (int32_t d = 0; d < hd; ++d) {
                um[(size_t) d*hd + c] = (float) col[(size_t) c*hd + d];
            }
        }
    }
}

static std::vector<float> fraqtl_identity(int32_t n_mat, int32_t hd) {
    std::vector<float> u((size_t) n_mat*hd*hd, 0.0f);
    for (int32_t m = 0; m < n_mat; ++m) {
        for (int32_t d = 0; d < hd; ++d) {
            u[((size_t) m*hd + d)*hd + d] = 1.0f;
        }
    }
    return u;
}

// seeded random orthonormal matrices (modified Gram-Schmidt on Gaussian columns)
static std::vector<float> fraqtl_random(int32_t n_mat, int32_t hd, uint32_t seed) {
    std::mt19937_64 rng(seed);
    std::normal_distribution<double> nd(0.0, 1.0);
    std::vector<float> u((size_t) n_mat*hd*hd);
    std::vector<double> a((size_t) hd*hd); // a[c*hd + d]: column c
    for (int32_t m = 0; m < n_mat; ++m) {
        for (auto & x : a) {
            x = nd(rng);
        }
        for (int32_t c = 0; c < hd; ++c) {
            double * col = a.data() + (size_t) c*hd;
            for (int32_t p = 0; p < c; ++p) {
                const double * prev = a.data() + (size_t) p*hd;
                double dot = 0.0;
                for (int32_t d = 0; d < hd; ++d) {
                    dot += prev[d]*col[d];
                }
                for (int32_t d = 0; d < hd; ++d) {
                    col[d] -= dot*prev[d];
                }
            }
            double norm = 0.0;
            for (int32_t d = 0; d < hd; ++d) {
                norm += col[d]*col[d];
            }
            norm = std::sqrt(norm);
            for (int32_t d = 0; d < hd; ++d) {
                col[d] /= norm;
            }
        }
        for (int32_t d = 0; d < hd; ++d) {
            for (int32_t c = 0; c < hd; ++c) {
                u[((size_t) m*hd + d)*hd + c] = (float) a[(size_t) c*hd + d];
            }
        }
    }
    return u;
}

// column order: each 64-block takes its share of the protected directions first, then its
// share of the tail, so that the block type's fp16 part holds the highest-variance ones
static std::vector<int32_t> fraqtl_block_order(int32_t hd, int32_t protect) {
    std::vector<int32_t> perm(hd);
    const int32_t nb = hd/64;
    if (protect == hd) {
        for (int32_t j = 0; j < hd; ++j) {
            perm[j] = j;
        }
        return perm;
    }
    const int32_t p = protect/nb;
    for (int32_t b = 0; b < nb; ++b) {
        for (int32_t i = 0; i < 64; ++i) {
            perm[b*64 + i] = i < p ? b*p + i : protect + b*(64 - p) + (i - p);
        }
    }
    return perm;
}

namespace {
// what flash attention reads besides the D2 cache: the exact copies after this ubatch's
// writes and the row map
struct fraqtl_exact {
    ggml_tensor * k    = nullptr;
    ggml_tensor * v    = nullptr;
    ggml_tensor * rows = nullptr;
};

// handed from llama_fraqtl_build_kv to the flash-attention node built next over k_view
struct fraqtl_pending {
    const ggml_tensor * k_view = nullptr;
    fraqtl_exact        exact;
};
thread_local fraqtl_pending g_fraqtl_pending;

void fraqtl_attach_exact(ggml_tensor * fa, const fraqtl_exact & exact) {
    GGML_ASSERT(fa->op == GGML_OP_FLASH_ATTN_EXT && !fa->src[5] && !fa->src[6] && !fa->src[7]);
    fa->src[5] = exact.k;
    fa->src[6] = exact.v;
    fa->src[7] = exact.rows;
}
}

// the device holding a layer's cache must run every D2 op of that layer (K type type_k): no
// silent host fallback
static void fraqtl_check_device(const llama_fraqtl_kv & d2, ggml_type type_k, int32_t n_head, ggml_backend_buffer_type_t buft) {
    ggml_backend_dev_t dev = ggml_backend_buft_get_device(buft);
    if (!dev) {
        return;
    }
    ggml_init_params ip = { 16*ggml_tensor_overhead() + ggml_graph_overhead(), nullptr, true };
    ggml_context_ptr ctx(ggml_init(ip));
    ggml_context * c = ctx.get();
    const int64_t n_kv  = 256;
    const int64_t nh    = d2.n_head_kv;
    const int64_t n_ex  = std::max(d2.n_exact, 1) + 1;

    std::vector<std::pair<const char *, ggml_tensor *>> ops;
    for (const bool is_v : { false, true }) {
        const ggml_type type = is_v ? d2.type_v : type_k;
        const int64_t   hd   = is_v ? d2.hd_v : d2.hd_k;
        if (type == GGML_TYPE_F16) {
            continue;
        }
        ggml_tensor * cache = ggml_new_tensor_2d(c, type, hd*nh, n_kv);
        ggml_tensor * src   = ggml_new_tensor_2d(c, GGML_TYPE_F32, hd*nh, 1);
        ggml_tensor * idx   = ggml_new_tensor_1d(c, GGML_TYPE_I64, 1);
        ops.emplace_back(is_v ? "the V cache write (set_rows)" : "the K cache write (set_rows)", ggml_set_rows(c, cache, src, idx));
    }
    ggml_tensor * q    = ggml_new_tensor_4d(c, GGML_TYPE_F32, d2.hd_k, 1, n_head, 1);
    // K and V as attention reads the cache: the heads of a position side by side
    ggml_tensor * k    = ggml_permute(c, ggml_new_tensor_3d(c, type_k, d2.hd_k, nh, n_kv), 0, 2, 1, 3);
    ggml_tensor * v    = ggml_permute(c, ggml_new_tensor_3d(c, d2.type_v, d2.hd_v, nh, n_kv), 0, 2, 1, 3);
    ggml_tensor * mask = ggml_new_tensor_4d(c, GGML_TYPE_F16, n_kv, 1, 1, 1);
    ggml_tensor * fa   = ggml_flash_attn_ext(c, q, k, v, mask, 1.0f, 0.0f, 0.0f);
    ggml_flash_attn_ext_set_prec(fa, GGML_PREC_F32);
    if (d2.n_exact > 0) {
        fraqtl_exact ex;
        ex.k    = ggml_new_tensor_2d(c, GGML_TYPE_F16, d2.hd_k*nh, n_ex);
        ex.v    = ggml_new_tensor_2d(c, GGML_TYPE_F16, d2.hd_v*nh, n_ex);
        ex.rows = ggml_new_tensor_1d(c, GGML_TYPE_I32, n_kv + n_ex);
        fraqtl_attach_exact(fa, ex);
    }
    ops.emplace_back("attention over the D2 cache (flash_attn_ext)", fa);

    for (const auto & [what, op] : ops) {
        if (!ggml_backend_dev_supports_op(dev, op)) {
            char msg[512];
            snprintf(msg, sizeof(msg),
                    "D2 cannot run on %s: this build has no kernel there for %s (K %s, V %s, head size %d). "
                    "Rebuild the engine with its GPU kernels (python -m engine.build --force), or run D2 with the KV cache on the CPU",
                    ggml_backend_dev_name(dev), what, ggml_type_name(type_k), ggml_type_name(d2.type_v), d2.hd_k);
            fraqtl_fail(msg);
        }
    }
}

void llama_fraqtl_attach(const llama_model & model, const llama_fraqtl_params & fp, llama_memory_i * mem) {
    auto * kv = dynamic_cast<llama_kv_cache *>(mem);
    if (!kv) {
        fraqtl_fail("D2 needs a plain KV cache; this model uses another memory type");
    }
    const auto & hp = model.hparams;
    const int32_t n_layer = hp.n_layer();

    auto d2 = std::make_shared<llama_fraqtl_kv>();
    d2->n_head_kv = -1;
    for (int32_t il = 0; il < n_layer; ++il) {
        if (hp.has_kv(il)) {
            d2->n_head_kv = hp.n_head_kv(il);
            d2->hd_k      = hp.n_embd_head_k(il);
            d2->hd_v      = hp.n_embd_head_v(il);
            break;
        }
    }
    for (int32_t il = 0; il < n_layer; ++il) {
        if (hp.has_kv(il) && (int32_t) hp.n_head_kv(il) != d2->n_head_kv) {
            fraqtl_fail("D2 needs the same number of KV heads in every layer");
        }
    }
    d2->k_protect_il = llama_fraqtl_k_protect_layers(model, fp);
    d2->k_protect = *std::max_element(d2->k_protect_il.begin(), d2->k_protect_il.end());
    d2->v_protect = fp.v_protect;
    d2->type_k    = fraqtl_type_for(d2->k_protect, d2->hd_k, fp.k_tail_bits, fp.protect_bits);
    d2->type_k_il.assign(n_layer, GGML_TYPE_COUNT);
    for (int32_t il = 0; il < n_layer; ++il) {
        if (d2->k_protect_il[il] > 0) {
            d2->type_k_il[il] = fraqtl_type_for(d2->k_protect_il[il], d2->hd_k, fp.k_tail_bits, fp.protect_bits);
        }
    }
    d2->type_v    = fraqtl_type_for(fp.v_protect, d2->hd_v, fp.v_tail_bits, fp.protect_bits);
    d2->n_sink    = fp.n_sink;
    d2->n_window  = fp.n_window;

    const int32_t kv_size = (int32_t) kv->get_size();
    if (d2->n_sink > kv_size) {
        d2->n_sink = kv_size;
    }
    if (d2->n_sink + d2->n_window > kv_size) {
        d2->n_window = kv_size - d2->n_sink; // everything stays exact: no ring wrap needed
    }
    d2->n_exact = d2->n_sink + d2->n_window;
    d2->slot_pos.assign(d2->n_exact, -1);

    const int32_t n_mat = n_layer*d2->n_head_kv;
    std::vector<float> uk;
    std::vector<float> uv;
    if (fp.basis == LLAMA_FRAQTL_BASIS_RANDOM) {
        uk = fraqtl_random(n_mat, d2->hd_k, fp.seed);
        uv = fraqtl_random(n_mat, d2->hd_v, fp.seed + 1);
    } else {
        uk = fp.k_sidecar ? fraqtl_read_sidecar(fp.k_sidecar, 0x4B514152u, true,  n_layer, d2->n_head_kv, d2->hd_k)
                          : fraqtl_identity(n_mat, d2->hd_k);
        uv = fp.v_sidecar ? fraqtl_read_sidecar(fp.v_sidecar, 0x46524151u, false, n_layer, d2->n_head_kv, d2->hd_v)
                          : fraqtl_identity(n_mat, d2->hd_v);
        if (fp.k_sidecar) {
            fraqtl_orthonormalize(uk, n_mat, d2->n_head_kv, d2->hd_k, fp.k_sidecar);
        }
        if (fp.v_sidecar) {
            fraqtl_orthonormalize(uv, n_mat, d2->n_head_kv, d2->hd_v, fp.v_sidecar);
        }
    }
    std::vector<std::vector<int32_t>> perm_k(n_layer); // per layer: kauto gives layers their own K protection
    for (int32_t il = 0; il < n_layer; ++il) {
        perm_k[il] = fraqtl_block_order(d2->hd_k, d2->k_protect_il[il] > 0 ? d2->k_protect_il[il] : d2->hd_k);
    }
    const auto perm_v = fraqtl_block_order(d2->hd_v, d2->v_protect);

    // one ggml context per buffer type: each layer's tensors live beside its cache
    std::map<ggml_backend_buffer_type_t, ggml_context *> ctx_map;
    std::vector<ggml_context_ptr> owned;
    d2->rot_k.assign(n_layer, nullptr);
    d2->rot_v.assign(n_layer, nullptr);
    d2->exact_k.assign(n_layer, nullptr);
    d2->exact_v.assign(n_layer, nullptr);

    for (int32_t il = 0; il < n_layer; ++il) {
        if (!hp.has_kv(il)) {
            continue;
        }
        ggml_tensor * k_store = kv->get_k_storage(il);
        if (k_store->ne[2] != 1) {
            fraqtl_fail("D2 supports a single KV stream");
        }
        if (k_store->type != d2->type_k_il[il]) { // llama_fraqtl_layer_types was not in scope
            char msg[256];
            snprintf(msg, sizeof(msg), "D2: layer %d's K cache is %s, expected %s", il, ggml_type_name(k_store->type),
                    ggml_type_name(d2->type_k_il[il]));
            fraqtl_fail(msg);
        }
        ggml_backend_buffer_type_t buft = ggml_backend_buffer_get_type(k_store->buffer);
        auto it = ctx_map.find(buft);
        if (it == ctx_map.end()) {
            ggml_init_params ip = { size_t(8*n_layer)*ggml_tensor_overhead(), nullptr, true };
            ggml_context * c = ggml_init(ip);
            owned.emplace_back(c);
            it = ctx_map.emplace(buft, c).first;
        }
        ggml_context * c = it->second;
        const int64_t hk = d2->hd_k;
        const int64_t hv = d2->hd_v;
        const int64_t nh = d2->n_head_kv;
        d2->rot_k[il] = ggml_new_tensor_3d(c, GGML_TYPE_F32, hk, hk, nh);
        d2->rot_v[il] = ggml_new_tensor_3d(c, GGML_TYPE_F32, hv, hv, nh);
        ggml_format_name(d2->rot_k[il], "fraqtl_rot_k_l%d", il);
        ggml_format_name(d2->rot_v[il], "fraqtl_rot_v_l%d", il);
        if (d2->n_exact > 0) {
            d2->exact_k[il] = ggml_new_tensor_2d(c, GGML_TYPE_F16, hk*nh, d2->n_exact + 1);
            d2->exact_v[il] = ggml_new_tensor_2d(c, GGML_TYPE_F16, hv*nh, d2->n_exact + 1);
            ggml_format_name(d2->exact_k[il], "fraqtl_exact_k_l%d", il);
            ggml_format_name(d2->exact_v[il], "fraqtl_exact_v_l%d", il);
        }
    }

    for (size_t i = 0; i < owned.size(); ++i) {
        ggml_backend_buffer_type_t buft = nullptr;
        for (auto & [b, c] : ctx_map) {
            if (c == owned[i].get()) {
                buft = b;
            }
        }
        ggml_backend_buffer_t buf = ggml_backend_alloc_ctx_tensors_from_buft(owned[i].get(), buft);
        if (!buf) {
            fraqtl_fail("D2: failed to allocate the basis and exact-copy buffers");
        }
        ggml_backend_buffer_clear(buf, 0);
        d2->ctxs_bufs.emplace_back(std::move(owned[i]), buf);
    }

    // every device holding a layer's cache must run the D2 ops (checked once per buffer type
    // and K type: kauto gives layers their own)
    int32_t n_dev = 0;
    std::vector<std::pair<ggml_backend_buffer_type_t, ggml_type>> checked;
    for (int32_t il = 0; il < n_layer; ++il) {
        if (!d2->rot_k[il]) {
            continue;
        }
        ggml_backend_buffer_t buf = kv->get_k_storage(il)->buffer;
        if (ggml_backend_buffer_is_host(buf)) {
            continue;
        }
        ++n_dev;
        ggml_backend_buffer_type_t buft = ggml_backend_buffer_get_type(buf);
        const std::pair<ggml_backend_buffer_type_t, ggml_type> key(buft, d2->type_k_il[il]);
        if (std::find(checked.begin(), checked.end(), key) == checked.end()) {
            fraqtl_check_device(*d2, d2->type_k_il[il], hp.n_head(il), buft);
            checked.push_back(key);
        }
    }

    std::vector<float> tmp;
    for (int32_t il = 0; il < n_layer; ++il) {
        if (!d2->rot_k[il]) {
            continue;
        }
        // passes: 0 rot_k, 1 rot_v (its transpose undoes it: llama_fraqtl_unrotate_out)
        for (int pass = 0; pass < 2; ++pass) {
            const bool is_k = pass == 0;
            const int32_t hd = is_k ? d2->hd_k : d2->hd_v;
            const auto & u    = is_k ? uk : uv;
            const auto & perm = is_k ? perm_k[il] : perm_v;
            ggml_tensor * t = is_k ? d2->rot_k[il] : d2->rot_v[il];
            tmp.assign((size_t) d2->n_head_kv*hd*hd, 0.0f);
            for (int32_t h = 0; h < d2->n_head_kv; ++h) {
                const float * uh = u.data() + ((size_t) il*d2->n_head_kv + h)*hd*hd; // U[d][c]
                float * th = tmp.data() + (size_t) h*hd*hd;
                for (int32_t j = 0; j < hd; ++j) {
                    for (int32_t d = 0; d < hd; ++d) {
                        th[(size_t) j*hd + d] = uh[(size_t) d*hd + perm[j]]; // row j: coefficient j
                    }
                }
            }
            ggml_backend_tensor_set(t, tmp.data(), 0, tmp.size()*sizeof(float));
            d2->basis_bytes += ggml_nbytes(t);
        }
        if (d2->exact_k[il]) {
            d2->exact_bytes += ggml_nbytes(d2->exact_k[il]) + ggml_nbytes(d2->exact_v[il]);
        }
    }

    LLAMA_LOG_INFO("%s: D2 bases %s, exact copies %d sinks + %d window: %.2f MiB, bases %.2f MiB\n", __func__,
            fp.basis == LLAMA_FRAQTL_BASIS_RANDOM ? "random" : (fp.k_sidecar || fp.v_sidecar ? "from sidecars" : "identity"),
            d2->n_sink, d2->n_window, d2->exact_bytes/1024.0/1024.0, d2->basis_bytes/1024.0/1024.0);
    LLAMA_LOG_INFO("%s: D2 cache in %s memory (%d of %d layers on a device)\n", __func__,
            n_dev > 0 ? "device" : "host", n_dev, n_layer);

    kv->fraqtl = std::move(d2);
}

int32_t llama_fraqtl_kv::slot_of(llama_pos p) const {
    if (p < 0 || n_exact == 0) {
        return -1;
    }
    if (p < n_sink) {
        return p;
    }
    if (n_window == 0) {
        return -1;
    }
    return n_sink + (p - n_sink) % n_window;
}

void llama_fraqtl_kv::reset() {
    std::fill(slot_pos.begin(), slot_pos.end(), -1);
}

// ---------------------------------------------------------------------------------------
// graph

const llama_fraqtl_kv * llama_fraqtl_of(const llama_kv_cache_context * mctx) {
    if (!mctx || !mctx->get_cache()) {
        return nullptr;
    }
    return mctx->get_cache()->fraqtl.get();
}

ggml_tensor * llama_fraqtl_build_input_slots(ggml_context * ctx, const llama_fraqtl_kv * d2, const llama_ubatch & ubatch) {
    if (!d2 || d2->n_exact == 0) {
        return nullptr;
    }
    ggml_tensor * t = ggml_new_tensor_1d(ctx, GGML_TYPE_I64, ubatch.n_tokens);
    ggml_set_input(t);
    ggml_set_name(t, "fraqtl_inp_slots");
    return t;
}

ggml_tensor * llama_fraqtl_build_input_rows(ggml_context * ctx, const llama_kv_cache_context * mctx) {
    const llama_fraqtl_kv * d2 = llama_fraqtl_of(mctx);
    if (!d2 || d2->n_exact == 0) {
        return nullptr;
    }
    // the row map (n_kv entries), then its inverse: the cell each exact slot's row replaces
    ggml_tensor * t = ggml_new_tensor_1d(ctx, GGML_TYPE_I32, mctx->get_n_kv() + d2->n_exact + 1);
    ggml_set_input(t);
    ggml_set_name(t, "fraqtl_inp_rows");
    return t;
}

void llama_fraqtl_set_inputs(const llama_kv_cache_context * mctx, const llama_ubatch * ubatch,
        ggml_tensor * slots, ggml_tensor * rows) {
    llama_fraqtl_kv * d2 = mctx && mctx->get_cache() ? mctx->get_cache()->fraqtl.get() : nullptr;
    if (!d2 || d2->n_exact == 0) {
        return;
    }
    const int32_t scratch = d2->n_exact;

    if (slots && slots->buffer && ubatch) {
        GGML_ASSERT(ggml_backend_buffer_is_host(slots->buffer));
        int64_t * data = (int64_t *) slots->data;
        const uint32_t n = ubatch->n_tokens;
        // a later token of the same ubatch may take the same ring slot: only the last one
        // writes it, the others go to the scratch slot (set_rows has no write order)
        std::vector<uint32_t> last(d2->n_exact, UINT32_MAX);
        for (uint32_t i = 0; i < n; ++i) {
            const int32_t s = d2->slot_of(ubatch->pos[i]);
            if (s >= 0) {
                last[s] = i;
            }
        }
        for (uint32_t i = 0; i < n; ++i) {
            const int32_t s = d2->slot_of(ubatch->pos[i]);
            if (s >= 0 && last[s] == i) {
                data[i] = s;
                d2->slot_pos[s] = ubatch->pos[i];
            } else {
                data[i] = scratch;
            }
        }
    }

    if (rows && rows->buffer) {
        GGML_ASSERT(ggml_backend_buffer_is_host(rows->buffer));
        int32_t * data = (int32_t *) rows->data;
        const int32_t n_kv = (int32_t) rows->ne[0] - (d2->n_exact + 1);
        GGML_ASSERT(n_kv == (int32_t) mctx->get_n_kv());
        // row i of the attended K/V: the compressed row i, or exact slot s (at n_kv + s)
        // when cell i holds the position that slot s keeps exact; entry n_kv + s: that cell, or -1
        // (a GPU attends to the exact rows apart from the compressed ones)
        int32_t * cell_of = data + n_kv;
        std::fill(cell_of, cell_of + d2->n_exact + 1, -1);
        const auto & kv_cells = mctx->get_cache()->get_cells(0);
        for (int32_t i = 0; i < n_kv; ++i) {
            data[i] = i;
            if ((uint32_t) i >= kv_cells.size() || kv_cells.is_empty(i) || !kv_cells.seq_has(i, 0)) {
                continue;
            }
            const llama_pos p = kv_cells.pos_get(i);
            const int32_t s = d2->slot_of(p);
            if (s >= 0 && d2->slot_pos[s] == p) {
                data[i]    = n_kv + s;
                cell_of[s] = i;
            }
        }
    }
}

// x [hd, n_head, n_tokens] -> per head, rot·x (rot's row j gives coefficient j), or rot^T·x
// (inverse: the rotation is orthonormal, so its transpose undoes it without a matrix of its own;
// an OUT_PROD of rot and x^T), each query head using its KV head's matrix
static ggml_tensor * fraqtl_rotate(ggml_context * ctx, ggml_tensor * x, ggml_tensor * rot, bool inverse = false) {
    const int64_t hd = x->ne[0];
    const int64_t nh = x->ne[1];
    const int64_t nt = x->ne[2];
    ggml_tensor * cur = x;
    if (nt == 1) {
        cur = ggml_is_contiguous(cur) ? cur : ggml_cont(ctx, cur);
        cur = ggml_reshape_3d(ctx, cur, hd, 1, nh);
    } else {
        cur = ggml_cont(ctx, ggml_permute(ctx, cur, 0, 2, 1, 3)); // [hd, nt, nh]
    }
    // both broadcast rot over the query heads of each KV head
    cur = inverse ? ggml_out_prod(ctx, rot, ggml_transpose(ctx, cur)) : ggml_mul_mat(ctx, rot, cur);
    if (nt == 1) {
        return ggml_reshape_3d(ctx, cur, hd, nh, 1);
    }
    return ggml_cont(ctx, ggml_permute(ctx, cur, 0, 2, 1, 3)); // [hd, nh, nt]
}

void llama_fraqtl_rotate_qkv(ggml_context * ctx, const llama_fraqtl_kv * d2, int32_t il,
        ggml_tensor ** q, ggml_tensor ** k, ggml_tensor ** v) {
    *q = fraqtl_rotate(ctx, *q, d2->rot_k[il]);
    *k = fraqtl_rotate(ctx, *k, d2->rot_k[il]);
    *v = fraqtl_rotate(ctx, *v, d2->rot_v[il]);
}


void llama_fraqtl_build_kv(ggml_context * ctx, const llama_fraqtl_kv * d2, int32_t il,
        ggml_tensor * k_cur, ggml_tensor * v_cur, ggml_tensor * slots, ggml_tensor * rows,
        const ggml_tensor * k_view) {
    g_fraqtl_pending = {};
    if (d2->n_exact == 0 || !slots || !rows) {
        return;
    }
    ggml_tensor * k2 = ggml_reshape_2d(ctx, k_cur, k_cur->ne[0]*k_cur->ne[1], k_cur->ne[2]);
    ggml_tensor * v2 = ggml_reshape_2d(ctx, v_cur, v_cur->ne[0]*v_cur->ne[1], v_cur->ne[2]);
    // attention must read the copies after this ubatch's writes: it reads these results
    ggml_tensor * ek = ggml_set_rows(ctx, d2->exact_k[il], k2, slots);
    ggml_tensor * ev = ggml_set_rows(ctx, d2->exact_v[il], v2, slots);
    if (d2->type_k_il[il] != GGML_TYPE_F16 || d2->type_v != GGML_TYPE_F16) {
        g_fraqtl_pending = { k_view, { ek, ev, rows } };
    }
    // an all-f16 cache is exact already: the copies are kept but not read
}

void llama_fraqtl_bind_exact(ggml_tensor * fa) {
    const fraqtl_pending pending = g_fraqtl_pending;
    if (!pending.k_view || !fa || fa->op != GGML_OP_FLASH_ATTN_EXT) {
        return;
    }
    g_fraqtl_pending = {};
    for (const ggml_tensor * t = fa->src[1]; t; t = t->src[0]) {
        if (t == pending.k_view) {
            fraqtl_attach_exact(fa, pending.exact);
            return;
        }
        if (t->op != GGML_OP_VIEW && t->op != GGML_OP_PERMUTE && t->op != GGML_OP_RESHAPE && t->op != GGML_OP_TRANSPOSE) {
            break;
        }
    }
    GGML_ABORT("fraqtl: the flash-attention node does not read the D2 cache view it was built for");
}

ggml_tensor * llama_fraqtl_unrotate_out(ggml_context * ctx, const llama_fraqtl_kv * d2, int32_t il, ggml_tensor * cur) {
    const int64_t hd = d2->hd_v;
    const int64_t nt = cur->ne[1];
    ggml_tensor * x = ggml_is_contiguous(cur) ? cur : ggml_cont(ctx, cur);
    x = ggml_reshape_3d(ctx, x, hd, cur->ne[0]/hd, nt);
    x = fraqtl_rotate(ctx, x, d2->rot_v[il], true);
    return ggml_reshape_2d(ctx, x, cur->ne[0], nt);
}

// ---------------------------------------------------------------------------------------
// memory query

static void fraqtl_add_cache(const llama_model & model, const llama_kv_cache * kv, llama_fraqtl_memory * out) {
    GGML_UNUSED(model);
    for (const auto & t : kv->fraqtl_tensors(false)) {
        out->k_bytes += ggml_nbytes(t);
        out->type_k = t->type;
    }
    for (const auto & t : kv->fraqtl_tensors(true)) {
        out->v_bytes += ggml_nbytes(t);
        out->type_v = t->type;
    }
    if (kv->fraqtl) {
        out->d2 = 1;
        out->exact_bytes += kv->fraqtl->exact_bytes;
        out->basis_bytes += kv->fraqtl->basis_bytes;
    }
}

bool llama_fraqtl_get_memory(const struct llama_context * ctx, struct llama_fraqtl_memory * out) {
    if (!ctx || !out) {
        return false;
    }
    *out = {};
    out->type_k = -1;
    out->type_v = -1;
    const llama_model & model = *llama_get_model(ctx);
    llama_memory_t mem = llama_get_memory(ctx);
    if (auto * kv = dynamic_cast<const llama_kv_cache *>(mem)) {
        fraqtl_add_cache(model, kv, out);
        return true;
    }
    if (auto * iswa = dynamic_cast<const llama_kv_cache_iswa *>(mem)) {
        fraqtl_add_cache(model, iswa->get_base(), out);
        fraqtl_add_cache(model, iswa->get_swa(), out);
        return true;
    }
    return false;
}
