"""The README examples of the packages our users come from (expectations, wsappy) run against FeedServer."""

from __future__ import annotations

from .test_examples_feeds import run_example


def test_expectations_example_runs_callbacks_for_echoed_eids() -> None:
    """expectations_eid.py: each eid comes back, its callback runs, and eid-less messages match none."""
    assert run_example("expectations_eid.py").splitlines() == [
        "Type a message to send to the server: hello",
        'Processed expectation: {"eid": "eid-1", "result": "hello to you too"}',
        "Type a message to send to the server: time",
        'Processed expectation: {"eid": "eid-2", "result": "12:00"}',
        "Type a message to send to the server: nonsense",
        'Processed expectation: {"eid": "eid-3", "error": {"code": -32601, "message": "unknown method \'nonsense\'"}}',
        "Message without an eid: maintenance at 03:00",
        'request(id_key=\'eid\') got: {"eid": 1, "result": "hello to you too"}',
        "Exiting!",
    ]


def test_wsappy_example_routes_on_module_and_method() -> None:
    """wsappy_entities.py: requests routed on (module, method) get wsappy's envelope and the right items."""
    lines = run_example("wsappy_entities.py").splitlines()
    assert lines[1] == (
        '<-- {"request_id": 1, "event": "result", "module": "entity", '
        '"data": {"items": [{"id": 42, "name": "a"}]}}'
    )
    assert lines[-1] == "items {42: {'id': 42, 'name': 'a'}, 15: {'id': 15, 'name': 'b'}, 30: {'id': 30, 'name': 'c'}}"
    assert len(lines) == 7
