"""What the broker sinks and sources share: errors, the stream adapter, a source's dispatch.

The sources feed the library's own :class:`~async_ws_stream.Stream` through one
adapter, :func:`new_stream`, so that filters, overflow policies and drop counts
are the client's own; when the seams between the library's rooms get typed, only
that function changes.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections import deque
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

from loguru import logger

from .._dispatch import Index
from .._filters import compile_filters
from .._options import Overflow, check_buffer
from .._streams import Stream
from ..exceptions import AsyncWsStreamError

__all__ = [
    "BrokerConfigError",
    "BrokerError",
    "BrokerUnavailable",
    "Dispatcher",
    "SourceCounters",
    "default_collector",
    "new_stream",
]


class BrokerError(AsyncWsStreamError):
    """Root of the broker errors: a sink or a source cannot do its work."""


class BrokerUnavailable(BrokerError):
    """The broker cannot be reached (wrong address, server down, TLS failure)."""


class BrokerConfigError(BrokerError):
    """The broker answered but refuses the configuration: a missing stream or group, bad credentials."""


class SourceCounters:
    """The counters a source's streams share (the ``counters`` seam of :class:`Stream`)."""

    __slots__ = ("abandoned", "decode_errors", "delivered", "dropped", "duplicates", "gaps",
                 "gap_dropped", "predicate_errors", "received")

    def __init__(self) -> None:
        self.received = 0  # records read from the broker
        self.delivered = 0  # records fed to at least one stream
        self.dropped = 0  # by every stream's overflow policy
        self.abandoned = 0  # streams closed because nothing referenced them
        self.decode_errors = 0
        self.predicate_errors = 0
        self.duplicates = 0  # Redis only: ids seen again
        self.gaps = 0  # gap markers read
        self.gap_dropped = 0  # messages the collectors said they lost


def new_stream(
    filters: Any,
    *,
    maxsize: int,
    overflow: Overflow,
    copy: bool,
    counters: Any,
    on_close: Callable[[Any], None],
) -> tuple[Stream[Any], Callable[[Any], None], Callable[[], None]]:
    """Make one of the library's streams for a source; return it with its feed and finish functions.

    The one place a source touches the stream's producer side (its ``Feed``:
    ``deliver`` and ``finish``; ``on_close`` receives the feed): ``feed(msg)`` buffers a message or applies the overflow
    policy, never blocking; ``finish()`` lets the consumer read what is buffered, then
    ends its ``async for``.
    """
    stream: Stream[Any] = Stream(filters, maxsize=maxsize, overflow=overflow, copy=copy, counters=counters,
                                 on_close=on_close)
    return stream, stream._feed.deliver, stream._feed.finish


def default_collector() -> str:
    """Name this process as a collector: ``host:pid``, carried in its gap markers."""
    return f"{socket.gethostname()}:{os.getpid()}"


class _Fed:
    """One stream of a source, how to feed and end it, and how many messages it was given."""

    __slots__ = ("feed", "fed", "finish", "half", "stream")

    def __init__(self, stream: Stream[Any], feed: Callable[[Any], None], finish: Callable[[], None],
                 maxsize: int, overflow: Overflow) -> None:
        self.stream = stream
        self.feed = feed
        self.finish = finish
        # Only a stream that must not lose a message holds the source back; one with a
        # drop policy drops, as the client's streams do.
        self.half = (maxsize + 1) // 2 if overflow == "error" else None
        self.fed = 0

    def settled(self, upto: int) -> bool:
        """True when the message fed as number ``upto`` left the buffer (read, dropped, or closed)."""
        return self.stream.closed and not self.stream.queued or self.fed - self.stream.queued >= upto


