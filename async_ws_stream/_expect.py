"""One-shot expectations: the awaitable behind ``expect``, ``wait_for`` and ``request``.

An expectation is just another target of the client's filter index: it rides on
the same dispatch as streams, so a reply costs one bucket look-up. It leaves the
index the moment it settles (result, error or cancellation), synchronously, so
that a cancelled or answered wait never sees another message and never lingers
in ``stats()["pending"]``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Generator
from typing import Any, Generic, TypeVar

from ._filters import Clause, OnError
from .exceptions import Alarm

__all__ = ["Expectation"]

M = TypeVar("M")


class _Waiter(asyncio.Future[M]):
    """The future an expectation is awaited through.

    ``Task.cancel()`` cancels the future its task is waiting on by calling that
    future's ``cancel`` method, so overriding it is how cancelling the *task*
    that awaits an expectation unregisters the expectation in the same call,
    instead of from a done-callback one loop iteration later.
    """

    def __init__(self, on_cancel: Callable[[], None]) -> None:
        super().__init__()
        self._on_cancel = on_cancel

    def cancel(self, msg: Any | None = None) -> bool:
        cancelled = super().cancel(msg)
        if cancelled:
            self._on_cancel()
        return cancelled


class Expectation(Generic[M]):
    """A registered wait for the first later message matching a condition.

    Returned by :meth:`AsyncWsStream.expect`; await it to get the message.

    It is registered when it is made, so a message dispatched before the first
    ``await`` still counts; a message dispatched before it was made never does.
    Awaiting raises :exc:`~async_ws_stream.Alarm` when a message matches an alarm
    first (a message matching both is an alarm), :exc:`~async_ws_stream.Timeout`
    when its timeout runs out, and :exc:`~async_ws_stream.ClientClosed` after
    ``exit()``.

    It may be awaited any number of times, by any number of tasks; all see the
    same outcome. Cancelling a task that awaits it cancels the expectation and
    unregisters it before ``Task.cancel()`` returns; :meth:`cancel` does the same
    without a task. An expectation that is never awaited stays registered until
    it settles: cancel it, or give it a timeout, if you stop caring.
    """

    __slots__ = ("_alarms", "_fut", "_on_error", "_on_settle", "_timer", "_until")

    def __init__(
        self,
        until: tuple[Clause, ...],
        alarms: tuple[Clause, ...],
        on_settle: Callable[[Expectation[M]], None],
        *,
        on_error: OnError | None = None,
    ) -> None:
        """Make a pending expectation; the caller files it in its index (see ``Conversations``).

        Args:
            until: The compiled success condition.
            alarms: The compiled alarm conditions; ``()`` for none.
            on_settle: Called once, synchronously, when the expectation settles.
            on_error: Receives errors of alarm predicates, which then count as no match.
        """
        self._until = until
        self._alarms = alarms
        self._on_settle: Callable[[Expectation[M]], None] | None = on_settle
        self._on_error = on_error
        self._fut: _Waiter[M] = _Waiter(self._settle)
        self._timer: asyncio.TimerHandle | None = None

    def __repr__(self) -> str:
        state = "pending" if not self._fut.done() else "settled"
        return f"<Expectation until={[c.source for c in self._until]!r} {state}>"

    def __await__(self) -> Generator[Any, None, M]:
        return self._fut.__await__()

    def done(self) -> bool:
        """Return True once the expectation has a result, an error, or was cancelled."""
        return self._fut.done()

    def cancel(self) -> None:
        """Stop waiting and unregister at once; tasks awaiting it get ``CancelledError``. Idempotent."""
        self._fut.cancel()

    def deliver(self, msg: M) -> None:
        """Settle with ``msg``, or with :exc:`Alarm` if it matches an alarm (called by dispatch)."""
        # The index hands us only messages that match ``until`` or an alarm, so
        # when no alarm matches, ``until`` did: it is not evaluated a second time
        # (its predicates run once per message, as for a stream).
        if self._fut.done():
            return
        for clause in self._alarms:
            if clause.matches(msg, self._on_error):
                self.fail(Alarm(msg, clause.source))
                return
        self._fut.set_result(msg)
        self._settle()

    def fail(self, error: BaseException) -> None:
        """Settle with ``error`` unless already settled, and unregister."""
        if self._fut.done():
            return
        self._fut.set_exception(error)
        # Whoever made the expectation may have stopped caring (a cancelled request,
        # an expect never awaited): the error is theirs to see, not the loop's to log.
        self._fut.exception()
        self._settle()

    def fail_after(self, delay: float, make_error: Callable[[], BaseException]) -> None:
        """Fail with ``make_error()`` if still pending after ``delay`` seconds."""
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._fut.get_loop().call_later(delay, lambda: self.fail(make_error()))

    def _settle(self) -> None:
        """Unregister, once: stop the timer and tell the client."""
        on_settle, self._on_settle = self._on_settle, None
        if on_settle is None:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        on_settle(self)
