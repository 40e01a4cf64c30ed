"""Helpers of the fault tests."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from async_ws_stream import AsyncWsStream
from async_ws_stream.testing import FeedServer


async def eventually(predicate: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    """Return once ``predicate()`` holds, checking every few ms (for state that signals no event)."""
    try:
        async with asyncio.timeout(timeout):
            while not predicate():
                await asyncio.sleep(0.005)
    except TimeoutError:
        raise AssertionError(f"{what} did not hold within {timeout} s") from None


async def settle(client: AsyncWsStream[Any], feed: FeedServer) -> None:
    """Broadcast a marker and wait until the client dispatched it (so everything before it too)."""
    marker = {"marker": id(object())}
    waiting = client.expect(marker, timeout=10)
    await feed.broadcast(marker)
    await waiting
