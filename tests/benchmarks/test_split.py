"""``fraqtl-bench split`` without GPUs: the jobs it starts, the receipt it writes from fake two-GPU
outcomes, and a real CPU run of the same code path (the layer split itself needs the H200s:
bench/h200.sh phase split)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bench import split
from bench.cli import build_parser, main
from bench.runner import ArmOutcome
from engine.models import resolve

MIB = 1024 * 1024


def test_placements_pin_one_gpu_then_split_over_all() -> None:
    one, both = split.placements(2, "layer", None)
    order = {"CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
    assert (one["env"], one["split_mode"], one["gpus"]) == ({**order, "CUDA_VISIBLE_DEVICES": "0"}, "none", 1)
    assert (both["env"], both["split_mode"], both["gpus"]) == ({**order, "CUDA_VISIBLE_DEVICES": "0,1"}, "layer", 2)
    with pytest.raises(ValueError, match="at least 2 GPUs"):
        split.placements(1, "layer", None)
    with pytest.raises(ValueError, match="one per GPU"):
        split.placements(2, "layer", [1.0, 1.0, 1.0])


class FakeGpus:
    """Stands in for runner.run_arm on a two-GPU host: buffers per CUDA device, NVML peaks per GPU."""

    def __init__(self) -> None:
        self.jobs: list[dict[str, Any]] = []

    def __call__(self, job: dict[str, Any], workdir: Path, timeout_s: float = 0.0, **_: Any) -> ArmOutcome:
        self.jobs.append(job)
        n = len(job["env"]["CUDA_VISIBLE_DEVICES"].split(","))
        kv = {"f16": 1800.0, "d2": 640.0}[job["arm"]]
        if job["op"] == "kld":
            result: dict[str, Any] = {"status": "ok"}
            if not job["write_ref"]:
                result["kld"] = {"n_tokens": 256, "kld_mean": 1e-7, "kld_max": 3e-6, "same_top_rate": 1.0,
                                 "max_abs_logp_diff": 2e-4}
            return ArmOutcome(job["arm"], "ok", "", result, 1.0, 300.0, "nvml-process",
                              {f"CUDA{i} KV": 10.0 for i in range(n)}, [], "", [300.0 / n] * n, [140_000.0] * n)
        buffers = {"CPU_Mapped model": 28.7}
        for i in range(n):
            buffers.update({f"CUDA{i} model": 60.0 / n, f"CUDA{i} KV": kv / n, f"CUDA{i} compute": 50.0})
        peaks = [kv / n + 200.0] * n + ([0.0] if n == 1 else [])  # NVML also sees the idle second GPU
        result = {"status": "ok", "kv_bytes": int(kv * MIB),
                  "fill": {"prefill_tok_s": 4000.0 / (1.1 if n > 1 else 1.0), "decode_tok_s": 40.0 * (0.9 if n > 1 else 1)}}
        return ArmOutcome(job["arm"], "ok", "", result, 2.0, sum(peaks), "nvml-process", buffers, [], "",
                          peaks, [140_000.0, 139_000.0])


def test_split_run_records_each_gpu_and_the_agreement(tmp_path: Path) -> None:
    model = resolve(None)  # SmolLM2: 30 layers, read for the estimates only (the runs are fakes)
    args = build_parser().parse_args(["split", "--arms", "f16,d2", "--ctx", "4k", "--decode", "64",
                                      "--agreement-chunks", "1", "--agreement-len", "256", "--out", str(tmp_path)])
    fake = FakeGpus()
    out = split.run(args, model, ["split", "--arms", "f16,d2"], run_arm=fake, agreement_model=model)

    fills = [j for j in fake.jobs if j["op"] == "fill"]
    assert [(j["arm"], j["env"]["CUDA_VISIBLE_DEVICES"], j["split_mode"]) for j in fills] == [
        ("f16", "0", "none"), ("f16", "0,1", "layer"), ("d2", "0", "none"), ("d2", "0,1", "layer")]
    agree = [j for j in fake.jobs if j["op"] == "kld"]
    assert [(j["arm"], j["write_ref"], j["split_mode"]) for j in agree] == [("d2", True, "none"), ("d2", False, "layer")]
    assert agree[0]["ref_dir"] == agree[1]["ref_dir"] and agree[0]["chunks"] == agree[1]["chunks"]

    rec = json.loads((out / "receipt.json").read_text())
    rows = {(r["arm"], r["placement"]): r for r in rec["results"]}
    one, both = rows[("d2", "1 GPU")], rows[("d2", "2 GPUs")]
    assert one["peak_vram_mib_gpus"] == [840.0] and both["peak_vram_mib_gpus"] == [520.0, 520.0]
    # llama.cpp's default split follows the free memory NVML saw before the run (140,000 : 139,000 MiB)
    assert one["layers_per_gpu"] == [30] and both["layers_per_gpu"] == [16, 14]
    assert both["buffers_mib_gpus"] == [400.0, 400.0] and len(both["estimate_mib_gpus"]) == 2
    assert all(isinstance(e, float) for e in both["estimate_error_gpus"])
    assert rec["agreement"]["same_top_rate"] == 1.0 and rec["agreement"]["max_abs_logp_diff"] == 2e-4
    md = (out / "receipt.md").read_text()
    assert "- d2 @ 4096: split / one GPU: total peak ×1.238, prefill ×0.909, decode ×0.900" in md
    assert "same top token 1.0000; max |Δ log p| 0.0002" in md
    assert (out / "split.png").stat().st_size > 1000


@pytest.mark.slow
def test_split_quick_runs_the_real_worker_on_cpu(tmp_path: Path) -> None:
    # no GPU here: both placements run on the CPU, through the same jobs, worker and Runtime options
    assert main(["split", "--quick", "--arms", "d2", "--threads", "2", "--decode", "0", "--agreement-len", "256",
                 "--out", str(tmp_path)]) == 0
    (folder,) = tmp_path.iterdir()
    rec = json.loads((folder / "receipt.json").read_text())
    assert [(r["placement"], r["status"]) for r in rec["results"]] == [("1 GPU", "ok"), ("2 GPUs", "ok")]
    assert all(r["prefill_tok_s"] for r in rec["results"])
    agreement = rec["agreement"]
    # the same CPU kernels both times: the split placement changes nothing here
    assert agreement["same_top_rate"] == 1.0 and agreement["max_abs_logp_diff"] < 1e-4, agreement
