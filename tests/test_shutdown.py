"""exit() in every phase of the client's life: prompt, no task or socket left, nothing reported by asyncio.

Every test runs with asyncio debug on and fails on "Task was destroyed but it is
pending", "exception was never retrieved" or any other error the loop reports.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
from collections.abc import AsyncIterator
from typing import Any

import pytest

from async_ws_stream import ClientClosed, ConnectionRejected
from async_ws_stream._options import EXIT_GRACE
from async_ws_stream.testing import FeedServer

from .conftest import JsonClient, eventually

# exit() must return within a second; where it has to wait out its grace (a
# handler that will not finish, a server that does not answer the close frame)
# it gets the grace and a second more. These bound hangs, not speed.
PROMPT = 1.0
GRACEFUL = EXIT_GRACE + 1.0


class _Collect(logging.Handler):
    def __init__(self, into: list[str]) -> None:
        super().__init__(logging.ERROR)
        self.into = into

    def emit(self, record: logging.LogRecord) -> None:
        self.into.append(record.getMessage())


@pytest.fixture
async def strict_loop() -> AsyncIterator[list[str]]:
    """asyncio debug on; every error the loop reports (destroyed tasks, unretrieved exceptions) fails the test."""
    loop = asyncio.get_running_loop()
    problems: list[str] = []
    previous = loop.get_exception_handler()
    handler = _Collect(problems)
    logging.getLogger("asyncio").addHandler(handler)
    loop.set_debug(True)
    loop.set_exception_handler(lambda _loop, context: problems.append(str(context.get("message"))))
    try:
        yield problems
        # Destroyed tasks and unretrieved exceptions are reported when collected.
        gc.collect()
        await asyncio.sleep(0)
    finally:
        loop.set_exception_handler(previous)
        loop.set_debug(False)
        logging.getLogger("asyncio").removeHandler(handler)
    assert problems == []


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


@contextlib.asynccontextmanager
async def no_leftovers() -> AsyncIterator[None]:
    """Fail if a task or a file descriptor opened inside the block outlives it."""
    tasks = asyncio.all_tasks()
    fds = fd_count()
    yield
    # A transport closes its socket one loop step after abort(); give it a few.
    await eventually(lambda: fd_count() <= fds and not asyncio.all_tasks() - tasks, timeout=0.5,
                     what=lambda: f"no task or fd left ({asyncio.all_tasks() - tasks}, {fd_count()} fds)")
    assert asyncio.all_tasks() - tasks == set()
    assert fd_count() <= fds


async def exit_within(client: JsonClient, seconds: float = PROMPT) -> None:
    async with asyncio.timeout(seconds):
        await client.exit()
    assert library_tasks() == []


def library_tasks() -> list[asyncio.Task[Any]]:
    return [t for t in asyncio.all_tasks() if t.get_name().startswith("async_ws_stream") and not t.done()]


# -- while connecting ----------------------------------------------------------------------


async def test_exit_during_a_slow_handshake(strict_loop: list[str]) -> None:
    """exit() while the opening handshake hangs returns at once and leaves no socket."""
    async with no_leftovers(), FeedServer() as server:
        server.delay_next_handshakes(1, 30)
        client = JsonClient(server.url)
        stream = client.stream_filter()
        await server.wait_until(lambda: server.handshakes >= 1)
        await exit_within(client)
        assert [m async for m in stream] == []
        assert server.connects == 0


async def test_exit_while_create_ws_hangs(strict_loop: list[str]) -> None:
    """exit() cancels a _create_ws that never returns."""
    entered = asyncio.Event()

    class Hanging(JsonClient):
        async def _create_ws(self) -> Any:
            entered.set()
            await asyncio.Event().wait()

    async with no_leftovers():
        client = Hanging("ws://127.0.0.1:9")
        await entered.wait()
        await exit_within(client)
        with pytest.raises(ClientClosed):
            await client.wait_connected()


async def test_exit_while_sleeping_in_backoff(strict_loop: list[str]) -> None:
    """exit() during a long backoff sleep returns at once instead of waiting it out."""
    failures = 0
    sleeping = asyncio.Event()

    class Counting(JsonClient):
        def _is_fatal(self, exc: BaseException) -> Any:
            nonlocal failures
            failures += 1
            if failures == 2:
                # Returning now, the supervisor goes straight into its 30 s sleep.
                sleeping.set()
            return super()._is_fatal(exc)

    async with no_leftovers(), FeedServer() as server:
        server.refuse_next(10)
        client = Counting(server.url, backoff_initial=30, backoff_max=30, backoff_jitter=0)
        await sleeping.wait()
        await exit_within(client)
        assert server.handshakes == 2


# -- inside _on_connect ----------------------------------------------------------------------


async def test_exit_while_on_connect_runs(strict_loop: list[str]) -> None:
    """exit() while _on_connect blocks: the half-made connection is closed with a close frame."""
    entered = asyncio.Event()

    class Subscribing(JsonClient):
        async def _on_connect(self, ws: Any) -> None:
            entered.set()
            await asyncio.Event().wait()

    async with no_leftovers(), FeedServer() as server:
        client = Subscribing(server.url)
        await entered.wait()
        conn = server.connections[0]
        await exit_within(client)
        await conn.wait_closed()
        assert conn.close_code == 1000
        assert client.present_ws is None


async def test_exit_called_from_inside_on_connect(strict_loop: list[str]) -> None:
    """A hook that calls exit() ends the client; a later exit() from outside finds nothing running."""

    class Quitting(JsonClient):
        async def _on_connect(self, ws: Any) -> None:
            await self.exit()

    async with no_leftovers(), FeedServer() as server:
        client = Quitting(server.url)
        stream = client.stream_filter()
        async with asyncio.timeout(PROMPT):
            assert [m async for m in stream] == []
        await exit_within(client)
        await server.wait_open(0)
        assert client.stats()["connects"] == 0


# -- during a recycle ------------------------------------------------------------------------


async def test_exit_while_the_successor_handshake_hangs(strict_loop: list[str]) -> None:
    """exit() mid-recycle, with the new connection's handshake pending: both sockets go."""
    async with no_leftovers(), FeedServer() as server:
        client = JsonClient(server.url)
        await client.wait_connected(timeout=5)
        old = server.connections[0]
        server.delay_next_handshakes(1, 30)
        client.recycle_now.set()
        await server.wait_until(lambda: server.handshakes >= 2)
        await exit_within(client)
        await old.wait_closed()
        assert old.close_code == 1000
        assert client.stats()["recycles"] == 0


