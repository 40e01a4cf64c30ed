"""FeedServer against a plain websockets client: broadcast, records, routing, faults, lifecycle."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import (
    ConnectionClosedError,
    ConnectionClosedOK,
    InvalidStatus,
)

from async_ws_stream.exceptions import AsyncWsStreamError
from async_ws_stream.testing import FeedServer

# A wait that is expected to end with nothing arriving: long enough for a loopback
# round trip to have happened many times over, short enough to keep the suite fast.
QUIET = 0.15


@pytest.fixture
async def server() -> AsyncIterator[FeedServer]:
    async with FeedServer() as srv:
        yield srv


async def recv_json(ws: ClientConnection) -> Any:
    async with asyncio.timeout(2):
        return json.loads(await ws.recv())


async def request(ws: ClientConnection, msg: dict[str, Any]) -> Any:
    await ws.send(json.dumps(msg))
    return await recv_json(ws)


# Addresses and lifecycle


async def test_url_before_start_raises() -> None:
    """url needs a started server."""
    with pytest.raises(RuntimeError, match="not started"):
        _ = FeedServer().url


async def test_url_for_appends_path_and_query(server: FeedServer) -> None:
    """url_for joins the path (with or without a leading slash) to the url."""
    assert server.url.startswith("ws://127.0.0.1:")
    assert server.url_for("/ws?a=1") == server.url + "/ws?a=1"
    assert server.url_for("ws?a=1") == server.url + "/ws?a=1"


async def test_stop_is_idempotent_and_leaves_nothing_running() -> None:
    """stop() twice closes the clients and the listener and leaves no task behind."""
    before = asyncio.all_tasks()
    srv = await FeedServer().start()
    async with connect(srv.url, ping_interval=None) as ws:
        await srv.wait_connections(1)
        await srv.stop()
        await srv.stop()
        with pytest.raises(ConnectionClosedOK):
            await ws.recv()
        assert ws.close_code == 1001
    assert asyncio.all_tasks() == before
    with pytest.raises(OSError):
        await connect(srv.url, open_timeout=1)


async def test_restart_serves_on_the_same_port() -> None:
    """start() after stop() listens on the same port again and numbering carries on."""
    async with FeedServer() as srv:
        url = srv.url
        async with connect(url):
            await srv.wait_connections(1)
        await srv.stop()
        await srv.start()
        assert srv.url == url
        async with connect(url) as ws:
            await ws.send("again")
            await srv.wait_received(1)
        assert srv.received == [(2, "again")]


async def test_stop_cuts_a_delayed_handshake_short(server: FeedServer) -> None:
    """stop() answers a handshake being delayed with 503 at once."""
    server.delay_next_handshakes(1, 30)
    client = asyncio.ensure_future(connect(server.url))
    await server.wait_until(lambda: server.handshakes == 1)
    async with asyncio.timeout(2):
        await server.stop()
        with pytest.raises(InvalidStatus) as info:
            await client
    assert info.value.response.status_code == 503


async def test_stop_closes_a_stalled_connection_promptly(server: FeedServer) -> None:
    """stop() resumes a stalled connection so its close handshake completes."""
    async with connect(server.url) as ws:
        await server.wait_connections(1)
        server.stall()
        async with asyncio.timeout(1):
            await server.stop()
        await ws.wait_closed()
        assert ws.close_code == 1001


async def test_wait_times_out_with_library_timeout(server: FeedServer) -> None:
    """A wait that runs out raises a TimeoutError that is also an AsyncWsStreamError."""
    with pytest.raises(TimeoutError) as info:
        await server.wait_connections(1, timeout=0.01)
    assert isinstance(info.value, AsyncWsStreamError)
    assert "wait_connections(1): 0 accepted" in str(info.value)


async def test_wait_open_follows_disconnects(server: FeedServer) -> None:
    """wait_open(0) returns once clients have gone."""
    async with connect(server.url), connect(server.url):
        await server.wait_open(2)
        assert server.open_connections == 2
    await server.wait_open(0)
    assert server.connections == []
    assert server.connects == 2


# Broadcast and records


async def test_broadcast_reaches_every_connection(server: FeedServer) -> None:
    """broadcast sends to all open connections, JSON-encoding non-str messages."""
    async with connect(server.url) as a, connect(server.url) as b:
        await server.wait_open(2)
        assert await server.broadcast({"e": "trade", "p": 1}) == 2
        assert await server.broadcast(b"\x00raw") == 2
        for ws in (a, b):
            assert await recv_json(ws) == {"e": "trade", "p": 1}
            assert await ws.recv() == b"\x00raw"


async def test_received_records_numbers_and_paths(server: FeedServer) -> None:
    """Frames are recorded with their connection number, paths with their query strings."""
    async with connect(server.url_for("/ws?streams=a")) as a:
        await server.wait_connections(1)
        async with connect(server.url_for("/other?key=x&y=2")) as b:
            await server.wait_connections(2)
            await b.send("from b")
            await server.wait_received(1)
            await a.send(b"from a")
            await server.wait_received(lambda frames: len(frames) == 2)
    assert server.paths == ["/ws?streams=a", "/other?key=x&y=2"]
    assert server.received == [(2, "from b"), (1, b"from a")]
    assert [r.path for r in server.requests] == server.paths


async def test_send_to_by_number(server: FeedServer) -> None:
    """send_to reaches only the connection with that number."""
    async with connect(server.url) as a, connect(server.url) as b:
        await server.wait_connections(2)
        assert await server.send_to(2, "only b")
        assert await server.broadcast("all") == 2
        assert await b.recv() == "only b"
        assert await a.recv() == "all"
    with pytest.raises(ValueError, match="no connection number 3"):
        await server.send_to(3, "x")


async def test_on_connect_greets_before_the_connection_counts() -> None:
    """on_connect has sent its greeting by the time wait_connections returns."""

    async def greet(conn: Any) -> None:
        await conn.send("hello")

    async with FeedServer(on_connect=greet) as srv, connect(srv.url) as ws:
        await srv.wait_connections(1)
        await srv.broadcast("next")
        assert await ws.recv() == "hello"
        assert await ws.recv() == "next"


async def test_publish_paces_and_counts(server: FeedServer) -> None:
    """publish broadcasts every message in order and returns how many."""
    async with connect(server.url) as ws:
        await server.wait_connections(1)
        assert await server.publish(({"i": i} for i in range(5)), rate=500) == 5
        assert [await recv_json(ws) for _ in range(5)] == [{"i": i} for i in range(5)]


# Faults


async def test_drop_closes_without_close_frame(server: FeedServer) -> None:
    """drop aborts the connection: the client gets no close frame."""
    async with connect(server.url) as ws:
        await server.wait_connections(1)
        await server.drop()
        assert server.open_connections == 0
        with pytest.raises(ConnectionClosedError) as info:
            await ws.recv()
        assert info.value.rcvd is None


async def test_stall_sends_nothing_and_answers_no_ping(server: FeedServer) -> None:
    """While stalled, broadcasts are discarded and pings unanswered; unstall resumes both."""
    async with connect(server.url) as ws:
        await server.wait_connections(1)
        server.stall()
        assert await server.broadcast("lost") == 0
        pong = await ws.ping()
        with pytest.raises(TimeoutError):
            # Shielded: the timeout must not cancel the pong we await after unstall.
            await asyncio.wait_for(asyncio.shield(pong), QUIET)
        server.unstall()
        async with asyncio.timeout(2):
            await pong
        assert await server.broadcast("after") == 1
        assert await ws.recv() == "after"


async def test_stall_holds_client_frames_until_unstall(server: FeedServer) -> None:
    """Frames sent to a stalled server are read only after unstall."""
    async with connect(server.url) as ws:
        await server.wait_connections(1)
        server.stall()
        await ws.send("held")
        with pytest.raises(TimeoutError):
            await server.wait_received(1, timeout=QUIET)
        server.unstall()
        await server.wait_received(1)
        assert server.received == [(1, "held")]


async def test_refuse_next_twice_then_accept(server: FeedServer) -> None:
    """refuse_next(2) answers two handshakes 503, then accepts."""
    server.refuse_next(2)
    for _ in range(2):
        with pytest.raises(InvalidStatus) as info:
            await connect(server.url)
        assert info.value.response.status_code == 503
    async with connect(server.url):
        await server.wait_connections(1)
    assert server.handshakes == 3


async def test_refuse_with_401_and_retry_after(server: FeedServer) -> None:
    """A refusal carries its status and extra headers to the client."""
    server.refuse_next(status=401, headers={"Retry-After": "7"})
    with pytest.raises(InvalidStatus) as info:
        await connect(server.url)
    assert info.value.response.status_code == 401
    assert info.value.response.headers["Retry-After"] == "7"


async def test_refuse_next_rejects_unknown_status(server: FeedServer) -> None:
    """refuse_next validates its status up front."""
    with pytest.raises(ValueError, match="status"):
        server.refuse_next(status=101)
    with pytest.raises(ValueError, match="status"):
        server.refuse_next(status=999)


async def test_drop_next_accepts_then_aborts(server: FeedServer) -> None:
    """drop_next lets the handshake succeed, then drops; the next connection is normal."""
    server.drop_next(1)
    async with connect(server.url) as ws:
        with pytest.raises(ConnectionClosedError) as info:
            await ws.recv()
        assert info.value.rcvd is None
    async with connect(server.url) as ws:
        await server.wait_connections(2)
        assert await server.broadcast("ok") == 1
        assert await ws.recv() == "ok"
    assert server.connects == 2


async def test_delay_next_handshakes_lets_later_ones_overtake(server: FeedServer) -> None:
    """A delayed handshake completes after one that started later."""
    server.delay_next_handshakes(1, 0.3)
    slow = asyncio.ensure_future(connect(server.url_for("/slow")))
    await server.wait_until(lambda: server.handshakes == 1)
    async with connect(server.url_for("/fast")):
        await server.wait_connections(1)
        assert not slow.done()
        async with await slow:
            await server.wait_connections(2)
    assert server.paths == ["/fast", "/slow"]


async def test_send_garbage_sends_non_json_text_and_bytes(server: FeedServer) -> None:
    """send_garbage sends text that is not JSON and binary frames that are not UTF-8."""
    async with connect(server.url) as ws:
        await server.wait_connections(1)
        assert await server.send_garbage(2) == 1
        for _ in range(2):
            text = await ws.recv()
            assert isinstance(text, str)
            with pytest.raises(ValueError):
                json.loads(text)
            blob = await ws.recv()
            assert isinstance(blob, bytes)
            with pytest.raises(ValueError):
                json.loads(blob)


async def test_close_all_uses_the_close_code(server: FeedServer) -> None:
    """close_all closes cleanly with the given code and reason."""
    async with connect(server.url) as ws:
        await server.wait_connections(1)
        await server.close_all(4001, "go away")
        assert server.open_connections == 0
        with pytest.raises(ConnectionClosedError) as info:
            await ws.recv()
        assert info.value.rcvd is not None
        assert (info.value.rcvd.code, info.value.rcvd.reason) == (4001, "go away")


async def test_close_all_rejects_reserved_codes(server: FeedServer) -> None:
    """close_all refuses a code that may not go in a close frame."""
    with pytest.raises(ValueError, match="1006"):
        await server.close_all(1006)


# Routing


async def test_route_replies_with_id(server: FeedServer) -> None:
    """A request with "id" gets {"id", "result"} from the route's params."""
    server.route("echo", lambda params: params)
    async with connect(server.url) as ws:
        assert await request(ws, {"method": "echo", "params": [1, 2], "id": 7}) == {"id": 7, "result": [1, 2]}


