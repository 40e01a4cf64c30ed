"""The receive loop takes what websockets already queued without an await each; anything else goes to recv()."""

from __future__ import annotations

import json
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection

from async_ws_stream import Disconnected
from async_ws_stream.testing import FeedServer
from async_ws_stream.transports import (
    PICOWS_AVAILABLE,
    picows_connect,
    websockets_connect,
)
from async_ws_stream.transports._queued import queued_reader

from .conftest import JsonClient

pytestmark = pytest.mark.single_transport  # each test picks its connection itself


async def test_websockets_connections_still_have_the_queue_the_loop_reads(server: FeedServer) -> None:
    """If websockets moves its receive queue, this fails (the loop then falls back to recv() alone, slower)."""
    async with connect(server.url) as ws:
        take = queued_reader(ws)
        assert take is not None, "websockets' Connection.recv_messages.frames.queue changed shape"
        await server.wait_connections(1)
        # One write, so one read: when recv() has the first frame, the second is queued behind it.
        server.connections[0].transport.write(_frame(0x81, b'{"a":1}') + _frame(0x82, b"\x00\x01"))
        assert await ws.recv() == '{"a":1}'
        assert take() == b"\x00\x01" and take() is None
    ws2 = await websockets_connect(server.url)
    try:
        assert queued_reader(ws2) is not None
    finally:
        await ws2.close()
    assert queued_reader(object()) is None


async def test_fragments_and_whole_frames_in_one_burst_arrive_whole_and_in_order(server: FeedServer) -> None:
    """A fragmented message amid whole ones is left to recv(), which reassembles it; order is kept."""

    async def burst(conn: ServerConnection) -> None:
        await conn.send(json.dumps({"n": 0}))
        await conn.send([json.dumps({"n": 1, "pad": "x" * 10})[:5], json.dumps({"n": 1, "pad": "x" * 10})[5:]])
        for n in range(2, 200):
            await conn.send(json.dumps({"n": n}))

    client = JsonClient(server.url)
    stream = client.stream_filter()
    try:
        await client.wait_connected(timeout=5)
        await burst(server.connections[0])
        assert [(await anext(stream))["n"] for _ in range(200)] == list(range(200))
    finally:
        await client.exit()


async def test_text_that_is_not_utf8_still_closes_with_1007_after_the_messages_before_it(server: FeedServer) -> None:
    """An invalid text frame is left to recv(), which fails the connection with 1007; what came before arrives."""
    client = JsonClient(server.url)
    stream = client.stream_filter()
    events = client.events()
    try:
        await client.wait_connected(timeout=5)
        conn = server.connections[0]
        for n in range(50):
            await conn.send(json.dumps({"n": n}))
        # websockets' server checks nothing it sends: a raw text frame with a lone continuation byte.
        conn.transport.write(b"\x81\x01\x80")
        assert [(await anext(stream))["n"] for _ in range(50)] == list(range(50))
        async for event in events:
            if isinstance(event, Disconnected):
                assert "1007" in event.cause
                break
    finally:
        await client.exit()


async def test_a_burst_far_past_websockets_max_queue_arrives_whole(server: FeedServer) -> None:
    """Taking frames keeps websockets' flow control going: with max_queue=4, 5,000 messages all arrive, in order."""

    class Small(JsonClient):
        async def _create_ws(self) -> Any:
            return await connect(self.url, max_queue=4)

    client = Small(server.url)
    stream = client.stream_filter(maxsize=10_000)
    try:
        await client.wait_connected(timeout=5)
        await server.publish({"n": n} for n in range(5000))
        assert [(await anext(stream))["n"] for _ in range(5000)] == list(range(5000))
        assert client.stats()["frames"] == 5000
    finally:
        await client.exit()


@pytest.mark.skipif(not PICOWS_AVAILABLE, reason="picows is not installed (extra 'fast')")
async def test_picows_connections_are_taken_from_their_own_buffer(server: FeedServer) -> None:
    """A PicowsConnection's buffered messages come from recv_nowait(), None when empty; the end stays recv()'s."""
    ws = await picows_connect(server.url)
    try:
        assert queued_reader(ws) == ws.recv_nowait
        await server.wait_connections(1)
        server.connections[0].transport.write(b"".join(_frame(0x81, b'{"n":%d}' % n) for n in range(3)))
        assert json.loads(await ws.recv()) == {"n": 0}
        got = [ws.recv_nowait(), ws.recv_nowait()]
        assert got == ['{"n":1}', '{"n":2}'] and ws.recv_nowait() is None
        server.drop()
        assert ws.recv_nowait() is None  # never raises: recv() reports the end
    finally:
        await ws.close()


def _frame(first_byte: int, payload: bytes) -> bytes:
    """One unmasked server frame with a payload under 126 bytes (0x81 text, 0x82 binary)."""
    return bytes((first_byte, len(payload))) + payload
