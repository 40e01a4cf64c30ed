"""Reconnection: time from an abrupt drop to the first message of the new connection, and recycles.

    python bench/reconnect.py              # 30 drops, 30 recycles
    python bench/reconnect.py --quick      # 10 of each

Part 1: the load server (its own process) feeds a sequenced stream and, 0.3 s
into every connection, aborts it (no close frame, as a dead network does). The
first frame of every connection goes out at once and carries the time of the
last drop, so the consumer measures drop -> reconnect -> ``_on_connect``
(subscribe) -> first message dispatched, on one clock (CLOCK_MONOTONIC). The
client runs with ``stable_after=0.1``, so that each 0.3 s connection counts as
stable and every drop is met by the immediate first retry the spec promises
(with the default 5 s, drops that close together are backed off on purpose).

Part 2: the client recycles its connection every 0.2 s (``_when2create_new_ws``)
while the server broadcasts one global sequence at 5,000 msgs/s to every
connection subscribed. Every number from the first received to the last must
arrive (duplicates in the make-before-break overlap are allowed and counted).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from typing import Any

from _common import BenchClient, load_average, machine, percentile
from _feed import LoadServer


async def drops(url: str, count: int) -> tuple[list[float], dict[str, Any]]:
    """Milliseconds from each drop to the first message of the next connection."""
    client = BenchClient(url, commands=[{"cmd": "feed", "rate": 1000, "drop_after": 0.3}], stable_after=0.1)
    delays: list[float] = []
    try:
        stream = client.stream_filter()
        async for msg in stream:
            dropped_at = msg.get("dropped_at")
            if dropped_at is not None:
                delays.append((time.monotonic_ns() - dropped_at) / 1e6)
                if len(delays) == count:
                    break
        return delays, client.stats()
    finally:
        await client.exit()


async def recycles(url: str, count: int) -> tuple[int, int, int, int]:
    """(recycles, messages received, duplicates, missing) over ``count`` recycles."""
    # stable_after=0.1: a recycle asked for sooner than stable_after is paced on purpose
    # (so that recycles cannot storm); at the default 5 s, 0.2 s recycles would wait 5 s each.
    client = BenchClient(url, commands=[{"cmd": "feed", "rate": 5000}], recycle_every=0.2, stable_after=0.1)
    seen: list[int] = []
    try:
        stream = client.stream_filter([{"e": "seq"}])
        async with asyncio.timeout(count * 0.2 + 30):
            async for msg in stream:
                if "dropped_at" not in msg:  # the greeting repeats the current number
                    seen.append(msg["k"])
                if client.stats()["recycles"] >= count:
                    break
        done = client.stats()["recycles"]
    finally:
        await client.exit()
    unique = set(seen)
    missing = (max(unique) - min(unique) + 1) - len(unique)
    return done, len(seen), len(seen) - len(unique), missing


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--drops", type=int, default=30, help="abrupt drops to time (default 30)")
    parser.add_argument("--recycles", type=int, default=30, help="recycles to check (default 30)")
    parser.add_argument("--quick", action="store_true", help="10 drops, 10 recycles")
    args = parser.parse_args()
    if args.quick:
        args.drops, args.recycles = 10, 10
    with LoadServer() as server:
        delays, stats = asyncio.run(drops(server.url, args.drops))
        done, received, duplicates, missing = asyncio.run(recycles(server.url, args.recycles))

    delays.sort()
    print(f"\nreconnect ({time.strftime('%Y-%m-%d')}; {machine()}; load average {load_average()})\n")
    print(f"abrupt drop -> first message on the new connection, {len(delays)} drops "
          f"(reconnects counted by the client: {stats['reconnects']}):")
    print(f"  median {statistics.median(delays):.2f} ms, p90 {percentile(delays, 0.9):.2f} ms, "
          f"max {delays[-1]:.2f} ms")
    print(f"recycle every 0.2 s at 5,000 msgs/s: {done} recycles, {received:,} messages received, "
          f"{duplicates:,} duplicates (overlap), {missing} missed")
    return 0 if missing == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
