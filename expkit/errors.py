"""The errors every layer raises, the exit codes they map to, and the "did you mean" that
their messages share. Imports nothing of expkit, so any module can use it.

Exit status (the contract in the README): 0 completed, 1 training failed, 2 bad input
(nothing changed, nothing left behind), 128+N stopped by signal N after a checkpoint.
"""

from __future__ import annotations

import difflib
from typing import Any

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2


class ConfigError(ValueError):
    """Bad input: a config value, an override, a path. The message is what the user sees,
    one line per problem, each naming the key, the value and what is allowed."""


class RunFailed(Exception):
    """How a run ended when it did not complete: the message the user sees and the exit
    status. `recorded`: meta.json already says why, so the caller must not write it again."""

    def __init__(self, message: str, exit_code: int, recorded: bool = False):
        super().__init__(message)
        self.exit_code, self.recorded = exit_code, recorded


def closest(word: Any, options) -> str | None:
    """The option closest to a mistyped `word` (difflib's ratio, case ignored), or None
    when none is close: config keys, choices and own-code module names are suggested alike."""
    by_lower = {str(o).lower(): str(o) for o in options}
    close = difflib.get_close_matches(str(word).lower(), list(by_lower), n=1)
    return by_lower[close[0]] if close else None


def did_you_mean(word: Any, options, prefix: str = "") -> str:
    """'; did you mean PREFIX+OPTION?' or '' (callers end the clause with '.' then): a list
    of twenty keys is read faster with the likely one named first."""
    close = closest(word, options)
    return f"; did you mean {prefix}{close}?" if close else ""
