"""``python -m async_ws_stream demo``: the library's main job, live, with no network.

An embedded :class:`~async_ws_stream.testing.FeedServer` publishes synthetic market
data (trades and order-book updates for a handful of symbols). One client consumes
it through several filtered streams and a handler, and every few seconds the
server breaks the connection in one of the ways real feeds break. The view shows
each stream's messages and rate, and the client's reconnects, recycles, parse
errors and drops, so the recovery is visible as it happens.

Every number shown is real: counters come from the client's ``stats()`` and the
streams' own ``dropped``/``queued``; message counts are those of the consumers.
The connection's state and each recovery's timing come from ``client.events()``,
as a bot would watch them. Faults go through FeedServer's fault methods (``drop``,
``stall``, ``send_garbage``) and the client's own ``_when2create_new_ws`` (recycle).
The live view fits an 80x24 terminal.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import IO, Any

from websockets.asyncio.client import ClientConnection, connect

from ._cli import detach_stdout, run_until_terminated
from ._client import AsyncWsStream
from ._events import Connected, Disconnected, Event, Recycled, Retrying
from ._streams import Stream
from .testing import FeedServer

__all__ = ["DEFAULT_FAULT_EVERY", "DemoClient", "MarketFeed", "run_demo"]

DEFAULT_FAULT_EVERY = 3.0
TICK = 0.02  # seconds between two bursts of the synthetic feed (about 250 messages a second)
IDLE_TIMEOUT = 0.6  # how fast the client notices a stalled connection
REFRESH = 0.25  # seconds between two frames of the live view on a terminal
LINE_EVERY = 1.0  # seconds between two status lines when stdout is not a terminal
SLOW_CONSUMER_DELAY = 0.02  # the slow stream reads 50 messages a second, fewer than arrive
SLOW_CONSUMER_MAXSIZE = 50
RATE_SAMPLE = 0.25  # seconds between two samples of a consumer's count
RATE_WINDOW = 9  # samples kept: rates are over the last two seconds
RECOVERY_PATIENCE = 10.0  # seconds the fault schedule waits for a recovery before it says so
WIDTH = 79  # columns of the live view: an 80-column terminal never wraps it

SYMBOLS = {"BTCUSDT": 64_000.0, "ETHUSDT": 3_100.0, "SOLUSDT": 145.0, "BNBUSDT": 590.0, "XRPUSDT": 0.52}


class MarketFeed:
    """Synthetic Binance-style trades and depth updates from a seeded random walk."""

    def __init__(self, seed: int = 7) -> None:
        self._rng = random.Random(seed)
        self._prices = dict(SYMBOLS)
        self._trade_id = 0
        self._update_id = 0

    def burst(self) -> Iterator[dict[str, Any]]:
        """One tick's worth of messages: a few trades and book updates."""
        rng = self._rng
        now = int(time.time() * 1000)
        for symbol in rng.sample(list(self._prices), 3):
            price = self._prices[symbol] = self._prices[symbol] * (1 + rng.gauss(0, 0.0004))
            self._trade_id += 1
            yield {
                "e": "trade", "E": now, "s": symbol, "t": self._trade_id,
                "p": _decimal(price), "q": f"{rng.expovariate(3.0):.4f}", "m": rng.random() < 0.5,
            }
        for symbol in rng.sample(list(self._prices), 2):
            price = self._prices[symbol]
            self._update_id += 1
            yield {
                "e": "depthUpdate", "E": now, "s": symbol, "u": self._update_id,
                "b": [[_decimal(price * 0.9998), f"{rng.uniform(0.1, 5):.3f}"]],
                "a": [[_decimal(price * 1.0002), f"{rng.uniform(0.1, 5):.3f}"]],
            }


def _decimal(price: float) -> str:
    return f"{price:.2f}" if price >= 10 else f"{price:.5f}"


class DemoClient(AsyncWsStream[Any]):
    """A market-data client: subscribes on every connection, recycles when asked to."""

    def __init__(self, url: str, **options: Any) -> None:
        super().__init__(**options)
        self.url = url
        self.recycle_now = asyncio.Event()

    async def _create_ws(self) -> ClientConnection:
        return await connect(self.url + "/ws", open_timeout=2, close_timeout=1)

    async def _on_connect(self, ws: Any) -> None:
        params = [f"{s.lower()}@trade" for s in SYMBOLS] + [f"{s.lower()}@depth" for s in SYMBOLS]
        await ws.send(json.dumps({"method": "SUBSCRIBE", "params": params, "id": 1}))

    async def _when2create_new_ws(self) -> None:
        # A real feed recycles on a schedule (listen keys, 24-hour limits); the demo
        # recycles when its fault schedule says so.
        await self.recycle_now.wait()
        self.recycle_now.clear()

    def _parse_raw_data(self, raw: str | bytes) -> Any:
        return json.loads(raw)


