"""The one error type for user errors: bad input, a missing or malformed file, an impossible setting.

Library code raises `UserError` (a ValueError, so Python callers may catch either); the `cora` command line
prints it as one line (`cora <command>: <message>`) and exits 1. Anything else is a bug and keeps its
traceback.
"""


class UserError(ValueError):
    """A failure worth one line to the user: what was wrong, where (argument or file), what was expected."""


def first_line(error: BaseException) -> str:
    """The first line of an exception's message (its type name if it has none): what a UserError made from
    a library's error says."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
