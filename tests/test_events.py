"""Lifecycle events against a real server: exact order with messages, retries, give-up, exit."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from async_ws_stream import (
    ClientClosed,
    Closed,
    Connected,
    Disconnected,
    GaveUp,
    Recycled,
    Recycling,
    RetriesExhausted,
    Retrying,
    Stream,
)
from async_ws_stream.testing import FeedServer

from .conftest import JsonClient, settle


async def take_until(stream: Stream[Any], last: type) -> list[Any]:
    """Read ``stream`` up to and including the first item of type ``last``."""
    items: list[Any] = []
    async with asyncio.timeout(5):
        async for item in stream:
            items.append(item)
            if isinstance(item, last):
                return items
    raise AssertionError(f"stream ended before a {last.__name__}: {items}")


async def test_events_sit_exactly_between_the_messages_of_each_connection(server: FeedServer) -> None:
    """In-band, every message of connection n follows Connected(n) and precedes its Disconnected or Recycled."""
    client = JsonClient(server.url, backoff_initial=0.01, stable_after=0)
    mixed = client.stream_filter([{"conn": lambda v: True}], events=True)
    alone = client.events()
    try:
        await client.wait_connected(timeout=5)
        for seq in range(3):
            await server.send_to(1, {"conn": 1, "seq": seq})
        await settle(client, server)
        await server.drop()  # connection 1 is lost
        await server.wait_connections(2)
        await client.wait_connected(timeout=5)
        for seq in range(3):
            await server.send_to(2, {"conn": 2, "seq": seq})
        await settle(client, server)
        old = server.connections[-1]
        client.recycle_now.set()  # connection 2 is replaced by 3, make-before-break
        await server.wait_connections(3)
        for seq in range(3, 6):  # during the overlap, both connections carry the feed
            await server.send_to(2, {"conn": 2, "seq": seq})
            await server.send_to(3, {"conn": 3, "seq": seq})
        await old.wait_closed()
        await settle(client, server)
    finally:
        await client.exit()
    items = [item async for item in mixed]
    events = [item for item in items if not isinstance(item, dict)]
    assert events[0] == Connected(1)
    assert isinstance(events[1], Disconnected) and events[1].number == 1
    assert events[2] == Retrying(1, 0.0, events[1].cause)  # the first retry is at once
    assert events[3] == Connected(2)
    assert isinstance(events[4], Recycling) and events[4].number == 2
    assert events[5:] == [Recycled(2, 3), Connected(3), Closed()]
    # Which connection's messages may stand where: the serving one, between its events.
    serving = None
    for item in items:
        if isinstance(item, Connected):
            serving = item.number
        elif isinstance(item, (Disconnected, Recycled)):
            serving = None
        elif isinstance(item, dict):
            assert item["conn"] == serving, f"{item} outside connection {item['conn']}'s span: {items}"
    assert [m["seq"] for m in items if isinstance(m, dict) and m["conn"] == 2] == list(range(6))
    # The events-only stream saw the same events, and ended after Closed.
    assert [e async for e in alone] == events


async def test_retrying_then_gave_up_then_closed(server: FeedServer) -> None:
    """Refused attempts read Retrying(1..n); running out reads GaveUp; exit() reads Closed and ends the stream."""
    server.refuse_next(10, status=503)
    client = JsonClient(server.url, backoff_initial=0.01, backoff_jitter=0, max_retries=2)
    events = client.events()
    try:
        seen = await take_until(events, GaveUp)
    finally:
        await client.exit()
    assert [(e.attempt, e.delay) for e in seen[:-1]] == [(1, 0.0), (2, 0.01)]
    assert all(isinstance(e, Retrying) and "503" in e.cause for e in seen[:-1])
    assert isinstance(seen[-1].error, RetriesExhausted)
    assert [e async for e in events] == [Closed()]
    assert client.stats()["state"] == "closed"


async def test_a_full_events_stream_drops_its_oldest_and_counts_it(server: FeedServer) -> None:
    """maxsize=2 and four events unread: the two newest remain, and two drops are counted."""
    server.refuse_next(3, status=503)
    client = JsonClient(server.url, backoff_initial=0.01)
    events = client.events(maxsize=2)
    try:
        await client.wait_connected(timeout=5)  # Retrying 1, 2, 3, then Connected(1): four events
        assert events.dropped == 2 and client.stats()["dropped"] == 2
        newest = [events.get_nowait(), events.get_nowait()]
    finally:
        await client.exit()
    assert isinstance(newest[0], Retrying) and newest[0].attempt == 3
    assert newest[1] == Connected(1)


async def test_every_events_stream_gets_every_event(client: JsonClient, server: FeedServer) -> None:
    """Two consumers of events() each see the same events, in the same order."""
    first, second = client.events(), client.events()
    await client.wait_connected(timeout=5)
    await server.drop()
    await server.wait_connections(2)
    await client.wait_connected(timeout=5)
    await client.exit()
    one, two = [e async for e in first], [e async for e in second]
    assert one == two and one[0] == Connected(1) and one[-1] == Closed()
    assert Connected(2) in one


async def test_events_after_exit_raise_client_closed(client: JsonClient) -> None:
    """A new events() stream after exit() is refused like any stream."""
    await client.exit()
    with pytest.raises(ClientClosed):
        client.events()
