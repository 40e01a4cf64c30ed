"""FeedServer's configurable routing (route_on, id_keys, params_key, Reply) and its Applied faults."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosedError

from async_ws_stream.testing import Applied, FeedServer, Reply

QUIET = 0.15  # see test_testing.py


async def request(ws: ClientConnection, msg: dict[str, Any]) -> Any:
    await ws.send(json.dumps(msg))
    async with asyncio.timeout(2):
        return json.loads(await ws.recv())


async def no_reply(ws: ClientConnection, msg: dict[str, Any]) -> None:
    await ws.send(json.dumps(msg))
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(ws.recv(), QUIET)


# Id keys


async def test_eid_is_echoed_by_default() -> None:
    """A request carrying "eid" (the expectations package's key) gets {"eid", "result"}."""
    async with FeedServer() as server, connect(server.url) as ws:
        server.route("ping", lambda params: "pong")
        assert await request(ws, {"method": "ping", "eid": "e-1"}) == {"eid": "e-1", "result": "pong"}


async def test_first_id_key_present_wins() -> None:
    """With several id keys in a request, the first of id_keys is echoed."""
    async with FeedServer(id_keys=("request_id", "id")) as server, connect(server.url) as ws:
        server.route("ping", lambda params: "pong")
        reply = await request(ws, {"method": "ping", "id": 1, "request_id": 2})
        assert reply == {"request_id": 2, "event": "ping", "data": "pong"}


async def test_id_keys_limit_what_counts_as_an_id() -> None:
    """With id_keys=("id",), a request carrying only "request_id" is a notification: the route runs, no reply."""
    calls: list[Any] = []
    async with FeedServer(id_keys=("id",)) as server, connect(server.url) as ws:
        server.route("note", calls.append)
        await no_reply(ws, {"method": "note", "request_id": 5, "params": "x"})
        assert calls == ["x"]


async def test_a_route_may_have_its_own_id_keys() -> None:
    """route(..., id_keys=) replaces the server's id keys for that route only."""
    async with FeedServer(id_keys="id") as server, connect(server.url) as ws:
        server.route("login", lambda params: "ok", id_keys=("token",))
        server.route("other", lambda params: "ok")
        assert await request(ws, {"method": "login", "token": "t"}) == {"token": "t", "result": "ok"}
        await no_reply(ws, {"method": "other", "token": "t"})


# Routing on other keys


async def test_route_on_module_and_method() -> None:
    """route_on=("module", "method") routes on both; the request_id reply echoes the module."""
    async with FeedServer(route_on=("module", "method"), params_key="data") as server, connect(server.url) as ws:
        server.route(("user", "login"), lambda data: {"user": data["name"]})
        server.route(("entity", "login"), lambda data: "another module")
        reply = await request(ws, {"module": "user", "method": "login", "data": {"name": "ann"}, "request_id": 3})
        assert reply == {"request_id": 3, "module": "user", "event": "login", "data": {"user": "ann"}}
        reply = await request(ws, {"module": "user", "method": "logout", "request_id": 4})
        assert reply["error"] == {"code": -32601, "message": "unknown module/method ('user', 'logout')"}


async def test_frames_without_every_route_key_are_data() -> None:
    """With a tuple route_on, an object missing one of the keys is only recorded."""
    async with FeedServer(route_on=("module", "method")) as server, connect(server.url) as ws:
        await no_reply(ws, {"method": "SUBSCRIBE", "id": 1})  # no "module": not a request here
        assert len(server.received) == 1


async def test_route_on_another_single_key() -> None:
    """route_on="op" routes on "op"; params come from params_key."""
    async with FeedServer(route_on="op", params_key="args") as server, connect(server.url) as ws:
        server.route("add", lambda args: sum(args))
        assert await request(ws, {"op": "add", "args": [1, 2, 3], "id": 9}) == {"id": 9, "result": 6}


async def test_reply_sets_the_whole_reply() -> None:
    """A route returning Reply(body) sends the body with the id added, and nothing else."""
    async with FeedServer() as server, connect(server.url) as ws:
        server.route("get", lambda params: Reply({"event": "result", "items": [1]}))
        reply = await request(ws, {"method": "get", "request_id": 1})
        assert reply == {"request_id": 1, "event": "result", "items": [1]}


async def test_route_names_must_match_route_on() -> None:
    """A tuple name on a one-key server, or a str on a tuple server, is refused naming both."""
    with pytest.raises(TypeError, match=r"route_on=\('module', 'method'\)"):
        FeedServer().route(("user", "login"), lambda params: None)
    with pytest.raises(TypeError, match="tuple of 2 values, got 'login'"):
        FeedServer(route_on=("module", "method")).route("login", lambda params: None)


async def test_bad_routing_options_are_refused() -> None:
    """route_on, id_keys and params_key must be key names."""
    with pytest.raises(TypeError, match="route_on"):
        FeedServer(route_on=())
    with pytest.raises(TypeError, match="id_keys.*1"):
        FeedServer(id_keys=(1,))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="params_key"):
        FeedServer(params_key=None)  # type: ignore[arg-type]


# Faults used alike: plain calls or awaited


async def test_drop_works_as_a_plain_call() -> None:
    """server.drop() without await aborts at once; awaiting its result waits until the connection is gone."""
    async with FeedServer() as server, connect(server.url) as ws:
        await server.wait_connections(1)
        applied = server.drop()
        assert isinstance(applied, Applied)
        with pytest.raises(ConnectionClosedError):
            await ws.recv()
        await applied
        await applied  # again: returns at once
        assert server.open_connections == 0


async def test_stall_and_unstall_may_be_awaited() -> None:
    """await server.stall() and await server.unstall() work like the plain calls."""
    async with FeedServer() as server, connect(server.url) as ws:
        await server.wait_connections(1)
        await server.stall()
        assert server.stalled
        assert await server.broadcast("lost") == 0
        await server.unstall()
        assert await server.broadcast("after") == 1
        assert await ws.recv() == "after"


async def test_unawaited_drop_leaves_no_warning(recwarn: pytest.WarningsRecorder) -> None:
    """Dropping the result of drop() warns of nothing (it is not a coroutine)."""
    async with FeedServer() as server, connect(server.url):
        await server.wait_connections(1)
        server.drop()
        await server.wait_open(0)
    assert not [w for w in recwarn if "never awaited" in str(w.message)]
