"""FeedServer's handshake faults (queued, consumed in arrival order) and its garbage frames."""

from __future__ import annotations

import asyncio
import http
import os
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass

from websockets.asyncio.server import ServerConnection
from websockets.http11 import Request, Response

from ._common import check_count, check_seconds

# One frame of each kind a broken feed sends: truncated JSON, plain text, an
# HTML error page. Sent in turn by send_garbage().
GARBAGE_TEXTS = (
    '{"e": "trade", "s": "BTCUSDT", "p": ',
    "not json at all",
    "<html><body>502 Bad Gateway</body></html>",
)


def garbage_blob() -> bytes:
    """A binary frame that is not UTF-8 either: 0xff never occurs in UTF-8, so even json.loads(bytes) fails."""
    return b"\xff" + os.urandom(15)


@dataclass(frozen=True, slots=True)
class _Refusal:
    status: int
    headers: tuple[tuple[str, str], ...]


class HandshakeFaults:
    """The queues behind ``refuse_next``, ``drop_next`` and ``delay_next_handshakes``."""

    def __init__(self) -> None:
        self._refusals: deque[_Refusal] = deque()
        self._delays: deque[float] = deque()
        self._drops = 0

    @property
    def pending(self) -> int:
        """Faults queued and not yet used."""
        return len(self._refusals) + len(self._delays) + self._drops

    def refuse(self, n: int, status: int, headers: Mapping[str, str] | None) -> None:
        """Queue ``n`` refusals; see :meth:`FeedServer.refuse_next`."""
        check_count("refuse_next", n)
        try:
            code = http.HTTPStatus(status)
        except ValueError:
            raise ValueError(f"refuse_next: status must be a known HTTP status code, got {status!r}") from None
        if code is http.HTTPStatus.SWITCHING_PROTOCOLS:
            raise ValueError("refuse_next: status 101 would accept the handshake; use 4xx or 5xx")
        refusal = _Refusal(code.value, tuple((str(k), str(v)) for k, v in (headers or {}).items()))
        self._refusals.extend([refusal] * n)

    def drop(self, n: int) -> None:
        """Queue ``n`` accept-then-drop faults; see :meth:`FeedServer.drop_next`."""
        self._drops += check_count("drop_next", n)

    def delay(self, n: int, seconds: float) -> None:
        """Queue ``n`` handshake delays; see :meth:`FeedServer.delay_next_handshakes`."""
        check_count("delay_next_handshakes", n)
        self._delays.extend([check_seconds("delay_next_handshakes", "seconds", seconds)] * n)

    def take_drop(self) -> bool:
        """Use one queued accept-then-drop, if there is one."""
        if not self._drops:
            return False
        self._drops -= 1
        return True

    async def process(self, conn: ServerConnection, request: Request, stopping: asyncio.Event) -> Response | None:
        """Apply the next delay and refusal to a handshake; None lets it go on.

        A set ``stopping`` cuts a delay short and refuses with 503.
        """
        if self._delays:
            seconds = self._delays.popleft()
            try:
                async with asyncio.timeout(seconds):
                    await stopping.wait()
            except TimeoutError:
                pass  # the delay ran out: the handshake goes on
        if stopping.is_set():
            return conn.respond(http.HTTPStatus.SERVICE_UNAVAILABLE, "FeedServer is stopping\n")
        if self._refusals:
            refusal = self._refusals.popleft()
            response = conn.respond(refusal.status, "Refused by FeedServer.refuse_next()\n")
            for name, value in refusal.headers:
                response.headers[name] = value
            return response
        return None
