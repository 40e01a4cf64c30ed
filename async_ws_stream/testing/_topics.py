"""TopicFeed: a Binance-style combined-stream server on a FeedServer, with the venue's limits enforced.

Each connection has its own set of topics, changed by SUBSCRIBE and
UNSUBSCRIBE requests (or given in the handshake path), and the feed sends a
topic's messages only to the connections subscribed to it. Three rules of
Binance's public websocket API are played, with Binance's numbers as
defaults, and every breach is recorded in :attr:`TopicFeed.violations`, so a
test proves that a client never trips them.

The feed is a :class:`~async_ws_stream.testing.ConnectionObserver` of its
server, in a private adapter, so that its public namespace holds only what a
test calls.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

from loguru import logger
from websockets.asyncio.server import ServerConnection
from websockets.http11 import Request, Response

from ..exceptions import Timeout
from ._common import DEFAULT_WAIT_TIMEOUT, Frame
from ._observers import ConnectionObserver
from ._server import FeedServer

DEFAULT_MAX_TOPICS = 1024
"""Binance: at most 1024 streams on one connection."""
DEFAULT_MAX_MESSAGES = 5
"""Binance: at most 5 incoming messages a second on one connection ..."""
DEFAULT_PER = 1.0
"""... over this many seconds."""
DEFAULT_MAX_CONNECTS = 300
"""Binance: at most 300 connection attempts every 5 minutes per IP ..."""
DEFAULT_CONNECT_PER = 300.0
"""... over this many seconds."""

ERROR_TOPIC_REFUSED = 1
"""Error code of a refused SUBSCRIBE: over ``max_topics``, or a topic refused by :meth:`TopicFeed.refuse`."""
ERROR_TOPIC_REQUEST_INVALID = 2
"""Error code of a malformed request (no id, params not a list of strings), as Binance's "Invalid request"."""

TOPIC_METHODS = ("SUBSCRIBE", "UNSUBSCRIBE", "LIST_SUBSCRIPTIONS")
"""The requests a TopicFeed answers itself; every other frame goes on to the server's routes."""

_RATE_CLOSE_CODE = 1008  # policy violation, as Binance closes a connection that floods it


@dataclass(frozen=True, slots=True)
class Violation:
    """One breach of a TopicFeed rule.

    Attributes:
        connection: The connection number, or None for a handshake that was
            refused (it never got a number).
        rule: The name of the option that set the rule: ``"max_topics"``,
            ``"max_messages"`` or ``"max_connects"``.
        detail: What happened, in words (counts and limits).
    """

    connection: int | None
    rule: str
    detail: str


class _Connection:
    __slots__ = ("conn", "topics", "arrivals", "closing")

    def __init__(self, conn: ServerConnection, window: int) -> None:
        self.conn = conn
        self.topics: dict[str, None] = {}  # in subscription order, for publish_round
        self.arrivals: deque[float] = deque(maxlen=window)
        self.closing = False


def _check_limit(name: str, value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"TopicFeed: {name} must be an int >= 1 or None (no limit), got {value!r}")
    return value


def _check_window(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"TopicFeed: {name} must be a finite number of seconds > 0, got {value!r}")
    return float(value)


def _path_topics(path: str) -> list[str]:
    """The topics of a Binance combined-stream path, ``/stream?streams=a@trade/b@trade``."""
    topics: list[str] = []
    for value in parse_qs(urlsplit(path).query).get("streams", []):
        topics.extend(t for t in value.split("/") if t)
    return list(dict.fromkeys(topics))


