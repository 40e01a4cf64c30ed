"""async_ws_stream: one websocket connection, any number of filtered asyncio streams.

Subclass :class:`AsyncWsStream`, implement ``_create_ws``, ``_when2create_new_ws``
and ``_parse_raw_data``, then consume with ``stream_filter``, ``add_handler``,
``send``, ``request``, ``expect``/``wait_for``/``poll`` and ``exit``.

Logging goes through loguru under the name ``async_ws_stream`` and is disabled
by default; ``logger.enable("async_ws_stream")`` turns it on.

The rooms, one idea each (the README's "How it is built" says more)::

    _client.py        AsyncWsStream: start/exit, consumers, events, send, stats
    _hooks.py         the hooks a subclass implements, with their defaults
    _supervisor.py    one connection's life: connect with retry, serve, pump, recycle, watch, retire
    _pump.py          the hot path: the receive loops (read, parse, dispatch)
    _link.py          one open connection (Link), the WebSocket protocol it fits, the Gate senders wait on
    _backoff.py       pure: RetryPolicy and the delays; which failures are fatal
    _conversation.py  request, expect, wait_for, poll
    _shards.py        declared subscriptions over one supervisor per shard (_subscribing.py: the calls)
    _sending.py       send, wait_connected, present_ws: shard 0, the client's own connection
    _subscriptions.py pure: rate limits (send_rate, connect_rate), where topics go, message chunks
    _consumers.py     the registry of streams and handlers
    _streams.py       Stream (the consumer's handle: a message or a batch) over its Feed (buffer, overflow policy)
    _timed.py         the streams of an instrumented client, which time each message's wait
    _handlers.py      sync and async handlers
    _filters.py       pure: compiled filters, the plain definition of a match
    _dispatch.py      pure: the index that routes each message to its targets
    _shapes.py        pure: its shapes, filters of plain top-level equalities found with one lookup
    _sequences.py     pure: per-key sequence numbers, duplicate/gap verdicts, what a resync holds
    _sequencer.py     sequence tracking in a running client: Gap events, resync tasks
    _expect.py        Expectation, the awaitable behind every wait
    _lifecycle.py     the tasks a client owns, and how they stop at exit()
    _options.py       defaults and argument checks (TypeError for a type, ValueError for a range)
    _counters.py      the totals behind stats()
    metrics.py        instrument(): Prometheus export (extra 'prometheus')
    _events.py        the lifecycle events a bot watches (Connected, Disconnected, ...)
    _redact.py        log-safe text: URLs cut to host and port
    _scopes.py        the context a hook runs in: no conversations in _on_connect; streams a trigger owns
    _compat.py        the older package's spellings (_filters=, wait_enter_handing_ws, ...)
    threaded.py       start_in_thread's handle; _blocking.py its blocking streams
    transports/       websockets_connect, picows_connect
    testing/          FeedServer, FaultProxy, DepthFeed for tests
    broker/           NATS JetStream and Redis Streams sinks and sources
    _cli.py, _demo.py, __main__.py   the command line
"""

from loguru import logger

from ._client import AsyncWebsocketStreamInterface, AsyncWsStream
from ._events import (
    Closed,
    Connected,
    Disconnected,
    Event,
    Gap,
    GaveUp,
    Recycled,
    Recycling,
    Retrying,
)
from ._expect import Expectation
from ._shards import ShardInfo
from ._streams import Stream
from .exceptions import (
    Alarm,
    AsyncWsStreamError,
    ClientClosed,
    ConnectionLost,
    ConnectionRejected,
    RetriesExhausted,
    StreamOverflow,
    SubscribeError,
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
    "Closed",
    "Connected",
    "ConnectionLost",
    "ConnectionRejected",
    "Disconnected",
    "Event",
    "Expectation",
    "Gap",
    "GaveUp",
    "Recycled",
    "Recycling",
    "RetriesExhausted",
    "Retrying",
    "ShardInfo",
    "Stream",
    "StreamOverflow",
    "SubscribeError",
    "ThreadedClient",
    "Timeout",
    "__version__",
]



def _disable_logging_unless_enabled() -> None:
    """Turn the library's logs off (loguru's advice to libraries), unless the user turned them on first.

    ``logger.enable("async_ws_stream")`` called before this import must not be
    undone by it. loguru has no public way to ask whether a name is enabled, so
    this reads its activation list, and falls back to plain ``disable`` if that
    ever changes shape.
    """
    activation = getattr(getattr(logger, "_core", None), "activation_list", None)
    if isinstance(activation, list) and ("async_ws_stream.", True) in activation:
        return
    logger.disable("async_ws_stream")


_disable_logging_unless_enabled()
