"""Random-orthonormal control sidecars for models that cannot be calibrated.

The random-weight shape models (``fraqtl-bench shape-model``) have no meaningful KV
statistics, so calibration refuses them; their memory and speed receipts still need a D2
arm. These sidecars have the exact format and size of calibrated ones and a manifest that
says they are controls, so every receipt that uses them names them as such. Never use them
for a fidelity claim.
"""

from __future__ import annotations

from pathlib import Path

from engine import locations, sidecar
from engine.gguf import read_gguf
from engine.models import model_sha256

CONTROL_BASIS = "random-orthonormal control (not calibrated)"


def write_control_sidecars(model: Path, out_dir: Path | None = None, seed: int = 0) -> Path:
    """Write K and V random control sidecars and their manifest; returns the manifest path."""
    info = read_gguf(model)
    sha = model_sha256(model)
    folder = out_dir or locations.data_dir() / "sidecars" / f"{model.stem}-random-control"
    folder.mkdir(parents=True, exist_ok=True)
    k_rank = max(8, info.head_dim_k // 8)
    k, v = sidecar.control_sidecars_for(info, k_rank, info.head_dim_v // 4, basis="random", seed=seed)
    k_name, v_name = sidecar.default_file_names(f"{model.stem}-random-control")
    sidecar.write_sidecar(k, folder / k_name)
    sidecar.write_sidecar(v, folder / v_name)
    return sidecar.write_manifest(folder / sidecar.MANIFEST_NAME, {
        "format": sidecar.MANIFEST_FORMAT,
        "model": {"sha256": sha, "file": model.name, "arch": info.arch},
        "files": {"k": k_name, "v": v_name},
        "basis": CONTROL_BASIS,
        "seed": seed,
        "calibration": None,
    })
