"""Layers on other hosts through llama.cpp's RPC backend (``ggml-rpc`` and its ``rpc-server``).

A model that outgrows one machine can put some of its layers (their weights, their KV cache
and, for D2, their bases and exact copies) on ``rpc-server`` processes elsewhere; llama.cpp
splits the layers as it does across local GPUs. This module checks each server before
llama.cpp sees it (llama.cpp aborts the whole process on a server it cannot reach), registers
the servers with ggml, and finds the ``ggml-rpc-server`` built from our patched tree (a stock
server does not know the D2 block types). The registration is process-wide and cannot be
undone, so a runtime with RPC servers belongs in its own worker process.

``rpc-server`` has no authentication and no encryption: loopback or a trusted network only.
This module never imports the app.
"""

from __future__ import annotations

import ctypes
import dataclasses
import socket
import struct
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from engine.errors import EngineError, RpcServerError

DEFAULT_PORT = 50052
SERVER_BINARY = "ggml-rpc-server"
#: ggml-rpc.h: a server must speak this major version, and no newer minor one
RPC_PROTO_MAJOR, RPC_PROTO_MINOR = 7, 0

# ggml-rpc.cpp's wire format: | cmd (1 byte) | size (uint64) | payload | -> | size (uint64) | payload |
_CMD_GET_ALLOC_SIZE = 13
_CMD_HELLO = 14
_CMD_DEVICE_COUNT = 15
_CONN_CAPS = 24  # RPC_CONN_CAPS_SIZE (transport.h)
_MAX_DIMS, _MAX_SRC, _MAX_OP_PARAMS, _MAX_NAME = 4, 10, 64, 64  # ggml.h
_GGML_TYPE_D2_P16 = 44  # patch 0002's enum value (tested); only a server built with our patch knows it
_D2_P16_BLOCK_BYTES = 52  # 16 fp16 + 48 3-bit codes + one fp16 scale, for 64 coefficients


