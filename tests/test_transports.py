"""The picows transport against real servers on loopback: messages, closes, limits, handshakes, TLS.

The whole client suite also runs on picows (see conftest.py); these tests pin down
the connection object itself: that it behaves like websockets' where the client
relies on it.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import (
    ConcurrencyError,
    ConnectionClosed,
    ConnectionClosedError,
    ConnectionClosedOK,
    InvalidMessage,
    InvalidStatus,
    NegotiationError,
)
from websockets.http11 import Request, Response
from websockets.protocol import State

import async_ws_stream.transports._picows_frames as picows_frames
from async_ws_stream import ConnectionRejected
from async_ws_stream._backoff import fatal_error, retry_after
from async_ws_stream.testing import FeedServer
from async_ws_stream.transports import (
    PICOWS_AVAILABLE,
    PicowsConnection,
    picows_connect,
)

from .conftest import eventually
from .tls import client_context

pytestmark = pytest.mark.skipif(
    not PICOWS_AVAILABLE,
    reason="picows is not installed; pip install 'async_ws_stream[fast]' to test the fast transport",
)



@pytest.fixture
async def ws(server: FeedServer) -> AsyncIterator[PicowsConnection]:
    conn = await picows_connect(server.url, open_timeout=2, close_timeout=1)
    await server.wait_connections(1)
    try:
        yield conn
    finally:
        await conn.close()


def peer(server: FeedServer) -> ServerConnection:
    """The server's side of the (only) connection."""
    [conn] = server.connections
    return conn


@pytest.fixture
async def silent_server() -> AsyncIterator[tuple[str, asyncio.Event, asyncio.Queue[bytes]]]:
    """A TCP server that reads a handshake request and never answers: (url, got a request, what each peer sent after)."""
    got_request = asyncio.Event()
    leftovers: asyncio.Queue[bytes] = asyncio.Queue()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        got_request.set()
        leftovers.put_nowait(await reader.read())  # b"" once the client closed its socket
        writer.close()
        await writer.wait_closed()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"ws://127.0.0.1:{port}/", got_request, leftovers
    finally:
        server.close()
        await server.wait_closed()


# -- messages ------------------------------------------------------------------------------


async def test_text_frames_are_str_and_binary_frames_bytes(ws: PicowsConnection, server: FeedServer) -> None:
    """A text frame comes out as str, a binary frame as bytes."""
    await server.broadcast('{"a":1}')
    await server.broadcast(b"\x00\xff")
    assert await ws.recv() == '{"a":1}'
    assert await ws.recv() == b"\x00\xff"


async def test_fragmented_messages_are_reassembled(ws: PicowsConnection, server: FeedServer) -> None:
    """A message sent in several frames is one message, of its first frame's type."""
    await peer(server).send(["ab", "cd", "é"])
    await peer(server).send([b"\x01", b"\x02"])
    assert await ws.recv() == "abcdé"
    assert await ws.recv() == b"\x01\x02"


async def test_recv_returns_a_backlog_without_suspending(ws: PicowsConnection, server: FeedServer) -> None:
    """Buffered messages come back from recv() at once: its coroutine finishes on the first step."""
    for n in range(5):
        await server.broadcast({"n": n})
    await server.close_all(1000)
    await ws.wait_closed()  # every frame has been read
    for n in range(5):
        step = ws.recv()
        with pytest.raises(StopIteration) as done:
            step.send(None)
        assert done.value.value == f'{{"n":{n}}}'


async def test_a_normal_close_comes_after_the_buffered_messages(ws: PicowsConnection, server: FeedServer) -> None:
    """The server closes with 1000: recv gives what came first, then ConnectionClosedOK; our echo was 1000."""
    conn = peer(server)
    await server.broadcast("last")
    await server.close_all(1000, "bye")
    assert await ws.recv() == "last"
    with pytest.raises(ConnectionClosedOK) as closed:
        await ws.recv()
    assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (1000, "bye")
    assert closed.value.sent is not None and closed.value.sent.code == 1000
    assert conn.close_code == 1000
    assert (ws.close_code, ws.close_reason, ws.state) == (1000, "bye", State.CLOSED)


