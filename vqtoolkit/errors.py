"""The one exception family users see.

Every mistake a user can make (bad file, bad recipe key, bad CLI value) raises a `VqtError` whose
message names the offender and the fix. The CLI prints it as ``Error: <message>`` without a traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class VqtError(Exception):
    """A user-facing error: the message is shown as-is, without a traceback."""


class RecipeError(VqtError):
    """A recipe file or `--set` override is invalid."""


class CheckpointError(VqtError):
    """A model bundle or training state cannot be read or written."""


class ImageError(VqtError):
    """An image or codes file cannot be read or is unsuitable."""


class DataError(VqtError):
    """A dataset is empty, inconsistent or unreadable."""


class PluginError(VqtError):
    """A plugin or condition is missing, duplicated or broken."""


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """'; did you mean 'x'?' for the closest choice, or '' when nothing is close."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""
