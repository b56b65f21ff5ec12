"""Serve the app to a browser (textual-serve): loopback by default, one session at a time.

Files dropped on the page are uploaded (``POST /upload``, from the page only, size-capped)
into the uploads folder of the cache and pasted into the running app as quoted paths, the way
a terminal pastes a dropped file; the app then opens them as usual.

textual-serve starts one app process per browser connection, and each app process starts its
own engine. :class:`SessionServer` therefore runs one app session at a time: a second tab (or a
reload that comes before the first session has ended) waits a few seconds and then gets a small
app that says why, never a second model on the GPU. Only loopback addresses are served unless
the person passes ``--allow-remote``; then every request must carry a per-run access token.

This module must never bind a non-loopback address without that flag, start a second app
session while one runs, or write an upload anywhere but the uploads folder. Of the engine it
imports only the locations of folders.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import ipaddress
import logging
import os
import re
import secrets
import shlex
import socket
import sys
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp_jinja2
from aiohttp import BodyPartReader, web
from textual_serve.app_service import AppService
from textual_serve.server import Server, to_int

from app import DEFAULT_HOST, DEFAULT_PORT  # noqa: F401 - re-exported for the served app's callers
from engine import locations

log = logging.getLogger("fraqtl-chat.serve")

SESSION_GRACE_S = 6.0  # a reload closes the old session just after the new page asks for one
TOKEN_COOKIE = "fraqtl_token"
BUSY_COMMAND = shlex.join([sys.executable, "-m", "app.ui.session_busy"])

UPLOAD_HEADER = "X-Fraqtl-Upload"  # a cross-site form cannot set it, and a cross-site fetch is preflighted
MAX_UPLOAD_FILES = 16
_UNSAFE_NAME = re.compile(r"[\x00-\x1f\x7f/\\]")

# Injected into textual-serve's page: a file dropped on it would replace the page (and end the
# session), so the drop is stopped and the file is uploaded and opened instead.
_DROP_GUARD = """
<div id="fraqtl-drop-note" role="status" style="display:none;position:fixed;top:0;left:0;right:0;
  z-index:100;padding:12px 16px;background:#5e0ba7;color:#fff;font:15px monospace;text-align:center"></div>
<script>
  (function () {
    var note = document.getElementById("fraqtl-drop-note"), timer = null;
    function say(text, keep) {
      note.textContent = text;
      note.style.display = "block";
      clearTimeout(timer);
      if (!keep) { timer = setTimeout(function () { note.style.display = "none"; }, 10000); }
    }
    window.addEventListener("dragover", function (e) { e.preventDefault(); });
    window.addEventListener("drop", function (e) {
      e.preventDefault();
      var files = e.dataTransfer ? Array.from(e.dataTransfer.files) : [];
      if (!files.length) { say("Only files can be dropped here; press Ctrl+O to type a path instead."); return; }
      var form = new FormData();
      files.forEach(function (f) { form.append("file", f, f.name); });
      say("Uploading " + files.map(function (f) { return f.name; }).join(", ") + "…", true);
      fetch("/upload", {method: "POST", body: form, headers: {"X-Fraqtl-Upload": "1"}, credentials: "same-origin"})
        .then(function (r) { return r.text().then(function (t) { return [r.ok, t]; }); })
        .then(function (res) {
          say(res[0] ? "Uploaded " + files.length + " file(s) to fraqtl-chat's cache folder; opening." : res[1]);
        })
        .catch(function (err) { say("The upload failed (" + err + "); press Ctrl+O and type the path instead."); });
    });
  })();
</script>
"""
_REMOTE_FONT = re.compile(r'<link[^>]*fonts\.googleapis\.com[^>]*>\s*', re.S)


class BindRefusedError(ValueError):
    """A non-loopback address was asked for without ``--allow-remote``."""

    def __init__(self, host: str) -> None:
        self.host = host
        super().__init__(
            f"fraqtl-chat serves only this machine (127.0.0.1) unless told otherwise: {host} would let other "
            "machines drive the app and open files it can read. Pass --allow-remote to serve it anyway (the URL "
            "then carries an access token), or leave --host out.")


class PortInUseError(OSError):
    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        super().__init__(f"Port {port} on {host} is already in use (another fraqtl-chat?); "
                         "stop that one or pass --port with a free port.")


def is_loopback(host: str) -> bool:
    """``localhost`` and 127.0.0.0/8 or ::1; names and wildcard addresses are not."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclasses.dataclass(frozen=True)
