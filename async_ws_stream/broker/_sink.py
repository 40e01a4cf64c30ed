"""The part of a sink that does not depend on the broker: buffer, batches, retries, gap markers, close.

A broker's sink subclasses :class:`SinkCore` and implements ``_open``, ``_shut``,
``_encode``, ``_gap_record`` and ``_publish`` (one batch, raising on failure).
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Hashable, Mapping, Sequence
from types import TracebackType
from typing import Any, Self

from loguru import logger

from .._backoff import backoff_delays
from .._client import AsyncWsStream
from .._dispatch import compile_filters
from .._streams import Overflow, Stream, check_buffer_options
from ..exceptions import StreamOverflow
from ._common import BrokerError, default_collector

__all__ = ["Record", "SinkCore"]

Record = tuple[str, bytes, str]
"""``(subject or key, record bytes, id)``."""

_UNROUTABLE_LOG_EVERY = 1000


class SinkCore:
    """Takes a client's matching messages from a bounded stream and publishes them in batches."""

    # What _publish may raise and be retried for: subclasses extend it.
    retryable: tuple[type[BaseException], ...] = (OSError, asyncio.TimeoutError, BrokerError)

    def __init__(
        self,
        where: str,
        client: AsyncWsStream[Any],
        *,
        filters: Sequence[Mapping[Hashable, Any]] | None,
        maxsize: int,
        overflow: Overflow,
        batch: int,
        drain_timeout: float,
        backoff_initial: float,
        backoff_max: float,
        collector: str | None,
    ) -> None:
        if not isinstance(client, AsyncWsStream):
            raise TypeError(f"{where}: client must be an AsyncWsStream, got {type(client).__name__}")
        check_buffer_options(where, maxsize, overflow)
        compile_filters(filters, argname=f"{where}: filters")  # fail now, not on entry
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise ValueError(f"{where}: batch must be an int >= 1, got {batch!r}")
        for name, value in (("drain_timeout", drain_timeout), ("backoff_initial", backoff_initial),
                            ("backoff_max", backoff_max)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"{where}: {name} must be a number of seconds >= 0, got {value!r}")
        self._where = where
        self._client = client
        self._batch = batch
        self._drain_timeout = drain_timeout
        self._backoff = (backoff_initial, backoff_max)
        self._collector = collector or default_collector()
        self._session = secrets.token_hex(4)
        # Subscribed now, not on entry: what arrives while the sink connects to the broker waits here.
        self._stream: Stream[Any] | None = client.stream_filter(filters, maxsize=maxsize, overflow=overflow)
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._idle = False
        self._marked = 0  # losses already published in gap markers
        self._connected = asyncio.Event()
        self.counters: dict[str, int] = dict.fromkeys(
            ("published", "batches", "retries", "unroutable", "gaps", "gap_dropped", "undelivered", "reconnects"), 0)

    # -- to implement ----------------------------------------------------------------------

    async def _open(self) -> None:
        raise NotImplementedError

    async def _shut(self) -> None:
        raise NotImplementedError

    def _encode(self, msg: Any) -> Record:
        raise NotImplementedError

    def _gap_record(self, dropped: int, number: int) -> Record:
        raise NotImplementedError

    async def _publish(self, records: list[Record]) -> None:
        raise NotImplementedError

    # -- life ------------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def start(self) -> None:
        """Connect to the broker, check its configuration, and start publishing.

        Raises:
            BrokerUnavailable, BrokerConfigError: the broker cannot be used; the message says why.
        """
        if self._task is not None:
            return
        if self._stream is None or self._stream.closed:
            raise BrokerError(f"{self._where}: closed, or its client has exited; make a new sink")
        try:
            await self._open()
        except BaseException:
            await self._stream.close()
            raise
        self._task = asyncio.create_task(self._run(), name=f"async_ws_stream.broker.{self._where}")

    async def close(self) -> None:
        """Publish what is buffered (up to ``drain_timeout`` seconds), then disconnect. Idempotent.

        Records not published by then are counted in ``stats()["undelivered"]``
        and logged. The client is not closed; it is the caller's.
        """
        task, stream = self._task, self._stream
        if task is None or stream is None:
            if stream is not None:
                await stream.close()  # never started
            return
        self._closing = True
        if self._idle and not stream.queued:
            await stream.close()  # wakes the idle loop
        try:
            await asyncio.wait_for(asyncio.shield(task), self._drain_timeout)
        except TimeoutError:
            task.cancel()
        except asyncio.CancelledError:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            raise
        try:
            await task
        except asyncio.CancelledError:
            if asyncio.current_task().cancelling():  # type: ignore[union-attr]
                raise
        left = stream.queued
        await stream.close()
        if left:
            self.counters["undelivered"] += left
            logger.warning("{}: closed with {} records not published", self._where, left)
        self._task = None
        await self._shut()

    def stats(self) -> dict[str, Any]:
        """Counters: ``published`` (records acknowledged, markers excluded), ``batches``,
        ``retries``, ``dropped`` (by the sink's buffer), ``unroutable``, ``gaps`` (markers
        published), ``gap_dropped`` (losses they reported), ``undelivered`` (left at close),
        ``reconnects``, ``queued`` and ``connected``."""
        stream = self._stream
        return {
            **self.counters,
            "dropped": 0 if stream is None else stream.dropped,
            "queued": 0 if stream is None else stream.queued,
            "connected": self._connected.is_set(),
        }

    # -- the publishing task ---------------------------------------------------------------

    async def _run(self) -> None:
        stream = self._stream
        assert stream is not None
        while not (self._closing and not stream.queued):
            self._idle = True
            try:
                first = await stream.__anext__()
            except StopAsyncIteration:
                break
            except StreamOverflow as exc:
                logger.error("{}: {}; the sink stops (use overflow='drop_oldest')", self._where, exc)
                break
            finally:
                self._idle = False
            batch = [first]
            limit = self._batch
            while stream.queued and len(batch) < limit:
                batch.append(stream.get_nowait())
            records = self._encode_all(batch)
            lost = stream.dropped + self.counters["unroutable"] - self._marked
            if lost > 0:
                # Dropped while the previous batch was in flight: the hole is here.
                self.counters["gaps"] += 1
                records.insert(0, self._gap_record(lost, self.counters["gaps"]))
                self._marked += lost
                self.counters["gap_dropped"] += lost
                logger.warning("{}: {} messages lost; gap marker #{} published", self._where, lost,
                               self.counters["gaps"])
            if records:
                await self._deliver(records, markers=1 if lost > 0 else 0)
        lost = stream.dropped + self.counters["unroutable"] - self._marked
        if lost > 0 and self._connected.is_set():
            self.counters["gaps"] += 1
            self._marked += lost
            self.counters["gap_dropped"] += lost
            await self._deliver([self._gap_record(lost, self.counters["gaps"])], markers=1)

    def _encode_all(self, batch: list[Any]) -> list[Record]:
        encode = self._encode
        records = []
        for msg in batch:
            try:
                records.append(encode(msg))
            except (KeyError, ValueError, TypeError, AttributeError) as exc:
                self.counters["unroutable"] += 1
                if self.counters["unroutable"] % _UNROUTABLE_LOG_EVERY == 1:
                    logger.warning("{}: a message could not be routed or encoded ({}: {}); {} so far",
                                   self._where, type(exc).__name__, exc, self.counters["unroutable"])
        return records

    async def _deliver(self, records: list[Record], markers: int) -> None:
        """Publish one batch until the broker acknowledges it, with backoff between tries."""
        delays = backoff_delays(self._backoff[0], 2.0, self._backoff[1], 0.5)
        failures = 0
        while True:
            try:
                await self._publish(records)
                break
            except self.retryable as exc:
                failures += 1
                self.counters["retries"] += 1
                delay = next(delays)
                logger.warning("{}: publishing {} records failed ({}: {}); retry {} in {:.2f} s", self._where,
                               len(records), type(exc).__name__, exc, failures, delay)
                await asyncio.sleep(delay)
        self.counters["batches"] += 1
        self.counters["published"] += len(records) - markers
        if failures:
            logger.info("{}: published after {} failed tries", self._where, failures)

