"""A remote consumer: the collectors' JetStream stream, read with the client's filters.

    python examples/remote_consumer.py --nats nats://127.0.0.1:4222 --count 1000

A durable consumer (``--durable``) resumes where it stopped when this script
runs again; without one, it reads the stream from its start. Each message is
acknowledged once this script's ``async for`` has received it. Prints one line
per message (``--quiet``: none), then a summary.
"""

from __future__ import annotations

import argparse
import asyncio
import json

from async_ws_stream.broker import JetStreamSource


async def consume(args: argparse.Namespace) -> None:
    async with JetStreamSource(servers=args.nats, stream=args.stream, subjects=args.subjects,
                               durable=args.durable) as source:
        trades = source.stream_filter([{"e": "trade"}, {"_gap": lambda v: True}])
        seen = 0
        async with asyncio.timeout(args.timeout):
            async for msg in trades:
                if "_gap" in msg:
                    print(f"gap: a collector lost {msg['_gap']['dropped']} messages", flush=True)
                    continue
                seen += 1
                if not args.quiet:
                    print(json.dumps(msg, separators=(",", ":")), flush=True)
                if seen == args.count:
                    break
        print(f"consumed {seen} trades; source {json.dumps({k: v for k, v in source.stats().items() if k != 'streams'})}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nats", default="nats://127.0.0.1:4222", help="NATS server URL")
    parser.add_argument("--stream", default="MD", help="JetStream stream")
    parser.add_argument("--subjects", default="md.>", help="subjects to read")
    parser.add_argument("--durable", default=None, help="durable consumer name (resumes after a restart)")
    parser.add_argument("--count", type=int, default=None, help="stop after this many trades")
    parser.add_argument("--timeout", type=float, default=None, help="give up after this many seconds")
    parser.add_argument("--quiet", action="store_true", help="print only the summary")
    asyncio.run(consume(parser.parse_args()))


if __name__ == "__main__":
    main()
