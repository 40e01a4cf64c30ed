"""The conversation examples run offline as scripts, exit 0 and print what they promise."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


def run_example(name: str) -> str:
    """Run examples/<name> as a user would, with this interpreter; return its stdout."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / name)],
        capture_output=True, text=True, timeout=20, env=env, cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    return done.stdout


def test_subscribe_ack_waits_for_both_kinds_of_ack() -> None:
    """subscribe_ack.py gets the id-correlated ack, then the event ack, then the trades."""
    lines = run_example("subscribe_ack.py").splitlines()
    assert lines == [
        "id-correlated ack:  {'id': 1, 'result': None}",
        "event ack:          {'event': 'subscribed', 'channel': 'ethusdt@trade'}",
        "trade:              BTCUSDT at 100.00",
        "trade:              ETHUSDT at 101.00",
        "trade:              BTCUSDT at 102.00",
    ]


def test_job_poll_finishes_one_job_and_alarms_on_the_other() -> None:
    """job_poll.py polls one job to done and stops the other at its failure."""
    lines = run_example("job_poll.py").splitlines()
    assert lines == [
        "render-42: done after 4 checks: {'job': 'render-42', 'state': 'done'}",
        "export-7: FAILED after 3 checks: {'job': 'export-7', 'state': 'failed'}",
    ]
