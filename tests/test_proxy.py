"""FaultProxy between a real AsyncWsStream client and a FeedServer: every fault does what it says."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidMessage

from async_ws_stream import RetriesExhausted
from async_ws_stream.testing import FaultProxy, FeedServer

from .conftest import JsonClient, settle
from .tls import client_context

# A wait that is expected to end with nothing arriving (see test_testing.py).
QUIET = 0.15
# asyncio may wake a timer up to its clock resolution early; lower bounds allow for it.
EARLY = 0.01


@pytest.fixture
async def proxy(server: FeedServer) -> AsyncIterator[FaultProxy]:
    async with FaultProxy(server.url) as p:
        yield p


def through(proxy: FaultProxy, **options: Any) -> JsonClient:
    """A client that connects through the proxy, with quick retries."""
    return JsonClient(proxy.url_for("/ws?via=proxy"), backoff_initial=0.01, backoff_max=0.05, **options)


async def test_passes_requests_and_streams_unchanged(server: FeedServer, proxy: FaultProxy) -> None:
    """Without faults the client talks to the server as if directly; bytes are counted both ways."""
    server.route("echo", lambda params: params)
    client = through(proxy)
    try:
        stream = client.stream_filter([{"e": "trade"}])
        reply = await client.request({"method": "echo", "params": [1, "a"]}, timeout=5)
        assert reply["result"] == [1, "a"]
        await server.broadcast({"e": "trade", "p": "1.5"})
        assert (await anext(stream))["p"] == "1.5"
        assert server.paths == ["/ws?via=proxy"]
        await proxy.wait_forwarded(1, "both")
        stats = proxy.stats()
        assert stats["connects"] == 1 and stats["open"] == 1
        assert stats["to_server"]["forwarded"] > 0 and stats["to_client"]["forwarded"] > 0
    finally:
        await client.exit()


async def test_one_byte_writes_keep_messages_intact(server: FeedServer, proxy: FaultProxy) -> None:
    """With write_size=1 both ways every byte goes in its own write, and every message arrives whole."""
    server.route("echo", lambda params: params)
    client = through(proxy)
    try:
        await client.wait_connected(timeout=5)
        proxy.set(write_size=1)
        before = proxy.stats()
        stream = client.stream_filter([{"e": "trade"}])
        reply = await client.request({"method": "echo", "params": {"text": "héllo" * 20}}, timeout=5)
        assert reply["result"] == {"text": "héllo" * 20}
        sent = [{"e": "trade", "i": i, "pad": "x" * i} for i in range(30)]
        for msg in sent:
            await server.broadcast(msg)
        assert [await anext(stream) for _ in sent] == sent
        after = proxy.stats()
        for direction in ("to_server", "to_client"):
            forwarded = after[direction]["forwarded"] - before[direction]["forwarded"]
            writes = after[direction]["writes"] - before[direction]["writes"]
            assert forwarded > 0 and writes == forwarded
        assert client.stats()["parse_errors"] == 0
    finally:
        await client.exit()


async def test_latency_shows_in_a_request_round_trip(server: FeedServer, proxy: FaultProxy) -> None:
    """A request's round trip through latency L each way takes at least 2 L."""
    latency = 0.05
    client = through(proxy)
    try:
        await client.wait_connected(timeout=5)
        proxy.set(latency=latency)
        assert proxy.faults("to_client").latency == latency
        started = time.monotonic()
        await client.request({"method": "SUBSCRIBE", "params": ["a@trade"]}, timeout=5)
        assert time.monotonic() - started >= 2 * latency - EARLY
    finally:
        await client.exit()


async def test_jitter_never_reorders(server: FeedServer) -> None:
    """Chunks held for random extra delays still arrive in the order they were sent."""
    async with FaultProxy(server.url, seed=7) as proxy:
        client = through(proxy)
        try:
            stream = client.stream_filter([{"e": "seq"}])
            await client.wait_connected(timeout=5)
            proxy.set("to_client", latency=0.001, jitter=0.02)
            for i in range(40):
                await server.broadcast({"e": "seq", "i": i})
                await asyncio.sleep(0)  # separate reads, so each gets its own jitter
            assert [(await anext(stream))["i"] for _ in range(40)] == list(range(40))
        finally:
            await client.exit()


