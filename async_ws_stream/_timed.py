"""Streams that report how long each message waited for its consumer: made once the client is instrumented.

Their feeds hold ``(time, message)`` pairs, so plain streams pay nothing for the clock.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from ._streams import Feed, M, Stream

__all__ = ["TimedFeed", "TimedStream"]


class TimedFeed(Feed[M]):
    """A feed that holds ``(time, message)`` pairs, for a :class:`TimedStream`."""

    __slots__ = ("on_wait",)

    def __init__(self, *args: Any, on_wait: Callable[[float], None], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.on_wait = on_wait

    def deliver(self, msg: M) -> None:
        """Buffer ``msg`` with the time it arrived (see :meth:`Feed.deliver`)."""
        super().deliver((time.monotonic(), msg))  # type: ignore[arg-type]


class TimedStream(Stream[M]):
    """A :class:`Stream` that reports how long each message waited between its dispatch and its consumer.

    Made instead of a plain stream once the client is instrumented
    (:mod:`async_ws_stream.metrics`); its feed holds ``(time, message)`` pairs, so
    plain streams pay nothing for it.
    """

    __slots__ = ()

    def __init__(self, filters: Any, *, on_wait: Callable[[float], None], **options: Any) -> None:
        self._feed = TimedFeed(filters, on_wait=on_wait, **options)

    async def __anext__(self) -> M:
        held: Any = await super().__anext__()
        self._feed.on_wait(time.monotonic() - held[0])  # type: ignore[attr-defined]
        return held[1]  # type: ignore[no-any-return]

    def get_nowait(self) -> M:
        """Return the next buffered message, or raise IndexError when there is none."""
        held: Any = super().get_nowait()
        self._feed.on_wait(time.monotonic() - held[0])  # type: ignore[attr-defined]
        return held[1]  # type: ignore[no-any-return]

    def _take(self, most: int) -> list[M]:
        buf: Any = self._feed._buf
        on_wait = self._feed.on_wait  # type: ignore[attr-defined]
        now = time.monotonic()
        batch = []
        for _ in range(min(len(buf), most)):
            held, msg = buf.popleft()
            on_wait(now - held)
            batch.append(msg)
        return batch
