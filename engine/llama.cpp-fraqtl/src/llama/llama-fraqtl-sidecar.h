// fraqtl: the D2 sidecar format v1, checked from bytes - no file, no llama, no ggml - so that the
// fuzz harness (tests/fuzz/sidecar_reader_fuzz.cpp) drives exactly the code the KV cache runs.
// Format (little-endian): 8 x int32 header {magic, version 1, n_layer, n_head_kv, head_dim, ...},
// int32 rank[layer*head] for K files only, then fp16 U[layer][head][d][c].
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <stdexcept>

#define LLAMA_FRAQTL_SIDECAR_HEADER 32

struct llama_fraqtl_sidecar_layout {
    size_t n_mat;    // layers x KV heads
    size_t n_ranks;  // n_mat for K files, 0 for V files
    size_t u_offset; // where the fp16 bases start
    size_t size;     // the exact file size the model implies
};

// checks the header read from a file of file_size bytes (-1: unknown) against the model's dims;
// the sizes come from the model, never from the file. Throws std::runtime_error naming the file.
inline llama_fraqtl_sidecar_layout llama_fraqtl_sidecar_check_header(const char * path, const uint8_t * head,
        size_t n_head, long file_size, uint32_t magic_want, bool has_ranks, int32_t n_layer, int32_t n_head_kv,
        int32_t hd) {
    char msg[768];
    if (n_head < LLAMA_FRAQTL_SIDECAR_HEADER) {
        snprintf(msg, sizeof(msg), "sidecar %s: %zu bytes is shorter than the 32-byte header", path, n_head);
        throw std::runtime_error(msg);
    }
    int32_t hdr[8];
    memcpy(hdr, head, sizeof(hdr));
    if ((uint32_t) hdr[0] != magic_want) {
        snprintf(msg, sizeof(msg), "sidecar %s: magic 0x%08X, expected 0x%08X (%s basis file)", path,
                (uint32_t) hdr[0], magic_want, has_ranks ? "a K" : "a V");
        throw std::runtime_error(msg);
    }
    if (hdr[1] != 1) {
        snprintf(msg, sizeof(msg), "sidecar %s: version %d, expected 1", path, hdr[1]);
        throw std::runtime_error(msg);
    }
    if (hdr[2] != n_layer || hdr[3] != n_head_kv || hdr[4] != hd) {
        snprintf(msg, sizeof(msg), "sidecar %s: dims %d layers x %d KV heads x head_dim %d, the model has %d x %d x %d",
                path, hdr[2], hdr[3], hdr[4], n_layer, n_head_kv, hd);
        throw std::runtime_error(msg);
    }
    llama_fraqtl_sidecar_layout l;
    l.n_mat    = (size_t) n_layer*n_head_kv;
    l.n_ranks  = has_ranks ? l.n_mat : 0;
    l.u_offset = LLAMA_FRAQTL_SIDECAR_HEADER + l.n_ranks*sizeof(int32_t);
    l.size     = l.u_offset + l.n_mat*hd*hd*sizeof(uint16_t);
    if (file_size < 0 || (size_t) file_size != l.size) {
        snprintf(msg, sizeof(msg), "sidecar %s: %ld bytes, expected exactly %zu (%s)", path, file_size, l.size,
                file_size >= 0 && (size_t) file_size < l.size ? "truncated" : "trailing bytes");
        throw std::runtime_error(msg);
    }
    return l;
}

// checks a whole file image of l.size bytes: every rank in [8, hd], every fp16 value finite. Throws.
inline void llama_fraqtl_sidecar_check_payload(const char * path, const uint8_t * data,
        const llama_fraqtl_sidecar_layout & l, int32_t n_head_kv, int32_t hd) {
    char msg[768];
    for (size_t i = 0; i < l.n_ranks; ++i) {
        int32_t r;
        memcpy(&r, data + LLAMA_FRAQTL_SIDECAR_HEADER + i*sizeof(int32_t), sizeof(r));
        if (r < 8 || r > hd) {
            snprintf(msg, sizeof(msg), "sidecar %s: rank %d of layer %zu head %zu is outside [8, %d]", path, r,
                    i/n_head_kv, i%n_head_kv, hd);
            throw std::runtime_error(msg);
        }
    }
    const size_t n = l.n_mat*hd*hd;
    for (size_t i = 0; i < n; ++i) {
        uint16_t h;
        memcpy(&h, data + l.u_offset + i*sizeof(h), sizeof(h));
        if ((h & 0x7C00u) == 0x7C00u) { // exponent all ones: inf or NaN
            snprintf(msg, sizeof(msg), "sidecar %s: non-finite value at layer %zu head %zu", path,
                    i/((size_t) hd*hd)/n_head_kv, i/((size_t) hd*hd)%n_head_kv);
            throw std::runtime_error(msg);
        }
    }
}
