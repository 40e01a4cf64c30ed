"""One-shot expectations: the awaitable behind ``expect``, ``wait_for`` and ``request``.

An expectation is just another target of the client's filter index: it rides on
the same dispatch as streams, so a reply costs one bucket look-up, and it removes
itself from the index the moment it settles.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Generator
from typing import Any, Generic, TypeVar

from ._dispatch import Clause, matches
from .exceptions import Alarm

__all__ = ["Expectation"]

M = TypeVar("M")


class Expectation(Generic[M]):
    """A registered wait for the first later message matching a condition.

    Returned by :meth:`AsyncWsStream.expect`. Await it to get the message.

    It is registered when it is made, so a message that arrives before the first
    ``await`` still counts. Awaiting raises :exc:`~async_ws_stream.Alarm` when a
    message matches an alarm first (a message matching both is an alarm),
    :exc:`~async_ws_stream.Timeout` when its timeout runs out, and
    :exc:`~async_ws_stream.ClientClosed` after ``exit()``.

    Cancelling the task that awaits it removes the expectation at once;
    :meth:`cancel` does the same without a task.
    """

    __slots__ = ("_alarms", "_fut", "_on_settle", "_timer", "_until", "connection", "subscription")

    def __init__(
        self,
        until: tuple[Clause, ...],
        alarms: tuple[Clause, ...],
        on_settle: Callable[[Expectation[M]], None],
    ) -> None:
        self._until = until
        self._alarms = alarms
        self._on_settle = on_settle
        self._fut: asyncio.Future[M] = asyncio.get_running_loop().create_future()
        self._fut.add_done_callback(self._settled)
        self._timer: asyncio.TimerHandle | None = None
        #: The connection a request went out on (None for a plain expectation).
        self.connection: Any = None
        #: The client's index handle.
        self.subscription: Any = None

    def __repr__(self) -> str:
        state = "pending" if not self._fut.done() else "settled"
        return f"<Expectation until={[c.source for c in self._until]!r} {state}>"

    def __await__(self) -> Generator[Any, None, M]:
        return self._fut.__await__()

    def done(self) -> bool:
        """True once the expectation has a result, an error, or was cancelled."""
        return self._fut.done()

    def cancel(self) -> None:
        """Stop waiting and unregister. Idempotent."""
        self._fut.cancel()

    def _feed(self, msg: M) -> None:
        if self._fut.done():
            return
        for clause in self._alarms:
            if clause.matches(msg):
                self.fail(Alarm(msg, clause.source))
                return
        if matches(self._until, msg):
            self._fut.set_result(msg)

    def fail(self, error: BaseException) -> None:
        """Settle with ``error`` unless already settled."""
        if not self._fut.done():
            self._fut.set_exception(error)

    def fail_after(self, delay: float, make_error: Callable[[], BaseException]) -> None:
        """Fail with ``make_error()`` if still pending after ``delay`` seconds."""
        self._timer = self._fut.get_loop().call_later(delay, lambda: self.fail(make_error()))

    def _settled(self, fut: asyncio.Future[M]) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if not fut.cancelled():
            # Whoever made the expectation may have stopped caring (a cancelled
            # request, an un-awaited expect); the error is theirs, not the loop's.
            fut.exception()
        self._on_settle(self)
