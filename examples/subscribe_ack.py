"""Subscribe to a feed and wait for the server's acknowledgement before reading it.

Two kinds of acknowledgement are common, and both are shown:

* an ack correlated by id (Binance, JSON-RPC): ``request()`` sends the
  subscription with a fresh id and returns the reply carrying that id;
* an ack that is just an event (Kraken, Bitfinex): ``expect()`` registers the
  wait *before* the subscription is sent, so the ack cannot slip past it.

Runs offline against a FeedServer on 127.0.0.1:  python examples/subscribe_ack.py
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from websockets.asyncio.client import connect

from async_ws_stream import AsyncWsStream
from async_ws_stream.testing import FeedServer


class Feed(AsyncWsStream[Any]):
    def __init__(self, url: str) -> None:
        super().__init__()
        self.url = url

    async def _create_ws(self) -> Any:
        return await connect(self.url)

    async def _when2create_new_ws(self) -> None:
        await asyncio.Event().wait()  # this short example never recycles

    def _parse_raw_data(self, raw: str | bytes) -> Any:
        return json.loads(raw)


async def main() -> None:
    async with FeedServer() as server:
        # The server plays the exchange: it acknowledges subscriptions...
        async def subscribe(params: Any) -> None:
            await server.broadcast({"event": "subscribed", "channel": params["channel"]})

        server.route("subscribe", subscribe)
        async with Feed(server.url) as client:
            trades = client.stream_filter([{"e": "trade"}])

            # 1. Ack by id: {"id": 1, "result": null}.
            ack = await client.request({"method": "SUBSCRIBE", "params": ["btcusdt@trade"]}, timeout=5)
            print(f"id-correlated ack:  {ack}")

            # 2. Ack as an event: register first, then send, then wait.
            subscribed = client.expect(
                {"event": "subscribed", "channel": "ethusdt@trade"},
                alarms=[{"event": "error"}],
                timeout=5,
            )
            await client.send({"method": "subscribe", "params": {"channel": "ethusdt@trade"}})
            print(f"event ack:          {await subscribed}")

            # ...and then publishes trades, which the stream was ready for.
            for n, symbol in enumerate(["BTCUSDT", "ETHUSDT", "BTCUSDT"]):
                await server.broadcast({"e": "trade", "s": symbol, "p": f"{100 + n}.00"})
            for _ in range(3):
                trade = await anext(trades)
                print(f"trade:              {trade['s']} at {trade['p']}")


if __name__ == "__main__":
    asyncio.run(main())
