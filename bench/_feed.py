"""The load server of the benchmarks, and the frames it sends.

Run as a script (``python bench/_feed.py``) it is a websockets server on
127.0.0.1 that prints ``PORT <n>`` and serves until its stdin closes. The
benchmarks start it as a subprocess (:class:`LoadServer`), so that it has a core
of its own and never competes with the client it measures for the event loop.

Every connection is driven by JSON commands the client sends as text frames:

==============================================  ================================================
command                                         what the server does
==============================================  ================================================
``{"cmd": "blast", "n": N}``                    writes N pre-built trade frames as fast as TCP
                                                lets it (whole chunks straight to the transport);
                                                with ``"seed": S, "symbols": K`` the frames'
                                                symbols are drawn at random (seeded) from the
                                                first K, else they go round all SYMBOLS
``{"cmd": "prepare", "seed": S, "symbols": K}`` builds those frames now and answers ``"ok"``
``{"cmd": "sink", "n": N}``                     the same, then closes the socket (capacity test)
``{"cmd": "paced", "n": N, "rate": R}``         N frames evenly spaced at R per second, each
                                                stamped at send with ``time.monotonic_ns()``
                                                in ``"ts"`` (the server blocks meanwhile)
``{"cmd": "feed", "rate": R, "drop_after": S}`` joins one global sequenced feed at R per second
                                                (``"k"``); after S seconds the connection is
                                                aborted (no close frame). The first frame of
                                                every connection goes out at once and carries
                                                ``"dropped_at"``: when the last drop happened
``{"cmd": "stats"}``                            answers ``{"cpu": process CPU seconds}``
==============================================  ================================================

This module needs only the standard library, ``websockets`` and (optionally)
``orjson``, so the older package's separate virtual environment can import it too.
``--tls CERT KEY`` adds a ``wss://`` listener (printed as ``TLSPORT <n>``).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from websockets.protocol import State

SYMBOLS = 1000
#: Distinct pre-built frames; the frame k of a blast is frame ``k % CYCLE``, whose ``"t"`` is that.
CYCLE = 100_000
#: Frames joined into one transport write.
CHUNK = 250

HERE = Path(__file__).resolve().parent


def symbol(i: int) -> str:
    """The symbol of the i-th of SYMBOLS instruments."""
    return f"C{i:03d}USDT"


def symbol_sequence(seed: int | None, symbols: int = SYMBOLS) -> list[int]:
    """The symbol index of each of the CYCLE frames: seeded random of ``symbols``, or round-robin."""
    if seed is None:
        return [i % symbols for i in range(CYCLE)]
    rng = random.Random(seed)
    return [rng.randrange(symbols) for _ in range(CYCLE)]


def expected_counts(n: int, seed: int | None, symbols: int = SYMBOLS) -> Counter[str]:
    """How many of the first n frames of a blast carry each symbol (what each stream must get)."""
    sequence = symbol_sequence(seed, symbols)
    whole, rest = divmod(n, CYCLE)
    counts = Counter(sequence[:rest])
    if whole:
        for k, v in Counter(sequence).items():
            counts[k] += whole * v
    return Counter({symbol(k): v for k, v in counts.items()})


def trade(i: int, sym: int | None = None) -> dict[str, Any]:
    """The i-th message of the feed: a Binance-style trade on symbol ``sym`` (default ``i % SYMBOLS``), ~200 bytes."""
    stamp = 1_732_000_000_000 + i
    return {
        "e": "trade",
        "E": stamp,
        "s": symbol(i % SYMBOLS if sym is None else sym),
        "t": i,
        "p": f"{100 + (i % 997) / 100:.8f}",
        "q": f"{1 + (i % 13) / 7:.8f}",
        "b": 88_000_000 + i,
        "a": 50_000_000 + i,
        "f": 10_000_000 + i,
        "l": 10_000_000 + i,
        "T": stamp,
        "X": "MARKET",
        "m": bool(i & 1),
        "M": True,
    }


def dumps(msg: Any) -> bytes:
    """Compact JSON, as an exchange sends it."""
    return json.dumps(msg, separators=(",", ":")).encode()


def ws_frame(payload: bytes) -> bytes:
    """One unmasked, unfragmented text frame (server to client), header included."""
    n = len(payload)
    if n < 126:
        header = bytes((0x81, n))
    elif n < 65536:
        header = bytes((0x81, 126)) + n.to_bytes(2, "big")
    else:
        header = bytes((0x81, 127)) + n.to_bytes(8, "big")
    return header + payload


# -- the server (runs in its own process) -----------------------------------------------------


class _Feed:
    """One global sequence broadcast to every connection that sent ``feed``."""

    def __init__(self) -> None:
        self.k = 0
        self.subscribers: dict[Any, int] = {}  # connection -> its number
        self.numbers = 0
        self.dropped_at: int | None = None
        self.task: asyncio.Task[None] | None = None
        self.rate = 1000.0

    def frame(self, number: int, first: bool = False) -> bytes:
        msg: dict[str, Any] = {"e": "seq", "k": self.k, "c": number, "ts": time.monotonic_ns()}
        if first:
            msg["dropped_at"] = self.dropped_at
        return ws_frame(dumps(msg))

    async def run(self) -> None:
        start = time.monotonic()
        sent = 0
        try:
            while self.subscribers:
                due = int((time.monotonic() - start) * self.rate)
                while sent < due:
                    for conn, number in list(self.subscribers.items()):
                        # A connection being closed (a recycled one) leaves at its handler's end;
                        # until then nothing more may be written after its close frame.
                        if conn.state is State.OPEN:
                            conn.transport.write(self.frame(number))
                    self.k += 1
                    sent += 1
                await asyncio.sleep(0.0005)
        finally:
            self.task = None


class _Server:
    def __init__(self) -> None:
        # (seed, symbols) -> (frames, chunks of CHUNK frames)
        self.sets: dict[tuple[int | None, int], tuple[list[bytes], list[bytes]]] = {}
        self.feed = _Feed()

    def build(self, seed: int | None = None, symbols: int = SYMBOLS) -> tuple[list[bytes], list[bytes]]:
        built = self.sets.get((seed, symbols))
        if built is not None:
            return built
        encode: Callable[[Any], bytes]
        try:
            import orjson

            encode = orjson.dumps
        except ImportError:  # the frames are the same bytes either way; orjson is only faster
            encode = dumps
        sequence = symbol_sequence(seed, symbols)
        frames = [ws_frame(encode(trade(i, sequence[i]))) for i in range(CYCLE)]
        chunks = [b"".join(frames[i : i + CHUNK]) for i in range(0, CYCLE, CHUNK)]
        self.sets[(seed, symbols)] = frames, chunks
        return frames, chunks

    async def blast(self, conn: Any, n: int, seed: int | None = None, symbols: int = SYMBOLS) -> None:
        # Straight to the transport: the frames are pre-built and whole, so nothing
        # per frame runs here and the server stays far faster than any reader.
        # Connection.drain() is websockets' flow control (internal, stable since 13).
        frames, chunks = self.build(seed, symbols)
        transport = conn.transport
        full, rest = divmod(n, CHUNK)
        for j in range(full):
            transport.write(chunks[j % len(chunks)])
            await conn.drain()
        start = full * CHUNK % CYCLE
        transport.write(b"".join(frames[start : start + rest]))

    async def paced(self, conn: Any, n: int, rate: float) -> None:
        # Each frame at its own time. time.sleep() blocks this process on purpose: an
        # asyncio timer waits in whole milliseconds (epoll), which would turn 20,000
        # msgs/s into bursts of 20 and measure the bursts rather than the client.
        transport = conn.transport
        begin = time.monotonic()
        for i in range(n):
            delay = begin + i / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            msg = trade(i % CYCLE)
            msg["ts"] = time.monotonic_ns()
            transport.write(ws_frame(dumps(msg)))
            if i % 256 == 255:
                await conn.drain()

    async def handle(self, conn: Any) -> None:
        feed = self.feed
        try:
            async for raw in conn:
                cmd = json.loads(raw)
                what = cmd["cmd"]
                if what == "blast":
                    await self.blast(conn, cmd["n"], cmd.get("seed"), cmd.get("symbols", SYMBOLS))
                elif what == "prepare":
                    self.build(cmd.get("seed"), cmd.get("symbols", SYMBOLS))
                    await conn.send("ok")
                elif what == "sink":
                    await self.blast(conn, cmd["n"])
                    await conn.drain()
                    conn.transport.close()
                elif what == "paced":
                    await self.paced(conn, cmd["n"], cmd["rate"])
                elif what == "feed":
                    feed.rate = cmd["rate"]
                    feed.numbers += 1
                    number = feed.numbers
                    conn.transport.write(feed.frame(number, first=True))
                    feed.subscribers[conn] = number
                    if feed.task is None:
                        feed.task = asyncio.get_running_loop().create_task(feed.run())
                    if cmd.get("drop_after"):
                        asyncio.get_running_loop().call_later(cmd["drop_after"], self.drop, conn)
                elif what == "stats":
                    await conn.send(json.dumps({"cpu": time.process_time()}))
        except Exception as exc:  # a benchmark's client going away mid-command is normal
            if type(exc).__name__ not in ("ConnectionClosedOK", "ConnectionClosedError"):
                print(f"load server: {type(exc).__name__}: {exc}", file=sys.stderr)
        finally:
            feed.subscribers.pop(conn, None)

    def drop(self, conn: Any) -> None:
        if self.feed.subscribers.pop(conn, None) is not None:
            self.feed.dropped_at = time.monotonic_ns()
            conn.transport.abort()

    async def main(self, tls: tuple[str, str] | None = None) -> None:
        from websockets.asyncio.server import serve

        self.build()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()

        def wait_stdin() -> None:
            sys.stdin.read()  # the parent closes our stdin (or dies): time to go
            loop.call_soon_threadsafe(stop.set)

        threading.Thread(target=wait_stdin, daemon=True).start()
        options: dict[str, Any] = {"compression": None, "ping_interval": None, "max_queue": None}
        async with serve(self.handle, "127.0.0.1", 0, **options) as server:
            port = server.sockets[0].getsockname()[1]
            print(f"PORT {port}", flush=True)
            if tls is None:
                await stop.wait()
                return
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*tls)
            async with serve(self.handle, "127.0.0.1", 0, ssl=context, **options) as secure:
                print(f"TLSPORT {secure.sockets[0].getsockname()[1]}", flush=True)
                await stop.wait()


# -- the parent's side ------------------------------------------------------------------------


class LoadServer:
    """The load server in a subprocess, for a ``with`` block; ``url`` is where it listens."""

    def __init__(self, python: str | None = None, tls: tuple[str, str] | None = None) -> None:
        self._python = python or sys.executable
        self._proc: subprocess.Popen[str] | None = None
        self._tls = tls
        self.port = 0
        self.tls_port = 0

    def __enter__(self) -> LoadServer:
        extra = ["--tls", *self._tls] if self._tls else []
        self._proc = subprocess.Popen(
            [self._python, str(HERE / "_feed.py"), *extra],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline()
        if not line.startswith("PORT "):
            self.__exit__(None, None, None)
            raise RuntimeError(f"load server did not start (said {line!r})")
        self.port = int(line.split()[1])
        if self._tls:
            line = self._proc.stdout.readline()
            if not line.startswith("TLSPORT "):
                self.__exit__(None, None, None)
                raise RuntimeError(f"load server did not open its TLS listener (said {line!r})")
            self.tls_port = int(line.split()[1])
        return self

    def __exit__(self, *exc: object) -> None:
        proc = self._proc
        if proc is None:
            return
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.close()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        self._proc = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/"

    @property
    def tls_url(self) -> str:
        return f"wss://127.0.0.1:{self.tls_port}/"


async def server_cpu(ws: Any) -> float:
    """The load server's process CPU time, asked over ``ws`` (a control connection)."""
    await ws.send(json.dumps({"cmd": "stats"}))
    return float(json.loads(await ws.recv())["cpu"])


def sink_rate(port: int, n: int) -> float:
    """The server's own send rate in frames/s, measured with a reader that only counts bytes.

    A plain socket speaks just enough of the websocket handshake; it never parses a
    frame, so what it measures is the server (and the loopback), not a client.
    """
    key = "dGhlIHNhbXBsZSBub25jZQ=="
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(
            (
                f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            head += sock.recv(4096)
        payload = json.dumps({"cmd": "sink", "n": n}).encode()
        mask = os.urandom(4)
        sock.sendall(bytes((0x81, 0x80 | len(payload))) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))
        buf = bytearray(1 << 20)
        begin = time.perf_counter()
        while sock.recv_into(buf):
            pass
        return n / (time.perf_counter() - begin)


if __name__ == "__main__":
    _tls = (sys.argv[2], sys.argv[3]) if len(sys.argv) == 4 and sys.argv[1] == "--tls" else None
    asyncio.run(_Server().main(_tls))
