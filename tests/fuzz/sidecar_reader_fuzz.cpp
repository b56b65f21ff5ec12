// libFuzzer harness for the D2 sidecar reader of our llama.cpp (llama-fraqtl-sidecar.h): the
// first input byte picks a K or a V file, the rest is the file image, checked against a small
// model (2 layers x 1 KV head x head_dim 64) exactly as llama-fraqtl-kv.cpp checks a file.
// Built with -fsanitize=fuzzer,address,undefined by tests/fuzz/test_fuzz_sidecar_cpp.py.
// Every input must end in a named std::runtime_error or a whole, finite payload; any other
// exception, a sanitizer report or a crash fails the run.
#include "llama-fraqtl-sidecar.h"

#include <cstdlib>
#include <string>
#include <vector>

static const int32_t N_LAYER = 2, N_HEAD_KV = 1, HD = 64;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t * data, size_t size) {
    if (size < 1) {
        return 0;
    }
    const bool has_ranks = data[0] & 1;
    const uint32_t magic = has_ranks ? 0x4B514152u : 0x46524151u;
    // the image in a buffer of exactly its size, so ASan sees any read past the end of the "file"
    std::vector<uint8_t> image(data + 1, data + size);
    const uint8_t * file = image.empty() ? nullptr : image.data();
    uint8_t head[LLAMA_FRAQTL_SIDECAR_HEADER] = {};
    const size_t n_head = image.size() < sizeof(head) ? image.size() : sizeof(head);
    if (n_head) {
        memcpy(head, file, n_head);
    }
    try {
        const llama_fraqtl_sidecar_layout l = llama_fraqtl_sidecar_check_header("fuzz.bin", head, n_head,
                (long) image.size(), magic, has_ranks, N_LAYER, N_HEAD_KV, HD);
        if (l.size != image.size() || l.u_offset + l.n_mat*HD*HD*2 != l.size) {
            abort(); // the header check let a size through that the payload check would overrun
        }
        llama_fraqtl_sidecar_check_payload("fuzz.bin", file, l, N_HEAD_KV, HD);
    } catch (const std::runtime_error & err) {
        if (std::string(err.what()).rfind("sidecar fuzz.bin: ", 0) != 0) {
            abort(); // every rejection names the file
        }
    }
    return 0;
}
