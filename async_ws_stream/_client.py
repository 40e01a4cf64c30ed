"""The base class: a supervisor that owns one websocket, and the consumers fed from it.

One task, the supervisor, runs the life of the client::

    connect ─► serve ──(loss)──► back off ─► connect ─► serve ...
                 │
                 └─(recycle)─► the successor was opened while this one was read;
                               read this one to its end, then serve the successor

While a connection is served, up to three tasks run under one TaskGroup: the
pump (read, parse, dispatch), the recycle trigger (the user's
``_when2create_new_ws`` and then the make-before-break swap) and, with
``idle_timeout``, a watchdog. Everything else (send, request, streams) talks to
the supervisor through plain state and one gate, never by polling.
"""

from __future__ import annotations

import abc
import asyncio
import copy
import enum
import inspect
import itertools
import json
import re
import time
from collections.abc import Callable, Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Self, TypeVar

from loguru import logger
from websockets.exceptions import ConnectionClosed

from ._backoff import (
    DEFAULT_BACKOFF_FACTOR,
    DEFAULT_BACKOFF_INITIAL,
    DEFAULT_BACKOFF_JITTER,
    DEFAULT_BACKOFF_MAX,
    backoff_delays,
    fatal_error,
    retry_after,
)
from ._dispatch import Index, Subscription, compile_condition, compile_filters
from ._expect import Expectation
from ._streams import (
    DEFAULT_MAXSIZE,
    AsyncHandler,
    Overflow,
    Stream,
    SyncHandler,
    check_buffer_options,
)
from .exceptions import (
    Alarm,
    AsyncWsStreamError,
    ClientClosed,
    ConnectionLost,
    ConnectionRejected,
    RetriesExhausted,
    Timeout,
)
from .transports import guard

if TYPE_CHECKING:
    from .threaded import ThreadedClient

__all__ = ["AsyncWsStream", "AsyncWebsocketStreamInterface"]

M = TypeVar("M")

DEFAULT_SEND_TIMEOUT = 10.0
DEFAULT_REQUEST_TIMEOUT = 10.0
DEFAULT_STABLE_AFTER = 5.0
DEFAULT_HANDLER_MAXSIZE = DEFAULT_MAXSIZE
# How long exit() lets the server answer our close frame, and async handlers
# finish what they hold, before it stops waiting.
EXIT_GRACE = 1.0

_URL = re.compile(r"(wss?://[^/\s?#'\"]+)[^\s'\"]*", re.IGNORECASE)


def redact(text: str) -> str:
    """Cut the path and query of every ws:// or wss:// URL in ``text`` (listen keys, tokens)."""
    return _URL.sub(r"\1/…", text)


def describe(exc: BaseException) -> str:
    """A short, secret-free one-line description of a failure, for logs."""
    text = str(exc)
    return redact(f"{type(exc).__name__}: {text}" if text else type(exc).__name__)


class _Default(enum.Enum):
    """Marks "the client's own default" where None already means "no limit"."""

    SEND_TIMEOUT = "send_timeout"


class _State(enum.Enum):
    NEW = "new"  # constructed, supervisor not started
    RUNNING = "running"
    FAILED = "failed"  # gave up (RetriesExhausted, ConnectionRejected); waits for exit()
    CLOSED = "closed"  # exit() was called


class _Counters:
    """The client's running totals; streams and handlers share it to count drops and errors."""

    __slots__ = (
        "connects",
        "crowded",
        "dropped",
        "frames",
        "handler_errors",
        "parse_errors",
        "predicate_errors",
        "pump_yields",
        "reconnects",
        "recycles",
        "retries",
        "skipped",
    )

    def __init__(self) -> None:
        self.connects = 0
        self.reconnects = 0
        self.recycles = 0
        self.retries = 0
        self.frames = 0
        self.skipped = 0  # frames parsed to None
        self.parse_errors = 0
        self.handler_errors = 0
        self.predicate_errors = 0
        self.dropped = 0
        self.pump_yields = 0  # times the pump let woken consumers drain in the middle of a read
        # Not a total: a stream sets it when a woken consumer's buffer is half full;
        # the pump clears it and yields once, before that buffer can overflow.
        self.crowded = False


class _Connection:
    """One websocket connection and what the supervisor knows about it."""

    __slots__ = ("closed_by", "last_frame", "number", "opened_at", "pending", "successor", "ws")

    def __init__(self, ws: Any, number: int) -> None:
        self.ws = ws
        self.number = number
        self.opened_at = self.last_frame = time.monotonic()
        self.successor: _Connection | None = None
        self.pending: set[Expectation[Any]] = set()  # requests sent on it, awaiting replies
        self.closed_by: BaseException | None = None