async def test_exit_while_the_successor_on_connect_runs(strict_loop: list[str]) -> None:
    """exit() while _on_connect of the successor blocks: old and new connections both closed cleanly."""
    entered = asyncio.Event()

    class Slow(JsonClient):
        opened = 0

        async def _on_connect(self, ws: Any) -> None:
            self.opened += 1
            if self.opened == 2:
                entered.set()
                await asyncio.Event().wait()

    async with no_leftovers(), FeedServer() as server:
        client = Slow(server.url)
        await client.wait_connected(timeout=5)
        client.recycle_now.set()
        await entered.wait()
        conns = server.connections
        assert len(conns) == 2
        await exit_within(client)
        for conn in conns:
            await conn.wait_closed()
        assert [c.close_code for c in conns] == [1000, 1000]


async def test_exit_while_the_old_connection_drains(strict_loop: list[str]) -> None:
    """exit() while a recycled connection waits for a stalled server's close answer: bounded by the grace."""
    closing = asyncio.Event()

    class Signalling(JsonClient):
        opened = 0

        async def _on_connect(self, ws: Any) -> None:
            self.opened += 1
            if self.opened == 2:
                # From here the recycler runs without a pause into closing the old connection.
                closing.set()

    async with no_leftovers(), FeedServer() as server:
        client = Signalling(server.url)
        await client.wait_connected(timeout=5)
        server.stall()  # the old connection will never answer its close frame
        client.recycle_now.set()
        await closing.wait()
        await exit_within(client, GRACEFUL)
        server.unstall()
        await server.wait_open(0)


