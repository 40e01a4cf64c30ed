"""The supervisor against a real server: recycle pacing, retry accounting, fail-fast errors, state."""

from __future__ import annotations

import asyncio
import json
import ssl
import sys
from pathlib import Path
from typing import Any

import pytest
import websockets

from async_ws_stream import (
    ConnectionRejected,
    RetriesExhausted,
    Timeout,
)
from async_ws_stream.testing import FeedServer

from .conftest import JsonClient, no_library_tasks
from .subprocesses import child_env

# -- the recycle storm -----------------------------------------------------------------------


@pytest.mark.single_transport
async def test_the_older_readme_subclass_does_not_storm(server: FeedServer) -> None:
    """The older README's subclass, import changed only: paced recycles, its Usage works, no stream piles up."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(Path(__file__).with_name("older_readme_client.py")), server.url, "10",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=child_env(),
    )
    out, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 0, err.decode()[-2000:]
    report = json.loads(out)
    assert 2 <= server.handshakes <= 9, f"{server.handshakes} connections in 10 s"
    assert report["listen_keys"] == server.handshakes
    assert report["received"] == 1  # and it still served, storm or not
    # The README's Usage with the older names: both watchers and both handlers got the reply.
    assert report["seen"]["by_id"] == 1 and report["seen"]["f"] >= 2 and report["seen"]["f2"] >= 2
    assert report["seen"]["all"] >= 2
    # One stream per connection made by _when2create_new_ws ended with it: only the two watchers remain.
    assert report["streams"] == 2
    assert "sooner than stable_after" in err.decode() and "asyncio.wait()" in err.decode()


async def test_a_recycle_asked_on_time_is_not_paced(server: FeedServer, logs: list[str]) -> None:
    """A trigger that fires after stable_after swaps the connection at once, with no pacing warning."""
    client = JsonClient(server.url, stable_after=0.05)
    try:
        await client.wait_connected(timeout=5)
        await asyncio.sleep(0.1)  # let the connection become stable: time itself is the condition
        old = server.connections[-1]
        client.recycle_now.set()
        await old.wait_closed()
        assert client.stats()["recycles"] == 1
        assert not any("sooner than stable_after" in line for line in logs)
    finally:
        await client.exit()


# -- retry accounting ------------------------------------------------------------------------


async def test_the_retry_count_does_not_survive_a_recycle(server: FeedServer) -> None:
    """max_retries=2, two refusals, a stable connection recycled, then a drop: it reconnects, not gives up."""
    server.refuse_next(2)
    client = JsonClient(server.url, max_retries=2, stable_after=0.2, backoff_initial=0.01)
    stream = client.stream_filter()
    try:
        await client.wait_connected(timeout=5)
        assert client.stats()["retries"] == 2
        await asyncio.sleep(0.3)  # past stable_after
        client.recycle_now.set()
        await server.wait_connections(2, timeout=5)  # the first and its successor (refusals do not count)
        await server.wait_open(1)
        await server.drop()
        await server.wait_connections(3, timeout=5)
        await client.wait_connected(timeout=5)
        await server.broadcast({"alive": True})
        assert await asyncio.wait_for(anext(stream), 5) == {"alive": True}
        assert client.stats()["state"] == "connected"
    finally:
        await client.exit()


async def test_failed_recycle_attempts_are_counted_and_keep_the_old_connection(server: FeedServer) -> None:
    """Two refused successors: the old connection serves meanwhile; recycle_failures and retries say 2."""
    client = JsonClient(server.url, stable_after=0, backoff_initial=0.01)
    stream = client.stream_filter()
    try:
        await client.wait_connected(timeout=5)
        server.refuse_next(2)
        client.recycle_now.set()
        await server.wait_connections(2, timeout=5)  # the first and, after two refusals, the successor
        await server.wait_open(1)
        stats = client.stats()
        assert (stats["recycle_failures"], stats["retries"]) == (2, 2)
        await server.broadcast({"after": True})
        assert await asyncio.wait_for(anext(stream), 5) == {"after": True}
    finally:
        await client.exit()


async def test_failed_recycle_attempts_spend_max_retries(server: FeedServer) -> None:
    """With max_retries=2, a recycle whose successor is refused three times gives up, closing cleanly."""
    client = JsonClient(server.url, stable_after=0, backoff_initial=0.01, max_retries=2)
    stream = client.stream_filter()
    try:
        await client.wait_connected(timeout=5)
        old = server.connections[-1]
        server.refuse_next(3)
        client.recycle_now.set()
        with pytest.raises(RetriesExhausted, match="gave up after 2 retries"):
            async for _ in stream:
                pass
        await old.wait_closed()
        assert old.close_code == 1000
        assert client.stats()["recycle_failures"] == 2
        assert no_library_tasks()
    finally:
        await client.exit()


# -- errors that retrying cannot fix ----------------------------------------------------------


async def test_an_invalid_uri_ends_the_client_at_once_without_its_secrets() -> None:
    """http:// instead of ws://: ConnectionRejected naming InvalidURI, no retry, no token in the text."""
    client = JsonClient("http://127.0.0.1:9/ws/LISTENKEY?token=SECRET", backoff_initial=0.01)
    try:
        with pytest.raises(ConnectionRejected, match="InvalidURI") as rejected:
            await client.wait_connected(timeout=5)
        assert "SECRET" not in str(rejected.value) and "LISTENKEY" not in str(rejected.value)
        stats = client.stats()
        assert (stats["state"], stats["retries"]) == ("failed", 0)
        assert "InvalidURI" in stats["last_error"] and "SECRET" not in stats["last_error"]
    finally:
        await client.exit()