class TopicFeed:
    """Per-connection topics on ``server``, Binance's subscription requests, and the venue's limits.

    **Requests** (text frames holding a JSON object whose ``"method"`` is
    ``"SUBSCRIBE"``, ``"UNSUBSCRIBE"`` or ``"LIST_SUBSCRIPTIONS"``) are
    answered by the feed; every other frame goes on to the server's routes
    as before:

    * ``{"method": "SUBSCRIBE", "params": [topic, ...], "id": n}`` adds the
      topics to that connection, ``"UNSUBSCRIBE"`` removes them (topics not
      subscribed are ignored); both answer ``{"result": null, "id": n}``.
    * ``{"method": "LIST_SUBSCRIPTIONS", "id": n}`` answers ``{"result":
      [topics, sorted], "id": n}``.
    * A refused request is answered ``{"error": {"code": c, "msg": text},
      "id": n}`` and changes nothing (all or nothing: a SUBSCRIBE with one
      bad topic adds none): code :data:`ERROR_TOPIC_REFUSED` for a
      SUBSCRIBE over ``max_topics`` or naming a topic given to
      :meth:`refuse`, :data:`ERROR_TOPIC_REQUEST_INVALID` for a request without an
      ``"id"`` (then ``"id": null``) or whose params are not a list of strings.

    Topics may also come in the handshake path, Binance style:
    ``/stream?streams=a@trade/b@trade`` (any path; the ``streams`` query
    parameter, split on ``/``) subscribes them when the connection opens. A
    path over ``max_topics``, or naming a refused topic, is answered with
    HTTP 400.

    **Rules** (None turns one off); each breach is appended to
    :attr:`violations` and logged:

    * ``max_topics``: a SUBSCRIBE (or a path) that would leave a connection
      with more distinct topics is refused as above.
    * ``max_messages`` per ``per`` seconds: at each data frame's arrival
      (the loop clock when the server reads it), the frames of that
      connection that arrived in the last ``per`` seconds, this one
      included, are counted (a frame at exactly ``per`` seconds ago is out
      of the window); above ``max_messages``, the frame is neither answered
      nor routed, and the connection is closed with code 1008 and a reason
      naming the rule. Every data frame counts (requests, data, garbage);
      control frames (pings, pongs) do not, since websockets answers them
      before the server sees them (Binance counts pings and pongs too).
    * ``max_connects`` per ``connect_per`` seconds: over the whole server
      (one IP on loopback), every handshake request counts, refused ones
      included (they are attempts), and one that would make more than
      ``max_connects`` in the window is answered with HTTP 429 and a
      ``Retry-After`` hint (whole seconds until an attempt would pass if
      no other came first). Refusals here come before the server's own queued
      handshake faults, which they do not consume.

    A connection's topics are forgotten when it closes. Create the feed
    before clients connect: a connection opened earlier has no path topics.
    Like its server, the feed belongs to one event loop.

    Args:
        server: The FeedServer to play on; the feed adds itself as an
            observer (see :meth:`FeedServer.add_observer`).
        max_topics: Most distinct topics on one connection.
        max_messages: Most data frames from one connection within ``per`` seconds.
        per: The sliding window of ``max_messages``, in seconds.
        max_connects: Most handshake requests within ``connect_per`` seconds.
        connect_per: The sliding window of ``max_connects``, in seconds.

    Raises:
        ValueError: If a limit is not an int >= 1 or None, or a window not
            a positive number of seconds.
    """

    def __init__(
        self,
        server: FeedServer,
        *,
        max_topics: int | None = DEFAULT_MAX_TOPICS,
        max_messages: int | None = DEFAULT_MAX_MESSAGES,
        per: float = DEFAULT_PER,
        max_connects: int | None = DEFAULT_MAX_CONNECTS,
        connect_per: float = DEFAULT_CONNECT_PER,
    ) -> None:
        self._server = server
        self._max_topics = _check_limit("max_topics", max_topics)
        self._max_messages = _check_limit("max_messages", max_messages)
        self._per = _check_window("per", per)
        self._max_connects = _check_limit("max_connects", max_connects)
        self._connect_per = _check_window("connect_per", connect_per)
        # Only the last limit + 1 arrivals can decide whether the limit is passed.
        self._window = (self._max_messages or 0) + 1
        self._attempts: deque[float] = deque(maxlen=(self._max_connects or 0) + 1)
        self._conns: dict[int, _Connection] = {}  # open connections, by number
        self._index: dict[str, dict[int, None]] = {}  # topic -> numbers of the connections carrying it
        self._refused: set[str] = set()
        self._rounds = 0

        self.violations: list[Violation] = []
        """Every breach of a rule, in order. A live list: read it, don't mutate it."""
        self.subscribe_frames: int = 0
        """SUBSCRIBE requests received, refused ones included (path topics are not requests)."""
        self.published: int = 0
        """Messages sent by :meth:`publish` and :meth:`publish_round` (one per connection reached)."""

        self._observer = _Observer(self)
        server.add_observer(self._observer)

    # Introspection

    def topics(self, connection: int) -> frozenset[str]:
        """The topics connection number ``connection`` carries now (empty once it closed).

        Raises:
            ValueError: If no connection ever had that number.
        """
        if isinstance(connection, bool) or not isinstance(connection, int) or not (
            1 <= connection <= self._server.connects
        ):
            raise ValueError(
                f"TopicFeed.topics: no connection number {connection!r}; numbers so far run 1..{self._server.connects}"
            )
        state = self._conns.get(connection)
        return frozenset(state.topics) if state is not None else frozenset()

    def subscribers(self, topic: str) -> list[int]:
        """The numbers of the open connections subscribed to ``topic``, ascending."""
        return sorted(self._index.get(topic, ()))

    def all_topics(self) -> frozenset[str]:
        """Every topic some open connection carries."""
        return frozenset(self._index)

    def refuse(self, *topics: str) -> None:
        """Answer every later SUBSCRIBE naming one of ``topics`` with an error, as for an unknown symbol.

        Subscriptions already made stay. A refusal is not a violation: the
        venue says no, the client broke no rule.

        Raises:
            TypeError: If a topic is not a str.
        """
        for topic in topics:
            if not isinstance(topic, str):
                raise TypeError(f"TopicFeed.refuse: topics are str, got {type(topic).__name__} {topic!r}")
        self._refused.update(topics)

    # Waiting

    async def wait_subscribed(self, topics: str | Iterable[str], *, timeout: float | None = DEFAULT_WAIT_TIMEOUT) -> None:
        """Return once every topic of ``topics`` (a str is one topic) is carried by some open connection.

        Raises:
            async_ws_stream.exceptions.Timeout: After ``timeout`` seconds,
                naming how many topics are missing and a few of them.
            RuntimeError: If the server stops first.

        Cancelling the wait is safe.
        """
        wanted = frozenset([topics] if isinstance(topics, str) else topics)
        try:
            await self._server.wait_until(lambda: all(t in self._index for t in wanted), timeout=timeout)
        except Timeout as exc:
            missing = sorted(t for t in wanted if t not in self._index)
            raise Timeout(
                f"wait_subscribed: {len(missing)} of {len(wanted)} topics not subscribed after {timeout} s, "
                f"such as {missing[:5]!r}"
            ) from exc

    # Publishing

    async def publish(self, topic: str, data: Any) -> int:
        """Send ``{"stream": topic, "data": data}`` to every open connection subscribed to ``topic``; return how many it reached.

        Connections are served in ascending number; each send waits for room
        in that connection's write buffer (a slow client slows the publisher),
        and stalled or closing connections are skipped.

        Raises:
            TypeError: If ``data`` is not JSON-serialisable.
        """
        numbers = list(self._index.get(topic, ()))
        if not numbers:
            return 0
        text = json.dumps({"stream": topic, "data": data}, separators=(",", ":"))
        reached = 0
        for number in sorted(numbers):
            if await self._send(number, text):
                reached += 1
        return reached

    async def publish_round(self, data_for: Callable[[str], Any] | None = None) -> int:
        """Send one message on every subscription: each open connection gets one per topic it carries.

        The data of ``topic`` is ``data_for(topic)``, called once per topic
        per round, or, without it, ``{"round": r}`` where r counts rounds
        from 1. Connections are served in ascending number, their topics in
        subscription order; backpressure and skipping are as in
        :meth:`publish`. The subscriptions are read when the round starts.

        Returns:
            The number of messages sent (one per connection and topic reached).

        Raises:
            TypeError: If some data is not JSON-serialisable.
        """
        self._rounds += 1
        default = {"round": self._rounds}
        texts: dict[str, str] = {}
        plan = [(number, list(state.topics)) for number, state in sorted(self._conns.items())]
        sent = tried = 0
        for number, topics in plan:
            for topic in topics:
                tried += 1
                text = texts.get(topic)
                if text is None:
                    data = default if data_for is None else data_for(topic)
                    text = texts[topic] = json.dumps({"stream": topic, "data": data}, separators=(",", ":"))
                if await self._send(number, text):
                    sent += 1
                if tried % 256 == 0:
                    # A send into a buffer with room does not yield; a big round
                    # would otherwise hold the loop for its whole length.
                    await asyncio.sleep(0)
        return sent

    async def _send(self, number: int, text: str) -> bool:
        state = self._conns.get(number)
        if state is None or state.closing:
            return False
        if await self._server.send_to(state.conn, text):
            self.published += 1
            return True
        return False

    # The rules, as the server's observer calls them

    def _handshake(self, conn: ServerConnection, request: Request) -> Response | None:
        if self._max_connects is not None:
            now = asyncio.get_running_loop().time()
            attempts = self._attempts
            while attempts and attempts[0] <= now - self._connect_per:
                attempts.popleft()
            attempts.append(now)
            if len(attempts) > self._max_connects:
                # Refused attempts count too, so the next one passes only once the
                # two oldest of these max_connects + 1 have left the window.
                retry = max(1, math.ceil(attempts[1] + self._connect_per - now))
                self._violate(
                    None, "max_connects",
                    f"more than {self._max_connects} handshakes within {self._connect_per:g} s; answered 429",
                )
                response = conn.respond(429, "Too many connection attempts (TopicFeed max_connects)\n")
                response.headers["Retry-After"] = str(retry)
                return response
        topics = _path_topics(request.path)
        refused = [t for t in topics if t in self._refused]
        if refused:
            return conn.respond(400, f"Refused streams: {', '.join(refused[:5])}\n")
        if self._max_topics is not None and len(topics) > self._max_topics:
            self._violate(None, "max_topics", f"{len(topics)} streams in the handshake path; the limit is {self._max_topics}")
            return conn.respond(400, f"Too many streams: {len(topics)} > {self._max_topics}\n")
        return None

    def _opened(self, number: int, conn: ServerConnection) -> None:
        state = self._conns[number] = _Connection(conn, self._window)
        path = conn.request.path if conn.request is not None else ""
        self._add(number, state, _path_topics(path))

    def _closed(self, number: int) -> None:
        state = self._conns.pop(number, None)
        if state is not None:
            self._remove(number, state, list(state.topics))

    async def _frame(self, number: int, conn: ServerConnection, frame: Frame, arrival: float) -> bool:
        state = self._conns.get(number)
        if state is None:  # opened before the feed was made
            state = self._conns[number] = _Connection(conn, self._window)
        if state.closing:
            return True  # frames read after the breach: the venue has hung up on them
        if self._max_messages is not None:
            arrivals = state.arrivals
            while arrivals and arrivals[0] <= arrival - self._per:
                arrivals.popleft()
            arrivals.append(arrival)
            if len(arrivals) > self._max_messages:
                state.closing = True
                self._violate(
                    number, "max_messages",
                    f"{len(arrivals)} frames within {self._per:g} s; the limit is {self._max_messages}; closed with 1008",
                )
                await conn.close(_RATE_CLOSE_CODE, f"max_messages: more than {self._max_messages} in {self._per:g} s")
                return True
        request = self._parse(frame)
        if request is None:
            return False
        reply = self._answer(number, state, request)
        await self._server.send_to(conn, json.dumps(reply, separators=(",", ":")))
        return True

    def _parse(self, frame: Frame) -> dict[str, Any] | None:
        # The cheap checks first: most frames a feed reads are not topic requests.
        if not isinstance(frame, str) or not frame.lstrip().startswith("{") or '"method"' not in frame:
            return None
        try:
            obj = json.loads(frame)
        except ValueError:
            return None
        if not isinstance(obj, dict) or obj.get("method") not in TOPIC_METHODS:
            return None
        return obj

    def _answer(self, number: int, state: _Connection, request: dict[str, Any]) -> dict[str, Any]:
        method = request["method"]
        if method == "SUBSCRIBE":
            self.subscribe_frames += 1
        if "id" not in request:
            return _error(None, ERROR_TOPIC_REQUEST_INVALID, "Invalid request: missing field `id`")
        rid = request["id"]
        if method == "LIST_SUBSCRIPTIONS":
            return {"result": sorted(state.topics), "id": rid}
        params = request.get("params")
        if not isinstance(params, list) or not all(isinstance(t, str) for t in params):
            return _error(rid, ERROR_TOPIC_REQUEST_INVALID, f"Invalid request: params must be a list of topic strings, got {params!r:.80}")
        if method == "UNSUBSCRIBE":
            self._remove(number, state, params)
            return {"result": None, "id": rid}
        refused = [t for t in params if t in self._refused]
        if refused:
            return _error(rid, ERROR_TOPIC_REFUSED, f"Invalid value: unknown stream {refused[0]!r}")
        new = [t for t in dict.fromkeys(params) if t not in state.topics]
        total = len(state.topics) + len(new)
        if self._max_topics is not None and total > self._max_topics:
            self._violate(
                number, "max_topics",
                f"SUBSCRIBE of {len(new)} new topics would make {total}; the limit is {self._max_topics}; refused",
            )
            return _error(rid, ERROR_TOPIC_REFUSED, f"Too many streams: {total} would exceed {self._max_topics}")
        self._add(number, state, new)
        return {"result": None, "id": rid}

    def _add(self, number: int, state: _Connection, topics: Iterable[str]) -> None:
        for topic in topics:
            state.topics[topic] = None
            self._index.setdefault(topic, {})[number] = None

    def _remove(self, number: int, state: _Connection, topics: Iterable[str]) -> None:
        for topic in topics:
            if topic in state.topics:
                del state.topics[topic]
                holders = self._index[topic]
                del holders[number]
                if not holders:
                    del self._index[topic]

    def _violate(self, number: int | None, rule: str, detail: str) -> None:
        self.violations.append(Violation(number, rule, detail))
        logger.warning("TopicFeed: {} broke {}: {}", f"connection {number}" if number is not None else "a handshake", rule, detail)


def _error(rid: Any, code: int, msg: str) -> dict[str, Any]:
    return {"error": {"code": code, "msg": msg}, "id": rid}


class _Observer(ConnectionObserver):
    """TopicFeed's seat on the server, so that the feed's own namespace stays what tests call."""

    def __init__(self, feed: TopicFeed) -> None:
        self._feed = feed

    def handshake(self, conn: ServerConnection, request: Request) -> Response | None:
        return self._feed._handshake(conn, request)

    def opened(self, number: int, conn: ServerConnection) -> None:
        self._feed._opened(number, conn)

    async def frame(self, number: int, conn: ServerConnection, frame: Frame, arrival: float) -> bool:
        return await self._feed._frame(number, conn, frame, arrival)

    def closed(self, number: int, conn: ServerConnection) -> None:
        self._feed._closed(number)
