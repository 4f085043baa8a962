"""Errors for user mistakes, and the one boundary where CLIs turn them into one line + exit 2.

Every command line (``python -m sweeps``, ``python -m analysis``, ``python -m trainables.train``)
wraps its work in ``user_errors(prog)``: a ``UserError`` (or a subclass, such as the measures'
``MeasureInputError``) becomes one line on stderr and exit status 2, without a traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["UserError", "ConfigError", "DataError", "CheckpointError", "one_line", "user_errors"]


class UserError(ValueError):
    """A mistake in what the user asked for (spec, arguments, files), not a bug."""


class ConfigError(UserError):
    """A bad configuration value; the message names the field, the value and what is allowed."""


class DataError(UserError):
    """A missing or malformed dataset; the message names the path and the expected layout."""


class CheckpointError(UserError):
    """A corrupt, truncated or unsafe checkpoint; the message names the file."""


def one_line(exc: BaseException) -> str:
    """The error's message on one line: its lines joined by ``; ``, runs of blanks collapsed."""
    lines = [" ".join(line.split()) for line in str(exc).splitlines()]
    return "; ".join(line for line in lines if line) or type(exc).__name__


@contextmanager
def user_errors(prog: str | None = None) -> Iterator[None]:
    """Turn a ``UserError`` into ``[<prog>: ]error: <message>`` on stderr and ``SystemExit(2)``.

    Anything else (a bug) propagates with its traceback.
    """
    try:
        yield
    except UserError as exc:
        prefix = f"{prog}: error: " if prog else "error: "
        print(prefix + one_line(exc), file=sys.stderr, flush=True)
        raise SystemExit(2) from None