class Dispatcher:
    """A source's streams: filters indexed as the client indexes them, and delivery bookkeeping.

    A message is *settled* once every stream it was fed to has handed it to its
    consumer, dropped it, or ended; sources acknowledge a record to the broker
    only once it is settled. A stream's consumer reading a message is what
    settles it: ``fed - queued`` counts the messages gone from its buffer.
    """

    def __init__(self, where: str, *, maxsize: int, overflow: Overflow) -> None:
        self._where = where
        self._maxsize = maxsize
        self._overflow: Overflow = overflow
        self.counters = SourceCounters()
        self._index: Index[_Fed] = Index(on_error=self._predicate_failed)
        self._streams: dict[Any, tuple[_Fed, Any]] = {}  # by Feed
        self.closed = False

    def stream_filter(
        self,
        filters: Sequence[Mapping[Hashable, Any]] | None = None,
        *,
        maxsize: int | None = None,
        overflow: Overflow | None = None,
        copy: bool = False,
    ) -> Stream[Any]:
        """Return a new stream of the records matching ``filters`` (the client's filter rules)."""
        maxsize = self._maxsize if maxsize is None else maxsize
        overflow = self._overflow if overflow is None else overflow
        check_buffer(f"{self._where}.stream_filter", maxsize, overflow)
        clauses = compile_filters(filters, argname=f"{self._where}.stream_filter: filters")
        if self.closed:
            raise BrokerError(f"{self._where}.stream_filter: the source is closed; open a new one")
        stream, feed, finish = new_stream(filters, maxsize=maxsize, overflow=overflow, copy=copy,
                                          counters=self.counters, on_close=self._forget)
        fed = _Fed(stream, feed, finish, maxsize, overflow)
        self._streams[stream._feed] = (fed, self._index.add(clauses, fed))
        return stream

    def _forget(self, feed: Any) -> None:
        entry = self._streams.pop(feed, None)
        if entry is not None:
            self._index.remove(entry[1])

    def _predicate_failed(self, exc: BaseException, condition: object) -> None:
        self.counters.predicate_errors += 1
        logger.warning("{}: a filter predicate raised {}; no match", self._where, type(exc).__name__)

    def has_streams(self) -> bool:
        """True while at least one stream is open."""
        return bool(self._streams)

    def crowded(self) -> bool:
        """True when some ``overflow="error"`` stream is at least half full: the source stops fetching."""
        return any(fed.half is not None and fed.stream.queued >= fed.half for fed, _ in self._streams.values())

    def room(self, most: int) -> int:
        """How many records (up to ``most``) may be fetched now without filling an
        ``overflow="error"`` stream past half; 0 with no stream open."""
        if not self._streams:
            return 0
        return min([most, *(fed.half - fed.stream.queued for fed, _ in self._streams.values() if fed.half)])

    def dispatch(self, msg: Any) -> list[tuple[_Fed, int]]:
        """Feed ``msg`` to every matching stream; return ``(stream, position)`` pairs to settle."""
        targets = self._index.match(msg)
        if not targets:
            return []
        self.counters.delivered += 1
        placed = []
        for fed in targets:
            fed.fed += 1
            fed.feed(msg)
            placed.append((fed, fed.fed))
        return placed

    def feed(self, msg: Any) -> None:
        """Feed ``msg`` to every matching stream, keeping no positions (nothing will be acknowledged)."""
        targets = self._index.match(msg)
        if targets:
            self.counters.delivered += 1
            for fed in targets:
                fed.feed(msg)

    def close(self) -> None:
        """End every stream: buffered messages are still read, then ``async for`` ends."""
        self.closed = True
        for fed, _ in list(self._streams.values()):
            fed.finish()

    def stats(self) -> dict[str, Any]:
        """The counters and every stream's filters, queue length and drops."""
        c = self.counters
        return {
            "received": c.received,
            "delivered": c.delivered,
            "dropped": c.dropped,
            "decode_errors": c.decode_errors,
            "predicate_errors": c.predicate_errors,
            "duplicates": c.duplicates,
            "gaps": c.gaps,
            "gap_dropped": c.gap_dropped,
            "streams": [s.statistics()._asdict() for s in self._streams],
        }


class Pending:
    """Records read but not acknowledged, in broker order, each with where it was fed.

    ``settled_prefix()`` pops the longest prefix whose every record is settled, so
    that an acknowledgement never runs ahead of a record a consumer has not read.
    """

    def __init__(self) -> None:
        self._items: deque[tuple[Any, list[tuple[_Fed, int]]]] = deque()
        self.changed = asyncio.Event()

    def __len__(self) -> int:
        return len(self._items)

    def add(self, ack_handle: Any, placed: list[tuple[_Fed, int]]) -> None:
        self._items.append((ack_handle, placed))

    def take_all(self) -> list[Any]:
        """Remove and return every handle still pending, settled or not."""
        out = [handle for handle, _ in self._items]
        self._items.clear()
        return out

    def settled_prefix(self) -> list[Any]:
        out = []
        items = self._items
        while items:
            handle, placed = items[0]
            if not all(fed.settled(pos) for fed, pos in placed):
                break
            items.popleft()
            out.append(handle)
        return out
