"""Redis Streams: a source that reads what a RedisStreamSink wrote, with the client's filters."""

from __future__ import annotations

import asyncio
import json
import os
import socket
from collections.abc import Callable, Hashable, Mapping, Sequence
from types import TracebackType
from typing import Any, Literal, Self

import redis.asyncio as aioredis
import redis.exceptions
from loguru import logger

from .._backoff import backoff_delays
from .._options import Overflow, check_buffer
from .._streams import Stream
from ._common import BrokerConfigError, Dispatcher, Pending
from ._record import count_gap, is_gap
from ._redis import connect_redis

__all__ = ["RedisStreamSource"]

DEFAULT_BATCH = 1000
DEFAULT_CLAIM_IDLE = 30.0


class RedisStreamSource:
    """Reads one or more Redis streams with the client's ``stream_filter`` semantics.

    Without ``group``: plain ``XREAD`` from the start of the stream (``start="all"``)
    or from now (``"new"``), nothing acknowledged, nothing remembered after a restart.

    With ``group``: a consumer group (created at the stream's start or end, per
    ``start``, if missing) read as ``consumer`` (default ``host-pid``). An entry
    is acknowledged (``XACK``) once every stream it went to has handed it to its
    consumer. On start, the consumer first reads its own pending entries
    (delivered to this name before and never acknowledged: a restart with the
    same ``consumer`` resumes there), then claims with ``XAUTOCLAIM`` the
    entries other consumers of the group left pending for ``claim_idle``
    seconds (a consumer that died), and does so again every ``claim_idle`` seconds.

    An entry whose id was seen among the last ``dedup_memory`` entries is
    skipped and counted in ``stats()["duplicates"]``.

    Raises:
        BrokerUnavailable, BrokerConfigError: on entry, as :class:`RedisStreamSink`.
    """

    def __init__(
        self,
        *,
        url: str,
        key: str | Sequence[str],
        group: str | None = None,
        consumer: str | None = None,
        start: Literal["all", "new"] = "all",
        decode: Callable[[bytes], Any] = json.loads,
        # Limits
        maxsize: int = 10_000,
        overflow: Overflow = "error",
        batch: int = DEFAULT_BATCH,
        dedup_memory: int = 100_000,
        # Timeouts
        block: float = 1.0,
        claim_idle: float = DEFAULT_CLAIM_IDLE,
        ack_interval: float = 0.05,
        connect_timeout: float = 5.0,
        redis_options: Mapping[str, Any] | None = None,
    ) -> None:
        where = "RedisStreamSource"
        check_buffer(where, maxsize, overflow)
        self._keys = [key] if isinstance(key, str) else list(key)
        if not self._keys or not all(isinstance(k, str) and k for k in self._keys):
            raise ValueError(f"{where}: key must be a stream key or a list of them, got {key!r}")
        if start not in ("all", "new"):
            raise ValueError(f"{where}: start must be 'all' or 'new', got {start!r}")
        for name, value in (("batch", batch), ("dedup_memory", dedup_memory)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{where}: {name} must be an int >= 1, got {value!r}")
        seconds: tuple[tuple[str, float], ...] = (("block", block), ("claim_idle", claim_idle),
                                                  ("ack_interval", ack_interval), ("connect_timeout", connect_timeout))
        for name, secs in seconds:
            if isinstance(secs, bool) or not isinstance(secs, (int, float)) or not secs > 0:
                raise ValueError(f"{where}: {name} must be a number of seconds > 0, got {secs!r}")
        self._where = where
        self._url = url
        self._group = group
        self._consumer = consumer or f"{socket.gethostname()}-{os.getpid()}"
        self._start = start
        self._decode = decode
        self._batch = batch
        self._block_ms = int(block * 1000)
        self._claim_idle = claim_idle
        self._ack_interval = ack_interval
        self._connect_timeout = connect_timeout
        self._redis_options = dict(redis_options or {})
        self._dispatcher = Dispatcher(where, maxsize=maxsize, overflow=overflow)
        self._pending = Pending()
        self._seen: dict[Any, None] = {}  # ids of the last dedup_memory entries, oldest first
        self._dedup_memory = dedup_memory
        self._redis: aioredis.Redis | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._acked = 0
        self._claimed = 0
        self._read_errors = 0

    def stream_filter(
        self,
        filters: Sequence[Mapping[Hashable, Any]] | None = None,
        *,
        maxsize: int | None = None,
        overflow: Overflow | None = None,
        copy: bool = False,
    ) -> Stream[Any]:
        """Return a new stream of the entries matching ``filters`` (open it before entries arrive)."""
        return self._dispatcher.stream_filter(filters, maxsize=maxsize, overflow=overflow, copy=copy)

    def stats(self) -> dict[str, Any]:
        """Counters (``received``, ``delivered``, ``acked``, ``claimed``, ``duplicates``, ``gaps``, ...)."""
        out = self._dispatcher.stats()
        out.update(acked=self._acked, unacked=len(self._pending), claimed=self._claimed,
                   read_errors=self._read_errors)
        return out

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def start(self) -> None:
        """Connect, create the group if needed, and start reading.

        Raises:
            BrokerUnavailable, BrokerConfigError: see the class.
        """
        if self._redis is not None:
            return
        self._redis = r = await connect_redis(self._where, self._url, self._redis_options, self._connect_timeout)
        if self._group is not None:
            for key in self._keys:
                try:
                    await r.xgroup_create(key, self._group, id="0" if self._start == "all" else "$", mkstream=True)
                except redis.exceptions.ResponseError as exc:
                    if "BUSYGROUP" not in str(exc):
                        await r.aclose()
                        self._redis = None
                        raise BrokerConfigError(f"{self._where}: cannot create group {self._group!r} on "
                                                f"{key!r}: {exc}") from exc
        self._tasks = [asyncio.create_task(self._read(), name="async_ws_stream.broker.redis.read")]
        if self._group is not None:
            self._tasks.append(asyncio.create_task(self._ack_loop(), name="async_ws_stream.broker.redis.ack"))

    async def close(self) -> None:
        """Stop reading, acknowledge what consumers have read, end every stream. Idempotent."""
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        if tasks and self._redis is not None:
            # A blocking XREAD may swallow the cancellation: cutting its connection ends it now.
            await self._redis.connection_pool.disconnect()
        for task in tasks:
            try:
                await task
            except asyncio.CancelledError:
                if asyncio.current_task().cancelling():  # type: ignore[union-attr]
                    raise
        r, self._redis = self._redis, None
        if r is not None:
            try:
                await self._ack(r)
            except (redis.exceptions.RedisError, OSError) as exc:
                logger.warning("{}: final XACK failed ({}); those entries stay pending", self._where, exc)
            await r.aclose()
        self._dispatcher.close()

    async def _read(self) -> None:
        r = self._redis
        assert r is not None
        dispatcher = self._dispatcher
        group = self._group
        loop = asyncio.get_running_loop()
        delays = backoff_delays(0.05, 2.0, 2.0, 0.5)
        if group is None:
            cursor: dict[Any, Any] = {k: "0-0" if self._start == "all" else "$" for k in self._keys}
        else:
            cursor = dict.fromkeys(self._keys, "0")  # first, this consumer's own pending entries
        next_claim = loop.time()
        while True:
            if not dispatcher.has_streams() or dispatcher.crowded():
                await asyncio.sleep(self._ack_interval)
                continue
            try:
                if group is not None and loop.time() >= next_claim and all(v == ">" for v in cursor.values()):
                    await self._claim(r)
                    _reraise_swallowed_cancel()
                    next_claim = loop.time() + self._claim_idle
                    continue
                reply: Any
                if group is None:
                    reply = await r.xread(cursor, count=self._batch, block=self._block_ms)
                else:
                    block = None if any(v != ">" for v in cursor.values()) else self._block_ms
                    reply = await r.xreadgroup(group, self._consumer, cursor, count=self._batch, block=block)
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError) as exc:
                _reraise_swallowed_cancel()  # close() disconnects the pool to end a blocking read
                self._read_errors += 1
                logger.warning("{}: read failed ({}: {}); retrying", self._where, type(exc).__name__, exc)
                await asyncio.sleep(next(delays))
                continue
            _reraise_swallowed_cancel()
            delays = backoff_delays(0.05, 2.0, 2.0, 0.5)
            got = {(k.decode() if isinstance(k, bytes) else k): entries for k, entries in _streams(reply)}
            for key in self._keys:
                entries = got.get(key, [])
                if group is not None and cursor[key] != ">":
                    if not entries:
                        cursor[key] = ">"  # own pending entries done: now new ones
                        continue
                    cursor[key] = entries[-1][0]
                elif group is None and entries:
                    cursor[key] = entries[-1][0]
                self._take(key, entries)
            await self._ack(r)

    async def _claim(self, r: aioredis.Redis) -> None:
        """Take over the entries other consumers left pending for ``claim_idle`` seconds."""
        assert self._group is not None
        for key in self._keys:
            start: Any = "0-0"
            while True:
                reply = await r.xautoclaim(key, self._group, self._consumer, int(self._claim_idle * 1000),
                                           start_id=start, count=self._batch)
                start, entries = reply[0], reply[1]
                if entries:
                    self._claimed += len(entries)
                    logger.info("{}: claimed {} pending entries of {!r} from idle consumers", self._where,
                                len(entries), key)
                self._take(key, entries)
                if start in (b"0-0", "0-0") or not entries:
                    break

    def _take(self, key: str, entries: list[Any]) -> None:
        counters = self._dispatcher.counters
        acking = self._group is not None
        dispatch, feed = self._dispatcher.dispatch, self._dispatcher.feed
        add = self._pending.add
        seen = self._seen
        decode = self._decode
        for entry_id, fields in entries:
            counters.received += 1
            msg_id = fields.get(b"i") if fields else None
            if not fields or msg_id in seen:  # trimmed away while pending, or a repeat
                if fields:
                    counters.duplicates += 1
                if acking:
                    add((key, entry_id), [])
                continue
            if msg_id is not None:
                seen[msg_id] = None
                if len(seen) > self._dedup_memory:
                    del seen[next(iter(seen))]  # the oldest: dicts keep insertion order
            try:
                obj = decode(fields[b"d"])
            except Exception as exc:
                counters.decode_errors += 1
                logger.warning("{}: entry {} of {!r} could not be decoded ({}); skipped", self._where,
                               entry_id, key, type(exc).__name__)
                if acking:
                    add((key, entry_id), [])
                continue
            if is_gap(obj):
                count_gap(self._where, counters, obj)
            if acking:
                add((key, entry_id), dispatch(obj))
            else:
                feed(obj)

    async def _ack_loop(self) -> None:
        while True:
            await asyncio.sleep(self._ack_interval)
            r = self._redis
            if r is None:
                return
            try:
                await self._ack(r)
            except (redis.exceptions.RedisError, OSError) as exc:
                logger.warning("{}: XACK failed ({}); retrying", self._where, exc)

    async def _ack(self, r: aioredis.Redis) -> None:
        if self._group is None:
            self._pending.take_all()  # nothing to acknowledge without a group
            return
        handles = self._pending.settled_prefix()
        if not handles:
            return
        by_key: dict[str, list[Any]] = {}
        for key, entry_id in handles:
            by_key.setdefault(key, []).append(entry_id)
        for key, ids in by_key.items():
            await r.xack(key, self._group, *ids)
        self._acked += len(handles)


def _reraise_swallowed_cancel() -> None:
    """Raise CancelledError if this task was cancelled during a command that returned anyway.

    A redis-py command cancelled at the wrong moment can complete instead of
    raising; without this check the read loop would go on, cancelled, for ever.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def _streams(reply: Any) -> list[tuple[Any, list[Any]]]:
    """XREAD/XREADGROUP replies as ``[(key, [(id, fields), ...]), ...]`` under RESP2 and RESP3."""
    if not reply:
        return []
    if isinstance(reply, dict):
        return [(k, v[0] if v and isinstance(v[0], list) else v) for k, v in reply.items()]
    return [(k, v) for k, v in reply]