async def test_an_application_close_code_is_fatal_to_the_client(ws: PicowsConnection, server: FeedServer) -> None:
    """Close 4001 reaches recv as ConnectionClosedError with rcvd 4001, which the client treats as fatal."""
    await server.close_all(4001, "banned")
    with pytest.raises(ConnectionClosedError) as closed:
        await ws.recv()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4001
    rejected = fatal_error(closed.value)
    assert isinstance(rejected, ConnectionRejected) and "4001" in str(rejected)


async def test_a_drop_raises_connection_closed_error_with_1006(ws: PicowsConnection, server: FeedServer) -> None:
    """A TCP connection that ends without a close frame: ConnectionClosedError, no frames, code 1006."""
    await server.drop()
    with pytest.raises(ConnectionClosedError) as closed:
        await ws.recv()
    assert closed.value.rcvd is None
    assert ws.close_code == 1006


async def test_aborting_the_transport_ends_recv(ws: PicowsConnection) -> None:
    """ws.transport.abort() (the client's idle watchdog) ends a blocked recv with ConnectionClosedError."""
    reader = asyncio.create_task(ws.recv())
    await asyncio.sleep(0)
    ws.transport.abort()
    with pytest.raises(ConnectionClosedError):
        await reader


async def test_cancelling_recv_loses_no_message(ws: PicowsConnection, server: FeedServer) -> None:
    """A recv cancelled while it waits leaves the next message to the next recv."""
    reader = asyncio.create_task(ws.recv())
    await asyncio.sleep(0)
    reader.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reader
    await server.broadcast("kept")
    assert await ws.recv() == "kept"


async def test_two_concurrent_recvs_raise_concurrency_error(ws: PicowsConnection) -> None:
    """Only one coroutine may wait in recv, as with websockets."""
    reader = asyncio.create_task(ws.recv())
    await asyncio.sleep(0)
    with pytest.raises(ConcurrencyError):
        await ws.recv()
    reader.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reader


# -- limits --------------------------------------------------------------------------------


async def test_reading_pauses_above_the_high_water_mark_and_resumes(server: FeedServer) -> None:
    """With max_queue=(8, 2) a backlog stops the socket being read; draining resumes it; nothing is lost."""
    total = 5_000  # about 500 kB: more than one read, so pausing is what holds the buffer down
    ws = await picows_connect(server.url, max_queue=(8, 2))
    try:
        await server.wait_connections(1)
        publisher = asyncio.create_task(server.publish({"n": n, "pad": "x" * 80} for n in range(total)))
        await eventually(lambda: not ws.transport.is_reading())
        queued = len(ws._messages)
        assert 8 <= queued < total // 4
        got = [(await ws.recv())[5:].split(",")[0] for _ in range(total)]
        assert got == [str(n) for n in range(total)]
        assert ws.transport.is_reading()
        assert await publisher == total
    finally:
        await ws.close()


async def test_one_read_hands_picows_at_most_read_size_bytes(server: FeedServer) -> None:
    """Each read is capped at read_size bytes, so the backlog never passes the mark by more than one read."""
    ws = await picows_connect(server.url, max_queue=(8, 2), read_size=4096)
    try:
        await server.wait_connections(1)
        ws.transport.pause_reading()  # let 20 kB wait in the socket
        assert await server.publish({"n": n, "pad": "x" * 80} for n in range(200)) == 200
        ws.transport.resume_reading()
        most, got = 0, []
        for _ in range(200):
            message = await ws.recv()
            most = max(most, len(ws._messages) + 1)
            got.append(message[5:].split(",")[0])
        assert got == [str(n) for n in range(200)]
        # Whole reads are parsed before a pause takes effect: at most 4096 bytes of
        # ~100-byte messages (and one carried over). picows alone reads 16 kB at once.
        assert most <= 8 + 4096 // 100 + 2
    finally:
        await ws.close()


