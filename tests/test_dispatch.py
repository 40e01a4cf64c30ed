"""Tests for async_ws_stream._dispatch: compiled filters, conditions and the index."""

from __future__ import annotations

import copy
import dataclasses
import types
from collections import OrderedDict, defaultdict
from collections.abc import Mapping
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from async_ws_stream._dispatch import Index, Subscription
from async_ws_stream._filters import Clause, compile_condition, compile_filters, matches
from async_ws_stream._shapes import SHAPES_MAX

NAN = float("nan")


def index_of(*filters: Any, on_error: Any = None) -> tuple[Index[int], list[Subscription[int]]]:
    """Build an index whose targets are the positions of filters."""
    index: Index[int] = Index(on_error=on_error)
    subs = [index.add(compile_filters(f), i) for i, f in enumerate(filters)]
    return index, subs


# --- The plain definition, by example ---------------------------------------------------


def test_any_of_the_dicts_matches() -> None:
    """A filter matches when any one of its dicts matches."""
    clauses = compile_filters([{"s": "A"}, {"s": "B"}])
    assert matches(clauses, {"s": "B"})
    assert not matches(clauses, {"s": "C"})


def test_all_pairs_of_a_dict_must_match() -> None:
    """Every key/value of a dict must equal the message's."""
    clauses = compile_filters([{"s": "A", "t": "trade"}])
    assert matches(clauses, {"s": "A", "t": "trade", "x": 1})
    assert not matches(clauses, {"s": "A", "t": "quote"})
    assert not matches(clauses, {"s": "A"})


def test_none_and_empty_list_match_everything() -> None:
    """None and [] compile to () and match any message, mapping or not."""
    assert compile_filters(None) == ()
    assert compile_filters([]) == ()
    for msg in ({"a": 1}, "text", 3, None, [1]):
        assert matches((), msg)


def test_empty_dict_matches_every_mapping_only() -> None:
    """[{}] matches every mapping and no non-mapping."""
    clauses = compile_filters([{}])
    assert matches(clauses, {})
    assert matches(clauses, types.MappingProxyType({"a": 1}))
    assert not matches(clauses, "text")
    assert not matches(clauses, [("a", 1)])


def test_non_mapping_message_never_matches_a_dict_filter() -> None:
    """A string or list message cannot match a non-empty filter."""
    clauses = compile_filters([{"0": "a"}])
    assert not matches(clauses, "a")
    assert not matches(clauses, ["a"])


def test_tuple_key_is_a_path_into_nested_mappings() -> None:
    """{("o", "x"): v} reads msg["o"]["x"]."""
    clauses = compile_filters([{("o", "x"): "NEW"}])
    assert matches(clauses, {"o": {"x": "NEW"}})
    assert not matches(clauses, {"o": {"x": "OLD"}})


def test_path_with_a_missing_or_non_mapping_step_does_not_match() -> None:
    """A path through a missing key or a non-mapping value is no match."""
    clauses = compile_filters([{("o", "x"): "NEW"}])
    assert not matches(clauses, {"o": {}})
    assert not matches(clauses, {"p": {"x": "NEW"}})
    assert not matches(clauses, {"o": "NEW"})
    assert not matches(clauses, {"o": ["x"]})


def test_one_tuple_key_is_the_plain_key() -> None:
    """("s",) is the same key as "s"."""
    index, _ = index_of([{("s",): "A"}], [{"s": "A"}])
    assert sorted(index.match({"s": "A"})) == [0, 1]


def test_wrapped_tuple_key_matches_a_literal_tuple_key() -> None:
    """A tuple inside a 1-tuple matches a message key that is itself a tuple."""
    clauses = compile_filters([{(("a", "b"),): 1}])
    assert matches(clauses, {("a", "b"): 1})
    assert not matches(clauses, {"a": {"b": 1}})


def test_predicate_value_tests_the_field() -> None:
    """A callable value matches when the field exists and the predicate is truthy."""
    index, _ = index_of([{"p": lambda v: float(v) > 100}])
    assert index.match({"p": "101.5"}) == [0]
    assert index.match({"p": "99"}) == ()
    assert index.match({"q": "101.5"}) == ()


def test_predicate_that_raises_is_reported_and_does_not_match() -> None:
    """A raising predicate counts as no match and reaches on_error with its dict."""
    errors: list[tuple[BaseException, object]] = []
    source = {"p": lambda v: float(v) > 100}
    index: Index[str] = Index(on_error=lambda exc, src: errors.append((exc, src)))
    index.add(compile_filters([source]), "t")
    assert index.match({"p": "not a number"}) == ()
    assert len(errors) == 1
    assert isinstance(errors[0][0], ValueError)
    assert errors[0][1] is source


