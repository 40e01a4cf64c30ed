"""Declared subscriptions on one connection: subscribe, unsubscribe, acks, errors, resubscription, limits."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from async_ws_stream import Connected, Disconnected, SubscribeError, Timeout
from async_ws_stream._scopes import HookMisuse
from async_ws_stream._subscriptions import RateLimit, chunks, place
from async_ws_stream.exceptions import ClientClosed, ConnectionRejected
from async_ws_stream.testing import FeedServer, TopicFeed

from .conftest import JsonClient, VenueClient

Venue = VenueClient


@pytest.fixture
async def venue(server: FeedServer, feed: TopicFeed) -> AsyncIterator[Venue]:
    client = Venue(server.url_for("/stream"), backoff_initial=0.01, backoff_max=0.05)
    try:
        yield client
    finally:
        await client.exit()


def subscribes(server: FeedServer, connection: int | None = None) -> list[list[str]]:
    """The params of every SUBSCRIBE the server received (on one connection, if given), in order."""
    out = []
    for number, frame in server.received:
        msg = json.loads(frame)
        if msg.get("method") == "SUBSCRIBE" and connection in (None, number):
            out.append(msg["params"])
    return out


# -- the pure rules ------------------------------------------------------------------------


def test_rate_limit_never_lets_more_than_count_into_one_window() -> None:
    """Each token comes back `seconds` after it was spent: 5 at once, then one per returned token."""
    now = [0.0]
    limit = RateLimit(5, 1.0, lambda: now[0], margin=0)
    assert [limit.reserve() for _ in range(5)] == [0.0] * 5
    assert limit.reserve() == 1.0  # the sixth waits for the first token
    now[0] = 0.5
    assert limit.reserve() == 0.5  # due at 1.0 as well: the second token
    now[0] = 3.0
    assert limit.reserve() == 0.0  # long after: the bucket has refilled
    safe = RateLimit(5, 1.0, lambda: 0.0)
    assert [safe.reserve() for _ in range(6)][-1] == pytest.approx(1.05)  # the default margin: 5 %


def test_place_spreads_evenly_and_never_moves_a_placed_topic() -> None:
    """3,000 topics under 1,024 per connection: 1,000 on each of 3 shards; later topics fill the least loaded."""
    placed = place(range(3000), {0: 0}, 1024)
    assert {n: len(ts) for n, ts in placed.items()} == {0: 1000, 1: 1000, 2: 1000}
    assert place(range(100), {0: 1000, 1: 900, 2: 1000}, 1024) == {1: list(range(100))}  # the least loaded
    # 82 places left on three shards for 100 topics: a fourth opens, and the least loaded takes them.
    assert place(range(100), {0: 1000, 1: 990, 2: 1000}, 1024) == {3: list(range(100))}
    assert place(["a", "b"], {0: 0}, None) == {0: ["a", "b"]}
    assert place(["a"], {0: 1, 1: 1}, 1) == {2: ["a"]}  # both full: a third shard
    assert list(chunks(["a", "b", "c"], 2)) == [["a", "b"], ["c"]] and list(chunks([], 2)) == []


# -- declared subscriptions -----------------------------------------------------------------


async def test_subscribe_returns_on_the_ack_and_twice_sends_once(venue: Venue, feed: TopicFeed,
                                                                 server: FeedServer) -> None:
    """subscribe returns when the server holds the topics; a topic already declared is not sent again."""
    await venue.subscribe("a@trade", "b@trade")
    assert feed.topics(1) == {"a@trade", "b@trade"}
    await asyncio.gather(venue.subscribe("a@trade", "c@trade"), venue.subscribe("c@trade"))
    assert subscribes(server) == [["a@trade", "b@trade"], ["c@trade"]]
    assert venue.subscriptions == {"a@trade", "b@trade", "c@trade"}
    stream = venue.stream_filter([{"stream": "c@trade"}])
    await feed.publish("c@trade", {"p": 1})
    assert (await anext(stream))["data"] == {"p": 1}
    await venue.unsubscribe("a@trade", "nosuch")
    assert feed.topics(1) == {"b@trade", "c@trade"} and venue.subscriptions == {"b@trade", "c@trade"}


async def test_an_error_reply_raises_and_leaves_the_topics_out(venue: Venue, feed: TopicFeed) -> None:
    """A refused subscribe raises SubscribeError naming the topics; they are not declared, and it is counted."""
    feed.refuse("bad@trade")
    await venue.subscribe("good@trade")
    with pytest.raises(SubscribeError, match="refused") as info:
        await venue.subscribe("bad@trade", "also@trade")
    assert info.value.topics == ("bad@trade", "also@trade") and "error" in info.value.reply
    assert venue.subscriptions == {"good@trade"}
    assert venue.stats()["subscribe_errors"] == 1


async def test_no_ack_in_time_is_a_timeout_and_the_topic_stays(server: FeedServer) -> None:
    """A venue that never answers: Timeout; the topic stays declared for the next connection."""
    server.route("SUBSCRIBE", lambda params: None, delay=60)
    client = Venue(server.url)
    try:
        with pytest.raises(Timeout, match="stay in subscriptions"):
            await client.subscribe("a@trade", timeout=0.2)
        assert client.subscriptions == {"a@trade"}
    finally:
        await client.exit()


async def test_every_new_connection_subscribes_again_before_it_carries_traffic(
    venue: Venue, feed: TopicFeed, server: FeedServer
) -> None:
    """A send made while disconnected goes out on the next connection after the SUBSCRIBE of the whole set."""
    await venue.subscribe("a@trade", "b@trade")
    events = venue.events()
    server.drop()
    while not isinstance(await anext(events), Disconnected):
        pass
    sending = asyncio.create_task(venue.send({"method": "PING"}))
    while not isinstance(await anext(events), Connected):
        pass
    await sending
    await server.wait_until(lambda: any(n == 2 and "PING" in f for n, f in server.received))
    frames = [json.loads(f) for n, f in server.received if n == 2]
    assert [f["method"] for f in frames] == ["SUBSCRIBE", "PING"]
    assert frames[0]["params"] == ["a@trade", "b@trade"] and feed.topics(2) == {"a@trade", "b@trade"}


async def test_a_recycle_subscribes_the_new_connection_before_the_old_one_closes(
    venue: Venue, feed: TopicFeed, server: FeedServer
) -> None:
    """Numbered trades published across a recycle: the stream misses none (make-before-break holds)."""
    await venue.subscribe("a@trade")
    stream = venue.stream_filter([{"stream": "a@trade"}], maxsize=100_000)
    events = venue.events()
    recycled = asyncio.Event()
    published = 0

    async def publish() -> None:  # a steady feed across the whole recycle, then 10 more after it
        nonlocal published
        after = 0
        while after < 10:
            await feed.publish("a@trade", {"n": published})
            published += 1
            after += recycled.is_set()
            await asyncio.sleep(0)  # let the client run between trades: a pace, not a wait

    publisher = asyncio.create_task(publish())
    venue.recycle_now.set()
    kinds = []
    async for event in events:
        kinds.append(type(event).__name__)
        if kinds[-1] == "Connected":
            break
    recycled.set()
    await publisher
    seen: set[int] = set()
    async with asyncio.timeout(5):
        while published - 1 not in seen:  # the last one went out on the new connection alone: it comes last
            seen.add((await anext(stream))["data"]["n"])
    assert seen == set(range(published)) and venue.stats()["recycles"] == 1
    assert kinds == ["Recycling", "Recycled", "Connected"]


async def test_a_topic_added_while_disconnected_goes_out_on_the_next_connection(server: FeedServer) -> None:
    """subscribe() while the server refuses connections waits, and returns once the next connection acked it."""
    feed = TopicFeed(server)
    server.refuse_next(3)
    client = Venue(server.url, backoff_initial=0.01, backoff_max=0.05)
    try:
        await client.subscribe("late@trade", timeout=5)
        assert client.stats()["retries"] >= 3 and feed.topics(1) == {"late@trade"}
    finally:
        await client.exit()


async def test_messages_read_while_subscribing_are_delivered_first_in_order(server: FeedServer) -> None:
    """A greeting sent before the ack (read early, by the subscriber) reaches streams, before later traffic."""
    TopicFeed(server)

    async def greet(conn: Any) -> None:
        await conn.send(json.dumps({"greeting": 1}))

    client = Venue(server.url)
    try:
        await client.subscribe("a@trade")  # the first connection: no greeting yet
        stream = client.stream_filter()
        server.on_connect = greet
        events = client.events()
        await server.drop()
        while not isinstance(await anext(events), Connected):
            pass
        await server.broadcast({"after": 1})
        seen = [await anext(stream) for _ in range(3)]
        assert seen[0] == {"greeting": 1} and seen[1]["result"] is None and seen[2] == {"after": 1}
    finally:
        await client.exit()


# -- limits -------------------------------------------------------------------------------


@pytest.mark.single_transport  # the limit is the library's, before any transport
async def test_the_send_rate_keeps_every_frame_under_the_venues_rule(server: FeedServer) -> None:
    """subscribe of 60 topics in 12 messages plus 6 sends, at Binance's (5, 1 s): no violation; without it, one."""
    feed = TopicFeed(server)

    class Paced(Venue):
        max_topics_per_message = 5
        send_rate = (5, 1.0)

    client = Paced(server.url)
    try:
        await asyncio.gather(client.subscribe(*[f"t{i}" for i in range(60)]),
                             *(client.send({"method": "PING", "n": i}) for i in range(6)))
        assert feed.violations == [] and len(feed.topics(1)) == 60
    finally:
        await client.exit()
    unpaced = Venue(server.url, max_topics_per_message=5)
    try:
        with pytest.raises(ConnectionRejected, match="max_messages"):  # the venue closes with 1008: final
            await unpaced.subscribe(*[f"u{i}" for i in range(60)], timeout=5)
        assert [v.rule for v in feed.violations] == ["max_messages"]
    finally:
        await unpaced.exit()


