"""FeedServer's connection-aware extension point: observers of handshakes, connections and frames.

Routes (``FeedServer.route``) see only a request's params. A test server that
plays a venue's rules per connection (topics, rate limits, connect limits)
needs more: which connection a frame came on, when it arrived, and a say in
whether it is routed at all. An observer gets exactly that, at four points of
a connection's life, without FeedServer knowing what the observer is for.
"""

from __future__ import annotations

from typing import Protocol

from websockets.asyncio.server import ServerConnection
from websockets.http11 import Request, Response

from ._common import Frame


class ConnectionObserver(Protocol):
    """Sees every handshake, connection and client frame of a FeedServer; add one with ``server.add_observer``.

    Subclass it and override the methods you need; the others do nothing.
    Observers run in the order they were added, inside the server's own
    tasks, so they must not block; the async :meth:`frame` may await sends
    (which wait for room in the write buffer) and ``conn.close()``.

    The order of calls for one connection is: :meth:`handshake` (for every
    handshake request, accepted or not), then, if the connection is accepted
    and kept (after ``on_connect``), :meth:`opened`, :meth:`frame` for each
    data frame in arrival order, and :meth:`closed` once, after the
    connection left :attr:`FeedServer.connections`. A connection aborted by
    ``drop_next`` is never opened; an observer added while connections are
    open sees their later frames and their close, not their opening. The server wakes its ``wait_*`` methods
    after each call, so ``server.wait_until`` sees what an observer changed.

    An exception from an observer is a bug in the test: it propagates as
    FeedServer's own errors would (from :meth:`handshake` websockets answers
    500; from :meth:`frame` the connection's handler fails and the
    connection is closed with 1011).
    """

    def handshake(self, conn: ServerConnection, request: Request) -> Response | None:
        """Decide on a handshake request before FeedServer's queued faults do; return a response to refuse it.

        Build the refusal with ``conn.respond(status, text)``. A handshake
        refused here does not consume a fault queued by ``refuse_next``,
        ``drop_next`` or ``delay_next_handshakes``; the next handshake does.
        Return None to let the handshake go on.
        """
        return None

    def opened(self, number: int, conn: ServerConnection) -> None:
        """A connection was accepted under ``number`` and is about to be read (``conn.request`` holds its path)."""

    async def frame(self, number: int, conn: ServerConnection, frame: Frame, arrival: float) -> bool:
        """See a data frame of connection ``number`` before it is routed; return True to keep it from the router.

        ``frame`` is already in :attr:`FeedServer.received`. ``arrival`` is
        the loop clock (``loop.time()``) when the server read it. Control
        frames (ping, pong, close) never come here: websockets answers them.
        Frames are handed over one at a time: the next frame of this
        connection is read once this call returns. Every observer sees every
        frame; returning True means this observer answered the frame (or
        ignored it on purpose) and FeedServer does not route it, False lets
        FeedServer route it unless another observer took it.
        """
        return False

    def closed(self, number: int, conn: ServerConnection) -> None:
        """Connection ``number`` is gone: closed by either side, dropped, or the server stopped."""
