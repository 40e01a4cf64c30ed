"""Handlers: a plain function called inline by the pump, or a coroutine function run by a task of its own.

Both are dispatch targets (``deliver``). A failing handler is logged with its
traceback (formatted without local variables) and counted; it keeps being called.
"""

from __future__ import annotations

import asyncio
import copy as _copy
from collections.abc import Awaitable, Callable
from typing import Any

from loguru import logger

from ._counters import Counters
from ._redact import traceback_of
from ._streams import Stream

__all__ = ["AsyncHandler", "SyncHandler"]


class SyncHandler:
    """A plain function called inline for each matching message; failures are logged and counted."""

    __slots__ = ("_copy", "_counters", "fn")

    def __init__(self, fn: Callable[[Any], Any], counters: Counters, *, copy: bool = False) -> None:
        self.fn = fn
        self._counters = counters
        self._copy = copy

    def deliver(self, msg: Any) -> None:
        """Call the handler now, inline (with a deep copy if asked); count and log what it raises."""
        try:
            self.fn(_copy.deepcopy(msg) if self._copy else msg)
        except Exception as exc:
            self._counters.handler_errors += 1
            logger.error("handler {!r} failed\n{}", self.fn, traceback_of(exc))


class AsyncHandler:
    """A coroutine function run by its own worker task, one message at a time, in order.

    The worker reads from a bounded :class:`Stream`, so a slow handler drops (and
    counts) rather than stalling the pump.
    """

    __slots__ = ("_counters", "fn", "stream", "task")

    def __init__(self, fn: Callable[[Any], Awaitable[Any]], stream: Stream[Any], counters: Counters) -> None:
        self.fn = fn
        self.stream = stream
        self._counters = counters
        self.task: asyncio.Task[None] | None = None

    def deliver(self, msg: Any) -> None:
        """Queue the message for the handler's task (its stream's overflow policy applies)."""
        self.stream._feed.deliver(msg)

    async def run(self) -> None:
        """Call the handler for every message until the stream ends."""
        fn = self.fn
        async for msg in self.stream:
            try:
                await fn(msg)
            except Exception as exc:
                self._counters.handler_errors += 1
                logger.error("handler {!r} failed\n{}", fn, traceback_of(exc))
