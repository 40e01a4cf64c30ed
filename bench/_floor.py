"""The hand-written floor: what a careful user writes for N symbol streams without the library.

One receive loop on plain ``websockets.connect``, orjson, a dict from symbol to its
consumer, and for each consumer a deque and a future to wake it. No reconnect, no
overflow policy, no filters beyond the one key, no stats: the least a program that
fans one feed out to many consumer tasks can do. throughput.py's "1,000 streams"
row is compared with it: the library should be no slower than this.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Mapping
from typing import Any

from websockets.asyncio.client import connect

from _common import loads


class Consumer:
    """One symbol's queue and the future its task waits on when the queue is empty."""

    __slots__ = ("queue", "waiter")

    def __init__(self) -> None:
        self.queue: deque[Any] = deque()
        self.waiter: asyncio.Future[None] | None = None


async def consume(consumer: Consumer, sym: str, want: int) -> tuple[int, int]:
    """Take ``want`` messages; return (count, messages of another symbol)."""
    loop = asyncio.get_running_loop()
    queue = consumer.queue
    count = bad = 0
    while count < want:
        if not queue:
            consumer.waiter = waiter = loop.create_future()
            await waiter
        msg = queue.popleft()
        if msg["s"] != sym:
            bad += 1
        count += 1
    return count, bad


async def floor_round(url: str, n: int, expected: Mapping[str, int], blast: str, start: Any, stop: Any) -> list[str]:
    """Run one blast of n frames through the floor; the problems found (empty when every count is right)."""
    consumers = {sym: Consumer() for sym in expected}
    tasks = [asyncio.create_task(consume(consumers[sym], sym, want)) for sym, want in expected.items()]
    frames = 0
    async with connect(url) as ws:
        await start()
        await ws.send(blast)
        get = consumers.get
        async for raw in ws:
            msg = loads(raw)
            consumer = get(msg["s"])
            if consumer is not None:
                consumer.queue.append(msg)
                waiter = consumer.waiter
                if waiter is not None:
                    consumer.waiter = None
                    waiter.set_result(None)
            frames += 1
            if frames == n:
                break
        results = await asyncio.gather(*tasks)
        await stop()
    problems = []
    short = sum(1 for (count, _), want in zip(results, expected.values()) if count != want)
    wrong = sum(bad for _, bad in results)
    if short:
        problems.append(f"{short} consumers did not get their messages")
    if wrong:
        problems.append(f"{wrong} messages reached a consumer of another symbol")
    return problems
