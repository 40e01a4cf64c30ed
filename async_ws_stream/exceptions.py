"""The public error tree of async_ws_stream.

Every error the library raises on purpose derives from :exc:`AsyncWsStreamError`::

    AsyncWsStreamError
    ├── ClientClosed         exit() was called; the client takes no more work
    ├── ConnectionLost       the connection a request went out on closed before its reply
    ├── ConnectionRejected   the server refused us for good (HTTP 401/403, close 1008, 4000-4999)
    ├── RetriesExhausted     max_retries ran out (reconnects, or poll() tries)
    ├── StreamOverflow       a stream with overflow="error" filled up; it ends with this
    ├── SubscribeError       the server refused a subscribe or unsubscribe (.topics, .reply)
    ├── Alarm                expect()/poll() saw a message matching one of its alarms
    └── Timeout              also a builtin TimeoutError: send, request, expect, wait_connected

Errors from ``websockets`` are wrapped only where a user must tell them apart;
the original error stays chained as ``__cause__``.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "Alarm",
    "AsyncWsStreamError",
    "ClientClosed",
    "ConnectionLost",
    "ConnectionRejected",
    "RetriesExhausted",
    "StreamOverflow",
    "SubscribeError",
    "Timeout",
]


class AsyncWsStreamError(Exception):
    """Root of every error async_ws_stream raises."""


class ClientClosed(AsyncWsStreamError):
    """The client has exited (or is exiting); it sends and waits for nothing more."""


class ConnectionLost(AsyncWsStreamError):
    """The connection a request was sent on closed before its reply arrived."""


class ConnectionRejected(AsyncWsStreamError):
    """The server refused the client in a way that retrying will not fix.

    Raised for a handshake answered with HTTP 401 or 403, and for a close code
    1008 (policy violation) or 4000-4999 (application-defined), unless the
    subclass's :meth:`~async_ws_stream.AsyncWsStream._is_fatal` says otherwise.

    Attributes:
        status: The HTTP status of a refused handshake, else None.
        close_code: The close code of a closed connection, else None.
    """

    def __init__(self, message: str, *, status: int | None = None, close_code: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.close_code = close_code


class RetriesExhausted(AsyncWsStreamError):
    """A bounded number of tries (``max_retries``) ran out.

    The last failure, when there was one, is chained as ``__cause__``.
    """


class StreamOverflow(AsyncWsStreamError):
    """A stream with ``overflow="error"`` was full when a message arrived.

    The consumer receives everything buffered before the overflow, then this error;
    the stream is over. Read faster, raise ``maxsize``, or pick a drop policy.
    """


class Alarm(AsyncWsStreamError):
    """A message matched an alarm condition of :meth:`expect`, :meth:`wait_for` or :meth:`poll`.

    Attributes:
        message: The message that matched.
        condition: The alarm condition it matched (as passed by the caller).
    """

    def __init__(self, message: Any, condition: Any) -> None:
        super().__init__(f"alarm {condition!r} matched a message")
        self.message = message
        self.condition = condition


class SubscribeError(AsyncWsStreamError):
    """The server answered a subscribe or unsubscribe with an error reply.

    The topics of a refused subscribe are not in ``client.subscriptions`` any
    more: they are not subscribed, and no later connection subscribes them.

    Attributes:
        topics: The topics of the refused message (the venue refuses a message as a whole).
        reply: The error reply, as parsed.
    """

    def __init__(self, message: str, *, topics: tuple[Any, ...], reply: Any) -> None:
        super().__init__(message)
        self.topics = topics
        self.reply = reply


class Timeout(AsyncWsStreamError, TimeoutError):
    """A wait ran past its timeout. It is also a builtin :exc:`TimeoutError`."""
