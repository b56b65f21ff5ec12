"""Build llama-cpp-python with the fraqtl patch series, cached by what went into it.

``python -m engine.build`` fetches the pinned llama-cpp-python sdist with pip, checks its
sha256, unpacks the parts that build, applies ``engine/llama.cpp-fraqtl/patches`` in order
(failing loudly on a reject), copies our own sources from ``engine/llama.cpp-fraqtl/src``
into the tree, builds a wheel with scikit-build-core (CPU, or CUDA when asked or when nvcc
and a GPU are present) and installs it. Wheels are cached under the cache dir keyed by
(sdist sha256, patch series hash, backend, arch): a second run with nothing changed takes
seconds. The patched tree and the CMake build folder are kept, and only files whose content
changed are rewritten, so editing one of our sources rebuilds in seconds.

``export-source`` writes the patched, trimmed tree as a tar.gz for hosts with no network;
``--from-source TARBALL`` builds from such a tarball.

This module must never import the app, and never download anything but the pinned sdist
and the build requirements pip resolves from PyPI.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

from engine import ggml_types, locations
from engine.files import sha256_file

PIN_FILE = locations.ENGINE_SOURCE_DIR / "pin.json"
PATCH_DIR = locations.ENGINE_SOURCE_DIR / "patches"
OUR_SRC_DIR = locations.ENGINE_SOURCE_DIR / "src"
#: Where each folder of our own sources lands inside the sdist tree.
OUR_SRC_DEST = {
    "llama": "vendor/llama.cpp/src",
    "ggml": "vendor/llama.cpp/ggml/src",
    "ggml-cpu": "vendor/llama.cpp/ggml/src/ggml-cpu",
    "ggml-cuda": "vendor/llama.cpp/ggml/src/ggml-cuda",
}
MARKER_NAME = "fraqtl-llama-build.json"

# Parts of the sdist that are never compiled: skipping them keeps the tree (and the
# export tarball) small.
_SKIP_PARTS = (
    ".git",
    "vendor/llama.cpp/.git",
    "vendor/llama.cpp/docs",
    "vendor/llama.cpp/models",
    "vendor/llama.cpp/tests",
    "vendor/llama.cpp/examples",
    "vendor/llama.cpp/benches",
    "vendor/llama.cpp/media",
    "vendor/llama.cpp/gguf-py",
    "vendor/llama.cpp/pocs",
    "vendor/llama.cpp/skills",
    "vendor/llama.cpp/app",
    "vendor/llama.cpp/tools/ui",
    "vendor/llama.cpp/tools/server/public",
    "vendor/llama.cpp/tools/server/webui",
    "vendor/llama.cpp/ggml/src/ggml-vulkan",
    "vendor/llama.cpp/ggml/src/ggml-sycl",
    "vendor/llama.cpp/ggml/src/ggml-metal",
    "vendor/llama.cpp/ggml/src/ggml-opencl",
    "vendor/llama.cpp/ggml/src/ggml-cann",
    "vendor/llama.cpp/ggml/src/ggml-musa",
    "vendor/llama.cpp/ggml/src/ggml-webgpu",
    "vendor/llama.cpp/ggml/src/ggml-zdnn",
    "vendor/llama.cpp/ggml/src/ggml-hexagon",
    "vendor/llama.cpp/ggml/src/ggml-openvino",
    "vendor/llama.cpp/ggml/src/ggml-virtgpu",
    "docs",
    "tests",
    "examples",
    "docker",
)

COMMON_CMAKE_ARGS = (
    "-DLLAVA_BUILD=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_TOOLS=OFF",
    "-DLLAMA_BUILD_SERVER=OFF",
    "-DLLAMA_BUILD_APP=OFF",
    "-DLLAMA_CURL=OFF",
    "-DLLAMA_OPENSSL=OFF",
    # llama.cpp's RPC backend: layers on other hosts' rpc-server (built by patch 0007)
    "-DGGML_RPC=ON",
)


# The CUDA libraries carry their own C++ runtime, hidden. In a python that imported numpy first
# (the H200 image's), libstdc++ had bound some of its own symbols to numpy's exported copies, and
# a model load then crashed in it (rc 139) unless the system libstdc++ was preloaded; with these
# flags it loads without the preload (bench/h200.sh ldiag, receipts README, 2026-11-30).
CUDA_LINUX_LINK_FLAGS = "-static-libstdc++ -static-libgcc -Wl,--exclude-libs,ALL"


class BuildError(RuntimeError):
    """A build step failed; the message says which step and what to do."""


@dataclasses.dataclass(frozen=True)
class Pin:
    package: str
    version: str
    sdist: str
    sha256: str
    llama_cpp_commit: str

    @classmethod
    def load(cls, path: Path = PIN_FILE) -> Pin:
        return cls(**json.loads(path.read_text()))


@dataclasses.dataclass(frozen=True)
class BuildPlan:
    backend: str  # "cpu" | "cuda"
    cuda_arch: str  # "" for cpu
    cmake_args: tuple[str, ...]

    @property
    def label(self) -> str:
        return self.backend if self.backend == "cpu" else f"cuda-sm{self.cuda_arch}"


# --------------------------------------------------------------------------- hashing


def patch_files() -> list[Path]:
    return sorted(PATCH_DIR.glob("*.patch"))


def our_source_files() -> list[Path]:
    return sorted(p for p in OUR_SRC_DIR.rglob("*") if p.is_file())


def series_hash() -> str:
    """Hash of the patch series and our own sources: anything that changes the build."""
    digest = hashlib.sha256()
    for path in patch_files() + our_source_files():
        digest.update(str(path.relative_to(locations.ENGINE_SOURCE_DIR)).encode())
        digest.update(b"\0")
        digest.update(path.read_bytes())
        digest.update(b"\0")
    return digest.hexdigest()


def _host_cpu_tag() -> str:
    # GGML_NATIVE compiles for this CPU: a wheel built on another CPU may not run here.
    flags = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = line
                break
    except OSError:
        pass
    return hashlib.sha256((platform.machine() + flags).encode()).hexdigest()[:8]


def build_key(pin: Pin, plan: BuildPlan, source_hash: str) -> str:
    payload = json.dumps(
        {
            "sdist": pin.sha256,
            "series": source_hash,
            "backend": plan.backend,
            "arch": plan.cuda_arch,
            "cmake": list(plan.cmake_args),
            "host": _host_cpu_tag() if plan.backend == "cpu" else platform.machine(),
            "python": f"{sys.implementation.name}",
        },
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


# --------------------------------------------------------------------------- steps


class Progress:
    """Step-by-step progress on the terminal (rich), or plain lines when rich is absent.

    A client that draws a progress bar overrides :meth:`compiled`.
    """

    def __init__(self) -> None:
        try:
            from rich.console import Console

            self.console: object | None = Console(stderr=True)
        except ImportError:  # pragma: no cover - rich is a dependency
            self.console = None
        self.t0 = time.monotonic()
        self._last_compiled = 0.0

    def compiled(self, done: int, total: int) -> None:
        """ninja finished step ``done`` of ``total``; printed at most every 10 s."""
        now = time.monotonic()
        if now - self._last_compiled > 10:
            self._last_compiled = now
            self.step(f"  compiling {done}/{total} ({100 * done // max(total, 1)}%)")

    def step(self, text: str) -> None:
        stamp = f"[{time.monotonic() - self.t0:6.1f}s]"
        if self.console is not None:
            self.console.print(f"[bold cyan]{stamp}[/] {text}")  # type: ignore[attr-defined]
        else:
            print(stamp, text, file=sys.stderr)


def detect_backend(requested: str) -> str:
    if requested in ("cpu", "cuda"):
        return requested
    has_nvcc = shutil.which("nvcc") is not None
    has_gpu = False
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(
                ["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20, check=False
            )
            has_gpu = out.returncode == 0 and "GPU" in out.stdout
        except (OSError, subprocess.TimeoutExpired):
            has_gpu = False
    return "cuda" if has_nvcc and has_gpu else "cpu"


def _host_has_amx() -> bool:
    try:
        return " amx_int8" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


def make_plan(backend: str, cuda_arch: str) -> BuildPlan:
    args = list(COMMON_CMAKE_ARGS)
    if _host_has_amx():
        # -march=native turns on ggml's AMX matmul, which segfaulted in decode on a Sapphire
        # Rapids VM (SmolLM2 Q4_1); explicit -mno-* flags win over -march in GCC and clang.
        no_amx = "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
        args += [f"-DCMAKE_C_FLAGS={no_amx}", f"-DCMAKE_CXX_FLAGS={no_amx}"]
    if backend == "cuda":
        arch = cuda_arch or "native"
        args += ["-DGGML_CUDA=ON", f"-DCMAKE_CUDA_ARCHITECTURES={arch}"]
        if sys.platform.startswith("linux"):
            args.append(f"-DCMAKE_SHARED_LINKER_FLAGS={CUDA_LINUX_LINK_FLAGS}")
        return BuildPlan("cuda", arch, tuple(args))
    return BuildPlan("cpu", "", tuple(args))


def fetch_sdist(pin: Pin, progress: Progress) -> Path:
    """The pinned sdist from PyPI (via pip), cached and verified by sha256."""
    dest_dir = locations.cache_dir() / "sdists"
    dest_dir.mkdir(parents=True, exist_ok=True)
    path = dest_dir / pin.sdist
    if not path.exists():
        progress.step(f"fetching {pin.package}=={pin.version} sdist from PyPI")
        with tempfile.TemporaryDirectory(dir=dest_dir) as tmp:
            cmd = [
                sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                "-d", tmp, f"{pin.package}=={pin.version}",
            ]
            result = subprocess.run(cmd, capture_output=True, text=True, check=False)
            got = Path(tmp) / pin.sdist
            if not got.exists():
                # pip may fail to prepare metadata without build isolation, after the
                # download has finished; only a missing file is an error.
                raise BuildError(
                    f"pip could not download {pin.package}=={pin.version}: "
                    f"{result.stderr.strip()[-800:]}\nCheck the network, or build with "
                    "--from-source TARBALL on a host without one."
                )
            got.replace(path)
    found = sha256_file(path)
    if found != pin.sha256:
        path.unlink()
        raise BuildError(
            f"{pin.sdist}: sha256 {found} does not match the pin {pin.sha256} "
            f"({PIN_FILE}); the download was removed, run the build again."
        )
    progress.step(f"sdist verified: {pin.sdist} sha256 {pin.sha256[:12]}…")
    return path


def _skip(member_path: str) -> bool:
    return any(member_path == p or member_path.startswith(p + "/") for p in _SKIP_PARTS)


def unpack_sdist(sdist: Path, dest: Path) -> Path:
    """Unpack the buildable parts of the sdist into ``dest``; returns the tree root."""
    with tarfile.open(sdist, "r:gz") as tar:
        members = []
        top = None
        for m in tar.getmembers():
            parts = m.name.split("/", 1)
            top = parts[0]
            rel = parts[1] if len(parts) > 1 else ""
            if rel and _skip(rel):
                continue
            if not (m.isfile() or m.isdir() or m.issym()):
                continue
            members.append(m)
        tar.extractall(dest, members=members, filter="data")
    assert top is not None
    return dest / top


def apply_patches(tree: Path, patches: Iterable[Path], progress: Progress) -> None:
    for patch in patches:
        check = subprocess.run(
            ["git", "apply", "--check", "--whitespace=nowarn", str(patch)],
            cwd=tree, capture_output=True, text=True, check=False,
        )
        if check.returncode != 0:
            raise BuildError(
                f"patch {patch.name} does not apply to the pinned sdist:\n{check.stderr.strip()}\n"
                "Regenerate the patch against the tree from `python -m engine.build export-source`."
            )
        subprocess.run(
            ["git", "apply", "--whitespace=nowarn", str(patch)], cwd=tree, check=True
        )
        progress.step(f"applied {patch.name}")


def check_type_ids(tree: Path, patched: bool) -> dict[str, int]:
    """D2's ggml type ids against the vendored enum (see engine.ggml_types); a clash stops the build."""
    patch_text = "".join(p.read_text(encoding="utf-8") for p in patch_files())
    try:
        return ggml_types.check_tree(tree, patched, patch_text)
    except ggml_types.TypeIdClashError as exc:
        raise BuildError(str(exc)) from exc


