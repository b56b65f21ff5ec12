"""Scorers on hand-made answers: exact, content, digits-only, F1, recall, failure classes."""

import pytest

from bench import scoring


@pytest.mark.parametrize(
    ("answer", "exact", "content", "digits"),
    [
        ("The special magic number is 4829-1735.", True, True, True),
        ("4829 1735", False, True, True),  # separator changed: content still right
        ("It is 4829.1735", False, True, True),
        ("48291735", False, True, True),
        ("4829-A1735", False, False, True),  # a letter inside: content wrong, digits right
        ("4829-1736", False, False, False),  # one digit wrong
        ("1735-4829", False, False, False),  # order matters
        ("4829", False, False, False),  # half the code
        ("", False, False, False),
    ],
)
def test_code_scorers(answer: str, exact: bool, content: bool, digits: bool) -> None:
    code = "4829-1735"
    assert scoring.score_exact(answer, code) is exact
    assert scoring.score_content(answer, code) is content
    assert scoring.score_digits(answer, code) is digits


def test_content_is_case_insensitive_for_letter_codes() -> None:
    assert scoring.score_content("code: k7q 4829", "K7Q-4829")
    assert not scoring.score_exact("code: k7q 4829", "K7Q-4829")
    assert scoring.score_digits("k8q 4829", "K7Q-4829") is False
    assert scoring.score_digits("Q-74829", "K7Q-4829") is True


def test_f1_squad_rules() -> None:
    assert scoring.f1("Kestrel Bay", "Kestrel Bay") == 1.0
    assert scoring.f1("the Kestrel Bay.", "Kestrel Bay") == 1.0  # articles and punctuation dropped
    assert scoring.f1("She lives in Kestrel Bay", "Kestrel Bay") == pytest.approx(2 * (2 / 5) * 1 / (2 / 5 + 1))
    assert scoring.f1("Halden", "Kestrel Bay") == 0.0
    assert scoring.f1("", "Kestrel Bay") == 0.0
    assert scoring.best_f1("Bay", ["Halden", "Kestrel Bay"]) == pytest.approx(2 / 3)


def test_recall_and_set_f1() -> None:
    refs = ["apple", "river", "stone", "garden"]
    assert scoring.recall_all("apple, river and stone", refs) == 0.75
    assert scoring.recall_all("APPLE river stone garden", refs) == 1.0
    assert scoring.set_f1("apple river", refs) == pytest.approx(2 * 1.0 * 0.5 / 1.5)
    assert scoring.set_f1("nothing here", refs) == 0.0


@pytest.mark.parametrize(
    ("arm_right", "f16_right", "all_wrong", "expected"),
    [(True, True, False, "ok"), (False, True, False, "flip"), (True, False, False, "gain"),
     (False, False, True, "model_limit"), (False, False, False, "miss")],
)
def test_classify(arm_right: bool, f16_right: bool, all_wrong: bool, expected: str) -> None:
    assert scoring.classify(arm_right, f16_right, all_wrong) == expected
