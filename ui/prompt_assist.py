"""The entry points the pages call for prompt assistance and study support (one import line per page)."""
from ui.dashboard import dashboard  # noqa: F401
from ui.prompt_diff import prompt_diff  # noqa: F401
from ui.rating import rating  # noqa: F401
from ui.suggest import suggest_panel  # noqa: F401
from ui.word_cards import word_cards  # noqa: F401
