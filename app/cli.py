"""``fraqtl-chat``: open documents in the app (terminal, or a browser with ``--serve``)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from app import DEFAULT_HOST, DEFAULT_PORT, __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fraqtl-chat",
        description="Ask questions about long documents (PDF, Markdown, text) with a local llama.cpp model "
                    "whose KV cache is compressed with D2. With no FILE, opens the bundled sample document.",
        epilog="`fraqtl-chat setup` builds the patched llama.cpp engine and fetches the default model (the "
               "first run does it when no engine is installed). Settings are saved by the app; FRAQTL_<NAME> "
               "environment variables override them (e.g. FRAQTL_ARM=q8_0, FRAQTL_N_CTX=16384, FRAQTL_YARN=1).",
    )
    parser.add_argument("files", nargs="*", type=Path, metavar="FILE", help="documents to open (several are read as one)")
    parser.add_argument("--model", help="a GGUF file (default: SmolLM2-135M-Instruct Q4_1)")
    parser.add_argument("--arm", help="KV-cache arm: f16, q8_0, q4_0, d2, d2:lite or d2:<recipe>")
    parser.add_argument("--ctx", type=int, help="context size in tokens")
    parser.add_argument("--yarn", action="store_true", help="allow contexts beyond the model's training (YaRN)")
    parser.add_argument("--session", help="reopen a saved session by id")
    parser.add_argument("--rpc", metavar="HOST:PORT[,...]",
                        help="put layers on these rpc-servers (`fraqtl-chat rpc-server` on each host; no "
                             "authentication: a trusted network only)")
    parser.add_argument("--serve", action="store_true", help="serve the app to a browser (textual-serve)")
    parser.add_argument("--desktop", action="store_true",
                        help="the served app in a window of its own (Chromium --app); closing it stops the server")
    parser.add_argument("--host", default=DEFAULT_HOST,
                        help=f"address for --serve (default {DEFAULT_HOST}; others need --allow-remote)")
    parser.add_argument("--port", type=int, help=f"port for --serve (default {DEFAULT_PORT}; --desktop picks a free one)")
    parser.add_argument("--allow-remote", action="store_true",
                        help="let --serve bind a non-loopback address; the URL then carries an access token")
    parser.add_argument("--no-browser", action="store_true", help="with --serve, print the URL but open no browser")
    parser.add_argument("--browser", help="with --desktop, the Chromium-family browser to use (default: found on PATH)")
    parser.add_argument("--version", action="version", version=f"fraqtl-chat {__version__}")
    return parser


def session_args(args: argparse.Namespace) -> list[str]:
    """The options each served session runs with (what the person passed, files made absolute)."""
    from app.serve import absolute

    forwarded = absolute(args.files)
    for flag, value in (("--model", args.model), ("--arm", args.arm), ("--ctx", args.ctx),
                        ("--session", args.session), ("--rpc", args.rpc)):
        if value is not None:
            forwarded += [flag, str(value)]
    return forwarded + (["--yarn"] if args.yarn else [])


def serve(args: argparse.Namespace, max_upload_bytes: int) -> int:
    """``--serve`` and ``--desktop``: check the address, print the URL, run until stopped."""
    from app.serve import BindRefusedError, PortInUseError, ServeAddress, SessionServer, app_command, free_port
    from app.desktop import NoBrowserError, find_browser, run_window

    browser = None
    try:
        if args.desktop:
            browser = find_browser(args.browser)
        port = args.port or (free_port(args.host) if args.desktop else DEFAULT_PORT)
        address = ServeAddress.choose(args.host, port, args.allow_remote)
    except (BindRefusedError, NoBrowserError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if address.token:
        print(f"warning: serving on {address.host}, reachable from other machines; only a browser with the "
              "access token in this URL gets in. Anyone with the URL can read files this account can open.",
              file=sys.stderr)
    server = SessionServer(app_command(session_args(args)), address, max_upload_bytes=max_upload_bytes)
    if browser is not None:
        async def open_window() -> None:
            status = await run_window(browser, address.url)
            why = "The window was closed" if status == 0 else f"{browser} exited with status {status}"
            print(f"{why}; stopping the server.", flush=True)
            asyncio.get_running_loop().call_soon(server.request_exit)

        server.on_listening = open_window
    elif not args.no_browser:
        async def open_tab() -> None:
            if not await asyncio.to_thread(open_in_browser, address.url):
                print("No graphical browser found here (no display): open the URL above yourself.", flush=True)

        server.on_listening = open_tab
    print(f"fraqtl-chat is serving on {address.url}  (Ctrl+C stops it)", flush=True)
    try:
        server.serve()
    except PortInUseError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def open_in_browser(url: str) -> bool:
    """Open a tab where there is a display; never a text browser in this terminal."""
    import os
    import webbrowser

    if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY") or os.environ.get("BROWSER")):
        return False
    return webbrowser.open(url, new=2)


def ensure_engine() -> bool:
    """The first run of an installed package builds the engine (``fraqtl-chat setup``) before anything else."""
    from app.first_run import SetupError, engine_installed, setup

    if engine_installed():
        return True
    print("No patched llama.cpp engine is installed in this environment yet: running `fraqtl-chat setup`.",
          file=sys.stderr)
    try:
        setup(check=False)
    except SetupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return False
    return True


def rpc_server_main(argv: list[str]) -> int:
    """``fraqtl-chat rpc-server``: run the engine's ggml-rpc-server (it has the D2 types) on this host."""
    import os

    from engine import rpc

    parser = argparse.ArgumentParser(
        prog="fraqtl-chat rpc-server",
        description="Offer this machine's GPU (or CPU) to a fraqtl-chat on another host: llama.cpp's rpc-server, "
                    "built with the D2 cache types. It has NO authentication and NO encryption: anyone who can "
                    "reach the port can run code on this device and read what it holds. Bind it to loopback "
                    "or a trusted private network only.")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=rpc.DEFAULT_PORT, help=f"port (default {rpc.DEFAULT_PORT})")
    parser.add_argument("--device", help="ggml devices to offer, e.g. CUDA0,CUDA1 (default: every GPU, else the CPU)")
    parser.add_argument("--threads", type=int, help="CPU threads when the CPU is offered")
    args = parser.parse_args(argv)
    if not ensure_engine():
        return 1
    binary = rpc.server_binary()
    if binary is None:
        print("error: this engine build has no ggml-rpc-server; rebuild it with `python -m engine.build` "
              "(this version builds it beside the engine).", file=sys.stderr)
        return 1
    if args.host not in ("127.0.0.1", "localhost"):
        print(f"warning: rpc-server on {args.host} is reachable from other machines and has no authentication; "
              "use a trusted network only.", file=sys.stderr)
    command = rpc.server_command(binary, args.host, args.port, args.device, args.threads)
    os.execv(command[0], command)
    return 0  # pragma: no cover - execv does not return
