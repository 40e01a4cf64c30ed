"""start_in_thread: a client in its own loop thread, driven by blocking calls from plain threads.

The FeedServer runs in the test's event loop; every blocking call of the handle is
made from a worker thread (``asyncio.to_thread``) so that the server keeps serving.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from typing import Any

import pytest

from async_ws_stream import (
    Alarm,
    ClientClosed,
    Closed,
    Connected,
    ConnectionLost,
    Disconnected,
    RetriesExhausted,
    Retrying,
    StreamOverflow,
    Timeout,
)
from async_ws_stream.testing import FeedServer
from async_ws_stream.threaded import BlockingStream, ThreadedClient

from .conftest import JsonClient

# The handle is what is under test here, not the transport underneath.
pytestmark = pytest.mark.single_transport


@pytest.fixture
async def handle(server: FeedServer) -> AsyncIterator[ThreadedClient[Any]]:
    h: ThreadedClient[Any] = JsonClient.start_in_thread(server.url, backoff_initial=0.01, backoff_max=0.05)
    try:
        await asyncio.to_thread(h.wait_connected, 5)
        yield h
    finally:
        await asyncio.to_thread(h.exit)


async def settle_thread(handle: ThreadedClient[Any], server: FeedServer) -> None:
    """Broadcast a marker until the client's loop has dispatched it (so everything before it too)."""
    waiting = asyncio.ensure_future(asyncio.to_thread(handle.wait_for, {"marker": 1}, timeout=5))
    # wait_for registers when the call reaches the loop thread; re-send until it is seen.
    while not waiting.done():
        await server.broadcast({"marker": 1})
        await asyncio.wait([waiting], timeout=0.02)
    await waiting


def consume(stream: BlockingStream[Any], into: list[Any]) -> None:
    for msg in stream:
        into.append(msg)
        if msg.get("last"):
            return


async def test_four_threads_each_get_exactly_their_messages(handle: ThreadedClient[Any], server: FeedServer) -> None:
    """Four consumer threads on four filtered streams at once each receive exactly their messages, in order."""
    symbols = ["BTC", "ETH", "SOL", "XRP"]
    streams = {s: handle.stream_filter([{"s": s}], timeout=10) for s in symbols}
    got: dict[str, list[Any]] = {s: [] for s in symbols}
    threads = [threading.Thread(target=consume, args=(streams[s], got[s])) for s in symbols]
    for t in threads:
        t.start()
    sent: dict[str, list[Any]] = {s: [] for s in symbols}
    for i in range(400):
        msg = {"s": symbols[i * 7 % 4], "n": i}
        sent[msg["s"]].append(msg)
        await server.broadcast(msg)
    await server.broadcast({"s": "DOGE", "n": -1})
    for s in symbols:
        last = {"s": s, "last": True}
        sent[s].append(last)
        await server.broadcast(last)
    await asyncio.gather(*(asyncio.to_thread(t.join, 10) for t in threads))
    assert not any(t.is_alive() for t in threads)
    assert got == sent


async def test_per_item_timeout_raises_timeout(handle: ThreadedClient[Any]) -> None:
    """An iterator with a per-item timeout raises our Timeout (also a TimeoutError) when nothing comes."""
    stream = handle.stream_filter([{"e": "never"}], timeout=0.05)
    with pytest.raises(Timeout) as info:
        await asyncio.to_thread(next, stream)
    assert isinstance(info.value, TimeoutError)


async def test_timeout_loses_nothing(handle: ThreadedClient[Any], server: FeedServer) -> None:
    """After a per-item timeout, the next get() returns the next message."""
    stream = handle.stream_filter([{"e": "x"}])
    with pytest.raises(Timeout):
        await asyncio.to_thread(stream.get, 0.02)
    await server.broadcast({"e": "x", "n": 1})
    assert await asyncio.to_thread(stream.get, 5) == {"e": "x", "n": 1}


async def test_close_ends_a_blocked_iteration_from_another_thread(handle: ThreadedClient[Any]) -> None:
    """close() from one thread ends the for-loop of a consumer blocked in another."""
    stream = handle.stream_filter([{"e": "never"}])
    got: list[Any] = []
    consumer = threading.Thread(target=consume, args=(stream, got))
    consumer.start()
    await asyncio.to_thread(stream.close)
    await asyncio.to_thread(consumer.join, 5)
    assert not consumer.is_alive()
    assert got == [] and stream.closed


