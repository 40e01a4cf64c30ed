"""One round of the older AsyncWebsocketStreamInterface package, run in ITS virtual environment.

``python bench/_old_worker.py URL N`` consumes N frames of a ``blast`` through one
unfiltered consumer of the older package (a plain ``add_handler`` function: its
``stream_filter()`` closes itself under this load) and prints one JSON line:
``{"messages", "seconds", "cpu", "problems"}``. The older package needs an older
ecosystem (beeprint, NoLossAsyncGenerator, ...), so it never shares an
interpreter with this project: throughput.py runs this file with the other
venv's python. Its logging is switched off, as a user would in production
(it still pretty-prints every message before handing it to loguru).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import warnings
from typing import Any

from _feed import CYCLE

warnings.simplefilter("ignore", DeprecationWarning)  # it touches websockets' legacy names

import orjson  # noqa: E402
import websockets  # noqa: E402
from AsyncWebsocketStreamInterface import AsyncWebsocketStreamInterface  # noqa: E402
from loguru import logger  # noqa: E402

# How long the consumer may go without a message before we call the round broken.
SILENCE = 3.0


class Old(AsyncWebsocketStreamInterface):
    def __init__(self, url: str) -> None:
        self.url = url
        super().__init__()

    async def _create_ws(self) -> Any:
        return await websockets.connect(self.url)

    async def _when2create_new_ws(self) -> None:
        await asyncio.Event().wait()

    async def _parse_raw_data(self, raw: Any) -> Any:
        return orjson.loads(raw)


async def main(url: str, n: int) -> dict[str, Any]:
    logger.remove()
    client = Old(url)
    problems: list[str] = []
    count = expect = bad = 0
    done = asyncio.Event()

    # Its stream_filter() cannot be measured under a firehose: the stream closes
    # itself as soon as 20 messages pile up (after one TCP read of 250 frames here).
    # A plain handler is what its streams are built on, minus the queue, so this is
    # the most it can carry to one consumer.
    def consume(msg: Any) -> None:
        nonlocal count, expect, bad
        if msg["t"] != expect:
            bad += 1
        expect = (expect + 1) % CYCLE
        count += 1
        if count == n:
            done.set()

    client.add_handler(consume)
    while client.present_ws is None:  # the older package has no way to wait for its connection
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.1)
    begin = time.perf_counter()
    cpu = time.process_time()
    await client.send(json.dumps({"cmd": "blast", "n": n}))
    # A watchdog, not a timeout per message: that would add a task per message to its cost.
    seen = -1
    while not done.is_set():
        if count == seen:
            problems.append(f"its handler went silent after {count} of {n} messages")
            break
        seen = count
        try:
            await asyncio.wait_for(done.wait(), SILENCE)
        except TimeoutError:
            pass
    seconds = time.perf_counter() - begin
    cpu = time.process_time() - cpu
    if bad:
        problems.append(f"{bad} messages out of sequence")
    try:
        await asyncio.wait_for(client.exit(), 2)
    except Exception as exc:  # its exit() is not reliable; the figures are already taken
        problems.append(f"exit() failed: {type(exc).__name__}")
    return {"messages": count, "seconds": seconds, "cpu": cpu, "problems": problems}


if __name__ == "__main__":
    result = asyncio.run(main(sys.argv[1], int(sys.argv[2])))
    print(json.dumps(result), flush=True)
