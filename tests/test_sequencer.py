"""Sequence tracking against a real server: duplicates, gaps in-band, resyncs that hold one key, recycles."""

from __future__ import annotations

import asyncio
from collections.abc import Hashable
from typing import Any

import pytest

from async_ws_stream import Gap, Recycled, Stream
from async_ws_stream.testing import FeedServer

from .conftest import JsonClient, no_library_tasks, settle


class Counted(JsonClient):
    """``{"k": key, "n": number}`` is update ``n`` of sequence ``key``; anything else is untracked."""

    def _sequence(self, msg: Any) -> tuple[Hashable, int, int] | None:
        if isinstance(msg, dict) and "n" in msg:
            return msg["k"], msg["n"], msg["n"]
        return None


class Resyncing(Counted):
    """A resync that reports each call and answers what the test puts in ``answers``."""

    def __init__(self, url: str, **options: Any) -> None:
        super().__init__(url, **options)
        self.calls: asyncio.Queue[tuple[Any, Gap | None]] = asyncio.Queue()
        self.answers: asyncio.Queue[Any] = asyncio.Queue()
        self.cancelled = False
        self.cancelled_now = asyncio.Event()

    async def _resync(self, key: Any, gap: Gap | None) -> int | None:
        self.calls.put_nowait((key, gap))
        try:
            answer = await self.answers.get()
        except asyncio.CancelledError:
            self.cancelled = True
            self.cancelled_now.set()
            raise
        if isinstance(answer, Exception):
            raise answer
        return answer  # type: ignore[no-any-return]


def drain(stream: Stream[Any]) -> list[Any]:
    """What ``stream`` holds now: the numbers of messages, events as they are."""
    items = []
    while stream.queued:
        item = stream.get_nowait()
        items.append(item["n"] if isinstance(item, dict) else item)
    return items


async def send(server: FeedServer, key: str, *numbers: int) -> None:
    for n in numbers:
        await server.broadcast({"k": key, "n": n})


async def take(stream: Stream[Any], count: int) -> list[Any]:
    async with asyncio.timeout(5):
        return [(item["n"] if isinstance(item, dict) else item) for item in [await anext(stream) for _ in range(count)]]


@pytest.fixture
async def counted(server: FeedServer) -> Any:
    client = Counted(server.url, backoff_initial=0.01, backoff_max=0.05, stable_after=0)
    try:
        await client.wait_connected(timeout=5)
        yield client
    finally:
        await client.exit()


@pytest.fixture
async def resyncing(server: FeedServer) -> Any:
    client = Resyncing(server.url, backoff_initial=0.01, backoff_max=0.05, stable_after=0)
    try:
        await client.wait_connected(timeout=5)
        yield client
    finally:
        await client.exit()


# -- duplicates and gaps ---------------------------------------------------------------------------


async def test_duplicates_are_dropped_before_dispatch_and_counted(counted: Counted, server: FeedServer) -> None:
    """Messages at or below their key's last number reach no consumer and count in stats()["duplicates"]."""
    stream = counted.stream_filter([{"k": "a"}])
    await send(server, "a", 1, 2, 3, 2, 3, 4, 1)
    await settle(counted, server)
    assert drain(stream) == [1, 2, 3, 4]
    stats = counted.stats()
    assert (stats["duplicates"], stats["gaps"], stats["held"]) == (3, 0, 0)
    assert stats["messages"] == 8  # the marker of settle() too: counted, untracked


async def test_a_gap_is_an_event_where_the_hole_is(counted: Counted, server: FeedServer) -> None:
    """A hole emits Gap(key, expected, got) before the message past it: to events(), events=True and gaps=True."""
    plain = counted.stream_filter([{"k": "a"}])
    gaps = counted.stream_filter([{"k": "a"}], gaps=True)
    mixed = counted.stream_filter([{"k": "a"}], events=True)
    events = counted.events()
    await send(server, "a", 1, 2, 5, 6)
    await settle(counted, server)
    gap = Gap("a", 3, 5)
    assert drain(plain) == [1, 2, 5, 6]
    assert drain(gaps) == [1, 2, gap, 5, 6]
    assert drain(mixed) == [1, 2, gap, 5, 6]
    assert drain(events) == [gap]
    assert str(gap) == "gap in 'a': expected 3, got 5"
    assert counted.stats()["gaps"] == 1


