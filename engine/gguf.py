"""Read a GGUF file's metadata and tensor table (pure Python, no llama.cpp needed).

Used for estimates (KV bytes from n_layer, n_head_kv, key/value length), for sidecar
validation and by the app before any model is loaded. Arrays other than small ones are
skipped, not loaded (the vocabulary is large). This module must never import the app.
"""

from __future__ import annotations

import dataclasses
import os
import struct
from pathlib import Path
from typing import Any, BinaryIO

from engine.errors import ModelFormatError, ModelNotFoundError

GGUF_MAGIC = b"GGUF"

# GGUF value types
_UINT8, _INT8, _UINT16, _INT16, _UINT32, _INT32, _FLOAT32, _BOOL, _STRING, _ARRAY, _UINT64, _INT64, _FLOAT64 = range(13)
_SCALAR = {
    _UINT8: "<B", _INT8: "<b", _UINT16: "<H", _INT16: "<h", _UINT32: "<I", _INT32: "<i",
    _FLOAT32: "<f", _BOOL: "<?", _UINT64: "<Q", _INT64: "<q", _FLOAT64: "<d",
}

# ggml type id -> (block size, bytes per block) for the weight types we may meet.
GGML_TYPE_SIZES: dict[int, tuple[int, int]] = {
    0: (1, 4), 1: (1, 2), 2: (32, 18), 3: (32, 20), 6: (32, 22), 7: (32, 24), 8: (32, 34),
    9: (32, 36), 10: (256, 84), 11: (256, 110), 12: (256, 144), 13: (256, 176), 14: (256, 210),
    15: (256, 292), 16: (256, 66), 17: (256, 74), 18: (256, 98), 19: (256, 50), 20: (32, 18),
    21: (256, 110), 22: (256, 82), 23: (256, 136), 24: (1, 1), 25: (1, 2), 26: (1, 4),
    27: (1, 8), 28: (1, 8), 29: (256, 56), 30: (1, 2), 34: (256, 54), 35: (256, 66),
    39: (32, 17),
}

_ARRAY_KEEP = 64  # arrays longer than this are summarised by their length
_MAX_NESTING = 8  # arrays of arrays deeper than this are corrupt (and would exhaust the stack)


