"""Running `python -m async_ws_stream` as a child process, for the CLI and demo tests."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# A shell that starts jobs in the background (CI runners, some IDEs) hands its
# children SIGINT ignored, and Python keeps it ignored; this launcher restores
# Python's own handler so that the Ctrl-C tests test our program, not the shell.
WITH_CTRL_C = (
    "import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "sys.argv[0] = 'async_ws_stream'; runpy.run_module('async_ws_stream', run_name='__main__', alter_sys=True)"
)


def child_env() -> dict[str, str]:
    """This environment, with the source tree importable by the child."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
