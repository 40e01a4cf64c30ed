"""Transports: ``websockets`` with reads sized for many streams, and picows behind the same interface.

``websockets`` is the default transport and stays the one the examples show.
:func:`websockets_connect` is ``websockets.connect`` with one difference: a
socket read may carry up to ``read_size`` bytes (asyncio stops at 256 KiB). The
client wakes each stream's consumer once per read, so with a thousand streams a
256 KiB read gives each one a message or two, and nearly every message costs a
task switch; bigger reads share each switch among more messages. Reads are only
as big as the data waiting in the socket, so this changes nothing on a quiet
feed.

websockets' frame handling costs a few microseconds per message; picows (Cython, on
PyPI, ``pip install 'async_ws_stream[fast]'``) costs a fraction of that. Return
:func:`picows_connect` from ``_create_ws`` and nothing else changes::

    from async_ws_stream.transports import picows_connect

    class Trades(AsyncWsStream):
        async def _create_ws(self):
            return await picows_connect("wss://stream.binance.com:9443/ws")

:class:`PicowsConnection` offers the part of
``websockets.asyncio.client.ClientConnection`` that the client (and a typical
``_on_connect``) uses, with the same exceptions: ``recv`` raises
``websockets.exceptions.ConnectionClosedOK``/``ConnectionClosedError`` carrying
the close frames, and a refused handshake raises
``websockets.exceptions.InvalidStatus`` carrying the response, so close codes,
HTTP 401/403, ``Retry-After`` and every log line work unchanged.

Both functions take ``read_size``; :data:`DEFAULT_READ_SIZE` is 4 MiB. The
client's pump yields to woken consumers before their buffers fill, so a big read
cannot overflow a stream whose consumer keeps up; what it costs is memory (one
read's worth of messages) and, on a feed that outruns the client, the time to
parse one read before the first of its messages reaches a consumer.

What picows does not do, and so this transport does not either:
permessage-deflate compression (websockets offers it by default; a server that
requires it will not work here), proxies, and subprotocol negotiation.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl as ssl_module
import sys
from collections import deque
from collections.abc import AsyncIterator, Iterable, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Self

from websockets.asyncio.client import ClientConnection, connect
from websockets.datastructures import Headers
from websockets.exceptions import (
    ConcurrencyError,
    ConnectionClosed,
    ConnectionClosedError,
    ConnectionClosedOK,
    InvalidHeader,
    InvalidMessage,
    InvalidStatus,
    InvalidUpgrade,
    InvalidURI,
)
from websockets.frames import EXTERNAL_CLOSE_CODES, OK_CLOSE_CODES, Close, CloseCode
from websockets.http11 import Request, Response
from websockets.protocol import State

try:
    import picows
except ImportError:  # the optional extra is not installed: picows_connect says how to get it
    picows = None  # type: ignore[assignment]

__all__ = [
    "DEFAULT_CLOSE_TIMEOUT",
    "DEFAULT_MAX_QUEUE",
    "DEFAULT_MAX_SIZE",
    "DEFAULT_OPEN_TIMEOUT",
    "DEFAULT_PING_INTERVAL",
    "DEFAULT_PING_TIMEOUT",
    "DEFAULT_READ_SIZE",
    "PICOWS_AVAILABLE",
    "PicowsConnection",
    "picows_connect",
    "websockets_connect",
]

#: True when picows is importable, so :func:`picows_connect` can work.
PICOWS_AVAILABLE: Final = picows is not None

# The defaults of websockets.connect(), so that switching transports changes nothing else.
DEFAULT_OPEN_TIMEOUT = 10.0
DEFAULT_PING_INTERVAL = 20.0
DEFAULT_PING_TIMEOUT = 20.0
DEFAULT_CLOSE_TIMEOUT = 10.0
DEFAULT_MAX_SIZE = 2**20
DEFAULT_MAX_QUEUE = 16
#: Most bytes one socket read hands the websocket parser. A whole read is parsed
#: before reading pauses at the high-water mark, so the receive buffer holds at
#: most ``max_queue`` messages plus one read. Bigger reads share each consumer
#: wake-up among more messages (bench/README.md has the figures); smaller ones
#: tighten that bound and get the first messages of a long backlog out sooner.
DEFAULT_READ_SIZE = 4 * 2**20
# What asyncio's socket transport reads at once; the read buffer starts here.
_ASYNCIO_READ_SIZE = 256 * 1024

HeadersLike = Mapping[str, str] | Iterable[tuple[str, str]]

if picows is not None:
    _ListenerBase: Any = picows.WSListener
    _TEXT: Any = picows.WSMsgType.TEXT
    _BINARY: Any = picows.WSMsgType.BINARY
    _CONTINUATION: Any = picows.WSMsgType.CONTINUATION
    _CLOSE: Any = picows.WSMsgType.CLOSE
    _PONG: Any = picows.WSMsgType.PONG
    _USER_AGENT = (
        f"Python/{sys.version_info.major}.{sys.version_info.minor} picows/{picows.version.__version__}"
    )
else:
    _ListenerBase = object
    _TEXT = _BINARY = _CONTINUATION = _CLOSE = _PONG = None
    _USER_AGENT = f"Python/{sys.version_info.major}.{sys.version_info.minor}"

if TYPE_CHECKING:
    _ListenerBase = object

_NOT_YET = "the connection is not open yet"


class PicowsConnection(_ListenerBase):  # type: ignore[misc]
    """One picows websocket connection, driven like a ``websockets`` ``ClientConnection``.

    Made by :func:`picows_connect`; do not construct it yourself. picows calls
    :meth:`on_ws_frame` for every frame as it parses the socket's bytes; this
    class turns frames into messages (text as ``str``, binary as ``bytes``,
    fragmented messages reassembled) in a buffer that :meth:`recv` empties
    without suspending while it holds anything.

    Guarantees:

    * ``recv`` returns every message received, in order, and only then raises
      ``ConnectionClosedOK``/``ConnectionClosedError`` with the close frames
      received and sent (``rcvd``/``sent``), exactly as ``websockets`` does.
    * Cancelling ``recv`` is safe: no message is lost.
    * The receive buffer is bounded: above ``max_queue`` messages the socket is
      no longer read (TCP pushes back on the server) until ``recv`` has taken
      it down to the low-water mark.
    * ``close`` is idempotent, sends a close frame, and returns once the TCP
      connection is closed: when the server answers, or after
      ``close_timeout`` seconds, when the connection is dropped.
    * No task runs on behalf of a connection: keepalive and the close deadline
      are timers of the event loop, cancelled when the connection ends.
    """

    __slots__ = (
        "_close_deadline",
        "_closed",
        "_close_timeout",
        "_dead",
        "_drained",
        "_failure",
        "_fragment_size",
        "_fragment_type",
        "_fragments",
        "_high",
        "_loop",
        "_low",
        "_max_size",
        "_messages",
        "_paused",
        "_ping_handle",
        "_ping_interval",
        "_ping_timeout",
        "_pong_deadline",
        "_rcvd",
        "_rcvd_then_sent",
        "_ready",
        "_reaped",
        "_sent",
        "_sock",
        "_tr",
        "_waiter",
        "_ws",
    )

    def __init__(
        self,
        *,
        max_size: int | None,
        max_queue: tuple[int | None, int | None] | int | None,
        ping_interval: float | None,
        ping_timeout: float | None,
        close_timeout: float | None,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._ws: Any = None  # picows.WSTransport, once the handshake is done
        self._tr: Any = None  # the asyncio transport under it
        self._sock: socket.socket | None = None  # until the handshake is done, to cut a cancelled attempt
        self._messages: deque[str | bytes] = deque()
        self._waiter: asyncio.Future[None] | None = None  # the recv() blocked on an empty buffer
        self._high, self._low = _water_marks(max_queue)
        self._paused = False
        # A complete text/binary frame can go straight to the buffer: no fragmented
        # message is being assembled and the connection has not failed. One flag,
        # so that the common frame costs one attribute test.
        self._ready = True
        self._dead = False  # failed by us, or the server's close frame came: later frames are ignored
        self._reaped = False
        self._fragments: list[bytes] = []
        self._fragment_type: Any = None
        self._fragment_size = 0
        self._max_size = sys.maxsize if max_size is None else max_size
        self._ping_interval = ping_interval
        self._ping_timeout = ping_timeout
        self._close_timeout = close_timeout
        self._ping_handle: asyncio.TimerHandle | None = None
        self._pong_deadline: asyncio.TimerHandle | None = None
        self._close_deadline: asyncio.TimerHandle | None = None
        self._rcvd: Close | None = None
        self._sent: Close | None = None
        self._rcvd_then_sent: bool | None = None
        self._failure: BaseException | None = None
        self._drained: asyncio.Future[None] | None = None  # set while the write buffer is above its high-water mark
        self._closed: asyncio.Future[None] = self._loop.create_future()

    # -- what the client uses --------------------------------------------------------------

    async def recv(self) -> str | bytes:
        """Return the next message: a text frame as ``str``, a binary one as ``bytes``.

        Returns at once, without suspending, while messages are buffered.
        Cancelling it is safe: the next call returns the message this one would
        have returned.

        Raises:
            ConnectionClosedOK: the connection closed normally (close codes
                1000/1001 both ways), after every message received was returned.
            ConnectionClosedError: it closed otherwise (an error code, or no
                close frame: the TCP connection broke or was aborted).
            ConcurrencyError: another coroutine is already waiting in ``recv``.
        """
        messages = self._messages
        if messages:
            message = messages.popleft()
            if self._paused and len(messages) <= self._low:
                self._resume_reading()
            return message
        return await self._recv_wait()

    async def _recv_wait(self) -> str | bytes:
        messages = self._messages
        while not messages:
            if self._closed.done():
                await self._reap()
                raise self._close_exc()
            if self._waiter is not None:
                raise ConcurrencyError("recv: another coroutine is already waiting for the next message")
            waiter = self._loop.create_future()
            self._waiter = waiter
            try:
                await waiter
            finally:
                self._waiter = None
        message = messages.popleft()
        if self._paused and len(messages) <= self._low:
            self._resume_reading()
        return message

    async def send(self, message: str | bytes | bytearray | memoryview) -> None:
        """Send ``message``: ``str`` as a text frame, bytes-like as a binary frame.

        The frame is written at once; this waits only while the socket's write
        buffer is above its high-water mark (a server that does not read).

        Raises:
            ConnectionClosed: the connection is closing or closed (after it closed).
            TypeError: ``message`` is neither ``str`` nor bytes-like.
        """
        ws = self._ws
        if ws is None or ws.is_close_frame_sent or self._rcvd is not None or self._closed.done():
            await self.wait_closed()
            raise self._close_exc()
        if isinstance(message, str):
            ws.send(_TEXT, message)
        elif isinstance(message, (bytes, bytearray, memoryview)):
            ws.send(_BINARY, message)
        else:
            raise TypeError(
                f"send: message must be str or bytes-like, got {type(message).__name__} {message!r:.60}"
            )
        drained = self._drained
        if drained is not None:
            await asyncio.shield(drained)
            if self._closed.done():
                raise self._close_exc()

    async def close(self, code: int = CloseCode.NORMAL_CLOSURE, reason: str = "") -> None:
        """Send a close frame with ``code`` and ``reason``, and wait for the connection to end.

        Returns when the server has answered and closed the TCP connection, or
        after ``close_timeout`` seconds, when the connection is dropped.
        Idempotent: once a close frame went either way, it only waits.
        Cancelling it is safe: the close goes on, bounded by ``close_timeout``.

        Raises:
            ValueError: ``code`` may not be sent in a close frame, or ``reason``
                is longer than 123 bytes in UTF-8.
        """
        if code not in EXTERNAL_CLOSE_CODES and not 3000 <= code <= 4999:
            raise ValueError(f"close: code {code!r} cannot be sent in a close frame; use 1000-1003, 1007-1014 "
                             "or 3000-4999")
        if len(reason.encode()) > 123:
            raise ValueError(f"close: reason must fit in 123 bytes of UTF-8, got {len(reason.encode())}")
        ws = self._ws
        if ws is not None and not self._closed.done():
            if not ws.is_close_frame_sent and self._rcvd is None:
                self._send_close(code, reason)
            # The server's answer may sit behind data we stopped reading for backpressure.
            self._resume_reading()
        await self.wait_closed()

    async def wait_closed(self) -> None:
        """Wait until the TCP connection is closed. Cancelling it is safe."""
        await asyncio.shield(self._closed)
        await self._reap()

    @property
    def transport(self) -> asyncio.Transport:
        """The asyncio transport under the connection; ``transport.abort()`` drops it at once."""
        if self._tr is None:
            raise RuntimeError(f"transport: {_NOT_YET}")
        return self._tr  # type: ignore[no-any-return]

    @property
    def state(self) -> State:
        """``websockets.protocol.State``: ``CONNECTING``, ``OPEN``, ``CLOSING`` or ``CLOSED``."""
        if self._closed.done():
            return State.CLOSED
        if self._ws is None:
            return State.CONNECTING
        if self._ws.is_close_frame_sent or self._rcvd is not None:
            return State.CLOSING
        return State.OPEN

    @property
    def close_code(self) -> int | None:
        """The close code received; 1006 if the connection closed without one; None while it is open."""
        if not self._closed.done():
            return None
        return CloseCode.ABNORMAL_CLOSURE if self._rcvd is None else self._rcvd.code

    @property
    def close_reason(self) -> str | None:
        """The close reason received; "" if none; None while the connection is open."""
        if not self._closed.done():
            return None
        return "" if self._rcvd is None else self._rcvd.reason

    @property
    def request(self) -> Request | None:
        """The handshake request sent (path and headers), as a ``websockets`` ``Request``."""
        if self._ws is None or self._ws.request is None:
            return None
        request = self._ws.request
        return Request(request.path.decode("ascii", "surrogateescape"), Headers(request.headers.items()))

    @property
    def response(self) -> Response | None:
        """The handshake response received (status and headers), as a ``websockets`` ``Response``."""
        if self._ws is None or self._ws.response is None:
            return None
        response = self._ws.response
        return Response(int(response.status), response.status.phrase, Headers(response.headers.items()),
                        response.body or b"")

    @property
    def local_address(self) -> Any:
        """The local socket address (``(host, port)`` for IPv4)."""
        return self.transport.get_extra_info("sockname")

    @property
    def remote_address(self) -> Any:
        """The server's socket address (``(host, port)`` for IPv4)."""
        return self.transport.get_extra_info("peername")

    async def __aiter__(self) -> AsyncIterator[str | bytes]:
        """Iterate over messages until the connection closes: quietly if normally, else raising."""
        try:
            while True:
                yield await self.recv()
        except ConnectionClosedOK:
            return

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"<PicowsConnection {self.state.name} queued={len(self._messages)}>"

    # -- picows callbacks (never raise: picows would turn that into a 1011 close) ----------

    def on_ws_connected(self, transport: Any) -> None:
        self._ws = transport
        self._tr = transport.underlying_transport
        self._sock = None
        if self._ping_interval is not None:
            self._ping_handle = self._loop.call_later(self._ping_interval, self._keepalive)

    def on_ws_frame(self, transport: Any, frame: Any) -> None:
        # The hot path: one complete text or binary frame.
        if self._ready and frame.fin:
            msg_type = frame.msg_type
            if msg_type is _TEXT:
                try:
                    message: str | bytes = frame.get_payload_as_utf8_text()
                except UnicodeDecodeError:
                    self._fail(CloseCode.INVALID_DATA, "invalid UTF-8 in a text frame")
                    return
            elif msg_type is _BINARY:
                message = frame.get_payload_as_bytes()
            else:
                self._control_frame(msg_type, frame)
                return
            messages = self._messages
            messages.append(message)
            waiter = self._waiter
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
            if len(messages) >= self._high and not self._paused:
                self._pause_reading()
            return
        self._other_frame(frame)

    def on_ws_disconnected(self, transport: Any) -> None:
        # picows itself sends the close frame when its parser fails (a frame over
        # max_size: 1009, a protocol error: 1002); take what went out from it.
        handshake = transport.close_handshake
        if self._sent is None and handshake is not None and handshake.sent is not None:
            self._sent = Close(int(handshake.sent.code), handshake.sent.reason or "")
            if self._rcvd is not None:
                self._rcvd_then_sent = True
        for handle in (self._ping_handle, self._pong_deadline, self._close_deadline):
            if handle is not None:
                handle.cancel()
        self._ping_handle = self._pong_deadline = self._close_deadline = None
        self._ready = False
        self._paused = False
        if not self._closed.done():
            self._closed.set_result(None)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        drained, self._drained = self._drained, None
        if drained is not None and not drained.done():
            drained.set_result(None)

    def pause_writing(self) -> None:
        if self._drained is None:
            self._drained = self._loop.create_future()

    def resume_writing(self) -> None:
        drained, self._drained = self._drained, None
        if drained is not None and not drained.done():
            drained.set_result(None)

    # -- the rest of the protocol ----------------------------------------------------------

    def _other_frame(self, frame: Any) -> None:
        """Every frame but a complete text/binary one while nothing is being assembled."""
        if self._closed.done():
            return
        msg_type = frame.msg_type
        if self._dead:
            # After a failure only the server's answering close frame still counts.
            if msg_type is _CLOSE and self._rcvd is None:
                self._control_frame(msg_type, frame)
            return
        if msg_type is _TEXT or msg_type is _BINARY:
            if self._fragment_type is not None:
                self._fail(CloseCode.PROTOCOL_ERROR, "a new message began before the fragmented one ended")
                return
            # The first fragment of a message (FIN clear).
            self._fragment_type = msg_type
            self._ready = False
            self._add_fragment(frame)
        elif msg_type is _CONTINUATION:
            if self._fragment_type is None:
                self._fail(CloseCode.PROTOCOL_ERROR, "a continuation frame without a message to continue")
                return
            if self._add_fragment(frame) and frame.fin:
                self._end_message()
        else:
            self._control_frame(msg_type, frame)

    def _add_fragment(self, frame: Any) -> bool:
        self._fragment_size += frame.payload_size
        if self._fragment_size > self._max_size:
            self._fail(CloseCode.MESSAGE_TOO_BIG,
                       f"message over {self._max_size} bytes (max_size) in fragments")
            return False
        self._fragments.append(frame.get_payload_as_bytes())
        return True

    def _end_message(self) -> None:
        payload = b"".join(self._fragments)
        is_text = self._fragment_type is _TEXT
        self._fragments = []
        self._fragment_type = None
        self._fragment_size = 0
        if is_text:
            try:
                message: str | bytes = payload.decode()
            except UnicodeDecodeError:
                self._fail(CloseCode.INVALID_DATA, "invalid UTF-8 in a text message")
                return
        else:
            message = payload
        self._ready = True
        self._messages.append(message)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        if len(self._messages) >= self._high and not self._paused:
            self._pause_reading()

    def _control_frame(self, msg_type: Any, frame: Any) -> None:
        if msg_type is _PONG:
            # Any pong shows the server is alive; a pong we did not ask for is allowed too.
            if self._pong_deadline is not None:
                self._pong_deadline.cancel()
                self._pong_deadline = None
        elif msg_type is _CLOSE:
            payload = frame.get_payload_as_bytes()
            if len(payload) >= 2:
                # picows has checked the code and the UTF-8 of the reason already.
                rcvd = Close(int.from_bytes(payload[:2], "big"), payload[2:].decode())
            else:
                rcvd = Close(CloseCode.NO_STATUS_RCVD, "")
            self._rcvd = rcvd
            # Nothing may follow a close frame.
            self._ready = False
            self._dead = True
            if not self._ws.is_close_frame_sent:
                # Echo it, as RFC 6455 asks (and websockets does), then let the server
                # close the TCP connection; the deadline covers a server that does not.
                if len(payload) >= 2:
                    self._send_close(rcvd.code, rcvd.reason)
                else:
                    self._ws.send(_CLOSE, b"")
                    self._note_sent(Close(CloseCode.NO_STATUS_RCVD, ""))
            elif self._rcvd_then_sent is None and self._sent is not None:
                self._rcvd_then_sent = False
        # A ping never gets here: picows answers it (enable_auto_pong).

    def _send_close(self, code: int, reason: str) -> None:
        self._ws.send_close(code, reason.encode())
        self._note_sent(Close(code, reason))

    def _note_sent(self, sent: Close) -> None:
        self._sent = sent
        if self._rcvd is not None:
            self._rcvd_then_sent = True
        if self._close_timeout is not None and self._close_deadline is None:
            self._close_deadline = self._loop.call_later(self._close_timeout, self._close_timed_out)

    def _failed_by_picows(self) -> None:
        self._ready = False
        self._dead = True
        self._fragments = []
        self._fragment_type = None
        sent = self._ws.close_handshake.sent
        self._note_sent(Close(int(sent.code), sent.reason or ""))

    def _fail(self, code: int, reason: str) -> None:
        """Fail the connection as websockets does: send a close frame with ``code``, then end TCP."""
        self._ready = False
        self._dead = True
        self._fragments = []
        self._fragment_type = None
        if not self._ws.is_close_frame_sent:
            self._send_close(code, reason)
        # A graceful close writes the close frame out first; we read nothing more.
        self._tr.close()

    def _close_timed_out(self) -> None:
        self._close_deadline = None
        self._tr.abort()

    def _keepalive(self) -> None:
        self._ping_handle = None
        if self._closed.done() or self.state is not State.OPEN:
            return
        if self._pong_deadline is None:
            self._ws.send_ping(b"")
            if self._ping_timeout is not None:
                self._pong_deadline = self._loop.call_later(self._ping_timeout, self._pong_timed_out)
        assert self._ping_interval is not None
        self._ping_handle = self._loop.call_later(self._ping_interval, self._keepalive)

    def _pong_timed_out(self) -> None:
        """No pong within ping_timeout: the server or the path to it is gone (websockets closes with 1011)."""
        self._pong_deadline = None
        if not self._ws.is_close_frame_sent:
            self._send_close(CloseCode.INTERNAL_ERROR, "keepalive ping timeout")
        self._tr.abort()

    def _pause_reading(self) -> None:
        self._paused = True
        self._tr.pause_reading()

    def _resume_reading(self) -> None:
        if self._paused:
            self._paused = False
            if not self._tr.is_closing():
                self._tr.resume_reading()

    async def _reap(self) -> None:
        """Collect what picows holds about a failure of ours (a protocol error), so nothing is left unretrieved."""
        if self._ws is None or self._reaped:
            return
        self._reaped = True
        try:
            await self._ws.wait_disconnected()
        except Exception as exc:  # picows hands back the local error that ended the connection; keep it as the cause
            self._failure = exc

    def _close_exc(self) -> ConnectionClosed:
        rcvd, sent = self._rcvd, self._sent
        if rcvd is not None and sent is not None:
            ok = rcvd.code in OK_CLOSE_CODES and sent.code in OK_CLOSE_CODES
            rcvd_then_sent = bool(self._rcvd_then_sent)
        else:
            ok = False
            rcvd_then_sent = None
        exc = (ConnectionClosedOK if ok else ConnectionClosedError)(rcvd, sent, rcvd_then_sent)
        if self._failure is not None:
            exc.__cause__ = self._failure
        return exc


