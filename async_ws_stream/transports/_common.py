"""What both transports share: websockets' defaults, argument checks, and the read-adapter base.

Argument checks follow one rule: a value of the wrong type is a ``TypeError``,
a value of the right type out of range a ``ValueError``; the message names the
function, the argument and the value.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterable, Mapping
from typing import Any

# The defaults of websockets.connect(), so that switching transports changes nothing else.
DEFAULT_OPEN_TIMEOUT = 10.0
DEFAULT_PING_INTERVAL = 20.0
DEFAULT_PING_TIMEOUT = 20.0
DEFAULT_CLOSE_TIMEOUT = 10.0
DEFAULT_MAX_SIZE = 2**20
DEFAULT_MAX_QUEUE = 16
#: Most bytes one socket read hands the websocket parser. A whole read is parsed
#: before reading pauses at the high-water mark, so the receive buffer holds at
#: most ``max_queue`` messages plus one read. Bigger reads share each consumer
#: wake-up among more messages (bench/README.md has the figures); smaller ones
#: tighten that bound and get the first messages of a long backlog out sooner.
DEFAULT_READ_SIZE = 4 * 2**20
#: Most bytes of one read handed to websockets' parser at a time, when a read is
#: longer (see :func:`~async_ws_stream.transports.guard`). Some 80 frames of an
#: ordinary busy feed, well under a millisecond to parse; slices of pings or
#: one-byte frames (some 10 us each to websockets) shrink until a slice takes a
#: quarter of PARSE_BUDGET.
DEFAULT_SLICE_SIZE = 16 * 1024
#: Longest the read guards keep the event loop parsing before they let other
#: callbacks run: websockets' slices in one callback; one picows read, after
#: which its reads shrink. With the receive loop's work on what was parsed, a
#: loop iteration under a flood stays within about twice this.
PARSE_BUDGET = 0.03
# What asyncio's socket transport reads at once; read buffers start here.
ASYNCIO_READ_SIZE = 256 * 1024

HeadersLike = Mapping[str, str] | Iterable[tuple[str, str]]


def check_int(where: str, name: str, value: object, minimum: int, *, allow_none: bool = False,
              what: str = "") -> None:
    """Raise unless ``value`` is an ``int`` (not a ``bool``) of at least ``minimum`` (or None if allowed)."""
    if value is None and allow_none:
        return
    expected = f"an int >= {minimum}" + (" or None" if allow_none else "") + what
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{where}: {name} must be {expected}, got {type(value).__name__} {value!r:.60}")
    if value < minimum:
        raise ValueError(f"{where}: {name} must be {expected}, got {value!r}")


def check_seconds(where: str, name: str, value: object) -> None:
    """Raise unless ``value`` is None or a number of seconds > 0."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{where}: {name} must be a number > 0 or None, got {type(value).__name__} {value!r:.60}")
    if not value > 0:
        raise ValueError(f"{where}: {name} must be a number > 0 or None, got {value!r}")


def check_max_queue(where: str, max_queue: object) -> None:
    """Raise unless ``max_queue`` is None, an int >= 1, or a ``(high, low)`` pair with ``0 <= low <= high``."""
    expected = "an int >= 1, a (high, low) pair of ints with 0 <= low <= high, or None"
    if max_queue is None:
        return
    pair = max_queue if isinstance(max_queue, tuple) else (max_queue, None)
    if len(pair) != 2 or any(v is not None and (isinstance(v, bool) or not isinstance(v, int)) for v in pair):
        raise TypeError(f"{where}: max_queue must be {expected}; got {type(max_queue).__name__} {max_queue!r:.60}")
    high, low = water_marks(max_queue)  # type: ignore[arg-type]
    if high < 1 or not 0 <= low <= high:
        raise ValueError(f"{where}: max_queue must be {expected}; got {max_queue!r}")


def water_marks(max_queue: tuple[int | None, int | None] | int | None) -> tuple[int, int]:
    """The receive buffer's ``(high, low)`` marks from websockets' ``max_queue`` (low defaults to high // 4)."""
    if max_queue is None:
        return sys.maxsize, sys.maxsize
    high, low = max_queue if isinstance(max_queue, tuple) else (max_queue, None)
    if high is None:
        return sys.maxsize, sys.maxsize
    return high, high // 4 if low is None else low


def check_read_size(where: str, read_size: object) -> None:
    check_int(where, "read_size", read_size, 1, what=" (bytes per socket read)")


class Interposed(asyncio.BufferedProtocol):
    """Stands between an asyncio transport and the protocol it fed (``inner``), forwarding what it does not change.

    The subclasses decide what a read is; closing, end of file and write flow
    control pass through untouched unless a subclass says otherwise.
    """

    __slots__ = ("_inner", "_limit")

    def __init__(self, inner: Any, limit: int) -> None:
        self._inner = inner
        self._limit = limit

    def eof_received(self) -> bool | None:
        keep_open: bool | None = self._inner.eof_received()
        return keep_open

    def connection_lost(self, exc: Exception | None) -> None:
        self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()