def copy_our_sources(tree: Path) -> None:
    for sub, dest in OUR_SRC_DEST.items():
        src = OUR_SRC_DIR / sub
        if not src.is_dir():
            continue
        for path in sorted(src.rglob("*")):
            if path.is_file():
                target = tree / dest / path.relative_to(src)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, target)


def sync_tree(fresh: Path, stable: Path) -> int:
    """Make ``stable`` equal ``fresh``, rewriting only files whose bytes differ.

    Unchanged files keep their mtime and rewritten ones get the current time, so the kept CMake
    build folder recompiles exactly what changed. Returns the number of files written or removed.
    """
    changed = 0
    fresh_files = {p.relative_to(fresh) for p in fresh.rglob("*") if p.is_file() or p.is_symlink()}
    if stable.exists():
        for p in list(stable.rglob("*")):
            if (p.is_file() or p.is_symlink()) and p.relative_to(stable) not in fresh_files:
                p.unlink()
                changed += 1
        fresh_dirs = {p.relative_to(fresh) for p in fresh.rglob("*") if p.is_dir()}
        for p in sorted(stable.rglob("*"), reverse=True):
            if p.is_dir() and not p.is_symlink() and p.relative_to(stable) not in fresh_dirs and not any(p.iterdir()):
                p.rmdir()
    for rel in sorted(fresh_files):
        src, dst = fresh / rel, stable / rel
        if dst.is_file() and not src.is_symlink() and dst.read_bytes() == src.read_bytes():
            continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        if dst.exists() or dst.is_symlink():
            dst.unlink()
        shutil.copy2(src, dst, follow_symlinks=False)
        if not dst.is_symlink():
            # copy2 keeps the source's mtime, which can predate objects compiled from the file's
            # previous bytes (a source edited while a build ran): a rewritten file is new to ninja
            os.utime(dst)
        changed += 1
    return changed


