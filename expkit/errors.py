"""The errors every layer raises and the exit codes they map to. Imports nothing, so any
module can use it without pulling in another.

Exit status (the contract in the README): 0 completed, 1 training failed, 2 bad input
(nothing changed, nothing left behind), 128+N stopped by signal N after a checkpoint.
"""

from __future__ import annotations

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
