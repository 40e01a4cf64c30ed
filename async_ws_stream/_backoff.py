"""Pure retry policy: when to try a connection again, how long to wait first, when to stop.

Nothing here awaits, sleeps or reads a clock: the supervisor tells the policy what
happened (an attempt failed, a connection lasted so long, a recycle was asked for
at such an age) and the policy answers with a delay or a verdict. So the whole
policy is tested without an event loop, like ``websockets.client.backoff()``.

One :class:`RetryPolicy` serves both ways a client opens a connection: a reconnect
after a loss, and the successor of a recycle.
"""

from __future__ import annotations

import math
import random as _random
import re
import ssl
from collections.abc import Callable, Container, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime

from websockets.exceptions import ConnectionClosed, InvalidStatus, InvalidURI

from ._options import (
    DEFAULT_BACKOFF_FACTOR,
    DEFAULT_BACKOFF_INITIAL,
    DEFAULT_BACKOFF_JITTER,
    DEFAULT_BACKOFF_MAX,
    DEFAULT_FATAL_CLOSE_CODES,
    DEFAULT_STABLE_AFTER,
    check_int,
    check_number,
)
from ._redact import describe
from .exceptions import AsyncWsStreamError, ConnectionRejected, RetriesExhausted

__all__ = [
    "DEFAULT_BACKOFF_FACTOR",
    "DEFAULT_BACKOFF_INITIAL",
    "DEFAULT_BACKOFF_JITTER",
    "DEFAULT_BACKOFF_MAX",
    "FATAL_CLOSE_CODES",
    "FATAL_STATUSES",
    "MAX_RETRY_AFTER",
    "GiveUp",
    "HookMisuse",
    "Retry",
    "RetryPolicy",
    "backoff_delays",
    "fatal_error",
    "retry_after",
]

FATAL_STATUSES = frozenset({401, 403})
FATAL_CLOSE_CODES = DEFAULT_FATAL_CLOSE_CODES  # 1008 and the application range 4000-4999

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
    random: Callable[[], float] = _random.random,
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


class HookMisuse(RuntimeError):
    """A hook used the client in a way that can never work (``wait_for`` inside ``_on_connect``).

    Fatal, like a programming error: every attempt would fail the same way.
    """


# Raised by code, not by the network: a bug in a hook, or a dependency that is not
# installed. The same call fails the same way on every attempt.
_PROGRAMMING_ERRORS = (TypeError, AttributeError, NameError, NotImplementedError, ImportError, HookMisuse)


