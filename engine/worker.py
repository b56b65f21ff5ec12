"""The worker process: one :class:`~engine.runtime.Runtime` hosted in a child process.

The app (and anything else that must survive llama.cpp) talks to a model through an
:class:`EngineWorker`: the child is started with ``multiprocessing``'s *spawn* method, loads
the model with one arm, and answers commands sent over a pipe, streaming
:mod:`engine.events` back as it goes. A Stop sets a shared flag that the runtime checks
between batches and between tokens. If the child raises, its error is rebuilt in the parent
with the same type and fields; if it dies (a crash in llama.cpp, a CUDA OOM that kills it),
the parent raises :class:`~engine.errors.EngineCrashedError` and the caller carries on.
The child's stderr (llama.cpp's messages, an abort's assertion and backtrace) goes to a log
file under the cache folder, never to the terminal a UI draws on; a crash's error quotes the
abort line and names the log, which is kept; a clean close deletes it. Of the logs kept after
crashes, the newest :data:`KEEP_LOGS` stay; a new engine deletes older ones.

This module must never import the app, nor any UI toolkit.
"""

from __future__ import annotations

import contextlib
import dataclasses
import multiprocessing as mp
import os
import re
import sys
import tempfile
import traceback
from collections.abc import Iterator, Sequence
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from engine import errors
from engine.errors import ArmUnavailableError, EngineCrashedError, EngineError
from engine.estimates import N_UBATCH
from engine.events import EngineFailed, Event
from engine.sampling import GREEDY, Sampling

_POLL_S = 0.1
KEEP_LOGS = 20  # engine logs kept after crashes (the new engine's own included)


@dataclasses.dataclass(frozen=True)
class EngineSpec:
    """What a worker loads: a model file, an arm and a context size."""

    model_path: str
    arm: str = "f16"
    n_ctx: int = 8192
    yarn: bool = False
    n_batch: int = N_UBATCH  # n_batch = n_ubatch; the estimates assume the same
    n_threads: int | None = None
    n_gpu_layers: int = -1
    sidecar: str | None = None  # a folder of D2 sidecars (with manifest); None: found by model sha256
    rpc_servers: tuple[str, ...] = ()  # host:port of rpc-servers that take layers (engine.rpc)
    split_mode: str = "layer"  # "layer": layers spread over the GPUs (and RPC servers); "none": one GPU
    tensor_split: tuple[float, ...] | None = None  # each device's share of the layers; None: by free memory


@dataclasses.dataclass(frozen=True)
class EngineLoaded:
    """The child's reply once the model is loaded."""

    arm: str
    n_ctx: int
    n_ctx_train: int
    kv_bytes: int
    pid: int


# ---------------------------------------------------------------------------- errors across the pipe


def _error_payload(exc: BaseException) -> tuple[str, str, dict[str, Any]]:
    attrs = {k: v for k, v in vars(exc).items() if isinstance(v, (str, int, float, bool, type(None)))}
    return type(exc).__name__, str(exc), attrs


def rebuild_error(kind: str, message: str, attrs: dict[str, Any]) -> EngineError:
    """The child's exception, as the same engine error type with the same fields and message."""
    cls = getattr(errors, kind, None)
    if not (isinstance(cls, type) and issubclass(cls, EngineError)):
        cls = EngineError
        message = message if message.endswith(".") else f"{message}."
    exc = cls.__new__(cls)
    Exception.__init__(exc, message)
    exc.__dict__.update(attrs)
    return exc


# ---------------------------------------------------------------------------- the child


