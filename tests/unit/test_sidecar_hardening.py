"""Issue 13: the sidecar reader bounds its reads, names a non-orthonormal head, checks the manifest's
sha256 fields; the runtime refuses such files before llama.cpp sees them; receipts say which folder
supplied the sidecars."""

from __future__ import annotations

import json
import os
import shutil
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from engine import locations
from engine import sidecar as sc
from engine.d2 import D2Settings
from engine.errors import ArmUnavailableError, SidecarChecksumError, SidecarFormatError, SidecarNotOrthonormalError
from engine.files import sha256_file
from tests.unit.test_sidecar import fake_model, published_bytes

L, H, D = 3, 2, 16


def test_large_wrong_file_is_rejected_from_its_header(tmp_path: Path) -> None:
    # a valid V header for a tiny basis, followed by 256 MiB (sparse) of anything
    good = published_bytes("v", sc.random_orthonormal(L, H, D))
    path = tmp_path / "huge.bin"
    path.write_bytes(good)
    os.truncate(path, 256 << 20)
    tracemalloc.start()
    try:
        with pytest.raises(SidecarFormatError, match="trailing bytes"):
            sc.read_sidecar(path, "v")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20, f"read {peak / 2**20:.0f} MiB of a file its header says is {len(good)} bytes"


def test_model_mismatch_is_found_before_the_payload_is_read(tmp_path: Path) -> None:
    path = tmp_path / "big.bin"
    path.write_bytes(published_bytes("v", sc.random_orthonormal(L, H, D)))
    os.truncate(path, 64 << 20)  # wrong size too: the dims are checked against the model first
    with pytest.raises(Exception, match="n_layers is 3, the model has 5"):
        sc.read_sidecar(path, "v", fake_model(n_layer=5))


def test_non_orthonormal_head_is_named(tmp_path: Path) -> None:
    basis = sc.random_orthonormal(L, H, D, seed=3)
    basis[2, 1] *= 1.05  # finite, plausible, and wrong: |UᵀU − I| ≈ 0.1
    path = tmp_path / "sidecar_real_u_bad.bin"
    path.write_bytes(published_bytes("v", basis))
    with pytest.raises(SidecarNotOrthonormalError) as info:
        sc.read_sidecar(path, "v")
    err = info.value
    assert (err.layer, err.head) == (2, 1) and err.error > sc.ORTHONORMAL_TOL
    assert str(path) in str(err) and "layer 2 head 1" in str(err)
    assert isinstance(err, SidecarFormatError)  # callers that catch format errors still catch it


def test_fp16_rounding_of_a_good_basis_passes(tmp_path: Path) -> None:
    path = tmp_path / "ok.bin"
    path.write_bytes(published_bytes("v", sc.random_orthonormal(2, 2, 128, seed=1)))
    back = sc.read_sidecar(path, "v")
    assert back.orthonormality_error() < 5e-3 < sc.ORTHONORMAL_TOL


def test_runtime_refuses_a_non_orthonormal_sidecar_before_llama_cpp(tmp_path: Path) -> None:
    k = sc.random_orthonormal(L, H, D, seed=1)
    v = sc.random_orthonormal(L, H, D, seed=2)
    v[0, 1, :, 3] *= 0.9
    k_path, v_path = tmp_path / "k.bin", tmp_path / "v.bin"
    k_path.write_bytes(published_bytes("k", k, ranks=np.full((L, H), 8)))
    v_path.write_bytes(published_bytes("v", v))
    settings = D2Settings(k_sidecar=k_path, v_sidecar=v_path)
    with pytest.raises(SidecarNotOrthonormalError, match="layer 0 head 1"):
        settings.check_files(fake_model())
    D2Settings(basis="random").check_files(fake_model())  # a control basis has no files to check


