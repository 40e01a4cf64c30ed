"""A public market-data feed: subscribe on every connection, fan out to several consumers.

The subclass sends its SUBSCRIBE in ``_on_connect``, so every new connection (the
first one, and each one after a loss) carries the same subscriptions before it is
read. One connection then feeds three consumers at once, each seeing only what
its filter matches:

* a stream of BTCUSDT trades, turned into a volume-weighted average price;
* a stream of BTCUSDT book updates, tracking the best bid and ask;
* a plain handler counting trades per symbol.

Half-way through, the exchange drops the connection without a word; the client
reconnects, subscribes again, and the consumers carry on.

Runs offline against a FeedServer on 127.0.0.1:  python examples/exchange_feed.py
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from typing import Any

from websockets.asyncio.client import connect

from async_ws_stream import AsyncWsStream, Stream
from async_ws_stream.testing import FeedServer

SUBSCRIPTIONS = ["btcusdt@trade", "ethusdt@trade", "btcusdt@depth"]
TRADES_PER_SYMBOL = 40  # per half of the session
BOOK_UPDATES = 20  # per half of the session


class ExchangeFeed(AsyncWsStream[Any]):
    """A Binance-style public feed: JSON frames, subscriptions renewed on every connection."""

    def __init__(self, url: str, streams: list[str], **options: Any) -> None:
        super().__init__(**options)
        self.url = url
        self.streams = streams

    async def _create_ws(self) -> Any:
        return await connect(self.url + "/ws", open_timeout=5)

    async def _when2create_new_ws(self) -> None:
        # Binance ends every connection after 24 hours: recycle a little before it does.
        await asyncio.sleep(23 * 3600)

    def _parse_raw_data(self, raw: str | bytes) -> Any:
        return json.loads(raw)

    async def _on_connect(self, ws: Any) -> None:
        # Runs before the connection is read and before send() can use it: talk to ws directly.
        await ws.send(json.dumps({"method": "SUBSCRIBE", "params": self.streams, "id": 1}))


async def vwap(trades: Stream[Any], count: int) -> float:
    """The volume-weighted average price of the next ``count`` trades."""
    notional = volume = 0.0
    seen = 0
    async for trade in trades:
        price, qty = float(trade["p"]), float(trade["q"])
        notional += price * qty
        volume += qty
        seen += 1
        if seen == count:
            break
    return notional / volume


async def best_quotes(book: Stream[Any], count: int) -> tuple[float, float]:
    """The best bid and ask after the next ``count`` book updates."""
    bids: dict[str, str] = {}
    asks: dict[str, str] = {}
    seen = 0
    async for update in book:
        for side, levels in ((bids, update["b"]), (asks, update["a"])):
            for price, qty in levels:
                if float(qty) == 0:
                    side.pop(price, None)
                else:
                    side[price] = qty
        seen += 1
        if seen == count:
            break
    return max(map(float, bids)), min(map(float, asks))


async def play_exchange(server: FeedServer, feed: ExchangeFeed) -> None:
    """Publish trades and book updates, with an abrupt drop half-way."""
    trade_id = update_id = 0
    for half in (0, 1):
        await server.wait_received(half + 1)  # the (re)subscription has arrived
        print(f"connection {half + 1}: subscribed to {json.loads(server.received[half][1])['params']}")
        for i in range(TRADES_PER_SYMBOL):
            for symbol, base in (("BTCUSDT", 64_000.0), ("ETHUSDT", 3_100.0)):
                trade_id += 1
                price = base + (i % 7) * 1.5
                await server.broadcast({"e": "trade", "s": symbol, "t": trade_id,
                                        "p": f"{price:.2f}", "q": f"{0.01 * (1 + i % 4):.3f}"})
        # Registered before the last update goes out, so it cannot slip past.
        last_update = feed.expect({"e": "depthUpdate", "u": update_id + BOOK_UPDATES}, timeout=5)
        for i in range(BOOK_UPDATES):
            update_id += 1
            bid, ask = 63_990.0 + half * 5 + i / 4, 64_010.0 - half * 5 - i / 4
            await server.broadcast({"e": "depthUpdate", "s": "BTCUSDT", "u": update_id,
                                    "b": [[f"{bid:.2f}", "0.5"], [f"{bid - 1:.2f}", "0"]],
                                    "a": [[f"{ask:.2f}", "0.7"]]})
        # Wait until everything sent so far is dispatched: an abrupt drop loses what is in flight.
        await last_update
        if half == 0:
            await server.drop()
            print("-- the exchange dropped the connection (no close frame) --")


async def main() -> None:
    async with FeedServer() as server:
        feed = ExchangeFeed(server.url, SUBSCRIPTIONS, backoff_initial=0.05)
        async with feed:
            per_symbol: Counter[str] = Counter()
            feed.add_handler(lambda trade: per_symbol.update([trade["s"]]), [{"e": "trade"}])
            trades = feed.stream_filter([{"e": "trade", "s": "BTCUSDT"}])
            book = feed.stream_filter([{"e": "depthUpdate", "s": "BTCUSDT"}])
            async with asyncio.TaskGroup() as tg:
                average = tg.create_task(vwap(trades, 2 * TRADES_PER_SYMBOL))
                quotes = tg.create_task(best_quotes(book, 2 * BOOK_UPDATES))
                await play_exchange(server, feed)
            bid, ask = quotes.result()
            print(f"BTCUSDT VWAP over {2 * TRADES_PER_SYMBOL} trades: {average.result():,.2f}")
            print(f"BTCUSDT best bid {bid:,.2f} / best ask {ask:,.2f} after {2 * BOOK_UPDATES} book updates")
            print(f"trades per symbol (handler): {dict(sorted(per_symbol.items()))}")
            stats = feed.stats()
            print(f"client: connects={stats['connects']} reconnects={stats['reconnects']} "
                  f"dropped={stats['dropped']}")


if __name__ == "__main__":
    asyncio.run(main())
