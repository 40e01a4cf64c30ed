"""`python -m async_ws_stream demo`, run as a subprocess for a few seconds."""

from __future__ import annotations

import asyncio
import os
import pty
import re
import shutil
import signal
import subprocess
import sys

import pytest

from .conftest import eventually
from .subprocesses import ROOT, WITH_CTRL_C, child_env

BUDGET = 20.0  # seconds a demo run may take before the test fails


def _counters(text: str) -> dict[str, int]:
    """The key=value counters of the demo's final summary line."""
    summary = next(line for line in text.splitlines() if line.startswith("demo finished"))
    return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", summary)}


async def test_demo_shows_faults_and_recovery_then_exits_0() -> None:
    """Piped, the demo prints plain status lines, injects faults, shows the recovery and exits 0 on time."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "async_ws_stream", "demo", "--seconds", "2", "--fault-every", "0.5",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=child_env(),
    )
    async with asyncio.timeout(BUDGET):
        out_b, err_b = await proc.communicate()
    out, err = out_b.decode(), err_b.decode()
    assert proc.returncode == 0, err
    assert err == ""
    assert "\x1b[" not in out  # no terminal control codes into a pipe
    assert "fault: abrupt drop" in out and "recovered: reconnected" in out
    assert "fault: stall" in out
    assert re.search(r"^\[\s*\d+\.\ds\] up connects=\d+", out, re.MULTILINE)  # the periodic status line
    counters = _counters(out)
    assert counters["reconnects"] >= 1 and counters["connects"] == counters["reconnects"] + 1 + counters["recycles"]
    assert counters["messages"] > 0 and counters["dropped"] > 0  # the slow stream's drops are shown


async def test_demo_redraws_in_place_on_a_terminal() -> None:
    """On a terminal the demo redraws one view in place with ANSI codes, and restores the cursor."""
    leader, follower = pty.openpty()
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "async_ws_stream", "demo", "--seconds", "1",
            stdout=follower, stderr=asyncio.subprocess.PIPE, env=child_env(),
        )
        os.close(follower)
        follower = -1
        chunks: list[bytes] = []

        def read_all() -> None:
            while True:
                try:
                    chunk = os.read(leader, 65536)
                except OSError:  # EIO: the demo closed the terminal
                    return
                if not chunk:
                    return
                chunks.append(chunk)

        async with asyncio.timeout(BUDGET):
            reader = asyncio.ensure_future(asyncio.to_thread(read_all))
            _, err = await proc.communicate()
            await reader
    finally:
        for fd in (leader, follower):
            if fd >= 0:
                os.close(fd)
    out = b"".join(chunks).decode()
    assert proc.returncode == 0, err.decode()
    assert out.count("async_ws_stream demo") >= 2  # drawn more than once...
    assert re.search(r"\x1b\[\d+F\x1b\[J", out)  # ...each time over the previous frame
    assert "all trades" in out and "dropped" in out
    assert "\x1b[?25hdemo finished" in out.rstrip().splitlines()[-2]  # cursor shown again, then the summary


async def stop_demo_with(launcher: list[str], sig: signal.Signals) -> tuple[int | None, str, str]:
    """Start the demo, send ``sig`` once the feed flows, and return its status, stdout and stderr."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, *launcher, "demo",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=child_env(),
    )
    try:
        async with asyncio.timeout(BUDGET):
            assert proc.stdout is not None
            # The first status line means the feed is flowing; then the signal.
            while b"up connects=" not in await proc.stdout.readline():
                pass
            proc.send_signal(sig)
            rest, err = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.communicate()
    return proc.returncode, rest.decode(), err.decode()


async def test_demo_exits_0_on_ctrl_c() -> None:
    """SIGINT ends the demo cleanly: exit status 0, a summary, no traceback."""
    code, rest, err = await stop_demo_with(["-c", WITH_CTRL_C], signal.SIGINT)
    assert code == 0
    assert "Traceback" not in err
    assert "demo finished" in rest


async def test_demo_exits_143_on_sigterm_with_its_summary() -> None:
    """SIGTERM ends the demo as Ctrl-C does (summary, no traceback), with status 143."""
    code, rest, err = await stop_demo_with(["-m", "async_ws_stream"], signal.SIGTERM)
    assert code == 143
    assert "Traceback" not in err
    assert "demo finished" in rest


async def test_demo_summary_explains_published_minus_received() -> None:
    """The summary counts received feed messages and says what the difference to published is."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "async_ws_stream", "demo", "--seconds", "1.5", "--fault-every", "0.5",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=child_env(),
    )
    async with asyncio.timeout(BUDGET):
        out_b, _ = await proc.communicate()
    out = out_b.decode()
    counters = _counters(out)
    lost = counters["published"] - counters["received"]
    assert f"published - received = {lost}: feed messages the injected faults lost on the network" in out
    assert "recovered: reconnected in" in out  # timed from the client's events


def _tmux(*args: str) -> str:
    return subprocess.run(["tmux", *args], check=True, capture_output=True, text=True).stdout


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed (apt-get install tmux)")
async def test_demo_view_fits_an_80x24_terminal() -> None:
    """In a real 80x24 terminal (tmux) the live view wraps no line and its first line stays on screen."""
    session = f"awsdemo{os.getpid()}"
    command = f"cd {ROOT} && {sys.executable} -m async_ws_stream demo --seconds 30 --fault-every 0.3"
    _tmux("new-session", "-d", "-s", session, "-x", "80", "-y", "24", "-e",
          f"PYTHONPATH={child_env()['PYTHONPATH']}", command)
    try:
        # An external terminal: looked at until the faults have filled the view.
        await eventually(lambda: _tmux("capture-pane", "-p", "-t", session).count("recovered:") >= 3,
                         timeout=BUDGET, interval=0.1, what="three recoveries on screen")
        screen = _tmux("capture-pane", "-p", "-t", session)
        joined = _tmux("capture-pane", "-p", "-J", "-t", session)
    finally:
        _tmux("kill-session", "-t", session)
    assert screen.splitlines()[0].startswith("async_ws_stream demo")  # nothing scrolled off the top
    assert joined.splitlines() == screen.splitlines()  # -J joins wrapped lines: there were none
    assert max(len(line) for line in screen.splitlines()) < 80
