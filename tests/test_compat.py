"""Code written for the older package, and the rough edges a new user met: against a real FeedServer."""

from __future__ import annotations

import asyncio
import gc
import inspect
import json
from typing import Any

import pytest

from async_ws_stream import (
    AsyncWebsocketStreamInterface,
    AsyncWsStream,
    ConnectionRejected,
    Stream,
)
from async_ws_stream.testing import FeedServer

from .conftest import JsonClient, settle

# -- the older package's names -------------------------------------------------------------

#: AsyncWebsocketStreamInterface 1.0.5's public methods and their parameters (read from its wheel).
OLDER_API = {
    "stream_filter": ["_filters"],
    "add_handler": ["function_or_coroutine_function"],
    "wait_enter_handing_ws": [],
    "send": ["msg"],
    "exit": [],
}


def test_every_older_name_takes_its_older_parameters() -> None:
    """Each public method of 1.0.5 exists, and accepts each of its parameters by name."""
    assert AsyncWebsocketStreamInterface is AsyncWsStream
    assert isinstance(inspect.getattr_static(AsyncWsStream, "present_ws"), property)
    for name, params in OLDER_API.items():
        signature = inspect.signature(getattr(AsyncWsStream, name))
        assert all(p in signature.parameters for p in params), (name, signature)


async def test_older_keywords_work_and_clash_clearly(client: JsonClient, server: FeedServer) -> None:
    """stream_filter(_filters=...), add_handler(function_or_coroutine_function=...); both spellings is a TypeError."""
    got: list[Any] = []
    stream = client.stream_filter(_filters=[{"k": 1}])
    client.add_handler(function_or_coroutine_function=got.append)
    await client.wait_enter_handing_ws()
    await server.broadcast({"k": 1})
    assert await anext(stream) == {"k": 1}
    assert {"k": 1} in got
    with pytest.raises(TypeError, match=r"stream_filter: got both filters= and _filters="):
        client.stream_filter([{"k": 1}], _filters=[{"k": 2}])
    with pytest.raises(TypeError, match=r"add_handler: missing the argument fn"):
        client.add_handler()


# -- one shape for filters and conditions ----------------------------------------------------


async def test_a_single_dict_and_a_callable_work_everywhere(client: JsonClient, server: FeedServer) -> None:
    """stream_filter, add_handler and wait_for all take one dict, or a whole-message callable."""
    by_dict = client.stream_filter({"k": 1})
    by_callable = client.stream_filter(lambda m: m.get("k") == 1)
    handled: list[Any] = []
    client.add_handler(handled.append, {"k": 1})
    await client.wait_connected(timeout=5)
    waiting = client.expect({"k": 1}, timeout=5)
    await server.broadcast({"k": 2})
    await server.broadcast({"k": 1})
    assert await waiting == {"k": 1}
    assert await anext(by_dict) == {"k": 1}
    assert await anext(by_callable) == {"k": 1}
    assert handled == [{"k": 1}]


async def test_every_call_refuses_a_string_with_one_message(client: JsonClient) -> None:
    """The same TypeError text, but for the argument's name, from each call that takes a condition."""
    texts = []
    for call in (lambda: client.stream_filter("k"), lambda: client.add_handler(print, "k"),
                 lambda: client.expect("k")):
        with pytest.raises(TypeError) as info:
            call()  # type: ignore[no-untyped-call]
        texts.append(str(info.value).split(" must be ")[1])
    assert texts == ["a dict, a callable, or a list of these, got str 'k'"] * 3


async def test_handler_copy_gives_the_handler_its_own_message(client: JsonClient, server: FeedServer) -> None:
    """add_handler(copy=True): the handler may change its message; streams see the original."""

    def scribble(msg: dict[str, Any]) -> None:
        msg["k"] = "changed"

    stream = client.stream_filter()
    client.add_handler(scribble, copy=True)
    await client.wait_connected(timeout=5)
    await server.broadcast({"k": 1})
    assert await anext(stream) == {"k": 1}


# -- abandoned streams -----------------------------------------------------------------------


