"""Redis Streams: a sink that XADDs what a client receives in pipelines, and a source that reads it anywhere.

A record is one stream entry with two fields: ``d`` (the record's bytes, see
:mod:`._record`) and ``i`` (its id). Redis has no de-duplication of its own: a
recycle's overlap, a retried pipeline or a second collector write an entry
twice, unless the sink is given a ``dedup_window`` (then a small Lua script
refuses an id it has seen within that window, at some cost in speed). Sources
skip an id they have seen among their last ``dedup_memory`` entries in any case.
"""

from __future__ import annotations

import asyncio
import json
import socket
import os
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping, Sequence
from types import TracebackType
from typing import Any, Literal, Self

import redis.asyncio as aioredis
import redis.exceptions
from loguru import logger

from .._backoff import backoff_delays
from .._client import AsyncWsStream
from .._streams import Overflow, Stream, check_buffer_options
from ._common import BrokerConfigError, BrokerUnavailable, Dispatcher, Pending
from ._nats import redact_url
from ._record import Router, RecordEncoder, compile_router, gap_marker, is_gap
from ._sink import Record, SinkCore

__all__ = ["RedisStreamSink", "RedisStreamSource"]

DEFAULT_SINK_MAXSIZE = 100_000
DEFAULT_BATCH = 1000
DEFAULT_CLAIM_IDLE = 30.0

# SET NX the id with a time to live; XADD only if it was not there.
_DEDUP_XADD = """
if redis.call('SET', KEYS[2], '1', 'NX', 'PX', ARGV[3]) then
  if ARGV[4] == '' then
    return redis.call('XADD', KEYS[1], '*', 'd', ARGV[1], 'i', ARGV[2])
  end
  return redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[4], '*', 'd', ARGV[1], 'i', ARGV[2])
end
return false
"""


async def _connect(where: str, url: str, options: Mapping[str, Any], timeout: float) -> aioredis.Redis:
    """A client that answered PING, or an error naming the fix."""
    client = aioredis.from_url(url, socket_connect_timeout=timeout, socket_timeout=max(timeout, 10.0),
                               **dict(options))
    try:
        await asyncio.wait_for(client.ping(), timeout)
    except redis.exceptions.AuthenticationError as exc:
        await client.aclose()
        raise BrokerConfigError(
            f"{where}: Redis {redact_url(url)} rejected the credentials ({exc}); "
            "check the password (redis://:PASSWORD@host) or username in the URL or redis_options"
        ) from exc
    except redis.exceptions.ResponseError as exc:
        await client.aclose()
        if "NOAUTH" in str(exc) or "WRONGPASS" in str(exc):
            raise BrokerConfigError(
                f"{where}: Redis {redact_url(url)} wants a password ({exc}); put it in the URL: redis://:PASSWORD@host"
            ) from exc
        raise
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError, TimeoutError) as exc:
        await client.aclose()
        raise BrokerUnavailable(
            f"{where}: cannot connect to Redis {redact_url(url)} within {timeout:g} s ({exc}); "
            "is redis-server running there, and are the host and port of url= right?"
        ) from exc
    return client


