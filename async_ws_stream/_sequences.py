"""Pure sequence tracking: per key, the last number delivered, a verdict on each message, the held buffer.

A message that a ``_sequence`` hook numbers carries the updates ``first..last``
of the sequence ``key``. :class:`Sequences` remembers, per key, the ``last`` of
the message it let through most recently and judges each new one:

* ``last <= previous last``: a **duplicate** (the recycle overlap, a replay after
  a reconnect): dropped;
* ``first > previous last + 1``: a **gap**; the updates in between never came;
* otherwise the message continues the sequence (``first`` may reach back below
  ``previous last + 1``: a message that straddles the end, as Binance's first
  diff after a snapshot does) and is delivered.

With a resync (the client has a ``_resync`` hook), a gap, and the first message
of a key after a connection opened when ``resync_on_connect`` asks for it,
start a resync of that key: from then on its messages are *held* in a bounded
buffer (the oldest dropped when it is full), until :meth:`Sequences.resynced`
says what number the key is current to. Then every held message at or below
it is discarded and the rest are judged again, in order, from that number:
so a snapshot older than the held messages shows up as a gap, and starts
another resync. Other keys are never held.

Nothing here awaits, sleeps or reads a clock; the client's
:class:`~._sequencer.Sequencer` turns the verdicts into deliveries, events and
resync tasks. So every rule is tested without an event loop.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable
from typing import Any, NamedTuple

from ._events import Gap

__all__ = [
    "DELIVER",
    "DUPLICATE",
    "GAP",
    "HELD",
    "HELD_OVERFLOW",
    "RESYNC_FIRST",
    "RESYNC_GAP",
    "Release",
    "Sequences",
]

# Verdicts of Sequences.admit, plain ints: the pump compares one per message.
DELIVER = 0  # deliver it now
DUPLICATE = 1  # at or below the key's last number: drop it
GAP = 2  # deliver it, after the Gap in Sequences.gap (no resync hook)
RESYNC_GAP = 3  # a gap (Sequences.gap): the message is held and a resync must start
RESYNC_FIRST = 4  # the key's first message since a connection opened: held, a resync must start
HELD = 5  # a resync of its key runs: held
HELD_OVERFLOW = 6  # held, and the oldest held message of its key was dropped to make room

_Held = tuple[int, int, Any]  # first, last, message


class Release(NamedTuple):
    """What :meth:`Sequences.resynced` lets go, in the order to deliver it.

    Attributes:
        messages: The held messages past the resync's number, in order; deliver them.
        gap: After those, a hole (the snapshot is older than the next held message);
            the rest stays held and another resync must start. None otherwise.
        again: The hold overflowed and the resync gave no number, so where the
            dropped messages fit cannot be known: another resync must start (the
            key holds from now on). False otherwise.
        discarded: Held messages at or below the resync's number, dropped.
    """

    messages: list[Any]
    gap: Gap | None
    again: bool
    discarded: int


class _Key:
    __slots__ = ("epoch", "held", "last", "overflowed")

    def __init__(self) -> None:
        self.last: int | None = None  # None: nothing delivered yet, or a resync gave no number
        self.epoch = -1  # the connection epoch of the key's last message (resync_on_connect)
        self.held: deque[_Held] | None = None  # not None while a resync of the key runs
        self.overflowed = False  # the hold dropped a message during this resync


class Sequences:
    """The sequence state of one client: every key's last number, and what each resync holds.

    Args:
        resync: The client has a ``_resync`` hook: gaps start a resync and hold
            the key's messages; without one, a gap is reported and the message
            delivered.
        resync_on_connect: Resync every key at its first message after each
            :meth:`connected` (needs ``resync``).
        hold: How many messages one key may hold during its resync (>= 1).

    Not thread-safe; used from the client's loop only.
    """

    __slots__ = ("_epoch", "_keys", "_on_connect", "_resync", "gap", "hold")

    def __init__(self, *, resync: bool, resync_on_connect: bool = False, hold: int = 10_000) -> None:
        if resync_on_connect and not resync:
            raise ValueError("Sequences: resync_on_connect needs resync")
        if hold < 1:
            raise ValueError(f"Sequences: hold must be >= 1, got {hold!r}")
        self._resync = resync
        self._on_connect = resync_on_connect
        #: How many messages one key may hold during its resync.
        self.hold = hold
        self._keys: dict[Hashable, _Key] = {}
        self._epoch = 0
        #: The gap found by the last admit() that returned GAP or RESYNC_GAP.
        self.gap: Gap | None = None

    def connected(self) -> None:
        """A new connection opened (not a recycle's): ``resync_on_connect`` applies to every key anew."""
        self._epoch += 1

    def admit(self, key: Hashable, first: int, last: int, msg: Any) -> int:
        """Judge one message carrying updates ``first..last`` of ``key``; return a verdict.

        HELD, HELD_OVERFLOW, RESYNC_GAP and RESYNC_FIRST keep ``msg`` (the
        caller must not deliver it); DUPLICATE drops it; DELIVER and GAP leave
        it to the caller to deliver, after reporting :attr:`gap` for GAP.

        Raises:
            ValueError: ``first > last`` (nothing is changed).
            TypeError: a key that is not hashable, or numbers that do not
                compare (nothing is changed).
        """
        if first > last:
            raise ValueError(f"_sequence returned first={first!r} > last={last!r} for key {key!r:.60}")
        state = self._keys.get(key)
        if state is None:
            state = self._keys[key] = _Key()
        held = state.held
        if held is not None:
            return self._hold_one(state, held, first, last, msg)
        if self._on_connect and state.epoch != self._epoch:
            state.epoch = self._epoch
            state.held = deque(((first, last, msg),))
            return RESYNC_FIRST
        previous = state.last
        if previous is None:
            state.last = last
            return DELIVER
        if last <= previous:
            return DUPLICATE
        if first > previous + 1:
            self.gap = Gap(key, previous + 1, first)
            if self._resync:
                state.held = deque(((first, last, msg),))
                return RESYNC_GAP
            state.last = last
            return GAP
        state.last = last
        return DELIVER

    def _hold_one(self, state: _Key, held: deque[_Held], first: int, last: int, msg: Any) -> int:
        # The current connection's epoch counts as seen: a resync that is
        # running already covers this connection's first message.
        state.epoch = self._epoch
        verdict = HELD
        if len(held) >= self.hold:
            # The oldest goes: a snapshot taken later covers it more likely than the newest.
            held.popleft()
            state.overflowed = True
            verdict = HELD_OVERFLOW
        held.append((first, last, msg))
        return verdict

    def resyncing(self, key: Hashable) -> bool:
        """Whether a resync of ``key`` is under way (its messages are held)."""
        state = self._keys.get(key)
        return state is not None and state.held is not None

    def resynced(self, key: Hashable, number: int | None) -> Release:
        """End the resync of ``key``: it is current to ``number``; let go of what it held.

        ``number`` None means the resync knows no number: nothing held is
        discarded, and the sequence starts again from the first held message.

        Raises:
            KeyError: no resync of ``key`` is under way.
        """
        state = self._keys[key]
        held = state.held
        if held is None:
            raise KeyError(f"no resync of {key!r:.60} is under way")
        overflowed = state.overflowed
        state.held = None
        state.overflowed = False
        state.last = number
        messages: list[Any] = []
        discarded = 0
        while held:
            first, last, msg = held[0]
            previous = state.last
            if previous is not None:
                if last <= previous:
                    held.popleft()
                    discarded += 1
                    continue
                if first > previous + 1:
                    # The snapshot is older than what was held: still a hole. The rest
                    # stays held for the next resync, which must start now.
                    state.held = held
                    return Release(messages, Gap(key, previous + 1, first), False, discarded)
            held.popleft()
            state.last = last
            messages.append(msg)
        if overflowed and number is None:
            state.held = deque()
            return Release(messages, None, True, discarded)
        return Release(messages, None, False, discarded)

    def last(self, key: Hashable) -> int | None:
        """The last number of ``key`` let through (or set by a resync), None if none."""
        state = self._keys.get(key)
        return None if state is None else state.last

    @property
    def held(self) -> int:
        """Messages held now, over every key."""
        return sum(len(s.held) for s in self._keys.values() if s.held is not None)

    def __len__(self) -> int:
        """The number of keys seen."""
        return len(self._keys)
