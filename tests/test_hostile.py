"""Hostile input through a real connection: fuzzed frames, oversized and invalid frames, fuzzed filters.

None of it may stop the pump: a bad frame is counted and logged in one short line,
a frame the protocol refuses (too big, invalid UTF-8) costs a reconnect, never the
client.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.asyncio.client import connect

from async_ws_stream.testing import FeedServer
from async_ws_stream.transports import picows_connect

from .conftest import JsonClient, settle

FUZZ = settings(
    max_examples=40,
    deadline=None,
    # The server, client and log fixtures are shared by the examples on purpose:
    # each example checks only what changed, on one long-lived connection.
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)

# -- frames ----------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=20,
)


def _nested(depth: int, closed: bool) -> str:
    return "[" * depth + ("]" * depth if closed else "")


frames = st.one_of(
    json_values.map(json.dumps),  # valid messages, None ("null" is skipped) and scalars included
    json_values.map(json.dumps).flatmap(lambda t: st.integers(0, max(0, len(t) - 1)).map(lambda i: t[:i])),
    st.text(max_size=200),  # any valid text
    st.binary(max_size=200),  # any bytes, mostly not JSON
    st.binary(max_size=50).map(lambda b: b"\xff" + b),  # never UTF-8
    st.integers(2_000, 50_000).map(lambda n: _nested(n, closed=False)),  # too deep: RecursionError
    st.integers(2_000, 50_000).map(lambda n: '{"a":' * n),
    st.integers(1, 300).map(lambda n: _nested(n, closed=True)),  # deep but valid
    st.sampled_from(["NaN", "-Infinity", "1e999", "9" * 5000, '"\\ud800"', "\ufeff{}", '{"a":1}{"b":2}']),
    st.integers(100_000, 400_000).map(lambda n: '{"big": "' + "x" * n),  # big, within max_size, broken
)


def parse_like_the_client(frame: str | bytes) -> tuple[str, Any]:
    try:
        value = json.loads(frame)
    except Exception:  # what the pump counts as a parse error
        return "error", None
    return ("skipped", None) if value is None else ("message", value)


def same(a: Any, b: Any) -> bool:
    """Equality that treats NaN as equal to itself (json.loads('NaN') != itself)."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


@FUZZ
@given(batch=st.lists(frames, max_size=12))
async def test_fuzzed_frames_never_stop_the_pump(
    client: JsonClient, server: FeedServer, logs: list[str], batch: list[str | bytes]
) -> None:
    """Any frames: each is a message, a skip or a counted parse error; the same connection goes on."""
    everything = client.stream_filter(maxsize=100)
    copies = client.stream_filter(maxsize=100, copy=True)
    await client.wait_connected(timeout=5)
    before = client.stats()
    log_mark = len(logs)
    for frame in batch:
        await server.broadcast(frame)
    await settle(client, server)
    after = client.stats()

    outcomes = [parse_like_the_client(f) for f in batch]
    expected = [value for kind, value in outcomes if kind == "message"]
    got = [everything.get_nowait() for _ in range(everything.queued)][:-1]  # less the settle marker
    copied = [copies.get_nowait() for _ in range(copies.queued)][:-1]
    await everything.close()
    await copies.close()

    assert after["connects"] == before["connects"] == 1, "a bad frame cost the connection"
    assert after["frames"] - before["frames"] == len(batch) + 1
    assert after["parse_errors"] - before["parse_errors"] == sum(k == "error" for k, _ in outcomes)
    assert after["skipped"] - before["skipped"] == sum(k == "skipped" for k, _ in outcomes)
    assert after["messages"] - before["messages"] == len(expected) + 1
    assert len(got) == len(expected) and all(same(g, e) for g, e in zip(got, expected))
    assert len(copied) == len(expected) and all(same(c, e) for c, e in zip(copied, expected))
    # Each bad frame: one short log line, never the frame itself.
    errors = [line for line in logs[log_mark:] if "parse error" in line]
    assert len(errors) == sum(k == "error" for k, _ in outcomes)
    assert all(len(line) < 700 for line in logs[log_mark:])


