"""The hot path of a connection: read, parse, dispatch, and nothing else.

:class:`Pump` is a part of :class:`~._supervisor.Supervisor`: the two receive
loops it runs on each connection it serves, and what they do with a lost
connection or a frame that does not parse. The plain loop has no per-message
test for sequence tracking; a client with a ``_sequence`` hook gets the
sequenced one, which asks ``admit`` about each message first (chosen once per
connection). They are copies on purpose, so that the plain one pays nothing.

Per socket read, not per message: one ``await recv()``, one clock stamp, and
the index's fastest matcher (see ``Index.matcher``); the frames websockets has
already queued behind it are taken without an await (:mod:`.transports._queued`).
A consumer is never awaited; when a woken consumer's stream is half full the
loop yields once (:class:`~._streams.Pressure`).
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable
from typing import Any

from loguru import logger
from websockets.exceptions import ConnectionClosed

from ._counters import Counters
from ._dispatch import Index, Target
from ._link import Link
from ._redact import describe
from ._streams import Pressure
from .transports._queued import nothing_queued, queued_reader

__all__ = ["Pump"]


class Pump:
    """The receive loops of a :class:`~._supervisor.Supervisor` (which sets these attributes)."""

    _hooks: Any
    _index: Index[Target]
    _counters: Counters
    _pressure: Pressure
    _admit: Callable[[Any], bool] | None
    last_error: BaseException | None

    def _deliver_early(self, conn: Link) -> None:
        """Deliver what :meth:`read_early` kept, in order, before the first frame the pump reads."""
        early, conn.early = conn.early, []
        admit = self._admit
        match = self._index.match
        for msg in early:
            if admit is None or admit(msg):
                for target in match(msg):
                    target.deliver(msg)

    async def _pump(self, conn: Link) -> None:
        """The hot path: read, parse, dispatch. Never awaits a consumer.

        One ``await recv()`` per socket read, not per message: what websockets
        already holds behind it is taken with ``take`` (see :mod:`.transports._queued`).
        The index's fastest matcher is asked for after each read (see ``Index.matcher``).
        """
        recv = conn.ws.recv
        take = queued_reader(conn.ws) or nothing_queued
        parse = self._hooks._parse_raw_data
        parse_is_async = inspect.iscoroutinefunction(parse)
        matcher = self._index.matcher
        counters = self._counters
        pressure = self._pressure
        clock = time.monotonic
        if conn.early:
            self._deliver_early(conn)
        try:
            while True:
                raw: str | bytes | None = await recv()
                conn.last_frame = clock()  # for every frame taken with it, unless the loop yields
                match = matcher()
                while raw is not None:
                    counters.frames += 1
                    try:
                        if parse_is_async:
                            msg = await parse(raw)
                            conn.last_frame = clock()  # the event loop ran: more may have been read
                        else:
                            msg = parse(raw)
                    except Exception as exc:
                        self._parse_failed(raw, exc)
                    else:
                        if msg is None:
                            counters.skipped += 1
                        else:
                            for target in match(msg):
                                target.deliver(msg)
                            if pressure.crowded:
                                pressure.crowded = False
                                counters.pump_yields += 1
                                await asyncio.sleep(0)
                                conn.last_frame = clock()
                    raw = take()
        except ConnectionClosed as exc:
            self._lost(conn, exc)

    async def _pump_sequenced(self, conn: Link) -> None:
        """The hot path of a client with a ``_sequence`` hook: :meth:`_pump`, asking ``admit`` first."""
        recv = conn.ws.recv
        take = queued_reader(conn.ws) or nothing_queued
        parse = self._hooks._parse_raw_data
        parse_is_async = inspect.iscoroutinefunction(parse)
        matcher = self._index.matcher
        admit = self._admit
        assert admit is not None
        counters = self._counters
        pressure = self._pressure
        clock = time.monotonic
        if conn.early:
            self._deliver_early(conn)
        try:
            while True:
                raw: str | bytes | None = await recv()
                conn.last_frame = clock()  # for every frame taken with it, unless the loop yields
                match = matcher()
                while raw is not None:
                    counters.frames += 1
                    try:
                        if parse_is_async:
                            msg = await parse(raw)
                            conn.last_frame = clock()  # the event loop ran: more may have been read
                        else:
                            msg = parse(raw)
                    except Exception as exc:
                        self._parse_failed(raw, exc)
                    else:
                        if msg is None:
                            counters.skipped += 1
                        else:
                            if admit(msg):
                                for target in match(msg):
                                    target.deliver(msg)
                            if pressure.crowded:
                                pressure.crowded = False
                                counters.pump_yields += 1
                                await asyncio.sleep(0)
                                conn.last_frame = clock()
                    raw = take()
        except ConnectionClosed as exc:
            self._lost(conn, exc)

    def _lost(self, conn: Link, exc: ConnectionClosed) -> None:
        conn.closed_by = exc
        self.last_error = exc
        if conn.successor is None:
            logger.warning("connection #{} lost: {}", conn.number, describe(exc))
        else:
            logger.info("connection #{} closed after recycle", conn.number)

    def _parse_failed(self, raw: str | bytes, exc: Exception) -> None:
        self._counters.parse_errors += 1
        logger.warning(
            "parse error #{} ({}) in a {}-byte frame starting {!r}",
            self._counters.parse_errors, describe(exc), len(raw), raw[:40],
        )
