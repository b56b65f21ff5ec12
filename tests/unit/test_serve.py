"""``--serve`` and ``--desktop`` without a model: which addresses are served, the token, the origin check."""

from __future__ import annotations

import shlex
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from app import cli
from app.desktop import NoBrowserError, find_browser, window_command
from app.serve import (TOKEN_COOKIE, BindRefusedError, ServeAddress, SessionServer, app_command, free_port,
                       is_loopback)


@pytest.fixture
def model_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Private app folders and a file to pass as --model (only its existence is checked before serving)."""
    for name in ("CACHE", "DATA", "CONFIG"):
        monkeypatch.setenv(f"FRAQTL_{name}_DIR", str(tmp_path / name.lower()))
    path = tmp_path / "model.gguf"
    path.write_bytes(b"GGUF")
    return path


@pytest.mark.parametrize("host", ["127.0.0.1", "127.4.5.6", "::1", "[::1]", "localhost"])
def test_loopback_addresses_are_served_without_a_token(host: str) -> None:
    assert is_loopback(host)
    address = ServeAddress.choose(host, 8000, allow_remote=False)
    assert address.token is None and "token" not in address.url


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.20", "10.0.0.1", "example.org", "my-laptop"])
def test_other_addresses_are_refused_without_the_flag(host: str) -> None:
    assert not is_loopback(host)
    with pytest.raises(BindRefusedError, match="--allow-remote"):
        ServeAddress.choose(host, 8000, allow_remote=False)


def test_allow_remote_gives_a_fresh_token_in_the_url() -> None:
    one = ServeAddress.choose("0.0.0.0", 8123, allow_remote=True)
    two = ServeAddress.choose("0.0.0.0", 8123, allow_remote=True)
    assert one.token and two.token and one.token != two.token and len(one.token) >= 32
    assert one.url == f"http://{socket.gethostname()}:8123/?token={one.token}"
    assert ServeAddress.choose("fe80::1", 80, allow_remote=True).url.startswith("http://[fe80::1]:80/?token=")


def test_cli_refuses_a_non_loopback_bind_before_binding(model_file: Path, capsys: pytest.CaptureFixture[str],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    served: list[ServeAddress] = []
    monkeypatch.setattr(SessionServer, "serve", lambda self, debug=False: served.append(self.address))
    assert cli.main(["--serve", "--host", "0.0.0.0", "--model", str(model_file)]) == 2
    err = capsys.readouterr().err
    assert "error: fraqtl-chat serves only this machine" in err and "--allow-remote" in err
    assert served == []

    assert cli.main(["--serve", "--host", "0.0.0.0", "--allow-remote", "--no-browser",
                     "--model", str(model_file)]) == 0
    out, err = capsys.readouterr()
    assert served and served[0].token and f"?token={served[0].token}" in out
    assert "warning: serving on 0.0.0.0, reachable from other machines" in err

    assert cli.main(["--serve", "--port", "70000", "--model", str(model_file)]) == 2
    assert "--port must be between 1 and 65535" in capsys.readouterr().err


def test_cli_serves_loopback_by_default_and_forwards_the_options(model_file: Path, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str],
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    servers: list[SessionServer] = []
    monkeypatch.setattr(SessionServer, "serve", lambda self, debug=False: servers.append(self))
    doc = tmp_path / "notes.md"
    doc.write_text("Some notes.")
    monkeypatch.chdir(tmp_path)
    assert cli.main(["--serve", "--no-browser", "notes.md", "--arm", "q8_0", "--ctx", "4096",
                     "--model", str(model_file)]) == 0
    (server,) = servers
    assert (server.address.host, server.address.port, server.address.token) == ("127.0.0.1", 8000, None)
    assert "serving on http://127.0.0.1:8000/" in capsys.readouterr().out
    argv = shlex.split(server.command)
    assert argv[:3] == [sys.executable, "-m", "app.cli"]
    assert str(doc) in argv and argv[argv.index("--arm") + 1] == "q8_0" and "--serve" not in argv
    assert server.on_listening is None  # --no-browser


def test_a_missing_document_is_refused_at_the_command_line_not_in_a_tab(model_file: Path,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--serve", "/nowhere/at/all.pdf", "--model", str(model_file)]) == 2
    assert "There is no file at /nowhere/at/all.pdf" in capsys.readouterr().err


def test_a_port_in_use_is_a_clear_error(model_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert cli.main(["--serve", "--no-browser", "--port", str(port), "--model", str(model_file)]) == 2
    assert f"Port {port} on 127.0.0.1 is already in use" in capsys.readouterr().err


async def test_the_token_is_required_on_every_request_and_kept_in_a_cookie() -> None:
    server = SessionServer(app_command([]), ServeAddress("127.0.0.1", 8000, token="s3cret-token"))
    async with TestClient(TestServer(await server._make_app())) as client:
        refused = await client.get("/")
        assert refused.status == 403 and "access token" in await refused.text()
        assert (await client.get("/?token=wrong")).status == 403
        page = await client.get("/?token=s3cret-token")
        assert page.status == 200
        html = await page.text()
        assert 'data-session-websocket-url="ws://127.0.0.1:' in html and "fonts.googleapis.com" not in html
        assert "fraqtl-drop-note" in html
        assert client.session.cookie_jar.filter_cookies(client.make_url("/"))[TOKEN_COOKIE].value == "s3cret-token"
        assert (await client.get("/static/js/textual.js")).status == 200  # the cookie carries the token


async def test_a_websocket_from_another_origin_is_refused() -> None:
    server = SessionServer(app_command([]), ServeAddress("127.0.0.1", 8000))
    async with TestClient(TestServer(await server._make_app())) as client:
        refused = await client.get("/ws", headers={"Origin": "http://evil.example"})
        assert refused.status == 403 and "evil.example" in await refused.text()
        assert server.sessions_started == 0 and not server.session_active


def test_desktop_window_command_and_a_missing_browser(tmp_path: Path) -> None:
    command = window_command("/usr/bin/chromium", "http://127.0.0.1:9/", tmp_path)
    assert "--app=http://127.0.0.1:9/" in command and f"--user-data-dir={tmp_path}" in command
    with pytest.raises(NoBrowserError, match="--browser PATH"):
        find_browser(str(tmp_path / "no-such-browser"))
    assert 0 < free_port() < 65536


def test_desktop_mode_stops_the_server_when_the_window_closes(model_file: Path, tmp_path: Path) -> None:
    """A stand-in "browser" loads the page it is given, then exits as a closed window does."""
    seen = tmp_path / "page.html"
    browser = tmp_path / "browser"
    browser.write_text(textwrap.dedent(f"""\
        #!{sys.executable}
        import sys, urllib.request
        url = next(a for a in sys.argv if a.startswith("--app=")).split("=", 1)[1]
        open({str(seen)!r}, "w").write(" ".join(sys.argv[1:]) + "\\n" + urllib.request.urlopen(url).read().decode())
        """))
    browser.chmod(0o755)
    result = subprocess.run([sys.executable, "-m", "app.cli", "--desktop", "--browser", str(browser),
                             "--model", str(model_file)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "serving on http://127.0.0.1:" in result.stdout
    assert "The window was closed; stopping the server." in result.stdout
    args, html = seen.read_text().split("\n", 1)
    assert "--user-data-dir=" in args and "fraqtl-drop-note" in html


def test_the_browser_is_opened_unless_told_not_to(model_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio
    import webbrowser

    servers: list[SessionServer] = []
    opened: list[str] = []
    monkeypatch.setattr(SessionServer, "serve", lambda self, debug=False: servers.append(self))
    monkeypatch.setattr(webbrowser, "open", lambda url, new=0: opened.append(url) or True)
    monkeypatch.setenv("DISPLAY", ":0")
    assert cli.main(["--serve", "--model", str(model_file)]) == 0
    assert servers[0].on_listening is not None
    asyncio.run(servers[0].on_listening())
    assert opened == ["http://127.0.0.1:8000/"]

    monkeypatch.delenv("DISPLAY")
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    monkeypatch.delenv("BROWSER", raising=False)
    assert not cli.open_in_browser("http://127.0.0.1:8000/")  # never a text browser in this terminal
    assert opened == ["http://127.0.0.1:8000/"]


class RecordingSession:
    """Stands in for the running app session: records what would be typed into it."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    async def send_bytes(self, data: bytes) -> bool:
        self.sent.append(data)
        return True


