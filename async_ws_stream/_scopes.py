"""The context a hook runs in, and what that forbids or ties to it.

Two hooks run where some calls of the client cannot work as a user expects:

* ``_on_connect(ws)`` runs before its connection is read, so a reply it waits
  for through the client (``request``, ``wait_for``, ``poll``) can never arrive,
  and ``send`` would wait for a connection that the hook itself holds back.
  Those calls raise :class:`HookMisuse` at once, saying to talk to ``ws``.
* ``_when2create_new_ws()`` runs once per connection. Streams it makes (the older
  package's README makes one on every connection to watch for ``listenKeyExpired``)
  belong to that one call: they end, after their buffer, when it returns or raises,
  so that they cannot pile up one per recycle.

The supervisor marks each run with :func:`running`; tasks the hook starts inherit
the mark (context variables are copied into new tasks) and see it lifted when
the hook is done.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from typing import Any, Literal

from ._backoff import HookMisuse

__all__ = ["HookMisuse", "HookRun", "check_not_in_on_connect", "recycle_trigger", "running"]

Hook = Literal["_on_connect", "_when2create_new_ws"]


class HookRun:
    """One run of a hook: which, whether it still runs, and the streams tied to it."""

    __slots__ = ("hook", "running", "streams")

    def __init__(self, hook: Hook) -> None:
        self.hook = hook
        self.running = True
        self.streams: list[Any] = []  # Feeds made by a _when2create_new_ws run


_CURRENT: contextvars.ContextVar[HookRun | None] = contextvars.ContextVar("async_ws_stream_hook", default=None)


@contextlib.contextmanager
def running(hook: Hook) -> Iterator[HookRun]:
    """Mark the code inside (and the tasks it starts) as run by ``hook``; end its streams after."""
    run = HookRun(hook)
    token = _CURRENT.set(run)
    try:
        yield run
    finally:
        run.running = False
        _CURRENT.reset(token)
        for feed in run.streams:
            feed.finish()
        run.streams.clear()


def _current() -> HookRun | None:
    run = _CURRENT.get()
    return run if run is not None and run.running else None


def check_not_in_on_connect(what: str) -> None:
    """Raise :class:`HookMisuse` if called (awaited) while ``_on_connect`` runs."""
    run = _current()
    if run is not None and run.hook == "_on_connect":
        raise HookMisuse(
            f"{what} was called inside _on_connect, where it cannot work: the connection is read only "
            "after _on_connect returns, so no reply can reach the client and no send can go out through "
            "it yet. Talk to the connection directly: `await ws.send(...)`, then `await ws.recv()` for the "
            "reply (a handshake such as graphql-transport-ws's connection_init/connection_ack); or call "
            "self.expect(...) there and await it after the hook"
        )


def recycle_trigger() -> HookRun | None:
    """The running ``_when2create_new_ws`` the caller is in, if any (its streams end with it)."""
    run = _current()
    return run if run is not None and run.hook == "_when2create_new_ws" else None