def prepare_tree(pin: Pin, progress: Progress, from_source: Path | None = None) -> tuple[Path, str]:
    """The patched, trimmed source tree at a stable path; returns (tree, series hash)."""
    work = locations.cache_dir() / "src"
    work.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        if from_source is not None:
            progress.step(f"unpacking exported source {from_source}")
            with tarfile.open(from_source, "r:gz") as tar:
                tar.extractall(tmp, filter="data")
            roots = [p for p in Path(tmp).iterdir() if p.is_dir()]
            if len(roots) != 1 or not (roots[0] / "fraqtl-source.json").exists():
                raise BuildError(
                    f"{from_source} is not a tarball written by `python -m engine.build "
                    "export-source` (no fraqtl-source.json at its top)."
                )
            fresh = roots[0]
            meta = json.loads((fresh / "fraqtl-source.json").read_text())
            source_hash = meta["series"]
        else:
            sdist = fetch_sdist(pin, progress)
            progress.step("unpacking sdist (trimmed: no .git, docs, models, tests, examples)")
            fresh = unpack_sdist(sdist, Path(tmp))
            check_type_ids(fresh, patched=False)
            apply_patches(fresh, patch_files(), progress)
            copy_our_sources(fresh)
            source_hash = series_hash()
            (fresh / "fraqtl-source.json").write_text(
                json.dumps({"sdist_sha256": pin.sha256, "series": source_hash,
                            "llama_cpp_commit": pin.llama_cpp_commit}, indent=2)
            )
        ours = check_type_ids(fresh, patched=True)
        progress.step("D2 ggml type ids " + ", ".join(f"{n} = {v}" for n, v in ours.items())
                      + ": no clash with upstream's enum")
        stable = work / f"{pin.package}-{pin.version}-{pin.sha256[:12]}"
        changed = sync_tree(fresh, stable)
    progress.step(f"source tree ready at {stable} ({changed} files changed)")
    return stable, source_hash