async def test_a_stream_left_by_break_is_unregistered(client: JsonClient, server: FeedServer) -> None:
    """break out of `async for client.stream_filter()` with no reference kept: gone from stats, counted."""
    await client.wait_connected(timeout=5)
    await server.broadcast({"k": 1})
    async for _ in client.stream_filter():
        break
    else:
        raise AssertionError("no message")
    await asyncio.sleep(0)  # the unregistration is scheduled in the loop
    assert client.stats()["streams"] == []
    assert client.stats()["abandoned"] == 1


async def test_a_stream_left_by_an_exception_in_a_cycle_is_unregistered_at_collection(
    client: JsonClient, server: FeedServer
) -> None:
    """A stream kept alive only by a reference cycle goes at the next garbage collection."""

    async def consume() -> None:
        holder: dict[str, Any] = {}
        holder["self"] = holder  # a cycle: only the collector can free it
        holder["stream"] = client.stream_filter()
        async for _ in holder["stream"]:
            raise ValueError("consumer failed")

    await client.wait_connected(timeout=5)
    task = asyncio.ensure_future(consume())
    await asyncio.sleep(0)
    await server.broadcast({"k": 1})
    with pytest.raises(ValueError) as info:
        await task
    del info, task  # their traceback holds the consumer's frame, and so the cycle
    await asyncio.sleep(0)  # the loop lets go of the finished task
    gc.collect()
    await asyncio.sleep(0)
    assert client.stats()["streams"] == []


async def test_a_task_waiting_on_a_stream_keeps_it(client: JsonClient, server: FeedServer) -> None:
    """A consumer task that holds the only reference keeps getting messages (a fire-and-forget consumer)."""
    got = asyncio.Event()

    async def consume(stream: Stream[Any]) -> None:
        async for _ in stream:
            got.set()

    task = asyncio.ensure_future(consume(client.stream_filter()))
    await client.wait_connected(timeout=5)
    await asyncio.sleep(0)
    gc.collect()
    await server.broadcast({"k": 1})
    await asyncio.wait_for(got.wait(), 5)
    assert len(client.stats()["streams"]) == 1
    await client.exit()
    await task


class ListenKeyClient(JsonClient):
    """Makes a stream in every _when2create_new_ws, as the older README does."""

    made: asyncio.Queue[Stream[Any]]

    async def _when2create_new_ws(self) -> None:
        self.made.put_nowait(self.stream_filter([{"e": "listenKeyExpired"}]))
        await super()._when2create_new_ws()


async def test_streams_made_in_when2create_new_ws_end_with_it(server: FeedServer) -> None:
    """Each recycle ends the stream its trigger made: registered streams do not grow per recycle."""
    client = ListenKeyClient(server.url, stable_after=0)
    client.made = asyncio.Queue()
    made = []
    try:
        for n in range(1, 4):
            made.append(await asyncio.wait_for(client.made.get(), 5))
            client.recycle_now.set()
            await server.wait_connections(n + 1)
        made.append(await asyncio.wait_for(client.made.get(), 5))
        assert [s.closed for s in made] == [True, True, True, False]
        assert len(client.stats()["streams"]) == 1
        assert [x async for x in made[0]] == []  # ended normally
    finally:
        await client.exit()


# -- conversations inside _on_connect --------------------------------------------------------


class GraphqlClient(JsonClient):
    """graphql-transport-ws: connection_init, then connection_ack, before anything else."""

    acks: list[Any]
    misuse = False

    async def _on_connect(self, ws: Any) -> None:
        await ws.send(json.dumps({"type": "connection_init", "payload": {}}))
        if self.misuse:
            await self.wait_for({"type": "connection_ack"}, timeout=5)
        self.acks.append(json.loads(await ws.recv()))


async def _ack(server: FeedServer) -> None:
    await server.wait_received(lambda frames: any("connection_init" in str(f) for _, f in frames))
    await server.send_to(server.connections[-1], {"type": "connection_ack"})


