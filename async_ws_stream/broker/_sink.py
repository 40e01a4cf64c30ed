"""The part of a sink that does not depend on the broker: buffer, batches, retries, gap markers, close.

A broker's sink subclasses :class:`SinkCore` and implements ``_open``, ``_shut``,
``_encode`` (or sets it to a record encoder's ``encode``), ``_gap_record``, ``_send``
(one batch, returning the future of the broker's answer), ``_confirm`` and ``_abandon``.
"""

from __future__ import annotations

import asyncio
import secrets
from collections import deque
from collections.abc import Hashable, Mapping, Sequence
from types import TracebackType
from typing import Any, Self

from loguru import logger

from .._backoff import backoff_delays
from .._client import AsyncWsStream
from .._filters import compile_filters
from .._options import Overflow, check_buffer
from .._redact import traceback_of
from .._streams import Stream
from ..exceptions import StreamOverflow
from ._common import BrokerError, default_collector

__all__ = ["Record", "SinkCore"]

Record = tuple[str, bytes, str]
"""``(subject or key, record bytes, id)``."""

_UNROUTABLE_LOG_EVERY = 1000


class _Batch:
    """Records sent together, and the future of the broker's answer."""

    __slots__ = ("ack", "deadline", "markers", "records")

    def __init__(self, records: list[Record], markers: int) -> None:
        self.records = records
        self.markers = markers  # gap markers among them (not counted as published)
        self.ack: asyncio.Future[Any] | None = None
        self.deadline = 0.0


