"""FeedServer: a websockets server on loopback playing a market-data feed, with faults on demand."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence

from loguru import logger
from websockets.asyncio.server import ServerConnection
from websockets.frames import EXTERNAL_CLOSE_CODES

from ._base import FeedBase
from ._common import DEFAULT_WAIT_TIMEOUT, Applied, Frame, check_count
from ._faults import GARBAGE_TEXTS, garbage_blob
from ._observers import ConnectionObserver
from ._routes import RouteHandler, RouteName


class FeedServer(FeedBase):
    """A websocket feed on loopback for tests, examples, demos and benchmarks.

    Start it with ``async with FeedServer() as server:`` (or ``await
    server.start()`` ... ``await server.stop()``) and point clients at
    :attr:`url` or :meth:`url_for`.

    **Connections** are numbered 1, 2, 3, ... in the order they are accepted;
    :attr:`received` pairs every frame with that number. A connection counts as
    accepted (in :attr:`connects`, :attr:`paths`, :attr:`connections`) once its
    handshake succeeded and :attr:`on_connect` has run, so after
    ``await wait_connections(n)`` every greeting has been sent and a broadcast
    reaches the new connection after its greeting.

    **Requests.** A text frame holding a JSON object with the ``route_on``
    key (``"method"`` by default; every key of a tuple such as ``("module",
    "method")``) is a request; other frames are only recorded. The route for
    that value (or tuple of values) is called with the request's
    ``params_key`` field (``"params"``), or with the whole request dict when
    it has none. The reply echoes the request's id under the first of
    ``id_keys`` (``"id"``, ``"eid"``, ``"request_id"``) the request carries:

    * under ``"request_id"``: ``{"request_id": rid, "event": method, "data": result}``,
      plus the other ``route_on`` keys echoed (wsappy's ``"module"``);
    * under any other key K: ``{K: id, "result": result}``;
    * with none of them, the route runs and nothing is sent;
    * a route returning a :class:`Reply` sets the whole reply (the id is added).

    A method with no route gets ``{"error": {"code": -32601, "message":
    "unknown method 'X'"}}`` under the same id key (and ``"event"`` in the
    ``request_id`` style); a route that raises gets ``{"error": {"code":
    -32603, "message": str(exc)}}``. With a single ``route_on`` key,
    ``"SUBSCRIBE"`` and ``"UNSUBSCRIBE"`` are routed out of the box to a
    handler returning ``None``, which answers as Binance does (``{"id": 1,
    "result": null}``); :meth:`route` replaces them.

    Requests from one connection are answered in order, one at a time, except
    for routes with a ``delay``, whose replies are sent later from a task of the
    connection, so that a slow reply never holds up the next request.

    **Faults** are described on each method. A refused, delayed or dropped
    handshake is queued with ``*_next`` and consumed by the next handshakes
    in arrival order; queued faults of different kinds combine (a slow 503).

    Every change of state (handshake, connect, disconnect, frame received)
    wakes :meth:`wait_until` and the ``wait_*`` methods built on it.

    Args:
        host: Address to listen on; an IP literal (a name such as
            ``localhost`` may bind several sockets on different ports).
        port: Port to listen on; 0 picks a free one.
        max_size: Largest frame accepted from a client, in bytes; None for no limit.
        ping_interval: Seconds between the server's keepalive pings; None for none.
        close_timeout: Seconds to wait for a client's answer to a close frame
            before dropping the connection (bounds :meth:`stop` and :meth:`close_all`).
        compression: ``"deflate"`` to offer permessage-deflate, None (the
            default, like most exchange feeds) for none, which keeps
            benchmarks measuring the client rather than zlib.
        route_on: The request key naming the route, or a tuple of keys
            whose values together name it (wsappy: ``("module", "method")``).
        id_keys: The keys a request id may come under, tried in order; the
            reply echoes the first one present. A str is one key.
        params_key: The request key holding what a route is called with
            (wsappy: ``"data"``).
        on_connect: Greeting run on every new connection; see :attr:`on_connect`.

    Raises:
        ValueError: If an option is out of range.
        TypeError: If ``route_on``, ``id_keys`` or ``params_key`` is not
            made of key names.
    """

    # Synchronisation

    async def wait_until(self, predicate: Callable[[], bool], *, timeout: float | None = DEFAULT_WAIT_TIMEOUT) -> None:
        """Return once ``predicate()`` is true; it is checked now and after every change of state.

        Changes of state are: a handshake request, a connection accepted or
        gone, a frame received, the server stopped.

        Raises:
            async_ws_stream.exceptions.Timeout: (a :exc:`TimeoutError`) after
                ``timeout`` seconds; None waits forever.
            RuntimeError: If the server has stopped and the predicate is false.

        Cancelling the wait is safe.
        """
        await self._wait(predicate, timeout, lambda: f"wait_until: {predicate!r} still false")

    async def wait_connections(self, n: int, *, timeout: float | None = DEFAULT_WAIT_TIMEOUT) -> None:
        """Return once at least ``n`` connections have been accepted in total (:attr:`connects`).

        Raises:
            async_ws_stream.exceptions.Timeout: After ``timeout`` seconds.
            RuntimeError: If the server stops first.
            ValueError: If ``n`` is not an int >= 0.
        """
        check_count("wait_connections", n)
        await self._wait(
            lambda: self.connects >= n,
            timeout,
            lambda: f"wait_connections({n}): {self.connects} accepted after {timeout} s",
        )

    async def wait_open(self, n: int, *, timeout: float | None = DEFAULT_WAIT_TIMEOUT) -> None:
        """Return once exactly ``n`` connections are open (``wait_open(0)``: all gone).

        Raises:
            async_ws_stream.exceptions.Timeout: After ``timeout`` seconds.
            RuntimeError: If the server stops first (and ``n`` is not 0).
            ValueError: If ``n`` is not an int >= 0.
        """
        check_count("wait_open", n)
        await self._wait(
            lambda: len(self._open) == n,
            timeout,
            lambda: f"wait_open({n}): {len(self._open)} open after {timeout} s",
        )

    async def wait_received(
        self,
        n: int | Callable[[list[tuple[int, Frame]]], bool],
        *,
        timeout: float | None = DEFAULT_WAIT_TIMEOUT,
    ) -> None:
        """Return once :attr:`received` holds ``n`` frames, or once ``n(received)`` is true.

        Raises:
            async_ws_stream.exceptions.Timeout: After ``timeout`` seconds.
            RuntimeError: If the server stops first.
            ValueError: If ``n`` is neither an int >= 0 nor a callable.
        """
        if callable(n):
            check = n
            await self._wait(
                lambda: check(self.received),
                timeout,
                lambda: f"wait_received({check!r}): still false after {len(self.received)} frames",
            )
            return
        count = check_count("wait_received", n)
        await self._wait(
            lambda: len(self.received) >= count,
            timeout,
            lambda: f"wait_received({count}): {len(self.received)} frames after {timeout} s",
        )

    # Faults

    def drop(self, connection: int | None = None) -> Applied:
        """Abort every open connection (or only the one numbered ``connection``) without a close frame.

        Clients see the TCP connection end (``ConnectionClosedError`` with
        ``rcvd`` None, close code 1006), as when a feed's process dies.

        Returns:
            An :class:`Applied`: the connections are aborted when ``drop()``
            returns; ``await server.drop()`` also waits until they are gone
            from :attr:`connections` (a :class:`Timeout` after 5 s).
        """
        if connection is not None and not 1 <= connection <= self.connects:
            raise ValueError(f"drop: no connection number {connection}; numbers so far run 1..{self.connects}")
        conns = {n: c for n, c in self._open.items() if connection in (None, n)}
        logger.debug("FeedServer: dropping {} connection(s)", len(conns))
        for conn in conns.values():
            conn.transport.abort()
        return Applied(lambda: self._wait_gone(conns, "drop"))

    def stall(self) -> Applied:
        """Freeze every open connection: the socket stays open but nothing goes either way.

        The server stops reading those sockets (``transport.pause_reading()``),
        so client frames wait in the kernel and pings get no pong; sends to
        them (broadcasts, replies, :meth:`send_to`, garbage) are discarded,
        and the server's own keepalive pings are suspended. This is what a
        half-open TCP connection or a hung feed looks like to a client.

        Connections opened later are served normally, so a client that
        detects the stall and reconnects recovers without the test stepping in.

        Returns:
            An :class:`Applied`, complete at once: ``server.stall()`` and
            ``await server.stall()`` are the same.
        """
        for conn in self._open.values():
            if conn in self._stalled:
                continue
            self._stalled.add(conn)
            conn.transport.pause_reading()
            if conn.keepalive_task is not None:
                # Cancelled rather than left running: a stalled server sends
                # nothing, and the unanswerable pong would time out and close
                # the connection. unstall() starts a new one.
                conn.keepalive_task.cancel()
        return Applied()

    def unstall(self) -> Applied:
        """Resume every stalled connection: frames that waited are read and answered.

        Whatever was discarded while stalled stays lost.

        Returns:
            An :class:`Applied`, complete at once (awaiting it is optional).
        """
        for conn in self._stalled:
            conn.transport.resume_reading()
            if self._ping_interval is not None and not conn.transport.is_closing():
                conn.start_keepalive()
        self._stalled.clear()
        return Applied()

    def refuse_next(self, n: int = 1, *, status: int = 503, headers: Mapping[str, str] | None = None) -> None:
        """Answer the next ``n`` handshakes with HTTP ``status`` and ``headers``.

        For example ``refuse_next(status=401)`` for bad credentials, or
        ``refuse_next(3, status=429, headers={"Retry-After": "1"})``. Calls
        queue up: ``refuse_next(1); refuse_next(1, status=403)`` refuses with
        503 then 403. The client sees ``InvalidStatus`` whose ``response``
        carries the status and headers.

        Raises:
            ValueError: If ``n`` is negative or ``status`` is not an HTTP
                status code other than 101.
        """
        self._handshake_faults.refuse(n, status, headers)

    def drop_next(self, n: int = 1) -> None:
        """Let the next ``n`` handshakes succeed, then abort each connection at once.

        The connection counts in :attr:`connects` and :attr:`paths` and gets
        a number, but :attr:`on_connect` does not run and no frame is sent or read.

        Raises:
            ValueError: If ``n`` is not an int >= 0.
        """
        self._handshake_faults.drop(n)

    def delay_next_handshakes(self, n: int, seconds: float) -> None:
        """Hold the next ``n`` handshakes ``seconds`` before answering them.

        Other handshakes and connections go on meanwhile. :meth:`stop` cuts a
        delay short (the handshake is then refused with 503), and websockets'
        own 10 s handshake timeout on the server aborts longer ones.

        Raises:
            ValueError: If ``n`` or ``seconds`` is negative.
        """
        self._handshake_faults.delay(n, seconds)

    async def send_garbage(self, count: int = 1) -> int:
        """Send ``count`` rounds of garbage to every open connection; return how many it reached.

        Each round is a text frame that is not JSON (truncated JSON, plain
        text, an HTML error page in turn) and a binary frame of random bytes
        that is not UTF-8 either. Stalled connections are skipped.

        Raises:
            ValueError: If ``count`` is not an int >= 0.
        """
        check_count("send_garbage", count)
        reached = 0
        for conn in list(self._open.values()):
            ok = True
            for i in range(count):
                text = GARBAGE_TEXTS[i % len(GARBAGE_TEXTS)]
                ok = await self._send(conn, text) and await self._send(conn, garbage_blob())
                if not ok:
                    break
            reached += ok
        return reached

    async def close_all(self, code: int = 1000, reason: str = "") -> None:
        """Close every open connection cleanly with ``code`` and ``reason``; return once they are gone.

        Stalled connections are resumed first so that the close handshake can
        complete. Use 1008 or 4000-4999 for "go away for good", 1012/1013 for
        "come back later".

        Raises:
            ValueError: If ``code`` may not be sent in a close frame, or
                ``reason`` is longer than 123 bytes in UTF-8.
        """
        if code not in EXTERNAL_CLOSE_CODES and not 3000 <= code <= 4999:
            raise ValueError(
                f"close_all: code {code!r} cannot be sent in a close frame; use 1000-1003, 1007-1014 or 3000-4999"
            )
        if len(reason.encode()) > 123:
            raise ValueError(f"close_all: reason must fit in 123 bytes of UTF-8, got {len(reason.encode())}")
        conns = dict(self._open)
        self.unstall()
        async with asyncio.TaskGroup() as tg:
            for conn in conns.values():
                tg.create_task(conn.close(code, reason))
        await self._wait_gone(conns, "close_all")

    async def _wait_gone(self, conns: dict[int, ServerConnection], where: str) -> None:
        # The transport is closed already; the handler unregisters a connection
        # a few loop steps later, and the caller wants open_connections right.
        await self._wait(
            lambda: not any(number in self._open for number in conns),
            DEFAULT_WAIT_TIMEOUT,
            lambda: f"{where}: connections {sorted(n for n in conns if n in self._open)} still registered",
        )

    # Routing

    def route(
        self,
        method: RouteName,
        handler: RouteHandler,
        *,
        delay: float = 0.0,
        id_keys: str | Sequence[str] | None = None,
    ) -> None:
        """Answer requests for ``method`` with ``handler(params)``; replaces any previous route.

        ``method`` is the value of the server's ``route_on`` key (``"echo"``),
        or, for a server made with a tuple ``route_on``, the tuple of values
        (``("user", "login")`` with ``route_on=("module", "method")``).
        ``handler`` may be a function or a coroutine function; it runs when
        the request arrives and its result must be JSON-serialisable, or a
        :class:`Reply` to set the whole reply. With ``delay``, the reply goes
        out ``delay`` seconds after the handler returned, without holding up
        later requests on the connection (a reply still pending when its
        connection closes is dropped). ``id_keys`` replaces the server's for
        this route.

        Raises:
            ValueError: If ``delay`` is negative or not finite.
            TypeError: If ``handler`` is not callable, or ``method`` is not
                shaped as ``route_on`` asks (one value, or a tuple of as many).
        """
        self._router.add(method, handler, delay, id_keys)

    # Observers

    def add_observer(self, observer: ConnectionObserver) -> None:
        """Show ``observer`` every handshake, connection and client frame from now on.

        An observer is the connection-aware extension point (routes see only
        params): it may refuse handshakes, answer or hold back frames, and
        close connections; see :class:`ConnectionObserver` for the order of
        calls. :class:`TopicFeed` is one. Adding the same observer twice is
        a no-op.

        Raises:
            TypeError: If ``observer`` lacks one of the observer's methods.
        """
        missing = [m for m in ("handshake", "opened", "frame", "closed") if not callable(getattr(observer, m, None))]
        if missing:
            raise TypeError(
                f"add_observer: {type(observer).__name__} lacks {', '.join(missing)}; "
                "subclass async_ws_stream.testing.ConnectionObserver"
            )
        if observer not in self._observers:
            self._observers.append(observer)

    def remove_observer(self, observer: ConnectionObserver) -> None:
        """Stop showing ``observer`` anything; removing one that is not there is a no-op."""
        if observer in self._observers:
            self._observers.remove(observer)