async def test_bandwidth_limit_paces_a_large_message(server: FeedServer, proxy: FaultProxy) -> None:
    """20 KB at 80 KB/s takes at least about a quarter of a second, in many paced writes."""
    client = through(proxy)
    try:
        stream = client.stream_filter([{"e": "big"}])
        await client.wait_connected(timeout=5)
        proxy.set("to_client", bandwidth=80_000)
        writes = proxy.stats()["to_client"]["writes"]
        started = time.monotonic()
        await server.broadcast({"e": "big", "blob": "x" * 20_000})
        assert len((await anext(stream))["blob"]) == 20_000
        # The first piece (10 ms worth) goes at once; the rest is paced.
        assert time.monotonic() - started >= (20_000 - 800) / 80_000 - EARLY
        assert proxy.stats()["to_client"]["writes"] - writes >= 20
    finally:
        await client.exit()


async def test_half_open_to_client_is_caught_by_idle_timeout(server: FeedServer, proxy: FaultProxy) -> None:
    """A connection gone silent towards the client keeps its sockets open; idle_timeout makes the client reconnect."""
    client = through(proxy, idle_timeout=0.3)
    try:
        stream = client.stream_filter([{"e": "tick"}])
        await client.wait_connected(timeout=5)
        assert proxy.half_open("to_client") == 1
        assert await server.broadcast({"e": "tick", "n": 1}) == 1
        await proxy.wait_until(lambda: proxy.stats()["to_client"]["discarded"] > 0)
        assert server.open_connections == 1  # the server's socket is open: nothing told it
        await server.wait_connections(2)  # the client gave up on the silent one; the new one is clean
        await client.wait_connected(timeout=5)
        await server.broadcast({"e": "tick", "n": 2})
        assert (await anext(stream))["n"] == 2  # n=1 vanished
        assert client.stats()["reconnects"] == 1
    finally:
        await client.exit()


async def test_partition_holds_until_lifted(server: FeedServer, proxy: FaultProxy) -> None:
    """set(black_hole=True) silences new connections too; once lifted, the client gets through."""
    client = through(proxy, idle_timeout=0.3)
    try:
        stream = client.stream_filter([{"e": "tick"}])
        await client.wait_connected(timeout=5)
        proxy.set("to_client", black_hole=True)
        assert proxy.faults("to_client").black_hole
        await proxy.wait_connections(2)  # the client gave up on connection 1 and dialled again
        await server.wait_connections(2)  # the server accepted it, but its answer vanished
        assert not client.stats()["connected"]
        proxy.set("to_client", black_hole=False)
        proxy.reset_all()  # end the handshake whose answer was swallowed, rather than wait for its timeout
        await client.wait_connected(timeout=5)
        await server.broadcast({"e": "tick", "n": 2})
        assert (await anext(stream))["n"] == 2
    finally:
        await client.exit()


async def test_half_open_to_server_swallows_what_the_client_sends(server: FeedServer, proxy: FaultProxy) -> None:
    """Black-holing the client's direction: its frames never reach the server, yet both sockets stay open."""
    client = through(proxy)
    try:
        await client.wait_connected(timeout=5)
        proxy.set("to_server", black_hole=True)
        await client.send({"method": "hello"})
        await proxy.wait_until(lambda: proxy.stats()["to_server"]["discarded"] > 0)
        with pytest.raises(TimeoutError):
            await server.wait_received(1, timeout=QUIET)
        assert (server.open_connections, proxy.open_connections) == (1, 1)
        await settle(client, server)  # the other direction still flows
    finally:
        proxy.set("to_server", black_hole=False)
        await client.exit()


async def test_reset_mid_frame_loses_the_frame_and_the_client_reconnects(
    server: FeedServer, proxy: FaultProxy
) -> None:
    """reset_after(K) forwards exactly K more bytes, then RSTs; the cut frame is never delivered."""
    client = through(proxy)
    try:
        stream = client.stream_filter([{"e": "tick"}])
        await client.wait_connected(timeout=5)
        before = proxy.forwarded("to_client")
        proxy.reset_after(10, "to_client")
        assert proxy.pending_faults == 1
        await server.broadcast({"e": "tick", "n": 1, "pad": "x" * 200})
        await proxy.wait_resets(1)
        assert proxy.forwarded("to_client") - before == 10
        assert proxy.pending_faults == 0
        await server.wait_connections(2)
        await client.wait_connected(timeout=5)
        await server.broadcast({"e": "tick", "n": 2})
        assert (await anext(stream))["n"] == 2
        assert client.stats()["reconnects"] == 1
    finally:
        await client.exit()


async def test_reset_at_accept_counts_as_failed_attempts(server: FeedServer, proxy: FaultProxy) -> None:
    """Two connections reset right after accept are two retries; the server never sees them."""
    proxy.reset_next(2)
    client = through(proxy, max_retries=2)
    try:
        await client.wait_connected(timeout=5)
        assert client.stats()["retries"] == 2
        assert client.stats()["connects"] == 1
        assert (proxy.connects, proxy.resets, server.handshakes) == (3, 2, 1)
    finally:
        await client.exit()