def test_predicate_error_propagates_without_on_error() -> None:
    """With no on_error, a predicate's error is raised, not swallowed."""
    index, _ = index_of([{"p": lambda v: 1 / 0}])
    with pytest.raises(ZeroDivisionError):
        index.match({"p": 1})
    with pytest.raises(ZeroDivisionError):
        matches(compile_filters([{"p": lambda v: 1 / 0}]), {"p": 1})


def test_predicate_error_in_a_condition_callable_is_reported() -> None:
    """A whole-message callable that raises is reported with the callable as source."""
    errors: list[object] = []

    def broken(msg: Any) -> bool:
        return msg["missing"] > 0

    clauses = compile_condition(broken)
    assert not matches(clauses, {"a": 1}, on_error=lambda exc, src: errors.append(src))
    assert errors == [broken]


def test_int_filter_value_matches_equal_bool_and_float() -> None:
    """1 == True == 1.0, so a filter on 1 matches all three, as the plain definition says."""
    index, _ = index_of([{"n": 1}], [{"n": True}], [{"n": 1.0}])
    for value in (1, True, 1.0):
        assert sorted(index.match({"n": value})) == [0, 1, 2]
    assert index.match({"n": 2}) == ()


def test_unhashable_message_value_still_matches_an_equal_filter_value() -> None:
    """A set field matches the equal frozenset filter value."""
    index, _ = index_of([{"s": frozenset({1})}], [{"s": 2}])
    assert index.match({"s": {1}}) == [0]
    assert index.match({"s": [1]}) == ()


def test_unhashable_filter_value_matches_by_equality() -> None:
    """A list or dict filter value matches an equal field."""
    index, _ = index_of([{"s": [1, 2]}], [{"o": {"x": 1}}])
    assert index.match({"s": [1, 2]}) == [0]
    assert index.match({"o": {"x": 1}}) == [1]
    assert index.match({"s": (1, 2)}) == ()


def test_nan_filter_value_never_matches() -> None:
    """NaN != NaN, so a NaN filter value matches nothing, even the same object."""
    index, _ = index_of([{"x": NAN}])
    assert index.match({"x": NAN}) == ()


def test_target_with_several_matching_clauses_is_returned_once() -> None:
    """Duplicates are removed when several clauses of one filter match."""
    index, _ = index_of([{"s": "A"}, {"t": "trade"}, {"s": "A", "t": "trade"}, {"p": lambda v: True}])
    assert index.match({"s": "A", "t": "trade", "p": 0}) == [0]


def test_same_target_added_twice_is_returned_twice() -> None:
    """Two registrations of one target are two subscriptions."""
    index: Index[str] = Index()
    index.add(compile_filters([{"s": "A"}]), "t")
    index.add(compile_filters([{"s": "A"}]), "t")
    assert list(index.match({"s": "A"})) == ["t", "t"]


def test_match_all_targets_come_first_in_registration_order() -> None:
    """Unfiltered targets lead the result, in the order they were added."""
    index: Index[str] = Index()
    index.add(compile_filters([{"s": "A"}]), "filtered")
    index.add((), "first")
    index.add(compile_filters(None), "second")
    assert index.match({"s": "A"}) == ["first", "second", "filtered"]
    assert index.match("not a mapping") == ("first", "second")


def test_only_match_all_returns_the_same_cached_tuple() -> None:
    """With only unfiltered subscriptions, match allocates nothing and returns one tuple."""
    index: Index[str] = Index()
    index.add((), "stream")
    first = index.match({"a": 1})
    assert first == ("stream",)
    assert index.match({"b": 2}) is first
    assert index.match("text") is first


def test_no_anchored_match_returns_the_cached_tuple() -> None:
    """When no filtered subscription matches, the match-all snapshot is returned as is."""
    index: Index[str] = Index()
    index.add((), "stream")
    index.add(compile_filters([{"s": "A"}]), "a")
    first = index.match({"s": "B"})
    assert first == ("stream",)
    assert index.match({"s": "C"}) is first


def test_non_mapping_message_reaches_condition_callables() -> None:
    """A whole-message callable in a condition sees non-mapping messages too."""
    index: Index[str] = Index()
    index.add(compile_condition(lambda m: m == "pong"), "waiter")
    index.add(compile_filters([{"s": "A"}]), "filtered")
    assert index.match("pong") == ["waiter"]
    assert index.match("ping") == ()


def test_non_dict_mappings_match() -> None:
    """OrderedDict, MappingProxyType and defaultdict messages match like dicts."""
    index, _ = index_of([{"s": "A"}], [{("o", "x"): 1}])
    proxy = types.MappingProxyType({"s": "A", "o": OrderedDict(x=1)})
    assert sorted(index.match(proxy)) == [0, 1]
    assert list(index.match(OrderedDict(s="A"))) == [0]


def test_defaultdict_message_is_not_mutated() -> None:
    """Matching reads a defaultdict without creating the keys it looks for."""
    msg: defaultdict[str, Any] = defaultdict(dict, s="B")
    index, _ = index_of([{"s": "A"}], [{("o", "x"): 1}], [{"p": lambda v: True}])
    assert index.match(msg) == ()
    assert dict(msg) == {"s": "B"}


