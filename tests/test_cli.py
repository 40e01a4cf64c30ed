"""`python -m async_ws_stream connect`, run as a subprocess against a FeedServer in the test."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from async_ws_stream.testing import FeedServer

from .subprocesses import WITH_CTRL_C, child_env

BUDGET = 15.0  # seconds a CLI run may take before the test fails


@asynccontextmanager
async def cli(*args: str, stdout: Any = asyncio.subprocess.PIPE, ctrl_c: bool = False) -> AsyncIterator[Any]:
    """Start the CLI; on the way out, make sure the process is gone and its pipes are closed."""
    launcher = ["-c", WITH_CTRL_C] if ctrl_c else ["-m", "async_ws_stream"]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, *launcher, *args, stdout=stdout, stderr=asyncio.subprocess.PIPE, env=child_env()
    )
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.communicate()


async def finish(proc: Any) -> tuple[int, str, str]:
    async with asyncio.timeout(BUDGET):
        out, err = await proc.communicate()
    return proc.returncode, (out or b"").decode(), err.decode()


async def test_prints_only_matching_messages_and_exits_after_count(server: FeedServer) -> None:
    """Repeated --filter are OR-ed; stdout holds exactly the matches, one JSON a line; --count N exits 0."""
    async with cli("connect", server.url, "--filter", '{"e": "trade"}', "--filter", '{"e": "book", "s": "ETH"}',
                   "--count", "3") as proc:
        await server.wait_connections(1)
        for msg in [{"e": "trade", "p": 1}, {"e": "book", "s": "BTC"}, {"e": "info"},
                    {"e": "book", "s": "ETH", "n": "é"}, {"e": "trade", "p": 2}, {"e": "trade", "p": 3}]:
            await server.broadcast(msg)
        code, out, err = await finish(proc)
    assert code == 0, err
    assert [json.loads(line) for line in out.splitlines()] == [
        {"e": "trade", "p": 1}, {"e": "book", "s": "ETH", "n": "é"}, {"e": "trade", "p": 2},
    ]
    assert err == "async_ws_stream: connected (#1)\n"  # stderr: the connection's events, nothing else


async def test_quiet_prints_no_connection_events(server: FeedServer) -> None:
    """-q: stderr stays empty; stdout still carries the messages."""
    async with cli("connect", server.url, "--count", "1", "-q") as proc:
        await server.wait_connections(1)
        await server.broadcast({"e": "trade"})
        code, out, err = await finish(proc)
    assert (code, out, err) == (0, '{"e":"trade"}\n', "")


async def test_connection_events_show_retries_without_verbose(server: FeedServer) -> None:
    """Without -v, a refused handshake and a drop still show on stderr, one short line each."""
    server.refuse_next(1, status=503)
    async with cli("connect", server.url, "--count", "1") as proc:
        await server.wait_connections(1)
        await server.drop()
        await server.wait_connections(2)
        await server.broadcast({"e": "trade"})
        code, out, err = await finish(proc)
    assert code == 0, err
    lines = err.splitlines()
    assert lines[0].startswith("async_ws_stream: retry 1 in 0.00s after InvalidStatus") and "503" in lines[0]
    assert lines[1] == "async_ws_stream: connected (#1)"
    assert lines[2].startswith("async_ws_stream: connection #1 lost: ")
    assert "async_ws_stream: connected (#2)" in lines


async def test_send_goes_out_on_every_new_connection(server: FeedServer) -> None:
    """Each --send is sent, in order, on the first connection and again after a reconnect."""
    subscribe, login = '{"method": "SUBSCRIBE", "params": ["a"], "id": 1}', '{"op": "login"}'
    async with cli("connect", server.url, "--send", subscribe, "--send", login, "--filter", '{"e": "x"}',
                   "--count", "1") as proc:
        await server.wait_received(2)
        await server.drop()
        await server.wait_received(4)
        await server.broadcast({"e": "x"})
        code, _, err = await finish(proc)
    assert code == 0, err
    assert server.received == [(1, subscribe), (1, login), (2, subscribe), (2, login)]


@pytest.mark.parametrize(
    ("args", "named", "shown"),
    [
        (["--filter", "{bad json"], "argument --filter", True),
        (["--filter", "[1, 2]"], "argument --filter", True),
        (["--count", "0"], "argument --count", True),
        # These may carry credentials, so the value is named but never echoed.
        (["--send", '{"op": "login", "key": "SECRET"'], "argument --send", False),
        (["--header", "Authorization Bearer SECRET"], "argument --header", False),
        (["--header", "X Key: SECRET"], "argument --header", False),
    ],
)
async def test_bad_argument_exits_2_naming_it(args: list[str], named: str, shown: bool) -> None:
    """A malformed argument exits 2 naming the argument; its value is shown unless it may hold a secret."""
    async with cli("connect", "ws://127.0.0.1:9", *args) as proc:
        code, out, err = await finish(proc)
    assert code == 2
    assert named in err
    if shown:
        assert repr(args[1]) in err
    else:
        assert "SECRET" not in err and "not shown" in err
    assert out == "" and "Traceback" not in err


@pytest.mark.parametrize("url", ["http://user:PASS@127.0.0.1:9/ws?token=SECRET", "127.0.0.1:9/ws?token=SECRET"])
async def test_non_websocket_url_exits_2_without_its_secrets(url: str) -> None:
    """A URL that is not ws:// or wss:// exits 2 naming URL, without its userinfo, path or query."""
    async with cli("connect", url) as proc:
        code, _, err = await finish(proc)
    assert code == 2 and "argument URL" in err and "127.0.0.1:9" in err
    assert "SECRET" not in err and "PASS" not in err


