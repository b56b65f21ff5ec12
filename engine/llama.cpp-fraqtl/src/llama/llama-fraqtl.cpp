// fraqtl: D2 compressed KV cache for llama.cpp - implementation of the public C API.
#include "llama-fraqtl.h"

#define LLAMA_FRAQTL_VERSION "0.1.0"

const char * llama_fraqtl_version(void) {
    return "fraqtl " LLAMA_FRAQTL_VERSION;
}
