"""Three shards against one connection carrying the same load, each paired with a bare loop.

    python bench/shards.py [--rounds 5] [--topics 3000] [--passes 20] [--verbose]

A venue process (a FeedServer with a TopicFeed, the venue's rules off: pacing is
not what is measured) serves ``--topics`` topics; on a ``BLAST`` request it sends
``--passes`` messages on every subscribed topic, as fast as the sockets take them.
Each measurement runs in a fresh interpreter, in this order every round: bare,
variant, bare, variant, ... The clock runs from the BLAST request to the last
message consumed. The variants:

* ``bare, 1 connection``: what a user writes without us: ``websockets.connect``,
  SUBSCRIBE requests in chunks of 200, then ``json.loads`` and a count in a loop;
* ``library, 1 connection``: the client with no limit, ``subscribe(*topics)``, one stream;
* ``library, 3 shards``: the same client with ``max_subscriptions_per_connection =
  1024``, three connections feeding one stream;
* ``bare, 3 connections``: the hand-written loop three times over, in three tasks.

Every ratio is to the mean of the bare runs just before and after it (paired);
the table gives the median with its range, of messages per second (wall) and per
CPU-second of the consumer's process (the venue runs on the other core).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, os.environ.get("BENCH_PACKAGE_PATH") or str(HERE.parent))

import websockets  # noqa: E402

from async_ws_stream import AsyncWsStream  # noqa: E402
from async_ws_stream.testing import FeedServer, TopicFeed  # noqa: E402

CHUNK = 200
VARIANTS = {"one": "library, 1 connection", "three": "library, 3 shards", "bare3": "bare, 3 connections"}


# -- the venue --------------------------------------------------------------------------------


async def serve(port: int, passes: int) -> None:
    async with FeedServer(port=port, max_size=None) as server:
        feed = TopicFeed(server, max_topics=None, max_messages=None, max_connects=None)
        tasks: set[asyncio.Task[Any]] = set()

        async def blast() -> None:
            for _ in range(passes):
                await feed.publish_round()

        def start(params: Any) -> None:
            task = asyncio.get_running_loop().create_task(blast())
            tasks.add(task)
            task.add_done_callback(tasks.discard)

        server.route("BLAST", start)
        print("ready", flush=True)
        await asyncio.Event().wait()


# -- the consumers ----------------------------------------------------------------------------


class Venue(AsyncWsStream[Any]):
    """The README's client with the subscription hooks: plain websockets.connect, json.loads."""

    max_topics_per_message = CHUNK

    def __init__(self, url: str, **options: Any) -> None:
        super().__init__(**options)
        self.url = url

    async def _create_ws(self) -> Any:
        return await websockets.connect(self.url, max_size=None)

    async def _when2create_new_ws(self) -> None:
        await asyncio.Event().wait()

    def _parse_raw_data(self, raw: str | bytes) -> Any:
        return json.loads(raw)

    def _subscribe_message(self, topics: list[Any]) -> Any:
        return {"method": "SUBSCRIBE", "params": topics}


async def library(url: str, topics: list[str], total: int, limit: int | None) -> tuple[float, float]:
    client = Venue(url, max_subscriptions_per_connection=limit, maxsize=total + 1000)
    stream = client.stream_filter([{"stream": lambda s: True}])
    try:
        await client.subscribe(*topics)
        t0, c0 = time.perf_counter(), time.process_time()
        await client.send({"method": "BLAST", "id": "blast"})
        for _ in range(total):
            await anext(stream)
        return time.perf_counter() - t0, time.process_time() - c0
    finally:
        await client.exit()


async def _bare_connection(url: str, topics: list[str]) -> Any:
    ws = await websockets.connect(url, max_size=None)
    for i in range(0, len(topics), CHUNK):
        await ws.send(json.dumps({"method": "SUBSCRIBE", "params": topics[i:i + CHUNK], "id": i}))
        while json.loads(await ws.recv()).get("id") != i:
            pass
    return ws


