"""Real servers on loopback, with faults on demand, for tests, examples and benchmarks.

:class:`FeedServer` runs a ``websockets`` server on ``127.0.0.1`` (a free port
by default) in the caller's event loop. It plays a market-data feed: it
broadcasts, answers JSON requests (``{"method": ..., "id": ...}``, or any
routing key and id key you configure), records everything clients send, and
breaks on demand the way real feeds break:

==========================  ====================================================
fault                       what the client sees
==========================  ====================================================
:meth:`~FeedServer.drop`    the TCP connection ends with no close frame
:meth:`~FeedServer.stall`   an open socket that sends nothing, not even a pong
``refuse_next``             the handshake answered with an HTTP error (503, 401)
``drop_next``               a handshake that succeeds, then an abrupt drop
``delay_next_handshakes``   a slow handshake
``send_garbage``            frames that are not JSON, and random binary frames
``close_all``               a clean close with a chosen close code (1008, 4001)
==========================  ====================================================

Every change of state wakes the ``wait_*`` methods, so a test synchronises on
events ("two handshakes accepted", "three frames received") and never sleeps.

Example::

    async with FeedServer() as server:
        async with websockets.asyncio.client.connect(server.url_for("/ws?streams=a")) as ws:
            await server.wait_connections(1)
            await server.broadcast({"e": "trade", "p": "1.5"})
            assert json.loads(await ws.recv()) == {"e": "trade", "p": "1.5"}

:class:`FaultProxy` sits between a client and any server (a FeedServer, a
real feed) and breaks the TCP stream: latency, jitter, bandwidth, 1-byte
writes, half-open connections, resets mid-frame or at accept, slow handshakes::

    async with FeedServer() as server, FaultProxy(server.url) as proxy:
        client = MyClient(proxy.url)
        proxy.set(write_size=1)                  # every byte in its own write
        proxy.set("to_client", black_hole=True)  # half-open: idle_timeout must catch it

:class:`DepthFeed` plays a Binance-style depth feed on a FeedServer: diff
events with update ids, a ``depth.snapshot`` route, gaps on demand
(:meth:`DepthFeed.skip`) and the true book to compare a client's against.

:class:`TopicFeed` plays a Binance-style combined-stream server on a
FeedServer: SUBSCRIBE / UNSUBSCRIBE / LIST_SUBSCRIPTIONS per connection,
topics in the handshake path, ``publish(topic, data)`` to the subscribers
only, and the venue's limits enforced and recorded as :class:`Violation`
(1024 topics per connection, 5 frames a second, 300 connects in 5 minutes)::

    async with FeedServer() as server:
        feed = TopicFeed(server)
        ...  # the client subscribes 3,000 topics over several connections
        await feed.wait_subscribed(topics)
        assert feed.violations == []

It sits on :meth:`FeedServer.add_observer`, the connection-aware extension
point: a :class:`ConnectionObserver` sees every handshake (and may refuse
it), every connection opened and closed, and every client frame with its
connection and arrival time before routing (and may answer it instead).

The servers belong to the event loop that started them and are not thread-safe.

The rooms: ``_server.py`` (FeedServer's public faults, routing and waits) on
``_base.py`` (its connections: lifecycle, sending, serving), ``_routes.py``
(which frames are requests and what the reply says), ``_faults.py``
(handshake faults, garbage), ``_proxy.py`` (FaultProxy) on ``_link.py``
(one proxied connection) and ``_proxy_faults.py`` (per-direction faults),
``_depth.py`` (DepthFeed), ``_topics.py`` (TopicFeed), ``_observers.py``
(the observer protocol), ``_common.py`` (checks, encoding, wake-ups).
"""

from ._base import OnConnect
from ._common import (
    DEFAULT_CLOSE_TIMEOUT,
    DEFAULT_MAX_SIZE,
    DEFAULT_PING_INTERVAL,
    DEFAULT_WAIT_TIMEOUT,
    Applied,
)
from ._depth import Book, DepthFeed, apply_depth_update, book_from_snapshot
from ._observers import ConnectionObserver
from ._proxy import FaultProxy
from ._proxy_faults import Direction, Directions, LinkFaults
from ._routes import (
    DEFAULT_ID_KEYS,
    ERROR_HANDLER_FAILED,
    ERROR_UNKNOWN_METHOD,
    Reply,
    RouteHandler,
    RouteName,
)
from ._server import FeedServer
from ._topics import ERROR_TOPIC_REFUSED, ERROR_TOPIC_REQUEST_INVALID, TopicFeed, Violation

__all__ = [
    "Applied",
    "Book",
    "ConnectionObserver",
    "DEFAULT_CLOSE_TIMEOUT",
    "DEFAULT_ID_KEYS",
    "DEFAULT_MAX_SIZE",
    "DEFAULT_PING_INTERVAL",
    "DEFAULT_WAIT_TIMEOUT",
    "DepthFeed",
    "Direction",
    "Directions",
    "ERROR_HANDLER_FAILED",
    "ERROR_TOPIC_REFUSED",
    "ERROR_TOPIC_REQUEST_INVALID",
    "ERROR_UNKNOWN_METHOD",
    "FaultProxy",
    "FeedServer",
    "LinkFaults",
    "OnConnect",
    "Reply",
    "RouteHandler",
    "RouteName",
    "TopicFeed",
    "Violation",
    "apply_depth_update",
    "book_from_snapshot",
]
