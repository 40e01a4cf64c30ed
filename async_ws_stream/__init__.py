"""async_ws_stream: one websocket connection, any number of filtered asyncio streams.

Subclass :class:`AsyncWsStream`, implement ``_create_ws``, ``_when2create_new_ws``
and ``_parse_raw_data``, then consume with ``stream_filter``, ``add_handler``,
``send``, ``request``, ``expect``/``wait_for``/``poll`` and ``exit``.

Logging goes through loguru under the name ``async_ws_stream`` and is disabled
by default; ``logger.enable("async_ws_stream")`` turns it on.
"""

from loguru import logger

from ._client import AsyncWebsocketStreamInterface, AsyncWsStream
from ._expect import Expectation
from ._streams import Stream
from .exceptions import (
    Alarm,
    AsyncWsStreamError,
    ClientClosed,
    ConnectionLost,
    ConnectionRejected,
    RetriesExhausted,
    StreamOverflow,
    Timeout,
)
from .threaded import BlockingStream, ThreadedClient

__version__ = "0.1.0"

__all__ = [
    "Alarm",
    "AsyncWebsocketStreamInterface",
    "AsyncWsStream",
    "AsyncWsStreamError",
    "BlockingStream",
    "ClientClosed",
    "ConnectionLost",
    "ConnectionRejected",
    "Expectation",
    "RetriesExhausted",
    "Stream",
    "StreamOverflow",
    "ThreadedClient",
    "Timeout",
    "__version__",
]

logger.disable("async_ws_stream")
