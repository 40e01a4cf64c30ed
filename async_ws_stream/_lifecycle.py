"""The tasks one client owns, and the order in which they end at ``exit()``.

Every task of the library is started through :meth:`Tasks.spawn` and so has an
owner that awaits it: the supervisors (the *main* tasks: one per shard, see
:mod:`._shards`) and the workers (one per async handler, and the subscribes
under way). :meth:`Tasks.exit` stops them in this order: the main tasks are
cancelled at once; workers get a grace period to finish what they hold, then
are cancelled; when it returns, none is left running.

A task may call ``exit()`` on its own client (an async handler, or a hook that
runs inside the supervisor). Such a caller is remembered in ``exiting``: the
shutdown never waits for it (it waits for the shutdown), and a worker that asked
for the end has its backlog discarded by the client.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from loguru import logger

from ._options import EXIT_GRACE
from ._redact import traceback_of

__all__ = ["Tasks", "running_loop"]


def running_loop() -> asyncio.AbstractEventLoop | None:
    """The running event loop, or None outside one (a client made there starts on ``start()``)."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


class Tasks:
    """The tasks of one client. Not thread-safe: used from the client's loop only."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()
        self._mains: set[asyncio.Task[Any]] = set()
        self._started = False
        self._shutdown: asyncio.Task[None] | None = None
        #: Tasks (or None, outside any task) waiting in exit() right now.
        self.exiting: set[asyncio.Task[Any] | None] = set()

    @property
    def started(self) -> bool:
        """Whether the first main task was started."""
        return self._started

    @property
    def closing(self) -> bool:
        """Whether ``exit()`` was called."""
        return self._shutdown is not None

    def start(self, main: Coroutine[Any, Any, None], what: str = "supervisor") -> asyncio.Task[Any]:
        """Start a main task (a supervisor): cancelled first at exit, with no grace."""
        self._started = True
        task = self.spawn(main, what)
        self._mains.add(task)
        return task

    def spawn(self, coro: Coroutine[Any, Any, Any], what: str) -> asyncio.Task[Any]:
        """Start a task owned here; one that fails is logged with its traceback."""
        task = asyncio.get_running_loop().create_task(coro, name=f"async_ws_stream {what}")
        self._tasks.add(task)
        task.add_done_callback(self._reap)
        return task

    def _reap(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        self._mains.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("task {} failed\n{}", task.get_name(), traceback_of(task.exception()))  # type: ignore[arg-type]

    async def exit(self, begin: Callable[[], None], release: Callable[[], Awaitable[None]]) -> None:
        """Stop every task; idempotent. See the module docstring for the order.

        Args:
            begin: Called once, at the first call, before anything stops (close the gate).
            release: Awaited once, after the main task was cancelled, before workers
                get their grace (end streams, fail waits, drop the backlog of a
                worker in ``exiting``).
        """
        caller = asyncio.current_task()
        self.exiting.add(caller)
        try:
            if self._shutdown is None:
                begin()
                self._shutdown = asyncio.get_running_loop().create_task(
                    self._stop_all(release), name="async_ws_stream exit"
                )
            # A caller inside the supervisor (a hook) is cancelled by the shutdown it
            # asked for; the shield keeps the shutdown going without it.
            await asyncio.shield(self._shutdown)
        finally:
            self.exiting.discard(caller)
        if caller not in self._tasks:
            # An async handler that called exit() is still finishing the call it
            # made it from (its backlog was discarded); a caller from outside the
            # library waits for that too, so that nothing of ours outlives exit().
            # Library tasks skip this: two handlers must not wait for each other.
            await _wait_or_cancel(list(self._tasks))

    async def _stop_all(self, release: Callable[[], Awaitable[None]]) -> None:
        mains = set(self._mains)
        for main in mains:
            main.cancel()
        await release()
        # A handler that called exit() waits for us; we must not wait for it.
        await _wait_or_cancel([t for t in self._tasks if t not in mains and t not in self.exiting])
        # A supervisor is awaited even when a hook of its own called exit(): it
        # was cancelled above, so that exit() call raises instead of waiting for us.
        pending = [t for t in self._tasks if t in mains or t not in self.exiting]
        if pending:
            await asyncio.wait(pending)


async def _wait_or_cancel(tasks: list[asyncio.Task[Any]]) -> None:
    """Give ``tasks`` ``EXIT_GRACE`` seconds to finish; cancel the late ones and wait for them."""
    if not tasks:
        return
    _, late = await asyncio.wait(tasks, timeout=EXIT_GRACE)
    for task in late:
        task.cancel()
    if late:
        await asyncio.wait(late)
