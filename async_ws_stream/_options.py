"""Defaults, and the checks every public call applies to its arguments.

One rule for every check, everywhere in the package: a value of the wrong *type*
raises :exc:`TypeError`; a value of the right type that is out of range raises
:exc:`ValueError`. Either message names the call, the argument and the value
given, and says what is accepted. ``bool`` is never taken for a number.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from typing import Literal

__all__ = [
    "DEFAULT_BACKOFF_FACTOR",
    "DEFAULT_BACKOFF_INITIAL",
    "DEFAULT_BACKOFF_JITTER",
    "DEFAULT_BACKOFF_MAX",
    "DEFAULT_EVENTS_MAXSIZE",
    "DEFAULT_FATAL_CLOSE_CODES",
    "DEFAULT_HANDLER_MAXSIZE",
    "DEFAULT_MAXSIZE",
    "DEFAULT_REQUEST_TIMEOUT",
    "DEFAULT_SEND_TIMEOUT",
    "DEFAULT_STABLE_AFTER",
    "DEFAULT_SUBSCRIBE_TIMEOUT",
    "Default",
    "EXIT_GRACE",
    "IDLE_COUNTS",
    "IdleCounts",
    "OVERFLOW_POLICIES",
    "Overflow",
    "check_buffer",
    "check_choice",
    "check_close_codes",
    "check_int",
    "check_number",
    "check_timeout",
]

# Streams
DEFAULT_MAXSIZE = 10_000
DEFAULT_HANDLER_MAXSIZE = DEFAULT_MAXSIZE
DEFAULT_EVENTS_MAXSIZE = 1000
Overflow = Literal["error", "drop_oldest", "drop_newest"]
OVERFLOW_POLICIES: tuple[str, ...] = ("error", "drop_oldest", "drop_newest")

# Reconnection: see _backoff.backoff_delays for the formula they feed.
DEFAULT_BACKOFF_INITIAL = 0.5
DEFAULT_BACKOFF_FACTOR = 2.0
DEFAULT_BACKOFF_MAX = 30.0
DEFAULT_BACKOFF_JITTER = 0.5
DEFAULT_STABLE_AFTER = 5.0

# Close codes that end the client instead of being retried (fatal_close_codes=):
# 1008 (policy violation) and the application range 4000-4999.
DEFAULT_FATAL_CLOSE_CODES: frozenset[int] = frozenset({1008, *range(4000, 5000)})

# What resets the idle_timeout watchdog (idle_counts=): data frames only, or also a
# pong to the ping the watchdog sends when the data has been quiet.
IdleCounts = Literal["data", "pongs"]
IDLE_COUNTS: tuple[str, ...] = ("data", "pongs")

# Talking to the server
DEFAULT_SEND_TIMEOUT = 10.0
DEFAULT_REQUEST_TIMEOUT = 10.0
DEFAULT_SUBSCRIBE_TIMEOUT = 60.0  # the whole subscribe/unsubscribe call: paced sends add up

# How long exit() lets the server answer our close frame, and async handlers
# finish what they hold, before it stops waiting.
EXIT_GRACE = 1.0


class Default(enum.Enum):
    """Marks "the default" of an argument where None already means "no limit" (``timeout=None``)."""

    TIMEOUT = "timeout"
    CLASS = "the class attribute"


def _got(value: object) -> str:
    return f"{type(value).__name__} {value!r:.60}"


def check_number(
    where: str,
    name: str,
    value: object,
    *,
    positive: bool = False,
    at_most: float | None = None,
) -> float:
    """Return ``value`` if it is a real number ``>= 0`` (``> 0`` if ``positive``, ``<= at_most``).

    Raises:
        TypeError: not an int or float (NaN counts as not a number).
        ValueError: out of range.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        raise TypeError(f"{where}: {name} must be a number, got {_got(value)}")
    if value < 0 or (positive and value == 0):
        bound = "> 0" if positive else ">= 0"
        raise ValueError(f"{where}: {name} must be {bound}, got {value!r}")
    if at_most is not None and value > at_most:
        raise ValueError(f"{where}: {name} must be <= {at_most:g}, got {value!r}")
    return value


def check_timeout(where: str, value: object, *, name: str = "timeout") -> float | None:
    """Return ``value`` if it is None (no limit) or a number of seconds ``>= 0``."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        raise TypeError(f"{where}: {name} must be None or a number of seconds, got {_got(value)}")
    return check_number(where, name, value)


def check_int(where: str, name: str, value: object, *, minimum: int = 0, none: bool = False) -> int | None:
    """Return ``value`` if it is an int ``>= minimum`` (or None when ``none`` allows it)."""
    if value is None and none:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        accepted = f"None or an int >= {minimum}" if none else f"an int >= {minimum}"
        raise TypeError(f"{where}: {name} must be {accepted}, got {_got(value)}")
    if value < minimum:
        raise ValueError(f"{where}: {name} must be >= {minimum}, got {value!r}")
    return value


def check_buffer(where: str, maxsize: object, overflow: object) -> None:
    """Check a stream's buffer options: ``maxsize`` an int >= 1, ``overflow`` a known policy."""
    if isinstance(maxsize, bool) or not isinstance(maxsize, int):
        raise TypeError(f"{where}: maxsize must be an int >= 1, got {_got(maxsize)}")
    if maxsize < 1:
        raise ValueError(f"{where}: maxsize must be >= 1, got {maxsize!r}; every stream needs a bounded buffer")
    if not isinstance(overflow, str):
        raise TypeError(f"{where}: overflow must be one of {', '.join(map(repr, OVERFLOW_POLICIES))}, "
                        f"got {_got(overflow)}")
    if overflow not in OVERFLOW_POLICIES:
        raise ValueError(
            f"{where}: overflow must be one of {', '.join(map(repr, OVERFLOW_POLICIES))}, got {overflow!r}"
        )


def check_choice(where: str, name: str, value: object, choices: tuple[str, ...]) -> str:
    """Return ``value`` if it is one of the strings ``choices``."""
    accepted = ", ".join(map(repr, choices))
    if not isinstance(value, str):
        raise TypeError(f"{where}: {name} must be one of {accepted}, got {_got(value)}")
    if value not in choices:
        raise ValueError(f"{where}: {name} must be one of {accepted}, got {value!r}")
    return value


def check_close_codes(where: str, value: object) -> frozenset[int]:
    """Return ``value`` as a frozenset if it is a collection of close codes (ints in 1000-4999).

    A set, frozenset, list, tuple or range; an empty one makes no close code fatal.
    """
    if isinstance(value, (str, bytes)) or not isinstance(value, (set, frozenset, list, tuple, range)):
        raise TypeError(
            f"{where}: fatal_close_codes must be a set of ints (close codes 1000-4999), got {_got(value)}; "
            "e.g. {1008, 4400, 4401, 4403}"
        )
    codes: Iterable[object] = value
    for code in codes:
        if isinstance(code, bool) or not isinstance(code, int):
            raise TypeError(f"{where}: fatal_close_codes must hold ints, got {_got(code)} in it")
        if not 1000 <= code <= 4999:
            raise ValueError(f"{where}: fatal_close_codes must hold close codes 1000-4999, got {code!r} in it")
    return frozenset(value)
