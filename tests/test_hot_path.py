"""The hot path's cost guarantees: what one message touches, not how long it takes.

Timing is measured in bench/, never here; these tests count the work instead
(comparisons, lookups), so they hold on a loaded machine.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Mapping
from typing import Any

from async_ws_stream._counters import Counters
from async_ws_stream._dispatch import Index
from async_ws_stream._filters import compile_filters
from async_ws_stream._streams import Stream


class Counted:
    """A filter value that counts how often it is compared."""

    compared = 0

    def __init__(self, text: str) -> None:
        self.text = text

    def __hash__(self) -> int:
        return hash(self.text)

    def __eq__(self, other: object) -> bool:
        Counted.compared += 1
        if isinstance(other, Counted):
            return other.text == self.text
        return other == self.text


class CountingMessage(Mapping[str, Any]):
    """A message that counts the fields read from it."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data
        self.reads = 0

    def __getitem__(self, key: str) -> Any:
        self.reads += 1
        return self.data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.data)

    def __len__(self) -> int:
        return len(self.data)


def test_shared_value_does_not_heap_filters_in_one_bucket() -> None:
    """1,000 filters sharing "e" but not "s" cost a message a few comparisons, not 1,000."""
    index: Index[int] = Index()
    for i in range(1000):
        index.add(compile_filters([{"e": Counted("trade"), "s": Counted(f"S{i}")}]), i)
    index.match({"e": "none"})  # let the index build its tables before counting
    Counted.compared = 0
    assert list(index.match({"e": "trade", "s": "S500"})) == [500]
    assert Counted.compared <= 4


def test_first_filter_moves_off_a_path_only_it_used() -> None:
    """The first filter is re-filed once others show the selective key: one path is looked up."""
    index: Index[int] = Index()
    for i in range(100):
        index.add(compile_filters([{"e": "trade", "s": f"S{i}"}]), i)
    msg = CountingMessage({"e": "trade", "s": "S0"})
    assert list(index.match(msg)) == [0]
    # One lookup on the indexed path and one read of the other pair of the filter found;
    # a second indexed path would cost two more.
    assert msg.reads <= 2


def test_refiled_filter_is_removed_cleanly() -> None:
    """Removing a filter that was moved between buckets leaves nothing behind."""
    index: Index[str] = Index()
    subs = [index.add(compile_filters([{"e": "trade", "s": s}]), s) for s in ("A", "B", "C")]
    index.remove(subs[0])
    assert list(index.match({"e": "trade", "s": "A"})) == []
    assert list(index.match({"e": "trade", "s": "B"})) == ["B"]
    for sub in subs[1:]:
        index.remove(sub)
    assert list(index.match({"e": "trade", "s": "C"})) == []
    assert len(index) == 0


def test_equal_filters_share_nothing_they_should_not() -> None:
    """Two subscriptions with the same filter both get the message, once each."""
    index: Index[str] = Index()
    index.add(compile_filters([{"e": "trade", "s": "A"}]), "first")
    index.add(compile_filters([{"e": "trade", "s": "A"}, {"s": "A"}]), "second")
    assert sorted(index.match({"e": "trade", "s": "A"})) == ["first", "second"]


async def test_idle_streams_share_an_empty_buffer_until_their_first_message() -> None:
    """A stream allocates its own buffer only when a message arrives, and then delivers in order."""
    made: list[Stream[int]] = [
        Stream(None, maxsize=10, overflow="error", copy=False, counters=Counters())
        for _ in range(2)
    ]
    first, second = made
    assert first._feed._buf is second._feed._buf  # one shared empty buffer: idle streams stay small
    first.deliver(1)
    first.deliver(2)
    assert first._feed._buf is not second._feed._buf
    assert second.queued == 0
    assert [await first.__anext__(), await first.__anext__()] == [1, 2]


async def test_consumer_waiting_on_an_idle_stream_wakes_on_its_first_message() -> None:
    """A consumer already waiting when the first message arrives gets it (the buffer is swapped under it)."""
    stream: Stream[int] = Stream(
        None, maxsize=10, overflow="error", copy=False, counters=Counters()
    )
    pending = asyncio.ensure_future(stream.__anext__())
    await asyncio.sleep(0)  # the consumer is now waiting on the shared empty buffer
    stream.deliver(7)
    stream.deliver(8)
    assert await pending == 7
    assert await stream.__anext__() == 8
