"""The base class against a real FeedServer: connection life, streams, handlers, send, exit."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
from websockets.asyncio.client import connect

import async_ws_stream
from async_ws_stream import (
    AsyncWsStream,
    ClientClosed,
    RetriesExhausted,
    StreamOverflow,
    Timeout,
)
from async_ws_stream.testing import FeedServer

from .conftest import JsonClient, no_library_tasks, settle

# -- the base class ------------------------------------------------------------------------


async def test_legacy_subclass_runs_with_only_the_import_changed(server: FeedServer) -> None:
    """A subclass written like the older package's README (listen key, long sleep, JSON) works."""
    from async_ws_stream import AsyncWebsocketStreamInterface

    keys = iter(["key-1", "key-2"])

    class BinanceFapiAsyncWs(AsyncWebsocketStreamInterface):
        ws_baseurl = server.url

        async def _generate_listenkey(self) -> str:
            await asyncio.sleep(0)  # stands in for the REST call
            return next(keys)

        async def _create_ws(self):
            ws = await connect(self.ws_baseurl + "/ws/" + await self._generate_listenkey())
            return ws

        async def _when2create_new_ws(self):
            await asyncio.sleep(20 * 3600)

        async def _parse_raw_data(self, raw_data):
            msg = json.loads(raw_data)
            return msg

    ws = BinanceFapiAsyncWs()
    try:
        stream = ws.stream_filter([{"e": "ORDER_TRADE_UPDATE"}])
        await ws.wait_connected(timeout=5)
        assert ws.present_ws is not None
        await ws.send({"method": "ping"})
        await server.broadcast({"e": "ACCOUNT_UPDATE"})
        await server.broadcast({"e": "ORDER_TRADE_UPDATE", "o": {"x": "NEW"}})
        assert await anext(stream) == {"e": "ORDER_TRADE_UPDATE", "o": {"x": "NEW"}}
        assert server.paths == ["/ws/key-1"]
    finally:
        await ws.exit()


async def test_constructed_in_a_running_loop_starts_at_once(server: FeedServer) -> None:
    """A client made inside a loop connects without start(); hooks see attributes set after __init__."""
    client = JsonClient(server.url)
    try:
        await client.wait_connected(timeout=5)
        assert server.connects == 1
    finally:
        await client.exit()


def test_constructed_outside_a_loop_starts_on_start(server_url_outside_loop: str) -> None:
    """Made outside any loop, the client waits for start() (here: async with)."""
    client = JsonClient(server_url_outside_loop)
    assert client.stats()["state"] == "new"

    async def main() -> int:
        async with FeedServer() as feed:
            client.url = feed.url
            async with client:
                await client.wait_connected(timeout=5)
                return client.stats()["connects"]

    assert asyncio.run(main()) == 1


@pytest.fixture
def server_url_outside_loop() -> str:
    return "ws://127.0.0.1:9/unused"


async def test_async_and_sync_parse_both_work(server: FeedServer) -> None:
    """_parse_raw_data may be a coroutine function; None skips the frame."""

    class AsyncParse(JsonClient):
        async def _parse_raw_data(self, raw: str | bytes) -> Any:
            msg = json.loads(raw)
            return None if msg.get("skip") else msg

    client = AsyncParse(server.url)
    try:
        stream = client.stream_filter()
        await client.wait_connected(timeout=5)
        await server.broadcast({"skip": True})
        await server.broadcast({"n": 1})
        assert await anext(stream) == {"n": 1}
        assert client.stats()["skipped"] == 1
    finally:
        await client.exit()


# -- the supervisor ------------------------------------------------------------------------


async def test_reconnects_after_an_abrupt_drop(client: JsonClient, server: FeedServer) -> None:
    """After a drop without a close frame the client reconnects and the stream goes on."""
    stream = client.stream_filter([{"n": 2}])
    await client.wait_connected(timeout=5)
    await server.drop()
    await server.wait_connections(2)
    await client.wait_connected(timeout=5)
    await server.broadcast({"n": 2})
    assert await anext(stream) == {"n": 2}
    assert client.stats()["reconnects"] == 1