async def test_a_message_over_max_size_fails_the_connection_with_1009(server: FeedServer) -> None:
    """One frame bigger than max_size: close 1009 to the server, ConnectionClosedError from recv."""
    ws = await picows_connect(server.url, max_size=100)
    await server.wait_connections(1)
    conn = peer(server)
    await server.broadcast("x" * 101)
    with pytest.raises(ConnectionClosedError) as closed:
        await ws.recv()
    assert closed.value.sent is not None and closed.value.sent.code == 1009
    await conn.wait_closed()
    assert conn.close_code == 1009


async def test_fragments_adding_up_past_max_size_fail_with_1009(server: FeedServer) -> None:
    """Fragments each under max_size but over it together: close 1009."""
    ws = await picows_connect(server.url, max_size=100)
    await server.wait_connections(1)
    conn = peer(server)
    await conn.send(["x" * 60, "y" * 60])
    with pytest.raises(ConnectionClosedError) as closed:
        await ws.recv()
    assert closed.value.sent is not None and closed.value.sent.code == 1009
    await conn.wait_closed()
    assert conn.close_code == 1009


async def test_invalid_utf8_in_a_text_frame_fails_with_1007(ws: PicowsConnection, server: FeedServer) -> None:
    """A text frame that is not UTF-8 fails the connection with 1007, as websockets does."""
    await peer(server).send(b"\xff\xfe", text=True)
    with pytest.raises(ConnectionClosedError) as closed:
        await ws.recv()
    assert closed.value.sent is not None and closed.value.sent.code == 1007


# -- sending and closing -------------------------------------------------------------------


async def test_send_writes_text_and_binary_frames(ws: PicowsConnection, server: FeedServer) -> None:
    """str goes as a text frame and bytes as a binary frame."""
    await ws.send('{"op":"hi"}')
    await ws.send(b"\x01")
    await server.wait_received(2)
    assert server.received == [(1, '{"op":"hi"}'), (1, b"\x01")]


async def test_send_rejects_what_is_not_text_or_bytes(ws: PicowsConnection) -> None:
    """send() of a dict names the type: the client serialises before it sends."""
    with pytest.raises(TypeError, match="must be str or bytes-like, got dict"):
        await ws.send({"op": "hi"})  # type: ignore[arg-type]


async def test_send_after_close_raises_connection_closed(ws: PicowsConnection) -> None:
    """A closed connection refuses to send, with the websockets exception the client turns into ConnectionLost."""
    await ws.close()
    with pytest.raises(ConnectionClosedOK):
        await ws.send("late")


async def test_close_sends_the_code_and_reason_and_waits_for_the_server(
    ws: PicowsConnection, server: FeedServer
) -> None:
    """close(4000, "bye"): the server receives that close frame; when close() returns the connection is closed."""
    conn = peer(server)
    await ws.close(4000, "bye")
    assert ws.state is State.CLOSED
    assert ws.close_code == 4000  # the server's echo
    await conn.wait_closed()
    assert (conn.close_code, conn.close_reason) == (4000, "bye")


async def test_close_is_idempotent_and_concurrent_calls_all_return(ws: PicowsConnection) -> None:
    """Several close() calls at once, and one more after, all return."""
    await asyncio.gather(ws.close(), ws.close(), ws.close())
    await ws.close()
    assert ws.state is State.CLOSED


async def test_close_drops_a_server_that_does_not_answer_after_close_timeout(server: FeedServer) -> None:
    """A stalled server never answers the close frame: close() drops the connection after close_timeout."""
    ws = await picows_connect(server.url, close_timeout=0.1)
    await server.wait_connections(1)
    server.stall()
    await ws.close()
    assert ws.state is State.CLOSED
    assert ws.close_code == 1006  # no close frame came back
    server.unstall()


# -- keepalive -----------------------------------------------------------------------------


async def test_keepalive_fails_a_connection_whose_server_stopped_answering(server: FeedServer) -> None:
    """No pong within ping_timeout: close 1011 "keepalive ping timeout", and recv raises."""
    ws = await picows_connect(server.url, ping_interval=0.05, ping_timeout=0.05)
    await server.wait_connections(1)
    server.stall()
    with pytest.raises(ConnectionClosedError) as closed:
        await ws.recv()
    assert closed.value.sent is not None
    assert (closed.value.sent.code, closed.value.sent.reason) == (1011, "keepalive ping timeout")
    server.unstall()