def remove_stale_temp_files() -> None:
    """Temp files that writers killed mid-save left beside the settings and sessions (see engine.files)."""
    from engine import files, locations

    for folder in (locations.config_dir(), locations.sessions_dir()):
        files.remove_stale_temp_files_in(folder)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["setup"] and not Path("setup").is_file():  # `./setup` opens a file of that name
        from app.first_run import main as setup_main

        return setup_main(argv[1:])
    if argv[:1] == ["rpc-server"] and not Path("rpc-server").is_file():
        return rpc_server_main(argv[1:])
    args = build_parser().parse_args(argv)
    if not ensure_engine():
        return 1
    from app.errors import DocumentNotFoundError
    from app.samples import DEFAULT_SAMPLE
    from app.sessions import Session, SessionFileError
    from app.settings import Settings, SettingsError
    from engine.errors import EngineError

    remove_stale_temp_files()
    try:
        settings, notes = Settings.load_with_notes()
        for note in notes:
            print(f"warning: {note}", file=sys.stderr)
        if args.model:
            settings.model = args.model
        if args.arm:
            settings.arm = args.arm
        if args.ctx:
            settings.n_ctx = args.ctx
        if args.yarn:
            settings.yarn = True
        if args.rpc is not None:
            settings.rpc_servers = args.rpc
        settings.validate()
        from engine.models import resolve

        model_path = resolve(settings.model)
    except (SettingsError, EngineError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    session = None
    if args.session:
        try:
            session = Session.load(args.session)
        except SessionFileError as exc:  # start anyway, and say so in the app too
            print(f"warning: {exc}", file=sys.stderr)
            notes.append(str(exc))
    files = args.files or ([] if session else [DEFAULT_SAMPLE])
    for path in files:
        if not path.expanduser().is_file():
            print(f"error: {DocumentNotFoundError(str(path))}", file=sys.stderr)
            return 2
    if args.serve or args.desktop:  # settings and files were checked here, not in a browser tab
        return serve(args, settings.max_document_bytes)

    from app.ui import create_app

    create_app(settings, files, model_path, session=session, notes=notes).run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
