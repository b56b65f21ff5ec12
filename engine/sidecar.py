"""D2 sidecar files, format v1: the per-(layer, KV head) orthonormal bases U of K and V.

Reads the published files unchanged and writes ours in the same layout (little-endian):

* V basis (``sidecar_real_u_*.bin``): 8 × int32 header ``0x46524151`` ("FRAQ"), version 1,
  n_layers, n_kv_heads, head_dim, protect (informational), 0, 0; then fp16 U[layer][head][d][c].
* K basis (``*.fraqtl-k-eigenbasis.bin``): header ``0x4B514152`` ("RAQK"), version 1, n_layers,
  n_kv_heads, head_dim, 0, 0, 0; then int32 rank[layer·head]; then fp16 U[layer][head][d][c].

U is row-major with d (input dimension) first and c (eigen index, by decreasing variance)
second, so coefficients are ``x @ U`` and the reconstruction is ``c @ U.T``. Our sidecars also
carry a JSON manifest (:data:`MANIFEST_NAME`) beside them; :func:`find_sidecars` finds a
model's pair by its sha256. Every defect raises :class:`SidecarFormatError` or
:class:`SidecarMismatchError` naming the file. This module never loads a model and never
imports the app.
"""

from __future__ import annotations

import dataclasses
import json
import os
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np

from engine import locations
from engine.errors import SidecarChecksumError, SidecarFormatError, SidecarMismatchError, SidecarNotOrthonormalError
from engine.files import sha256_file, write_atomic
from engine.gguf import GgufInfo

V_MAGIC = 0x46524151  # "FRAQ"
K_MAGIC = 0x4B514152  # "RAQK"
FORMAT_VERSION = 1
HEADER = struct.Struct("<8i")
MIN_RANK = 8
#: largest head_dim we accept; guards against allocating gigabytes for a garbage header
MAX_HEAD_DIM = 1024
#: max |UᵀU − I| accepted on read; fp16 storage of an orthonormal basis stays below ~2e-3
ORTHONORMAL_TOL = 2e-2
MANIFEST_NAME = "fraqtl-sidecars.json"
MANIFEST_FORMAT = "fraqtl-sidecars/1"

Kind = Literal["k", "v"]