async def test_keepalive_keeps_a_connection_whose_server_answers(server: FeedServer) -> None:
    """Many ping intervals of traffic later, a server that answers pings still has its connection."""
    ws = await picows_connect(server.url, ping_interval=0.02, ping_timeout=0.1)
    try:
        loop = asyncio.get_running_loop()
        end = loop.time() + 0.4  # twenty pings, four times the pong timeout
        n = 0
        while loop.time() < end:
            n += 1
            await ws.send(f'{{"method":"SUBSCRIBE","id":{n}}}')
            assert await ws.recv() == f'{{"id":{n},"result":null}}'
        assert ws.state is State.OPEN
    finally:
        await ws.close()


async def test_no_task_runs_on_behalf_of_a_connection(server: FeedServer) -> None:
    """Open (with keepalive), used and closed, a connection never adds a task to the loop."""

    def client_side_tasks() -> list[asyncio.Task[Any]]:
        # The FeedServer runs tasks per connection; only the rest can be the client's.
        return [t for t in asyncio.all_tasks() - before
                if "/websockets/" not in getattr(t.get_coro(), "cr_code", t.get_coro().__class__).co_filename]

    before = asyncio.all_tasks()
    ws = await picows_connect(server.url, ping_interval=0.01)
    await server.broadcast("x")
    assert await ws.recv() == "x"
    assert client_side_tasks() == []
    await ws.close()
    assert client_side_tasks() == []


# -- the handshake -------------------------------------------------------------------------


async def test_a_refused_handshake_raises_invalid_status_with_its_headers(server: FeedServer) -> None:
    """HTTP 429 with Retry-After: InvalidStatus carrying both, so the client honours the delay."""
    server.refuse_next(status=429, headers={"Retry-After": "7"})
    with pytest.raises(InvalidStatus) as refused:
        await picows_connect(server.url)
    assert refused.value.response.status_code == 429
    assert "HTTP 429" in str(refused.value)
    assert retry_after(refused.value) == 7.0


async def test_a_401_refusal_is_fatal_to_the_client(server: FeedServer) -> None:
    """HTTP 401 is InvalidStatus(401), which the client turns into ConnectionRejected."""
    server.refuse_next(status=401)
    with pytest.raises(InvalidStatus) as refused:
        await picows_connect(server.url)
    rejected = fatal_error(refused.value)
    assert isinstance(rejected, ConnectionRejected) and rejected.status == 401


async def test_request_headers_and_user_agent_are_sent(server: FeedServer) -> None:
    """additional_headers go out with the handshake, and a User-Agent naming picows."""
    ws = await picows_connect(server.url_for("/ws?k=1"), additional_headers={"X-Api-Key": "secret"})
    await ws.close()
    request = server.requests[-1]
    assert request.path == "/ws?k=1"
    assert request.headers["X-Api-Key"] == "secret"
    assert "picows/" in request.headers["User-Agent"]


async def test_extra_headers_is_a_synonym_and_not_both(server: FeedServer) -> None:
    """extra_headers (picows' name) works as additional_headers; giving both is a TypeError."""
    ws = await picows_connect(server.url, extra_headers=[("X-One", "1")], user_agent_header=None)
    await ws.close()
    assert server.requests[-1].headers["X-One"] == "1"
    assert "User-Agent" not in server.requests[-1].headers
    with pytest.raises(TypeError, match="not both"):
        await picows_connect(server.url, additional_headers={"a": "b"}, extra_headers={"a": "b"})


async def test_the_handshake_response_is_exposed(ws: PicowsConnection) -> None:
    """ws.response is a websockets Response: status 101 and the server's headers."""
    assert ws.response is not None
    assert ws.response.status_code == 101
    assert ws.response.headers["Upgrade"].lower() == "websocket"
    assert ws.remote_address[0] == "127.0.0.1"


