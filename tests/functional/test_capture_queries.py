"""The calibration capture also folds post-RoPE queries per KV head (groundwork for Q-aware bases)."""

from __future__ import annotations

import ctypes

import numpy as np

from engine.calibrate import CaptureModel
from engine.gguf import read_gguf
from engine.models import resolve


def test_query_moments_per_kv_head() -> None:
    model = resolve(None)
    info = read_gguf(model)
    cm = CaptureModel(model, info, 512, 256, 2)
    try:
        lib = cm.capture._lib
        lib.llama_fraqtl_calib_enable_q.argtypes = [ctypes.c_void_p, ctypes.c_int32]
        lib.llama_fraqtl_calib_enable_q.restype = ctypes.c_bool
        assert not lib.llama_fraqtl_calib_enable_q(cm.capture.handle, info.n_head + 1)  # not a multiple
        assert lib.llama_fraqtl_calib_enable_q(cm.capture.handle, info.n_head)
        tokens = cm.tokenize("Queries are folded into the moments of the KV head they read. " * 20)[:300]
        for i in range(0, len(tokens), 256):
            cm.decode(tokens[i : i + 256])
        cm.capture.hd["q"] = info.head_dim_k
        assert cm.capture.tokens(0, "q") == cm.capture.tokens(0, "k") == len(tokens)
        mq = cm.capture.moments(3, "q")
    finally:
        cm.close()
    assert mq.shape == (info.n_head_kv, info.head_dim_k, info.head_dim_k)
    np.testing.assert_allclose(mq, np.swapaxes(mq, 1, 2))
    # each KV head sums the second moments of its n_head / n_head_kv query heads: PSD, non-zero
    assert np.all(np.linalg.eigvalsh(mq / len(tokens)) > -1e-6 * np.abs(mq).max())
    assert np.all(np.trace(mq, axis1=1, axis2=2) > 0)
