"""Request routing for FeedServer: which frames are requests, which route answers, what the reply says.

Pure apart from awaiting a route's handler and its delay: no sockets here.
"""

from __future__ import annotations

import asyncio
import inspect
import json
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ._common import Frame, check_seconds

ERROR_UNKNOWN_METHOD = -32601  # JSON-RPC "method not found"
ERROR_HANDLER_FAILED = -32603  # JSON-RPC "internal error"

DEFAULT_ID_KEYS = ("id", "eid", "request_id")
"""The keys a request's id is looked for under, in this order (JSON-RPC/Binance, expectations, wsappy)."""

RouteHandler = Callable[[Any], Any]
"""A route: takes the request's params, returns the result (or an awaitable of it)."""

RouteName = str | tuple[Hashable, ...]
"""A route's name: the request's ``method``, or a tuple of values when routing on several keys."""


@dataclass(frozen=True, slots=True)
class Reply:
    """A route's return value that is the whole reply, instead of the default envelope.

    The server sends ``{id_key: id, **body}``: only the request's id is
    added. For example wsappy's answer to ``{"module": "entity", "method":
    "get", "request_id": 1, ...}`` is ``Reply({"event": "result", "module":
    "entity", "data": {"items": [...]}})``.

    Attributes:
        body: The reply's other fields; must be JSON-serialisable.
    """

    body: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Route:
    """One route: its handler, its reply delay and the id keys it echoes (None: the server's)."""

    handler: RouteHandler
    delay: float
    id_keys: tuple[str, ...] | None


@dataclass(frozen=True, slots=True)
class Call:
    """A request frame as the router understood it."""

    request: dict[str, Any]
    name: Any
    route: Route | None

    @property
    def delay(self) -> float:
        """Seconds the reply waits after the handler returned."""
        return self.route.delay if self.route is not None else 0.0


def _no_result(params: Any) -> None:
    """Answer a request with ``result: null``, as Binance answers SUBSCRIBE."""
    return None


def check_id_keys(where: str, id_keys: object) -> tuple[str, ...]:
    """Return ``id_keys`` as a tuple of key names; a single str is one key."""
    if isinstance(id_keys, str):
        return (id_keys,)
    if not isinstance(id_keys, (tuple, list)) or not all(isinstance(k, str) and k for k in id_keys):
        raise TypeError(f"{where}: id_keys must be a tuple of non-empty key names such as ('id',), got {id_keys!r}")
    return tuple(id_keys)


class Router:
    """Decides which frames are requests and builds their replies.

    A frame is a request when it is a text frame holding a JSON object with
    every ``route_on`` key. Its route name is the value of that key (a str
    ``route_on``) or the tuple of their values (a tuple ``route_on``).
    """

    def __init__(self, *, route_on: str | Sequence[str], id_keys: str | Sequence[str], params_key: str) -> None:
        if isinstance(route_on, str):
            keys: tuple[str, ...] = (route_on,)
        elif isinstance(route_on, (tuple, list)) and route_on and all(isinstance(k, str) for k in route_on):
            keys = tuple(route_on)
        else:
            raise TypeError(
                f"FeedServer: route_on must be a key name or a non-empty tuple of them "
                f"such as ('module', 'method'), got {route_on!r}"
            )
        if not isinstance(params_key, str):
            raise TypeError(f"FeedServer: params_key must be a str, got {type(params_key).__name__} {params_key!r}")
        self.keys = keys
        self.single = isinstance(route_on, str)
        self.id_keys = check_id_keys("FeedServer", id_keys)
        self.params_key = params_key
        self.routes: dict[Any, Route] = {}
        if self.single:
            self.routes["SUBSCRIBE"] = self.routes["UNSUBSCRIBE"] = Route(_no_result, 0.0, None)

    def add(self, name: RouteName, handler: RouteHandler, delay: float, id_keys: str | Sequence[str] | None) -> None:
        """Add or replace the route ``name``; see :meth:`FeedServer.route`."""
        if self.single:
            if isinstance(name, tuple):
                raise TypeError(
                    f"route: the server routes on {self.keys[0]!r} alone, so a route is named by one value, "
                    f"got tuple {name!r}; pass a tuple such as route_on=('module', 'method') to FeedServer "
                    "to route on several keys"
                )
        elif not isinstance(name, tuple) or len(name) != len(self.keys):
            raise TypeError(
                f"route: the server routes on {self.keys!r}, so a route is named by a tuple of "
                f"{len(self.keys)} values, got {name!r}"
            )
        try:
            hash(name)
        except TypeError:
            raise TypeError(f"route: a route name must be hashable, got {name!r}") from None
        if not callable(handler):
            raise TypeError(f"route: handler for {name!r} must be callable, got {type(handler).__name__}")
        keys = None if id_keys is None else check_id_keys("route", id_keys)
        self.routes[name] = Route(handler, check_seconds("route", "delay", delay), keys)

    def parse(self, frame: Frame) -> Call | None:
        """Return the request in ``frame``, or None if the frame is data."""
        # Binary frames and non-objects are data, never requests; checking the first
        # character skips json.loads for the common plain-text frame.
        if not isinstance(frame, str) or not frame.lstrip().startswith("{"):
            return None
        try:
            obj = json.loads(frame)
        except ValueError:
            return None
        if not isinstance(obj, dict) or not all(k in obj for k in self.keys):
            return None
        name = obj[self.keys[0]] if self.single else tuple(obj[k] for k in self.keys)
        try:
            route = self.routes.get(name)
        except TypeError:  # a list or an object where a name belongs
            route = None
        return Call(obj, name, route)

    async def answer(self, call: Call) -> str | None:
        """Run the call's route and return the reply's text, or None for a request without an id.

        Waits the route's delay after the handler returned.
        """
        request, route = call.request, call.route
        id_key = next((k for k in (route.id_keys if route and route.id_keys is not None else self.id_keys)
                       if k in request), None)
        reply: dict[str, Any] = {} if id_key is None else {id_key: request[id_key]}
        if id_key == "request_id":
            # wsappy's envelope: the event named after the method, the other routing keys echoed.
            reply.update({k: request[k] for k in self.keys[:-1]})
            reply["event"] = request[self.keys[-1]]
        result_key = "data" if id_key == "request_id" else "result"
        if route is None:
            what = "/".join(self.keys)
            reply["error"] = {"code": ERROR_UNKNOWN_METHOD, "message": f"unknown {what} {call.name!r}"}
        else:
            params = request[self.params_key] if self.params_key in request else request
            try:
                result = route.handler(params)
                if inspect.isawaitable(result):
                    result = await result
            except Exception as exc:
                # A route is test code standing in for a real server, which
                # answers a failure with an error object instead of hanging up.
                reply["error"] = {"code": ERROR_HANDLER_FAILED, "message": str(exc) or type(exc).__name__}
            else:
                if isinstance(result, Reply):
                    # The id first, as a server writes it; a body cannot override it.
                    body = {k: v for k, v in result.body.items() if k != id_key}
                    reply = body if id_key is None else {id_key: request[id_key], **body}
                else:
                    reply[result_key] = result
            if route.delay > 0:
                await asyncio.sleep(route.delay)
        if id_key is None:
            return None  # a notification: the route ran, nothing is sent
        try:
            return json.dumps(reply, separators=(",", ":"))
        except (TypeError, ValueError) as exc:
            reply = {id_key: request[id_key], "error": {
                "code": ERROR_HANDLER_FAILED,
                "message": f"result of {call.name!r} is not JSON-serialisable: {exc}",
            }}
            return json.dumps(reply, separators=(",", ":"))