async def test_a_connection_closed_during_the_handshake_raises_invalid_message() -> None:
    """A server that hangs up instead of answering: InvalidMessage, which the client retries."""

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.close()
        await writer.wait_closed()

    server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    try:
        port = server.sockets[0].getsockname()[1]
        with pytest.raises(InvalidMessage):
            await picows_connect(f"ws://127.0.0.1:{port}/")
    finally:
        server.close()
        await server.wait_closed()


async def test_a_cancelled_handshake_closes_its_socket(
    silent_server: tuple[str, asyncio.Event, asyncio.Queue[bytes]],
) -> None:
    """Cancelling picows_connect while the server has not answered closes the TCP connection."""
    url, got_request, leftovers = silent_server
    attempt = asyncio.create_task(picows_connect(url))
    await got_request.wait()
    attempt.cancel()
    with pytest.raises(asyncio.CancelledError):
        await attempt
    assert await asyncio.wait_for(leftovers.get(), 5) == b""


async def test_open_timeout_raises_timeout_error_and_closes_the_socket(
    silent_server: tuple[str, asyncio.Event, asyncio.Queue[bytes]],
) -> None:
    """No answer within open_timeout: TimeoutError, and the server sees the connection end."""
    url, _, leftovers = silent_server
    with pytest.raises(TimeoutError):
        await picows_connect(url, open_timeout=0.1)
    assert await asyncio.wait_for(leftovers.get(), 5) == b""


# -- TLS -----------------------------------------------------------------------------------


async def test_tls_with_a_trusted_certificate(tls_url: str) -> None:
    """wss:// with an ssl context that trusts the server: the messages arrive over TLS."""
    ws = await picows_connect(tls_url, ssl=client_context())
    try:
        assert await ws.recv() == "hello"
        assert ws.transport.get_extra_info("ssl_object") is not None
    finally:
        await ws.close()


async def test_tls_refuses_an_untrusted_certificate(tls_url: str) -> None:
    """wss:// with the default trust store refuses the self-signed server."""
    with pytest.raises(ssl.SSLCertVerificationError):
        await picows_connect(tls_url)


# -- arguments -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"max_queue": (2, 5)}, r"max_queue must be .* got \(2, 5\)"),
        ({"max_size": 0}, "max_size must be an int >= 1 or None, got 0"),
        ({"ping_interval": 0}, "ping_interval must be a number > 0 or None, got 0"),
        ({"ssl": ssl.create_default_context()}, "ssl was given for a ws:// URL"),
        ({"read_size": 0}, "picows_connect: read_size must be an int >= 1 .*got 0"),
        ({"subprotocols": ["graphql ws"]}, "picows_connect: subprotocol 'graphql ws' is not an HTTP token"),
    ],
)
async def test_bad_arguments_name_the_argument_and_value(options: dict[str, Any], words: str) -> None:
    """Right type, out of range: a ValueError naming the option and the value."""
    with pytest.raises(ValueError, match=words):
        await picows_connect("ws://127.0.0.1:9/", **options)


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"max_queue": "16"}, r"picows_connect: max_queue must be .* got str '16'"),
        ({"max_queue": (2.5, 1)}, r"picows_connect: max_queue must be .* got tuple \(2.5, 1\)"),
        ({"max_size": 1.5}, "picows_connect: max_size must be an int >= 1 or None, got float 1.5"),
        ({"open_timeout": "10"}, "picows_connect: open_timeout must be a number > 0 or None, got str '10'"),
        ({"ping_interval": True}, "picows_connect: ping_interval must be .* got bool True"),
        ({"read_size": None}, "picows_connect: read_size must be an int >= 1 .*got NoneType None"),
        ({"subprotocols": "graphql-ws"}, "picows_connect: subprotocols must be a list of str, got str"),
        ({"subprotocols": [b"graphql-ws"]}, "picows_connect: each subprotocol must be a str, got bytes"),
    ],
)
async def test_arguments_of_the_wrong_type_raise_type_error(options: dict[str, Any], words: str) -> None:
    """Wrong type: a TypeError naming the function, the option and the value."""
    with pytest.raises(TypeError, match=words):
        await picows_connect("ws://127.0.0.1:9/", **options)


