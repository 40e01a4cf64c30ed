"""Run a client in a background event-loop thread and use it from plain synchronous code.

:meth:`AsyncWsStream.start_in_thread` builds the client *inside* a new thread that
runs its own event loop, and returns a :class:`ThreadedClient`: a handle whose
methods are plain blocking calls, safe from any thread::

    with MyFeed.start_in_thread(url) as feed:
        feed.wait_connected(timeout=10)
        for trade in feed.stream_filter([{"e": "trade"}], timeout=30):
            print(trade["p"])

Every call is carried to the loop with :func:`asyncio.run_coroutine_threadsafe`;
what the coroutine raises (``ClientClosed``, ``Timeout``, ``Alarm``,
``ConnectionLost``, ``RetriesExhausted``, ``ValueError``, ...) is raised in the
calling thread, with its type. A :class:`BlockingStream` never holds the loop:
the loop thread moves messages into a thread-safe hand-off a batch at a time,
and the consumer thread blocks on a future, not on the loop.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import itertools
import threading
import weakref
from collections.abc import Awaitable, Callable, Hashable, Mapping
from types import TracebackType
from typing import Any, Generic, Protocol, Self, TypeVar

from loguru import logger

from ._blocking import BATCH_SIZE, BlockingStream
from ._events import Event
from ._filters import Filters
from ._options import (
    DEFAULT_EVENTS_MAXSIZE,
    DEFAULT_HANDLER_MAXSIZE,
    DEFAULT_REQUEST_TIMEOUT,
    DEFAULT_SUBSCRIBE_TIMEOUT,
    Default,
    Overflow,
    check_timeout,
)
from ._redact import traceback_of
from ._streams import Stream
from .exceptions import ClientClosed

__all__ = ["BATCH_SIZE", "AsyncClient", "BlockingStream", "ThreadedClient"]

M = TypeVar("M")
T = TypeVar("T")

_thread_numbers = itertools.count(1)


class AsyncClient(Protocol[M]):
    """What the handle drives in its loop thread: the calls of :class:`~async_ws_stream.AsyncWsStream`."""

    def stream_filter(
        self,
        filters: Filters = None,
        *,
        maxsize: int | None = None,
        overflow: Overflow | None = None,
        copy: bool = False,
        events: bool = False,
        gaps: bool = False,
    ) -> Stream[M]: ...

    def add_handler(
        self,
        fn: Callable[[M], Any],
        filters: Filters = None,
        *,
        copy: bool = False,
        maxsize: int = DEFAULT_HANDLER_MAXSIZE,
        overflow: Overflow = "drop_oldest",
    ) -> None: ...

    def remove_handler(self, fn: Callable[[M], Any]) -> None: ...

    def events(self, *, maxsize: int = DEFAULT_EVENTS_MAXSIZE) -> Stream[Event]: ...

    async def send(self, msg: Any, *, timeout: Any = ...) -> None: ...

    async def request(
        self, msg: Mapping[str, Any], *, timeout: float | None = DEFAULT_REQUEST_TIMEOUT, id_key: str | None = None
    ) -> M: ...

    async def wait_for(self, until: Any, *, alarms: Any = None, timeout: float | None = None) -> M: ...

    async def poll(
        self,
        msg: Mapping[str, Any],
        until: Any,
        *,
        alarms: Any = None,
        interval: float = 2.0,
        max_retries: int = 50,
        id_key: str | None = None,
    ) -> M: ...

    async def wait_connected(self, timeout: float | None = None) -> Any: ...

    async def subscribe(self, *topics: Hashable, timeout: float | None = ...) -> None: ...

    async def unsubscribe(self, *topics: Hashable, timeout: float | None = ...) -> None: ...

    @property
    def subscriptions(self) -> frozenset[Hashable]: ...

    def stats(self) -> dict[str, Any]: ...

    async def exit(self) -> None: ...


class ThreadedClient(Generic[M]):
    """A client running in its own event-loop thread, driven by plain blocking calls.

    Made by :meth:`AsyncWsStream.start_in_thread`; not constructed directly.

    Every method may be called from any thread (but not from the client's own
    loop thread, where it would wait for itself: there it raises
    ``RuntimeError``; use the async client, :attr:`client`, in that thread).
    Exceptions raised in the loop thread reach the caller with their type.
    Interrupting a blocked call (Ctrl-C in the main thread) cancels what it
    was waiting for in the loop.

    :meth:`exit` (or leaving ``with``) exits the client and joins the thread; it is
    idempotent. The thread is a daemon, and a handle still running when the
    interpreter exits is exited then, so a forgotten handle neither keeps the
    process alive nor skips the close frame.
    """

    def __init__(self, factory: Callable[[], AsyncClient[M]]) -> None:
        self._factory = factory
        self._lock = threading.Lock()  # orders submissions against exit()
        self._closing = False
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: AsyncClient[M] | None = None
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None  # what the loop thread failed with
        self._final_stats: dict[str, Any] | None = None
        self._streams: weakref.WeakSet[BlockingStream[Any]] = weakref.WeakSet()
        self._thread = threading.Thread(
            target=self._run, name=f"async_ws_stream-{next(_thread_numbers)}", daemon=True
        )

    @classmethod
    def _start(cls, factory: Callable[[], AsyncClient[M]]) -> ThreadedClient[M]:
        """Start the thread, build the client in its loop, and return once it runs.

        Raises whatever building the client raised (a bad option: ``ValueError``),
        after the thread has ended.
        """
        handle = cls(factory)
        handle._thread.start()
        handle._ready.wait()
        if handle._client is None:
            handle._thread.join()
            assert handle._error is not None
            error, handle._error = handle._error, None
            raise error
        atexit.register(handle._exit_at_interpreter_exit)
        return handle

    # -- the loop thread -------------------------------------------------------------------

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except Exception as exc:
            # The thread's boundary: a bug of ours, logged here and raised again by exit().
            self._error = exc
            logger.error("thread {} failed\n{}", self._thread.name, traceback_of(exc))
        finally:
            self._ready.set()  # in case _main never got that far

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        try:
            # Built inside the running loop, so the client starts at once and every
            # asyncio object it makes belongs to this loop.
            self._client = self._factory()
        except Exception as exc:
            self._error = exc  # start_in_thread raises it in the caller
            return
        finally:
            self._ready.set()
        try:
            await self._stop.wait()
        finally:
            await self._client.exit()
            self._final_stats = self._client.stats()
            # Consumers blocked in another thread get what was buffered, then the end.
            for stream in list(self._streams):
                stream._drain_at_exit()

    # -- plumbing --------------------------------------------------------------------------

    def _submit(self, make: Callable[[], Awaitable[T]]) -> concurrent.futures.Future[T]:
        if threading.get_ident() == self._thread.ident:
            raise RuntimeError(
                "ThreadedClient: a blocking call from the client's own loop thread would wait for itself; "
                "use the async client (handle.client) in that thread"
            )
        with self._lock:
            # Checked under the lock, so no coroutine is made for a loop that is going away
            # (it would never be awaited).
            if self._closing:
                raise ClientClosed("the threaded client has exited")
            assert self._loop is not None
            coro = _as_coroutine(make)
            try:
                return asyncio.run_coroutine_threadsafe(coro, self._loop)
            except RuntimeError as exc:  # the loop ended without exit(): the thread failed
                coro.close()
                raise ClientClosed("the threaded client's loop has ended; see the log for why") from exc

    def _call(self, make: Callable[[], Awaitable[T]]) -> T:
        """Run ``make()`` in the loop and return its result here; its exception is raised here."""
        future = self._submit(make)
        try:
            return future.result()
        except concurrent.futures.CancelledError as exc:
            # Only the loop's shutdown cancels our coroutines.
            raise ClientClosed("the threaded client has exited") from exc
        except BaseException:
            if not future.done():
                # The caller was interrupted (KeyboardInterrupt): stop waiting in the loop too.
                future.cancel()
            raise

    def _call_sync(self, fn: Callable[[], T]) -> T:
        async def run() -> T:
            return fn()

        return self._call(run)

    # -- the public surface ----------------------------------------------------------------

    @property
    def client(self) -> AsyncClient[M]:
        """The async client itself; use it only from inside its loop (see :attr:`loop`)."""
        assert self._client is not None
        return self._client

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The event loop the client runs in, for ``asyncio.run_coroutine_threadsafe``."""
        assert self._loop is not None
        return self._loop

    @property
    def thread(self) -> threading.Thread:
        """The thread running the loop (a daemon)."""
        return self._thread

    @property
    def closed(self) -> bool:
        """True once :meth:`exit` was called."""
        return self._closing

    def stream_filter(
        self,
        filters: Filters = None,
        *,
        maxsize: int | None = None,
        overflow: Overflow | None = None,
        copy: bool = False,
        events: bool = False,
        gaps: bool = False,
        timeout: float | None = None,
    ) -> BlockingStream[M]:
        """Return a blocking iterator over the messages matching ``filters``, from now on.

        Filters, buffer options and ``events``/``gaps`` (lifecycle events in-band) are
        those of :meth:`AsyncWsStream.stream_filter`.

        Args:
            timeout: Default per-item timeout of the iterator: waiting longer than
                this for the next message raises :exc:`Timeout`. None waits forever.

        Raises:
            TypeError, ValueError: a malformed filter or option, named in the message.
            ClientClosed: after :meth:`exit`.
        """
        check_timeout("stream_filter", timeout)

        def make() -> Stream[M]:
            return self.client.stream_filter(filters, maxsize=maxsize, overflow=overflow, copy=copy,
                                             events=events, gaps=gaps)

        stream = BlockingStream(self._call, self._call_sync(make), timeout)
        self._streams.add(stream)
        return stream

    def events(self, *, maxsize: int = DEFAULT_EVENTS_MAXSIZE, timeout: float | None = None) -> BlockingStream[Event]:
        """Return a blocking iterator over the client's lifecycle events, as :meth:`AsyncWsStream.events` does.

        It ends after ``Closed()``, when the client exits.

        Args:
            maxsize: Events kept unread before the oldest is dropped (counted).
            timeout: Default per-item timeout of the iterator; None waits forever.

        Raises:
            TypeError, ValueError: a bad ``maxsize`` or ``timeout``.
            ClientClosed: after :meth:`exit`.
        """
        check_timeout("events", timeout)
        stream: BlockingStream[Event] = BlockingStream(
            self._call, self._call_sync(lambda: self.client.events(maxsize=maxsize)), timeout
        )
        self._streams.add(stream)
        return stream

    def add_handler(
        self,
        fn: Callable[[M], Any],
        filters: Filters = None,
        *,
        copy: bool = False,
        maxsize: int = DEFAULT_HANDLER_MAXSIZE,
        overflow: Overflow = "drop_oldest",
    ) -> None:
        """Register ``fn`` as :meth:`AsyncWsStream.add_handler` does; it is called in the loop thread.

        A plain ``fn`` runs inline in the loop thread and must be quick; it must not
        call this handle's blocking methods (they raise ``RuntimeError`` there).

        Raises:
            TypeError, ValueError: a malformed filter or option.
            ClientClosed: after :meth:`exit`.
        """
        self._call_sync(lambda: self.client.add_handler(fn, filters, copy=copy, maxsize=maxsize, overflow=overflow))

    def remove_handler(self, fn: Callable[[M], Any]) -> None:
        """Remove a handler as :meth:`AsyncWsStream.remove_handler` does.

        Raises:
            ValueError: no such handler.
            ClientClosed: after :meth:`exit`.
        """
        self._call_sync(lambda: self.client.remove_handler(fn))

    def send(self, msg: Any, *, timeout: float | None | Default = Default.TIMEOUT) -> None:
        """Send ``msg`` as :meth:`AsyncWsStream.send` does (default timeout: the client's ``send_timeout``).

        Raises:
            Timeout, ConnectionLost, ClientClosed: as :meth:`AsyncWsStream.send`.
        """
        if isinstance(timeout, Default):
            self._call(lambda: self.client.send(msg))
        else:
            self._call(lambda: self.client.send(msg, timeout=timeout))

    def request(
        self,
        msg: Mapping[str, Any],
        *,
        timeout: float | None = DEFAULT_REQUEST_TIMEOUT,
        id_key: str | None = None,
    ) -> M:
        """Send ``msg`` with a fresh id and return the reply, as :meth:`AsyncWsStream.request` does.

        Raises:
            ConnectionLost, Timeout, ClientClosed: as :meth:`AsyncWsStream.request`.
        """
        return self._call(lambda: self.client.request(msg, timeout=timeout, id_key=id_key))

    def wait_for(self, until: Any, *, alarms: Any = None, timeout: float | None = None) -> M:
        """Wait for the first later message matching ``until``, as :meth:`AsyncWsStream.wait_for` does.

        "Later" counts from the moment the call reaches the loop thread, a little
        after it is made: to catch a reply to something you send, use
        :meth:`request`.

        Raises:
            Alarm, Timeout, ClientClosed: as :meth:`AsyncWsStream.wait_for`.
        """
        return self._call(lambda: self.client.wait_for(until, alarms=alarms, timeout=timeout))

    def poll(
        self,
        msg: Mapping[str, Any],
        until: Any,
        *,
        alarms: Any = None,
        interval: float = 2.0,
        max_retries: int = 50,
        id_key: str | None = None,
    ) -> M:
        """Request again and again until the reply matches, as :meth:`AsyncWsStream.poll` does.

        Raises:
            Alarm, RetriesExhausted, ClientClosed: as :meth:`AsyncWsStream.poll`.
        """
        return self._call(lambda: self.client.poll(
            msg, until, alarms=alarms, interval=interval, max_retries=max_retries, id_key=id_key
        ))

    def wait_connected(self, timeout: float | None = None) -> None:
        """Wait until a connection is up (the connection itself stays in the loop thread).

        Raises:
            Timeout, ClientClosed, RetriesExhausted, ConnectionRejected: as
                :meth:`AsyncWsStream.wait_connected`.
        """
        self._call(lambda: self.client.wait_connected(timeout))

    def subscribe(self, *topics: Hashable, timeout: float | None = DEFAULT_SUBSCRIBE_TIMEOUT) -> None:
        """Add ``topics`` to the declared set and return once acknowledged, as :meth:`AsyncWsStream.subscribe`.

        Raises:
            SubscribeError, Timeout, ClientClosed: as :meth:`AsyncWsStream.subscribe`.
        """
        self._call(lambda: self.client.subscribe(*topics, timeout=timeout))

    def unsubscribe(self, *topics: Hashable, timeout: float | None = DEFAULT_SUBSCRIBE_TIMEOUT) -> None:
        """Remove ``topics`` from the declared set, as :meth:`AsyncWsStream.unsubscribe`.

        Raises:
            SubscribeError, Timeout, ClientClosed: as :meth:`AsyncWsStream.unsubscribe`.
        """
        self._call(lambda: self.client.unsubscribe(*topics, timeout=timeout))

    @property
    def subscriptions(self) -> frozenset[Hashable]:
        """The declared topics (read in the loop thread)."""
        return self._call_sync(lambda: self.client.subscriptions)

    def stats(self) -> dict[str, Any]:
        """Return :meth:`AsyncWsStream.stats`, read in the loop thread (a consistent snapshot).

        After :meth:`exit`, returns the counters as they were when the client exited.
        """
        if self._closing:
            self._thread.join()
            if self._final_stats is not None:
                return self._final_stats
            raise ClientClosed("the threaded client has exited")
        return self._call_sync(self.client.stats)

    def exit(self) -> None:
        """Exit the client (see :meth:`AsyncWsStream.exit`) and join its thread. Idempotent.

        Blocking iterators yield what was buffered and then end; calls still
        waiting in other threads raise :exc:`ClientClosed`. When it returns, the
        thread has ended. Safe from any thread but the loop thread itself.

        Raises:
            RuntimeError: called from the loop thread (it cannot join itself).
            BaseException: whatever ended the loop thread unexpectedly, once.
        """
        if threading.get_ident() == self._thread.ident:
            raise RuntimeError("ThreadedClient.exit: cannot be called from the client's own loop thread")
        with self._lock:
            if not self._closing:
                self._closing = True
                atexit.unregister(self._exit_at_interpreter_exit)
                assert self._loop is not None and self._stop is not None
                try:
                    self._loop.call_soon_threadsafe(self._stop.set)
                except RuntimeError:
                    pass  # the loop has already ended: there is nothing to stop
        self._thread.join()
        error, self._error = self._error, None
        if error is not None:
            raise error

    def _exit_at_interpreter_exit(self) -> None:
        try:
            self.exit()
        except Exception as exc:
            logger.error("ThreadedClient: exit at interpreter exit failed\n{}", traceback_of(exc))

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.exit()

    def __repr__(self) -> str:
        state = "closed" if self._closing else "running"
        return f"<ThreadedClient {type(self._client).__name__} in {self._thread.name} {state}>"


async def _as_coroutine(make: Callable[[], Awaitable[T]]) -> T:
    # run_coroutine_threadsafe wants a coroutine; calling make() here, in the loop,
    # also keeps every asyncio object it creates on the right loop.
    return await make()
