"""The messages a connection has already received, taken without an ``await recv()`` each.

A websockets connection parses a whole socket read into frames at once and
queues them; ``recv()`` then hands them out one per ``await``, through three
coroutines (``recv``, the assembler's ``get``, its queue's ``get``) and a lock,
about a microsecond a message even when the frame is already there. The
receive loop needs one ``await`` per socket read, not per message: after each
``recv()``, it takes what is queued behind it with :func:`queued_reader`'s plain
function, until the queue is empty.

It reads websockets' internals (``Connection.recv_messages``, an ``Assembler``
whose ``frames`` is a ``SimpleQueue`` over a deque; stable from websockets 13
to 17), so it is feature-detected once per connection, and anything that is not
one whole text or binary frame is left to ``recv()``: fragments (which
``recv()`` reassembles), text that is not UTF-8 (which ``recv()`` answers by
closing with 1007), the end of the connection. ``tests/test_queued.py`` fails
loudly if the internals change shape; the fallback is the plain ``recv()`` loop.
A :class:`~._picows_conn.PicowsConnection` has ``recv_nowait()`` of its own.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from loguru import logger
from websockets.asyncio.connection import Connection
from websockets.frames import Opcode

from ._picows_conn import PicowsConnection

__all__ = ["nothing_queued", "queued_reader"]

_TEXT = Opcode.TEXT
_BINARY = Opcode.BINARY


def queued_reader(ws: object) -> Callable[[], str | bytes | None] | None:
    """A function that takes the next message websockets holds for ``ws``, or None; None if ``ws`` has no such queue.

    The function returns what ``ws.recv()`` would return now without waiting (a
    ``str`` for a text frame, ``bytes`` for a binary one), or None when the next
    message is not one whole frame that is already queued: then call
    ``recv()``. Call it only from the one task that reads ``ws``, between
    ``recv()`` calls.
    """
    if isinstance(ws, PicowsConnection):
        return ws.recv_nowait  # our own connection: its buffer is ours to read
    if not isinstance(ws, Connection):
        return None
    assembler = getattr(ws, "recv_messages", None)
    frames = getattr(assembler, "frames", None)
    queue = getattr(frames, "queue", None)
    resume = getattr(assembler, "maybe_resume", None)
    if not isinstance(queue, deque) or not callable(resume) or not hasattr(assembler, "get_in_progress"):
        logger.debug("websockets' receive queue is not where it was; reading with recv() alone")
        return None

    def take() -> str | bytes | None:
        if not queue:
            # websockets' flow control: read the socket again if the queue had paused it. Once
            # the queue is empty, not after every frame: the loop does not read while we take.
            resume()
            return None
        frame = queue[0]
        if not frame.fin:
            return None  # a fragment: recv() reassembles the message
        if frame.opcode is _TEXT:
            try:
                data: str | bytes = frame.data.decode()
            except UnicodeDecodeError:
                return None  # recv() closes the connection with 1007, as the protocol says
        elif frame.opcode is _BINARY:
            data = bytes(frame.data)
        else:
            return None
        queue.popleft()
        return data

    return take


def nothing_queued() -> None:
    """The reader of a connection with no queue to take from (another library's): always None."""
