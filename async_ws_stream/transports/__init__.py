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

Both connect functions take ``read_size``; :data:`DEFAULT_READ_SIZE` is 4 MiB. The
client's pump yields to woken consumers before their buffers fill, so a big read
cannot overflow a stream whose consumer keeps up; what it costs is memory (one
read's worth of messages) and, on a feed that outruns the client, the time to
parse one read before the first of its messages reaches a consumer.

Floods: a server that sends pings or tiny frames as fast as it can packs some
100,000 frames into 256 KiB, and a parser takes all of one read in one
callback. Both transports bound that: :func:`websockets_connect` (and
:func:`guard`, for a connection made with plain ``websockets.connect``) hands a
big read to websockets in slices and lets the event loop run between them;
``picows_connect`` makes its reads smaller after one that took too long or
brought too many messages. A failed attempt, whatever point it failed at,
leaves no socket, task or file descriptor behind, on either transport.

What picows does not do, and so this transport does not either:
permessage-deflate compression (websockets offers it by default; a server that
requires it will not work here), proxies and redirects.

Layout: ``_common`` (defaults, argument checks, the read-adapter base),
``_websockets`` (websockets_connect, guard), ``_queued`` (what the receive loop takes
from websockets' queue without an ``await`` per message), ``_picows_frames`` (picows'
callbacks and the frame state), ``_picows_conn`` (the websockets-like surface),
``_picows`` (picows_connect).
"""

from ._common import (
    DEFAULT_CLOSE_TIMEOUT,
    DEFAULT_MAX_QUEUE,
    DEFAULT_MAX_SIZE,
    DEFAULT_OPEN_TIMEOUT,
    DEFAULT_PING_INTERVAL,
    DEFAULT_PING_TIMEOUT,
    DEFAULT_READ_SIZE,
    DEFAULT_SLICE_SIZE,
    PARSE_BUDGET,
)
from ._picows import READ_MESSAGES, picows_connect
from ._picows_conn import PicowsConnection
from ._picows_frames import PICOWS_AVAILABLE
from ._websockets import guard, websockets_connect

__all__ = [
    "DEFAULT_CLOSE_TIMEOUT",
    "DEFAULT_MAX_QUEUE",
    "DEFAULT_MAX_SIZE",
    "DEFAULT_OPEN_TIMEOUT",
    "DEFAULT_PING_INTERVAL",
    "DEFAULT_PING_TIMEOUT",
    "DEFAULT_READ_SIZE",
    "DEFAULT_SLICE_SIZE",
    "PARSE_BUDGET",
    "PICOWS_AVAILABLE",
    "PicowsConnection",
    "READ_MESSAGES",
    "guard",
    "picows_connect",
    "websockets_connect",
]
