"""3,000 topics over 3 connections, within Binance's rules, with one connection lost on the way.

Binance lets one connection carry 1,024 streams and receive 5 messages a second
(subscribes included). The client declares those limits as settings and
subscribes 3,000 trade streams in one call; it opens as many connections as
that takes (three: 1,000 topics each), paces every frame it sends, and
resubscribes a connection's own topics whenever it is replaced. The test server
plays the venue with its rules on, and counts every breach.

Half-way, the venue cuts one of the three connections. The other two keep
streaming; the lost one comes back with its 1,000 topics, and every consumer
sees every message that was sent while it was connected.

Runs offline against a FeedServer on 127.0.0.1:  python examples/sharded_feed.py
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from typing import Any

from websockets.asyncio.client import connect

from async_ws_stream import AsyncWsStream, Connected, Disconnected
from async_ws_stream.testing import FeedServer, TopicFeed

SYMBOLS = [f"sym{i:04d}" for i in range(3000)]
ROUNDS = 5  # one trade per topic per round


class BinanceTrades(AsyncWsStream[Any]):
    """Binance's combined streams, with its limits as settings (not presets: check your venue's)."""

    max_subscriptions_per_connection = 1024
    max_topics_per_message = 200
    send_rate = (5, 1.0)  # every frame the client sends, per connection
    connect_rate = (300, 300.0)  # connection attempts, over every shard

    def __init__(self, url: str, **options: Any) -> None:
        super().__init__(**options)
        self.url = url

    async def _create_ws(self) -> Any:
        return await connect(self.url + "/stream", open_timeout=5)

    async def _when2create_new_ws(self) -> None:
        await asyncio.sleep(23 * 3600)  # Binance ends a connection after 24 hours

    def _parse_raw_data(self, raw: str | bytes) -> Any:
        return json.loads(raw)

    def _subscribe_message(self, topics: list[Any]) -> Any:
        return {"method": "SUBSCRIBE", "params": topics}

    def _unsubscribe_message(self, topics: list[Any]) -> Any:
        return {"method": "UNSUBSCRIBE", "params": topics}


async def main() -> None:
    async with FeedServer() as server:
        venue = TopicFeed(server)  # Binance's rules: 1024 topics, 5 frames/s, 300 connects/5 min
        client = BinanceTrades(server.url, backoff_initial=0.05)
        events = client.events()
        trades = client.stream_filter([{"stream": lambda s: s.endswith("@trade")}], maxsize=100_000)
        topics = [f"{s}@trade" for s in SYMBOLS]
        try:
            await client.subscribe(*topics)
            shards = client.stats()["shards"]
            for shard in shards:
                print(f"shard {shard['shard']}: connection #{shard['connection']}, {len(shard['topics'])} topics")

            sent = Counter[str]()
            for round_ in range(ROUNDS):
                if round_ == ROUNDS // 2:
                    server.drop(venue.subscribers(shards[1]["topics"][0])[0])  # no close frame
                    await _wait_for(events, Disconnected, shard=1)
                    print("-- the venue cut shard 1's connection --")
                    for topic in shards[0]["topics"] + shards[2]["topics"]:  # shard 1 is down meanwhile
                        await venue.publish(topic, {"p": round_})
                        sent[topic] += 1
                    await _wait_for(events, Connected, shard=1)
                    await venue.wait_subscribed(shards[1]["topics"])
                    print("shard 1 is back, with its own topics subscribed again")
                for topic in topics:
                    await venue.publish(topic, {"p": round_})
                    sent[topic] += 1

            got = Counter[str]()
            for _ in range(sum(sent.values())):
                got[(await anext(trades))["stream"]] += 1
            stats = client.stats()
            print(f"trades: {sum(got.values())} of {sum(sent.values())} sent, missing: "
                  f"{sum((sent - got).values())}")
            print(f"venue rule breaches: {len(venue.violations)}")
            print(f"client: connects={stats['connects']} reconnects={stats['reconnects']} "
                  f"subscriptions={stats['subscriptions']} dropped={stats['dropped']}")
        finally:
            await client.exit()


async def _wait_for(events: Any, kind: type, *, shard: int) -> None:
    async for event in events:
        if isinstance(event, kind) and event.shard == shard:
            return


if __name__ == "__main__":
    asyncio.run(main())
