"""DepthFeed: snapshots and diff events that add up to the true book, and gaps that only a resync repairs."""

from __future__ import annotations

from typing import Any

import pytest

from async_ws_stream.testing import (
    Book,
    DepthFeed,
    FeedServer,
    apply_depth_update,
    book_from_snapshot,
)

from .conftest import JsonClient


async def fetch_snapshot(client: JsonClient, symbol: str) -> dict[str, Any]:
    reply = await client.request({"method": "depth.snapshot", "params": {"symbol": symbol}}, timeout=5)
    result: dict[str, Any] = reply["result"]
    return result


def follow(book: Book, last: int, event: dict[str, Any]) -> int | None:
    """Apply ``event`` over a book current to ``last``, the Binance way; None on a gap."""
    if event["u"] <= last:
        return last  # older than the book: skip
    if event["U"] > last + 1:
        return None
    apply_depth_update(book, event)
    return int(event["u"])


async def test_snapshot_route_answers_the_true_book(client: JsonClient, server: FeedServer) -> None:
    """depth.snapshot returns lastUpdateId and the sorted levels of the true book."""
    feed = DepthFeed(server, symbols=("BTCUSDT", "ETHUSDT"), levels=5, seed=1)
    snap = await fetch_snapshot(client, "ETHUSDT")
    assert snap == feed.snapshot("ETHUSDT")
    assert snap["lastUpdateId"] == feed.last_update_id("ETHUSDT") == 1000
    bids = [float(p) for p, _ in snap["bids"]]
    asks = [float(p) for p, _ in snap["asks"]]
    assert bids == sorted(bids, reverse=True) and asks == sorted(asks) and bids[0] < asks[0]
    assert book_from_snapshot(snap) == feed.book("ETHUSDT")
    reply = await client.request({"method": "depth.snapshot", "params": {"symbol": "XRPUSDT"}}, timeout=5)
    assert "unknown symbol 'XRPUSDT'" in reply["error"]["message"]


async def test_updates_over_a_snapshot_rebuild_the_true_book(client: JsonClient, server: FeedServer) -> None:
    """Without gaps, every event starts where the last ended and the local book tracks the truth."""
    feed = DepthFeed(server, seed=2)
    updates = client.stream_filter([{"e": "depthUpdate"}])
    snap = await fetch_snapshot(client, "BTCUSDT")
    book, last = book_from_snapshot(snap), snap["lastUpdateId"]
    sent = await feed.publish(50)
    for expected in sent:
        event = await anext(updates)
        assert event == expected
        followed = follow(book, last, event)
        assert followed is not None
        last = followed
    assert book == feed.book("BTCUSDT") and last == feed.last_update_id("BTCUSDT")
    assert (feed.sent, feed.skipped) == (50, 0)


async def test_skip_makes_a_gap_that_a_resync_repairs(client: JsonClient, server: FeedServer) -> None:
    """Skipped updates leave a hole in U..u; the book is wrong until re-fetched from a snapshot."""
    feed = DepthFeed(server, seed=3)
    updates = client.stream_filter([{"e": "depthUpdate"}])
    snap = await fetch_snapshot(client, "BTCUSDT")
    book, last = book_from_snapshot(snap), snap["lastUpdateId"]
    await feed.publish(5)
    feed.skip(3)
    assert feed.pending_skips == 3
    sent = await feed.publish(10)
    assert (len(sent), feed.skipped, feed.pending_skips) == (7, 3, 0)
    gaps = 0
    for _ in range(12):
        event = await anext(updates)
        followed = follow(book, last, event)
        if followed is None:
            gaps += 1
            assert book != feed.book("BTCUSDT")  # the skipped updates are missing from it
            snap = await fetch_snapshot(client, "BTCUSDT")  # resync
            book, last = book_from_snapshot(snap), snap["lastUpdateId"]
        else:
            last = followed
    assert gaps == 1
    assert book == feed.book("BTCUSDT") and last == feed.last_update_id("BTCUSDT")


@pytest.mark.single_transport
async def test_bad_arguments_name_the_value(server: FeedServer) -> None:
    """DepthFeed refuses empty symbol lists, levels < 1 and unknown symbols, naming them."""
    with pytest.raises(ValueError, match="symbols"):
        DepthFeed(server, symbols=())
    with pytest.raises(ValueError, match="levels"):
        DepthFeed(server, levels=0)
    feed = DepthFeed(server)
    with pytest.raises(ValueError, match="unknown symbol 'NOPE'.*BTCUSDT"):
        feed.skip(1, "NOPE")
    with pytest.raises(ValueError, match="count"):
        await feed.publish(-1)


async def test_a_snapshot_with_a_large_limit_is_the_whole_true_book(client: JsonClient, server: FeedServer) -> None:
    """params {"limit": n} returns up to n levels a side; levels + 2 covers every price an update can touch."""
    feed = DepthFeed(server, levels=3, seed=1)
    await feed.publish(20)
    assert len(feed.book("BTCUSDT")["bids"]) == 5  # updates grew the book past the default depth
    reply = await client.request({"method": "depth.snapshot", "params": {"symbol": "BTCUSDT", "limit": 5}}, timeout=5)
    assert book_from_snapshot(reply["result"]) == feed.book("BTCUSDT")
    assert len(feed.snapshot("BTCUSDT")["bids"]) == 3 and len(feed.snapshot("BTCUSDT", limit=1)["asks"]) == 1
    reply = await client.request({"method": "depth.snapshot", "params": {"symbol": "BTCUSDT", "limit": -1}}, timeout=5)
    assert "limit must be an int >= 0, got int -1" in reply["error"]["message"]
