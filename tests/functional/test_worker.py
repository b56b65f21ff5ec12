"""The engine worker process: streaming, Stop, errors rebuilt as their types, a crash survived."""

from __future__ import annotations

import contextlib
import os
import signal

import pytest

from engine.errors import ArmUnavailableError, ContextOverflowError, EngineCrashedError
from engine.events import AnswerDone, EngineFailed, Token
from engine.worker import EngineSpec, EngineWorker, rebuild_error

from app_pilot import SHORT_DOCUMENT

QUESTION = [{"role": "system", "content": "Answer using only this document.\n\n" + SHORT_DOCUMENT},
            {"role": "user", "content": "Who is the harbour master?"}]


def test_worker_streams_an_answer_and_reuses_the_prefix(model_path):
    with EngineWorker(EngineSpec(str(model_path), "f16", n_ctx=512, n_threads=2)) as worker:
        assert worker.loaded is not None and worker.loaded.n_ctx_train == 8192
        assert worker.pid != os.getpid()
        events = list(worker.answer(QUESTION, max_tokens=16))
        done = events[-1]
        assert isinstance(done, AnswerDone)
        assert "".join(e.text for e in events if isinstance(e, Token)).strip() == done.text.strip()
        assert "Varga" in done.text
        again = list(worker.answer(QUESTION, max_tokens=4))[-1]
        assert isinstance(again, AnswerDone) and again.n_evaluated <= 2  # all but the last token reused
        assert worker.count_chat_tokens(QUESTION) == done.n_prompt


def test_stop_flag_cancels_between_tokens(model_path):
    with EngineWorker(EngineSpec(str(model_path), "f16", n_ctx=512, n_threads=2)) as worker:
        events = []
        for event in worker.answer([{"role": "user", "content": "Count from one to one hundred in words."}], 200):
            events.append(event)
            if isinstance(event, Token) and sum(isinstance(e, Token) for e in events) == 3:
                worker.stop()
        done = events[-1]
        assert isinstance(done, AnswerDone) and done.finish == "cancelled" and done.n_generated < 10


def test_errors_cross_the_process_boundary_as_their_types(model_path):
    with EngineWorker(EngineSpec(str(model_path), "f16", n_ctx=256, n_threads=2)) as worker:
        long = [{"role": "user", "content": "word " * 400}]
        failed = list(worker.answer(long, 4))[-1]
        assert isinstance(failed, EngineFailed) and failed.kind == "ContextOverflowError"
        assert "holds 256" in failed.message
    exc = rebuild_error("ContextOverflowError", "The prompt needs 9 tokens but the context holds 4.",
                        {"tokens": 9, "limit": 4})
    assert isinstance(exc, ContextOverflowError) and (exc.tokens, exc.limit) == (9, 4)


def test_a_bad_arm_is_refused_with_its_reason(model_path):
    worker = EngineWorker(EngineSpec(str(model_path), "d2:k16v32", n_ctx=256, n_threads=2))
    try:
        worker.start()
    except ArmUnavailableError as exc:  # until the D2 cache lands in this build
        assert exc.arm.startswith("d2") and exc.reason
    else:
        worker.close()


def run_answer_until_hung(worker: EngineWorker) -> tuple[object, list[object], list[BaseException]]:
    """Answer in a thread; SIGSTOP the engine at the first token (hung mid-answer: alive, silent)."""
    import threading

    events: list[object] = []
    errors: list[BaseException] = []
    first_token = threading.Event()

    def answer() -> None:
        try:
            for event in worker.answer([{"role": "user", "content": "Tell me a long story."}], 200):
                events.append(event)
                if isinstance(event, Token) and not first_token.is_set():
                    os.kill(worker.pid, signal.SIGSTOP)
                    first_token.set()
        except BaseException as exc:  # noqa: BLE001 - the test reports it
            errors.append(exc)

    waiting = threading.Thread(target=answer)
    waiting.start()
    assert first_token.wait(60), "no token streamed"
    return waiting, events, errors


class PipeClosedBetweenPolls:
    """The worker's pipe, where an armed poll waits until the pipe was closed: the answering
    thread was scheduled out between two polls while another thread closed the engine."""

    def __init__(self, conn) -> None:
        import threading

        self.conn, self.armed, self.closed = conn, threading.Event(), threading.Event()

    def poll(self, timeout: float = 0.0) -> bool:
        if self.armed.is_set():
            self.closed.wait(30)
        return self.conn.poll(timeout)

    def close(self) -> None:
        self.conn.close()
        self.closed.set()

    def __getattr__(self, name: str):
        return getattr(self.conn, name)


