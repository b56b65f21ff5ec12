"""Long-context retrieval cases: NIAH and RULER-style tasks, built to a verified token length.

Every case is rendered with the model's own chat template and tokenizer (the engine's
Runtime, on the CPU with a tiny context), so its length is counted in tokens, not guessed
from characters: a case must reach at least 95 % of its target length or building stops with
an error. Every arm then gets the very same token ids. The RULER tasks follow the paper's
definitions (Hsieh et al., 2024): multi-key and multi-value NIAH, variable tracking,
common-word extraction, QA with distractor paragraphs. The haystack of the NIAH-style tasks is
the shipped evaluation text (:mod:`bench.evaltext`, ``text="real"``) or the templated generator
(``text="synthetic"``); CWE and QA build their own text, as RULER defines them. All offline.
This module never runs an arm.
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
import string
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import evaltext, scoring, text
from engine.errors import EngineError

MIN_FILL = 0.95
#: D2's exact recent-token window (the locked recipe's); a needle closer to the end than this is
#: read from the exact copy and does not test the compressed cache
EXACT_WINDOW = 1024

Messages = list[dict[str, str]]


@dataclasses.dataclass
class Case:
    id: str
    task: str
    target_ctx: int
    depth: float | None
    tokens: list[int]
    refs: list[str]  # the expected answer(s)
    metric: str  # "code" (one code), "codes" (all of several), "words" (a set), "qa" (F1)
    question: str = ""
    needle_pos: int | None = None  # token index where the asked needle starts

    @property
    def needle_from_end(self) -> int | None:
        return None if self.needle_pos is None else self.n_prompt - self.needle_pos

    @property
    def in_exact_window(self) -> bool | None:
        """True when the needle lies in the last EXACT_WINDOW tokens (D2 reads it uncompressed)."""
        return None if self.needle_from_end is None else self.needle_from_end <= EXACT_WINDOW

    @property
    def n_prompt(self) -> int:
        return len(self.tokens)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(",".join(map(str, self.tokens)).encode()).hexdigest()

    def public(self) -> dict[str, Any]:
        return {"id": self.id, "task": self.task, "target_ctx": self.target_ctx, "depth": self.depth,
                "n_prompt": self.n_prompt, "fill": round(self.n_prompt / self.target_ctx, 4),
                "prompt_sha256": self.sha256, "refs": self.refs, "metric": self.metric,
                "question": self.question, "needle_pos": self.needle_pos,
                "needle_from_end": self.needle_from_end, "in_exact_window": self.in_exact_window}


class ContextTooShortError(EngineError):
    def __init__(self, case: str, tokens: int, target: int) -> None:
        super().__init__(f"case {case} reached {tokens} tokens, under {MIN_FILL:.0%} of its target {target}; "
                         "the filler ran out — raise the filler size or lower the target.")


class PromptBuilder:
    """Chat-template rendering and token counting through the engine's own Runtime (CPU)."""

    def __init__(self, model_path: Path) -> None:
        from engine.runtime import Runtime

        self.rt = Runtime(model_path, "f16", n_ctx=256, n_batch=32, n_gpu_layers=0)
        self.last_fit: Messages = []

    def tokens(self, messages: Messages) -> list[int]:
        return self.rt.chat_tokens(messages)

    def fit(self, case_id: str, make: Callable[[int], Messages], target: int, upper: int) -> list[int]:
        """Largest n with len(tokens(make(n))) <= target; checks the 95 % floor."""
        lo, hi, best = 0, upper, self.tokens(make(0))
        self.last_fit = make(0)
        if len(best) > target:
            raise ContextTooShortError(case_id, len(best), target)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            toks = self.tokens(make(mid))
            if len(toks) <= target:
                lo, best = mid, toks
                self.last_fit = make(mid)
            else:
                hi = mid - 1
        if len(best) < MIN_FILL * target:
            raise ContextTooShortError(case_id, len(best), target)
        return best

    def position(self, messages: Messages, needle: str) -> int:
        """Token index at which ``needle`` starts in the rendered prompt (±1 at a token boundary)."""
        prompt = self.rt.chat_prompt(messages)
        at = prompt.index(needle)
        return len(self.rt.tokenize(prompt[:at], add_bos=False, special=True))

    def close(self) -> None:
        self.rt.close()