# --- Typed messages: msgspec Structs and dataclasses ----------------------------------------


class Trade(msgspec.Struct):
    """A Binance trade as a Struct."""

    e: str
    s: str
    p: str
    o: Any = msgspec.UNSET


@dataclasses.dataclass
class Info:
    """A nested dataclass."""

    x: str

    def method(self) -> str:
        """Not a field: filters must not see it."""
        return "NEW"

    @property
    def prop(self) -> str:
        """Not a field either."""
        return "NEW"


def test_struct_fields_match_like_keys() -> None:
    """{"s": "A"} matches a Struct whose field s == "A", through the index and matches()."""
    index, _ = index_of([{"e": "trade", "s": "A"}], [{"s": "B"}], [{"p": lambda v: float(v) > 1}])
    msg = Trade(e="trade", s="A", p="2.5")
    assert sorted(index.match(msg)) == [0, 2]
    assert matches(compile_filters([{"s": "A"}]), msg)
    assert not matches(compile_filters([{"s": "B"}]), msg)


def test_dataclass_fields_match_like_keys() -> None:
    """A dataclass message matches on its fields, and a tuple path goes into nested ones."""
    index, _ = index_of([{"x": "NEW"}], [{("o", "x"): "NEW"}], [{("o", "x"): "OLD"}])
    assert list(index.match(Info("NEW"))) == [0]
    assert list(index.match(Trade(e="trade", s="A", p="1", o=Info("NEW")))) == [1]
    assert list(index.match({"o": Info("NEW")})) == [1]
    assert list(index.match(Trade(e="trade", s="A", p="1", o={"x": "OLD"}))) == [2]


def test_only_declared_fields_count() -> None:
    """Methods, properties, dunders, non-string keys and unset fields are missing."""
    index, _ = index_of([{"method": "NEW"}], [{"prop": "NEW"}], [{"__class__": Info}],
                        [{"o": msgspec.UNSET}], [{1: "x"}], [{"o": lambda v: True}])
    assert list(index.match(Info("NEW"))) == []
    assert list(index.match(Trade(e="trade", s="A", p="1"))) == []
    assert not matches(compile_filters([{"prop": "NEW"}]), Info("NEW"))


def test_empty_dict_filter_matches_typed_messages() -> None:
    """[{}] matches every mapping and every typed message, nothing else."""
    clauses = compile_filters([{}])
    assert matches(clauses, Info("x"))
    assert matches(clauses, Trade(e="", s="", p=""))
    index, _ = index_of([{}])
    assert list(index.match(Info("x"))) == [0]
    assert list(index.match(object())) == []


def test_typed_messages_use_the_buckets() -> None:
    """Among 1,000 symbol filters, a Struct message evaluates only its own candidate."""
    calls: list[int] = []

    def seen(i: int) -> Any:
        return lambda v: calls.append(i) or True

    index, _ = index_of(*([{"s": f"S{i}", "p": seen(i)}] for i in range(1000)))
    assert list(index.match(Trade(e="trade", s="S7", p="1"))) == [7]
    assert calls == [7]


def test_a_dataclass_class_is_not_a_message_with_fields() -> None:
    """The class itself is not an instance: its field names are not its attributes."""
    index, _ = index_of([{"x": "NEW"}])
    assert list(index.match(Info)) == []


def test_remove_stops_matching() -> None:
    """A removed subscription is no longer returned."""
    index, subs = index_of([{"s": "A"}], [{"s": "A"}], None)
    index.remove(subs[0])
    assert index.match({"s": "A"}) == [2, 1]
    index.remove(subs[2])
    assert list(index.match({"s": "A"})) == [1]
    assert len(index) == 1
    assert not subs[0].active and subs[1].active


def test_remove_is_idempotent() -> None:
    """Removing a subscription twice does nothing the second time."""
    index, subs = index_of([{"s": "A"}], [{"p": lambda v: True}], None, [{"s": "A"}, {"s": "A"}])
    for sub in subs:
        index.remove(sub)
        index.remove(sub)
    assert len(index) == 0
    assert index.match({"s": "A", "p": 1}) == ()


def test_remove_with_a_handle_of_another_index_is_an_error() -> None:
    """A handle from a different index is refused with ValueError."""
    _, subs = index_of([{"s": "A"}])
    with pytest.raises(ValueError, match="another index"):
        Index().remove(subs[0])


