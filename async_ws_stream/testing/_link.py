"""One connection through FaultProxy: two sockets and the two pumps between them."""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Callable

from loguru import logger

from ._proxy_faults import DirectionState

READ_SIZE = 64 * 1024
# Chunks read ahead of the writer (when latency holds them back); past this the
# reader waits, so TCP pushes back on the sender instead of memory filling up.
MAX_QUEUED_CHUNKS = 256


class ResetNow(Exception):
    """Raised in a pump when an armed reset fires: the link resets both sockets."""


def reset(writer: asyncio.StreamWriter) -> None:
    """Close ``writer``'s socket with a TCP RST (SO_LINGER 0) rather than a FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None and not writer.transport.is_closing():
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError as exc:
            # The peer is gone already: there is nothing left to reset, abort() below closes.
            logger.debug("FaultProxy: SO_LINGER not set ({}); closing without RST", type(exc).__name__)
    writer.transport.abort()


class Link:
    """Pumps bytes both ways between a client and the upstream server through the faults.

    :meth:`run` returns when both directions have ended (end-of-stream
    forwarded), or at once on an error or a reset; both sockets are closed
    when it returns, and it leaves no task behind.
    """

    def __init__(
        self,
        number: int,
        client: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        states: dict[str, DirectionState],
        changed: Callable[[], None],
    ) -> None:
        self.number = number
        self._client_reader, self._client_writer = client
        self._upstream_writer: asyncio.StreamWriter | None = None
        self._states = states
        self._changed = changed
        self.was_reset = False
        self.half_open: set[str] = set()
        """Directions this connection black-holes on its own (see FaultProxy.half_open)."""

    def abort(self, *, rst: bool = False) -> None:
        """Close both sockets now (with an RST if ``rst``); the pumps then end."""
        for writer in (self._client_writer, self._upstream_writer):
            if writer is None:
                continue
            if rst:
                reset(writer)
            else:
                writer.transport.abort()

    async def run(self, target: tuple[str, int], hold: float) -> None:
        """Connect upstream (after holding ``hold`` seconds) and pump until both directions end."""
        try:
            if hold > 0:
                await asyncio.sleep(hold)
            try:
                up_reader, up_writer = await asyncio.open_connection(*target)
            except OSError as exc:
                logger.debug("FaultProxy: connection {}: upstream unreachable ({})", self.number, type(exc).__name__)
                reset(self._client_writer)
                return
            self._upstream_writer = up_writer
            try:
                async with asyncio.TaskGroup() as tg:
                    tg.create_task(self._pump(self._client_reader, up_writer, "to_server"))
                    tg.create_task(self._pump(up_reader, self._client_writer, "to_client"))
            except* ResetNow:
                self.was_reset = True
                logger.debug("FaultProxy: connection {}: reset", self.number)
                self.abort(rst=True)
            except* OSError as group:
                # A side reset or broke; pass it on as what it was, an abrupt end.
                logger.debug("FaultProxy: connection {}: ended by {}", self.number,
                             type(group.exceptions[0]).__name__)
                self.abort(rst=True)
        finally:
            self.abort()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, direction: str) -> None:
        state = self._states[direction]
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(MAX_QUEUED_CHUNKS)
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._read(reader, queue, state))
            await self._write(writer, queue, state, direction)

    async def _read(
        self, reader: asyncio.StreamReader, queue: asyncio.Queue[tuple[float, bytes]], state: DirectionState
    ) -> None:
        loop = asyncio.get_running_loop()
        due = 0.0
        while True:
            data = await reader.read(READ_SIZE)
            due = state.due(loop.time(), due)
            await queue.put((due, data))
            if not data:
                return

    async def _write(
        self,
        writer: asyncio.StreamWriter,
        queue: asyncio.Queue[tuple[float, bytes]],
        state: DirectionState,
        direction: str,
    ) -> None:
        loop = asyncio.get_running_loop()
        next_ok = 0.0  # when the bandwidth limit allows the next write
        while True:
            due, data = await queue.get()
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            faults = state.faults
            if faults.black_hole or direction in self.half_open:
                state.discarded += len(data)
                self._changed()
                if not data:
                    return  # swallowed like the rest: the peer never learns the other side ended
                continue
            if not data:
                if writer.can_write_eof():
                    writer.write_eof()
                return
            size = faults.piece_size() or len(data)
            offset = 0
            while offset < len(data):
                allowed, fire = state.allowance(min(size, len(data) - offset))
                if allowed:
                    if faults.bandwidth is not None:
                        now = loop.time()
                        if next_ok > now:
                            await asyncio.sleep(next_ok - now)
                        next_ok = max(next_ok, now) + allowed / faults.bandwidth
                    writer.write(data[offset:offset + allowed])
                    await writer.drain()
                    offset += allowed
                    state.forwarded += allowed
                    state.writes += 1
                    self._changed()
                if fire:
                    raise ResetNow
                if faults.write_size is not None and offset < len(data):
                    # Let the peer's loop read this piece before the next one lands.
                    await asyncio.sleep(0)
