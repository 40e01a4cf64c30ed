"""``python -m async_ws_stream connect URL --to-nats ... --subject ... --to-redis ... --key ...``."""

from __future__ import annotations

import asyncio
import json
import sys

import nats
import redis.asyncio as aioredis

from async_ws_stream.testing import FeedServer

from ..subprocesses import ROOT, child_env
from .conftest import trades
from .servers import NatsServer, RedisServer, free_port


async def run_cli(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "async_ws_stream", "connect", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=child_env(), cwd=ROOT,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_connect_publishes_what_it_prints_to_nats_and_redis(
    nats_server: NatsServer, redis_server: RedisServer, feed: FeedServer
) -> None:
    """Every trade the CLI printed is in the JetStream stream it created and in the Redis stream."""
    async def publish_until_done() -> None:
        i = 0
        while True:
            await feed.publish(trades(10, i))
            i += 10
            await asyncio.sleep(0.01)

    publisher = asyncio.create_task(publish_until_done())
    try:
        code, out, err = await run_cli(
            feed.url, "--filter", '{"e": "trade"}', "--count", "30",
            "--to-nats", nats_server.url, "--subject", "md.{e}.{s}", "--to-redis", redis_server.url, "--key", "md",
        )
    finally:
        publisher.cancel()
        await asyncio.gather(publisher, return_exceptions=True)
    assert code == 0, err
    printed = [json.loads(line)["t"] for line in out.splitlines()]
    assert len(printed) == 30
    nc = await nats.connect(nats_server.url)
    try:
        psub = await nc.jetstream().pull_subscribe("md.>", stream="MD")
        stored = {json.loads(m.data)["t"] for m in await psub.fetch(1000, timeout=2)}
    finally:
        await nc.close()
    r = aioredis.from_url(redis_server.url)
    try:
        in_redis = {json.loads(fields[b"d"])["t"] for _, fields in await r.xrange("md")}
    finally:
        await r.aclose()
    assert set(printed) <= stored and set(printed) <= in_redis


async def test_connect_with_an_unreachable_broker_exits_1_naming_it(feed: FeedServer) -> None:
    """A NATS address with no server: exit 1 and an error naming the address."""
    url = f"nats://127.0.0.1:{free_port()}"
    code, out, err = await run_cli(feed.url, "--to-nats", url, "--subject", "md.{e}", "--max-retries", "0")
    assert code == 1 and out == ""
    assert f"cannot connect to NATS {url}" in err


async def test_broker_flags_go_in_pairs() -> None:
    """--to-nats without --subject (or a bad template) is a usage error: exit 2, naming the flags."""
    code, _, err = await run_cli("ws://127.0.0.1:9", "--to-nats", "nats://127.0.0.1:4222")
    assert code == 2 and "--to-nats and --subject go together" in err
    code, _, err = await run_cli("ws://127.0.0.1:9", "--to-redis", "redis://h", "--key", "md:{0}")
    assert code == 2 and "--key: placeholder {0}" in err


