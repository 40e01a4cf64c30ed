"""Sequence tracking in a running client: each message's verdict, the ``Gap`` events, the resync tasks.

Only a client whose class defines ``_sequence`` gets a :class:`Sequencer`
(:func:`sequencer_for` returns None otherwise). The supervisor then serves
each connection with its sequenced receive loop, which asks
:meth:`Sequencer.admit` about every message before dispatching it; a client
without the hook keeps the plain loop, unchanged, with no branch per message.

The rules live in the pure :class:`~._sequences.Sequences`; this room carries
them out: it counts duplicates, emits each :class:`~._events.Gap` through the
client's events at the point of the message flow where the hole shows,
runs each ``_resync`` in a task the client owns (:class:`~._lifecycle.Tasks`),
so that the receive loop and the other keys never wait for it, and delivers
what a resync held when it returns. It watches the lifecycle events it
forwards to learn when a connection (other than a recycle's) opens, and
cancels the resyncs under way when the client exits or gives up.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable, Hashable
from typing import Any, Protocol

from loguru import logger

from ._backoff import RetryPolicy, backoff_delays
from ._counters import Counters
from ._dispatch import Index, Target
from ._events import Closed, Connected, Event, Gap, GaveUp, Recycled
from ._hooks import ClientHooks
from ._lifecycle import Tasks
from ._options import check_int
from ._redact import describe, traceback_of
from ._sequences import DUPLICATE, GAP, HELD, HELD_OVERFLOW, RESYNC_GAP, Sequences

__all__ = ["SequenceHooks", "Sequencer", "sequence_stats", "sequencer_for", "wire_sequences"]


class SequenceHooks(Protocol):
    """What the sequencer calls: the client's optional sequence hooks (see :class:`~._hooks.ClientHooks`)."""

    def _sequence(self, msg: Any) -> tuple[Hashable, int, int] | None: ...

    async def _resync(self, key: Any, gap: Gap | None) -> int | None: ...


def sequencer_for(
    client: ClientHooks[Any],
    index: Index[Target],
    counters: Counters,
    emit: Callable[[Event], None],
    tasks: Tasks,
    policy: RetryPolicy,
) -> Sequencer | None:
    """The sequencer of ``client``, or None when its class does not define ``_sequence``.

    Raises:
        TypeError: the hooks do not fit together (``_resync`` or
            ``resync_on_connect`` without ``_sequence``, ``resync_on_connect``
            without ``_resync``, an ``async def _sequence``, a plain ``_resync``).
        ValueError: ``resync_maxsize`` < 1.
    """
    cls = type(client)
    name = cls.__name__
    has_resync = cls._resync is not ClientHooks._resync
    if cls._sequence is ClientHooks._sequence:
        if has_resync or cls.resync_on_connect:
            raise TypeError(f"{name}: _resync and resync_on_connect need a _sequence hook "
                            "(def _sequence(self, msg) -> (key, first, last) | None); define it or remove them")
        return None
    if inspect.iscoroutinefunction(cls._sequence):
        raise TypeError(f"{name}: _sequence must be a plain function (def, not async def): it runs for every message")
    if has_resync and not inspect.iscoroutinefunction(cls._resync):
        raise TypeError(f"{name}: _resync must be a coroutine function (async def _resync(self, key, gap))")
    if not isinstance(cls.resync_on_connect, bool):
        raise TypeError(f"{name}: resync_on_connect must be a bool, got {cls.resync_on_connect!r:.60}")
    if cls.resync_on_connect and not has_resync:
        raise TypeError(f"{name}: resync_on_connect = True needs a _resync hook "
                        "(async def _resync(self, key, gap) -> int | None)")
    hold = check_int(name, "resync_maxsize", cls.resync_maxsize, minimum=1)
    assert hold is not None
    book = Sequences(resync=has_resync, resync_on_connect=cls.resync_on_connect, hold=hold)
    return Sequencer(client, book, index=index, counters=counters, emit=emit, tasks=tasks, policy=policy)


