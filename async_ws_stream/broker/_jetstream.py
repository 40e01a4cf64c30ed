"""NATS JetStream: a sink that publishes what a client receives, and a source that consumes it anywhere."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Hashable, Mapping, Sequence
from types import TracebackType
from typing import Any, Literal, Self

import nats.errors
import nats.js.errors
from loguru import logger
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from .._backoff import backoff_delays
from .._client import AsyncWsStream
from .._streams import Overflow, Stream, check_buffer_options
from ._common import BrokerConfigError, BrokerError, Dispatcher, Pending
from ._nats import (
    DEFAULT_CONNECT_TIMEOUT,
    connect_nats,
    redact_url,
    server_list,
    stream_info,
    subject_matches,
)
from ._record import Router, RecordEncoder, compile_router, count_gap, gap_marker, is_gap
from ._sink import SinkCore

__all__ = ["JetStreamSink", "JetStreamSource"]

DEFAULT_SINK_MAXSIZE = 100_000
DEFAULT_BATCH = 1000
DEFAULT_ACK_TIMEOUT = 5.0
DEFAULT_FETCH_BATCH = 1000
DEFAULT_FETCH_TIMEOUT = 1.0
DEFAULT_ACK_WAIT = 30.0
DEFAULT_ACK_INTERVAL = 0.05

_MSG_ID = "Nats-Msg-Id"
_EXPECTED_STREAM = "Nats-Expected-Stream"

# What a publish can raise while the server is away or the connection is being replaced.
_PUBLISH_ERRORS = (nats.errors.Error, OSError, asyncio.TimeoutError, BrokerError)


class JetStreamSink(SinkCore):
    """Publishes every message of ``client`` matching ``filters`` to a JetStream stream.

    An async context manager::

        async with client, JetStreamSink(client, servers="nats://127.0.0.1:4222",
                                         stream="MD", subject="md.binance.{e}.{s}"):
            await client.wait_closed()  # or anything: the sink publishes in its own task

    The sink reads from its own ``client.stream_filter(filters, maxsize=,
    overflow=)``, so the websocket pump only ever appends to a bounded buffer.
    Its task takes what is buffered (up to ``batch`` records), publishes it in
    one write and waits for JetStream's acknowledgement of the batch's last
    record (JetStream stores one connection's records in order, so that one ack
    covers the batch); a batch that is not acknowledged within ``ack_timeout``
    is published again, after a backoff, until it is: the ``Nats-Msg-Id``
    header makes the repeats harmless. Meanwhile the buffer fills and applies
    its ``overflow`` policy (default ``"drop_oldest"``); every loss is counted
    (``stats()["dropped"]``), logged, and published as a gap marker ahead of
    the next batch.

    Args:
        client: The client whose messages are published; the sink never closes it.
        servers: NATS URL or list of URLs.
        stream: Name of an existing JetStream stream whose subjects cover ``subject``.
        subject: Template such as ``"md.binance.{e}.{s}"`` (top-level fields of the
            message), or a callable ``msg -> str``.
        filters: Which messages to publish (the client's filter syntax); None: all.
        gap_subject: Where gap markers go (default: the template's fixed prefix + ``._gap``).
        maxsize, overflow: The sink's buffer in the client; it bounds memory.
        batch: Most records per round trip.
        ack_timeout: Seconds to wait for a batch's acknowledgement before publishing it again.
        connect_timeout: Seconds the first connection may take before ``BrokerUnavailable``.
        drain_timeout: Seconds ``close()`` spends publishing what is buffered.
        collector: Name carried in gap markers (default ``host:pid``).
        nats_options: More keyword arguments for ``nats.connect`` (``user``,
            ``password``, ``token``, ``user_credentials``, ``tls``...).

    Raises:
        ValueError, TypeError: a bad option, at construction.
        BrokerUnavailable: on entry, when no server answers within ``connect_timeout``.
        BrokerConfigError: on entry, for rejected credentials, a missing stream, or a
            gap subject the stream does not cover.
    """

    retryable = (*SinkCore.retryable, nats.errors.Error)
    window = 4

    def __init__(
        self,
        client: AsyncWsStream[Any],
        *,
        servers: str | Sequence[str],
        stream: str,
        subject: str | Router,
        filters: Sequence[Mapping[Hashable, Any]] | None = None,
        gap_subject: str | None = None,
        # Limits
        maxsize: int = DEFAULT_SINK_MAXSIZE,
        overflow: Overflow = "drop_oldest",
        batch: int = DEFAULT_BATCH,
        # Timeouts
        ack_timeout: float = DEFAULT_ACK_TIMEOUT,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        drain_timeout: float = 5.0,
        backoff_initial: float = 0.05,
        backoff_max: float = 2.0,
        # Identity and connection
        collector: str | None = None,
        nats_options: Mapping[str, Any] | None = None,
    ) -> None:
        where = "JetStreamSink"
        router, prefix = compile_router(f"{where}: subject", subject, separator=".")
        if gap_subject is None:
            if callable(subject):
                raise ValueError(f"{where}: with a callable subject, pass gap_subject= (a subject of the stream)")
            gap_subject = f"{prefix}._gap" if prefix else "_gap"
        if not isinstance(stream, str) or not stream:
            raise ValueError(f"{where}: stream must be the name of a JetStream stream, got {stream!r}")
        _check_seconds(where, "connect_timeout", connect_timeout)
        self._servers = server_list(where, servers)
        super().__init__(  # last: it subscribes to the client
            where, client, filters=filters, maxsize=maxsize, overflow=overflow, batch=batch,
            ack_timeout=ack_timeout, drain_timeout=drain_timeout, backoff_initial=backoff_initial, backoff_max=backoff_max,
            collector=collector,
        )
        self._names = ", ".join(redact_url(s) for s in self._servers)
        self._stream_name = stream
        self._gap_subject = gap_subject
        self._connect_timeout = connect_timeout
        self._nats_options = dict(nats_options or {})
        self._link_up = asyncio.Event()  # the NATS connection is up (set and cleared by nats-py's callbacks)
        self._encoder = RecordEncoder(client._serialize, getattr(client, "_sequence", None), router)
        self._nc: NatsClient | None = None
        self._inbox = ""
        self._acks: dict[str, asyncio.Future[Msg]] = {}
        self._tokens = 0
        #: Duplicate window of the stream, in seconds (read on entry).
        self.duplicate_window: float | None = None

    # -- the broker's side -----------------------------------------------------------------

    async def _open(self) -> None:
        self._nc = nc = await connect_nats(
            self._where, self._servers, timeout=self._connect_timeout, options=self._nats_options,
            on_disconnect=self._disconnected, on_reconnect=self._reconnected,
        )
        try:
            info = await stream_info(self._where, nc.jetstream(), self._stream_name, self._names)
            subjects = info.config.subjects or []
            if not any(subject_matches(p, self._gap_subject) for p in subjects):
                raise BrokerConfigError(
                    f"{self._where}: the gap subject {self._gap_subject!r} is not in stream "
                    f"{self._stream_name!r} (subjects {subjects}); pass gap_subject= or add it to the stream"
                )
            self.duplicate_window = info.config.duplicate_window
            self._inbox = nc.new_inbox()
            await nc.subscribe(self._inbox + ".*", cb=self._on_ack)
        except BaseException:
            await nc.close()
            raise
        self._link_up.set()
        self._connected.set()

    async def _shut(self) -> None:
        if self._nc is not None:
            await self._nc.close()

    async def _disconnected(self) -> None:
        self._link_up.clear()
        self._connected.clear()

    async def _reconnected(self) -> None:
        self.counters["reconnects"] += 1
        self._link_up.set()

    async def _on_ack(self, msg: Msg) -> None:
        future = self._acks.pop(msg.subject, None)
        if future is not None and not future.done():
            future.set_result(msg)

    def _encode(self, msg: Any) -> tuple[str, bytes, str]:
        return self._encoder.encode(msg)

    def _gap_record(self, dropped: int, number: int) -> tuple[str, bytes, str]:
        data, msg_id = gap_marker(dropped, self._collector, number, self._session)
        return self._gap_subject, data, msg_id

    async def _send(self, records: list[tuple[str, bytes, str]]) -> asyncio.Future[Msg]:
        """Publish ``records``; the last one asks for JetStream's ack, which covers the batch."""
        nc = self._nc
        assert nc is not None
        if not nc.is_connected:
            await asyncio.wait_for(self._link_up.wait(), self._ack_timeout)
        publish = nc.publish
        for subject, data, msg_id in records[:-1]:
            await publish(subject, data, headers={_MSG_ID: msg_id})
        self._tokens += 1
        reply = f"{self._inbox}.{self._tokens}"
        future: asyncio.Future[Msg] = asyncio.get_running_loop().create_future()
        self._acks[reply] = future
        subject, data, msg_id = records[-1]
        await publish(subject, data, reply=reply, headers={_MSG_ID: msg_id, _EXPECTED_STREAM: self._stream_name})
        return future

    def _confirm(self, answer: Msg) -> None:
        if answer.headers and answer.headers.get("Status") == "503":
            raise BrokerConfigError(f"{self._where}: no JetStream stream took the batch on {self._names}")
        reply = json.loads(answer.data)
        if "error" in reply:
            raise BrokerConfigError(
                f"{self._where}: JetStream refused a batch: {reply['error'].get('description')}"
            )

    def _abandon(self) -> None:
        for future in self._acks.values():
            future.cancel()
        self._acks.clear()


class JetStreamSource:
    """Consumes a JetStream stream with the client's ``stream_filter`` semantics, on any machine.

    An async context manager. A pull consumer on ``subjects`` of ``stream``
    (``durable``: a named consumer on the server that outlives this process and
    resumes where it stopped; None: an ephemeral one starting at ``start``).
    Records are decoded (``decode``, JSON by default) and routed to every
    matching stream of :meth:`stream_filter`, with the same filter syntax and
    overflow policies as the client's streams.

    **Acknowledgement.** A record is acknowledged once every stream it went to
    has handed it to its consumer (or dropped it, or was closed); the consumer
    is created with ``AckPolicy.ALL``, so one ack covers every earlier record.
    Records still buffered when the source closes, or when the process dies, are
    not acknowledged: the next source with the same ``durable`` starts again at
    the first unacknowledged record, in stream order (at least once). One
    process reads a durable at a time: it is that reader's bookmark. While
    a stream is half full, the source stops fetching (the broker holds the
    backlog, not memory).

    Gap markers (``{"_gap": {...}}``, see :mod:`._record`) are delivered in line
    to the streams whose filters match them (a ``None`` filter does), counted in
    ``stats()["gaps"]`` and logged.

    Raises:
        BrokerUnavailable, BrokerConfigError: on entry, as :class:`JetStreamSink`.
    """

    def __init__(
        self,
        *,
        servers: str | Sequence[str],
        stream: str,
        subjects: str | Sequence[str],
        durable: str | None = None,
        start: Literal["all", "new"] = "all",
        decode: Callable[[bytes], Any] = json.loads,
        # Limits
        maxsize: int = 10_000,
        overflow: Overflow = "error",
        batch: int = DEFAULT_FETCH_BATCH,
        # Timeouts
        ack_wait: float = DEFAULT_ACK_WAIT,
        fetch_timeout: float = DEFAULT_FETCH_TIMEOUT,
        ack_interval: float = DEFAULT_ACK_INTERVAL,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        nats_options: Mapping[str, Any] | None = None,
    ) -> None:
        where = "JetStreamSource"
        check_buffer_options(where, maxsize, overflow)
        self._subjects = [subjects] if isinstance(subjects, str) else list(subjects)
        if not self._subjects or not all(isinstance(s, str) and s for s in self._subjects):
            raise ValueError(f"{where}: subjects must be a subject or a list of them, such as 'md.>', got {subjects!r}")
        if start not in ("all", "new"):
            raise ValueError(f"{where}: start must be 'all' or 'new', got {start!r}")
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise ValueError(f"{where}: batch must be an int >= 1, got {batch!r}")
        for name, value in (("ack_wait", ack_wait), ("fetch_timeout", fetch_timeout),
                            ("ack_interval", ack_interval), ("connect_timeout", connect_timeout)):
            _check_seconds(where, name, value)
        self._where = where
        self._servers = server_list(where, servers)
        self._names = ", ".join(redact_url(s) for s in self._servers)
        self._stream = stream
        self._durable = durable
        self._start = start
        self._decode = decode
        self._batch = batch
        self._ack_wait = ack_wait
        self._fetch_timeout = fetch_timeout
        self._ack_interval = ack_interval
        self._connect_timeout = connect_timeout
        self._nats_options = dict(nats_options or {})
        self._dispatcher = Dispatcher(where, maxsize=maxsize, overflow=overflow)
        self._pending = Pending()
        self._nc: NatsClient | None = None
        self._psub: Any = None
        self._tasks: list[asyncio.Task[None]] = []
        self._acked = 0
        self._fetch_errors = 0

    def stream_filter(
        self,
        filters: Sequence[Mapping[Hashable, Any]] | None = None,
        *,
        maxsize: int | None = None,
        overflow: Overflow | None = None,
        copy: bool = False,
    ) -> Stream[Any]:
        """Return a new stream of the records matching ``filters``, from the next fetch on.

        Open the streams before the first records arrive (right after entering the
        source) so that none goes by unmatched; an unmatched record is acknowledged.
        """
        return self._dispatcher.stream_filter(filters, maxsize=maxsize, overflow=overflow, copy=copy)

    def stats(self) -> dict[str, Any]:
        """Counters (``received``, ``delivered``, ``acked``, ``dropped``, ``gaps``, ...) and the streams."""
        out = self._dispatcher.stats()
        out.update(acked=self._acked, unacked=len(self._pending), fetch_errors=self._fetch_errors,
                   connected=self._nc is not None and self._nc.is_connected)
        return out

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def start(self) -> None:
        """Connect, bind the consumer, and start fetching.

        Raises:
            BrokerUnavailable, BrokerConfigError: see the class.
        """
        if self._nc is not None:
            return
        self._nc = nc = await connect_nats(self._where, self._servers, timeout=self._connect_timeout,
                                           options=self._nats_options)
        try:
            js = nc.jetstream()
            await stream_info(self._where, js, self._stream, self._names)
            config = ConsumerConfig(
                ack_policy=AckPolicy.ALL,
                deliver_policy=DeliverPolicy.ALL if self._start == "all" else DeliverPolicy.NEW,
                ack_wait=self._ack_wait,
                max_ack_pending=-1,
                filter_subjects=self._subjects if len(self._subjects) > 1 else None,
                filter_subject=self._subjects[0] if len(self._subjects) == 1 else None,
            )
            if self._durable is not None:
                await self._resume_at_ack_floor(js, config)
            self._psub = await js.pull_subscribe(self._subjects[0], durable=self._durable, stream=self._stream,
                                                 config=config)
        except BaseException:
            await nc.close()
            self._nc = None
            raise
        self._tasks = [asyncio.create_task(self._fetch(), name="async_ws_stream.broker.jetstream.fetch"),
                       asyncio.create_task(self._ack_loop(), name="async_ws_stream.broker.jetstream.ack")]

    async def _resume_at_ack_floor(self, js: Any, config: ConsumerConfig) -> None:
        """Make the durable consumer deliver again, in stream order, from its first unacknowledged record.

        JetStream would redeliver the records a previous reader fetched and never
        acknowledged only after ``ack_wait``, and not in stream order; so a
        durable left with such records is recreated to start at its ack floor + 1.
        """
        try:
            info = await js.consumer_info(self._stream, self._durable)
        except nats.js.errors.NotFoundError:
            return
        if not info.num_ack_pending:
            return
        floor = info.ack_floor.stream_seq if info.ack_floor is not None else 0
        logger.info("{}: durable {!r} resumes at stream sequence {} ({} records were not acknowledged)",
                    self._where, self._durable, floor + 1, info.num_ack_pending)
        await js.delete_consumer(self._stream, self._durable)
        config.deliver_policy = DeliverPolicy.BY_START_SEQUENCE
        config.opt_start_seq = floor + 1

    async def close(self) -> None:
        """Stop fetching, acknowledge what consumers have read, end every stream. Idempotent.

        Consumers still get what their streams buffered, then ``async for`` ends.
        """
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            try:
                await task
            except asyncio.CancelledError:
                if asyncio.current_task().cancelling():  # type: ignore[union-attr]
                    raise
        nc, self._nc = self._nc, None
        if nc is not None:
            try:
                await self._ack()
            except _PUBLISH_ERRORS as exc:
                logger.warning("{}: final acknowledgement failed ({}); those records come again", self._where, exc)
            await nc.close()
        self._dispatcher.close()

    async def _fetch(self) -> None:
        dispatcher = self._dispatcher
        counters = dispatcher.counters
        delays = backoff_delays(0.05, 2.0, 2.0, 0.5)
        while True:
            if not dispatcher.has_streams() or dispatcher.crowded():
                await asyncio.sleep(self._ack_interval)  # a consumer has to catch up first
                continue
            try:
                msgs = await self._psub.fetch(self._batch, timeout=self._fetch_timeout)
            except nats.errors.TimeoutError:
                continue
            except (nats.errors.Error, OSError) as exc:
                self._fetch_errors += 1
                logger.warning("{}: fetch failed ({}: {}); retrying", self._where, type(exc).__name__, exc)
                await asyncio.sleep(next(delays))
                continue
            delays = backoff_delays(0.05, 2.0, 2.0, 0.5)
            decode = self._decode
            add = self._pending.add
            for m in msgs:
                counters.received += 1
                try:
                    obj = decode(m.data)
                except Exception as exc:
                    counters.decode_errors += 1
                    logger.warning("{}: a record on {} could not be decoded ({}); skipped", self._where,
                                   m.subject, type(exc).__name__)
                    add(m, [])
                    continue
                if is_gap(obj):
                    count_gap(self._where, counters, obj)
                add(m, dispatcher.dispatch(obj))
            await self._ack()

    async def _ack_loop(self) -> None:
        while True:
            await asyncio.sleep(self._ack_interval)
            try:
                await self._ack()
            except _PUBLISH_ERRORS as exc:
                logger.warning("{}: acknowledgement failed ({}); retrying", self._where, exc)

    async def _ack(self) -> None:
        handles = self._pending.settled_prefix()
        if handles:
            await handles[-1].ack()  # AckPolicy.ALL: acknowledges every earlier one too
            self._acked += len(handles)


def _check_seconds(where: str, name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{where}: {name} must be a number of seconds > 0, got {value!r}")