def upload_form(*files: tuple[str, bytes]):
    from aiohttp import FormData

    form = FormData(quote_fields=False)  # as a browser sends names
    for name, content in files:
        form.add_field("file", content, filename=name, content_type="application/octet-stream")
    return form


async def uploading_client(tmp_path: Path, limit: int = 1024):
    server = SessionServer(app_command([]), ServeAddress("127.0.0.1", 8000), max_upload_bytes=limit,
                           uploads=tmp_path / "uploads")
    client = TestClient(TestServer(await server._make_app()))
    await client.start_server()
    headers = {"X-Fraqtl-Upload": "1", "Origin": f"http://{client.host}:{client.port}"}
    return server, client, headers


async def test_a_dropped_file_is_saved_in_the_uploads_folder_and_pasted_into_the_app(tmp_path: Path) -> None:
    server, client, headers = await uploading_client(tmp_path)
    try:
        assert (await client.post("/upload", data=upload_form(("notes.md", b"# Notes")), headers=headers)).status == 409
        server.session = RecordingSession()  # type: ignore[assignment]
        reply = await client.post("/upload", data=upload_form(("my notes.md", b"# Notes"), ("../../../etc/x.txt", b"x")),
                                  headers=headers)
        assert reply.status == 200, await reply.text()
        paths = [Path(p) for p in (await reply.json())["paths"]]
        assert [p.name for p in paths] == ["my notes.md", "x.txt"]
        assert all(p.parent.parent == tmp_path / "uploads" for p in paths) and paths[0].read_bytes() == b"# Notes"
        assert server.session.sent == [f"\x1b[200~'{paths[0]}' {paths[1]}\x1b[201~".encode()]
        assert sorted(p.name for p in (tmp_path / "uploads").iterdir()) == sorted(p.parent.name for p in paths)
    finally:
        await client.close()