async def test_route_replies_with_request_id(server: FeedServer) -> None:
    """A request with "request_id" gets {"request_id", "event", "data"}."""
    server.route("echo", lambda params: params)
    async with connect(server.url) as ws:
        reply = await request(ws, {"method": "echo", "params": {"a": 1}, "request_id": "r1"})
    assert reply == {"request_id": "r1", "event": "echo", "data": {"a": 1}}


async def test_route_without_params_gets_whole_request(server: FeedServer) -> None:
    """A coroutine route receives the whole request when it has no params."""

    async def whole(req: Any) -> Any:
        return req

    server.route("whole", whole)
    async with connect(server.url) as ws:
        reply = await request(ws, {"method": "whole", "id": 1, "x": 2})
    assert reply == {"id": 1, "result": {"method": "whole", "id": 1, "x": 2}}


async def test_unknown_method_gets_error(server: FeedServer) -> None:
    """A method without a route gets a -32601 error under the request's id key."""
    async with connect(server.url) as ws:
        reply = await request(ws, {"method": "nope", "id": 3})
    assert reply == {"id": 3, "error": {"code": -32601, "message": "unknown method 'nope'"}}


async def test_route_exception_becomes_error_reply(server: FeedServer) -> None:
    """A route that raises is answered with an error carrying the message."""

    def boom(params: Any) -> None:
        raise ValueError("kaput")

    server.route("boom", boom)
    async with connect(server.url) as ws:
        reply = await request(ws, {"method": "boom", "id": 4})
    assert reply["id"] == 4
    assert reply["error"]["message"] == "kaput"