async def test_exit_from_inside_when2create_new_ws(strict_loop: list[str]) -> None:
    """The recycle trigger may call exit(); it returns, and nothing is left running."""
    returned = asyncio.Event()

    class Recycler(JsonClient):
        async def _when2create_new_ws(self) -> None:
            await self.recycle_now.wait()
            await self.exit()
            returned.set()

    async with no_leftovers(), FeedServer() as server:
        client = Recycler(server.url)
        await client.wait_connected(timeout=5)
        client.recycle_now.set()
        await exit_within(client)
        await server.wait_open(0)
        assert client.stats()["recycles"] == 0


# -- consumers and handlers ------------------------------------------------------------------


async def test_exit_releases_every_kind_of_blocked_consumer(strict_loop: list[str]) -> None:
    """Blocked async for, get(), expect(), request() and send() all return promptly on exit()."""
    async with no_leftovers(), FeedServer() as server:
        server.route("slow", lambda params: "late", delay=30)
        client = JsonClient(server.url)
        buffered = client.stream_filter([{"n": 1}])
        idle = client.stream_filter([{"never": True}])
        await client.wait_connected(timeout=5)
        await server.broadcast({"n": 1})
        await client.wait_for({"n": 1}, timeout=5)

        async def drain(stream: Any) -> list[Any]:
            return [m async for m in stream]

        readers = [asyncio.create_task(drain(buffered)), asyncio.create_task(drain(idle))]
        getter = asyncio.create_task(client.stream_filter([{"never": True}]).get())
        waiter = asyncio.create_task(client.wait_for({"never": True}))
        request = asyncio.create_task(client.request({"method": "slow"}))
        await server.wait_received(1)
        await exit_within(client)
        assert await readers[0] == [{"n": 1}]
        assert await readers[1] == []
        with pytest.raises(EOFError):
            await getter
        with pytest.raises(ClientClosed):
            await waiter
        with pytest.raises(ClientClosed):
            await request
        with pytest.raises(ClientClosed):
            await client.send({"late": True})


async def test_exit_while_send_waits_for_a_connection(strict_loop: list[str]) -> None:
    """A send waiting for a connection that will never come fails with ClientClosed."""
    async with no_leftovers(), FeedServer() as server:
        server.refuse_next(100)
        client = JsonClient(server.url, backoff_initial=30, backoff_max=30)
        sending = asyncio.create_task(client.send({"x": 1}, timeout=None))
        await server.wait_until(lambda: server.handshakes >= 2)
        await exit_within(client)
        with pytest.raises(ClientClosed):
            await sending


@pytest.mark.single_transport  # handlers never touch the connection
async def test_exit_lets_async_handlers_finish_then_cancels_stuck_ones(strict_loop: list[str]) -> None:
    """A handler mid-message finishes within the grace; one that never finishes is cancelled."""
    finished: list[Any] = []
    cancelled = asyncio.Event()
    started = asyncio.Event()

    async def quick(msg: Any) -> None:
        started.set()
        await asyncio.sleep(0.05)
        finished.append(msg)

    async def stuck(msg: Any) -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    async with no_leftovers(), FeedServer() as server:
        client = JsonClient(server.url)
        client.add_handler(quick)
        client.add_handler(stuck)
        await client.wait_connected(timeout=5)
        await server.broadcast({"n": 1})
        await started.wait()
        await exit_within(client, GRACEFUL)
        assert finished == [{"n": 1}]
        assert cancelled.is_set()