class _Emitter(Protocol):
    def emit(self, event: Event) -> None: ...


def wire_sequences(
    client: ClientHooks[Any],
    index: Index[Target],
    counters: Counters,
    consumers: _Emitter,
    tasks: Tasks,
    policy: RetryPolicy,
) -> tuple[Sequencer | None, Callable[[Event], None], Callable[[Any], bool] | None]:
    """How a client is wired for sequences: its sequencer, the emit every event goes through, the pump's admit.

    Without a ``_sequence`` hook: None, the consumers' own emit, and None (the
    plain pump). With one, the sequencer's emit, which watches the events go by
    (connects, exit) before handing them on, and its admit. Raises as
    :func:`sequencer_for`.
    """
    sequencer = sequencer_for(client, index, counters, consumers.emit, tasks, policy)
    if sequencer is None:
        return None, consumers.emit, None
    return sequencer, sequencer.emit, sequencer.admit


def sequence_stats(counters: Counters, sequencer: Sequencer | None) -> dict[str, int]:
    """The sequence keys of ``stats()`` (zero without a ``_sequence`` hook)."""
    c = counters
    return {
        "duplicates": c.duplicates,
        "gaps": c.gaps,
        "resyncs": c.resyncs,
        "resync_errors": c.resync_errors,
        "resync_discarded": c.resync_discarded,
        "sequence_errors": c.sequence_errors,
        "held": 0 if sequencer is None else sequencer.book.held,
        "held_dropped": c.held_dropped,
    }