async def test_uploads_are_size_capped_and_come_only_from_the_page(tmp_path: Path) -> None:
    server, client, headers = await uploading_client(tmp_path, limit=1024)
    server.session = RecordingSession()  # type: ignore[assignment]
    try:
        big = await client.post("/upload", data=upload_form(("big.pdf", b"x" * 4096)), headers=headers)
        assert big.status == 413
        assert "big.pdf is larger than the 1,024-byte document limit; raise max_document_mb" in await big.text()
        assert list((tmp_path / "uploads").rglob("*")) == []  # nothing half-written is left behind
        many = upload_form(*[(f"{i}.md", b"x") for i in range(17)])
        assert (await client.post("/upload", data=many, headers=headers)).status == 413
        no_header = {"Origin": headers["Origin"]}
        assert (await client.post("/upload", data=upload_form(("a.md", b"x")), headers=no_header)).status == 403
        assert (await client.post("/upload", data=upload_form(("a.md", b"x")),
                                  headers={"X-Fraqtl-Upload": "1"})).status == 403  # no Origin
        other = {"X-Fraqtl-Upload": "1", "Origin": "http://evil.example"}
        assert (await client.post("/upload", data=upload_form(("a.md", b"x")), headers=other)).status == 403
        assert (await client.post("/upload", data=b"plain", headers=headers)).status == 400
        assert server.session.sent == []
    finally:
        await client.close()


