"""What terminals paste when a file is dropped on them."""

from __future__ import annotations

from pathlib import Path

from app.paths import existing_files, parse_dropped_paths


def test_quotes_escapes_uris_and_several_paths(tmp_path: Path) -> None:
    assert parse_dropped_paths("'/tmp/My Report.pdf'") == [Path("/tmp/My Report.pdf")]
    assert parse_dropped_paths('"/tmp/My Report.pdf"') == [Path("/tmp/My Report.pdf")]
    assert parse_dropped_paths(r"/tmp/My\ Report\ \(v2\).pdf") == [Path("/tmp/My Report (v2).pdf")]
    assert parse_dropped_paths("file:///tmp/My%20Report.pdf") == [Path("/tmp/My Report.pdf")]
    assert parse_dropped_paths("file://localhost/tmp/a.pdf") == [Path("/tmp/a.pdf")]
    assert parse_dropped_paths("'/tmp/a b.pdf' /tmp/c.md\n/tmp/d.txt") == [
        Path("/tmp/a b.pdf"), Path("/tmp/c.md"), Path("/tmp/d.txt")]
    assert parse_dropped_paths("  ") == []
    assert parse_dropped_paths("'/tmp/unbalanced.pdf") == [Path("/tmp/unbalanced.pdf")]


def test_unquoted_path_with_spaces_and_questions(tmp_path: Path) -> None:
    doc = tmp_path / "annual report.pdf"
    doc.write_bytes(b"%PDF")
    assert parse_dropped_paths(f" {doc} \n") == [doc]
    assert existing_files(f"'{doc}'") == [doc]
    assert existing_files("Who built the lighthouse?") == []
    assert existing_files(f"{doc} /nowhere/else.pdf") == []


# ---------------------------------------------------------------------------- questions, folders, missing paths

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from app.errors import DocumentNotFoundError, FolderDroppedError
from app.paths import route_input

LONG_QUESTION = ("In the section about the harbour, the document mentions the lighthouse, the regatta and the "
                 "fishing fleet; could you please explain, in as much detail as the text allows, who built the "
                 "lighthouse, in which year, how far its lamp can be seen, and who won the last regatta?")


def test_a_question_of_256_or_more_characters_is_a_question() -> None:
    assert len(LONG_QUESTION) >= 256
    assert parse_dropped_paths(LONG_QUESTION)  # no OSError: File name too long
    assert existing_files(LONG_QUESTION) == []
    route = route_input(LONG_QUESTION)
    assert route.kind == "ask" and route.question == LONG_QUESTION
    one_word = "x" * 5000
    assert route_input(one_word).question == one_word


def test_a_folder_or_a_missing_path_is_refused_with_a_sentence(tmp_path: Path) -> None:
    folder = tmp_path / "my papers"
    folder.mkdir()
    assert route_input(f"'{folder}'").problem == str(FolderDroppedError(str(folder)))
    assert route_input(str(folder)).problem == str(FolderDroppedError(str(folder)))  # unquoted, with a space
    gone = tmp_path / "gone.pdf"
    assert route_input(f"'{gone}'").problem == str(DocumentNotFoundError(str(gone)))
    assert route_input(f"file://{gone}").kind == "refuse"
    assert route_input("/" + "a" * 300 + "/b.pdf").kind == "refuse"  # a component too long for the OS
    doc = tmp_path / "a.md"
    doc.write_text("x")
    assert route_input(f"'{doc}' '{gone}'").problem == str(DocumentNotFoundError(str(gone)))
    assert route_input(f"'{doc}'").files == (doc,)
    # a question that merely mentions a path is still a question
    assert route_input(f"What does {gone} say?").kind == "ask"


path_like = st.builds(
    lambda prefix, parts, quote: quote + prefix + "/".join(parts) + quote,
    st.sampled_from(["/", "~/", "./", "../", "file://", "file://host/", "C:\\", "~nobody_here/", ""]),
    st.lists(st.text(min_size=0, max_size=300), min_size=1, max_size=4),
    st.sampled_from(["", "'", '"']),
)
any_text = st.one_of(st.text(max_size=600), st.text(min_size=250, max_size=6000), path_like,
                     st.binary(max_size=300).map(lambda b: b.decode("latin-1")))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(any_text)
@example("~\x000")  # found by hypothesis in CI: expanduser raised on the NUL byte
def test_no_text_makes_the_parser_raise(text: str) -> None:
    paths = parse_dropped_paths(text)
    assert all(isinstance(p, Path) for p in paths)
    files = existing_files(text)
    assert set(files) <= set(paths)
    route = route_input(text)
    assert route.kind in ("ask", "open", "refuse", "nothing")
    if route.kind == "ask":
        assert route.question == text.strip()
    if route.kind == "refuse":
        assert route.problem.endswith(".") and "\n" not in route.problem.split(";")[-1]
