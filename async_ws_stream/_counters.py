"""The client's running totals, shared by the rooms that count: supervisor, streams, handlers."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Counters"]


@dataclass(slots=True)
class Counters:
    """Totals since the client was made; ``stats()`` reports them (``messages`` is derived).

    Every field only ever grows, so ``frames == messages + parse_errors + skipped`` holds
    at any moment.
    """

    # Connections
    connects: int = 0
    reconnects: int = 0
    recycles: int = 0
    recycle_failures: int = 0  # a recycle's new connection failed to open (retried)
    retries: int = 0  # failed attempts retried, for a reconnect or a recycle alike
    # Frames
    frames: int = 0
    skipped: int = 0  # frames parsed to None
    parse_errors: int = 0
    # Consumers
    dropped: int = 0  # by every stream and handler, closed ones included
    handler_errors: int = 0
    predicate_errors: int = 0
    pump_yields: int = 0  # times the pump let woken consumers drain in the middle of a read
    # Sequences (a _sequence hook)
    duplicates: int = 0  # at or below their key's last number delivered: sent twice
    resync_discarded: int = 0  # held during a resync, at or below the number it returned
    gaps: int = 0
    resyncs: int = 0  # started
    resync_errors: int = 0  # _resync attempts that raised (each retried)
    sequence_errors: int = 0  # _sequence raised: delivered untracked
    held_dropped: int = 0  # dropped from a key's full hold during its resync