@dataclasses.dataclass(frozen=True, eq=False)
class SidecarFile:
    """One sidecar: the bases of K or of V for every (layer, KV head) of a model.

    ``basis`` is float32 ``[n_layers, n_kv_heads, head_dim, head_dim]`` (U[d][c]);
    ``ranks`` is int32 ``[n_layers, n_kv_heads]`` for K files, ``None`` for V files.
    ``protect`` is the V header's informational protected rank (0 for K files).
    """

    kind: Kind
    basis: np.ndarray
    ranks: np.ndarray | None = None
    protect: int = 0
    path: Path | None = None

    def __post_init__(self) -> None:
        basis = np.array(self.basis, dtype=np.float32, order="C", copy=True)
        if basis.ndim != 4 or basis.shape[2] != basis.shape[3]:
            raise ValueError(f"basis must be [layers, heads, d, d], got {basis.shape}")
        basis.setflags(write=False)
        object.__setattr__(self, "basis", basis)
        if self.kind not in ("k", "v"):
            raise ValueError(f"kind must be 'k' or 'v', got {self.kind!r}")
        if self.kind == "k":
            if self.ranks is None:
                raise ValueError("a K sidecar needs ranks")
            ranks = np.array(self.ranks, dtype=np.int32, copy=True).reshape(basis.shape[:2])
            ranks.setflags(write=False)
            object.__setattr__(self, "ranks", ranks)
        elif self.ranks is not None:
            raise ValueError("a V sidecar has no ranks (its header carries `protect`)")

    @property
    def n_layers(self) -> int:
        return int(self.basis.shape[0])

    @property
    def n_kv_heads(self) -> int:
        return int(self.basis.shape[1])

    @property
    def head_dim(self) -> int:
        return int(self.basis.shape[2])

    @property
    def magic(self) -> int:
        return K_MAGIC if self.kind == "k" else V_MAGIC

    @property
    def n_bytes(self) -> int:
        return file_size(self.kind, self.n_layers, self.n_kv_heads, self.head_dim)

    def rank(self, layer: int, head: int) -> int:
        """Protected directions of (layer, head): the K rank, or V's header ``protect``."""
        if self.ranks is not None:
            return int(self.ranks[layer, head])
        return self.protect

    def orthonormality_errors(self) -> np.ndarray:
        """max |UᵀU − I| per (layer, head), float64 ``[n_layers, n_kv_heads]``."""
        u = self.basis.astype(np.float64)
        gram = np.swapaxes(u, -1, -2) @ u  # batched BLAS: under a second for Mistral-7B's 256 heads of 128
        return np.abs(gram - np.eye(self.head_dim)).max(axis=(2, 3))

    def orthonormality_error(self) -> float:
        """max over (layer, head) of max |UᵀU − I|."""
        return float(self.orthonormality_errors().max())

    def check_orthonormal(self, tolerance: float = ORTHONORMAL_TOL) -> None:
        """Raise SidecarNotOrthonormalError naming the worst (layer, head) beyond ``tolerance``."""
        errors = self.orthonormality_errors()
        layer, head = (int(i) for i in np.unravel_index(int(np.argmax(errors)), errors.shape))
        worst = float(errors[layer, head])
        if not worst <= tolerance:  # NaN counts as a failure
            where = str(self.path) if self.path else f"({self.kind.upper()} basis)"
            raise SidecarNotOrthonormalError(where, layer, head, worst, tolerance)

    def check_model(self, model: GgufInfo) -> None:
        """Raise SidecarMismatchError when this sidecar does not fit ``model``'s KV cache."""
        head_dim = model.head_dim_k if self.kind == "k" else model.head_dim_v
        where = str(self.path) if self.path else f"({self.kind.upper()} basis)"
        for field, expected, found in (
            ("n_layers", model.n_layer, self.n_layers),
            ("n_kv_heads", model.n_head_kv, self.n_kv_heads),
            ("head_dim", head_dim, self.head_dim),
        ):
            if expected != found:
                raise SidecarMismatchError(where, field, expected, found)


def file_size(kind: Kind, n_layers: int, n_kv_heads: int, head_dim: int) -> int:
    """Exact size in bytes of a v1 sidecar with these dims."""
    ranks = 4 * n_layers * n_kv_heads if kind == "k" else 0
    return HEADER.size + ranks + 2 * n_layers * n_kv_heads * head_dim * head_dim


def _kind_name(kind: Kind) -> str:
    return "K (RAQK)" if kind == "k" else "V (FRAQ)"


