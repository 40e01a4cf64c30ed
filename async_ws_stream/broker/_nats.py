"""Connecting to NATS with errors a user can act on, and the stream helpers the sink and source share."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import nats
import nats.errors
import nats.js.errors
from loguru import logger
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from nats.js.api import StreamConfig, StreamInfo

from ._common import BrokerConfigError, BrokerUnavailable

__all__ = [
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_DUPLICATE_WINDOW",
    "connect_nats",
    "ensure_stream",
    "redact_url",
    "stream_info",
    "subject_matches",
]

DEFAULT_CONNECT_TIMEOUT = 5.0
DEFAULT_DUPLICATE_WINDOW = 120.0  # JetStream's own default: two minutes

_USERINFO = re.compile(r"//[^/@]*@")
_AUTH_WORDS = ("authorization", "authentication", "credentials", "user")


def redact_url(url: str) -> str:
    """``nats://user:secret@host:4222/x`` -> ``nats://host:4222``: no userinfo, no path, in logs and errors."""
    url = _USERINFO.sub("//", url)
    scheme, sep, rest = url.partition("://")
    return scheme + sep + rest.split("/", 1)[0].split("?", 1)[0] if sep else url.split("/", 1)[0]


def server_list(where: str, servers: str | Sequence[str]) -> list[str]:
    """Validate ``servers`` (one URL or a list of them) and return the list."""
    urls = [servers] if isinstance(servers, str) else list(servers)
    if not urls or not all(isinstance(u, str) and u for u in urls):
        raise ValueError(f"{where}: servers must be a nats:// URL or a list of them, got {servers!r}")
    return urls


async def connect_nats(
    where: str,
    servers: list[str],
    *,
    timeout: float,
    options: dict[str, Any],
    on_disconnect: Callable[[], Awaitable[None]] | None = None,
    on_reconnect: Callable[[], Awaitable[None]] | None = None,
) -> NatsClient:
    """Connect, then keep reconnecting for ever; fail within ``timeout`` with an error naming the fix.

    Raises:
        BrokerConfigError: the server rejected the credentials.
        BrokerUnavailable: no server answered within ``timeout``.
    """
    names = ", ".join(redact_url(s) for s in servers)
    errors: list[BaseException] = []
    auth_failed = asyncio.Event()

    async def error_cb(exc: Exception) -> None:
        errors.append(exc)
        del errors[:-1]
        if isinstance(exc, nats.errors.Error) and any(w in str(exc).lower() for w in _AUTH_WORDS):
            auth_failed.set()
        elif nc.is_connected or nc.is_reconnecting:
            logger.warning("{}: NATS {}: {}", where, names, _short(exc))

    async def disconnected_cb() -> None:
        if on_disconnect is not None:
            await on_disconnect()

    async def reconnected_cb() -> None:
        logger.info("{}: reconnected to NATS {}", where, names)
        if on_reconnect is not None:
            await on_reconnect()

    nc = NatsClient()
    connecting = asyncio.ensure_future(nc.connect(
        servers,
        connect_timeout=max(0.1, min(timeout, 2.0)),  # type: ignore[arg-type, unused-ignore]  # a float works
        allow_reconnect=True,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.2,  # type: ignore[arg-type, unused-ignore]
        error_cb=error_cb,
        disconnected_cb=disconnected_cb,
        reconnected_cb=reconnected_cb,
        **options,
    ))
    refused = asyncio.ensure_future(auth_failed.wait())
    try:
        done, _ = await asyncio.wait({connecting, refused}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        refused.cancel()
        if not connecting.done():
            connecting.cancel()
        await asyncio.gather(connecting, refused, return_exceptions=True)
    if connecting in done and connecting.exception() is None:
        return nc
    await nc.close()
    last = errors[-1] if errors else (connecting.exception() if connecting.done() and not connecting.cancelled()
                                      else None)
    if auth_failed.is_set():
        raise BrokerConfigError(
            f"{where}: NATS {names} rejected the credentials ({_short(last)}); "
            "check user/password, token or user_credentials in nats_options, or the userinfo of the URL"
        ) from last
    raise BrokerUnavailable(
        f"{where}: cannot connect to NATS {names} within {timeout:g} s ({_short(last)}); "
        "is nats-server running there (with -js), and are servers= and the port right?"
    ) from last


def _short(exc: BaseException | None) -> str:
    if exc is None:
        return "no answer"
    text = str(exc).strip() or type(exc).__name__
    return redact_url(text) if "://" in text else text


async def stream_info(where: str, js: JetStreamContext, stream: str, servers: str) -> StreamInfo:
    """Return the stream's info, or raise BrokerConfigError saying how to create it."""
    try:
        return await js.stream_info(stream)
    except nats.js.errors.NotFoundError:
        raise BrokerConfigError(
            f"{where}: JetStream stream {stream!r} does not exist on {servers}; create it first "
            f"(`nats stream add {stream} --subjects 'md.>'`, or "
            f"`await async_ws_stream.broker.ensure_stream(servers=..., stream={stream!r}, subjects=[...])`)"
        ) from None
    except nats.js.errors.ServiceUnavailableError:
        raise BrokerConfigError(
            f"{where}: JetStream is not enabled on {servers}; start nats-server with -js"
        ) from None
    except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
        raise BrokerConfigError(
            f"{where}: no JetStream answered on {servers}; start nats-server with -js"
        ) from None


def subject_matches(pattern: str, subject: str) -> bool:
    """NATS subject matching: ``*`` matches one token, a final ``>`` one or more."""
    p, s = pattern.split("."), subject.split(".")
    for i, token in enumerate(p):
        if token == ">":
            return len(s) > i
        if i >= len(s) or (token != "*" and token != s[i]):
            return False
    return len(p) == len(s)


async def ensure_stream(
    *,
    servers: str | Sequence[str],
    stream: str,
    subjects: Sequence[str],
    duplicate_window: float = DEFAULT_DUPLICATE_WINDOW,
    max_age: float | None = None,
    max_bytes: int | None = None,
    nats_options: dict[str, Any] | None = None,
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
) -> None:
    """Create the JetStream stream ``stream`` for ``subjects`` unless it exists (then do nothing).

    ``duplicate_window`` (seconds) is how long JetStream remembers a ``Nats-Msg-Id``:
    a recycle's overlap and a second collector's copy must reach it within that
    window to be dropped. Idempotent.

    Raises:
        BrokerUnavailable, BrokerConfigError: as the sink does.
    """
    urls = server_list("ensure_stream", servers)
    nc = await connect_nats("ensure_stream", urls, timeout=connect_timeout, options=dict(nats_options or {}))
    try:
        js = nc.jetstream()
        try:
            await js.stream_info(stream)
            return
        except nats.js.errors.NotFoundError:
            pass
        config = StreamConfig(
            name=stream,
            subjects=list(subjects),
            duplicate_window=duplicate_window,
            max_age=max_age,
            max_bytes=max_bytes,
        )
        await js.add_stream(config)
    finally:
        await nc.close()
