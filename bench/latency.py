"""Latency from the server's send to the consumer, at a paced rate: bare loop against our client.

    python bench/latency.py                 # 20,000 msgs/s, 3 rounds of 5 s each per case
    python bench/latency.py --quick         # 1 round of 2 s
    python bench/latency.py --rate 50000 --seconds 10

The load server (its own process) stamps every frame with ``time.monotonic_ns()``
just before it writes it; the consumer subtracts that from its own
``time.monotonic_ns()`` when the message reaches it (same clock: both processes
read the machine's CLOCK_MONOTONIC). Cases alternate within each round. The
first 2% of every round (connection warm-up) is left out. Percentiles are over
every message of every round of a case. The client is the README's (plain
``websockets.connect``, ``def`` parse with orjson; bench/_common.py), with one
unfiltered stream or 1,000 streams, one per symbol.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from websockets.asyncio.client import connect

from _common import BenchClient, load_average, loads, machine, percentile
from _feed import SYMBOLS, LoadServer, symbol

now_ns = time.monotonic_ns


def paced(n: int, rate: float) -> str:
    return json.dumps({"cmd": "paced", "n": n, "rate": rate})


async def round_bare(url: str, n: int, rate: float) -> list[int]:
    """websockets' own receive loop and the same parse."""
    out: list[int] = []
    append = out.append
    async with connect(url) as ws:
        await ws.send(paced(n, rate))
        async for raw in ws:
            msg = loads(raw)
            append(now_ns() - msg["ts"])
            if len(out) == n:
                break
    return out


async def round_streams(url: str, n: int, rate: float, count: int) -> list[int]:
    """Our client; ``count`` streams (1: unfiltered; else one per symbol)."""
    out: list[int] = []
    append = out.append
    client = BenchClient(url)
    done = asyncio.Event()

    async def consume(stream: Any) -> None:
        async for msg in stream:
            append(now_ns() - msg["ts"])
            if len(out) == n:
                done.set()

    try:
        if count == 1:
            streams = [client.stream_filter()]
        else:
            streams = [client.stream_filter([{"e": "trade", "s": symbol(i % SYMBOLS)}]) for i in range(count)]
        tasks = [asyncio.create_task(consume(s)) for s in streams]
        await client.wait_connected()
        await client.send(paced(n, rate))
        await done.wait()
        for s in streams:
            await s.close()
        await asyncio.gather(*tasks)
        return out
    finally:
        await client.exit()


async def round_one(url: str, n: int, rate: float) -> list[int]:
    return await round_streams(url, n, rate, 1)


async def round_1k(url: str, n: int, rate: float) -> list[int]:
    return await round_streams(url, n, rate, 1000)


CASES: list[tuple[str, Callable[[str, int, float], Awaitable[list[int]]]]] = [
    ("bare websockets loop (baseline)", round_bare),
    ("AsyncWsStream, 1 stream", round_one),
    ("AsyncWsStream, 1,000 streams", round_1k),
]


async def run(url: str, rounds: int, n: int, rate: float) -> dict[str, list[int]]:
    results: dict[str, list[int]] = {name: [] for name, _ in CASES}
    for _ in range(rounds):
        for name, fn in CASES:
            samples = await fn(url, n, rate)
            results[name].extend(samples[n // 50 :])
            gc.collect()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rate", type=float, default=20_000, help="messages per second (default 20,000)")
    parser.add_argument("--seconds", type=float, default=5.0, help="length of one round (default 5)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds (default 3)")
    parser.add_argument("--quick", action="store_true", help="1 round of 2 seconds")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.seconds = 1, 2.0
    n = int(args.rate * args.seconds)
    with LoadServer() as server:
        results = asyncio.run(run(server.url, args.rounds, n, args.rate))

    print(f"\nlatency from send to consumer at {args.rate:,.0f} msgs/s: {args.rounds} rounds of "
          f"{args.seconds:g} s ({time.strftime('%Y-%m-%d')}; {machine()}; load average {load_average()})\n")
    print("| case | p50 | p99 | p99.9 | max | over the bare loop: p50 / p99 / p99.9 |")
    print("|---|---|---|---|---|---|")
    base: tuple[float, ...] | None = None
    for name, _ in CASES:
        values = sorted(results[name])
        quantiles = tuple(percentile(values, q) / 1000 for q in (0.5, 0.99, 0.999))
        if base is None:
            base = quantiles
        p50, p99, p999 = quantiles
        over = " / ".join(f"{q - b:+,.0f}" for q, b in zip(quantiles, base))
        print(f"| {name} | {p50:,.0f} µs | {p99:,.0f} µs | {p999:,.0f} µs | {values[-1] / 1000:,.0f} µs "
              f"| {over} µs |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