async def test_first_retry_is_immediate(server: FeedServer) -> None:
    """With a huge backoff, the first reconnect still happens at once."""
    client = JsonClient(server.url, backoff_initial=60, backoff_max=60, stable_after=0)
    try:
        await client.wait_connected(timeout=5)
        await server.drop()
        await server.wait_connections(2, timeout=5)
    finally:
        await client.exit()


async def test_accept_then_drop_backs_off_instead_of_storming(server: FeedServer) -> None:
    """A server that accepts and drops at once gets backed-off attempts, not a storm."""
    client = JsonClient(server.url, backoff_initial=0.05, backoff_factor=2, backoff_max=0.1, backoff_jitter=0)
    try:
        await client.wait_connected(timeout=5)
        server.drop_next(100)
        started = time.monotonic()
        await server.drop()
        await server.wait_connections(7, timeout=5)
        elapsed = time.monotonic() - started
    finally:
        await client.exit()
    # Six retries after the drop: 0 + 0.05 + 0.1 * 4 seconds of backoff at the least. Without
    # "a young connection is a failure" every retry would be immediate.
    assert elapsed >= 0.45


async def test_create_ws_errors_are_retried(server: FeedServer) -> None:
    """_create_ws raising is a failed attempt, retried with backoff, then connects."""

    class Flaky(JsonClient):
        failures = 2

        async def _create_ws(self) -> Any:
            if self.failures:
                self.failures -= 1
                raise OSError("network is unreachable")
            return await super()._create_ws()

    client = Flaky(server.url, backoff_initial=0.01)
    try:
        await client.wait_connected(timeout=5)
        assert client.stats()["retries"] == 2
        assert client.stats()["connects"] == 1
    finally:
        await client.exit()


async def test_max_retries_ends_streams_and_calls(server: FeedServer) -> None:
    """When retries run out, streams end with RetriesExhausted and send raises it."""
    server.refuse_next(100)
    client = JsonClient(server.url, max_retries=2, backoff_initial=0.01)
    try:
        stream = client.stream_filter()
        with pytest.raises(RetriesExhausted) as excinfo:
            async for _ in stream:
                pass
        assert "503" in str(excinfo.value)
        with pytest.raises(RetriesExhausted):
            await client.send("x")
        with pytest.raises(RetriesExhausted):
            await client.wait_connected()
        assert client.stats()["retries"] == 2
    finally:
        await client.exit()


async def test_idle_timeout_replaces_a_stalled_connection(server: FeedServer) -> None:
    """No data frame for idle_timeout seconds: the connection is dropped and replaced."""
    client = JsonClient(server.url, idle_timeout=0.2)
    try:
        await client.wait_connected(timeout=5)
        server.stall()
        await server.wait_connections(2, timeout=5)
        server.unstall()
        stream = client.stream_filter()
        await client.wait_connected(timeout=5)
        await server.broadcast({"alive": True})
        assert await anext(stream) == {"alive": True}
    finally:
        await client.exit()


async def test_recycles_leave_exactly_one_open_connection(client: JsonClient, server: FeedServer) -> None:
    """After several recycles the server holds exactly one connection; the old ones got close frames."""
    closes: list[int | None] = []
    await client.wait_connected(timeout=5)
    for n in range(2, 5):
        old = server.connections[-1]
        client.recycle_now.set()
        await server.wait_connections(n)
        await old.wait_closed()
        closes.append(old.close_code)
    await server.wait_open(1)
    assert server.open_connections == 1
    assert closes == [1000, 1000, 1000]
    assert client.stats()["recycles"] == 3


async def test_recycle_loses_no_message_and_keeps_order(server: FeedServer) -> None:
    """Across recycles nothing is lost, and every frame of the old connection precedes the new one's."""
    # Four recycles within milliseconds are meant here: stable_after=0 says so, or they would be paced.
    client = JsonClient(server.url, backoff_initial=0.01, backoff_max=0.05, stable_after=0)
    try:
        await _recycle_loses_no_message_and_keeps_order(client, server)
    finally:
        await client.exit()


