"""One exception type for every problem a user can cause and fix.

Every message names the problem and what to do about it, so the CLI can print it as one
line and the app can show it in the page. Anything else that escapes is a bug in permerge.
"""


class PermergeError(Exception):
    """A problem with the user's input or settings, with a suggested fix."""

    def __init__(self, problem: str, fix: str | None = None):
        self.problem = problem
        self.fix = fix
        super().__init__(f"{problem} Fix: {fix}" if fix else problem)


class IncompatiblePairError(PermergeError):
    """The two checkpoints cannot be aligned or interpolated (shapes, family, vocabulary)."""


class CheckpointError(PermergeError):
    """A checkpoint cannot be found, read or trusted."""


class DataError(PermergeError):
    """Text data that cannot be used as asked."""


class SettingsError(PermergeError):
    """A setting outside what the method allows."""
