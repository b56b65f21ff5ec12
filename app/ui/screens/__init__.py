"""The app's screens and dialogs (private modules, re-exported here)."""

from app.ui.screens._chat import ChatScreen
from app.ui.screens._compare import CompareScreen
from app.ui.screens._document import DocumentScreen
from app.ui.screens._dialogs import ConfirmDialog, NameDialog, OpenDialog, OverflowDialog, SessionsDialog
from app.ui.screens._models import GgufFileDialog, ModelsScreen
from app.ui.screens._settings import SettingsScreen

__all__ = ["ChatScreen", "CompareScreen", "ConfirmDialog", "DocumentScreen", "GgufFileDialog", "ModelsScreen", "NameDialog", "OpenDialog", "OverflowDialog", "SessionsDialog", "SettingsScreen"]