async def _recycle_loses_no_message_and_keeps_order(client: JsonClient, server: FeedServer) -> None:
    stream = client.stream_filter([{"seq": lambda v: True}])
    await client.wait_connected(timeout=5)
    for seq in range(60):
        if seq % 15 == 7:
            client.recycle_now.set()
        # Like a real feed, every open connection carries every message.
        for number in range(1, server.connects + 1):
            await server.send_to(number, {"conn": number, "seq": seq})
        await asyncio.sleep(0)
    await settle(client, server)
    got = [stream.get_nowait() for _ in range(stream.queued)]
    assert {m["seq"] for m in got} == set(range(60))
    conns = [m["conn"] for m in got]
    assert conns == sorted(conns)
    for number in set(conns):
        seqs = [m["seq"] for m in got if m["conn"] == number]
        assert seqs == sorted(seqs)
    assert client.stats()["recycles"] >= 3


async def test_recycle_keeps_the_old_connection_when_the_new_one_fails(
    client: JsonClient, server: FeedServer
) -> None:
    """If the successor cannot be made, the old connection keeps serving until it can."""
    stream = client.stream_filter()
    await client.wait_connected(timeout=5)
    server.refuse_next(2)
    client.recycle_now.set()
    await server.broadcast({"still": "here"})
    assert await anext(stream) == {"still": "here"}
    await server.wait_connections(2, timeout=5)
    await server.wait_open(1)
    assert client.stats()["reconnects"] == 0


async def test_retries_and_recycles_are_logged_with_their_cause(
    client: JsonClient, server: FeedServer, logs: list[str]
) -> None:
    """Each retry names its cause; each recycle says why."""
    await client.wait_connected(timeout=5)
    server.refuse_next(1)
    await server.drop()
    await server.wait_connections(2, timeout=5)
    client.recycle_now.set()
    await server.wait_connections(3, timeout=5)
    text = "\n".join(logs)
    assert "HTTP 503" in text
    assert "recycling connection #" in text
    assert "_when2create_new_ws returned" in text


async def test_logs_never_carry_url_secrets(server: FeedServer, logs: list[str]) -> None:
    """Through failures and reconnects, neither the secret path segment nor the token is logged."""

    class Leaky(JsonClient):
        async def _create_ws(self) -> Any:
            if self.stats()["retries"] == 0:
                raise OSError(f"cannot reach {self.url}")
            return await super()._create_ws()

    client = Leaky(server.url_for("/ws/SECRETKEY?token=SECRET"), backoff_initial=0.01)
    try:
        await client.wait_connected(timeout=5)
        server.refuse_next(1)
        await server.send_garbage()
        await server.drop()
        await server.wait_connections(2, timeout=5)
    finally:
        await client.exit()
    text = "\n".join(logs)
    assert "retry" in text and "cannot reach ws://127.0.0.1" in text
    assert "SECRET" not in text


# -- streams -------------------------------------------------------------------------------


async def test_filters_route_messages_to_matching_streams(client: JsonClient, server: FeedServer) -> None:
    """Equality, any-of lists, tuple paths and predicates, end to end."""
    btc = client.stream_filter([{"s": "BTC"}])
    either = client.stream_filter([{"s": "ETH"}, {"e": "kline"}])
    new_orders = client.stream_filter([{("o", "x"): "NEW"}])
    big = client.stream_filter([{"p": lambda v: float(v) > 100}])
    everything = client.stream_filter()
    await client.wait_connected(timeout=5)
    msgs = [
        {"s": "BTC", "p": "101"},
        {"s": "ETH", "p": "3"},
        {"e": "kline", "s": "SOL"},
        {"o": {"x": "NEW"}},
        {"o": {"x": "FILLED"}},
    ]
    for m in msgs:
        await server.broadcast(m)
    await settle(client, server, {"end": 1})

    def drain(s: Any) -> list[Any]:
        return [s.get_nowait() for _ in range(s.queued)]

    assert drain(btc) == [msgs[0]]
    assert drain(either) == [msgs[1], msgs[2]]
    assert drain(new_orders) == [msgs[3]]
    assert drain(big) == [msgs[0]]
    assert drain(everything) == msgs + [{"end": 1}]


