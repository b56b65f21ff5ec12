"""Receipts: the JSON, markdown and PNG record of one bench run, re-runnable by anyone.

``receipt.json`` follows the schema other tools read (issue 5): ``kind``, ``model`` (path,
sha256, ``shape`` for a shaped model), ``machine`` (cpu, gpu, driver), ``command``,
``versions``, ``results`` (one row per arm and context, metric names fixed below) plus every
raw answer. Receipts go to ``bench/receipts/<date>-<name>/``. Never imports the app.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import shlex
import sys
from pathlib import Path
from typing import Any

from engine import __version__ as ENGINE_VERSION
from engine.files import write_atomic
from engine.gguf import read_gguf
from engine.locations import REPO_ROOT

RECEIPTS_DIR = REPO_ROOT / "bench" / "receipts"

#: the metric names a row may carry (issue 5); rows add context fields beside them
METRICS = (
    "kld_mean", "kld_p99", "same_top_rate", "ppl", "niah_exact", "niah_content", "niah_total",
    "flips_vs_f16", "peak_vram_mib", "kv_bytes", "kv_bits_per_element", "prefill_tok_s", "decode_tok_s",
)


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {
        "cpu": _cpu_name(), "cpu_count": os.cpu_count(), "os": platform.platform(),
        "python": sys.version.split()[0], "gpu": None, "driver": None, "gpu_memory_mib": None,
    }
    try:
        from engine.nvml import Nvml

        nvml = Nvml()
        info["gpu"], info["driver"] = nvml.name, nvml.driver
        info["gpu_memory_mib"] = nvml.sample().device_total // (1024 * 1024)
        info["gpu_count"] = Nvml.count()
    except Exception as exc:  # TelemetryUnavailable and driver errors alike: a CPU machine
        info["gpu_note"] = str(exc)
    return info


def versions() -> dict[str, Any]:
    out: dict[str, Any] = {"engine": ENGINE_VERSION, "llama_fraqtl_version": None, "llama_cpp_python": None}
    try:
        from engine.runtime import fraqtl_version, load_llama_cpp

        out["llama_cpp_python"] = load_llama_cpp().__version__
        out["llama_fraqtl_version"] = fraqtl_version()
    except Exception as exc:
        out["llama_note"] = str(exc)
    try:
        import gguf

        out["gguf"] = getattr(gguf, "__version__", None) or _dist_version("gguf")
    except ImportError:
        pass
    return out


def _dist_version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def model_slug(model: dict[str, Any]) -> str:
    """A short name for receipt folders: the shape, the registry key, or the file's stem."""
    from engine.models import REGISTRY, packaged_path

    if model.get("shape"):
        return str(model["shape"])
    for key, packaged in REGISTRY.items():
        if model.get("sha256") == packaged.sha256 or Path(model["path"]).resolve() == packaged_path(packaged).resolve():
            return key
    return Path(model["path"]).stem.lower()


def model_info(path: Path) -> dict[str, Any]:
    from engine.models import model_sha256

    info = read_gguf(path)
    out: dict[str, Any] = {
        "path": str(path), "sha256": model_sha256(path), "name": info.name, "arch": info.arch,
        "n_layer": info.n_layer, "n_head": info.n_head, "n_head_kv": info.n_head_kv,
        "head_dim_k": info.head_dim_k, "head_dim_v": info.head_dim_v, "n_ctx_train": info.n_ctx_train,
        "weights_bytes": info.weights_bytes, "file_bytes": info.file_size,
    }
    shape = info.metadata.get("fraqtl.shape")
    if shape:
        out["shape"] = shape
    return out


def command_line(argv: list[str] | None = None) -> str:
    args = sys.argv[1:] if argv is None else argv
    return shlex.join(["fraqtl-bench", *args])


def new_receipt(kind: str, model_path: Path, argv: list[str] | None, grid: dict[str, Any]) -> dict[str, Any]:
    return {
        "kind": kind,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": command_line(argv),
        "model": model_info(model_path),
        "machine": machine_info(),
        "versions": versions(),
        "grid": grid,
        "sidecars": {},
        "results": [],
    }


def receipt_dir(root: Path | None, name: str) -> Path:
    root = Path(root) if root else RECEIPTS_DIR
    stem = f"{_dt.date.today().isoformat()}-{name}"
    path, n = root / stem, 2
    while path.exists():
        path, n = root / f"{stem}-{n}", n + 1
    path.mkdir(parents=True)
    return path


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        if value != 0 and (abs(value) < 0.01 or abs(value) >= 1e5):
            return f"{value:.3g}"
        return f"{value:.4g}" if abs(value) < 10 else f"{value:,.1f}"
    return str(value)


def markdown_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(_fmt(row.get(c)) for c in columns) + " |")
    return "\n".join(lines)


def header_markdown(receipt: dict[str, Any], title: str) -> str:
    m, mach, ver = receipt["model"], receipt["machine"], receipt["versions"]
    model = m.get("shape") and f"{m['name']} (shape {m['shape']})" or m["name"]
    lines = [
        f"# {title}",
        "",
        f"- command: `{receipt['command']}`",
        f"- created: {receipt['created']}",
        f"- model: {model}, sha256 `{m['sha256']}`",
        f"- machine: {mach['cpu']} ({mach['cpu_count']} cores); GPU: {mach.get('gpu') or 'none'}"
        + (f", driver {mach['driver']}" if mach.get("driver") else ""),
        f"- versions: engine {ver['engine']}, {ver.get('llama_fraqtl_version')}, "
        f"llama-cpp-python {ver.get('llama_cpp_python')}",
    ]
    for arm, record in receipt.get("sidecars", {}).items():
        lines.extend(sidecar_lines(arm, record))
    return "\n".join(lines) + "\n"


def sidecar_lines(arm: str, record: dict[str, Any]) -> list[str]:
    """Markdown lines naming what supplied an arm's D2 bases (see bench.worker.sidecar_record)."""
    if record.get("control"):
        return [f"- bases ({arm}): **{record.get('basis')} orthonormal control** (seed {record.get('seed')}), "
                "not calibrated sidecars"]
    lines = [f"- sidecars ({arm}): from the {record.get('source', 'unknown folder')}"]
    lines += [f"  - `{path}` sha256 `{digest}`" for path, digest in (record.get("files") or {}).items()]
    return lines


def write(directory: Path, receipt: dict[str, Any], markdown: str) -> Path:
    """Write receipt.json and receipt.md atomically; a full disk raises FileWriteError (one sentence)."""
    write_atomic(directory / "receipt.json", json.dumps(receipt, indent=1, sort_keys=False) + "\n", mode=0o644)
    write_atomic(directory / "receipt.md", markdown, mode=0o644)
    return directory
