"""Exact shapes: the filters made only of top-level equalities, each kind found with one dict lookup.

This module is pure: no asyncio, no I/O, no logging. :class:`~._dispatch.Index` files
here what it can, and the rest in its own buckets.

Most filters of a feed's consumers have one form: a few top-level keys, each equal
to a plain value, such as ``{"e": "trade", "s": "BTCUSDT"}``. Such a clause matches
a message exactly when the message's values under those keys, taken together, equal
the clause's. So the clauses with the same keys (their *shape*, ``("e", "s")``) live
in one dict under the tuple of their values (the bare value for a shape of one key),
and one lookup with the message's values finds every one of them that matches, fully
proven: the targets come out as a ready-made tuple, with nothing left to check.

A subscription is filed here when every clause of its filter has the same shape (a
filter for several symbols, ``[{"s": "A"}, {"s": "B"}]``, is one), so that a message,
which has one value tuple per shape, finds it at most once. The lookup relies on
equal values hashing equally, as the index's buckets do; a message whose value cannot
be hashed is checked clause by clause against the shape (the rare path).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from typing import Any, Generic, TypeVar

from ._filters import MISSING, Clause, OnError, is_anchorable

__all__ = ["SHAPES_MAX", "Shapes", "fast_match", "shape_of"]

T = TypeVar("T")

#: Shapes kept at most: each costs a lookup per message, so a filter of a new shape
#: beyond these goes to the index's buckets instead.
SHAPES_MAX = 4

Keys = tuple[Hashable, ...]


def shape_of(clauses: tuple[Clause, ...]) -> tuple[Keys, list[Any]] | None:
    """The shape shared by every clause and each clause's lookup key, or None if they have none.

    A clause has a shape when it is a dict of plain top-level equalities (no
    path, no predicate, every value hashable and equal to itself) with at least
    one key. Keys are put in a fixed order, so ``{"s": .., "e": ..}`` and
    ``{"e": .., "s": ..}`` share a shape.
    """
    shape: Keys | None = None
    keys_of: list[Any] = []
    for clause in clauses:
        pairs = clause.pairs
        if clause._whole is not None or not pairs:
            return None
        by_key = {}
        for key, steps, value, is_predicate in pairs:
            # {"b": 1, ("b",): 2} names one key twice: it needs both values, no lookup can say so.
            if steps or is_predicate or key in by_key or not is_anchorable(value):
                return None
            by_key[key] = value
        ordered: list[Any] = list(by_key)
        try:
            ordered.sort()
        except TypeError:  # keys of several types: order them by type, then text
            ordered.sort(key=lambda k: (type(k).__name__, repr(k)))
        keys = tuple(ordered)
        if shape is None:
            shape = keys
        elif keys != shape:
            return None
        keys_of.append(by_key[keys[0]] if len(keys) == 1 else tuple(by_key[k] for k in keys))
    if shape is None:
        return None
    return shape, keys_of


class Shapes(Generic[T]):
    """The shapes of an index: shape -> lookup key -> the subscriptions filed there.

    ``snapshot`` is what a match reads: ``(width, first key, last key, keys, lookup)``
    for each shape, whose lookup maps a message's value (one key) or value tuple to the
    tuple of matching targets. Rebuilt lazily, bucket by bucket, by :meth:`refresh`.
    """

    def __init__(self) -> None:
        # Authoritative: dicts used as ordered sets, so targets keep registration order.
        self._filed: dict[Keys, dict[Any, dict[Any, T]]] = {}
        self._lookups: dict[Keys, dict[Any, tuple[T, ...]]] = {}
        self._dirty: set[tuple[Keys, Any]] = set()
        self.snapshot: tuple[tuple[int, Hashable, Hashable, Keys, dict[Any, tuple[T, ...]]], ...] = ()

    def __len__(self) -> int:
        return len(self._filed)

    def can_take(self, shape: Keys) -> bool:
        """Whether a subscription of this shape may be filed (the shape exists, or there is room)."""
        return shape in self._filed or len(self._filed) < SHAPES_MAX

    def add(self, sub: Any, target: T, shape: Keys, keys: list[Any]) -> None:
        """File ``sub`` (its ``target``) under each of its clauses' lookup keys."""
        buckets = self._filed.setdefault(shape, {})
        for key in keys:
            buckets.setdefault(key, {})[sub] = target
            self._dirty.add((shape, key))

    def remove(self, sub: Any, shape: Keys, keys: list[Any]) -> None:
        buckets = self._filed[shape]
        for key in keys:
            members = buckets.get(key)
            if members is not None:
                members.pop(sub, None)
                if not members:
                    del buckets[key]
            self._dirty.add((shape, key))
        if not buckets:
            del self._filed[shape]

    def refresh(self) -> None:
        """Rebuild the lookups of the buckets changed since the last refresh."""
        if not self._dirty:
            return
        for shape, key in self._dirty:
            buckets = self._filed.get(shape)
            members = None if buckets is None else buckets.get(key)
            lookup = self._lookups.get(shape)
            if members:
                if lookup is None:
                    lookup = self._lookups[shape] = {}
                lookup[key] = tuple(members.values())
            elif lookup is not None:
                lookup.pop(key, None)
                if not lookup:
                    del self._lookups[shape]
        self._dirty.clear()
        lookups = self._lookups  # in the order the shapes were first filed, whatever the set's order
        self.snapshot = tuple(
            (len(shape), shape[0], shape[-1], shape, lookups[shape]) for shape in self._filed if shape in lookups
        )

    def match(self, view: Any, msg: object, on_error: OnError | None) -> Sequence[T] | None:
        """The targets matching ``msg`` (read through ``view``), a tuple when one shape has them all."""
        found: Sequence[T] | None = None
        for width, first, last, keys, lookup in self.snapshot:
            if width == 1:
                probe = view.get(first, MISSING)
            elif width == 2:
                probe = (view.get(first, MISSING), view.get(last, MISSING))
            else:
                probe = tuple([view.get(k, MISSING) for k in keys])
            targets: Sequence[T] | None
            try:
                targets = lookup.get(probe)
            except TypeError:  # a value that cannot be hashed: the shape's clauses one by one
                targets = self.match_unhashable(keys, msg, on_error)
            if targets:
                found = targets if found is None else [*found, *targets]
        return found

    def match_unhashable(self, shape: Keys, msg: object, on_error: OnError | None) -> list[T]:
        """The targets of ``shape`` matching ``msg``, checked clause by clause (a value could not be hashed)."""
        found: list[T] = []
        seen: set[int] = set()
        for members in self._filed.get(shape, {}).values():
            for sub, target in members.items():
                if id(sub) in seen:
                    continue
                if any(clause.matches(msg, on_error) for clause in sub.clauses):
                    seen.add(id(sub))
                    found.append(target)
        return found


def fast_match(index: Any, shapes: Shapes[T], match: Callable[[object], Sequence[T]]) -> Callable[[object], Sequence[T]] | None:
    """A function that matches like ``match`` with one lookup, when ``shapes`` hold one shape of one or two keys.

    Only for an index whose subscriptions are all in ``shapes``. The function checks
    ``index._version`` first: once the index has changed, or for a message that is
    not a dict, or one whose value cannot be hashed, it hands over to ``match``.
    """
    if len(shapes.snapshot) != 1:
        return None
    width, first, last, _, lookup = shapes.snapshot[0]
    if width > 2:
        return None
    get, version, nothing = lookup.get, index._version, ()

    if width == 1:
        def fast(msg: object) -> Sequence[T]:
            if type(msg) is not dict or index._version != version:
                return match(msg)
            try:
                return get(msg.get(first, MISSING), nothing)
            except TypeError:
                return match(msg)
    else:
        def fast(msg: object) -> Sequence[T]:
            if type(msg) is not dict or index._version != version:
                return match(msg)
            try:
                return get((msg.get(first, MISSING), msg.get(last, MISSING)), nothing)
            except TypeError:
                return match(msg)
    return fast
