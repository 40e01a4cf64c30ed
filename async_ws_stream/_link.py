"""One websocket connection as the library holds it, and the gate senders wait on.

:class:`WebSocket` is what the supervisor needs of whatever ``_create_ws``
returns; :class:`Link` is one open connection with what the supervisor knows of
it; :class:`Gate` hands the current connection to everyone who waits for one, or
the reason there will be none.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Hashable
from typing import Any, Protocol

from websockets.exceptions import ConnectionClosed

from ._subscriptions import RateLimit
from .exceptions import ConnectionLost

__all__ = ["Gate", "Link", "WebSocket", "abort", "check_connection", "close"]


class WebSocket(Protocol):
    """What the supervisor needs of a connection. websockets' ``ClientConnection`` fits, and so
    does :class:`~async_ws_stream.transports.PicowsConnection`.

    ``transport.abort()`` drops the connection without a closing handshake (it is
    dead or stalled anyway).
    """

    async def recv(self) -> str | bytes:
        """Return the next data frame; raise ``websockets.exceptions.ConnectionClosed`` at the end."""

    async def send(self, message: str | bytes | bytearray | memoryview) -> None:
        """Send one data frame; raise ``ConnectionClosed`` if the connection is gone."""

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Send a close frame and wait for the closing handshake."""

    @property
    def transport(self) -> asyncio.WriteTransport:
        """The connection's transport."""


class Link:
    """One websocket connection and what the supervisor knows of it.

    With ``send_rate``, every frame the library sends on it (:meth:`send`) first
    takes a token of its ``limit``. ``topics`` are the subscriptions the server
    acknowledged on this connection, and ``pending`` the subscribe or unsubscribe
    under way for a topic (see :mod:`._shards`). ``early`` holds the messages read
    while the connection was being subscribed, before it was served: the pump
    delivers them first.
    """

    __slots__ = ("closed_by", "early", "last_frame", "limit", "number", "opened_at", "pending", "successor",
                 "topics", "ws")

    def __init__(self, ws: WebSocket, number: int, limit: RateLimit | None = None) -> None:
        self.ws = ws
        self.number = number
        self.limit = limit
        self.opened_at = self.last_frame = time.monotonic()
        self.successor: Link | None = None
        self.closed_by: BaseException | None = None
        self.topics: set[Hashable] = set()
        self.pending: dict[Hashable, asyncio.Task[Any]] = {}
        self.early: list[Any] = []

    def __repr__(self) -> str:
        return f"<Link #{self.number}>"

    async def send(self, data: str | bytes | bytearray | memoryview) -> None:
        """Send one frame on this connection.

        Waits for a token first, with ``send_rate`` (cancelling the wait is safe;
        the token stays spent).

        Raises:
            ConnectionLost: the connection closed before or while sending.
        """
        if self.limit is not None:
            delay = self.limit.reserve()
            if delay > 0:
                await asyncio.sleep(delay)
        try:
            await self.ws.send(data)
        except ConnectionClosed as exc:
            raise ConnectionLost(f"connection #{self.number} closed while sending") from exc


class Gate:
    """The current connection, for everyone who waits for one; or the reason there will be none."""

    def __init__(self) -> None:
        self.value: Link | None = None
        self.error: Callable[[], BaseException] | None = None
        self._waiters: set[asyncio.Future[None]] = set()

    def open(self, value: Link) -> None:
        self.value = value
        self._wake()

    def shut(self) -> None:
        self.value = None

    def fail(self, make_error: Callable[[], BaseException]) -> None:
        """No connection will come: waiters, present and future, raise ``make_error()``."""
        self.value = None
        self.error = make_error
        self._wake()

    async def wait(self, other_than: Link | None = None) -> Link:
        """Return the current connection (one other than ``other_than``), waiting for one. Cancelling it is safe."""
        while True:
            if self.error is not None:
                raise self.error()
            if self.value is not None and self.value is not other_than:
                return self.value
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.add(waiter)
            try:
                await waiter
            finally:
                self._waiters.discard(waiter)

    def _wake(self) -> None:
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)


def abort(ws: WebSocket) -> None:
    """Drop a connection at once, without a closing handshake."""
    transport = getattr(ws, "transport", None)
    if transport is not None:
        transport.abort()


async def close(ws: WebSocket, timeout: float) -> None:
    """Close with a close frame; abort if the peer does not answer within ``timeout``."""
    try:
        async with asyncio.timeout(timeout):
            await ws.close()
    except TimeoutError:
        abort(ws)


def check_connection(ws: object) -> WebSocket:
    if not all(callable(getattr(ws, name, None)) for name in ("recv", "send", "close")):
        raise TypeError(
            f"_create_ws must return an open connection with recv(), send() and close() "
            f"(await websockets.connect(url)), got {type(ws).__name__} {ws!r:.60}"
        )
    return ws  # type: ignore[return-value]
