"""The public base class: the hooks, start and exit, consumers, sending, and stats.

:class:`AsyncWsStream` is a facade over the rooms that do the work: the
:class:`~._supervisor.Supervisor` owns the connection, the
:class:`~._consumers.Consumers` registry holds streams and handlers, and
:class:`~._conversation.Conversations` holds request/expect/poll waits. All three
meet in one :class:`~._dispatch.Index`, through which the pump hands each message
to its targets. The client owns every task it starts and ends them all in
:meth:`AsyncWsStream.exit`.
"""

from __future__ import annotations

import asyncio
import copy
import itertools
import time
from collections.abc import Callable, Coroutine
from types import TracebackType
from typing import Any, Self, TypeVar

from loguru import logger

from ._backoff import RetryPolicy
from ._compat import OlderNames, one_of
from ._consumers import Consumers
from ._conversation import Conversations, Conversing
from ._counters import Counters, report, total
from ._dispatch import Index, Target
from ._events import Closed, Event, GaveUp
from ._filters import Filters
from ._hooks import ClientHooks
from ._lifecycle import Tasks, running_loop
from ._link import Link
from ._options import (
    DEFAULT_BACKOFF_FACTOR,
    DEFAULT_BACKOFF_INITIAL,
    DEFAULT_BACKOFF_JITTER,
    DEFAULT_BACKOFF_MAX,
    DEFAULT_EVENTS_MAXSIZE,
    DEFAULT_FATAL_CLOSE_CODES,
    DEFAULT_HANDLER_MAXSIZE,
    DEFAULT_MAXSIZE,
    DEFAULT_SEND_TIMEOUT,
    DEFAULT_STABLE_AFTER,
    IDLE_COUNTS,
    Default,
    IdleCounts,
    Overflow,
    check_buffer,
    check_choice,
    check_close_codes,
    check_number,
)
from ._redact import describe, traceback_of
from ._sending import Sending
from ._sequencer import sequence_stats, wire_sequences
from ._shards import Shard, Shards, enter
from ._streams import Pressure, Stream
from ._subscribing import Subscribing
from ._subscriptions import Rate, RateLimit, check_limits
from ._supervisor import State, Supervisor
from .exceptions import ClientClosed
from .threaded import ThreadedClient

__all__ = ["AsyncWebsocketStreamInterface", "AsyncWsStream"]

M = TypeVar("M")