class SinkCore:
    """Takes a client's matching messages from a bounded stream and publishes them in batches.

    Up to ``window`` batches are in flight at once (sent, answer awaited), so the
    broker stores one while the next is written. When an answer fails or does
    not come within ``ack_timeout``, every batch in flight is published again,
    in order, one at a time with backoff, until the broker takes it.
    """

    #: Batches in flight at once; 1 where the broker cannot keep two batches in order.
    window = 1

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
        ack_timeout: float,
        drain_timeout: float,
        backoff_initial: float,
        backoff_max: float,
        collector: str | None,
    ) -> None:
        if not isinstance(client, AsyncWsStream):
            raise TypeError(f"{where}: client must be an AsyncWsStream, got {type(client).__name__}")
        check_buffer(where, maxsize, overflow)
        compile_filters(filters, argname=f"{where}: filters")  # fail now, not on entry
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise ValueError(f"{where}: batch must be an int >= 1, got {batch!r}")
        if isinstance(ack_timeout, bool) or not isinstance(ack_timeout, (int, float)) or not ack_timeout > 0:
            raise ValueError(f"{where}: ack_timeout must be a number of seconds > 0, got {ack_timeout!r}")
        for name, value in (("drain_timeout", drain_timeout), ("backoff_initial", backoff_initial),
                            ("backoff_max", backoff_max)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"{where}: {name} must be a number of seconds >= 0, got {value!r}")
        self._where = where
        self._client = client
        self._batch = batch
        self._ack_timeout = ack_timeout
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

    async def _send(self, records: list[Record]) -> asyncio.Future[Any]:
        """Write ``records`` in order; return a future of the broker's answer for the whole batch."""
        raise NotImplementedError

    def _confirm(self, answer: Any) -> None:
        """Raise (a retryable error) if the broker's answer to a batch is a refusal."""

    def _abandon(self) -> None:
        """Forget every answer still awaited: the batches are about to be sent again (or the sink stops)."""

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
            async with asyncio.timeout(self._drain_timeout):
                await asyncio.shield(task)
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
        inflight: deque[_Batch] = deque()
        try:
            while True:
                if inflight and (not stream.queued or len(inflight) >= self.window):
                    # Nothing to send, or the window is full: settle the oldest batch first,
                    # so that a lost acknowledgement is noticed even when the feed is quiet.
                    await self._settle(inflight)
                    continue
                if self._closing and not stream.queued:
                    break
                self._idle = True
                try:
                    batch = await stream.get_batch(self._batch)
                except EOFError:
                    break
                except StreamOverflow as exc:
                    logger.error("{}: {}; the sink stops (use overflow='drop_oldest')", self._where, exc)
                    break
                finally:
                    self._idle = False
                records = self._encode_all(batch)
                markers = self._mark_losses(records)
                if records:
                    await self._send_or_resend(inflight, _Batch(records, markers))
            while inflight:
                await self._settle(inflight)
            records = []
            markers = self._mark_losses(records)
            if markers and self._connected.is_set():
                await self._deliver(_Batch(records, markers))
        except Exception as exc:
            # Not a broker failure (those are retried): a bug. Logged now; close() raises it.
            logger.error("{}: the publishing task failed; nothing more is published\n{}",
                         self._where, traceback_of(exc))
            raise
        finally:
            self._abandon()

    def _mark_losses(self, records: list[Record]) -> int:
        """Put a gap marker ahead of ``records`` if messages were lost since the last one; return 1 if so."""
        stream = self._stream
        assert stream is not None
        lost = stream.dropped + self.counters["unroutable"] - self._marked
        if lost <= 0:
            return 0
        # Dropped while earlier batches were in flight: the hole is here.
        self.counters["gaps"] += 1
        records.insert(0, self._gap_record(lost, self.counters["gaps"]))
        self._marked += lost
        self.counters["gap_dropped"] += lost
        logger.warning("{}: {} messages lost; gap marker #{} published", self._where, lost, self.counters["gaps"])
        return 1

    async def _send_or_resend(self, inflight: deque[_Batch], batch: _Batch) -> None:
        try:
            batch.ack = await self._send(batch.records)
            batch.deadline = asyncio.get_running_loop().time() + self._ack_timeout
            inflight.append(batch)
        except self.retryable as exc:
            self._failed(exc, batch)
            inflight.append(batch)
            await self._resend(inflight)

    async def _settle(self, inflight: deque[_Batch]) -> None:
        """Wait for the oldest batch's acknowledgement; on failure publish every batch in flight again."""
        batch = inflight[0]
        assert batch.ack is not None
        try:
            remaining = batch.deadline - asyncio.get_running_loop().time()
            async with asyncio.timeout(max(remaining, 0.0)):
                answer = await asyncio.shield(batch.ack)
            self._confirm(answer)
        except self.retryable as exc:
            self._failed(exc, batch)
            await self._resend(inflight)
            return
        inflight.popleft()
        self._done(batch, failures=0)

    async def _resend(self, inflight: deque[_Batch]) -> None:
        """Publish the batches in flight again, in order, one at a time; duplicates are the broker's to drop."""
        self._abandon()
        while inflight:
            await self._deliver(inflight.popleft(), failed=1)

    async def _deliver(self, batch: _Batch, failed: int = 0) -> None:
        """Publish one batch and wait for its acknowledgement, again and again with backoff, until it is taken."""
        delays = backoff_delays(self._backoff[0], 2.0, self._backoff[1], 0.5)
        failures = failed
        if failures:
            await asyncio.sleep(next(delays))
        while True:
            try:
                ack = await self._send(batch.records)
                async with asyncio.timeout(self._ack_timeout):
                    answer = await ack
                self._confirm(answer)
                break
            except self.retryable as exc:
                failures += 1
                self._abandon()
                self._failed(exc, batch)
                await asyncio.sleep(next(delays))
        self._done(batch, failures)

    def _failed(self, exc: BaseException, batch: _Batch) -> None:
        self.counters["retries"] += 1
        self._connected.clear()
        logger.warning("{}: publishing {} records failed ({}: {}); publishing again", self._where,
                       len(batch.records), type(exc).__name__, exc or "no acknowledgement in time")

    def _done(self, batch: _Batch, failures: int) -> None:
        self._connected.set()
        self.counters["batches"] += 1
        self.counters["published"] += len(batch.records) - batch.markers
        if failures:
            logger.info("{}: published after {} failed tries", self._where, failures)

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
