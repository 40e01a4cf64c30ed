"""Compiled message filters and the index that routes each message to its consumers.

This module is pure: no asyncio, no I/O, no logging. Errors raised by user predicates
are handed to an ``on_error`` callback, or propagate when there is none.

The plain definition
--------------------
A *filter* is a list of dicts, or None. A message matches when every key/value pair of
**any one** dict equals the message's field (``msg[key] == value``):

- ``None`` and ``[]`` match everything, mappings or not.
- Only mappings (:class:`collections.abc.Mapping`) can match a non-empty filter, so
  ``[{}]`` matches every mapping and nothing else.
- A tuple key is a path into nested mappings: ``{("o", "x"): "NEW"}`` matches
  ``{"o": {"x": "NEW"}}``. Every step must be a mapping that contains the key; a missing
  step means no match. ``("o",)`` is the same as ``"o"``; ``()`` is an error. To match a
  literal tuple key, wrap it in a 1-tuple: ``{(("a", "b"),): 1}``.
- A callable value is a predicate on the field: ``{"p": lambda v: float(v) > 100}``
  matches when the field exists and the predicate returns something truthy. Anything
  callable counts, classes included. A predicate that raises counts as no match and is
  reported to ``on_error(exc, source)``.
- In a *condition* (``compile_condition``, or ``compile_filters(allow_callables=True)``)
  an item may also be a callable ``msg -> bool`` tested against the whole message. It
  sees every message, mappings or not.

The index
---------
:class:`Index` finds the matching subscriptions without scanning the ones that cannot
match: each clause with a hashable, self-equal, non-callable value is filed under one
such pair, ``by_path[path][value]``, so a message costs one dict lookup per indexed path
plus the candidates found. Clauses with no such pair (predicates only, unhashable or NaN
values, whole-message callables) are few in practice and are evaluated one by one.

The lookup relies on the data model's contract that equal values hash equally, which
holds for every type a JSON parser produces; that is also why ``1``, ``1.0`` and ``True``
share a bucket, just as they compare equal under the plain definition.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any, Generic, TypeVar

__all__ = [
    "Clause",
    "Index",
    "OnError",
    "Path",
    "Subscription",
    "compile_condition",
    "compile_filters",
    "matches",
]

T = TypeVar("T")

Path = tuple[Hashable, ...]
"""A key path into nested mappings; ``("o", "x")`` reads ``msg["o"]["x"]``."""

OnError = Callable[[BaseException, object], None]
"""Receives an error raised by a user predicate and the ``source`` of its clause."""


class _Missing:
    """Marks a field that is absent; distinct from every value a message can hold."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<missing>"


_MISSING: Any = _Missing()

# One compiled key/value pair: (first key, remaining path steps, value, value is a predicate).
# The first key is split off because nearly every path has one step, and reading it is then
# a single ``msg.get`` with no loop.
_Pair = tuple[Hashable, Path, Any, bool]


def _step(obj: Any, key: Hashable) -> Any:
    """Return ``obj[key]``, or ``_MISSING`` when obj is not a mapping or lacks the key."""
    # The exact-type test first: it skips the much slower ABC isinstance for plain dicts.
    if type(obj) is dict:
        return obj.get(key, _MISSING)
    if isinstance(obj, Mapping):
        # .get rather than [] so that a defaultdict in a message is not mutated.
        return obj.get(key, _MISSING)
    return _MISSING


def _walk(obj: Any, steps: Path) -> Any:
    """Follow steps down nested mappings from obj; ``_MISSING`` if any step is absent."""
    for key in steps:
        obj = _step(obj, key)
        if obj is _MISSING:
            break
    return obj


def _pairs_match(pairs: tuple[_Pair, ...], msg: Any, source: object, on_error: OnError | None) -> bool:
    """Evaluate pairs against msg, which the caller has checked is a Mapping."""
    for key, rest, value, is_predicate in pairs:
        got = msg.get(key, _MISSING)
        if rest and got is not _MISSING:
            got = _walk(got, rest)
        if got is _MISSING:
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


def _is_anchorable(value: Any) -> bool:
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


def _describe(value: object) -> str:
    """Render a bad argument for an error message: its type and a short repr."""
    return f"{type(value).__name__} {value!r:.60}"


