"""One measurement of throughput.py, in a process of its own.

    python bench/_cases.py CASE --url ws://... --messages N --seed S [--tls-url wss://... --cert FILE]

prints one JSON line: ``{"seconds", "cpu", "problems"}``. throughput.py starts a
fresh interpreter for every measurement, so no case inherits another's heap,
garbage-collector generations, warmed caches or leftover tasks.

A case connects, sets up its consumers, starts the clock right before it asks the
load server for N frames (``blast``, symbols drawn at random with the seed), and
stops it when every consumer has what it must. Every consumer's count is checked:
the single stream and the handlers check every message's sequence number; each
symbol stream checks that every message is its symbol's and that it got exactly as
many as the seeded draw gave that symbol; the 9,000 idle streams of the 10,000
case must get nothing; ``stats()["frames"]`` must equal N and nothing may drop.
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

import msgspec
from websockets.asyncio.client import connect

from _common import BenchClient, client_ssl, loads
from _feed import CYCLE, SYMBOLS, expected_counts, symbol

from async_ws_stream.transports import PICOWS_AVAILABLE, picows_connect, websockets_connect


class Trade(msgspec.Struct):
    """A Binance trade, decoded by msgspec straight into its typed fields."""

    e: str
    E: int
    s: str
    t: int
    p: str
    q: str
    b: int
    a: int
    f: int
    l: int  # noqa: E741 (Binance's name)
    T: int
    X: str
    m: bool
    M: bool


decode_trade = msgspec.json.Decoder(Trade).decode


class Meter:
    """Wall-clock and CPU seconds between start() and stop()."""

    def __init__(self) -> None:
        self.seconds = self.cpu = 0.0
        self._t0 = self._c0 = 0.0

    async def start(self) -> None:
        self._t0, self._c0 = time.perf_counter(), time.process_time()

    async def stop(self) -> None:
        self.seconds = time.perf_counter() - self._t0
        self.cpu = time.process_time() - self._c0


class Args(argparse.Namespace):
    url: str
    tls_url: str
    cert: str
    messages: int
    seed: int


def blast(args: Args, symbols: int = SYMBOLS) -> str:
    return json.dumps({"cmd": "blast", "n": args.messages, "seed": args.seed, "symbols": symbols})


# -- the clients ----------------------------------------------------------------------------------


class AsyncParseClient(BenchClient):
    """The README's client with ``async def _parse_raw_data``: a coroutine per frame."""

    async def _parse_raw_data(self, raw: str | bytes) -> Any:  # type: ignore[override]
        return loads(raw)


class TlsClient(BenchClient):
    """The README's client over ``wss://`` (a self-signed certificate on loopback)."""


class LargeReadsClient(BenchClient):
    """The client on ``websockets_connect``: websockets' connection with reads of up to 4 MiB."""

    async def _create_ws(self) -> Any:
        return await websockets_connect(self.url)


class PicowsClient(BenchClient):
    """The client on ``picows_connect``."""

    async def _create_ws(self) -> Any:
        return await picows_connect(self.url)


class MsgspecClient(BenchClient):
    """The client decoding every frame into a ``Trade`` Struct with msgspec."""

    def _parse_raw_data(self, raw: str | bytes) -> Any:
        return decode_trade(raw)


# -- bare loops -----------------------------------------------------------------------------------


async def _bare(ws: Any, args: Args, meter: Meter, parse: Callable[[Any], Any] = loads,
                seq: Callable[[Any], int] = lambda m: m["t"]) -> list[str]:
    n = args.messages
    async with ws:
        await meter.start()
        await ws.send(blast(args))
        count = expect = bad = 0
        async for raw in ws:
            if seq(parse(raw)) != expect:
                bad += 1
            expect += 1
            if expect == CYCLE:
                expect = 0
            count += 1
            if count == n:
                break
        await meter.stop()
    return [f"{bad} messages out of sequence"] if bad else []


async def bare(args: Args, meter: Meter) -> list[str]:
    """websockets' own receive loop on plain ``websockets.connect`` and orjson: the reference."""
    return await _bare(await connect(args.url), args, meter)


async def bare_wss(args: Args, meter: Meter) -> list[str]:
    """The same loop over wss://."""
    return await _bare(await connect(args.tls_url, ssl=client_ssl(args.cert)), args, meter)


async def bare_large_reads(args: Args, meter: Meter) -> list[str]:
    """The same loop on ``websockets_connect``."""
    return await _bare(await websockets_connect(args.url), args, meter)


async def bare_msgspec(args: Args, meter: Meter) -> list[str]:
    """The same loop decoding into a msgspec Struct instead of orjson's dict."""
    return await _bare(await connect(args.url), args, meter, decode_trade, lambda m: m.t)