async def bare(url: str, topics: list[str], total: int, connections: int) -> tuple[float, float]:
    share = -(-len(topics) // connections)
    sockets = [await _bare_connection(url, topics[i:i + share]) for i in range(0, len(topics), share)]
    counted = 0
    done = asyncio.Event()

    async def read(ws: Any) -> None:
        nonlocal counted
        while counted < total:
            msg = json.loads(await ws.recv())
            if "stream" in msg:
                counted += 1
        done.set()

    try:
        t0, c0 = time.perf_counter(), time.process_time()
        await sockets[0].send(json.dumps({"method": "BLAST", "id": "blast"}))
        readers = [asyncio.create_task(read(ws)) for ws in sockets]
        await done.wait()
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
        for reader in readers:
            reader.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
        return seconds, cpu
    finally:
        for ws in sockets:
            await ws.close()


async def case(name: str, url: str, topics: int, passes: int) -> None:
    names = [f"s{i:05d}@trade" for i in range(topics)]
    total = topics * passes
    if name == "bare":
        result = await bare(url, names, total, 1)
    elif name == "bare3":
        result = await bare(url, names, total, 3)
    else:
        result = await library(url, names, total, None if name == "one" else 1024)
    print(json.dumps({"seconds": result[0], "cpu": result[1]}))


# -- the driver -------------------------------------------------------------------------------


def measure(name: str, url: str, args: argparse.Namespace) -> tuple[float, float]:
    done = subprocess.run(
        [sys.executable, __file__, "case", name, "--url", url, "--topics", str(args.topics),
         "--passes", str(args.passes)], capture_output=True, text=True, timeout=300, check=True,
    )
    result = json.loads(done.stdout.strip().splitlines()[-1])
    n = args.topics * args.passes
    return n / result["seconds"], n / result["cpu"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", nargs="?", default="run", choices=["run", "serve", "case"])
    parser.add_argument("name", nargs="?")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--topics", type=int, default=3000)
    parser.add_argument("--passes", type=int, default=20)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--url")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args()
    if args.mode == "serve":
        asyncio.run(serve(args.port, args.passes))
        return 0
    if args.mode == "case":
        asyncio.run(case(args.name, args.url, args.topics, args.passes))
        return 0
    port = 18000 + os.getpid() % 1000
    venue = subprocess.Popen([sys.executable, __file__, "serve", "--port", str(port), "--passes", str(args.passes)],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert venue.stdout is not None and venue.stdout.readline().strip() == "ready"
        url = f"ws://127.0.0.1:{port}/stream"
        rates: dict[str, list[float]] = {k: [] for k in VARIANTS}
        ratios: dict[str, list[float]] = {k: [] for k in VARIANTS}
        cpu_ratios: dict[str, list[float]] = {k: [] for k in VARIANTS}
        bares: list[float] = []
        for r in range(args.rounds):
            before, before_cpu = measure("bare", url, args)
            bares.append(before)
            for key in VARIANTS:
                rate, cpu_rate = measure(key, url, args)
                after, after_cpu = measure("bare", url, args)
                bares.append(after)
                rates[key].append(rate)
                ratios[key].append(rate / ((before + after) / 2))
                cpu_ratios[key].append(cpu_rate / ((before_cpu + after_cpu) / 2))
                if args.verbose:
                    print(f"round {r + 1}: {VARIANTS[key]}: {rate:,.0f} msg/s", file=sys.stderr)
                before, before_cpu = after, after_cpu
    finally:
        venue.terminate()
        venue.wait()
    print(f"{args.topics} topics x {args.passes} passes = {args.topics * args.passes:,} messages; "
          f"{args.rounds} rounds; bare, 1 connection: median {statistics.median(bares):,.0f} msg/s")
    print("| variant | msg/s (median) | ratio to bare, wall | ratio to bare, per CPU-second |")
    print("| --- | --- | --- | --- |")
    for key, name in VARIANTS.items():
        print(f"| {name} | {statistics.median(rates[key]):,.0f} | {_spread(ratios[key])} | {_spread(cpu_ratios[key])} |")
    three_vs_one = [t / o for t, o in zip(rates["three"], rates["one"])]
    print(f"\n3 shards / 1 connection, same load (same round): {_spread(three_vs_one)}")
    return 0


def _spread(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


if __name__ == "__main__":
    sys.exit(main())