async def test_ctrl_c_exits_130_without_traceback(server: FeedServer) -> None:
    """SIGINT ends the client cleanly (the server sees the connection close) with status 130."""
    async with cli("connect", server.url, ctrl_c=True) as proc:
        await server.wait_connections(1)
        await server.broadcast({"e": "x"})
        assert await asyncio.wait_for(proc.stdout.readline(), BUDGET) == b'{"e":"x"}\n'
        proc.send_signal(signal.SIGINT)
        code, _, err = await finish(proc)
    assert code == 130
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    await server.wait_open(0)


async def test_sigterm_exits_143_like_ctrl_c(server: FeedServer) -> None:
    """SIGTERM closes with a close frame, prints --stats, and exits 143 without a traceback."""
    async with cli("connect", server.url, "--stats") as proc:
        await server.wait_connections(1)
        conn = server.connections[-1]
        await server.broadcast({"e": "x"})
        assert await asyncio.wait_for(proc.stdout.readline(), BUDGET) == b'{"e":"x"}\n'
        proc.send_signal(signal.SIGTERM)
        code, _, err = await finish(proc)
    assert code == 143
    assert "Traceback" not in err
    assert json.loads(err.strip().splitlines()[-1])["printed"] == 1
    await conn.wait_closed()
    assert conn.close_code == 1000  # a close frame, not a dropped socket


async def test_stats_prints_a_summary_on_stderr(server: FeedServer) -> None:
    """--stats writes the client's counters as one JSON line on stderr at exit; stdout keeps only messages."""
    async with cli("connect", server.url, "--stats", "--count", "2") as proc:
        await server.wait_connections(1)
        await server.send_garbage(1)
        for n in range(2):
            await server.broadcast({"n": n})
        code, out, err = await finish(proc)
    assert code == 0
    assert out.splitlines() == ['{"n":0}', '{"n":1}']
    summary = json.loads(err.strip().splitlines()[-1])
    assert summary["printed"] == 2 and summary["connects"] == 1 and summary["parse_errors"] == 2


async def test_header_goes_into_the_handshake(server: FeedServer) -> None:
    """--header NAME:VALUE is sent with the handshake request."""
    async with cli("connect", server.url, "--header", "X-MBX-APIKEY: k-123", "--count", "1") as proc:
        await server.wait_connections(1)
        await server.broadcast({"n": 1})
        code, _, err = await finish(proc)
    assert code == 0, err
    assert server.requests[0].headers["X-MBX-APIKEY"] == "k-123"


async def test_verbose_logs_go_to_stderr_and_hide_the_url_path(server: FeedServer) -> None:
    """-v logs connections on stderr (never the URL's secret path); stdout still holds only messages."""
    async with cli("connect", server.url_for("/ws/secret-listen-key"), "-v", "--count", "1") as proc:
        await server.wait_connections(1)
        await server.drop()
        await server.wait_connections(2)
        await server.broadcast({"n": 1})
        code, out, err = await finish(proc)
    assert code == 0
    assert out == '{"n":1}\n'
    assert "connection #1 open" in err and "connection #2 open" in err
    assert "secret-listen-key" not in err


async def test_closed_stdout_exits_quietly(server: FeedServer) -> None:
    """When stdout's reader goes away (`| head -n 1`), the CLI exits 0 quietly, still counting what it printed."""
    read_end, write_end = os.pipe()
    try:
        async with cli("connect", server.url, "--stats", stdout=write_end) as proc:
            os.close(write_end)
            write_end = -1
            await server.wait_connections(1)
            await server.broadcast({"n": 0})
            assert (await asyncio.to_thread(os.read, read_end, 64)).startswith(b'{"n":0}')
            os.close(read_end)
            read_end = -1
            n = 1
            while proc.returncode is None:  # the next writes hit the closed pipe
                await server.broadcast({"n": n})
                n += 1
                try:
                    await asyncio.wait_for(asyncio.shield(proc.wait()), 0.05)
                except TimeoutError:
                    pass
            code, _, err = await finish(proc)
    finally:
        for fd in (read_end, write_end):
            if fd >= 0:
                os.close(fd)
    assert code == 0
    assert "Traceback" not in err and "BrokenPipe" not in err
    summary = json.loads(err.strip().splitlines()[-1])
    assert summary["printed"] >= 1


async def test_idle_timeout_replaces_a_stalled_connection(server: FeedServer) -> None:
    """--idle-timeout S reconnects when the server goes silent."""
    async with cli("connect", server.url, "--idle-timeout", "0.3", "--count", "1") as proc:
        await server.wait_connections(1)
        server.stall()
        await server.wait_connections(2)
        await server.broadcast({"n": 1})
        code, out, _ = await finish(proc)
    assert code == 0 and out == '{"n":1}\n'


async def test_recycle_every_replaces_the_connection_before_closing_it(server: FeedServer) -> None:
    """--recycle-every S opens a new connection, then closes the old one."""
    async with cli("connect", server.url, "--recycle-every", "0.2", "--send", '{"hello": 1}',
                   "--count", "1") as proc:
        await server.wait_connections(2)
        await server.wait_received(lambda frames: {n for n, _ in frames} >= {1, 2})
        await server.wait_open(1)  # the old connection was closed, not left open
        await server.broadcast({"n": 1})
        code, _, err = await finish(proc)
    assert code == 0, err


async def test_giving_up_exits_1_with_the_reason() -> None:
    """When --max-retries run out, the CLI exits 1 and says why on stderr."""
    async with FeedServer() as dead:
        url = dead.url  # a port that was just closed: connections are refused
    async with cli("connect", url, "--max-retries", "0") as proc:
        code, out, err = await finish(proc)
    assert code == 1 and out == ""
    assert "RetriesExhausted" in err and "Traceback" not in err
