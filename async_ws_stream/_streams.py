"""The consumer side: a bounded stream of messages with an overflow policy, and handlers.

The producer (the client's pump) only ever calls the synchronous ``deliver`` of
a :class:`~._dispatch.Target`; it never awaits a consumer. A consumer waiting on
an empty stream is woken once per batch: the first ``deliver`` resolves its
waiter and later ones only append.

One socket read can carry thousands of frames, and the pump parses a read to the
end before the consumers it woke get to run: a burst could fill a buffer whose
consumer keeps up perfectly well. So a stream whose consumer has been woken and
not yet run tells the pump, through a shared :class:`Pressure`, when its buffer reaches
half of ``maxsize``; the pump then yields once, the woken consumers drain, and
the read goes on. A consumer that is busy elsewhere is not woken, so a slow one
never makes the pump yield: it fills its buffer and meets its overflow policy.
"""

from __future__ import annotations

import asyncio
import copy as _copy
import enum
import sys
from collections import deque
from collections.abc import Callable
from types import TracebackType
from typing import Any, Generic, NamedTuple, Protocol, TypeVar

from loguru import logger

from ._counters import Counters
from ._options import Overflow
from .exceptions import StreamOverflow

__all__ = ["Batches", "DropCount", "Feed", "Pressure", "Stream", "StreamStatistics"]

M = TypeVar("M")


class DropCount(Protocol):
    """What a stream counts its drops in: the client's :class:`~._counters.Counters`, or a broker source's."""

    dropped: int
    abandoned: int


class Pressure:
    """The pump's cue to yield: set by a stream whose woken consumer's buffer is half full.

    Not a total: the pump clears it and yields once, before that buffer can overflow.
    """

    __slots__ = ("crowded",)

    def __init__(self) -> None:
        self.crowded = False


class _State(enum.Enum):
    OPEN = "open"
    FINISHED = "finished"  # no more input; buffered messages still delivered, then the end
    CLOSED = "closed"  # closed by its consumer; buffer discarded


# The hot path compares with this rather than with _State.OPEN: on Python 3.11 an enum
# member read from its class costs about 100 ns, paid per message per stream.
_OPEN = _State.OPEN

# The buffer of every stream that has not had a message yet: a deque takes 760 bytes
# even empty, most of an idle stream. deliver() gives a stream its own deque before its
# first append; nothing else may ever add to this one.
_NO_BUFFER: deque[Any] = deque()


class StreamStatistics(NamedTuple):
    """A snapshot of one stream, as listed in ``stats()["streams"]``."""

    filters: Any
    queued: int
    dropped: int


