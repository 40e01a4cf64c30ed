"""FaultProxy: a TCP proxy on loopback that breaks the bytes between a client and any server."""

from __future__ import annotations

import asyncio
import enum
import random
from collections import deque
from collections.abc import Callable
from types import TracebackType
from typing import Any, Self
from urllib.parse import urlsplit

from loguru import logger

from .._redact import traceback_of
from ._common import DEFAULT_WAIT_TIMEOUT, Changes, check_count, check_seconds
from ._link import Link, reset
from ._proxy_faults import (
    UNSET,
    Directions,
    DirectionState,
    LinkFaults,
    _Unset,
    directions,
)


class _State(enum.Enum):
    NEW = "new"
    SERVING = "serving"
    CLOSING = "closing"
    CLOSED = "closed"


def _target(upstream: object) -> tuple[str, int]:
    if isinstance(upstream, tuple) and len(upstream) == 2:
        host, port = upstream
        if isinstance(host, str) and isinstance(port, int) and not isinstance(port, bool) and 0 < port < 65536:
            return host, port
    elif isinstance(upstream, str):
        parts = urlsplit(upstream)
        if parts.scheme in ("ws", "wss", "http", "https", "tcp") and parts.hostname and parts.port:
            return parts.hostname, parts.port
    raise ValueError(
        f"FaultProxy: upstream must be a URL with a host and port such as server.url "
        f"('ws://127.0.0.1:8765') or a (host, port) tuple, got {upstream!r}"
    )


