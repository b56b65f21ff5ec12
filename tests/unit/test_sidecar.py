"""Sidecar format v1: round trips, the published layout, and every defect the reader must name."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest

from engine import sidecar as sc
from engine.errors import SidecarFormatError, SidecarMismatchError
from engine.gguf import GgufInfo

L, H, D = 3, 2, 16


def fake_model(n_layer: int = L, n_head_kv: int = H, head_dim: int = D) -> GgufInfo:
    meta = {
        "general.architecture": "llama",
        "llama.block_count": n_layer,
        "llama.attention.head_count": n_head_kv * 3,
        "llama.attention.head_count_kv": n_head_kv,
        "llama.embedding_length": n_head_kv * 3 * head_dim,
        "llama.attention.key_length": head_dim,
        "llama.attention.value_length": head_dim,
        "llama.context_length": 2048,
    }
    return GgufInfo(Path("fake.gguf"), 3, meta, (), 0)


def published_bytes(kind: str, basis: np.ndarray, ranks: np.ndarray | None = None, protect: int = 0,
                    magic: int | None = None, version: int = 1) -> bytes:
    """A file built by hand from the table in DESIGN.md, independent of the writer."""
    n_l, n_h, d, _ = basis.shape
    if kind == "k":
        head = struct.pack("<8i", magic or 0x4B514152, version, n_l, n_h, d, 0, 0, 0)
        return head + np.asarray(ranks, "<i4").tobytes() + basis.astype("<f2").tobytes()
    head = struct.pack("<8i", magic or 0x46524151, version, n_l, n_h, d, protect, 0, 0)
    return head + basis.astype("<f2").tobytes()


@pytest.fixture
def basis() -> np.ndarray:
    return sc.random_orthonormal(L, H, D, seed=7)


@pytest.fixture
def ranks() -> np.ndarray:
    return np.array([[8, 16], [16, 8], [D, 8]], dtype=np.int32)


def test_v_round_trip(tmp_path: Path, basis: np.ndarray) -> None:
    original = sc.SidecarFile("v", basis, protect=8)
    path = sc.write_sidecar(original, tmp_path / "sidecar_real_u_x.bin")
    assert path.stat().st_size == sc.file_size("v", L, H, D) == 32 + 2 * L * H * D * D
    back = sc.read_sidecar(path, "v", fake_model())
    assert (back.kind, back.n_layers, back.n_kv_heads, back.head_dim, back.protect) == ("v", L, H, D, 8)
    assert back.ranks is None and back.path == path
    np.testing.assert_array_equal(back.basis, basis.astype(np.float16).astype(np.float32))
    assert sc.sidecar_bytes(back) == path.read_bytes()


def test_k_round_trip(tmp_path: Path, basis: np.ndarray, ranks: np.ndarray) -> None:
    path = sc.write_sidecar(sc.SidecarFile("k", basis, ranks=ranks), tmp_path / "x.fraqtl-k-eigenbasis.bin")
    assert path.stat().st_size == 32 + 4 * L * H + 2 * L * H * D * D
    back = sc.read_sidecar(path, "k", fake_model())
    np.testing.assert_array_equal(back.ranks, ranks)
    assert back.rank(2, 0) == D and back.rank(0, 1) == 16
    assert back.orthonormality_error() < 1e-3
    assert not back.basis.flags.writeable


def test_reads_hand_built_published_layout(tmp_path: Path, ranks: np.ndarray) -> None:
    # each (layer, head) gets a distinct permutation so that the index order is pinned down
    u = np.zeros((L, H, D, D), dtype=np.float32)
    for layer in range(L):
        for head in range(H):
            perm = (np.arange(D) + layer * H + head) % D
            u[layer, head, np.arange(D), perm] = 1.0  # U[d][c] = 1 where c = perm[d]
    kpath, vpath = tmp_path / "m.fraqtl-k-eigenbasis.bin", tmp_path / "sidecar_real_u_m.bin"
    kpath.write_bytes(published_bytes("k", u, ranks))
    vpath.write_bytes(published_bytes("v", u, protect=16))
    k, v = sc.load_sidecars(kpath, vpath, fake_model())
    assert v.protect == 16 and k.protect == 0
    for layer in range(L):
        for head in range(H):
            shift = layer * H + head
            assert k.basis[layer, head, 0, shift % D] == 1.0  # row d=0 -> column c=shift
            assert v.basis[layer, head, 3, (3 + shift) % D] == 1.0
            assert k.rank(layer, head) == ranks[layer, head]
    # coefficients c = x·U, reconstruction x = c·Uᵀ
    x = np.arange(D, dtype=np.float32)
    c = x @ k.basis[1, 1]
    np.testing.assert_array_equal(c @ k.basis[1, 1].T, x)


def test_writer_matches_hand_built_bytes(tmp_path: Path, basis: np.ndarray, ranks: np.ndarray) -> None:
    assert sc.sidecar_bytes(sc.SidecarFile("k", basis, ranks=ranks)) == published_bytes("k", basis, ranks)
    assert sc.sidecar_bytes(sc.SidecarFile("v", basis, protect=24)) == published_bytes("v", basis, protect=24)


def _expect_format_error(path: Path, data: bytes, *fragments: str, **kwargs) -> SidecarFormatError:
    path.write_bytes(data)
    with pytest.raises(SidecarFormatError) as info:
        sc.read_sidecar(path, **kwargs)
    message = str(info.value)
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message, message
    return info.value


def test_short_header(tmp_path: Path) -> None:
    _expect_format_error(tmp_path / "a.bin", b"QARF\x01\x00", "short file", "6 bytes")


def test_short_payload(tmp_path: Path, basis: np.ndarray) -> None:
    data = published_bytes("v", basis)
    _expect_format_error(tmp_path / "a.bin", data[:-2], "short file", f"{len(data) - 2} bytes", str(len(data)))


def test_trailing_bytes(tmp_path: Path, basis: np.ndarray, ranks: np.ndarray) -> None:
    _expect_format_error(tmp_path / "a.bin", published_bytes("k", basis, ranks) + b"\0" * 5, "5 trailing bytes")


def test_wrong_magic(tmp_path: Path, basis: np.ndarray) -> None:
    _expect_format_error(tmp_path / "a.bin", published_bytes("v", basis, magic=0x12345678), "wrong magic 0x12345678")


def test_wrong_kind(tmp_path: Path, basis: np.ndarray) -> None:
    _expect_format_error(tmp_path / "a.bin", published_bytes("v", basis), "V (FRAQ) basis", "K (RAQK)", kind="k")


def test_wrong_version(tmp_path: Path, basis: np.ndarray) -> None:
    _expect_format_error(tmp_path / "a.bin", published_bytes("v", basis, version=2), "version 2")


def test_garbage_dims(tmp_path: Path) -> None:
    data = struct.pack("<8i", 0x46524151, 1, 2, 2, -64, 0, 0, 0)
    _expect_format_error(tmp_path / "a.bin", data, "head_dim is -64")


@pytest.mark.parametrize("bad_rank", [4, 0, D + 8])
def test_rank_out_of_range(tmp_path: Path, basis: np.ndarray, ranks: np.ndarray, bad_rank: int) -> None:
    bad = ranks.copy()
    bad[1, 1] = bad_rank
    _expect_format_error(tmp_path / "a.bin", published_bytes("k", basis, bad), f"rank {bad_rank}", "layer 1 head 1",
                         f"[8, {D}]")


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite(tmp_path: Path, basis: np.ndarray, value: float) -> None:
    bad = basis.copy()
    bad[2, 0, 3, 4] = value
    _expect_format_error(tmp_path / "a.bin", published_bytes("v", bad), "non-finite", "layer 2 head 0")


def test_not_orthonormal(tmp_path: Path, basis: np.ndarray) -> None:
    bad = basis.copy()
    bad[0, 1] *= 1.5
    _expect_format_error(tmp_path / "a.bin", published_bytes("v", bad), "not orthonormal")
    path = tmp_path / "b.bin"
    path.write_bytes(published_bytes("v", bad))
    assert sc.read_sidecar(path, check_orthonormal=False).n_layers == L  # opt-out for inspection


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SidecarFormatError, match="cannot be read"):
        sc.read_sidecar(tmp_path / "nope.bin")


@pytest.mark.parametrize(
    ("model", "field", "expected", "found"),
    [(fake_model(n_layer=L + 1), "n_layers", L + 1, L), (fake_model(n_head_kv=H * 2), "n_kv_heads", H * 2, H),
     (fake_model(head_dim=D * 2), "head_dim", D * 2, D)],
)
def test_model_mismatch(tmp_path: Path, basis: np.ndarray, ranks: np.ndarray, model: GgufInfo, field: str,
                        expected: int, found: int) -> None:
    path = tmp_path / "k.bin"
    path.write_bytes(published_bytes("k", basis, ranks))
    with pytest.raises(SidecarMismatchError) as info:
        sc.read_sidecar(path, "k", model)
    err = info.value
    assert (err.field, err.expected, err.found) == (field, expected, found)
    assert str(path) in str(err) and field in str(err)


def test_atomic_write_keeps_old_file_on_failure(tmp_path: Path, basis: np.ndarray) -> None:
    path = sc.write_sidecar(sc.SidecarFile("v", basis, protect=8), tmp_path / "v.bin")
    before = path.read_bytes()
    huge = basis.copy()
    huge[0, 0, 0, 0] = 1e6  # not representable in fp16: the writer refuses before touching the file
    with pytest.raises(ValueError):
        sc.write_sidecar(sc.SidecarFile("v", huge, protect=8), path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["v.bin"]  # no temp file left behind


def test_dataclass_rejects_bad_shapes(basis: np.ndarray) -> None:
    with pytest.raises(ValueError):
        sc.SidecarFile("k", basis)  # K needs ranks
    with pytest.raises(ValueError):
        sc.SidecarFile("v", basis, ranks=np.full((L, H), 8))
    with pytest.raises(ValueError):
        sc.SidecarFile("v", basis[..., :-1])


@pytest.mark.parametrize("kind_basis", ["random", "identity"])
def test_control_sidecars(tmp_path: Path, kind_basis: str) -> None:
    model = fake_model()
    k, v = sc.control_sidecars_for(model, k_rank=8, v_protect=16, basis=kind_basis, seed=3)
    kp = sc.write_sidecar(k, tmp_path / "k.bin")
    vp = sc.write_sidecar(v, tmp_path / "v.bin")
    k2, v2 = sc.load_sidecars(kp, vp, model)
    assert (k2.ranks == 8).all() and v2.protect == 16
    if kind_basis == "identity":
        np.testing.assert_array_equal(k2.basis, np.broadcast_to(np.eye(D), k2.basis.shape))
    else:
        assert not np.allclose(k2.basis[0, 0], k2.basis[0, 1])  # every head gets its own rotation
        assert k2.orthonormality_error() < 1e-3 and v2.orthonormality_error() < 1e-3


def _manifest(sha: str, k: str = "k.bin", v: str = "v.bin") -> dict:
    return {"format": sc.MANIFEST_FORMAT, "model": {"sha256": sha}, "files": {"k": k, "v": v}}


def test_find_sidecars_by_manifest(tmp_path: Path, basis: np.ndarray, ranks: np.ndarray) -> None:
    user, shipped = tmp_path / "user", tmp_path / "shipped"
    for root, name in ((shipped / "m", "shipped"), (user / "m", "user")):
        root.mkdir(parents=True)
        sc.write_sidecar(sc.SidecarFile("k", basis, ranks=ranks), root / "k.bin")
        sc.write_sidecar(sc.SidecarFile("v", basis, protect=8), root / "v.bin")
        sc.write_manifest(root / sc.MANIFEST_NAME, {**_manifest("aa" * 32), "who": name})
    (shipped / "broken").mkdir()
    (shipped / "broken" / sc.MANIFEST_NAME).write_text("{not json")
    (shipped / "other").mkdir()
    sc.write_manifest(shipped / "other" / sc.MANIFEST_NAME, _manifest("bb" * 32))  # files missing: skipped

    found = sc.find_sidecars("aa" * 32, [user, shipped])
    assert found is not None
    k_path, v_path, manifest = found
    assert manifest.data["who"] == "user"  # the user's own calibration wins
    assert k_path == user / "m" / "k.bin" and v_path == user / "m" / "v.bin"
    assert sc.find_sidecars("aa" * 32, [shipped])[2].data["who"] == "shipped"
    assert sc.find_sidecars("bb" * 32, [user, shipped]) is None
    assert sc.find_sidecars("cc" * 32, [user, shipped, tmp_path / "absent"]) is None


def test_manifest_validation(tmp_path: Path) -> None:
    path = tmp_path / sc.MANIFEST_NAME
    path.write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(SidecarFormatError, match="not a fraqtl-sidecars/1 manifest"):
        sc.read_manifest(path)
    path.write_text(json.dumps({"format": sc.MANIFEST_FORMAT, "model": {}}))
    with pytest.raises(SidecarFormatError, match="lacks"):
        sc.read_manifest(path)
    path.write_text(json.dumps(_manifest("aa", k="../k.bin")))
    with pytest.raises(SidecarFormatError, match="beside the manifest"):
        sc.read_manifest(path)


def test_default_search_dirs_include_shipped() -> None:
    from engine import locations

    assert locations.SIDECARS_DIR in sc.sidecar_dirs()