class Sequencer:
    """Carries out the sequence rules for one client (see the module docstring).

    Args:
        hooks: The client (its ``_sequence`` and ``_resync``).
        book: The pure state, configured from the client's class.
        index: Where released messages find their targets.
        counters: The client's totals.
        emit: The client's own emit: events go on there, ``Gap`` included.
        tasks: The owner of the resync tasks.
        policy: Whose backoff settings pace the retries of a failing ``_resync``.
    """

    def __init__(
        self,
        hooks: SequenceHooks,
        book: Sequences,
        *,
        index: Index[Target],
        counters: Counters,
        emit: Callable[[Event], None],
        tasks: Tasks,
        policy: RetryPolicy,
    ) -> None:
        self.book = book
        self._hooks = hooks
        self._index = index
        self._counters = counters
        self._forward = emit
        self._tasks = tasks
        self._policy = policy
        self._resyncs: dict[Hashable, asyncio.Task[None]] = {}
        self._recycled: set[int] = set()  # shards whose next Connected is a recycle's successor
        self._stopped = False
        self._overflowing: set[Hashable] = set()  # keys whose hold drops, logged once per resync
        #: The receive loop's question for each message; see :meth:`_make_admit`.
        self.admit: Callable[[Any], bool] = self._make_admit()

    # -- the receive loop's side ---------------------------------------------------------------

    def _make_admit(self) -> Callable[[Any], bool]:
        # A closure over locals rather than a method: it runs for every message, and
        # each attribute of self it would read costs as much as a comparison.
        sequence = self._hooks._sequence
        judge = self.book.admit
        act = self._act
        failed = self._sequence_failed

        def admit(msg: Any) -> bool:
            """Whether the receive loop delivers ``msg`` now; if not, it was dropped (counted) or held.

            Never raises, never awaits.
            """
            try:
                numbered = sequence(msg)
                if numbered is None:
                    return True
                key, first, last = numbered
                verdict = judge(key, first, last, msg)
            except Exception as exc:
                failed(exc)
                return True
            if not verdict:  # DELIVER, the usual case: one test
                return True
            return act(verdict, key)

        return admit

    def _act(self, verdict: int, key: Hashable) -> bool:
        if verdict == DUPLICATE:
            self._counters.duplicates += 1
            return False
        if verdict == HELD:
            return False
        if verdict == HELD_OVERFLOW:
            self._counters.held_dropped += 1
            if key not in self._overflowing:
                self._overflowing.add(key)
                logger.warning(
                    "sequence {!r:.60}: {} messages held during its resync; dropping the oldest "
                    "(raise resync_maxsize, or make _resync faster)", key, self.book.hold,
                )
            return False
        gap = self.book.gap
        if verdict == GAP:
            assert gap is not None
            self._report(gap)
            return True
        if verdict == RESYNC_GAP:
            assert gap is not None
            self._report(gap)
            self._start(key, gap)
        else:  # RESYNC_FIRST
            self._start(key, None)
        return False

    def _sequence_failed(self, exc: Exception) -> None:
        self._counters.sequence_errors += 1
        n = self._counters.sequence_errors
        # The first with its traceback: it is a bug to fix; the rest, one line each.
        logger.warning(
            "_sequence failed #{} ({}); the message is delivered without sequence tracking{}",
            n, describe(exc), f"\n{traceback_of(exc)}" if n == 1 else "",
        )

    def _report(self, gap: Gap) -> None:
        self._counters.gaps += 1
        logger.warning("gap in sequence {!r:.60}: expected {}, got {} ({} missing)",
                       gap.key, gap.expected, gap.got, gap.got - gap.expected)
        self._forward(gap)

    # -- events ------------------------------------------------------------------------------

    def emit(self, event: Event) -> None:
        """Forward ``event`` to the client's consumers, noting the connects, exit and give-up."""
        kind = type(event)
        if isinstance(event, Recycled):
            self._recycled.add(event.shard)
        elif isinstance(event, Connected):
            if event.shard in self._recycled:
                self._recycled.discard(event.shard)
            else:
                self.book.connected()
        elif kind is Closed or kind is GaveUp:
            self._stop()
        self._forward(event)

    def _stop(self) -> None:
        """No more resyncs: those under way are cancelled (their keys stay held; the streams end)."""
        self._stopped = True
        for task in self._resyncs.values():
            task.cancel()
        self._resyncs.clear()

    # -- resyncs -----------------------------------------------------------------------------

    def _start(self, key: Hashable, gap: Gap | None) -> None:
        if self._stopped:
            return
        self._counters.resyncs += 1
        logger.info("resync of {!r:.60} starts ({})", key, "at connect" if gap is None else gap)
        self._resyncs[key] = self._tasks.spawn(self._resync(key, gap), f"resync {key!r:.40}")

    async def _resync(self, key: Hashable, gap: Gap | None) -> None:
        """Run the user's ``_resync`` until it succeeds, then let go of what the key held."""
        policy = self._policy
        delays = backoff_delays(policy.initial, policy.factor, policy.maximum, policy.jitter)
        attempt = 0
        while True:
            attempt += 1
            try:
                number = await self._hooks._resync(key, gap)
                if number is not None and (isinstance(number, bool) or not isinstance(number, int)):
                    raise TypeError(f"_resync must return the int the key is now current to, or None; "
                                    f"got {type(number).__name__} {number!r:.60}")
                break
            except Exception as exc:
                self._counters.resync_errors += 1
                delay = next(delays)
                logger.warning(
                    "_resync({!r:.60}) failed (attempt {}); its messages stay held; retry in {:.2f}s\n{}",
                    key, attempt, delay, traceback_of(exc),
                )
                await asyncio.sleep(delay)
        self._resyncs.pop(key, None)
        self._release(key, number)

    def _release(self, key: Hashable, number: int | None) -> None:
        """Deliver, at once and in order, what the resync of ``key`` held past ``number``."""
        release = self.book.resynced(key, number)
        self._overflowing.discard(key)
        self._counters.resync_discarded += release.discarded
        match = self._index.match
        for msg in release.messages:
            for target in match(msg):
                target.deliver(msg)
        logger.info("resync of {!r:.60} done at {}: {} held messages delivered, {} discarded",
                    key, number, len(release.messages), release.discarded)
        if release.gap is not None:
            self._report(release.gap)
            self._start(key, release.gap)
        elif release.again:
            self._start(key, None)
