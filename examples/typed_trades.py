"""Typed messages: Binance trades decoded by msgspec into a Struct, filtered on its fields.

``_parse_raw_data`` returns a ``Trade`` (a ``msgspec.Struct``) instead of a dict:
msgspec checks every field's type as it decodes (``strict=False`` turns Binance's
price strings into floats), and a consumer reads ``trade.p`` rather than
``float(trade["p"])``. Filters and conditions match a Struct's fields as they match
a dict's keys: ``{"s": "BTCUSDT"}`` matches ``trade.s == "BTCUSDT"``, predicates
included, and the index routes Structs through the same buckets as dicts.

A frame that does not decode as a Trade (here, one without a price) is a parse
error: logged with an excerpt, counted in ``stats()["parse_errors"]``, and the
connection goes on.

Needs ``pip install 'async_ws_stream[msgspec]'``. Runs offline against a
FeedServer on 127.0.0.1:  python examples/typed_trades.py
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from typing import Any

import msgspec
from websockets.asyncio.client import connect

from async_ws_stream import AsyncWsStream, Stream
from async_ws_stream.testing import FeedServer

TRADES = 60  # per symbol


class Trade(msgspec.Struct):
    """A Binance trade event; the field names are Binance's keys."""

    e: str  # event type, "trade"
    E: int  # event time, ms
    s: str  # symbol
    t: int  # trade id
    p: float  # price (a string on the wire: strict=False converts it)
    q: float  # quantity
    T: int  # trade time, ms
    m: bool  # the buyer is the market maker


class TypedTrades(AsyncWsStream[Trade]):
    """A trade feed whose messages are Trade Structs."""

    _decode = msgspec.json.Decoder(Trade, strict=False).decode

    def __init__(self, url: str, streams: list[str], **options: Any) -> None:
        super().__init__(**options)
        self.url = url
        self.streams = streams

    async def _create_ws(self) -> Any:
        return await connect(self.url + "/ws", open_timeout=5)

    async def _when2create_new_ws(self) -> None:
        await asyncio.sleep(23 * 3600)

    def _parse_raw_data(self, raw: str | bytes) -> Trade:
        return self._decode(raw)

    async def _on_connect(self, ws: Any) -> None:
        # The ack is not a Trade: read it here, before the connection carries traffic,
        # so that every frame the client parses is a trade.
        await ws.send(json.dumps({"method": "SUBSCRIBE", "params": self.streams, "id": 1}))
        ack = json.loads(await ws.recv())
        if ack.get("error"):
            raise RuntimeError(f"SUBSCRIBE refused: {ack['error']}")


async def vwap(trades: Stream[Trade], count: int) -> tuple[float, str]:
    """The volume-weighted average price of the next ``count`` trades, and their type's name."""
    notional = volume = 0.0
    kind = ""
    for _ in range(count):
        trade = await anext(trades)
        notional += trade.p * trade.q
        volume += trade.q
        kind = type(trade).__name__
    return notional / volume, kind


async def publish(server: FeedServer) -> None:
    """Binance-style trades on two symbols, with one malformed frame among them."""
    await server.wait_received(1)  # the SUBSCRIBE has arrived (and been acknowledged)
    for i in range(TRADES):
        for symbol, base in (("BTCUSDT", 64_000.0), ("ETHUSDT", 3_100.0)):
            await server.broadcast({"e": "trade", "E": 1_700_000_000_000 + i, "s": symbol, "t": i,
                                    "p": f"{base + (i % 9) * 2.5:.2f}", "q": f"{0.01 * (1 + i % 5):.3f}",
                                    "T": 1_700_000_000_000 + i, "m": i % 3 == 0})
        if i == TRADES // 2:
            await server.broadcast({"e": "trade", "s": "BTCUSDT", "t": -1})  # no price: not a Trade


async def count(trades: Stream[Trade]) -> int:
    """How many trades the stream yields until it ends."""
    return sum([1 async for _ in trades])


async def main() -> None:
    async with FeedServer() as server:
        feed = TypedTrades(server.url, ["btcusdt@trade", "ethusdt@trade"])
        async with feed:
            makers: Counter[str] = Counter()
            feed.add_handler(lambda trade: makers.update([trade.s]), [{"m": True}])
            btc = feed.stream_filter([{"s": "BTCUSDT"}])
            dear_eth = feed.stream_filter([{"s": "ETHUSDT", "p": lambda p: p >= 3_110}])
            last = feed.expect({"s": "ETHUSDT", "t": TRADES - 1}, timeout=10)
            async with asyncio.TaskGroup() as tg:
                average = tg.create_task(vwap(btc, TRADES))
                dear = tg.create_task(count(dear_eth))
                await publish(server)
                await last
                # Every trade is dispatched: exit() lets each stream yield what it holds, then end.
                await feed.exit()
            price, kind = average.result()
            print(f"BTCUSDT VWAP over {TRADES} {kind} messages: {price:,.2f}")
            print(f"ETHUSDT trades at 3,110 or more: {dear.result()}")
            print(f"maker-side trades (handler): {dict(sorted(makers.items()))}")
            stats = feed.stats()
            print(f"parse errors: {stats['parse_errors']}, messages: {stats['messages']}")


if __name__ == "__main__":
    asyncio.run(main())
