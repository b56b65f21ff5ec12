"""The arm comparison: one question answered by several KV-cache arms, each in its own process.

Arms run one after another (one GPU), each in a fresh engine process that is closed before
the next starts, so that peak VRAM belongs to one arm (the chat's own engine is closed by
the UI first). Agreement is measured against the f16 answer, token by token: the shared
prefix (how many of f16's tokens the arm repeats from the start), whether the whole answer
is identical, and the first token where it departs. The results make a markdown report.
No UI here.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from app.conversation import Conversation, EngineFactory, system_message
from app.ingest import Document
from app.settings import Settings
from engine.arms import ArmConfig
from engine.errors import ArmUnavailableError, EngineError
from engine.estimates import estimate
from engine.events import AnswerDone, EngineFailed, Event, PrefillProgress, Token
from engine.nvml import NvmlSampler
from engine.worker import EngineWorker

BASELINE_ARM = "f16"


@dataclasses.dataclass
class ArmResult:
    arm: str
    status: str = "waiting"  # waiting, loading, prefilling, answering, done, stopped, unavailable, failed
    answer: str = ""
    reason: str = ""  # why unavailable or failed
    token_ids: tuple[int, ...] = ()
    n_prompt: int = 0
    prefill_tok_s: float = 0.0
    decode_tok_s: float = 0.0
    peak_vram: int | None = None  # bytes, from NVML; None without telemetry
    estimate_bytes: int = 0
    pieces: tuple[str, ...] = ()  # the answer's token texts, in order (token_ids' spelling)
    shared_prefix: int | None = None  # how many of f16's tokens this answer repeats from the start
    token_match: float | None = None  # shared_prefix as a share of the f16 answer's tokens
    identical: bool | None = None  # the very same tokens as f16's answer, to the last
    departs_at: int | None = None  # index of the first token that differs from f16's (None: identical)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status == "done"

    def departure(self, context: int = 40) -> tuple[str, str, str] | None:
        """Text before the first token that departs from f16's, that token, and text after it."""
        if self.departs_at is None or not self.pieces:
            return None
        k = min(self.departs_at, len(self.pieces))
        before = "".join(self.pieces[:k]).lstrip()
        token = self.pieces[k] if k < len(self.pieces) else ""  # "" : this answer ended where f16's went on
        after = "".join(self.pieces[k + 1 :])
        return before[-context:], token, after[:context]


def agreement(result: ArmResult, baseline: ArmResult) -> None:
    """Fill ``result``'s agreement fields against the baseline (f16) answer, token by token."""
    if not (result.ok and baseline.ok):
        return
    ref, ours = baseline.token_ids, result.token_ids
    same = 0
    for a, b in zip(ref, ours, strict=False):
        if a != b:
            break
        same += 1
    result.shared_prefix = same
    result.token_match = same / len(ref) if ref else float(not ours)
    result.identical = tuple(ref) == tuple(ours)
    result.departs_at = None if result.identical else same


def agreement_lines(result: ArmResult) -> list[str]:
    """The agreement measures against f16, each named for what it is (label, 12 columns, value)."""
    if result.shared_prefix is None:
        return []
    if result.identical:
        return [f"vs f16      identical ({result.shared_prefix} tokens)"]
    return ["vs f16      not identical",
            f"prefix      {result.shared_prefix} tokens shared ({result.token_match:.0%})",
            f"departs at  token {result.departs_at}"]


def compare_arms(settings: Settings) -> list[str]:
    arms = ["f16", "q8_0", "d2"]
    if settings.compare_q4_0:
        arms.insert(2, "q4_0")
    return arms


#: ``on_update(result, event)`` is called for each event of each arm (event None on state changes).
Update = Callable[[ArmResult, Event | None], None]


def run_comparison(document: Document, question: str, settings: Settings, model_path: Path,
                   arms: list[str], factory: EngineFactory = EngineWorker,
                   sampler: NvmlSampler | None = None, on_update: Update = lambda r, e: None,
                   should_stop: Callable[[], bool] = lambda: False) -> list[ArmResult]:
    """Answer ``question`` with each arm in turn; returns one result per arm, in order."""
    results = [ArmResult(arm) for arm in arms]
    for result in results:
        if should_stop():
            result.status, result.reason = "stopped", "not run"
            on_update(result, None)
            continue
        _run_one(document, question, settings, model_path, factory, sampler, result, on_update, should_stop)
    baseline = next((r for r in results if r.arm == BASELINE_ARM), None)
    if baseline is not None:
        for result in results:
            if result is not baseline:
                agreement(result, baseline)
            on_update(result, None)
    return results


