"""The feed examples run offline as scripts, within a short time budget, and print what they promise."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
BUDGET = 20.0  # seconds; each example takes one or two


def run_example(name: str) -> str:
    """Run examples/<name> as a user would, with this interpreter; return its stdout."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run(
        [sys.executable, "-W", "error", str(EXAMPLES / name)],
        capture_output=True, text=True, timeout=BUDGET, env=env, cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    return done.stdout


def test_exchange_feed_resubscribes_and_feeds_every_consumer() -> None:
    """exchange_feed.py subscribes on both connections and each consumer gets all of its messages."""
    assert run_example("exchange_feed.py").splitlines() == [
        "connection 1: subscribed to ['btcusdt@trade', 'ethusdt@trade', 'btcusdt@depth']",
        "-- the exchange dropped the connection (no close frame) --",
        "connection 2: subscribed to ['btcusdt@trade', 'ethusdt@trade', 'btcusdt@depth']",
        "BTCUSDT VWAP over 80 trades: 64,004.38",
        "BTCUSDT best bid 63,999.75 / best ask 64,000.25 after 40 book updates",
        "trades per symbol (handler): {'BTCUSDT': 80, 'ETHUSDT': 80}",
        "client: connects=2 reconnects=1 dropped=0",
    ]


def test_sharded_feed_spreads_3000_topics_over_3_connections_and_loses_nothing() -> None:
    """sharded_feed.py: 3 shards of 1,000 topics, one lost and back, every trade, no rule breached."""
    assert run_example("sharded_feed.py").splitlines() == [
        "shard 0: connection #1, 1000 topics",
        "shard 1: connection #2, 1000 topics",
        "shard 2: connection #3, 1000 topics",
        "-- the venue cut shard 1's connection --",
        "shard 1 is back, with its own topics subscribed again",
        "trades: 17000 of 17000 sent, missing: 0",
        "venue rule breaches: 0",
        "client: connects=4 reconnects=1 subscriptions=3000 dropped=0",
    ]


def test_user_data_feed_recycles_with_fresh_keys_and_loses_nothing() -> None:
    """user_data_feed.py uses a new listen key per connection, recycles, and misses no event."""
    out = run_example("user_data_feed.py")
    keys = re.search(r"^listen keys used: (.*)$", out, re.MULTILINE)
    assert keys is not None
    used = keys.group(1).split(", ")
    assert len(used) >= 2 and len(set(used)) == len(used)  # one fresh key per connection
    recycles = re.search(r"^recycles: (\d+), reconnects: 0$", out, re.MULTILINE)
    assert recycles is not None and int(recycles.group(1)) == len(used) - 1
    assert re.search(r"^account events: 200 of 200, missing: none, repeats dropped: \d+$", out, re.MULTILINE)


def test_threaded_example_feeds_each_worker_thread() -> None:
    """threaded.py's worker threads each read their own symbol's 50 trades."""
    lines = run_example("threaded.py").splitlines()
    assert lines[0] == "main thread: subscribed, ack {'id': 1, 'result': None}"
    assert lines[-3:] == [
        "BTCUSDT: 50 trades, last 104.00, high 108.00",
        "ETHUSDT: 50 trades, last 204.00, high 208.00",
        "SOLUSDT: 50 trades, last 304.00, high 308.00",
    ]


def test_bot_events_pauses_on_a_drop_and_resumes_on_reconnect() -> None:
    """bot_events.py matches Connected/Disconnected/Retrying/Closed in order with the trades."""
    assert run_example("bot_events.py").splitlines() == [
        "connected (#1): quoting",
        "paused: connection #1 lost (ConnectionClosedError)",
        "retry 1 in 0.00s",
        "retry 2 in 0.05s",
        "retry 3 in 0.10s",
        "connected (#2): quoting",
        "closed",
        "quotes: 15, trades ignored while paused: 0",
    ]


def test_order_book_matches_the_exchange_after_a_gap_a_drop_and_a_recycle() -> None:
    """order_book.py repairs a gap, a drop and a recycle, and ends with both books equal to the true ones."""
    lines = run_example("order_book.py").splitlines()
    assert lines[:-1] == [
        "connected: books from snapshots, then diffs",
        "BTCUSDT skipped 3 updates: repaired from a new snapshot",
        "connection dropped: reconnected, books from new snapshots",
        "connection recycled while diffs streamed",
        "BTCUSDT: local book equals the exchange's at update 1293",
        "ETHUSDT: local book equals the exchange's at update 1301",
        "event: gap in 'BTCUSDT': expected 1052, got 1060",
        "gaps: 1, resyncs: 5, recycles: 1, reconnects: 1",
    ]
    assert re.fullmatch(r"dropped as sent twice: \d+, as older than a snapshot: [1-9]\d*", lines[-1])


def test_typed_trades_filters_structs_and_counts_the_bad_frame() -> None:
    """typed_trades.py routes msgspec Structs by their fields and counts the frame that is not a Trade."""
    assert run_example("typed_trades.py").splitlines() == [
        "BTCUSDT VWAP over 60 Trade messages: 64,009.79",
        "ETHUSDT trades at 3,110 or more: 32",
        "maker-side trades (handler): {'BTCUSDT': 20, 'ETHUSDT': 20}",
        "parse errors: 1, messages: 120",
    ]
