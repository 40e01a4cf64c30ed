"""What the benchmark scripts share: the client under test, figures, and the machine."""

from __future__ import annotations

import asyncio
import os
import platform
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
import websockets

# Run from a checkout without installing: the package is one directory up.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from async_ws_stream import AsyncWsStream  # noqa: E402
from async_ws_stream.transports import DEFAULT_READ_SIZE, websockets_connect  # noqa: E402

loads = orjson.loads


class BenchClient(AsyncWsStream[Any]):
    """The client as a user writes it for a ws:// feed: ``websockets_connect``, never recycle, orjson in a ``def``.

    ``commands`` go out on every new connection from ``_on_connect`` (a subscription).
    ``read_size`` is what ``websockets_connect`` gets (``--read-size`` in throughput.py).
    """

    read_size = DEFAULT_READ_SIZE

    def __init__(self, url: str, *, commands: Sequence[Any] = (), recycle_every: float | None = None,
                 **options: Any) -> None:
        super().__init__(**options)
        self.url = url
        self.commands = list(commands)
        self.recycle_every = recycle_every

    async def _create_ws(self) -> Any:
        return await websockets_connect(self.url, read_size=self.read_size)

    async def _when2create_new_ws(self) -> None:
        if self.recycle_every is None:
            await asyncio.Event().wait()
        else:
            await asyncio.sleep(self.recycle_every)

    def _parse_raw_data(self, raw: str | bytes) -> Any:
        return loads(raw)

    async def _on_connect(self, ws: Any) -> None:
        for command in self.commands:
            await ws.send(orjson.dumps(command).decode())


def spread(values: Sequence[float]) -> str:
    """``median [min-max]`` of rates, in thousands."""
    med = statistics.median(values)
    return f"{med / 1000:,.1f}k [{min(values) / 1000:,.1f}-{max(values) / 1000:,.1f}k]"


def machine() -> str:
    """One line naming what the figures were measured on."""
    return (
        f"{os.cpu_count()} cores, {platform.python_implementation()} {platform.python_version()}, "
        f"websockets {websockets.__version__}, orjson {orjson.__version__}, {platform.system()} "
        f"{platform.release()}"
    )


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The q-th quantile (0 to 1) of already sorted values, nearest rank."""
    if not sorted_values:
        return float("nan")
    i = min(len(sorted_values) - 1, max(0, round(q * len(sorted_values) + 0.5) - 1))
    return sorted_values[i]


def load_average() -> str:
    """The 1-minute load average: how busy the machine was (other work makes figures noisy)."""
    try:
        return f"{os.getloadavg()[0]:.2f}"
    except OSError:
        return "n/a"
