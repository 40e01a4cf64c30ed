"""Floods: a server sending pings or one-byte frames as fast as it can, on every transport.

What must hold (issue "Reliability under hostile servers", item 2): the event
loop never stalls for long (a ticker task that runs every loop iteration keeps
the longest gap it saw, in CPU time, so that a busy machine does not count; the
bound, 0.25 s, is generous: it tells a sliced parse
from a whole read parsed in one callback, which took 1-5 s here), what waits
unparsed stays within one read, another client on the same loop keeps
receiving, and ``exit()`` returns promptly (within 1.5 s) in the middle of a
flood. The flood server is a helper of this file: it runs in a process of its
own, as a remote server would, so that the ticker measures the client's work
only (in a thread, it took the GIL from the client at each of its writes).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosedError

import async_ws_stream.transports._picows as picows_transport
from async_ws_stream import AsyncWsStream
from async_ws_stream.testing import FeedServer
from async_ws_stream.transports import (
    DEFAULT_READ_SIZE,
    DEFAULT_SLICE_SIZE,
    PICOWS_AVAILABLE,
    guard,
    picows_connect,
    websockets_connect,
)
from async_ws_stream.transports._websockets import SlicedReads

from .conftest import JsonClient as FeedClient
from .conftest import settle, transports

PINGS = 500_000
TINY = 300_000
#: Longest gap between two loop iterations a flood may cause.
STALL = 0.25
#: Longest exit() may take in the middle of a flood.
EXIT_WITHIN = 1.5

# -- the flood server ----------------------------------------------------------------------

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
#: Frames of each kind, unmasked (server to client): an empty ping, a one-byte text frame.
FRAMES = {"ping": b"\x89\x00", "tiny": b"\x81\x01x"}
CHUNK = 64 * 1024


class FloodServer:
    """Answers the handshake, then writes ``n`` frames of ``kind`` in 64 KiB chunks, then a text frame "end".

    With ``on_first_frame`` it floods once the client sent a frame (as an
    exchange does after a subscription), else right after its handshake
    response, in the same write. It reads what the client sends meanwhile
    (pongs are dropped); a close frame stops the flood, is echoed, and the
    server closes the TCP connection, as a websockets server would.
    ``flooding`` is set once 1 MiB has gone out (the socket buffers between
    the two are full by then). With ``hang_up`` it
    closes the TCP connection (no close frame) right after "end". ``running()``
    serves from a child process; the same object serves there (``serve_here``).
    """

    def __init__(self, kind: str, n: int, *, on_first_frame: bool = True, hang_up: bool = False) -> None:
        self.kind = kind
        self.hang_up = hang_up
        self.n = n
        self.on_first_frame = on_first_frame
        self.flooding = asyncio.Event()  # in the test's process: the child said so
        self.connections = 0
        self.url = ""
        self._said_flooding = False
        self._handlers: dict[asyncio.StreamWriter, asyncio.Task[None]] = {}

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers[writer] = task
        try:
            request = await reader.readuntil(b"\r\n\r\n")
            key = next(line.split(b":", 1)[1].strip() for line in request.split(b"\r\n")
                       if line.lower().startswith(b"sec-websocket-key:"))
            accept = base64.b64encode(hashlib.sha1(key + _GUID).digest())
            writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                         b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n")
            self.connections += 1
            closing = asyncio.Event()
            go = asyncio.Event()
            if not self.on_first_frame:
                go.set()
            flood = asyncio.create_task(self._flood(writer, go, closing))
            try:
                await self._read(reader, writer, go, closing)
            finally:
                flood.cancel()
                await asyncio.gather(flood, return_exceptions=True)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client went away (or aborted): a flood test expects that of some clients
        finally:
            writer.transport.abort()
            del self._handlers[writer]

    async def _flood(self, writer: asyncio.StreamWriter, go: asyncio.Event, closing: asyncio.Event) -> None:
        await go.wait()
        frame = FRAMES[self.kind]
        per_chunk = CHUNK // len(frame)
        chunk = frame * per_chunk
        sent = 0
        while sent < self.n and not closing.is_set():
            count = min(per_chunk, self.n - sent)
            writer.write(chunk if count == per_chunk else frame * count)
            sent += count
            await writer.drain()
            if not self._said_flooding and (sent * len(frame) >= 2**20 or sent >= self.n // 2):
                self._said_flooding = True
                print("FLOODING", flush=True)
        if not closing.is_set():
            writer.write(b"\x81\x03end")
            await writer.drain()
            if self.hang_up:
                writer.close()

    async def _read(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, go: asyncio.Event,
                    closing: asyncio.Event) -> None:
        """Read the client's frames (masked) until its close frame; echo that and end."""
        buffer = b""
        while True:
            data = await reader.read(CHUNK)
            if not data:
                raise asyncio.IncompleteReadError(buffer, None)
            buffer += data
            at = 0
            # Walk the frame headers only: hundreds of thousands of pongs cost little.
            while len(buffer) - at >= 2:
                opcode, length = buffer[at] & 0x0F, buffer[at + 1] & 0x7F
                start = at + 2
                if length == 126:
                    length, start = int.from_bytes(buffer[start:start + 2], "big"), start + 2
                elif length == 127:
                    length, start = int.from_bytes(buffer[start:start + 8], "big"), start + 8
                end = start + 4 + length
                if end > len(buffer):
                    break
                go.set()
                if opcode == 0x8:
                    mask = buffer[start:start + 4]
                    payload = bytes(b ^ mask[i % 4] for i, b in enumerate(buffer[start + 4:end]))
                    closing.set()
                    writer.write(bytes((0x88, len(payload))) + payload)
                    await writer.drain()
                    return
                at = end
            buffer = buffer[at:]

    async def serve_here(self) -> None:
        """Serve in this process (the child) until stdin closes; print ``PORT n`` first."""
        server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        print("PORT", server.sockets[0].getsockname()[1], flush=True)
        async with server:
            await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until the test closes it
            server.close()
            handlers = list(self._handlers.values())
            for writer in list(self._handlers):
                writer.transport.abort()  # its handler ends on the error that follows
            await asyncio.gather(*handlers, return_exceptions=True)

    @asynccontextmanager
    async def running(self) -> AsyncIterator[FloodServer]:
        """Serve from a child process for the ``async with`` block; return once it has exited."""
        root = str(Path(__file__).resolve().parent.parent)
        code = (f"import asyncio, sys; sys.path.insert(0, {root!r}); from tests.test_floods import FloodServer; "
                f"asyncio.run(FloodServer({self.kind!r}, {self.n}, on_first_frame={self.on_first_frame}, "
                f"hang_up={self.hang_up}).serve_here())")
        child = await asyncio.create_subprocess_exec(sys.executable, "-c", code, stdin=asyncio.subprocess.PIPE,
                                                     stdout=asyncio.subprocess.PIPE)
        assert child.stdin is not None and child.stdout is not None
        stdout = child.stdout

        async def watch() -> None:
            async for line in stdout:
                if line.startswith(b"FLOODING"):
                    self.flooding.set()

        try:
            port = (await asyncio.wait_for(stdout.readline(), 20)).split()[1].decode()
            self.url = f"ws://127.0.0.1:{port}/"
            watcher = asyncio.create_task(watch())
            try:
                yield self
            finally:
                child.stdin.close()
                await asyncio.wait_for(watcher, 10)
        finally:
            if child.returncode is None:
                try:
                    await asyncio.wait_for(child.wait(), 10)
                except TimeoutError:
                    child.kill()
                    await child.wait()


