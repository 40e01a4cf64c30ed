"""websockets' own connections, read in bigger reads and parsed in slices: websockets_connect and guard."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Any, TypeVar

from loguru import logger
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.connection import Connection

from ._common import (
    ASYNCIO_READ_SIZE,
    DEFAULT_READ_SIZE,
    DEFAULT_SLICE_SIZE,
    PARSE_BUDGET,
    Interposed,
    check_int,
    check_read_size,
)

C = TypeVar("C")

# What one slice should take to parse, and the smallest slice (some 250 pings).
_SLICE_TIME = PARSE_BUDGET / 4
_MIN_SLICE = 512
# How long a failed websockets_connect waits for its connection to close.
_LOST_TIMEOUT = 1.0


async def websockets_connect(uri: str, *, read_size: int = DEFAULT_READ_SIZE, slice_size: int = DEFAULT_SLICE_SIZE,
                             **options: Any) -> ClientConnection:
    """Open a connection with ``websockets.connect(uri, **options)``, reading up to ``read_size`` bytes at once.

    The connection is websockets' own ``ClientConnection``, with every option
    and behaviour of ``websockets.connect``; only the size of a socket read
    changes (see the package's docstring), and a big read is parsed in slices
    as :func:`guard` does. Over TLS (``wss://``) asyncio's TLS layer reads
    256 KiB at a time whatever the size asked, so there only the slicing
    applies. ``slice_size`` is :func:`guard`'s.

    Raises:
        TypeError: ``read_size`` or ``slice_size`` is not an int.
        ValueError: one of them is below 1.
        Whatever ``websockets.connect`` raises; a failed attempt leaves no
        socket or task behind (websockets closes what it opened).
    """
    check_read_size("websockets_connect", read_size)
    check_int("websockets_connect", "slice_size", slice_size, 1)
    made: list[ClientConnection] = []
    if "create_connection" not in options:
        # Guarded from connection_made on, so that frames that come in the same
        # read as the handshake response are sliced too.
        def create_connection(*args: Any, **kwargs: Any) -> ClientConnection:
            conn = _GuardedConnection(*args, slice_size=slice_size, read_size=read_size, **kwargs)
            made.append(conn)
            return conn

        options["create_connection"] = create_connection
    try:
        ws = await connect(uri, **options)
    except BaseException:
        # websockets aborts the transport of a failed attempt; its socket closes
        # an iteration later. Wait for that, so that none outlives the attempt.
        for conn in made:
            await _wait_lost(conn)
        raise
    guard(ws, slice_size=slice_size, read_size=read_size)  # a no-op unless create_connection was the caller's
    return ws


async def _wait_lost(conn: ClientConnection) -> None:
    if getattr(conn, "transport", None) is None:
        return  # its transport was never made: no socket to wait for
    try:
        await asyncio.wait_for(conn.wait_closed(), _LOST_TIMEOUT)
    except TimeoutError:
        logger.debug("websockets_connect: a failed attempt's connection did not close within {} s", _LOST_TIMEOUT)


class _GuardedConnection(ClientConnection):
    """websockets' client connection with :func:`guard` installed the moment the transport is made."""

    def __init__(self, *args: Any, slice_size: int, read_size: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._guard_options = (slice_size, read_size)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        slice_size, read_size = self._guard_options
        guard(self, slice_size=slice_size, read_size=read_size)


def guard(ws: C, *, slice_size: int | None = None, read_size: int | None = None) -> C:
    """Make an open websockets connection parse big reads in slices, letting the event loop run between them.

    asyncio hands a protocol everything one socket read brought, and websockets
    parses all of it before anything else runs: against a server that floods
    pings or one-byte frames, 256 KiB is some 100,000 frames, a second or more
    of the event loop. With the guard, a read longer than ``slice_size`` bytes
    is handed to websockets a slice at a time, for at most ``PARSE_BUDGET``
    seconds in one go; the rest follows from ``loop.call_soon``, after the
    callbacks that were waiting (other connections, timers, consumers). Slices
    shrink while they are slow to parse (pings) and grow back to
    ``slice_size``. While part of a read waits the socket is read at most one
    slice at a time, so memory stays bounded by one read. Reads up to ``slice_size``
    go through as they came: a quiet feed pays nothing, a busy one one clock
    reading per slice, never anything per frame.

    It interposes itself between the transport and the connection with
    ``transport.set_protocol`` (plain and TLS transports both allow it). Order
    is kept: every byte reaches websockets in order, end of file after the last
    of them. A connection lost while part of a read waits is lost with that
    part unparsed (logged at INFO with its size), as the kernel itself discards
    what it holds unread when a connection is reset.

    Args:
        ws: A ``websockets.asyncio`` connection (``ClientConnection`` from
            ``websockets.connect``). Anything else (a
            :class:`~async_ws_stream.transports.PicowsConnection`, which
            ``picows_connect`` guards itself; an object of another library) is
            returned untouched, with a DEBUG log.
        slice_size: Most bytes handed to websockets' parser at once (fewer
            while slices are slow to parse, as pings are); None:
            ``DEFAULT_SLICE_SIZE``, or what an earlier call set.
        read_size: Most bytes one socket read may bring (the read buffer grows
            to it while reads fill it); None: asyncio's 256 KiB, or what an
            earlier call set.

    Returns:
        ``ws``, so that ``guard(await websockets.connect(url))`` reads as one step.

    Idempotent: a second call on the same connection changes nothing but the
    sizes it is given. Not a coroutine; call it from the event loop's thread.

    Raises:
        TypeError: ``slice_size`` or ``read_size`` is not an int.
        ValueError: one of them is below 1.
    """
    check_int("guard", "slice_size", slice_size, 1, allow_none=True)
    check_int("guard", "read_size", read_size, 1, allow_none=True, what=" (bytes per socket read)")
    if not isinstance(ws, Connection):
        logger.debug("guard: {} is not a websockets connection; left as it is", type(ws).__name__)
        return ws
    transport = ws.transport
    if transport.is_closing():
        logger.debug("guard: the connection is already closing; left as it is")
        return ws
    protocol = transport.get_protocol()
    if isinstance(protocol, SlicedReads) and protocol.inner is ws:
        protocol.configure(slice_size, read_size)
    elif protocol is ws:
        transport.set_protocol(SlicedReads(ws, transport, DEFAULT_SLICE_SIZE if slice_size is None else slice_size,
                                           read_size))
    else:
        logger.debug("guard: the connection's transport feeds a {}, not the connection; left as it is",
                     type(protocol).__name__)
    return ws


class SlicedReads(Interposed):
    """Stands between an asyncio transport and a websockets connection: bigger reads, parsed a slice at a time.

    A plain ``asyncio.Protocol`` (as websockets' connection is) gets what the
    transport reads, at most 256 KiB; a ``BufferedProtocol`` lends the buffer,
    so its size is ours. The buffer starts at 256 KiB (or ``read_size`` if
    smaller) and doubles while reads fill it, up to ``read_size``: a quiet
    connection never holds more. A read that fits in one slice reaches the
    connection as the ``bytes`` it would have had; a longer one is copied once
    into the backlog and fed from there.
    """

    __slots__ = ("_backlog", "_eof", "_handle", "_loop", "_offset", "_slice", "_step", "_transport", "_view")

    def __init__(self, conn: Connection, transport: asyncio.Transport, slice_size: int,
                 read_size: int | None) -> None:
        limit = ASYNCIO_READ_SIZE if read_size is None else read_size
        super().__init__(conn, limit)
        self._transport = transport
        self._loop = asyncio.get_running_loop()
        self._slice = slice_size
        self._step = slice_size  # the slice in use: smaller while slices are slow to parse (pings)
        self._view = memoryview(bytearray(min(limit, ASYNCIO_READ_SIZE)))
        self._backlog: deque[bytes] = deque()
        self._offset = 0  # into the backlog's first chunk
        self._eof = False  # the end of the stream came while a backlog waited
        self._handle: asyncio.Handle | None = None  # the next _feed, while a backlog waits

    @property
    def inner(self) -> Any:
        return self._inner

    def configure(self, slice_size: int | None, read_size: int | None) -> None:
        if slice_size is not None:
            self._slice = self._step = slice_size
        if read_size is not None:
            self._limit = read_size
            if len(self._view) > read_size:
                self._view = memoryview(bytearray(read_size))

    def get_buffer(self, sizehint: int) -> memoryview:
        if self._backlog:
            # Part of a read is still waiting to be parsed: read no more than one
            # slice, the least a _feed call takes, so that what waits never grows
            # past one read and a slice.
            return self._view[: self._step]
        return self._view

    def buffer_updated(self, nbytes: int) -> None:
        view = self._view
        if nbytes <= self._slice and not self._backlog:
            self._inner.data_received(view[:nbytes].tobytes())
        else:
            self._backlog.append(view[:nbytes].tobytes())
            if self._handle is None:
                self._feed()
        if nbytes == len(view) < self._limit:
            self._view = memoryview(bytearray(min(self._limit, 2 * nbytes)))

    def eof_received(self) -> bool | None:
        if self._backlog:
            self._eof = True
            return True  # keep the transport open until the backlog is parsed; _feed ends it
        return super().eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._discard("the connection was lost")
        super().connection_lost(exc)

    def _feed(self) -> None:
        """Hand the backlog to websockets a slice at a time, for at most PARSE_BUDGET seconds."""
        self._handle = None
        backlog = self._backlog
        if self._transport.is_closing():
            # Aborted or closed meanwhile: websockets would answer pings into a dead transport.
            self._discard("the connection is closing")
            return
        data_received = self._inner.data_received
        closing = self._transport.is_closing
        clock = time.perf_counter
        then = clock()
        deadline = then + PARSE_BUDGET
        while backlog:
            chunk = backlog[0]
            start = self._offset
            end = start + self._step
            if end >= len(chunk):
                backlog.popleft()
                self._offset = 0
                data_received(chunk[start:] if start else chunk)
            else:
                self._offset = end
                data_received(chunk[start:end])
            if closing():
                # A write failed (a pong to a server that reset) or websockets gave
                # up: what follows would only be answered into a dead transport.
                self._discard("the connection is closing")
                return
            now = clock()
            took, then = now - then, now
            # A slice should parse in a quarter of the budget, so that the budget
            # holds to within that: a ping costs websockets some 10 us (it answers
            # each), an ordinary 200-byte frame some 5 us.
            if took > _SLICE_TIME:
                self._step = max(_MIN_SLICE, int(self._step * _SLICE_TIME / took))
            elif took < _SLICE_TIME / 4 and self._step < self._slice:
                self._step = min(self._slice, 2 * self._step)
            if backlog and now > deadline:
                self._handle = self._loop.call_soon(self._feed)
                return
        if self._eof:
            self._eof = False
            if not self._inner.eof_received():
                self._transport.close()

    def _discard(self, why: str) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        if self._backlog:
            unparsed = sum(map(len, self._backlog)) - self._offset
            self._backlog.clear()
            self._offset = 0
            logger.info("{}: {} bytes read but not yet parsed were discarded", why, unparsed)
        self._eof = False
