"""The client's running totals, shared by the rooms that count: supervisor, streams, handlers."""

from __future__ import annotations

import time
from dataclasses import dataclass, fields
from typing import Any

__all__ = ["Counters", "report", "total"]


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
    abandoned: int = 0  # streams closed because their consumer let go of them
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
    # Subscriptions
    subscribe_errors: int = 0  # subscribes and unsubscribes the server refused


_FIELDS = tuple(f.name for f in fields(Counters))


def total(*parts: Counters) -> Counters:
    """One Counters with the sums of ``parts``: the client's own and each shard's supervisor's."""
    out = Counters()
    for name in _FIELDS:
        setattr(out, name, sum(getattr(c, name) for c in parts))
    return out


def report(
    c: Counters,
    *,
    state: str,
    connection: int | None,
    last_frame: float | None,
    last_error: str | None,
    pending: int,
    streams: list[dict[str, Any]],
    subscriptions: int = 0,
    shards: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The dict ``stats()`` returns, fresh at each call.

    Keys: ``connects``, ``reconnects``, ``recycles``, ``recycle_failures`` (attempts
    to open a recycle's new connection that failed; each is also a retry),
    ``retries``, ``frames``, ``messages``, ``parse_errors``, ``skipped`` (frames
    parsed to None), ``handler_errors``, ``predicate_errors``, ``pump_yields`` (times
    the pump paused in the middle of a read so that woken consumers could drain
    buffers that were half full), ``pending`` (``expect``/``wait_for``/``request``/
    ``poll`` waits not yet settled), ``dropped`` (by every stream and handler,
    closed ones included), ``abandoned`` (streams closed because nothing referenced
    them any more), ``last_frame_age`` (seconds, or None with no connection),
    ``connected``, ``connection`` (the serving connection's number, or None), ``state`` (``"new"``, ``"connecting"``, ``"connected"``,
    ``"backoff"``, ``"failed"`` or ``"closed"``), ``last_error`` (the last failure to
    open or keep a connection, redacted, or None) and ``streams`` (a list of
    ``{"filters", "queued", "dropped"}``), ``subscriptions`` (topics in the declared
    set), ``subscribe_errors`` (subscribes and unsubscribes the server refused) and
    ``shards`` (one dict per connection of the client: see :meth:`~._shards.Shards.snapshot`).
    The counters are the sums over every shard. The client adds the sequence keys (with a
    ``_sequence`` hook, else 0): ``duplicates``, ``gaps``, ``resyncs``, ``resync_errors``,
    ``resync_discarded``, ``sequence_errors``, ``held``, ``held_dropped``.
    """
    return {
        "state": state,
        "connected": last_frame is not None,
        "connection": connection,
        "connects": c.connects,
        "reconnects": c.reconnects,
        "recycles": c.recycles,
        "recycle_failures": c.recycle_failures,
        "retries": c.retries,
        "frames": c.frames,
        "messages": c.frames - c.parse_errors - c.skipped,
        "parse_errors": c.parse_errors,
        "skipped": c.skipped,
        "handler_errors": c.handler_errors,
        "predicate_errors": c.predicate_errors,
        "pump_yields": c.pump_yields,
        "pending": pending,
        "dropped": c.dropped,
        "abandoned": c.abandoned,
        "last_frame_age": None if last_frame is None else time.monotonic() - last_frame,
        "last_error": last_error,
        "streams": streams,
        "subscriptions": subscriptions,
        "subscribe_errors": c.subscribe_errors,
        "shards": [] if shards is None else shards,
    }