async def test_exit_from_an_async_handler_with_a_backlog(strict_loop: list[str]) -> None:
    """A handler that calls exit() gets it back and its task ends right after, backlog discarded."""
    calls: list[int] = []
    returned = asyncio.Event()

    async def stopper(msg: Any) -> None:
        calls.append(msg["n"])
        if msg["n"] == 0:
            await client.exit()
            returned.set()

    async with no_leftovers(), FeedServer() as server:
        client = JsonClient(server.url)
        client.add_handler(stopper)
        await client.wait_connected(timeout=5)
        for n in range(20):
            await server.broadcast({"n": n})
        async with asyncio.timeout(PROMPT):
            await returned.wait()
        await exit_within(client)
        assert calls == [0]


async def test_exit_from_the_body_of_an_async_for(strict_loop: list[str]) -> None:
    """The commonest way out: exit() inside the consumer loop; the loop then ends normally."""
    async with no_leftovers(), FeedServer() as server:
        client = JsonClient(server.url)
        stream = client.stream_filter()
        await client.wait_connected(timeout=5)
        await server.broadcast({"n": 1})
        seen = []
        async with asyncio.timeout(PROMPT):
            async for msg in stream:
                seen.append(msg)
                await client.exit()
        assert seen == [{"n": 1}]
        assert library_tasks() == []


async def test_exit_from_inside_an_async_parse(strict_loop: list[str]) -> None:
    """An async _parse_raw_data that calls exit() stops the pump without a stray task."""

    class Parser(JsonClient):
        async def _parse_raw_data(self, raw: str | bytes) -> Any:  # type: ignore[override]
            if raw == "stop":
                await self.exit()
            return super()._parse_raw_data(raw)

    async with no_leftovers(), FeedServer() as server:
        client = Parser(server.url)
        stream = client.stream_filter()
        await client.wait_connected(timeout=5)
        await server.broadcast({"n": 1})
        await server.broadcast("stop")
        async with asyncio.timeout(PROMPT):
            assert [m async for m in stream] == [{"n": 1}]
        await exit_within(client)
        await server.wait_open(0)


# -- odd moments -----------------------------------------------------------------------------


async def test_exit_while_the_server_is_stalled(strict_loop: list[str]) -> None:
    """A server that never answers the close frame costs exit() the grace, then the socket is aborted."""
    async with no_leftovers(), FeedServer() as server:
        client = JsonClient(server.url)
        await client.wait_connected(timeout=5)
        server.stall()
        await exit_within(client, GRACEFUL)
        server.unstall()
        await server.wait_open(0)


async def test_exit_after_a_fatal_refusal(strict_loop: list[str]) -> None:
    """After the client gave up, exit() still returns at once and leaves nothing."""
    async with no_leftovers(), FeedServer() as server:
        server.refuse_next(1, status=401)
        client = JsonClient(server.url)
        with pytest.raises(ConnectionRejected):
            await client.wait_connected(timeout=5)
        await exit_within(client)


async def test_exit_from_everywhere_at_once(strict_loop: list[str]) -> None:
    """exit() from a handler, a consumer and the test at the same moment: all return, one shutdown."""
    returned: list[str] = []
    go = asyncio.Event()
    in_handler = asyncio.Event()
    in_consumer = asyncio.Event()

    async def handler(msg: Any) -> None:
        in_handler.set()
        await go.wait()
        await client.exit()
        returned.append("handler")

    async with no_leftovers(), FeedServer() as server:
        client = JsonClient(server.url)
        client.add_handler(handler)
        stream = client.stream_filter()
        await client.wait_connected(timeout=5)

        async def consumer() -> None:
            async for _ in stream:
                in_consumer.set()
                await go.wait()
                await client.exit()
                returned.append("consumer")

        reading = asyncio.create_task(consumer())
        await server.broadcast({"go": True})
        await in_handler.wait()
        await in_consumer.wait()
        go.set()
        await exit_within(client)
        await reading
        assert sorted(returned) == ["consumer", "handler"]
