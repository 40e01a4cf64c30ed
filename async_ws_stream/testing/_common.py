"""What the test servers share: defaults, argument checks, frame encoding, change notification."""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Awaitable, Callable, Generator
from typing import Any

from ..exceptions import Timeout

DEFAULT_MAX_SIZE = 2**20
DEFAULT_PING_INTERVAL = 20.0
DEFAULT_CLOSE_TIMEOUT = 2.0
DEFAULT_WAIT_TIMEOUT = 5.0

Frame = str | bytes


def encode(msg: Any) -> Frame:
    """Return the frame for ``msg``: str and bytes as they are, anything else as compact JSON."""
    if isinstance(msg, (str, bytes)):
        return msg
    if isinstance(msg, (bytearray, memoryview)):
        return bytes(msg)
    return json.dumps(msg, separators=(",", ":"))


def check_count(where: str, n: object, name: str = "n") -> int:
    """Return ``n`` if it is an int >= 0, else raise ValueError naming ``where`` and the value."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"{where}: {name} must be an int >= 0, got {type(n).__name__} {n!r}")
    return n


def check_seconds(where: str, name: str, value: object) -> float:
    """Return ``value`` as a float if it is a finite number >= 0, else raise ValueError."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{where}: {name} must be a finite number of seconds >= 0, got {value!r}")
    return float(value)


class Changes:
    """Wakes every waiter at each change of state; waiters re-check their predicate.

    The event is replaced by a fresh one at each change: waiters hold the old
    one, so a single ``set()`` wakes all of them without a lock.
    """

    __slots__ = ("_event",)

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def notify(self) -> None:
        """Wake every current waiter."""
        self._event.set()
        self._event = asyncio.Event()

    async def wait(
        self,
        predicate: Callable[[], bool],
        timeout: float | None,
        describe: Callable[[], str],
        stopped: Callable[[], str | None],
    ) -> None:
        """Return once ``predicate()`` is true, checked now and after every change.

        ``stopped()`` returns a name for the owner when it can no longer
        change (the wait then fails with RuntimeError), else None.

        Raises:
            async_ws_stream.exceptions.Timeout: After ``timeout`` seconds, with ``describe()``.
            RuntimeError: If the owner stopped while the predicate is false.
        """
        try:
            async with asyncio.timeout(timeout):
                while not predicate():
                    owner = stopped()
                    if owner is not None:
                        raise RuntimeError(f"{owner} stopped while waiting; {describe()}")
                    await self._event.wait()
        except TimeoutError as exc:
            raise Timeout(describe()) from exc


class Applied:
    """What :meth:`FeedServer.drop`, :meth:`~FeedServer.stall` and :meth:`~FeedServer.unstall` return.

    The fault is applied when the call returns, so ``server.stall()`` and
    ``server.drop()`` work as plain calls. Awaiting the result returns once
    the fault's effect is complete: for ``drop()``, once the dropped
    connections are gone from :attr:`~FeedServer.connections`; for the others
    at once. So ``await server.drop()`` and ``await server.stall()`` work too.
    Awaiting is optional and may be repeated; cancelling the await is safe
    and undoes nothing.
    """

    __slots__ = ("_complete",)

    def __init__(self, complete: Callable[[], Awaitable[None]] | None = None) -> None:
        self._complete = complete

    def __await__(self) -> Generator[Any, None, None]:
        # The coroutine is made only when awaited, so an Applied left unawaited
        # never warns "coroutine was never awaited".
        return self._wait().__await__()

    async def _wait(self) -> None:
        if self._complete is not None:
            await self._complete()

    def __repr__(self) -> str:
        return "<Applied>"