@dataclass
class _Consumer:
    name: str
    stream: Stream[Any]
    delay: float = 0.0
    count: int = 0
    history: deque[tuple[float, int]] = field(default_factory=lambda: deque(maxlen=RATE_WINDOW))

    async def run(self) -> None:
        async for _ in self.stream:
            self.count += 1
            if self.delay:
                await asyncio.sleep(self.delay)

    def sample(self, now: float) -> None:
        """Remember the count now and then, for :meth:`rate`."""
        if not self.history or now - self.history[-1][0] >= RATE_SAMPLE:
            self.history.append((now, self.count))

    def rate(self) -> float:
        """Messages per second over the last two seconds or so (the samples kept)."""
        if len(self.history) < 2:
            return 0.0
        (t0, c0), (t1, c1) = self.history[0], self.history[-1]
        return (c1 - c0) / (t1 - t0)


@dataclass
class _Event:
    at: float
    text: str


class _Screen:
    """Where the view goes. A reader that went away (``| head``) ends the demo instead of raising."""

    def __init__(self, out: IO[str]) -> None:
        self._out = out
        self.tty = out.isatty()
        self.gone = asyncio.Event()

    def write(self, text: str) -> None:
        if self.gone.is_set():
            return
        try:
            self._out.write(text)
            self._out.flush()
        except BrokenPipeError:
            detach_stdout()
            self.gone.set()


