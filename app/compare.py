"""The arm comparison: one question answered by several KV-cache arms, each in its own process.

Arms run one after another (one GPU), each in a fresh engine process that is closed before
the next starts, so that peak VRAM belongs to one arm. Agreement is measured against the
f16 answer: the share of f16's tokens matched from the start, and whether the first
sentence says the same. The results make a markdown report. No UI here.
"""

from __future__ import annotations

import dataclasses
import re
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
    status: str = "waiting"  # waiting, loading, prefilling, answering, done, unavailable, failed
    answer: str = ""
    reason: str = ""  # why unavailable or failed
    token_ids: tuple[int, ...] = ()
    n_prompt: int = 0
    prefill_tok_s: float = 0.0
    decode_tok_s: float = 0.0
    peak_vram: int | None = None  # bytes, from NVML; None without telemetry
    estimate_bytes: int = 0
    token_match: float | None = None  # share of the f16 answer's tokens matched from the start
    same_answer: bool | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status == "done"


def first_sentence(text: str) -> str:
    sentence = re.split(r"(?<=[.!?])\s", text.strip(), maxsplit=1)[0]
    return re.sub(r"[^a-z0-9 ]", "", sentence.lower()).strip()


def agreement(result: ArmResult, baseline: ArmResult) -> None:
    """Fill ``result``'s agreement fields against the baseline (f16) answer."""
    if not (result.ok and baseline.ok):
        return
    ref, ours = baseline.token_ids, result.token_ids
    same = 0
    for a, b in zip(ref, ours, strict=False):
        if a != b:
            break
        same += 1
    result.token_match = same / len(ref) if ref else float(not ours)
    result.same_answer = first_sentence(result.answer) == first_sentence(baseline.answer)


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
            result.status, result.reason = "failed", "cancelled"
            on_update(result, None)
            continue
        _run_one(document, question, settings, model_path, factory, sampler, result, on_update)
    baseline = next((r for r in results if r.arm == BASELINE_ARM), None)
    if baseline is not None:
        for result in results:
            if result is not baseline:
                agreement(result, baseline)
            on_update(result, None)
    return results


def _run_one(document: Document, question: str, settings: Settings, model_path: Path,
             factory: EngineFactory, sampler: NvmlSampler | None, result: ArmResult, on_update: Update) -> None:
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
            if isinstance(event, PrefillProgress):
                result.status = "prefilling"
            elif isinstance(event, Token):
                result.status = "answering"
                result.answer += event.text
            elif isinstance(event, AnswerDone):
                result.status = "done"
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
    lines += ["", "| arm | status | peak VRAM | estimate | prefill tok/s | decode tok/s | token match vs f16 | same answer |",
              "|---|---|---|---|---|---|---|---|"]
    for r in results:
        match = "—" if r.token_match is None else f"{r.token_match:.0%}"
        same = "—" if r.same_answer is None else ("yes" if r.same_answer else "no")
        status = r.status if not r.reason else f"{r.status}: {r.reason}"
        lines.append(f"| {r.arm} | {status} | {_mib(r.peak_vram)} | {_mib(r.estimate_bytes)} | "
                     f"{r.prefill_tok_s:,.1f} | {r.decode_tok_s:,.1f} | {match} | {same} |")
    for r in results:
        lines += ["", f"## {r.arm}", "", r.answer or f"_{r.status}{': ' + r.reason if r.reason else ''}_"]
    return "\n".join(lines) + "\n"