class NotAConnection(JsonClient):
    """A _create_ws that returns something else: a bug that retrying cannot fix."""

    async def _create_ws(self) -> Any:
        return "ws://127.0.0.1:9"


async def test_create_ws_returning_no_connection_is_fatal_and_says_what_to_return() -> None:
    """The error names what _create_ws must return."""
    client = NotAConnection("unused")
    try:
        with pytest.raises(ConnectionRejected, match=r"_create_ws must return an open connection"):
            await client.wait_connected(timeout=5)
    finally:
        await client.exit()


# -- timeouts that say why, and the state ----------------------------------------------------


async def test_a_timeout_without_a_connection_names_and_chains_the_last_failure() -> None:
    """Nothing listens: wait_connected, send and request time out naming the refusal, redacted, chained."""
    async with FeedServer() as gone:
        url = gone.url_for("/ws/LISTENKEY")
    client = JsonClient(url, backoff_initial=0.01, backoff_max=0.02)
    try:
        for call in (
            lambda: client.wait_connected(timeout=0.3),
            lambda: client.send({"x": 1}, timeout=0.3),
            lambda: client.request({"method": "ping"}, timeout=0.3),
        ):
            with pytest.raises(Timeout, match="no connection within 0.3s; the last attempt failed") as waited:
                await call()
            assert isinstance(waited.value.__cause__, OSError)
            assert "LISTENKEY" not in str(waited.value)
        assert client.stats()["state"] in ("connecting", "backoff")
        assert "LISTENKEY" not in client.stats()["last_error"]
    finally:
        await client.exit()
    assert client.stats()["state"] == "closed"


async def test_state_is_connected_while_serving(client: JsonClient) -> None:
    """stats()["state"] says "connected" while a connection carries traffic, with no error yet."""
    await client.wait_connected(timeout=5)
    stats = client.stats()
    assert (stats["state"], stats["last_error"]) == ("connected", None)


class VerifyingClient(JsonClient):
    """Connects with the default TLS context, which does not trust the test server's certificate."""

    async def _create_ws(self) -> Any:
        return await websockets.connect(self.url, open_timeout=2)


@pytest.mark.single_transport
async def test_a_certificate_that_fails_verification_is_fatal(tls_url: str) -> None:
    """wss:// with an untrusted certificate: ConnectionRejected naming the verification, chained, not retried."""
    client = VerifyingClient(tls_url, backoff_initial=0.01)
    try:
        with pytest.raises(ConnectionRejected, match="certificate failed verification") as rejected:
            await client.wait_connected(timeout=5)
        assert isinstance(rejected.value.__cause__, ssl.SSLCertVerificationError)
        assert client.stats()["retries"] == 0
    finally:
        await client.exit()
