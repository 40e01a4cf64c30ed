"""A whole batch of JetStream records framed as NATS ``HPUB`` commands and handed to nats-py in one piece.

``nc.publish(subject, data, headers=...)`` costs about 4 µs a message: it checks
the subject with a regular expression, builds the header block key by key and
formats the command, for every message. A sink's batch has the same header
(``Nats-Msg-Id``) on every record and a few hundred distinct subjects, so
:class:`HpubWriter` formats each command with one ``%`` (the sink's encoder has
checked each distinct subject once) and appends the batch to nats-py's outgoing buffer as one ``bytes``,
where nats-py's own flusher writes it, and resends it after a reconnect, as it
does for ``publish``.

That buffer is not public API (``Client._send_command``, ``_flush_pending``,
``_flush_queue``). :func:`hpub_writer` looks for it and returns None when
nats-py has changed, and the sink then publishes with ``nc.publish``; the test
``test_the_installed_nats_py_takes_the_batch_write`` fails loudly in that case,
so that the fast path is not lost unnoticed.
"""

from __future__ import annotations

import re
from typing import Any

import nats.errors
from nats.aio.client import Client as NatsClient

__all__ = ["HpubWriter", "check_subject", "hpub_writer"]

MSG_ID = "Nats-Msg-Id"
EXPECTED_STREAM = "Nats-Expected-Stream"

# nats-py's publish refuses these in a subject: they would end the command early.
_NOT_IN_SUBJECT = re.compile(r"[ \t\r\n]")

_REQUIRED = ("_send_command", "_flush_pending", "_flush_queue", "_pending_data_size", "_max_pending_size", "stats")


def check_subject(subject: str) -> None:
    """Raise ValueError if ``subject`` cannot be published (empty, or a space, tab or line break in it)."""
    if not isinstance(subject, str) or not subject or _NOT_IN_SUBJECT.search(subject):
        raise ValueError(f"subject {subject!r} is not a NATS subject (empty, or whitespace in it)")


def hpub_writer(nc: NatsClient) -> HpubWriter | None:
    """The batch writer for ``nc``, or None if this nats-py has not the buffer it relies on."""
    if not all(hasattr(nc, name) for name in _REQUIRED):
        return None
    if not callable(nc._send_command) or not callable(nc._flush_pending):
        return None
    return HpubWriter(nc)


class HpubWriter:
    """Frames records ``(subject, data, id)`` as ``HPUB`` commands and queues them in nats-py's buffer.

    Subjects must have passed :func:`check_subject` and ids :func:`~._record.header_safe`
    (the sink's encoder sees to both).
    """

    __slots__ = ("_nc",)

    def __init__(self, nc: NatsClient) -> None:
        self._nc = nc

    async def write(self, records: list[tuple[str, bytes, str]], reply: str, stream: str) -> None:
        """Queue ``records`` in order; the last one carries ``reply`` and ``Nats-Expected-Stream: stream``.

        Raises:
            nats.errors.ConnectionClosedError, ConnectionDrainingError,
            OutboundBufferLimitError: as ``nc.publish`` does, before anything is queued.
        """
        nc: Any = self._nc
        if nc.is_closed:
            raise nats.errors.ConnectionClosedError
        if nc.is_draining_pubs:
            raise nats.errors.ConnectionDrainingError
        parts: list[bytes] = []
        append = parts.append
        size = 0
        for subject, data, msg_id in records[:-1]:
            mid = msg_id.encode()
            hdr_len = 27 + len(mid)  # "NATS/1.0\r\n" "Nats-Msg-Id: " id "\r\n\r\n"
            size += len(data)
            append(b"HPUB %b %d %d\r\nNATS/1.0\r\nNats-Msg-Id: %b\r\n\r\n%b\r\n"
                   % (subject.encode(), hdr_len, hdr_len + len(data), mid, data))
        subject, data, msg_id = records[-1]
        size += len(data)
        hdr = b"NATS/1.0\r\nNats-Msg-Id: %b\r\nNats-Expected-Stream: %b\r\n\r\n" % (msg_id.encode(), stream.encode())
        append(b"HPUB %b %b %d %d\r\n%b%b\r\n" % (subject.encode(), reply.encode(),
                                                 len(hdr), len(hdr) + len(data), hdr, data))
        blob = b"".join(parts)
        if not nc.is_connected and (nc._max_pending_size <= 0
                                    or nc._pending_data_size + len(blob) > nc._max_pending_size):
            raise nats.errors.OutboundBufferLimitError
        nc.stats["out_msgs"] += len(records)
        nc.stats["out_bytes"] += size
        await nc._send_command(blob)
        if nc._flush_queue is not None and nc._flush_queue.empty():
            await nc._flush_pending()