@pytest.mark.parametrize(("sent", "kept"), [
    ("report.pdf", "report.pdf"), ("../../etc/passwd", "passwd"), ("..\\..\\boot.ini", "boot.ini"),
    (".bashrc", "bashrc"), ("a\x00b\nc.md", "a_b_c.md"), ("..", "dropped-file"), ("", "dropped-file"),
    ("x" * 300 + ".pdf", "x" * 150 + ".pdf"),
])
def test_upload_names_are_plain_file_names(sent: str, kept: str) -> None:
    from app.serve import upload_name

    assert upload_name(sent) == kept


async def test_a_loopback_server_answers_only_loopback_names() -> None:
    """A page whose name was re-pointed at 127.0.0.1 (DNS rebinding) gets nothing."""
    server = SessionServer(app_command([]), ServeAddress("127.0.0.1", 8000))
    async with TestClient(TestServer(await server._make_app())) as client:
        assert (await client.get("/", headers={"Host": f"localhost:{client.port}"})).status == 200
        rebound = await client.get("/", headers={"Host": f"evil.example:{client.port}"})
        assert rebound.status == 403 and "answers only 127.0.0.1 or localhost" in await rebound.text()
        ws = await client.get("/ws", headers={"Host": f"evil.example:{client.port}",
                                              "Origin": f"http://evil.example:{client.port}"})
        assert ws.status == 403 and server.sessions_started == 0


def multipart_body(disposition: str, content: bytes = b"x") -> tuple[bytes, dict[str, str]]:
    """A raw one-file multipart body with this Content-Disposition (as a hostile client may write it)."""
    boundary = "fraqtl-boundary"
    body = (f"--{boundary}\r\nContent-Disposition: {disposition}\r\nContent-Type: application/octet-stream\r\n\r\n"
            .encode() + content + f"\r\n--{boundary}--\r\n".encode())
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


@pytest.mark.parametrize(("disposition", "kept"), [
    ('form-data; name="file"; filename="../x"', "x"),
    ('form-data; name="file"; filename="/etc/passwd"', "passwd"),
    ('form-data; name="file"; filename="C:\\\\Windows\\\\win.ini"', "win.ini"),
    ("form-data; name=\"file\"; filename*=UTF-8''..%2F..%2F..%2Ftmp%2Fescaped.md", "escaped.md"),
    ('form-data; name="file"; filename="..%2F..%2Fencoded.md"', "%2F..%2Fencoded.md"),  # %2F stays text
    ('form-data; name="file"; filename="..."', "dropped-file"),
])
async def test_hostile_upload_names_over_http_land_inside_the_uploads_folder(tmp_path: Path, disposition: str,
                                                                            kept: str) -> None:
    server, client, headers = await uploading_client(tmp_path)
    server.session = RecordingSession()  # type: ignore[assignment]
    before = sorted(p for p in tmp_path.rglob("*") if "uploads" not in p.parts)
    try:
        body, content_type = multipart_body(disposition, b"# hostile\n")
        reply = await client.post("/upload", data=body, headers={**headers, **content_type})
        assert reply.status == 200, await reply.text()
        [saved] = [Path(p) for p in (await reply.json())["paths"]]
        uploads = (tmp_path / "uploads").resolve()
        assert saved.name == kept and saved.resolve().parent.parent == uploads
        assert saved.read_bytes() == b"# hostile\n"
        assert sorted(p for p in tmp_path.rglob("*") if "uploads" not in p.parts) == before  # nothing outside
    finally:
        await client.close()


