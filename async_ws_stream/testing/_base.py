"""The connection side of FeedServer: state, lifecycle, addresses, sending and serving connections.

FeedServer (in ``_server.py``) adds the public faults, routing and waits on top.
"""

from __future__ import annotations

import asyncio
import enum
import inspect
from collections.abc import Awaitable, Callable, Iterable, Sequence
from types import TracebackType
from typing import Any, Self

from loguru import logger
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from ._common import (
    DEFAULT_CLOSE_TIMEOUT,
    DEFAULT_MAX_SIZE,
    DEFAULT_PING_INTERVAL,
    Changes,
    Frame,
    check_seconds,
    encode,
)
from ._faults import HandshakeFaults
from ._observers import ConnectionObserver
from ._routes import DEFAULT_ID_KEYS, Call, Router

OnConnect = Callable[[ServerConnection], Awaitable[None] | None]
"""A greeting run on every new connection before it is counted and read."""


class _State(enum.Enum):
    NEW = "new"
    SERVING = "serving"
    STOPPING = "stopping"
    STOPPED = "stopped"


class FeedBase:
    """FeedServer's state and connection handling; see :class:`~async_ws_stream.testing.FeedServer`."""

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
        # Requests
        route_on: str | Sequence[str] = "method",
        id_keys: str | Sequence[str] = DEFAULT_ID_KEYS,
        params_key: str = "params",
        # Hooks
        on_connect: OnConnect | None = None,
    ) -> None:
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            raise ValueError(f"FeedServer: port must be an int in 0..65535, got {port!r}")
        if max_size is not None and (isinstance(max_size, bool) or not isinstance(max_size, int) or max_size < 1):
            raise ValueError(f"FeedServer: max_size must be an int >= 1 or None, got {max_size!r}")
        if ping_interval is not None and (check_seconds("FeedServer", "ping_interval", ping_interval) == 0):
            raise ValueError("FeedServer: ping_interval must be > 0 or None, got 0")
        if close_timeout is not None:
            check_seconds("FeedServer", "close_timeout", close_timeout)
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
        self._router = Router(route_on=route_on, id_keys=id_keys, params_key=params_key)
        self._handshake_faults = HandshakeFaults()  # consumed in handshake arrival order
        self._observers: list[ConnectionObserver] = []  # called in the order added
        self._changes = Changes()

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
        self._changes.notify()
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
        return self._handshake_faults.pending

    async def _wait(self, predicate: Callable[[], bool], timeout: float | None, describe: Callable[[], str]) -> None:
        await self._changes.wait(
            predicate, timeout, describe, lambda: "FeedServer" if self._state is _State.STOPPED else None
        )

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
        frame = encode(msg)
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
        return await self._send(conn, encode(msg))

    async def _send(self, conn: ServerConnection, frame: Frame) -> bool:
        if conn in self._stalled:
            return False
        try:
            await conn.send(frame)
        except ConnectionClosed:
            return False
        return True

    # Inside the server

    async def _process_request(self, conn: ServerConnection, request: Request) -> Response | None:
        self.handshakes += 1
        self.requests.append(request)
        try:
            for observer in tuple(self._observers):
                refusal = observer.handshake(conn, request)
                if refusal is not None:
                    return refusal
        finally:
            self._changes.notify()
        return await self._handshake_faults.process(conn, request, self._stopping)

    async def _serve_connection(self, conn: ServerConnection) -> None:
        if self._handshake_faults.take_drop():
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
            for observer in tuple(self._observers):
                observer.opened(number, conn)
            if self._observers:
                self._changes.notify()
            await self._read(conn, number)
        finally:
            del self._open[number]
            self._stalled.discard(conn)
            for observer in tuple(self._observers):
                observer.closed(number, conn)
            self._changes.notify()

    def _accept(self, conn: ServerConnection, *, keep: bool) -> int:
        self.connects += 1
        self.paths.append(conn.request.path if conn.request is not None else "")
        if keep:
            self._open[self.connects] = conn
        self._changes.notify()
        return self.connects

    async def _read(self, conn: ServerConnection, number: int) -> None:
        delayed: set[asyncio.Task[None]] = set()
        clock = asyncio.get_running_loop().time
        async with asyncio.TaskGroup() as tg:
            try:
                while True:
                    try:
                        frame = await conn.recv()
                    except ConnectionClosed:
                        break
                    self.received.append((number, frame))
                    self._changes.notify()
                    if self._observers and await self._observe(number, conn, frame, clock()):
                        continue
                    call = self._router.parse(frame)
                    if call is None:
                        continue
                    if call.delay > 0:
                        task = tg.create_task(self._answer(conn, call))
                        delayed.add(task)
                        task.add_done_callback(delayed.discard)
                    else:
                        await self._answer(conn, call)
            finally:
                # Replies still waiting have nowhere to go; the TaskGroup awaits them.
                for task in delayed:
                    task.cancel()

    async def _observe(self, number: int, conn: ServerConnection, frame: Frame, arrival: float) -> bool:
        # Every observer sees every frame; the router gets it if none took it.
        taken = False
        for observer in tuple(self._observers):  # one may add or remove observers meanwhile
            taken = await observer.frame(number, conn, frame, arrival) or taken
            self._changes.notify()
        return taken

    async def _answer(self, conn: ServerConnection, call: Call) -> None:
        text = await self._router.answer(call)
        if text is not None:
            await self._send(conn, text)
