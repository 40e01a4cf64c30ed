"""Text that is safe to log: URLs cut to scheme, host and port; failures in one line.

Listen keys, tokens and passwords live in URLs (``wss://host/ws/LISTENKEY``,
``?token=...``, ``user:password@``), and the errors of ``websockets`` quote the
URL they failed on. Everything the library logs about a connection or a
failure goes through :func:`redact` or :func:`describe` first, and the
tracebacks it logs go through :func:`traceback_of`: loguru's own rendering of
``exception=`` shows every local variable under its default ``diagnose=True``,
which would put whole messages in the log.
"""

from __future__ import annotations

import re
import traceback

__all__ = ["describe", "redact", "traceback_of"]

# scheme://[userinfo@]host[:port] then the rest of the URL up to white space or a quote.
_URL = re.compile(
    r"\b((?:wss?|https?)://)(?:[^\s/?#@'\"]*@)?([^\s/?#'\"]+)([^\s'\"]*)",
    re.IGNORECASE,
)


def _cut(match: re.Match[str]) -> str:
    scheme, host, rest = match.groups()
    return f"{scheme}{host}/…" if rest else f"{scheme}{host}"


def redact(text: str) -> str:
    """Cut the userinfo, path and query of every ws, wss, http and https URL in ``text``."""
    return _URL.sub(_cut, text)


def describe(exc: BaseException) -> str:
    """A short, secret-free one-line description of a failure, for logs and error messages."""
    text = str(exc)
    line = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return redact(line.replace("\n", " "))


def traceback_of(exc: BaseException) -> str:
    """The traceback of ``exc`` as text: each frame's file, line and code, never a variable's value; redacted."""
    return redact("".join(traceback.format_exception(exc)).rstrip())