def test_runtime_checks_sidecars_at_load(tmp_path: Path) -> None:
    from engine.gguf import read_gguf
    from engine.models import resolve
    from engine.runtime import Runtime

    info = read_gguf(resolve(None))
    k, v = sc.control_sidecars_for(info, 16, 16)
    bad_v = sc.SidecarFile("v", v.basis * np.float32(1.1), protect=16)
    k_path = sc.write_sidecar(k, tmp_path / "k.bin")
    v_path = sc.write_sidecar(bad_v, tmp_path / "v.bin")
    with pytest.raises(ArmUnavailableError) as err:
        Runtime(info.path, "d2", n_ctx=256, n_gpu_layers=0, d2=D2Settings(k_sidecar=k_path, v_sidecar=v_path))
    assert isinstance(err.value.__cause__, SidecarNotOrthonormalError)
    assert str(v_path) in str(err.value) and "not orthonormal" in str(err.value)


def _calibrated_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "cal"
    folder.mkdir()
    k = sc.write_sidecar(sc.SidecarFile("k", sc.random_orthonormal(L, H, D), ranks=np.full((L, H), 8)),
                         folder / "m.fraqtl-k-eigenbasis.bin")
    v = sc.write_sidecar(sc.SidecarFile("v", sc.random_orthonormal(L, H, D, seed=1), protect=8),
                         folder / "sidecar_real_u_m.bin")
    sc.write_manifest(folder / sc.MANIFEST_NAME, {
        "format": sc.MANIFEST_FORMAT, "model": {"sha256": "ab" * 32},
        "files": {"k": k.name, "v": v.name, "k_sha256": sha256_file(k), "v_sha256": sha256_file(v)},
    })
    return folder


def test_manifest_checksums_are_verified(tmp_path: Path) -> None:
    folder = _calibrated_folder(tmp_path)
    found = sc.find_sidecars("ab" * 32, [tmp_path])
    assert found is not None and found[0].parent == folder
    v = folder / "sidecar_real_u_m.bin"
    data = bytearray(v.read_bytes())
    data[-1] ^= 0x01  # one flipped bit: still finite, still nearly orthonormal
    v.write_bytes(bytes(data))
    with pytest.raises(SidecarChecksumError) as info:
        sc.find_sidecars("ab" * 32, [tmp_path])
    assert info.value.path == str(v) and "manifest" in str(info.value)


def test_shipped_manifest_matches_its_files() -> None:
    for manifest_path in locations.SIDECARS_DIR.glob(f"*/{sc.MANIFEST_NAME}"):
        sc.verify_checksums(sc.read_manifest(manifest_path))


def test_sidecar_origin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FRAQTL_DATA_DIR", str(tmp_path / "data"))
    user = tmp_path / "data" / "sidecars" / "m"
    user.mkdir(parents=True)
    assert sc.sidecar_origin(user / "k.bin").startswith("user data dir")
    assert sc.sidecar_origin(locations.SIDECARS_DIR / "x" / "k.bin").startswith("shipped sidecars/ folder")
    assert sc.sidecar_origin(tmp_path / "elsewhere.bin").startswith("other path")


def test_worker_records_sidecars_and_controls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from bench.worker import sidecar_record

    monkeypatch.setenv("FRAQTL_DATA_DIR", str(tmp_path / "data"))
    shipped = next(locations.SIDECARS_DIR.glob(f"*/{sc.MANIFEST_NAME}"))
    manifest = sc.read_manifest(shipped)
    record = sidecar_record(D2Settings(k_sidecar=manifest.k_path, v_sidecar=manifest.v_path))
    assert record["control"] is False and record["source"].startswith("shipped sidecars/ folder")
    assert record["files"] == {str(manifest.k_path): manifest.data["files"]["k_sha256"],
                               str(manifest.v_path): manifest.data["files"]["v_sha256"]}
    # the same files copied into the user data dir say so
    user = tmp_path / "data" / "sidecars" / "copy"
    shutil.copytree(shipped.parent, user)
    record = sidecar_record(D2Settings(k_sidecar=user / manifest.k_file, v_sidecar=user / manifest.v_file))
    assert record["source"].startswith("user data dir")
    control = sidecar_record(D2Settings(basis="random", seed=5))
    assert control["control"] is True and control["seed"] == 5 and "control" in control["note"]
    assert sidecar_record(None) == {}
    json.dumps(record)  # goes into a receipt as is
