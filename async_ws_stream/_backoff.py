"""Pure retry policy: the delays between reconnect attempts, and which failures are final.

Nothing here awaits or does I/O, so the whole policy is tested without a loop.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime

from websockets.exceptions import ConnectionClosed, InvalidStatus

from .exceptions import ConnectionRejected

__all__ = [
    "DEFAULT_BACKOFF_FACTOR",
    "DEFAULT_BACKOFF_INITIAL",
    "DEFAULT_BACKOFF_JITTER",
    "DEFAULT_BACKOFF_MAX",
    "FATAL_CLOSE_CODES",
    "FATAL_STATUSES",
    "MAX_RETRY_AFTER",
    "backoff_delays",
    "fatal_error",
    "retry_after",
]

DEFAULT_BACKOFF_INITIAL = 0.5
DEFAULT_BACKOFF_FACTOR = 2.0
DEFAULT_BACKOFF_MAX = 30.0
DEFAULT_BACKOFF_JITTER = 0.5

FATAL_STATUSES = frozenset({401, 403})
FATAL_CLOSE_CODES = frozenset({1008})  # plus the application range 4000-4999

# A Retry-After longer than this is taken as this: a server (or a proxy in front
# of it) that asks for days would otherwise park the client silently for days.
MAX_RETRY_AFTER = 3600.0

# RFC 9110 delay-seconds is 1*DIGIT in ASCII; str.isdigit() also admits "²" and
# other digits float() cannot read, and header values are decoded as Latin-1.
_DELAY_SECONDS = re.compile(r"[0-9]+", re.ASCII)


def backoff_delays(
    initial: float = DEFAULT_BACKOFF_INITIAL,
    factor: float = DEFAULT_BACKOFF_FACTOR,
    maximum: float = DEFAULT_BACKOFF_MAX,
    jitter: float = DEFAULT_BACKOFF_JITTER,
    *,
    random: Callable[[], float] = random.random,
) -> Iterator[float]:
    """Yield the delay before each retry, forever.

    The first retry is immediate (0.0). Retry ``n >= 2`` waits::

        base(n)  = min(maximum, initial * factor ** (n - 2))
        delay(n) = base(n) * (1 - jitter * U),   U uniform in [0, 1)

    so jitter only ever shortens a delay and ``maximum`` is a true bound.
    ``initial=0`` turns backoff off, which is handy in tests.
    """
    yield 0.0
    base = initial
    while True:
        yield min(base, maximum) * (1.0 - jitter * random())
        base = min(base * factor, maximum)


def fatal_error(exc: BaseException) -> ConnectionRejected | None:
    """Return the error to end the client with when ``exc`` must not be retried, else None.

    A handshake answered 401 or 403 (bad credentials, banned key) and a close
    code 1008 or 4000-4999 (the server's own "go away") will not get better by
    retrying. Everything else (network errors, 5xx, 429, other closes) is retried.
    """
    if isinstance(exc, InvalidStatus):
        status = exc.response.status_code
        if status in FATAL_STATUSES:
            return ConnectionRejected(
                f"server refused the handshake with HTTP {status}; check the credentials "
                "or override _is_fatal() to keep retrying",
                status=status,
            )
        return None
    if isinstance(exc, ConnectionClosed):
        frame = exc.rcvd
        if frame is not None and (frame.code in FATAL_CLOSE_CODES or 4000 <= frame.code <= 4999):
            return ConnectionRejected(
                f"server closed the connection with code {frame.code} ({frame.reason or 'no reason'}); "
                "override _is_fatal() to keep retrying",
                close_code=frame.code,
            )
    return None


def retry_after(exc: BaseException, *, now: datetime | None = None) -> float | None:
    """Seconds the server asked us to wait in a ``Retry-After`` header of a refused handshake.

    Both forms of RFC 9110 are read: delay-seconds (``"120"``) and an HTTP-date
    (``"Wed, 21 Oct 2015 07:28:00 GMT"``; a date in the past means 0). The result
    is capped at :data:`MAX_RETRY_AFTER`. Anything else (no header, not a refused
    handshake, a value that is neither form) gives None: the header is advice,
    and a malformed one must never stop the client from retrying.

    Args:
        exc: What the connection attempt raised.
        now: The current time, for tests; default: now, in UTC.
    """
    if not isinstance(exc, InvalidStatus):
        return None
    value = exc.response.headers.get("Retry-After")
    if value is None:
        return None
    value = value.strip()
    if _DELAY_SECONDS.fullmatch(value):
        # float() of a 400-digit string is inf, hence the cap before min().
        seconds = float(value)
    else:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
        if when.tzinfo is None:
            # "-0000" dates parse naive; HTTP-dates are always UTC.
            when = when.replace(tzinfo=timezone.utc)
        seconds = (when - (now or datetime.now(timezone.utc))).total_seconds()
    if not math.isfinite(seconds):
        return MAX_RETRY_AFTER
    return min(max(0.0, seconds), MAX_RETRY_AFTER)