def _sidecar_settings(spec: EngineSpec) -> Any:
    """D2 settings from the sidecar folder the user chose (None: the engine finds them by sha256)."""
    if not (spec.sidecar and spec.arm.startswith("d2")):
        return None
    from engine import d2 as d2_module
    from engine import sidecar
    from engine.arms import ArmConfig
    from engine.gguf import read_gguf
    from engine.models import model_sha256

    info = read_gguf(spec.model_path)
    arm = ArmConfig.parse(spec.arm)
    found = sidecar.find_sidecars(model_sha256(info.path), dirs=[Path(spec.sidecar).expanduser()])
    if not found:
        raise ArmUnavailableError(arm.label, f"no sidecar for {info.name} in {spec.sidecar}; choose the folder "
                                             "that `fraqtl-calibrate` wrote for this model.")
    k_path, v_path, manifest = found
    recipe_for = getattr(d2_module, "recipe_for", None)
    recipe = recipe_for(info, arm, manifest.data) if recipe_for else arm.recipe
    return d2_module.D2Settings(recipe=recipe, k_sidecar=Path(k_path), v_sidecar=Path(v_path))


def _load_runtime(spec: EngineSpec) -> Any:
    from engine.runtime import Runtime

    try:
        return Runtime(spec.model_path, spec.arm, n_ctx=spec.n_ctx, n_batch=spec.n_batch,
                       n_gpu_layers=spec.n_gpu_layers, yarn=spec.yarn, n_threads=spec.n_threads,
                       d2=_sidecar_settings(spec), rpc_servers=spec.rpc_servers,
                       split_mode=spec.split_mode, tensor_split=spec.tensor_split)
    except ImportError as exc:  # the D2 module is not in this build yet
        if spec.arm.startswith("d2"):
            raise ArmUnavailableError(spec.arm, f"this build has no D2 cache yet ({exc.name or exc}).") from exc
        raise


def _log_to(log_path: str | None) -> None:
    """Point this process's stdout and stderr (fds 1 and 2: llama.cpp's messages, ggml_abort's
    line and the debugger backtrace it prints) at the log."""
    if not log_path:
        return
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def _child_main(spec: EngineSpec, conn: Connection, stop_flag: Any, log_path: str | None = None) -> None:
    """Entry point of the worker process: load, then serve commands until 'close'."""
    _log_to(log_path)
    try:
        runtime = _load_runtime(spec)
        conn.send(("loaded", EngineLoaded(runtime.arm.label, spec.n_ctx, runtime.info.n_ctx_train,
                                          runtime.kv_bytes(), os.getpid())))
    except BaseException as exc:  # noqa: BLE001 - every failure goes back to the parent
        conn.send(("error", _error_payload(exc)))
        return
    while True:
        try:
            command, args = conn.recv()
        except (EOFError, OSError):
            break
        if command == "close":
            break
        try:
            if command == "count":
                conn.send(("result", runtime.count_tokens(args)))
            elif command == "chat_count":
                conn.send(("result", len(runtime.chat_tokens(args))))
            elif command == "kv_bytes":
                conn.send(("result", runtime.kv_bytes()))
            elif command == "answer":
                messages, max_tokens, sampling = args
                stop_flag.clear()
                for event in runtime.answer(messages, max_tokens, should_stop=stop_flag.is_set, sampling=sampling):
                    conn.send(("event", event))
                conn.send(("end", None))
            else:
                conn.send(("error", ("EngineError", f"unknown worker command {command!r}", {})))
        except EngineError as exc:
            conn.send(("error", _error_payload(exc)))
        except Exception as exc:  # noqa: BLE001 - e.g. a llama.cpp decode failure or CUDA OOM
            detail = f"{type(exc).__name__}: {exc}"
            conn.send(("failed", EngineFailed(detail, type(exc).__name__)))
            if os.environ.get("FRAQTL_WORKER_TRACEBACK"):
                traceback.print_exc()
    runtime.close()


# ---------------------------------------------------------------------------- the parent


def _new_log_path(arm: str) -> Path:
    from engine import locations

    folder = locations.cache_dir() / "logs"
    folder.mkdir(parents=True, exist_ok=True)
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", arm)
    fd, name = tempfile.mkstemp(prefix=f"engine-{safe}-", suffix=".log", dir=folder)
    os.close(fd)
    prune_logs(folder, keep=KEEP_LOGS)
    return Path(name)