async def test_streams_share_one_object_unless_copy(client: JsonClient, server: FeedServer) -> None:
    """Every stream gets the same object; copy=True gives an equal deep copy."""
    a, b = client.stream_filter(), client.stream_filter()
    c = client.stream_filter(copy=True)
    await client.wait_connected(timeout=5)
    await server.broadcast({"x": [1]})
    ma, mb, mc = await anext(a), await anext(b), await anext(c)
    assert ma is mb
    assert mc == ma and mc is not ma and mc["x"] is not ma["x"]


@pytest.mark.parametrize(
    ("overflow", "expected"),
    [("drop_oldest", [2, 3, 4]), ("drop_newest", [0, 1, 2])],
)
async def test_drop_policies_count_what_they_drop(
    client: JsonClient, server: FeedServer, overflow: str, expected: list[int]
) -> None:
    """A full buffer drops by its policy; the count is on the stream and in stats()."""
    stream = client.stream_filter([{"n": lambda v: True}], maxsize=3, overflow=overflow)  # type: ignore[arg-type]
    await client.wait_connected(timeout=5)
    for n in range(5):
        await server.broadcast({"n": n})
    await settle(client, server)
    assert [stream.get_nowait()["n"] for _ in range(stream.queued)] == expected
    assert stream.dropped == 2
    assert client.stats()["dropped"] == 2
    assert client.stats()["streams"][0] == {"filters": stream.statistics().filters, "queued": 0, "dropped": 2}


async def test_overflow_error_delivers_the_buffer_then_raises(client: JsonClient, server: FeedServer) -> None:
    """overflow="error": the consumer gets what was buffered, then StreamOverflow, then the end."""
    stream = client.stream_filter([{"n": lambda v: True}], maxsize=3)
    await client.wait_connected(timeout=5)
    for n in range(5):
        await server.broadcast({"n": n})
    await settle(client, server)
    got = []
    with pytest.raises(StreamOverflow, match="maxsize"):
        async for msg in stream:
            got.append(msg["n"])
    assert got == [0, 1, 2]
    assert stream.dropped == 1
    assert client.stats()["streams"] == []


async def test_overflow_is_logged_once_per_episode(
    client: JsonClient, server: FeedServer, logs: list[str]
) -> None:
    """Ten drops in a row make one warning, and one more when the stream has room again."""
    stream = client.stream_filter([{"n": lambda v: True}], maxsize=2, overflow="drop_newest")
    await client.wait_connected(timeout=5)
    for n in range(12):
        await server.broadcast({"n": n})
    await settle(client, server)
    stream.get_nowait()
    await server.broadcast({"n": 99})
    await settle(client, server)
    assert sum("is full" in line for line in logs) == 1
    assert sum("has room again after dropping 10" in line for line in logs) == 1


async def test_close_ends_a_blocked_consumer(client: JsonClient) -> None:
    """close() ends an `async for` waiting on an empty stream, and is idempotent."""
    stream = client.stream_filter()

    async def consume() -> list[Any]:
        return [m async for m in stream]

    task = asyncio.create_task(consume())
    await asyncio.sleep(0)
    await stream.close()
    await stream.aclose()
    assert await task == []
    assert client.stats()["streams"] == []


async def test_stream_as_context_manager_closes(client: JsonClient) -> None:
    """Leaving `async with stream` closes it and unregisters it."""
    async with client.stream_filter([{"a": 1}]) as stream:
        assert len(client.stats()["streams"]) == 1
    assert stream.closed
    assert client.stats()["streams"] == []


# -- handlers ------------------------------------------------------------------------------


async def test_sync_handlers_run_inline_in_order(client: JsonClient, server: FeedServer) -> None:
    """A plain function sees every matching message in arrival order, before the next frame."""
    seen: list[int] = []
    client.add_handler(lambda m: seen.append(m["n"]), [{"n": lambda v: v % 2 == 0}])
    await client.wait_connected(timeout=5)
    for n in range(10):
        await server.broadcast({"n": n})
    await settle(client, server)
    assert seen == [0, 2, 4, 6, 8]