async def test_parse_error_of_a_huge_frame_is_logged_in_short(
    client: JsonClient, server: FeedServer, logs: list[str]
) -> None:
    """A 900 KB frame that fails to parse gives one line with its size and at most 40 characters of it."""
    await client.wait_connected(timeout=5)
    await server.broadcast('{"secret": "' + "s" * 900_000)
    await settle(client, server)
    (line,) = [line for line in logs if "parse error" in line]
    assert "900012-byte frame" in line
    assert len(re.findall("s", line)) < 60
    assert len(line) < 300
    assert client.stats()["parse_errors"] == 1


async def test_deep_nesting_is_a_parse_error_not_a_crash(client: JsonClient, server: FeedServer) -> None:
    """100,000 nested brackets (a RecursionError in json) count as one parse error."""
    stream = client.stream_filter()
    await client.wait_connected(timeout=5)
    await server.broadcast("[" * 100_000 + "]" * 100_000)
    await server.broadcast({"after": True})
    assert await anext(stream) == {"after": True}
    assert client.stats()["parse_errors"] == 1


async def test_deep_valid_message_reaches_a_copying_stream(client: JsonClient, server: FeedServer) -> None:
    """A valid message nested 500 deep (too deep for deepcopy) neither crashes the pump nor is lost silently."""
    copying = client.stream_filter(copy=True)
    plain = client.stream_filter()
    await client.wait_connected(timeout=5)
    await server.broadcast("[" * 500 + "]" * 500)
    await server.broadcast({"after": True})
    await settle(client, server)
    first = await anext(plain)
    assert isinstance(first, list)
    received = [copying.get_nowait() for _ in range(copying.queued)]
    assert {"after": True} in received
    # Delivered as a copy, or counted as dropped: never lost without a trace.
    assert len(received) + copying.dropped == 3
    assert client.stats()["connects"] == 1


# -- frames the protocol refuses -------------------------------------------------------------


class SmallFrames(JsonClient):
    """A client whose connection refuses frames over 1 KiB."""

    async def _create_ws(self) -> Any:
        if self.transport == "picows":
            return await picows_connect(self.url, open_timeout=2, close_timeout=1, max_size=1024)
        return await connect(self.url, open_timeout=2, close_timeout=1, max_size=1024)


async def test_frame_over_the_size_limit_reconnects_with_a_clear_log(server: FeedServer, logs: list[str]) -> None:
    """A frame over max_size closes that connection (1009), is logged as such, and the client reconnects."""
    client = SmallFrames(server.url, backoff_initial=0.01)
    try:
        stream = client.stream_filter()
        await client.wait_connected(timeout=5)
        await server.broadcast({"before": True})
        await server.broadcast({"big": "x" * 4096})
        await server.wait_connections(2)
        await client.wait_connected(timeout=5)
        await server.broadcast({"after": True})
        assert await anext(stream) == {"before": True}
        assert await anext(stream) == {"after": True}
        assert client.stats()["reconnects"] == 1
    finally:
        await client.exit()
    lost = [line for line in logs if "lost" in line]
    assert len(lost) == 1
    assert "1009" in lost[0] and len(lost[0]) < 300


async def test_invalid_utf8_in_a_text_frame_reconnects(client: JsonClient, server: FeedServer, logs: list[str]) -> None:
    """A text frame that is not UTF-8 fails that connection (1007); the client reconnects and streams on."""
    stream = client.stream_filter()
    await client.wait_connected(timeout=5)
    await server.connections[0].send(b'{"a": "\xff\xfe"}', text=True)
    await server.wait_connections(2)
    await client.wait_connected(timeout=5)
    await server.broadcast({"after": True})
    assert await anext(stream) == {"after": True}
    assert any("1007" in line for line in logs if "lost" in line)
    assert client.stats()["parse_errors"] == 0


# -- filters and conditions against the plain definition --------------------------------------


def is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def positive(v: Any) -> bool:
    return v > 0  # raises TypeError on str, None, lists: must count as no match


def explode(v: Any) -> bool:
    raise RuntimeError("predicate bug")


def has_a(msg: Any) -> bool:
    return isinstance(msg, Mapping) and "a" in msg