def prune_logs(folder: Path, keep: int = KEEP_LOGS) -> list[Path]:
    """Delete all but the newest ``keep`` engine logs in ``folder``; returns the deleted ones.

    Crash logs are kept for the person to read, but would otherwise pile up forever. Only
    ``engine-*.log`` files are touched; a log that vanishes meanwhile (another app pruning) is fine.
    """
    dated: list[tuple[int, str, Path]] = []
    for log in folder.glob("engine-*.log"):
        try:
            dated.append((log.stat().st_mtime_ns, log.name, log))
        except OSError:
            continue
    dated.sort(reverse=True)
    deleted: list[Path] = []
    for _, _, log in dated[keep:]:
        try:
            log.unlink()
            deleted.append(log)
        except OSError:
            pass
    return deleted


class EngineWorker:
    """A model in its own process; methods block the calling thread, never the child's crash."""

    #: what the child process runs; a test may subclass to inject a fault into the real engine process
    child_main = staticmethod(_child_main)

    def __init__(self, spec: EngineSpec, load_timeout_s: float = 300.0) -> None:
        self.spec = spec
        self.load_timeout_s = load_timeout_s
        self.loaded: EngineLoaded | None = None
        self.log_path: Path | None = _new_log_path(spec.arm)
        ctx = mp.get_context("spawn")
        self._conn, child_conn = ctx.Pipe(duplex=True)
        with _real_std_streams():  # the semaphore may start multiprocessing's resource tracker
            self._stop = ctx.Event()
        self._process = ctx.Process(target=type(self).child_main,
                                    args=(spec, child_conn, self._stop, str(self.log_path)),
                                    name=f"fraqtl-engine-{spec.arm}", daemon=True)
        self._child_conn = child_conn

    # -------------------------------------------------------------- lifecycle

    def start(self) -> EngineLoaded:
        """Start the child and wait for the model to load; raises the child's error type."""
        with _real_std_streams():
            self._process.start()
        self._child_conn.close()
        kind, payload = self._recv(timeout_s=self.load_timeout_s)
        if kind == "error":
            self.close()
            raise rebuild_error(*payload)
        if kind == "failed":
            self.close()
            raise EngineCrashedError(self.spec.arm, payload.message)
        self.loaded = payload
        return payload

    @property
    def pid(self) -> int | None:
        return self._process.pid

    @property
    def alive(self) -> bool:
        return self._process.is_alive()

    def stop(self) -> None:
        """Ask the running answer to stop at the next batch or token boundary."""
        self._stop.set()

    def close(self, timeout_s: float = 5.0) -> None:
        crashed = self._process.exitcode not in (None, 0)  # a crash's log is kept for the person
        if self._process.is_alive():
            try:
                self._conn.send(("close", None))
            except (OSError, BrokenPipeError):
                pass
            self._process.join(timeout_s)
            if self._process.is_alive():
                self._process.kill()
                self._process.join(timeout_s)
        self._conn.close()
        if self.log_path is not None and not crashed:
            self.log_path.unlink(missing_ok=True)
            self.log_path = None

    def crash_detail(self) -> str:
        """How the child ended, with the abort line from its log and where the log is."""
        detail = _exit_detail(self._process.exitcode)
        if self.log_path is None:
            return detail
        line = _abort_line(self.log_path)
        if line:
            detail += f": {line}"
        return f"{detail}; log: {self.log_path}"

    def __enter__(self) -> EngineWorker:
        if self.loaded is None:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -------------------------------------------------------------- commands

    def _recv(self, timeout_s: float | None = None) -> tuple[str, Any]:
        waited = 0.0
        while not self._poll(_POLL_S):
            waited += _POLL_S
            if not self._process.is_alive() and not self._poll(0):
                raise EngineCrashedError(self.spec.arm, self.crash_detail())
            if timeout_s is not None and waited > timeout_s:
                raise EngineCrashedError(self.spec.arm, f"no reply within {timeout_s:.0f} s")
        try:
            return self._conn.recv()
        except (EOFError, OSError) as exc:
            self._process.join(1)
            raise EngineCrashedError(self.spec.arm, self.crash_detail()) from exc

    def _poll(self, timeout_s: float) -> bool:
        try:
            return self._conn.poll(timeout_s)
        except (OSError, EOFError) as exc:
            # close() from another thread: the app gave up on a hung engine while this one waited for it
            self._process.join(1)
            raise EngineCrashedError(self.spec.arm, "closed while it was still answering") from exc

    def _call(self, command: str, args: Any = None) -> Any:
        try:
            self._conn.send((command, args))
        except (OSError, BrokenPipeError) as exc:
            self._process.join(1)
            raise EngineCrashedError(self.spec.arm, self.crash_detail()) from exc
        kind, payload = self._recv()
        if kind == "error":
            raise rebuild_error(*payload)
        if kind == "failed":
            raise EngineCrashedError(self.spec.arm, payload.message)
        return payload

    def count_tokens(self, text: str) -> int:
        return int(self._call("count", text))

    def count_chat_tokens(self, messages: Sequence[dict[str, str]]) -> int:
        return int(self._call("chat_count", list(messages)))

    def kv_bytes(self) -> int:
        return int(self._call("kv_bytes"))

    def answer(self, messages: Sequence[dict[str, str]], max_tokens: int = 256,
               sampling: Sampling = GREEDY) -> Iterator[Event]:
        """Stream the events of one answer; a dead child ends the stream with EngineFailed."""
        self._stop.clear()
        try:
            self._conn.send(("answer", (list(messages), max_tokens, sampling)))
        except (OSError, BrokenPipeError):
            self._process.join(1)
            yield EngineFailed(str(EngineCrashedError(self.spec.arm, self.crash_detail())), "EngineCrashedError")
            return
        while True:
            try:
                kind, payload = self._recv()
            except EngineCrashedError as exc:
                yield EngineFailed(str(exc), "EngineCrashedError")
                return
            if kind == "event":
                yield payload
            elif kind == "end":
                return
            elif kind == "error":
                exc = rebuild_error(*payload)
                yield EngineFailed(str(exc), payload[0])
                return
            elif kind == "failed":
                yield EngineFailed(str(EngineCrashedError(self.spec.arm, payload.message)), payload.kind)
                return


