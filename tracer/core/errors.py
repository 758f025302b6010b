"""Errors that carry their exit code: the CLI prints their one line and exits with it."""

from __future__ import annotations


class MemtraceError(Exception):
    """A user-facing failure: bad input, a builder that raises, a model that cannot run on meta."""

    exit_code = 2

    def one_line(self) -> str:
        text = " ".join(str(self).split())
        return text if len(text) <= 400 else text[:397] + "..."


class DataDependentError(MemtraceError):
    """A data-dependent value that no `--assume` key bounds: the real step can still be run (verify) to
    measure the values that would let it run."""


def first_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's message, prefixed by its type."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
