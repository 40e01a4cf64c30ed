"""The package facade: what __all__ exports is sorted, documented, and named in the README."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import async_ws_stream

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

    from async_ws_stream._streams import Stream

    class Counters:
        dropped = 0

    lines: list[str] = []
    sink = logger.add(lines.append, level="DEBUG")
    try:
        stream: Stream[int] = Stream(None, maxsize=1, overflow="drop_newest", copy=False,
                                     counters=Counters(), on_close=lambda s: None)
        stream._feed(1)
        stream._feed(2)  # an overflow: the library logs a warning, if enabled
    finally:
        logger.remove(sink)
    assert stream.dropped == 1
    assert lines == []


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
