"""The ``expectations`` package's README example, on async_ws_stream and a FeedServer.

There, the client makes an id (an "eid") per message, registers an
expectation under it with a callback, sends the message with the eid, and
when a server message carries that eid back, the callback runs; messages
without an eid match no expectation. Here the same three steps are
``expect({"eid": eid})`` registered before ``send``, and ``request(...,
id_key="eid")`` does all of them in one call. Messages without an eid still
reach any stream they match.

The README's prompt loop reads what to send from the keyboard; this version
sends a fixed list instead, so it runs unattended.

Runs offline against a FeedServer on 127.0.0.1:  python examples/expectations_eid.py
"""

from __future__ import annotations

import asyncio
import itertools
import json
from typing import Any

from websockets.asyncio.client import connect

from async_ws_stream import AsyncWsStream
from async_ws_stream.testing import FeedServer

USER_MESSAGES = ["hello", "time", "nonsense"]  # what the README's user would type
_eids = itertools.count(1)


def eidgen() -> str:
    """A new expectation id (the README's eidgen(); any unique string will do)."""
    return f"eid-{next(_eids)}"


def my_expected_proc(data: Any) -> None:  # the README's expectation callback
    print("Processed expectation:", json.dumps(data, sort_keys=True))


class Client(AsyncWsStream[Any]):
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
    # FeedServer echoes "eid" out of the box (its id_keys are "id", "eid", "request_id").
    async with FeedServer() as server:
        server.route("hello", lambda params: "hello to you too")
        server.route("time", lambda params: "12:00")
        async with Client(server.url_for("/ws")) as client:  # 1: get set up
            notices = client.stream_filter([{"notice": lambda v: True}])
            for user_msg in USER_MESSAGES:
                print("Type a message to send to the server:", user_msg)
                eid = eidgen()  # 2: a new expectation id
                expected = client.expect({"eid": eid}, timeout=5)  # 3: the expectation, before sending
                await client.send({"method": user_msg, "eid": eid})
                my_expected_proc(await expected)  # 4: the reply carrying our eid has come
            # A message without an eid matches no expectation; a stream still sees it.
            await server.broadcast({"notice": "maintenance at 03:00"})
            print("Message without an eid:", (await anext(notices))["notice"])
            # Steps 2 to 4 in one call:
            reply = await client.request({"method": "hello"}, id_key="eid", timeout=5)
            print("request(id_key='eid') got:", json.dumps(reply, sort_keys=True))
    print("Exiting!")


if __name__ == "__main__":
    asyncio.run(main())
