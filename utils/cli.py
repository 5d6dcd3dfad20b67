"""How every command reports an error its user caused: one line on stderr, exit status 2.

    prog: error: <message>

The caller names the exception types that mean bad input (``training.command.bad_input_errors``
is the project's list). Everything else is a bug or a failure and keeps its traceback, and so does
an error flagged ``bug=True`` (a ``PipelineError`` wrapping an unexpected exception).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TypeVar

EXIT_BAD_INPUT = 2  # bad config, data, checkpoint, path or device: one clear line

T = TypeVar("T")


def error_line(prog: str, error: BaseException) -> str:
    """``prog: error: message`` on one line; a message of several lines is joined with "; "."""
    parts = [line.strip() for line in str(error).splitlines() if line.strip()]
    message = "; ".join(parts) or type(error).__name__
    return f"{prog}: error: {message}"


def run_command(prog: str, body: Callable[[], T], errors: tuple[type[BaseException], ...]) -> T | int:
    """``body()``, or :data:`EXIT_BAD_INPUT` after printing the one line when it raised one of ``errors``."""
    try:
        return body()
    except errors as e:
        if getattr(e, "bug", False):
            raise
        print(error_line(prog, e), file=sys.stderr)
        return EXIT_BAD_INPUT