def _water_marks(max_queue: tuple[int | None, int | None] | int | None) -> tuple[int, int]:
    if max_queue is None:
        return sys.maxsize, sys.maxsize
    high, low = max_queue if isinstance(max_queue, tuple) else (max_queue, None)
    if high is None:
        return sys.maxsize, sys.maxsize
    return high, high // 4 if low is None else low


async def picows_connect(
    url: str,
    *,
    # Handshake
    additional_headers: HeadersLike | None = None,
    extra_headers: HeadersLike | None = None,
    user_agent_header: str | None = _USER_AGENT,
    # TLS
    ssl: ssl_module.SSLContext | None = None,
    server_hostname: str | None = None,
    # Timeouts
    open_timeout: float | None = DEFAULT_OPEN_TIMEOUT,
    ping_interval: float | None = DEFAULT_PING_INTERVAL,
    ping_timeout: float | None = DEFAULT_PING_TIMEOUT,
    close_timeout: float | None = DEFAULT_CLOSE_TIMEOUT,
    # Limits
    max_size: int | None = DEFAULT_MAX_SIZE,
    max_queue: int | tuple[int | None, int | None] | None = DEFAULT_MAX_QUEUE,
    read_size: int = DEFAULT_READ_SIZE,
) -> PicowsConnection:
    """Open a websocket connection with picows; return it once the handshake is done.

    The options mean what they mean for ``websockets.connect`` and have its
    defaults, so a ``_create_ws`` switches transports by changing the function
    it calls.

    Args:
        url: ``ws://`` or ``wss://`` URL.
        additional_headers: Extra request headers (a mapping or ``(name, value)``
            pairs). ``extra_headers`` is accepted as a synonym (picows' and older
            websockets' name); give one or the other.
        extra_headers: See ``additional_headers``.
        user_agent_header: ``User-Agent`` sent unless the headers carry one;
            None sends none.
        ssl: TLS context for ``wss://`` (default: the system's trusted CAs).
        server_hostname: Name to check the server's certificate against
            (default: the URL's host).
        open_timeout: Seconds for TCP connect, TLS and handshake together; None
            waits for ever.
        ping_interval: Seconds between keepalive pings; None sends none.
        ping_timeout: Seconds to wait for a pong before failing the connection
            (close 1011, then drop); None waits for ever.
        close_timeout: Seconds to wait for the server to finish a closing
            handshake before dropping the connection; None waits for ever.
        max_size: Largest message accepted, in bytes; a larger one fails the
            connection with close code 1009. None for no limit.
        max_queue: High-water mark of the receive buffer, in messages, or a
            ``(high, low)`` pair (low defaults to high // 4). Above it the
            socket is not read until ``recv`` has brought the buffer down to
            the low mark. None for no limit.
        read_size: Most bytes taken from the socket at once (see the module's
            docstring); picows grows its buffer to this while reads fill it.

    Raises:
        ImportError: picows is not installed.
        ValueError, TypeError: a bad argument, named in the message.
        websockets.exceptions.InvalidURI: ``url`` is not a websocket URL.
        websockets.exceptions.InvalidStatus: the server refused the handshake
            with an HTTP status (``exc.response`` holds the status, headers and body).
        websockets.exceptions.InvalidHandshake: any other bad handshake response
            (``InvalidMessage``, ``InvalidHeader``, ``InvalidUpgrade``).
        TimeoutError: no connection within ``open_timeout`` seconds.
        OSError: the TCP connection or TLS failed.

    Cancelling it is safe: a connection being opened is closed.
    """
    if picows is None:
        raise ImportError(
            "picows_connect needs picows, a compiled websocket client: pip install 'async_ws_stream[fast]' "
            "(or pip install picows), or use websockets.connect"
        )
    headers = _request_headers(additional_headers, extra_headers, user_agent_header)
    for option, value in (("open_timeout", open_timeout), ("ping_interval", ping_interval),
                          ("ping_timeout", ping_timeout), ("close_timeout", close_timeout)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or not value > 0):
            raise ValueError(f"picows_connect: {option} must be a number > 0 or None, got {value!r}")
    if max_size is not None and (isinstance(max_size, bool) or not isinstance(max_size, int) or max_size < 1):
        raise ValueError(f"picows_connect: max_size must be an int >= 1 or None, got {max_size!r}")
    _check_read_size("picows_connect", read_size)
    high, low = _water_marks(max_queue)
    if isinstance(high, bool) or not isinstance(high, int) or not isinstance(low, int) or not 0 <= low <= high \
            or high < 1:
        raise ValueError(f"picows_connect: max_queue must be an int >= 1, a (high, low) pair with "
                         f"0 <= low <= high, or None; got {max_queue!r}")
    secure = url[:6].lower() == "wss://"
    if not secure and ssl is not None:
        raise ValueError("picows_connect: ssl was given for a ws:// URL; use wss:// to enable TLS")
    if not secure and server_hostname is not None:
        raise ValueError("picows_connect: server_hostname was given for a ws:// URL; it only applies to wss://")

    conn = PicowsConnection(max_size=max_size, max_queue=max_queue, ping_interval=ping_interval,
                            ping_timeout=ping_timeout, close_timeout=close_timeout)

    async def open_socket(target: Any) -> socket.socket:
        # We make the socket so that a cancelled or timed-out attempt can be cut
        # short: picows gives nothing back until the handshake is done.
        loop = asyncio.get_running_loop()
        infos = _literal_address(target.host, target.port) or await loop.getaddrinfo(
            target.host, target.port, type=socket.SOCK_STREAM
        )
        errors: list[OSError] = []
        for family, type_, proto, _, address in infos:
            sock = socket.socket(family, type_, proto)
            try:
                sock.setblocking(False)
                await loop.sock_connect(sock, address)
            except OSError as exc:
                sock.close()
                errors.append(exc)
                continue
            except BaseException:
                sock.close()
                raise
            conn._sock = sock
            return sock
        if len(errors) == 1:
            raise errors[0]
        raise OSError(f"cannot connect to {target.host}:{target.port}: " + "; ".join(map(str, errors)))

    options: dict[str, Any] = {}
    if server_hostname is not None:
        options["server_hostname"] = server_hostname
    try:
        async with asyncio.timeout(open_timeout):
            ws, listener = await picows.ws_connect(
                lambda: conn,
                url,
                ssl_context=ssl,
                socket_factory=open_socket,
                websocket_handshake_timeout=open_timeout,
                enable_auto_ping=False,  # our keepalive runs on timers, not in a task of picows
                enable_auto_pong=True,
                max_frame_size=sys.maxsize if max_size is None else max_size,
                extra_headers=headers,
                max_redirects=0,
                **options,
            )
    except picows.WSInvalidURL as exc:
        raise InvalidURI(url, str(exc)) from exc
    except picows.WSInvalidStatusError as exc:
        raise InvalidStatus(_response(exc)) from exc
    except picows.WSInvalidUpgradeError as exc:
        raise InvalidUpgrade(exc.name, exc.value) from exc
    except picows.WSInvalidHeaderError as exc:
        raise InvalidHeader(exc.name, exc.value) from exc
    except picows.WSHandshakeError as exc:
        raise InvalidMessage(f"invalid handshake response: {exc}") from exc
    except BaseException:
        _cut(conn)
        raise
    if listener is None:
        # picows returns no listener when the TCP connection ended before the response.
        raise InvalidMessage("did not receive a valid HTTP response: the connection closed during the handshake")
    transport = conn._tr
    transport.set_protocol(_ReadGuard(transport.get_protocol(), conn, read_size))
    return conn


