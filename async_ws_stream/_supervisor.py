"""One client's connection life: connect with retry, serve, pump, recycle, watch, retire.

One task runs :meth:`Supervisor.run`::

    connect ─► serve ──(loss)──► back off ─► connect ─► serve ...
                 │
                 └─(recycle)─► the successor was opened while this one was read;
                               read this one to its end, then serve the successor

While a connection is served, up to three tasks run under one TaskGroup: the
pump (read, parse, dispatch: the hot path, in :mod:`._pump`; with a ``_sequence``
hook, the sequenced pump, which asks the :mod:`._sequencer` about each message
first), the recycle trigger (the user's
``_when2create_new_ws``, then the make-before-break swap) and, with
``idle_timeout``, a watchdog. Every attempt to open a connection, for a
reconnect or for a recycle's successor, goes through one loop,
:meth:`Supervisor._open_with_retry`, which asks one :class:`~._backoff.RetryPolicy`
what to do about each failure. Senders wait on the :class:`~._link.Gate`, never by polling.

A client with more topics than one connection may carry has one supervisor per
shard (:mod:`._shards`): each has its own policy, counters, gate and tasks,
tags its events with its shard, and subscribes its own topics on every new
connection (``on_open``) before the connection is served; what it reads while
waiting for those acks is kept on the connection and delivered first.
"""

from __future__ import annotations

import asyncio
import enum
import inspect
import itertools
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, Protocol

from loguru import logger
from websockets.exceptions import ConnectionClosed

from ._backoff import GiveUp, RetryPolicy
from ._counters import Counters
from ._dispatch import Index, Target
from ._events import Connected, Disconnected, Event, Recycled, Recycling, Retrying
from ._link import Gate, Link, abort, check_connection, close
from ._options import EXIT_GRACE
from ._pump import Pump
from ._redact import describe, traceback_of
from ._scopes import running
from ._streams import Pressure
from ._subscriptions import Rate, RateLimit
from .exceptions import AsyncWsStreamError, ConnectionLost, Timeout
from .transports import guard

__all__ = ["Hooks", "State", "Supervisor"]


class Hooks(Protocol):
    """The user's side of a client, as the supervisor calls it: ``AsyncWsStream``'s hooks."""

    async def _create_ws(self) -> Any: ...

    async def _on_connect(self, ws: Any) -> None: ...

    async def _when2create_new_ws(self) -> None: ...

    def _parse_raw_data(self, raw: str | bytes) -> Any: ...


class State(enum.Enum):
    """Where the client is in its life, as ``stats()["state"]`` reports it."""

    NEW = "new"  # made, not started
    CONNECTING = "connecting"  # opening a connection (_create_ws, _on_connect)
    CONNECTED = "connected"  # a connection carries traffic
    BACKOFF = "backoff"  # waiting before the next attempt
    FAILED = "failed"  # gave up (RetriesExhausted, ConnectionRejected); waits for exit()
    CLOSED = "closed"  # exit() was called


