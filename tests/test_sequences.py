"""The pure sequence rules, without an event loop: verdicts, holds, resyncs, and their plain definitions."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from async_ws_stream import Gap
from async_ws_stream._sequences import (
    DELIVER,
    DUPLICATE,
    GAP,
    HELD,
    HELD_OVERFLOW,
    RESYNC_FIRST,
    RESYNC_GAP,
    Sequences,
)


def feed(book: Sequences, *numbers: tuple[int, int], key: str = "k") -> list[int]:
    """Admit messages ``(first, last)`` of ``key``; return the verdicts."""
    return [book.admit(key, first, last, (key, first, last)) for first, last in numbers]


# -- without a resync ------------------------------------------------------------------------------


def test_a_continuing_sequence_is_delivered_and_tracked() -> None:
    """Each message starting at last + 1 is delivered; the key's last number follows it."""
    book = Sequences(resync=False)
    assert feed(book, (1, 1), (2, 4), (5, 5)) == [DELIVER] * 3
    assert book.last("k") == 5 and len(book) == 1 and book.last("other") is None


def test_the_first_message_of_a_key_starts_its_sequence_anywhere() -> None:
    """Without resync_on_connect, a key's first message is taken as it is, whatever its numbers."""
    book = Sequences(resync=False)
    assert feed(book, (1000, 1003)) == [DELIVER]
    assert book.last("k") == 1003


def test_at_or_below_the_last_number_is_a_duplicate_and_a_straddler_is_not() -> None:
    """last <= previous last is dropped; a message reaching back below last + 1 but past last is delivered."""
    book = Sequences(resync=False)
    assert feed(book, (1, 5), (3, 5), (5, 5), (1, 2), (4, 7), (8, 8)) == [
        DELIVER, DUPLICATE, DUPLICATE, DUPLICATE, DELIVER, DELIVER,
    ]
    assert book.last("k") == 8


def test_a_gap_is_reported_and_the_message_delivered_without_a_resync() -> None:
    """first > last + 1 returns GAP with Gap(key, expected, got); the sequence goes on from the message."""
    book = Sequences(resync=False)
    assert feed(book, (1, 2), (6, 7), (8, 8)) == [DELIVER, GAP, DELIVER]
    assert book.gap == Gap("k", 3, 6)
    assert book.last("k") == 8


def test_keys_are_independent() -> None:
    """A gap or a duplicate in one key says nothing about another."""
    book = Sequences(resync=False)
    assert book.admit("a", 1, 1, None) == DELIVER
    assert book.admit("b", 10, 10, None) == DELIVER
    assert book.admit("a", 5, 5, None) == GAP
    assert book.admit("b", 10, 10, None) == DUPLICATE
    assert book.admit("b", 11, 11, None) == DELIVER
    assert (book.last("a"), book.last("b")) == (5, 11)


def test_first_past_last_is_refused_and_changes_nothing() -> None:
    """_sequence returning first > last raises ValueError naming both; the key's state is untouched."""
    book = Sequences(resync=False)
    feed(book, (1, 1))
    with pytest.raises(ValueError, match=r"first=5 > last=3 for key 'k'"):
        book.admit("k", 5, 3, None)
    with pytest.raises(TypeError):
        book.admit(["unhashable"], 1, 1, None)
    assert book.last("k") == 1 and len(book) == 1


def test_bad_construction_is_refused() -> None:
    """resync_on_connect without resync, or a hold below 1, is a ValueError."""
    with pytest.raises(ValueError, match="resync_on_connect needs resync"):
        Sequences(resync=False, resync_on_connect=True)
    with pytest.raises(ValueError, match="hold must be >= 1, got 0"):
        Sequences(resync=True, hold=0)


# -- with a resync ---------------------------------------------------------------------------------


def test_a_gap_holds_the_key_until_the_resync_says_where_it_stands() -> None:
    """RESYNC_GAP, then HELD; resynced(n) discards what is at or below n and releases the rest in order."""
    book = Sequences(resync=True)
    assert feed(book, (1, 1), (5, 5), (6, 6), (7, 8), (9, 9)) == [DELIVER, RESYNC_GAP, HELD, HELD, HELD]
    assert book.gap == Gap("k", 2, 5)
    assert book.resyncing("k") and book.held == 4
    release = book.resynced("k", 7)
    assert release.messages == [("k", 7, 8), ("k", 9, 9)]  # (7, 8) straddles 7: it is needed
    assert (release.gap, release.again, release.discarded) == (None, False, 2)
    assert not book.resyncing("k") and book.held == 0 and book.last("k") == 9
    assert feed(book, (10, 10)) == [DELIVER]


