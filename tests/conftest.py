"""Shared fixtures: a real FeedServer on loopback and a small JSON client subclass."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from loguru import logger
from websockets.asyncio.client import connect

from async_ws_stream import AsyncWsStream
from async_ws_stream.testing import FeedServer


class JsonClient(AsyncWsStream[Any]):
    """The smallest useful subclass: JSON frames, recycled when the test says so."""

    def __init__(self, url: str, **options: Any) -> None:
        super().__init__(**options)
        # Set after super().__init__(): the hooks must still see it.
        self.url = url
        self.recycle_now = asyncio.Event()

    async def _create_ws(self) -> Any:
        return await connect(self.url, open_timeout=2, close_timeout=1)

    async def _when2create_new_ws(self) -> None:
        await self.recycle_now.wait()
        self.recycle_now.clear()

    def _parse_raw_data(self, raw: str | bytes) -> Any:
        return json.loads(raw)


@pytest.fixture
async def server() -> AsyncIterator[FeedServer]:
    async with FeedServer() as feed:
        yield feed


@pytest.fixture
async def client(server: FeedServer) -> AsyncIterator[JsonClient]:
    c = JsonClient(server.url, backoff_initial=0.01, backoff_max=0.05)
    try:
        yield c
    finally:
        await c.exit()


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


def no_library_tasks() -> bool:
    return not [t for t in asyncio.all_tasks() if t.get_name().startswith("async_ws_stream")]

