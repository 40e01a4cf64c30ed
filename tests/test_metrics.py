"""Prometheus metrics: a scripted run, then the registry's exposition text checked against stats()."""

from __future__ import annotations

import time
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from async_ws_stream.metrics import instrument
from async_ws_stream.testing import FeedServer, TopicFeed

from .conftest import JsonClient, VenueClient, settle


class TimedFeed(JsonClient):
    """Trades carry their exchange time in milliseconds, as Binance's "T"."""

    def _message_time(self, msg: Any) -> float | None:
        return msg["T"] / 1000 if "T" in msg else None


def scrape(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the exposition text, by (name, sorted labels)."""
    text = generate_latest(registry).decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def test_exposition_matches_stats_after_a_scripted_run(server: FeedServer) -> None:
    """Counters, state, connection, per-stream gauges and both lag histograms agree with what happened."""
    registry = CollectorRegistry()
    client = TimedFeed(server.url, backoff_initial=0.01)
    inst = instrument(client, registry=registry, name="feed")
    trades = client.stream_filter([{"e": "trade"}])
    try:
        await client.wait_connected(timeout=5)
        for i in range(20):
            await server.broadcast({"e": "trade", "i": i, "T": time.time() * 1000})
        await server.send_garbage(2)  # two rounds: 2 text and 2 binary frames that do not parse
        await settle(client, server)
        for _ in range(15):
            await trades.get()  # 15 taken, 5 still queued
        await server.drop()
        await server.wait_connections(2)
        await client.wait_connected(timeout=5)
        stats = client.stats()
        samples = scrape(registry)
    finally:
        await client.exit()
    name = (("name", "feed"),)
    for key in ("frames", "messages", "parse_errors", "dropped", "connects", "reconnects", "retries"):
        assert samples[(f"async_ws_stream_{key}_total", name)] == stats[key], key
    assert stats["parse_errors"] == 4 and stats["reconnects"] == 1
    assert samples[("async_ws_stream_state", (("name", "feed"), ("state", "connected")))] == 1
    assert samples[("async_ws_stream_state", (("name", "feed"), ("state", "backoff")))] == 0
    assert samples[("async_ws_stream_connection", name)] == 2
    streams = {labels: v for (metric, labels), v in samples.items() if metric == "async_ws_stream_stream_queued"}
    assert sorted(streams.values()) == [5]
    assert samples[("async_ws_stream_dequeue_lag_seconds_count", name)] == 15
    assert samples[("async_ws_stream_message_lag_seconds_count", name)] == 20
    assert 0 <= samples[("async_ws_stream_message_lag_seconds_sum", name)] < 20 * 5
    inst.close()
    assert not any(labels == name for (_, labels) in scrape(registry))


async def test_two_clients_share_a_registry_under_their_names(server: FeedServer) -> None:
    """Each client is exported under its own name; a name used twice is refused."""
    registry = CollectorRegistry()
    one, two = JsonClient(server.url), JsonClient(server.url)
    try:
        instrument(one, registry=registry, name="one")
        instrument(two, registry=registry, name="two")
        with pytest.raises(ValueError, match="already exported"):
            instrument(two, registry=registry, name="one")
        with pytest.raises(TypeError, match="name must be a non-empty str"):
            instrument(two, registry=registry, name="")
        await one.wait_connected(timeout=5)
        await two.wait_connected(timeout=5)
        samples = scrape(registry)
    finally:
        await one.exit()
        await two.exit()
    assert samples[("async_ws_stream_connects_total", (("name", "one"),))] == 1
    assert samples[("async_ws_stream_connects_total", (("name", "two"),))] == 1


async def test_a_sharded_client_exports_each_shard(server: FeedServer, feed: TopicFeed) -> None:
    """Three shards: one series per shard for connected, topics, messages and reconnects, and the set's size."""

    class Sharded(VenueClient):
        max_subscriptions_per_connection = 2

    registry = CollectorRegistry()
    client = Sharded(server.url)
    instrument(client, registry=registry, name="venue")
    try:
        await client.subscribe("a", "b", "c", "d", "e", "f")
        await feed.publish("a", {"p": 1})
        await settle(client, server)
        stats = client.stats()
        samples = scrape(registry)
    finally:
        await client.exit()
    assert samples[("async_ws_stream_subscriptions", (("name", "venue"),))] == 6
    for shard in stats["shards"]:
        labels = (("name", "venue"), ("shard", str(shard["shard"])))
        assert samples[("async_ws_stream_shard_connected", labels)] == 1
        assert samples[("async_ws_stream_shard_topics", labels)] == 2
        assert samples[("async_ws_stream_shard_messages_total", labels)] == shard["messages"]
    assert sorted(s["shard"] for s in stats["shards"]) == [0, 1, 2]
    assert sum(s["messages"] for s in stats["shards"]) == stats["messages"]
