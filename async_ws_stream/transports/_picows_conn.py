"""PicowsConnection: a picows connection driven like websockets' ``ClientConnection``.

picows (Cython, on PyPI, ``pip install 'async_ws_stream[fast]'``) parses frames
in a fraction of the time websockets takes; this class turns its frames into
what the client and a typical ``_on_connect`` expect of a websockets
connection: ``recv``/``send``/``close``, the same exceptions carrying the same
close frames, and the same handshake objects. :func:`picows_connect` makes it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Any, Self

from websockets.datastructures import Headers
from websockets.exceptions import (
    ConcurrencyError,
    ConnectionClosed,
    ConnectionClosedError,
    ConnectionClosedOK,
)
from websockets.frames import EXTERNAL_CLOSE_CODES, OK_CLOSE_CODES, CloseCode
from websockets.http11 import Request, Response
from websockets.protocol import State

from ._picows_frames import BINARY, TEXT, PicowsFrames

_NOT_YET = "the connection is not open yet"


class PicowsConnection(PicowsFrames):
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

    __slots__ = ()

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

    def recv_nowait(self) -> str | bytes | None:
        """Return the next buffered message, or None when none is buffered (then ``await recv()``).

        What a receive loop calls between ``recv()`` calls to take a whole
        read's messages without an ``await`` each. Never raises: the end of the
        connection is ``recv()``'s to report, after the last message.
        """
        messages = self._messages
        if not messages:
            return None
        message = messages.popleft()
        if self._paused and len(messages) <= self._low:
            self._resume_reading()
        return message

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
            ws.send(TEXT, message)
        elif isinstance(message, (bytes, bytearray, memoryview)):
            ws.send(BINARY, message)
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
    def subprotocol(self) -> str | None:
        """The subprotocol the server chose among those ``picows_connect`` offered; None if none."""
        return self._subprotocol

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