def test_removing_during_iteration_of_a_match_result_is_safe() -> None:
    """The caller may remove subscriptions while iterating over a result."""
    index: Index[int] = Index()
    subs: dict[int, Subscription[int]] = {}
    for i in range(3):
        subs[i] = index.add((), i)
    for i in range(3, 6):
        subs[i] = index.add(compile_filters([{"s": "A"}]), i)
    seen = []
    for target in index.match({"s": "A"}):
        seen.append(target)
        for sub in subs.values():
            index.remove(sub)
        index.add((), 99)
    assert seen == [0, 1, 2, 3, 4, 5]
    assert index.match({"s": "A"}) == (99, 99, 99, 99, 99, 99)


def test_adding_during_iteration_of_a_match_result_is_safe() -> None:
    """Subscriptions added while iterating over a result do not appear in it."""
    index: Index[int] = Index()
    index.add(compile_filters([{"s": "A"}]), 0)
    seen = []
    for target in index.match({"s": "A"}):
        seen.append(target)
        index.add(compile_filters([{"s": "A"}]), target + 1)
    assert seen == [0]


def test_len_counts_live_subscriptions() -> None:
    """len() is the number of subscriptions added and not removed."""
    index, subs = index_of(None, [{"s": "A"}], [{"p": lambda v: True}], [{"s": "A"}, {"x": []}])
    assert len(index) == 4
    index.remove(subs[3])
    assert len(index) == 3


def test_add_refuses_uncompiled_filters() -> None:
    """Index.add wants compiled clauses and says how to get them."""
    with pytest.raises(TypeError, match="compile_filters"):
        Index().add([{"s": "A"}], "t")  # type: ignore[arg-type]


def test_clause_is_immutable() -> None:
    """A Clause's attributes cannot be reassigned."""
    (clause,) = compile_filters([{"s": "A"}])
    with pytest.raises(AttributeError):
        clause.source = {"s": "B"}  # type: ignore[misc]


def test_clause_constructor_compiles_dicts_and_callables() -> None:
    """Clause(source) accepts a dict or a whole-message callable."""
    assert Clause({"s": "A"}).matches({"s": "A"})
    assert Clause(lambda m: m == 3).matches(3)


def test_tuple_of_mappings_is_accepted() -> None:
    """A tuple of any mappings is as good as a list of dicts."""
    clauses = compile_filters(({"s": "A"}, types.MappingProxyType({"s": "B"})))
    assert matches(clauses, {"s": "B"})


# --- Conditions ---------------------------------------------------------------------------


def test_condition_accepts_a_single_dict() -> None:
    """compile_condition wraps a bare dict."""
    clauses = compile_condition({"type": "ack"})
    assert matches(clauses, {"type": "ack"})
    assert not matches(clauses, {"type": "nack"})


def test_condition_accepts_a_single_callable() -> None:
    """compile_condition wraps a bare callable."""
    clauses = compile_condition(lambda m: m.get("id") == 7)
    assert matches(clauses, {"id": 7})
    assert not matches(clauses, {"id": 8})


def test_condition_accepts_a_mixed_list() -> None:
    """A condition list may mix dicts and callables."""
    clauses = compile_condition([{"type": "ack"}, lambda m: m == "ok"])
    assert matches(clauses, {"type": "ack"})
    assert matches(clauses, "ok")
    assert not matches(clauses, "no")


def test_empty_condition_is_a_value_error() -> None:
    """compile_condition([]) and (None) raise ValueError naming the argument."""
    with pytest.raises(ValueError, match="until"):
        compile_condition([])
    with pytest.raises(ValueError, match="expect: alarm"):
        compile_condition(None, argname="expect: alarm")


def test_condition_rejects_a_string() -> None:
    """A string condition is a TypeError naming the type and value."""
    with pytest.raises(TypeError, match=r"until must be a dict, a callable, or a list of these, got str 'ack'"):
        compile_condition("ack")


# --- Clear errors -------------------------------------------------------------------------


def test_string_filters_error_names_type_and_value() -> None:
    """A string instead of a list is a TypeError naming the argument, str and the value."""
    with pytest.raises(TypeError) as info:
        compile_filters("trade", argname="stream_filter: filters")  # type: ignore[arg-type]
    assert str(info.value) == "stream_filter: filters must be a dict, a callable, or a list of these, got str 'trade'"


def test_a_single_dict_or_callable_is_a_filter_of_one() -> None:
    """A bare dict or callable is accepted as a list of one, in filters as in conditions."""
    assert [c.source for c in compile_filters({"s": "A"})] == [{"s": "A"}]
    assert [c.source for c in compile_condition({"s": "A"})] == [{"s": "A"}]
    only = compile_filters(lambda m: m == "x")
    assert matches(only, "x") and not matches(only, "y")


def test_filters_and_conditions_refuse_the_same_shapes_with_the_same_message() -> None:
    """A string is refused by both with one message (the argument name aside)."""
    with pytest.raises(TypeError) as f:
        compile_filters("trade", argname="x")
    with pytest.raises(TypeError) as c:
        compile_condition("trade", argname="x")
    assert str(f.value) == str(c.value) == "x must be a dict, a callable, or a list of these, got str 'trade'"


