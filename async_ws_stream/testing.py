"""A real websocket server on loopback, with faults on demand, for tests, examples and benchmarks.

:class:`FeedServer` runs a ``websockets`` server on ``127.0.0.1`` (a free port
by default) in the caller's event loop. It plays a market-data feed: it
broadcasts, answers JSON requests (``{"method": ..., "id": ...}``), records
everything clients send, and breaks on demand the way real feeds break:

==========================  ====================================================
fault                       what the client sees
==========================  ====================================================
:meth:`~FeedServer.drop`    the TCP connection ends with no close frame
:meth:`~FeedServer.stall`   an open socket that sends nothing, not even a pong
``refuse_next``             the handshake answered with an HTTP error (503, 401)
``drop_next``               a handshake that succeeds, then an abrupt drop
``delay_next_handshakes``   a slow handshake
``send_garbage``            frames that are not JSON, and random binary frames
``close_all``               a clean close with a chosen close code (1008, 4001)
==========================  ====================================================

Every change of state wakes the ``wait_*`` methods, so a test synchronises on
events ("two handshakes accepted", "three frames received") and never sleeps.

Example::

    async with FeedServer() as server:
        async with websockets.asyncio.client.connect(server.url_for("/ws?streams=a")) as ws:
            await server.wait_connections(1)
            await server.broadcast({"e": "trade", "p": "1.5"})
            assert json.loads(await ws.recv()) == {"e": "trade", "p": "1.5"}

The server belongs to the event loop that started it and is not thread-safe.
"""

from __future__ import annotations

import asyncio
import enum
import http
import inspect
import json
import math
import os
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

from loguru import logger
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.frames import EXTERNAL_CLOSE_CODES
from websockets.http11 import Request, Response

from .exceptions import Timeout

__all__ = [
    "DEFAULT_CLOSE_TIMEOUT",
    "DEFAULT_MAX_SIZE",
    "DEFAULT_PING_INTERVAL",
    "DEFAULT_WAIT_TIMEOUT",
    "ERROR_HANDLER_FAILED",
    "ERROR_UNKNOWN_METHOD",
    "FeedServer",
    "OnConnect",
    "RouteHandler",
]

DEFAULT_MAX_SIZE = 2**20
DEFAULT_PING_INTERVAL = 20.0
DEFAULT_CLOSE_TIMEOUT = 2.0
DEFAULT_WAIT_TIMEOUT = 5.0

ERROR_UNKNOWN_METHOD = -32601  # JSON-RPC "method not found"
ERROR_HANDLER_FAILED = -32603  # JSON-RPC "internal error"

OnConnect = Callable[[ServerConnection], Awaitable[None] | None]
"""A greeting run on every new connection before it is counted and read."""

RouteHandler = Callable[[Any], Any]
"""A route: takes the request's params, returns the result (or an awaitable of it)."""

Frame = str | bytes

# One frame of each kind a broken feed sends: truncated JSON, plain text, an
# HTML error page. Sent in turn by send_garbage().
_GARBAGE_TEXTS = (
    '{"e": "trade", "s": "BTCUSDT", "p": ',
    "not json at all",
    "<html><body>502 Bad Gateway</body></html>",
)


class _State(enum.Enum):
    NEW = "new"
    SERVING = "serving"
    STOPPING = "stopping"
    STOPPED = "stopped"


@dataclass(frozen=True, slots=True)
class _Route:
    handler: RouteHandler
    delay: float


@dataclass(frozen=True, slots=True)
class _Refusal:
    status: int
    headers: tuple[tuple[str, str], ...]


def _no_result(params: Any) -> None:
    """Answer a request with ``result: null``, as Binance answers SUBSCRIBE."""
    return None


def _encode(msg: Any) -> Frame:
    """Return the frame for ``msg``: str and bytes as they are, anything else as compact JSON."""
    if isinstance(msg, (str, bytes)):
        return msg
    if isinstance(msg, (bytearray, memoryview)):
        return bytes(msg)
    return json.dumps(msg, separators=(",", ":"))


