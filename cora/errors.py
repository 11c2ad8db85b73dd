"""The one error type for user errors: bad input, a missing or malformed file, an impossible setting.

Library code raises `UserError` (a ValueError, so Python callers may catch either); the `cora` command line
prints it as one line (`cora <command>: <message>`) and exits 1. Anything else is a bug and keeps its
traceback.
"""

import re


class UserError(ValueError):
    """A failure worth one line to the user: what was wrong, where (argument or file), what was expected."""


def first_line(error: BaseException) -> str:
    """The first line of an exception's message (its type name if it has none): what a UserError made from
    a library's error says."""
    text = worker_message(str(error)).strip()
    return text.splitlines()[0] if text else type(error).__name__


def worker_message(text: str) -> str:
    """An error re-raised from a DataLoader worker carries the worker's traceback in its message: its last
    line without the type ("<type>: <message>") is the original message. Other messages are returned as is."""
    lines = text.strip().splitlines()
    if "Original Traceback (most recent call last):" in lines[1:2]:
        return re.sub(r"^[\w.]+: ", "", lines[-1])
    return text
