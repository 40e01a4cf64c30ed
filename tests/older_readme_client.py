"""The older package's README subclass, its hooks verbatim, only the import changed: run as a user would.

``python tests/older_readme_client.py URL SECONDS`` runs it against URL for SECONDS,
then makes one request to prove it still serves, and prints a JSON report on
stdout. The test that runs it counts the connections on the server side. It runs
in a process of its own because the README's code leaves coroutines never
awaited, whose warnings would otherwise fall on whatever test runs next.
"""

import asyncio
import json
import sys

import websockets
from loguru import logger

from async_ws_stream import AsyncWebsocketStreamInterface


class BinanceFapiAsyncWs(AsyncWebsocketStreamInterface):
    def __init__(self, ws_baseurl):
        super().__init__()
        self.ws_baseurl = ws_baseurl
        self.listen_keys = 0

    async def _generate_listenkey(self):
        self.listen_keys += 1  # a REST call in real life: each one counts against the account
        return f"key{self.listen_keys}"

    # -- verbatim from the README ----------------------------------------------------------
    async def _create_ws(self):
        ws = await websockets.connect(self.ws_baseurl + '/ws/' + await self._generate_listenkey())
        return ws

    async def _when2create_new_ws(self):
        listenKeyExpired_stream = self.stream_filter([{'e': 'listenKeyExpired'}])

        async def read_listenKeyExpired_stream(listenKeyExpired_stream):
            async for news in listenKeyExpired_stream:
                try:
                    return
                finally:
                    asyncio.create_task(listenKeyExpired_stream.close())

        read_listenKeyExpired_stream_task = asyncio.create_task(read_listenKeyExpired_stream(listenKeyExpired_stream))
        # 20小时更新连接一次，或者服务端推送消息listenKey过期
        await asyncio.create_task(
            asyncio.wait(
                [read_listenKeyExpired_stream_task, asyncio.sleep(20 * 3600)],
                return_when='FIRST_COMPLETED'))
        logger.debug('Time to update ws connection.')

    async def _parse_raw_data(self, raw_data):
        msg = json.loads(raw_data)
        return msg


async def main(url, seconds):
    logger.enable("async_ws_stream")
    ws = BinanceFapiAsyncWs(url)
    # -- the README's "Usage", with the older names and parameters ---------------------------
    await ws.wait_enter_handing_ws()
    seen = {"all": 0, "by_id": 0, "f": 0, "f2": 0}

    async def watcher(stream, name):
        async for news in stream:
            seen[name] += 1

    def f(msg):
        seen["f"] += 1

    async def f2(msg):
        seen["f2"] += 1

    everything = ws.stream_filter()
    by_id = ws.stream_filter(_filters=[{"id": "usage"}])
    watchers = [asyncio.create_task(watcher(everything, "all")), asyncio.create_task(watcher(by_id, "by_id"))]
    ws.add_handler(f)
    ws.add_handler(function_or_coroutine_function=f2)
    assert ws.present_ws is not None
    await asyncio.sleep(seconds)  # recycles happen meanwhile
    await ws.send(json.dumps({"method": "ping", "id": "usage"}))  # FeedServer answers with the id
    reply = await ws.request({"method": "ping"}, timeout=5)
    streams = len(ws.stats()["streams"])  # the README's per-connection streams must not pile up
    close_task = asyncio.create_task(by_id.close())
    await close_task
    await ws.exit()
    await asyncio.gather(*watchers)
    print(json.dumps({"listen_keys": ws.listen_keys, "received": int(reply is not None), "seen": seen,
                      "streams": streams}))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], float(sys.argv[2])))
