"""The engine build pipeline: the pinned sdist, the patch series, the wheel cache.

These run against the real pinned sdist (fetched once into the build cache by `make setup`)
and the installed wheel; nothing here recompiles llama.cpp.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from engine import build, locations


@pytest.fixture(scope="module")
def sdist() -> Path:
    pin = build.Pin.load()
    path = locations.cache_dir() / "sdists" / pin.sdist
    if not path.exists():
        build.fetch_sdist(pin, build.Progress())
    return path


def test_pin_names_the_vendored_commit() -> None:
    pin = build.Pin.load()
    assert (pin.package, pin.version, pin.llama_cpp_commit) == ("llama-cpp-python", "0.3.36", "0c1e570")
    assert len(pin.sha256) == 64


def test_sdist_matches_its_pinned_sha256(sdist: Path) -> None:
    assert build.sha256_file(sdist) == build.Pin.load().sha256


def test_patch_series_applies_cleanly_to_the_pinned_sdist(sdist: Path, tmp_path: Path) -> None:
    tree = build.unpack_sdist(sdist, tmp_path)
    assert not (tree / ".git").exists() and not (tree / "vendor/llama.cpp/.git").exists()
    patches = build.patch_files()
    assert [p.name[:4] for p in patches] == ["0001", "0002", "0003", "0004", "0005", "0006", "0007"]
    d2_ids = {"GGML_TYPE_D2_P8": 43, "GGML_TYPE_D2_P16": 44, "GGML_TYPE_D2_P32": 45,
              "GGML_TYPE_D2_P8B2": 46, "GGML_TYPE_D2_P16B2": 47, "GGML_TYPE_D2_P32B2": 48,
              "GGML_TYPE_D2_P8I8": 49, "GGML_TYPE_D2_P16I8": 50, "GGML_TYPE_D2_P32I8": 51}
    assert build.check_type_ids(tree, patched=False) == d2_ids  # upstream's enum stops below ours
    build.apply_patches(tree, patches, build.Progress())
    build.copy_our_sources(tree)
    assert build.check_type_ids(tree, patched=True) == d2_ids  # unique, COUNT one past the last
    header = (tree / "vendor/llama.cpp/include/llama.h").read_text()
    assert "const struct llama_fraqtl_params * fraqtl;" in header
    assert (tree / "vendor/llama.cpp/src/llama-fraqtl-kv.cpp").exists()
    assert (tree / "vendor/llama.cpp/ggml/src/ggml-fraqtl.c").exists()
    # the CPU's D2 decode is our own file, named in the ggml-cpu backend's source list
    assert (tree / "vendor/llama.cpp/ggml/src/ggml-cpu/ggml-fraqtl-cpu.cpp").exists()
    assert "ggml-cpu/ggml-fraqtl-cpu.cpp" in (tree / "vendor/llama.cpp/ggml/src/ggml-cpu/CMakeLists.txt").read_text()
    # the RPC server is built from this same tree and installed beside the libraries it runs
    assert "llama_cpp_python_install_target(ggml-rpc-server)" in (tree / "CMakeLists.txt").read_text()
    assert "-DGGML_RPC=ON" in build.COMMON_CMAKE_ARGS
    # applying the series twice is a loud error, not a silent no-op
    with pytest.raises(build.BuildError, match="does not apply"):
        build.apply_patches(tree, patches[:1], build.Progress())


def test_sync_tree_rewrites_only_changed_files(tmp_path: Path) -> None:
    fresh, stable = tmp_path / "fresh", tmp_path / "stable"
    for root in (fresh, stable):
        (root / "d").mkdir(parents=True)
    (fresh / "d" / "same.c").write_text("same")
    (stable / "d" / "same.c").write_text("same")
    (fresh / "d" / "new.c").write_text("new")
    (stable / "d" / "gone.c").write_text("gone")
    before = (stable / "d" / "same.c").stat().st_mtime_ns
    time.sleep(0.01)
    assert build.sync_tree(fresh, stable) == 2
    assert (stable / "d" / "same.c").stat().st_mtime_ns == before
    assert (stable / "d" / "new.c").read_text() == "new" and not (stable / "d" / "gone.c").exists()
    # a source edited while a build ran: its mtime predates the object built from its old bytes,
    # and the rewritten copy must still look newer than that object to ninja
    (fresh / "d" / "same.c").write_text("edited")
    os.utime(fresh / "d" / "same.c", ns=(before - 10**9, before - 10**9))
    assert build.sync_tree(fresh, stable) == 1
    assert (stable / "d" / "same.c").stat().st_mtime_ns > before


def test_installed_wheel_is_the_cached_one_and_is_reused() -> None:
    key = build.build_key(build.Pin.load(), build.make_plan("cpu", ""), build.series_hash())
    marker = json.loads((Path(sys.prefix) / build.MARKER_NAME).read_text())
    assert marker["key"] == key, "the installed llama_cpp was not built from this patch series"
    assert list((locations.cache_dir() / "wheels" / key).glob("*.whl"))
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "engine.build", "--backend", "cpu"],
                            capture_output=True, text=True, check=True)
    assert time.monotonic() - started < 30
    assert "nothing to do" in result.stderr.replace("\n", " ")


def test_cache_key_changes_with_the_series_and_backend() -> None:
    pin = build.Pin.load()
    cpu = build.build_key(pin, build.make_plan("cpu", ""), "a" * 64)
    assert cpu != build.build_key(pin, build.make_plan("cpu", ""), "b" * 64)
    assert cpu != build.build_key(pin, build.make_plan("cuda", "90"), "a" * 64)
    assert build.build_key(pin, build.make_plan("cuda", "90"), "a" * 64) != build.build_key(
        pin, build.make_plan("cuda", "89"), "a" * 64)


def test_export_source_is_small_and_rebuildable(tmp_path: Path) -> None:
    out = build.export_source(tmp_path / "src.tar.gz")
    assert out.stat().st_size < 10 * 1024 * 1024
    with tarfile.open(out) as tar:
        names = tar.getnames()
    top = names[0].split("/")[0]
    assert f"{top}/fraqtl-source.json" in names
    assert f"{top}/vendor/llama.cpp/src/llama-fraqtl-kv.cpp" in names
    assert f"{top}/vendor/llama.cpp/ggml/src/ggml-cpu/ggml-fraqtl-cpu.cpp" in names
    assert not any("/.git/" in n for n in names)


def test_patched_build_is_detected() -> None:
    assert build.patched_build_works()
    from engine.runtime import fraqtl_version

    assert fraqtl_version().startswith("fraqtl ")


def test_cuda_builds_link_their_own_cxx_runtime_on_linux(monkeypatch: pytest.MonkeyPatch) -> None:
    # the fix for the model-load crash that once needed LD_PRELOAD (see CUDA_LINUX_LINK_FLAGS)
    monkeypatch.setattr(sys, "platform", "linux")
    cuda = build.make_plan("cuda", "90").cmake_args
    assert f"-DCMAKE_SHARED_LINKER_FLAGS={build.CUDA_LINUX_LINK_FLAGS}" in cuda
    assert "-static-libstdc++" in build.CUDA_LINUX_LINK_FLAGS
    assert not any("SHARED_LINKER" in a for a in build.make_plan("cpu", "").cmake_args)