def test_bad_item_error_names_its_index() -> None:
    """A non-dict item is reported with its position and value."""
    with pytest.raises(TypeError, match=r"filters\[1\] must be a dict or a callable, got str 'B'"):
        compile_filters([{"s": "A"}, "B"])  # type: ignore[list-item]


def test_callable_item_is_a_whole_message_predicate_in_a_filter() -> None:
    """Filters take callables as conditions do; allow_callables=False still refuses them."""
    with pytest.raises(TypeError, match=r"filters\[0\] must be a dict, got function"):
        compile_filters([lambda m: True], allow_callables=False)
    assert compile_filters([lambda m: True])[0].matches("x")


def test_empty_tuple_key_is_a_value_error() -> None:
    """{(): 1} is refused: a path needs at least one step."""
    with pytest.raises(ValueError, match=r"filters\[0\] has an empty tuple key"):
        compile_filters([{(): 1}])


def test_unhashable_key_in_a_custom_mapping_is_a_type_error() -> None:
    """A mapping whose keys cannot be hashed is refused up front."""

    class ListKeyed(Mapping[Any, Any]):
        def __getitem__(self, key: Any) -> Any:
            return 1

        def __iter__(self) -> Any:
            return iter([["a"]])

        def __len__(self) -> int:
            return 1

    with pytest.raises(TypeError, match=r"filters\[0\] has an unhashable key list \['a'\]"):
        compile_filters([ListKeyed()])


def test_generator_of_dicts_is_refused() -> None:
    """Only a list or a tuple is accepted at the top level."""
    with pytest.raises(TypeError, match="must be a dict, a callable, or a list of these, got generator"):
        compile_filters(d for d in [{"s": "A"}])  # type: ignore[arg-type]


# --- The index does not scan --------------------------------------------------------------


def test_match_evaluates_only_the_candidate_among_many() -> None:
    """With 10,000 subscriptions on distinct symbols, one message checks one clause."""
    calls: list[Any] = []

    def counted(value: Any) -> bool:
        calls.append(value)
        return True

    index: Index[int] = Index()
    for i in range(10_000):
        index.add(compile_filters([{"s": f"SYM{i}", "n": counted}]), i)
    assert list(index.match({"s": "SYM4321", "n": 1})) == [4321]
    assert calls == [1]
    assert index.match({"s": "NOPE", "n": 1}) == ()
    assert calls == [1]


def test_unanchorable_clauses_are_the_only_ones_scanned() -> None:
    """Predicate-only clauses are evaluated; clauses anchored on other values are not."""
    calls: list[str] = []

    def counted(name: str) -> Any:
        def predicate(value: Any) -> bool:
            calls.append(name)
            return True

        return predicate

    index: Index[str] = Index()
    for i in range(1_000):
        index.add(compile_filters([{"s": f"SYM{i}", "n": counted("anchored")}]), f"a{i}")
    index.add(compile_filters([{"n": counted("scan")}]), "scan")
    assert sorted(index.match({"s": "SYM7", "n": 0})) == ["a7", "scan"]
    assert sorted(calls) == ["anchored", "scan"]


def test_ten_thousand_match_all_subscriptions_in_order() -> None:
    """Many unfiltered subscriptions come back complete and in registration order."""
    index: Index[int] = Index()
    for i in range(10_000):
        index.add((), i)
    assert index.match({"a": 1}) == tuple(range(10_000))


# --- Property tests against the plain definition -----------------------------------------

KEYS = ["a", "b", "c"]
_MISSING = object()


class Pred:
    """A named, deterministic predicate (a readable repr in hypothesis failures)."""

    def __init__(self, name: str, fn: Any) -> None:
        self.name = name
        self.fn = fn

    def __call__(self, value: Any) -> Any:
        return self.fn(value)

    def __repr__(self) -> str:
        return self.name


PREDICATES = [
    Pred("positive", lambda v: v > 0),  # raises TypeError on str, None, dict...
    Pred("is_str", lambda v: isinstance(v, str)),
    Pred("truthy", lambda v: v),
    Pred("never", lambda v: False),
    Pred("always", lambda v: True),  # tells a present field from a missing one
]

WHOLE = [
    Pred("has_two_keys", lambda m: isinstance(m, Mapping) and len(m) >= 2),
    Pred("is_x", lambda m: m == "x"),
    Pred("a_positive", lambda m: m["a"] > 0),  # raises on most messages
]

