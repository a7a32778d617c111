"""The two kinds of failure a build can end with.

- `DataError` (a ValueError): the user's to fix: a missing or unreadable source file, a bad config, a
  source over its skip rate or short of its target. One line, naming the source and the file; the
  CLI prints it and exits with code 2.
- `BuildError` (deliberately *not* a ValueError or RuntimeError, which the CLI treats as user
  errors): anything else, a bug or an I/O failure. It is raised `from` the original exception, so the
  cause and its traceback are printed, and its message says which source, file and record were being
  processed.
"""

from __future__ import annotations


def one_line(text: str) -> str:
    return " ".join(str(text).split())


class DataError(ValueError):
    """A user error: one line that names the source and the file when they are known."""

    def __init__(self, message: str, source: str | None = None, file=None):
        self.source, self.file = source, None if file is None else str(file)
        super().__init__(one_line(message))

    def naming(self, source: str, file=None) -> "DataError":
        """This error with `source NAME:` (and the file, if it does not say it yet) in front."""
        message = str(self)
        if file is not None and str(file) not in message:
            message = f"{file}: {message}"
        if not message.startswith(f"source {source}"):
            message = f"source {source}: {message}"
        return DataError(message, source=source, file=file if file is not None else self.file)


class BuildError(Exception):
    """Not the user's mistake (a bug, an I/O failure): raised from the original error, which it keeps."""