async def test_slow_async_handler_stalls_nobody(client: JsonClient, server: FeedServer) -> None:
    """An async handler runs in order in its own task; a stuck one does not block a stream."""
    release = asyncio.Event()
    all_handled = asyncio.Event()
    handled: list[int] = []

    async def slow(msg: Any) -> None:
        await release.wait()
        handled.append(msg["n"])
        if msg["n"] == 5:
            all_handled.set()

    client.add_handler(slow)
    stream = client.stream_filter()
    await client.wait_connected(timeout=5)
    for n in range(5):
        await server.broadcast({"n": n})
    assert [(await anext(stream))["n"] for _ in range(5)] == [0, 1, 2, 3, 4]
    assert handled == []
    done = client.expect({"n": 5})
    release.set()
    await server.broadcast({"n": 5})
    await done
    await asyncio.wait_for(all_handled.wait(), 5)
    assert handled == [0, 1, 2, 3, 4, 5]


async def test_handler_failures_are_logged_and_counted(
    client: JsonClient, server: FeedServer, logs: list[str]
) -> None:
    """A raising handler is logged with its traceback, counted, and keeps being called."""
    calls: list[int] = []
    async_calls = 0
    async_saw_marker = asyncio.Event()

    def fragile(msg: Any) -> None:
        calls.append(msg["n"])
        raise ValueError("bad handler")

    async def fragile_async(msg: Any) -> None:
        nonlocal async_calls
        async_calls += 1
        if async_calls == 3:  # two messages and the marker
            async_saw_marker.set()
        raise KeyError("bad async handler")

    client.add_handler(fragile)
    client.add_handler(fragile_async)
    await client.wait_connected(timeout=5)
    await server.broadcast({"n": 1})
    await server.broadcast({"n": 2})
    await settle(client, server, {"marker": 0})
    await asyncio.wait_for(async_saw_marker.wait(), 5)
    assert client.stats()["handler_errors"] == 6  # 3 messages (with the marker) x 2 handlers
    assert calls == [1, 2]
    text = "\n".join(logs)
    assert "Traceback" in text and "ValueError: bad handler" in text and "KeyError" in text


async def test_remove_handler_finds_bound_methods_by_equality(client: JsonClient, server: FeedServer) -> None:
    """remove_handler(obj.method) removes the handler added as obj.method."""

    class Sink:
        def __init__(self) -> None:
            self.got: list[Any] = []

        def on_msg(self, msg: Any) -> None:
            self.got.append(msg)

    sink = Sink()
    client.add_handler(sink.on_msg)
    await client.wait_connected(timeout=5)
    await server.broadcast({"n": 1})
    await settle(client, server)
    client.remove_handler(sink.on_msg)
    await server.broadcast({"n": 2})
    await settle(client, server)
    assert [m for m in sink.got if "n" in m] == [{"n": 1}]
    with pytest.raises(ValueError, match="not a registered handler"):
        client.remove_handler(sink.on_msg)


# -- send and life -------------------------------------------------------------------------


async def test_send_waits_for_a_connection(server: FeedServer) -> None:
    """A send made before the connection is up goes out once it is."""
    server.refuse_next(2)
    client = JsonClient(server.url, backoff_initial=0.01)
    try:
        await client.send({"op": "hello"})
        await client.send("raw text")
        await server.wait_received(2)
        assert [data for _, data in server.received] == ['{"op":"hello"}', "raw text"]
    finally:
        await client.exit()


async def test_send_times_out_as_a_timeout_error(server: FeedServer) -> None:
    """send() without a connection raises our Timeout, which is also a TimeoutError."""
    server.refuse_next(1000)
    client = JsonClient(server.url, backoff_initial=0.01, send_timeout=0.1)
    try:
        with pytest.raises(TimeoutError) as excinfo:
            await client.send("x")
        assert isinstance(excinfo.value, Timeout)
    finally:
        await client.exit()


async def test_custom_serialize_is_used_for_non_text(server: FeedServer) -> None:
    """Non-str messages go through _serialize."""

    class Upper(JsonClient):
        def _serialize(self, msg: Any) -> str:
            return json.dumps(msg).upper()

    client = Upper(server.url)
    try:
        await client.send({"a": "b"})
        await server.wait_received(1)
        assert server.received[0][1] == '{"A": "B"}'
    finally:
        await client.exit()


