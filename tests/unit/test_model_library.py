"""What a GGUF is, whether it has D2 sidecars, which models are listed, and the recent list."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from app.model_library import (
    ModelCard,
    RecentModels,
    calibration_dir,
    human_bytes,
    human_count,
    listed_models,
    sidecar_status,
)
from engine.errors import ModelFormatError, ModelNotFoundError


@pytest.fixture(autouse=True)
def dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in ("DATA", "CONFIG"):
        monkeypatch.setenv(f"FRAQTL_{name}_DIR", str(tmp_path / name.lower()))
    return tmp_path


@pytest.fixture(scope="module")
def bundled() -> Path:
    from engine.models import SMOLLM2, fetch

    return fetch(SMOLLM2, quiet=True)


def tiny_gguf(path: Path, template: str | None = None) -> Path:
    """A base model's header: 2 layers, 4 heads (2 KV), head size 16, one 64×32 tensor."""
    import gguf

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("Tiny test model")
    writer.add_context_length(2048)
    writer.add_embedding_length(64)
    writer.add_block_count(2)
    writer.add_head_count(4)
    writer.add_head_count_kv(2)
    if template:
        writer.add_chat_template(template)
    writer.add_tensor("token_embd.weight", np.zeros((32, 64), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_a_card_says_what_the_bundled_model_is_and_finds_its_shipped_sidecars(bundled: Path,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FRAQTL_DATA_DIR", str(bundled.parent.parent))  # where the bundled copy lives
    card = ModelCard.read(bundled)
    facts = dict(card.facts())
    assert card.bundled and facts["name"].endswith("(bundled default)")
    assert (facts["architecture"], facts["trained context"], facts["head size"]) == ("llama", "8,192 tokens", "64")
    assert facts["layers · heads · KV heads"] == "30 · 9 · 3"
    assert facts["parameters"].startswith("134.5M (")
    assert "<|im_start|>" in facts["chat template"] and facts["chat template"].endswith("…")
    assert facts["size on disk"] == human_bytes(bundled.stat().st_size)
    status = sidecar_status(bundled)
    assert status.found and "shipped sidecars/ folder" in status.detail


def test_a_base_model_and_a_file_that_is_not_a_model(dirs: Path) -> None:
    tiny = tiny_gguf(dirs / "tiny.gguf")
    facts = dict(ModelCard.read(tiny).facts())
    assert facts["chat template"] == "none: a base model (completion prompts only)"
    assert (facts["parameters"], facts["head size"], facts["trained context"]) == ("2.0K (2,048)", "16", "2,048 tokens")
    status = sidecar_status(tiny)
    assert not status.found and status.detail.startswith("No D2 sidecars yet: calibrate it")
    assert calibration_dir(tiny) == dirs / "data" / "sidecars" / "tiny"
    junk = dirs / "notes.gguf"
    junk.write_text("not a model")
    with pytest.raises(ModelFormatError, match="no GGUF magic"):
        ModelCard.read(junk)
    with pytest.raises(ModelNotFoundError):
        ModelCard.read(dirs / "gone.gguf")


def test_models_are_listed_once_bundled_first_and_recent_ones_remembered(dirs: Path) -> None:
    models = dirs / "data" / "models"
    models.mkdir(parents=True)
    here = tiny_gguf(models / "b-here.gguf")
    elsewhere = tiny_gguf(dirs / "a-elsewhere.gguf")
    assert RecentModels.load() == []
    RecentModels.add(elsewhere)
    RecentModels.add(here)  # already listed from the data dir: listed once
    RecentModels.add(dirs / "gone.gguf")  # moved away since: not listed
    assert RecentModels.load()[0] == str((dirs / "gone.gguf").resolve())
    assert listed_models(RecentModels.load()) == [here, elsewhere]  # the bundled copy is not in this data dir
    for _ in range(12):
        RecentModels.add(elsewhere)
    assert RecentModels.load().count(str(elsewhere.resolve())) == 1
    RecentModels.path().write_text(json.dumps({"not": "a list"}))
    assert RecentModels.load() == []  # an unreadable list is empty, never an error
    RecentModels.path().write_text("[1, \"/x.gguf\"")
    assert RecentModels.load() == []


def test_numbers_read_as_people_write_them() -> None:
    assert human_count(7_241_732_096) == "7.2B (7,241,732,096)"
    assert human_count(950) == "950"
    assert (human_bytes(4_368_439_584), human_bytes(1536), human_bytes(12)) == ("4.1 GiB", "1.5 KiB", "12 B")