def read_sidecar(
    path: str | Path,
    kind: Kind | None = None,
    model: GgufInfo | None = None,
    check_orthonormal: bool = True,
) -> SidecarFile:
    """Read and validate a v1 sidecar; ``kind`` and ``model``, when given, must match.

    The header is read and checked against the file's size (and the model's dims) before any
    of the payload is read, so a large wrong file costs 32 bytes of reading, not its size.
    """
    p = Path(path)
    try:
        with p.open("rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            head = fh.read(HEADER.size)
            if len(head) < HEADER.size:
                raise SidecarFormatError(str(p), f"short file: {len(head)} bytes, the header alone needs {HEADER.size}")
            found_kind, n_layers, n_heads, head_dim, f5 = _parse_header(p, head, kind)
            if model is not None:
                _check_dims(p, found_kind, n_layers, n_heads, head_dim, model)
            expected = file_size(found_kind, n_layers, n_heads, head_dim)
            if size < expected:
                raise SidecarFormatError(
                    str(p), f"truncated (short file: {size} bytes, {n_layers}×{n_heads}×{head_dim}² needs {expected})"
                )
            if size > expected:
                raise SidecarFormatError(
                    str(p), f"{size - expected} trailing bytes after the {expected} bytes of {n_layers}×{n_heads}×{head_dim}²"
                )
            payload = fh.read(expected - HEADER.size)
    except OSError as exc:
        raise SidecarFormatError(str(p), f"cannot be read ({exc.strerror or exc})") from exc
    if len(payload) != expected - HEADER.size:  # the file shrank while we read it
        raise SidecarFormatError(str(p), f"short read: {HEADER.size + len(payload)} of {expected} bytes")
    offset = 0
    ranks = None
    if found_kind == "k":
        ranks = np.frombuffer(payload, dtype="<i4", count=n_layers * n_heads, offset=offset).reshape(n_layers, n_heads)
        offset += ranks.nbytes
        bad = np.argwhere((ranks < MIN_RANK) | (ranks > head_dim))
        if bad.size:
            layer, head = (int(i) for i in bad[0])
            raise SidecarFormatError(
                str(p), f"rank {int(ranks[layer, head])} of layer {layer} head {head} is outside [{MIN_RANK}, {head_dim}]"
            )
    basis16 = np.frombuffer(payload, dtype="<f2", offset=offset).reshape(n_layers, n_heads, head_dim, head_dim)
    finite = np.isfinite(basis16).all(axis=(2, 3))
    if not finite.all():
        layer, head = (int(i) for i in np.argwhere(~finite)[0])
        n_bad = int((~np.isfinite(basis16)).sum())
        raise SidecarFormatError(str(p), f"{n_bad} non-finite values, the first in layer {layer} head {head}")
    sidecar = SidecarFile(
        kind=found_kind,
        basis=basis16.astype(np.float32),
        ranks=None if ranks is None else ranks.copy(),
        protect=int(f5) if found_kind == "v" else 0,
        path=p,
    )
    if check_orthonormal:
        sidecar.check_orthonormal()
    return sidecar


def _parse_header(p: Path, head: bytes, kind: Kind | None) -> tuple[Kind, int, int, int, int]:
    """(kind, n_layers, n_kv_heads, head_dim, field 5) from a header, each checked."""
    magic, version, n_layers, n_heads, head_dim, f5, _f6, _f7 = HEADER.unpack_from(head)
    magic &= 0xFFFFFFFF
    if magic == K_MAGIC:
        found_kind: Kind = "k"
    elif magic == V_MAGIC:
        found_kind = "v"
    else:
        raise SidecarFormatError(
            str(p), f"wrong magic 0x{magic:08X}, expected 0x{K_MAGIC:08X} (K, RAQK) or 0x{V_MAGIC:08X} (V, FRAQ)"
        )
    if kind is not None and found_kind != kind:
        raise SidecarFormatError(str(p), f"it is a {_kind_name(found_kind)} basis where a {_kind_name(kind)} basis is needed")
    if version != FORMAT_VERSION:
        raise SidecarFormatError(str(p), f"format version {version}, only version {FORMAT_VERSION} is supported")
    for field, value, high in (("n_layers", n_layers, 4096), ("n_kv_heads", n_heads, 4096),
                               ("head_dim", head_dim, MAX_HEAD_DIM)):
        if not 0 < value <= high:
            raise SidecarFormatError(str(p), f"header {field} is {value}, expected 1..{high}")
    return found_kind, n_layers, n_heads, head_dim, f5


def _check_dims(p: Path, kind: Kind, n_layers: int, n_heads: int, head_dim: int, model: GgufInfo) -> None:
    expected_hd = model.head_dim_k if kind == "k" else model.head_dim_v
    for field, expected, found in (("n_layers", model.n_layer, n_layers), ("n_kv_heads", model.n_head_kv, n_heads),
                                   ("head_dim", expected_hd, head_dim)):
        if expected != found:
            raise SidecarMismatchError(str(p), field, expected, found)


def sidecar_bytes(sidecar: SidecarFile) -> bytes:
    """The v1 file image of ``sidecar``."""
    with np.errstate(over="ignore"):
        basis16 = sidecar.basis.astype("<f2")
    if not np.isfinite(basis16).all():
        raise ValueError("the basis has values that are not finite in fp16")
    if sidecar.kind == "k":
        assert sidecar.ranks is not None
        if sidecar.ranks.min() < MIN_RANK or sidecar.ranks.max() > sidecar.head_dim:
            raise ValueError(f"K ranks must lie in [{MIN_RANK}, {sidecar.head_dim}]")
        header = HEADER.pack(K_MAGIC, FORMAT_VERSION, sidecar.n_layers, sidecar.n_kv_heads, sidecar.head_dim, 0, 0, 0)
        return header + sidecar.ranks.astype("<i4").tobytes() + basis16.tobytes()
    header = HEADER.pack(V_MAGIC, FORMAT_VERSION, sidecar.n_layers, sidecar.n_kv_heads, sidecar.head_dim,
                         sidecar.protect, 0, 0)
    return header + basis16.tobytes()


def write_sidecar(sidecar: SidecarFile, path: str | Path) -> Path:
    """Write ``sidecar`` in format v1, atomically; returns the path."""
    p = Path(path)
    write_atomic(p, sidecar_bytes(sidecar), mode=0o644)  # sidecars are meant to be shared
    return p


def default_file_names(stem: str) -> tuple[str, str]:
    """(K file, V file) names in the published naming scheme."""
    return f"{stem}.fraqtl-k-eigenbasis.bin", f"sidecar_real_u_{stem}.bin"


# ---------------------------------------------------------------------------------- controls


def random_orthonormal(n_layers: int, n_kv_heads: int, head_dim: int, seed: int = 0) -> np.ndarray:
    """Haar-random orthonormal bases [L, H, d, d] (QR of a Gaussian with the sign fixed)."""
    rng = np.random.default_rng(seed)
    g = rng.standard_normal((n_layers, n_kv_heads, head_dim, head_dim))
    q, r = np.linalg.qr(g)
    signs = np.sign(np.diagonal(r, axis1=-2, axis2=-1))
    signs[signs == 0] = 1.0
    return (q * signs[..., None, :]).astype(np.float32)


def control_sidecar(
    kind: Kind, n_layers: int, n_kv_heads: int, head_dim: int, rank: int,
    basis: Literal["random", "identity"] = "random", seed: int = 0,
) -> SidecarFile:
    """A control sidecar for tests of the D2 cache: random orthonormal or identity bases.

    ``rank`` is every K head's rank, or the V header's ``protect``.
    """
    if basis == "identity":
        u = np.broadcast_to(np.eye(head_dim, dtype=np.float32), (n_layers, n_kv_heads, head_dim, head_dim))
    elif basis == "random":
        u = random_orthonormal(n_layers, n_kv_heads, head_dim, seed)
    else:
        raise ValueError(f"basis must be 'random' or 'identity', got {basis!r}")
    if kind == "k":
        return SidecarFile("k", u, ranks=np.full((n_layers, n_kv_heads), rank, dtype=np.int32))
    return SidecarFile("v", u, protect=rank)


def control_sidecars_for(
    model: GgufInfo, k_rank: int, v_protect: int, basis: Literal["random", "identity"] = "random", seed: int = 0,
) -> tuple[SidecarFile, SidecarFile]:
    """(K, V) control sidecars shaped for ``model``."""
    k = control_sidecar("k", model.n_layer, model.n_head_kv, model.head_dim_k, k_rank, basis, seed)
    v = control_sidecar("v", model.n_layer, model.n_head_kv, model.head_dim_v, v_protect, basis, seed + 1)
    return k, v


# ---------------------------------------------------------------------------------- manifest


@dataclasses.dataclass(frozen=True)
class SidecarManifest:
    """The JSON manifest beside a calibrated (K, V) pair; ``data`` is the whole document."""

    path: Path
    model_sha256: str
    k_file: str
    v_file: str
    data: dict[str, Any]

    @property
    def k_path(self) -> Path:
        return self.path.parent / self.k_file

    @property
    def v_path(self) -> Path:
        return self.path.parent / self.v_file


def write_manifest(path: str | Path, data: dict[str, Any]) -> Path:
    p = Path(path)
    write_atomic(p, json.dumps(data, indent=2, sort_keys=False) + "\n", mode=0o644)
    return p


def read_manifest(path: str | Path) -> SidecarManifest:
    """Read a manifest; raises SidecarFormatError when it is not one of ours."""
    p = Path(path)
    try:
        data = json.loads(p.read_text())
    except (OSError, ValueError) as exc:
        raise SidecarFormatError(str(p), f"the manifest cannot be read as JSON ({exc})") from exc
    if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT:
        raise SidecarFormatError(str(p), f"not a {MANIFEST_FORMAT} manifest")
    try:
        sha = str(data["model"]["sha256"])
        k_file, v_file = str(data["files"]["k"]), str(data["files"]["v"])
    except (KeyError, TypeError) as exc:
        raise SidecarFormatError(str(p), f"the manifest lacks {exc}") from exc
    for name in (k_file, v_file):
        if Path(name).name != name:
            raise SidecarFormatError(str(p), f"file {name!r} must sit beside the manifest")
    return SidecarManifest(p, sha, k_file, v_file, data)


def verify_checksums(manifest: SidecarManifest) -> None:
    """Check the K and V files against the manifest's ``k_sha256``/``v_sha256`` (where recorded)."""
    files = manifest.data.get("files") or {}
    for which, path in (("k", manifest.k_path), ("v", manifest.v_path)):
        expected = files.get(f"{which}_sha256")
        if not expected:
            continue
        found = sha256_file(path)
        if found != str(expected).lower():
            raise SidecarChecksumError(str(path), str(manifest.path), str(expected), found)


def sidecar_origin(path: str | Path) -> str:
    """Which folder supplied a sidecar: the user data dir, the shipped ``sidecars/`` folder, or another path."""
    p = Path(path).resolve()
    for root, name in ((locations.SIDECARS_DIR, "shipped sidecars/ folder"),
                       (locations.data_dir() / "sidecars", "user data dir")):
        if p.is_relative_to(root.resolve()):
            return f"{name} ({root})"
    return f"other path ({p.parent})"


def calibration_names(model_sha256: str, dirs: list[Path] | None = None) -> list[str]:
    """The folder names of the calibrations found for this model (what ``d2#<name>`` accepts)."""
    names = []
    for root in dirs if dirs is not None else sidecar_dirs():
        for path in _manifests(root):
            try:
                if read_manifest(path).model_sha256 == model_sha256:
                    names.append(path.parent.name)
            except SidecarFormatError:
                continue
    return names


def sidecar_dirs() -> list[Path]:
    """Where calibrated sidecars are looked for: the user's own first, then the shipped ones."""
    return [locations.data_dir() / "sidecars", locations.SIDECARS_DIR]


def _manifests(root: Path) -> Iterator[Path]:
    if not root.is_dir():
        return
    yield from sorted(root.glob(MANIFEST_NAME))
    yield from sorted(root.glob(f"*/{MANIFEST_NAME}"))


def find_sidecars(model_sha256: str, dirs: list[Path] | None = None,
                  name: str | None = None) -> tuple[Path, Path, SidecarManifest] | None:
    """(K path, V path, manifest) of the sidecars calibrated for the model with this sha256.

    Looks in :func:`sidecar_dirs` (or ``dirs``), a folder per calibration (only the folder
    called ``name`` when given); manifests that do not parse and pairs whose files are missing
    are skipped. The pair found is checked against the manifest's sha256 fields: a changed file
    raises SidecarChecksumError, never loads.
    """
    for root in dirs if dirs is not None else sidecar_dirs():
        for path in _manifests(root):
            if name is not None and path.parent.name != name:
                continue
            try:
                manifest = read_manifest(path)
            except SidecarFormatError:
                continue
            if manifest.model_sha256 == model_sha256 and manifest.k_path.is_file() and manifest.v_path.is_file():
                verify_checksums(manifest)
                return manifest.k_path, manifest.v_path, manifest
    return None


def load_sidecars(
    k_path: str | Path, v_path: str | Path, model: GgufInfo | None = None
) -> tuple[SidecarFile, SidecarFile]:
    """Read and validate a (K, V) pair, checking both against ``model`` when given."""
    return read_sidecar(k_path, "k", model), read_sidecar(v_path, "v", model)
