"""Error types of the engine, each carrying the numbers a person needs to act.

Every error's ``str()`` is one sentence that says what happened and what to do next; the UI
shows it as is. This module must never import the app.
"""

from __future__ import annotations


class EngineError(Exception):
    """Base class: something the user can fix, described in one sentence."""


class FileWriteError(EngineError, OSError):
    """A write that failed (a full disk, no permission); still an OSError for callers that catch those."""

    def __init__(self, path: str, errno_: int | None, reason: str) -> None:
        OSError.__init__(self, errno_, reason)
        self.path, self.reason = path, reason
        self.args = (
            f"Could not write {path} ({reason}); the previous file, if any, is unchanged. "
            "Free some disk space or choose another folder, then try again.",
        )

    def __str__(self) -> str:
        return str(self.args[0])


class PatchedBuildMissingError(EngineError):
    def __init__(self, detail: str) -> None:
        super().__init__(
            f"The installed llama_cpp is not the fraqtl build ({detail}); run `make setup` "
            "or `python -m engine.build` to build and install it."
        )


class ModelNotFoundError(EngineError):
    def __init__(self, path: str) -> None:
        self.path = path
        super().__init__(f"No GGUF model at {path}; check the path or run `python -m engine.models fetch`.")


class ModelFormatError(EngineError):
    def __init__(self, path: str, reason: str) -> None:
        self.path, self.reason = path, reason
        super().__init__(f"{path} is not a usable GGUF model ({reason}); pick a llama.cpp GGUF file.")


class ModelChecksumError(EngineError):
    def __init__(self, path: str, expected: str, found: str) -> None:
        self.expected, self.found = expected, found
        super().__init__(
            f"{path} has sha256 {found[:12]}…, expected {expected[:12]}…; delete it and run "
            "`python -m engine.models fetch` again."
        )


class ContextOverflowError(EngineError):
    def __init__(self, tokens: int, limit: int) -> None:
        self.tokens, self.limit = tokens, limit
        super().__init__(
            f"The prompt needs {tokens:,} tokens but the context holds {limit:,}; raise the "
            "context (YaRN where the model allows) or choose a page range."
        )


class SamplingError(EngineError, ValueError):
    """A sampling setting out of range; the message names it and says what fits."""

    def __init__(self, name: str, value: object, allowed: str) -> None:
        self.name, self.value, self.allowed = name, value, allowed
        super().__init__(f"The {name} must be {allowed}, not {value}.")


class ArmUnavailableError(EngineError):
    def __init__(self, arm: str, reason: str) -> None:
        self.arm, self.reason = arm, reason
        super().__init__(f"The {arm} arm is unavailable: {reason}")


class ContextMemoryError(ArmUnavailableError):
    """A context that does not fit in memory: refused before llama.cpp tries, or refused by llama.cpp."""

    def __init__(self, arm: str, n_ctx: int, needed: int, available: int | None, detail: str = "",
                 device: str = "") -> None:
        """``device`` names the GPU(s) whose free memory ``available`` is ('' for host memory)."""
        self.n_ctx, self.needed, self.available, self.detail, self.device = n_ctx, needed, available, detail, device
        gib = 2**30
        if available is not None and device:
            what = (f"needs about {needed / gib:,.1f} GiB of GPU memory for the model, its cache and buffers, but "
                    f"{device} {'have' if device.startswith('GPUs') else 'has'} {available / gib:,.1f} GiB free")
        elif available is not None:
            what = (f"needs about {needed / gib:,.1f} GiB of memory for its cache and buffers, but this machine "
                    f"has {available / gib:,.1f} GiB available")
        else:
            what = (f"could not be created by llama.cpp ({detail or 'out of memory'}); it needs about "
                    f"{needed / gib:,.1f} GiB for its cache and buffers")
        todo = "choose a smaller context or a smaller cache (q8_0 or d2)"
        if device:
            todo += ", or close what else uses the GPU"
        super().__init__(arm, f"a {n_ctx:,}-token context {what}; {todo}, then start the engine again.")
        self.args = (f"A {n_ctx:,}-token context with the {arm} cache {what}; {todo}, then start the engine again.",)


class SidecarFormatError(EngineError):
    def __init__(self, path: str, reason: str) -> None:
        self.path, self.reason = path, reason
        super().__init__(f"Sidecar {path} is invalid: {reason}; recalibrate with `fraqtl-calibrate` or pick another file.")


class SidecarNotOrthonormalError(SidecarFormatError):
    def __init__(self, path: str, layer: int, head: int, error: float, tolerance: float) -> None:
        self.layer, self.head, self.error, self.tolerance = layer, head, error, tolerance
        super().__init__(
            path,
            f"the basis of layer {layer} head {head} is not orthonormal (max |UᵀU − I| = {error:.3g}, "
            f"tolerance {tolerance:g}); it would corrupt attention",
        )


class SidecarChecksumError(EngineError):
    def __init__(self, path: str, manifest: str, expected: str, found: str) -> None:
        self.path, self.manifest, self.expected, self.found = path, manifest, expected, found
        super().__init__(
            f"Sidecar {path} has sha256 {found[:12]}…, but its manifest {manifest} records {expected[:12]}…; "
            "the file was changed or damaged: recalibrate with `fraqtl-calibrate` or restore the file."
        )


class SidecarMismatchError(EngineError):
    def __init__(self, path: str, field: str, expected: object, found: object) -> None:
        self.path, self.field, self.expected, self.found = path, field, expected, found
        super().__init__(
            f"Sidecar {path} does not fit this model: {field} is {found}, the model has {expected}; "
            "use the sidecar calibrated for this model (`fraqtl-calibrate MODEL.gguf`)."
        )


class EngineCrashedError(EngineError):
    def __init__(self, arm: str, detail: str) -> None:
        self.arm, self.detail = arm, detail
        super().__init__(f"The {arm} engine process stopped ({detail}); try again, or pick another arm or a smaller context.")


class RpcServerError(EngineError):
    """An RPC server the engine was pointed at cannot take layers; the message says which and why."""

    def __init__(self, endpoint: str, reason: str) -> None:
        self.endpoint, self.reason = endpoint, reason
        super().__init__(
            f"The RPC server {endpoint} cannot be used: {reason}. Start it with `fraqtl-chat rpc-server` "
            "on that host (a trusted network only), or remove it from the rpc_servers setting."
        )

    def __reduce__(self) -> tuple[type, tuple[str, str]]:  # crosses process boundaries intact
        return type(self), (self.endpoint, self.reason)
