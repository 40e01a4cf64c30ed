"""A private user-data feed: the listen-key pattern, recycled on a schedule without a gap.

Exchanges such as Binance open private streams with a *listen key*: a token
fetched over REST, put in the websocket URL, and valid for a limited time. The
subclass fetches a fresh key in ``_create_ws`` every time it connects, and
``_when2create_new_ws`` returns when the connection must move to a new key. The
library then recycles make-before-break: the new connection (with the new key) is
open before the old one is closed, and the old one is read to its end first, so
no account event falls in between. Events that arrive on both connections during
the overlap are delivered twice; the consumer drops repeats by event id.

Listen keys are secrets: the library's logs never show a URL's path.

Here the "exchange" is a FeedServer on 127.0.0.1 pushing an account event every
few milliseconds, and the client moves to a new key every quarter of a second
instead of every half hour.

    python examples/user_data_feed.py
"""

from __future__ import annotations

import asyncio
import itertools
import json
from typing import Any

from websockets.asyncio.client import connect

from async_ws_stream import AsyncWsStream, Stream
from async_ws_stream.testing import FeedServer

EVENTS = 200
EVENT_EVERY = 0.005  # seconds between two account events
RECYCLE_EVERY = 0.25  # seconds a connection keeps its listen key (Binance: keys expire after 60 minutes)


class FakeRestApi:
    """Stands in for ``POST /api/v3/userDataStream``, which returns a new listen key."""

    def __init__(self) -> None:
        self._numbers = itertools.count(1)

    async def new_listen_key(self) -> str:
        await asyncio.sleep(0.001)  # the HTTP round trip
        return f"lk{next(self._numbers):04d}-s3cr3t"


class UserDataFeed(AsyncWsStream[Any]):
    """Account events over a listen-key websocket, moved to a fresh key every ``recycle_every`` seconds."""

    def __init__(self, rest: FakeRestApi, ws_url: str, *, recycle_every: float, **options: Any) -> None:
        super().__init__(**options)
        self.rest = rest
        self.ws_url = ws_url
        self.recycle_every = recycle_every

    async def _create_ws(self) -> Any:
        # A fresh key for every connection, fetched when it is needed: a key kept
        # from an earlier connection may have expired meanwhile.
        listen_key = await self.rest.new_listen_key()
        return await connect(f"{self.ws_url}/ws/{listen_key}", open_timeout=5)

    async def _when2create_new_ws(self) -> None:
        await asyncio.sleep(self.recycle_every)

    def _parse_raw_data(self, raw: str | bytes) -> Any:
        return json.loads(raw)


async def push_account_events(server: FeedServer) -> None:
    """The exchange: one ORDER_TRADE_UPDATE after another, numbered by event id."""
    for n in range(EVENTS):
        await server.broadcast({"e": "ORDER_TRADE_UPDATE", "E": n, "o": {"s": "BTCUSDT", "x": "TRADE"}})
        await asyncio.sleep(EVENT_EVERY)


async def collect(events: Stream[Any]) -> tuple[set[int], int]:
    """Every event id until the last one, and how many repeats were dropped."""
    seen: set[int] = set()
    repeats = 0
    async for event in events:
        if event["E"] in seen:
            repeats += 1  # delivered on both connections during a recycle
            continue
        seen.add(event["E"])
        if event["E"] == EVENTS - 1:
            break
    return seen, repeats


async def main() -> None:
    async with FeedServer() as server:
        feed = UserDataFeed(FakeRestApi(), server.url, recycle_every=RECYCLE_EVERY)
        async with feed:
            events = feed.stream_filter([{"e": "ORDER_TRADE_UPDATE"}])
            await feed.wait_connected(timeout=5)
            async with asyncio.timeout(30):
                collecting = asyncio.ensure_future(collect(events))
                await push_account_events(server)
                seen, repeats = await collecting
            stats = feed.stats()
        missing = sorted(set(range(EVENTS)) - seen)
        print(f"listen keys used: {', '.join(path.rsplit('/', 1)[-1] for path in server.paths)}")
        print(f"recycles: {stats['recycles']}, reconnects: {stats['reconnects']}")
        print(f"account events: {len(seen)} of {EVENTS}, missing: {missing or 'none'}, "
              f"repeats dropped: {repeats}")


if __name__ == "__main__":
    asyncio.run(main())
