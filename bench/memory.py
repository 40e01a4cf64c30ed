"""Resident memory: per idle stream, and over a long run (a leak would show as growth).

    python bench/memory.py                  # 100,000 idle streams; 2,000,000 messages
    python bench/memory.py --quick          # 20,000 streams; 400,000 messages

Part 1 opens a connected client, measures the process's resident set size (RSS),
adds idle streams (each on its own symbol, as a subscription per instrument
looks), and divides the growth by their number; then the same with a consumer
task waiting on each stream. Part 2 pushes messages through 1,000 streams with
consumers, in blocks, and records RSS after every block: after the first block
(warm-up: buffers, caches and the allocator's pools reach their working size)
it must stay flat.

RSS is read from /proc/self/statm (Linux).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import sys
import time
from typing import Any

from _common import BenchClient, load_average, machine
from _feed import SYMBOLS, LoadServer, symbol

PAGE = os.sysconf("SC_PAGE_SIZE")


def rss() -> int:
    """This process's resident set size in bytes, after a full collection."""
    gc.collect()
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


async def per_stream(url: str, count: int) -> tuple[float, float]:
    """Bytes per idle stream, and per stream with a waiting consumer task."""
    client = BenchClient(url)
    try:
        await client.wait_connected()
        # One of each first, so that first-use allocations (the index's tables) are not counted.
        warm = client.stream_filter([{"e": "trade", "s": "WARMUP"}])
        before = rss()
        streams = [client.stream_filter([{"e": "trade", "s": f"X{i:06d}USDT"}]) for i in range(count)]
        idle = (rss() - before) / count

        async def consume(stream: Any) -> None:
            async for _ in stream:
                pass

        before = rss()
        tasks = [asyncio.create_task(consume(s)) for s in streams]
        await asyncio.sleep(0)  # every consumer now waits on its empty stream
        with_task = idle + (rss() - before) / count
        for s in streams:
            await s.close()
        await asyncio.gather(*tasks)
        await warm.close()
        return idle, with_task
    finally:
        await client.exit()


async def growth(url: str, total: int, blocks: int) -> list[tuple[int, int]]:
    """RSS after each block of ``total / blocks`` messages through 1,000 streams."""
    client = BenchClient(url)
    per_block = total // blocks // SYMBOLS * SYMBOLS
    counts = [0] * SYMBOLS
    progress = asyncio.Event()

    async def consume(i: int, stream: Any) -> None:
        async for _ in stream:
            counts[i] += 1
            progress.set()

    samples: list[tuple[int, int]] = []
    try:
        streams = [client.stream_filter([{"e": "trade", "s": symbol(i)}]) for i in range(SYMBOLS)]
        tasks = [asyncio.create_task(consume(i, s)) for i, s in enumerate(streams)]
        await client.wait_connected()
        sent = 0
        samples.append((0, rss()))
        for _ in range(blocks):
            await client.send(json.dumps({"cmd": "blast", "n": per_block}))
            sent += per_block
            while sum(counts) < sent:
                progress.clear()
                await progress.wait()
            samples.append((sent, rss()))
        for s in streams:
            await s.close()
        await asyncio.gather(*tasks)
        return samples
    finally:
        await client.exit()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--streams", type=int, default=100_000, help="idle streams (default 100,000)")
    parser.add_argument("--messages", type=int, default=2_000_000, help="messages for the growth test")
    parser.add_argument("--blocks", type=int, default=10, help="RSS samples over the growth test")
    parser.add_argument("--quick", action="store_true", help="20,000 streams, 400,000 messages")
    args = parser.parse_args()
    if args.quick:
        args.streams, args.messages = 20_000, 400_000
    with LoadServer() as server:
        idle, with_task = asyncio.run(per_stream(server.url, args.streams))
        samples = asyncio.run(growth(server.url, args.messages, args.blocks))

    print(f"\nmemory ({time.strftime('%Y-%m-%d')}; {machine()}; load average {load_average()})\n")
    print(f"resident memory per idle stream ({args.streams:,} streams): {idle:,.0f} bytes")
    print(f"  with a consumer task waiting on each: {with_task:,.0f} bytes\n")
    print(f"resident memory over {samples[-1][0]:,} messages through 1,000 streams:\n")
    print("| messages | RSS (MiB) | since the first block |")
    print("|---|---|---|")
    warm = samples[1][1]
    for sent, size in samples:
        since = "" if sent == 0 else f"{(size - warm) / 2**20:+.2f} MiB"
        print(f"| {sent:,} | {size / 2**20:.1f} | {since} |")
    print(f"\ngrowth after warm-up: {(samples[-1][1] - warm) / 2**20:+.2f} MiB "
          f"over {samples[-1][0] - samples[1][0]:,} messages")
    return 0


if __name__ == "__main__":
    sys.exit(main())
