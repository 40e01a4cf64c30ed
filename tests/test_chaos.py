"""Chaos: the client against a FeedServer that breaks at random, for ~9 s on each of three transports.

A seeded random schedule of faults (drops, stalls, refused, slow and
accept-then-drop handshakes, garbage frames, clean closes, recycles) runs while
the server publishes a feed whose every message carries its connection's id and
a per-connection sequence number. Then the faults stop and the test checks:

* the client streams again within the backoff bound, and stays connected;
* within each connection, each stream got each matching message once and in
  order, or counted it as dropped by its policy (the reference stream, which
  never drops, got an unbroken prefix of every connection, connection by
  connection, never interleaved);
* ``stats()`` reconciles with what the parser saw and what the streams got;
* no task, connection or file descriptor is left over, and memory stayed flat.

Environment: ``ASYNC_WS_STREAM_CHAOS_SECONDS`` (default 9, per transport) runs
longer; ``ASYNC_WS_STREAM_CHAOS_SEED`` replays a schedule. The seed and the
schedule are printed, so a failure shows how to reproduce it.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import random
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from websockets.asyncio.server import ServerConnection

from async_ws_stream import StreamOverflow
from async_ws_stream.testing import FeedServer

from .conftest import EVERY_TRANSPORT, JsonClient, eventually, settle, transports

SECONDS = float(os.environ.get("ASYNC_WS_STREAM_CHAOS_SECONDS", "9"))
SEED = int(os.environ.get("ASYNC_WS_STREAM_CHAOS_SEED", str(random.SystemRandom().randrange(2**32))))

BACKOFF_MAX = 0.25
RECOVERY_MARGIN = 2.5  # connect, handshake and first message on a loaded 2-core machine
RATE = 200  # messages per second per connection
KINDS = ("a", "b", "a", "hb", "b")  # "hb" frames parse to None: skipped, not messages


def next_message_seq(seq: int) -> int:
    """The seq of the first message (not a skipped heartbeat) after ``seq`` on the same connection."""
    seq += 1
    while KINDS[seq % len(KINDS)] == "hb":
        seq += 1
    return seq


class ChaosClient(JsonClient):
    """Counts what its parser saw, independently of the client's own counters."""

    def __init__(self, url: str, **options: Any) -> None:
        super().__init__(url, **options)
        self.parsed = self.failed = self.skipped = 0

    def _parse_raw_data(self, raw: str | bytes) -> Any:
        self.parsed += 1
        try:
            msg = json.loads(raw)
        except Exception:
            self.failed += 1
            raise
        if isinstance(msg, dict) and msg.get("k") == "hb":
            self.skipped += 1
            return None
        return msg


