"""What a sink writes to a broker: the record's bytes, its id, its subject or key, gap markers.

No I/O, no asyncio.

A *record* is one message the client received, re-encoded with the client's own
``_serialize`` (compact JSON by default) and UTF-8 encoded, plus an id:

* the id comes from the client's optional ``_sequence(msg) -> (key, first, last)``
  hook when it returns a tuple: ``"s:<key>:<first>:<last>"``;
* otherwise from the content: ``"c:"`` + the BLAKE2b-128 hex digest of the
  record's bytes. Two collectors of one feed therefore give one
  message the same id only if they encode it to the same bytes: the same
  ``_parse_raw_data`` and ``_serialize`` (JSON keeps the frame's key order, so
  the default pair does), and no per-process field (receive time, connection
  number) inside the message.

A *gap marker* says that a sink lost messages (its stream overflowed while the
broker was slow or down, or a message could not be routed); it is a JSON
object ``{"_gap": {"dropped": n, "collector": "host:pid", "number": k}}``
published in line, where the loss happened, under an id no other record has.
"""

from __future__ import annotations

import hashlib
import json
import re
import string
from collections.abc import Callable, Mapping
from typing import Any

from loguru import logger

__all__ = [
    "GAP_KEY",
    "RecordEncoder",
    "Router",
    "compile_router",
    "count_gap",
    "gap_marker",
    "header_safe",
    "is_gap",
]

GAP_KEY = "_gap"

Router = Callable[[Any], str]
"""Maps a message to its subject (JetStream) or key (Redis); raises KeyError/ValueError when it cannot."""

_FIELD_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_ROUTES_KEPT = 65_536  # distinct subjects/keys remembered as checked; then forgotten and checked again


def compile_router(where: str, template: str | Router, *, separator: str) -> tuple[Router, str]:
    """Turn a subject/key template into a function; return it with the template's fixed prefix.

    A template is a string whose ``{field}`` placeholders are filled with the
    message's top-level fields, such as ``"md.binance.{e}.{s}"``; or any
    callable ``msg -> str``. The prefix (``"md.binance"``: the fixed tokens
    before the first placeholder) is where gap markers go by default.

    Raises:
        TypeError: the template is neither a str nor a callable.
        ValueError: a placeholder is not a plain field name (``{0}``, ``{a.b}``, ``{x!r}``).
    """
    if callable(template):
        return template, ""
    if not isinstance(template, str) or not template:
        raise TypeError(f"{where}: expected a template str such as 'md.{{e}}.{{s}}' or a callable, got {template!r}")
    parts: list[tuple[str, str | None]] = []
    for literal, field, spec, conversion in string.Formatter().parse(template):
        if field is not None and (not _FIELD_NAME.fullmatch(field) or spec or conversion):
            raise ValueError(
                f"{where}: placeholder {{{field}{'!' + conversion if conversion else ''}"
                f"{':' + spec if spec else ''}}} in {template!r} must be a plain field name such as {{s}}"
            )
        parts.append((literal, field))
    fields = [f for _, f in parts if f is not None]
    head = parts[0][0] if parts else ""
    prefix = separator.join(t for t in head.split(separator)[:-1] if t) if fields else template
    if not fields:
        return (lambda msg: template), prefix
    fmt = template

    def route(msg: Any) -> str:
        try:
            return fmt.format_map(msg)
        except TypeError:  # asked only then: isinstance(msg, Mapping) costs as much as the format
            if not isinstance(msg, Mapping):
                raise ValueError("message is not a mapping") from None
            raise

    return route, prefix


class RecordEncoder:
    """Encodes messages for one sink: bytes, id and subject; counts nothing, raises on what it cannot do.

    Args:
        serialize: The client's ``_serialize`` (message -> str | bytes).
        sequence: The client's ``_sequence`` hook, or None.
        router: From :func:`compile_router`.
        check_route: Raises ValueError for a subject/key the broker cannot take;
            called once for each distinct one.
    """

    __slots__ = ("_check_route", "_checked", "_router", "_sequence", "_serialize", "max_size")

    def __init__(
        self,
        serialize: Callable[[Any], str | bytes],
        sequence: Callable[[Any], tuple[Any, Any, Any] | None] | None,
        router: Router,
        max_size: int | None = None,
        check_route: Callable[[str], None] | None = None,
    ) -> None:
        self._serialize = serialize
        self._sequence = sequence
        self._router = router
        self._check_route = check_route
        self._checked: set[str] = set()
        #: Largest record the broker takes (bytes); a bigger one raises ValueError.
        self.max_size = max_size

    def encode(self, msg: Any) -> tuple[str, bytes, str]:
        """Return ``(subject or key, record bytes, id)``.

        Raises:
            KeyError, ValueError, TypeError: the message cannot be routed or encoded,
                or its record is bigger than ``max_size``.
        """
        subject = self._router(msg)
        if subject not in self._checked:
            self._check(subject)
        data = msg if isinstance(msg, bytes) else self._serialize(msg)
        if isinstance(data, str):
            data = data.encode()
        else:
            # A copy of its own size. orjson returns a 1 KiB block shrunk in place, and a batch
            # keeps a thousand such alive: that costs the allocator ~1 µs a record, the copy 0.05.
            data = b"%b" % (data,)
        if self.max_size is not None and len(data) > self.max_size:
            # Never publishable: retrying it would stall the sink for good. A loss, counted and marked.
            raise ValueError(f"a record of {len(data)} bytes exceeds the broker's limit of {self.max_size}; "
                             "raise max_payload in nats-server.conf")
        seq = self._sequence(msg) if self._sequence is not None else None
        if seq is not None:
            key, first, last = seq
            return subject, data, header_safe(f"s:{key}:{first}:{last}")
        # The subject is a function of the message, so the bytes alone identify it.
        return subject, data, "c:" + hashlib.blake2b(data, digest_size=16).hexdigest()

    def _check(self, subject: str) -> None:
        if not isinstance(subject, str):
            raise TypeError(f"the subject/key function returned {type(subject).__name__}, not a str")
        if self._check_route is not None:
            self._check_route(subject)
        if len(self._checked) >= _ROUTES_KEPT:
            self._checked.clear()
        self._checked.add(subject)


def header_safe(value: str) -> str:
    """``value`` as nats-py would send it in a header: stripped, line breaks removed.

    Applied to every id a sink makes, however it publishes, so that two
    collectors send one message under one id, and no id can end a header early.
    """
    if value.isprintable() and value == value.strip():
        return value
    return value.strip().replace("\r", "").replace("\n", "")


def gap_marker(dropped: int, collector: str, number: int, session: str) -> tuple[bytes, str]:
    """Return a gap marker's record bytes and its id, unique to this sink (``session``) and marker number."""
    body = {GAP_KEY: {"dropped": dropped, "collector": collector, "number": number}}
    return json.dumps(body, separators=(",", ":")).encode(), header_safe(f"g:{collector}:{session}:{number}")


def is_gap(msg: Any) -> bool:
    """True if a decoded record is a gap marker."""
    return isinstance(msg, dict) and GAP_KEY in msg and len(msg) == 1


def count_gap(where: str, counters: Any, marker: dict[str, Any]) -> None:
    """Count a gap marker a source read (``gaps``, ``gap_dropped``) and log it."""
    body = marker[GAP_KEY]
    dropped = body.get("dropped", 0) if isinstance(body, dict) else 0
    if not isinstance(dropped, int):
        dropped = 0
    counters.gaps += 1
    counters.gap_dropped += dropped
    logger.warning("{}: gap marker: collector {} lost {} messages", where,
                   body.get("collector") if isinstance(body, dict) else "?", dropped)
