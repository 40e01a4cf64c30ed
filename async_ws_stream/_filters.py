"""Compiled message filters: the plain definition of a match, and its compiled form.

This module is pure: no asyncio, no I/O, no logging. Errors raised by user predicates
are handed to an ``on_error`` callback, or propagate when there is none.

The plain definition
--------------------
A *filter* is a list of dicts (or one dict), or None. A message matches when every key/value pair of
**any one** dict equals the message's field (``msg[key] == value``):

- ``None`` and ``[]`` match everything, mappings or not.
- Only mappings (:class:`collections.abc.Mapping`) and *typed messages* can match a
  non-empty filter, so ``[{}]`` matches every mapping and every typed message, and
  nothing else.
- A typed message is an instance of a ``msgspec.Struct`` or of a dataclass. Its fields
  stand for keys: ``{"s": "BTCUSDT"}`` matches it when it has a field ``s`` and
  ``msg.s == "BTCUSDT"``. Only declared fields count (not methods, properties or other
  attributes), a key that is not a string never names one, and a field holding
  ``msgspec.UNSET`` (or not set at all) is missing, as an absent key is.
- A tuple key is a path into nested mappings and typed messages, in any mix:
  ``{("o", "x"): "NEW"}`` matches ``{"o": {"x": "NEW"}}`` and ``Order(o=Info(x="NEW"))``.
  Every step must be a mapping that contains the key (or a typed message with that
  field); a missing step means no match. ``("o",)`` is the same as ``"o"``; ``()`` is
  an error. To match a literal tuple key, wrap it in a 1-tuple: ``{(("a", "b"),): 1}``.
- A callable value is a predicate on the field: ``{"p": lambda v: float(v) > 100}``
  matches when the field exists and the predicate returns something truthy. Anything
  callable counts, classes included. A predicate that raises counts as no match and is
  reported to ``on_error(exc, source)``.
- An item may also be a callable ``msg -> bool`` tested against the whole message. It
  sees every message, mappings or not. A single dict or callable is the same as a list
  of one: filters (``stream_filter``, ``add_handler``) and conditions (``expect``,
  ``wait_for``, ``poll``) take the same shapes, and differ only in that a filter may be
  None or ``[]`` (everything) while a condition may not.

The index that routes messages to their consumers is in :mod:`._dispatch`.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

__all__ = [
    "MISSING",
    "SHAPES",
    "Clause",
    "Fields",
    "Filters",
    "OnError",
    "Pair",
    "Path",
    "compile_condition",
    "compile_filters",
    "describe_value",
    "fields_of",
    "is_anchorable",
    "matches",
    "pairs_match",
    "walk",
]

Path = tuple[Hashable, ...]
"""A key path into nested mappings; ``("o", "x")`` reads ``msg["o"]["x"]``."""

OnError = Callable[[BaseException, object], None]
"""Receives an error raised by a user predicate and the ``source`` of its clause."""


class _Missing:
    """Marks a field that is absent; distinct from every value a message can hold."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<missing>"


MISSING: Any = _Missing()

# One compiled key/value pair: (first key, remaining path steps, value, value is a predicate).
# The first key is split off because nearly every path has one step, and reading it is then
# a single ``msg.get`` with no loop.
Pair = tuple[Hashable, Path, Any, bool]


# type -> (field names, the UNSET marker of msgspec or MISSING), or None when the type
# holds no typed message. Message types are few and long-lived, so a plain dict caches
# them (a weak one would cost more per message than the few entries it could free).
_TYPED: dict[type, tuple[frozenset[str], Any] | None] = {}


def _typed_fields(cls: type) -> tuple[frozenset[str], Any] | None:
    """The field names of a msgspec Struct or dataclass type, and its unset marker; else None."""
    # A Struct's class was made with msgspec, so msgspec is imported if there is one:
    # this module never imports it (it is an optional extra).
    msgspec = sys.modules.get("msgspec")
    info: tuple[frozenset[str], Any] | None
    if msgspec is not None and issubclass(cls, msgspec.Struct):
        info = (frozenset(getattr(cls, "__struct_fields__")), msgspec.UNSET)
    elif dataclasses.is_dataclass(cls):
        info = (frozenset(f.name for f in dataclasses.fields(cls)), MISSING)
    else:
        info = None
    _TYPED[cls] = info
    return info