async def test_gaps_streams_carry_no_other_event(counted: Counted, server: FeedServer) -> None:
    """A gaps=True stream sees a loss and a reconnect only as the messages; events=True sees the events too."""
    gaps = counted.stream_filter([{"k": "a"}], gaps=True)
    both = counted.stream_filter([{"k": "a"}], gaps=True, events=True)
    await send(server, "a", 1)
    await settle(counted, server)
    await server.drop()
    await server.wait_connections(2)
    await counted.wait_connected(timeout=5)
    await send(server, "a", 3)
    await settle(counted, server)
    assert drain(gaps) == [1, Gap("a", 2, 3), 3]
    assert [type(x).__name__ if not isinstance(x, int) else x for x in drain(both)] == [
        1, "Disconnected", "Retrying", "Connected", "Gap", 3,
    ]


async def test_recycles_of_a_fast_feed_deliver_every_message_exactly_once_in_order(server: FeedServer) -> None:
    """30 recycles while two keys stream without pause: each stream gets 0..n-1 once, in order; the overlap is dropped."""
    client = Counted(server.url, backoff_initial=0.01, stable_after=0)
    streams = {key: client.stream_filter([{"k": key}], maxsize=1_000_000) for key in ("a", "b")}
    events = client.events()
    sent = 0
    stop = asyncio.Event()

    async def publish() -> None:
        nonlocal sent
        while not stop.is_set():
            await send(server, "a", sent)
            await send(server, "b", sent)
            sent += 1
            await asyncio.sleep(0)

    try:
        await client.wait_connected(timeout=5)
        async with asyncio.TaskGroup() as tg:
            tg.create_task(publish())
            for _ in range(30):
                client.recycle_now.set()
                async with asyncio.timeout(5):
                    while not isinstance(await anext(events), Recycled):
                        pass
            stop.set()
        await settle(client, server)
        stats = client.stats()
        assert stats["recycles"] == 30 and stats["reconnects"] == 0
        for stream in streams.values():
            assert drain(stream) == list(range(sent))
        assert stats["duplicates"] > 0  # the overlaps carried the feed twice
        assert stats["messages"] == 2 * sent + stats["duplicates"] + 1  # and one marker
        assert stats["gaps"] == 0
    finally:
        await client.exit()


# -- resyncs ---------------------------------------------------------------------------------------


async def test_a_resync_holds_its_key_and_never_delays_another(resyncing: Resyncing, server: FeedServer) -> None:
    """While "a" resyncs its messages wait; "b" and the receive loop go on; the release drops what the snapshot has."""
    a = resyncing.stream_filter([{"k": "a"}])
    b = resyncing.stream_filter([{"k": "b"}])
    await send(server, "a", 1, 2, 5)
    assert await resyncing.calls.get() == ("a", Gap("a", 3, 5))
    await send(server, "a", 6, 7)
    await send(server, "b", 1, 2)
    await send(server, "a", 8)
    await settle(resyncing, server)  # the receive loop did not wait for the resync
    assert drain(b) == [1, 2]
    assert drain(a) == [1, 2]
    assert resyncing.stats()["held"] == 4
    resyncing.answers.put_nowait(6)  # the snapshot is current to update 6
    assert await take(a, 2) == [7, 8]
    await send(server, "a", 9)
    assert await take(a, 1) == [9]
    stats = resyncing.stats()
    assert (stats["resyncs"], stats["gaps"], stats["held"], stats["resync_discarded"], stats["duplicates"]) == (
        1, 1, 0, 2, 0,
    )
    assert resyncing.calls.empty()


async def test_a_snapshot_older_than_the_held_messages_resyncs_again(resyncing: Resyncing, server: FeedServer) -> None:
    """A resync answering below the held messages' start is another gap: a second resync, then the release."""
    a = resyncing.stream_filter([{"k": "a"}], gaps=True)
    await send(server, "a", 1, 5, 6)
    assert await resyncing.calls.get() == ("a", Gap("a", 2, 5))
    await settle(resyncing, server)
    resyncing.answers.put_nowait(3)
    assert await resyncing.calls.get() == ("a", Gap("a", 4, 5))
    resyncing.answers.put_nowait(5)
    assert await take(a, 4) == [1, Gap("a", 2, 5), Gap("a", 4, 5), 6]
    assert resyncing.stats()["resyncs"] == 2


