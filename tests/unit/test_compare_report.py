"""Agreement with f16, the conversation's fit check and the markdown report (no model)."""

from __future__ import annotations

from app.compare import ArmResult, agreement, agreement_lines, compare_arms, report_markdown
from app.conversation import Fit
from app.ingest import Document
from app.settings import Settings


def _arm(arm: str, pieces: list[str], ids: list[int]) -> ArmResult:
    return ArmResult(arm, "done", "".join(pieces).strip(), token_ids=tuple(ids), pieces=tuple(pieces))


def test_agreement_is_token_by_token_and_shows_where_an_answer_departs() -> None:
    # the sample's case: the same first sentence, a different founding year in the second
    base = _arm("f16", [" It", " opened", " in", " 1871", ".", " It", " was", " founded", " in", " 1862", "."],
                list(range(11)))
    d2 = _arm("d2", [" It", " opened", " in", " 1871", ".", " It", " was", " founded", " in", " 1859", "."],
              [0, 1, 2, 3, 4, 5, 6, 7, 8, 99, 10])
    same = _arm("q8_0", base.pieces, list(range(11)))
    other = _arm("q4_0", [" Nobody", "."], [50, 51])
    missing = ArmResult("d2:k16v32", "unavailable", reason="no D2 cache")
    for r in (d2, same, other, missing):
        agreement(r, base)
    assert (d2.shared_prefix, d2.identical, d2.departs_at) == (9, False, 9)
    assert d2.departure() == ("It opened in 1871. It was founded in", " 1859", ".")
    assert agreement_lines(d2) == ["vs f16      not identical", "prefix      9 tokens shared (82%)",
                                   "departs at  token 9"]
    assert (same.identical, same.departs_at, same.departure()) == (True, None, None)
    assert agreement_lines(same) == ["vs f16      identical (11 tokens)"]
    assert (other.shared_prefix, other.token_match, other.departs_at) == (0, 0.0, 0)
    assert missing.shared_prefix is None and missing.identical is None and agreement_lines(missing) == []
    # an answer that stops where f16's goes on departs at its end
    short = _arm("q8_0", list(base.pieces[:4]), [0, 1, 2, 3])
    agreement(short, base)
    assert short.departs_at == 4 and short.departure() == ("It opened in 1871", "", "")


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
    assert "| f16 | done | n/a | 300 MiB | 100.0 | 50.0 | — | — | — |" in text
    assert "*shared prefix* is how many of f16's answer tokens" in text
    assert "| d2 | unavailable: no D2 cache in this build |" in text
    assert "## d2\n\n_unavailable: no D2 cache in this build_" in text
    assert "- GPU telemetry: No NVIDIA driver found." in text


def test_report_marks_where_each_answer_departs() -> None:
    doc = Document("a.md", "/a.md", "f" * 64, "text", ("Ada.",))
    base = _arm("f16", [" Founded", " in", " 1862", "."], [1, 2, 3, 4])
    d2 = _arm("d2", [" Founded", " in", " 1859", "."], [1, 2, 9, 4])
    agreement(d2, base)
    text = report_markdown(doc, "When?", [base, d2], "model.gguf", Settings())
    assert "| d2 | done | n/a | 0 MiB | 0.0 | 0.0 | 2 (50%) | no | 2 |" in text
    assert "Departs from f16 at token 2: …Founded in **1859**.…" in text
