"""The errors a user or the machine can cause: every stage command ends on one of them with a
one-line ``error: ...`` and exit status 2 (``paper_repro/cli.py``). Any other exception is a
programming error and keeps its traceback."""

from __future__ import annotations


class UserError(Exception):
    """Bad input or a state of the machine that running the same command again cannot fix; the message names the cause."""


class ParamsError(UserError, ValueError):
    """A parameter file or override that cannot be used; the message names the key, and ``key`` holds it
    where the raiser knows only the key within its own section (a caller prefixes the section's path)."""

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


class DataError(UserError, ValueError):
    """A dataset file, split or subset manifest that cannot be used; the message names it."""


class CheckpointError(UserError, ValueError):
    """A file that is not a checkpoint of this project; the message names it and says why."""


class WriteError(UserError, OSError):
    """An output could not be written; the message names it and says why."""


class InUse(UserError, ValueError):
    """Another process holds the lock: it is already doing this work."""


class TrainingDiverged(UserError, FloatingPointError):
    """The training loss stopped being finite; the message says at which iteration and what to lower."""


class NotebookError(UserError, ValueError):
    """A notebook that cannot be executed or whose execution failed; the message names it."""


class LaunchError(UserError, ValueError):
    """The launch cannot go on, or some runs failed; the message says which and where their logs are."""