async def test_stats_has_every_documented_key(client: JsonClient, server: FeedServer) -> None:
    """stats() has the spec's keys, and frames reconcile with messages and errors."""
    stream = client.stream_filter([{"a": 1}])  # held: an unreferenced stream is unregistered
    await client.wait_connected(timeout=5)
    await server.send_garbage()
    await settle(client, server)
    stats = client.stats()
    for key in ("connects", "reconnects", "recycles", "frames", "messages", "parse_errors",
                "handler_errors", "dropped", "last_frame_age", "streams"):
        assert key in stats
    assert stats["parse_errors"] >= 1
    assert stats["frames"] == stats["messages"] + stats["parse_errors"] + stats["skipped"]
    assert 0 <= stats["last_frame_age"] < 5
    assert stats["streams"] == [{"filters": [{"a": 1}], "queued": 0, "dropped": 0}]
    assert not stream.closed


async def test_exit_delivers_buffered_ends_streams_and_leaves_no_task(server: FeedServer) -> None:
    """exit(): close frame sent, buffer still delivered, every async for ends, no task left."""
    before = asyncio.all_tasks()
    client = JsonClient(server.url)
    stream = client.stream_filter()
    blocked = client.stream_filter([{"never": True}])
    blocked_reader = asyncio.create_task(anext(blocked, "ended"))
    await client.wait_connected(timeout=5)
    conn = server.connections[0]
    for n in range(3):
        await server.broadcast({"n": n})
    await settle(client, server, {"n": 3})
    await client.exit()
    assert [m["n"] async for m in stream] == [0, 1, 2, 3]
    assert await blocked_reader == "ended"
    await conn.wait_closed()
    assert conn.close_code == 1000
    assert asyncio.all_tasks() - before == set()
    await client.exit()  # idempotent
    with pytest.raises(ClientClosed):
        await client.send("late")
    with pytest.raises(ClientClosed):
        client.stream_filter()


async def test_concurrent_exits_all_return(client: JsonClient) -> None:
    """Several exit() calls at once all return after one shutdown."""
    await client.wait_connected(timeout=5)
    await asyncio.gather(client.exit(), client.exit(), client.exit())
    assert no_library_tasks()


async def test_exit_from_inside_an_async_handler(client: JsonClient, server: FeedServer) -> None:
    """An async handler may call exit(); it returns and the client ends."""
    returned = asyncio.Event()

    async def stopper(msg: Any) -> None:
        await client.exit()
        returned.set()

    client.add_handler(stopper)
    await client.wait_connected(timeout=5)
    await server.broadcast({"stop": True})
    await asyncio.wait_for(returned.wait(), 2)
    assert client.stats()["state"] == "closed"


# -- bad input -----------------------------------------------------------------------------


async def test_bad_arguments_name_the_argument_and_value(client: JsonClient) -> None:
    """Clear errors at the call for the classic mistakes."""
    with pytest.raises(TypeError, match=r"filters must be a dict, a callable, or a list of these, got str 'trade'"):
        client.stream_filter("trade")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"overflow must be one of .* got 'sometimes'"):
        client.stream_filter([{"s": 1}], overflow="sometimes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"maxsize must be >= 1, got 0"):
        client.stream_filter(maxsize=0)
    with pytest.raises(ValueError, match=r"idle_timeout must be > 0, got -1"):
        JsonClient("ws://127.0.0.1:9", idle_timeout=-1)
    with pytest.raises(ValueError, match=r"maxsize must be >= 1, got 0"):
        JsonClient("ws://127.0.0.1:9", maxsize=0)
    with pytest.raises(TypeError, match=r"fn must be callable"):
        client.add_handler("print")  # type: ignore[arg-type]


def test_public_errors_share_one_root() -> None:
    """Every public error derives from AsyncWsStreamError; Timeout is also a TimeoutError."""
    for name in async_ws_stream.__all__:
        obj = getattr(async_ws_stream, name)
        if isinstance(obj, type) and issubclass(obj, BaseException):
            assert issubclass(obj, async_ws_stream.AsyncWsStreamError), name
    assert issubclass(Timeout, TimeoutError)


def test_hooks_are_abstract() -> None:
    """A subclass that forgets a hook cannot be made."""

    class Incomplete(AsyncWsStream[Any]):
        async def _create_ws(self) -> Any:
            raise NotImplementedError

    with pytest.raises(TypeError, match="_parse_raw_data"):
        Incomplete()  # type: ignore[abstract]