def test_a_resync_holds_only_its_own_key() -> None:
    """While one key resyncs, another is delivered as it comes."""
    book = Sequences(resync=True)
    book.admit("a", 1, 1, None)
    assert book.admit("a", 3, 3, None) == RESYNC_GAP
    assert book.admit("b", 1, 1, None) == DELIVER
    assert book.admit("a", 4, 4, None) == HELD
    assert book.admit("b", 2, 2, None) == DELIVER
    assert book.held == 2


def test_a_snapshot_older_than_the_held_messages_is_another_gap() -> None:
    """resynced(n) with n + 1 below the first held message releases nothing and reports the hole; the rest stays held."""
    book = Sequences(resync=True)
    feed(book, (1, 1), (10, 10), (11, 11))
    release = book.resynced("k", 5)
    assert release.messages == [] and release.gap == Gap("k", 6, 10) and not release.again
    assert book.resyncing("k") and book.held == 2
    assert book.admit("k", 12, 12, "m12") == HELD
    release = book.resynced("k", 10)
    assert release.messages == [("k", 11, 11), "m12"] and release.discarded == 1


def test_a_hole_inside_the_held_messages_stops_the_release_there() -> None:
    """Held messages are judged again in order: the first hole among them ends the release with a Gap."""
    book = Sequences(resync=True)
    feed(book, (1, 1), (3, 3), (4, 4), (8, 8), (9, 9))
    release = book.resynced("k", 2)
    assert release.messages == [("k", 3, 3), ("k", 4, 4)] and release.gap == Gap("k", 5, 8)
    assert book.held == 2 and book.last("k") == 4


def test_a_resync_without_a_number_releases_everything_held() -> None:
    """resynced(None) discards nothing; the sequence starts again from the first held message."""
    book = Sequences(resync=True)
    feed(book, (1, 1), (5, 5), (6, 6), (6, 6))
    release = book.resynced("k", None)
    assert release.messages == [("k", 5, 5), ("k", 6, 6)] and release.discarded == 1
    assert release.gap is None and not release.again and book.last("k") == 6


def test_a_full_hold_drops_its_oldest_and_the_snapshot_decides_whether_that_matters() -> None:
    """HELD_OVERFLOW drops the oldest; a snapshot past them releases the rest; one short of them is a gap."""
    for number, gap in ((8, None), (5, Gap("k", 6, 7))):
        book = Sequences(resync=True, hold=3)
        verdicts = feed(book, (1, 1), (5, 5), (6, 6), (7, 7), (8, 8), (9, 9))
        assert verdicts == [DELIVER, RESYNC_GAP, HELD, HELD, HELD_OVERFLOW, HELD_OVERFLOW]
        assert book.held == 3
        release = book.resynced("k", number)
        assert release.gap == gap
        assert release.messages == ([("k", 9, 9)] if gap is None else [])


def test_a_full_hold_with_no_number_asks_for_another_resync() -> None:
    """After drops, resynced(None) cannot place the hole: it releases what it has and asks for another resync."""
    book = Sequences(resync=True, hold=2)
    feed(book, (1, 1), (5, 5), (6, 6), (7, 7))
    release = book.resynced("k", None)
    assert release.messages == [("k", 6, 6), ("k", 7, 7)] and release.again and release.gap is None
    assert book.resyncing("k") and book.held == 0
    assert book.admit("k", 8, 8, None) == HELD


def test_resync_on_connect_takes_each_keys_first_message_after_each_connect() -> None:
    """RESYNC_FIRST at a key's first message, and again after connected(); not for later messages."""
    book = Sequences(resync=True, resync_on_connect=True)
    assert book.admit("a", 1, 1, None) == RESYNC_FIRST
    assert book.gap is None
    assert book.admit("a", 2, 2, None) == HELD
    book.resynced("a", 0)
    assert book.admit("a", 3, 3, None) == DELIVER
    book.connected()
    assert book.admit("a", 4, 4, None) == RESYNC_FIRST
    assert book.admit("b", 1, 1, None) == RESYNC_FIRST


def test_a_running_resync_covers_the_connect_that_happens_meanwhile() -> None:
    """A key held across a connect is not resynced again for it once its resync ends."""
    book = Sequences(resync=True, resync_on_connect=True)
    book.admit("a", 1, 1, None)
    book.connected()
    assert book.admit("a", 2, 2, None) == HELD
    release = book.resynced("a", 1)
    assert release.messages == [None] and book.admit("a", 3, 3, None) == DELIVER


def test_resynced_without_a_resync_under_way_is_a_key_error() -> None:
    """Ending a resync that never started is a bug of the caller, said as such."""
    book = Sequences(resync=True)
    feed(book, (1, 1))
    with pytest.raises(KeyError, match="no resync of 'k'"):
        book.resynced("k", 1)
    with pytest.raises(KeyError):
        book.resynced("never", 1)