# -- the client side -----------------------------------------------------------------------


class FloodClient(AsyncWsStream[Any]):
    """Frames as they come (str); says "start" on every connection, which is when the server floods."""

    def __init__(self, url: str, transport: str, **options: Any) -> None:
        super().__init__(**options)
        self.url = url
        self.transport = transport

    async def _create_ws(self) -> Any:
        if self.transport == "picows":
            return await picows_connect(self.url, open_timeout=2, close_timeout=1)
        if self.transport == "websockets_connect":
            return await websockets_connect(self.url, open_timeout=2, close_timeout=1)
        return await connect(self.url, open_timeout=2, close_timeout=1)

    async def _on_connect(self, ws: Any) -> None:
        await ws.send("start")

    async def _when2create_new_ws(self) -> None:
        await asyncio.Event().wait()  # never recycled; exit() cancels this

    def _parse_raw_data(self, raw: str | bytes) -> Any:
        return raw


@pytest.fixture(params=transports("websockets", "websockets_connect", "picows"))
def flood_transport(request: pytest.FixtureRequest) -> str:
    """The transport FloodClient opens: plain websockets.connect (guarded by the client), websockets_connect, picows."""
    name: str = request.param
    return name


class Ticker:
    """Runs once per loop iteration; keeps the longest gap between two runs, and the largest ``probe()`` seen.

    Gaps are measured in this thread's CPU time: what the loop did between two
    runs, whatever other processes on a busy machine took meanwhile.
    """

    def __init__(self, probe: Callable[[], int] = lambda: 0) -> None:
        self.worst = 0.0
        self.most = 0
        self.runs = 0
        self._probe = probe

    async def run(self) -> None:
        clock = time.thread_time
        last = clock()
        while True:
            await asyncio.sleep(0)
            now = clock()
            self.worst = max(self.worst, now - last)
            self.most = max(self.most, self._probe())
            self.runs += 1
            last = now


