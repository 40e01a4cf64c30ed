"""TopicFeed: Binance's subscription requests per connection, publishing to subscribers, and the venue's limits."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosedError, InvalidStatus
from websockets.http11 import Request, Response

from async_ws_stream.exceptions import Timeout
from async_ws_stream.testing import (
    ERROR_TOPIC_REFUSED,
    ERROR_TOPIC_REQUEST_INVALID,
    ConnectionObserver,
    FeedServer,
    TopicFeed,
    Violation,
)


@pytest.fixture
async def feed(server: FeedServer) -> TopicFeed:
    return TopicFeed(server)


@pytest.fixture
async def ws(server: FeedServer, feed: TopicFeed) -> AsyncIterator[ClientConnection]:
    async with connect(server.url_for("/stream")) as conn:
        await server.wait_connections(1)
        yield conn


async def call(ws: ClientConnection, method: str, params: Any = None, rid: int = 1) -> Any:
    """Send one request and return the reply (the feed answers in order, nothing else is published meanwhile)."""
    request: dict[str, Any] = {"method": method, "id": rid}
    if params is not None:
        request["params"] = params
    await ws.send(json.dumps(request))
    return json.loads(await ws.recv())


# Requests


async def test_subscribe_unsubscribe_and_list_answer_as_binance(ws: ClientConnection, feed: TopicFeed) -> None:
    """SUBSCRIBE and UNSUBSCRIBE answer result null and change the set; LIST_SUBSCRIPTIONS answers it sorted."""
    assert await call(ws, "SUBSCRIBE", ["ethusdt@trade", "btcusdt@trade", "btcusdt@depth"], 1) == {"result": None, "id": 1}
    assert feed.topics(1) == {"btcusdt@trade", "ethusdt@trade", "btcusdt@depth"}
    assert await call(ws, "UNSUBSCRIBE", ["btcusdt@depth", "never@trade"], 2) == {"result": None, "id": 2}
    assert await call(ws, "LIST_SUBSCRIPTIONS", rid=3) == {"result": ["btcusdt@trade", "ethusdt@trade"], "id": 3}
    assert feed.subscribe_frames == 1
    assert feed.all_topics() == {"btcusdt@trade", "ethusdt@trade"}
    assert feed.subscribers("btcusdt@trade") == [1] and feed.subscribers("btcusdt@depth") == []


async def test_malformed_requests_get_invalid_request_errors(ws: ClientConnection, feed: TopicFeed) -> None:
    """Params that are not a list of strings, or a missing id, are answered with code 2 and change nothing."""
    reply = await call(ws, "SUBSCRIBE", "btcusdt@trade", 7)
    assert reply["id"] == 7 and reply["error"]["code"] == ERROR_TOPIC_REQUEST_INVALID
    await ws.send(json.dumps({"method": "SUBSCRIBE", "params": ["a@trade"]}))
    reply = json.loads(await ws.recv())
    assert reply["id"] is None and "missing field `id`" in reply["error"]["msg"]
    assert feed.topics(1) == frozenset() and feed.violations == []


async def test_other_requests_still_reach_the_servers_routes(server: FeedServer, ws: ClientConnection) -> None:
    """A method the feed does not play goes on to FeedServer's routes as before."""
    server.route("echo", lambda params: params)
    assert await call(ws, "echo", {"x": 1}, 4) == {"id": 4, "result": {"x": 1}}


async def test_path_topics_are_subscribed_at_connect(server: FeedServer, feed: TopicFeed) -> None:
    """/stream?streams=a/b subscribes both on that connection as it opens."""
    async with connect(server.url_for("/stream?streams=btcusdt@trade/ethusdt@trade")) as ws:
        await feed.wait_subscribed(["btcusdt@trade", "ethusdt@trade"])
        assert feed.topics(1) == {"btcusdt@trade", "ethusdt@trade"}
        assert await call(ws, "LIST_SUBSCRIPTIONS") == {"result": ["btcusdt@trade", "ethusdt@trade"], "id": 1}
    assert feed.subscribe_frames == 0


# Publishing


async def test_publish_reaches_only_the_subscribers(server: FeedServer, feed: TopicFeed) -> None:
    """A topic's message goes to the connections carrying it, in the combined-stream envelope, and nowhere else."""
    async with connect(server.url_for("/stream?streams=a@trade")) as one, connect(
        server.url_for("/stream?streams=b@trade")
    ) as two:
        await feed.wait_subscribed(["a@trade", "b@trade"])
        assert await feed.publish("a@trade", {"p": "1"}) == 1
        assert await feed.publish("nobody@trade", {"p": "2"}) == 0
        assert await feed.publish("b@trade", {"p": "3"}) == 1
        assert json.loads(await one.recv()) == {"stream": "a@trade", "data": {"p": "1"}}
        assert json.loads(await two.recv()) == {"stream": "b@trade", "data": {"p": "3"}}
        assert feed.published == 2