async def websockets_connect(uri: str, *, read_size: int = DEFAULT_READ_SIZE, **options: Any) -> ClientConnection:
    """Open a connection with ``websockets.connect(uri, **options)``, reading up to ``read_size`` bytes at once.

    The connection is websockets' own ``ClientConnection``, with every option
    and behaviour of ``websockets.connect``; only the size of a socket read
    changes (see the module's docstring). Over TLS (``wss://``) asyncio's TLS
    layer reads 256 KiB at a time whatever the size asked, so there the
    connection is left exactly as websockets made it.

    Raises:
        ValueError: ``read_size`` is not an int >= 1.
        Whatever ``websockets.connect`` raises.
    """
    _check_read_size("websockets_connect", read_size)
    ws = await connect(uri, **options)
    transport = ws.transport
    if transport.get_extra_info("sslcontext") is None and transport.get_protocol() is ws:
        transport.set_protocol(_LargeReads(ws, read_size))
    return ws


def _check_read_size(where: str, read_size: object) -> None:
    if isinstance(read_size, bool) or not isinstance(read_size, int) or read_size < 1:
        raise ValueError(f"{where}: read_size must be an int >= 1 (bytes per socket read), got {read_size!r}")


class _Interposed(asyncio.BufferedProtocol):
    """Stands between an asyncio transport and the protocol it fed (``inner``), forwarding what it does not change.

    The subclasses decide what a read is; closing, end of file and write flow
    control pass through untouched.
    """

    __slots__ = ("_inner", "_limit")

    def __init__(self, inner: Any, limit: int) -> None:
        self._inner = inner
        self._limit = limit

    def eof_received(self) -> bool | None:
        keep_open: bool | None = self._inner.eof_received()
        return keep_open

    def connection_lost(self, exc: Exception | None) -> None:
        self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()


