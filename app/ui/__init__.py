"""The Textual UI: one client of the engine, talking to it only through workers and messages."""

from app.ui.app import FraqtlApp, create_app

__all__ = ["FraqtlApp", "create_app"]
