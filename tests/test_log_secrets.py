"""Logs never carry a secret or a message body, even through a sink with loguru's diagnose=True."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from loguru import logger

from async_ws_stream.testing import FeedServer

from .conftest import JsonClient, settle

SECRETS = ("PASSWORD", "LISTENKEY", "TOKEN", "BODY-SECRET")


class LeakyFeed(JsonClient):
    """Fails in every way the library logs: recycle attempts that raise, quoting the whole URL."""

    fail_opens = 0

    async def _create_ws(self) -> Any:
        if self.fail_opens:
            self.fail_opens -= 1
            raise OSError(f"cannot reach {self.url}")  # an error text that quotes the secret URL
        return await super()._create_ws()


@pytest.fixture
def diagnosed() -> Iterator[list[str]]:
    """Every line the library logs, through a sink that renders tracebacks with their local variables."""
    lines: list[str] = []
    logger.enable("async_ws_stream")
    sink = logger.add(lambda m: lines.append(str(m)), level="DEBUG", backtrace=True, diagnose=True)
    try:
        yield lines
    finally:
        logger.remove(sink)
        logger.disable("async_ws_stream")


@pytest.mark.single_transport
async def test_no_secret_and_no_message_in_any_log_line(server: FeedServer, diagnosed: list[str]) -> None:
    """Parse, handler and predicate errors, failed recycles and retries: none leaks a URL secret or a body."""
    url = server.url.replace("ws://", "ws://user:PASSWORD@") + "/ws/LISTENKEY?token=TOKEN"
    client = LeakyFeed(url, backoff_initial=0.01, stable_after=0)
    body = {"pad": "x" * 60, "secret": "BODY-SECRET"}  # past the 40 characters a parse error may show

    def failing_handler(msg: Any) -> None:
        raise RuntimeError("handler cannot cope")

    def failing_predicate(value: Any) -> bool:
        raise ValueError("predicate cannot cope")

    client.add_handler(failing_handler, [{"secret": "BODY-SECRET"}])
    held = client.stream_filter([{"secret": failing_predicate}])  # held: a stream let go of ends
    try:
        await client.wait_connected(timeout=5)
        await server.broadcast(body)  # a handler error and a predicate error, with msg a local
        await server.broadcast(json.dumps(body)[:-1])  # a parse error on a frame holding the secret
        await settle(client, server)
        client.fail_opens = 2
        client.recycle_now.set()  # two failed recycle attempts, then a recycle
        await server.wait_connections(2)
        server.refuse_next(1)
        await server.drop()  # a loss and a refused retry
        await server.wait_connections(3)
        await client.wait_connected(timeout=5)
        stats = client.stats()
    finally:
        await client.exit()
    assert stats["handler_errors"] == 1 and stats["predicate_errors"] >= 1 and held.dropped == 0
    assert stats["parse_errors"] == 1 and stats["recycle_failures"] == 2 and stats["retries"] >= 3
    text = "\n".join(diagnosed)
    assert "Traceback" in text  # the tracebacks are there, rendered by the library
    for secret in SECRETS:
        assert secret not in text, f"{secret} in the logs:\n{text}"