class _LargeReads(_Interposed):
    """Stands between asyncio's socket transport and a websockets connection, to read more at once.

    A plain ``asyncio.Protocol`` (as websockets' connection is) gets what the
    transport reads, at most 256 KiB; a ``BufferedProtocol`` lends the buffer,
    so its size is ours. The buffer starts at 256 KiB and doubles while reads
    fill it, up to ``limit``: a quiet connection never holds more. Each read
    reaches the connection as the ``bytes`` it would have had: one copy per
    read, not per frame.
    """

    __slots__ = ("_view",)

    def __init__(self, conn: ClientConnection, limit: int) -> None:
        super().__init__(conn, limit)
        self._view = memoryview(bytearray(min(limit, _ASYNCIO_READ_SIZE)))

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._view

    def buffer_updated(self, nbytes: int) -> None:
        view = self._view
        self._inner.data_received(view[:nbytes].tobytes())
        if nbytes == len(view) < self._limit:
            self._view = memoryview(bytearray(min(self._limit, 2 * nbytes)))


class _ReadGuard(_Interposed):
    """Stands between the transport and picows' protocol: caps each read, and notices picows failing.

    Capping each read at ``limit`` bytes is what makes the receive buffer's
    high-water mark hold within one read. When picows' parser rejects a frame
    (over max_size: 1009; a protocol error: 1002) it sends the close frame itself
    but keeps parsing what follows, and would deliver the rejected frame with
    the next read; once it has failed, the connection takes no more frames.
    Costs a few calls per read, not per frame.
    """

    __slots__ = ("_conn",)

    def __init__(self, protocol: Any, conn: PicowsConnection, limit: int) -> None:
        super().__init__(protocol, limit)
        self._conn = conn

    def get_buffer(self, sizehint: int) -> Any:
        buffer = self._inner.get_buffer(sizehint)
        return buffer if len(buffer) <= self._limit else buffer[: self._limit]

    def buffer_updated(self, nbytes: int) -> None:
        self._inner.buffer_updated(nbytes)
        conn = self._conn
        if conn._sent is None and conn._ws.is_close_frame_sent:
            conn._failed_by_picows()