# ------------------------------------------------------------------ needles and keys

_ADJ = ["amber", "silent", "northern", "crimson", "hollow", "golden", "quiet", "distant", "iron", "velvet",
        "bright", "frozen", "hidden", "ancient", "rapid", "gentle", "scarlet", "lunar", "misty", "copper"]
_NOUN = ["lantern", "harbor", "falcon", "orchard", "bridge", "compass", "meadow", "beacon", "glacier", "anvil",
         "river", "summit", "thicket", "quarry", "canyon", "willow", "pavilion", "citadel", "reef", "prairie"]


class Codes:
    """Distinct random codes and keys for one run (seeded)."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self._codes: set[str] = set()
        self._keys: set[str] = set()

    def code(self) -> str:
        while True:
            value = f"{self.rng.randint(1000, 9999)}-{self.rng.randint(1000, 9999)}"
            if value not in self._codes:
                self._codes.add(value)
                return value

    def key(self) -> str:
        while True:
            value = f"the {self.rng.choice(_ADJ)} {self.rng.choice(_NOUN)}"
            if value not in self._keys:
                self._keys.add(value)
                return value

    def var(self) -> str:
        return "".join(self.rng.choice(string.ascii_uppercase) for _ in range(5))


def _doc_prompt(doc: str, question: str, intro: str) -> Messages:
    return [{"role": "user", "content": f"{intro}\n\n<document>\n{doc}\n</document>\n\n{question}"}]


def _insert(filler: list[str], items: list[str], depths: list[float]) -> str:
    out = list(filler)
    for item, depth in sorted(zip(items, depths), key=lambda p: -p[1]):
        out.insert(round(depth * len(filler)), item)
    return " ".join(out)


def _filler(target: int, text_name: str = evaltext.DEFAULT_TEXT) -> list[str]:
    return evaltext.sentences(text_name, seed=target, n=target // 8 + 64)


# ------------------------------------------------------------------ NIAH

NIAH_INTRO = "Read the document below. Somewhere in it is a special magic number."


def niah_cases(pb: PromptBuilder, contexts: list[int], depths: list[float], needles: int, seed: int = 0,
               text_name: str = evaltext.DEFAULT_TEXT) -> list[Case]:
    codes = Codes(seed)
    cases: list[Case] = []
    for ctx in contexts:
        filler = _filler(ctx, text_name)
        for depth in depths:
            for k in range(needles):
                key, code = codes.key(), codes.code()
                needle = f"The special magic number for {key} is {code}."
                question = f"What is the special magic number for {key}? Reply with the number only."
                case_id = f"niah-{ctx}-d{depth:g}-n{k}"
                toks = pb.fit(case_id, lambda n: _doc_prompt(_insert(filler[:n], [needle], [depth]), question,
                                                             NIAH_INTRO), ctx, len(filler))
                pos = pb.position(pb.last_fit, needle)
                cases.append(Case(case_id, "niah", ctx, depth, toks, [code], "code", question, pos))
    return cases


# ------------------------------------------------------------------ RULER

RULER_TASKS = ("niah_multikey", "niah_multivalue", "vt", "cwe", "qa")


def _multikey(pb: PromptBuilder, ctx: int, i: int, codes: Codes, text_name: str = evaltext.DEFAULT_TEXT) -> Case:
    filler = _filler(ctx, text_name)
    keys = [codes.key() for _ in range(4)]
    values = [codes.code() for _ in keys]
    needles = [f"The special magic number for {k} is {v}." for k, v in zip(keys, values)]
    depths = [0.15, 0.4, 0.65, 0.9]
    pick = i % len(keys)
    question = f"What is the special magic number for {keys[pick]}? Reply with the number only."
    case_id = f"niah_multikey-{ctx}-{i}"
    toks = pb.fit(case_id, lambda n: _doc_prompt(_insert(filler[:n], needles, depths), question,
                                                 "Read the document below. It holds several special magic numbers."),
                  ctx, len(filler))
    pos = pb.position(pb.last_fit, needles[pick])
    return Case(case_id, "niah_multikey", ctx, depths[pick], toks, [values[pick]], "code", question, pos)


def _multivalue(pb: PromptBuilder, ctx: int, i: int, codes: Codes, text_name: str = evaltext.DEFAULT_TEXT) -> Case:
    filler = _filler(ctx, text_name)
    key = codes.key()
    values = [codes.code() for _ in range(4)]
    needles = [f"One of the special magic numbers for {key} is {v}." for v in values]
    depths = [0.2, 0.45, 0.7, 0.95]
    question = f"What are all the special magic numbers for {key}? List every one of them."
    case_id = f"niah_multivalue-{ctx}-{i}"
    toks = pb.fit(case_id, lambda n: _doc_prompt(_insert(filler[:n], needles, depths), question,
                                                 "Read the document below. It holds special magic numbers."),
                  ctx, len(filler))
    return Case(case_id, "niah_multivalue", ctx, None, toks, values, "codes", question)


def _variable_tracking(pb: PromptBuilder, ctx: int, i: int, codes: Codes, text_name: str = evaltext.DEFAULT_TEXT) -> Case:
    filler = _filler(ctx, text_name)
    value = str(codes.rng.randint(10000, 99999))
    names: list[str] = []
    while len(names) < 5:
        name = codes.var()
        if name not in names:
            names.append(name)
    chain = [f"VAR {names[0]} = {value}."] + [f"VAR {b} = VAR {a}." for a, b in zip(names, names[1:])]
    depths = [0.1 + 0.8 * j / (len(chain) - 1) for j in range(len(chain))]
    question = (f"Question: find all variables that are assigned the value {value} in the text above. "
                "Answer: the variables are")
    case_id = f"vt-{ctx}-{i}"
    toks = pb.fit(case_id, lambda n: _doc_prompt(_insert(filler[:n], chain, depths), question,
                                                 "Memorize and track the chain of variable assignments hidden in "
                                                 "the following text."),
                  ctx, len(filler))
    return Case(case_id, "vt", ctx, None, toks, names, "words", question)


def _common_words(pb: PromptBuilder, ctx: int, i: int, codes: Codes, text_name: str = evaltext.DEFAULT_TEXT) -> Case:
    words = list(text.WORDS)
    codes.rng.shuffle(words)
    common, rare = words[:5], words[5:]
    question = "What are the 5 most common words in the above list? Answer: the top 5 words are"

    def make(n: int) -> Messages:
        # RULER's CWE: rare words 3 times each, common words far more often, grown to fill the context
        r = min(len(rare), n // 4)
        items = common * max(5, (n - 3 * r) // 5) + rare[:r] * 3
        random.Random(ctx * 31 + i).shuffle(items)
        listing = " ".join(f"{j + 1}. {w}" for j, w in enumerate(items))
        return [{"role": "user", "content": "Below is a numbered list of words. In these words, some appear more "
                                            f"often than others. Memorize the ones that appear most often.\n\n"
                                            f"{listing}\n\n{question}"}]

    case_id = f"cwe-{ctx}-{i}"
    toks = pb.fit(case_id, make, ctx, ctx // 2)
    return Case(case_id, "cwe", ctx, None, toks, common, "words", question)


_FIRST = ["Ada", "Bruno", "Clara", "Dmitri", "Elena", "Farid", "Greta", "Hugo", "Ines", "Jonas", "Kira", "Lukas",
          "Mira", "Nadia", "Oskar", "Pia", "Quentin", "Rosa", "Stefan", "Tara", "Ulla", "Viktor", "Wanda", "Yusuf"]
_LAST = ["Morrow", "Kessler", "Vance", "Okafor", "Lindqvist", "Brandt", "Castell", "Duarte", "Eberle", "Fournier",
         "Galloway", "Hartmann", "Ivers", "Jaworski", "Kowal", "Lorenz", "Maddox", "Novak", "Oyelaran", "Petrov"]
_TOWNS = ["Eastbrook", "Marrowfield", "Quillon", "Stonehaven", "Tarrow", "Velmont", "Ashgrove", "Brimley",
          "Corran", "Dunmore", "Fenwick", "Glenhollow", "Halden", "Ironvale", "Kestrel Bay", "Larkspur"]
_JOBS = ["bridge engineer", "marine biologist", "clockmaker", "cartographer", "glassblower", "radio operator",
         "beekeeper", "violin maker", "geologist", "librarian", "pastry chef", "lighthouse keeper"]


def _qa(pb: PromptBuilder, ctx: int, i: int, codes: Codes, text_name: str = evaltext.DEFAULT_TEXT) -> Case:
    rng = random.Random(ctx * 7919 + i)
    people: list[tuple[str, str, str, int]] = []
    seen: set[str] = set()
    while len(people) < 400:
        name = f"{rng.choice(_FIRST)} {rng.choice(_LAST)}"
        if name in seen:
            continue
        seen.add(name)
        people.append((name, rng.choice(_TOWNS), rng.choice(_JOBS), rng.randint(1900, 1999)))
    paragraphs = [f"Passage {j + 1}: {n} is a {job} who lives in {town}. {n.split()[0]} was born in {year} and "
                  f"has worked as a {job} for many years." for j, (n, town, job, year) in enumerate(people)]
    gold = rng.randrange(0, 8)
    name, town, _, _ = people[gold]
    question = f"Answer the question based on the passages above. Question: In which town does {name} live? Answer:"

    def make(n: int) -> Messages:
        # n counts sentences (two per passage) so the length can be met within a few tokens
        chosen = paragraphs[: max(n // 2, gold + 1)]
        # the gold passage sits at a fixed relative depth; the others are distractors
        ordered = chosen[:gold] + chosen[gold + 1 :]
        ordered.insert(round(0.5 * len(ordered)), chosen[gold])
        if n % 2 and n // 2 < len(paragraphs):
            ordered.append(paragraphs[n // 2].split(". ")[0] + ".")
        return [{"role": "user", "content": "Answer the question based on the given passages.\n\n"
                                            + "\n\n".join(ordered) + f"\n\n{question}"}]

    case_id = f"qa-{ctx}-{i}"
    toks = pb.fit(case_id, make, ctx, 2 * len(paragraphs))
    return Case(case_id, "qa", ctx, 0.5, toks, [town], "qa", question)


_RULER = {"niah_multikey": _multikey, "niah_multivalue": _multivalue, "vt": _variable_tracking,
          "cwe": _common_words, "qa": _qa}


def ruler_cases(pb: PromptBuilder, contexts: list[int], tasks: list[str], samples: int, seed: int = 0,
                text_name: str = evaltext.DEFAULT_TEXT) -> list[Case]:
    codes = Codes(seed)
    return [_RULER[task](pb, ctx, i, codes, text_name) for ctx in contexts for task in tasks for i in range(samples)]


# ------------------------------------------------------------------ scoring a case

def score_case(case: Case, answer: str) -> dict[str, Any]:
    """Scores of one answer; ``right`` is the pass/fail used for pairing and flips."""
    if case.metric == "code":
        code = case.refs[0]
        exact = scoring.score_exact(answer, code)
        content = scoring.score_content(answer, code)
        digits = scoring.score_digits(answer, code)
        return {"exact": exact, "content": content, "digits": digits, "score": float(content), "right": content}
    if case.metric == "codes":
        hits = [scoring.score_content(answer, c) for c in case.refs]
        score = sum(hits) / len(hits)
        return {"exact": all(scoring.score_exact(answer, c) for c in case.refs), "content": all(hits),
                "score": score, "right": score == 1.0}
    if case.metric == "words":
        score = scoring.recall_all(answer, case.refs)
        return {"score": score, "f1": scoring.set_f1(answer, case.refs), "right": score == 1.0}
    f1 = scoring.best_f1(answer, case.refs)
    contains = scoring.recall_all(answer, case.refs) == 1.0
    return {"score": f1, "f1": f1, "content": contains, "right": contains}