def _init_clause(clause: Clause, source: Any, where: str, allow_callable: bool) -> None:
    """Validate source and fill in the slots of clause; errors name where it came from."""
    setattr_ = object.__setattr__
    if isinstance(source, Mapping):
        equalities: list[_Pair] = []
        predicates: list[_Pair] = []
        anchor: tuple[Path, Any] | None = None
        anchor_index = -1
        for key in source:
            try:
                hash(key)
            except TypeError:
                raise TypeError(
                    f"{where} has an unhashable key {_describe(key)}; "
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
            pair: _Pair = (path[0], path[1:], value, callable(value))
            if pair[3]:
                predicates.append(pair)
            else:
                if anchor is None and _is_anchorable(value):
                    anchor = (path, value)
                    anchor_index = len(equalities)
                equalities.append(pair)
        # Equalities first: they are cheap and usually decide, so predicates run only when
        # they can still change the answer.
        pairs = (*equalities, *predicates)
        rest = pairs if anchor is None else pairs[:anchor_index] + pairs[anchor_index + 1 :]
        setattr_(clause, "source", source)
        setattr_(clause, "_pairs", pairs)
        setattr_(clause, "_whole", None)
        setattr_(clause, "_anchor", anchor)
        setattr_(clause, "_rest", rest)
    elif callable(source):
        if not allow_callable:
            raise TypeError(
                f"{where} must be a dict, got {_describe(source)}; a filter cannot be a "
                "function of the whole message, but a dict value can test one field: "
                "{'price': lambda v: v > 100}"
            )
        setattr_(clause, "source", source)
        setattr_(clause, "_pairs", ())
        setattr_(clause, "_whole", source)
        setattr_(clause, "_anchor", None)
        setattr_(clause, "_rest", ())
    else:
        what = "a dict or a callable" if allow_callable else "a dict"
        raise TypeError(f"{where} must be {what}, got {_describe(source)}")


class Clause:
    """One compiled dict of a filter (or one whole-message callable of a condition).

    Clauses are immutable and compare by identity. Build them with
    :func:`compile_filters` or :func:`compile_condition`; the constructor is for one-offs.

    Attributes:
        source: The dict or callable the caller passed, kept as-is for error messages
            and reporting. It was compiled when the clause was built: mutating it later
            does not change what the clause matches.
    """

    __slots__ = ("source", "_pairs", "_whole", "_anchor", "_rest")

    source: Mapping[Hashable, Any] | Callable[[Any], object]
    _pairs: tuple[_Pair, ...]
    _whole: Callable[[Any], object] | None
    _anchor: tuple[Path, Any] | None
    _rest: tuple[_Pair, ...]

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
            msg: Any message. Only a mapping can match a dict clause; a whole-message
                callable sees every message.
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
            return False
        return _pairs_match(self._pairs, msg, self.source, on_error)


def _compile(
    items: object,
    argname: str,
    allow_callables: bool,
    expected: str,
) -> tuple[Clause, ...]:
    """Compile a list or tuple of dicts (and callables when allowed) into clauses."""
    if isinstance(items, Mapping):
        raise TypeError(
            f"{argname} must be {expected}, got {_describe(items)}; "
            "wrap it in a list: [{...}]"
        )
    if not isinstance(items, (list, tuple)):
        raise TypeError(f"{argname} must be {expected}, got {_describe(items)}")
    clauses = []
    for i, item in enumerate(items):
        clause = Clause.__new__(Clause)
        _init_clause(clause, item, f"{argname}[{i}]", allow_callables)
        clauses.append(clause)
    return tuple(clauses)


def compile_filters(
    filters: Sequence[Mapping[Hashable, Any] | Callable[[Any], object]] | None,
    *,
    argname: str = "filters",
    allow_callables: bool = False,
) -> tuple[Clause, ...]:
    """Validate and compile a filter once, up front, so matching never re-parses it.

    Args:
        filters: A list or tuple of dicts (any mappings), or None. None and ``[]``
            match everything and compile to ``()``.
        argname: How error messages name the argument, e.g. ``"stream_filter: filters"``.
        allow_callables: Also accept whole-message callables as items (for conditions).

    Returns:
        One :class:`Clause` per item, in order; ``()`` for match-everything.

    Raises:
        TypeError: filters is not a list or tuple (a bare dict included: wrap it in a
            list), an item is not a dict, or a key is unhashable. The message names the
            argument, the index of the bad item and its value.
        ValueError: A key is the empty tuple ``()``.
    """
    if filters is None:
        return ()
    expected = "a list of dicts or callables" if allow_callables else "a list of dicts"
    return _compile(filters, argname, allow_callables, expected)


def compile_condition(cond: object, *, argname: str = "until") -> tuple[Clause, ...]:
    """Compile a condition for expect/wait_for/poll: a dict, a callable, or a list of these.

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
    expected = "a dict, a callable, or a list of these"
    if cond is None or (isinstance(cond, (list, tuple)) and not cond):
        raise ValueError(
            f"{argname} must be {expected}, got {_describe(cond)}; it would match every "
            "message. Pass the condition you are waiting for, e.g. {'type': 'ack'}"
        )
    if isinstance(cond, Mapping) or callable(cond):
        clause = Clause.__new__(Clause)
        _init_clause(clause, cond, argname, allow_callable=True)
        return (clause,)
    return _compile(cond, argname, True, expected)


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


class Subscription(Generic[T]):
    """A handle on one registration in an :class:`Index`; pass it to :meth:`Index.remove`.

    Attributes:
        target: What :meth:`Index.match` returns for a matching message.
        clauses: The compiled filter it was registered with.
    """

    __slots__ = ("target", "clauses", "_index", "_seen")

    def __init__(self, target: T, clauses: tuple[Clause, ...], index: Index[T]) -> None:
        self.target = target
        self.clauses = clauses
        self._index: Index[T] | None = index
        # Stamp of the last match() that returned this subscription; it keeps a filter
        # with several matching clauses from being returned twice, without a set.
        self._seen = 0

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
    """The pairs of clause that can file it in the index: (index in ``_pairs``, path, value)."""
    return [
        (i, (key, *steps), value)
        for i, (key, steps, value, is_predicate) in enumerate(clause._pairs)
        if not is_predicate and _is_anchorable(value)
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
        # What the next match() must rebuild before it reads the snapshots.
        self._stale = False
        self._dirty_everyone = False
        self._dirty_scan = False
        self._dirty_buckets: set[tuple[Path, Any]] = set()
        self._tick = 0

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
                f"Index.add: clauses must be a tuple of Clause, got {_describe(clauses)}; "
                "compile the filter first with compile_filters()"
            )
        sub = Subscription(target, clauses, self)
        self._count += 1
        self._stale = True
        if not clauses:
            self._everyone_subs[sub] = None
            self._dirty_everyone = True
            return sub
        # A clause listed twice in one filter is filed once (remove() does the same).
        for clause in dict.fromkeys(clauses):
            entry: _Entry = (sub, clause)
            if clause._anchor is None:
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
        pairs = clause._pairs
        # On the clause's own anchor (its first anchorable pair), reuse the precomputed rest.
        rest = clause._rest if i == _anchor_pairs(clause)[0][0] else pairs[:i] + pairs[i + 1 :]
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
        if not handle.clauses:
            del self._everyone_subs[handle]
            self._dirty_everyone = True
            return
        for clause in dict.fromkeys(handle.clauses):
            entry: _Entry = (handle, clause)
            if clause._anchor is None:
                self._scan_entries.pop(entry, None)
                self._dirty_scan = True
                continue
            # add() filed it under one of its anchorable pairs: find which.
            for _, path, value in _anchor_pairs(clause):
                buckets = self._anchored.get(path)
                if buckets is None:
                    continue
                members = buckets.get(value)
                if members is None or members.pop(entry, _MISSING) is _MISSING:
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
        self._only_everyone = not self._paths and not self._scan
        self._stale = False

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
        if type(msg) is not dict and not isinstance(msg, Mapping):
            # Only whole-message callables can match a message that is not a mapping.
            if not self._scan_callables:
                return everyone
            self._tick += 1
            matched = self._match_scan(self._scan_callables, msg, everyone, None)
            return everyone if matched is None else matched
        self._tick = tick = self._tick + 1
        on_error = self._on_error
        result: list[T] | None = None
        # Most messages match one filter: while there is one match and no everyone, it is
        # kept as a 1-tuple, cheaper to make than a list to append to.
        found: tuple[T] | None = None
        for key, rest, lookup in self._paths:
            value = msg.get(key, _MISSING)
            if value is _MISSING:
                continue
            if rest:
                value = _walk(value, rest)
                if value is _MISSING:
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
                        got = msg.get(other_key, _MISSING)
                        # `not got == value`, not `got != value`: the definition uses ==.
                        if got is _MISSING or not got == other_value:
                            break
                    else:
                        others = ()  # no break: every one held
                    if others:
                        continue
                elif others and not _pairs_match(others, msg, clause.source, on_error):
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
