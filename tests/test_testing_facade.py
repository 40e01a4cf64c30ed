"""async_ws_stream.testing's facade: every name of the old module still there, __all__ sorted and documented."""

from __future__ import annotations

from pathlib import Path

import async_ws_stream.testing as testing

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()

# What `async_ws_stream/testing.py` exported before it became a package.
BEFORE = [
    "DEFAULT_CLOSE_TIMEOUT", "DEFAULT_MAX_SIZE", "DEFAULT_PING_INTERVAL", "DEFAULT_WAIT_TIMEOUT",
    "ERROR_HANDLER_FAILED", "ERROR_UNKNOWN_METHOD", "FeedServer", "OnConnect", "RouteHandler",
]


def test_every_old_name_is_still_exported() -> None:
    """Code importing from the old module keeps working."""
    assert set(BEFORE) <= set(testing.__all__)
    for name in BEFORE:
        assert getattr(testing, name) is not None


def test_all_is_sorted_and_importable() -> None:
    """__all__ is sorted and every name in it exists."""
    assert testing.__all__ == sorted(testing.__all__)
    for name in testing.__all__:
        getattr(testing, name)


def test_classes_and_functions_are_documented_and_in_the_readme() -> None:
    """Every public class and function has a docstring; the main ones are named in the README."""
    for name in testing.__all__:
        obj = getattr(testing, name)
        if isinstance(obj, type) or callable(obj) and getattr(obj, "__module__", "").startswith("async_ws_stream"):
            assert (obj.__doc__ or "").strip(), name
    for name in ("FeedServer", "FaultProxy", "DepthFeed", "Applied", "Reply", "apply_depth_update"):
        assert f"`{name}" in README, name
