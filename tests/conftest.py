"""Shared fixtures: a real FeedServer on loopback and a small JSON client subclass.

Client-level tests (those using the ``client`` fixture, and every test of a module
that uses ``JsonClient``) run once per transport: ``[websockets]`` and ``[picows]``.
The autouse ``transport`` fixture sets which one ``JsonClient._create_ws`` opens;
without picows installed the ``[picows]`` runs skip, saying why. Mark a test
``single_transport`` to run it on websockets only. A test that parametrises
``transport`` itself may also name ``websockets_connect`` (websockets with the
large reads of ``async_ws_stream.transports.websockets_connect``): the chaos and
burst tests run on all three.
"""

from __future__ import annotations

import array
import asyncio
import fcntl
import json
import termios
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
from loguru import logger
from websockets.asyncio.client import connect

from async_ws_stream import AsyncWsStream
from async_ws_stream.testing import FeedServer, TopicFeed
from async_ws_stream.transports import (
    PICOWS_AVAILABLE,
    picows_connect,
    websockets_connect,
)

from .tls import serve_tls

TRANSPORTS = ("websockets", "picows")
EVERY_TRANSPORT = (*TRANSPORTS, "websockets_connect")


class JsonClient(AsyncWsStream[Any]):
    """The smallest useful subclass: JSON frames, recycled when the test says so."""

    #: One of EVERY_TRANSPORT: what _create_ws opens (set per test by the transport fixture).
    transport: ClassVar[str] = "websockets"

    def __init__(self, url: str, **options: Any) -> None:
        super().__init__(**options)
        # Set after super().__init__(): the hooks must still see it.
        self.url = url
        self.recycle_now = asyncio.Event()

    async def _create_ws(self) -> Any:
        if self.transport == "picows":
            return await picows_connect(self.url, open_timeout=2, close_timeout=1)
        if self.transport == "websockets_connect":
            return await websockets_connect(self.url, open_timeout=2, close_timeout=1)
        return await connect(self.url, open_timeout=2, close_timeout=1)

    async def _when2create_new_ws(self) -> None:
        await self.recycle_now.wait()
        self.recycle_now.clear()

    def _parse_raw_data(self, raw: str | bytes) -> Any:
        return json.loads(raw)


class VenueClient(JsonClient):
    """JsonClient with Binance's subscription messages: SUBSCRIBE/UNSUBSCRIBE requests."""

    def _subscribe_message(self, topics: list[Any]) -> Any:
        return {"method": "SUBSCRIBE", "params": topics}

    def _unsubscribe_message(self, topics: list[Any]) -> Any:
        return {"method": "UNSUBSCRIBE", "params": topics}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "single_transport: run a client-level test on websockets only")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Run every client-level test once per transport."""
    client_level = "client" in metafunc.fixturenames or getattr(metafunc.module, "JsonClient", None) is JsonClient
    if not client_level or metafunc.definition.get_closest_marker("single_transport") is not None:
        return
    if any("transport" in marker.args[0] for marker in metafunc.definition.iter_markers("parametrize")):
        return  # the test chooses its transports itself
    metafunc.parametrize("transport", transports(*TRANSPORTS), indirect=True)


def transports(*names: str) -> list[Any]:
    """Parameters for the ``transport`` fixture; picows skips, saying why, when it is not installed."""
    skip_picows = pytest.mark.skipif(
        not PICOWS_AVAILABLE,
        reason="picows is not installed; pip install 'async_ws_stream[fast]' to test the fast transport",
    )
    return [pytest.param(name, marks=skip_picows if name == "picows" else ()) for name in names]


@pytest.fixture(autouse=True)
def transport(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The transport JsonClient opens in this test: "websockets" unless parametrised to "picows"."""
    name: str = getattr(request, "param", "websockets")
    monkeypatch.setattr(JsonClient, "transport", name)
    return name


@pytest.fixture
async def server() -> AsyncIterator[FeedServer]:
    async with FeedServer() as feed:
        yield feed


@pytest.fixture
async def feed(server: FeedServer) -> TopicFeed:
    """The venue's subscription rules (Binance's numbers) on the test's server."""
    return TopicFeed(server)


@pytest.fixture
async def client(server: FeedServer) -> AsyncIterator[JsonClient]:
    c = JsonClient(server.url, backoff_initial=0.01, backoff_max=0.05)
    try:
        yield c
    finally:
        await c.exit()


@pytest.fixture
async def tls_url(tmp_path: Path) -> AsyncIterator[str]:
    """A wss:// server on loopback that greets every client with "hello" (trust it with tls.client_context())."""
    async for url in serve_tls(tmp_path):
        yield url


@pytest.fixture
def logs() -> Iterator[list[str]]:
    """Every log line of the library, formatted, while the test runs."""
    lines: list[str] = []
    logger.enable("async_ws_stream")
    sink = logger.add(lambda m: lines.append(str(m)), level="DEBUG", format="{level} {message}")
    try:
        yield lines
    finally:
        logger.remove(sink)
        logger.disable("async_ws_stream")


async def settle(client: AsyncWsStream[Any], server: FeedServer, marker: Any = None) -> Any:
    """Broadcast a marker and wait until the client dispatched it: everything sent before is dispatched too."""
    marker = marker or {"marker": id(object())}
    waiting = client.expect(marker, timeout=5)
    await server.broadcast(marker)
    return await waiting


async def eventually(
    predicate: Callable[[], bool],
    *,
    timeout: float = 10.0,
    interval: float = 0.005,
    what: str | Callable[[], str] = "the condition",
) -> None:
    """Return once ``predicate()`` holds, looking every ``interval`` seconds; fail the test after ``timeout``.

    Only for state that signals no event to wait on (a file descriptor closing, the
    kernel's socket queues, a transport's reading flag, another process's screen, a
    broker's count). Everything the library does, a test waits for on an event.
    """
    try:
        async with asyncio.timeout(timeout):
            while not predicate():
                await asyncio.sleep(interval)
    except TimeoutError:
        raise AssertionError(f"{what() if callable(what) else what} did not hold within {timeout} s") from None


async def hold_unread(transport: Any, server: FeedServer, send: Callable[[], Awaitable[object]]) -> None:
    """Run ``send`` while ``transport`` does not read; return once all of it waits in the client's socket.

    That is when every server connection has an empty write buffer and the
    kernel holds none of its bytes unacknowledged. Nothing signals that, so
    this polls for it. The next read then finds the whole backlog at once: one
    read, as far as the read size allows.
    """
    transport.pause_reading()
    try:
        await send()

        def unsent(conn: Any) -> int:
            count = array.array("i", [0])
            fcntl.ioctl(conn.transport.get_extra_info("socket").fileno(), termios.TIOCOUTQ, count)
            return conn.transport.get_write_buffer_size() + count[0]

        await eventually(
            lambda: not any(unsent(conn) for conn in server.connections if not conn.transport.is_closing()),
            interval=0.001, what="every server connection's bytes in the client's socket",
        )
    finally:
        transport.resume_reading()


def no_library_tasks() -> bool:
    return not [t for t in asyncio.all_tasks() if t.get_name().startswith("async_ws_stream")]