class Publisher:
    """Sends every open connection its own numbered feed: {"c": connection id, "s": seq, "k": kind}."""

    def __init__(self, server: FeedServer) -> None:
        self.server = server
        self.ids: dict[ServerConnection, int] = {}
        self.seqs: dict[ServerConnection, int] = {}
        self.next_id = itertools.count(1)
        self.last_id = 0

    async def run(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        tick = loop.time()
        while not stop.is_set():
            live = self.server.connections
            for conn in live:
                if conn not in self.ids:
                    self.ids[conn] = self.last_id = next(self.next_id)
                    self.seqs[conn] = 0
                seq = self.seqs[conn]
                msg = {"c": self.ids[conn], "s": seq, "k": KINDS[seq % len(KINDS)]}
                # Not sent (stalled or closing): the number is used by the next frame, so that
                # every connection's numbers run without gaps on the wire.
                if await self.server.send_to(conn, msg):
                    self.seqs[conn] = seq + 1
            for gone in self.ids.keys() - set(live):
                del self.ids[gone], self.seqs[gone]
            tick += 1 / RATE
            await asyncio.sleep(max(0.0, tick - loop.time()))


class Consumer:
    """Reads one stream (slowly, if asked) and checks order per connection as it goes."""

    def __init__(self, name: str, kinds: set[str] | None, delay: float = 0.0, gapless: bool = False) -> None:
        self.name = name
        self.kinds = kinds  # None: every message
        self.delay = delay
        self.gapless = gapless
        self.last: dict[int, int] = {}
        self.done_ids: set[int] = set()
        self.current: int | None = None
        self.received = 0
        self.markers = 0
        self.by_kind: Counter[str] = Counter()
        self.ended_with: BaseException | None = None
        self.problems: list[str] = []
        self.on_message: Callable[[dict[str, Any]], None] | None = None

    def take(self, msg: Any) -> None:
        if not (isinstance(msg, dict) and "c" in msg):
            self.markers += 1
            return
        c, s = msg["c"], msg["s"]
        if self.kinds is not None and msg["k"] not in self.kinds:
            self.problems.append(f"{self.name}: got {msg} it does not match")
        last = self.last.get(c, -1)
        if s <= last:
            self.problems.append(f"{self.name}: connection {c} seq {s} after {last} (duplicate or out of order)")
        if self.gapless and s != next_message_seq(last):
            self.problems.append(f"{self.name}: connection {c} jumped from seq {last} to {s} (lost mid-connection)")
        if c != self.current:
            if c in self.done_ids:
                self.problems.append(f"{self.name}: connection {c} came back after connection {self.current}")
            if self.current is not None:
                self.done_ids.add(self.current)
            self.current = c
        self.last[c] = s
        self.received += 1
        self.by_kind[msg["k"]] += 1
        if self.on_message is not None:
            self.on_message(msg)

    async def read(self, stream: Any) -> None:
        try:
            async for msg in stream:
                self.take(msg)
                if self.delay:
                    await asyncio.sleep(self.delay)
        except StreamOverflow as exc:
            self.ended_with = exc

    async def handle(self, msg: Any) -> None:
        self.take(msg)
        await asyncio.sleep(self.delay)


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


async def inject_faults(
    server: FeedServer, client: ChaosClient, rng: random.Random, seconds: float, schedule: list[str]
) -> None:
    """Break the server at random until ``seconds`` have passed; log each fault into ``schedule``."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    unstall_at: float | None = None
    while loop.time() - started < seconds:
        await asyncio.sleep(rng.uniform(0.05, 0.5))
        if unstall_at is not None and loop.time() >= unstall_at:
            server.unstall()
            unstall_at = None
            schedule.append("unstall")
        fault = rng.choice(["drop", "stall", "refuse", "accept_drop", "garbage", "slow", "recycle", "close", "quiet"])
        schedule.append(fault)
        if fault == "drop":
            await server.drop()
        elif fault == "stall":
            server.stall()
            unstall_at = loop.time() + rng.uniform(0.2, 1.5)
        elif fault == "refuse":
            server.refuse_next(rng.randint(1, 3), status=rng.choice([429, 500, 502, 503]))
            await server.drop()
        elif fault == "accept_drop":
            server.drop_next(rng.randint(1, 3))
            await server.drop()
        elif fault == "garbage":
            await server.send_garbage(rng.randint(1, 3))
        elif fault == "slow":
            server.delay_next_handshakes(1, rng.uniform(0.05, 0.6))
            await server.drop()
        elif fault == "recycle":
            client.recycle_now.set()
        elif fault == "close":
            await server.close_all(rng.choice([1000, 1001, 1011, 1012, 1013]))
    server.unstall()


@pytest.mark.timeout(SECONDS + 90)
@pytest.mark.parametrize("transport", transports(*EVERY_TRANSPORT), indirect=True)
async def test_chaos(transport: str) -> None:
    """Under random faults nothing is lost unaccounted, order holds, the client recovers, nothing leaks."""
    rng = random.Random(SEED)
    schedule: list[str] = []
    replay = f"replay: ASYNC_WS_STREAM_CHAOS_SEED={SEED} ASYNC_WS_STREAM_CHAOS_SECONDS={SECONDS:g} [{transport}]"
    print(replay)
    tasks_before = asyncio.all_tasks()
    fds_before = fd_count()

    server = await FeedServer().start()
    publisher = Publisher(server)
    stop_publishing = asyncio.Event()
    publishing = asyncio.create_task(publisher.run(stop_publishing))
    client = ChaosClient(
        server.url,
        idle_timeout=0.5,
        stable_after=0.5,
        backoff_initial=0.02,
        backoff_factor=2.0,
        backoff_max=BACKOFF_MAX,
    )
    # Created before the client's first connection, so each sees the whole feed.
    reference = Consumer("reference", None, gapless=True)
    fast = Consumer("fast", {"a"})
    oldest = Consumer("drop_oldest", {"b"}, delay=0.02)
    newest = Consumer("drop_newest", {"a", "b"}, delay=0.05)
    strict = Consumer("overflow_error", {"a"}, delay=0.01)
    handler = Consumer("async_handler", {"b"}, delay=0.02)
    inline_count = 0

    def inline(msg: Any) -> None:
        nonlocal inline_count
        inline_count += 1

    streams = {
        reference: client.stream_filter(maxsize=1_000_000),
        fast: client.stream_filter([{"k": "a"}], maxsize=10_000),
        oldest: client.stream_filter([{"k": "b"}], maxsize=5, overflow="drop_oldest"),
        newest: client.stream_filter([{"k": "a"}, {"k": "b"}], maxsize=3, overflow="drop_newest"),
        strict: client.stream_filter([{"k": "a"}], maxsize=20, overflow="error"),
    }
    client.add_handler(handler.handle, [{"k": "b"}], maxsize=5, overflow="drop_oldest")
    client.add_handler(inline)
    readers = [asyncio.create_task(consumer.read(stream)) for consumer, stream in streams.items()]

    try:
        await client.wait_connected(timeout=10)
        third = asyncio.get_running_loop().time() + SECONDS / 3
        chaos = asyncio.create_task(inject_faults(server, client, rng, SECONDS, schedule))
        await asyncio.sleep(max(0.0, third - asyncio.get_running_loop().time()))
        rss_early = rss()
        await chaos

        # -- the faults stop: everything queued is used up, then one last drop -------------
        await server.wait_until(lambda: server.pending_faults == 0, timeout=30)
        recovered = asyncio.Event()
        # A recycle asked for too soon after a connect is paced, so one may still be
        # waiting: the drop below cancels it with its connection; none is asked again.
        client.recycle_now.clear()
        await server.drop()
        dropped_at = time.monotonic()
        first_new = publisher.last_id + 1
        reference.on_message = lambda msg: recovered.set() if msg["c"] >= first_new else None
        try:
            await asyncio.wait_for(recovered.wait(), BACKOFF_MAX + RECOVERY_MARGIN)
        except TimeoutError:
            pytest.fail(f"not streaming {BACKOFF_MAX + RECOVERY_MARGIN}s after the last fault; {replay}")
        recovery = time.monotonic() - dropped_at

        # -- and it stays up: 100 more messages on one connection, no reconnect -------------
        connects = client.stats()["connects"]
        steady = asyncio.Event()
        counted = Counter[int]()

        def count(msg: dict[str, Any]) -> None:
            counted[msg["c"]] += 1
            if counted[msg["c"]] >= 100:
                steady.set()

        reference.on_message = count
        await asyncio.wait_for(steady.wait(), 30)
        assert client.stats()["connects"] == connects, f"still reconnecting after the faults stopped; {replay}"

        stop_publishing.set()
        await publishing
        await settle(client, server)
        stats = client.stats()
    finally:
        stop_publishing.set()
        await client.exit()
        await asyncio.gather(publishing, *readers, return_exceptions=True)
        library_left = [t for t in asyncio.all_tasks() if t.get_name().startswith("async_ws_stream")]
        await server.wait_open(0)
        await server.stop()
    rss_late = rss()

    print(f"schedule ({len(schedule)} faults): {' '.join(schedule)}")
    print(f"stats: { {k: v for k, v in stats.items() if k != 'streams'} }, recovery {recovery:.3f}s")
    context = f"{replay}; schedule: {' '.join(schedule)}"

    # Order and completeness.
    for consumer in [*streams, handler]:
        assert consumer.problems == [], f"{consumer.problems[:5]}; {context}"
    matching = reference.by_kind
    drops = {consumer: stream.dropped for consumer, stream in streams.items()}
    assert drops[reference] == 0 and drops[fast] == 0
    assert fast.received == matching["a"]
    assert oldest.received + drops[oldest] == matching["b"], context
    assert newest.received + drops[newest] == matching["a"] + matching["b"], context
    if strict.ended_with is not None:
        assert drops[strict] == 1  # the one that did not fit ended the stream
    else:
        assert strict.received == matching["a"]
    handler_drops = stats["dropped"] - sum(drops.values())
    assert handler.received + handler_drops == matching["b"], context
    assert inline_count == reference.received + reference.markers

    # Counters reconcile with what the parser saw and the streams got.
    assert stats["frames"] == client.parsed
    assert stats["parse_errors"] == client.failed
    assert stats["skipped"] == client.skipped
    assert stats["messages"] == reference.received + reference.markers
    assert stats["frames"] == stats["messages"] + stats["parse_errors"] + stats["skipped"]
    assert stats.get("pending", 0) == 0

    # Nothing left over.
    assert library_left == []
    # An aborted socket is closed one loop step later.
    await eventually(lambda: fd_count() <= fds_before and not asyncio.all_tasks() - tasks_before, timeout=1,
                     what=lambda: f"no task or fd left ({asyncio.all_tasks() - tasks_before}, {fd_count()} fds)")
    assert asyncio.all_tasks() - tasks_before == set()
    assert fd_count() <= fds_before
    assert rss_late - rss_early < 30 * 2**20, f"RSS grew {(rss_late - rss_early) / 2**20:.1f} MB; {context}"
