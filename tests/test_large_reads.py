"""websockets_connect: websockets' own connection, reading more than asyncio's 256 KiB at once.

Each test holds the socket unread while the server sends, so a known backlog
waits in it, then watches the reads reach the connection (``data_received``,
the boundary between asyncio and websockets). The chaos and burst tests run the
whole client on this transport too.
"""

from __future__ import annotations

import asyncio

import pytest
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosedError, ConnectionClosedOK

import async_ws_stream.transports._websockets as websockets_transport
from async_ws_stream.testing import FeedServer
from async_ws_stream.transports import DEFAULT_READ_SIZE, websockets_connect

from .conftest import hold_unread
from .tls import client_context

FRAMES = 400  # of about 100 bytes: 40 kB
PAD = "x" * 85


def record_reads(ws: ClientConnection) -> list[int]:
    """Make ``ws`` note the size of every read it is handed; return the list it fills."""
    sizes: list[int] = []
    data_received = ws.data_received

    def spy(data: bytes) -> None:
        sizes.append(len(data))
        data_received(data)

    ws.data_received = spy  # type: ignore[method-assign]
    return sizes


async def backlog(ws: ClientConnection, server: FeedServer) -> list[int]:
    """Let FRAMES frames wait in the socket, then read them all; return the reads' sizes."""
    await server.wait_connections(1)
    sizes = record_reads(ws)
    await hold_unread(ws.transport, server, lambda: server.publish({"n": n, "pad": PAD} for n in range(FRAMES)))
    got = [(await ws.recv())[5:].split(",")[0] for _ in range(FRAMES)]
    assert got == [str(n) for n in range(FRAMES)], "lost or reordered"
    return sizes


async def test_the_read_buffer_doubles_while_reads_fill_it(
    server: FeedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Scaled down (asyncio's 256 KiB made 4 KiB): reads of 4, 8 then 16 KiB, never more than read_size."""
    monkeypatch.setattr(websockets_transport, "ASYNCIO_READ_SIZE", 4096)
    ws = await websockets_connect(server.url, read_size=16384)
    try:
        sizes = await backlog(ws, server)
    finally:
        await ws.close()
    assert sizes[:3] == [4096, 8192, 16384]
    assert max(sizes) == 16384 and sum(sizes) > 40_000


async def test_read_size_caps_every_read(server: FeedServer) -> None:
    """read_size=4096: a 40 kB backlog comes in reads of at most 4 KiB."""
    ws = await websockets_connect(server.url, read_size=4096)
    try:
        sizes = await backlog(ws, server)
    finally:
        await ws.close()
    assert max(sizes) == 4096 and len(sizes) >= 10


async def test_a_quiet_connection_keeps_asyncios_read_size(server: FeedServer) -> None:
    """With the default read_size, a read that does not fill 256 KiB takes what waits and the buffer stays."""
    ws = await websockets_connect(server.url, slice_size=DEFAULT_READ_SIZE)
    try:
        sizes = await backlog(ws, server)
        assert sizes == [sum(sizes)] and sizes[0] < 256 * 1024  # the whole backlog, in one read
        assert len(ws.transport.get_protocol().get_buffer(-1)) == 256 * 1024
    finally:
        await ws.close()
    assert DEFAULT_READ_SIZE > 256 * 1024


async def test_closes_and_drops_reach_the_connection(server: FeedServer) -> None:
    """A clean close from the server, an abrupt drop, and our own close all work as on websockets.connect."""
    ws = await websockets_connect(server.url)
    await server.wait_connections(1)
    await server.close_all(1001, "going away")
    with pytest.raises(ConnectionClosedOK) as closed:
        await ws.recv()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001

    ws = await websockets_connect(server.url)
    await server.wait_open(1)
    await server.drop()
    with pytest.raises(ConnectionClosedError) as dropped:
        await ws.recv()
    assert dropped.value.rcvd is None

    ws = await websockets_connect(server.url)
    await server.wait_open(1)
    [conn] = [c for c in server.connections if c.state.name == "OPEN"]
    await ws.close()
    await conn.wait_closed()
    assert conn.close_code == 1000


async def test_options_go_to_websockets_connect(server: FeedServer) -> None:
    """Headers and the like reach websockets.connect unchanged."""
    ws = await websockets_connect(server.url, additional_headers={"X-Feed-Key": "k1"}, open_timeout=2)
    try:
        await server.wait_connections(1)
        [conn] = server.connections
        assert conn.request is not None and conn.request.headers["X-Feed-Key"] == "k1"
    finally:
        await ws.close()


@pytest.mark.parametrize(("read_size", "error"), [(0, ValueError), (-1, ValueError), (1.5, TypeError),
                                                  (True, TypeError), ("1MiB", TypeError), (None, TypeError)])
async def test_a_bad_read_size_is_refused_before_connecting(read_size: object, error: type[Exception]) -> None:
    """Wrong type: TypeError; an int below 1: ValueError; the message names the function, the option and the value."""
    with pytest.raises(error, match=rf"websockets_connect: read_size must be an int >= 1 .*got .*{read_size!r}"):
        await websockets_connect("ws://127.0.0.1:9/", read_size=read_size)  # type: ignore[arg-type]


async def test_over_tls_the_guard_is_in_place_too(tls_url: str) -> None:
    """asyncio's TLS transport allows set_protocol: wss:// connections are sliced as well, and messages flow."""
    ws = await websockets_connect(tls_url, ssl=client_context())
    try:
        protocol = ws.transport.get_protocol()
        assert isinstance(protocol, websockets_transport.SlicedReads) and protocol.inner is ws
        assert await asyncio.wait_for(ws.recv(), 5) == "hello"
    finally:
        await ws.close()