@pytest.mark.single_transport
@pytest.mark.parametrize(("name", "value", "error"), [
    ("send_rate", (0, 1.0), ValueError),
    ("send_rate", 5, TypeError),
    ("connect_rate", (5, -1), ValueError),
    ("max_subscriptions_per_connection", 0, ValueError),
    ("max_topics_per_message", "10", TypeError),
])
def test_limits_are_checked_as_options_and_as_class_attributes(name: str, value: Any, error: type) -> None:
    """A bad limit raises at construction, named, whether given as an option or a class attribute."""
    with pytest.raises(error, match=name):
        Venue("ws://127.0.0.1:9", **{name: value})
    with pytest.raises(error, match=name):
        type("Bad", (Venue,), {name: value})("ws://127.0.0.1:9")


async def test_subscribe_needs_its_hook_and_hashable_topics(client: JsonClient) -> None:
    """No _subscribe_message: NotImplementedError saying what to define; a list as a topic: TypeError."""
    with pytest.raises(NotImplementedError, match="_subscribe_message"):
        await client.subscribe("a")

    class V(Venue):
        pass

    v = V(client.url)
    try:
        with pytest.raises(TypeError, match=r"subscribe\(\*topics\)"):
            await v.subscribe(["a", "b"])  # type: ignore[arg-type]
    finally:
        await v.exit()
    with pytest.raises(ClientClosed):
        await v.subscribe("a")