scalars = st.one_of(
    st.integers(-1, 2),
    st.booleans(),
    st.sampled_from(["", "x", "y"]),
    st.none(),
    st.sampled_from([0.0, 1.0, 1.5, NAN]),
)
filter_keys = st.one_of(
    st.sampled_from(KEYS),
    st.tuples(st.sampled_from(KEYS)),
    st.tuples(st.sampled_from(KEYS), st.sampled_from(KEYS)),
)
filter_values = st.one_of(
    scalars,
    scalars,
    st.lists(st.integers(0, 1), max_size=2),
    st.frozensets(st.integers(0, 1), max_size=2),
    st.tuples(st.integers(0, 1)),
    st.sampled_from(PREDICATES),
)
filter_dicts = st.dictionaries(filter_keys, filter_values, max_size=3)
filters = st.one_of(st.none(), st.lists(filter_dicts, max_size=3))
conditions = st.lists(st.one_of(filter_dicts, st.sampled_from(WHOLE)), min_size=1, max_size=3)

message_values = st.recursive(
    st.one_of(
        scalars,
        st.lists(st.integers(0, 1), max_size=2),
        st.sets(st.integers(0, 1), max_size=2),
        st.tuples(st.integers(0, 1)),
    ),
    lambda children: st.dictionaries(st.sampled_from(KEYS), children, max_size=3),
    max_leaves=6,
)
mapping_messages = st.dictionaries(st.sampled_from(KEYS), message_values, max_size=3)

# A Struct with every key as a field, UNSET unless given (UNSET counts as missing), and a
# dataclass per set of keys (a key not given is no field at all).
AnyKeys = msgspec.defstruct("AnyKeys", [(k, Any, msgspec.UNSET) for k in KEYS])
_DATACLASSES: dict[tuple[str, ...], type] = {}


def as_dataclass(fields: dict[str, Any]) -> Any:
    """A dataclass instance whose fields are exactly fields."""
    names = tuple(sorted(fields))
    cls = _DATACLASSES.get(names)
    if cls is None:
        cls = _DATACLASSES[names] = dataclasses.make_dataclass("Keys_" + "".join(names), names)
    return cls(**fields)


@st.composite
def typed_variant(draw: Any, msg: Any) -> Any:
    """msg with some of its dicts (itself included) turned into Structs or dataclasses."""
    if not isinstance(msg, dict):
        return msg
    fields = {k: draw(typed_variant(v)) for k, v in msg.items()}
    kind = draw(st.sampled_from(["dict", "struct", "dataclass"]))
    if kind == "struct":
        return AnyKeys(**fields)
    if kind == "dataclass":
        return as_dataclass(fields)
    return fields


typed_messages = mapping_messages.flatmap(typed_variant)
messages = st.one_of(
    mapping_messages,
    mapping_messages,
    mapping_messages.map(OrderedDict),
    mapping_messages.map(types.MappingProxyType),
    typed_messages,
    st.sampled_from(["x", "a", 0, None, ["a"], ("a", 1)]),
)


@st.composite
def messages_for(draw: Any, filter_lists: list[Any]) -> Any:
    """A random message, usually built to satisfy a few dicts of filter_lists.

    Random messages alone rarely match a filter with several pairs, so without this the
    properties would mostly compare empty results.
    """
    dicts = [d for f in filter_lists if f for d in f if isinstance(d, Mapping)]
    if not dicts or draw(st.integers(0, 3)) == 0:
        return draw(messages)
    msg = copy.deepcopy(draw(mapping_messages))
    for d in draw(st.lists(st.sampled_from(dicts), min_size=1, max_size=3)):
        for key, value in d.items():
            if callable(value):
                value = draw(scalars)
            elif isinstance(value, frozenset) and draw(st.booleans()):
                value = set(value)  # unhashable, yet == the filter value
            path = key if isinstance(key, tuple) else (key,)
            parent = msg
            for step in path[:-1]:
                child = parent.get(step)
                if not isinstance(child, dict):
                    child = parent[step] = {}
                parent = child
            parent[path[-1]] = value
    kind = draw(st.sampled_from(["dict", "dict", "ordered", "proxy", "typed"]))
    if kind == "typed":
        return draw(typed_variant(msg))
    return {"dict": dict, "ordered": OrderedDict, "proxy": types.MappingProxyType}[kind](msg)


def is_typed(msg: Any) -> bool:
    """Whether msg is a typed message: a Struct or dataclass instance."""
    return isinstance(msg, msgspec.Struct) or (dataclasses.is_dataclass(msg) and not isinstance(msg, type))


def plain_step(msg: Any, step: Any) -> Any:
    """msg[step] for a mapping, msg.step for a declared, set field of a typed message; else _MISSING."""
    if isinstance(msg, Mapping):
        return msg[step] if step in msg else _MISSING
    if isinstance(msg, msgspec.Struct):
        if step not in msg.__struct_fields__:
            return _MISSING
        value = getattr(msg, step)
        return _MISSING if value is msgspec.UNSET else value
    if is_typed(msg):
        names = [f.name for f in dataclasses.fields(msg)]
        return getattr(msg, step) if step in names else _MISSING
    return _MISSING


