"""The ``wsappy`` README example (an entity API routed on module and method), on a FeedServer.

wsappy's server routes a request on two keys, ``module`` and ``method``,
passes its ``data`` to a handler method, and answers ``{"request_id", "event":
"result", "module", "data"}``; its URL routing serves clients on ``/api``.
FeedServer does the same with ``route_on=("module", "method")``,
``params_key="data"``, a route per ``(module, method)`` returning a ``Reply``
for wsappy's exact envelope, and an ``on_connect`` hook that turns away other
paths. The client is the README's, on async_ws_stream: ``request(...,
id_key="request_id")`` sends each request with a fresh id and returns the
reply carrying it.

Runs offline against a FeedServer on 127.0.0.1:  python examples/wsappy_entities.py
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection

from async_ws_stream import AsyncWsStream
from async_ws_stream.testing import FeedServer, Reply


class EntityHandler:
    """wsappy's EntityHandler: a module with one method, get(item_id)."""

    def __init__(self) -> None:
        self.data = [{"id": 42, "name": "a"}, {"id": 15, "name": "b"}, {"id": 30, "name": "c"}]

    def get(self, item_id: int) -> Reply:
        items = [x for x in self.data if x["id"] == item_id]
        return Reply({"event": "result", "module": "entity", "data": {"items": items}})


async def api_only(conn: ServerConnection) -> None:
    """wsappy's client_factories {'api': Client}: only /api is served."""
    if conn.request is None or conn.request.path != "/api":
        await conn.close(1008, "unknown client route")


class ApiClient(AsyncWsStream[Any]):
    def __init__(self, url: str) -> None:
        super().__init__()
        self.url = url

    async def _create_ws(self) -> Any:
        return await connect(self.url)

    async def _when2create_new_ws(self) -> None:
        await asyncio.Event().wait()  # this short example never recycles

    def _parse_raw_data(self, raw: str | bytes) -> Any:
        return json.loads(raw)


async def main() -> None:
    server = FeedServer(route_on=("module", "method"), id_keys="request_id", params_key="data", on_connect=api_only)
    entity = EntityHandler()
    server.route(("entity", "get"), lambda data: entity.get(**data))
    async with server, ApiClient(server.url_for("/api")) as client:
        items = {}
        for item_id in (42, 15, 30):
            request = {"module": "entity", "method": "get", "data": {"item_id": item_id}}
            print("-->", json.dumps(request))  # request() sends a copy with a fresh request_id
            response = await client.request(request, id_key="request_id", timeout=5)
            print("<--", json.dumps(response))
            if response["data"]["items"]:
                items[item_id] = response["data"]["items"][0]
        print("items", items)


if __name__ == "__main__":
    asyncio.run(main())
