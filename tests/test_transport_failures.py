"""A failed connection attempt leaves nothing behind, on every transport and at every point it can fail.

Each test makes attempts that fail (refused, reset right after accept, reset in
the handshake, handshake timeout, TLS failure, cancelled) and then checks the
process: the same file descriptors open as before (``/proc/self/fd``), no task
left but the test's own, and, after a full collection, no ``ResourceWarning``
(``filterwarnings = error`` turns an unclosed socket into a failure).
"""

from __future__ import annotations

import asyncio
import gc
import os
import random
import socket
import ssl
import struct
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from websockets.asyncio.client import connect

from async_ws_stream.transports import (
    PICOWS_AVAILABLE,
    picows_connect,
    websockets_connect,
)

from .conftest import eventually, transports

Connect = Callable[..., Awaitable[Any]]

#: Attempts against the server that resets right after accepting.
ATTEMPTS = 300


def connector(name: str) -> Connect:
    """The connect function of a transport, called as ``connect(url, open_timeout=..., ssl=...)``."""
    return {"websockets": connect, "websockets_connect": websockets_connect, "picows": picows_connect}[name]


@pytest.fixture(params=transports("websockets", "websockets_connect", "picows"))
def open_ws(request: pytest.FixtureRequest) -> Connect:
    return connector(request.param)


def open_fds() -> set[str]:
    """This process's open file descriptors, as "number -> what" (the listing's own descriptor left out)."""
    found = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except FileNotFoundError:
            continue  # the descriptor of the listing itself, closed by now
        found.add(f"{fd} -> {target}")
    return found


async def fails(open_ws: Connect, url: str, *, error: type[BaseException] | tuple[type[BaseException], ...] = Exception,
                **options: Any) -> BaseException:
    """One attempt that must fail; returns its exception."""
    with pytest.raises(error) as caught:
        await open_ws(url, **options)
    return caught.value


async def nothing_left(before: set[str]) -> None:
    """No descriptor, task or unclosed socket outlives the attempts.

    The servers run in this process, and close their side of a connection a
    loop iteration or two after the client gave up, as websockets' own client
    does its socket; so this waits, at most a second, for the count to settle.
    """
    await eventually(lambda: not open_fds() - before, timeout=1, interval=0.001,
                     what=lambda: f"no file descriptor left open ({sorted(open_fds() - before)})")
    assert [t for t in asyncio.all_tasks() if t is not asyncio.current_task()] == []
    gc.collect()  # an unclosed socket would raise ResourceWarning here (filterwarnings = error)


@pytest.fixture
def reset_server() -> Iterator[str]:
    """A server that accepts and at once resets (SO_LINGER 0, close): some attempts see it at connect, some later.

    It runs in a thread so that the reset can land between two steps of the
    client's connect path, as it does against a remote server; the delay before
    each reset is random, from none to half a millisecond.
    """
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    rng = random.Random(7)

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return  # the listener was closed: the test is over
            time.sleep(rng.random() * 0.0005)
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.close()

    thread = threading.Thread(target=serve, name="reset server", daemon=True)
    thread.start()
    try:
        yield f"ws://127.0.0.1:{listener.getsockname()[1]}/"
    finally:
        listener.shutdown(socket.SHUT_RDWR)
        listener.close()
        thread.join(5)


@dataclass
class HandshakeServer:
    url: str
    plan: list[str]  # what to do with each next request: "reset" or "stall"
    requests: asyncio.Queue[None]  # one item per request read
    ports: list[int]  # the client's port of each connection, in order


