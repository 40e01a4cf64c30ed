"""Prometheus metrics of a client, for an operator's graphs: ``pip install 'async_ws_stream[prometheus]'``.

``instrument(client, name="binance")`` exports, labelled ``name="binance"``:

==========================================================  =============================================
metric                                                      what
==========================================================  =============================================
``async_ws_stream_{frames,messages,parse_errors,...}_total`` the counters of ``stats()`` (frames, messages,
                                                            dropped, parse_errors, handler_errors,
                                                            connects, reconnects, recycles, retries)
``async_ws_stream_state``                                   1 for the client's state (label ``state``)
``async_ws_stream_connection``                              the number of the connection serving now
``async_ws_stream_last_frame_age_seconds``                  seconds since the last frame
``async_ws_stream_stream_queued`` / ``_stream_dropped_total`` per stream (labels ``stream``, ``filters``)
``async_ws_stream_subscriptions``                           topics in the declared set (``subscribe``)
``async_ws_stream_shard_{connected,topics}``,               per connection of a sharded client (label
``async_ws_stream_shard_{messages,reconnects}_total``       ``shard``; one, shard 0, for any other)
``async_ws_stream_dequeue_lag_seconds``                     histogram: a frame received to its message
                                                            taken by a consumer (streams made after
                                                            ``instrument``)
``async_ws_stream_message_lag_seconds``                     histogram: the message's own time to its
                                                            receipt, where ``_message_time(msg)`` returns
                                                            one (seconds since the epoch)
==========================================================  =============================================

The per-connection message rate is ``rate(async_ws_stream_messages_total[1m])``.
Counters and gauges are read from ``stats()`` when the registry is scraped, so
they cost the client nothing between scrapes; the lag histograms cost a clock
read per message, and only for what ``instrument`` was asked to watch. A client
that is never instrumented runs the same code as before.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Callable, Iterator
from typing import Any, Protocol

try:
    from prometheus_client import REGISTRY, CollectorRegistry
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
        Metric,
    )
    from prometheus_client.registry import Collector
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "async_ws_stream.metrics needs prometheus_client: pip install 'async_ws_stream[prometheus]'"
    ) from exc

__all__ = ["LAG_BUCKETS", "Instrumentation", "instrument"]

#: Upper bounds of the lag histograms' buckets, in seconds.
LAG_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
               10.0)

_COUNTERS = ("frames", "messages", "dropped", "parse_errors", "handler_errors", "connects", "reconnects",
             "recycles", "retries", "subscribe_errors")
_STATES = ("new", "connecting", "connected", "backoff", "failed", "closed")


class _Instrumentable(Protocol):
    """What ``instrument`` needs of a client (``AsyncWsStream`` has it)."""

    def stats(self) -> dict[str, Any]: ...

    def _watch_lag(self, on_dequeue: Callable[[float], None], on_message: Callable[[Any], None] | None) -> None: ...


class _Histogram:
    """Cumulative bucket counts and a sum, observed in the client's loop, read at scrape time."""

    __slots__ = ("counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(LAG_BUCKETS) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(LAG_BUCKETS, value)] += 1
        self.sum += value

    def buckets(self) -> list[tuple[str, float]]:
        running, out = 0, list[tuple[str, float]]()
        for bound, count in zip((*map(str, LAG_BUCKETS), "+Inf"), self.counts):
            running += count
            out.append((bound, running))
        return out


class Instrumentation:
    """The metrics of one instrumented client. :meth:`close` stops exporting them."""

    def __init__(self, client: _Instrumentable, name: str, exporter: _Exporter) -> None:
        self.client = client
        self.name = name
        self.dequeue_lag = _Histogram()
        self.message_lag = _Histogram()
        self._exporter = exporter

    def close(self) -> None:
        """Stop exporting this client's metrics. Idempotent."""
        self._exporter.clients.pop(self.name, None)


class _Exporter(Collector):  # type: ignore[misc, unused-ignore]  # Any without the extra
    """One per registry: every instrumented client of that registry, each under its own ``name``."""

    def __init__(self) -> None:
        self.clients: dict[str, Instrumentation] = {}

    def describe(self) -> list[Metric]:
        return []  # names vary with what is instrumented; nothing to check them against up front

    def collect(self) -> Iterator[Metric]:
        counters = {
            key: CounterMetricFamily(f"async_ws_stream_{key}", f"stats()['{key}'] of the client", labels=["name"])
            for key in _COUNTERS
        }
        state = GaugeMetricFamily("async_ws_stream_state", "1 for the client's state", labels=["name", "state"])
        connection = GaugeMetricFamily("async_ws_stream_connection", "the number of the serving connection",
                                       labels=["name"])
        age = GaugeMetricFamily("async_ws_stream_last_frame_age_seconds", "seconds since the last frame",
                                labels=["name"])
        queued = GaugeMetricFamily("async_ws_stream_stream_queued", "messages waiting in a stream",
                                   labels=["name", "stream", "filters"])
        dropped = CounterMetricFamily("async_ws_stream_stream_dropped", "messages a stream dropped",
                                      labels=["name", "stream", "filters"])
        subscriptions = GaugeMetricFamily("async_ws_stream_subscriptions", "topics in the declared set",
                                          labels=["name"])
        shard_gauges = {
            "connected": GaugeMetricFamily("async_ws_stream_shard_connected", "1 while the shard's connection "
                                           "carries traffic", labels=["name", "shard"]),
            "topics": GaugeMetricFamily("async_ws_stream_shard_topics", "topics declared on the shard",
                                        labels=["name", "shard"]),
        }
        shard_counters = {
            key: CounterMetricFamily(f"async_ws_stream_shard_{key}", f"stats()['shards'][n]['{key}']",
                                     labels=["name", "shard"])
            for key in ("messages", "reconnects")
        }
        lags = {
            "dequeue": HistogramMetricFamily("async_ws_stream_dequeue_lag_seconds",
                                             "frame received to message taken by a consumer", labels=["name"]),
            "message": HistogramMetricFamily("async_ws_stream_message_lag_seconds",
                                             "message time to its receipt", labels=["name"]),
        }
        for name, inst in list(self.clients.items()):
            stats = inst.client.stats()
            for key, family in counters.items():
                family.add_metric([name], stats[key])
            for value in _STATES:
                state.add_metric([name, value], 1.0 if stats["state"] == value else 0.0)
            if stats["connection"] is not None:
                connection.add_metric([name], stats["connection"])
            if stats["last_frame_age"] is not None:
                age.add_metric([name], stats["last_frame_age"])
            for i, stream in enumerate(stats["streams"]):
                labels = [name, str(i), repr(stream["filters"])[:120]]
                queued.add_metric(labels, stream["queued"])
                dropped.add_metric(labels, stream["dropped"])
            subscriptions.add_metric([name], stats["subscriptions"])
            for shard in stats["shards"]:
                labels = [name, str(shard["shard"])]
                shard_gauges["connected"].add_metric(labels, 1.0 if shard["state"] == "connected" else 0.0)
                shard_gauges["topics"].add_metric(labels, len(shard["topics"]))
                for key, family in shard_counters.items():
                    family.add_metric(labels, shard[key])
            for key, histogram in (("dequeue", inst.dequeue_lag), ("message", inst.message_lag)):
                lags[key].add_metric([name], histogram.buckets(), histogram.sum)
        yield from counters.values()
        yield from (state, connection, age, queued, dropped, subscriptions, *shard_gauges.values(),
                    *shard_counters.values(), *lags.values())


_exporters: dict[int, tuple[CollectorRegistry, _Exporter]] = {}


def instrument(
    client: _Instrumentable, *, registry: CollectorRegistry | None = None, name: str = "default"
) -> Instrumentation:
    """Export ``client``'s metrics through ``registry`` (default: prometheus_client's global one).

    Call it before making the streams whose dequeue lag should be measured: a
    stream made earlier is counted but not timed. If the client's class defines
    ``_message_time(msg) -> float | None`` (seconds since the epoch, such as a
    trade's ``T / 1000``), the message lag histogram is observed for every message.

    Args:
        client: The client (an ``AsyncWsStream``).
        registry: Where to export; several clients may share one, each under its ``name``.
        name: The ``name`` label of every metric of this client.

    Raises:
        TypeError: ``name`` is not a non-empty str.
        ValueError: another client of ``registry`` already uses ``name``.
    """
    if not isinstance(name, str) or not name:
        raise TypeError(f"instrument: name must be a non-empty str, got {type(name).__name__} {name!r:.60}")
    registry = REGISTRY if registry is None else registry
    held = _exporters.get(id(registry))
    if held is None or held[0] is not registry:
        held = (registry, _Exporter())
        registry.register(held[1])
        _exporters[id(registry)] = held
    exporter = held[1]
    if name in exporter.clients:
        raise ValueError(f"instrument: a client named {name!r} is already exported by this registry; "
                         "give each client its own name=")
    inst = Instrumentation(client, name, exporter)
    exporter.clients[name] = inst
    message_time = getattr(client, "_message_time", None)
    on_message = None
    if callable(message_time):
        clock = time.time

        def on_message(msg: Any) -> None:
            stamp = message_time(msg)
            if stamp is not None:
                inst.message_lag.observe(max(0.0, clock() - stamp))

    client._watch_lag(inst.dequeue_lag.observe, on_message)
    return inst
