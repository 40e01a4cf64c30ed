"""Helpers of the fault tests."""

from __future__ import annotations

from typing import Any

from async_ws_stream import AsyncWsStream
from async_ws_stream.testing import FeedServer

from ..conftest import eventually

__all__ = ["eventually", "settle"]


async def settle(client: AsyncWsStream[Any], feed: FeedServer) -> None:
    """Broadcast a marker and wait until the client dispatched it (so everything before it too)."""
    marker = {"marker": id(object())}
    waiting = client.expect(marker, timeout=10)
    await feed.broadcast(marker)
    await waiting