@pytest.mark.parametrize("link", ["folder", "file"])
async def test_a_link_in_the_uploads_folder_is_never_written_through(tmp_path: Path, link: str) -> None:
    """A link planted where an upload will land (its digest folder, or the file itself) leads elsewhere:
    the upload is refused in a sentence, the place it leads to is untouched, nothing is left over."""
    import hashlib

    server, client, headers = await uploading_client(tmp_path)
    server.session = RecordingSession()  # type: ignore[assignment]
    content = b"# dropped\n"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "notes.md").write_text("the person's own notes")
    digest_folder = tmp_path / "uploads" / hashlib.sha256(content).hexdigest()[:16]
    if link == "folder":
        (tmp_path / "uploads").mkdir()
        digest_folder.symlink_to(elsewhere, target_is_directory=True)
    else:
        digest_folder.mkdir(parents=True)
        (digest_folder / "notes.md").symlink_to(elsewhere / "notes.md")
    try:
        reply = await client.post("/upload", data=upload_form(("notes.md", content)), headers=headers)
        text = await reply.text()
        assert reply.status == 409, text
        assert "holds a link" in text and "remove it, then drop the file again" in text
        assert (elsewhere / "notes.md").read_text() == "the person's own notes"
        assert sorted(p.name for p in elsewhere.iterdir()) == ["notes.md"]
        assert not [p for p in (tmp_path / "uploads").iterdir() if p.name.startswith(".upload-")]
        assert server.session.sent == []
    finally:
        await client.close()


async def test_a_huge_upload_is_refused_while_streaming_in_bounded_memory(tmp_path: Path) -> None:
    """A 256 MiB upload against an 8 MiB limit: refused once past the limit, never held in memory."""
    import tracemalloc

    from aiohttp import ClientError, FormData

    limit, chunk, chunks = 8 * 2**20, b"\0" * 2**20, 256
    server, client, headers = await uploading_client(tmp_path, limit=limit)
    server.session = RecordingSession()  # type: ignore[assignment]
    sent = [0]

    async def stream():
        for _ in range(chunks):
            sent[0] += len(chunk)
            yield chunk

    form = FormData(quote_fields=False)
    form.add_field("file", stream(), filename="huge.pdf", content_type="application/pdf")
    tracemalloc.start()
    try:
        try:
            reply = await client.post("/upload", data=form, headers=headers)
            assert reply.status == 413 and "huge.pdf is larger than the 8 MiB document limit" in await reply.text()
        except ClientError:  # the server may close the connection before the client has sent everything
            pass
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        await client.close()
    assert peak < 16 * 2**20, f"peak {peak / 2**20:.1f} MiB while streaming a {chunks} MiB upload"
    assert sent[0] < chunks * len(chunk)  # the server stopped reading: 14 of 256 MiB were sent in a run here
    assert list((tmp_path / "uploads").rglob("*")) == []  # nothing half-written is left
    assert server.session.sent == []


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
async def test_an_upload_on_a_full_disk_is_refused_in_a_sentence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os
    import tempfile

    real = tempfile.mkstemp

    def mkstemp(*args, **kwargs):  # type: ignore[no-untyped-def]
        fd, name = real(*args, **kwargs)
        os.close(fd)
        return os.open("/dev/full", os.O_WRONLY), name  # every write fails with ENOSPC

    server, client, headers = await uploading_client(tmp_path)
    server.session = RecordingSession()  # type: ignore[assignment]
    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    try:
        reply = await client.post("/upload", data=upload_form(("notes.md", b"# Notes")), headers=headers)
        text = await reply.text()
        assert reply.status == 507, text
        assert text == ("notes.md could not be saved in the uploads folder (No space left on device); free some "
                        "disk space, then drop the file again.")
        assert list((tmp_path / "uploads").rglob("*")) == [] and server.session.sent == []
    finally:
        await client.close()


async def test_a_dangling_link_where_an_upload_lands_is_refused_in_a_sentence(tmp_path: Path) -> None:
    import hashlib

    server, client, headers = await uploading_client(tmp_path)
    server.session = RecordingSession()  # type: ignore[assignment]
    (tmp_path / "uploads").mkdir()
    (tmp_path / "uploads" / hashlib.sha256(b"x").hexdigest()[:16]).symlink_to(tmp_path / "nowhere")
    try:
        reply = await client.post("/upload", data=upload_form(("a.md", b"x")), headers=headers)
        assert reply.status == 409 and "holds a link" in await reply.text()
        assert not (tmp_path / "nowhere").exists()
    finally:
        await client.close()