class Feed(Generic[M]):
    """The producer's side of one stream: its buffer, overflow policy and end.

    The index and the registry hold the feed, never the :class:`Stream` the
    consumer holds: so a stream its consumer let go of can be found out (its
    ``__del__``) and unregistered, while the pump's hot path stays one strong
    ``deliver`` call per matching stream.
    """

    __slots__ = (
        "_buf",
        "_copy",
        "_counters",
        "_dropping",
        "_end_error",
        "_episode_drops",
        "_filters",
        "_home",
        "_loop",
        "_maxsize",
        "_on_close",
        "_overflow",
        "_pressure",
        "_state",
        "_waiter",
        "_woken",
        "dropped",
    )

    def __init__(
        self,
        filters: Any,
        *,
        maxsize: int,
        overflow: Overflow,
        copy: bool,
        counters: DropCount,
        pressure: Pressure | None = None,
        on_close: Callable[[Feed[M]], None] | None = None,
    ) -> None:
        self._filters = filters
        self._maxsize = maxsize
        self._overflow = overflow
        self._copy = copy
        self._counters = counters
        self._pressure = pressure
        self._on_close = on_close
        self._buf: deque[M] = _NO_BUFFER
        self._state = _State.OPEN
        self._end_error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._woken = False  # resolved our waiter; the consumer has not run since
        self._loop: asyncio.AbstractEventLoop | None = None  # learnt at the first wait
        # The loop the stream was made in, where an abandoned stream is unregistered.
        self._home = asyncio._get_running_loop()
        self._dropping = False
        self._episode_drops = 0
        #: Messages this stream lost to its overflow policy.
        self.dropped = 0

    def __repr__(self) -> str:
        return (
            f"<Stream filters={self._filters!r} {self._state.value} "
            f"queued={len(self._buf)} dropped={self.dropped}>"
        )

    def statistics(self) -> StreamStatistics:
        """Return the stream's filters, queue length and drop count."""
        return StreamStatistics(self._filters, len(self._buf), self.dropped)

    def deliver(self, msg: M) -> None:
        """Buffer ``msg`` or apply the overflow policy. Never blocks, never awaits.

        Called by the client's dispatch (this is the stream's side of
        :class:`~._dispatch.Target`); consumers never call it.
        """
        if self._state is not _OPEN:
            return
        buf = self._buf
        if len(buf) >= self._maxsize:
            if self._overflow == "drop_oldest":
                buf.popleft()
                self._drop()
            elif self._overflow == "drop_newest":
                self._drop()
                return
            else:
                self._drop()
                self.finish(
                    StreamOverflow(
                        f"stream {self._filters!r} overflowed: {self._maxsize} messages were buffered "
                        "and not read; read faster, raise maxsize, or use overflow='drop_oldest'/'drop_newest'"
                    )
                )
                return
        elif self._dropping:
            self._end_episode()
        if self._copy:
            try:
                msg = _copy.deepcopy(msg)
            except Exception as exc:
                # Nested too deep for deepcopy (a hostile frame) or not copyable: this
                # stream loses the message, counted, instead of the pump dying on it.
                self.dropped += 1
                self._counters.dropped += 1
                logger.warning("stream {}: a message could not be copied ({}); dropped", self._filters,
                               type(exc).__name__)
                return
        if buf is _NO_BUFFER:
            buf = self._buf = deque()
        buf.append(msg)
        waiter = self._waiter
        if waiter is not None:
            # Woken once per batch: the rest of the batch finds no waiter and only appends.
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)
                self._woken = True
        if self._woken and 2 * len(buf) >= self._maxsize and self._pressure is not None:  # half full
            self._pressure.crowded = True

    def finish(self, error: BaseException | None = None) -> None:
        """Take no more messages: the consumer gets the buffer, then ``error`` or the end.

        The producer's side, like :meth:`deliver`: the client calls it at exit or
        when it gives up. Idempotent.
        """
        if self._state is _State.OPEN:
            self._end_error = error
            self._stop(_State.FINISHED)

    def close(self) -> None:
        """End now and discard the buffer (the consumer's ``close``). Idempotent."""
        self._buf.clear()
        self._end_error = None
        self._stop(_State.CLOSED)

    def abandon(self) -> None:
        """Its :class:`Stream` is gone: close it and unregister it, in the loop that reads it.

        Called from ``Stream.__del__``, which runs wherever the last reference went:
        maybe in another thread, maybe inside the pump (a collection triggered by an
        allocation). So the close is always scheduled, never done in place, unless no
        loop could be running it.
        """
        if self._state is not _OPEN:
            return
        # Made outside a loop and never awaited: the loop running here, if any, is the one.
        loop = self._loop or self._home or asyncio._get_running_loop()
        if loop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(self._abandoned)
                return
            except RuntimeError:  # the loop closed meanwhile: nothing reads this feed any more
                pass
        self._abandoned()

    def _abandoned(self) -> None:
        if self._state is not _OPEN:
            return
        self._counters.abandoned += 1
        logger.info(
            "stream {} abandoned (its consumer holds no reference to it): unregistered, {} buffered "
            "messages discarded", self._filters, len(self._buf),
        )
        self.close()

    def _stop(self, state: _State) -> None:
        if self._state is _State.OPEN and self._on_close is not None:
            self._on_close(self)
        if self._state is not _State.CLOSED:
            self._state = state
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _drop(self) -> None:
        self.dropped += 1
        self._counters.dropped += 1
        self._episode_drops += 1
        if not self._dropping:
            self._dropping = True
            logger.warning(
                "stream {} is full ({} messages): overflow={}, dropping messages",
                self._filters,
                self._maxsize,
                self._overflow,
            )

    def _end_episode(self) -> None:
        logger.warning(
            "stream {} has room again after dropping {} messages ({} in all)",
            self._filters,
            self._episode_drops,
            self.dropped,
        )
        self._dropping = False
        self._episode_drops = 0