async def test_exit_yields_buffered_messages_then_ends(server: FeedServer) -> None:
    """After exit(), an iterator yields what was already buffered, then stops."""
    h: ThreadedClient[Any] = JsonClient.start_in_thread(server.url)
    try:
        await asyncio.to_thread(h.wait_connected, 5)
        stream = h.stream_filter([{"e": "x"}])
        for n in range(3):
            await server.broadcast({"e": "x", "n": n})
        await settle_thread(h, server)
    finally:
        await asyncio.to_thread(h.exit)
    assert [m["n"] for m in await asyncio.to_thread(list, stream)] == [0, 1, 2]


async def test_send_and_request(handle: ThreadedClient[Any], server: FeedServer) -> None:
    """send() reaches the server; request() returns the reply carrying its id."""
    server.route("echo", lambda params: params)
    await asyncio.to_thread(handle.send, {"hello": 1})
    await server.wait_received(1)
    assert server.received[0][1] == '{"hello":1}'
    reply = await asyncio.to_thread(handle.request, {"method": "echo", "params": [7]})
    assert reply["result"] == [7]


async def test_wait_for_returns_the_message(handle: ThreadedClient[Any], server: FeedServer) -> None:
    """wait_for() returns the first later matching message."""
    waiting = asyncio.ensure_future(asyncio.to_thread(handle.wait_for, {"e": "fill"}, timeout=5))
    while not waiting.done():
        await server.broadcast({"e": "fill", "q": 2})
        await asyncio.wait([waiting], timeout=0.02)
    assert (await waiting)["q"] == 2


async def test_alarm_reaches_the_caller_with_its_type(handle: ThreadedClient[Any], server: FeedServer) -> None:
    """An alarm raised in the loop thread arrives as Alarm, with its message."""
    waiting = asyncio.ensure_future(
        asyncio.to_thread(handle.wait_for, {"e": "fill"}, alarms=[{"e": "reject"}], timeout=5)
    )
    while not waiting.done():
        await server.broadcast({"e": "reject", "why": "funds"})
        await asyncio.wait([waiting], timeout=0.02)
    with pytest.raises(Alarm) as info:
        await waiting
    assert info.value.message == {"e": "reject", "why": "funds"}


async def test_wait_for_timeout_is_timeout(handle: ThreadedClient[Any]) -> None:
    """A wait_for timeout arrives as Timeout."""
    with pytest.raises(Timeout):
        await asyncio.to_thread(handle.wait_for, {"e": "never"}, timeout=0.05)


async def test_connection_lost_reaches_the_caller(handle: ThreadedClient[Any], server: FeedServer) -> None:
    """A request whose connection drops fails with ConnectionLost in the calling thread."""
    server.route("slow", lambda params: None, delay=30)
    requesting = asyncio.ensure_future(asyncio.to_thread(handle.request, {"method": "slow"}, timeout=10))
    await server.wait_received(1)
    await server.drop()
    with pytest.raises(ConnectionLost):
        await requesting


async def test_bad_filter_raises_in_the_caller(handle: ThreadedClient[Any]) -> None:
    """A filter rejected in the loop thread raises there and arrives here with its type and text."""
    with pytest.raises(ValueError, match="stream_filter"):
        handle.stream_filter([{(): 1}])
    with pytest.raises(TypeError, match="stream_filter"):
        handle.stream_filter("trade")  # type: ignore[arg-type]


async def test_overflow_reaches_the_iterator(handle: ThreadedClient[Any], server: FeedServer) -> None:
    """An overflow='error' stream yields its buffer, then raises StreamOverflow in the consumer."""
    stream = handle.stream_filter([{"e": "x"}], maxsize=2)
    for n in range(3):
        await server.broadcast({"e": "x", "n": n})
    await settle_thread(handle, server)
    assert [await asyncio.to_thread(stream.get, 5) for _ in range(2)] == [{"e": "x", "n": 0}, {"e": "x", "n": 1}]
    with pytest.raises(StreamOverflow):
        await asyncio.to_thread(stream.get, 5)


async def test_retries_exhausted_reaches_the_caller() -> None:
    """A client that gives up raises RetriesExhausted from wait_connected in the calling thread."""
    async with FeedServer() as dead:
        url = dead.url
    h: ThreadedClient[Any] = JsonClient.start_in_thread(url, max_retries=1, backoff_initial=0.01)
    try:
        with pytest.raises(RetriesExhausted):
            await asyncio.to_thread(h.wait_connected, 10)
    finally:
        await asyncio.to_thread(h.exit)


