// fraqtl: D2 compressed KV cache for llama.cpp - public C API.
// Our own header; the patch series only wires it into the build.
#pragma once

#include "llama.h"

#ifdef __cplusplus
extern "C" {
#endif

// Version of the fraqtl patch series compiled into this libllama ("fraqtl <semver>").
LLAMA_API const char * llama_fraqtl_version(void);

#ifdef __cplusplus
}
#endif