class AsyncWsStream(Sending, OlderNames, Conversing[M], Subscribing, ClientHooks[M]):
    """One websocket connection, kept alive, as any number of filtered message streams.

    Subclass it and implement three hooks:

    * ``async _create_ws()``: open and return a connection (``websockets.connect(...)``).
    * ``async _when2create_new_ws()``: return (or raise) when the connection must be recycled.
    * ``_parse_raw_data(raw)``: a frame (``str``/``bytes``) to a message, or None to skip the
      frame; a plain function or a coroutine function.

    and optionally ``async _on_connect(ws)`` (log in), ``_serialize(msg)``,
    ``_subscribe_message``/``_unsubscribe_message`` (``subscribe(*topics)``: a declared
    set, subscribed again on every connection, sharded over connections by the venue's
    limits) and ``_sequence``/``_resync`` (exactly once per key, in order, or a visible ``Gap``).

    Guarantees:

    * Every stream gets every matching message in arrival order. A message is lost
      only to a stream's overflow policy (counted in ``stream.dropped`` and
      ``stats()["dropped"]``, and logged) or to a connection loss (what the server
      sent after the network broke never arrived).
    * Recycling is make-before-break: the new connection is open and its
      ``_on_connect`` has run before the old one is closed (with a close frame); every
      frame of the old connection is dispatched before the first frame of the new
      one. A message may arrive twice in the overlap; none is lost.
    * Loss is followed by reconnection with exponential backoff and jitter
      (see :class:`async_ws_stream._backoff.RetryPolicy`); the first retry is
      immediate, and the delay resets once a connection stays up ``stable_after``
      seconds. A connection that dies sooner counts as a failed attempt, and a
      recycle asked for sooner is paced by the same delays.
    * ``exit()`` is idempotent and prompt, and leaves no task behind.

    Keyword-only options (validated here; hooks never run inside ``__init__``):

    Args:
        idle_timeout: Seconds without a data frame after which the connection is
            treated as dead and replaced. None (default) disables the watchdog.
        idle_counts: What keeps a connection alive for ``idle_timeout``: ``"data"``
            (default: data frames only) or ``"pongs"`` (also a pong to the ping the
            watchdog sends when data has been quiet ``idle_timeout``, for servers that
            keep a quiet channel open with pings; on a transport without ``ping()``,
            data frames only, with a warning).
        maxsize: Default buffer size of new streams.
        overflow: Default overflow policy of new streams: ``"error"``,
            ``"drop_oldest"`` or ``"drop_newest"``.
        backoff_initial: Delay before the second retry, in seconds.
        backoff_factor: Growth of the delay from one retry to the next.
        backoff_max: Upper bound of a delay.
        backoff_jitter: Fraction (0 to 1) by which a delay is randomly shortened.
        max_retries: Consecutive failed attempts to open a connection (for a
            reconnect or a recycle's successor) allowed before giving up with
            :exc:`RetriesExhausted`; None retries forever.
        stable_after: Seconds a connection must stay up for the backoff to reset.
        fatal_close_codes: Close codes that end the client instead of being retried
            (default 1008 and 4000-4999); a set of ints 1000-4999.
        send_timeout: Default timeout of :meth:`send`, including the wait for a
            connection. None waits forever.
        max_subscriptions_per_connection, max_topics_per_message, send_rate, connect_rate:
            The venue's limits (default: the class attributes of those names; see
            :class:`~._hooks.ClientHooks`).

    Constructed inside a running event loop, the client starts at once; otherwise
    on :meth:`start` or ``async with``.
    """

    def __init__(
        self,
        *,
        # Liveness
        idle_timeout: float | None = None,
        idle_counts: IdleCounts = "data",
        # Stream defaults
        maxsize: int = DEFAULT_MAXSIZE,
        overflow: Overflow = "error",
        # Reconnection
        backoff_initial: float = DEFAULT_BACKOFF_INITIAL,
        backoff_factor: float = DEFAULT_BACKOFF_FACTOR,
        backoff_max: float = DEFAULT_BACKOFF_MAX,
        backoff_jitter: float = DEFAULT_BACKOFF_JITTER,
        max_retries: int | None = None,
        stable_after: float = DEFAULT_STABLE_AFTER,
        fatal_close_codes: frozenset[int] | set[int] | range | tuple[int, ...] = DEFAULT_FATAL_CLOSE_CODES,
        # Sending
        send_timeout: float | None = DEFAULT_SEND_TIMEOUT,
        # The venue's limits
        max_subscriptions_per_connection: int | None | Default = Default.CLASS,
        max_topics_per_message: int | None | Default = Default.CLASS,
        send_rate: Rate | None | Default = Default.CLASS,
        connect_rate: Rate | None | Default = Default.CLASS,
    ) -> None:
        name = type(self).__name__
        check_buffer(name, maxsize, overflow)
        if idle_timeout is not None:
            check_number(name, "idle_timeout", idle_timeout, positive=True)
        if send_timeout is not None:
            check_number(name, "send_timeout", send_timeout, positive=True)
        check_choice(name, "idle_counts", idle_counts, IDLE_COUNTS)
        self._fatal_close_codes = check_close_codes(name, fatal_close_codes)
        given = dict(max_subscriptions_per_connection=max_subscriptions_per_connection,
                     max_topics_per_message=max_topics_per_message, send_rate=send_rate, connect_rate=connect_rate)
        limits = check_limits(name, {k: getattr(self, k) if isinstance(v, Default) else v for k, v in given.items()})
        policy = RetryPolicy(
            initial=backoff_initial, factor=backoff_factor, maximum=backoff_max, jitter=backoff_jitter,
            max_retries=max_retries, stable_after=stable_after, is_fatal=self._is_fatal, where=name,
        )
        self._maxsize = maxsize
        self._overflow: Overflow = overflow
        self._send_timeout = send_timeout
        self._counters = Counters()
        pressure = Pressure()
        index: Index[Target] = Index(on_error=self._predicate_failed)
        self._consumers: Consumers[M] = Consumers(index, self._counters, pressure)
        self._conversations: Conversations[M] = Conversations(
            index=index,
            on_error=self._predicate_failed,
            serialize=self._serialize,
            connection=lambda what: self._wait_link(None, what),
            no_connection=self._no_connection,
            refusal=self._refusal,
        )
        self._tasks = Tasks()
        # Every event goes through self._emit: with a _sequence hook, a sequencer watches them go by.
        self._sequencer, self._emit, admit = wire_sequences(self, index, self._counters, self._consumers,
                                                            self._tasks, policy)
        numbers = itertools.count(1)  # connection numbers, unique over the shards
        rate: Rate | None = limits["connect_rate"]
        connect_limit = None if rate is None else RateLimit(rate[0], rate[1], time.monotonic)

        def make(shard: int, on_open: Callable[[Link], Coroutine[Any, Any, None]]) -> tuple[Supervisor, Counters]:
            counters = Counters()
            return Supervisor(
                self, index=index, counters=counters, pressure=pressure, policy=policy if shard == 0 else policy.fresh(),
                idle_timeout=idle_timeout, idle_counts=idle_counts, on_closed=self._conversations.connection_closed,
                emit=self._emit, admit=admit, shard=shard, numbers=numbers, on_open=on_open,
                send_rate=limits["send_rate"], connect_limit=connect_limit,
            ), counters

        self._shards = Shards(
            self, limits=limits, make=make, start=self._start_shard, counters=self._counters,
            spawn=self._tasks.spawn, next_id=self._conversations.next_id,
            request=lambda conn, msg, timeout: self._conversations.request(msg, timeout, self.request_id_key, on=conn),
        )
        #: Shard 0's: the connection of send, request and wait_connected.
        self._supervisor = self._shards.first.supervisor
        self._failure: Callable[[], BaseException] | None = None
        if running_loop() is not None:
            self._start()

    # -- life ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the supervisor in the running loop. Idempotent; does not wait for a connection."""
        self._start()

    def _start(self) -> None:
        self._check_open("start")
        if self._tasks.started:
            return
        for shard in self._shards:
            self._tasks_start_shard(shard)
        for handler in self._consumers.async_handlers:
            if handler.task is None:
                handler.task = self._tasks.spawn(handler.run(), f"handler {handler.fn!r}")

    async def __aenter__(self) -> Self:
        self._start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.exit()

    def _start_shard(self, shard: Shard) -> None:
        """Start a new shard's supervisor, if the client runs (else :meth:`_start` will)."""
        if self._tasks.started and not self._tasks.closing:
            self._tasks_start_shard(shard)

    def _tasks_start_shard(self, shard: Shard) -> None:
        what = f"supervisor shard {shard.number}" if shard.number else "supervisor"
        shard.task = self._tasks.start(self._supervise(shard), what)

    async def exit(self) -> None:
        """Close the connection (with a close frame), end every stream, and stop every task.

        Idempotent and safe to call from anywhere, including a handler or a hook.
        Streams yield what they had buffered and then end normally; pending
        ``request``/``expect`` calls fail with :exc:`ClientClosed`; later calls
        to ``send``/``request``/``stream_filter`` raise it. When it returns, no
        task of the client is left running.

        It takes about a second at most: the server gets ``EXIT_GRACE`` (1 s) to
        answer the close frame before the socket is aborted, and async handlers
        get as long to finish what they hold before they are cancelled. An async
        handler that calls it gets it back, and its task ends after that call
        (the rest of its buffer is discarded). A hook of the supervisor
        (``_on_connect``, an async ``_parse_raw_data``) that calls it is
        cancelled instead: the supervisor it runs in is being stopped.
        """
        await self._tasks.exit(lambda: self._fail_gates(lambda: ClientClosed("the client has exited")), self._release)

    def _fail_gates(self, make_error: Callable[[], BaseException]) -> None:
        for shard in self._shards:
            shard.supervisor.gate.fail(make_error)

    async def _release(self) -> None:
        """End every consumer and wait at exit; a handler that called exit() loses its backlog."""
        self._emit(Closed())
        self._consumers.end(None)
        self._conversations.fail_all(lambda: ClientClosed("the client has exited"))
        for handler in self._consumers.async_handlers:
            if handler.task in self._tasks.exiting:
                # It asked for the end: it ends right after the call it is in.
                await handler.stream.close()
        logger.info("{} exiting", type(self).__name__)

    async def _supervise(self, shard: Shard) -> None:
        enter(shard)  # hooks run by this task (and the tasks they start) learn their shard
        error = await shard.supervisor.run()
        # Announced only now, so that whoever sees the error finds the connection
        # closed and nothing of the supervisor's still running.
        if error is not None and not self._tasks.closing:
            self._give_up(error)

    def _give_up(self, error: BaseException) -> None:
        """End the client with ``error``: no more retries; waiters, streams and requests get it."""
        logger.error("{} gave up: {}", type(self).__name__, describe(error))

        def make_error() -> BaseException:
            return _copy_error(error)

        self._failure = make_error
        self._fail_gates(make_error)
        for shard in self._shards:  # one shard's verdict is the client's: the others stop too
            if shard.task is not None and shard.task is not asyncio.current_task():
                shard.task.cancel()
        self._emit(GaveUp(make_error()))
        self._consumers.end(make_error, events=False)
        self._conversations.fail_all(make_error)

    def _refusal(self) -> BaseException | None:
        """The error the client gave up with (a fresh copy), or None while it has not."""
        return None if self._failure is None else self._failure()

    def _predicate_failed(self, exc: BaseException, condition: object) -> None:
        self._counters.predicate_errors += 1
        logger.opt(lazy=True).warning(
            "filter predicate in {} raised; treated as no match\n{}", lambda: repr(condition), lambda: traceback_of(exc)
        )

    def _check_open(self, what: str) -> None:
        if self._tasks.closing:
            raise ClientClosed(f"{what}: the client has exited")

    # -- consumers -------------------------------------------------------------------------

    def stream_filter(
        self,
        filters: Filters = None,
        *,
        maxsize: int | None = None,
        overflow: Overflow | None = None,
        copy: bool = False,
        events: bool = False,
        gaps: bool = False,
        _filters: Filters = None,
    ) -> Stream[M]:
        """Return a new stream of the messages matching ``filters``, from now on.

        A stream its consumer no longer references is closed and unregistered
        (see :class:`Stream`); one made inside ``_when2create_new_ws`` ends when that
        call returns or raises.

        Args:
            filters: A list of dicts (or one dict); a message matches when every key/value
                of any one dict equals the message's. None or [] matches everything. A
                tuple key is a path into nested mappings; a callable value is a predicate;
                a callable item is a predicate on the whole message.
            maxsize: Buffer size (default: the client's).
            overflow: What a full buffer does (default: the client's).
            copy: Give this stream deep copies instead of the shared message.
            events: Also carry the lifecycle events (``Connected``, ``Disconnected``,
                ...) in-band, each at the point of the message flow where it happened.
            gaps: Carry the ``Gap`` events (see ``_sequence``) in-band, without the others.
            _filters: The older package's name of ``filters``.

        Raises:
            TypeError, ValueError: a malformed filter or option, named in the message.
            ClientClosed: after :meth:`exit`.
        """
        self._check_open("stream_filter")
        stream = self._consumers.add_stream(
            one_of("stream_filter", "filters", filters, "_filters", _filters),
            maxsize=self._maxsize if maxsize is None else maxsize,
            overflow=self._overflow if overflow is None else overflow,
            copy=copy,
            events=events, gaps=gaps,
        )
        refusal = self._refusal()
        if refusal is not None:
            stream.finish(refusal)
        return stream

    def events(self, *, maxsize: int = DEFAULT_EVENTS_MAXSIZE) -> Stream[Event]:
        """Return a new stream of the client's lifecycle events, from now on.

        ``Connected``, ``Disconnected``, ``Retrying``, ``Recycling``, ``Recycled``,
        ``Gap``, ``GaveUp``, ``Closed`` (frozen dataclasses; ``match`` them), in the order
        they happened. Each is emitted at its exact point of the message flow: a
        stream made with ``stream_filter(..., events=True)`` shows where. The oldest
        event is dropped when ``maxsize`` wait unread (counted, like any stream's
        drops). It ends after ``Closed()``, at :meth:`exit`; not when the client gives up.

        Raises:
            TypeError, ValueError: a bad ``maxsize``.
            ClientClosed: after :meth:`exit`.
        """
        self._check_open("events")
        return self._consumers.add_events(maxsize)

    def add_handler(
        self,
        fn: Callable[[M], Any] | None = None,
        filters: Filters = None,
        *,
        copy: bool = False,
        maxsize: int = DEFAULT_HANDLER_MAXSIZE,
        overflow: Overflow = "drop_oldest",
        function_or_coroutine_function: Callable[[M], Any] | None = None,
    ) -> None:
        """Call ``fn(msg)`` for every matching message (``filters`` as for :meth:`stream_filter`).

        Handlers share the message object with every stream; ``copy=True`` gives
        ``fn`` a deep copy to change. ``function_or_coroutine_function`` is the older
        package's name of ``fn``. A plain function is called inline by the pump, in arrival order, and must
        be quick. A coroutine function runs in its own task, one message at a time,
        in arrival order, behind a buffer of ``maxsize`` messages (``overflow``:
        ``"drop_oldest"`` or ``"drop_newest"``; drops are counted). Exceptions are
        logged with their traceback, counted in ``stats()["handler_errors"]``, and
        do not stop the handler.
        """
        self._check_open("add_handler")
        fn = one_of("add_handler", "fn", fn, "function_or_coroutine_function", function_or_coroutine_function,
                    required=True)
        assert fn is not None
        handler = self._consumers.add_handler(fn, filters, maxsize=maxsize, overflow=overflow, copy=copy)
        if handler is not None and self._tasks.started:
            handler.task = self._tasks.spawn(handler.run(), f"handler {fn!r}")

    def remove_handler(self, fn: Callable[[M], Any]) -> None:
        """Remove the first handler equal (``==``) to ``fn``.

        An async handler finishes the messages it already holds, then its task ends.

        Raises:
            ValueError: no such handler.
        """
        self._consumers.remove_handler(fn)

    def _watch_lag(self, on_wait: Callable[[float], None], on_message: Callable[[Any], None] | None) -> None:
        """Metrics' seam (see :func:`async_ws_stream.metrics.instrument`)."""
        self._consumers.watch_lag(on_wait, on_message)

    # -- state -----------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Return counters and a snapshot of every stream, as a fresh dict (keys: :func:`~._counters.report`)."""
        supervisor = self._supervisor
        conn = supervisor.current
        last = supervisor.last_error
        return report(
            total(self._counters, *self._shards.counters()),
            state=(State.CLOSED if self._tasks.closing else State.FAILED if self._failure else supervisor.state).value,
            connection=None if conn is None else conn.number,
            last_frame=None if conn is None else conn.last_frame,
            last_error=None if last is None else describe(last),
            pending=len(self._conversations),
            streams=self._consumers.snapshot(),
            subscriptions=len(self._shards.topics),
            shards=self._shards.snapshot(),
        ) | sequence_stats(self._counters, self._sequencer)

    @classmethod
    def start_in_thread(cls, *args: Any, **kwargs: Any) -> ThreadedClient[M]:
        """Build ``cls(*args, **kwargs)`` in a new event-loop thread; return a blocking handle.

        The client is constructed inside the thread's running loop, so it starts at
        once (it does not wait for a connection: call ``handle.wait_connected()``).
        The handle's ``stream_filter`` gives blocking iterators, and its ``send``,
        ``request``, ``wait_for``, ``stats`` and ``exit`` are plain calls, safe from
        any thread; see :class:`~async_ws_stream.threaded.ThreadedClient`.

        Raises:
            ValueError, TypeError: the constructor rejected an option (the thread is
                gone when this raises).
        """
        return ThreadedClient._start(lambda: cls(*args, **kwargs))


def _copy_error(error: BaseException) -> BaseException:
    """A fresh instance of ``error`` (same type, args and cause), so each raise has its own traceback."""
    fresh = copy.copy(error)
    fresh.__cause__ = error.__cause__
    return fresh


#: The name the older package used; code written for it runs unchanged but for the import.
AsyncWebsocketStreamInterface = AsyncWsStream
