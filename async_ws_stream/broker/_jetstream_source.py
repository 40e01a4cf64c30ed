"""NATS JetStream: a source that consumes a stream with the client's filters, on any machine.

It speaks JetStream's pull protocol itself (a request to
``$JS.API.CONSUMER.MSG.NEXT.<stream>.<consumer>``, the records delivered to an
inbox whose subscription calls back once per record), because nats-py's
``fetch`` costs several times more per message.
"""

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
from .._options import Overflow, check_buffer
from .._streams import Stream
from ._common import Dispatcher, Pending
from ._jetstream import check_seconds
from ._nats import (
    DEFAULT_CONNECT_TIMEOUT,
    connect_nats,
    redact_url,
    server_list,
    stream_info,
)
from ._record import count_gap, is_gap

__all__ = ["JetStreamSource"]

DEFAULT_FETCH_BATCH = 1000
DEFAULT_FETCH_TIMEOUT = 1.0
DEFAULT_ACK_WAIT = 30.0
DEFAULT_ACK_INTERVAL = 0.05

_PUBLISH_ERRORS = (nats.errors.Error, OSError, asyncio.TimeoutError)


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
        check_buffer(where, maxsize, overflow)
        self._subjects = [subjects] if isinstance(subjects, str) else list(subjects)
        if not self._subjects or not all(isinstance(s, str) and s for s in self._subjects):
            raise ValueError(f"{where}: subjects must be a subject or a list of them, such as 'md.>', got {subjects!r}")
        if start not in ("all", "new"):
            raise ValueError(f"{where}: start must be 'all' or 'new', got {start!r}")
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise ValueError(f"{where}: batch must be an int >= 1, got {batch!r}")
        for name, value in (("ack_wait", ack_wait), ("fetch_timeout", fetch_timeout),
                            ("ack_interval", ack_interval), ("connect_timeout", connect_timeout)):
            check_seconds(where, name, value)
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
        self._sub: Any = None
        self._next = ""  # the consumer's pull-request subject
        self._inbox = ""
        self._requests = 0
        self._current = ""  # the number of the pull request being answered
        self._wanted = self._got = 0
        self._request_done = asyncio.Event()
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
        """Connect, create or bind the consumer, and start pulling.

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
                max_ack_pending=-1,  # the source's own flow control bounds what is in flight
                filter_subjects=self._subjects if len(self._subjects) > 1 else None,
                filter_subject=self._subjects[0] if len(self._subjects) == 1 else None,
            )
            name = None
            if self._durable is not None:
                config.durable_name = config.name = self._durable
                if await self._resume_at_ack_floor(js, config):
                    name = self._durable  # bound as it is
            if name is None:
                name = (await js.add_consumer(self._stream, config)).name
            self._next = f"$JS.API.CONSUMER.MSG.NEXT.{self._stream}.{name}"
            self._inbox = nc.new_inbox() + "."
            self._sub = await nc.subscribe(self._inbox + "*", cb=self._on_msg)
        except BaseException:
            await nc.close()
            self._nc = None
            raise
        self._tasks = [asyncio.create_task(self._pull(), name="async_ws_stream.broker.jetstream.pull"),
                       asyncio.create_task(self._ack_loop(), name="async_ws_stream.broker.jetstream.ack")]

    async def _resume_at_ack_floor(self, js: Any, config: ConsumerConfig) -> bool:
        """Return True if the durable exists and can be read as it is; else prepare ``config`` to create it.

        JetStream would redeliver the records a previous reader fetched and never
        acknowledged only after ``ack_wait``, and not in stream order; so a
        durable left with such records is deleted, and recreated to start at its
        ack floor + 1.
        """
        try:
            info = await js.consumer_info(self._stream, self._durable)
        except nats.js.errors.NotFoundError:
            return False
        if not info.num_ack_pending:
            return True
        floor = info.ack_floor.stream_seq if info.ack_floor is not None else 0
        logger.info("{}: durable {!r} resumes at stream sequence {} ({} records were not acknowledged)",
                    self._where, self._durable, floor + 1, info.num_ack_pending)
        await js.delete_consumer(self._stream, self._durable)
        config.deliver_policy = DeliverPolicy.BY_START_SEQUENCE
        config.opt_start_seq = floor + 1
        return False

    async def close(self) -> None:
        """Stop fetching, acknowledge what consumers have read, end every stream. Idempotent.

        Consumers still get what their streams buffered, then ``async for`` ends.
        """
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        if self._sub is not None:
            try:
                await self._sub.unsubscribe()
            except nats.errors.Error as exc:
                logger.debug("{}: unsubscribe failed: {}", self._where, exc)
            self._sub = None
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

    async def _pull(self) -> None:
        """Ask for records, one pull request at a time, each as big as the streams have room for.

        The records of request ``k`` arrive on the inbox's subscription (under
        their own subjects) and are handled by :meth:`_on_msg`; a request ends when
        its records are all in, or with a status on ``<inbox>.k`` (408: it expired;
        404: nothing to deliver; 409: refused).
        """
        nc = self._nc
        assert nc is not None
        dispatcher = self._dispatcher
        delays = backoff_delays(0.05, 2.0, 2.0, 0.5)
        expires = int(self._fetch_timeout * 1e9)
        while True:
            room = dispatcher.room(self._batch)
            if room <= 0:
                await asyncio.sleep(self._ack_interval)  # a consumer has to catch up first
                continue
            self._requests += 1
            self._current = str(self._requests)
            self._wanted, self._got = room, 0
            done = self._request_done = asyncio.Event()
            request = json.dumps({"batch": self._wanted, "expires": expires}).encode()
            try:
                await nc.publish(self._next, request, reply=self._inbox + self._current)
            except (nats.errors.Error, OSError) as exc:
                self._fetch_errors += 1
                logger.warning("{}: pull request failed ({}: {}); retrying", self._where, type(exc).__name__, exc)
                await asyncio.sleep(next(delays))
                continue
            try:
                # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation
                # that races with the event, and this loop would then never end.
                async with asyncio.timeout(self._fetch_timeout + 1.0):
                    await done.wait()
            except TimeoutError:
                self._fetch_errors += 1  # no answer at all: the connection is down, or being replaced
                await asyncio.sleep(next(delays))
                continue
            delays = backoff_delays(0.05, 2.0, 2.0, 0.5)

    async def _on_msg(self, m: Msg) -> None:
        """One delivery (or a status) of a pull request; nats-py calls this in arrival order."""
        headers = m.headers
        if headers is not None and "Status" in headers:
            # A status comes on the request's own inbox subject; a record keeps its subject.
            status = headers["Status"]
            if status == "409":
                logger.warning("{}: JetStream ended a pull request: {}", self._where, headers.get("Description"))
            if m.subject[len(self._inbox):] == self._current and status in ("404", "408", "409"):
                self._request_done.set()
            return
        counters = self._dispatcher.counters
        counters.received += 1
        try:
            obj = self._decode(m.data)
        except Exception as exc:
            counters.decode_errors += 1
            logger.warning("{}: a record on {} could not be decoded ({}); skipped", self._where,
                           m.subject, type(exc).__name__)
            self._pending.add(m, [])
        else:
            if is_gap(obj):
                count_gap(self._where, counters, obj)
            self._pending.add(m, self._dispatcher.dispatch(obj))
        # One request is out at a time, so a record belongs to it (a late one from a request given
        # up on only ends the current one early: the next request follows at once).
        self._got += 1
        if self._got >= self._wanted:
            self._request_done.set()

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


