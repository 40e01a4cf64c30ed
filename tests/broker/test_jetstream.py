"""JetStreamSink and JetStreamSource against a real nats-server."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import nats
import pytest

from async_ws_stream.broker import (
    BrokerConfigError,
    BrokerUnavailable,
    JetStreamSink,
    JetStreamSource,
    ensure_stream,
)
from async_ws_stream.testing import FeedServer

from .conftest import FeedClient, trades
from .faults import eventually, settle
from .servers import NatsServer, free_port


async def stream_count(url: str, stream: str = "MD") -> int:
    nc = await nats.connect(url)
    try:
        return (await nc.jetstream().stream_info(stream)).state.messages
    finally:
        await nc.close()


async def read(source_stream: Any, n: int) -> list[Any]:
    out = []
    async with asyncio.timeout(10):
        async for msg in source_stream:
            out.append(msg)
            if len(out) == n:
                break
    return out


async def test_sink_publishes_every_matching_message_to_its_subject(
    nats_server: NatsServer, feed: FeedServer, feed_client: FeedClient
) -> None:
    """Every trade lands once on md.<e>.<s>; a non-matching message is not published."""
    await ensure_stream(servers=nats_server.url, stream="MD", subjects=["md.>"])
    async with JetStreamSink(feed_client, servers=nats_server.url, stream="MD", subject="md.{e}.{s}",
                             filters=[{"e": "trade"}]) as sink:
        await feed_client.wait_connected(5)
        await feed.publish([*trades(50), {"e": "depth", "s": "BTCUSDT"}, *trades(50, 50, "ETHUSDT")])
        async with JetStreamSource(servers=nats_server.url, stream="MD", subjects="md.trade.ETHUSDT") as source:
            eth = source.stream_filter()
            got = await read(eth, 50)
    assert [m["t"] for m in got] == list(range(50, 100))
    assert sink.stats()["published"] == 100
    assert await stream_count(nats_server.url) == 100


async def test_twenty_recycles_under_load_leave_each_message_once_in_the_stream(
    nats_server: NatsServer, feed: FeedServer, feed_client: FeedClient
) -> None:
    """The recycle overlap repeats messages; Nats-Msg-Id dedup keeps exactly one of each."""
    await ensure_stream(servers=nats_server.url, stream="MD", subjects=["md.>"])
    n = 4000
    async with JetStreamSink(feed_client, servers=nats_server.url, stream="MD", subject="md.{e}.{s}") as sink:
        await feed_client.wait_connected(5)
        publishing = asyncio.create_task(feed.publish(trades(n), rate=20_000))
        for _ in range(20):
            recycled = feed_client.stats()["recycles"] + 1
            feed_client.recycle_now.set()
            await feed.wait_until(lambda: feed_client.stats()["recycles"] >= recycled)
        await publishing
        async with JetStreamSource(servers=nats_server.url, stream="MD", subjects="md.>") as source:
            got = await read(source.stream_filter(), n)
    assert feed_client.stats()["recycles"] == 20
    assert sorted(m["t"] for m in got) == list(range(n))
    assert await stream_count(nats_server.url) == n
    assert sink.stats()["published"] >= n  # the overlaps' repeats were published too, and dropped by JetStream


async def test_durable_consumer_resumes_where_it_stopped(nats_server: NatsServer) -> None:
    """A durable source reads 40 of 100, closes; the next one with its name starts at the 41st."""
    await ensure_stream(servers=nats_server.url, stream="MD", subjects=["md.>"])
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    for msg in trades(100):
        await js.publish("md.trade.BTCUSDT", json_bytes(msg))
    await nc.close()
    async with JetStreamSource(servers=nats_server.url, stream="MD", subjects="md.>", durable="bot") as source:
        first = await read(source.stream_filter(), 40)
    async with JetStreamSource(servers=nats_server.url, stream="MD", subjects="md.>", durable="bot") as source:
        rest = await read(source.stream_filter(), 60)
        assert source.stats()["received"] <= 60  # nothing read before was delivered again
    assert [m["t"] for m in first] == list(range(40))
    assert [m["t"] for m in rest] == list(range(40, 100))


async def test_source_filters_and_overflow_policy_are_the_clients(nats_server: NatsServer) -> None:
    """Filters route records as stream_filter does; a full drop_newest stream counts its drops."""
    await ensure_stream(servers=nats_server.url, stream="MD", subjects=["md.>"])
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    for msg in [*trades(30), *trades(30, 30, "ETHUSDT")]:
        await js.publish(f"md.trade.{msg['s']}", json_bytes(msg))
    await nc.close()
    async with JetStreamSource(servers=nats_server.url, stream="MD", subjects="md.>", batch=100) as source:
        eth = source.stream_filter([{"s": "ETHUSDT"}])
        small = source.stream_filter([{"s": "BTCUSDT", "t": lambda t: t < 100}], maxsize=10, overflow="drop_newest")
        got = await read(eth, 30)
        assert [m["t"] for m in got] == list(range(30, 60))
        assert small.dropped == 20 and source.stats()["dropped"] == 20
        assert [m["t"] for m in [small.get_nowait() for _ in range(10)]] == list(range(10))


async def test_unreachable_server_fails_with_the_address_to_fix(feed_client: FeedClient) -> None:
    """No server on the port: BrokerUnavailable naming the URL, within connect_timeout."""
    url = f"nats://127.0.0.1:{free_port()}"
    with pytest.raises(BrokerUnavailable, match=r"cannot connect to NATS nats://127\.0\.0\.1:\d+ .*nats-server"):
        async with JetStreamSink(feed_client, servers=url, stream="MD", subject="md.{e}", connect_timeout=0.5):
            pass
    with pytest.raises(BrokerUnavailable, match="cannot connect"):
        async with JetStreamSource(servers=url, stream="MD", subjects="md.>", connect_timeout=0.5):
            pass


async def test_missing_stream_fails_naming_the_stream(nats_server: NatsServer, feed_client: FeedClient) -> None:
    """A stream that does not exist: BrokerConfigError naming it and how to create it."""
    with pytest.raises(BrokerConfigError, match=r"stream 'NOPE' does not exist .*ensure_stream"):
        async with JetStreamSink(feed_client, servers=nats_server.url, stream="NOPE", subject="md.{e}"):
            pass
    with pytest.raises(BrokerConfigError, match="stream 'NOPE' does not exist"):
        async with JetStreamSource(servers=nats_server.url, stream="NOPE", subjects="md.>"):
            pass


async def test_wrong_credentials_fail_naming_the_credentials(tmp_path: Any, feed_client: FeedClient) -> None:
    """A server that wants a password: BrokerConfigError about credentials; the secret is not shown."""
    server = NatsServer(tmp_path, "--user", "collector", "--pass", "right")
    await server.start()
    try:
        url = f"nats://collector:wrong@127.0.0.1:{server.port}"
        with pytest.raises(BrokerConfigError, match="rejected the credentials") as caught:
            async with JetStreamSink(feed_client, servers=url, stream="MD", subject="md.{e}", connect_timeout=5):
                pass
        assert "wrong" not in str(caught.value)
    finally:
        server.stop()


async def test_gap_subject_outside_the_stream_is_a_config_error(
    nats_server: NatsServer, feed_client: FeedClient
) -> None:
    """Gap markers must land in the stream: a gap subject it does not cover fails on entry."""
    await ensure_stream(servers=nats_server.url, stream="MD", subjects=["md.>"])
    with pytest.raises(BrokerConfigError, match="gap subject 'other._gap' is not in stream 'MD'"):
        async with JetStreamSink(feed_client, servers=nats_server.url, stream="MD", subject="md.{e}",
                                 gap_subject="other._gap"):
            pass


def test_bad_options_fail_at_construction() -> None:
    """Bad templates and options raise at once, naming the option."""
    client = FeedClient("ws://127.0.0.1:9")
    with pytest.raises(ValueError, match=r"placeholder \{0\}"):
        JetStreamSink(client, servers="nats://x", stream="MD", subject="md.{0}")
    with pytest.raises(ValueError, match="with a callable subject, pass gap_subject="):
        JetStreamSink(client, servers="nats://x", stream="MD", subject=lambda m: "md.x")
    with pytest.raises(ValueError, match="batch must be an int >= 1, got 0"):
        JetStreamSink(client, servers="nats://x", stream="MD", subject="md.{e}", batch=0)
    with pytest.raises(ValueError, match="overflow must be one of"):
        JetStreamSink(client, servers="nats://x", stream="MD", subject="md.{e}", overflow="block")  # type: ignore[arg-type]


def json_bytes(msg: Any) -> bytes:
    return json.dumps(msg, separators=(",", ":")).encode()


async def test_broker_killed_and_restarted_mid_run_loses_only_what_is_counted_and_marked(
    nats_server: NatsServer, feed: FeedServer, feed_client: FeedClient
) -> None:
    """While nats-server is down the feed streams on, the sink's buffer stays bounded and drops are
    counted; after the restart publishing resumes and a gap marker carries the count."""
    await ensure_stream(servers=nats_server.url, stream="MD", subjects=["md.>"])
    async with JetStreamSink(feed_client, servers=nats_server.url, stream="MD", subject="md.{e}.{s}",
                             filters=[{"e": "trade"}], maxsize=200, batch=50, ack_timeout=0.3,
                             backoff_max=0.1) as sink:
        await feed_client.wait_connected(5)
        await feed.publish(trades(100))
        await eventually(lambda: sink.stats()["published"] == 100, what="first 100 published")
        nats_server.kill()
        before = feed_client.stats()["messages"]
        await feed.publish(trades(1000, 100))
        await settle(feed_client, feed)
        assert feed_client.stats()["messages"] - before == 1001  # the websocket side kept streaming
        down = sink.stats()
        assert down["dropped"] >= 1000 - 200 - 2 * 50 and down["queued"] <= 200
        await nats_server.start()
        await feed.publish(trades(100, 1100))
        async with JetStreamSource(servers=nats_server.url, stream="MD", subjects="md.>") as source:
            everything = source.stream_filter()
            got: list[Any] = []
            async with asyncio.timeout(10):
                async for msg in everything:
                    got.append(msg)
                    if msg.get("t") == 1199:
                        break
        assert sink.stats()["reconnects"] >= 1
    dropped = sink.stats()["dropped"]
    markers = [m["_gap"] for m in got if "_gap" in m]
    seen = [m["t"] for m in got if "t" in m]
    assert markers and sum(m["dropped"] for m in markers) == dropped
    assert len(seen) == len(set(seen)) == 1200 - dropped
    assert set(range(100)) <= set(seen) and set(range(1100, 1200)) <= set(seen)
    assert source.stats()["gaps"] == len(markers)


class SequencedClient(FeedClient):
    """A feed whose messages carry a per-symbol counter, told to the library by _sequence."""

    def _sequence(self, msg: Any) -> tuple[Any, int, int] | None:
        return (msg["s"], msg["t"], msg["t"]) if "t" in msg else None


async def test_ids_come_from_sequence_and_what_arrives_while_connecting_is_kept(
    nats_server: NatsServer, feed: FeedServer
) -> None:
    """Nats-Msg-Id is s:<key>:<first>:<last> from _sequence; messages received before the sink
    was entered (it subscribes when constructed) are published too."""
    await ensure_stream(servers=nats_server.url, stream="MD", subjects=["md.>"])
    client = SequencedClient(feed.url)
    try:
        sink = JetStreamSink(client, servers=nats_server.url, stream="MD", subject="md.{e}.{s}",
                             filters=[{"e": "trade"}])
        await client.wait_connected(5)
        await feed.publish(trades(20))
        await settle(client, feed)  # all 20 wait in the sink's buffer: it has not connected to NATS yet
        async with sink:
            await eventually(lambda: sink.stats()["published"] == 20, what="20 published")
    finally:
        await client.exit()
    nc = await nats.connect(nats_server.url)
    try:
        psub = await nc.jetstream().pull_subscribe("md.>", stream="MD")
        msgs = await psub.fetch(20, timeout=5)
        assert [m.headers["Nats-Msg-Id"] for m in msgs if m.headers] == [f"s:BTCUSDT:{i}:{i}" for i in range(20)]
    finally:
        await nc.close()


async def test_a_record_over_max_payload_is_a_counted_loss_not_a_stall(
    tmp_path: Any, feed: FeedServer, feed_client: FeedClient
) -> None:
    """A message bigger than the server's max_payload is counted as unroutable and marked; the rest flows."""
    conf = tmp_path / "small.conf"
    conf.write_text("max_payload: 4096\n")
    server = NatsServer(tmp_path, "-c", str(conf))
    await server.start()
    try:
        await ensure_stream(servers=server.url, stream="MD", subjects=["md.>"])
        async with JetStreamSink(feed_client, servers=server.url, stream="MD", subject="md.{e}.{s}",
                                 filters=[{"e": "trade"}]) as sink:
            await feed_client.wait_connected(5)
            big = {"e": "trade", "s": "BTCUSDT", "t": -1, "p": "x" * 10_000}
            await feed.publish([*trades(5), big, *trades(5, 5)])
            await eventually(lambda: sink.stats()["published"] == 10, what="the 10 small ones published")
        assert sink.stats()["unroutable"] == 1 and sink.stats()["gap_dropped"] == 1
    finally:
        server.stop()