class ServeAddress:
    """Where the server listens, and the token a remote client must bring (None on loopback)."""

    host: str
    port: int
    token: str | None = None

    @classmethod
    def choose(cls, host: str, port: int, allow_remote: bool) -> ServeAddress:
        if not 0 < port < 65536:
            raise ValueError(f"--port must be between 1 and 65535, not {port}.")
        if is_loopback(host):
            return cls(host, port)
        if not allow_remote:
            raise BindRefusedError(host)
        return cls(host, port, secrets.token_urlsafe(24))

    @property
    def url(self) -> str:
        """The address to open in a browser (a wildcard host is shown as this machine's name)."""
        host = socket.gethostname() if self.host in ("0.0.0.0", "::", "") else self.host
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        query = f"?token={self.token}" if self.token else ""
        return f"http://{host}:{self.port}/{query}"


def free_port(host: str = DEFAULT_HOST) -> int:
    """A port nobody listens on now (for the desktop window, which needs no fixed port)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


class SessionServer(Server):
    """textual-serve with an access check, page URLs taken from the request, one session at a time."""

    def __init__(self, command: str, address: ServeAddress, busy_command: str = BUSY_COMMAND,
                 on_listening: Callable[[], Awaitable[None]] | None = None,
                 max_upload_bytes: int = 64 * 2**20, uploads: Path | None = None) -> None:
        super().__init__(command, host=address.host, port=address.port, title="fraqtl-chat")
        self.address = address
        self.busy_command = busy_command
        self.on_listening = on_listening
        self.max_upload_bytes = max_upload_bytes
        self.uploads = uploads
        self.session: AppService | None = None  # the app session that holds the engine
        self.session_active = False
        self.sessions_started = 0  # app sessions (each with its engine) since the server started

    # textual-serve's two private names are used here only (the whole class leans on them): it has no
    # public hook to add a route or a middleware (its aiohttp app is frozen before on_startup runs), nor
    # to run one websocket's message loop. A release that renames them fails tests/unit/test_serve.py at once.
    async def _make_app(self) -> web.Application:
        app = await super()._make_app()
        app.middlewares.append(self._guard)
        app.router.add_post("/upload", self.handle_upload)
        return app

    # -------------------------------------------------------------- access

    @web.middleware
    async def _guard(self, request: web.Request,
                     handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        """The access token on remote binds; on every bind, a websocket only from this page."""
        if self.address.token is None and not is_loopback(_host_name(request.host)):
            # a loopback server answers loopback names only: a web page whose name was re-pointed at
            # 127.0.0.1 (DNS rebinding) would otherwise pass the origin check below
            raise web.HTTPForbidden(text=f"This fraqtl-chat server answers only 127.0.0.1 or localhost, "
                                         f"not {request.host}.\n")
        token = self.address.token
        presented = request.query.get("token") or request.cookies.get(TOKEN_COOKIE, "")
        if token is not None and not secrets.compare_digest(presented.encode(), token.encode()):
            raise web.HTTPForbidden(text="This fraqtl-chat server needs the access token it printed at start: "
                                         "open the full URL, including ?token=….\n")
        origin = request.headers.get("Origin")
        if request.method == "POST" and origin is None:
            raise web.HTTPForbidden(text="Uploads come from the fraqtl-chat page only.\n")
        if request.path in ("/ws", "/upload") and origin is not None and origin.split("://", 1)[-1] != request.host:
            # another web site open in the same browser must not drive the app
            raise web.HTTPForbidden(text=f"Connections from {origin} are not accepted.\n")
        response = await handler(request)
        if token is not None and request.query.get("token") == token and request.path == "/":
            response.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="Strict")
        return response

    # -------------------------------------------------------------- the page

    async def handle_index(self, request: web.Request) -> web.Response:  # type: ignore[override]
        """textual-serve's page, with URLs from the request (so a remote browser gets its own host)."""
        scheme = "wss" if request.secure else "ws"
        context: dict[str, Any] = {
            "font_size": to_int(request.query.get("fontsize", "16"), 16),
            "app_websocket_url": f"{scheme}://{request.host}/ws",
            "config": {"static": {"url": "/static/"}},
            "application": {"name": "fraqtl-chat"},
        }
        response = aiohttp_jinja2.render_template("app_index.html", request, context)
        html = _REMOTE_FONT.sub("", response.text or "")  # a local app fetches nothing from the web
        response.text = html.replace("</body>", _DROP_GUARD + "</body>", 1)
        return response

    # -------------------------------------------------------------- one session at a time

    async def _claim_session(self) -> bool:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + SESSION_GRACE_S
        while self.session_active:
            if loop.time() > deadline:
                return False
            await asyncio.sleep(0.1)
        self.session_active = True
        return True

    async def handle_websocket(self, request: web.Request) -> web.WebSocketResponse:
        websocket = web.WebSocketResponse(heartbeat=15)
        width = to_int(request.query.get("width", "80"), 80)
        height = to_int(request.query.get("height", "24"), 24)
        claimed = await self._claim_session()
        if claimed:
            self.sessions_started += 1
        else:
            log.info("a second browser connection got the one-session message")
        app_service: AppService | None = None
        try:
            await websocket.prepare(request)
            app_service = AppService(
                self.command if claimed else self.busy_command,
                write_bytes=websocket.send_bytes, write_str=websocket.send_str, close=websocket.close,
                download_manager=self.download_manager, debug=self.debug)
            await app_service.start(width, height)
            if claimed:
                self.session = app_service
            await self._process_messages(websocket, app_service)  # private: see _make_app
        except asyncio.CancelledError:
            await websocket.close()
        except Exception as error:  # noqa: BLE001 - one broken connection must not stop the server
            log.exception(error)
        finally:
            if app_service is not None:
                await app_service.stop()  # returns once the app (and its engine) has exited
            if claimed:
                self.session = None
                self.session_active = False
        return websocket

    # -------------------------------------------------------------- uploads

    async def handle_upload(self, request: web.Request) -> web.Response:
        """Files dropped on the page: saved under the uploads folder, then pasted into the app."""
        if request.headers.get(UPLOAD_HEADER) != "1":
            raise web.HTTPForbidden(text="Uploads come from the fraqtl-chat page only.")
        session = self.session
        if session is None:
            raise web.HTTPConflict(text="No fraqtl-chat session is running in this page: reload it, then drop the "
                                        "file again.")
        try:
            reader = await request.multipart()
        except (AssertionError, ValueError):  # aiohttp asserts on a non-multipart body
            raise web.HTTPBadRequest(text="The upload was not a file; drop a PDF, Markdown or text file.") from None
        saved: list[Path] = []
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader) or part.filename is None:
                continue
            if len(saved) == MAX_UPLOAD_FILES:
                raise web.HTTPRequestEntityTooLarge(
                    max_size=MAX_UPLOAD_FILES, actual_size=MAX_UPLOAD_FILES + 1,
                    text=f"At most {MAX_UPLOAD_FILES} files can be dropped at once; drop fewer.")
            try:
                saved.append(await save_upload(part, part.filename, self.max_upload_bytes,
                                               self.uploads or locations.uploads_dir()))
            except UploadTooLargeError as exc:
                raise web.HTTPRequestEntityTooLarge(max_size=exc.limit, actual_size=exc.limit + 1,
                                                    text=str(exc)) from None
            except UploadLinkError as exc:
                log.warning("%s", exc)
                raise web.HTTPConflict(text=str(exc)) from None
            except OSError as exc:  # a full disk, a read-only cache folder
                log.warning("upload %r not saved: %s", part.filename, exc)
                raise web.HTTPInsufficientStorage(
                    text=f"{upload_name(part.filename)} could not be saved in the uploads folder "
                         f"({exc.strerror or exc}); free some disk space, then drop the file again.") from None
        if not saved:
            raise web.HTTPBadRequest(text="No file arrived; drop a PDF, Markdown or text file.")
        paths = " ".join(shlex.quote(str(path)) for path in saved)
        await session.send_bytes(f"\x1b[200~{paths}\x1b[201~".encode())  # a bracketed paste, as a terminal sends
        return web.json_response({"paths": [str(p) for p in saved]})

    # -------------------------------------------------------------- start-up

    def initialize_logging(self) -> None:
        logging.basicConfig(level="INFO", format="%(message)s")
        logging.getLogger("aiohttp.access").setLevel(logging.WARNING)  # a line per static file buries the URL

    async def on_startup(self, app: web.Application) -> None:
        if self.on_listening is not None:  # the site is not bound yet: wait for it in a task
            self._listening_task = asyncio.get_running_loop().create_task(self._after_bind())

    async def _after_bind(self) -> None:
        for _ in range(200):
            try:
                _, writer = await asyncio.open_connection(_dial_host(self.address.host), self.address.port)
            except OSError:
                await asyncio.sleep(0.05)
                continue
            writer.close()
            break
        assert self.on_listening is not None
        await self.on_listening()

    def serve(self, debug: bool = False) -> None:
        if not _port_free(self.address.host, self.address.port):
            raise PortInUseError(self.address.host, self.address.port)
        super().serve(debug)


