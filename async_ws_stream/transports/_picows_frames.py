"""The frame side of a picows connection: picows' callbacks, fragments, close frames, keepalive, flow control.

:class:`~async_ws_stream.transports.PicowsConnection` adds the websockets-like
surface (``recv``, ``send``, ``close``, the handshake objects) on top; this
module never awaits.
"""

from __future__ import annotations

import asyncio
import socket
import sys
from collections import deque
from typing import TYPE_CHECKING, Any, Final

from websockets.frames import Close, CloseCode

from ._common import water_marks

try:
    import picows  # type: ignore[import-not-found, unused-ignore]
except ImportError:  # the optional extra is not installed: picows_connect says how to get it
    picows = None  # type: ignore[assignment, unused-ignore]

__all__ = ["BINARY", "CLOSE", "PICOWS_AVAILABLE", "TEXT", "PicowsFrames", "picows"]

#: True when picows is importable, so :func:`picows_connect` can work.
PICOWS_AVAILABLE: Final = picows is not None

if picows is not None:
    _ListenerBase: Any = picows.WSListener
    TEXT: Any = picows.WSMsgType.TEXT
    BINARY: Any = picows.WSMsgType.BINARY
    _CONTINUATION: Any = picows.WSMsgType.CONTINUATION
    CLOSE: Any = picows.WSMsgType.CLOSE
    _PONG: Any = picows.WSMsgType.PONG
else:
    _ListenerBase = object
    TEXT = BINARY = _CONTINUATION = CLOSE = _PONG = None

if TYPE_CHECKING:
    _ListenerBase = object


class PicowsFrames(_ListenerBase):  # type: ignore[misc]
    """A picows listener that turns frames into a bounded buffer of messages; the state behind PicowsConnection."""

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
        "_subprotocol",
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
        self._high, self._low = water_marks(max_queue)
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
        self._subprotocol: str | None = None  # the one the server chose, set by picows_connect


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
            if msg_type is TEXT:
                try:
                    message: str | bytes = frame.get_payload_as_utf8_text()
                except UnicodeDecodeError:
                    self._fail(CloseCode.INVALID_DATA, "invalid UTF-8 in a text frame")
                    return
            elif msg_type is BINARY:
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
            if msg_type is CLOSE and self._rcvd is None:
                self._control_frame(msg_type, frame)
            return
        if msg_type is TEXT or msg_type is BINARY:
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
        is_text = self._fragment_type is TEXT
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
        elif msg_type is CLOSE:
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
                    self._ws.send(CLOSE, b"")
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
        if self._closed.done() or self._ws.is_close_frame_sent or self._rcvd is not None:
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