async def test_publish_round_sends_one_message_per_subscription(server: FeedServer, feed: TopicFeed) -> None:
    """Every connection gets one message per topic it carries, with data_for(topic) as data."""
    async with connect(server.url_for("/stream?streams=a/b")) as one, connect(server.url_for("/stream?streams=b/c")) as two:
        await server.wait_connections(2)
        assert await feed.publish_round(lambda topic: {"t": topic.upper()}) == 4
        got_one = [json.loads(await one.recv()) for _ in range(2)]
        got_two = [json.loads(await two.recv()) for _ in range(2)]
        assert got_one == [{"stream": "a", "data": {"t": "A"}}, {"stream": "b", "data": {"t": "B"}}]
        assert got_two == [{"stream": "b", "data": {"t": "B"}}, {"stream": "c", "data": {"t": "C"}}]
        assert await feed.publish_round() == 4
        assert json.loads(await one.recv()) == {"stream": "a", "data": {"round": 2}}


async def test_topics_are_forgotten_when_a_connection_closes(server: FeedServer, feed: TopicFeed) -> None:
    """After a close, the connection carries nothing and publishing skips it."""
    async with connect(server.url_for("/stream?streams=a@trade")):
        await feed.wait_subscribed("a@trade")
    await server.wait_open(0)
    assert feed.topics(1) == frozenset() and feed.all_topics() == frozenset()
    assert await feed.publish("a@trade", 1) == 0
    with pytest.raises(ValueError, match="no connection number 2"):
        feed.topics(2)


# Rules


async def test_six_frames_at_once_close_the_connection_with_1008(server: FeedServer) -> None:
    """The 6th frame within a second is a violation: not answered, and the connection is closed 1008."""
    feed = TopicFeed(server)
    async with connect(server.url_for("/stream")) as ws:
        for rid in range(1, 7):
            await ws.send(json.dumps({"method": "LIST_SUBSCRIPTIONS", "id": rid}))
        replies = []
        with pytest.raises(ConnectionClosedError):
            while True:
                replies.append(json.loads(await ws.recv()))
    assert [r["id"] for r in replies] == [1, 2, 3, 4, 5]
    assert ws.close_code == 1008 and (ws.close_reason or "").startswith("max_messages")
    assert [(v.connection, v.rule) for v in feed.violations] == [(1, "max_messages")]


async def test_five_frames_then_five_more_after_the_window_pass(server: FeedServer) -> None:
    """Five frames, then five more once ``per`` has passed on the loop clock, break no rule."""
    feed = TopicFeed(server, per=0.2)
    async with connect(server.url_for("/stream")) as ws:
        for batch in (0, 5):
            for rid in range(batch + 1, batch + 6):
                await ws.send(json.dumps({"method": "LIST_SUBSCRIPTIONS", "id": rid}))
            assert [json.loads(await ws.recv())["id"] for _ in range(5)] == list(range(batch + 1, batch + 6))
            if batch == 0:
                # Every reply is out, so every arrival is behind us: waiting `per`
                # from now (the rule is about time) empties the window.
                await asyncio.sleep(0.2 + 0.02)
        assert feed.violations == [] and server.open_connections == 1


async def test_the_1025th_topic_is_refused_with_binances_error(ws: ClientConnection, feed: TopicFeed) -> None:
    """1024 topics fit on one connection; one more is refused, not applied, and recorded."""
    topics = [f"s{i}@trade" for i in range(1024)]
    assert await call(ws, "SUBSCRIBE", topics, 1) == {"result": None, "id": 1}
    assert await call(ws, "SUBSCRIBE", topics[:10], 2) == {"result": None, "id": 2}  # already there: no growth
    reply = await call(ws, "SUBSCRIBE", ["one@trade", "more@trade"], 3)
    assert reply["id"] == 3 and reply["error"]["code"] == ERROR_TOPIC_REFUSED == 1
    assert set(reply) == {"error", "id"} and set(reply["error"]) == {"code", "msg"}
    assert len(feed.topics(1)) == 1024 and "one@trade" not in feed.all_topics()
    assert [(v.connection, v.rule) for v in feed.violations] == [(1, "max_topics")]
    assert feed.subscribe_frames == 3


async def test_path_over_max_topics_is_refused_at_the_handshake(server: FeedServer) -> None:
    """A combined-stream path with too many streams gets HTTP 400 and is a violation."""
    feed = TopicFeed(server, max_topics=2)
    with pytest.raises(InvalidStatus) as caught:
        async with connect(server.url_for("/stream?streams=a/b/c")):
            pass
    assert caught.value.response.status_code == 400
    assert feed.violations == [Violation(None, "max_topics", feed.violations[0].detail)]
    assert server.connects == 0


async def test_refused_topics_get_an_error_and_are_no_violation(ws: ClientConnection, feed: TopicFeed) -> None:
    """refuse() makes a SUBSCRIBE naming that topic fail as a whole, without recording a violation."""
    feed.refuse("nosuch@trade")
    reply = await call(ws, "SUBSCRIBE", ["btcusdt@trade", "nosuch@trade"], 5)
    assert reply == {"error": {"code": ERROR_TOPIC_REFUSED, "msg": reply["error"]["msg"]}, "id": 5}
    assert "nosuch@trade" in reply["error"]["msg"]
    assert feed.topics(1) == frozenset() and feed.violations == []


