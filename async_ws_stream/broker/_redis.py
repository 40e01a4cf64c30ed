"""Redis Streams: a sink that XADDs what a client receives in pipelines (the source: ``_redis_source``).

A record is one stream entry with two fields: ``d`` (the record's bytes, see
:mod:`._record`) and ``i`` (its id). Redis has no de-duplication of its own: a
recycle's overlap, a retried pipeline or a second collector write an entry
twice, unless the sink is given a ``dedup_window`` (then a small Lua script
refuses an id it has seen within that window, at some cost in speed). Sources
skip an id they have seen among their last ``dedup_memory`` entries in any case.
"""

from __future__ import annotations

import asyncio
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import redis.asyncio as aioredis
import redis.exceptions

from .._client import AsyncWsStream
from .._options import Overflow
from ._common import BrokerConfigError, BrokerUnavailable
from ._nats import redact_url
from ._record import RecordEncoder, Router, compile_router, gap_marker
from ._sink import Record, SinkCore

__all__ = ["RedisStreamSink", "connect_redis"]

DEFAULT_SINK_MAXSIZE = 100_000
DEFAULT_BATCH = 1000

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


async def connect_redis(where: str, url: str, options: Mapping[str, Any], timeout: float) -> aioredis.Redis:
    """A client that answered PING, or an error naming the fix."""
    client = aioredis.from_url(url, socket_connect_timeout=timeout, socket_timeout=max(timeout, 10.0),
                               **dict(options))
    try:
        async with asyncio.timeout(timeout):
            await client.ping()
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
        if isinstance(connect_timeout, bool) or not isinstance(connect_timeout, (int, float)) or connect_timeout <= 0:
            raise ValueError(f"{where}: connect_timeout must be a number of seconds > 0, got {connect_timeout!r}")
        super().__init__(  # last: it subscribes to the client
            where, client, filters=filters, maxsize=maxsize, overflow=overflow, batch=batch, ack_timeout=ack_timeout,
            drain_timeout=drain_timeout, backoff_initial=backoff_initial, backoff_max=backoff_max,
            collector=collector,
        )
        self._url = url
        self._gap_key = gap_key
        self._maxlen = maxlen
        self._dedup_ms = None if dedup_window is None else int(dedup_window * 1000)
        self._connect_timeout = connect_timeout
        self._redis_options = dict(redis_options or {})
        self._encoder = RecordEncoder(client._serialize, getattr(client, "_sequence", None), router)
        self._encode = self._encoder.encode  # type: ignore[method-assign]  # one call less per message
        self._redis: aioredis.Redis | None = None
        self._script: Any = None
        self._failing = False

    async def _open(self) -> None:
        self._redis = await connect_redis(self._where, self._url, self._redis_options, self._connect_timeout)
        if self._dedup_ms is not None:
            self._script = self._redis.register_script(_DEDUP_XADD)
        self._connected.set()

    async def _shut(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()

    def _gap_record(self, dropped: int, number: int) -> Record:
        data, msg_id = gap_marker(dropped, self._collector, number, self._session)
        return self._gap_key, data, msg_id

    async def _send(self, records: list[Record]) -> asyncio.Future[Any]:
        """Run one pipeline of XADDs; the answer is in when it returns (one batch in flight)."""
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
            async with asyncio.timeout(self._ack_timeout):
                await pipe.execute()
        except BaseException:
            self._failing = True
            raise
        if self._failing:
            self._failing = False
            self.counters["reconnects"] += 1
        done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

