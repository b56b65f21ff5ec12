"""Where a decoded token's GPU time goes: per-kernel times for a few tokens after a long prefill.

Run on the GPU machine (``bench/h200.sh kprof``): each arm fills ``--ctx`` random tokens, decodes
a few warm-up tokens, then decodes ``--tokens`` more under the PyTorch profiler, which records
every CUDA kernel of the process through CUPTI (llama.cpp's included). Prints, per arm, the
kernels by total time per token. A diagnostic, not a receipt: profiling adds overhead.
"""

from __future__ import annotations

import argparse
from collections import defaultdict

import numpy as np


def profile_arm(model: str, arm: str, n_ctx: int, n_tokens: int) -> None:
    import torch
    from torch.profiler import ProfilerActivity, profile

    from bench.worker import open_runtime

    rt = open_runtime({"model": model, "arm": arm, "n_ctx": n_ctx + 64, "n_batch": 2048,
                       "basis": "random" if arm.startswith("d2") else "sidecar"})
    rng = np.random.default_rng(0)
    n_vocab = rt.llm.n_vocab()
    for _ in rt.prefill([int(t) for t in rng.integers(300, n_vocab, size=n_ctx)]):
        pass
    for _ in range(4):
        rt.llm.eval([int(np.argmax(rt.last_logits()))])
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(n_tokens):
            rt.llm.eval([int(np.argmax(rt.last_logits()))])
    totals: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    for ev in prof.events():
        dt = getattr(ev, "device_time", None) or getattr(ev, "cuda_time", 0.0)
        if ev.device_type == torch.autograd.DeviceType.CUDA and dt:
            t = totals[ev.name[:90]]
            t[0] += dt
            t[1] += 1
    total = sum(v[0] for v in totals.values())
    print(f"== {arm} at {n_ctx} tokens: GPU time {total / n_tokens / 1000:.3f} ms per token")
    for name, (us, n) in sorted(totals.items(), key=lambda kv: -kv[1][0])[:18]:
        print(f"{us / n_tokens:9.1f} us/token {n / n_tokens:6.1f} launches/token  {name}")
    rt.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", required=True)
    ap.add_argument("--arms", default="f16,d2")
    ap.add_argument("--ctx", type=int, default=32768)
    ap.add_argument("--tokens", type=int, default=8)
    args = ap.parse_args()
    for arm in args.arms.split(","):
        profile_arm(args.model, arm, args.ctx, args.tokens)


if __name__ == "__main__":
    main()
