"""``fraqtl-chat``: open documents in the app (terminal, or a browser with ``--serve``)."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from app import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fraqtl-chat",
        description="Ask questions about long documents (PDF, Markdown, text) with a local llama.cpp model "
                    "whose KV cache is compressed with D2. With no FILE, opens the bundled sample document.",
        epilog="Settings are saved by the app; FRAQTL_<NAME> environment variables override them "
               "(e.g. FRAQTL_ARM=q8_0, FRAQTL_N_CTX=16384, FRAQTL_YARN=1).",
    )
    parser.add_argument("files", nargs="*", type=Path, metavar="FILE", help="documents to open (several are read as one)")
    parser.add_argument("--model", help="a GGUF file (default: SmolLM2-135M-Instruct Q4_1)")
    parser.add_argument("--arm", help="KV-cache arm: f16, q8_0, q4_0, d2 or d2:<recipe>")
    parser.add_argument("--ctx", type=int, help="context size in tokens")
    parser.add_argument("--yarn", action="store_true", help="allow contexts beyond the model's training (YaRN)")
    parser.add_argument("--session", help="reopen a saved session by id")
    parser.add_argument("--serve", action="store_true", help="serve the app to a browser (textual-serve)")
    parser.add_argument("--host", default="localhost", help="host for --serve (default localhost)")
    parser.add_argument("--port", type=int, default=8000, help="port for --serve (default 8000)")
    parser.add_argument("--version", action="version", version=f"fraqtl-chat {__version__}")
    return parser


def serve(args: argparse.Namespace, argv: list[str]) -> int:
    try:
        from textual_serve.server import Server
    except ImportError:
        print("error: browser mode needs textual-serve; install it with `pip install 'fraqtl-chat[serve]'`.",
              file=sys.stderr)
        return 1
    forwarded = [a for a in argv if a not in ("--serve",)]
    # drop --host/--port and their values: the served command runs in a terminal of its own
    cleaned: list[str] = []
    skip = False
    for arg in forwarded:
        if skip:
            skip = False
            continue
        if arg in ("--host", "--port"):
            skip = True
            continue
        if arg.startswith(("--host=", "--port=")):
            continue
        cleaned.append(arg)
    command = shlex.join([sys.executable, "-m", "app.cli", *cleaned])
    Server(command, host=args.host, port=args.port, title="fraqtl-chat").serve()
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if args.serve:
        return serve(args, argv)

    from app.errors import DocumentNotFoundError
    from app.samples import DEFAULT_SAMPLE
    from app.sessions import Session, SessionFileError
    from app.settings import Settings, SettingsError
    from engine.errors import EngineError

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

    from app.ui import create_app

    create_app(settings, files, model_path, session=session, notes=notes).run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