def _run_one(document: Document, question: str, settings: Settings, model_path: Path,
             factory: EngineFactory, sampler: NvmlSampler | None, result: ArmResult, on_update: Update,
             should_stop: Callable[[], bool] = lambda: False) -> None:
    conversation = Conversation(document, settings, model_path, factory)
    result.estimate_bytes = estimate(conversation.info, ArmConfig.parse(result.arm), settings.n_ctx,
                                     n_ubatch=conversation.spec(result.arm).n_batch).total_bytes
    result.status = "loading"
    on_update(result, None)
    t0 = time.perf_counter()
    m0 = time.monotonic()
    try:
        conversation.start_engine(arm=result.arm)
        events: Iterator[Event] = conversation.engine.answer(  # type: ignore[union-attr]
            [system_message(document), {"role": "user", "content": question}], settings.max_tokens)
        for event in events:
            if should_stop():
                conversation.stop()  # the engine stops at its next batch or token
            if isinstance(event, PrefillProgress):
                result.status = "prefilling"
            elif isinstance(event, Token):
                result.status = "answering"
                result.answer += event.text
                result.pieces += (event.text,)
            elif isinstance(event, AnswerDone):
                result.status = "stopped" if event.finish == "cancelled" else "done"
                result.reason = "stopped with Esc" if event.finish == "cancelled" else ""
                result.answer = event.text.strip()
                result.token_ids = event.token_ids
                result.n_prompt = event.n_prompt
                result.prefill_tok_s = event.prefill_tok_s
                result.decode_tok_s = event.decode_tok_s
            elif isinstance(event, EngineFailed):
                result.status, result.reason = "failed", event.message
            on_update(result, event)
    except ArmUnavailableError as exc:
        result.status, result.reason = "unavailable", exc.reason
    except EngineError as exc:
        result.status, result.reason = "failed", str(exc)
    finally:
        if sampler is not None and sampler.available and result.status == "done":
            last = sampler.sample_now()  # one sample at the end, in case the answer beat the sampler's interval
            peak = peak_between(sampler, m0, time.monotonic())
            ending = sampler.process_estimate(last) if last is not None else None
            result.peak_vram = max(v for v in (peak, ending, 0) if v is not None) if (peak or ending) else None
        conversation.close()
        result.seconds = time.perf_counter() - t0
    on_update(result, None)


def peak_between(sampler: NvmlSampler, start: float, end: float) -> int | None:
    """The highest use of the watched process(es) sampled between two monotonic times."""
    samples = [s for s in list(sampler.history) if start <= s.t <= end]
    if not samples:
        return None
    return max(sampler.process_estimate(s) for s in samples)


def _mib(value: int | None) -> str:
    return "n/a" if value is None else f"{value / 2**20:,.0f} MiB"


def report_markdown(document: Document, question: str, results: list[ArmResult], model: str,
                    settings: Settings, telemetry_note: str | None = None) -> str:
    """The comparison as a markdown report (answers side by side as a table, then in full)."""
    lines = [
        "# fraqtl-chat arm comparison",
        "",
        f"- Document: {document.title} ({len(document.pages)} page(s), sha256 {document.sha256[:12]}…)",
        f"- Model: {model}",
        f"- Context: {settings.n_ctx:,} tokens; answer limit {settings.max_tokens} tokens",
        f"- Question: {question}",
        f"- Date: {time.strftime('%Y-%m-%d %H:%M:%S')}",
    ]
    if telemetry_note:
        lines.append(f"- GPU telemetry: {telemetry_note}")
    lines += ["", "Agreement with f16 is token by token: the *shared prefix* is how many of f16's answer tokens "
              "an arm repeats from the start; *identical* means every token is the same; *departs at* is the "
              "first token that differs.",
              "", "| arm | status | peak VRAM | estimate | prefill tok/s | decode tok/s | shared prefix with f16 "
              "| identical to f16 | departs at token |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        prefix = "—" if r.shared_prefix is None else f"{r.shared_prefix} ({r.token_match:.0%})"
        identical = "—" if r.identical is None else ("yes" if r.identical else "no")
        departs = "—" if r.departs_at is None else str(r.departs_at)
        status = r.status if not r.reason else f"{r.status}: {r.reason}"
        lines.append(f"| {r.arm} | {status} | {_mib(r.peak_vram)} | {_mib(r.estimate_bytes)} | "
                     f"{r.prefill_tok_s:,.1f} | {r.decode_tok_s:,.1f} | {prefix} | {identical} | {departs} |")
    for r in results:
        lines += ["", f"## {r.arm}", "", r.answer or f"_{r.status}{': ' + r.reason if r.reason else ''}_"]
        where = r.departure()
        if where is not None:
            before, token, after = where
            lead = token[: len(token) - len(token.lstrip())]
            shown = f"{lead}**{token.strip() or '(end of answer)'}**"
            lines += ["", f"Departs from f16 at token {r.departs_at}: …{before}{shown}{after}…"]
    return "\n".join(lines) + "\n"