async def test_delayed_reply_does_not_block_next_request(server: FeedServer) -> None:
    """A delayed route's reply arrives after the reply to a later request."""
    server.route("slow", lambda params: "slow", delay=0.2)
    server.route("fast", lambda params: "fast")
    async with connect(server.url) as ws:
        await ws.send(json.dumps({"method": "slow", "id": 1}))
        await ws.send(json.dumps({"method": "fast", "id": 2}))
        assert await recv_json(ws) == {"id": 2, "result": "fast"}
        assert await recv_json(ws) == {"id": 1, "result": "slow"}


async def test_subscribe_is_routed_by_default(server: FeedServer) -> None:
    """SUBSCRIBE is answered Binance-style out of the box."""
    async with connect(server.url) as ws:
        reply = await request(ws, {"method": "SUBSCRIBE", "params": ["btcusdt@trade"], "id": 1})
    assert reply == {"id": 1, "result": None}


async def test_non_requests_are_only_recorded(server: FeedServer) -> None:
    """Frames that are not JSON objects with "method" get no reply."""
    async with connect(server.url) as ws:
        await ws.send("plain")
        await ws.send(json.dumps({"id": 1}))
        await ws.send(json.dumps({"method": "SUBSCRIBE"}))  # no id: a notification
        await ws.send(json.dumps({"method": "SUBSCRIBE", "id": 9}))
        assert await recv_json(ws) == {"id": 9, "result": None}
    assert len(server.received) == 4
