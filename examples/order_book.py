"""A local order book kept the Binance way: a snapshot, then the ``U``/``u`` diffs, repaired after every gap.

Binance's depth stream sends diffs: ``{"e": "depthUpdate", "s": symbol, "U":
first, "u": last, "b": bids, "a": asks}``, each covering update ids
``first..last``. A local book starts from a REST snapshot (``GET
/api/v3/depth``, current to its ``lastUpdateId``), drops the diffs that
snapshot already holds, applies the rest in order, and starts over from a new
snapshot whenever a diff does not start right after the previous one.

With the two sequence hooks the library does that bookkeeping:

* ``_sequence(msg)`` says which updates a diff carries: ``(symbol, U, u)``;
  the client then drops repeats (a recycle's overlap sends some twice) and
  sees holes;
* ``_resync(symbol, gap)`` fetches a snapshot and returns its
  ``lastUpdateId``; meanwhile that symbol's diffs wait (other symbols go on),
  then those the snapshot holds are dropped and the rest delivered in order.
  ``resync_on_connect = True`` takes a snapshot on each new connection, so the
  book never starts from nothing.

The diffs are applied by a plain handler, which the receive loop calls inline:
so when ``_resync`` replaces a book, every diff delivered before has been
applied to the old one, and every diff delivered after goes on the new one.

Here the exchange is a ``DepthFeed`` on a ``FeedServer`` on 127.0.0.1 (its
snapshot comes over the websocket, where Binance's is a REST call); it skips
updates (a gap), drops the connection, and the client recycles its connection
while diffs stream. At the end each local book is compared with the
exchange's true book.

    python examples/order_book.py
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Hashable
from typing import Any

from websockets.asyncio.client import connect

from async_ws_stream import AsyncWsStream, Gap, Recycled
from async_ws_stream.testing import Book, DepthFeed, FeedServer, apply_depth_update, book_from_snapshot

SYMBOLS = ("BTCUSDT", "ETHUSDT")


class DepthBook(AsyncWsStream[Any]):
    """Local order books for every symbol the feed sends, kept current by snapshot and diffs."""

    resync_on_connect = True  # each connection starts from a snapshot

    def __init__(self, url: str, **options: Any) -> None:
        super().__init__(**options)
        self.url = url
        self.books: dict[str, Book] = {}
        #: Per symbol, the update id its book is current to.
        self.current: dict[str, int] = {}
        self.recycle_now = asyncio.Event()
        self._waiters: list[tuple[str, int, asyncio.Future[None]]] = []
        self.add_handler(self._apply, [{"e": "depthUpdate"}])

    async def _create_ws(self) -> Any:
        return await connect(self.url, open_timeout=5)

    async def _when2create_new_ws(self) -> None:
        await self.recycle_now.wait()
        self.recycle_now.clear()

    def _parse_raw_data(self, raw: str | bytes) -> Any:
        return json.loads(raw)

    def _sequence(self, msg: Any) -> tuple[Hashable, int, int] | None:
        if msg.get("e") == "depthUpdate":
            return msg["s"], msg["U"], msg["u"]
        return None  # a snapshot reply, an ack: not part of any book's sequence

    async def _resync(self, symbol: str, gap: Gap | None) -> int:
        # On Binance: GET https://api.binance.com/api/v3/depth?symbol=...&limit=1000
        reply = await self.request(
            {"method": "depth.snapshot", "params": {"symbol": symbol, "limit": 1000}}, timeout=5
        )
        snapshot = reply["result"]
        self.books[symbol] = book_from_snapshot(snapshot)
        self._moved(symbol, snapshot["lastUpdateId"])
        return int(snapshot["lastUpdateId"])

    def _apply(self, diff: dict[str, Any]) -> None:
        apply_depth_update(self.books[diff["s"]], diff)
        self._moved(diff["s"], diff["u"])

    def _moved(self, symbol: str, update_id: int) -> None:
        self.current[symbol] = update_id
        for waiter in [w for w in self._waiters if w[0] == symbol and w[1] <= update_id]:
            self._waiters.remove(waiter)
            if not waiter[2].done():
                waiter[2].set_result(None)

    async def wait_current(self, symbol: str, update_id: int, timeout: float = 5) -> None:
        """Wait until the book of ``symbol`` is current to ``update_id``."""
        if self.current.get(symbol, -1) >= update_id:
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append((symbol, update_id, waiter))
        async with asyncio.timeout(timeout):
            await waiter


async def caught_up(client: DepthBook, feed: DepthFeed) -> None:
    """Wait until every local book is current to the exchange's last update."""
    for symbol in SYMBOLS:
        await client.wait_current(symbol, feed.last_update_id(symbol))


async def stream_diffs(feed: DepthFeed, count: int) -> None:
    """The exchange's steady flow: ``count`` updates per symbol, a millisecond apart."""
    for _ in range(count):
        await feed.publish(1)
        await asyncio.sleep(0.001)


async def main() -> None:
    async with FeedServer() as server:
        feed = DepthFeed(server, symbols=SYMBOLS, seed=7)
        async with DepthBook(server.url, backoff_initial=0.05, stable_after=0) as client:
            events = client.events()
            await client.wait_connected(timeout=5)
            await feed.publish(30)
            await caught_up(client, feed)
            print("connected: books from snapshots, then diffs")

            feed.skip(3, "BTCUSDT")  # three BTCUSDT updates never sent
            await feed.publish(30)
            await caught_up(client, feed)
            print("BTCUSDT skipped 3 updates: repaired from a new snapshot")

            await server.drop()  # no close frame; what is published meanwhile is lost
            await feed.publish(5)
            await server.wait_connections(2)
            await client.wait_connected(timeout=5)
            await feed.publish(30)
            await caught_up(client, feed)
            print("connection dropped: reconnected, books from new snapshots")

            client.recycle_now.set()  # make-before-break while the diffs stream
            await stream_diffs(feed, 60)
            gaps = []
            async with asyncio.timeout(5):
                async for event in events:
                    if isinstance(event, Gap):
                        gaps.append(event)
                    if isinstance(event, Recycled):
                        break
            await caught_up(client, feed)
            print("connection recycled while diffs streamed")

            for symbol in SYMBOLS:
                same = client.books[symbol] == feed.book(symbol)
                print(f"{symbol}: local book {'equals' if same else 'DIFFERS FROM'} the exchange's "
                      f"at update {client.current[symbol]}")
            stats = client.stats()
        for gap in gaps:
            print(f"event: {gap}")
        print(f"gaps: {stats['gaps']}, resyncs: {stats['resyncs']}, recycles: {stats['recycles']}, "
              f"reconnects: {stats['reconnects']}")
        print(f"dropped as sent twice: {stats['duplicates']}, as older than a snapshot: {stats['resync_discarded']}")


if __name__ == "__main__":
    asyncio.run(main())
