"""What sequence tracking costs per message: the same feed with and without a ``_sequence`` hook.

    python bench/sequences.py            # 9 pairs, about 1 minute
    python bench/sequences.py --quick    # 3 pairs of 50,000 messages, about 15 seconds

The load server (bench/_feed.py, its own process) blasts pre-built ~200-byte
trade frames on 1,000 symbols. Two clients read them through one unfiltered
stream: ``plain`` (no hook: the plain receive loop) and ``tracked``, whose
``_sequence`` numbers each trade within its symbol, ``(s, t // 1000, t // 1000)``,
so that 1,000 sequences advance by one at every message (Binance's depth
streams, one sequence per symbol). Every measurement runs in a fresh process,
so that neither variant inherits the other's warmed caches or grown heap; a pair
is one run of each, back to back, their order alternating from pair to pair.
Each run is the median of ``--reps`` rounds of ``--messages`` messages, each
round with a new client (so that the sequences start afresh). The figure is the
median over pairs of the ratio tracked/plain, with its range, and what that
means in nanoseconds per message, in this process's CPU time (the steady
figure when other work shares the machine; the wall-clock ratio is shown too).
Every round is verified: every message delivered once, in order, no duplicate
and no gap counted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Hashable
from pathlib import Path
from typing import Any

from _common import BenchClient, load_average, machine
from _feed import CYCLE, SYMBOLS, LoadServer

HERE = Path(__file__).resolve().parent


class TrackedClient(BenchClient):
    """The bench client with a sequence per symbol."""

    def _sequence(self, msg: Any) -> tuple[Hashable, int, int] | None:
        n = msg["t"] // SYMBOLS
        return msg["s"], n, n


async def one_round(cls: type[BenchClient], url: str, n: int) -> tuple[float, float]:
    """Messages per CPU second and per wall second through one fresh client; raises if anything is wrong."""
    client = cls(url)
    try:
        stream = client.stream_filter()
        await client.wait_connected()
        begin = time.perf_counter()
        cpu = time.process_time()
        await client.send(json.dumps({"cmd": "blast", "n": n}))
        expect = 0
        async for msg in stream:
            if msg["t"] != expect:
                raise SystemExit(f"{cls.__name__}: message {expect} came as {msg['t']}")
            expect += 1
            if expect == n:
                break
        seconds = time.perf_counter() - begin
        cpu = time.process_time() - cpu
        stats = client.stats()
        if stats["frames"] != n or stats["duplicates"] or stats["gaps"] or stats["dropped"]:
            raise SystemExit(f"{cls.__name__}: frames={stats['frames']} duplicates={stats['duplicates']} "
                             f"gaps={stats['gaps']} dropped={stats['dropped']}")
        return n / cpu, n / seconds
    finally:
        await client.exit()


async def child(variant: str, url: str, n: int, reps: int) -> None:
    cls = TrackedClient if variant == "tracked" else BenchClient
    rates = [await one_round(cls, url, n) for _ in range(reps)]
    print(statistics.median(r[0] for r in rates), statistics.median(r[1] for r in rates))


def run_child(variant: str, url: str, n: int, reps: int) -> tuple[float, float]:
    done = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--child", variant, "--url", url,
         "--messages", str(n), "--reps", str(reps)],
        capture_output=True, text=True, timeout=300,
    )
    if done.returncode != 0:
        raise SystemExit(f"{variant} run failed:\n{done.stderr}{done.stdout}")
    cpu, wall = done.stdout.split()[-2:]
    return float(cpu), float(wall)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=9, help="paired runs (default 9)")
    parser.add_argument("--messages", type=int, default=100_000, help=f"messages per round (at most {CYCLE:,})")
    parser.add_argument("--reps", type=int, default=3, help="rounds per run; a run's rate is their median")
    parser.add_argument("--quick", action="store_true", help="3 pairs of 50,000 messages, 2 rounds each")
    parser.add_argument("--child", choices=("plain", "tracked"), help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        asyncio.run(child(args.child, args.url, args.messages, args.reps))
        return
    if args.quick:
        args.pairs, args.messages, args.reps = 3, 50_000, 2
    if not 0 < args.messages <= CYCLE:
        parser.error(f"--messages must be between 1 and {CYCLE:,} (the feed's cycle), got {args.messages}")
    print(f"sequence tracking: {args.pairs} pairs of fresh processes, {args.messages:,} messages x {args.reps} "
          f"rounds per run, one unfiltered stream, 1,000 sequences")
    print(machine())
    ratios: list[float] = []
    costs: list[float] = []
    walls: list[float] = []
    with LoadServer() as server:
        print(f"{'pair':>4}  {'plain msgs/cpu-s':>17}  {'tracked msgs/cpu-s':>19}  {'ratio':>6}  {'ns/msg':>7}  "
              f"{'wall ratio':>10}")
        for i in range(args.pairs):
            order = ("plain", "tracked") if i % 2 == 0 else ("tracked", "plain")
            rates = {variant: run_child(variant, server.url, args.messages, args.reps) for variant in order}
            (plain, plain_wall), (tracked, tracked_wall) = rates["plain"], rates["tracked"]
            ratio = tracked / plain
            cost = (1 / tracked - 1 / plain) * 1e9
            ratios.append(ratio)
            costs.append(cost)
            walls.append(tracked_wall / plain_wall)
            print(f"{i + 1:>4}  {plain:>17,.0f}  {tracked:>19,.0f}  {ratio:>6.3f}  {cost:>7.0f}  {walls[-1]:>10.3f}")
    print(f"tracked / plain (CPU): median {statistics.median(ratios):.3f} [{min(ratios):.3f}-{max(ratios):.3f}]; "
          f"cost per message: median {statistics.median(costs):.0f} ns [{min(costs):.0f}-{max(costs):.0f}]; "
          f"wall ratio median {statistics.median(walls):.3f} [{min(walls):.3f}-{max(walls):.3f}]; "
          f"load average {load_average()}")


if __name__ == "__main__":
    main()