# -- properties ------------------------------------------------------------------------------------

keys = st.sampled_from(["a", "b", "c"])
spans = st.tuples(st.integers(0, 40), st.integers(0, 3)).map(lambda t: (t[0], t[0] + t[1]))
messages = st.lists(st.tuples(keys, spans), max_size=60)


@settings(max_examples=300)
@given(messages)
def test_verdicts_equal_the_plain_definition_over_the_prefix(msgs: list[tuple[str, tuple[int, int]]]) -> None:
    """Without a resync: a message is a duplicate iff its last is at or below the largest last of its key so far,
    and a gap iff its first is past that largest last + 1."""
    book = Sequences(resync=False)
    for i, (key, (first, last)) in enumerate(msgs):
        earlier = [lst for k, (_, lst) in msgs[:i] if k == key]
        verdict = book.admit(key, first, last, None)
        if not earlier:
            assert verdict == DELIVER
        elif last <= max(earlier):
            assert verdict == DUPLICATE
        elif first > max(earlier) + 1:
            assert verdict == GAP and book.gap == Gap(key, max(earlier) + 1, first)
        else:
            assert verdict == DELIVER


def _windows(draw: Any, total: int) -> list[tuple[int, int]]:
    """Connections each carrying updates start..end of one feed; each starts at most at the last one's end + 1."""
    windows = []
    start = 0
    while start < total:
        end = draw(st.integers(start, total - 1))
        windows.append((start, end))
        start = draw(st.integers(max(start + 1, end - 3), end + 1))  # back into the overlap, or right after
    return windows


@st.composite
def recycled_feeds(draw: Any) -> tuple[int, list[tuple[int, int]]]:
    total = draw(st.integers(1, 40))
    return total, _windows(draw, total)


@settings(max_examples=300)
@given(recycled_feeds())
def test_overlapping_connections_deliver_every_update_once_in_order(case: tuple[int, list[tuple[int, int]]]) -> None:
    """Connections that overlap (or join end to end) deliver 0..total-1 exactly once, in order, with no gap."""
    total, windows = case
    book = Sequences(resync=False)
    delivered = []
    for start, end in windows:
        for n in range(start, end + 1):
            verdict = book.admit("k", n, n, n)
            assert verdict in (DELIVER, DUPLICATE)
            if verdict == DELIVER:
                delivered.append(n)
    assert delivered == list(range(total))


ops = st.lists(
    st.one_of(
        st.tuples(st.just("msg"), keys, st.integers(0, 6), st.integers(0, 2)),  # a jump forward (or back) and a span
        st.tuples(st.just("resync"), keys, st.integers(-3, 12), st.booleans()),  # a number near the held ones; None
        st.tuples(st.just("connect"), keys, st.just(0), st.just(0)),
    ),
    max_size=80,
)


@settings(max_examples=300)
@given(ops, st.booleans(), st.integers(1, 5))
def test_with_a_resync_nothing_is_delivered_past_a_hole(script: list[Any], on_connect: bool, hold: int) -> None:
    """Whatever comes and whatever the resyncs answer, every delivered message of a key continues from the
    last one delivered or from the last resync's number: no duplicate, no silent hole, in order."""
    book = Sequences(resync=True, resync_on_connect=on_connect, hold=hold)
    head: dict[str, int] = {}  # per key: where the feed is
    position: dict[str, int | None] = {}  # per key: the last number delivered or resynced to
    pending: set[str] = set()  # keys whose resync was asked for

    def delivered(key: str, first: int, last: int) -> None:
        current = position.get(key)
        if current is not None:
            assert first <= current + 1 and last > current, (key, first, last, current)
        position[key] = last

    for op, key, a, b in script:
        if op == "connect":
            book.connected()
        elif op == "msg":
            first = max(0, head.get(key, 0) + a - 2)
            last = first + b
            head[key] = max(head.get(key, 0), last + 1)
            verdict = book.admit(key, first, last, (first, last))
            if verdict in (DELIVER, GAP):
                assert key not in pending
                delivered(key, first, last)
            elif verdict in (RESYNC_GAP, RESYNC_FIRST):
                assert key not in pending
                pending.add(key)
            else:
                assert verdict in (DUPLICATE, HELD, HELD_OVERFLOW)
                assert (verdict != DUPLICATE) == (key in pending)
        elif key in pending:
            number = None if b else max(0, head.get(key, 0) + a - 6)
            release = book.resynced(key, number)
            position[key] = number
            for first, last in release.messages:
                delivered(key, first, last)
            if release.gap is None and not release.again:
                pending.discard(key)
                assert not book.resyncing(key)
            else:
                assert book.resyncing(key)
        assert book.held <= hold * len(pending)
