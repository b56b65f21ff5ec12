"""fraqtl-chat: ask questions about long documents, answered by a local model (the Textual app).

``app`` is one client of ``engine``: document ingest, sessions, settings and the UI live here;
every model call goes through :class:`engine.worker.EngineWorker`.
"""

__version__ = "0.1.0"
