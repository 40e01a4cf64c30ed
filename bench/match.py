"""Nanoseconds per ``Index.match``: the dispatch index alone, no socket, no event loop.

    python bench/match.py                                 # this checkout
    python bench/match.py --compare /path/to/checkout     # and another, paired run by run

Filters are the throughput bench's: ``{"e": "trade", "s": SYMBOL}`` on 1,000 symbols
(plus 9,000 idle ones in the 10,000 case); the messages are 100,000 parsed trades with
seeded random symbols, as dicts (orjson) and as msgspec Structs. Each measurement runs
in a fresh process; with ``--compare`` the two checkouts alternate, and each round's
ratio is taken between neighbours, so that a machine busy with other work moves both.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def worker() -> dict[str, float]:
    """Time every case in this process: best of 5 passes over the messages, in ns per match."""
    import msgspec

    from _cases import Trade, decode_trade
    from _common import loads
    from _feed import CYCLE, SYMBOLS, dumps, symbol, symbol_sequence, trade

    from async_ws_stream._dispatch import Index
    from async_ws_stream._filters import compile_filters

    sequence = symbol_sequence(1)
    frames = [dumps(trade(i, sequence[i])) for i in range(CYCLE)]
    dicts = [loads(f) for f in frames]
    structs: list[Trade] = [decode_trade(f) for f in frames]
    assert isinstance(structs[0], msgspec.Struct)

    def index(idle: int) -> Index[int]:
        ix: Index[int] = Index()
        for i in range(SYMBOLS):
            ix.add(compile_filters([{"e": "trade", "s": symbol(i)}]), i)
        for i in range(idle):
            ix.add(compile_filters([{"e": "trade", "s": f"NONE{i}USDT"}]), -1)
        return ix

    def best(ix: Index[int] | Any, msgs: list[object]) -> float:
        match = ix if callable(ix) else ix.match
        times = []
        for _ in range(5):
            t0 = time.perf_counter_ns()
            for m in msgs:
                match(m)
            times.append((time.perf_counter_ns() - t0) / len(msgs))
        return min(times)

    unfiltered: Index[int] = Index()
    unfiltered.add((), 0)
    k1, k10 = index(0), index(9 * SYMBOLS)
    out = {
        "unfiltered, dicts": best(unfiltered, dicts),
        "1,000 filters, dicts": best(k1, dicts),
        "10,000 filters, dicts": best(k10, dicts),
    }
    if hasattr(k1, "matcher"):  # what the receive loop calls: one lookup when every filter has one shape
        out["1,000 filters, dicts, matcher()"] = best(k1.matcher(), dicts)
        out["10,000 filters, dicts, matcher()"] = best(k10.matcher(), dicts)
    fields_view = getattr(sys.modules["async_ws_stream._filters"], "fields_of", None)
    if fields_view is not None:
        out["1,000 filters, msgspec Structs"] = best(k1, structs)
        assert list(k1.match(structs[0])) == list(k1.match(dicts[0]))
    return out


def measure(package: str | None) -> dict[str, float]:
    env = dict(os.environ)
    if package:
        env["BENCH_PACKAGE_PATH"] = package
    done = subprocess.run([sys.executable, __file__, "--worker"], capture_output=True, text=True, env=env,
                          cwd=HERE, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--compare", metavar="CHECKOUT", help="another checkout's root, measured alternately")
    parser.add_argument("--rounds", type=int, default=7, help="rounds (default 7)")
    args = parser.parse_args()
    if args.worker:
        sys.path.insert(0, str(HERE))
        import _common  # noqa: F401  (puts the package to measure on sys.path)

        print(json.dumps(worker()))
        return 0
    from _common import load_average, machine

    runs: list[tuple[dict[str, float], dict[str, float] | None]] = []
    for _ in range(args.rounds):
        ours = measure(None)
        theirs = measure(str(Path(args.compare).resolve())) if args.compare else None
        runs.append((ours, theirs))
    print(f"\nns per Index.match: {args.rounds} rounds, best of 5 passes over 100,000 messages each "
          f"({time.strftime('%Y-%m-%d %H:%M')}; {machine()}; load average {load_average()})\n")
    if args.compare:
        print(f"| case | this checkout | {args.compare} | this / that, median [min-max] |")
        print("|---|---|---|---|")
    else:
        print("| case | ns per match, median [min-max] |")
        print("|---|---|")
    for case in runs[0][0]:
        ours = [r[0][case] for r in runs]
        text = f"{statistics.median(ours):,.0f} [{min(ours):,.0f}-{max(ours):,.0f}]"
        theirs = [r[1][case] for r in runs if r[1] is not None and case in r[1]]
        if args.compare:
            if theirs:
                ratios = [r[0][case] / r[1][case] for r in runs if r[1] is not None]
                print(f"| {case} | {text} | {statistics.median(theirs):,.0f} | {statistics.median(ratios):.3f} "
                      f"[{min(ratios):.3f}-{max(ratios):.3f}] |")
            else:
                print(f"| {case} | {text} | - | - |")
        else:
            print(f"| {case} | {text} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