class RedisStreamSink(SinkCore):
    """Appends every message of ``client`` matching ``filters`` to a Redis stream, in pipelines.

    The same design as :class:`JetStreamSink`: a bounded buffer in the client
    with an overflow policy, batches of up to ``batch`` XADDs per round trip, a
    batch retried with backoff until Redis answers, losses counted and written
    as a gap marker (to ``gap_key``) ahead of the next batch.

    Args:
        client: The client whose messages are published; the sink never closes it.
        url: ``redis://[:password@]host:port[/db]``.
        key: Template such as ``"md:{e}:{s}"`` or a fixed key ``"md"``, or a callable.
        filters: Which messages to publish; None: all.
        gap_key: Where gap markers go (default: ``key`` when it is fixed, else its
            fixed prefix + ``:_gap``).
        maxlen: Trim each stream to about this many entries (``XADD MAXLEN ~``); None: no trim.
        dedup_window: Seconds during which Redis refuses an id it has already taken
            (a Lua script per entry); None: no de-duplication in Redis.
        maxsize, overflow, batch, ack_timeout, connect_timeout, drain_timeout,
        backoff_initial, backoff_max, collector: as for :class:`JetStreamSink`.
        redis_options: More keyword arguments for ``redis.asyncio.from_url``.
    """

    retryable = (*SinkCore.retryable, redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)

    def __init__(
        self,
        client: AsyncWsStream[Any],
        *,
        url: str,
        key: str | Router,
        filters: Sequence[Mapping[Hashable, Any]] | None = None,
        gap_key: str | None = None,
        maxlen: int | None = None,
        dedup_window: float | None = None,
        # Limits
        maxsize: int = DEFAULT_SINK_MAXSIZE,
        overflow: Overflow = "drop_oldest",
        batch: int = DEFAULT_BATCH,
        # Timeouts
        ack_timeout: float = 5.0,
        connect_timeout: float = 5.0,
        drain_timeout: float = 5.0,
        backoff_initial: float = 0.05,
        backoff_max: float = 2.0,
        collector: str | None = None,
        redis_options: Mapping[str, Any] | None = None,
    ) -> None:
        where = "RedisStreamSink"
        router, prefix = compile_router(f"{where}: key", key, separator=":")
        if gap_key is None:
            if callable(key):
                raise ValueError(f"{where}: with a callable key, pass gap_key= (the key gap markers go to)")
            gap_key = key if "{" not in key else (f"{prefix}:_gap" if prefix else "_gap")
        if not isinstance(url, str) or not url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(f"{where}: url must be a redis:// or rediss:// URL, got {redact_url(str(url))!r}")
        if maxlen is not None and (isinstance(maxlen, bool) or not isinstance(maxlen, int) or maxlen < 1):
            raise ValueError(f"{where}: maxlen must be an int >= 1 or None, got {maxlen!r}")
        if dedup_window is not None and not (isinstance(dedup_window, (int, float)) and dedup_window > 0):
            raise ValueError(f"{where}: dedup_window must be seconds > 0 or None, got {dedup_window!r}")
        for name, secs in (("ack_timeout", ack_timeout), ("connect_timeout", connect_timeout)):
            if isinstance(secs, bool) or not isinstance(secs, (int, float)) or not secs > 0:
                raise ValueError(f"{where}: {name} must be a number of seconds > 0, got {secs!r}")
        super().__init__(  # last: it subscribes to the client
            where, client, filters=filters, maxsize=maxsize, overflow=overflow, batch=batch,
            drain_timeout=drain_timeout, backoff_initial=backoff_initial, backoff_max=backoff_max,
            collector=collector,
        )
        self._url = url
        self._gap_key = gap_key
        self._maxlen = maxlen
        self._dedup_ms = None if dedup_window is None else int(dedup_window * 1000)
        self._ack_timeout = ack_timeout
        self._connect_timeout = connect_timeout
        self._redis_options = dict(redis_options or {})
        self._encoder = RecordEncoder(client._serialize, getattr(client, "_sequence", None), router)
        self._redis: aioredis.Redis | None = None
        self._script: Any = None
        self._failing = False

    async def _open(self) -> None:
        self._redis = await _connect(self._where, self._url, self._redis_options, self._connect_timeout)
        if self._dedup_ms is not None:
            self._script = self._redis.register_script(_DEDUP_XADD)
        self._connected.set()

    async def _shut(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()

    def _encode(self, msg: Any) -> Record:
        return self._encoder.encode(msg)

    def _gap_record(self, dropped: int, number: int) -> Record:
        data, msg_id = gap_marker(dropped, self._collector, number, self._session)
        return self._gap_key, data, msg_id

    async def _publish(self, records: list[Record]) -> None:
        r = self._redis
        assert r is not None
        pipe = r.pipeline(transaction=False)
        maxlen = self._maxlen
        if self._script is None:
            for key, data, msg_id in records:
                pipe.xadd(key, {"d": data, "i": msg_id}, maxlen=maxlen, approximate=True)
        else:
            script, ttl, trim = self._script, self._dedup_ms, "" if maxlen is None else maxlen
            for key, data, msg_id in records:
                # Queues the call (and, at execute, loads the script if Redis lost it).
                await script(keys=[key, f"{key}:seen:{msg_id}"], args=[data, msg_id, ttl, trim], client=pipe)
        try:
            await asyncio.wait_for(pipe.execute(), self._ack_timeout)
        except BaseException:
            if not self._failing:
                self._failing = True
                self._connected.clear()
            raise
        if self._failing:
            self._failing = False
            self.counters["reconnects"] += 1
            self._connected.set()


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
        check_buffer_options(where, maxsize, overflow)
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
        self._seen: OrderedDict[bytes, None] = OrderedDict()
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
        self._redis = r = await _connect(self._where, self._url, self._redis_options, self._connect_timeout)
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
        dispatch = self._dispatcher.dispatch
        add = self._pending.add
        seen = self._seen
        for entry_id, fields in entries:
            counters.received += 1
            if not fields:  # trimmed away while pending
                add((key, entry_id), [])
                continue
            msg_id = fields.get(b"i")
            if msg_id is not None:
                if msg_id in seen:
                    counters.duplicates += 1
                    add((key, entry_id), [])
                    continue
                seen[msg_id] = None
                if len(seen) > self._dedup_memory:
                    seen.popitem(last=False)
            try:
                obj = self._decode(fields[b"d"])
            except Exception as exc:
                counters.decode_errors += 1
                logger.warning("{}: entry {} of {!r} could not be decoded ({}); skipped", self._where,
                               entry_id, key, type(exc).__name__)
                add((key, entry_id), [])
                continue
            if is_gap(obj):
                body = obj["_gap"]
                counters.gaps += 1
                dropped = body.get("dropped", 0) if isinstance(body, dict) else 0
                counters.gap_dropped += dropped if isinstance(dropped, int) else 0
                logger.warning("{}: gap marker: a collector lost {} messages", self._where, dropped)
            add((key, entry_id), dispatch(obj))

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
