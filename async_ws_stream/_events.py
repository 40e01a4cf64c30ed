"""Lifecycle events: what a bot watches to pause when the feed drops and resume when it is back.

The supervisor emits each event synchronously, at the point of the message flow
where it happens: every message of connection ``n`` is dispatched before
``Disconnected(n, ...)``, and every message dispatched after ``Connected(n)``
came from connection ``n`` (until the next ``Connected``). Streams made with
``stream_filter(..., events=True)`` carry the events in-band at exactly those
points; ``client.events()`` carries the events alone.

With shards (:mod:`._shards`), each shard's connection events carry ``shard``
(0 for the first connection, and for every client that has only one); order
holds per shard, and connection numbers are unique across shards.

``str(event)`` is one short line for a log or a terminal. A recycle is not a disconnection: it reads ``Recycling(old, reason)``, the old
connection's last messages, ``Recycled(old, new)``, then ``Connected(new)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = [
    "Closed",
    "Connected",
    "Disconnected",
    "Event",
    "Gap",
    "GaveUp",
    "Recycled",
    "Recycling",
    "Retrying",
]


@dataclass(frozen=True, slots=True)
class Connected:
    """Connection ``number`` carries messages from now on (the first, a reconnect, or a recycle's new one)."""

    number: int
    shard: int = 0

    def __str__(self) -> str:
        return f"connected (#{self.number}){_on(self.shard)}"


@dataclass(frozen=True, slots=True)
class Disconnected:
    """Connection ``number`` was lost; ``cause`` says why (redacted). Its last message came before this."""

    number: int
    cause: str
    shard: int = 0

    def __str__(self) -> str:
        return f"connection #{self.number} lost: {self.cause}{_on(self.shard)}"


@dataclass(frozen=True, slots=True)
class Retrying:
    """Attempt ``attempt`` to open a connection failed with ``cause``; the next follows in ``delay`` seconds."""

    attempt: int
    delay: float
    cause: str
    shard: int = 0

    def __str__(self) -> str:
        return f"retry {self.attempt} in {self.delay:.2f}s after {self.cause}{_on(self.shard)}"


@dataclass(frozen=True, slots=True)
class Recycling:
    """Connection ``number`` is being replaced (``reason``); it keeps serving until its successor is up."""

    number: int
    reason: str
    shard: int = 0

    def __str__(self) -> str:
        return f"recycling #{self.number}: {self.reason}{_on(self.shard)}"


@dataclass(frozen=True, slots=True)
class Recycled:
    """Connection ``old`` was read to its end and closed; ``new`` serves from now on."""

    old: int
    new: int
    shard: int = 0

    def __str__(self) -> str:
        return f"recycled #{self.old} -> #{self.new}{_on(self.shard)}"


@dataclass(frozen=True, slots=True)
class Gap:
    """Sequence ``key`` skipped from ``expected`` to ``got``: the updates in between never arrived."""

    key: Any
    expected: int
    got: int

    def __str__(self) -> str:
        return f"gap in {self.key!r}: expected {self.expected}, got {self.got}"


@dataclass(frozen=True, slots=True)
class GaveUp:
    """The client stopped retrying: ``error`` (``RetriesExhausted`` or ``ConnectionRejected``) is final."""

    error: BaseException

    def __str__(self) -> str:
        return f"gave up: {type(self.error).__name__}: {self.error}"


@dataclass(frozen=True, slots=True)
class Closed:
    """``exit()`` was called: the last event of every events stream."""

    def __str__(self) -> str:
        return "closed"


def _on(shard: int) -> str:
    # A one-connection client's lines read exactly as before shards existed.
    return f" [shard {shard}]" if shard else ""


Event = Connected | Disconnected | Retrying | Recycling | Recycled | Gap | GaveUp | Closed
"""Any lifecycle event."""
