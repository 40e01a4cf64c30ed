"""The JetStream sink's batch write (HPUB commands in nats-py's buffer), against a real nats-server."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import nats
import pytest
from nats.aio.msg import Msg

from async_ws_stream.broker import JetStreamSink, ensure_stream
from async_ws_stream.broker._hpub import check_subject, hpub_writer
from async_ws_stream.testing import FeedServer

from .conftest import FeedClient, trades
from .faults import eventually
from .servers import NatsServer

RECORDS = [
    ("md.trade.BTCUSDT", b'{"e":"trade","s":"BTCUSDT","t":1}', "c:0123abcd"),
    ("md.trade.ETHUSDT", b"", "s:ETHUSDT:7:7"),
    ("md.depth.BTCUSDT", "é ünïcode".encode(), "g:host:1:aaaa:1"),
]


async def received(nc: Any, subject: str, n: int, send: Any) -> list[Msg]:
    got: list[Msg] = []
    done = asyncio.Event()

    async def take(msg: Msg) -> None:
        got.append(msg)
        if len(got) == n:
            done.set()

    sub = await nc.subscribe(subject, cb=take)
    await send()
    async with asyncio.timeout(5):
        await done.wait()
    await sub.unsubscribe()
    return got


async def test_the_installed_nats_py_takes_the_batch_write(nats_server: NatsServer) -> None:
    """This nats-py has the buffer the batch write relies on, and what it sends arrives as nc.publish's
    would: same subjects, bytes and Nats-Msg-Id, the reply and Nats-Expected-Stream on the last one.
    If this fails, nats-py changed its internals: the sink falls back to nc.publish (4 µs a record)."""
    nc = await nats.connect(nats_server.url)
    try:
        writer = hpub_writer(nc)
        assert writer is not None, "nats-py no longer has Client._send_command/_flush_pending: see _hpub.py"
        before = nc.stats["out_msgs"]

        async def batch() -> None:
            await writer.write(RECORDS, "inbox.1", "MD")

        async def one_by_one() -> None:
            for subject, data, msg_id in RECORDS[:-1]:
                await nc.publish(subject, data, headers={"Nats-Msg-Id": msg_id})
            subject, data, msg_id = RECORDS[-1]
            await nc.publish(subject, data, reply="inbox.1",
                             headers={"Nats-Msg-Id": msg_id, "Nats-Expected-Stream": "MD"})

        ours = await received(nc, "md.>", 3, batch)
        theirs = await received(nc, "md.>", 3, one_by_one)
        assert nc.stats["out_msgs"] - before == 6
    finally:
        await nc.close()

    def seen(msgs: list[Msg]) -> list[tuple[str, bytes, str, dict[str, str] | None]]:
        return [(m.subject, m.data, m.reply, m.headers) for m in msgs]

    assert seen(ours) == seen(theirs)
    assert [m.data for m in ours] == [r[1] for r in RECORDS]
    assert ours[-1].reply == "inbox.1" and ours[-1].headers == {"Nats-Msg-Id": "g:host:1:aaaa:1",
                                                                "Nats-Expected-Stream": "MD"}


async def test_jetstream_acknowledges_a_batch_write_and_drops_its_repeat(nats_server: NatsServer) -> None:
    """The last record's ack covers the batch (the stream's sequence is the batch's size), and the
    same batch written again is stored no more (the ids are deduplicated)."""
    await ensure_stream(servers=nats_server.url, stream="MD", subjects=["md.>"])
    nc = await nats.connect(nats_server.url)
    try:
        writer = hpub_writer(nc)
        assert writer is not None
        inbox = nc.new_inbox()
        acks = [json.loads(m.data) for m in await received(nc, inbox, 1, lambda: writer.write(RECORDS, inbox, "MD"))]
        repeat = [json.loads(m.data) for m in await received(nc, inbox, 1, lambda: writer.write(RECORDS, inbox, "MD"))]
        info = await nc.jetstream().stream_info("MD")
    finally:
        await nc.close()
    assert acks == [{"stream": "MD", "seq": 3}]
    assert repeat[0]["seq"] == 3 and repeat[0].get("duplicate") is True
    assert info.state.messages == 3


def test_a_subject_with_whitespace_is_refused() -> None:
    """A space, tab or line break would end the HPUB command early: refused, with the subject named."""
    check_subject("md.trade.BTCUSDT")
    for bad in ("", "md.BTC USDT", "md.a\tb", "md.a\r\nPUB x 1"):
        with pytest.raises(ValueError, match="not a NATS subject"):
            check_subject(bad)


class PlainSink(JetStreamSink):
    batch_write = False


@pytest.mark.parametrize("sink_class", [JetStreamSink, PlainSink], ids=["batch-write", "nc.publish"])
async def test_both_ways_of_publishing_store_the_same_records(
    nats_server: NatsServer, feed: FeedServer, feed_client: FeedClient, sink_class: type[JetStreamSink]
) -> None:
    """The batch write and nc.publish give the stream the same subjects, bytes and ids; a message whose
    subject would have whitespace in it is a counted, marked loss, not a stalled sink."""
    await ensure_stream(servers=nats_server.url, stream="MD", subjects=["md.>"])
    async with sink_class(feed_client, servers=nats_server.url, stream="MD", subject="md.{e}.{s}") as sink:
        await feed_client.wait_connected(5)
        await feed.publish([*trades(3), {"e": "trade", "s": "BTC USDT", "t": 99}, *trades(3, 3, "ETHUSDT")])
        await eventually(lambda: sink.stats()["published"] == 6, what="the 6 routable trades published")
    assert sink.stats()["unroutable"] == 1 and sink.stats()["gap_dropped"] == 1
    nc = await nats.connect(nats_server.url)
    try:
        psub = await nc.jetstream().pull_subscribe("md.trade.>", stream="MD")
        msgs = await psub.fetch(6, timeout=5)
    finally:
        await nc.close()
    assert [(m.subject, json.loads(m.data)["t"]) for m in msgs] == [
        *(("md.trade.BTCUSDT", i) for i in range(3)), *(("md.trade.ETHUSDT", i) for i in range(3, 6))]
    assert all(m.headers and m.headers["Nats-Msg-Id"].startswith("c:") for m in msgs)