class Fields:
    """A typed message seen as a read-only mapping of its fields (only ``get``).

    The matching code reads every message with ``msg.get(key, MISSING)``; wrapping a
    Struct or dataclass in this view lets the same code, and the same index buckets,
    serve typed messages without a second copy of either.
    """

    __slots__ = ("_obj", "_names", "_unset")

    def __init__(self, obj: object, names: frozenset[str], unset: Any) -> None:
        self._obj = obj
        self._names = names
        self._unset = unset

    def get(self, key: Hashable, default: Any = None) -> Any:
        """Return the field ``key`` of the message, or default when it has no such field."""
        if key not in self._names:
            return default
        value = getattr(self._obj, key, default)  # key is in names: a str
        return default if value is self._unset else value


def fields_of(obj: object) -> Fields | None:
    """A :class:`Fields` view of obj when it is a typed message (Struct, dataclass), else None."""
    cls = type(obj)
    info = _TYPED.get(cls, MISSING)
    if info is MISSING:
        info = _typed_fields(cls)
    if info is None:
        return None
    return Fields(obj, info[0], info[1])


def _step(obj: Any, key: Hashable) -> Any:
    """Return ``obj[key]`` (or its field ``key``), or ``MISSING`` when it has none."""
    # The exact-type test first: it skips the much slower ABC isinstance for plain dicts.
    if type(obj) is dict:
        return obj.get(key, MISSING)
    if isinstance(obj, Mapping):
        # .get rather than [] so that a defaultdict in a message is not mutated.
        return obj.get(key, MISSING)
    fields = fields_of(obj)
    if fields is None:
        return MISSING
    return fields.get(key, MISSING)


def walk(obj: Any, steps: Path) -> Any:
    """Follow steps down nested mappings and typed messages; ``MISSING`` if any is absent."""
    for key in steps:
        obj = _step(obj, key)
        if obj is MISSING:
            break
    return obj


def pairs_match(pairs: tuple[Pair, ...], msg: Any, source: object, on_error: OnError | None) -> bool:
    """Evaluate pairs against msg: a Mapping, or the :class:`Fields` of a typed message."""
    for key, rest, value, is_predicate in pairs:
        got = msg.get(key, MISSING)
        if rest and got is not MISSING:
            got = walk(got, rest)
        if got is MISSING:
            return False
        if is_predicate:
            # A broken predicate must not take down dispatch for every other consumer,
            # so it counts as no match; on_error makes sure it is not lost silently.
            try:
                if not value(got):
                    return False
            except Exception as exc:
                if on_error is None:
                    raise
                on_error(exc, source)
                return False
        # `not got == value`, not `got != value`: the definition is written with ==.
        elif not got == value:
            return False
    return True


def is_anchorable(value: Any) -> bool:
    """Whether a dict lookup on value finds exactly the fields that == it."""
    if callable(value):
        return False
    try:
        hash(value)
        # NaN, and anything else not equal to itself, would be found by identity in a
        # dict but never matches under ==, so it cannot be looked up.
        return bool(value == value)
    except Exception:
        # A value whose hash or == misbehaves is not indexed; it is evaluated in full,
        # where any error surfaces with the message that provoked it.
        return False


def describe_value(value: object) -> str:
    """Render a bad argument for an error message: its type and a short repr."""
    return f"{type(value).__name__} {value!r:.60}"