class _Gate:
    """The current connection, for everyone who waits for one; or the reason there will be none."""

    def __init__(self) -> None:
        self.value: _Connection | None = None
        self.error: Callable[[], BaseException] | None = None
        self._waiters: set[asyncio.Future[None]] = set()

    def open(self, value: _Connection) -> None:
        self.value = value
        self._wake()

    def shut(self) -> None:
        self.value = None

    def fail(self, make_error: Callable[[], BaseException]) -> None:
        self.value = None
        self.error = make_error
        self._wake()

    async def wait(self) -> _Connection:
        while True:
            if self.error is not None:
                raise self.error()
            if self.value is not None:
                return self.value
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.add(waiter)
            try:
                await waiter
            finally:
                self._waiters.discard(waiter)

    def _wake(self) -> None:
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)


def _abort(ws: Any) -> None:
    """Drop a connection at once, without a closing handshake (it is dead or stalled anyway)."""
    transport = getattr(ws, "transport", None)
    if transport is not None:
        transport.abort()


async def _close(ws: Any, timeout: float) -> None:
    """Close with a close frame; abort if the peer does not answer within ``timeout``."""
    try:
        async with asyncio.timeout(timeout):
            await ws.close()
    except TimeoutError:
        _abort(ws)


class AsyncWsStream(abc.ABC, Generic[M]):
    """One websocket connection, kept alive, as any number of filtered message streams.

    Subclass it and implement three hooks:

    * ``async _create_ws()``: open and return a connection (``websockets.connect(...)``).
    * ``async _when2create_new_ws()``: return (or raise) when the connection must be recycled.
    * ``_parse_raw_data(raw)``: a frame (``str``/``bytes``) to a message, or None to skip the
      frame; a plain function or a coroutine function.

    and optionally ``async _on_connect(ws)`` (subscribe, log in) and ``_serialize(msg)``.

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
      (see :func:`async_ws_stream._backoff.backoff_delays`); the first retry is
      immediate, and the delay resets once a connection stays up ``stable_after``
      seconds. A connection that dies sooner counts as a failed attempt.
    * ``exit()`` is idempotent and prompt, and leaves no task behind.

    Keyword-only options (validated here; hooks never run inside ``__init__``):

    Args:
        idle_timeout: Seconds without a data frame after which the connection is
            treated as dead and replaced. None (default) disables the watchdog.
        maxsize: Default buffer size of new streams.
        overflow: Default overflow policy of new streams: ``"error"``,
            ``"drop_oldest"`` or ``"drop_newest"``.
        backoff_initial: Delay before the second retry, in seconds.
        backoff_factor: Growth of the delay from one retry to the next.
        backoff_max: Upper bound of a delay.
        backoff_jitter: Fraction (0 to 1) by which a delay is randomly shortened.
        max_retries: Consecutive failed attempts allowed before giving up with
            :exc:`RetriesExhausted`; None retries forever.
        stable_after: Seconds a connection must stay up for the backoff to reset.
        send_timeout: Default timeout of :meth:`send`, including the wait for a
            connection. None waits forever.

    Constructed inside a running event loop, the client starts at once; otherwise
    on :meth:`start` or ``async with``.
    """

    #: The key that carries a request's id, for :meth:`request` and :meth:`poll`.
    request_id_key: ClassVar[str] = "id"

    def __init__(
        self,
        *,
        # Liveness
        idle_timeout: float | None = None,
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
        # Sending
        send_timeout: float | None = DEFAULT_SEND_TIMEOUT,
    ) -> None:
        name = type(self).__name__
        check_buffer_options(name, maxsize, overflow)
        for option, value in (
            ("idle_timeout", idle_timeout),
            ("send_timeout", send_timeout),
        ):
            if value is not None:
                _check_number(name, option, value, positive=True)
        for option, value in (
            ("backoff_initial", backoff_initial),
            ("backoff_max", backoff_max),
            ("stable_after", stable_after),
        ):
            _check_number(name, option, value)
        _check_number(name, "backoff_factor", backoff_factor)
        if backoff_factor < 1:
            raise ValueError(f"{name}: backoff_factor must be >= 1, got {backoff_factor!r}")
        _check_number(name, "backoff_jitter", backoff_jitter)
        if backoff_jitter > 1:
            raise ValueError(f"{name}: backoff_jitter must be between 0 and 1, got {backoff_jitter!r}")
        if max_retries is not None and (isinstance(max_retries, bool) or not isinstance(max_retries, int)
                                        or max_retries < 0):
            raise ValueError(f"{name}: max_retries must be None or an int >= 0, got {max_retries!r}")

        self._idle_timeout = idle_timeout
        self._maxsize = maxsize
        self._overflow: Overflow = overflow
        self._backoff = (backoff_initial, backoff_factor, backoff_max, backoff_jitter)
        self._max_retries = max_retries
        self._stable_after = stable_after
        self._send_timeout = send_timeout

        self._state = _State.NEW
        self._counters = _Counters()
        self._index: Index[Any] = Index(on_error=self._predicate_failed)
        self._streams: dict[Stream[M], Subscription[Any]] = {}
        self._handlers: list[tuple[Callable[[M], Any], SyncHandler | AsyncHandler, Subscription[Any]]] = []
        self._expectations: set[Expectation[M]] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._gate = _Gate()
        self._conn: _Connection | None = None
        self._numbers = itertools.count(1)
        self._request_ids = itertools.count(1)
        self._supervisor: asyncio.Task[None] | None = None
        self._shutdown: asyncio.Task[None] | None = None
        self._exiting: set[asyncio.Task[Any] | None] = set()  # tasks waiting in exit()
        # Consecutive retries since a connection last stayed up, and their delays.
        self._retries_used = 0
        self._delays = backoff_delays(*self._backoff)
        if _running_loop() is not None:
            self._start()

    # -- the hooks -------------------------------------------------------------------------

    @abc.abstractmethod
    async def _create_ws(self) -> Any:
        """Open and return a new connection (for example ``await websockets.connect(url)``)."""

    @abc.abstractmethod
    async def _when2create_new_ws(self) -> None:
        """Return (or raise) when the current connection must be replaced by a fresh one.

        Runs once per connection, from the moment it carries traffic.
        """

    @abc.abstractmethod
    def _parse_raw_data(self, raw: str | bytes) -> M | None | Any:
        """Turn one frame into a message; return None to skip the frame.

        May be a plain function (faster: no coroutine per frame) or a coroutine
        function. Raising counts the frame as a parse error; the stream goes on.
        """

    async def _on_connect(self, ws: Any) -> None:
        """Run on every new connection before it carries traffic; talk to ``ws`` directly."""

    def _serialize(self, msg: Any) -> str | bytes:
        """Encode a non-``str``/``bytes`` message for :meth:`send` (default: compact JSON)."""
        return json.dumps(msg, separators=(",", ":"))

    def _is_fatal(self, exc: BaseException) -> ConnectionRejected | None:
        """Decide whether a connection failure ends the client instead of being retried.

        Return the error to end the client with, or None to retry. By default a
        handshake answered 401/403 and a close code 1008 or 4000-4999 are fatal.
        Override to change that; ``exc`` is what opening a connection raised
        (``_create_ws`` or ``_on_connect``, for a reconnect or for a recycle's new
        connection alike) or what ended the connection (a ``websockets``
        ``ConnectionClosed``). The returned error is what streams end with and
        what ``send``/``request``/``wait_connected`` raise from then on.
        """
        return fatal_error(exc)

    # -- life ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the supervisor in the running loop. Idempotent; does not wait for a connection."""
        self._start()

    def _start(self) -> None:
        if self._state is _State.CLOSED:
            raise ClientClosed(f"{type(self).__name__} has exited; make a new client")
        if self._state is not _State.NEW:
            return
        self._state = _State.RUNNING
        self._supervisor = self._spawn(self._supervise(), "supervisor")
        for _, handler, _ in self._handlers:
            if isinstance(handler, AsyncHandler) and handler.task is None:
                handler.task = self._spawn(handler.run(), f"handler {handler.fn!r}")

    async def __aenter__(self) -> Self:
        self._start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.exit()

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
        caller = asyncio.current_task()
        self._exiting.add(caller)
        try:
            if self._shutdown is None:
                self._state = _State.CLOSED
                self._gate.fail(lambda: ClientClosed("the client has exited"))
                self._shutdown = asyncio.get_running_loop().create_task(
                    self._close_all(), name="async_ws_stream exit"
                )
            # A caller inside the supervisor (a hook) is cancelled by the shutdown it
            # asked for; the shield keeps the shutdown going without it.
            await asyncio.shield(self._shutdown)
        finally:
            self._exiting.discard(caller)
        if caller not in self._tasks:
            # An async handler that called exit() is still finishing the call it
            # made it from (its backlog was discarded); a caller from outside the
            # library waits for that too, so that nothing of ours outlives exit().
            # Library tasks skip this: two handlers must not wait for each other.
            rest = list(self._tasks)
            if rest:
                _, late = await asyncio.wait(rest, timeout=EXIT_GRACE)
                for task in late:
                    task.cancel()
                if late:
                    await asyncio.wait(late)

    async def _close_all(self) -> None:
        supervisor = self._supervisor
        if supervisor is not None:
            supervisor.cancel()
        self._end_consumers(None, lambda: ClientClosed("the client has exited"))
        for _, handler, _ in self._handlers:
            if isinstance(handler, AsyncHandler) and handler.task in self._exiting:
                # It asked for the end: it ends right after the call it is in.
                await handler.stream.close()
        # A handler that called exit() waits for us; we must not wait for it.
        workers = [t for t in self._tasks if t is not supervisor and t not in self._exiting]
        if workers:
            # Async handlers may finish what they already hold, briefly.
            _, late = await asyncio.wait(workers, timeout=EXIT_GRACE)
            for task in late:
                task.cancel()
        # The supervisor is awaited even when a hook of its own called exit(): it
        # was cancelled above, so that exit() call raises instead of waiting for us.
        pending = [t for t in self._tasks if t is supervisor or t not in self._exiting]
        if pending:
            await asyncio.wait(pending)
        logger.info("{} exited", type(self).__name__)

    def _spawn(self, coro: Any, what: str) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro, name=f"async_ws_stream {what}")
        self._tasks.add(task)
        task.add_done_callback(self._reap)
        return task

    def _reap(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.opt(exception=task.exception()).error("task {} failed", task.get_name())

    # -- the supervisor --------------------------------------------------------------------

    async def _supervise(self) -> None:
        conn: _Connection | None = None
        error: BaseException | None = None
        try:
            conn = await self._connect(None)
            while True:
                successor = await self._serve(conn)
                if successor is not None:
                    conn = successor
                    continue
                cause = conn.closed_by or ConnectionLost("the connection ended")
                if (fatal := self._is_fatal(cause)) is not None:
                    raise fatal from cause
                if time.monotonic() - conn.opened_at >= self._stable_after:
                    self._retries_used = 0
                    self._delays = backoff_delays(*self._backoff)
                conn = None  # it is closed: nothing for the finally below to retire meanwhile
                conn = await self._connect(cause)
                self._counters.reconnects += 1
        except AsyncWsStreamError as exc:
            error = exc
        except Exception as exc:  # the supervisor boundary: a bug of ours, never silent
            logger.opt(exception=True).error("supervisor failed")
            error = exc
        finally:
            if conn is not None:
                self._gate.shut()
                await self._retire(conn)
        # Announced only now, so that whoever sees the error finds the connection
        # closed and nothing of ours still running.
        if error is not None:
            self._give_up(error)

    async def _connect(self, cause: BaseException | None) -> _Connection:
        """Open a connection, retrying with backoff; ``cause`` is why we are (re)connecting."""
        while True:
            if cause is not None:
                if self._max_retries is not None and self._retries_used >= self._max_retries:
                    raise RetriesExhausted(
                        f"gave up after {self._retries_used} retries; last failure: {describe(cause)}"
                    ) from cause
                self._retries_used += 1
                self._counters.retries += 1
                delay = max(next(self._delays), retry_after(cause) or 0.0)
                logger.warning("retry {} in {:.2f}s after {}", self._retries_used, delay, describe(cause))
                if delay > 0:
                    await asyncio.sleep(delay)
            try:
                return await self._open()
            except Exception as exc:  # the hooks are user code: any failure is a failed attempt
                if (fatal := self._is_fatal(exc)) is not None:
                    raise fatal from exc
                cause = exc

    async def _open(self) -> _Connection:
        ws = await self._create_ws()
        guard(ws)  # floods: big reads parsed in slices (a no-op for what it does not know)
        try:
            await self._on_connect(ws)
        except BaseException:
            await _close(ws, EXIT_GRACE)
            raise
        conn = _Connection(ws, next(self._numbers))
        self._counters.connects += 1
        logger.info("connection #{} open", conn.number)
        return conn

    async def _serve(self, conn: _Connection) -> _Connection | None:
        """Pump ``conn`` until it ends; return its successor if it was recycled."""
        self._conn = conn
        self._gate.open(conn)
        try:
            async with asyncio.TaskGroup() as tg:
                recycler = tg.create_task(self._recycle(conn), name="async_ws_stream recycle")
                watchdog = tg.create_task(self._watch(conn), name="async_ws_stream watchdog") \
                    if self._idle_timeout is not None else None
                await self._pump(conn)
                if watchdog is not None:
                    watchdog.cancel()
                if conn.successor is None:
                    recycler.cancel()
        except BaseExceptionGroup as group:
            # The recycler raises on purpose only to end the client (a fatal refusal of
            # the successor); the supervisor takes that like any other fatal error.
            errors = group.exceptions
            if len(errors) == 1 and isinstance(errors[0], AsyncWsStreamError):
                raise errors[0] from errors[0].__cause__
            raise
        finally:
            if self._conn is conn:
                self._conn = None
                self._gate.shut()
            self._fail_pending(conn)
        return conn.successor

    async def _pump(self, conn: _Connection) -> None:
        """The hot path: read, parse, dispatch. Never awaits a consumer."""
        recv = conn.ws.recv
        parse = self._parse_raw_data
        parse_is_async = inspect.iscoroutinefunction(parse)
        match = self._index.match
        counters = self._counters
        clock = time.monotonic
        try:
            while True:
                raw = await recv()
                conn.last_frame = clock()
                counters.frames += 1
                try:
                    msg = (await parse(raw)) if parse_is_async else parse(raw)  # type: ignore[misc]
                except Exception as exc:
                    self._parse_failed(raw, exc)
                    continue
                if msg is None:
                    counters.skipped += 1
                    continue
                for target in match(msg):
                    target._feed(msg)
                if counters.crowded:
                    counters.crowded = False
                    counters.pump_yields += 1
                    await asyncio.sleep(0)
        except ConnectionClosed as exc:
            conn.closed_by = exc
            if conn.successor is None:
                logger.warning("connection #{} lost: {}", conn.number, describe(exc))
            else:
                logger.info("connection #{} closed after recycle", conn.number)

    async def _recycle(self, conn: _Connection) -> None:
        """Wait for the user's trigger, then swap in a new connection before closing ``conn``."""
        try:
            await self._when2create_new_ws()
            reason = "_when2create_new_ws returned"
        except Exception as exc:
            logger.opt(exception=True).warning("_when2create_new_ws raised; recycling connection #{}", conn.number)
            reason = f"_when2create_new_ws raised {describe(exc)}"
        logger.info("recycling connection #{}: {}", conn.number, reason)
        delays = backoff_delays(*self._backoff)
        while True:
            try:
                successor = await self._open()
                break
            except Exception as exc:
                if (fatal := self._is_fatal(exc)) is not None:
                    # Refused for good (401/403, close 1008/4xxx): retrying cannot help, and
                    # the old connection would be refused the same way once it ends.
                    raise fatal from exc
                delay = max(next(delays), retry_after(exc) or 0.0)
                logger.warning(
                    "recycle of connection #{}: new connection failed ({}); connection #{} keeps serving, "
                    "retry in {:.2f}s",
                    conn.number, describe(exc), conn.number, delay,
                )
                await asyncio.sleep(delay)
        conn.successor = successor
        self._counters.recycles += 1
        # New sends go out on the successor; the pump keeps reading the old one to its end.
        self._conn = successor
        self._gate.open(successor)
        await _close(conn.ws, EXIT_GRACE)

    async def _watch(self, conn: _Connection) -> None:
        """Treat the connection as dead after ``idle_timeout`` seconds without a data frame."""
        assert self._idle_timeout is not None
        # A successor waits unread while its predecessor drains; its silence counts
        # from when it is served, not from when it was opened.
        served_at = time.monotonic()
        while True:
            remaining = max(conn.last_frame, served_at) + self._idle_timeout - time.monotonic()
            if remaining <= 0:
                logger.warning(
                    "connection #{}: no data frame for {}s (idle_timeout); reconnecting",
                    conn.number, self._idle_timeout,
                )
                _abort(conn.ws)
                return
            await asyncio.sleep(remaining)

    async def _retire(self, conn: _Connection) -> None:
        """Close what the supervisor still holds when it stops."""
        held = [c for c in (conn, conn.successor) if c is not None]
        for c in held:
            self._fail_pending(c)
        # Together, so that a stop mid-recycle costs one close grace, not two.
        results = await asyncio.gather(*(_close(c.ws, EXIT_GRACE) for c in held), return_exceptions=True)
        for c, result in zip(held, results):
            if isinstance(result, Exception):
                logger.opt(exception=result).warning("closing connection #{} failed", c.number)

    def _fail_pending(self, conn: _Connection) -> None:
        for expectation in list(conn.pending):
            expectation.fail(ConnectionLost(
                f"connection #{conn.number} closed before the reply arrived; the request may or may not "
                "have been processed"
            ))
        conn.pending.clear()

    def _give_up(self, error: BaseException) -> None:
        """End the client with ``error``: no more retries; waiters, streams and requests get it."""
        if self._state is _State.CLOSED:
            return
        self._state = _State.FAILED
        logger.error("{} gave up: {}", type(self).__name__, describe(error))

        def make_error() -> BaseException:
            return _copy_error(error)

        self._gate.fail(make_error)
        self._end_consumers(make_error, make_error)

    def _end_consumers(
        self, stream_error: Callable[[], BaseException] | None, waiter_error: Callable[[], BaseException]
    ) -> None:
        for stream in list(self._streams):
            stream._finish(stream_error() if stream_error is not None else None)
        for _, handler, _ in self._handlers:
            if isinstance(handler, AsyncHandler):
                handler.stream._finish()
        for expectation in list(self._expectations):
            expectation.fail(waiter_error())

    def _parse_failed(self, raw: str | bytes, exc: Exception) -> None:
        self._counters.parse_errors += 1
        logger.warning(
            "parse error #{} ({}) in a {}-byte frame starting {!r}",
            self._counters.parse_errors, describe(exc), len(raw), raw[:40],
        )

    def _predicate_failed(self, exc: BaseException, condition: object) -> None:
        self._counters.predicate_errors += 1
        logger.opt(exception=exc).warning("filter predicate in {!r} raised; treated as no match", condition)

    # -- consumers -------------------------------------------------------------------------

    def stream_filter(
        self,
        filters: Sequence[Mapping[Any, Any]] | None = None,
        *,
        maxsize: int | None = None,
        overflow: Overflow | None = None,
        copy: bool = False,
    ) -> Stream[M]:
        """Return a new stream of the messages matching ``filters``, from now on.

        Args:
            filters: A list of dicts; a message matches when every key/value of any
                one dict equals the message's. None or [] matches everything. A tuple
                key is a path into nested mappings; a callable value is a predicate.
            maxsize: Buffer size (default: the client's).
            overflow: What a full buffer does (default: the client's).
            copy: Give this stream deep copies instead of the shared message.

        Raises:
            TypeError, ValueError: a malformed filter or option, named in the message.
            ClientClosed: after :meth:`exit`.
        """
        maxsize = self._maxsize if maxsize is None else maxsize
        overflow = self._overflow if overflow is None else overflow
        check_buffer_options("stream_filter", maxsize, overflow)
        clauses = compile_filters(filters, argname="stream_filter: filters")
        self._check_open("stream_filter")
        stream: Stream[M] = Stream(
            filters, maxsize=maxsize, overflow=overflow, copy=copy,
            counters=self._counters, on_close=self._forget_stream,
        )
        self._streams[stream] = self._index.add(clauses, stream)
        if self._state is _State.FAILED:
            stream._finish(self._gate.error() if self._gate.error else None)
        return stream

    def _forget_stream(self, stream: Stream[Any]) -> None:
        subscription = self._streams.pop(stream, None)
        if subscription is not None:
            self._index.remove(subscription)

    def add_handler(
        self,
        fn: Callable[[M], Any],
        filters: Sequence[Mapping[Any, Any]] | None = None,
        *,
        maxsize: int = DEFAULT_HANDLER_MAXSIZE,
        overflow: Overflow = "drop_oldest",
    ) -> None:
        """Call ``fn(msg)`` for every matching message.

        A plain function is called inline by the pump, in arrival order, and must
        be quick. A coroutine function runs in its own task, one message at a time,
        in arrival order, behind a buffer of ``maxsize`` messages (``overflow``:
        ``"drop_oldest"`` or ``"drop_newest"``; drops are counted). Exceptions are
        logged with their traceback, counted in ``stats()["handler_errors"]``, and
        do not stop the handler.
        """
        if not callable(fn):
            raise TypeError(f"add_handler: fn must be callable, got {type(fn).__name__} {fn!r:.60}")
        if overflow == "error":
            raise ValueError("add_handler: overflow must be 'drop_oldest' or 'drop_newest'; a handler cannot "
                             "raise StreamOverflow at anyone")
        check_buffer_options("add_handler", maxsize, overflow)
        clauses = compile_filters(filters, argname="add_handler: filters")
        self._check_open("add_handler")
        handler: SyncHandler | AsyncHandler
        if inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(getattr(fn, "__call__", None)):
            stream: Stream[Any] = Stream(
                filters, maxsize=maxsize, overflow=overflow, copy=False,
                counters=self._counters, on_close=lambda s: None,
            )
            handler = AsyncHandler(fn, stream, self._counters)
            subscription = self._index.add(clauses, stream)
            if self._state is _State.RUNNING:
                handler.task = self._spawn(handler.run(), f"handler {fn!r}")
        else:
            handler = SyncHandler(fn, self._counters)
            subscription = self._index.add(clauses, handler)
        self._handlers.append((fn, handler, subscription))

    def remove_handler(self, fn: Callable[[M], Any]) -> None:
        """Remove the first handler equal (``==``) to ``fn``.

        An async handler finishes the messages it already holds, then its task ends.

        Raises:
            ValueError: no such handler.
        """
        for i, (registered, handler, subscription) in enumerate(self._handlers):
            if registered == fn:
                del self._handlers[i]
                self._index.remove(subscription)
                if isinstance(handler, AsyncHandler):
                    handler.stream._finish()
                return
        raise ValueError(f"remove_handler: {fn!r} is not a registered handler")

    # -- talking to the server -------------------------------------------------------------

    @property
    def present_ws(self) -> Any:
        """The connection new sends go out on, or None while there is none."""
        return self._conn.ws if self._conn is not None else None

    async def wait_connected(self, timeout: float | None = None) -> Any:
        """Wait until a connection is up and return it.

        Raises:
            Timeout: none within ``timeout`` seconds.
            ClientClosed: the client exited.
            RetriesExhausted, ConnectionRejected: the client gave up.
        """
        return (await self._wait_conn(timeout, "wait_connected")).ws

    async def _wait_conn(self, timeout: float | None, what: str) -> _Connection:
        self._check_open(what)
        if self._state is _State.NEW:
            self._start()
        if self._gate.value is not None:
            return self._gate.value
        try:
            async with asyncio.timeout(timeout):
                return await self._gate.wait()
        except TimeoutError as exc:
            if isinstance(exc, Timeout):
                raise
            raise Timeout(f"{what}: no connection within {timeout}s") from exc

    async def send(self, msg: Any, *, timeout: float | None | _Default = _Default.SEND_TIMEOUT) -> None:
        """Send ``msg``: ``str``/``bytes`` as they are, anything else through :meth:`_serialize`.

        Waits for a connection first, up to ``timeout`` seconds in all (default:
        the client's ``send_timeout``).

        Raises:
            Timeout: no connection, or the send did not complete, in time.
            ConnectionLost: the connection closed while sending.
            ClientClosed: after :meth:`exit`.
        """
        limit = self._send_timeout if isinstance(timeout, _Default) else timeout
        data = msg if isinstance(msg, (str, bytes, bytearray, memoryview)) else self._serialize(msg)
        try:
            async with asyncio.timeout(limit):
                conn = await self._wait_conn(None, "send")
                await _send(conn, data)
        except TimeoutError as exc:
            if isinstance(exc, Timeout):
                raise
            raise Timeout(f"send: not sent within {limit}s") from exc

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
        key = self.request_id_key if id_key is None else id_key
        if not isinstance(msg, Mapping):
            raise TypeError(f"request: msg must be a dict, got {type(msg).__name__} {msg!r:.60}")
        if not isinstance(key, str) or not key:
            raise TypeError(f"request: id_key must be a non-empty str, got {type(key).__name__} {key!r:.60}")
        if timeout is not None:
            _check_number("request", "timeout", timeout)
        if msg.get(key) is None:
            rid: Any = next(self._request_ids)
            out: Any = {**msg, key: rid}
        else:
            rid, out = msg[key], msg
        # Serialised up front, so that an unserialisable message fails here, not
        # after it waited for a connection.
        data = self._serialize(out)
        conn: _Connection | None = None
        expectation: Expectation[M] | None = None
        try:
            async with asyncio.timeout(timeout):
                conn = await self._wait_conn(None, "request")
                # Registered before the send, so that no reply can slip past it;
                # filed on the connection, so that losing it fails the request at once.
                expectation = self._expect(compile_condition({key: rid}), (), None)
                expectation.connection = conn
                conn.pending.add(expectation)
                await _send(conn, data)
                return await expectation
        except TimeoutError as exc:
            if isinstance(exc, Timeout):
                raise
            waited = "no connection" if conn is None else "no reply"
            raise Timeout(f"request {key}={rid!r}: {waited} within {timeout}s") from exc
        finally:
            if expectation is not None:
                expectation.cancel()

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
        alarm_clauses = () if alarms is None or (isinstance(alarms, (list, tuple)) and not alarms) \
            else compile_condition(alarms, argname="expect: alarms")
        if timeout is not None:
            _check_number("expect", "timeout", timeout)
        self._check_open("expect")
        return self._expect(until_clauses, alarm_clauses, timeout)

    def _expect(self, until: Any, alarms: Any, timeout: float | None) -> Expectation[M]:
        expectation: Expectation[M] = Expectation(
            until, alarms, self._forget_expectation, on_error=self._predicate_failed
        )
        expectation.subscription = self._index.add(until + alarms, expectation)
        self._expectations.add(expectation)
        if self._state is _State.FAILED and self._gate.error is not None:
            # The client gave up: no message will ever come, so say why now.
            expectation.fail(self._gate.error())
        elif timeout is not None:
            expectation.fail_after(timeout, lambda: Timeout(f"expect: no matching message within {timeout}s"))
        return expectation

    def _forget_expectation(self, expectation: Expectation[Any]) -> None:
        # Called by the expectation itself, synchronously, the moment it settles.
        self._expectations.discard(expectation)
        self._index.remove(expectation.subscription)
        if expectation.connection is not None:
            expectation.connection.pending.discard(expectation)

    async def wait_for(self, until: Any, *, alarms: Any = None, timeout: float | None = None) -> M:
        """Wait for the first later message matching ``until``: ``await expect(...)`` in one call.

        Registers at the call, like :meth:`expect`, whose arguments and errors it
        shares. Cancelling it is safe: the expectation is unregistered at once.
        """
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
        if not isinstance(msg, Mapping):
            raise TypeError(f"poll: msg must be a dict, got {type(msg).__name__} {msg!r:.60}")
        until_clauses = compile_condition(until, argname="poll: until")
        alarm_clauses = () if alarms is None or (isinstance(alarms, (list, tuple)) and not alarms) \
            else compile_condition(alarms, argname="poll: alarms")
        _check_number("poll", "interval", interval, positive=True)
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 1:
            raise ValueError(f"poll: max_retries must be an int >= 1, got {max_retries!r}")
        key = self.request_id_key if id_key is None else id_key
        # A None id makes request() draw a fresh one for every try.
        fresh = {**msg, key: None}
        on_error = self._predicate_failed
        loop = asyncio.get_running_loop()
        last: BaseException | None = None
        for attempt in range(1, max_retries + 1):
            started = loop.time()
            try:
                reply = await self.request(fresh, timeout=interval, id_key=key)
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

    # -- state -----------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Return counters and a snapshot of every stream, as a fresh dict.

        Keys: ``connects``, ``reconnects``, ``recycles``, ``retries``, ``frames``,
        ``messages``, ``parse_errors``, ``skipped`` (frames parsed to None),
        ``handler_errors``, ``predicate_errors``, ``pump_yields`` (times the pump paused
        in the middle of a read so that woken consumers could drain buffers that were
        half full), ``pending`` (``expect``/``wait_for``/
        ``request``/``poll`` waits not yet settled), ``dropped`` (by every stream and
        handler, closed ones included), ``last_frame_age`` (seconds, or None with no
        connection), ``connected``, ``state`` and ``streams`` (a list of
        ``{"filters", "queued", "dropped"}``).
        """
        c = self._counters
        conn = self._conn
        return {
            "state": self._state.value,
            "connected": conn is not None,
            "connects": c.connects,
            "reconnects": c.reconnects,
            "recycles": c.recycles,
            "retries": c.retries,
            "frames": c.frames,
            "messages": c.frames - c.parse_errors - c.skipped,
            "parse_errors": c.parse_errors,
            "skipped": c.skipped,
            "handler_errors": c.handler_errors,
            "predicate_errors": c.predicate_errors,
            "pump_yields": c.pump_yields,
            "pending": len(self._expectations),
            "dropped": c.dropped,
            "last_frame_age": None if conn is None else time.monotonic() - conn.last_frame,
            "streams": [
                {"filters": s._filters, "queued": s.queued, "dropped": s.dropped} for s in self._streams
            ],
        }

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
        from .threaded import ThreadedClient  # imported here: threaded.py builds on this module

        return ThreadedClient._start(lambda: cls(*args, **kwargs))

    def _check_open(self, what: str) -> None:
        if self._state is _State.CLOSED:
            raise ClientClosed(f"{what}: the client has exited")


async def _send(conn: _Connection, data: Any) -> None:
    try:
        await conn.ws.send(data)
    except ConnectionClosed as exc:
        raise ConnectionLost(f"connection #{conn.number} closed while sending") from exc


def _check_number(where: str, option: str, value: object, *, positive: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        raise TypeError(f"{where}: {option} must be a number, got {type(value).__name__} {value!r}")
    if value < 0 or (positive and value == 0):
        bound = "> 0" if positive else ">= 0"
        raise ValueError(f"{where}: {option} must be {bound}, got {value!r}")


def _copy_error(error: BaseException) -> BaseException:
    """A fresh instance of ``error`` (same type, args and cause), so each raise has its own traceback."""
    fresh = copy.copy(error)
    fresh.__cause__ = error.__cause__
    return fresh


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None  # constructed outside a loop: start() or `async with` starts the client


#: The name the older package used; code written for it runs unchanged but for the import.
AsyncWebsocketStreamInterface = AsyncWsStream
