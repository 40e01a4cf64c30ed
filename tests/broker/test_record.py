"""Records, ids, templates and gap markers (pure), and the package's face."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import async_ws_stream.broker as broker
from async_ws_stream.broker._record import (
    RecordEncoder,
    compile_router,
    gap_marker,
    is_gap,
)

ROOT = Path(__file__).resolve().parents[2]


def compact(msg: object) -> str:
    return json.dumps(msg, separators=(",", ":"))


def test_content_id_is_the_same_for_the_same_bytes_and_differs_otherwise() -> None:
    """Two collectors encoding one message alike give it one id; another message gets another."""
    route, _ = compile_router("t", "md.{e}.{s}", separator=".")
    a, b = RecordEncoder(compact, None, route), RecordEncoder(compact, None, route)
    msg = {"e": "trade", "s": "BTCUSDT", "t": 1}
    assert a.encode(msg) == b.encode(dict(msg))
    assert a.encode(msg)[0] == "md.trade.BTCUSDT"
    assert a.encode(msg)[2].startswith("c:") and a.encode(msg)[2] != a.encode({**msg, "t": 2})[2]


def test_sequence_hook_gives_the_id() -> None:
    """With _sequence, the id is key:first:last, whatever the bytes."""
    route, _ = compile_router("t", "md", separator=".")
    enc = RecordEncoder(compact, lambda m: ("BTCUSDT", m["U"], m["u"]), route)
    assert enc.encode({"U": 5, "u": 9})[2] == "s:BTCUSDT:5:9"


def test_template_prefix_and_bad_placeholders() -> None:
    """The fixed prefix is where gap markers go; positional or dotted placeholders are refused."""
    assert compile_router("t", "md.binance.{e}.{s}", separator=".")[1] == "md.binance"
    assert compile_router("t", "md:{s}", separator=":")[1] == "md"
    assert compile_router("t", "fixed", separator=".")[1] == "fixed"
    for bad in ("md.{}", "md.{a.b}", "md.{s!r}", "md.{s:>4}"):
        with pytest.raises(ValueError, match="plain field name"):
            compile_router("t", bad, separator=".")
    route, _ = compile_router("t", "md.{s}", separator=".")
    with pytest.raises(KeyError):
        route({"e": "trade"})


def test_gap_markers_are_recognised_and_unique_per_sink() -> None:
    """A marker decodes to {"_gap": {...}}; two sinks' markers never share an id."""
    data, first = gap_marker(7, "host:1", 1, "aaaa")
    _, second = gap_marker(7, "host:1", 1, "bbbb")
    marker = json.loads(data)
    assert is_gap(marker) and marker["_gap"] == {"dropped": 7, "collector": "host:1", "number": 1}
    assert first != second and not is_gap({"_gap": 1, "e": "trade"})


def test_public_names() -> None:
    """The package exports what its docstring's table lists, errors in the library's tree."""
    assert broker.__all__ == sorted(broker.__all__, key=lambda n: (not n.isupper(), n))
    for name in broker.__all__:
        assert getattr(broker, name) is not None
    from async_ws_stream import AsyncWsStreamError

    assert issubclass(broker.BrokerUnavailable, broker.BrokerError)
    assert issubclass(broker.BrokerConfigError, AsyncWsStreamError)


@pytest.mark.parametrize(("name", "blocked", "extra"), [("JetStreamSink", "nats", "nats"),
                                                        ("RedisStreamSource", "redis", "redis")])
def test_missing_client_library_names_the_extra(name: str, blocked: str, extra: str) -> None:
    """Without nats-py (or redis), using its names raises ImportError naming the pip extra."""
    code = (
        f"import sys; sys.modules[{blocked!r}] = None\n"
        "import async_ws_stream.broker as b\n"
        f"try:\n    b.{name}\nexcept ImportError as e:\n    print(e)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=20)
    assert f"pip install 'async_ws_stream[{extra}]'" in out.stdout, out.stderr