class _Demo:
    def __init__(self, server: FeedServer, client: DemoClient, fault_every: float) -> None:
        self.server = server
        self.client = client
        self.fault_every = fault_every
        self.started = time.monotonic()
        self.published = 0
        self.received = 0  # feed messages that reached the client
        self.state = "connecting"
        self.connected = False
        self.number = 0  # the connection that carries messages now
        # The event kind the fault schedule waits for, and the future it waits on.
        self._awaited: tuple[type, asyncio.Future[None]] | None = None
        self.events_stream: Stream[Event] = client.events()
        self.last_prices: dict[str, str] = {}
        self.events: deque[_Event] = deque(maxlen=6)
        self.new_events: list[_Event] = []
        big = 0.9
        self.consumers = [
            _Consumer("all trades", client.stream_filter([{"e": "trade"}])),
            _Consumer("BTC trades", client.stream_filter([{"e": "trade", "s": "BTCUSDT"}])),
            _Consumer(f"trades q >= {big}", client.stream_filter([{"e": "trade", "q": lambda q: float(q) >= big}])),
            _Consumer("ETH or SOL book", client.stream_filter(
                [{"e": "depthUpdate", "s": "ETHUSDT"}, {"e": "depthUpdate", "s": "SOLUSDT"}])),
            _Consumer("all book (slow)", client.stream_filter(
                [{"e": "depthUpdate"}], maxsize=SLOW_CONSUMER_MAXSIZE, overflow="drop_oldest"),
                delay=SLOW_CONSUMER_DELAY),
        ]
        client.add_handler(self._on_trade, {"e": "trade"})
        client.add_handler(self._on_feed, [{"e": "trade"}, {"e": "depthUpdate"}])

    def _on_trade(self, msg: dict[str, Any]) -> None:
        self.last_prices[msg["s"]] = msg["p"]

    def _on_feed(self, msg: dict[str, Any]) -> None:
        self.received += 1

    async def watch_events(self) -> None:
        """The connection's state, and the end of each recovery, from the client's events."""
        async for event in self.events_stream:
            if isinstance(event, Connected):
                self.connected, self.state, self.number = True, f"connected (#{event.number})", event.number
            elif isinstance(event, Disconnected):
                self.connected, self.state = False, f"reconnecting (#{event.number} lost)"
            elif isinstance(event, Retrying):
                self.state = f"retry {event.attempt} in {event.delay:.2f}s"
            awaited = self._awaited
            if awaited is not None and isinstance(event, awaited[0]) and not awaited[1].done():
                awaited[1].set_result(None)

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def note(self, text: str) -> None:
        event = _Event(self.elapsed(), text)
        self.events.append(event)
        self.new_events.append(event)

    async def publish(self) -> None:
        feed = MarketFeed()
        loop = asyncio.get_running_loop()
        due = loop.time()
        while True:
            for msg in feed.burst():
                await self.server.broadcast(msg)
                self.published += 1
            due += TICK
            await asyncio.sleep(max(0.0, due - loop.time()))

    async def inject_faults(self) -> None:
        faults: list[tuple[str, Callable[[], Any], type | None]] = [
            ("abrupt drop (no close frame)", self.server.drop, Connected),
            (f"stall (socket open, silent; idle_timeout={IDLE_TIMEOUT}s)", self.server.stall, Connected),
            ("recycle (_when2create_new_ws returned)", self.client.recycle_now.set, Recycled),
            ("garbage frames (not JSON)", lambda: self.server.send_garbage(2), None),
        ]
        n = 0
        while True:
            await asyncio.sleep(self.fault_every)
            name, inject, until = faults[n % len(faults)]
            n += 1
            before = self.client.stats()["parse_errors"]
            t0 = time.monotonic()
            self.note(f"fault: {name}")
            if until is None:
                await self._garbage(inject, before)
                continue
            # Armed before the fault, so that a recovery faster than this task cannot be missed.
            done = asyncio.get_running_loop().create_future()
            self._awaited = (until, done)
            try:
                result = inject()
                if asyncio.iscoroutine(result):
                    await result
                async with asyncio.timeout(RECOVERY_PATIENCE):
                    await done
            except TimeoutError:
                self.note(f"not recovered after {RECOVERY_PATIENCE:g}s; still trying")
                continue
            finally:
                self._awaited = None
            took = time.monotonic() - t0
            if until is Connected:
                self.note(f"recovered: reconnected in {took:.2f}s, connection #{self.number}")
            else:
                self.note(f"recovered: new connection in {took:.2f}s, old one read to its end")

    async def _garbage(self, inject: Callable[[], Any], before: int) -> None:
        """Send garbage, then a marker: once the marker is back, every garbage frame was counted."""
        marker = {"demo": "marker", "n": time.monotonic()}
        back = self.client.expect(marker, timeout=RECOVERY_PATIENCE)
        await inject()
        await self.server.broadcast(marker)
        try:
            await back
        except TimeoutError:
            self.note(f"not recovered after {RECOVERY_PATIENCE:g}s; still trying")
            return
        errors = self.client.stats()["parse_errors"] - before
        self.note(f"recovered: {errors} frames counted as parse errors, connection kept")

    # -- the view ------------------------------------------------------------------------

    def frame(self) -> list[str]:
        """The live view: at most 20 lines of at most WIDTH columns (an 80x24 terminal)."""
        now = time.monotonic()
        stats = self.client.stats()
        lines = [
            f"async_ws_stream demo  {now - self.started:6.1f}s  feed {self.server.url}  Ctrl-C stops",
            f"{self.state:<26} connects {stats['connects']}  reconnects {stats['reconnects']}  "
            f"recycles {stats['recycles']}",
            f"frames {stats['frames']}  parse errors {stats['parse_errors']}  dropped {stats['dropped']}  "
            f"published {self.published}  received {self.received}",
            "",
            f"{'stream':<20}{'messages':>10}{'rate/s':>9}{'queued':>8}{'dropped':>9}",
        ]
        for c in self.consumers:
            lines.append(f"{c.name:<20}{c.count:>10}{c.rate():>9.0f}{c.stream.queued:>8}{c.stream.dropped:>9}")
        prices = "  ".join(f"{s[:-4]} {p}" for s, p in sorted(self.last_prices.items()))
        lines += ["", f"last trade  {prices}", "", f"faults, one every {self.fault_every:g}s:"]
        lines += [f"  {e.at:6.1f}s  {e.text}" for e in self.events] or ["  (none yet)"]
        return [line[:WIDTH] for line in lines]

    def line(self) -> str:
        now = time.monotonic()
        stats = self.client.stats()
        streams = "  ".join(
            f"{c.name}={c.count} ({c.rate():.0f}/s{', dropped ' + str(c.stream.dropped) if c.stream.dropped else ''})"
            for c in self.consumers
        )
        return (
            f"[{now - self.started:6.1f}s] {'up' if self.connected else 'down'} "
            f"connects={stats['connects']} reconnects={stats['reconnects']} recycles={stats['recycles']} "
            f"frames={stats['frames']} parse_errors={stats['parse_errors']} dropped={stats['dropped']} | {streams}"
        )

    def summary(self) -> str:
        stats = self.client.stats()
        lost = self.published - self.received
        return (
            f"demo finished after {self.elapsed():.1f}s: connects={stats['connects']} "
            f"reconnects={stats['reconnects']} recycles={stats['recycles']} frames={stats['frames']} "
            f"messages={stats['messages']} parse_errors={stats['parse_errors']} dropped={stats['dropped']} "
            f"published={self.published} received={self.received}\n"
            f"published - received = {lost}: feed messages the injected faults lost on the network (sent "
            "while the client had no connection, or into one being dropped or stalled; a recycle's overlap "
            "may bring a few twice). dropped counts what the slow stream let go on purpose."
        )

    async def sample(self) -> None:
        while True:
            now = time.monotonic()
            for c in self.consumers:
                c.sample(now)
            await asyncio.sleep(RATE_SAMPLE)

    async def show(self, screen: _Screen) -> None:
        if screen.tty:
            await self._show_live(screen)
        else:
            await self._show_lines(screen)

    async def _show_live(self, screen: _Screen) -> None:
        height = 0

        def draw() -> None:
            nonlocal height
            lines = self.frame()
            # Back to the top of the previous frame and clear below: a redraw in
            # place that leaves what was on the terminal before the demo alone.
            screen.write((f"\x1b[{height}F" if height else "") + "\x1b[J" + "\n".join(lines) + "\n")
            height = len(lines)
            self.new_events.clear()

        screen.write("\x1b[?25l")  # hide the cursor while the view redraws
        try:
            while True:
                draw()
                await asyncio.sleep(REFRESH)
        finally:
            draw()  # the final state, as the demo ends
            screen.write("\x1b[?25h")

    async def _show_lines(self, screen: _Screen) -> None:
        next_line = LINE_EVERY
        while True:
            text = "".join(f"[{event.at:6.1f}s] {event.text}\n" for event in self.new_events)
            self.new_events.clear()
            if self.elapsed() >= next_line:
                text += self.line() + "\n"
                next_line += LINE_EVERY
            if text:
                screen.write(text)
            await asyncio.sleep(0.05)


