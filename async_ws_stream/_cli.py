"""``python -m async_ws_stream connect URL``: a reconnecting websocket client for the terminal.

stdout carries only the matching messages, one compact JSON document a line,
flushed as they arrive, so ``| jq`` and ``| head`` work; connection events (one
short line each, unless ``-q``), logs (``-v``), the ``--stats`` summary and errors
go to stderr. ``--to-nats URL --subject TEMPLATE`` and ``--to-redis URL --key
TEMPLATE`` also publish them to a broker.

Exit codes: 0 after ``--count`` messages, or when the reader of stdout goes away
(``| head``); 1 when the client gives up (``--max-retries`` ran out, or the server
refused us for good) or a stream overflowed; 2 for a bad argument (argparse);
130 on Ctrl-C; 143 on SIGTERM, which ends the client as Ctrl-C does (close frame,
``--stats``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass, field
from typing import IO, Any

from loguru import logger
from websockets.asyncio.client import ClientConnection, connect

from ._client import AsyncWsStream
from ._events import Closed, Event, GaveUp
from ._redact import describe
from ._streams import Stream
from .exceptions import AsyncWsStreamError

__all__ = [
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_TERMINATED",
    "CliClient",
    "ConnectOptions",
    "detach_stdout",
    "parse_json",
    "parse_json_object",
    "run_connect",
    "run_until_terminated",
]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report a Ctrl-C
EXIT_TERMINATED = 143  # 128 + SIGTERM

# Bounds the handshake of each attempt; a hung handshake is a failed attempt, retried with backoff.
OPEN_TIMEOUT = 10.0
CLOSE_TIMEOUT = 2.0


@dataclass(frozen=True)
class ConnectOptions:
    """What ``connect`` was asked to do, validated by the argument parser."""

    url: str
    filters: list[Mapping[Any, Any]] = field(default_factory=list)  # OR-ed; [] matches everything
    sends: list[str] = field(default_factory=list)  # JSON texts, sent as given on every connection
    count: int | None = None
    idle_timeout: float | None = None
    recycle_every: float | None = None
    headers: list[tuple[str, str]] = field(default_factory=list)
    max_retries: int | None = None
    stats: bool = False
    verbose: int = 0
    quiet: bool = False  # no connection events on stderr
    # Publish to a broker as well (async_ws_stream.broker; see _broker_sinks).
    to_nats: str | None = None
    subject: str | None = None
    stream: str | None = None
    to_redis: str | None = None
    key: str | None = None


class CliClient(AsyncWsStream[Any]):
    """The client behind ``connect``: JSON frames, ``--send`` on every connection, optional recycling."""

    def __init__(self, options: ConnectOptions) -> None:
        super().__init__(idle_timeout=options.idle_timeout, max_retries=options.max_retries)
        self.options = options

    async def _create_ws(self) -> ClientConnection:
        return await connect(
            self.options.url,
            additional_headers=self.options.headers,
            open_timeout=OPEN_TIMEOUT,
            close_timeout=CLOSE_TIMEOUT,
        )

    async def _on_connect(self, ws: Any) -> None:
        for text in self.options.sends:
            await ws.send(text)

    async def _when2create_new_ws(self) -> None:
        if self.options.recycle_every is None:
            await asyncio.Event().wait()  # never: this connection serves until it is lost
        else:
            await asyncio.sleep(self.options.recycle_every)

    def _parse_raw_data(self, raw: str | bytes) -> Any:
        return json.loads(raw)


def run_connect(options: ConnectOptions) -> int:
    """Run ``connect`` until ``--count`` messages, a fatal error, Ctrl-C or a closed stdout; return the exit code."""
    _configure_logging(options.verbose)
    try:
        return asyncio.run(run_until_terminated(_connect(options, sys.stdout.buffer, sys.stderr)))
    except KeyboardInterrupt:
        # asyncio.run turned the first Ctrl-C into a cancellation, so the client has
        # already closed its connection with a close frame.
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        detach_stdout()
        return EXIT_OK


async def run_until_terminated(main: Coroutine[Any, Any, int]) -> int:
    """Await ``main`` in this task; a SIGTERM cancels it as Ctrl-C does, and then the result is 143.

    ``main``'s ``finally`` clauses run as for a Ctrl-C (the client's ``exit()``: a
    close frame; ``--stats``), so ``kill``, ``docker stop`` and systemd end it
    cleanly. Where signal handlers cannot be installed (not the main thread,
    Windows), SIGTERM keeps its default action.
    """
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    terminated = False

    def on_sigterm() -> None:
        nonlocal terminated
        terminated = True
        task.cancel()

    try:
        loop.add_signal_handler(signal.SIGTERM, on_sigterm)
        installed = True
    except (NotImplementedError, RuntimeError, ValueError):
        installed = False
    try:
        return await main
    except asyncio.CancelledError:
        # Our own cancellation, and nobody else's pending: the run is over, by request.
        if terminated and task.uncancel() == 0:
            return EXIT_TERMINATED
        raise
    finally:
        if installed:
            loop.remove_signal_handler(signal.SIGTERM)


@dataclass
class _Tally:
    """Lines written to stdout so far; kept outside the printing loop so a broken pipe keeps the count."""

    printed: int = 0


async def _connect(options: ConnectOptions, out: IO[bytes], err: IO[str]) -> int:
    client = CliClient(options)
    tally = _Tally()
    # Owned here and awaited below: the events stream ends after Closed, at exit.
    printer = None if options.quiet else asyncio.create_task(_print_events(client.events(), err))
    try:
        async with client:
            async with client.stream_filter(options.filters or None) as stream, \
                    contextlib.AsyncExitStack() as sinks:
                for sink in await _broker_sinks(client, options):
                    await sinks.enter_async_context(sink)
                await _print_messages(stream, out, options.count, tally)
        return EXIT_OK
    except AsyncWsStreamError as exc:
        print(f"async_ws_stream: error: {describe(exc)}", file=err)
        return EXIT_FAILED
    except ImportError as exc:  # --to-nats/--to-redis without their extra: the message names it
        print(f"async_ws_stream: error: {exc}", file=err)
        return EXIT_FAILED
    finally:
        await client.exit()
        if printer is not None:
            await printer
        if options.stats:
            summary = {k: v for k, v in client.stats().items() if k != "streams"}
            summary["printed"] = tally.printed
            print(json.dumps(summary, separators=(",", ":")), file=err, flush=True)


async def _print_events(events: Stream[Event], err: IO[str]) -> None:
    """One short line on stderr per connection event; the give-up is printed as the error instead."""
    async for event in events:
        if not isinstance(event, (GaveUp, Closed)):
            print(f"async_ws_stream: {event}", file=err, flush=True)


async def _broker_sinks(client: AsyncWsStream[Any], options: ConnectOptions) -> list[Any]:
    """The sinks ``--to-nats``/``--to-redis`` ask for, made (and so subscribed) before the first
    await, so that they see the first message; the JetStream stream is created if it is missing."""
    sinks: list[Any] = []
    filters = options.filters or None
    if options.to_nats is not None and options.subject is not None:
        from .broker import JetStreamSink, ensure_stream

        first = options.subject.split(".", 1)[0]
        stream = options.stream or first.upper()
        sinks.append(JetStreamSink(client, servers=options.to_nats, stream=stream, subject=options.subject,
                                   filters=filters))
    if options.to_redis is not None and options.key is not None:
        from .broker import RedisStreamSink

        sinks.append(RedisStreamSink(client, url=options.to_redis, key=options.key, filters=filters))
    if options.to_nats is not None and options.subject is not None:
        try:
            await ensure_stream(servers=options.to_nats, stream=stream, subjects=[f"{first}.>"])
        except BaseException:
            for sink in sinks:
                await sink.close()
            raise
    return sinks


async def _print_messages(stream: Stream[Any], out: IO[bytes], count: int | None, tally: _Tally) -> None:
    """Write each message as one JSON line, flushing once per batch; count what was written in ``tally``."""
    async for msg in stream:
        batch = [msg]
        # Whatever is already buffered goes out in the same write and flush.
        while stream.queued and (count is None or tally.printed + len(batch) < count):
            batch.append(stream.get_nowait())
        # The write blocks the loop while the reader is slow: that backpressure
        # reaches the server through TCP instead of growing a buffer here.
        out.write(b"".join(_line(m) for m in batch))
        out.flush()
        tally.printed += len(batch)
        if count is not None and tally.printed >= count:
            break


def _line(msg: Any) -> bytes:
    return json.dumps(msg, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


def _configure_logging(verbose: int) -> None:
    logger.remove()  # the process is ours: no default handler printing other libraries' DEBUG lines
    if verbose:
        logger.add(
            sys.stderr,
            level="DEBUG" if verbose > 1 else "INFO",
            format="{time:HH:mm:ss.SSS} {level: <7} {message}",
            backtrace=False,
            diagnose=False,  # no variable values (frames, keys) in logged tracebacks
        )
        logger.enable("async_ws_stream")


def detach_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush does not fail on the closed pipe."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def parse_json_object(text: str) -> dict[str, Any]:
    """Parse ``text`` as a JSON object; the ValueError shows the text and what is wrong."""
    value = parse_json(text)
    if not isinstance(value, Mapping):
        raise ValueError(f"expected a JSON object such as '{{\"e\": \"trade\"}}', got {text!r}")
    return dict(value)


def parse_json(text: str) -> Any:
    """Parse ``text`` as any JSON document; the ValueError shows the text and where the JSON broke."""
    try:
        return json.loads(text)
    except ValueError as exc:
        raise ValueError(f"not valid JSON ({exc}): {text!r}; check the shell's quoting") from None
