"""Fixtures of the broker tests: real servers, a feed, and a JSON client of it."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect

from async_ws_stream import AsyncWsStream
from async_ws_stream.testing import FeedServer

from .servers import NatsServer, RedisServer


class FeedClient(AsyncWsStream[Any]):
    """JSON frames from a FeedServer; recycled each time the test sets ``recycle_now``."""

    def __init__(self, url: str, **options: Any) -> None:
        super().__init__(**options)
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
async def nats_server(tmp_path: Path) -> AsyncIterator[NatsServer]:
    server = NatsServer(tmp_path)
    await server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def redis_server(tmp_path: Path) -> AsyncIterator[RedisServer]:
    server = RedisServer(tmp_path)
    await server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def feed() -> AsyncIterator[FeedServer]:
    async with FeedServer() as server:
        yield server


@pytest.fixture
async def feed_client(feed: FeedServer) -> AsyncIterator[FeedClient]:
    client = FeedClient(feed.url, backoff_initial=0.01, backoff_max=0.05)
    try:
        yield client
    finally:
        await client.exit()


def trades(n: int, start: int = 0, symbol: str = "BTCUSDT") -> list[dict[str, Any]]:
    """n distinct trade messages, numbered from ``start``."""
    return [{"e": "trade", "s": symbol, "t": i, "p": "1.5"} for i in range(start, start + n)]
