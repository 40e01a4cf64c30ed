"""Poll a job's status until it is done, and stop at once if it fails.

``poll()`` sends the status request every ``interval`` seconds, each time as a
fresh request with its own id, and checks only its reply: against ``alarms``
first (raising ``Alarm``), then against ``until``. A try that times out or
loses its connection counts as a try; after ``max_retries`` tries it raises
``RetriesExhausted``.

Runs offline against a FeedServer on 127.0.0.1:  python examples/job_poll.py
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from websockets.asyncio.client import connect

from async_ws_stream import Alarm, AsyncWsStream
from async_ws_stream.testing import FeedServer

# What the server answers for each job, check after check (the last state stays).
SCRIPT = {
    "render-42": ["queued", "running", "running", "done"],
    "export-7": ["queued", "running", "failed"],
}


class Jobs(AsyncWsStream[Any]):
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
    async with FeedServer() as server:
        checks = {job: 0 for job in SCRIPT}

        def job_status(params: Any) -> dict[str, Any]:
            job = params["job"]
            states = SCRIPT[job]
            checks[job] += 1
            return {"job": job, "state": states[min(checks[job], len(states)) - 1]}

        server.route("job.status", job_status)
        async with Jobs(server.url) as client:
            for job in SCRIPT:
                try:
                    reply = await client.poll(
                        {"method": "job.status", "params": {"job": job}},
                        until={("result", "state"): "done"},
                        alarms=[{("result", "state"): "failed"}],
                        interval=0.1,
                        max_retries=20,
                    )
                except Alarm as alarm:
                    print(f"{job}: FAILED after {checks[job]} checks: {alarm.message['result']}")
                else:
                    print(f"{job}: done after {checks[job]} checks: {reply['result']}")


if __name__ == "__main__":
    asyncio.run(main())
