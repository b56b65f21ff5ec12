"""Agreement with f16, the conversation's fit check and the markdown report (no model)."""

from __future__ import annotations

from app.compare import ArmResult, agreement, compare_arms, first_sentence, report_markdown
from app.conversation import Fit
from app.ingest import Document
from app.settings import Settings


def test_agreement_against_f16() -> None:
    base = ArmResult("f16", "done", "Ada Brill ran it. More.", token_ids=(1, 2, 3, 4))
    same = ArmResult("q8_0", "done", "Ada Brill ran it! Other.", token_ids=(1, 2, 3, 9))
    other = ArmResult("q4_0", "done", "Nobody.", token_ids=(5,))
    missing = ArmResult("d2", "unavailable", reason="no D2 cache")
    for r in (same, other, missing):
        agreement(r, base)
    assert (same.token_match, same.same_answer) == (0.75, True)
    assert (other.token_match, other.same_answer) == (0.0, False)
    assert missing.token_match is None and missing.same_answer is None
    assert first_sentence("Ada, Brill ran it. More.") == "ada brill ran it"


def test_compare_arms_setting() -> None:
    assert compare_arms(Settings()) == ["f16", "q8_0", "d2"]
    assert compare_arms(Settings(compare_q4_0=True)) == ["f16", "q8_0", "q4_0", "d2"]


def test_fit_offers_a_yarn_context_only_within_the_model_limit() -> None:
    fit = Fit(tokens=9000, n_ctx=8192, reserve=384, n_ctx_train=8192, max_ctx_yarn=32768)
    assert not fit.fits and fit.needed == 9384 and fit.larger_context == 16384
    assert str(fit.error()) == ("The prompt needs 9,384 tokens but the context holds 8,192; raise the context "
                                "(YaRN where the model allows) or choose a page range.")
    huge = Fit(tokens=40000, n_ctx=8192, reserve=384, n_ctx_train=8192, max_ctx_yarn=32768)
    assert huge.larger_context is None
    assert Fit(1000, 8192, 384, 8192, 32768).fits


def test_report_markdown() -> None:
    doc = Document("a.md", "/a.md", "f" * 64, "text", ("Ada.",))
    results = [ArmResult("f16", "done", "Ada.", prefill_tok_s=100.0, decode_tok_s=50.0, estimate_bytes=2**20 * 300),
               ArmResult("d2", "unavailable", reason="no D2 cache in this build")]
    text = report_markdown(doc, "Who?", results, "model.gguf", Settings(), "No NVIDIA driver found.")
    assert "| f16 | done | n/a | 300 MiB | 100.0 | 50.0 | — | — |" in text
    assert "| d2 | unavailable: no D2 cache in this build |" in text
    assert "## d2\n\n_unavailable: no D2 cache in this build_" in text
    assert "- GPU telemetry: No NVIDIA driver found." in text
