"""A blocking iterator over one stream of a client that runs in another thread's event loop.

The loop thread moves messages into a thread-safe hand-off a batch at a time, and
the consumer thread blocks on a future, not on the loop, so a consumer never
holds the loop. Made by :meth:`~async_ws_stream.ThreadedClient.stream_filter`.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from types import TracebackType
from typing import Generic, Protocol, Self, TypeVar

from ._options import Default, check_timeout
from ._streams import Stream
from .exceptions import ClientClosed, Timeout

__all__ = ["BATCH_SIZE", "BlockingStream", "LoopCall"]

M = TypeVar("M")
T = TypeVar("T")

#: The most messages one hand-off moves from a stream's buffer to its consumer thread.
BATCH_SIZE = 256


class LoopCall(Protocol):
    """Runs ``make()`` in the client's loop and blocks for its result (``ThreadedClient``'s)."""

    def __call__(self, make: Callable[[], Awaitable[T]]) -> T: ...


class BlockingStream(Generic[M]):
    """A blocking iterator over one filtered stream of a :class:`ThreadedClient`.

    Made by :meth:`ThreadedClient.stream_filter`. Iterate it with ``for``, or call
    :meth:`get`. It ends (``StopIteration``) when the stream is closed or the
    client exits, after the messages already buffered; it raises
    :exc:`StreamOverflow` after the buffered messages when an ``overflow="error"``
    stream overflowed, and :exc:`RetriesExhausted`/:exc:`ConnectionRejected` when
    the client gave up.

    Messages cross to the consumer's thread in batches of at most
    :data:`BATCH_SIZE`, taken from the stream's buffer only when the consumer's
    side is empty; so at most ``maxsize + BATCH_SIZE`` messages wait in all, and
    ``stats()["streams"]`` counts only those still in the loop's buffer.

    Several threads may share one; each message goes to one of them.
    :meth:`close` is idempotent and may be called from any thread; it ends the
    iteration of a consumer blocked in another thread.
    """

    def __init__(self, call: LoopCall, stream: Stream[M], timeout: float | None) -> None:
        self._call = call
        self._stream = stream
        self._timeout = timeout
        self._ready: deque[M] = deque()  # handed over, not yet taken; deque ops are thread-safe
        self._ended = False
        self._fill_lock = threading.Lock()  # one hand-off in flight: a Stream has one waiter

    def __iter__(self) -> Iterator[M]:
        return self

    def __next__(self) -> M:
        try:
            return self.get()
        except EOFError:
            raise StopIteration from None

    def get(self, timeout: float | None | Default = Default.TIMEOUT) -> M:
        """Return the next message, waiting up to ``timeout`` seconds for it.

        Args:
            timeout: Seconds to wait; None waits forever; by default the timeout
                given to :meth:`ThreadedClient.stream_filter`.

        Raises:
            Timeout: no message within ``timeout`` (nothing is lost: the next call
                returns the next message).
            EOFError: the stream has ended.
            StreamOverflow, RetriesExhausted, ConnectionRejected: the stream ended
                with that error.
        """
        limit = self._timeout if isinstance(timeout, Default) else timeout
        check_timeout("BlockingStream.get", limit)
        deadline = None if limit is None else time.monotonic() + limit
        while True:
            try:
                return self._ready.popleft()
            except IndexError:
                pass
            if self._ended:
                raise EOFError("stream has ended")
            wait = -1 if deadline is None else max(0.0, deadline - time.monotonic())
            if not self._fill_lock.acquire(timeout=wait):
                raise Timeout(f"BlockingStream.get: no message within {limit}s")
            try:
                if self._ready or self._ended:
                    continue  # another thread's hand-off arrived meanwhile
                remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
                try:
                    ended = self._call(lambda: self._fill(remaining, limit))
                except ClientClosed:
                    if self._ended:  # the loop drained the buffer into _ready as it exited
                        continue
                    raise
                if ended:
                    self._ended = True
            finally:
                self._fill_lock.release()

    async def _fill(self, timeout: float | None, limit: float | None) -> bool:
        """In the loop: wait for a message, move up to a batch into ``_ready``; True at the end."""
        stream = self._stream
        try:
            async with asyncio.timeout(timeout):
                first = await anext(stream)
        except StopAsyncIteration:
            return True
        except TimeoutError as exc:
            if isinstance(exc, Timeout):
                raise
            raise Timeout(f"BlockingStream.get: no message within {limit}s") from exc
        # Filled here, not returned: a result the caller stops waiting for (Ctrl-C)
        # would be lost, a message in _ready is not.
        ready = self._ready
        ready.append(first)
        for _ in range(BATCH_SIZE - 1):
            try:
                ready.append(stream.get_nowait())
            except IndexError:
                break
        return False

    def _drain_at_exit(self) -> None:
        """In the loop, after the client exited: hand over what the stream still buffers, then end."""
        stream = self._stream
        while True:
            try:
                self._ready.append(stream.get_nowait())
            except IndexError:
                break
        self._ended = True

    @property
    def dropped(self) -> int:
        """Messages this stream lost to its overflow policy."""
        return self._stream.dropped

    @property
    def closed(self) -> bool:
        """True once the stream takes no more messages."""
        return self._stream.closed

    def close(self) -> None:
        """End the stream now and discard what it buffered. Idempotent; from any thread."""
        self._ended = True
        self._ready.clear()
        # A client that has exited has ended its streams already: nothing left to close.
        with contextlib.suppress(ClientClosed):
            self._call(self._stream.close)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<BlockingStream of {self._stream!r} ready={len(self._ready)}>"