async def test_without_picows_the_error_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """If picows cannot be imported, picows_connect says which extra to install."""
    monkeypatch.setattr(picows_frames, "picows", None)
    with pytest.raises(ImportError, match=r"async_ws_stream\[fast\]"):
        await picows_connect("ws://127.0.0.1:9/")


async def test_send_on_a_closed_connection_raises_what_the_client_expects(ws: PicowsConnection,
                                                                         server: FeedServer) -> None:
    """After a drop, send raises a websockets ConnectionClosed (the client's _send turns it into ConnectionLost)."""
    await server.drop()
    with pytest.raises(ConnectionClosed):
        await ws.recv()
    with pytest.raises(ConnectionClosed):
        await ws.send("x")


# -- subprotocols --------------------------------------------------------------------------


@asynccontextmanager
async def subprotocol_server(supported: list[str] | None, *, force: str | None = None) -> AsyncIterator[str]:
    """A websockets server that negotiates ``supported``, or answers with ``force`` whatever was offered."""

    async def echo_choice(conn: ServerConnection) -> None:
        await conn.send(str(conn.subprotocol))
        await conn.wait_closed()

    def forced(conn: ServerConnection, request: Request, response: Response) -> Response:
        if force is not None:
            if "Sec-WebSocket-Protocol" in response.headers:
                del response.headers["Sec-WebSocket-Protocol"]
            response.headers["Sec-WebSocket-Protocol"] = force
        return response

    async with serve(echo_choice, "127.0.0.1", 0, subprotocols=supported, process_response=forced) as server:  # type: ignore[arg-type]
        yield f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/"


async def test_subprotocols_are_offered_and_the_choice_exposed() -> None:
    """subprotocols=[...] goes out in Sec-WebSocket-Protocol; .subprotocol is what the server chose, as on websockets."""
    async with subprotocol_server(["graphql-transport-ws"]) as url:
        ws = await picows_connect(url, subprotocols=["graphql-ws", "graphql-transport-ws"])
        try:
            assert ws.subprotocol == "graphql-transport-ws"
            assert await ws.recv() == "graphql-transport-ws"  # the server's side agrees
            assert ws.request is not None
            assert ws.request.headers["Sec-WebSocket-Protocol"] == "graphql-ws, graphql-transport-ws"
        finally:
            await ws.close()


async def test_no_subprotocol_chosen_is_none() -> None:
    """Offered but not chosen (a server that does not negotiate any), or not offered: .subprotocol is None."""
    async with subprotocol_server(None) as url:
        for offered in (["graphql-ws"], None):
            ws = await picows_connect(url, subprotocols=offered)
            try:
                assert ws.subprotocol is None
                assert await ws.recv() == "None"
            finally:
                await ws.close()


@pytest.mark.parametrize(("offered", "words"), [
    (["graphql-ws"], "unsupported subprotocol: evil"),
    (None, "no subprotocols supported"),
])
async def test_a_subprotocol_we_did_not_offer_raises_like_websockets(offered: list[str] | None, words: str) -> None:
    """The server picks what was not offered: NegotiationError, as websockets.connect raises, and the socket is closed."""
    async with subprotocol_server(None, force="evil") as url:
        with pytest.raises(NegotiationError, match=words):
            await connect(url, subprotocols=offered)  # type: ignore[arg-type]
        with pytest.raises(NegotiationError, match=words):
            await picows_connect(url, subprotocols=offered)


# -- picows' own logging -------------------------------------------------------------------


async def test_picows_errors_go_to_our_logger_not_to_stderr(server: FeedServer, logs: list[str],
                                                            caplog: pytest.LogCaptureFixture,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """picows' ERROR on a frame over max_size reaches loguru (as async_ws_stream), not the root logger or stderr."""
    caplog.set_level(logging.DEBUG)
    ws = await picows_connect(server.url, max_size=100)
    await server.wait_connections(1)
    await server.broadcast("x" * 101)
    with pytest.raises(ConnectionClosedError):
        await ws.recv()
    assert any(line.startswith("ERROR picows: ") for line in logs), logs
    assert not [record for record in caplog.records if record.name.startswith(("picows", "async_ws_stream"))]
    assert "picows" not in capsys.readouterr().err
