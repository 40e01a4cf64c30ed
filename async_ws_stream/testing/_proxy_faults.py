"""FaultProxy's per-direction faults and counters: pure, no sockets, no awaits.

A direction (``"to_server"`` or ``"to_client"``) is shared by every proxied
connection: its faults apply to all of them, and its counters add them up.
"""

from __future__ import annotations

import enum
import math
import random
from dataclasses import dataclass, replace
from typing import Literal

from ._common import check_count, check_seconds

Direction = Literal["to_server", "to_client"]
"""One direction of a proxied connection: what the client sends, or what the server sends."""

Directions = Literal["to_server", "to_client", "both"]
"""A direction, or both of them."""

DIRECTIONS: tuple[Direction, Direction] = ("to_server", "to_client")

# With a bandwidth limit and no write_size, a chunk is written in pieces of
# this many seconds' worth of bytes, so the limit holds within a chunk too.
PACING_SLICE = 0.01


class _Unset(enum.Enum):
    UNSET = enum.auto()


UNSET = _Unset.UNSET
"""Marks a setting :meth:`FaultProxy.set` leaves as it is."""


def directions(where: str, which: object) -> tuple[Direction, ...]:
    """Return the directions ``which`` names."""
    if which == "both":
        return DIRECTIONS
    if which == "to_server" or which == "to_client":
        return (which,)
    raise ValueError(f"{where}: direction must be 'to_server', 'to_client' or 'both', got {which!r}")


@dataclass(frozen=True, slots=True)
class LinkFaults:
    """The faults set on one direction of a :class:`FaultProxy` (all off by default).

    Attributes:
        latency: Seconds every chunk read from one side waits before it is
            written to the other; order is kept, throughput is not limited.
        jitter: Extra seconds, uniform in ``[0, jitter]``, added per chunk
            (never reordering: a chunk waits at least as long as the one before).
        bandwidth: Bytes per second forwarded at most; None for no limit.
        write_size: Forward in writes of at most this many bytes (1: byte by
            byte), yielding to the event loop between writes so that the peer
            reads them apart; None writes what was read at once.
        black_hole: Discard (and count) everything instead of forwarding it,
            end-of-stream included, keeping both sockets open: a partition
            in this direction, for every connection, new ones included (see
            :meth:`FaultProxy.half_open` for the connections open now only).
    """

    latency: float = 0.0
    jitter: float = 0.0
    bandwidth: float | None = None
    write_size: int | None = None
    black_hole: bool = False

    def updated(
        self,
        where: str,
        *,
        latency: float | _Unset,
        jitter: float | _Unset,
        bandwidth: float | None | _Unset,
        write_size: int | None | _Unset,
        black_hole: bool | _Unset,
    ) -> LinkFaults:
        """Return a copy with the given settings checked and changed."""
        new = self
        if latency is not UNSET:
            new = replace(new, latency=check_seconds(where, "latency", latency))
        if jitter is not UNSET:
            new = replace(new, jitter=check_seconds(where, "jitter", jitter))
        if bandwidth is not UNSET:
            if bandwidth is not None and (
                isinstance(bandwidth, bool)
                or not isinstance(bandwidth, (int, float))
                or not math.isfinite(bandwidth)
                or bandwidth <= 0
            ):
                raise ValueError(f"{where}: bandwidth must be bytes per second > 0 or None, got {bandwidth!r}")
            new = replace(new, bandwidth=None if bandwidth is None else float(bandwidth))
        if write_size is not UNSET:
            if write_size is not None and check_count(where, write_size, "write_size") == 0:
                raise ValueError(f"{where}: write_size must be an int >= 1 or None, got 0")
            new = replace(new, write_size=write_size)
        if black_hole is not UNSET:
            if not isinstance(black_hole, bool):
                raise TypeError(f"{where}: black_hole must be True or False, got {black_hole!r}")
            new = replace(new, black_hole=black_hole)
        return new

    def piece_size(self) -> int | None:
        """The largest write for these settings; None for no limit."""
        size = self.write_size
        if self.bandwidth is not None:
            paced = max(1, int(self.bandwidth * PACING_SLICE))
            size = paced if size is None else min(size, paced)
        return size


class DirectionState:
    """One direction's faults, pending reset and counters, shared by every connection."""

    __slots__ = ("faults", "reset_countdown", "forwarded", "writes", "discarded", "_rng")

    def __init__(self, rng: random.Random) -> None:
        self.faults = LinkFaults()
        self.reset_countdown: int | None = None
        """Bytes still to forward before a reset; None when no reset is armed."""
        self.forwarded = 0
        self.writes = 0
        self.discarded = 0
        self._rng = rng

    def due(self, now: float, previous: float) -> float:
        """When a chunk read at ``now`` may be written, never before the chunk read before it."""
        faults = self.faults
        delay = faults.latency + (self._rng.uniform(0.0, faults.jitter) if faults.jitter else 0.0)
        return max(previous, now + delay)

    def allowance(self, size: int) -> tuple[int, bool]:
        """How many of the next ``size`` bytes to write, and whether to reset after them.

        Consumes the armed reset when it fires.
        """
        countdown = self.reset_countdown
        if countdown is None or countdown > size:
            if countdown is not None:
                self.reset_countdown = countdown - size
            return size, False
        self.reset_countdown = None
        return countdown, True

    def counters(self) -> dict[str, int]:
        """Bytes forwarded, writes made and bytes discarded so far."""
        return {"forwarded": self.forwarded, "writes": self.writes, "discarded": self.discarded}
