"""A trading bot that pauses when the feed drops and resumes when it is back, by matching events.

The bot quotes on every trade, but only while its feed is live: a ``Disconnected``
pauses it (whatever it would do meanwhile would be based on a stale price), and
the next ``Connected`` resumes it. ``Retrying`` events say what the client is
doing in between. Events arrive in order with the messages, so no trade of the
lost connection can reach the bot after it paused.

Runs offline against a FeedServer on 127.0.0.1:  python examples/bot_events.py
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from websockets.asyncio.client import connect

from async_ws_stream import AsyncWsStream, Closed, Connected, Disconnected, GaveUp, Retrying, Stream
from async_ws_stream.testing import FeedServer


class Trades(AsyncWsStream[Any]):
    def __init__(self, url: str, **options: Any) -> None:
        super().__init__(**options)
        self.url = url

    async def _create_ws(self) -> Any:
        return await connect(self.url, open_timeout=5)

    async def _when2create_new_ws(self) -> None:
        await asyncio.sleep(23 * 3600)

    def _parse_raw_data(self, raw: str | bytes) -> Any:
        return json.loads(raw)


class Bot:
    """Quotes around the last trade while live; counts what it ignored while paused."""

    def __init__(self) -> None:
        self.live = False
        self.quotes = 0
        self.ignored = 0

    def on_trade(self, trade: dict[str, Any]) -> None:
        if self.live:
            self.quotes += 1
        else:
            self.ignored += 1


async def run_bot(bot: Bot, feed: Stream[Any]) -> None:
    """One loop over a stream that carries the events in-band, where they happened."""
    async for item in feed:
        match item:
            case Connected(number):
                bot.live = True
                print(f"connected (#{number}): quoting")
            case Disconnected(number, cause):
                bot.live = False
                print(f"paused: connection #{number} lost ({cause.split(':')[0]})")
            case Retrying(attempt, delay, cause):
                print(f"retry {attempt} in {delay:.2f}s")
            case GaveUp(error):
                print(f"gave up: {error}")
            case Closed():
                print("closed")
            case {"e": "trade"}:
                bot.on_trade(item)


async def main() -> None:
    async with FeedServer() as server:
        client = Trades(server.url, backoff_initial=0.05, backoff_jitter=0)
        bot = Bot()
        feed = client.stream_filter([{"e": "trade"}], events=True)
        async with asyncio.TaskGroup() as tg:
            tg.create_task(run_bot(bot, feed))
            await client.wait_connected(timeout=5)
            last = client.expect({"e": "trade", "p": 64_009}, timeout=5)  # registered before it can come
            for i in range(10):
                await server.broadcast({"e": "trade", "s": "BTCUSDT", "p": 64_000 + i})
            await last
            server.refuse_next(2, status=503)  # the exchange is down for a moment
            await server.drop()
            await server.wait_connections(2)
            await client.wait_connected(timeout=5)
            last = client.expect({"e": "trade", "p": 64_104}, timeout=5)
            for i in range(5):
                await server.broadcast({"e": "trade", "s": "BTCUSDT", "p": 64_100 + i})
            await last
            await client.exit()  # the bot's stream ends after Closed
        print(f"quotes: {bot.quotes}, trades ignored while paused: {bot.ignored}")


if __name__ == "__main__":
    asyncio.run(main())