class _RpcTensor(ctypes.Structure):
    """ggml-rpc.cpp's ``rpc_tensor`` (packed: ``#pragma pack(push, 1)`` there)."""

    _pack_ = 1
    _fields_ = [
        ("id", ctypes.c_uint64), ("type", ctypes.c_uint32), ("buffer", ctypes.c_uint64),
        ("ne", ctypes.c_uint32 * _MAX_DIMS), ("nb", ctypes.c_uint32 * _MAX_DIMS), ("op", ctypes.c_uint32),
        ("op_params", ctypes.c_int32 * (_MAX_OP_PARAMS // 4)), ("flags", ctypes.c_int32),
        ("src", ctypes.c_uint64 * _MAX_SRC), ("view_src", ctypes.c_uint64), ("view_offs", ctypes.c_uint64),
        ("data", ctypes.c_uint64), ("name", ctypes.c_char * _MAX_NAME), ("use_count", ctypes.c_int32),
    ]


class _AllocSizeRequest(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("device", ctypes.c_uint32), ("tensor", _RpcTensor), ("srcs", _RpcTensor * _MAX_SRC)]


@dataclasses.dataclass(frozen=True)
class RpcServer:
    """What a server said about itself before any layer went there."""

    endpoint: str
    version: tuple[int, int, int]
    n_devices: int
    d2_types: bool | None  # None: not asked (an upstream arm needs no D2 types)


def parse_endpoints(value: str | Iterable[str] | None) -> tuple[str, ...]:
    """``host:port`` endpoints from a comma-separated string or a list; a bad one is an error."""
    if value is None:
        return ()
    items = value.split(",") if isinstance(value, str) else list(value)
    endpoints: list[str] = []
    for raw in items:
        item = raw.strip()
        if not item:
            continue
        host, sep, port = item.rpartition(":")
        if not sep or not host or ":" in host or not port.isdigit() or not 1 <= int(port) <= 65535:
            raise EngineError(
                f"'{item}' is not an RPC server address; write host:port (an IPv4 address or a host name and "
                f"a port between 1 and 65535, e.g. 192.168.1.20:{DEFAULT_PORT}), several separated by commas."
            )
        endpoint = f"{host}:{int(port)}"
        if endpoint not in endpoints:
            endpoints.append(endpoint)
    return tuple(endpoints)


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("the server closed the connection")
        data += chunk
    return data


def _call(sock: socket.socket, cmd: int, payload: bytes, reply_size: int) -> bytes:
    sock.sendall(struct.pack("<BQ", cmd, len(payload)) + payload)
    (size,) = struct.unpack("<Q", _recv_exact(sock, 8))
    if size != reply_size:
        raise ConnectionError(f"a reply of {size} bytes where {reply_size} were expected")
    return _recv_exact(sock, size)


def _d2_probe() -> bytes:
    """GET_ALLOC_SIZE of one D2 block: a server without the D2 types drops the connection."""
    request = _AllocSizeRequest()
    tensor = request.tensor
    tensor.id, tensor.type = 1, _GGML_TYPE_D2_P16
    for i in range(_MAX_DIMS):
        tensor.ne[i] = 64 if i == 0 else 1
        tensor.nb[i] = _D2_P16_BLOCK_BYTES
    return bytes(request)


def probe(endpoint: str, need_d2: bool = True, timeout_s: float = 5.0) -> RpcServer:
    """Connect, shake hands and count devices (and ask for the D2 types); errors name the server."""
    host, _, port = endpoint.rpartition(":")
    try:
        sock = socket.create_connection((host, int(port)), timeout=timeout_s)
    except OSError as exc:
        raise RpcServerError(endpoint, f"nothing answers there ({exc.strerror or exc})") from exc
    with sock:
        try:
            hello = _call(sock, _CMD_HELLO, bytes(_CONN_CAPS), 4 + _CONN_CAPS)
            major, minor, patch = hello[0], hello[1], hello[2]
            if major != RPC_PROTO_MAJOR or minor > RPC_PROTO_MINOR:
                raise RpcServerError(endpoint, f"it speaks RPC protocol {major}.{minor}.{patch}, this engine "
                                               f"{RPC_PROTO_MAJOR}.{RPC_PROTO_MINOR}; run the server from this "
                                               "fraqtl-chat version")
            (n_devices,) = struct.unpack("<I", _call(sock, _CMD_DEVICE_COUNT, b"", 4))
        except (OSError, ConnectionError) as exc:
            raise RpcServerError(endpoint, f"it is not a llama.cpp rpc-server, or it failed the handshake ({exc})") from exc
        if n_devices == 0:
            raise RpcServerError(endpoint, "it offers no device")
        d2: bool | None = None
        if need_d2:
            try:
                (size,) = struct.unpack("<Q", _call(sock, _CMD_GET_ALLOC_SIZE, _d2_probe(), 8))
                d2 = size >= _D2_P16_BLOCK_BYTES
            except (OSError, ConnectionError):
                d2 = False
            if not d2:
                raise RpcServerError(endpoint, "it does not know the D2 cache types (an upstream rpc-server); the "
                                               "d2 arm needs the ggml-rpc-server that `fraqtl-chat rpc-server` runs")
    return RpcServer(endpoint, (major, minor, patch), n_devices, d2)


# ---------------------------------------------------------------------------- ggml registration

_registered: dict[str, int] = {}  # endpoint -> its ggml_backend_reg_t, for this process


def _ggml(llama_cpp: Any) -> ctypes.CDLL:
    lib_dir = Path(llama_cpp.__file__).resolve().parent / "lib"
    # a wheel stores libggml.so, libggml.so.0 and libggml.so.0.x as three copies (no symlinks), each
    # a ggml of its own once loaded: take the one libllama links by its soname, whose registry
    # llama.cpp reads (llama_cpp's own ggml bindings load libggml.so, a separate instance)
    candidates = ([p for p in sorted(lib_dir.glob("libggml.so.*")) if p.suffix[1:].isdigit()]
                  + sorted(lib_dir.glob("libggml.*.dylib")) + sorted(lib_dir.glob("libggml.so"))
                  + sorted(lib_dir.glob("libggml.dylib")) + sorted(lib_dir.glob("ggml.dll")))
    if not candidates:
        raise EngineError(f"ggml's library is not in {lib_dir}; rebuild the engine with `python -m engine.build`.")
    lib = ctypes.CDLL(str(candidates[0]))
    lib.ggml_backend_reg_by_name.restype = ctypes.c_void_p
    lib.ggml_backend_reg_by_name.argtypes = [ctypes.c_char_p]
    lib.ggml_backend_reg_get_proc_address.restype = ctypes.c_void_p
    lib.ggml_backend_reg_get_proc_address.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    lib.ggml_backend_register.restype = None
    lib.ggml_backend_register.argtypes = [ctypes.c_void_p]
    lib.ggml_backend_dev_count.restype = ctypes.c_size_t
    lib.ggml_backend_dev_get.restype = ctypes.c_void_p
    lib.ggml_backend_dev_get.argtypes = [ctypes.c_size_t]
    for name in ("ggml_backend_dev_name", "ggml_backend_dev_description"):
        getattr(lib, name).restype = ctypes.c_char_p
        getattr(lib, name).argtypes = [ctypes.c_void_p]
    lib.ggml_backend_dev_type.restype = ctypes.c_int
    lib.ggml_backend_dev_type.argtypes = [ctypes.c_void_p]
    lib.ggml_backend_dev_backend_reg.restype = ctypes.c_void_p
    lib.ggml_backend_dev_backend_reg.argtypes = [ctypes.c_void_p]
    lib.ggml_backend_reg_name.restype = ctypes.c_char_p
    lib.ggml_backend_reg_name.argtypes = [ctypes.c_void_p]
    lib.ggml_backend_dev_memory.restype = None
    lib.ggml_backend_dev_memory.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_size_t),
                                            ctypes.POINTER(ctypes.c_size_t)]
    return lib