class UploadTooLargeError(ValueError):
    def __init__(self, name: str, limit: int) -> None:
        self.name = name
        self.limit = limit
        size = f"{limit / 2**20:,.0f} MiB" if limit >= 2**20 else f"{limit:,}-byte"
        super().__init__(f"{name} is larger than the {size} document limit; raise "
                         "max_document_mb in the settings (F4) or open a smaller file.")


class UploadLinkError(OSError):
    """A link sits where an upload would be written (a folder or file of the uploads folder)."""

    def __init__(self, place: Path) -> None:
        self.place = place
        super().__init__(f"The uploads folder holds a link at {place} that would lead the upload elsewhere; "
                         "remove it, then drop the file again.")


def upload_name(name: str) -> str:
    """A plain file name from what a browser sent: no folders, control characters or leading dots."""
    base = _UNSAFE_NAME.sub("_", name.replace("\\", "/").rsplit("/", 1)[-1]).lstrip(". ")
    if len(base) > 160:
        stem, dot, suffix = base.rpartition(".")
        base = f"{stem[:150]}{dot}{suffix[:9]}" if dot and len(suffix) <= 9 else base[:160]
    return base or "dropped-file"


async def save_upload(part: BodyPartReader, name: str, limit: int, folder: Path) -> Path:
    """Stream one file into ``folder/<sha256 prefix>/<name>``; refuse it past ``limit`` bytes."""
    folder.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    size = 0
    handle, temporary = tempfile.mkstemp(dir=folder, prefix=".upload-")
    try:
        with os.fdopen(handle, "wb") as out:
            while chunk := await part.read_chunk(1 << 20):
                size += len(chunk)
                if size > limit:
                    raise UploadTooLargeError(upload_name(name), limit)
                digest.update(chunk)
                out.write(chunk)
        target = folder / digest.hexdigest()[:16] / upload_name(name)
        for place in (target.parent, target):
            if place.is_symlink():  # planted where this upload lands: never written through
                raise UploadLinkError(place)
            if place == target.parent:
                place.mkdir(exist_ok=True)
        if target.resolve().parent.parent != folder.resolve():  # upload_name makes this impossible; be sure
            raise UploadLinkError(target)
        try:  # the rename happens in the folder checked above, even if a link replaced it meanwhile
            folder_fd = os.open(target.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        except OSError as exc:
            raise UploadLinkError(target.parent) from exc
        try:
            os.replace(temporary, target.name, dst_dir_fd=folder_fd)
        finally:
            os.close(folder_fd)
        return target
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


def _host_name(host_header: str) -> str:
    """The name in a Host header, without its port ("[::1]:8000" -> "::1")."""
    if host_header.startswith("["):
        return host_header[1:].split("]", 1)[0]
    return host_header.rsplit(":", 1)[0] if host_header.count(":") == 1 else host_header


def _dial_host(host: str) -> str:
    return {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)


def _port_free(host: str, port: int) -> bool:
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror:
        return True  # let the server report the address itself
    family, _, _, _, sockaddr = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(sockaddr)
        except OSError:
            return False
    return True


def app_command(args: list[str]) -> str:
    """The shell command textual-serve runs for each session: this Python, the app, its options."""
    return shlex.join([sys.executable, "-m", "app.cli", *args])


def absolute(paths: list[Path]) -> list[str]:
    """Files named on the command line, absolute (the session process may start elsewhere)."""
    return [str(p.expanduser().resolve()) for p in paths]
