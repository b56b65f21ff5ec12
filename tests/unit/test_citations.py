"""Page citations in answers, checked against the extracted pages."""

from __future__ import annotations

from app.citations import check_citations
from app.ingest import Document

DOC = Document("manual.pdf", "/x/manual.pdf", "0" * 64, "pdf", (
    "The pump station opened in 1923. Its chief was Ada Brill.",
    "The reservoir holds 40,000 cubic metres of water.",
))


def test_supported_citations_are_found() -> None:
    found = check_citations("The station opened in 1923 [p. 1]. The reservoir holds 40,000 cubic metres (p. 2).", DOC)
    assert [(c.page, c.found) for c in found] == [(1, True), (2, True)]
    assert found[0].label == "p. 1 ✓"


def test_quotes_must_be_on_the_cited_page() -> None:
    ok = check_citations('It says "its chief was Ada Brill" [p. 1].', DOC)
    assert ok[0].found
    wrong = check_citations('It says "its chief was Ada Brill" [p. 2].', DOC)
    assert not wrong[0].found and wrong[0].reason == "quote not on that page"
    assert wrong[0].label == "p. 2 ✗ quote not on that page"


def test_missing_pages_and_unsupported_claims_are_marked() -> None:
    found = check_citations("The dam was built by Romans [p. 2]. See also page 7.", DOC)
    assert [(c.page, c.found, c.reason) for c in found] == [
        (2, False, "not supported by that page"), (7, False, "no such page")]
    assert check_citations("No citation here.", DOC) == []


def test_a_sentence_with_no_content_words_is_not_found() -> None:
    for answer in ("See [p. 1].", "It is on page 2.", "Yes (p. 1)!", "[p. 2]"):
        (citation,) = check_citations(answer, DOC)
        assert not citation.found, answer
        assert citation.reason == "nothing in the sentence to check"
    # a later sentence that does say something still finds the page
    found = check_citations("See [p. 1]. The pump station opened in 1923 [p. 1].", DOC)
    assert [(c.page, c.found) for c in found] == [(1, True)]
