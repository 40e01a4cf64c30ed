"""Shards: more topics than one connection may carry, over several connections, each kept on its own."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator
from typing import Any

import pytest

from async_ws_stream import Connected, Disconnected, Event, ShardInfo, Stream, Timeout
from async_ws_stream.testing import FeedServer, TopicFeed

from .conftest import JsonClient, VenueClient

pytestmark = pytest.mark.single_transport  # the shards sit above the transport; test_subscriptions covers both


class Binance(VenueClient):
    """Binance's rules as settings: 1024 topics a connection, 5 frames a second."""

    max_subscriptions_per_connection = 1024
    max_topics_per_message = 200
    send_rate = (5, 1.0)

    def __init__(self, url: str, **options: Any) -> None:
        super().__init__(url, **options)
        self.opened: list[ShardInfo] = []
        self.hold: dict[int, asyncio.Event] = {}  # shard -> released when set

    async def _create_ws(self) -> Any:
        shard = self.current_shard
        self.opened.append(shard)
        if shard.number in self.hold:
            await self.hold[shard.number].wait()
        return await super()._create_ws()


class Small(Binance):
    """Ten topics a connection, no rate limit: shards without the wait."""

    max_subscriptions_per_connection = 10
    max_topics_per_message = 5
    send_rate = None


@pytest.fixture
async def small(server: FeedServer, feed: TopicFeed) -> AsyncIterator[Small]:
    client = Small(server.url_for("/stream"), backoff_initial=0.01, backoff_max=0.05)
    try:
        await client.wait_connected(timeout=5)
        yield client
    finally:
        await client.exit()


def shard_topics(client: JsonClient) -> dict[int, list[Any]]:
    return {s["shard"]: s["topics"] for s in client.stats()["shards"]}


async def next_event(events: Stream[Event], kind: type, shard: int) -> Any:
    async for event in events:
        if isinstance(event, kind) and getattr(event, "shard", None) == shard:
            return event
    raise AssertionError(f"events ended before {kind.__name__} of shard {shard}")


async def test_3000_topics_go_over_three_connections_without_tripping_binances_rules(
    server: FeedServer, feed: TopicFeed
) -> None:
    """One subscribe of 3,000 topics at 1,024 a connection and 5 frames/s: 3 shards, every message, no violation."""
    client = Binance(server.url_for("/stream"))
    events = client.events()
    counted: collections.Counter[str] = collections.Counter()
    client.add_handler(lambda msg: counted.update([msg.get("stream", "reply")]))
    everything = client.stream_filter(maxsize=10_000)
    try:
        await client.wait_connected(timeout=5)
        topics = [f"s{i}@trade" for i in range(3000)]
        await client.subscribe(*topics)
        assert feed.violations == []
        assert sorted(len(feed.topics(c)) for c in range(1, server.connects + 1)) == [1000, 1000, 1000]
        assert server.connects == 3 and client.subscriptions == set(topics)
        last = client.expect({"stream": topics[-1]}, timeout=5)  # on shard 2: expect spans the shards
        assert await feed.publish_round() == 3000
        await last
        got = [m for m in [await anext(everything) for _ in range(3000 + 15)] if "stream" in m]
        assert len(got) == 3000 and {m["stream"] for m in got} == set(topics)
        assert sum(n for k, n in counted.items() if k != "reply") == 3000  # handlers span them too
        shards = client.stats()["shards"]
        assert [(s["shard"], len(s["topics"]), s["subscribed"], s["state"]) for s in shards] == [
            (0, 1000, 1000, "connected"), (1, 1000, 1000, "connected"), (2, 1000, 1000, "connected")]
        assert {s.number for s in client.opened} == {0, 1, 2}
        connected = [await anext(events) for _ in range(3)]  # shards 1 and 2 open side by side
        assert all(isinstance(e, Connected) for e in connected) and sorted(e.shard for e in connected) == [0, 1, 2]
    finally:
        await client.exit()


async def test_losing_one_of_three_shards_leaves_the_others_streaming(
    small: Small, server: FeedServer, feed: TopicFeed
) -> None:
    """Shard 1 is cut and held down: shards 0 and 2 keep every message; shard 1 alone resubscribes its topics."""
    await small.subscribe(*[f"t{i}" for i in range(30)])
    by_shard = shard_topics(small)
    assert sorted(len(ts) for ts in by_shard.values()) == [10, 10, 10]
    events = small.events()
    stream = small.stream_filter(maxsize=10_000)
    before = {s["shard"]: s["connects"] for s in small.stats()["shards"]}
    subscribes_before = feed.subscribe_frames
    # Cut shard 1, and keep it down until the others proved they never paused.
    small.hold[1] = asyncio.Event()
    (victim,) = {feed.subscribers(t)[0] for t in by_shard[1]}
    server.drop(victim)
    await next_event(events, Disconnected, 1)
    others = by_shard[0] + by_shard[2]
    for round_ in range(20):
        for topic in others:
            await feed.publish(topic, {"round": round_})
    got = [await anext(stream) for _ in range(20 * len(others))]
    assert collections.Counter(m["stream"] for m in got) == {t: 20 for t in others}
    small.hold[1].set()
    await next_event(events, Connected, 1)
    assert feed.subscribe_frames - subscribes_before == 2  # 10 topics, 5 a message: shard 1's alone
    after = {s["shard"]: s["connects"] for s in small.stats()["shards"]}
    assert after == {0: before[0], 1: before[1] + 1, 2: before[2]}
    assert feed.all_topics() == {f"t{i}" for i in range(30)}


