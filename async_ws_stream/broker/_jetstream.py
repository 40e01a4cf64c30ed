"""NATS JetStream: a sink that publishes what a client receives (the source: ``_jetstream_source``)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import nats.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from .._client import AsyncWsStream
from .._options import Overflow
from ._common import BrokerConfigError
from ._hpub import EXPECTED_STREAM, MSG_ID, HpubWriter, check_subject, hpub_writer
from ._nats import (
    DEFAULT_CONNECT_TIMEOUT,
    connect_nats,
    redact_url,
    server_list,
    stream_info,
    subject_matches,
)
from ._record import RecordEncoder, Router, compile_router, gap_marker
from ._sink import SinkCore

__all__ = ["JetStreamSink", "check_seconds"]

DEFAULT_SINK_MAXSIZE = 100_000
DEFAULT_BATCH = 1000
DEFAULT_ACK_TIMEOUT = 5.0


class JetStreamSink(SinkCore):
    """Publishes every message of ``client`` matching ``filters`` to a JetStream stream.

    An async context manager::

        client = BinanceTrades()
        async with JetStreamSink(client, servers="nats://127.0.0.1:4222", stream="MD",
                                 subject="md.binance.{e}.{s}") as sink, client:
            await stop.wait()  # anything: the sink publishes from a task of its own

    The sink subscribes when it is constructed (its own ``client.stream_filter(
    filters, maxsize=, overflow=)``), so what arrives while it connects to NATS
    is kept, and the websocket pump only ever appends to a bounded buffer. Its
    task takes what is buffered (up to ``batch`` records) and publishes it in one
    write; the batch's last record asks for JetStream's acknowledgement, which
    covers the batch (JetStream stores one connection's records in order). Up to
    four batches are in flight. A batch not acknowledged within ``ack_timeout``
    (or refused) is published again with those after it, in order, with backoff,
    until it is taken: the ``Nats-Msg-Id`` header makes the repeats harmless.
    Meanwhile the buffer fills and applies its ``overflow`` policy (default
    ``"drop_oldest"``); every loss is counted (``stats()["dropped"]``), logged,
    and published as a gap marker ahead of the next batch.

    Entering is not reentrant; ``close()`` (``__aexit__``) is idempotent, publishes
    what is buffered for up to ``drain_timeout`` seconds and never closes the client.

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
    #: Frame each batch as HPUB commands in one write (see ``_hpub``); False: ``nc.publish`` each record.
    batch_write = True

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
        try:
            check_subject(gap_subject)
        except ValueError as exc:
            raise ValueError(f"{where}: gap_subject: {exc}") from None
        if not isinstance(stream, str) or not stream:
            raise ValueError(f"{where}: stream must be the name of a JetStream stream, got {stream!r}")
        check_seconds(where, "connect_timeout", connect_timeout)
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
        self._encoder = RecordEncoder(client._serialize, getattr(client, "_sequence", None), router,
                                      check_route=check_subject)
        self._encode = self._encoder.encode  # type: ignore[method-assign]  # one call less per message
        self._nc: NatsClient | None = None
        self._writer: HpubWriter | None = None
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
            # Headers count too: leave room for Nats-Msg-Id and Nats-Expected-Stream.
            self._encoder.max_size = nc.max_payload - 256
            self._writer = hpub_writer(nc) if self.batch_write else None
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

    def _gap_record(self, dropped: int, number: int) -> tuple[str, bytes, str]:
        data, msg_id = gap_marker(dropped, self._collector, number, self._session)
        return self._gap_subject, data, msg_id

    async def _send(self, records: list[tuple[str, bytes, str]]) -> asyncio.Future[Msg]:
        """Publish ``records``; the last one asks for JetStream's ack, which covers the batch."""
        nc = self._nc
        assert nc is not None
        if not nc.is_connected:
            async with asyncio.timeout(self._ack_timeout):
                await self._link_up.wait()
        self._tokens += 1
        reply = f"{self._inbox}.{self._tokens}"
        future: asyncio.Future[Msg] = asyncio.get_running_loop().create_future()
        self._acks[reply] = future  # before the write: the answer may come while it yields
        if self._writer is not None:
            await self._writer.write(records, reply, self._stream_name)
        else:
            publish = nc.publish
            for subject, data, msg_id in records[:-1]:
                await publish(subject, data, headers={MSG_ID: msg_id})
            subject, data, msg_id = records[-1]
            await publish(subject, data, reply=reply, headers={MSG_ID: msg_id, EXPECTED_STREAM: self._stream_name})
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


def check_seconds(where: str, name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{where}: {name} must be a number of seconds > 0, got {value!r}")