def plain_field(msg: Any, key: Any) -> Any:
    """msg[key], following a tuple key as a path; _MISSING when a step is not there."""
    path = key if isinstance(key, tuple) else (key,)
    for step in path:
        msg = plain_step(msg, step)
        if msg is _MISSING:
            return _MISSING
    return msg


def plain_item_matches(item: Any, msg: Any) -> bool:
    """The plain definition for one item: a dict of fields, or a whole-message callable."""
    if not isinstance(item, Mapping):
        try:
            return bool(item(msg))
        except Exception:
            return False
    if not isinstance(msg, Mapping) and not is_typed(msg):
        return False
    for key, value in item.items():
        field = plain_field(msg, key)
        if field is _MISSING:
            return False
        if callable(value):
            try:
                if not value(field):
                    return False
            except Exception:
                return False
        elif not field == value:
            return False
    return True


def plain_matches(items: Any, msg: Any) -> bool:
    """The plain definition: None or [] match all; otherwise any one item matches."""
    if not items:
        return True
    return any(plain_item_matches(item, msg) for item in items)


def ignore(exc: BaseException, source: object) -> None:
    """An on_error that accepts the predicate errors the strategies provoke on purpose."""


@given(filters=st.lists(filters, max_size=30), data=st.data())
def test_index_match_agrees_with_the_plain_definition(filters: list[Any], data: Any) -> None:
    """Index.match returns exactly the targets the plain definition selects, once each."""
    msg = data.draw(messages_for(filters))
    index, _ = index_of(*filters, on_error=ignore)
    got = list(index.match(msg))
    expected = [i for i, f in enumerate(filters) if plain_matches(f, msg)]
    assert sorted(got) == expected
    everyone = [i for i, f in enumerate(filters) if not f]
    assert got[: len(everyone)] == everyone


@given(conds=st.lists(conditions, max_size=30), data=st.data())
def test_index_match_agrees_for_conditions_with_callables(conds: list[Any], data: Any) -> None:
    """Conditions mixing dicts and whole-message callables index correctly too."""
    msg = data.draw(messages_for(conds))
    index: Index[int] = Index(on_error=ignore)
    for i, cond in enumerate(conds):
        index.add(compile_condition(cond), i)
    expected = [i for i, c in enumerate(conds) if plain_matches(c, msg)]
    assert sorted(index.match(msg)) == expected


@given(f=filters, data=st.data())
def test_matches_agrees_with_the_plain_definition(f: Any, data: Any) -> None:
    """matches() on compiled clauses agrees with the plain definition."""
    msg = data.draw(messages_for([f]))
    assert matches(compile_filters(f), msg, on_error=ignore) == plain_matches(f, msg)


@given(cond=conditions, data=st.data())
def test_condition_matches_agrees_with_the_plain_definition(cond: Any, data: Any) -> None:
    """matches() on a compiled condition agrees with the plain definition."""
    msg = data.draw(messages_for([cond]))
    assert matches(compile_condition(cond), msg, on_error=ignore) == plain_matches(cond, msg)


@given(filters=st.lists(filters, max_size=30), removed=st.sets(st.integers(0, 29)), data=st.data())
def test_index_agrees_after_removals(filters: list[Any], removed: set[int], data: Any) -> None:
    """After removing random subscriptions the index still agrees with the definition."""
    msgs = data.draw(st.lists(messages_for(filters), min_size=1, max_size=3))
    index, subs = index_of(*filters, on_error=ignore)
    index.match(msgs[0])  # build the snapshots, so that removal must invalidate them
    for i in sorted(removed):
        if i < len(subs):
            index.remove(subs[i])
            index.remove(subs[i])
    live = [i for i in range(len(filters)) if i not in removed]
    assert len(index) == len(live)
    for msg in msgs:
        expected = [i for i in live if plain_matches(filters[i], msg)]
        assert sorted(index.match(msg)) == expected


@given(
    ops=st.lists(
        st.one_of(
            st.tuples(st.just("add"), filters),
            st.tuples(st.just("remove"), st.integers(0, 20)),
            st.tuples(st.just("match"), messages),
            st.tuples(st.just("match"), filters.flatmap(lambda f: messages_for([f]))),
        ),
        max_size=25,
    )
)
def test_index_agrees_under_interleaved_adds_removes_and_matches(ops: list[Any]) -> None:
    """Lazy snapshot rebuilding stays correct whatever the order of operations."""
    index: Index[int] = Index(on_error=ignore)
    live: dict[int, tuple[Any, Subscription[int]]] = {}
    added = 0
    held = index.matcher()  # taken before later adds and removes: it must still be right
    for op, arg in ops:
        if op == "add":
            live[added] = (arg, index.add(compile_filters(arg), added))
            added += 1
        elif op == "remove":
            if arg in live:
                index.remove(live.pop(arg)[1])
        else:
            expected = sorted(i for i, (f, _) in live.items() if plain_matches(f, arg))
            assert sorted(index.match(arg)) == expected
            assert sorted(held(arg)) == expected
            held = index.matcher()
            assert sorted(held(arg)) == expected
        assert len(index) == len(live)