async def test_reset_at_accept_exhausts_retries(server: FeedServer, proxy: FaultProxy) -> None:
    """With more resets queued than retries allowed, the client gives up."""
    proxy.reset_next(10)
    client = through(proxy, max_retries=2)
    try:
        with pytest.raises(RetriesExhausted):
            await client.wait_connected(timeout=5)
        assert proxy.resets == 3 and server.handshakes == 0
    finally:
        await client.exit()


async def test_delay_next_holds_the_handshake(server: FeedServer, proxy: FaultProxy) -> None:
    """A held connection reaches the server only after the hold; the client connects late."""
    hold = 0.2
    proxy.delay_next(1, hold)
    started = time.monotonic()
    client = through(proxy)
    try:
        await proxy.wait_connections(1)
        assert server.handshakes == 0
        await client.wait_connected(timeout=5)
        assert time.monotonic() - started >= hold - EARLY
        assert server.handshakes == 1 and proxy.pending_faults == 0
    finally:
        await client.exit()


async def test_reset_all_breaks_every_connection(server: FeedServer, proxy: FaultProxy) -> None:
    """reset_all RSTs the open connection; the client reconnects through the proxy."""
    client = through(proxy)
    try:
        await client.wait_connected(timeout=5)
        assert proxy.reset_all() == 1
        await proxy.wait_resets(1)
        await server.wait_connections(2)
        await settle(client, server)
        assert client.stats()["reconnects"] == 1
    finally:
        await client.exit()


@pytest.mark.single_transport
async def test_tls_passes_through_byte_by_byte(tls_url: str) -> None:
    """The proxy forwards TLS untouched: a wss:// handshake and greeting survive 1-byte writes."""
    async with FaultProxy(tls_url) as proxy:
        proxy.set(write_size=1)
        async with connect(proxy.url_for("/", scheme="wss"), ssl=client_context(), open_timeout=5) as ws:
            assert await ws.recv() == "hello"
        assert proxy.stats()["to_client"]["writes"] == proxy.forwarded("to_client")


@pytest.mark.single_transport
async def test_close_is_idempotent_and_leaves_nothing(server: FeedServer) -> None:
    """close() twice ends every connection and every task of the proxy."""
    before = asyncio.all_tasks()
    proxy = await FaultProxy(server.url).start()
    async with connect(proxy.url, open_timeout=2) as ws:
        await server.wait_connections(1)
        proxy.set(latency=0.5)  # bytes in flight, held by a sleeping task
        await ws.send("held")
        await proxy.close()
        await proxy.close()
        await ws.wait_closed()
    assert proxy.open_connections == 0
    assert asyncio.all_tasks() == before
    with pytest.raises(OSError):
        await connect(proxy.url, open_timeout=1)
    with pytest.raises(RuntimeError, match="closed"):
        await proxy.start()


@pytest.mark.single_transport
async def test_close_cuts_a_hold_short_and_survives_cancellation(server: FeedServer) -> None:
    """close() ends a connection held by delay_next at once; a cancelled close() still finishes."""
    before = asyncio.all_tasks()
    proxy = await FaultProxy(server.url).start()
    proxy.delay_next(1, 30)
    dialing = asyncio.ensure_future(connect(proxy.url, open_timeout=5))
    await proxy.wait_connections(1)
    closing = asyncio.ensure_future(proxy.close())
    await asyncio.sleep(0)
    closing.cancel()
    async with asyncio.timeout(2):
        await proxy.close()
        with pytest.raises(InvalidMessage):  # the handshake never got an answer
            await dialing
    assert server.handshakes == 0
    assert asyncio.all_tasks() == before


@pytest.mark.single_transport
async def test_bad_settings_fail_with_the_value() -> None:
    """Bad directions, values and upstreams are refused up front, naming what was wrong."""
    with pytest.raises(ValueError, match="upstream.*'nowhere'"):
        FaultProxy("nowhere")
    proxy = FaultProxy(("127.0.0.1", 9))
    with pytest.raises(ValueError, match="direction.*'up'"):
        proxy.set("up", latency=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="latency.*-1"):
        proxy.set(latency=-1)
    with pytest.raises(ValueError, match="write_size"):
        proxy.set(write_size=0)
    with pytest.raises(ValueError, match="bandwidth"):
        proxy.set(bandwidth=0)
    with pytest.raises(TypeError, match="black_hole"):
        proxy.set(black_hole="yes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="nbytes"):
        proxy.reset_after(-1)
    proxy.set("to_server", latency=0.1, write_size=1)
    assert proxy.faults("to_client").latency == 0.0  # a failed set changed nothing; one direction only
    proxy.clear()
    assert proxy.faults("to_server").write_size is None