def _as_request(frame: Frame) -> dict[str, Any] | None:
    """Return the frame as a request dict if it is a JSON object with a "method" key, else None."""
    # Binary frames and non-objects are data, never requests; checking the first
    # character skips json.loads for the common plain-text frame.
    if not isinstance(frame, str) or not frame.lstrip().startswith("{"):
        return None
    try:
        obj = json.loads(frame)
    except ValueError:
        return None
    if isinstance(obj, dict) and "method" in obj:
        return obj
    return None


def _check_count(where: str, n: object) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"{where}: n must be an int >= 0, got {type(n).__name__} {n!r}")
    return n


def _check_seconds(where: str, name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{where}: {name} must be a finite number of seconds >= 0, got {value!r}")
    return float(value)


class FeedServer:
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

    **Requests.** A text frame holding a JSON object with a ``"method"`` key is
    a request; other frames are only recorded. The route for that method is
    called with the request's ``"params"``, or with the whole request dict when
    it has no ``"params"`` key. The reply echoes the request's id:

    * with ``"id"``: ``{"id": id, "result": result}``;
    * else with ``"request_id"``: ``{"request_id": rid, "event": method, "data": result}``;
    * with neither, the route runs and nothing is sent.

    A method with no route gets ``{"error": {"code": -32601, "message":
    "unknown method 'X'"}}`` under the same id key (and ``"event"`` in the
    ``request_id`` style); a route that raises gets ``{"error": {"code":
    -32603, "message": str(exc)}}``. ``"SUBSCRIBE"`` and ``"UNSUBSCRIBE"`` are
    routed out of the box to a handler returning ``None``, which answers as
    Binance does (``{"id": 1, "result": null}``); :meth:`route` replaces them.

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
        on_connect: Greeting run on every new connection; see :attr:`on_connect`.

    Raises:
        ValueError: If an option is out of range.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        # Limits
        max_size: int | None = DEFAULT_MAX_SIZE,
        # Timeouts
        ping_interval: float | None = DEFAULT_PING_INTERVAL,
        close_timeout: float | None = DEFAULT_CLOSE_TIMEOUT,
        # Protocol
        compression: str | None = None,
        # Hooks
        on_connect: OnConnect | None = None,
    ) -> None:
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            raise ValueError(f"FeedServer: port must be an int in 0..65535, got {port!r}")
        if max_size is not None and (isinstance(max_size, bool) or not isinstance(max_size, int) or max_size < 1):
            raise ValueError(f"FeedServer: max_size must be an int >= 1 or None, got {max_size!r}")
        if ping_interval is not None and (_check_seconds("FeedServer", "ping_interval", ping_interval) == 0):
            raise ValueError("FeedServer: ping_interval must be > 0 or None, got 0")
        if close_timeout is not None:
            _check_seconds("FeedServer", "close_timeout", close_timeout)
        if compression not in (None, "deflate"):
            raise ValueError(f"FeedServer: compression must be 'deflate' or None, got {compression!r}")
        self._host = host
        self._port = port
        self._max_size = max_size
        self._ping_interval = ping_interval
        self._close_timeout = close_timeout
        self._compression = compression

        self.on_connect: OnConnect | None = on_connect
        """Greeting run on every new connection before it is counted and read.

        A plain function or a coroutine function taking the
        :class:`~websockets.asyncio.server.ServerConnection`; send on it with
        ``await conn.send(...)``. If it raises, the error is logged and the
        connection is closed with code 1011 without being counted.
        """

        # Records, in order. Live lists: read them, don't mutate them.
        self.handshakes: int = 0
        """Handshake requests received, whether accepted, refused or dropped."""
        self.requests: list[Request] = []
        """Every handshake request received (path, headers), in arrival order."""
        self.connects: int = 0
        """Connections accepted in total (including those dropped by :meth:`drop_next`)."""
        self.paths: list[str] = []
        """Request path, with its query string, of every accepted connection, in accept order."""
        self.received: list[tuple[int, Frame]] = []
        """``(connection number, frame)`` of every frame clients sent, in arrival order."""

        self._state = _State.NEW
        self._server: Server | None = None
        self._bound_port: int | None = None
        self._stop_task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._open: dict[int, ServerConnection] = {}  # number -> connection, in accept order
        self._stalled: set[ServerConnection] = set()
        self._routes: dict[str, _Route] = {
            "SUBSCRIBE": _Route(_no_result, 0.0),
            "UNSUBSCRIBE": _Route(_no_result, 0.0),
        }
        # Handshake faults, consumed in handshake arrival order.
        self._refusals: deque[_Refusal] = deque()
        self._delays: deque[float] = deque()
        self._drops_pending = 0
        # Replaced by a fresh Event at each change: waiters hold the old one,
        # so a single set() wakes all of them without a lock (see _changed_now).
        self._changed = asyncio.Event()

    # Lifecycle

    async def start(self) -> Self:
        """Start listening; return the server itself.

        After :meth:`stop`, ``start()`` serves again on the same port, which
        models a server restart; counters and records carry on.

        Raises:
            RuntimeError: If the server is already running.
            OSError: If the address cannot be bound.
        """
        if self._state in (_State.SERVING, _State.STOPPING):
            raise RuntimeError(f"FeedServer.start: the server is already {self._state.value}")
        self._stopping = asyncio.Event()
        self._stop_task = None
        port = self._port if self._bound_port is None else self._bound_port
        self._server = await serve(
            self._serve_connection,
            self._host,
            port,
            process_request=self._process_request,
            compression=self._compression,
            ping_interval=self._ping_interval,
            close_timeout=self._close_timeout,
            max_size=self._max_size,
            # Flow control off: the handler reads every frame at once anyway, and
            # this way pause_reading()/resume_reading() on the transport belong to
            # stall()/unstall() alone; websockets would otherwise resume a stall.
            max_queue=None,
        )
        self._bound_port = self._server.sockets[0].getsockname()[1]
        self._state = _State.SERVING
        logger.debug("FeedServer listening on {}", self.url)
        return self

    async def stop(self) -> None:
        """Stop listening and close every connection; idempotent.

        Open connections are closed with code 1001 (going away); stalled ones
        are resumed first so that their close handshake can complete. A
        handshake being delayed is answered 503. When ``stop()`` returns, no
        socket of the server is open and none of its tasks is left.

        Cancelling ``stop()`` does not cancel the shutdown; calling ``stop()``
        again waits for it to finish.
        """
        if self._state in (_State.NEW, _State.STOPPED):
            return
        if self._stop_task is None:
            assert self._server is not None
            self._state = _State.STOPPING
            self._stop_task = asyncio.get_running_loop().create_task(self._shutdown(self._server))
        # Shielded so that a cancelled caller leaves the shutdown running; the
        # task stays referenced in _stop_task and the next stop() awaits it.
        await asyncio.shield(self._stop_task)

    async def _shutdown(self, server: Server) -> None:
        self._stopping.set()
        for conn in self._stalled:
            conn.transport.resume_reading()
        self._stalled.clear()
        server.close()
        await server.wait_closed()
        self._server = None
        self._state = _State.STOPPED
        self._changed_now()
        logger.debug("FeedServer on port {} stopped", self._bound_port)

    async def __aenter__(self) -> Self:
        """Start the server (see :meth:`start`)."""
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop the server (see :meth:`stop`)."""
        await self.stop()

    # Addresses

    @property
    def port(self) -> int:
        """The port the server listens on (kept after :meth:`stop` for a restart).

        Raises:
            RuntimeError: If the server was never started.
        """
        if self._bound_port is None:
            raise RuntimeError("FeedServer: not started; use `async with FeedServer() as server:` first")
        return self._bound_port

    @property
    def url(self) -> str:
        """The server's address, ``"ws://127.0.0.1:PORT"``.

        Raises:
            RuntimeError: If the server was never started.
        """
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"ws://{host}:{self.port}"

    def url_for(self, path: str) -> str:
        """Return :attr:`url` followed by ``path``, which may hold a query string.

        A path without a leading ``/`` gets one: ``url_for("ws?x=1")`` and
        ``url_for("/ws?x=1")`` are the same URL.

        Raises:
            RuntimeError: If the server was never started.
        """
        return self.url + (path if path.startswith("/") else "/" + path)

    # State

    @property
    def connections(self) -> list[ServerConnection]:
        """The open connections, in accept order (a new list at each access)."""
        return list(self._open.values())

    @property
    def open_connections(self) -> int:
        """How many connections are open."""
        return len(self._open)

    @property
    def stalled(self) -> bool:
        """Whether some connection is stalled (see :meth:`stall`)."""
        return bool(self._stalled)

    @property
    def pending_faults(self) -> int:
        """Handshake faults queued by ``refuse_next``, ``drop_next`` and ``delay_next_handshakes``, not yet used.

        ``await server.wait_until(lambda: server.pending_faults == 0)`` waits
        until the client has run into every one of them.
        """
        return len(self._refusals) + len(self._delays) + self._drops_pending

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
        _check_count("wait_connections", n)
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
        _check_count("wait_open", n)
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
        count = _check_count("wait_received", n)
        await self._wait(
            lambda: len(self.received) >= count,
            timeout,
            lambda: f"wait_received({count}): {len(self.received)} frames after {timeout} s",
        )

    async def _wait(self, predicate: Callable[[], bool], timeout: float | None, describe: Callable[[], str]) -> None:
        try:
            async with asyncio.timeout(timeout):
                while not predicate():
                    if self._state is _State.STOPPED:
                        raise RuntimeError(f"FeedServer stopped while waiting; {describe()}")
                    await self._changed.wait()
        except TimeoutError as exc:
            raise Timeout(describe()) from exc

    def _changed_now(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    # Sending

    async def broadcast(self, msg: Any) -> int:
        """Send ``msg`` to every open connection, in accept order; return how many it reached.

        ``str`` goes as a text frame, ``bytes`` as a binary frame, anything else
        as compact JSON text. Stalled connections and ones closing meanwhile
        are skipped (a stalled server therefore reaches 0). Each send waits for
        room in that connection's write buffer, so a slow client slows the
        broadcast instead of filling memory.

        Raises:
            TypeError: If ``msg`` is not JSON-serialisable.
        """
        frame = _encode(msg)
        reached = 0
        for conn in list(self._open.values()):
            if await self._send(conn, frame):
                reached += 1
        return reached

    async def publish(self, messages: Iterable[Any], *, rate: float | None = None) -> int:
        """Broadcast each message in turn; return how many messages were broadcast.

        With ``rate`` (messages per second), message ``i`` goes out at
        ``start + i / rate`` on the loop clock, so pacing does not drift; a
        publisher running late sends at once until it catches up. Without it,
        messages go as fast as the clients' write buffers allow.

        Raises:
            ValueError: If ``rate`` is not a positive number.
            TypeError: If a message is not JSON-serialisable.
        """
        if rate is not None and (isinstance(rate, bool) or not isinstance(rate, (int, float)) or not rate > 0):
            raise ValueError(f"publish: rate must be a number of messages per second > 0, got {rate!r}")
        loop = asyncio.get_running_loop()
        start = loop.time()
        count = 0
        for msg in messages:
            if rate is not None:
                delay = start + count / rate - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
            elif count % 256 == 255:
                # A send into a buffer with room does not yield; without this,
                # publishing a long iterable to no client would starve the loop.
                await asyncio.sleep(0)
            await self.broadcast(msg)
            count += 1
        return count

    async def send_to(self, conn: ServerConnection | int, msg: Any) -> bool:
        """Send ``msg`` (encoded as by :meth:`broadcast`) to one connection, given or by number.

        Returns:
            True if it was sent; False if that connection is closed or stalled.

        Raises:
            ValueError: If no connection ever had that number.
            TypeError: If ``msg`` is not JSON-serialisable.
        """
        if isinstance(conn, int):
            if not 1 <= conn <= self.connects:
                raise ValueError(f"send_to: no connection number {conn}; numbers so far run 1..{self.connects}")
            target = self._open.get(conn)
            if target is None:
                return False
            conn = target
        return await self._send(conn, _encode(msg))

    async def _send(self, conn: ServerConnection, frame: Frame) -> bool:
        if conn in self._stalled:
            return False
        try:
            await conn.send(frame)
        except ConnectionClosed:
            return False
        return True

    # Faults

    async def drop(self) -> None:
        """Abort every open connection without a close frame; return once they are gone.

        Clients see the TCP connection end (``ConnectionClosedError`` with
        ``rcvd`` None, close code 1006), as when a feed's process dies.
        """
        conns = dict(self._open)
        logger.debug("FeedServer: dropping {} connection(s)", len(conns))
        for conn in conns.values():
            conn.transport.abort()
        await self._wait_gone(conns, "drop")

    def stall(self) -> None:
        """Freeze every open connection: the socket stays open but nothing goes either way.

        The server stops reading those sockets (``transport.pause_reading()``),
        so client frames wait in the kernel and pings get no pong; sends to
        them (broadcasts, replies, :meth:`send_to`, garbage) are discarded,
        and the server's own keepalive pings are suspended. This is what a
        half-open TCP connection or a hung feed looks like to a client.

        Connections opened later are served normally, so a client that
        detects the stall and reconnects recovers without the test stepping in.
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

    def unstall(self) -> None:
        """Resume every stalled connection: frames that waited are read and answered.

        Whatever was discarded while stalled stays lost.
        """
        for conn in self._stalled:
            conn.transport.resume_reading()
            if self._ping_interval is not None and not conn.transport.is_closing():
                conn.start_keepalive()
        self._stalled.clear()

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
        _check_count("refuse_next", n)
        try:
            code = http.HTTPStatus(status)
        except ValueError:
            raise ValueError(f"refuse_next: status must be a known HTTP status code, got {status!r}") from None
        if code is http.HTTPStatus.SWITCHING_PROTOCOLS:
            raise ValueError("refuse_next: status 101 would accept the handshake; use 4xx or 5xx")
        refusal = _Refusal(code.value, tuple((str(k), str(v)) for k, v in (headers or {}).items()))
        self._refusals.extend([refusal] * n)

    def drop_next(self, n: int = 1) -> None:
        """Let the next ``n`` handshakes succeed, then abort each connection at once.

        The connection counts in :attr:`connects` and :attr:`paths` and gets
        a number, but :attr:`on_connect` does not run and no frame is sent or read.

        Raises:
            ValueError: If ``n`` is not an int >= 0.
        """
        self._drops_pending += _check_count("drop_next", n)

    def delay_next_handshakes(self, n: int, seconds: float) -> None:
        """Hold the next ``n`` handshakes ``seconds`` before answering them.

        Other handshakes and connections go on meanwhile. :meth:`stop` cuts a
        delay short (the handshake is then refused with 503), and websockets'
        own 10 s handshake timeout on the server aborts longer ones.

        Raises:
            ValueError: If ``n`` or ``seconds`` is negative.
        """
        _check_count("delay_next_handshakes", n)
        self._delays.extend([_check_seconds("delay_next_handshakes", "seconds", seconds)] * n)

    async def send_garbage(self, count: int = 1) -> int:
        """Send ``count`` rounds of garbage to every open connection; return how many it reached.

        Each round is a text frame that is not JSON (truncated JSON, plain
        text, an HTML error page in turn) and a binary frame of random bytes
        that is not UTF-8 either. Stalled connections are skipped.

        Raises:
            ValueError: If ``count`` is not an int >= 0.
        """
        _check_count("send_garbage", count)
        reached = 0
        for conn in list(self._open.values()):
            ok = True
            for i in range(count):
                # 0xff never occurs in UTF-8, so even json.loads(bytes) fails.
                blob = b"\xff" + os.urandom(15)
                ok = await self._send(conn, _GARBAGE_TEXTS[i % len(_GARBAGE_TEXTS)]) and await self._send(conn, blob)
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

    def route(self, method: str, handler: RouteHandler, *, delay: float = 0.0) -> None:
        """Answer requests for ``method`` with ``handler(params)``; replaces any previous route.

        ``handler`` may be a function or a coroutine function; it runs when
        the request arrives and its result must be JSON-serialisable. With
        ``delay``, the reply goes out ``delay`` seconds after the handler
        returned, without holding up later requests on the connection (a
        reply still pending when its connection closes is dropped).

        Raises:
            ValueError: If ``delay`` is negative or not finite.
            TypeError: If ``handler`` is not callable.
        """
        if not callable(handler):
            raise TypeError(f"route: handler for {method!r} must be callable, got {type(handler).__name__}")
        self._routes[method] = _Route(handler, _check_seconds("route", "delay", delay))

    # Inside the server

    async def _process_request(self, conn: ServerConnection, request: Request) -> Response | None:
        self.handshakes += 1
        self.requests.append(request)
        self._changed_now()
        if self._delays:
            seconds = self._delays.popleft()
            try:
                async with asyncio.timeout(seconds):
                    await self._stopping.wait()
            except TimeoutError:
                pass  # the delay ran out: the handshake goes on
        if self._stopping.is_set():
            return conn.respond(http.HTTPStatus.SERVICE_UNAVAILABLE, "FeedServer is stopping\n")
        if self._refusals:
            refusal = self._refusals.popleft()
            response = conn.respond(refusal.status, "Refused by FeedServer.refuse_next()\n")
            for name, value in refusal.headers:
                response.headers[name] = value
            return response
        return None

    async def _serve_connection(self, conn: ServerConnection) -> None:
        if self._drops_pending:
            self._drops_pending -= 1
            self._accept(conn, keep=False)
            conn.transport.abort()
            return
        if self.on_connect is not None:
            try:
                greeting = self.on_connect(conn)
                if inspect.isawaitable(greeting):
                    await greeting
            except ConnectionClosed:
                return  # the client left during the greeting
            except Exception:
                # The hook is test code; a failing greeting must be loud but must
                # not take the server down with it.
                logger.exception("FeedServer: on_connect failed; closing the connection with 1011")
                await conn.close(1011, "FeedServer on_connect failed")
                return
        number = self._accept(conn, keep=True)
        try:
            await self._read(conn, number)
        finally:
            del self._open[number]
            self._stalled.discard(conn)
            self._changed_now()

    def _accept(self, conn: ServerConnection, *, keep: bool) -> int:
        self.connects += 1
        self.paths.append(conn.request.path if conn.request is not None else "")
        if keep:
            self._open[self.connects] = conn
        self._changed_now()
        return self.connects

    async def _read(self, conn: ServerConnection, number: int) -> None:
        delayed: set[asyncio.Task[None]] = set()
        async with asyncio.TaskGroup() as tg:
            try:
                while True:
                    try:
                        frame = await conn.recv()
                    except ConnectionClosed:
                        break
                    self.received.append((number, frame))
                    self._changed_now()
                    request = _as_request(frame)
                    if request is None:
                        continue
                    route = self._routes.get(request["method"]) if isinstance(request["method"], str) else None
                    if route is not None and route.delay > 0:
                        task = tg.create_task(self._answer(conn, request, route))
                        delayed.add(task)
                        task.add_done_callback(delayed.discard)
                    else:
                        await self._answer(conn, request, route)
            finally:
                # Replies still waiting have nowhere to go; the TaskGroup awaits them.
                for task in delayed:
                    task.cancel()

    async def _answer(self, conn: ServerConnection, request: dict[str, Any], route: _Route | None) -> None:
        method = request["method"]
        reply: dict[str, Any]
        if "id" in request:
            reply = {"id": request["id"]}
        elif "request_id" in request:
            reply = {"request_id": request["request_id"], "event": method}
        else:
            reply = {}  # a notification: the route runs, nothing is sent
        result_key = "result" if "id" in reply else "data"
        if route is None:
            reply["error"] = {"code": ERROR_UNKNOWN_METHOD, "message": f"unknown method {method!r}"}
        else:
            params = request["params"] if "params" in request else request
            try:
                result = route.handler(params)
                if inspect.isawaitable(result):
                    result = await result
            except Exception as exc:
                # A route is test code standing in for a real server, which
                # answers a failure with an error object instead of hanging up.
                reply["error"] = {"code": ERROR_HANDLER_FAILED, "message": str(exc) or type(exc).__name__}
            else:
                reply[result_key] = result
            if route.delay > 0:
                await asyncio.sleep(route.delay)
        if not ("id" in reply or "request_id" in reply):
            return
        try:
            text = json.dumps(reply, separators=(",", ":"))
        except (TypeError, ValueError) as exc:
            reply.pop(result_key, None)
            reply["error"] = {
                "code": ERROR_HANDLER_FAILED,
                "message": f"result of {method!r} is not JSON-serialisable: {exc}",
            }
            text = json.dumps(reply, separators=(",", ":"))
        await self._send(conn, text)