keys = st.sampled_from(["a", "b", ("o", "x"), ("o", "y", "z")])
scalars = st.sampled_from([0, 1, 2, 1.0, True, False, None, "a", "b", "", float("nan")])
filter_values = scalars | st.sampled_from([is_int, positive, explode]) | st.just([1, 2]) | st.just({"x": 1})
filter_dicts = st.dictionaries(keys, filter_values, max_size=3)
filter_lists = st.none() | st.lists(filter_dicts, max_size=3)
message_values = scalars | st.just([1, 2]) | st.just({"x": 1}) | st.text(max_size=2)
messages = st.one_of(
    st.dictionaries(st.sampled_from(["a", "b", "c"]), message_values, max_size=3).flatmap(
        lambda top: st.dictionaries(st.sampled_from(["x", "y"]), message_values | st.just({"z": 1}), max_size=2).map(
            lambda o: {**top, "o": o} if o else top
        )
    ),
    st.lists(st.integers(0, 2), max_size=2),  # not mappings: only match-all filters take them
    st.sampled_from([0, "a", True]),
)


def field(msg: Any, key: Any) -> tuple[bool, Any]:
    node = msg
    for step in key if isinstance(key, tuple) else (key,):
        if not isinstance(node, Mapping) or step not in node:
            return False, None
        node = node[step]
    return True, node


def plain_match(filters: list[Mapping[Any, Any]] | None, msg: Any) -> bool:
    """The README's definition, written out naively."""
    if not filters:
        return True
    if not isinstance(msg, Mapping):
        return False
    for clause in filters:
        ok = True
        for key, want in clause.items():
            found, value = field(msg, key)
            if not found:
                ok = False
            elif callable(want):
                try:
                    ok = bool(want(value))
                except Exception:
                    ok = False
            else:
                ok = value == want
            if not ok:
                break
        if ok:
            return True
    return False


def plain_condition(cond: list[Any], msg: Any) -> bool:
    for item in cond:
        if callable(item):
            try:
                if item(msg):
                    return True
            except Exception:
                pass
        elif plain_match([item], msg):
            return True
    return False


@FUZZ
@given(
    filter_sets=st.lists(filter_lists, min_size=1, max_size=5),
    condition=st.lists(filter_dicts | st.sampled_from([has_a, explode]), min_size=1, max_size=3),
    batch=st.lists(messages, max_size=12),
)
async def test_fuzzed_filters_agree_with_the_plain_definition_end_to_end(
    client: JsonClient,
    server: FeedServer,
    filter_sets: list[list[Mapping[Any, Any]] | None],
    condition: list[Any],
    batch: list[Any],
) -> None:
    """Through a real connection, every stream gets exactly the messages the plain definition matches."""
    streams = [client.stream_filter(f, maxsize=100) for f in filter_sets]
    waiting = client.expect(condition, timeout=5)
    await client.wait_connected(timeout=5)
    for msg in batch:
        await server.broadcast(json.dumps(msg))  # str messages too go as JSON, not as raw text
    marker = {"marker": "end", "o": {"x": "end"}}
    await settle(client, server, marker)
    wire = [json.loads(json.dumps(m)) for m in batch]  # what the client really parses
    for f, stream in zip(filter_sets, streams):
        got = [stream.get_nowait() for _ in range(stream.queued)]
        if plain_match(f, marker):
            got = got[:-1]
        want = [m for m in wire if plain_match(f, m)]
        assert len(got) == len(want) and all(same(g, w) for g, w in zip(got, want)), f
        await stream.close()
    first = next((m for m in [*wire, marker] if plain_condition(condition, m)), None)
    if first is None:
        waiting.cancel()
    else:
        assert same(await waiting, first)
    assert client.stats()["connects"] == 1


async def test_predicate_errors_are_counted_and_logged_not_raised(
    client: JsonClient, server: FeedServer, logs: list[str]
) -> None:
    """A predicate that raises on every message is no match, counted, and logged; the stream next to it is fed."""
    broken = client.stream_filter([{"a": explode}])
    fine = client.stream_filter([{"a": 1}])
    await client.wait_connected(timeout=5)
    for _ in range(3):
        await server.broadcast({"a": 1})
    await settle(client, server)
    assert fine.queued == 3 and broken.queued == 0
    assert client.stats()["predicate_errors"] == 3
    assert any("predicate bug" in line for line in logs)
