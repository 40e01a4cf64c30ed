"""The consumer registry: every stream and handler of a client, filed in its index.

The pump finds consumers only through the index; this room keeps the other
side of each registration (which stream or handler, under which subscription)
so that a consumer can be removed, ended with the client, or listed in
``stats()``. It never awaits and starts no task: the client runs the tasks of
async handlers, which it owns.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Generic, TypeVar

from ._counters import Counters
from ._dispatch import Index, Subscription, Target
from ._filters import compile_filters
from ._options import Overflow, check_buffer
from ._streams import AsyncHandler, Pressure, Stream, SyncHandler

__all__ = ["Consumers"]

M = TypeVar("M")

Handler = SyncHandler | AsyncHandler


class Consumers(Generic[M]):
    """The streams and handlers fed by one client's pump."""

    def __init__(self, index: Index[Target], counters: Counters, pressure: Pressure) -> None:
        self._index = index
        self._counters = counters
        self._pressure = pressure
        self._streams: dict[Stream[M], Subscription[Target]] = {}
        self._handlers: list[tuple[Callable[[M], Any], Handler, Subscription[Target]]] = []

    def add_stream(
        self, filters: Sequence[Mapping[Any, Any]] | None, *, maxsize: int, overflow: Overflow, copy: bool
    ) -> Stream[M]:
        """Register a new stream (arguments as for ``stream_filter``, checked here)."""
        check_buffer("stream_filter", maxsize, overflow)
        clauses = compile_filters(filters, argname="stream_filter: filters")
        stream: Stream[M] = Stream(
            filters, maxsize=maxsize, overflow=overflow, copy=copy,
            counters=self._counters, pressure=self._pressure, on_close=self._forget_stream,
        )
        self._streams[stream] = self._index.add(clauses, stream)
        return stream

    def _forget_stream(self, stream: Stream[Any]) -> None:
        subscription = self._streams.pop(stream, None)
        if subscription is not None:
            self._index.remove(subscription)

    def add_handler(
        self,
        fn: Callable[[M], Any],
        filters: Sequence[Mapping[Any, Any]] | None,
        *,
        maxsize: int,
        overflow: Overflow,
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
                filters, maxsize=maxsize, overflow=overflow, copy=False,
                counters=self._counters, pressure=self._pressure,
            )
            handler = AsyncHandler(fn, stream, self._counters)
            self._handlers.append((fn, handler, self._index.add(clauses, stream)))
            return handler
        sync = SyncHandler(fn, self._counters)
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

    def end(self, stream_error: Callable[[], BaseException] | None) -> None:
        """End every stream (after its buffer, with a fresh ``stream_error()`` if given) and handler."""
        for stream in list(self._streams):
            stream.finish(stream_error() if stream_error is not None else None)
        for handler in self.async_handlers:
            handler.stream.finish()

    def snapshot(self) -> list[dict[str, Any]]:
        """Every open stream's filters, queue length and drops, for ``stats()["streams"]``."""
        return [s.statistics()._asdict() for s in self._streams]