class Stream(Generic[M]):
    """An async iterator over the messages matching one filter, in arrival order.

    Made by :meth:`AsyncWsStream.stream_filter`; not constructed directly.

    The buffer holds at most ``maxsize`` messages; what a full buffer does is
    the ``overflow`` policy. No policy loses a message silently: drops are
    counted in :attr:`dropped` and in the client's ``stats()``, and logged once
    per overflow episode (when the stream first drops, and when it recovers).

    A stream that nothing references any more (its consumer left its ``async for``
    by ``break`` or an exception and kept no name for it) is closed and
    unregistered when Python frees it: at once on CPython, or at the next garbage
    collection if it sits in a reference cycle; its buffer is discarded, and
    ``stats()["abandoned"]`` counts it. A task waiting in ``async for`` keeps its
    stream alive.

    Cancelling a pending ``__anext__`` is safe: nothing is lost; the next call
    returns the next message. ``close()`` is idempotent.
    """

    __slots__ = ("__weakref__", "_feed")

    def __init__(
        self,
        filters: Any,
        *,
        maxsize: int,
        overflow: Overflow,
        copy: bool,
        counters: Counters,
        pressure: Pressure | None = None,
        on_close: Callable[[Feed[M]], None] | None = None,
    ) -> None:
        self._feed: Feed[M] = Feed(
            filters, maxsize=maxsize, overflow=overflow, copy=copy,
            counters=counters, pressure=pressure, on_close=on_close,
        )

    def __del__(self) -> None:
        feed = getattr(self, "_feed", None)  # absent if __init__ failed
        # At interpreter exit nothing reads the feed any more, and logging may be gone.
        if feed is not None and feed._state is _OPEN and not sys.is_finalizing():
            feed.abandon()

    def __repr__(self) -> str:
        return repr(self._feed)

    # -- the consumer's side ---------------------------------------------------------------

    def __aiter__(self) -> Stream[M]:
        return self

    async def __anext__(self) -> M:
        feed = self._feed
        buf = feed._buf
        if buf:  # under load, the usual case: no future, no suspension
            return buf.popleft()
        while True:
            if feed._state is not _OPEN:
                if feed._end_error is not None:
                    error, feed._end_error = feed._end_error, None
                    raise error
                raise StopAsyncIteration
            # Once per wake-up, which with many streams is about once per message: so a
            # plain Future (one Python call less than loop.create_future()) on the loop
            # learnt at the first wait (get_running_loop() costs as much as the Future).
            loop = feed._loop
            if loop is None:
                loop = feed._loop = asyncio.get_running_loop()
            waiter = feed._waiter = asyncio.Future(loop=loop)
            try:
                await waiter
            finally:
                feed._woken = False
                if feed._waiter is waiter:
                    feed._waiter = None
            buf = feed._buf  # read anew: the first deliver() replaces _NO_BUFFER
            if buf:
                return buf.popleft()

    async def get(self) -> M:
        """Return the next message, waiting for it.

        Raises:
            StreamOverflow: the stream overflowed under ``overflow="error"``.
            EOFError: the stream has ended (closed, or the client exited).
        """
        try:
            return await self.__anext__()
        except StopAsyncIteration:
            raise EOFError("stream has ended") from None

    def get_nowait(self) -> M:
        """Return the next buffered message, or raise IndexError when there is none."""
        return self._feed._buf.popleft()

    async def get_batch(self, most: int = 1000) -> list[M]:
        """Return what is buffered, up to ``most`` messages in order; wait for one if none is.

        For a consumer that handles messages in groups (a file, a database, a
        broker): it is woken once for the group, not once a message. Cancel-safe
        like ``async for``: a cancelled call takes nothing.

        Raises:
            ValueError: ``most`` is not an int >= 1.
            StreamOverflow: the stream overflowed under ``overflow="error"`` (after its buffer).
            EOFError: the stream has ended and its buffer is empty.
        """
        _check_most(most)
        if self._feed._buf:
            return self._take(most)
        return self._more(await self.get(), most)

    def batches(self, most: int = 1000) -> Batches[M]:
        """``async for batch in stream.batches(most):`` each a :meth:`get_batch`; ends with the stream.

        Raises:
            ValueError: ``most`` is not an int >= 1.
        """
        _check_most(most)
        return Batches(self, most)

    def _take(self, most: int) -> list[M]:
        """Up to ``most`` buffered messages; there is at least one."""
        buf = self._feed._buf
        if len(buf) <= most:
            batch = list(buf)
            buf.clear()
            return batch
        popleft = buf.popleft
        return [popleft() for _ in range(most)]

    def _more(self, first: M, most: int) -> list[M]:
        """``first`` and up to ``most - 1`` buffered messages after it."""
        if most == 1 or not self._feed._buf:
            return [first]
        return [first, *self._take(most - 1)]

    @property
    def dropped(self) -> int:
        """Messages this stream lost to its overflow policy."""
        return self._feed.dropped

    @property
    def queued(self) -> int:
        """How many messages wait in the buffer."""
        return len(self._feed._buf)

    @property
    def closed(self) -> bool:
        """True once the stream takes no more messages (closed, finished or overflowed)."""
        return self._feed._state is not _OPEN

    def statistics(self) -> StreamStatistics:
        """Return the stream's filters, queue length and drop count."""
        return self._feed.statistics()

    async def close(self) -> None:
        """End the stream now and discard its buffer. Idempotent.

        A consumer blocked in ``async for`` ends normally.
        """
        self._feed.close()

    aclose = close

    async def __aenter__(self) -> Stream[M]:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # -- the producer's side (the client) --------------------------------------------------

    def deliver(self, msg: M) -> None:
        """Hand ``msg`` to the stream's feed (tests and direct use; the pump calls the feed)."""
        self._feed.deliver(msg)

    def finish(self, error: BaseException | None = None) -> None:
        """Take no more messages: the consumer gets the buffer, then ``error`` or the end. Idempotent."""
        self._feed.finish(error)


class Batches(Generic[M]):
    """The async iterator of :meth:`Stream.batches`: lists of up to ``most`` messages, in order."""

    __slots__ = ("_most", "_stream")

    def __init__(self, stream: Stream[M], most: int) -> None:
        self._stream = stream
        self._most = most

    def __aiter__(self) -> Batches[M]:
        return self

    async def __anext__(self) -> list[M]:
        stream = self._stream
        if stream._feed._buf:  # under load, the usual case: no wait
            return stream._take(self._most)
        return stream._more(await stream.__anext__(), self._most)


def _check_most(most: object) -> None:
    if isinstance(most, bool) or not isinstance(most, int) or most < 1:
        raise ValueError(f"most must be an int >= 1 (the largest batch), got {most!r}")
