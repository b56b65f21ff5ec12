"""What the loopback RPC test runs in a process of its own: ggml cannot forget an RPC server
once registered, so the local and the split runs may not share a process with each other or
with pytest."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np


def d2_logits(model: str, tokens: list[int], rpc_servers: tuple[str, ...], tensor_split: tuple[float, ...] | None,
              log_path: str, n_generate: int = 8) -> dict[str, Any]:
    """Every position's logits of a d2 prefill, then greedy tokens; llama.cpp's log goes to log_path,
    with the scheduler's graph splits and the tensors each split copies in from another device."""
    os.environ["FRAQTL_LLAMA_VERBOSE"] = "1"
    os.environ["GGML_SCHED_DEBUG"] = "1"
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.dup2(fd, 2)
    os.close(fd)
    from engine.runtime import Runtime

    rt = Runtime(Path(model), "d2", n_ctx=2048, n_batch=256, logits_all=True, n_threads=1,
                 rpc_servers=rpc_servers, tensor_split=tensor_split)
    try:
        for _ in rt.prefill(tokens):
            pass
        logits = np.asarray(rt.llm.scores[: len(tokens)], dtype=np.float32).copy()
        generated = []
        for _ in range(n_generate):
            token = int(np.argmax(rt.last_logits()))
            generated.append(token)
            rt.llm.eval([token])
        return {"logits": logits, "generated": generated, "kv_bytes": rt.kv_bytes()}
    finally:
        rt.close()