async def bare_picows(args: Args, meter: Meter) -> list[str]:
    """picows' own frame callback and the same parse: no client, no buffer."""
    import picows

    n = args.messages
    done = asyncio.get_running_loop().create_future()
    text = picows.WSMsgType.TEXT

    class Listener(picows.WSListener):  # type: ignore[misc]
        count = expect = bad = 0

        def on_ws_frame(self, transport: Any, frame: Any) -> None:
            if frame.msg_type is not text:
                return
            if loads(frame.get_payload_as_memoryview())["t"] != self.expect:
                self.bad += 1
            self.expect += 1
            if self.expect == CYCLE:
                self.expect = 0
            self.count += 1
            if self.count == n:
                done.set_result(None)

    transport, listener = await picows.ws_connect(Listener, args.url)
    try:
        await meter.start()
        transport.send(text, blast(args).encode())
        await done
        await meter.stop()
    finally:
        transport.send_close(picows.WSCloseCode.OK)
        transport.disconnect()
        await transport.wait_disconnected()
    return [f"{listener.bad} messages out of sequence"] if listener.bad else []


async def floor_1k(args: Args, meter: Meter) -> list[str]:
    """The hand-written floor (bench/_floor.py) with 1,000 consumers."""
    from _floor import floor_round

    expected = expected_counts(args.messages, args.seed, SYMBOLS)
    return await floor_round(args.url, args.messages, expected, blast(args), meter.start, meter.stop)


# -- the library ----------------------------------------------------------------------------------


def _check_frames(client: BenchClient, n: int) -> list[str]:
    stats = client.stats()
    problems = []
    if stats["frames"] != n:
        problems.append(f"stats()['frames'] is {stats['frames']}, the server sent {n}")
    if stats["dropped"] or stats["parse_errors"]:
        problems.append(f"dropped={stats['dropped']} parse_errors={stats['parse_errors']}")
    return problems


async def _one_stream(client: BenchClient, args: Args, meter: Meter,
                      seq: Callable[[Any], int] = lambda m: m["t"], batches: bool = False) -> list[str]:
    n = args.messages
    try:
        stream = client.stream_filter()
        await client.wait_connected()
        await meter.start()
        await client.send(blast(args))
        count = expect = bad = 0
        if batches:  # the batch API: async for batch in stream.batches()
            async for batch in stream.batches():
                for msg in batch:
                    if seq(msg) != expect:
                        bad += 1
                    expect += 1
                    if expect == CYCLE:
                        expect = 0
                count += len(batch)
                if count >= n:
                    break
        else:
            async for msg in stream:
                if seq(msg) != expect:
                    bad += 1
                expect += 1
                if expect == CYCLE:
                    expect = 0
                count += 1
                if count == n:
                    break
        await meter.stop()
        return ([f"{bad} messages out of sequence"] if bad else []) + _check_frames(client, n)
    finally:
        await client.exit()


async def _symbol_streams(client: BenchClient, args: Args, meter: Meter, symbols: int, idle: int = 0,
                          freeze: bool = False, sym_of: Callable[[Any], str] = lambda m: m["s"],
                          batches: bool = False) -> list[str]:
    """A stream per symbol (each with its consumer task), plus ``idle`` streams whose symbol never comes."""
    n = args.messages
    expected = expected_counts(n, args.seed, symbols)

    async def consume(stream: Any, sym: str, want: int) -> tuple[int, int]:
        count = bad = 0
        async for msg in stream:
            if sym_of(msg) != sym:
                bad += 1
            count += 1
            if count == want:
                break
        return count, bad

    async def consume_batches(stream: Any, sym: str, want: int) -> tuple[int, int]:
        count = bad = 0
        async for batch in stream.batches():
            for msg in batch:
                if sym_of(msg) != sym:
                    bad += 1
            count += len(batch)
            if count >= want:
                break
        return count, bad

    if batches:
        consume = consume_batches

    async def idle_consume(stream: Any) -> int:
        got = 0
        async for _ in stream:
            got += 1
        return got

    try:
        names = [symbol(i) for i in range(symbols)]
        wanted = [(client.stream_filter([{"e": "trade", "s": s}]), s, expected[s]) for s in names if expected[s]]
        idlers = [client.stream_filter([{"e": "trade", "s": s}]) for s in names if not expected[s]]
        idlers += [client.stream_filter([{"e": "trade", "s": f"NONE{i}USDT"}]) for i in range(idle)]
        consumers = [asyncio.create_task(consume(*w)) for w in wanted]
        idle_consumers = [asyncio.create_task(idle_consume(s)) for s in idlers]
        await client.wait_connected()
        await asyncio.sleep(0)  # every consumer task reaches its first wait before the clock starts
        if freeze:
            gc.collect()
            gc.freeze()
        await meter.start()
        await client.send(blast(args, symbols))
        results = await asyncio.gather(*consumers)
        await meter.stop()
        problems = _check_frames(client, n)
        short = sum(1 for (count, _), (_, _, want) in zip(results, wanted) if count != want)
        wrong = sum(bad for _, bad in results)
        if short:
            problems.append(f"{short} streams did not get their messages")
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


