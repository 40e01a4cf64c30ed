"""examples/order_book.py's client against a DepthFeed under gaps, drops and recycles: its books end up true."""

from __future__ import annotations

import asyncio
import importlib.util
import random
from pathlib import Path
from types import ModuleType

from async_ws_stream import Gap, Recycled
from async_ws_stream.testing import DepthFeed, FeedServer

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "order_book.py"


def load_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("order_book_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


order_book = load_example()


async def test_books_equal_the_true_books_after_gaps_drops_and_recycles() -> None:
    """Diffs stream while updates are skipped, the connection drops and recycles; every local book ends true."""
    rng = random.Random(11)
    symbols = ("BTCUSDT", "ETHUSDT", "SOLUSDT")
    async with FeedServer() as server:
        feed = DepthFeed(server, symbols=symbols, seed=5)
        client = order_book.DepthBook(server.url, backoff_initial=0.01, backoff_max=0.05, stable_after=0)
        events = client.events()
        gaps = client.stream_filter([{"e": "depthUpdate"}], gaps=True, maxsize=100_000)
        stop = asyncio.Event()

        async def publish() -> None:
            while not stop.is_set():
                await feed.publish(1, symbol=rng.choice(symbols))
                await asyncio.sleep(0)

        try:
            await client.wait_connected(timeout=5)
            opened = 1  # connections the server has accepted
            async with asyncio.TaskGroup() as tg:
                tg.create_task(publish())
                for round_ in range(12):
                    fault = round_ % 3
                    if fault == 0:
                        feed.skip(rng.randint(1, 4), rng.choice(symbols))
                        await feed.publish(3)
                    elif fault == 1:
                        await server.drop()
                        opened += 1
                        await server.wait_connections(opened)
                        await client.wait_connected(timeout=5)
                    else:
                        client.recycle_now.set()
                        opened += 1
                        async with asyncio.timeout(5):
                            while not isinstance(await anext(events), Recycled):
                                pass
                stop.set()
            assert feed.pending_skips == 0
            await feed.publish(3)
            for symbol in symbols:
                await client.wait_current(symbol, feed.last_update_id(symbol))
                assert client.books[symbol] == feed.book(symbol), symbol
            # The skips above may have fallen into a resync (then no Gap is seen): this one cannot.
            feed.skip(2, "ETHUSDT")
            await feed.publish(3)
            for symbol in symbols:
                await client.wait_current(symbol, feed.last_update_id(symbol))
                assert client.books[symbol] == feed.book(symbol), symbol
            stats = client.stats()
            assert (stats["recycles"], stats["reconnects"]) == (4, 4)
            # Each gap starts a resync, and so does each symbol's first message (at least on the first connection).
            assert stats["gaps"] >= 1 and stats["resyncs"] >= stats["gaps"] + len(symbols)
            assert stats["held"] == stats["held_dropped"] == 0  # resync_errors: snapshots cut off by a drop, retried
            seen = [item for item in (gaps.get_nowait() for _ in range(gaps.queued)) if isinstance(item, Gap)]
            assert len(seen) == stats["gaps"] and seen[-1].key == "ETHUSDT"
        finally:
            await client.exit()
