"""Three shards against one connection carrying the same load, each paired with a bare loop.

    python bench/shards.py [--rounds 5] [--topics 3000] [--passes 20] [--quick] [--verbose]

A venue process (a combined-stream server that acks SUBSCRIBEs; no rate rules:
pacing is not what is measured) serves ``--topics`` topics; on a ``BLAST`` request
it sends ``--passes`` Binance trades on every subscribed topic of every connection,
pre-built and written in whole chunks, so that it stays far ahead of the reader.
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

from _feed import CHUNK, dumps, trade, ws_frame  # noqa: E402

from async_ws_stream import AsyncWsStream  # noqa: E402

CHUNK = 200
VARIANTS = {"one": "library, 1 connection", "three": "library, 3 shards", "bare3": "bare, 3 connections"}


# -- the venue --------------------------------------------------------------------------------


async def serve(port: int, passes: int) -> None:
    """A combined-stream venue that keeps far ahead of any reader: pre-built frames, whole chunks.

    Each connection's SUBSCRIBEs are acked and remembered; a BLAST on any connection makes
    every open connection get ``passes`` trades on each of its topics, written straight to
    the transport in chunks (websockets' ``drain()`` is the flow control, as in ``_feed.py``).
    """
    topics: dict[Any, list[str]] = {}
    blasts: set[asyncio.Task[Any]] = set()

    async def blast(conn: Any, mine: list[str]) -> None:
        frames = [ws_frame(dumps({"stream": t, "data": trade(i)})) for i, t in enumerate(mine)]
        for _ in range(passes):
            for start in range(0, len(frames), CHUNK):
                conn.transport.write(b"".join(frames[start:start + CHUNK]))
                await conn.drain()

    async def handle(conn: Any) -> None:
        topics[conn] = []
        try:
            async for frame in conn:
                msg = json.loads(frame)
                if msg.get("method") == "SUBSCRIBE":
                    topics[conn].extend(msg["params"])
                    await conn.send(json.dumps({"result": None, "id": msg["id"]}))
                elif msg.get("method") == "BLAST":
                    for other, mine in list(topics.items()):
                        task = asyncio.get_running_loop().create_task(blast(other, mine))
                        blasts.add(task)
                        task.add_done_callback(blasts.discard)
        finally:
            del topics[conn]

    async with websockets.serve(handle, "127.0.0.1", port, max_size=None, compression=None):
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
        return await websockets.connect(self.url)

    async def _when2create_new_ws(self) -> None:
        await asyncio.Event().wait()

    def _parse_raw_data(self, raw: str | bytes) -> Any:
        return json.loads(raw)

    def _subscribe_message(self, topics: list[Any]) -> Any:
        return {"method": "SUBSCRIBE", "params": topics}


async def library(url: str, topics: list[str], total: int, limit: int | None) -> tuple[float, float]:
    client = Venue(url, max_subscriptions_per_connection=limit, maxsize=total + 1000)
    stream = client.stream_filter()
    try:
        await client.subscribe(*topics)
        t0, c0 = time.perf_counter(), time.process_time()
        await client.send({"method": "BLAST", "id": "blast"})
        received = 0
        while received < total:
            if "stream" in await anext(stream):  # the acks are messages too
                received += 1
        return time.perf_counter() - t0, time.process_time() - c0
    finally:
        await client.exit()


async def _bare_connection(url: str, topics: list[str]) -> Any:
    ws = await websockets.connect(url)
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
         "--passes", str(args.passes)], capture_output=True, text=True, timeout=300,
    )
    if done.returncode != 0:
        raise SystemExit(f"case {name} failed:\n{done.stderr[-3000:]}")
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
    parser.add_argument("--quick", action="store_true", help="2 rounds of 5 passes")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.passes = 2, 5
    if args.mode == "serve":
        asyncio.run(serve(args.port, args.passes))
        return 0
    if args.mode == "case":
        asyncio.run(case(args.name, args.url, args.topics, args.passes))
        return 0
    load_before = os.getloadavg()[0]
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
          f"{args.rounds} rounds; bare, 1 connection: median {statistics.median(bares):,.0f} msg/s; "
          f"load average {load_before:.2f} before, {os.getloadavg()[0]:.2f} after")
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
