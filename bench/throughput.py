"""Messages per second through one connection, as a user writes the client, paired with a bare loop.

    python bench/throughput.py                 # 5 rounds of 200,000 messages, about 12 minutes
    python bench/throughput.py --quick         # 1 round of 100,000 messages, about 2 minutes
    python bench/throughput.py --only "1,000"  # only the rows whose name contains this
    python bench/throughput.py --compare /path/to/other/checkout   # that package's 1 and 1,000 streams too

What is measured by default is what the README's quick start writes: plain
``websockets.connect``, ``def _parse_raw_data`` with orjson, streams filtered on
``{"e": "trade", "s": SYMBOL}``. The load server (bench/_feed.py, its own process)
writes pre-built ~200-byte Binance-style trades whose symbols are drawn at random
with a fixed seed, so a stream's share is uneven, as on a real feed, and every
consumer knows exactly how many messages it must get.

Method:

- **One fresh process per measurement** (bench/_cases.py): no run inherits another's
  heap, GC generations or leftover tasks.
- **Every variant is paired with the bare loop.** A round runs bare, V1, bare, V2, ...,
  bare (variants in a seeded random order), and each variant's figure is its rate
  divided by the mean of the two bare runs beside it. The table gives the median of
  these ratios over the rounds, with their range. On a shared machine whose speed
  drifts, neighbours see the same drift; a ratio of medians taken minutes apart does not.
- **Every consumer's count is verified** (see bench/_cases.py); the script exits 1 when
  any check fails.
- The load average is printed with the table: the figures mean little without it.

To add a row, add a case to ``CASES`` in bench/_cases.py and a ``Variant`` to ``VARIANTS``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from _common import load_average, machine, make_certificate
from _feed import SYMBOLS, LoadServer, sink_rate

from async_ws_stream.transports import PICOWS_AVAILABLE

HERE = Path(__file__).resolve().parent
RUN_TIMEOUT = 120.0


@dataclass
class Variant:
    """One row: a case of bench/_cases.py, run with the package at ``package`` (None: this checkout)."""

    name: str
    case: str
    package: str | None = None
    ratios: list[float] = field(default_factory=list)  # rate / mean of the two bare neighbours
    cpu_ratios: list[float] = field(default_factory=list)
    rates: list[float] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


BARE = "bare websockets loop (websockets.connect, orjson)"

VARIANTS: list[Variant] = [
    Variant("hand-written floor, 1,000 consumers", "floor-1k"),
    Variant("AsyncWsStream, 1 stream", "lib-1"),
    Variant("AsyncWsStream, 100 streams", "lib-100"),
    Variant("AsyncWsStream, 1,000 streams", "lib-1k"),
    Variant("AsyncWsStream, 10,000 streams", "lib-10k"),
    Variant("AsyncWsStream, 10,000 streams, gc.freeze()", "lib-10k-freeze"),
    Variant("AsyncWsStream, 1 stream, async def parse", "lib-1-async-parse"),
    Variant("AsyncWsStream, 1,000 streams, async def parse", "lib-1k-async-parse"),
    Variant("AsyncWsStream, 1 stream, stream.batches()", "lib-1-batches"),
    Variant("AsyncWsStream, 1,000 streams, stream.batches()", "lib-1k-batches"),
    Variant("AsyncWsStream, 1 stream, instrumented (metrics)", "lib-1-metrics"),
    Variant("AsyncWsStream, 1,000 streams, instrumented (metrics)", "lib-1k-metrics"),
    Variant("AsyncWsStream, 1 sync handler", "sync-handler"),
    Variant("AsyncWsStream, 1 async handler", "async-handler"),
    Variant("bare loop over wss://", "bare-wss"),
    Variant("AsyncWsStream over wss://, 1 stream", "lib-1-wss"),
    Variant("AsyncWsStream over wss://, 1,000 streams", "lib-1k-wss"),
    Variant("bare loop on websockets_connect", "bare-large-reads"),
    Variant("AsyncWsStream on websockets_connect, 1 stream", "lib-1-large-reads"),
    Variant("AsyncWsStream on websockets_connect, 1,000 streams", "lib-1k-large-reads"),
    Variant("bare picows listener", "bare-picows"),
    Variant("AsyncWsStream on picows, 1 stream", "lib-1-picows"),
    Variant("AsyncWsStream on picows, 1,000 streams", "lib-1k-picows"),
    Variant("bare loop, msgspec Struct instead of orjson", "bare-msgspec"),
    Variant("AsyncWsStream, msgspec Structs, 1 stream", "lib-1-msgspec"),
    Variant("AsyncWsStream, msgspec Structs, 1,000 streams", "lib-1k-msgspec"),
]
PICOWS_CASES = {"bare-picows", "lib-1-picows", "lib-1k-picows"}


@dataclass
class Setup:
    url: str
    tls_url: str
    cert: str
    messages: int
    seed: int


def measure(setup: Setup, case: str, package: str | None) -> tuple[float, float, list[str]]:
    """Run one case in a fresh interpreter: (messages/s, messages per CPU-second, problems)."""
    env = dict(os.environ)
    if package is not None:
        env["BENCH_PACKAGE_PATH"] = package
    command = [sys.executable, str(HERE / "_cases.py"), case, "--url", setup.url, "--tls-url", setup.tls_url,
               "--cert", setup.cert, "--messages", str(setup.messages), "--seed", str(setup.seed)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=RUN_TIMEOUT, env=env, cwd=HERE)
    except subprocess.TimeoutExpired:
        return float("nan"), float("nan"), [f"{case} did not finish within {RUN_TIMEOUT:.0f}s"]
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return float("nan"), float("nan"), [f"{case} failed: {tail}"]
    result = json.loads(lines[-1])
    n = setup.messages
    return n / result["seconds"], n / max(result["cpu"], 1e-9), list(result["problems"])


def run(setup: Setup, variants: list[Variant], rounds: int, verbose: bool) -> list[float]:
    """Every round: bare, V, bare, V, ..., bare. Returns every bare rate."""
    bares: list[float] = []
    order = random.Random(setup.seed)
    for r in range(rounds):
        todo = variants[:]
        order.shuffle(todo)
        before, before_cpu, problems = measure(setup, "bare", None)
        _note(verbose, r, BARE, before, problems)
        bares.append(before)
        for variant in todo:
            rate, cpu_rate, problems = measure(setup, variant.case, variant.package)
            _note(verbose, r, variant.name, rate, problems)
            after, after_cpu, bare_problems = measure(setup, "bare", None)
            _note(verbose, r, BARE, after, bare_problems)
            bares.append(after)
            variant.rates.append(rate)
            variant.ratios.append(rate / ((before + after) / 2))
            variant.cpu_ratios.append(cpu_rate / ((before_cpu + after_cpu) / 2))
            variant.problems.extend(f"round {r + 1}: {p}" for p in problems + bare_problems)
            before, before_cpu = after, after_cpu
    return bares


def _note(verbose: bool, r: int, name: str, rate: float, problems: Sequence[str]) -> None:
    if verbose:
        print(f"  round {r + 1} {name}: {rate / 1000:,.1f}k/s{' PROBLEMS: ' + '; '.join(problems) if problems else ''}",
              file=sys.stderr, flush=True)


def _spread(values: Sequence[float], fmt: str = "{:.2f}") -> str:
    good = [v for v in values if v == v]
    if not good:
        return "-"
    return f"{fmt.format(statistics.median(good))} [{fmt.format(min(good))}-{fmt.format(max(good))}]"


def _quotient(top: Variant | None, bottom: Variant | None) -> str:
    """Median over rounds of top's ratio over bottom's (each already paired with its bare loop)."""
    if top is None or bottom is None or not top.ratios or not bottom.ratios:
        return "not run"
    return _spread([a / b for a, b in zip(top.ratios, bottom.ratios)])


def report(setup: Setup, variants: list[Variant], bares: list[float], rounds: int, capacity: float,
           load_before: str, cert_how: str) -> None:
    by_case = {v.case: v for v in variants if v.package is None}
    print(f"\nthroughput: {rounds} rounds of {setup.messages:,} messages, seed {setup.seed} "
          f"({time.strftime('%Y-%m-%d %H:%M')}; {machine()}; load average {load_before} before, "
          f"{load_average()} after; wss:// certificate made with {cert_how})")
    print(f"load server alone, to a reader that only counts bytes: {capacity / 1000:,.0f}k frames/s\n")
    print("| case | messages/s, median | ratio to the bare loop beside it, median [min-max] | CPU ratio |")
    print("|---|---|---|---|")
    print(f"| {BARE} | {_spread(bares, '{:,.0f}')} | 1 | 1 |")
    for v in variants:
        rate = statistics.median([r for r in v.rates if r == r]) if any(r == r for r in v.rates) else float("nan")
        print(f"| {v.name} | {rate:,.0f} | {_spread(v.ratios)} | {_spread(v.cpu_ratios)} |")
    get = by_case.get
    print("\nquotients (medians over rounds of per-round ratios, [min-max]):")
    lines = [
        ("1,000 streams / hand-written floor", _quotient(get("lib-1k"), get("floor-1k"))),
        ("10,000 / 1,000 streams", _quotient(get("lib-10k"), get("lib-1k"))),
        ("1 stream: batches() / async for", _quotient(get("lib-1-batches"), get("lib-1"))),
        ("1,000 streams: batches() / async for", _quotient(get("lib-1k-batches"), get("lib-1k"))),
        ("1 stream: instrumented / not", _quotient(get("lib-1-metrics"), get("lib-1"))),
        ("1,000 streams: instrumented / not", _quotient(get("lib-1k-metrics"), get("lib-1k"))),
        ("10,000 streams: gc.freeze() / without", _quotient(get("lib-10k-freeze"), get("lib-10k"))),
        ("1 stream: def parse / async def parse", _quotient(get("lib-1"), get("lib-1-async-parse"))),
        ("1,000 streams: def parse / async def parse", _quotient(get("lib-1k"), get("lib-1k-async-parse"))),
        ("1,000 streams: picows / websockets.connect", _quotient(get("lib-1k-picows"), get("lib-1k"))),
        ("1,000 streams: websockets_connect / websockets.connect",
         _quotient(get("lib-1k-large-reads"), get("lib-1k"))),
        ("over wss://: 1 stream / bare wss:// loop", _quotient(get("lib-1-wss"), get("bare-wss"))),
        ("over wss://: 1,000 streams / bare wss:// loop", _quotient(get("lib-1k-wss"), get("bare-wss"))),
        ("bare loop: msgspec Struct / orjson dict", _spread(get("bare-msgspec").ratios) if get("bare-msgspec") else "not run"),
        ("1,000 streams: msgspec Structs / orjson dicts", _quotient(get("lib-1k-msgspec"), get("lib-1k"))),
    ]
    for v in variants:
        if v.package is not None and get(v.case) is not None:
            lines.append((f"{v.name} / this checkout", _quotient(v, get(v.case))))
    for label, text in lines:
        print(f"- {label}: {text}")
    ok = all(not v.problems for v in variants)
    print("\nverification:", "every consumer got exactly its messages in every run" if ok else "FAILED")
    for v in variants:
        for problem in v.problems:
            print(f"  {v.name}: {problem}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="rounds (default 5)")
    parser.add_argument("--messages", type=int, default=200_000, help="messages per run (default 200,000)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the symbols' draw and the order (default 1)")
    parser.add_argument("--quick", action="store_true", help="1 round of 100,000 messages")
    parser.add_argument("--only", action="append", default=[],
                        help="only the rows whose name contains this (repeatable; the bare loop always runs)")
    parser.add_argument("--compare", action="append", default=[], metavar="CHECKOUT",
                        help="also run the 1- and 1,000-stream rows on the package in this checkout's root")
    parser.add_argument("--save", help="write every run's figures to this JSON file")
    parser.add_argument("-v", "--verbose", action="store_true", help="print every run as it ends")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.messages = 1, 100_000
    variants = [v for v in VARIANTS if not args.only or any(o in v.name for o in args.only)]
    for checkout in args.compare:
        root = str(Path(checkout).resolve())
        variants += [Variant(f"AsyncWsStream, 1 stream, package at {root}", "lib-1", root),
                     Variant(f"AsyncWsStream, 1,000 streams, package at {root}", "lib-1k", root)]
    if not PICOWS_AVAILABLE:
        print("picows rows: not run (pip install 'async_ws_stream[fast]')", file=sys.stderr)
        variants = [v for v in variants if v.case not in PICOWS_CASES]
    load_before = load_average()
    with tempfile.TemporaryDirectory() as tmp:
        cert, key, how = make_certificate(Path(tmp))
        with LoadServer(tls=(cert, key)) as server:
            capacity = sink_rate(server.port, 1_000_000)
            setup = Setup(server.url, server.tls_url, cert, args.messages, args.seed)
            _prepare(server.url, args.seed)
            bares = run(setup, variants, args.rounds, args.verbose)
    report(setup, variants, bares, args.rounds, capacity, load_before, how)
    if args.save:
        Path(args.save).write_text(json.dumps({
            "machine": machine(), "messages": args.messages, "seed": args.seed, "bare": bares,
            "variants": [{"name": v.name, "case": v.case, "package": v.package, "rates": v.rates,
                          "ratios": v.ratios, "cpu_ratios": v.cpu_ratios, "problems": v.problems}
                         for v in variants],
        }, indent=1))
    return 0 if all(not v.problems for v in variants) else 1


def _prepare(url: str, seed: int) -> None:
    """Have the load server build its seeded frame sets now, not inside a timed run."""
    import asyncio

    from websockets.asyncio.client import connect

    async def prepare() -> None:
        async with connect(url) as ws:
            for symbols in (100, SYMBOLS):
                await ws.send(json.dumps({"cmd": "prepare", "seed": seed, "symbols": symbols}))
                await ws.recv()

    asyncio.run(prepare())


if __name__ == "__main__":
    sys.exit(main())
