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
    header_safe,
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


def test_ids_cannot_end_a_header_early() -> None:
    """A line break in a sequence key or a collector name is taken out of the id, which is stripped."""
    assert header_safe(" s:a\r\nX-Evil: 1:1:1 ") == "s:aX-Evil: 1:1:1"
    assert header_safe("c:00ff") == "c:00ff"
    route, _ = compile_router("t", "md", separator=".")
    enc = RecordEncoder(compact, lambda m: ("BTC\nUSDT", 1, 2), route)
    assert enc.encode({"t": 1})[2] == "s:BTCUSDT:1:2"
    assert gap_marker(1, "host\r\n:1", 1, "aaaa")[1] == "g:host:1:aaaa:1"


def test_each_subject_is_checked_once_and_a_bad_one_is_refused() -> None:
    """check_route sees each distinct subject once; what it refuses raises, and is not remembered."""
    seen: list[str] = []

    def check(subject: str) -> None:
        seen.append(subject)
        if " " in subject:
            raise ValueError(f"bad subject {subject!r}")

    route, _ = compile_router("t", "md.{s}", separator=".")
    enc = RecordEncoder(compact, None, route, check_route=check)
    for _ in range(3):
        enc.encode({"s": "BTCUSDT"})
        with pytest.raises(ValueError, match="bad subject"):
            enc.encode({"s": "BTC USDT"})
    assert seen == ["md.BTCUSDT", "md.BTC USDT", "md.BTC USDT", "md.BTC USDT"]
    with pytest.raises(TypeError, match="not a str"):
        RecordEncoder(compact, None, lambda m: 5, check_route=check).encode({})  # type: ignore[arg-type,return-value]


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