def _init_clause(clause: Clause, source: Any, where: str, allow_callable: bool) -> None:
    """Validate source and fill in the slots of clause; errors name where it came from."""
    setattr_ = object.__setattr__
    if isinstance(source, Mapping):
        equalities: list[Pair] = []
        predicates: list[Pair] = []
        anchor: tuple[Path, Any] | None = None
        anchor_index = -1
        for key in source:
            try:
                hash(key)
            except TypeError:
                raise TypeError(
                    f"{where} has an unhashable key {describe_value(key)}; "
                    "keys must be hashable, and a path into nested dicts is a tuple of keys"
                ) from None
            if isinstance(key, tuple):
                if not key:
                    raise ValueError(
                        f"{where} has an empty tuple key (); a tuple key is a path into nested "
                        "dicts and needs at least one step, e.g. ('order', 'status')"
                    )
                path: Path = key
            else:
                path = (key,)
            value = source[key]
            pair: Pair = (path[0], path[1:], value, callable(value))
            if pair[3]:
                predicates.append(pair)
            else:
                if anchor is None and is_anchorable(value):
                    anchor = (path, value)
                    anchor_index = len(equalities)
                equalities.append(pair)
        # Equalities first: they are cheap and usually decide, so predicates run only when
        # they can still change the answer.
        pairs = (*equalities, *predicates)
        rest = pairs if anchor is None else pairs[:anchor_index] + pairs[anchor_index + 1 :]
        setattr_(clause, "source", source)
        setattr_(clause, "pairs", pairs)
        setattr_(clause, "_whole", None)
        setattr_(clause, "anchor", anchor)
        setattr_(clause, "rest", rest)
    elif callable(source):
        if not allow_callable:
            raise TypeError(
                f"{where} must be a dict, got {describe_value(source)}; a filter cannot be a "
                "function of the whole message, but a dict value can test one field: "
                "{'price': lambda v: v > 100}"
            )
        setattr_(clause, "source", source)
        setattr_(clause, "pairs", ())
        setattr_(clause, "_whole", source)
        setattr_(clause, "anchor", None)
        setattr_(clause, "rest", ())
    else:
        what = "a dict or a callable" if allow_callable else "a dict"
        raise TypeError(f"{where} must be {what}, got {describe_value(source)}")


class Clause:
    """One compiled dict of a filter (or one whole-message callable of a condition).

    Clauses are immutable and compare by identity. Build them with
    :func:`compile_filters` or :func:`compile_condition`; the constructor is for one-offs.

    Attributes:
        source: The dict or callable the caller passed, kept as-is for error messages
            and reporting. It was compiled when the clause was built: mutating it later
            does not change what the clause matches.
        pairs: The compiled key/value pairs, in the order given.
        anchor: The (path, value) the index may file the clause under, or None.
        rest: The pairs the anchor does not prove, which a bucket hit must still check.
    """

    __slots__ = ("anchor", "pairs", "rest", "source", "_whole")

    source: Mapping[Hashable, Any] | Callable[[Any], object]
    pairs: tuple[Pair, ...]
    _whole: Callable[[Any], object] | None
    anchor: tuple[Path, Any] | None
    rest: tuple[Pair, ...]

    def __init__(self, source: Mapping[Hashable, Any] | Callable[[Any], object]) -> None:
        """Compile one dict, or one whole-message callable.

        Raises:
            TypeError: source is neither a mapping nor callable, or has an unhashable key.
            ValueError: source has an empty tuple key.
        """
        _init_clause(self, source, "clause", allow_callable=True)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"Clause is immutable; cannot set {name!r}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"Clause is immutable; cannot delete {name!r}")

    def __repr__(self) -> str:
        return f"Clause({self.source!r})"

    def matches(self, msg: object, on_error: OnError | None = None) -> bool:
        """Tell whether msg matches this clause under the plain definition.

        Args:
            msg: Any message. Only a mapping or a typed message can match a dict
                clause; a whole-message callable sees every message.
            on_error: Receives ``(exc, self.source)`` when a predicate raises; the clause
                then does not match. Without it the predicate's error propagates.
        """
        whole = self._whole
        if whole is not None:
            try:
                return bool(whole(msg))
            except Exception as exc:
                # Same policy as a field predicate: no match, reported, never silent.
                if on_error is None:
                    raise
                on_error(exc, whole)
                return False
        if not isinstance(msg, Mapping):
            fields = fields_of(msg)
            if fields is None:
                return False
            return pairs_match(self.pairs, fields, self.source, on_error)
        return pairs_match(self.pairs, msg, self.source, on_error)