async def test_a_failing_resync_is_logged_counted_and_retried(
    resyncing: Resyncing, server: FeedServer, logs: list[str]
) -> None:
    """_resync raising (or returning a non-int) is logged with its traceback, counted, and tried again; the key stays held."""
    a = resyncing.stream_filter([{"k": "a"}])
    await send(server, "a", 1, 3)
    resyncing.answers.put_nowait(RuntimeError("snapshot service down"))
    resyncing.answers.put_nowait("3")
    resyncing.answers.put_nowait(3)
    assert await take(a, 1) == [1]
    for _ in range(3):
        assert await resyncing.calls.get() == ("a", Gap("a", 2, 3))
    await send(server, "a", 4)
    assert await take(a, 1) == [4]  # 3 is covered by the snapshot
    assert resyncing.stats()["resync_errors"] == 2
    text = "\n".join(logs)
    assert "_resync('a') failed (attempt 1); its messages stay held" in text
    assert "RuntimeError: snapshot service down" in text
    assert "TypeError: _resync must return the int the key is now current to, or None; got str '3'" in text


async def test_a_resync_without_a_number_delivers_everything_it_held(resyncing: Resyncing, server: FeedServer) -> None:
    """_resync returning None discards nothing held; the sequence goes on from those messages."""
    a = resyncing.stream_filter([{"k": "a"}])
    await send(server, "a", 1, 4, 5)
    await resyncing.calls.get()
    await settle(resyncing, server)
    resyncing.answers.put_nowait(None)
    assert await take(a, 3) == [1, 4, 5]
    await send(server, "a", 5, 6)
    assert await take(a, 1) == [6]
    assert (resyncing.stats()["duplicates"], resyncing.stats()["resync_discarded"]) == (1, 0)


class SmallHold(Resyncing):
    resync_maxsize = 3


async def test_a_full_hold_drops_its_oldest_counts_and_warns_once(server: FeedServer, logs: list[str]) -> None:
    """Past resync_maxsize held messages the oldest go (stats()["held_dropped"], one WARNING); the snapshot covers them."""
    client = SmallHold(server.url)
    try:
        a = client.stream_filter([{"k": "a"}])
        await client.wait_connected(timeout=5)
        await send(server, "a", 1, 5, 6, 7, 8, 9)
        await settle(client, server)
        assert (client.stats()["held"], client.stats()["held_dropped"]) == (3, 2)
        client.answers.put_nowait(8)
        assert await take(a, 2) == [1, 9]
        assert sum("held during its resync; dropping the oldest" in line for line in logs) == 1
    finally:
        await client.exit()


class OnConnect(Resyncing):
    resync_on_connect = True


async def test_resync_on_connect_runs_after_each_connect_but_not_after_a_recycle(server: FeedServer) -> None:
    """Each key's first message after the first connection and after a reconnect resyncs it (gap None); a recycle does not."""
    client = OnConnect(server.url, backoff_initial=0.01, stable_after=0)
    events = client.events()
    try:
        a = client.stream_filter([{"k": "a"}])
        await client.wait_connected(timeout=5)
        await send(server, "a", 1)
        assert await client.calls.get() == ("a", None)
        client.answers.put_nowait(0)
        assert await take(a, 1) == [1]
        await server.drop()
        await server.wait_connections(2)
        await client.wait_connected(timeout=5)
        await send(server, "a", 2)
        assert await client.calls.get() == ("a", None)
        client.answers.put_nowait(1)
        assert await take(a, 1) == [2]
        client.recycle_now.set()
        async with asyncio.timeout(5):
            while not isinstance(await anext(events), Recycled):
                pass
        await send(server, "a", 3)
        assert await take(a, 1) == [3]
        assert client.calls.empty() and client.stats()["resyncs"] == 2
    finally:
        await client.exit()


async def test_exit_during_a_resync_cancels_it_promptly(server: FeedServer) -> None:
    """exit() while a _resync waits cancels it at once; no task of the library is left."""
    client = Resyncing(server.url)
    a = client.stream_filter([{"k": "a"}])
    await client.wait_connected(timeout=5)
    await send(server, "a", 1, 3)
    await client.calls.get()
    async with asyncio.timeout(2):
        await client.exit()
    assert client.cancelled and no_library_tasks()
    assert drain(a) == [1]


