"""Conversations with the server: request, expect and poll.

Every wait is an :class:`~._expect.Expectation` filed in the client's index, so a
reply costs the pump one bucket look-up, like any stream. The
:class:`Conversations` of a client owns them all: it files each one, forgets it
the moment it settles (synchronously, so ``stats()["pending"]`` never lags), and
fails the requests in flight on a connection the moment the supervisor says that
connection will carry no more replies. :class:`Conversing` is the public face
of it on the client: ``request``, ``expect``, ``wait_for`` and ``poll``.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, ClassVar, Generic, TypeVar

from loguru import logger

from ._dispatch import Index, Subscription, Target
from ._expect import Expectation
from ._filters import Clause, OnError, compile_condition
from ._link import Link
from ._options import DEFAULT_REQUEST_TIMEOUT, check_int, check_number, check_timeout
from ._redact import describe
from ._scopes import check_not_in_on_connect
from .exceptions import Alarm, ConnectionLost, RetriesExhausted, Timeout

__all__ = ["Conversations", "Conversing", "compile_alarms"]

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

    def next_id(self) -> int:
        """A fresh request id, from the counter every request of the client draws from."""
        return next(self._ids)

    async def request(self, msg: Mapping[str, Any], timeout: float | None, key: str, *, on: Link | None = None) -> M:
        """See :meth:`AsyncWsStream.request`; ``on``: send on that connection instead of waiting for one."""
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
                conn = on if on is not None else await self._connection("request")
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


class Conversing(Generic[M]):
    """The conversation calls of :class:`~async_ws_stream.AsyncWsStream`, which inherits them.

    The client provides ``_conversations`` and ``_check_open``.
    """

    #: The key that carries a request's id, for :meth:`request` and :meth:`poll`.
    request_id_key: ClassVar[str] = "id"

    _conversations: Conversations[M]

    def _check_open(self, what: str) -> None:
        raise NotImplementedError

    async def request(
        self,
        msg: Mapping[str, Any],
        *,
        timeout: float | None = DEFAULT_REQUEST_TIMEOUT,
        id_key: str | None = None,
    ) -> M:
        """Send ``msg`` with a fresh id and return the first message carrying that id back.

        The caller's dict is never changed: a copy goes out with ``id_key``
        (default: the class's ``request_id_key``) set to the next number of this
        client's counter (1, 2, 3, ...), unless ``msg`` already has a non-None
        value there, which is then used as it is. The reply is not interpreted: an
        error reply is returned like any other. It also reaches every stream and
        handler it matches, as the same object.

        A request made while there is no connection waits for one and goes out on
        the next. One whose connection is lost before its reply fails at once
        with :exc:`ConnectionLost`, not at its timeout; during a recycle, a
        request in flight on the old connection still gets its reply if it arrives
        before that connection's close completes.

        Args:
            msg: A mapping, serialised by :meth:`_serialize`.
            timeout: Seconds for the whole call, including the wait for a
                connection; None waits forever.
            id_key: The key that carries the id, in the request and in its reply.

        Raises:
            ConnectionLost: the connection it went out on closed before the reply
                (the server may or may not have processed it).
            Timeout: no reply within ``timeout`` seconds (also a ``TimeoutError``).
            ClientClosed: after :meth:`exit`.
            RetriesExhausted, ConnectionRejected: the client gave up.
            TypeError, ValueError: a bad argument, named in the message.

        Cancelling it is safe: its expectation is unregistered at once.
        """
        return await self._conversations.request(
            msg, timeout, self.request_id_key if id_key is None else id_key
        )

    def expect(
        self,
        until: Any,
        *,
        alarms: Any = None,
        timeout: float | None = None,
    ) -> Expectation[M]:
        """Register now, and return an awaitable resolved by the first later message matching ``until``.

        Registration happens in this call, before anything is awaited, so a
        message dispatched right after it counts even if the caller sends
        something first and awaits later (``exp = client.expect(...); await
        client.send(...); await exp``). Messages dispatched before the call never
        count.

        A condition is a filter dict (with the path and predicate extensions of
        :meth:`stream_filter`), a callable ``msg -> bool``, or a list of these
        (any one matches). A predicate that raises counts as no match, and is
        logged and counted in ``stats()["predicate_errors"]``.

        Args:
            until: The condition that resolves the expectation with its message.
            alarms: Conditions that fail it with :exc:`Alarm` instead; a message
                matching both ``until`` and an alarm is an alarm. None or ``[]``: none.
            timeout: Seconds from this call; None waits forever.

        Returns:
            An :class:`Expectation`: await it for the message; ``cancel()`` it, or
            cancel the task awaiting it, to unregister it at once.

        Raises:
            TypeError, ValueError: a malformed condition or timeout (at the call).
            ClientClosed: after :meth:`exit` (at the call, or when awaited if
                :meth:`exit` comes first).
            Alarm: when awaited, a message matched an alarm (``.message``, ``.condition``).
            Timeout: when awaited, nothing matched within ``timeout`` (also a ``TimeoutError``).
            RetriesExhausted, ConnectionRejected: when awaited, the client gave up.
        """
        until_clauses = compile_condition(until, argname="expect: until")
        alarm_clauses = compile_alarms(alarms, "expect")
        check_timeout("expect", timeout)
        self._check_open("expect")
        return self._conversations.expect(until_clauses, alarm_clauses, timeout)

    async def wait_for(self, until: Any, *, alarms: Any = None, timeout: float | None = None) -> M:
        """Wait for the first later message matching ``until``: ``await expect(...)`` in one call.

        Registers at the call, like :meth:`expect`, whose arguments and errors it
        shares. Cancelling it is safe: the expectation is unregistered at once.

        Raises:
            HookMisuse: called inside ``_on_connect``, whose connection is not read
                until it returns (read the reply there with ``await ws.recv()``).
        """
        check_not_in_on_connect("wait_for")
        return await self.expect(until, alarms=alarms, timeout=timeout)

    async def poll(
        self,
        msg: Mapping[str, Any],
        until: Any,
        *,
        alarms: Any = None,
        interval: float = 2.0,
        max_retries: int = 50,
        id_key: str | None = None,
    ) -> M:
        """Send ``msg`` as a request every ``interval`` seconds until its reply matches ``until``.

        Each try is a fresh :meth:`request` with a fresh id (an id in ``msg`` is
        replaced, so that a late reply to one try is never taken for another's);
        only its reply is checked, against ``alarms`` first and then ``until``.
        Each try waits up to ``interval`` seconds for its reply, including any wait
        for a connection, and tries start ``interval`` seconds apart. A try that
        times out or loses its connection (:exc:`ConnectionLost`) counts as a try,
        and polling goes on, across reconnects.

        Args:
            msg: The request, as for :meth:`request`; the caller's dict is never changed.
            until: Condition (as for :meth:`expect`) a reply must match to end the poll.
            alarms: Conditions that end it with :exc:`Alarm`; None or ``[]``: none.
            interval: Seconds between the starts of two tries.
            max_retries: How many requests to send at most.
            id_key: The id key, as for :meth:`request`.

        Returns:
            The first reply matching ``until``.

        Raises:
            Alarm: a reply matched one of ``alarms`` (``.message`` is the reply).
            RetriesExhausted: ``max_retries`` tries went by without a match; the
                last try's ``Timeout`` or ``ConnectionLost``, if it failed, is
                chained as ``__cause__``. Also when the client gave up reconnecting.
            ClientClosed: after :meth:`exit`.
            ConnectionRejected: the server refused the client for good.
            TypeError, ValueError: a bad argument, named in the message.

        Cancelling it is safe: the try in flight is forgotten at once.
        """
        return await self._conversations.poll(
            msg, until, alarms, interval, max_retries, self.request_id_key if id_key is None else id_key
        )