async def _demo(seconds: float | None, fault_every: float, out: IO[str]) -> int:
    screen = _Screen(out)
    async with FeedServer() as server:
        client = DemoClient(
            server.url, idle_timeout=IDLE_TIMEOUT, backoff_initial=0.05, backoff_max=0.5, stable_after=1.0
        )
        async with client:
            demo = _Demo(server, client, fault_every)
            try:
                async with asyncio.TaskGroup() as tg:
                    tasks = [tg.create_task(c.run()) for c in demo.consumers]
                    tasks += [
                        tg.create_task(demo.watch_events()),
                        tg.create_task(demo.publish()),
                        tg.create_task(demo.inject_faults()),
                        tg.create_task(demo.sample()),
                        tg.create_task(demo.show(screen)),
                    ]
                    try:
                        # Until --seconds ran out, Ctrl-C, or stdout's reader went away.
                        async with asyncio.timeout(seconds):
                            await screen.gone.wait()
                    except TimeoutError:
                        pass
                    finally:
                        for task in tasks:
                            task.cancel()
            finally:
                if not screen.tty:
                    screen.write("".join(f"[{event.at:6.1f}s] {event.text}\n" for event in demo.new_events)
                                 + demo.line() + "\n")
                screen.write(demo.summary() + "\n")
    return 0


def run_demo(seconds: float | None = None, fault_every: float = DEFAULT_FAULT_EVERY) -> int:
    """Run the demo for ``seconds`` (None: until Ctrl-C) on stdout; return the exit code.

    0 at the end of ``--seconds`` and on Ctrl-C (how the demo is meant to end);
    143 on SIGTERM. The summary is printed either way.
    """
    try:
        return asyncio.run(run_until_terminated(_demo(seconds, fault_every, sys.stdout)))
    except KeyboardInterrupt:
        return 0  # the summary has been printed