async def test_unsubscribing_a_shards_topics_closes_it_and_new_topics_open_one_again(
    small: Small, server: FeedServer, feed: TopicFeed
) -> None:
    """Emptied, shard 2 closes its connection (a Disconnected says why); a later subscribe opens it again."""
    await small.subscribe(*[f"t{i}" for i in range(30)])
    events = small.events()
    await small.unsubscribe(*shard_topics(small)[2])
    event = await next_event(events, Disconnected, 2)
    assert "no topics left" in event.cause
    assert sorted(shard_topics(small)) == [0, 1] and len(small.subscriptions) == 20
    await server.wait_open(2)
    await small.subscribe(*[f"n{i}" for i in range(10)])
    assert sorted(shard_topics(small)) == [0, 1, 2] and server.open_connections == 3
    assert small.stats()["connects"] == 4  # totals keep what the closed shard counted


async def test_create_ws_learns_its_shard_for_combined_stream_urls(server: FeedServer, feed: TopicFeed) -> None:
    """A venue that takes topics in the URL: _create_ws reads current_shard and puts that shard's in the path."""

    class Combined(Small):
        async def _create_ws(self) -> Any:
            topics = sorted(self.current_shard.topics)
            self.url = server.url_for("/stream?streams=" + "/".join(topics)) if topics else server.url
            return await super()._create_ws()

        def _subscribe_message(self, topics: list[Any]) -> Any:
            return []  # the URL carries them

    client = Combined(server.url, max_subscriptions_per_connection=3)
    try:
        await client.wait_connected(timeout=5)
        await client.subscribe("a", "b", "c", "d", "e", "f")
        by_shard = shard_topics(client)
        assert [s.number for s in client.opened] == [0, 1] and client.opened[1].topics == set(by_shard[1])
        assert feed.topics(2) == set(by_shard[1]) and feed.subscribe_frames == 0
        assert feed.topics(1) == set()  # shard 0 opened before it had topics: its URL carried none
        client.recycle_now.set()  # the URL takes new topics on a new connection: recycle
        await feed.wait_subscribed(["a", "b", "c", "d", "e", "f"])
        assert feed.all_topics() == {"a", "b", "c", "d", "e", "f"} and feed.violations == []
    finally:
        await client.exit()


async def test_a_one_connection_client_sees_nothing_new(client: JsonClient, server: FeedServer) -> None:
    """No subscribe: one shard, events with shard 0 that read as before, and the stats of old."""
    events = client.events()
    await client.wait_connected(timeout=5)
    event = await anext(events)
    assert event == Connected(1) and str(event) == "connected (#1)"
    stats = client.stats()
    assert [s["shard"] for s in stats["shards"]] == [0] and stats["subscriptions"] == 0
    assert server.received == []  # nothing sent on its behalf


async def test_connect_rate_keeps_the_shards_under_the_venues_connect_rule(server: FeedServer) -> None:
    """Three shards at (2 per 1 s): the third connection waits for a token; the venue refuses none."""
    feed = TopicFeed(server, max_connects=2, connect_per=1.0)
    client = Small(server.url_for("/stream"), connect_rate=(2, 1.0))
    try:
        await client.subscribe(*[f"t{i}" for i in range(30)])
        assert server.connects == 3 and feed.violations == [] and feed.all_topics() == {f"t{i}" for i in range(30)}
    finally:
        await client.exit()


async def test_without_connect_rate_the_venue_refuses_the_third_connection(server: FeedServer) -> None:
    """The same three shards without connect_rate: the venue's rule is breached (the test above means something)."""
    feed = TopicFeed(server, max_connects=2, connect_per=60.0)
    client = Small(server.url_for("/stream"), backoff_initial=0.01)
    try:
        with pytest.raises(Timeout):  # the third shard waits out the venue's Retry-After: about a minute
            await client.subscribe(*[f"t{i}" for i in range(30)], timeout=1)
        assert [v.rule for v in feed.violations] == ["max_connects"]
        assert [s["state"] for s in client.stats()["shards"]] == ["connected", "connected", "backoff"]
    finally:
        await client.exit()
