"""Messages per second through one connection: a bare websockets loop against our client.

    python bench/throughput.py            # 5 rounds, about 2 minutes
    python bench/throughput.py --quick    # 2 rounds of 100,000 messages, about 30 seconds
    python bench/throughput.py --rounds 9 --messages 600000

A load server in its own process (bench/_feed.py) writes pre-built ~200-byte
Binance-style trade frames on 1,000 symbols as fast as TCP lets it. Every round
runs every case once, in the order of CASES, so the baseline and the client
alternate and share the machine's mood; the table shows messages per second as
median [min-max] and each median's ratio to the baseline's median of the same
run. Every round is verified: every consumer got exactly the messages it should
(count, sequence or symbol), and the client's ``stats()["frames"]`` equals the
frames sent. The load server's CPU use during each round shows whether it was
the bottleneck (it is not when it stays well under 100%).

To add a row (another client, another transport), write an ``async def
round_x(url, n, meter) -> list[str]`` (problems found; empty when correct) that
calls ``await meter.start()`` right before it asks for the frames and ``await
meter.stop()`` when its consumers have them all, and append a ``Case`` to CASES.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from websockets.asyncio.client import connect

from _common import BenchClient, load_average, loads, machine, spread
from _feed import CYCLE, SYMBOLS, LoadServer, server_cpu, sink_rate, symbol

from async_ws_stream.transports import DEFAULT_READ_SIZE, PICOWS_AVAILABLE, picows_connect, websockets_connect

HERE = Path(__file__).resolve().parent
DEFAULT_OLD_PYTHON = "/work/venv-old/bin/python"
ROUND_TIMEOUT = 60.0


def blast(n: int) -> str:
    return json.dumps({"cmd": "blast", "n": n})


class Meter:
    """Times one round: wall clock, this process's CPU, and the load server's CPU.

    CPU seconds are what a round costs whatever else the machine runs; wall
    seconds are what a user sees. On a quiet machine the two agree.
    """

    #: --gc-freeze: move everything a round set up out of the cyclic GC's sight while it runs.
    freeze = False

    def __init__(self, control: Any) -> None:
        self._control = control
        self.seconds = 0.0
        self.cpu = 0.0
        self.server_busy = float("nan")
        self._t0 = self._cpu0 = self._server0 = 0.0

    async def start(self) -> None:
        if self.freeze:
            gc.collect()
            gc.freeze()
        self._server0 = await server_cpu(self._control)
        self._t0 = time.perf_counter()
        self._cpu0 = time.process_time()

    async def stop(self) -> None:
        self.cpu = time.process_time() - self._cpu0
        self.seconds = time.perf_counter() - self._t0
        self.server_busy = (await server_cpu(self._control) - self._server0) / self.seconds


Round = Callable[[str, int, Meter], Awaitable[list[str]]]


# -- the rounds -----------------------------------------------------------------------------------


async def round_bare(url: str, n: int, meter: Meter) -> list[str]:
    """The baseline: websockets' own receive loop and the same parse, nothing else."""
    return await _bare_loop(await connect(url), n, meter)


async def round_bare_large_reads(url: str, n: int, meter: Meter) -> list[str]:
    """The same loop on the connection our client uses: does the read size alone move the baseline?"""
    return await _bare_loop(await websockets_connect(url, read_size=BenchClient.read_size), n, meter)


async def _bare_loop(ws: Any, n: int, meter: Meter) -> list[str]:
    async with ws:
        await meter.start()
        await ws.send(blast(n))
        count = expect = bad = 0
        async for raw in ws:
            msg = loads(raw)
            if msg["t"] != expect:
                bad += 1
            expect += 1
            if expect == CYCLE:
                expect = 0
            count += 1
            if count == n:
                break
        await meter.stop()
    return [f"{bad} messages out of sequence"] if bad else []


def _check_frames(client: BenchClient, n: int) -> list[str]:
    stats = client.stats()
    problems = []
    if stats["frames"] != n:
        problems.append(f"stats()['frames'] is {stats['frames']}, the server sent {n}")
    if stats["dropped"] or stats["parse_errors"]:
        problems.append(f"dropped={stats['dropped']} parse_errors={stats['parse_errors']}")
    return problems