def _literal_address(host: str, port: int) -> list[tuple[Any, Any, Any, str, Any]] | None:
    """The address of an IP literal, without the resolver (a thread round trip), as asyncio does."""
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None
    family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    return [(family, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (str(ip), port))]


def _cut(conn: PicowsConnection) -> None:
    """Drop a connection whose opening failed or was cancelled, whatever stage it reached."""
    if conn._tr is not None:
        conn._tr.abort()
    elif conn._sock is not None and conn._sock.fileno() != -1:
        # The transport is picows' own until the handshake is done; shutting the
        # socket down makes it read end-of-file and close itself.
        try:
            conn._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # not connected any more: nothing to cut
    conn._sock = None


def _request_headers(
    additional: HeadersLike | None, extra: HeadersLike | None, user_agent: str | None
) -> list[tuple[str, str]]:
    if additional is not None and extra is not None:
        raise TypeError("picows_connect: give additional_headers or extra_headers, not both (they are synonyms)")
    given = additional if additional is not None else extra
    if given is None:
        pairs: list[tuple[str, str]] = []
    elif isinstance(given, Headers):
        pairs = list(given.raw_items())
    elif isinstance(given, Mapping):
        pairs = list(given.items())
    elif isinstance(given, (str, bytes)):
        raise TypeError(f"picows_connect: headers must be a mapping or (name, value) pairs, got {given!r:.60}")
    else:
        pairs = [tuple(pair) for pair in given]  # type: ignore[misc]
    for pair in pairs:
        if len(pair) != 2 or not all(isinstance(part, str) for part in pair):
            raise TypeError(f"picows_connect: each header must be a (str, str) pair, got {pair!r:.60}")
    if user_agent is not None and not any(name.lower() == "user-agent" for name, _ in pairs):
        pairs.append(("User-Agent", user_agent))
    return pairs


def _response(exc: Any) -> Response:
    """A websockets Response from picows' refused handshake, for InvalidStatus (Retry-After, status)."""
    response = exc.response
    return Response(
        int(response.status),
        response.status.phrase,
        Headers(response.headers.items()),
        exc.raw_body or b"",
    )