@asynccontextmanager
async def ticking(probe: Callable[[], int] = lambda: 0) -> AsyncIterator[Ticker]:
    ticker = Ticker(probe)
    task = asyncio.create_task(ticker.run())
    try:
        yield ticker
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


def unparsed(client: AsyncWsStream[Any]) -> Callable[[], int]:
    """Bytes read but not yet parsed on the client's websockets connection (0 on picows or between connections)."""

    def probe() -> int:
        ws = client.present_ws
        protocol = getattr(getattr(ws, "transport", None), "get_protocol", lambda: None)()
        if not isinstance(protocol, SlicedReads):
            return 0
        return sum(map(len, protocol._backlog)) - protocol._offset

    return probe


def read_size(transport: str) -> int:
    return DEFAULT_READ_SIZE if transport == "websockets_connect" else 256 * 1024


# -- the tests -----------------------------------------------------------------------------


@pytest.mark.timeout(60)
async def test_a_ping_flood_never_stalls_the_loop(flood_transport: str) -> None:
    """500,000 pings: no loop iteration over 0.25 s, unparsed bytes within one read, another client served."""
    async with FloodServer("ping", PINGS).running() as flood, FeedServer() as feed:
        other = FeedClient(feed.url)
        client = FloodClient(flood.url, flood_transport)
        try:
            await other.wait_connected(timeout=5)
            end = client.expect(lambda m: m == "end", timeout=50)
            async with ticking(unparsed(client)) as ticker:
                await asyncio.wait_for(flood.flooding.wait(), 5)
                for _ in range(3):
                    await settle(other, feed)  # the other client keeps getting its messages meanwhile
                await end
        finally:
            await asyncio.gather(client.exit(), other.exit())
    assert ticker.worst < STALL, f"the loop stalled for {ticker.worst:.3f} s"
    assert ticker.most <= read_size(flood_transport) + DEFAULT_SLICE_SIZE


async def test_a_flood_of_one_byte_frames_never_stalls_the_loop(flood_transport: str) -> None:
    """300,000 one-byte frames: all reach the consumer, in order, with no loop iteration over 0.25 s."""
    async with FloodServer("tiny", TINY).running() as flood:
        client = FloodClient(flood.url, flood_transport)
        stream = client.stream_filter()
        got = 0
        try:
            async with ticking(unparsed(client)) as ticker:
                async for message in stream:
                    if message == "end":
                        break
                    assert message == "x"
                    got += 1
        finally:
            await client.exit()
    assert got == TINY
    assert ticker.worst < STALL, f"the loop stalled for {ticker.worst:.3f} s"
    assert ticker.most <= read_size(flood_transport) + DEFAULT_SLICE_SIZE
    assert client.stats()["dropped"] == 0


async def test_exit_is_prompt_in_the_middle_of_a_ping_flood(flood_transport: str) -> None:
    """exit() while the server floods pings returns within 1.5 s (it took 4-5 s while whole reads were parsed)."""
    async with FloodServer("ping", 100_000_000).running() as flood:
        client = FloodClient(flood.url, flood_transport)
        await client.wait_connected(timeout=5)
        await asyncio.wait_for(flood.flooding.wait(), 5)
        started = time.perf_counter()
        await client.exit()
        took = time.perf_counter() - started
    assert took < EXIT_WITHIN, f"exit() took {took:.2f} s"