@pytest.fixture
async def handshake_server() -> AsyncIterator[HandshakeServer]:
    """A server that reads the handshake request, then does what the test puts in ``plan``: "reset" or "stall"."""
    plan: list[str] = []
    requests: asyncio.Queue[None] = asyncio.Queue()
    ports: list[int] = []
    stalled: list[asyncio.StreamWriter] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        ports.append(writer.get_extra_info("peername")[1])
        await reader.readuntil(b"\r\n\r\n")
        requests.put_nowait(None)
        if plan.pop(0) == "reset":
            writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
        else:
            stalled.append(writer)
            await reader.read()  # until the client gives up
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield HandshakeServer(f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/", plan, requests, ports)
    finally:
        for writer in stalled:
            writer.transport.abort()
        server.close()
        await server.wait_closed()


async def test_a_reset_right_after_accept_leaves_nothing(open_ws: Connect, reset_server: str) -> None:
    """300 attempts against a server that resets at once: each raises an OSError or InvalidMessage, none leaks."""
    before = open_fds()
    for _ in range(ATTEMPTS):
        await fails(open_ws, reset_server, open_timeout=5)
    await nothing_left(before)


async def test_a_refused_connection_leaves_nothing(open_ws: Connect, unused_tcp_port: int) -> None:
    """Nothing listens: ConnectionRefusedError, and nothing left."""
    before = open_fds()
    for _ in range(20):
        await fails(open_ws, f"ws://127.0.0.1:{unused_tcp_port}/", error=OSError, open_timeout=5)
    await nothing_left(before)


async def test_a_reset_in_the_handshake_leaves_nothing(open_ws: Connect,
                                                       handshake_server: HandshakeServer) -> None:
    """The server resets after reading the request: an error, and nothing left."""
    url, plan = handshake_server.url, handshake_server.plan
    before = open_fds()
    for _ in range(20):
        plan.append("reset")
        await fails(open_ws, url, open_timeout=5)
    await nothing_left(before)


async def test_a_handshake_timeout_leaves_nothing(open_ws: Connect, handshake_server: HandshakeServer) -> None:
    """The server never answers: TimeoutError after open_timeout, and nothing left."""
    url, plan = handshake_server.url, handshake_server.plan
    before = open_fds()
    for _ in range(5):
        plan.append("stall")
        await fails(open_ws, url, error=TimeoutError, open_timeout=0.05)
    await nothing_left(before)


async def test_a_cancelled_attempt_leaves_nothing(open_ws: Connect, handshake_server: HandshakeServer) -> None:
    """Cancelled while the server has not answered: CancelledError, and nothing left."""
    url, plan = handshake_server.url, handshake_server.plan
    before = open_fds()
    for _ in range(5):
        plan.append("stall")
        async def attempt_one() -> Any:
            return await open_ws(url)

        attempt = asyncio.create_task(attempt_one())
        await handshake_server.requests.get()
        attempt.cancel()
        with pytest.raises(asyncio.CancelledError):
            await attempt
    await nothing_left(before)


async def test_a_tls_failure_leaves_nothing(open_ws: Connect, tls_url: str) -> None:
    """An untrusted certificate: SSLCertVerificationError, and nothing left."""
    before = open_fds()
    for _ in range(5):
        await fails(open_ws, tls_url, error=ssl.SSLCertVerificationError, open_timeout=5,
                    ssl=ssl.create_default_context())
    await nothing_left(before)


def holds_socket_on(port: int) -> bool:
    """Whether this process has a TCP socket open on local port ``port`` (from /proc/net/tcp)."""
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except FileNotFoundError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    with open("/proc/net/tcp") as table:
        for line in table.readlines()[1:]:
            fields = line.split()
            if int(fields[1].split(":")[1], 16) == port and fields[9] in inodes:
                return True
    return False


@pytest.mark.parametrize("name", transports("websockets_connect", "picows"))
@pytest.mark.parametrize("fault", ["reset", "stall"])
async def test_the_socket_is_closed_when_the_error_is_raised(name: str, fault: str,
                                                             handshake_server: HandshakeServer) -> None:
    """Ours close the attempt's socket before raising (plain websockets.connect closes it an iteration later)."""
    for _ in range(5):
        handshake_server.plan.append(fault)
        await fails(connector(name), handshake_server.url, open_timeout=0.1)
        assert not holds_socket_on(handshake_server.ports[-1])


@pytest.mark.skipif(not PICOWS_AVAILABLE, reason="picows is not installed")
async def test_picows_hands_every_socket_to_a_transport(reset_server: str, logs: list[str]) -> None:
    """Each socket of a reset attempt reaches a transport, which closes it: none is left for the fallback to close.

    Before, picows connected a socket again when the reset landed before its own
    connected-check, and nothing closed it if that failed (a ResourceWarning);
    and aiofastnet's transport left a closed descriptor in the selector, so the
    next attempt to get that number failed with FileNotFoundError.
    """
    for _ in range(100):
        error = await fails(picows_connect, reset_server, open_timeout=5)
        assert not isinstance(error, FileNotFoundError), error
    assert not [line for line in logs if "no transport took" in line]