async def test_giving_up_cancels_a_pending_resync(server: FeedServer) -> None:
    """A fatal close (1008) ends the client; the resync under way is cancelled then, not left waiting."""
    client = Resyncing(server.url)
    events = client.events()
    try:
        await client.wait_connected(timeout=5)
        await send(server, "a", 1, 3)
        await client.calls.get()
        await server.close_all(1008, "policy violation")
        async with asyncio.timeout(5):
            await client.cancelled_now.wait()
        assert "GaveUp" in [type(e).__name__ for e in drain(events)]
    finally:
        await client.exit()
    assert no_library_tasks()


# -- hooks -----------------------------------------------------------------------------------------


class Strict(JsonClient):
    def _sequence(self, msg: Any) -> tuple[Hashable, int, int] | None:
        return msg["k"], msg["n"], msg["n"]  # KeyError for anything else: a bug of the user's


async def test_a_failing_sequence_hook_is_counted_and_the_message_delivered(server: FeedServer, logs: list[str]) -> None:
    """_sequence raising counts in stats()["sequence_errors"] (traceback logged once) and delivers the message untracked."""
    client = Strict(server.url)
    try:
        everything = client.stream_filter()
        await client.wait_connected(timeout=5)
        await server.broadcast({"x": 1})
        await server.broadcast({"x": 2})
        await server.broadcast({"k": "a", "n": 1})
        assert [m.get("x", "n") for m in [await anext(everything) for _ in range(3)]] == [1, 2, "n"]
        assert client.stats()["sequence_errors"] == 2
        assert sum("Traceback" in line for line in logs if "_sequence failed" in line) == 1
        assert sum("_sequence failed #" in line for line in logs) == 2
    finally:
        await client.exit()


@pytest.mark.single_transport
async def test_a_client_without_a_sequence_hook_keeps_the_plain_pump(server: FeedServer) -> None:
    """No _sequence: no sequencer, the plain receive loop runs, and the sequence stats stay 0; with one, the other loop."""

    def pump_of(client: JsonClient) -> list[str]:
        task = next(t for t in asyncio.all_tasks() if t.get_name() == "async_ws_stream supervisor"
                    and t.get_coro().cr_frame.f_locals.get("self") is client)  # type: ignore[union-attr]
        names: list[str] = []
        coro: Any = task.get_coro()
        while coro is not None and hasattr(coro, "cr_code"):
            names.append(coro.cr_code.co_name)
            coro = coro.cr_await
        return [n for n in names if n.startswith("_pump")]

    plain, counted = JsonClient(server.url), Counted(server.url)
    try:
        await plain.wait_connected(timeout=5)
        await counted.wait_connected(timeout=5)
        await settle(plain, server)
        assert plain._sequencer is None and pump_of(plain) == ["_pump"]
        assert counted._sequencer is not None and pump_of(counted) == ["_pump_sequenced"]
        stats = plain.stats()
        keys = ("duplicates", "gaps", "resyncs", "resync_errors", "resync_discarded", "sequence_errors", "held",
                "held_dropped")
        assert [stats[k] for k in keys] == [0] * len(keys)
    finally:
        await plain.exit()
        await counted.exit()


@pytest.mark.single_transport
async def test_hooks_that_cannot_work_together_are_refused() -> None:
    """A _resync or resync_on_connect without _sequence, an async _sequence, a plain _resync: TypeError naming it."""

    class ResyncOnly(JsonClient):
        async def _resync(self, key: Any, gap: Gap | None) -> int | None:
            return None

    class OnConnectOnly(Counted):
        resync_on_connect = True

    class AsyncSequence(JsonClient):
        async def _sequence(self, msg: Any) -> Any:  # type: ignore[override]
            return None

    class PlainResync(Counted):
        def _resync(self, key: Any, gap: Gap | None) -> Any:  # type: ignore[override]
            return None

    class NoHold(Resyncing):
        resync_maxsize = 0

    cases: list[tuple[type[JsonClient], type[Exception], str]] = [
        (ResyncOnly, TypeError, "ResyncOnly: _resync and resync_on_connect need a _sequence hook"),
        (OnConnectOnly, TypeError, "OnConnectOnly: resync_on_connect = True needs a _resync hook"),
        (AsyncSequence, TypeError, "AsyncSequence: _sequence must be a plain function"),
        (PlainResync, TypeError, "PlainResync: _resync must be a coroutine function"),
        (NoHold, ValueError, "NoHold: resync_maxsize must be >= 1, got 0"),
    ]
    for cls, error, message in cases:
        with pytest.raises(error, match=message):
            cls("ws://127.0.0.1:9")
    assert no_library_tasks()