async def test_websockets_connect_is_guarded_from_the_handshake_on() -> None:
    """Frames that come in the same read as the handshake response are sliced too: no stall over 0.25 s."""
    async with FloodServer("ping", PINGS // 2, on_first_frame=False).running() as flood:
        async with ticking() as ticker:
            ws = await websockets_connect(flood.url, open_timeout=5)
            try:
                assert await asyncio.wait_for(ws.recv(), 30) == "end"
            finally:
                await ws.close()
    assert ticker.worst < STALL, f"the loop stalled for {ticker.worst:.3f} s"


async def test_an_end_of_stream_behind_a_backlog_comes_after_it() -> None:
    """The server sends 100,000 frames and hangs up: every frame arrives, then the connection ends (no close frame)."""
    async with FloodServer("tiny", 100_000, on_first_frame=False, hang_up=True).running() as flood:
        ws = await websockets_connect(flood.url, slice_size=4096, open_timeout=5, max_queue=None)
        got = 0
        with pytest.raises(ConnectionClosedError) as closed:
            while await asyncio.wait_for(ws.recv(), 10) == "x":
                got += 1
            await ws.recv()
    assert got == 100_000
    assert closed.value.rcvd is None


@pytest.mark.skipif(not PICOWS_AVAILABLE, reason="picows is not installed")
async def test_picows_reads_shrink_under_a_flood_of_tiny_frames(monkeypatch: pytest.MonkeyPatch) -> None:
    """A read that brings more than READ_MESSAGES messages makes the next reads smaller; every frame still arrives."""
    monkeypatch.setattr(picows_transport, "READ_MESSAGES", 1000)
    async with FloodServer("tiny", 100_000, on_first_frame=False).running() as flood:
        ws = await picows_connect(flood.url, open_timeout=5, max_queue=None)
        read_guard = ws.transport.get_protocol()
        smallest = read_guard._cap
        got = 0
        try:
            while (message := await asyncio.wait_for(ws.recv(), 10)) == "x":
                got += 1
                smallest = min(smallest, read_guard._cap)
        finally:
            await ws.close()
    assert message == "end" and got == 100_000
    assert smallest < 1000 * len(FRAMES["tiny"]) * 2  # about READ_MESSAGES frames' worth, not 4 MiB


# -- guard() -------------------------------------------------------------------------------


async def test_guard_is_idempotent_and_keeps_what_it_was_given() -> None:
    """A second guard() keeps the same adapter and its slice size; it returns the connection."""
    async with FeedServer() as feed:
        ws = await connect(feed.url)
        try:
            assert guard(ws, slice_size=1024) is ws
            protocol = ws.transport.get_protocol()
            assert isinstance(protocol, SlicedReads) and protocol.inner is ws
            assert guard(ws) is ws
            assert ws.transport.get_protocol() is protocol and protocol._slice == 1024
            await settle_ws(ws, feed)
        finally:
            await ws.close()


async def settle_ws(ws: Any, feed: FeedServer) -> None:
    """A message broadcast now reaches ``ws``."""
    await feed.wait_open(1)
    await feed.broadcast({"n": 1})
    assert json.loads(await asyncio.wait_for(ws.recv(), 5)) == {"n": 1}


async def test_guard_leaves_what_it_does_not_know_alone(logs: list[str]) -> None:
    """A picows connection (guarded by picows_connect) or any other object: returned as it is, with a DEBUG log."""
    thing = object()
    assert guard(thing) is thing
    assert any("guard: object is not a websockets connection" in line for line in logs)
    if PICOWS_AVAILABLE:
        async with FeedServer() as feed:
            conn = await picows_connect(feed.url)
            try:
                protocol = conn.transport.get_protocol()
                assert guard(conn) is conn and conn.transport.get_protocol() is protocol
            finally:
                await conn.close()


@pytest.mark.parametrize(("options", "error", "words"), [
    ({"slice_size": 0}, ValueError, "guard: slice_size must be an int >= 1 or None, got 0"),
    ({"slice_size": 1.5}, TypeError, "guard: slice_size must be an int >= 1 or None, got float 1.5"),
    ({"read_size": "4MiB"}, TypeError, "guard: read_size must be an int >= 1 or None .*got str '4MiB'"),
])
def test_guard_refuses_bad_sizes(options: dict[str, Any], error: type[Exception], words: str) -> None:
    """Wrong type: TypeError; out of range: ValueError; the message names the function, the option, the value."""
    with pytest.raises(error, match=words):
        guard(object(), **options)
