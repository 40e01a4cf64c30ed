"""The index that routes each message to the consumers whose filters can match it.

This module is pure: no asyncio, no I/O, no logging. The filters it files are compiled
by :mod:`._filters`, which also gives the plain definition of a match.

:class:`Index` finds the matching subscriptions without scanning the ones that cannot
match. Filters of plain top-level equalities go to :mod:`._shapes` (one lookup proves
each kind whole); any other clause with a hashable, self-equal, non-callable value is
filed under one such pair, ``by_path[path][value]``: one lookup per indexed path plus the
candidates found. The rest (predicates only, unhashable or NaN values, whole-message
callables) are few in practice and are evaluated one by one.

The lookup relies on the data model's contract that equal values hash equally, which
holds for every type a JSON parser produces; that is also why ``1``, ``1.0`` and ``True``
share a bucket, just as they compare equal under the plain definition.

Typed messages (msgspec Structs, dataclasses) go through the same buckets: their fields
are read through a :class:`._filters.Fields` view, made once per message, where a
mapping is read directly.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any, Generic, Protocol, TypeVar

from ._filters import (
    MISSING,
    Clause,
    OnError,
    Path,
    describe_value,
    fields_of,
    is_anchorable,
    pairs_match,
    walk,
)
from ._shapes import Keys, Shapes, fast_match, shape_of

__all__ = ["Index", "Subscription", "Target"]

T = TypeVar("T")


class Target(Protocol):
    """What the client's index hands a matching message to: a stream, a handler, an expectation.

    ``deliver`` runs on the hot path, inside the receive loop: it must not block,
    await, or raise (a target counts and logs its own failures).
    """

    def deliver(self, msg: Any) -> None:
        """Take one matching message."""


class Subscription(Generic[T]):
    """A handle on one registration in an :class:`Index`; pass it to :meth:`Index.remove`.

    Attributes:
        target: What :meth:`Index.match` returns for a matching message.
        clauses: The compiled filter it was registered with.
    """

    __slots__ = ("target", "clauses", "_index", "_seen", "_shape")

    def __init__(self, target: T, clauses: tuple[Clause, ...], index: Index[T]) -> None:
        self.target = target
        self.clauses = clauses
        self._index: Index[T] | None = index
        # Stamp of the last match() that returned this subscription; it keeps a filter
        # with several matching clauses from being returned twice, without a set.
        self._seen = 0
        # (shape, lookup keys) when it is filed in the index's shapes (see _shapes).
        self._shape: tuple[Keys, list[Any]] | None = None

    @property
    def active(self) -> bool:
        """Whether the subscription is still registered."""
        return self._index is not None

    def __repr__(self) -> str:
        state = "active" if self._index is not None else "removed"
        return f"<Subscription {state} target={self.target!r} clauses={self.clauses!r}>"


# A subscription's entry in a bucket or in the scan list: one per clause.
_Entry = tuple[Subscription[Any], Clause]
# _vacate() moves at most this many clauses, each only to a bucket holding fewer.
_VACATE_MAX = 4


def _anchor_pairs(clause: Clause) -> list[tuple[int, Path, Any]]:
    """The pairs of clause that can file it in the index: (index in ``pairs``, path, value)."""
    return [
        (i, (key, *steps), value)
        for i, (key, steps, value, is_predicate) in enumerate(clause.pairs)
        if not is_predicate and is_anchorable(value)
    ]


# An entry as a bucket holds it: (target, clause, others, simple, multi). ``others`` are
# the pairs the bucket's key does not already prove, the only ones match() checks; when
# ``simple`` they are all one-step equalities, which match() checks inline.
# ``multi`` is the subscription when it has several clauses (so it may be found twice
# and match() must stamp it), else None: a plain filter costs no look at its subscription.
_Anchored = tuple[Any, Clause, tuple[Any, ...], bool, Subscription[Any] | None]


class Index(Generic[T]):
    """Subscriptions indexed by the values their filters require.

    :meth:`match` costs one dict lookup per indexed key path plus the work on clauses
    that can match; subscriptions filtering on other values cost nothing. A clause
    with several equalities is filed under the one whose bucket holds fewest clauses
    when it is added, so a value many filters share (``{"e": "trade", "s": ...}``)
    does not pile them all into one bucket that every message would scan. Cached
    snapshots are rebuilt lazily at the next :meth:`match` after a change, so adding or
    removing n subscriptions costs O(n) overall.

    Not thread-safe. Predicates must not call back into the index while it matches.

    Args:
        on_error: Receives ``(exc, source)`` when a predicate (or a whole-message
            callable) raises; that clause then does not match. Without it the error
            propagates out of :meth:`match`.
    """

    def __init__(self, on_error: OnError | None = None) -> None:
        self._on_error = on_error
        self._count = 0
        # Authoritative registrations. Dicts used as ordered sets: O(1) removal, and
        # iteration in registration order.
        self._everyone_subs: dict[Subscription[T], None] = {}
        self._scan_entries: dict[_Entry, None] = {}
        self._shapes: Shapes[T] = Shapes()
        # path -> value -> entry -> what match() reads of it.
        self._anchored: dict[Path, dict[Any, dict[_Entry, _Anchored]]] = {}
        # Snapshots read by match(): immutable tuples, so that neither the caller nor a
        # later add/remove can disturb an iteration in progress.
        self._everyone: tuple[T, ...] = ()
        self._scan: tuple[_Entry, ...] = ()
        self._scan_callables: tuple[_Entry, ...] = ()
        self._lookup: dict[Path, dict[Any, tuple[_Anchored, ...]]] = {}
        self._paths: tuple[tuple[Hashable, Path, dict[Any, tuple[_Anchored, ...]]], ...] = ()
        self._only_everyone = True
        self._fast: Callable[[object], Sequence[T]] | None = None
        # What the next match() must rebuild before it reads the snapshots.
        self._stale = False
        self._dirty_everyone = False
        self._dirty_scan = False
        self._dirty_buckets: set[tuple[Path, Any]] = set()
        self._tick = 0
        self._version = 0  # counts changes, for the functions matcher() hands out

    def __len__(self) -> int:
        """Return the number of live subscriptions."""
        return self._count

    def __repr__(self) -> str:
        return f"<Index subscriptions={self._count}>"

    def add(self, clauses: tuple[Clause, ...], target: T) -> Subscription[T]:
        """Register target to receive the messages matching clauses.

        Args:
            clauses: From :func:`compile_filters` or :func:`compile_condition`; ``()``
                matches every message.
            target: Returned by :meth:`match`. The same target may be added several times;
                each registration is returned separately.

        Returns:
            A handle for :meth:`remove`.

        Raises:
            TypeError: clauses is not a tuple of :class:`Clause`.
        """
        if not isinstance(clauses, tuple) or not all(type(c) is Clause for c in clauses):
            raise TypeError(
                f"Index.add: clauses must be a tuple of Clause, got {describe_value(clauses)}; "
                "compile the filter first with compile_filters()"
            )
        sub = Subscription(target, clauses, self)
        self._count += 1
        self._stale = True
        self._version += 1
        if not clauses:
            self._everyone_subs[sub] = None
            self._dirty_everyone = True
            return sub
        shaped = shape_of(clauses)
        if shaped is not None and self._shapes.can_take(shaped[0]):
            sub._shape = shaped
            self._shapes.add(sub, target, *shaped)
            return sub
        # A clause listed twice in one filter is filed once (remove() does the same).
        for clause in dict.fromkeys(clauses):
            entry: _Entry = (sub, clause)
            if clause.anchor is None:
                self._scan_entries[entry] = None
                self._dirty_scan = True
                continue
            path = self._file(entry, self._choose(clause))
            # A path that holds a few clauses only because they were filed before this
            # one showed a better choice costs a lookup per message: move them.
            for _, other, _ in _anchor_pairs(clause):
                if other != path:
                    self._vacate(other)
        return sub

    def _choose(self, clause: Clause, avoid: Path | None = None) -> tuple[int, Path, Any, int] | None:
        """Where to file clause: of its anchorable pairs, the one whose bucket holds fewest.

        Any one equality can file a clause, since the clause matches only when all of them
        hold; the least loaded keeps a value that many filters share from heaping them in
        one bucket. Ties go to a path already indexed (no new lookup per message), then to
        the pair written first. Returns (pair index, path, value, load), or None when
        every anchorable pair lies on ``avoid``.
        """
        best: tuple[tuple[int, bool], int, Path, Any] | None = None
        for i, path, value in _anchor_pairs(clause):
            if path == avoid:
                continue
            buckets = self._anchored.get(path)
            members = None if buckets is None else buckets.get(value)
            score = (0 if members is None else len(members), buckets is None)
            if best is None or score < best[0]:
                best = (score, i, path, value)
        if best is None:
            return None
        (load, _), i, path, value = best
        return i, path, value, load

    def _file(self, entry: _Entry, choice: tuple[int, Path, Any, int] | None) -> Path:
        """File entry in the bucket ``choice`` names; return its path."""
        assert choice is not None, "only clauses with an anchor are filed"
        i, path, value, _ = choice
        clause = entry[1]
        pairs = clause.pairs
        # On the clause's own anchor (its first anchorable pair), reuse the precomputed rest.
        rest = clause.rest if i == _anchor_pairs(clause)[0][0] else pairs[:i] + pairs[i + 1 :]
        buckets = self._anchored.get(path)
        if buckets is None:
            buckets = self._anchored[path] = {}
        members = buckets.get(value)
        if members is None:
            members = buckets[value] = {}
        simple = bool(rest) and all(not steps and not is_predicate for _, steps, _, is_predicate in rest)
        sub = entry[0]
        members[entry] = (sub.target, clause, rest, simple, sub if len(sub.clauses) > 1 else None)
        self._dirty_buckets.add((path, value))
        return path

    def _vacate(self, path: Path) -> None:
        """Move the few clauses of a path with a single bucket onto paths already indexed."""
        buckets = self._anchored.get(path)
        if buckets is None or len(buckets) != 1:
            return
        ((value, members),) = buckets.items()
        if len(members) > _VACATE_MAX:
            return
        moves = []
        for entry in members:
            choice = self._choose(entry[1], avoid=path)
            if choice is None or choice[1] not in self._anchored or choice[3] >= _VACATE_MAX:
                return  # it would cost more elsewhere: leave the path as it is
            moves.append((entry, choice))
        del self._anchored[path]
        self._dirty_buckets.add((path, value))
        for entry, choice in moves:
            self._file(entry, choice)

    def remove(self, handle: Subscription[T]) -> None:
        """Unregister a subscription. Idempotent: removing it again does nothing.

        A :meth:`match` result obtained earlier is a snapshot and may still contain the
        target; every later result does not.

        Raises:
            ValueError: handle is active in a different index.
        """
        index = handle._index
        if index is None:
            return
        if index is not self:
            raise ValueError(f"Index.remove: {handle!r} belongs to another index")
        handle._index = None
        self._count -= 1
        self._stale = True
        self._version += 1
        if not handle.clauses:
            del self._everyone_subs[handle]
            self._dirty_everyone = True
            return
        if handle._shape is not None:
            self._shapes.remove(handle, *handle._shape)
            return
        for clause in dict.fromkeys(handle.clauses):
            entry: _Entry = (handle, clause)
            if clause.anchor is None:
                self._scan_entries.pop(entry, None)
                self._dirty_scan = True
                continue
            # add() filed it under one of its anchorable pairs: find which.
            for _, path, value in _anchor_pairs(clause):
                buckets = self._anchored.get(path)
                if buckets is None:
                    continue
                members = buckets.get(value)
                if members is None or members.pop(entry, MISSING) is MISSING:
                    continue
                if not members:
                    del buckets[value]
                    if not buckets:
                        del self._anchored[path]
                self._dirty_buckets.add((path, value))
                break

    def _refresh(self) -> None:
        """Rebuild the snapshots that add/remove have invalidated since the last match."""
        if self._dirty_everyone:
            self._everyone = tuple(sub.target for sub in self._everyone_subs)
            self._dirty_everyone = False
        if self._dirty_scan:
            self._scan = tuple(self._scan_entries)
            self._scan_callables = tuple(e for e in self._scan if e[1]._whole is not None)
            self._dirty_scan = False
        if self._dirty_buckets:
            paths_changed = False
            for path, value in self._dirty_buckets:
                buckets = self._anchored.get(path)
                members = None if buckets is None else buckets.get(value)
                lookup = self._lookup.get(path)
                if members:
                    if lookup is None:
                        lookup = self._lookup[path] = {}
                        paths_changed = True
                    lookup[value] = tuple(members.values())
                elif lookup is not None:
                    lookup.pop(value, None)
                    if not lookup:
                        del self._lookup[path]
                        paths_changed = True
            self._dirty_buckets.clear()
            if paths_changed:
                self._paths = tuple((path[0], path[1:], lookup) for path, lookup in self._lookup.items())
        self._shapes.refresh()
        self._only_everyone = not self._paths and not self._scan and not self._shapes.snapshot
        alone = not self._everyone and not self._paths and not self._scan  # only shapes, if any
        self._fast = fast_match(self, self._shapes, self.match) if alone else None
        self._stale = False

    def matcher(self) -> Callable[[object], Sequence[T]]:
        """:meth:`match`, or a faster function that gives the same results for now and later.

        When every subscription is of one shape of one or two keys (as when every
        stream filters on ``{"e": ..., "s": ...}``), the function is one dict lookup;
        after any add or remove, or for a message that is not a dict, it hands over
        to :meth:`match`. The receive loop asks for it anew after every socket read.
        """
        if self._stale:
            self._refresh()
        return self._fast or self.match

    def match(self, msg: object) -> Sequence[T]:
        """Return the target of every subscription whose filter matches msg.

        Each subscription appears once, however many of its clauses match. Targets
        registered with ``()`` come first, in registration order; the rest follow in a
        deterministic order. The result is a fresh list or an immutable snapshot, so the
        caller may add or remove subscriptions while iterating over it.

        Raises:
            Exception: What a predicate raised, only when the index has no on_error.
        """
        if self._stale:
            self._refresh()
        everyone = self._everyone
        if self._only_everyone:
            return everyone
        # What the buckets read the fields from: the message itself when it is a mapping
        # (the fast path: nothing made per message), else its Fields view.
        view: Any = msg
        if type(msg) is not dict and not isinstance(msg, Mapping):
            view = fields_of(msg)
            if view is None:
                # Only whole-message callables can match a message that is neither a
                # mapping nor a typed message.
                if not self._scan_callables:
                    return everyone
                self._tick += 1
                matched = self._match_scan(self._scan_callables, msg, everyone, None)
                return everyone if matched is None else matched
        self._tick = tick = self._tick + 1
        on_error = self._on_error
        result: list[T] | None = None
        # While nothing but one tuple matched, it is kept as it came: cheaper than a list.
        found: Sequence[T] | None = None
        if self._shapes.snapshot:
            shaped = self._shapes.match(view, msg, on_error)
            if shaped and everyone:
                result = [*everyone, *shaped]
            elif shaped:
                found = shaped
        for key, rest, lookup in self._paths:
            value = view.get(key, MISSING)
            if value is MISSING:
                continue
            if rest:
                value = walk(value, rest)
                if value is MISSING:
                    continue
            try:
                entries = lookup.get(value)
            except TypeError:
                # The field is unhashable (a list, a dict, a set...) yet may still == a
                # filter value, as {1} == frozenset({1}): check every clause on this path.
                if result is None and found is not None:
                    result = list(found)
                result = self._match_unhashable(lookup, msg, everyone, result)
                continue
            if entries is None:
                continue
            for target, clause, others, simple, multi in entries:
                if multi is not None and multi._seen == tick:
                    continue
                # The lookup proved the anchor pair equal; only the others need checking.
                if simple:
                    for other_key, _, other_value, _ in others:
                        got = view.get(other_key, MISSING)
                        # `not got == value`, not `got != value`: the definition uses ==.
                        if got is MISSING or not got == other_value:
                            break
                    else:
                        others = ()  # no break: every one held
                    if others:
                        continue
                elif others and not pairs_match(others, view, clause.source, on_error):
                    continue
                if multi is not None:
                    multi._seen = tick
                if result is not None:
                    result.append(target)
                elif found is None and not everyone:
                    found = (target,)
                else:
                    result = list(everyone if found is None else found)
                    result.append(target)
        if self._scan:
            if result is None and found is not None:
                result = list(found)
            result = self._match_scan(self._scan, msg, everyone, result)
        if result is not None:
            return result
        return everyone if found is None else found

    def _match_unhashable(
        self,
        lookup: dict[Any, tuple[_Anchored, ...]],
        msg: object,
        everyone: tuple[T, ...],
        result: list[T] | None,
    ) -> list[T] | None:
        """Fully evaluate every clause anchored on one path (rare path)."""
        tick = self._tick
        on_error = self._on_error
        for entries in lookup.values():
            for target, clause, _, _, multi in entries:
                if multi is not None and multi._seen == tick:
                    continue
                if not clause.matches(msg, on_error):
                    continue
                if multi is not None:
                    multi._seen = tick
                if result is None:
                    result = list(everyone)
                result.append(target)
        return result

    def _match_scan(
        self,
        entries: tuple[_Entry, ...],
        msg: object,
        everyone: tuple[T, ...],
        result: list[T] | None,
    ) -> list[T] | None:
        """Fully evaluate entries, appending the new matches to result."""
        tick = self._tick
        on_error = self._on_error
        for sub, clause in entries:
            if sub._seen == tick:
                continue
            if not clause.matches(msg, on_error):
                continue
            sub._seen = tick
            if result is None:
                result = list(everyone)
            result.append(sub.target)
        return result