async def test_subscribe_inside_on_connect_is_refused_at_once(server: FeedServer) -> None:
    """subscribe in _on_connect would wait for the connection it holds back: HookMisuse, the client ends."""
    TopicFeed(server)
    seen: list[BaseException] = []

    class Early(Venue):
        async def _on_connect(self, ws: Any) -> None:
            try:
                await self.subscribe("a")
            except HookMisuse as exc:
                seen.append(exc)

    client = Early(server.url)
    try:
        await client.wait_connected(timeout=5)
        assert len(seen) == 1 and "_on_connect" in str(seen[0])
    finally:
        await client.exit()


async def test_the_thread_handle_subscribes_and_unsubscribes(server: FeedServer, feed: TopicFeed) -> None:
    """handle.subscribe / unsubscribe / subscriptions are plain calls that return once acknowledged."""
    handle = Venue.start_in_thread(server.url)
    try:
        await asyncio.to_thread(handle.subscribe, "a@trade", "b@trade", timeout=5)
        assert feed.all_topics() == {"a@trade", "b@trade"} and handle.subscriptions == {"a@trade", "b@trade"}
        await asyncio.to_thread(handle.unsubscribe, "a@trade")
        assert feed.all_topics() == {"b@trade"} and handle.subscriptions == {"b@trade"}
    finally:
        await asyncio.to_thread(handle.exit)


async def test_a_subscribe_whose_connection_is_lost_before_the_ack_completes_on_the_next(
    server: FeedServer,
) -> None:
    """The ack never comes on the first connection (it drops): the call waits for the next, which subscribes."""
    client = Venue(server.url, backoff_initial=0.01)
    try:
        await client.wait_connected(timeout=5)
        server.route("SUBSCRIBE", lambda params: None, delay=60)  # connection 1 never answers
        pending = asyncio.create_task(client.subscribe("a@trade", timeout=10))
        await server.wait_until(lambda: any("SUBSCRIBE" in f for _, f in server.received))
        assert not pending.done()
        server.route("SUBSCRIBE", lambda params: None)  # answered from now on
        server.drop()
        await pending
        assert client.subscriptions == {"a@trade"} and client.stats()["reconnects"] == 1
        assert [n for n, f in server.received if "SUBSCRIBE" in f] == [1, 2]
    finally:
        await client.exit()


async def test_exit_during_a_subscribe_ends_it_with_client_closed(server: FeedServer) -> None:
    """A subscribe waiting for its ack when exit() comes raises ClientClosed, and no task is left."""
    server.route("SUBSCRIBE", lambda params: None, delay=60)
    client = Venue(server.url)
    await client.wait_connected(timeout=5)
    pending = asyncio.create_task(client.subscribe("a@trade"))
    await server.wait_until(lambda: any("SUBSCRIBE" in f for _, f in server.received))
    await client.exit()
    with pytest.raises(ClientClosed):
        await pending
    assert not [t for t in asyncio.all_tasks() if t.get_name().startswith("async_ws_stream")]