@pytest.mark.parametrize("when", ["waiting-in-poll", "between-polls"])
def test_closing_a_hung_engine_ends_the_answer_waiting_on_it_with_engine_failed(model_path, when):
    """The app gives up on a hung engine and closes it from another thread (F5) while an answer
    still waits on its pipe: that answer must end as EngineFailed, never as an OSError of a
    closed pipe (which ended the app's answer worker, and the app, in a Pilot run)."""
    import time

    worker = EngineWorker(EngineSpec(str(model_path), "f16", n_ctx=512, n_threads=2)).__enter__()
    pid = worker.pid
    pipe = worker._conn = PipeClosedBetweenPolls(worker._conn)  # type: ignore[assignment]
    waiting, events, errors = run_answer_until_hung(worker)
    try:
        assert worker.alive
        time.sleep(0.5)  # the tokens already sent are read; the answer waits for more
        if when == "between-polls":
            pipe.armed.set()
        worker.close(timeout_s=0.5)  # "close" is never read by a stopped process: it is killed
        waiting.join(10)
        assert not waiting.is_alive() and errors == []
        last = events[-1]
        assert isinstance(last, EngineFailed) and last.kind == "EngineCrashedError", last
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        waiting.join(10)


def test_a_killed_engine_becomes_engine_failed_and_the_parent_survives(model_path):
    worker = EngineWorker(EngineSpec(str(model_path), "f16", n_ctx=512, n_threads=2)).__enter__()
    try:
        events = []
        for event in worker.answer([{"role": "user", "content": "Tell me a long story."}], 200):
            events.append(event)
            if isinstance(event, Token):
                os.kill(worker.pid, signal.SIGKILL)
        last = events[-1]
        assert isinstance(last, EngineFailed) and last.kind == "EngineCrashedError"
        assert "SIGKILL" in last.message
        with pytest.raises(EngineCrashedError):
            worker.count_tokens("hello")
    finally:
        worker.close()
    assert worker.log_path is not None and worker.log_path.exists()  # a crash's log is kept for the person
    assert f"log: {worker.log_path}" in last.message
    worker.log_path.unlink()


def test_a_clean_close_deletes_the_engine_log(model_path):
    with EngineWorker(EngineSpec(str(model_path), "f16", n_ctx=256, n_threads=2)) as worker:
        log = worker.log_path
        assert log is not None and log.exists()
    assert not log.exists() and worker.log_path is None


def test_stop_cancels_a_prefill_within_a_batch(model_path):
    spec = EngineSpec(str(model_path), "f16", n_ctx=2048, n_batch=32, n_threads=2)
    with EngineWorker(spec) as worker:
        long = [{"role": "user", "content": " ".join(f"Line {i}: the tide was high." for i in range(60))}]
        events = []
        for event in worker.answer(long, 8):
            events.append(event)
            if len(events) == 2:  # the first batch is done
                worker.stop()
        done = events[-1]
        assert isinstance(done, AnswerDone) and done.finish == "cancelled"
        assert done.n_evaluated < done.n_prompt and done.n_generated == 0


def test_a_sidecar_folder_without_this_models_sidecars_is_refused(model_path, tmp_path):
    spec = EngineSpec(str(model_path), "d2", n_ctx=256, n_threads=2, sidecar=str(tmp_path))
    with pytest.raises(ArmUnavailableError, match=f"no sidecar for .* in {tmp_path}"):
        EngineWorker(spec).start()


def test_sampling_crosses_the_pipe_reproducibly_and_the_penalty_curbs_repeats(model_path):
    from collections import Counter

    from engine.sampling import Sampling

    repeating = [{"role": "user", "content": "List the days of the week, again and again."}]
    with EngineWorker(EngineSpec(str(model_path), "f16", n_ctx=512, n_threads=2)) as worker:
        greedy = list(worker.answer(QUESTION, max_tokens=16))[-1]
        assert list(worker.answer(QUESTION, 16, Sampling()))[-1].token_ids == greedy.token_ids  # greedy is the default
        warm = Sampling(temperature=1.5, top_p=0.95, seed=11)
        first, second = (list(worker.answer(QUESTION, 16, warm))[-1] for _ in range(2))
        assert isinstance(first, AnswerDone) and first.token_ids == second.token_ids  # a seed reproduces it
        other = list(worker.answer(QUESTION, 16, Sampling(temperature=1.5, top_p=0.95, seed=12)))[-1]
        assert {first.token_ids, other.token_ids} != {greedy.token_ids}  # it does sample
        # greedy, SmolLM2 writes "Monday, Monday\nTuesday, Tuesday…" (one token 9 times in 40)
        plain = list(worker.answer(repeating, 40))[-1]
        curbed = list(worker.answer(repeating, 40, Sampling(repeat_penalty=1.3)))[-1]
        most = Counter(plain.token_ids).most_common(1)[0][1]
        assert most >= 6 and Counter(curbed.token_ids).most_common(1)[0][1] <= most // 2
        failed = list(worker.answer(QUESTION, 4, Sampling(top_p=0.0)))[-1]
        assert isinstance(failed, EngineFailed) and failed.kind == "SamplingError"
        assert failed.message.startswith("The top-p must be above 0")