async def _handlers(args: Args, meter: Meter, asynchronous: bool) -> list[str]:
    n = args.messages
    client = BenchClient(args.url)
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
        await client.send(blast(args))
        await done.wait()
        await meter.stop()
        return ([f"{bad} messages out of sequence"] if bad else []) + _check_frames(client, n)
    finally:
        await client.exit()


def _instrumented(url: str) -> BenchClient:
    """The README's client with Prometheus metrics on (async_ws_stream.metrics), before its streams are made."""
    from prometheus_client import CollectorRegistry

    from async_ws_stream.metrics import instrument

    client = BenchClient(url)
    instrument(client, registry=CollectorRegistry(), name="bench")
    return client


def _tls(args: Args) -> BenchClient:
    client = TlsClient(args.tls_url)
    client.ssl = client_ssl(args.cert)
    return client


Case = Callable[[Args, Meter], Awaitable[list[str]]]

CASES: dict[str, Case] = {
    "bare": bare,
    "bare-wss": bare_wss,
    "bare-large-reads": bare_large_reads,
    "bare-picows": bare_picows,
    "bare-msgspec": bare_msgspec,
    "floor-1k": floor_1k,
    "lib-1": lambda a, m: _one_stream(BenchClient(a.url), a, m),
    "lib-100": lambda a, m: _symbol_streams(BenchClient(a.url), a, m, 100),
    "lib-1k": lambda a, m: _symbol_streams(BenchClient(a.url), a, m, SYMBOLS),
    "lib-10k": lambda a, m: _symbol_streams(BenchClient(a.url), a, m, SYMBOLS, idle=9 * SYMBOLS),
    "lib-10k-freeze": lambda a, m: _symbol_streams(BenchClient(a.url), a, m, SYMBOLS, idle=9 * SYMBOLS, freeze=True),
    "lib-1-async-parse": lambda a, m: _one_stream(AsyncParseClient(a.url), a, m),
    "lib-1k-async-parse": lambda a, m: _symbol_streams(AsyncParseClient(a.url), a, m, SYMBOLS),
    "lib-1-wss": lambda a, m: _one_stream(_tls(a), a, m),
    "lib-1k-wss": lambda a, m: _symbol_streams(_tls(a), a, m, SYMBOLS),
    "lib-1-large-reads": lambda a, m: _one_stream(LargeReadsClient(a.url), a, m),
    "lib-1k-large-reads": lambda a, m: _symbol_streams(LargeReadsClient(a.url), a, m, SYMBOLS),
    "lib-1-picows": lambda a, m: _one_stream(PicowsClient(a.url), a, m),
    "lib-1k-picows": lambda a, m: _symbol_streams(PicowsClient(a.url), a, m, SYMBOLS),
    "lib-1-msgspec": lambda a, m: _one_stream(MsgspecClient(a.url), a, m, lambda t: t.t),
    "lib-1k-msgspec": lambda a, m: _symbol_streams(MsgspecClient(a.url), a, m, SYMBOLS, sym_of=lambda t: t.s),
    "lib-1-batches": lambda a, m: _one_stream(BenchClient(a.url), a, m, batches=True),
    "lib-1k-batches": lambda a, m: _symbol_streams(BenchClient(a.url), a, m, SYMBOLS, batches=True),
    "lib-1-metrics": lambda a, m: _one_stream(_instrumented(a.url), a, m),
    "lib-1k-metrics": lambda a, m: _symbol_streams(_instrumented(a.url), a, m, SYMBOLS),
    "sync-handler": lambda a, m: _handlers(a, m, asynchronous=False),
    "async-handler": lambda a, m: _handlers(a, m, asynchronous=True),
}
NEEDS_PICOWS = {"bare-picows", "lib-1-picows", "lib-1k-picows"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("case", choices=sorted(CASES))
    parser.add_argument("--url", required=True)
    parser.add_argument("--tls-url", default="")
    parser.add_argument("--cert", default="")
    parser.add_argument("--messages", type=int, required=True)
    parser.add_argument("--seed", type=int, required=True)
    args = parser.parse_args(namespace=Args())
    if args.case in NEEDS_PICOWS and not PICOWS_AVAILABLE:
        print(json.dumps({"seconds": 0, "cpu": 0, "problems": ["picows is not installed"]}))
        return 1
    meter = Meter()
    problems = asyncio.run(CASES[args.case](args, meter))
    print(json.dumps({"seconds": meter.seconds, "cpu": meter.cpu, "problems": problems}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
