"""Random-weight GGUF models with the exact shape of a named model, for memory and speed benches.

Memory and speed at 7B scale depend on the tensor shapes and types, never on the weight
values, so a model with the shape of Mistral-7B-Instruct-v0.3 and random weights gives exact
VRAM figures where the real weights are not at hand. Two ways to make one:

* ``direct`` (default): write every tensor straight in its target type, choosing types with
  llama.cpp's own per-tensor policy for the file type (``llama-quant.cpp``: for Q4_K_M, Q6_K for
  ``output``, and for ``attn_v``/``ffn_down`` of the layers ``use_more_bits`` picks), filling
  blocks with random bytes and finite fp16 scales. Seconds, even for 7B.
* ``llama``: write F16 random weights, then quantize with llama.cpp's ``llama_model_quantize``
  from the installed library. Exact by construction; minutes at 7B. Tests use it on a tiny
  model to prove the direct policy matches.

The tokenizer is a minimal SentencePiece ("llama") vocabulary of the model's size: control
tokens, the 256 byte tokens, then filler pieces, so llama.cpp loads and tokenizes any text.
This module never imports the app and never loads a model into a context.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from engine.errors import EngineError


@dataclasses.dataclass(frozen=True)
class ModelShape:
    """The hyper-parameters that fix every tensor's shape in a llama-architecture GGUF."""

    key: str
    title: str
    n_layer: int
    n_embd: int
    n_head: int
    n_head_kv: int
    head_dim: int
    n_ff: int
    n_vocab: int
    n_ctx_train: int
    rope_freq_base: float = 10000.0
    rms_eps: float = 1e-5

    def scaled(self, layers: int | None = None, scale: int = 1) -> ModelShape:
        """A smaller model of the same family: fewer layers and/or every width divided by ``scale``."""
        if scale < 1 or self.n_embd % (scale * 256) or self.n_ff % (scale * 256):
            raise EngineError(f"scale {scale} must divide d_model and FFN into multiples of 256.")
        n_layer = layers or self.n_layer
        if n_layer < 1:
            raise EngineError(f"--layers {n_layer} must be at least 1.")
        suffix = "".join(
            [f"-{n_layer}l" if n_layer != self.n_layer else "", f"-w{scale}" if scale != 1 else ""]
        )
        return dataclasses.replace(
            self,
            key=self.key + suffix,
            n_layer=n_layer,
            n_embd=self.n_embd // scale,
            head_dim=self.head_dim // scale,
            n_ff=self.n_ff // scale,
            n_vocab=max(self.n_vocab // scale, 512),
        )

    @property
    def n_params(self) -> int:
        return sum(int(np.prod(shape)) for _, shape in tensor_shapes(self))


MISTRAL_7B_V03 = ModelShape(
    key="mistral-7b-instruct-v0.3",
    title="Mistral-7B-Instruct-v0.3",
    n_layer=32,
    n_embd=4096,
    n_head=32,
    n_head_kv=8,
    head_dim=128,
    n_ff=14336,
    n_vocab=32768,
    n_ctx_train=32768,
    rope_freq_base=1_000_000.0,
)

SHAPES: dict[str, ModelShape] = {MISTRAL_7B_V03.key: MISTRAL_7B_V03}

# ggml type ids and block geometry (ggml.h); for each K-quant/legacy block, where its fp16 scales sit.
F32, F16, Q4_0, Q8_0, Q4_K, Q5_K, Q6_K = 0, 1, 2, 8, 12, 13, 14
_BLOCK: dict[int, tuple[int, int, tuple[int, ...]]] = {
    # type: (elements per block, bytes per block, byte offsets of fp16 scale fields)
    Q4_0: (32, 18, (0,)),
    Q8_0: (32, 34, (0,)),
    Q4_K: (256, 144, (0, 2)),
    Q5_K: (256, 176, (0, 2)),
    Q6_K: (256, 210, (208,)),
}
TYPE_NAMES = {F32: "F32", F16: "F16", Q4_0: "Q4_0", Q8_0: "Q8_0", Q4_K: "Q4_K", Q5_K: "Q5_K", Q6_K: "Q6_K"}

#: file types we can write, as llama.cpp's llama_ftype ids
FTYPES = {"F16": 1, "Q4_0": 2, "Q8_0": 7, "Q4_K_M": 15}


def tensor_shapes(shape: ModelShape) -> Iterator[tuple[str, tuple[int, ...]]]:
    """(name, ggml ne) of every tensor, in llama.cpp's order for the llama architecture."""
    e, kv = shape.n_embd, shape.n_head_kv * shape.head_dim
    yield "token_embd.weight", (e, shape.n_vocab)
    yield "output_norm.weight", (e,)
    yield "output.weight", (e, shape.n_vocab)
    for i in range(shape.n_layer):
        yield f"blk.{i}.attn_norm.weight", (e,)
        yield f"blk.{i}.attn_q.weight", (e, shape.n_head * shape.head_dim)
        yield f"blk.{i}.attn_k.weight", (e, kv)
        yield f"blk.{i}.attn_v.weight", (e, kv)
        yield f"blk.{i}.attn_output.weight", (shape.n_head * shape.head_dim, e)
        yield f"blk.{i}.ffn_norm.weight", (e,)
        yield f"blk.{i}.ffn_gate.weight", (e, shape.n_ff)
        yield f"blk.{i}.ffn_up.weight", (e, shape.n_ff)
        yield f"blk.{i}.ffn_down.weight", (shape.n_ff, e)


def _use_more_bits(i_layer: int, n_layer: int) -> bool:
    # llama-quant.cpp: the first and last eighth of the layers and every third one in between
    return i_layer < n_layer // 8 or i_layer >= 7 * n_layer // 8 or (i_layer - n_layer // 8) % 3 == 2


def tensor_type(name: str, ne: tuple[int, ...], ftype: str, n_layer: int) -> int:
    """The ggml type llama.cpp's quantizer gives this tensor for this file type (llama arch)."""
    if len(ne) == 1:
        return F32
    if ftype == "F16":
        return F16
    if ftype in ("Q4_0", "Q8_0"):
        base = Q4_0 if ftype == "Q4_0" else Q8_0
        if name == "output.weight" and base != Q8_0:
            return Q6_K if ne[0] % 256 == 0 else Q8_0
        return base
    if ftype != "Q4_K_M":
        raise EngineError(f"file type {ftype} is not one of {', '.join(FTYPES)}.")
    if name == "output.weight":
        return Q6_K if ne[0] % 256 == 0 else Q8_0
    if name.endswith("attn_v.weight") or name.endswith("ffn_down.weight"):
        i_layer = int(name.split(".")[1])
        return Q6_K if _use_more_bits(i_layer, n_layer) else Q4_K
    return Q4_K


def _tensor_bytes(ne: tuple[int, ...], ggml_type: int) -> int:
    n = int(np.prod(ne))
    if ggml_type == F32:
        return 4 * n
    if ggml_type == F16:
        return 2 * n
    block, size, _ = _BLOCK[ggml_type]
    return n // block * size


def _random_tensor(rng: np.random.Generator, ne: tuple[int, ...], ggml_type: int, is_norm: bool) -> np.ndarray:
    """Random data in the tensor's storage layout, rows first (numpy order = reversed ne)."""
    rows = int(np.prod(ne[1:])) if len(ne) > 1 else 1
    if ggml_type == F32:
        if is_norm:
            return np.ones(ne[::-1], dtype=np.float32)
        return rng.standard_normal(ne[::-1], dtype=np.float32) * 0.02
    if ggml_type == F16:
        return (rng.standard_normal(ne[::-1], dtype=np.float32) * 0.02).astype(np.float16)
    block, size, scale_offsets = _BLOCK[ggml_type]
    n_blocks = int(np.prod(ne)) // block
    data = rng.integers(0, 256, size=(n_blocks, size), dtype=np.uint8)
    # Finite, small scales: random bytes would give NaN/Inf fp16 scales.
    scale = np.frombuffer(np.float16(0.002).tobytes(), dtype=np.uint8)
    for off in scale_offsets:
        data[:, off : off + 2] = scale
    return data.reshape(rows, -1)


def _tokenizer(n_vocab: int) -> tuple[list[str], list[float], list[int]]:
    """A minimal SentencePiece vocabulary: <unk> <s> </s>, 256 byte tokens, filler pieces."""
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    types = [2, 3, 3] + [6] * 256  # UNKNOWN, CONTROL, CONTROL, BYTE
    letters = "abcdefghijklmnopqrstuvwxyz"
    pieces: list[str] = ["▁"] + [f"▁{c}" for c in letters] + list(letters)
    i = 0
    while len(tokens) + len(pieces) < n_vocab:
        a, b, c = letters[i % 26], letters[(i // 26) % 26], letters[(i // 676) % 26]
        pieces.append(("▁" if (i // 17576) % 2 == 0 else "") + c + b + a + ("" if i < 35152 else str(i)))
        i += 1
    tokens += pieces[: n_vocab - len(tokens)]
    types += [1] * (n_vocab - len(types))
    scores = [0.0] * 259 + [-float(k) for k in range(n_vocab - 259)]
    return tokens, scores, types


def write_shaped_gguf(
    path: str | Path,
    shape: ModelShape = MISTRAL_7B_V03,
    ftype: str = "Q4_K_M",
    seed: int = 0,
    method: str = "direct",
    progress: Callable[[int, int], None] = lambda done, total: None,
    n_threads: int | None = None,
) -> Path:
    """Write a random-weight GGUF with ``shape`` and file type ``ftype``; returns its path."""
    import gguf

    if ftype not in FTYPES:
        raise EngineError(f"file type {ftype} is not one of {', '.join(FTYPES)}.")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if method == "llama" and ftype != "F16":
        f16_path = path.with_suffix(".f16.tmp.gguf")
        try:
            write_shaped_gguf(f16_path, shape, "F16", seed, "direct", progress)
            _quantize_with_llama(f16_path, path, ftype, n_threads)
        finally:
            f16_path.unlink(missing_ok=True)
        return path
    if method not in ("direct", "llama"):
        raise EngineError(f"method {method} must be 'direct' or 'llama'.")

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name(f"{shape.title} shape, random weights ({ftype})")
    writer.add_string("fraqtl.shape", shape.key)
    writer.add_uint32("fraqtl.shape_seed", seed)
    writer.add_context_length(shape.n_ctx_train)
    writer.add_embedding_length(shape.n_embd)
    writer.add_block_count(shape.n_layer)
    writer.add_feed_forward_length(shape.n_ff)
    writer.add_rope_dimension_count(shape.head_dim)
    writer.add_head_count(shape.n_head)
    writer.add_head_count_kv(shape.n_head_kv)
    writer.add_key_length(shape.head_dim)
    writer.add_value_length(shape.head_dim)
    writer.add_layer_norm_rms_eps(shape.rms_eps)
    writer.add_rope_freq_base(shape.rope_freq_base)
    writer.add_vocab_size(shape.n_vocab)
    writer.add_file_type(FTYPES[ftype])
    writer.add_quantization_version(2)
    tokens, scores, types = _tokenizer(shape.n_vocab)
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)

    plan = [(name, ne, tensor_type(name, ne, ftype, shape.n_layer)) for name, ne in tensor_shapes(shape)]
    for name, ne, ggml_type in plan:
        np_dtype = {F32: np.float32, F16: np.float16}.get(ggml_type, np.uint8)
        stored = ne[::-1]
        if ggml_type in _BLOCK:  # the writer takes quantized shapes in bytes per row
            stored = (*stored[:-1], ne[0] // _BLOCK[ggml_type][0] * _BLOCK[ggml_type][1])
        writer.add_tensor_info(
            name, stored, np.dtype(np_dtype), _tensor_bytes(ne, ggml_type),
            raw_dtype=None if ggml_type in (F32, F16) else gguf.GGMLQuantizationType(ggml_type),
        )
    writer.write_header_to_file(path)
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    rng = np.random.default_rng(seed)
    total = sum(_tensor_bytes(ne, t) for _, ne, t in plan)
    done = 0
    for name, ne, ggml_type in plan:
        data = _random_tensor(rng, ne, ggml_type, is_norm=name.endswith("norm.weight"))
        writer.write_tensor_data(data)
        done += data.nbytes
        progress(done, total)
    writer.close()
    return path


def _quantize_with_llama(src: Path, dst: Path, ftype: str, n_threads: int | None) -> None:
    from engine.runtime import load_llama_cpp

    llama_cpp = load_llama_cpp()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = FTYPES[ftype]
    params.nthread = n_threads or (os.cpu_count() or 1)
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), params)
    if rc != 0:
        raise EngineError(f"llama_model_quantize failed on {src} (code {rc}); check the disk space and try again.")


def tensor_types(path: str | Path) -> dict[str, int]:
    """name -> ggml type of every tensor in a GGUF (via our pure-Python reader)."""
    from engine.gguf import read_gguf

    return {t.name: t.ggml_type for t in read_gguf(path).tensors}
