"""The consumer registry: every stream and handler of a client, filed in its index.

The pump finds consumers only through the index; lifecycle events reach the
streams that asked for them through :meth:`Consumers.emit`. This room keeps the other
side of each registration (which stream or handler, under which subscription)
so that a consumer can be removed, ended with the client, or listed in
``stats()``. It never awaits and starts no task: the client runs the tasks of
async handlers, which it owns.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from ._counters import Counters
from ._dispatch import Index, Subscription, Target
from ._events import Event, Gap
from ._filters import Filters, compile_filters
from ._handlers import AsyncHandler, SyncHandler
from ._options import Overflow, check_buffer
from ._scopes import recycle_trigger
from ._streams import Feed, Pressure, Stream
from ._timed import TimedStream

__all__ = ["Consumers"]

M = TypeVar("M")

Handler = SyncHandler | AsyncHandler


class Consumers(Generic[M]):
    """The streams and handlers fed by one client's pump."""

    def __init__(self, index: Index[Target], counters: Counters, pressure: Pressure) -> None:
        self._index = index
        self._counters = counters
        self._pressure = pressure
        # Feeds, not the Streams their consumers hold: see Feed.
        self._streams: dict[Feed[M], Subscription[Target]] = {}
        self._handlers: list[tuple[Callable[[M], Any], Handler, Subscription[Target]]] = []
        # Streams that receive lifecycle events: events() streams, and message
        # streams made with events=True. A dict, as an ordered set.
        self._event_streams: dict[Feed[Any], None] = {}
        self._events_only: set[Feed[Any]] = set()
        # Message streams made with gaps=True (and not events=True): Gap events only.
        self._gap_streams: dict[Feed[Any], None] = {}
        # Set by metrics.instrument(): streams made from then on report their lag.
        self._on_wait: Callable[[float], None] | None = None

    def add_stream(
        self,
        filters: Filters,
        *,
        maxsize: int,
        overflow: Overflow,
        copy: bool,
        events: bool = False,
        gaps: bool = False,
    ) -> Stream[M]:
        """Register a new stream (arguments as for ``stream_filter``, checked here)."""
        check_buffer("stream_filter", maxsize, overflow)
        clauses = compile_filters(filters, argname="stream_filter: filters")
        options: dict[str, Any] = dict(
            maxsize=maxsize, overflow=overflow, copy=copy,
            counters=self._counters, pressure=self._pressure, on_close=self._forget_stream,
        )
        stream: Stream[M] = Stream(filters, **options) if self._on_wait is None \
            else TimedStream(filters, on_wait=self._on_wait, **options)
        feed = stream._feed
        self._streams[feed] = self._index.add(clauses, feed)
        trigger = recycle_trigger()
        if trigger is not None:  # made by _when2create_new_ws: it ends with that call
            trigger.streams.append(feed)
        if events:
            self._event_streams[feed] = None
        elif gaps:
            self._gap_streams[feed] = None
        return stream

    def add_events(self, maxsize: int) -> Stream[Event]:
        """Register a stream of lifecycle events only; its oldest event is dropped when it is full."""
        check_buffer("events", maxsize, "drop_oldest")
        stream: Stream[Event] = Stream(
            "events", maxsize=maxsize, overflow="drop_oldest", copy=False,
            counters=self._counters, on_close=self._forget_stream,
        )
        self._event_streams[stream._feed] = None
        self._events_only.add(stream._feed)
        return stream

    def watch_lag(self, on_wait: Callable[[float], None], on_message: Callable[[Any], None] | None) -> None:
        """Time the streams made from now on (``on_wait(seconds)``); hand every message to ``on_message``."""
        self._on_wait = on_wait
        if on_message is not None:
            self._index.add((), _Probe(on_message))

    def _forget_stream(self, stream: Feed[Any]) -> None:
        subscription = self._streams.pop(stream, None)
        if subscription is not None:
            self._index.remove(subscription)
        self._event_streams.pop(stream, None)
        self._gap_streams.pop(stream, None)
        self._events_only.discard(stream)

    def emit(self, event: Event) -> None:
        """Hand ``event`` to every stream that takes events (a ``Gap`` also to ``gaps=True`` ones), now."""
        for stream in list(self._event_streams):
            stream.deliver(event)
        if type(event) is Gap:
            for stream in list(self._gap_streams):
                stream.deliver(event)

    def add_handler(
        self,
        fn: Callable[[M], Any],
        filters: Filters,
        *,
        maxsize: int,
        overflow: Overflow,
        copy: bool = False,
    ) -> AsyncHandler | None:
        """Register a handler (arguments checked here); return it if it is async.

        The task of an async handler is the caller's to run (``AsyncHandler.run``).
        """
        if not callable(fn):
            raise TypeError(f"add_handler: fn must be callable, got {type(fn).__name__} {fn!r:.60}")
        check_buffer("add_handler", maxsize, overflow)
        if overflow == "error":
            raise ValueError("add_handler: overflow must be 'drop_oldest' or 'drop_newest'; a handler cannot "
                             "raise StreamOverflow at anyone")
        clauses = compile_filters(filters, argname="add_handler: filters")
        if inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(getattr(fn, "__call__", None)):
            stream: Stream[Any] = Stream(
                filters, maxsize=maxsize, overflow=overflow, copy=copy,
                counters=self._counters, pressure=self._pressure,
            )
            handler = AsyncHandler(fn, stream, self._counters)
            self._handlers.append((fn, handler, self._index.add(clauses, stream._feed)))
            return handler
        sync = SyncHandler(fn, self._counters, copy=copy)
        self._handlers.append((fn, sync, self._index.add(clauses, sync)))
        return None

    def remove_handler(self, fn: Callable[[M], Any]) -> None:
        """Remove the first handler equal (``==``) to ``fn``; raise ValueError if there is none."""
        for i, (registered, handler, subscription) in enumerate(self._handlers):
            if registered == fn:
                del self._handlers[i]
                self._index.remove(subscription)
                if isinstance(handler, AsyncHandler):
                    handler.stream.finish()
                return
        raise ValueError(f"remove_handler: {fn!r} is not a registered handler")

    @property
    def async_handlers(self) -> list[AsyncHandler]:
        """The registered async handlers, in registration order."""
        return [h for _, h, _ in self._handlers if isinstance(h, AsyncHandler)]

    def end(self, stream_error: Callable[[], BaseException] | None, *, events: bool = True) -> None:
        """End every message stream and handler (after its buffer, with a fresh ``stream_error()`` if given).

        With ``events``, the events-only streams end too (at exit, after ``Closed``);
        without (the client gave up), they go on until exit.
        """
        for stream in list(self._streams):
            stream.finish(stream_error() if stream_error is not None else None)
        for handler in self.async_handlers:
            handler.stream.finish()
        if events:
            for stream in list(self._events_only):
                stream.finish()

    def snapshot(self) -> list[dict[str, Any]]:
        """Every open stream's filters, queue length and drops, for ``stats()["streams"]``."""
        return [s.statistics()._asdict() for s in self._streams]


class _Probe:
    """A dispatch target that sees every message, for metrics."""

    __slots__ = ("deliver",)

    def __init__(self, deliver: Callable[[Any], None]) -> None:
        self.deliver = deliver