async def round_one_stream(url: str, n: int, meter: Meter,
                           client_class: type[BenchClient] = BenchClient) -> list[str]:
    """One unfiltered stream, consumed with ``async for``."""
    client = client_class(url)
    try:
        stream = client.stream_filter()
        await client.wait_connected()
        await meter.start()
        await client.send(blast(n))
        count = expect = bad = 0
        async for msg in stream:
            if msg["t"] != expect:
                bad += 1
            expect += 1
            if expect == CYCLE:
                expect = 0
            count += 1
            if count == n:
                break
        await meter.stop()
        problems = [f"{bad} messages out of sequence"] if bad else []
        return problems + _check_frames(client, n)
    finally:
        await client.exit()


async def _symbol_streams(url: str, n: int, meter: Meter, idle: int,
                          client_class: type[BenchClient] = BenchClient) -> list[str]:
    """SYMBOLS streams each on its own symbol, plus ``idle`` streams whose symbol never comes."""
    client = client_class(url)
    per = n // SYMBOLS

    async def consume(stream: Any, sym: str) -> tuple[int, int]:
        count = bad = 0
        async for msg in stream:
            if msg["s"] != sym:
                bad += 1
            count += 1
            if count == per:
                break
        return count, bad

    async def idle_consume(stream: Any) -> int:
        got = 0
        async for _ in stream:
            got += 1
        return got

    try:
        streams = [client.stream_filter([{"e": "trade", "s": symbol(i)}]) for i in range(SYMBOLS)]
        idlers = [client.stream_filter([{"e": "trade", "s": f"NONE{i}USDT"}]) for i in range(idle)]
        consumers = [asyncio.create_task(consume(s, symbol(i))) for i, s in enumerate(streams)]
        idle_consumers = [asyncio.create_task(idle_consume(s)) for s in idlers]
        await client.wait_connected()
        await meter.start()
        await client.send(blast(n))
        results = await asyncio.gather(*consumers)
        await meter.stop()
        problems = _check_frames(client, n)
        short = sum(1 for count, _ in results if count != per)
        wrong = sum(bad for _, bad in results)
        if short:
            problems.append(f"{short} streams did not get their {per} messages")
        if wrong:
            problems.append(f"{wrong} messages reached a stream of another symbol")
        for s in idlers:
            await s.close()
        stray = sum(await asyncio.gather(*idle_consumers))
        if stray:
            problems.append(f"{stray} messages reached streams whose symbol never came")
        return problems
    finally:
        await client.exit()


async def round_1k_streams(url: str, n: int, meter: Meter) -> list[str]:
    """1,000 streams, one per symbol, each with its own consumer task."""
    return await _symbol_streams(url, n, meter, idle=0)


class PlainConnectBenchClient(BenchClient):
    """The client on plain ``websockets.connect``: asyncio's 256 KiB reads."""

    async def _create_ws(self) -> Any:
        return await connect(self.url)


async def round_1k_streams_plain_connect(url: str, n: int, meter: Meter) -> list[str]:
    """The 1,000 streams on ``websockets.connect``: what the read size is worth."""
    return await _symbol_streams(url, n, meter, idle=0, client_class=PlainConnectBenchClient)


async def round_10k_streams(url: str, n: int, meter: Meter) -> list[str]:
    """The 1,000 streams plus 9,000 (with consumers) whose symbols never come."""
    return await _symbol_streams(url, n, meter, idle=9 * SYMBOLS)


async def _handler_round(url: str, n: int, meter: Meter, asynchronous: bool) -> list[str]:
    client = BenchClient(url)
    done = asyncio.Event()
    count = expect = bad = 0

    def on_trade(msg: Any) -> None:
        nonlocal count, expect, bad
        if msg["t"] != expect:
            bad += 1
        expect = (expect + 1) % CYCLE
        count += 1
        if count == n:
            done.set()

    async def on_trade_async(msg: Any) -> None:
        on_trade(msg)

    client.add_handler(on_trade_async if asynchronous else on_trade)
    try:
        await client.wait_connected()
        await meter.start()
        await client.send(blast(n))
        await done.wait()
        await meter.stop()
        problems = [f"{bad} messages out of sequence"] if bad else []
        return problems + _check_frames(client, n)
    finally:
        await client.exit()