@contextlib.contextmanager
def _real_std_streams() -> Iterator[None]:
    """Start children with the real stdout/stderr: a UI may have replaced them with objects
    whose fileno() is not a file descriptor, which multiprocessing cannot pass on."""
    saved = sys.stdout, sys.stderr
    sys.stdout = sys.__stdout__ or saved[0]
    sys.stderr = sys.__stderr__ or saved[1]
    try:
        yield
    finally:
        sys.stdout, sys.stderr = saved


_SIGNAL_MEANING = {
    "SIGABRT": "llama.cpp aborted (SIGABRT)",
    "SIGSEGV": "it crashed inside llama.cpp (SIGSEGV)",
    "SIGBUS": "it crashed inside llama.cpp (SIGBUS)",
    "SIGKILL": "killed by SIGKILL, e.g. by the system's out-of-memory killer",
}
# ggml_abort writes "file:line: message"; an uncaught C++ exception "terminate called ..."
_ABORT_LINE = re.compile(r"^\S+\.(?:c|cc|cpp|cu|h):\d+: .+|^terminate called .+|GGML_ASSERT.+")


def _exit_detail(exitcode: int | None) -> str:
    if exitcode is None:
        return "it stopped answering"
    if exitcode < 0:
        import signal

        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        return _SIGNAL_MEANING.get(name, f"killed by {name}")
    return f"exit code {exitcode}"


def _abort_line(log_path: Path, tail_bytes: int = 64 * 1024) -> str:
    """The last abort or assertion line in the tail of an engine log ('' if none)."""
    try:
        with log_path.open("rb") as fh:
            fh.seek(max(log_path.stat().st_size - tail_bytes, 0))
            text = fh.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    found = [line.strip() for line in text.splitlines() if _ABORT_LINE.search(line.strip())]
    return found[-1][:300] if found else ""


def default_model_path() -> Path:
    from engine.models import resolve

    return resolve(None)