@dataclasses.dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]
    ggml_type: int
    offset: int

    @property
    def n_elements(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def n_bytes(self) -> int:
        block, size = GGML_TYPE_SIZES.get(self.ggml_type, (1, 4))
        return self.n_elements // block * size


@dataclasses.dataclass(frozen=True)
class GgufInfo:
    """Metadata and tensor table of a GGUF model, with the dims the KV cache depends on."""

    path: Path
    version: int
    metadata: dict[str, Any]
    tensors: tuple[TensorInfo, ...]
    file_size: int

    @property
    def arch(self) -> str:
        return str(self.metadata.get("general.architecture", "unknown"))

    @property
    def name(self) -> str:
        return str(self.metadata.get("general.name", self.path.stem))

    def _arch_key(self, key: str, default: Any = None) -> Any:
        return self.metadata.get(f"{self.arch}.{key}", default)

    @property
    def n_layer(self) -> int:
        return int(self._arch_key("block_count", 0))

    @property
    def n_embd(self) -> int:
        return int(self._arch_key("embedding_length", 0))

    @property
    def n_head(self) -> int:
        value = self._arch_key("attention.head_count", 0)
        return int(value[0] if isinstance(value, list) else value)

    @property
    def n_head_kv(self) -> int:
        value = self._arch_key("attention.head_count_kv", self.n_head)
        return int(value[0] if isinstance(value, list) else value)

    @property
    def head_dim_k(self) -> int:
        return int(self._arch_key("attention.key_length", self.n_embd // max(self.n_head, 1)))

    @property
    def head_dim_v(self) -> int:
        return int(self._arch_key("attention.value_length", self.n_embd // max(self.n_head, 1)))

    @property
    def n_ctx_train(self) -> int:
        return int(self._arch_key("context_length", 0))

    @property
    def sliding_window(self) -> int:
        return int(self._arch_key("attention.sliding_window", 0) or 0)

    @property
    def chat_template(self) -> str | None:
        value = self.metadata.get("tokenizer.chat_template")
        return str(value) if value else None

    @property
    def weights_bytes(self) -> int:
        return sum(t.n_bytes for t in self.tensors)

    @property
    def n_params(self) -> int:
        """Parameters: the elements of every tensor in the file."""
        return sum(t.n_elements for t in self.tensors)


def _read(fh: BinaryIO, fmt: str) -> Any:
    size = struct.calcsize(fmt)
    data = fh.read(size)
    if len(data) != size:
        raise EOFError("unexpected end of file")
    return struct.unpack(fmt, data)[0]


def _remaining(fh: BinaryIO) -> int:
    """Bytes left after the read position: no length field may promise more than this."""
    return os.fstat(fh.fileno()).st_size - fh.tell()


def _read_str(fh: BinaryIO) -> str:
    n = _read(fh, "<Q")
    if n > 1 << 26:
        raise ValueError(f"string of {n} bytes")
    if n > _remaining(fh):
        raise EOFError(f"a string of {n} bytes runs past the end of the file")
    data = fh.read(n)
    if len(data) != n:
        raise EOFError("unexpected end of file")
    return data.decode("utf-8", errors="replace")


def _read_value(fh: BinaryIO, vtype: int, depth: int = 0) -> Any:
    if vtype in _SCALAR:
        return _read(fh, _SCALAR[vtype])
    if vtype == _STRING:
        return _read_str(fh)
    if vtype == _ARRAY:
        if depth >= _MAX_NESTING:
            raise ValueError(f"arrays nested more than {_MAX_NESTING} deep")
        itype = _read(fh, "<I")
        n = _read(fh, "<Q")
        if n > _ARRAY_KEEP:
            # Skip the bulk (vocabularies) without decoding it.
            if itype in _SCALAR:
                size = n * struct.calcsize(_SCALAR[itype])
                if size > _remaining(fh):
                    raise EOFError(f"an array of {n} values runs past the end of the file")
                fh.seek(size, 1)
            else:
                for _ in range(n):
                    _read_value(fh, itype, depth + 1)
            return {"array_len": n}
        return [_read_value(fh, itype, depth + 1) for _ in range(n)]
    raise ValueError(f"unknown GGUF value type {vtype}")


def read_gguf(path: str | Path) -> GgufInfo:
    """Parse the header of a GGUF file. Raises ModelNotFoundError / ModelFormatError."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise ModelNotFoundError(str(p))
    try:
        with p.open("rb") as fh:
            if fh.read(4) != GGUF_MAGIC:
                raise ModelFormatError(str(p), "no GGUF magic at the start")
            version = _read(fh, "<I")
            if version not in (2, 3):
                raise ModelFormatError(str(p), f"GGUF version {version} is not supported")
            n_tensors = _read(fh, "<Q")
            n_kv = _read(fh, "<Q")
            metadata: dict[str, Any] = {}
            for _ in range(n_kv):
                key = _read_str(fh)
                vtype = _read(fh, "<I")
                metadata[key] = _read_value(fh, vtype)
            tensors = []
            for _ in range(n_tensors):
                name = _read_str(fh)
                n_dims = _read(fh, "<I")
                shape = tuple(_read(fh, "<Q") for _ in range(n_dims))
                ggml_type = _read(fh, "<I")
                offset = _read(fh, "<Q")
                tensors.append(TensorInfo(name, shape, ggml_type, offset))
    except (EOFError, ValueError, struct.error, UnicodeDecodeError) as exc:
        raise ModelFormatError(str(p), f"corrupt header: {exc}") from exc
    except OSError as exc:
        raise ModelFormatError(str(p), f"cannot be read ({exc.strerror or exc})") from exc
    return GgufInfo(p, version, metadata, tuple(tensors), p.stat().st_size)
