"""The rules of many subscriptions, without a loop: rate limits, where topics go, how messages split.

Everything here is pure and synchronous, and is tested without an event loop:

* :class:`RateLimit` says how long the next frame (or connection attempt) must
  wait so that no window of ``seconds`` ever holds more than ``count`` of them;
* :func:`place` spreads new topics over shards under a per-connection limit;
* :func:`chunks` splits a shard's topics into messages of at most
  ``max_topics_per_message``;
* :func:`check_rate` and :func:`check_limits` apply the package's one rule for
  options (a wrong type is a TypeError, a wrong range a ValueError).

:mod:`._shards` carries these out in a running client.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping, Sequence
from typing import Any

from ._options import check_int, check_number

__all__ = ["Rate", "RateLimit", "check_limits", "check_rate", "chunks", "place"]

Rate = tuple[int, float]
"""``(count, seconds)``: at most ``count`` in any window of ``seconds``."""

#: How much later than ``seconds`` a spent token comes back, as a fraction of ``seconds``
#: (50 ms of a one-second window): frames travel with jitter, and a venue counts them as
#: they arrive, so two frames sent exactly ``seconds`` apart may land in one of its windows.
RATE_MARGIN = 0.05


class RateLimit:
    """At most ``count`` events in any window of ``seconds``: a spent token comes back ``seconds`` later.

    (Later by ``RATE_MARGIN`` more, so that the venue, which counts frames as
    they arrive, never sees ``count + 1`` in its window when the network bunches them.)

    This is the token bucket that never lets a venue see more than ``count``
    frames in one window, wherever the window starts: a bucket refilled at a
    steady rate would allow up to ``2 * count - 1`` frames in some window (a full
    bucket, then its refill). :meth:`reserve` spends a token at once and returns
    how long its holder must wait before using it, so callers are served in the
    order they asked, and a caller that is cancelled while it waits spends its
    token anyway (never more than ``count``; at worst one frame later than needed).

    Args:
        count: Tokens in the bucket.
        seconds: How long a spent token stays spent (before the margin).
        clock: Monotonic seconds (the loop's ``time``, or a test's fake clock).
        margin: The fraction of ``seconds`` added for safety.
    """

    __slots__ = ("_clock", "_spent", "_window", "count", "seconds")

    def __init__(self, count: int, seconds: float, clock: Callable[[], float], margin: float = RATE_MARGIN) -> None:
        self.count = count
        self.seconds = seconds
        self._window = seconds * (1 + margin)
        self._clock = clock
        # When each of the last ``count`` tokens may be used, oldest first.
        self._spent: collections.deque[float] = collections.deque(maxlen=count)

    def reserve(self) -> float:
        """Spend the next token; return the seconds to wait before the event it pays for (0: now)."""
        now = self._clock()
        at = now
        if len(self._spent) == self.count:
            at = max(now, self._spent[0] + self._window)
        self._spent.append(at)  # the deque's maxlen drops the oldest
        return at - now

    def __repr__(self) -> str:
        return f"RateLimit({self.count}, {self.seconds})"


def check_rate(where: str, name: str, value: object) -> Rate | None:
    """Return ``value`` if it is None or ``(count, seconds)`` with an int count >= 1 and seconds > 0."""
    if value is None:
        return None
    if not isinstance(value, tuple) or len(value) != 2:
        raise TypeError(f"{where}: {name} must be None or (count, seconds), such as (5, 1.0), "
                        f"got {type(value).__name__} {value!r:.60}")
    count = check_int(where, f"{name}'s count", value[0], minimum=1)
    seconds = check_number(where, f"{name}'s seconds", value[1], positive=True)
    assert count is not None
    return count, float(seconds)


def check_limits(where: str, values: Mapping[str, object]) -> dict[str, Any]:
    """Check the four subscription limits (``max_subscriptions_per_connection``, ...); return them checked."""
    return {
        "max_subscriptions_per_connection": check_int(
            where, "max_subscriptions_per_connection", values["max_subscriptions_per_connection"],
            minimum=1, none=True),
        "max_topics_per_message": check_int(
            where, "max_topics_per_message", values["max_topics_per_message"], minimum=1, none=True),
        "send_rate": check_rate(where, "send_rate", values["send_rate"]),
        "connect_rate": check_rate(where, "connect_rate", values["connect_rate"]),
    }


def place(
    topics: Iterable[Hashable],
    loads: Mapping[int, int],
    limit: int | None,
) -> dict[int, list[Hashable]]:
    """Say which shard each new topic goes to; shards are numbered from 0.

    Each topic goes to the least loaded shard that has room (the lowest number
    on a tie), counting the topics placed before it, so that a big subscribe
    spreads evenly (3,000 topics under a limit of 1,024: 1,000 on each of three
    shards) and the client opens as few connections as the limit allows. A new
    shard (the lowest free number) is added only when the open ones are full,
    or when the topics that must still be placed need it to stay even. Topics
    already placed are not moved: moving one would cost its messages in between.

    Args:
        topics: New topics, distinct, in the caller's order.
        loads: Topics per existing shard (shard 0 always exists).
        limit: Topics one connection may carry; None: no limit (everything on shard 0).

    Returns:
        Shard number to its new topics, in the caller's order.
    """
    todo = list(topics)
    out: dict[int, list[Hashable]] = {}
    if limit is None:
        if todo:
            out[0] = todo
        return out
    load = dict(loads)
    load.setdefault(0, 0)
    # As many shards as the whole set needs, so that the spread is even from the start.
    needed = -(-(sum(load.values()) + len(todo)) // limit)
    number = 0
    while len(load) < needed:
        while number in load:
            number += 1
        load[number] = 0
    for topic in todo:
        open_ = [n for n, k in load.items() if k < limit]
        if not open_:
            number = 0
            while number in load:
                number += 1
            load[number] = 0
            open_ = [number]
        target = min(open_, key=lambda n: (load[n], n))
        load[target] += 1
        out.setdefault(target, []).append(topic)
    return out


def chunks(topics: Sequence[Hashable], size: int | None) -> Iterator[list[Hashable]]:
    """Split ``topics`` into lists of at most ``size`` (None: one list), in order; none if empty."""
    if not topics:
        return
    step = len(topics) if size is None else size
    for start in range(0, len(topics), step):
        yield list(topics[start:start + step])
