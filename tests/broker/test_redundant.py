"""Two collector processes on one feed, one JetStream stream: each message once, and SIGKILL loses nothing."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

from async_ws_stream.broker import JetStreamSource, ensure_stream
from async_ws_stream.testing import FeedServer

from .conftest import trades
from .servers import NatsServer

ROOT = Path(__file__).resolve().parents[2]


async def start_collector(feed: FeedServer, nats_url: str) -> asyncio.subprocess.Process:
    """examples/collector.py in a process of its own; returns once it printed ``ready``."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(ROOT / "examples" / "collector.py"), "--feed", feed.url, "--nats", nats_url,
        stdout=asyncio.subprocess.PIPE, env=env,
    )
    assert proc.stdout is not None
    async with asyncio.timeout(20):
        assert await proc.stdout.readline() == b"ready\n"
    return proc


async def test_two_collectors_give_each_message_once_and_a_sigkill_loses_nothing(
    nats_server: NatsServer, feed: FeedServer
) -> None:
    """Both collectors publish every trade; the consumer reads each exactly once though one was SIGKILLed."""
    await ensure_stream(servers=nats_server.url, stream="MD", subjects=["md.>"])
    a, b = await asyncio.gather(start_collector(feed, nats_server.url), start_collector(feed, nats_server.url))
    try:
        await feed.wait_connections(2)
        n = 6000
        async with JetStreamSource(servers=nats_server.url, stream="MD", subjects="md.>") as source:
            stream = source.stream_filter([{"e": "trade"}])
            await feed.publish(trades(n // 2), rate=20_000)
            a.kill()  # SIGKILL, mid-run: whatever it had not published yet is gone with it
            await a.wait()
            await feed.publish(trades(n // 2, n // 2), rate=20_000)
            got: list[Any] = []
            async with asyncio.timeout(20):
                async for msg in stream:
                    got.append(msg["t"])
                    if len(got) == n:
                        break
        b.terminate()
        assert b.stdout is not None
        out, _ = await asyncio.wait_for(b.communicate(), 20)
        survivor = json.loads(out.splitlines()[-1])
    finally:
        for proc in (a, b):
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    assert sorted(got) == list(range(n))  # each message once, none lost
    assert survivor["published"] == n and survivor["dropped"] == 0
    nc_count = await _stream_messages(nats_server.url)
    assert nc_count == n  # the stream itself holds one copy of each


async def _stream_messages(url: str) -> int:
    import nats

    nc = await nats.connect(url)
    try:
        return (await nc.jetstream().stream_info("MD")).state.messages
    finally:
        await nc.close()


async def test_remote_consumer_example_reads_the_trades_and_reports_gaps(nats_server: NatsServer) -> None:
    """examples/remote_consumer.py reads the collectors' trades and says where a collector lost some."""
    import nats

    await ensure_stream(servers=nats_server.url, stream="MD", subjects=["md.>"])
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    for msg in trades(5):
        await js.publish("md.trade.BTCUSDT", json.dumps(msg).encode())
    await js.publish("md._gap", json.dumps({"_gap": {"dropped": 3, "collector": "c:1", "number": 1}}).encode())
    await js.publish("md.trade.BTCUSDT", json.dumps(trades(1, 5)[0]).encode())
    await nc.close()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-W", "error", str(ROOT / "examples" / "remote_consumer.py"), "--nats", nats_server.url,
        "--count", "6", "--timeout", "10", "--durable", "example",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 0, err.decode()
    lines = out.decode().splitlines()
    assert [json.loads(line)["t"] for line in lines[:5]] == list(range(5))
    assert lines[5] == "gap: a collector lost 3 messages"
    assert json.loads(lines[6])["t"] == 5
    assert lines[7].startswith("consumed 6 trades; source {") and '"gaps": 1' in lines[7]
