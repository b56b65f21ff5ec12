"""engine.rpc without llama.cpp: endpoint parsing and the pre-flight probe against fake servers
that speak ggml-rpc's wire format (an upstream server, ours with the D2 types, a wrong version)."""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Iterator

import pytest

from engine import rpc
from engine.errors import EngineError, RpcServerError


def test_endpoints_parse_a_comma_list_and_drop_repeats():
    assert rpc.parse_endpoints(" 10.0.0.2:50052, gpu-box:7000,,10.0.0.2:50052 ") == ("10.0.0.2:50052", "gpu-box:7000")
    assert rpc.parse_endpoints(["127.0.0.1:1"]) == ("127.0.0.1:1",)
    assert rpc.parse_endpoints("") == () and rpc.parse_endpoints(None) == ()


@pytest.mark.parametrize("bad", ["10.0.0.2", "10.0.0.2:", ":50052", "host:0", "host:65536", "host:port", "::1:50052"])
def test_a_bad_endpoint_says_how_to_write_one(bad):
    with pytest.raises(EngineError, match="host:port"):
        rpc.parse_endpoints(bad)


class FakeRpcServer:
    """One-connection-at-a-time server answering HELLO, DEVICE_COUNT and GET_ALLOC_SIZE like ggml-rpc."""

    def __init__(self, major: int = rpc.RPC_PROTO_MAJOR, minor: int = 0, devices: int = 1, d2: bool = True) -> None:
        self.major, self.minor, self.devices, self.d2 = major, minor, devices, d2
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.endpoint = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self.seen: list[int] = []
        self.alloc_request: bytes = b""
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _recv(self, conn: socket.socket, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = conn.recv(n - len(data))
            if not chunk:
                raise ConnectionError
            data += chunk
        return data

    def _serve(self) -> None:
        try:
            conn, _ = self.sock.accept()
        except OSError:
            return
        with conn:
            try:
                while True:
                    cmd, size = struct.unpack("<BQ", self._recv(conn, 9))
                    payload = self._recv(conn, size)
                    self.seen.append(cmd)
                    if cmd == 14:  # HELLO
                        reply = bytes([self.major, self.minor, 0, 0]) + bytes(24)
                    elif cmd == 15:  # DEVICE_COUNT
                        reply = struct.pack("<I", self.devices)
                    elif cmd == 13:  # GET_ALLOC_SIZE: an upstream server rejects type 44 and hangs up
                        self.alloc_request = payload
                        ttype = struct.unpack_from("<I", payload, 4 + 8)[0]  # after device and id
                        if not self.d2 or ttype >= 46:
                            return
                        reply = struct.pack("<Q", 52)
                    else:
                        return
                    conn.sendall(struct.pack("<Q", len(reply)) + reply)
            except ConnectionError:
                return

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def server(request) -> Iterator[FakeRpcServer]:
    fake = FakeRpcServer(**getattr(request, "param", {}))
    yield fake
    fake.close()


def test_probe_shakes_hands_counts_devices_and_asks_for_d2(server):
    found = rpc.probe(server.endpoint)
    assert found == rpc.RpcServer(server.endpoint, (rpc.RPC_PROTO_MAJOR, 0, 0), 1, True)
    assert server.seen == [14, 15, 13]
    # the D2 question is a one-block d2_p16 tensor laid out as ggml-rpc's packed rpc_tensor:
    # uint32 device, then id, type, buffer, ne[4] ... (296 bytes) and 10 empty sources
    assert len(server.alloc_request) == 4 + 11 * 296
    assert struct.unpack_from("<QI", server.alloc_request, 4) == (1, 44)
    assert struct.unpack_from("<4I", server.alloc_request, 4 + 20) == (64, 1, 1, 1)


def test_probe_for_an_upstream_arm_does_not_ask_for_d2(server):
    assert rpc.probe(server.endpoint, need_d2=False).d2_types is None
    assert server.seen == [14, 15]


@pytest.mark.parametrize("server", [{"d2": False}], indirect=True)
def test_an_upstream_server_is_refused_for_d2_with_what_to_run(server):
    with pytest.raises(RpcServerError, match="does not know the D2 cache types.*fraqtl-chat rpc-server") as info:
        rpc.probe(server.endpoint)
    assert info.value.endpoint == server.endpoint


@pytest.mark.parametrize("server", [{"major": 6}, {"minor": 1}], indirect=True)
def test_another_protocol_version_is_refused(server):
    with pytest.raises(RpcServerError, match=rf"protocol {server.major}\.{server.minor}\.0, this engine 7\.0"):
        rpc.probe(server.endpoint)


def test_the_d2_type_asked_for_is_the_one_the_patch_series_adds():
    from engine import build, ggml_types

    text = "".join(p.read_text(encoding="utf-8") for p in build.patch_files())
    ids = {m["name"]: int(m["value"]) for m in ggml_types._PATCH_ID.finditer(text)}
    assert ids["GGML_TYPE_D2_P16"] == rpc._GGML_TYPE_D2_P16


@pytest.mark.parametrize("server", [{"devices": 0}], indirect=True)
def test_a_server_without_devices_is_refused(server):
    with pytest.raises(RpcServerError, match="no device"):
        rpc.probe(server.endpoint)


def test_nothing_listening_is_a_clear_error_not_an_abort():
    sock = socket.create_server(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    with pytest.raises(RpcServerError, match=f"127.0.0.1:{port} cannot be used: nothing answers there"):
        rpc.probe(f"127.0.0.1:{port}", timeout_s=2)


def test_something_else_on_the_port_is_not_taken_for_a_server():
    sock = socket.create_server(("127.0.0.1", 0))
    endpoint = f"127.0.0.1:{sock.getsockname()[1]}"

    def answer_http() -> None:
        conn, _ = sock.accept()
        with conn:
            conn.recv(64)
            conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")

    threading.Thread(target=answer_http, daemon=True).start()
    try:
        with pytest.raises(RpcServerError, match="not a llama.cpp rpc-server"):
            rpc.probe(endpoint, timeout_s=2)
    finally:
        sock.close()


def test_server_command_has_the_host_port_and_device():
    from pathlib import Path

    cmd = rpc.server_command(Path("/x/ggml-rpc-server"), "10.0.0.5", 50053, "CUDA0", 4)
    assert cmd == ["/x/ggml-rpc-server", "--host", "10.0.0.5", "--port", "50053", "--device", "CUDA0",
                   "--threads", "4"]