class FaultProxy:
    """A TCP proxy on 127.0.0.1 between your client and any server, with faults on demand.

    Point the client at :attr:`url` (or :meth:`url_for`) instead of the
    server; every TCP connection it opens is accepted by the proxy, which
    opens one to ``upstream`` and forwards the bytes both ways, unchanged
    until a fault is set. The proxy knows nothing of websockets (so it works
    for ``wss://`` too, see :meth:`url_for`) and breaks what the network breaks:

    * per direction (``"to_server"``, ``"to_client"`` or ``"both"``), set
      with :meth:`set` at any time and applied to every connection at once:
      latency and jitter, a bandwidth limit, slicing into small writes (1-byte
      writes), and a black hole (a partition: bytes vanish, sockets stay open);
    * :meth:`half_open`: the connections open now go silent in a direction,
      sockets kept open, while new ones work (a peer that vanished);
    * :meth:`reset_after`: a TCP RST on both sockets after K more bytes in a
      direction (mid-frame, when K is smaller than the next frame);
    * :meth:`reset_next`: the next N connections get an RST right after accept;
    * :meth:`delay_next`: the next N connections are held S seconds before
      the first byte goes either way (a slow handshake);
    * :meth:`reset_all`: an RST on every open connection now.

    Every change of state (a connection accepted or gone, bytes forwarded or
    discarded, a reset) wakes :meth:`wait_until` and the ``wait_*`` methods.

    ``async with FaultProxy(server.url) as proxy:`` starts and closes it.
    :meth:`close` is idempotent and leaves no task or socket behind. The
    proxy belongs to the event loop that started it and is not thread-safe.

    Args:
        upstream: Where to forward: a URL with host and port (``server.url``)
            or a ``(host, port)`` tuple.
        host: Address to listen on.
        port: Port to listen on; 0 picks a free one.
        seed: Seeds the jitter's random numbers, for a repeatable run.

    Raises:
        ValueError: If ``upstream`` or ``port`` is not usable.
    """

    def __init__(
        self, upstream: str | tuple[str, int], *, host: str = "127.0.0.1", port: int = 0, seed: int | None = None
    ) -> None:
        self._target = _target(upstream)
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            raise ValueError(f"FaultProxy: port must be an int in 0..65535, got {port!r}")
        self._host = host
        self._port = port
        rng = random.Random(seed)
        self._directions = {"to_server": DirectionState(rng), "to_client": DirectionState(rng)}

        self.connects: int = 0
        """TCP connections accepted in total, including those reset at accept."""
        self.resets: int = 0
        """Connections ended with an RST by a fault (:meth:`reset_after`, :meth:`reset_next`, :meth:`reset_all`)."""

        self.errors: int = 0
        """Connections the proxy itself failed on (logged with their traceback); 0 unless there is a bug."""

        self._state = _State.NEW
        self._server: asyncio.Server | None = None
        self._bound_port: int | None = None
        self._links: dict[Link, asyncio.Task[None]] = {}
        self._close_task: asyncio.Task[None] | None = None
        self._resets_pending = 0
        self._holds: deque[float] = deque()
        self._changes = Changes()

    # Lifecycle

    async def start(self) -> Self:
        """Start listening; return the proxy itself.

        Raises:
            RuntimeError: If the proxy is running or was closed.
            OSError: If the address cannot be bound.
        """
        if self._state is not _State.NEW:
            raise RuntimeError(f"FaultProxy.start: the proxy is {self._state.value}; make a new one")
        self._server = await asyncio.start_server(self._accepted, self._host, self._port)
        self._bound_port = self._server.sockets[0].getsockname()[1]
        self._state = _State.SERVING
        logger.debug("FaultProxy listening on port {}", self._bound_port)
        return self

    async def close(self) -> None:
        """Stop listening and close every proxied connection; idempotent.

        Both sockets of every connection are closed at once (no RST), and
        every task of the proxy has ended when ``close()`` returns. Cancelling
        ``close()`` does not cancel the shutdown; calling it again waits for it.
        """
        if self._state in (_State.NEW, _State.CLOSED):
            self._state = _State.CLOSED
            return
        if self._close_task is None:
            self._state = _State.CLOSING
            self._close_task = asyncio.get_running_loop().create_task(self._shutdown())
        await asyncio.shield(self._close_task)

    async def _shutdown(self) -> None:
        assert self._server is not None
        self._server.close()
        for link, task in list(self._links.items()):
            link.abort()
            task.cancel()
        if self._links:
            await asyncio.wait(list(self._links.values()))
        await self._server.wait_closed()
        # abort() closes a socket from a callback it schedules: let those run.
        await asyncio.sleep(0)
        self._state = _State.CLOSED
        self._changes.notify()
        logger.debug("FaultProxy on port {} closed", self._bound_port)

    async def __aenter__(self) -> Self:
        """Start the proxy (see :meth:`start`)."""
        return await self.start()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Close the proxy (see :meth:`close`)."""
        await self.close()

    # Addresses

    @property
    def port(self) -> int:
        """The port the proxy listens on.

        Raises:
            RuntimeError: If the proxy was never started.
        """
        if self._bound_port is None:
            raise RuntimeError("FaultProxy: not started; use `async with FaultProxy(server.url) as proxy:` first")
        return self._bound_port

    @property
    def url(self) -> str:
        """``"ws://127.0.0.1:PORT"``: the proxy's address for a websocket client."""
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"ws://{host}:{self.port}"

    def url_for(self, path: str, *, scheme: str = "ws") -> str:
        """Return :attr:`url` followed by ``path`` (a leading ``/`` is added if missing).

        ``scheme="wss"`` gives the URL for a TLS server behind the proxy: the
        proxy forwards the encrypted bytes as they are, and the certificate
        must be valid for the proxy's host (127.0.0.1), or the client must
        name the real host with ``server_hostname``.
        """
        if scheme not in ("ws", "wss"):
            raise ValueError(f"url_for: scheme must be 'ws' or 'wss', got {scheme!r}")
        return f"{scheme}{self.url[2:]}" + (path if path.startswith("/") else "/" + path)

    # Faults

    def set(
        self,
        direction: Directions = "both",
        *,
        latency: float | _Unset = UNSET,
        jitter: float | _Unset = UNSET,
        bandwidth: float | None | _Unset = UNSET,
        write_size: int | None | _Unset = UNSET,
        black_hole: bool | _Unset = UNSET,
    ) -> None:
        """Change the faults of ``direction``; settings not given stay as they are.

        See :class:`LinkFaults` for what each does. A change applies at once
        to every open connection and to later ones; bytes already waiting for
        their latency keep the latency they were read with. For example
        ``proxy.set(write_size=1)``, ``proxy.set("to_client", black_hole=True)``,
        ``proxy.set(latency=0.05, jitter=0.01)``, ``proxy.set(bandwidth=None)``.

        Raises:
            ValueError: If a direction or a value is out of range (the
                faults are then left unchanged).
            TypeError: If ``black_hole`` is not a bool.
        """
        names = directions("FaultProxy.set", direction)
        new = {
            name: self._directions[name].faults.updated(
                "FaultProxy.set", latency=latency, jitter=jitter, bandwidth=bandwidth,
                write_size=write_size, black_hole=black_hole,
            )
            for name in names
        }
        for name, faults in new.items():
            self._directions[name].faults = faults

    def faults(self, direction: Directions) -> LinkFaults:
        """The faults set on ``direction`` now (for ``"both"``, those of ``"to_server"``)."""
        return self._directions[directions("FaultProxy.faults", direction)[0]].faults

    def clear(self) -> None:
        """Turn every fault off: both directions' settings, half-open connections, armed resets and queued accept faults."""
        for state in self._directions.values():
            state.faults = LinkFaults()
            state.reset_countdown = None
        self._resets_pending = 0
        self._holds.clear()
        for link in self._links:
            link.half_open.clear()

    def reset_after(self, nbytes: int, direction: Directions = "to_client") -> None:
        """Reset the connection that forwards the next ``nbytes`` bytes in ``direction``, once.

        The bytes are counted across connections in the order they are
        forwarded; the connection carrying byte ``nbytes`` forwards up to it
        and then both its sockets get an RST (0: the next byte is not
        forwarded). With ``"both"``, each direction is armed on its own.
        Calling again re-arms with the new count.

        Raises:
            ValueError: If ``nbytes`` is not an int >= 0 or the direction is unknown.
        """
        check_count("reset_after", nbytes, "nbytes")
        for name in directions("reset_after", direction):
            self._directions[name].reset_countdown = nbytes

    def reset_next(self, n: int = 1) -> None:
        """Answer the next ``n`` connections with an RST right after accept (calls add up).

        The client's connect succeeds and its first read or write fails with
        a connection reset; the upstream server never sees the connection.

        Raises:
            ValueError: If ``n`` is not an int >= 0.
        """
        self._resets_pending += check_count("reset_next", n)

    def delay_next(self, n: int, seconds: float) -> None:
        """Hold the next ``n`` connections ``seconds`` before anything is forwarded (calls queue up).

        The proxy connects upstream only when the hold ends, so the server
        sees a late connection rather than an idle one; to the client it is
        a slow handshake.

        Raises:
            ValueError: If ``n`` or ``seconds`` is out of range.
        """
        check_count("delay_next", n)
        self._holds.extend([check_seconds("delay_next", "seconds", seconds)] * n)

    def half_open(self, direction: Directions = "to_client") -> int:
        """Make every open connection half-open in ``direction``; return how many.

        From now on those connections discard (and count) what they read in
        that direction, end-of-stream included, and keep both sockets open,
        as when a peer vanished without a word. Connections opened later are
        not affected, so a client that notices (``idle_timeout``, pings) and
        reconnects recovers on its own. :meth:`clear` undoes it;
        ``set(black_hole=True)`` is the lasting kind, a partition that takes
        later connections too.

        Raises:
            ValueError: If the direction is unknown.
        """
        names = directions("half_open", direction)
        for link in self._links:
            link.half_open.update(names)
        return len(self._links)

    def reset_all(self) -> int:
        """Reset every open connection now (RST on both sockets); return how many."""
        links = list(self._links)
        for link in links:
            link.was_reset = True
            link.abort(rst=True)
        return len(links)

    # State

    @property
    def open_connections(self) -> int:
        """Connections being proxied now."""
        return len(self._links)

    @property
    def pending_faults(self) -> int:
        """Armed resets and queued accept faults not yet used."""
        armed = sum(state.reset_countdown is not None for state in self._directions.values())
        return armed + self._resets_pending + len(self._holds)

    def forwarded(self, direction: Directions = "to_client") -> int:
        """Bytes forwarded so far in ``direction`` (both added up for ``"both"``)."""
        return sum(self._directions[name].forwarded for name in directions("forwarded", direction))

    def stats(self) -> dict[str, Any]:
        """Counters: ``connects``, ``open``, ``resets``, and per direction ``forwarded``, ``writes``, ``discarded``."""
        return {
            "connects": self.connects,
            "open": len(self._links),
            "resets": self.resets,
            "errors": self.errors,
            **{name: state.counters() for name, state in self._directions.items()},
        }

    # Synchronisation

    async def wait_until(self, predicate: Callable[[], bool], *, timeout: float | None = DEFAULT_WAIT_TIMEOUT) -> None:
        """Return once ``predicate()`` is true; checked now and after every change of state.

        Raises:
            async_ws_stream.exceptions.Timeout: (a :exc:`TimeoutError`) after ``timeout`` seconds.
            RuntimeError: If the proxy closed and the predicate is false.

        Cancelling the wait is safe.
        """
        await self._wait(predicate, timeout, lambda: f"wait_until: {predicate!r} still false")

    async def wait_connections(self, n: int, *, timeout: float | None = DEFAULT_WAIT_TIMEOUT) -> None:
        """Return once at least ``n`` connections have been accepted in total (:attr:`connects`).

        Raises:
            async_ws_stream.exceptions.Timeout: After ``timeout`` seconds.
            ValueError: If ``n`` is not an int >= 0.
        """
        check_count("wait_connections", n)
        await self._wait(lambda: self.connects >= n, timeout,
                         lambda: f"wait_connections({n}): {self.connects} accepted after {timeout} s")

    async def wait_open(self, n: int, *, timeout: float | None = DEFAULT_WAIT_TIMEOUT) -> None:
        """Return once exactly ``n`` connections are being proxied (``wait_open(0)``: all gone).

        Raises:
            async_ws_stream.exceptions.Timeout: After ``timeout`` seconds.
            ValueError: If ``n`` is not an int >= 0.
        """
        check_count("wait_open", n)
        await self._wait(lambda: len(self._links) == n, timeout,
                         lambda: f"wait_open({n}): {len(self._links)} open after {timeout} s")

    async def wait_resets(self, n: int, *, timeout: float | None = DEFAULT_WAIT_TIMEOUT) -> None:
        """Return once at least ``n`` connections have been reset by a fault (:attr:`resets`).

        Raises:
            async_ws_stream.exceptions.Timeout: After ``timeout`` seconds.
            ValueError: If ``n`` is not an int >= 0.
        """
        check_count("wait_resets", n)
        await self._wait(lambda: self.resets >= n, timeout,
                         lambda: f"wait_resets({n}): {self.resets} resets after {timeout} s")

    async def wait_forwarded(
        self, nbytes: int, direction: Directions = "to_client", *, timeout: float | None = DEFAULT_WAIT_TIMEOUT
    ) -> None:
        """Return once at least ``nbytes`` bytes have been forwarded in ``direction`` in total.

        Raises:
            async_ws_stream.exceptions.Timeout: After ``timeout`` seconds.
            ValueError: If ``nbytes`` or the direction is out of range.
        """
        check_count("wait_forwarded", nbytes, "nbytes")
        directions("wait_forwarded", direction)
        await self._wait(lambda: self.forwarded(direction) >= nbytes, timeout,
                         lambda: f"wait_forwarded({nbytes}, {direction!r}): {self.forwarded(direction)} bytes")

    async def _wait(self, predicate: Callable[[], bool], timeout: float | None, describe: Callable[[], str]) -> None:
        await self._changes.wait(
            predicate, timeout, describe, lambda: "FaultProxy" if self._state is _State.CLOSED else None
        )

    # Inside the proxy

    def _accepted(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # A plain callback, so asyncio makes no task for it: the link's task is
        # created here and owned by the proxy, which awaits it in close().
        self.connects += 1
        if self._state is not _State.SERVING:
            writer.transport.abort()
        elif self._resets_pending:
            self._resets_pending -= 1
            self.resets += 1
            reset(writer)
        else:
            hold = self._holds.popleft() if self._holds else 0.0
            link = Link(self.connects, (reader, writer), dict(self._directions), self._changes.notify)
            task = asyncio.get_running_loop().create_task(link.run(self._target, hold))
            self._links[link] = task
            task.add_done_callback(lambda done: self._gone(link, done))
        self._changes.notify()

    def _gone(self, link: Link, task: asyncio.Task[None]) -> None:
        del self._links[link]
        self.resets += link.was_reset
        if not task.cancelled() and (exc := task.exception()) is not None:
            # A bug of the proxy, not a network fault (those end the link quietly): loud, and counted.
            self.errors += 1
            logger.error("FaultProxy: connection {} failed\n{}", link.number, traceback_of(exc))
        self._changes.notify()