class Supervisor(Pump):
    """Owns the connection of one client: opens it, pumps it, recycles it, replaces it when lost.

    Args:
        hooks: The client's hooks (``_create_ws``, ``_on_connect``, ...).
        index: Where each parsed message finds its targets.
        counters: The client's totals.
        pressure: Set by streams when the pump should yield once.
        policy: What to do about each failed attempt.
        idle_timeout: Seconds without a data frame before a connection counts as dead.
        on_closed: Called, synchronously, when a connection will carry no more
            replies (requests in flight on it must fail).
        emit: Receives each lifecycle event, synchronously, at the point of the
            message flow where it happens (see :mod:`._events`).
        admit: With sequence tracking, asked about each message before it is
            dispatched (False: dropped or held); see :mod:`._sequencer`.
        shard: Which shard of the client this is (0: the first, or the only one).
        numbers: Where connection numbers come from (shared by the shards, so
            that each number is unique in the client).
        on_open: Awaited with each new connection after ``_on_connect``, before
            it is served (subscribe its topics); raising fails the attempt.
        send_rate: ``(count, seconds)`` for the frames sent on each connection.
        connect_limit: Paces the attempts to open a connection (shared by the shards).
    """

    def __init__(
        self,
        hooks: Hooks,
        *,
        index: Index[Target],
        counters: Counters,
        pressure: Pressure,
        policy: RetryPolicy,
        idle_timeout: float | None,
        idle_counts: str = "data",
        on_closed: Callable[[Link], None],
        emit: Callable[[Event], None],
        admit: Callable[[Any], bool] | None = None,
        shard: int = 0,
        numbers: Iterator[int] | None = None,
        on_open: Callable[[Link], Awaitable[None]] | None = None,
        send_rate: Rate | None = None,
        connect_limit: RateLimit | None = None,
    ) -> None:
        self._hooks = hooks
        self.shard = shard
        self._on_open = on_open
        self._send_rate = send_rate
        self._connect_limit = connect_limit
        #: Set before the task is cancelled to close the shard: its last event's cause.
        self.stop_reason: str | None = None
        self._emit = emit
        self._admit = admit
        self._index = index
        self._counters = counters
        self._pressure = pressure
        self.policy = policy
        self._idle_timeout = idle_timeout
        self._idle_counts = idle_counts
        self._on_closed = on_closed
        self.state = State.NEW
        #: The last failure to open or keep a connection, or None.
        self.last_error: BaseException | None = None
        #: The connection new sends go out on, or None.
        self.current: Link | None = None
        self.gate = Gate()
        self._numbers = itertools.count(1) if numbers is None else numbers

    async def run(self) -> AsyncWsStreamError | Exception | None:
        """Serve connections until the client gives up (return why) or is cancelled (exit)."""
        conn: Link | None = None
        error: AsyncWsStreamError | Exception | None = None
        try:
            conn = await self._open_with_retry(None)
            while True:
                successor = await self._serve(conn)
                if successor is not None:
                    self._emit(Recycled(conn.number, successor.number, self.shard))
                    conn = successor
                    continue
                cause = conn.closed_by or ConnectionLost("the connection ended")
                self._emit(Disconnected(conn.number, describe(cause), self.shard))
                self.policy.lasted(time.monotonic() - conn.opened_at)
                conn = None  # it is closed: nothing for the finally below to retire meanwhile
                conn = await self._open_with_retry(cause)
                self._counters.reconnects += 1
        except AsyncWsStreamError as exc:
            error = exc
        except Exception as exc:  # the supervisor boundary: a bug of ours, never silent
            logger.error("supervisor failed\n{}", traceback_of(exc))
            error = exc
        finally:
            if conn is not None:
                self.gate.shut()
                await self._retire(conn)
                if self.stop_reason is not None:
                    self._emit(Disconnected(conn.number, self.stop_reason, self.shard))
        if error is not None:
            self.state = State.FAILED
        return error

    async def _open_with_retry(self, cause: BaseException | None, serving: Link | None = None) -> Link:
        """Open a connection, retrying failed attempts as the policy says.

        Args:
            cause: Why a connection is needed: the failure that ended the last one,
                or None for the first connection and for a recycle.
            serving: The connection that keeps serving meanwhile (a recycle's), if any.

        Raises:
            AsyncWsStreamError: the policy gave up (fatal, or ``max_retries`` ran out).
        """
        while True:
            if cause is not None:
                verdict = self.policy.failed(cause)
                self.last_error = cause
                if isinstance(verdict, GiveUp):
                    raise verdict.error
                self._counters.retries += 1
                self._emit(Retrying(verdict.attempt, verdict.delay, describe(cause), self.shard))
                if serving is None:
                    logger.warning("retry {} in {:.2f}s after {}", verdict.attempt, verdict.delay, describe(cause))
                else:
                    self._counters.recycle_failures += 1
                    logger.warning(
                        "recycle of connection #{}: new connection failed ({}); connection #{} keeps serving, "
                        "retry {} in {:.2f}s",
                        serving.number, describe(cause), serving.number, verdict.attempt, verdict.delay,
                    )
                if verdict.delay > 0:
                    if serving is None:
                        self.state = State.BACKOFF
                    await asyncio.sleep(verdict.delay)
            if serving is None:
                self.state = State.CONNECTING
            try:
                return await self._open()
            except Exception as exc:  # the hooks are user code: any failure is a failed attempt
                cause = exc

    async def _open(self) -> Link:
        if self._connect_limit is not None:
            delay = self._connect_limit.reserve()
            if delay > 0:
                logger.info("connect_rate: next connection attempt in {:.2f}s", delay)
                await asyncio.sleep(delay)
        ws = check_connection(await self._hooks._create_ws())
        guard(ws)  # floods: big reads parsed in slices (a no-op for what it does not know)
        try:
            with running("_on_connect"):
                await self._hooks._on_connect(ws)
            rate = self._send_rate
            limit = None if rate is None else RateLimit(rate[0], rate[1], time.monotonic)
            conn = Link(ws, next(self._numbers), limit)
            if self._on_open is not None:
                await self._on_open(conn)
        except BaseException:
            await close(ws, EXIT_GRACE)
            raise
        self._counters.connects += 1
        if self.shard:
            logger.info("connection #{} open (shard {})", conn.number, self.shard)
        else:
            logger.info("connection #{} open", conn.number)
        return conn

    async def read_early(self, conn: Link, is_reply: Callable[[Any], bool], timeout: float) -> Any:
        """Read ``conn`` before it is served, until a message ``is_reply`` (an ack); return that message.

        Every message read on the way, the reply included, is kept in
        ``conn.early``, which the pump delivers before anything else, so nothing
        read here is lost or reordered.

        Raises:
            Timeout: no such message within ``timeout`` seconds.
            ConnectionClosed: the connection ended (the attempt failed).
        """
        parse = self._hooks._parse_raw_data
        parse_is_async = inspect.iscoroutinefunction(parse)
        counters = self._counters
        try:
            async with asyncio.timeout(timeout):
                while True:
                    raw = await conn.ws.recv()
                    conn.last_frame = time.monotonic()
                    counters.frames += 1
                    try:
                        msg = (await parse(raw)) if parse_is_async else parse(raw)
                    except Exception as exc:
                        self._parse_failed(raw, exc)
                        continue
                    if msg is None:
                        counters.skipped += 1
                        continue
                    conn.early.append(msg)
                    if is_reply(msg):
                        return msg
        except TimeoutError as exc:
            if isinstance(exc, Timeout):
                raise
            raise Timeout(f"connection #{conn.number}: no reply within {timeout}s") from exc

    async def _serve(self, conn: Link) -> Link | None:
        """Pump ``conn`` until it ends; return its successor if it was recycled."""
        self.current = conn
        self.gate.open(conn)
        self.state = State.CONNECTED
        self._emit(Connected(conn.number, self.shard))
        try:
            async with asyncio.TaskGroup() as tg:
                recycler = tg.create_task(self._recycle(conn), name="async_ws_stream recycle")
                watchdog = tg.create_task(self._watch(conn), name="async_ws_stream watchdog") \
                    if self._idle_timeout is not None else None
                # Chosen once per connection: without sequence tracking, the plain
                # pump runs, with not one test per message added for it.
                await (self._pump if self._admit is None else self._pump_sequenced)(conn)
                if watchdog is not None:
                    watchdog.cancel()
                if conn.successor is None:
                    recycler.cancel()
        except BaseExceptionGroup as group:
            # The recycler raises on purpose only to end the client (the policy gave up on
            # the successor); the supervisor takes that like any other verdict.
            errors = group.exceptions
            if len(errors) == 1 and isinstance(errors[0], AsyncWsStreamError):
                raise errors[0] from errors[0].__cause__
            raise
        finally:
            if self.current is conn:
                self.current = None
                self.gate.shut()
            self._on_closed(conn)
        return conn.successor

    async def _recycle(self, conn: Link) -> None:
        """Wait for the user's trigger, then swap in a new connection before closing ``conn``."""
        try:
            with running("_when2create_new_ws"):  # the streams it made end with it
                await self._hooks._when2create_new_ws()
            reason = "_when2create_new_ws returned"
        except Exception as exc:
            logger.warning("_when2create_new_ws raised; recycling connection #{}\n{}", conn.number, traceback_of(exc))
            reason = f"_when2create_new_ws raised {describe(exc)}"
        self._emit(Recycling(conn.number, reason, self.shard))
        age = time.monotonic() - conn.opened_at
        delay = self.policy.recycle_delay(age)
        if delay is None:
            logger.info("recycling connection #{}: {}", conn.number, reason)
        else:
            logger.warning(
                "recycling connection #{}: {} {:.2f}s after it opened, sooner than stable_after={}s; "
                "waiting {:.2f}s first so that recycles cannot storm. Make _when2create_new_ws wait "
                "until the connection is due (note that asyncio.wait() rejects bare coroutines since "
                "Python 3.11), or lower stable_after if recycles this frequent are meant",
                conn.number, reason, age, self.policy.stable_after, delay,
            )
            if delay > 0:
                await asyncio.sleep(delay)
        successor = await self._open_with_retry(None, serving=conn)
        conn.successor = successor
        self._counters.recycles += 1
        # New sends go out on the successor; the pump keeps reading the old one to its end.
        self.current = successor
        self.gate.open(successor)
        await close(conn.ws, EXIT_GRACE)

    async def _watch(self, conn: Link) -> None:
        """Treat the connection as dead after ``idle_timeout`` seconds without a data frame."""
        assert self._idle_timeout is not None
        # A successor waits unread while its predecessor drains; its silence counts
        # from when it is served, not from when it was opened.
        served_at = time.monotonic()
        while True:
            remaining = max(conn.last_frame, served_at) + self._idle_timeout - time.monotonic()
            if remaining <= 0 and self._idle_counts == "pongs" and await self._pong(conn):
                served_at = time.monotonic()  # it answered: alive, though quiet
                continue
            if remaining <= 0:
                logger.warning(
                    "connection #{}: no data frame for {}s (idle_timeout); reconnecting",
                    conn.number, self._idle_timeout,
                )
                abort(conn.ws)
                return
            await asyncio.sleep(remaining)

    async def _pong(self, conn: Link) -> bool:
        """Ping a quiet connection (idle_counts="pongs"); True if the pong came within idle_timeout."""
        ping = getattr(conn.ws, "ping", None)
        if not callable(ping):  # feature-detected: PicowsConnection answers pings but sends none on demand
            if self._idle_counts == "pongs":
                logger.warning("idle_counts='pongs': {} has no ping(); counting data frames only",
                               type(conn.ws).__name__)
                self._idle_counts = "data"
            return False
        try:
            async with asyncio.timeout(self._idle_timeout):
                await (await ping())
        except (TimeoutError, ConnectionClosed):
            return False
        return True

    async def _retire(self, conn: Link) -> None:
        """Close what the supervisor still holds when it stops."""
        held = [c for c in (conn, conn.successor) if c is not None]
        for c in held:
            self._on_closed(c)
        # Together, so that a stop mid-recycle costs one close grace, not two.
        results = await asyncio.gather(*(close(c.ws, EXIT_GRACE) for c in held), return_exceptions=True)
        for c, result in zip(held, results):
            if isinstance(result, Exception):
                logger.warning("closing connection #{} failed\n{}", c.number, traceback_of(result))
