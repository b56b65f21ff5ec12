"""The app's widgets (private modules, re-exported here)."""

from app.ui.widgets._arm_panel import ArmPanel
from app.ui.widgets._chat_log import AnswerView, ChatLog, QuestionView
from app.ui.widgets._document_bar import DocumentBar
from app.ui.widgets._question_input import QuestionInput
from app.ui.widgets._vram_panel import VramPanel

__all__ = ["AnswerView", "ArmPanel", "ChatLog", "DocumentBar", "QuestionInput", "QuestionView", "VramPanel"]
