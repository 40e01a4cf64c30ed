"""Declared subscriptions, spread over shards: one connection, and one supervisor, per shard.

The client keeps the set of topics the user declared (``subscribe`` and
``unsubscribe``), and each topic lives on one shard. Shard 0 is the client's
first connection and is always there; a client that never subscribes, or whose
topics fit on one connection, has only it and sees nothing change. When the
set outgrows ``max_subscriptions_per_connection``, :class:`Shards` adds shards
(:func:`~._subscriptions.place` says where each new topic goes), each with a
:class:`~._supervisor.Supervisor` of its own (backoff, recycle, watchdog, events
tagged with its number), all feeding the one index, so that streams, handlers,
``expect`` and ``events`` span them. A shard whose last topic is unsubscribed
closes (shard 0 never does).

Two paths put topics on a connection:

* **On every new connection** of a shard (first, reconnect, a recycle's
  successor), :meth:`Shards.opened` subscribes the shard's whole set before the
  connection is served: it sends the messages through the connection's rate
  limit and reads the acks itself (the pump does not read that connection yet;
  what it reads on the way is kept for the pump, in order). It repeats until the
  connection carries exactly the set, so that a subscribe or unsubscribe made
  meanwhile is not missed; then the gate opens it, with no await in between.
* **On the serving connection**, ``subscribe`` sends what that connection lacks
  as requests (the pump reads the acks), in a task the client owns, so that a
  caller that gives up does not cut an exchange in half, and a second caller
  of the same topics waits for the first exchange instead of sending again.

A connection that is lost takes its acknowledged topics with it
(:attr:`~._link.Link.topics`); its successor subscribes the shard's set again,
and the other shards never notice.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable, Coroutine, Hashable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

from loguru import logger

from ._counters import Counters, total
from ._hooks import ClientHooks
from ._link import Link
from ._options import DEFAULT_REQUEST_TIMEOUT, check_timeout
from ._redact import describe
from ._scopes import check_not_in_on_connect
from ._subscriptions import chunks, place
from ._supervisor import Supervisor
from .exceptions import AsyncWsStreamError, ConnectionLost, SubscribeError, Timeout

__all__ = ["Shard", "ShardInfo", "Shards", "SubscriptionHooks", "current_shard", "enter"]

#: The reply a subscribe waits for, on a connection not served yet (per message).
ACK_TIMEOUT = DEFAULT_REQUEST_TIMEOUT


class SubscriptionHooks(Protocol):
    """What the shards call on the client: its subscription hooks (see :class:`~._hooks.ClientHooks`)."""

    request_id_key: ClassVar[str]
    subscription_acks: ClassVar[bool]

    def _subscribe_message(self, topics: list[Any]) -> Any: ...

    def _unsubscribe_message(self, topics: list[Any]) -> Any: ...

    def _reply_error(self, reply: Any) -> object | None: ...

    def _serialize(self, msg: Any) -> str | bytes: ...


@dataclass(frozen=True, slots=True)
class ShardInfo:
    """Which shard a hook runs for (``client.current_shard``), and its topics at that moment.

    In ``_create_ws``, for venues that take the topics in the URL (Binance's
    ``/stream?streams=a/b``): ``topics`` is the declared set of that shard.
    """

    number: int
    topics: frozenset[Hashable]


class Shard:
    """One shard: its topics, and the supervisor (with its counters and task) that keeps its connection."""

    __slots__ = ("counters", "number", "supervisor", "task", "wanted")

    def __init__(self, number: int, supervisor: Supervisor, counters: Counters) -> None:
        self.number = number
        self.supervisor = supervisor
        self.counters = counters
        self.task: asyncio.Task[Any] | None = None
        # The declared topics of this shard; a dict, as an ordered set.
        self.wanted: dict[Hashable, None] = {}

    def __repr__(self) -> str:
        return f"<Shard {self.number}: {len(self.wanted)} topics>"

    def info(self) -> ShardInfo:
        return ShardInfo(self.number, frozenset(self.wanted))


_CURRENT: contextvars.ContextVar[Shard | None] = contextvars.ContextVar("async_ws_stream_shard", default=None)


def current_shard() -> Shard | None:
    """The shard whose supervisor runs the caller (its hooks, and tasks they start), if any."""
    return _CURRENT.get()


def enter(shard: Shard) -> None:
    """Mark the running task (a shard's supervisor) as that shard's; its child tasks inherit it."""
    _CURRENT.set(shard)


class Shards:
    """The shards of one client and its declared subscriptions.

    Args:
        hooks: The client (its subscription hooks, ``_serialize``, ``request_id_key``).
        limits: The checked ``max_subscriptions_per_connection`` and ``max_topics_per_message``.
        make: Builds shard ``n``'s supervisor and counters, with ``on_open`` as its hook.
        start: Starts a new shard's supervisor task, if the client runs already.
        spawn: Starts a task the client owns (an exchange on a serving connection).
        request: Sends a request on a given connection and returns its reply.
        next_id: A fresh request id (the client's counter: an ack read early must not
            answer another request later).
        counters: The client's totals (``subscribe_errors``).
    """

    def __init__(
        self,
        hooks: SubscriptionHooks,
        *,
        limits: Mapping[str, Any],
        make: Callable[[int, Callable[[Link], Coroutine[Any, Any, None]]], tuple[Supervisor, Counters]],
        start: Callable[[Shard], None],
        spawn: Callable[[Coroutine[Any, Any, Any], str], asyncio.Task[Any]],
        request: Callable[[Link, Mapping[str, Any], float], Coroutine[Any, Any, Any]],
        next_id: Callable[[], int],
        counters: Counters,
    ) -> None:
        self._hooks = hooks
        self._limit: int | None = limits["max_subscriptions_per_connection"]
        self._per_message: int | None = limits["max_topics_per_message"]
        self._make = make
        self._start = start
        self._spawn = spawn
        self._request = request
        self._next_id = next_id
        self._counters = counters
        self._shards: dict[int, Shard] = {}
        self._closing: set[int] = set()
        self._where: dict[Hashable, Shard] = {}
        # Topics the server refused on a new connection, for the subscribe calls that wait for them.
        self._refused: dict[Hashable, SubscribeError] = {}
        #: Counters of shards that closed, so that the totals never shrink.
        self.retired = Counters()
        self.first = self._add(0)

    def __iter__(self) -> Iterator[Shard]:
        return iter(list(self._shards.values()))

    @property
    def topics(self) -> frozenset[Hashable]:
        """The declared set, over every shard."""
        return frozenset(self._where)

    def _add(self, number: int) -> Shard:
        async def on_open(conn: Link) -> None:
            await self.opened(shard, conn)  # bound below, before any connection can open

        supervisor, counters = self._make(number, on_open)
        shard = Shard(number, supervisor, counters)
        self._shards[number] = shard
        return shard

    # -- a new connection ------------------------------------------------------------------

    async def opened(self, shard: Shard, conn: Link) -> None:
        """Subscribe ``shard``'s set on its new connection ``conn``, before it is served.

        Raises:
            Timeout: an ack did not come within ``ACK_TIMEOUT`` (the attempt fails and is retried).
            TypeError: a subscription hook returned something that cannot be sent.
        """
        while True:
            extra = [t for t in conn.topics if t not in shard.wanted]
            missing = [t for t in shard.wanted if t not in conn.topics]
            if not extra and not missing:
                return  # no await between here and the gate opening it: nothing can slip by
            for subscribe, topics in ((False, extra), (True, missing)):
                for chunk in chunks(topics, self._per_message):
                    await self._exchange_early(shard, conn, chunk, subscribe)

    async def _exchange_early(self, shard: Shard, conn: Link, chunk: list[Hashable], subscribe: bool) -> None:
        key = self._hooks.request_id_key
        for msg in self._messages(chunk, subscribe):
            if not self._hooks.subscription_acks:
                await conn.send(self._encode(msg))
                continue
            rid = self._next_id() if msg.get(key) is None else msg[key]
            await conn.send(self._hooks._serialize({**msg, key: rid}))
            reply = await shard.supervisor.read_early(conn, _answers(key, rid), ACK_TIMEOUT)
            error = self._hooks._reply_error(reply)
            if error is not None:
                self._refuse(shard, conn, chunk, subscribe, reply, error)
                if not subscribe:  # counted and logged; asking again would only loop
                    _apply(conn, chunk, subscribe)
                return
        _apply(conn, chunk, subscribe)

    # -- the calls -------------------------------------------------------------------------

    async def subscribe(self, topics: tuple[Any, ...], timeout: float | None) -> None:
        """See :meth:`Subscribing.subscribe`."""
        check_timeout("subscribe", timeout)
        check_not_in_on_connect("subscribe")
        asked = _distinct("subscribe", topics)
        self._check_hook("subscribe", "_subscribe_message")
        new = [t for t in asked if t not in self._where]
        for topic in new:
            self._refused.pop(topic, None)
        loads = {n: len(s.wanted) for n, s in self._shards.items()}
        loads |= {n: self._limit or 0 for n in self._closing}  # full: never chosen, never reused
        for number, placed in place(new, loads, self._limit).items():
            shard = self._shards.get(number)
            if shard is None:
                shard = self._add(number)
                logger.info("shard {} opens for {} topics", number, len(placed))
                self._start(shard)
            for topic in placed:
                shard.wanted[topic] = None
                self._where[topic] = shard
        try:
            async with asyncio.timeout(timeout):
                await _all(self._confirm(shard, ts) for shard, ts in self._group(asked).items())
        except TimeoutError as exc:
            if isinstance(exc, Timeout):
                raise
            raise Timeout(
                f"subscribe: not acknowledged within {timeout}s; the topics stay in subscriptions and are "
                "subscribed on the next connection (unsubscribe them to give up)"
            ) from exc

    async def _confirm(self, shard: Shard, topics: list[Hashable]) -> None:
        """Return once every topic of ``topics`` still declared on ``shard`` is acknowledged on its connection."""
        last: Link | None = None
        while True:
            for topic in topics:
                if topic in self._refused:
                    raise self._refused[topic]
            topics = [t for t in topics if self._where.get(t) is shard]
            if not topics:
                return
            try:
                conn = await shard.supervisor.gate.wait(other_than=last)
            except ConnectionLost:
                continue  # the shard closed: its topics went with it (checked above)
            missing = [t for t in topics if t not in conn.topics]
            if not missing:
                return
            todo = [t for t in missing if t not in conn.pending]
            for chunk in chunks(todo, self._per_message):
                self._exchange(shard, conn, chunk, subscribe=True)
            waits = {conn.pending[t] for t in missing if t in conn.pending}
            for outcome in await asyncio.gather(*(asyncio.shield(w) for w in waits)):
                if isinstance(outcome, ConnectionLost):
                    last = conn  # wait for the next connection: it subscribes the whole set
                elif isinstance(outcome, BaseException) and set(getattr(outcome, "topics", topics)) & set(topics):
                    raise outcome

    async def unsubscribe(self, topics: tuple[Any, ...], timeout: float | None) -> None:
        """See :meth:`Subscribing.unsubscribe`."""
        check_timeout("unsubscribe", timeout)
        check_not_in_on_connect("unsubscribe")
        asked = _distinct("unsubscribe", topics)
        self._check_hook("unsubscribe", "_unsubscribe_message")
        groups: dict[Shard, list[Hashable]] = {}
        for topic in asked:
            self._refused.pop(topic, None)
            shard = self._where.pop(topic, None)
            if shard is not None:
                del shard.wanted[topic]
                groups.setdefault(shard, []).append(topic)
        emptied = [s for s in groups if s.number and not s.wanted]
        try:
            async with asyncio.timeout(timeout):
                await _all(self._drop(shard, ts) for shard, ts in groups.items() if shard not in emptied)
        except TimeoutError as exc:
            if isinstance(exc, Timeout):
                raise
            raise Timeout(f"unsubscribe: not acknowledged within {timeout}s; the topics are out of "
                          "subscriptions, and no later connection subscribes them") from exc
        finally:
            for shard in emptied:
                await self._close(shard)

    async def _drop(self, shard: Shard, topics: list[Hashable]) -> None:
        conn = shard.supervisor.gate.value
        if conn is None:
            return  # not connected: the next connection subscribes only what is declared
        waits = {conn.pending[t] for t in topics if t in conn.pending}
        if waits:
            await asyncio.gather(*(asyncio.shield(w) for w in waits))
        on = [t for t in topics if t in conn.topics and t not in shard.wanted]
        for chunk in chunks(on, self._per_message):
            outcome = await asyncio.shield(self._exchange(shard, conn, chunk, subscribe=False))
            # ConnectionLost: that connection is gone, and the subscription with it.
            if isinstance(outcome, BaseException) and not isinstance(outcome, ConnectionLost):
                raise outcome

    async def _close(self, shard: Shard) -> None:
        """Stop an emptied shard: its connection closes, its supervisor ends."""
        if shard.wanted or shard.number == 0 or shard.number not in self._shards:
            return
        number = shard.number
        del self._shards[number]
        self._closing.add(number)
        logger.info("shard {} closes: no topics left", number)
        supervisor = shard.supervisor
        supervisor.stop_reason = f"shard {number} closed: no topics left"
        supervisor.gate.fail(lambda: ConnectionLost(f"shard {number} closed: no topics left"))
        try:
            if shard.task is not None:
                shard.task.cancel()
                await asyncio.wait([shard.task])
        finally:
            self._closing.discard(number)
            self.retired = total(self.retired, shard.counters)

    # -- exchanges on a serving connection -------------------------------------------------

    def _exchange(self, shard: Shard, conn: Link, chunk: list[Hashable], subscribe: bool) -> asyncio.Task[Any]:
        """Send one chunk's (un)subscribe on ``conn`` in a task of the client's; it returns the error, if any."""
        messages = self._messages(chunk, subscribe)  # here, so that a bad hook raises at the caller
        task = self._spawn(self._converse(shard, conn, chunk, subscribe, messages), "subscribe")
        for topic in chunk:
            conn.pending[topic] = task

        def done(_: object) -> None:
            for topic in chunk:
                if conn.pending.get(topic) is task:
                    del conn.pending[topic]

        task.add_done_callback(done)
        return task

    async def _converse(
        self, shard: Shard, conn: Link, chunk: list[Hashable], subscribe: bool, messages: list[Any]
    ) -> BaseException | None:
        try:
            for msg in messages:
                if not self._hooks.subscription_acks:
                    await conn.send(self._encode(msg))
                    continue
                reply = await self._request(conn, msg, ACK_TIMEOUT)
                error = self._hooks._reply_error(reply)
                if error is not None:
                    return self._refuse(shard, conn, chunk, subscribe, reply, error)
        except Timeout as exc:  # said here too: the callers that waited for it may have gone
            logger.warning("{}subscribe of {} topics on connection #{}: no ack within {}s",
                           "" if subscribe else "un", len(chunk), conn.number, ACK_TIMEOUT)
            return exc
        except AsyncWsStreamError as exc:  # lost, or the client ended: the callers decide
            return exc
        _apply(conn, chunk, subscribe)
        return None

    # -- helpers ---------------------------------------------------------------------------

    def _messages(self, chunk: list[Hashable], subscribe: bool) -> list[Any]:
        hook = "_subscribe_message" if subscribe else "_unsubscribe_message"
        made = (self._hooks._subscribe_message if subscribe else self._hooks._unsubscribe_message)(list(chunk))
        messages = made if isinstance(made, list) else [made]
        if self._hooks.subscription_acks:
            for msg in messages:
                if not isinstance(msg, Mapping):
                    raise TypeError(
                        f"{hook} must return a dict (or a list of dicts), sent as a request with an id so that "
                        f"its ack can be told apart, got {type(msg).__name__} {msg!r:.60}; for a venue that "
                        "acknowledges without the id, set subscription_acks = False"
                    )
        return messages

    def _encode(self, msg: Any) -> str | bytes:
        return msg if isinstance(msg, (str, bytes)) else self._hooks._serialize(msg)

    def _refuse(
        self, shard: Shard, conn: Link, chunk: list[Hashable], subscribe: bool, reply: Any, error: object
    ) -> SubscribeError:
        """The server refused a chunk: a subscribe's topics leave the set. Counted, logged, returned."""
        self._counters.subscribe_errors += 1
        what = "subscribe" if subscribe else "unsubscribe"
        refusal = SubscribeError(
            f"{what} of {len(chunk)} topics (first {chunk[0]!r:.40}) refused on connection #{conn.number}: "
            f"{error!r:.200}", topics=tuple(chunk), reply=reply,
        )
        logger.error("{}", refusal)
        if subscribe:
            for topic in chunk:
                if self._where.get(topic) is shard:
                    del self._where[topic]
                    del shard.wanted[topic]
                    self._refused[topic] = refusal
        return refusal

    def _check_hook(self, call: str, hook: str) -> None:
        if getattr(type(self._hooks), hook) is getattr(ClientHooks, hook):
            raise NotImplementedError(
                f"{call} needs the {hook} hook: define {hook}(self, topics) on {type(self._hooks).__name__}, "
                "returning the message to send (Binance: {'method': 'SUBSCRIBE', 'params': topics})"
            )

    def _group(self, topics: list[Hashable]) -> dict[Shard, list[Hashable]]:
        groups: dict[Shard, list[Hashable]] = {}
        for topic in topics:
            shard = self._where.get(topic)
            if shard is not None:
                groups.setdefault(shard, []).append(topic)
        return groups

    # -- state -----------------------------------------------------------------------------

    def snapshot(self) -> list[dict[str, Any]]:
        """One dict per open shard, for ``stats()["shards"]``."""
        out = []
        for number in sorted(self._shards):
            shard = self._shards[number]
            supervisor, c = shard.supervisor, shard.counters
            conn = supervisor.current
            last = supervisor.last_error
            out.append({
                "shard": number,
                "state": supervisor.state.value,
                "connection": None if conn is None else conn.number,
                "topics": list(shard.wanted),
                "subscribed": 0 if conn is None else len(conn.topics),
                "connects": c.connects,
                "reconnects": c.reconnects,
                "recycles": c.recycles,
                "retries": c.retries,
                "frames": c.frames,
                "messages": c.frames - c.parse_errors - c.skipped,
                "last_error": None if last is None else describe(last),
            })
        return out

    def counters(self) -> list[Counters]:
        """Every shard's counters, closed shards' included."""
        return [self.retired, *(s.counters for s in self._shards.values())]


def _apply(conn: Link, chunk: list[Hashable], subscribe: bool) -> None:
    if subscribe:
        conn.topics.update(chunk)
    else:
        conn.topics.difference_update(chunk)


def _answers(key: str, rid: Any) -> Callable[[Any], bool]:
    """Whether a message is the reply to request ``rid`` (a dict, or a typed message with that field)."""

    def answers(msg: Any) -> bool:
        return bool((msg.get(key) if isinstance(msg, Mapping) else getattr(msg, key, None)) == rid)

    return answers


def _distinct(call: str, topics: tuple[Any, ...]) -> list[Hashable]:
    """``topics`` without repeats, in order; a list or set passed as one topic gets a pointed TypeError."""
    out: dict[Hashable, None] = {}
    for topic in topics:
        try:
            out[topic] = None
        except TypeError:
            raise TypeError(
                f"{call}: topics must be hashable (str, tuple), got {type(topic).__name__} {topic!r:.60}; "
                f"pass several topics as separate arguments: {call}(*topics)"
            ) from None
    return list(out)


async def _all(coros: Iterable[Coroutine[Any, Any, None]]) -> None:
    """Await every coroutine, concurrently; the first error is raised as it is, the rest cancelled."""
    pending = list(coros)
    if len(pending) == 1:
        await pending[0]
        return
    try:
        async with asyncio.TaskGroup() as tg:
            for coro in pending:
                tg.create_task(coro)
    except BaseExceptionGroup as group:
        raise group.exceptions[0] from None

