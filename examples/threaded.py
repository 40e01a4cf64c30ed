"""Consume a feed from plain threads, with no asyncio in sight.

``start_in_thread`` runs the client in an event-loop thread of its own and returns
a handle whose calls block: ``stream_filter`` gives an ordinary iterator (with a
per-message timeout), and ``request``, ``send``, ``wait_for``, ``stats`` and
``exit`` are plain calls, safe from any thread. Errors raised in the client's
loop arrive in the calling thread with their type.

Here three worker threads each follow one symbol while the main thread talks to
the server. The "exchange" is a FeedServer on 127.0.0.1, itself running in a
thread of its own, since nothing in this script has an event loop.

    python examples/threaded.py
"""

from __future__ import annotations

import asyncio
import json
import queue
import threading
from typing import Any

from websockets.asyncio.client import connect

from async_ws_stream import AsyncWsStream, BlockingStream, Timeout
from async_ws_stream.testing import FeedServer

SYMBOLS = ["BTCUSDT", "ETHUSDT", "SOLUSDT"]
TRADES_PER_SYMBOL = 50


class TradeFeed(AsyncWsStream[Any]):
    def __init__(self, url: str) -> None:
        super().__init__()
        self.url = url

    async def _create_ws(self) -> Any:
        return await connect(self.url, open_timeout=5)

    async def _when2create_new_ws(self) -> None:
        await asyncio.Event().wait()  # this short example never recycles

    def _parse_raw_data(self, raw: str | bytes) -> Any:
        return json.loads(raw)


def follow(symbol: str, trades: BlockingStream[Any], results: dict[str, str]) -> None:
    """A worker thread: read this symbol's trades with a plain for-loop."""
    prices = []
    try:
        for trade in trades:  # each message waits at most the stream's timeout
            prices.append(float(trade["p"]))
            if len(prices) == TRADES_PER_SYMBOL:
                break
    except Timeout:
        results[symbol] = f"stalled after {len(prices)} trades"
        return
    results[symbol] = f"{len(prices)} trades, last {prices[-1]:.2f}, high {max(prices):.2f}"


class ExchangeThread(threading.Thread):
    """The exchange: a FeedServer in a thread with its own loop, publishing once told to."""

    def __init__(self) -> None:
        super().__init__(name="exchange")
        self.url: queue.Queue[str] = queue.Queue()
        self.go = threading.Event()

    def run(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        async with FeedServer() as server:
            self.url.put(server.url)
            await asyncio.to_thread(self.go.wait)
            for i in range(TRADES_PER_SYMBOL):
                for n, symbol in enumerate(SYMBOLS):
                    await server.broadcast({"e": "trade", "s": symbol, "p": f"{100 * (n + 1) + i % 9:.2f}"})
            await server.wait_open(0)  # serve until the client has gone


def main() -> None:
    exchange = ExchangeThread()
    exchange.start()
    url = exchange.url.get(timeout=5)
    results: dict[str, str] = {}
    with TradeFeed.start_in_thread(url) as feed:
        feed.wait_connected(timeout=5)
        ack = feed.request({"method": "SUBSCRIBE", "params": [s.lower() + "@trade" for s in SYMBOLS]}, timeout=5)
        print(f"main thread: subscribed, ack {ack}")
        workers = [
            threading.Thread(target=follow, args=(s, feed.stream_filter([{"e": "trade", "s": s}], timeout=5), results))
            for s in SYMBOLS
        ]
        for worker in workers:
            worker.start()
        exchange.go.set()
        for worker in workers:
            worker.join()
        print(f"main thread: client stats: messages={feed.stats()['messages']} dropped={feed.stats()['dropped']}")
    # Leaving `with` exited the client and joined its thread.
    exchange.join()
    for symbol in SYMBOLS:
        print(f"{symbol}: {results[symbol]}")


if __name__ == "__main__":
    main()