def fatal_error(
    exc: BaseException, *, close_codes: Container[int] = DEFAULT_FATAL_CLOSE_CODES
) -> ConnectionRejected | None:
    """Return the error to end the client with when ``exc`` must not be retried, else None.

    These will not get better by retrying, so they end the client at once:

    * a handshake answered 401 or 403 (bad credentials, banned key);
    * a close code in ``close_codes`` (the client's ``fatal_close_codes``; by default
      1008 and 4000-4999, the server's own "go away");
    * an invalid URI (``http://...``, a typo), and a TLS certificate that fails
      verification;
    * a programming error raised by a hook (``TypeError``, ``AttributeError``,
      ``NameError``, ``NotImplementedError``, ``ImportError``), or a hook that used the
      client where it cannot work (:class:`HookMisuse`).

    Everything else (network errors, timeouts, 5xx, 429, other closes) is retried.
    """
    if isinstance(exc, InvalidURI):
        return ConnectionRejected(
            f"the URI is not a websocket URI ({describe(exc)}); fix the URL that _create_ws connects to",
        )
    if isinstance(exc, ssl.SSLCertVerificationError):
        return ConnectionRejected(
            f"the server's TLS certificate failed verification ({describe(exc)}); fix the certificate "
            "or the ssl context given to connect, or override _is_fatal() to keep retrying",
        )
    if isinstance(exc, _PROGRAMMING_ERRORS):
        return ConnectionRejected(
            f"opening a connection raised {describe(exc)}: a bug in _create_ws or _on_connect, or a "
            "missing dependency, which retrying cannot fix",
        )
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
        if frame is not None and frame.code in close_codes:
            return ConnectionRejected(
                f"server closed the connection with code {frame.code} ({frame.reason or 'no reason'}); "
                "leave it out of fatal_close_codes= (or override _is_fatal()) to keep retrying",
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


@dataclass(frozen=True, slots=True)
class Retry:
    """The verdict on a failed attempt: try again after ``delay`` seconds.

    Attributes:
        attempt: How many consecutive attempts have failed, this one included (1, 2, ...).
        delay: Seconds to wait before the next attempt (0.0 for the first retry).
        cause: What the failed attempt raised, or why the connection ended.
    """

    attempt: int
    delay: float
    cause: BaseException


@dataclass(frozen=True, slots=True)
class GiveUp:
    """The verdict on a failed attempt: stop; end the client with ``error``.

    ``error`` is a :exc:`ConnectionRejected` (the failure is fatal) or a
    :exc:`RetriesExhausted` (``max_retries`` ran out), with the failure chained
    as its ``__cause__``.
    """

    error: AsyncWsStreamError


class RetryPolicy:
    """Counts failed attempts, spaces them out, and decides when to stop. Pure: no clock, no I/O.

    The supervisor reports three things; the policy answers each:

    * :meth:`failed`: an attempt to open a connection failed (``_create_ws`` or
      ``_on_connect`` raised), or a connection ended. The answer is a
      :class:`GiveUp` when the failure is fatal (``is_fatal``) or when
      ``max_retries`` consecutive attempts have already failed; else a
      :class:`Retry` with the delay, ``backoff_delays`` and the server's
      ``Retry-After`` (the longer of the two).
    * :meth:`lasted`: a connection stayed up ``uptime`` seconds before it ended
      (by loss) or before its recycle was asked for. At ``stable_after`` or more,
      the count and the delays start over; less, and the connection counts for
      nothing, so a server that accepts and drops cannot cause a storm.
    * :meth:`recycle_delay`: the recycle trigger fired at a connection's ``age``.
      On time (``stable_after`` or more) it resets the count, as :meth:`lasted` does.
      A trigger that fires sooner than ``stable_after`` (one that raises or
      returns at once, every time) is paced by the same delays, so it cannot
      open connections in a tight loop; it does not spend ``max_retries``,
      since the connection it would replace is still serving.

    The same counter serves reconnects and the successors of recycles: a
    recycle whose new connection keeps failing gives up the client after
    ``max_retries`` attempts, exactly as a reconnect does.

    Args:
        initial, factor, maximum, jitter: The delays; see :func:`backoff_delays`.
        max_retries: Consecutive failed attempts allowed; None: no limit.
        stable_after: Seconds a connection must last to reset the count.
        is_fatal: Decides which failures end the client (default :func:`fatal_error`).
        random: The source of jitter, for tests.
        where: Names the caller in the errors of a bad argument.

    Raises:
        TypeError, ValueError: a bad argument (``_options``' one rule), named in the message.
    """

    __slots__ = (
        "_delays",
        "_is_fatal",
        "_random",
        "attempts",
        "factor",
        "initial",
        "jitter",
        "max_retries",
        "maximum",
        "stable_after",
    )

    def __init__(
        self,
        *,
        initial: float = DEFAULT_BACKOFF_INITIAL,
        factor: float = DEFAULT_BACKOFF_FACTOR,
        maximum: float = DEFAULT_BACKOFF_MAX,
        jitter: float = DEFAULT_BACKOFF_JITTER,
        max_retries: int | None = None,
        stable_after: float = DEFAULT_STABLE_AFTER,
        is_fatal: Callable[[BaseException], ConnectionRejected | None] = fatal_error,
        random: Callable[[], float] = _random.random,
        where: str = "RetryPolicy",
    ) -> None:
        check_number(where, "backoff_initial", initial)
        check_number(where, "backoff_factor", factor)
        if factor < 1:
            raise ValueError(f"{where}: backoff_factor must be >= 1, got {factor!r}")
        check_number(where, "backoff_max", maximum)
        check_number(where, "backoff_jitter", jitter, at_most=1)
        check_int(where, "max_retries", max_retries, none=True)
        check_number(where, "stable_after", stable_after)
        self.initial = initial
        self.factor = factor
        self.maximum = maximum
        self.jitter = jitter
        self.max_retries = max_retries
        self.stable_after = stable_after
        self._is_fatal = is_fatal
        self._random = random
        #: Consecutive failed attempts since a connection last stayed up ``stable_after``.
        self.attempts = 0
        self._delays = self._fresh_delays()

    def __repr__(self) -> str:
        return f"<RetryPolicy attempts={self.attempts} max_retries={self.max_retries}>"

    def fresh(self) -> RetryPolicy:
        """A policy with the same settings and nothing counted yet (one per shard)."""
        return RetryPolicy(
            initial=self.initial, factor=self.factor, maximum=self.maximum, jitter=self.jitter,
            max_retries=self.max_retries, stable_after=self.stable_after, is_fatal=self._is_fatal,
            random=self._random,
        )

    def _fresh_delays(self) -> Iterator[float]:
        return backoff_delays(self.initial, self.factor, self.maximum, self.jitter, random=self._random)

    def failed(self, cause: BaseException) -> Retry | GiveUp:
        """Judge one failed attempt (or the end of a connection); see the class docstring."""
        fatal = self._is_fatal(cause)
        if fatal is not None:
            fatal.__cause__ = cause
            return GiveUp(fatal)
        if self.max_retries is not None and self.attempts >= self.max_retries:
            retries = "1 retry" if self.attempts == 1 else f"{self.attempts} retries"
            error = RetriesExhausted(f"gave up after {retries}; last failure: {describe(cause)}")
            error.__cause__ = cause
            return GiveUp(error)
        self.attempts += 1
        return Retry(self.attempts, max(next(self._delays), retry_after(cause) or 0.0), cause)

    def lasted(self, uptime: float) -> bool:
        """Note that a connection stayed up ``uptime`` seconds; return True if that reset the count."""
        if uptime < self.stable_after:
            return False
        self.attempts = 0
        self._delays = self._fresh_delays()
        return True

    def recycle_delay(self, age: float) -> float | None:
        """Pace a recycle asked for at a connection's ``age`` (seconds).

        Returns None when the recycle is on time (``age >= stable_after``: the
        count starts over and the successor opens at once), else the seconds to
        wait before opening the successor, the next of the delays (0.0 the first
        time, as for a first retry).
        """
        if self.lasted(age):
            return None
        return next(self._delays)