def _run_streamed(cmd: list[str], env: dict[str, str], log: Path, progress: Progress) -> None:
    """Run the wheel build, echo ninja's [n/m] progress, keep the whole log."""
    progress.step(f"building wheel (log: {log})")
    pattern = re.compile(r"\[(\d+)/(\d+)\]")
    with log.open("w") as fh:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert proc.stdout is not None
        tail: list[str] = []
        for line in proc.stdout:
            fh.write(line)
            tail = (tail + [line])[-60:]
            match = pattern.search(line)
            if match:
                progress.compiled(int(match.group(1)), int(match.group(2)))
        rc = proc.wait()
    if rc != 0:
        raise BuildError(
            f"the wheel build failed (exit {rc}); last lines:\n{''.join(tail)}\nFull log: {log}"
        )


def _ensure_build_backend(progress: Progress) -> None:
    # Built without isolation so that the kept build folder sees the same toolchain paths
    # on every run (an isolated env has a new path each time and forces a reconfigure).
    try:
        import scikit_build_core  # noqa: F401
    except ImportError:
        progress.step("installing scikit-build-core (build backend)")
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "scikit-build-core[pyproject]>=0.9.2"],
            check=True,
        )


def build_wheel(tree: Path, plan: BuildPlan, key: str, progress: Progress) -> Path:
    out = locations.cache_dir() / "wheels" / key
    existing = sorted(out.glob("*.whl")) if out.exists() else []
    if existing:
        progress.step(f"cached wheel {existing[0].name} (key {key})")
        return existing[0]
    build_dir = locations.cache_dir() / "build" / f"{tree.name}-{plan.label}"
    build_dir.mkdir(parents=True, exist_ok=True)
    tmp_out = out.with_suffix(".tmp")
    shutil.rmtree(tmp_out, ignore_errors=True)
    _ensure_build_backend(progress)
    env = dict(os.environ)
    env["CMAKE_ARGS"] = shlex.join(plan.cmake_args)
    env.setdefault("CMAKE_BUILD_PARALLEL_LEVEL", str(os.cpu_count() or 2))
    cmd = [
        sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-v",
        "-w", str(tmp_out),
        "-C", f"build-dir={build_dir}", str(tree),
    ]
    _run_streamed(cmd, env, locations.cache_dir() / f"build-{plan.label}.log", progress)
    wheels = sorted(tmp_out.glob("*.whl"))
    if not wheels:
        raise BuildError(f"pip reported success but wrote no wheel into {tmp_out}")
    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(out, ignore_errors=True)
    tmp_out.replace(out)
    return out / wheels[0].name


