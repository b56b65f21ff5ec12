"""fraqtl-chat: ask questions about long documents, answered by a local model (the Textual app).

``app`` is one client of ``engine``: document ingest, sessions, settings and the UI live here;
every model call goes through :class:`engine.worker.EngineWorker`.
"""

__version__ = "0.1.0"

# where `fraqtl-chat --serve` listens unless told otherwise (here, not in app.serve, so that the
# command line can name them without importing aiohttp and textual-serve on every start)
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