@dataclasses.dataclass(frozen=True)
class BackendDevice:
    """One ggml device as llama.cpp sees it (``kind``: cpu, gpu, igpu, accel, meta)."""

    name: str
    description: str
    kind: str
    backend: str  # the registry's name: CPU, CUDA, RPC, ...
    free: int | None  # None: not asked (asking CUDA creates a context on that GPU; RPC asks the server)
    total: int | None

    @property
    def is_rpc(self) -> bool:
        return self.backend == "RPC"


_KINDS = ("cpu", "gpu", "igpu", "accel", "meta")  # enum ggml_backend_dev_type


def devices(llama_cpp: Any, memory: bool = False) -> list[BackendDevice]:
    """The devices registered in this process, in llama.cpp's order (with their memory if asked)."""
    lib = _ggml(llama_cpp)
    llama_cpp.llama_cpp.llama_supports_gpu_offload()  # loads the backends on first use
    found = []
    for i in range(lib.ggml_backend_dev_count()):
        dev = lib.ggml_backend_dev_get(i)
        free, total = ctypes.c_size_t(0), ctypes.c_size_t(0)
        if memory:
            lib.ggml_backend_dev_memory(dev, ctypes.byref(free), ctypes.byref(total))
        kind = lib.ggml_backend_dev_type(dev)
        found.append(BackendDevice(
            lib.ggml_backend_dev_name(dev).decode(), (lib.ggml_backend_dev_description(dev) or b"").decode(),
            _KINDS[kind] if 0 <= kind < len(_KINDS) else str(kind),
            lib.ggml_backend_reg_name(lib.ggml_backend_dev_backend_reg(dev)).decode(),
            free.value if memory else None, total.value if memory else None))
    return found


def has_local_gpu(llama_cpp: Any) -> bool:
    """A GPU of this machine (RPC servers do not count; ``llama_supports_gpu_offload`` counts them)."""
    return any(d.kind in ("gpu", "igpu") and not d.is_rpc for d in devices(llama_cpp))


def registered() -> tuple[str, ...]:
    return tuple(_registered)


def register(llama_cpp: Any, endpoints: Sequence[str], need_d2: bool) -> list[RpcServer]:
    """Probe each server, then add it to ggml's devices (once per process); llama.cpp puts RPC
    devices before local GPUs when it assigns layers."""
    servers = [probe(e, need_d2) for e in endpoints]
    lib = _ggml(llama_cpp)
    reg = lib.ggml_backend_reg_by_name(b"RPC")
    if not reg:
        raise EngineError("This engine was built without llama.cpp's RPC backend; rebuild it with "
                          "`python -m engine.build` (GGML_RPC is on in this version).")
    add = lib.ggml_backend_reg_get_proc_address(reg, b"ggml_backend_rpc_add_server")
    add_server = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_char_p)(add)
    for server in servers:
        if server.endpoint in _registered:
            continue
        server_reg = add_server(server.endpoint.encode())
        if not server_reg:
            raise RpcServerError(server.endpoint, "ggml could not add it")
        lib.ggml_backend_register(server_reg)
        _registered[server.endpoint] = server_reg
    return servers


def server_binary(llama_cpp: Any | None = None) -> Path | None:
    """The ``ggml-rpc-server`` installed beside the engine's libraries (patch 0007), if any."""
    if llama_cpp is None:
        try:
            import llama_cpp as llama_cpp_module
        except (ImportError, OSError):
            return None
        llama_cpp = llama_cpp_module
    lib_dir = Path(llama_cpp.__file__).resolve().parent / "lib"
    for name in (SERVER_BINARY, SERVER_BINARY + ".exe"):
        if (lib_dir / name).is_file():
            return lib_dir / name
    return None


def server_command(binary: Path, host: str = "127.0.0.1", port: int = DEFAULT_PORT,
                   device: str | None = None, threads: int | None = None) -> list[str]:
    command = [str(binary), "--host", host, "--port", str(port)]
    if device:
        command += ["--device", device]
    if threads:
        command += ["--threads", str(threads)]
    return command
