"""Beyond one machine: publish what a client receives to a broker, consume it anywhere.

=====================  ==========================  ==================================
name                   extra                       what
=====================  ==========================  ==================================
``JetStreamSink``      ``async_ws_stream[nats]``   a client's messages -> a JetStream stream
``JetStreamSource``    ``async_ws_stream[nats]``   a JetStream stream -> ``stream_filter`` streams
``ensure_stream``      ``async_ws_stream[nats]``   create a JetStream stream unless it exists
``RedisStreamSink``    ``async_ws_stream[redis]``  a client's messages -> a Redis stream
``RedisStreamSource``  ``async_ws_stream[redis]``  a Redis stream -> ``stream_filter`` streams
=====================  ==========================  ==================================

Each engine is imported when one of its names is first used, so that the NATS
half works without redis installed and the other way round; a missing package
raises an ImportError naming the extra to install.

Errors::

    AsyncWsStreamError
    └── BrokerError            a sink or source cannot do its work
        ├── BrokerUnavailable  no broker answered (address, port, server down)
        └── BrokerConfigError  the broker refused the setup (credentials, missing stream or group)
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._common import BrokerConfigError, BrokerError, BrokerUnavailable
from ._record import GAP_KEY

if TYPE_CHECKING:
    from ._jetstream import JetStreamSink
    from ._jetstream_source import JetStreamSource
    from ._nats import ensure_stream
    from ._redis import RedisStreamSink
    from ._redis_source import RedisStreamSource

__all__ = [
    "GAP_KEY",
    "BrokerConfigError",
    "BrokerError",
    "BrokerUnavailable",
    "JetStreamSink",
    "JetStreamSource",
    "RedisStreamSink",
    "RedisStreamSource",
    "ensure_stream",
]

_LAZY = {
    "JetStreamSink": ("._jetstream", "nats", "nats-py"),
    "JetStreamSource": ("._jetstream_source", "nats", "nats-py"),
    "ensure_stream": ("._nats", "nats", "nats-py"),
    "RedisStreamSink": ("._redis", "redis", "redis"),
    "RedisStreamSource": ("._redis_source", "redis", "redis"),
}


def __getattr__(name: str) -> Any:
    try:
        module, extra, package = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'async_ws_stream.broker' has no attribute {name!r}") from None
    try:
        value = getattr(importlib.import_module(module, __name__), name)
    except ModuleNotFoundError as exc:
        if exc.name is None or exc.name.split(".")[0] != package.split("-")[0]:
            raise
        raise ImportError(
            f"async_ws_stream.broker.{name} needs the {package!r} package: "
            f"pip install 'async_ws_stream[{extra}]'"
        ) from exc
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