async def test_constructor_error_raises_and_leaves_no_thread() -> None:
    """A bad option raises ValueError from start_in_thread, and no thread is left."""
    before = set(threading.enumerate())
    with pytest.raises(ValueError, match="backoff_factor"):
        JsonClient.start_in_thread("ws://127.0.0.1:9", backoff_factor=0.5)
    assert set(threading.enumerate()) <= before


async def test_exit_is_idempotent_joins_and_then_calls_raise(server: FeedServer) -> None:
    """exit() joins the thread, may be called twice, and later calls raise ClientClosed."""
    h: ThreadedClient[Any] = JsonClient.start_in_thread(server.url)
    await asyncio.to_thread(h.wait_connected, 5)
    await asyncio.to_thread(h.exit)
    await asyncio.to_thread(h.exit)
    assert not h.thread.is_alive()
    assert h.thread not in threading.enumerate()
    with pytest.raises(ClientClosed):
        h.send({"late": True})
    with pytest.raises(ClientClosed):
        h.stream_filter()
    assert h.stats()["connects"] == 1  # the final counters stay readable


async def test_exit_fails_a_request_waiting_in_another_thread(server: FeedServer) -> None:
    """exit() from one thread makes a request pending in another raise ClientClosed."""
    server.route("slow", lambda params: None, delay=30)
    h: ThreadedClient[Any] = JsonClient.start_in_thread(server.url)
    await asyncio.to_thread(h.wait_connected, 5)
    requesting = asyncio.ensure_future(asyncio.to_thread(h.request, {"method": "slow"}, timeout=10))
    await server.wait_received(1)
    await asyncio.to_thread(h.exit)
    with pytest.raises(ClientClosed):
        await requesting


async def test_context_manager_exits(server: FeedServer) -> None:
    """Leaving `with` exits the client: the server sees the connection closed, the thread is gone."""

    def use() -> ThreadedClient[Any]:
        with JsonClient.start_in_thread(server.url) as h:
            h.wait_connected(5)
            assert h.stats()["connected"]
        return h

    h = await asyncio.to_thread(use)
    assert not h.thread.is_alive()
    await server.wait_open(0)


async def test_blocking_call_from_the_loop_thread_is_refused(handle: ThreadedClient[Any], server: FeedServer) -> None:
    """A handler (in the loop thread) calling a blocking method gets RuntimeError instead of a deadlock."""
    errors: list[BaseException] = []

    def handler(msg: Any) -> None:
        try:
            handle.stats()
        except RuntimeError as exc:
            errors.append(exc)

    await asyncio.to_thread(handle.add_handler, handler, [{"e": "h"}])
    await server.broadcast({"e": "h"})
    await settle_thread(handle, server)
    assert len(errors) == 1 and "loop thread" in str(errors[0])


async def test_events_as_a_blocking_iterator(server: FeedServer) -> None:
    """handle.events() yields Connected, then Disconnected after a drop, and ends after Closed at exit."""
    h: ThreadedClient[Any] = JsonClient.start_in_thread(server.url, backoff_initial=0.01)
    try:
        events = h.events(timeout=5)
        await asyncio.to_thread(h.wait_connected, 5)
        await server.wait_connections(1)
        await server.drop()
        await server.wait_connections(2)
        await asyncio.to_thread(h.wait_connected, 5)
    finally:
        await asyncio.to_thread(h.exit)
    seen = await asyncio.to_thread(list, events)
    assert seen[0] == Connected(1) and isinstance(seen[1], Disconnected)
    assert Connected(2) in seen and seen[-1] == Closed()


async def test_stream_filter_carries_events_in_band(server: FeedServer) -> None:
    """handle.stream_filter(events=True): a drop reads Disconnected, Retrying, Connected(2), then the message."""
    h: ThreadedClient[Any] = JsonClient.start_in_thread(server.url, backoff_initial=0.01)
    try:
        await asyncio.to_thread(h.wait_connected, 5)
        mixed = h.stream_filter([{"n": 1}], events=True, timeout=5)
        await server.drop()
        await server.wait_connections(2)
        await asyncio.to_thread(h.wait_connected, 5)
        await server.broadcast({"n": 1})
        seen = await asyncio.to_thread(lambda: [mixed.get() for _ in range(4)])
    finally:
        await asyncio.to_thread(h.exit)
    assert [type(item) for item in seen[:2]] == [Disconnected, Retrying]
    assert seen[2:] == [Connected(2), {"n": 1}]