def installed_key() -> str | None:
    marker = Path(sys.prefix) / MARKER_NAME
    if not marker.exists():
        return None
    try:
        return json.loads(marker.read_text()).get("key")
    except (OSError, json.JSONDecodeError):
        return None


def patched_build_works() -> bool:
    """Does the installed llama_cpp load and export llama_fraqtl_version? (in a subprocess)"""
    code = "import llama_cpp; print(llama_cpp.llama_cpp.llama_fraqtl_version().decode())"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    return result.returncode == 0 and result.stdout.startswith("fraqtl")


def install_wheel(wheel: Path, key: str, plan: BuildPlan, progress: Progress) -> None:
    progress.step(f"installing {wheel.name}")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--force-reinstall", "-q", str(wheel)],
        check=True,
    )
    (Path(sys.prefix) / MARKER_NAME).write_text(
        json.dumps({"key": key, "wheel": str(wheel), "backend": plan.backend,
                    "cuda_arch": plan.cuda_arch}, indent=2)
    )


def build(backend: str = "auto", cuda_arch: str = "", from_source: Path | None = None,
          install: bool = True, force: bool = False, progress: Progress | None = None) -> Path:
    progress = progress or Progress()
    pin = Pin.load()
    plan = make_plan(detect_backend(backend), cuda_arch)
    progress.step(f"llama-cpp-python {pin.version} (llama.cpp {pin.llama_cpp_commit}), backend {plan.label}")
    if from_source is None:
        source_hash = series_hash()
        key = build_key(pin, plan, source_hash)
        cached = locations.cache_dir() / "wheels" / key
        if not force and install and installed_key() == key and patched_build_works():
            progress.step(f"patched llama_cpp already installed (key {key}); nothing to do")
            return next(iter(sorted(cached.glob("*.whl"))), cached)
        if not force and any(cached.glob("*.whl")):
            wheel = sorted(cached.glob("*.whl"))[0]
            progress.step(f"cached wheel {wheel.name} (key {key})")
            if install:
                install_wheel(wheel, key, plan, progress)
            return wheel
    tree, source_hash = prepare_tree(pin, progress, from_source)
    key = build_key(pin, plan, source_hash)
    if force:
        shutil.rmtree(locations.cache_dir() / "wheels" / key, ignore_errors=True)
    wheel = build_wheel(tree, plan, key, progress)
    if install:
        install_wheel(wheel, key, plan, progress)
    progress.step("done")
    return wheel