async def round_sync_handler(url: str, n: int, meter: Meter) -> list[str]:
    """One unfiltered plain-function handler, called inline."""
    return await _handler_round(url, n, meter, asynchronous=False)


async def round_async_handler(url: str, n: int, meter: Meter) -> list[str]:
    """One unfiltered ``async def`` handler, run by its own task."""
    return await _handler_round(url, n, meter, asynchronous=True)


# -- the picows transport (pip install 'async_ws_stream[fast]'; rows skipped without it) ------


class PicowsBenchClient(BenchClient):
    """The same client on the picows transport: only ``_create_ws`` changes."""

    async def _create_ws(self) -> Any:
        return await picows_connect(self.url, read_size=self.read_size)


async def round_bare_picows(url: str, n: int, meter: Meter) -> list[str]:
    """The transport's floor: picows' own frame callback and the same parse; no client, no buffer."""
    import picows

    done = asyncio.get_running_loop().create_future()
    text = picows.WSMsgType.TEXT

    class Listener(picows.WSListener):  # type: ignore[misc]
        count = expect = bad = 0

        def on_ws_frame(self, transport: Any, frame: Any) -> None:
            if frame.msg_type is not text:
                return
            msg = loads(frame.get_payload_as_memoryview())
            if msg["t"] != self.expect:
                self.bad += 1
            self.expect += 1
            if self.expect == CYCLE:
                self.expect = 0
            self.count += 1
            if self.count == n:
                done.set_result(None)

    transport, listener = await picows.ws_connect(Listener, url)
    try:
        await meter.start()
        transport.send(text, blast(n).encode())
        await done
        await meter.stop()
    finally:
        transport.send_close(picows.WSCloseCode.OK)
        transport.disconnect()
        await transport.wait_disconnected()
    return [f"{listener.bad} messages out of sequence"] if listener.bad else []


async def round_one_stream_picows(url: str, n: int, meter: Meter) -> list[str]:
    """One unfiltered stream, on picows."""
    return await round_one_stream(url, n, meter, PicowsBenchClient)


async def round_1k_streams_picows(url: str, n: int, meter: Meter) -> list[str]:
    """1,000 streams, one per symbol, each with its own consumer task, on picows."""
    return await _symbol_streams(url, n, meter, idle=0, client_class=PicowsBenchClient)


PICOWS_ONE = "AsyncWsStream on picows, 1 stream"
PICOWS_1K = "AsyncWsStream on picows, 1,000 streams"


OLD_PYTHON = DEFAULT_OLD_PYTHON