async def test_a_handshake_in_on_connect_reads_the_connection_directly(server: FeedServer) -> None:
    """send connection_init, await ws.recv() for connection_ack: the connection serves after it."""
    client = GraphqlClient(server.url)
    client.acks = []
    try:
        await _ack(server)
        await client.wait_connected(timeout=5)
        assert client.acks == [{"type": "connection_ack"}]
        assert (await settle(client, server, {"after": "ack"})) == {"after": "ack"}
    finally:
        await client.exit()


async def test_wait_for_inside_on_connect_fails_at_once_saying_to_use_recv(server: FeedServer) -> None:
    """A wait_for in _on_connect can never be answered: the client ends at once, naming ws.recv()."""
    client = GraphqlClient(server.url)
    client.acks, client.misuse = [], True
    try:
        with pytest.raises(ConnectionRejected, match=r"wait_for was called inside _on_connect.*ws\.recv\(\)"):
            await client.wait_connected(timeout=5)
        assert client.stats()["retries"] == 0
    finally:
        await client.exit()


# -- close codes -----------------------------------------------------------------------------


async def test_fatal_close_codes_leave_4409_and_4429_to_retry(server: FeedServer) -> None:
    """graphql-ws's 4409/4429 are retried when left out of fatal_close_codes; 4403 still ends the client."""
    client = JsonClient(server.url, fatal_close_codes={1008, 4400, 4401, 4403}, backoff_initial=0)
    try:
        for code, n in ((4409, 2), (4429, 3)):
            await client.wait_connected(timeout=5)
            await server.close_all(code, "come back")
            await server.wait_connections(n)
        await client.wait_connected(timeout=5)
        await server.close_all(4403, "forbidden")
        with pytest.raises(ConnectionRejected, match="4403"):
            await client.request({"method": "ping"}, timeout=5)
    finally:
        await client.exit()


@pytest.mark.single_transport
def test_fatal_close_codes_is_checked_by_the_one_rule() -> None:
    """A wrong type is a TypeError, a code out of 1000-4999 a ValueError, each naming the value."""
    with pytest.raises(TypeError, match=r"fatal_close_codes must be a set of ints .* got int 4000"):
        JsonClient("ws://127.0.0.1:9", fatal_close_codes=4000)
    with pytest.raises(TypeError, match=r"fatal_close_codes must hold ints, got str '4000'"):
        JsonClient("ws://127.0.0.1:9", fatal_close_codes={"4000"})
    with pytest.raises(ValueError, match=r"close codes 1000-4999, got 5000"):
        JsonClient("ws://127.0.0.1:9", fatal_close_codes={5000})
    with pytest.raises(ValueError, match=r"idle_counts must be one of 'data', 'pongs', got 'pings'"):
        JsonClient("ws://127.0.0.1:9", idle_counts="pings")


# -- idle_timeout and pings ------------------------------------------------------------------


@pytest.mark.single_transport
async def test_idle_counts_pongs_keeps_a_quiet_connection(server: FeedServer) -> None:
    """With idle_counts="pongs", a server that answers pings but sends no data is not dropped."""
    client = JsonClient(server.url, idle_timeout=0.2, idle_counts="pongs")
    try:
        await client.wait_connected(timeout=5)
        waiting = client.expect({"quiet": "over"}, timeout=5)
        await asyncio.sleep(1.0)  # five idle_timeouts of silence: time is the condition here
        assert server.handshakes == 1
        await server.broadcast({"quiet": "over"})
        await waiting
    finally:
        await client.exit()


@pytest.mark.single_transport
async def test_idle_counts_data_drops_a_quiet_connection(server: FeedServer) -> None:
    """By default, a connection without data frames for idle_timeout is replaced, pongs or not."""
    client = JsonClient(server.url, idle_timeout=0.2)
    try:
        await client.wait_connected(timeout=5)
        await server.wait_connections(2)
    finally:
        await client.exit()


async def test_a_stalled_server_is_dropped_even_when_pongs_count(server: FeedServer) -> None:
    """A server that stops answering (stall) is still caught under idle_counts="pongs", on every transport."""
    client = JsonClient(server.url, idle_timeout=0.2, idle_counts="pongs")
    try:
        await client.wait_connected(timeout=5)
        server.stall()
        await server.wait_connections(2)
        server.unstall()
    finally:
        await client.exit()