def export_source(output: Path) -> Path:
    """Write the patched, trimmed llama.cpp tree (with llama-cpp-python) as a tar.gz."""
    progress = Progress()
    tree, _ = prepare_tree(Pin.load(), progress)
    output.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(output, "w:gz", compresslevel=9) as tar:
        tar.add(tree, arcname=tree.name + "-fraqtl")
    size = output.stat().st_size
    progress.step(f"wrote {output} ({size / 1e6:.1f} MB)")
    return output


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m engine.build",
        description="Build and install llama-cpp-python with the fraqtl D2 patch series.",
    )
    sub = parser.add_subparsers(dest="command")
    b = sub.add_parser("build", help="build (or reuse a cached) wheel and install it (default)")
    for p in (parser, b):
        p.add_argument("--backend", choices=("auto", "cpu", "cuda"), default="auto",
                       help="auto = CUDA when nvcc and a GPU are present")
        p.add_argument("--cuda-arch", default="", help="CUDA architectures, e.g. 90 (default: native)")
        p.add_argument("--from-source", type=Path, metavar="TARBALL",
                       help="build from a tarball written by export-source (no network)")
        p.add_argument("--no-install", action="store_true", help="build the wheel only")
        p.add_argument("--force", action="store_true", help="rebuild even if a cached wheel exists")
    e = sub.add_parser("export-source", help="write the patched, trimmed source tree as tar.gz")
    e.add_argument("-o", "--output", type=Path, default=Path("fraqtl-llama-cpp-source.tar.gz"))
    sub.add_parser("key", help="print the cache key of the CPU build")
    args = parser.parse_args(argv)
    try:
        if args.command == "export-source":
            export_source(args.output)
        elif args.command == "key":
            print(build_key(Pin.load(), make_plan("cpu", ""), series_hash()))
        else:
            build(args.backend, args.cuda_arch, args.from_source, not args.no_install, args.force)
    except BuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
