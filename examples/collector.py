"""A collector: one websocket feed's messages published to NATS JetStream.

Run two of these on two machines against the same feed and the same stream:
both publish every message, JetStream keeps one copy of each (the sink gives a
message the same ``Nats-Msg-Id`` in both), and either collector can die
without a message being lost. ``examples/remote_consumer.py`` reads the stream.

    python examples/collector.py --feed ws://127.0.0.1:8765 --nats nats://127.0.0.1:4222

It creates the stream (``--stream``, subjects ``md.>``) if it does not exist,
prints ``ready`` once it publishes, runs until SIGTERM or Ctrl-C (or for
``--seconds``), then prints the sink's counters as one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
from typing import Any

from websockets.asyncio.client import connect

from async_ws_stream import AsyncWsStream
from async_ws_stream.broker import JetStreamSink, ensure_stream


class Feed(AsyncWsStream[Any]):
    """JSON frames from one websocket URL."""

    def __init__(self, url: str, **options: Any) -> None:
        super().__init__(**options)
        self.url = url

    async def _create_ws(self) -> Any:
        return await connect(self.url, open_timeout=5)

    async def _when2create_new_ws(self) -> None:
        await asyncio.sleep(23 * 3600)

    def _parse_raw_data(self, raw: str | bytes) -> Any:
        return json.loads(raw)


async def collect(args: argparse.Namespace) -> dict[str, Any]:
    await ensure_stream(servers=args.nats, stream=args.stream, subjects=["md.>"])
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    client = Feed(args.feed, backoff_max=2.0)
    # The sink subscribes as it is made: nothing the feed sends while it connects to NATS is lost.
    # Exit order: the client first, then the sink, which publishes what it still holds.
    async with JetStreamSink(client, servers=args.nats, stream=args.stream, subject=args.subject) as sink, client:
        await client.wait_connected(10)
        print("ready", flush=True)
        try:
            async with asyncio.timeout(args.seconds):
                await stop.wait()
        except TimeoutError:
            pass
    return sink.stats()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--feed", default="ws://127.0.0.1:8765", help="websocket URL of the feed")
    parser.add_argument("--nats", default="nats://127.0.0.1:4222", help="NATS server URL")
    parser.add_argument("--stream", default="MD", help="JetStream stream (created with subjects md.>)")
    parser.add_argument("--subject", default="md.{e}.{s}", help="subject template, from message fields")
    parser.add_argument("--seconds", type=float, default=None, help="stop after this many seconds")
    stats = asyncio.run(collect(parser.parse_args()))
    print(json.dumps(stats, separators=(",", ":")), flush=True)


if __name__ == "__main__":
    main()
