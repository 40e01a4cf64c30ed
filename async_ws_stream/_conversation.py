"""Conversations with the server: request, expect and poll.

Every wait is an :class:`~._expect.Expectation` filed in the client's index, so a
reply costs the pump one bucket look-up, like any stream. The
:class:`Conversations` of a client owns them all: it files each one, forgets it
the moment it settles (synchronously, so ``stats()["pending"]`` never lags), and
fails the requests in flight on a connection the moment the supervisor says that
connection will carry no more replies.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Generic, TypeVar

from loguru import logger

from ._dispatch import Index, Subscription, Target
from ._expect import Expectation
from ._filters import Clause, OnError, compile_condition
from ._options import check_int, check_number, check_timeout
from ._redact import describe
from ._supervisor import Link
from .exceptions import Alarm, ConnectionLost, RetriesExhausted, Timeout

__all__ = ["Conversations", "compile_alarms"]

M = TypeVar("M")


def compile_alarms(alarms: object, where: str) -> tuple[Clause, ...]:
    """Compile ``alarms``: None or an empty list means none."""
    if alarms is None or (isinstance(alarms, (list, tuple)) and not alarms):
        return ()
    return compile_condition(alarms, argname=f"{where}: alarms")


class Conversations(Generic[M]):
    """The pending waits of one client, and the calls that make them.

    Args:
        index: The client's index; waits are filed there like streams.
        on_error: Receives the errors of user predicates (they count as no match).
        serialize: The client's ``_serialize``.
        connection: Waits for the connection to send on (raises what the client
            raises when there will be none: ``ClientClosed``, or why it gave up).
        no_connection: The :exc:`Timeout` for a call whose wait for a connection
            ran out (it names the last connection failure).
        refusal: The error the client gave up with, if it did, else None.
    """

    def __init__(
        self,
        *,
        index: Index[Target],
        on_error: OnError,
        serialize: Callable[[Any], str | bytes],
        connection: Callable[[str], Awaitable[Link]],
        no_connection: Callable[[str, float | None], Timeout],
        refusal: Callable[[], BaseException | None],
    ) -> None:
        self._index = index
        self._on_error = on_error
        self._serialize = serialize
        self._connection = connection
        self._no_connection = no_connection
        self._refusal = refusal
        self._waits: dict[Expectation[M], Subscription[Target]] = {}
        self._in_flight: dict[Link, set[Expectation[M]]] = {}
        self._ids = itertools.count(1)

    def __len__(self) -> int:
        """Return how many waits are pending (``stats()["pending"]``)."""
        return len(self._waits)

    # -- filing ----------------------------------------------------------------------------

    def expect(
        self, until: tuple[Clause, ...], alarms: tuple[Clause, ...], timeout: float | None, *, on: Link | None = None
    ) -> Expectation[M]:
        """File a wait for ``until``; ``on`` is the connection a request went out on."""
        expectation: Expectation[M] = Expectation(
            until, alarms, lambda e: self._forget(e, on), on_error=self._on_error
        )
        self._waits[expectation] = self._index.add(until + alarms, expectation)
        if on is not None:
            self._in_flight.setdefault(on, set()).add(expectation)
        refusal = self._refusal()
        if refusal is not None:
            # The client gave up: no message will ever come, so say why now.
            expectation.fail(refusal)
        elif timeout is not None:
            expectation.fail_after(timeout, lambda: Timeout(f"expect: no matching message within {timeout}s"))
        return expectation

    def _forget(self, expectation: Expectation[M], on: Link | None) -> None:
        # Called by the expectation itself, synchronously, the moment it settles.
        subscription = self._waits.pop(expectation, None)
        if subscription is not None:
            self._index.remove(subscription)
        if on is not None:
            requests = self._in_flight.get(on)
            if requests is not None:
                requests.discard(expectation)
                if not requests:
                    del self._in_flight[on]

    def connection_closed(self, conn: Link) -> None:
        """Fail every request in flight on ``conn``: it will carry no more replies."""
        for expectation in list(self._in_flight.pop(conn, ())):
            expectation.fail(ConnectionLost(
                f"connection #{conn.number} closed before the reply arrived; the request may or may not "
                "have been processed"
            ))

    def fail_all(self, make_error: Callable[[], BaseException]) -> None:
        """Fail every pending wait with a fresh ``make_error()`` (exit, or the client gave up)."""
        for expectation in list(self._waits):
            expectation.fail(make_error())

    # -- the calls -------------------------------------------------------------------------

    async def request(self, msg: Mapping[str, Any], timeout: float | None, key: str) -> M:
        """See :meth:`AsyncWsStream.request`."""
        if not isinstance(msg, Mapping):
            raise TypeError(f"request: msg must be a dict, got {type(msg).__name__} {msg!r:.60}")
        if not isinstance(key, str) or not key:
            raise TypeError(f"request: id_key must be a non-empty str, got {type(key).__name__} {key!r:.60}")
        check_timeout("request", timeout)
        if msg.get(key) is None:
            rid: Any = next(self._ids)
            out: Any = {**msg, key: rid}
        else:
            rid, out = msg[key], msg
        # Serialised up front, so that an unserialisable message fails here, not
        # after it waited for a connection.
        data = self._serialize(out)
        conn: Link | None = None
        expectation: Expectation[M] | None = None
        try:
            async with asyncio.timeout(timeout):
                conn = await self._connection("request")
                # Filed before the send, so that no reply can slip past it; filed under
                # the connection, so that losing it fails the request at once.
                expectation = self.expect(compile_condition({key: rid}), (), None, on=conn)
                await conn.send(data)
                return await expectation
        except TimeoutError as exc:
            if isinstance(exc, Timeout):
                raise
            if conn is None:
                raise self._no_connection(f"request {key}={rid!r}", timeout)  # chains the last failure
            raise Timeout(f"request {key}={rid!r}: no reply within {timeout}s") from exc
        finally:
            if expectation is not None:
                expectation.cancel()

    async def poll(
        self,
        msg: Mapping[str, Any],
        until: Any,
        alarms: Any,
        interval: float,
        max_retries: int,
        key: str,
    ) -> M:
        """See :meth:`AsyncWsStream.poll`."""
        if not isinstance(msg, Mapping):
            raise TypeError(f"poll: msg must be a dict, got {type(msg).__name__} {msg!r:.60}")
        until_clauses = compile_condition(until, argname="poll: until")
        alarm_clauses = compile_alarms(alarms, "poll")
        check_number("poll", "interval", interval, positive=True)
        check_int("poll", "max_retries", max_retries, minimum=1)
        # A None id makes request() draw a fresh one for every try.
        fresh = {**msg, key: None}
        on_error = self._on_error
        loop = asyncio.get_running_loop()
        last: BaseException | None = None
        for attempt in range(1, max_retries + 1):
            started = loop.time()
            try:
                reply = await self.request(fresh, interval, key)
            except (Timeout, ConnectionLost) as exc:
                last = exc
                logger.debug("poll: try {} of {} failed: {}", attempt, max_retries, describe(exc))
            else:
                for clause in alarm_clauses:
                    if clause.matches(reply, on_error):
                        raise Alarm(reply, clause.source)
                if any(clause.matches(reply, on_error) for clause in until_clauses):
                    return reply
                last = None
            if attempt < max_retries:
                rest = started + interval - loop.time()
                if rest > 0:
                    await asyncio.sleep(rest)
        outcome = "a reply that did not match" if last is None else describe(last)
        raise RetriesExhausted(
            f"poll: no reply matched until={until!r:.80} in {max_retries} tries (last try: {outcome}); "
            "raise max_retries or interval, or check the condition"
        ) from last
