"""Fatal versus retryable failures against a real server: 401/403 and close 1008/4xxx end the client."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus

from async_ws_stream import ConnectionLost, ConnectionRejected, RetriesExhausted
from async_ws_stream.testing import FeedServer

from .conftest import JsonClient, no_library_tasks


async def assert_gave_up(client: JsonClient, error_type: type[BaseException], text: str) -> BaseException:
    """Every way of using the client raises ``error_type`` naming ``text``; nothing is left running."""
    with pytest.raises(error_type, match=text) as waited:
        await client.wait_connected(timeout=5)
    with pytest.raises(error_type, match=text):
        await client.send({"x": 1})
    with pytest.raises(error_type, match=text):
        await client.request({"method": "ping"})
    with pytest.raises(error_type, match=text):
        async for _ in client.stream_filter():
            pass
    assert client.stats()["state"] == "failed"
    assert no_library_tasks()  # the supervisor is gone: nothing can retry any more
    return waited.value


# -- fatal -----------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [401, 403])
async def test_auth_refusal_ends_the_client(server: FeedServer, status: int) -> None:
    """A handshake answered 401/403 is not retried: every call raises ConnectionRejected naming the status."""
    server.refuse_next(5, status=status)
    client = JsonClient(server.url, backoff_initial=0.01)
    stream = client.stream_filter()
    try:
        with pytest.raises(ConnectionRejected, match=f"HTTP {status}") as ended:
            async for _ in stream:
                pass
        assert ended.value.status == status
        assert isinstance(ended.value.__cause__, InvalidStatus)
        await assert_gave_up(client, ConnectionRejected, f"HTTP {status}")
        assert server.handshakes == 1
        assert client.stats()["retries"] == 0
    finally:
        await client.exit()


@pytest.mark.parametrize("code", [1008, 4000, 4001, 4999])
async def test_policy_close_ends_the_client(client: JsonClient, server: FeedServer, code: int) -> None:
    """A close with 1008 or 4000-4999 is not retried: streams end with ConnectionRejected naming the code."""
    stream = client.stream_filter()
    await client.wait_connected(timeout=5)
    await server.broadcast({"before": True})
    await server.close_all(code, "listen key expired")
    assert await anext(stream) == {"before": True}  # what was buffered still comes first
    with pytest.raises(ConnectionRejected, match=str(code)) as ended:
        await anext(stream)
    assert ended.value.close_code == code
    assert "listen key expired" in str(ended.value)
    assert isinstance(ended.value.__cause__, ConnectionClosed)
    await assert_gave_up(client, ConnectionRejected, str(code))
    assert server.handshakes == 1


async def test_fatal_close_during_the_handshake_greeting(server: FeedServer) -> None:
    """A server that closes with 4003 right after accepting (bad subscription) ends the client too."""

    async def reject(conn: Any) -> None:
        await conn.close(4003, "forbidden")

    server.on_connect = reject

    class Subscribing(JsonClient):
        async def _on_connect(self, ws: Any) -> None:
            await ws.send('{"method": "SUBSCRIBE", "params": ["secret"], "id": 1}')
            await ws.recv()  # the SUBSCRIBE answer, or the close

    client = Subscribing(server.url, backoff_initial=0.01)
    try:
        await assert_gave_up(client, ConnectionRejected, "4003")
        assert server.handshakes == 1
    finally:
        await client.exit()


async def test_waiters_blocked_before_the_refusal_get_it(server: FeedServer) -> None:
    """wait_connected, send and request already waiting for a connection fail with the fatal error."""
    server.refuse_next(1, status=503)
    server.refuse_next(1, status=401)
    client = JsonClient(server.url, backoff_initial=0.2, backoff_jitter=0)
    try:
        waiting = [
            asyncio.create_task(client.wait_connected()),
            asyncio.create_task(client.send("hello", timeout=None)),
            asyncio.create_task(client.request({"method": "x"}, timeout=None)),
            asyncio.create_task(client.wait_for({"never": True})),
        ]
        for task in waiting:
            with pytest.raises(ConnectionRejected, match="HTTP 401"):
                await task
        assert server.handshakes == 2
    finally:
        await client.exit()


async def test_each_raise_is_a_fresh_error(server: FeedServer) -> None:
    """Every caller gets its own instance (same type, message and cause), so tracebacks do not pile up."""
    server.refuse_next(1, status=403)
    client = JsonClient(server.url)
    try:
        errors = []
        for _ in range(2):
            with pytest.raises(ConnectionRejected) as caught:
                await client.wait_connected(timeout=5)
            errors.append(caught.value)
        assert errors[0] is not errors[1]
        assert str(errors[0]) == str(errors[1])
        assert errors[0].__cause__ is errors[1].__cause__
    finally:
        await client.exit()


async def test_giving_up_is_logged_with_the_cause(server: FeedServer, logs: list[str]) -> None:
    """The error log line says the client gave up and names the status."""
    server.refuse_next(1, status=401)
    client = JsonClient(server.url)
    try:
        with pytest.raises(ConnectionRejected):
            await client.wait_connected(timeout=5)
    finally:
        await client.exit()
    gave_up = [line for line in logs if "gave up" in line]
    assert len(gave_up) == 1 and gave_up[0].startswith("ERROR") and "401" in gave_up[0]


async def test_fatal_refusal_of_a_recycle_ends_the_client(client: JsonClient, server: FeedServer) -> None:
    """A recycle whose new connection is answered 401 ends the client instead of retrying forever."""
    stream = client.stream_filter()
    await client.wait_connected(timeout=5)
    old = server.connections[0]
    server.refuse_next(5, status=401)
    client.recycle_now.set()
    with pytest.raises(ConnectionRejected, match="HTTP 401"):
        async for _ in stream:
            pass
    await old.wait_closed()
    assert old.close_code == 1000  # the old connection was still closed cleanly
    assert server.handshakes == 2
    assert client.stats()["state"] == "failed"


# -- retried ---------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [400, 404, 429, 500, 502, 503])
async def test_other_refusals_are_retried(server: FeedServer, status: int) -> None:
    """Refused handshakes other than 401/403 are retried until one succeeds."""
    server.refuse_next(2, status=status)
    client = JsonClient(server.url, backoff_initial=0.01, backoff_max=0.02)
    try:
        await client.wait_connected(timeout=5)
        assert client.stats()["retries"] == 2
        assert server.handshakes == 3
    finally:
        await client.exit()


@pytest.mark.parametrize("code", [1000, 1001, 1011, 1012, 1013, 3000])
async def test_other_closes_are_retried(client: JsonClient, server: FeedServer, code: int) -> None:
    """Normal, going-away, server-error, restart, try-later and 3xxx closes reconnect and stream on."""
    stream = client.stream_filter([{"n": 2}])
    await client.wait_connected(timeout=5)
    await server.close_all(code)
    await server.wait_connections(2)
    await client.wait_connected(timeout=5)
    await server.broadcast({"n": 2})
    assert await anext(stream) == {"n": 2}
    assert client.stats()["reconnects"] == 1


async def test_network_errors_in_create_ws_are_retried(server: FeedServer) -> None:
    """Nothing listening (connection refused) is retried, and max_retries then ends it with the cause chained."""
    url = server.url
    await server.stop()
    client = JsonClient(url, backoff_initial=0.01, max_retries=3)
    try:
        with pytest.raises(RetriesExhausted, match="gave up after 3 retries") as ended:
            await client.wait_connected(timeout=5)
        assert isinstance(ended.value.__cause__, OSError)
        assert client.stats()["retries"] == 3
    finally:
        await client.exit()


async def test_retry_after_is_honoured(server: FeedServer) -> None:
    """A 429 with Retry-After: 1 delays the next attempt by at least a second, though backoff says now."""
    server.refuse_next(1, status=429, headers={"Retry-After": "1"})
    client = JsonClient(server.url, backoff_initial=0.01, backoff_max=0.01)
    try:
        await server.wait_until(lambda: server.handshakes >= 1)
        refused_at = time.monotonic()
        await server.wait_connections(1, timeout=10)
        waited = time.monotonic() - refused_at
        assert client.stats()["retries"] == 1
    finally:
        await client.exit()
    assert waited >= 0.9  # a lower bound only: a late retry is fine, an early one is the bug


@pytest.mark.single_transport  # the same refusal as above; only the supervisor's path differs
async def test_retry_after_is_honoured_in_a_recycle(client: JsonClient, server: FeedServer) -> None:
    """A recycle refused with 503 and Retry-After: 1 waits that long before its next attempt."""
    await client.wait_connected(timeout=5)
    server.refuse_next(1, status=503, headers={"Retry-After": "1"})
    client.recycle_now.set()
    await server.wait_until(lambda: server.handshakes >= 2)
    refused_at = time.monotonic()
    await server.wait_connections(2, timeout=10)
    assert time.monotonic() - refused_at >= 0.9
    assert client.stats()["reconnects"] == 0


# -- the override ----------------------------------------------------------------------------


async def test_is_fatal_override_can_keep_retrying(server: FeedServer) -> None:
    """A subclass whose _is_fatal returns None retries a 401 (a key that becomes valid later)."""

    class Patient(JsonClient):
        def _is_fatal(self, exc: BaseException) -> ConnectionRejected | None:
            return None

    server.refuse_next(2, status=401)
    client = Patient(server.url, backoff_initial=0.01)
    try:
        await client.wait_connected(timeout=5)
        assert client.stats()["retries"] == 2
    finally:
        await client.exit()


async def test_is_fatal_override_can_end_on_anything(client: JsonClient, server: FeedServer) -> None:
    """A subclass can make a retryable close (1013) fatal; its error is what the user sees."""

    class Strict(JsonClient):
        def _is_fatal(self, exc: BaseException) -> ConnectionRejected | None:
            if isinstance(exc, ConnectionClosed) and exc.rcvd is not None and exc.rcvd.code == 1013:
                return ConnectionRejected("server is overloaded; not coming back", close_code=1013)
            return super()._is_fatal(exc)

    strict = Strict(server.url)
    try:
        await strict.wait_connected(timeout=5)
        await server.close_all(1013)
        with pytest.raises(ConnectionRejected, match="overloaded") as ended:
            await anext(strict.stream_filter())
        assert ended.value.close_code == 1013
    finally:
        await strict.exit()


async def test_a_request_in_flight_on_a_fatal_close_fails_with_connection_lost(
    client: JsonClient, server: FeedServer
) -> None:
    """The request on the connection that was closed fails with ConnectionLost; later ones with the fatal error."""
    server.route("slow", lambda params: "late", delay=30)
    await client.wait_connected(timeout=5)
    pending = asyncio.create_task(client.request({"method": "slow"}))
    await server.wait_received(1)
    await server.close_all(4001)
    with pytest.raises(ConnectionLost):
        await pending
    with pytest.raises(ConnectionRejected):
        await client.request({"method": "slow"})