Filters = Mapping[Any, Any] | Callable[[Any], object] | Sequence[Mapping[Any, Any] | Callable[[Any], object]] | None
"""A filter or a condition as the public calls take it: a dict, a callable, or a list of these."""

SHAPES = "a dict, a callable, or a list of these"
"""What every call that takes a filter or a condition accepts, in its error messages."""


def _compile(items: object, argname: str, allow_callables: bool) -> tuple[Clause, ...]:
    """Compile one dict or callable, or a list or tuple of them, into clauses."""
    expected = SHAPES if allow_callables else "a dict or a list of dicts"
    if isinstance(items, Mapping) or (allow_callables and callable(items)):
        clause = Clause.__new__(Clause)
        _init_clause(clause, items, argname, allow_callables)
        return (clause,)
    if not isinstance(items, (list, tuple)):
        raise TypeError(f"{argname} must be {expected}, got {describe_value(items)}")
    clauses = []
    for i, item in enumerate(items):
        clause = Clause.__new__(Clause)
        _init_clause(clause, item, f"{argname}[{i}]", allow_callables)
        clauses.append(clause)
    return tuple(clauses)


def compile_filters(
    filters: object,
    *,
    argname: str = "filters",
    allow_callables: bool = True,
) -> tuple[Clause, ...]:
    """Validate and compile a filter once, up front, so matching never re-parses it.

    ``stream_filter``, ``add_handler`` and the conditions of ``expect``/``wait_for``/``poll``
    take the same shapes (:data:`SHAPES`): a dict, a callable ``msg -> bool``, or a
    list or tuple of these (any one matches). A filter differs from a condition
    only in that None and ``[]`` are allowed and match everything.

    Args:
        filters: The filter, or None.
        argname: How error messages name the argument, e.g. ``"stream_filter: filters"``.
        allow_callables: Accept whole-message callables (True: the public calls all do).

    Returns:
        One :class:`Clause` per item, in order; ``()`` for match-everything.

    Raises:
        TypeError: filters is none of those shapes (a string, a generator), an item is
            neither a dict nor a callable, or a key is unhashable. The message names the
            argument, the index of the bad item and its value.
        ValueError: A key is the empty tuple ``()``.
    """
    if filters is None:
        return ()
    return _compile(filters, argname, allow_callables)


def compile_condition(cond: object, *, argname: str = "until") -> tuple[Clause, ...]:
    """Compile a condition for expect/wait_for/poll: the shapes of :func:`compile_filters`.

    A dict tests fields as in a filter; a callable receives the whole message (any
    message, mapping or not) and matches when it returns something truthy; a list
    matches when any of its items does.

    Args:
        cond: The condition.
        argname: How error messages name the argument.

    Returns:
        At least one :class:`Clause`.

    Raises:
        ValueError: cond is None or an empty list: a condition that matches everything
            is almost surely a bug. Also an empty tuple key, as in compile_filters.
        TypeError: cond, or an item of it, is neither a dict nor a callable.
    """
    if cond is None or (isinstance(cond, (list, tuple)) and not cond):
        raise ValueError(
            f"{argname} must be {SHAPES}, got {describe_value(cond)}; it would match every "
            "message. Pass the condition you are waiting for, e.g. {'type': 'ack'}"
        )
    return _compile(cond, argname, True)


def matches(clauses: tuple[Clause, ...], msg: object, on_error: OnError | None = None) -> bool:
    """Tell whether msg matches any of clauses; ``()`` matches every message.

    Args:
        clauses: From :func:`compile_filters` or :func:`compile_condition`.
        msg: Any message.
        on_error: As for :meth:`Clause.matches`.
    """
    if not clauses:
        return True
    for clause in clauses:
        if clause.matches(msg, on_error):
            return True
    return False