async def test_connects_beyond_the_limit_get_429(server: FeedServer) -> None:
    """The third handshake within the window is refused with 429 and a Retry-After, and recorded."""
    feed = TopicFeed(server, max_connects=2, connect_per=60)
    for _ in range(2):
        async with connect(server.url_for("/stream")):
            pass
    with pytest.raises(InvalidStatus) as caught:
        async with connect(server.url_for("/stream")):
            pass
    assert caught.value.response.status_code == 429
    assert 1 <= int(caught.value.response.headers["Retry-After"]) <= 60
    assert [(v.connection, v.rule) for v in feed.violations] == [(None, "max_connects")]
    assert server.connects == 2


async def test_the_connect_window_slides(server: FeedServer) -> None:
    """Once ``connect_per`` has passed on the loop clock, a handshake refused before is accepted."""
    feed = TopicFeed(server, max_connects=1, connect_per=0.2)
    async with connect(server.url_for("/stream")):
        pass
    with pytest.raises(InvalidStatus):
        async with connect(server.url_for("/stream")):
            pass
    await asyncio.sleep(0.2 + 0.02)  # every attempt so far is behind us; the rule is about time
    async with connect(server.url_for("/stream")):
        pass
    assert server.connects == 2 and len(feed.violations) == 1


async def test_limits_are_validated() -> None:
    """A limit that is not an int >= 1 or None, or a window that is not positive, is refused up front."""
    async with FeedServer() as server:
        with pytest.raises(ValueError, match="max_topics must be an int >= 1"):
            TopicFeed(server, max_topics=0)
        with pytest.raises(ValueError, match="per must be a finite number of seconds > 0"):
            TopicFeed(server, per=0)
        TopicFeed(server, max_topics=None, max_messages=None, max_connects=None)


# Waiting


async def test_wait_subscribed_wakes_on_the_subscribe(ws: ClientConnection, feed: TopicFeed) -> None:
    """wait_subscribed returns once a SUBSCRIBE has been applied, and times out naming what is missing."""
    waiter = asyncio.create_task(feed.wait_subscribed(["a@trade", "b@trade"]))
    await call(ws, "SUBSCRIBE", ["a@trade"], 1)
    assert not waiter.done()
    await call(ws, "SUBSCRIBE", ["b@trade"], 2)
    await waiter
    with pytest.raises(Timeout, match=r"1 of 2 topics not subscribed .* \['c@trade'\]"):
        await feed.wait_subscribed(["a@trade", "c@trade"], timeout=0.05)


# The extension point


class Recorder(ConnectionObserver):
    """Records the calls; takes frames that say "mine" and refuses handshakes to /no."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int | None]] = []

    def handshake(self, conn: ServerConnection, request: Request) -> Response | None:
        self.calls.append(("handshake", None))
        return conn.respond(403, "no\n") if request.path == "/no" else None

    def opened(self, number: int, conn: ServerConnection) -> None:
        self.calls.append(("opened", number))

    async def frame(self, number: int, conn: ServerConnection, frame: str | bytes, arrival: float) -> bool:
        self.calls.append(("frame", number))
        if frame == "mine":
            await conn.send("taken")
            return True
        return False

    def closed(self, number: int, conn: ServerConnection) -> None:
        self.calls.append(("closed", number))


async def test_an_observer_sees_a_connections_life_and_may_take_frames(server: FeedServer) -> None:
    """Handshake, opened, every frame, closed, in order; a taken frame is not routed, others are."""
    recorder = Recorder()
    server.add_observer(recorder)
    server.add_observer(recorder)  # twice is once
    server.route("echo", lambda params: params)
    async with connect(server.url_for("/ws")) as ws:
        await ws.send("mine")
        assert await ws.recv() == "taken"
        assert await call(ws, "echo", 1, 2) == {"id": 2, "result": 1}
    await server.wait_open(0)
    assert recorder.calls == [("handshake", None), ("opened", 1), ("frame", 1), ("frame", 1), ("closed", 1)]
    server.remove_observer(recorder)
    server.remove_observer(recorder)


async def test_an_observers_refusal_leaves_queued_faults_for_the_next_handshake(server: FeedServer) -> None:
    """A handshake an observer refuses does not use a refuse_next; the next handshake does."""
    server.add_observer(Recorder())
    server.refuse_next(status=503)
    for path, status in (("/no", 403), ("/ws", 503)):
        with pytest.raises(InvalidStatus) as caught:
            async with connect(server.url_for(path)):
                pass
        assert caught.value.response.status_code == status
    assert server.pending_faults == 0 and server.handshakes == 2


async def test_add_observer_checks_the_shape(server: FeedServer) -> None:
    """Something that is not an observer is refused, naming what it lacks."""
    with pytest.raises(TypeError, match="lacks handshake, opened, frame, closed"):
        server.add_observer(object())  # type: ignore[arg-type]