async def round_old(url: str, n: int, meter: Meter) -> list[str]:
    """The older AsyncWebsocketStreamInterface, in its own venv, one unfiltered consumer."""
    proc = await asyncio.create_subprocess_exec(
        OLD_PYTHON, str(HERE / "_old_worker.py"), url, str(n),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    if proc.returncode != 0 or not out.strip():
        tail = err.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
        return [f"the older package's worker failed: {tail[0]}"]
    result = json.loads(out.decode().strip().splitlines()[-1])
    meter.seconds = result["seconds"] * n / max(1, result["messages"])
    meter.cpu = result["cpu"] * n / max(1, result["messages"])
    return list(result["problems"])


@dataclass
class Case:
    """One row of the table: a round function and the share of the round's messages it gets."""

    name: str
    run: Round
    scale: float = 1.0
    results: list[tuple[float, float, float]] = field(default_factory=list)  # msgs/s, msgs/CPU-s, server busy
    problems: list[str] = field(default_factory=list)


BARE_LARGE = "bare websockets loop, websockets_connect"
K1_PLAIN = "AsyncWsStream, 1,000 streams, websockets.connect"

CASES: list[Case] = [
    Case("bare websockets loop (baseline)", round_bare),
    Case(BARE_LARGE, round_bare_large_reads),
    Case("AsyncWsStream, 1 stream", round_one_stream),
    Case("AsyncWsStream, 1,000 streams", round_1k_streams),
    Case(K1_PLAIN, round_1k_streams_plain_connect),
    Case("AsyncWsStream, 10,000 streams", round_10k_streams),
    Case("AsyncWsStream, 1 sync handler", round_sync_handler),
    Case("AsyncWsStream, 1 async handler", round_async_handler),
]
OLD_CASE = Case("older package, 1 consumer", round_old, scale=0.01)
if PICOWS_AVAILABLE:
    # Each beside the websockets row it compares with.
    for _after, _case in (
        ("bare websockets loop (baseline)", Case("bare picows listener", round_bare_picows)),
        ("AsyncWsStream, 1 stream", Case(PICOWS_ONE, round_one_stream_picows)),
        ("AsyncWsStream, 1,000 streams", Case(PICOWS_1K, round_1k_streams_picows)),
    ):
        CASES.insert([c.name for c in CASES].index(_after) + 1, _case)


def old_package_available(python: str) -> str | None:
    """None when the older package can run under ``python``, else why not."""
    if not os.path.exists(python):
        return f"{python} does not exist"
    import subprocess

    probe = subprocess.run(
        [python, "-c", "import AsyncWebsocketStreamInterface, orjson"], capture_output=True, text=True
    )
    if probe.returncode != 0:
        return (probe.stderr.strip().splitlines() or ["import failed"])[-1]
    return None


async def run(url: str, cases: list[Case], rounds: int, n: int, show: bool) -> None:
    async with connect(url) as control:
        for r in range(rounds):
            for case in cases:
                m = max(SYMBOLS, int(n * case.scale) // SYMBOLS * SYMBOLS)
                meter = Meter(control)
                try:
                    # No round of a healthy client takes a minute; a stuck one must not hang the run.
                    async with asyncio.timeout(ROUND_TIMEOUT):
                        problems = await case.run(url, m, meter)
                except TimeoutError:
                    problems = [f"did not finish within {ROUND_TIMEOUT}s"]
                    meter.seconds = meter.cpu = ROUND_TIMEOUT
                    meter.server_busy = float("nan")
                rate, cpu_rate = m / meter.seconds, m / max(meter.cpu, 1e-9)
                case.results.append((rate, cpu_rate, meter.server_busy))
                case.problems.extend(f"round {r + 1}: {p}" for p in problems)
                if show:
                    busy = "" if meter.server_busy != meter.server_busy else f", server busy {meter.server_busy:.0%}"
                    print(f"  round {r + 1} {case.name}: {rate / 1000:,.1f}k/s, {cpu_rate / 1000:,.1f}k/CPU-s"
                          f"{busy}{' PROBLEMS' if problems else ''}", file=sys.stderr, flush=True)
                gc.unfreeze()  # --gc-freeze: what the round froze can go now
                gc.collect()


def report(cases: list[Case], args: argparse.Namespace, capacity: float, old_note: str | None) -> None:
    wall = {c.name: [r[0] for r in c.results] for c in cases}
    cpu = {c.name: [r[1] for r in c.results] for c in cases}
    base_wall = statistics.median(wall[cases[0].name])
    base_cpu = statistics.median(cpu[cases[0].name])
    print(f"\nthroughput: {args.rounds} rounds of {args.messages:,} messages ({time.strftime('%Y-%m-%d')}; "
          f"{machine()}; load average {load_average()} at the end; read size {args.read_size:,}"
          f"{'; gc.freeze() in every round' if args.gc_freeze else ''})")
    print(f"load server alone, to a reader that only counts bytes: {capacity / 1000:,.0f}k frames/s\n")
    print("| case | messages/s, median [min-max] | ratio | messages per CPU-second | ratio | server busy |")
    print("|---|---|---|---|---|---|")
    for case in cases:
        busy = [r[2] for r in case.results if r[2] == r[2]]
        busy_text = f"{statistics.median(busy):.0%}" if busy else "-"
        print(f"| {case.name} | {spread(wall[case.name])} | {statistics.median(wall[case.name]) / base_wall:.3f} "
              f"| {spread(cpu[case.name])} | {statistics.median(cpu[case.name]) / base_cpu:.3f} | {busy_text} |")
    if old_note:
        print(f"| older package | not run: {old_note} | | | | |")
    print()
    for label, table in (("wall", wall), ("CPU", cpu)):
        med = {name: statistics.median(values) for name, values in table.items()}
        k1, k10 = med.get("AsyncWsStream, 1,000 streams"), med.get("AsyncWsStream, 10,000 streams")
        one, old = med.get("AsyncWsStream, 1 stream"), med.get(OLD_CASE.name)
        parts = []
        if k1 and k10:
            parts.append(f"10,000 / 1,000 streams: {k10 / k1:.3f}")
        if one and old:
            parts.append(f"1 stream / older package: {one / old:,.0f}x")
        base, bare_large, plain = med[cases[0].name], med.get(BARE_LARGE), med.get(K1_PLAIN)
        if k1:
            parts.append(f"1,000 streams / baseline: {k1 / base:.3f} (issue 5 asks >= 0.65)"
                         + (f", / the bare loop on the same reads: {k1 / bare_large:.3f}" if bare_large else "")
                         + (f", on websockets.connect: {plain / base:.3f}" if plain else ""))
        p1, p1k = med.get(PICOWS_ONE), med.get(PICOWS_1K)
        if p1 and p1k:
            parts.append(f"on picows / baseline: 1 stream {p1 / base:.2f} (issue 7 asks >= 1.5), "
                         f"1,000 streams {p1k / base:.2f} (>= 1.0)")
        if parts:
            print(f"{label}: " + "; ".join(parts))
    ok = all(not c.problems for c in cases)
    print("\nverification:", "every consumer got exactly its messages in every round" if ok else "FAILED")
    for case in cases:
        for problem in case.problems:
            print(f"  {case.name}: {problem}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="rounds of every case (default 5)")
    parser.add_argument("--messages", type=int, default=300_000,
                        help="messages per round (a multiple of 1,000; default 300,000)")
    parser.add_argument("--quick", action="store_true", help="2 rounds of 100,000 messages")
    parser.add_argument("--old-python", default=DEFAULT_OLD_PYTHON,
                        help="python of a venv with AsyncWebsocketStreamInterface and orjson installed")
    parser.add_argument("--no-old", action="store_true", help="skip the older package")
    parser.add_argument("--only", action="append", default=[],
                        help="run only the cases whose name contains this (repeatable; the baseline always runs)")
    parser.add_argument("--read-size", type=int, default=DEFAULT_READ_SIZE,
                        help="bytes per socket read for the client's transports (websockets_connect and "
                             f"picows_connect; default {DEFAULT_READ_SIZE:,})")
    parser.add_argument("--gc-freeze", action="store_true",
                        help="gc.freeze() once a round has set up its streams, as a program with thousands of "
                             "long-lived streams may (shows what the cyclic GC costs them)")
    parser.add_argument("-v", "--verbose", action="store_true", help="print every round as it ends")
    args = parser.parse_args()
    BenchClient.read_size = args.read_size
    Meter.freeze = args.gc_freeze
    if args.quick:
        args.rounds, args.messages = 2, 100_000
    global OLD_PYTHON
    OLD_PYTHON = args.old_python

    cases = [CASES[0]] + [c for c in CASES[1:] if not args.only or any(o in c.name for o in args.only)]
    old_note = None if not args.no_old else "--no-old"
    if old_note is None:
        old_note = old_package_available(args.old_python)
    if old_note is None:
        cases.append(OLD_CASE)
    else:
        print(f"older package: not run ({old_note}); to include it: python3 -m venv /work/venv-old && "
              "/work/venv-old/bin/pip install AsyncWebsocketStreamInterface orjson", file=sys.stderr)

    if not PICOWS_AVAILABLE:
        print("picows rows: not run (picows is not installed; pip install 'async_ws_stream[fast]')",
              file=sys.stderr)

    with LoadServer() as server:
        capacity = sink_rate(server.port, 2_000_000)
        asyncio.run(run(server.url, cases, args.rounds, args.messages, args.verbose))
    report(cases, args, capacity, old_note)
    return 0 if all(not c.problems for c in cases) else 1


if __name__ == "__main__":
    sys.exit(main())