EQUAL_ACROSS_TYPES = st.sampled_from([1, 1.0, True, 0, 0.0, False, -0.0, "1", None, (1,), frozenset({1})])


@settings(max_examples=50)
@given(value=EQUAL_ACROSS_TYPES, field=st.one_of(EQUAL_ACROSS_TYPES, st.sets(st.integers(0, 1))))
def test_equal_values_of_different_types_share_a_bucket(value: Any, field: Any) -> None:
    """Filters on 1, 1.0 and True (and 0, 0.0, False) agree with == on every field."""
    filters = [[{"a": value}], [{"a": 1}], [{"a": True}], [{"a": 0.0}]]
    index, _ = index_of(*filters)
    msg = {"a": field}
    assert sorted(index.match(msg)) == [i for i, f in enumerate(filters) if plain_matches(f, msg)]


# --- Shapes: filters of top-level equalities, one lookup each kind ------------------------


def test_keys_in_any_order_share_a_shape_and_match_fully() -> None:
    """{"e", "s"} in either order is one shape; a message must have both values to match."""
    index, _ = index_of([{"e": "trade", "s": "A"}], [{"s": "B", "e": "trade"}], [{"s": "A", "e": "depth"}])
    assert len(index._shapes) == 1
    assert index.match({"e": "trade", "s": "A", "p": 1}) == (0,)
    assert index.match({"s": "B", "e": "trade"}) == (1,)
    assert index.match({"e": "trade"}) == () and index.match({"s": "A"}) == ()


def test_a_filter_of_several_dicts_of_one_shape_is_found_once() -> None:
    """[{"s": "A"}, {"s": "B"}] matches A and B, once each; the same dict twice is one match."""
    index, _ = index_of([{"s": "A"}, {"s": "B"}], [{"s": "A"}, {"s": "A"}])
    assert index.match({"s": "A"}) == (0, 1)
    assert index.match({"s": "B"}) == (0,)


def test_shapes_beside_everyone_buckets_and_scans_keep_the_contract() -> None:
    """Everyone first, then every other match once, whatever room each filter went to."""
    index, _ = index_of(
        [{"s": "A"}],                      # a shape
        None,                              # everyone
        [{"s": "A", "p": lambda v: v}],    # a bucket (a predicate)
        [{"s": "A"}, {"e": "trade"}],      # two shapes in one filter: a bucket
        [lambda m: "s" in m],              # a scan
    )
    got = list(index.match({"s": "A", "e": "trade", "p": 1}))
    assert got[0] == 1 and sorted(got) == [0, 1, 2, 3, 4]


def test_a_key_named_twice_in_one_dict_needs_both_values() -> None:
    """{"b": None, ("b",): 0} can match nothing: it is not filed as a shape of one value."""
    index, _ = index_of([{"b": None, ("b",): 0}], [{"b": 0}])
    assert list(index.match({"b": 0})) == [1] and list(index.match({"b": None})) == []


def test_more_shapes_than_kept_still_match() -> None:
    """Beyond SHAPES_MAX shapes, filters go to the buckets and match all the same."""
    keys = ["a", "b", "c", "d", "e", "f", "g"]
    index, _ = index_of(*[[{k: 1}] for k in keys])
    assert len(index._shapes) == SHAPES_MAX
    for i, k in enumerate(keys):
        assert list(index.match({k: 1})) == [i]


def test_an_unhashable_value_is_checked_against_the_shape() -> None:
    """A set in the message matches a frozenset filter of a two-key shape, through the slow path."""
    index, _ = index_of([{"e": "t", "s": frozenset({1})}], [{"e": "t", "s": 2}])
    assert list(index.match({"e": "t", "s": {1}})) == [0]
    assert list(index.matcher()({"e": "t", "s": {1}})) == [0]
    assert list(index.match({"e": "t", "s": [1]})) == []


def test_matcher_is_one_lookup_for_one_shape_and_stays_right_after_changes() -> None:
    """With one shape, matcher() is not match(); after an add it still sees the new filter."""
    index, subs = index_of([{"e": "trade", "s": "A"}], [{"e": "trade", "s": "B"}])
    fast = index.matcher()
    assert fast != index.match
    assert fast({"e": "trade", "s": "A"}) == (0,) and fast({"e": "trade", "s": "C"}) == ()
    index.add(compile_filters([{"e": "trade", "s": "C"}]), 2)
    index.remove(subs[0])
    assert list(fast({"e": "trade", "s": "C"})) == [2] and list(fast({"e": "trade", "s": "A"})) == []
    assert list(fast(OrderedDict(e="trade", s="B"))) == [1]  # not a dict: match() does it
    index.add((), 3)
    assert index.matcher() == index.match  # everyone: no shortcut
