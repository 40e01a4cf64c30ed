"""The package facade: what __all__ exports is sorted, documented, and named in the README."""

from __future__ import annotations

import inspect
import re
import subprocess
import sys
from pathlib import Path

import async_ws_stream

from .subprocesses import child_env

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def test_all_is_sorted_and_importable() -> None:
    """__all__ is sorted and every name in it exists."""
    names = [n for n in async_ws_stream.__all__ if n != "__version__"]
    assert names == sorted(names)
    for name in async_ws_stream.__all__:
        assert hasattr(async_ws_stream, name), name


def test_every_export_is_in_the_readme() -> None:
    """Every exported name appears in the README, in backticks."""
    for name in async_ws_stream.__all__:
        if name == "__version__":
            continue
        assert re.search(rf"`[^`]*\b{name}\b[^`]*`", README), f"{name} is not documented in README.md"


def test_every_export_has_a_docstring() -> None:
    """Every exported class and function says what it is."""
    for name in async_ws_stream.__all__:
        obj = getattr(async_ws_stream, name)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            assert inspect.getdoc(obj), f"{name} has no docstring"


def test_logging_is_disabled_by_default() -> None:
    """The library's own log lines are off until the user enables them (loguru's advice)."""
    from loguru import logger

    from async_ws_stream._counters import Counters
    from async_ws_stream._streams import Stream

    lines: list[str] = []
    sink = logger.add(lines.append, level="DEBUG")
    try:
        stream: Stream[int] = Stream(None, maxsize=1, overflow="drop_newest", copy=False, counters=Counters())
        stream.deliver(1)
        stream.deliver(2)  # an overflow: the library logs a warning, if enabled
    finally:
        logger.remove(sink)
    assert stream.dropped == 1
    assert lines == []


def test_logging_enabled_before_the_import_stays_enabled() -> None:
    """logger.enable("async_ws_stream") before `import async_ws_stream` is not undone by the import."""
    script = (
        "from loguru import logger; import sys; logger.remove(); logger.add(sys.stdout, format='{message}'); "
        "logger.enable('async_ws_stream'); import async_ws_stream; "
        "from async_ws_stream._counters import Counters; from async_ws_stream._streams import Stream; "
        "s = Stream(None, maxsize=1, overflow='drop_newest', copy=False, counters=Counters()); "
        "s.deliver(1); s.deliver(2)"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=child_env(), check=True)
    assert "is full" in out.stdout


def test_logging_stays_off_when_nothing_enabled_it() -> None:
    """A plain import leaves the library silent, even with a sink on DEBUG."""
    script = (
        "from loguru import logger; import sys; logger.remove(); logger.add(sys.stdout, format='{message}'); "
        "import async_ws_stream; "
        "from async_ws_stream._counters import Counters; from async_ws_stream._streams import Stream; "
        "s = Stream(None, maxsize=1, overflow='drop_newest', copy=False, counters=Counters()); "
        "s.deliver(1); s.deliver(2)"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=child_env(), check=True)
    assert out.stdout == ""


def test_the_transports_facade_is_sorted_importable_and_documented() -> None:
    """async_ws_stream.transports: __all__ sorted, every name there, every function and class with a docstring."""
    import async_ws_stream.transports as transports

    assert transports.__all__ == sorted(transports.__all__)
    for name in transports.__all__:
        obj = getattr(transports, name)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            assert inspect.getdoc(obj), f"transports.{name} has no docstring"
    for name in ("DEFAULT_READ_SIZE", "PICOWS_AVAILABLE"):  # what tests and bench/ import
        assert name in transports.__all__, name
    for name in ("guard", "picows_connect", "websockets_connect", "PicowsConnection"):
        assert name in transports.__all__ and re.search(rf"`[^`]*\b{name}\b[^`]*`", README), name
