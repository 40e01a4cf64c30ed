"""Conversations against a real FeedServer: request, expect, wait_for and poll (SPEC §3)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import pytest

from async_ws_stream import (
    Alarm,
    AsyncWsStreamError,
    ClientClosed,
    ConnectionLost,
    RetriesExhausted,
    Timeout,
)
from async_ws_stream.testing import FeedServer

from .conftest import JsonClient, settle

# A reply that never comes while a test runs: the route's delay outlasts the test,
# and the server drops the pending reply when the connection closes.
NEVER = 60.0


def sent(server: FeedServer, method: str) -> list[tuple[int, dict[str, Any]]]:
    """(connection number, request) of every request for ``method`` the server received."""
    out = []
    for number, frame in server.received:
        msg = json.loads(frame)
        if msg.get("method") == method:
            out.append((number, msg))
    return out


def counting(method_results: list[Any]) -> Callable[[Any], Any]:
    """A route answering its n-th call with ``method_results[n]`` (the last one from then on)."""
    calls = iter(method_results)
    last: list[Any] = []

    def route(params: Any) -> Any:
        for value in calls:
            last[:] = [value]
            return value
        return last[0]

    return route


class AttemptClient(JsonClient):
    """A JsonClient that lets a test wait for its n-th connection attempt."""

    def __init__(self, url: str, **options: Any) -> None:
        super().__init__(url, **options)
        self.attempts = 0
        self.attempted = asyncio.Condition()

    async def _create_ws(self) -> Any:
        async with self.attempted:
            self.attempts += 1
            self.attempted.notify_all()
        return await super()._create_ws()

    async def wait_attempts(self, n: int) -> None:
        async with self.attempted:
            await self.attempted.wait_for(lambda: self.attempts >= n)


# -- correlation ---------------------------------------------------------------------------


async def test_request_returns_the_reply_carrying_its_id(client: JsonClient, server: FeedServer) -> None:
    """request() sends the message with an id and returns the reply with that id."""
    server.route("echo", lambda params: params)
    reply = await client.request({"method": "echo", "params": {"x": 1}}, timeout=5)
    [(_, wire)] = sent(server, "echo")
    assert reply == {"id": wire["id"], "result": {"x": 1}}


async def test_request_never_changes_the_callers_dict(client: JsonClient, server: FeedServer) -> None:
    """The caller's dict goes out as a copy with the id; the dict itself is untouched."""
    msg = {"method": "SUBSCRIBE", "params": ["a@trade"]}
    await client.request(msg, timeout=5)
    await client.request(msg, timeout=5)
    assert msg == {"method": "SUBSCRIBE", "params": ["a@trade"]}
    assert [wire["id"] for _, wire in sent(server, "SUBSCRIBE")] == [1, 2]


async def test_request_ids_are_unique_per_client(client: JsonClient, server: FeedServer) -> None:
    """Concurrent requests of one client each carry an id of their own."""
    await asyncio.gather(*(client.request({"method": "SUBSCRIBE"}, timeout=5) for _ in range(20)))
    ids = [wire["id"] for _, wire in sent(server, "SUBSCRIBE")]
    assert len(ids) == len(set(ids)) == 20


async def test_request_keeps_an_id_the_caller_set(client: JsonClient, server: FeedServer) -> None:
    """A message that already has an id goes out with it, and its reply is matched by it."""
    reply = await client.request({"method": "SUBSCRIBE", "id": "sub-btc"}, timeout=5)
    assert reply == {"id": "sub-btc", "result": None}
    assert sent(server, "SUBSCRIBE")[0][1]["id"] == "sub-btc"


async def test_id_key_per_call(client: JsonClient, server: FeedServer) -> None:
    """id_key="request_id" puts the id under that key and matches the reply by it."""
    server.route("echo", lambda params: params)
    reply = await client.request({"method": "echo", "params": [7]}, id_key="request_id", timeout=5)
    [(_, wire)] = sent(server, "echo")
    assert "id" not in wire
    assert reply == {"request_id": wire["request_id"], "event": "echo", "data": [7]}


async def test_request_id_key_per_class(server: FeedServer) -> None:
    """A subclass's request_id_key is the id key of its request() and poll()."""

    class RequestIdClient(JsonClient):
        request_id_key = "request_id"

    server.route("echo", lambda params: params)
    client = RequestIdClient(server.url)
    try:
        reply = await client.request({"method": "echo", "params": 1}, timeout=5)
        polled = await client.poll({"method": "echo", "params": 2}, {"data": 2}, interval=1)
    finally:
        await client.exit()
    assert reply["data"] == 1 and polled["data"] == 2
    assert all("request_id" in wire and "id" not in wire for _, wire in sent(server, "echo"))


async def test_reply_also_reaches_matching_streams(client: JsonClient, server: FeedServer) -> None:
    """The reply is dispatched like any message: matching streams get the same object, others not."""
    replies = client.stream_filter([{"result": None}])
    trades = client.stream_filter([{"e": "trade"}])
    reply = await client.request({"method": "SUBSCRIBE"}, timeout=5)
    assert replies.get_nowait() is reply
    assert trades.queued == 0


async def test_a_thousand_concurrent_requests_get_their_own_replies(
    client: JsonClient, server: FeedServer
) -> None:
    """1,000 requests in flight at once over one connection each get their own reply, and none is left."""
    server.route("echo", lambda params: params)
    await client.wait_connected(timeout=5)
    replies = await asyncio.gather(
        *(client.request({"method": "echo", "params": {"n": n}}, timeout=20) for n in range(1000))
    )
    assert [reply["result"]["n"] for reply in replies] == list(range(1000))
    assert all(reply["id"] == wire["id"] for reply, (_, wire) in zip(replies, sent(server, "echo"), strict=True))
    assert server.connects == 1
    assert client.stats()["pending"] == 0


async def test_a_slow_reply_does_not_hold_up_a_later_request(client: JsonClient, server: FeedServer) -> None:
    """With a delayed route (scripted delay), a later request's reply arrives first and is returned."""
    server.route("slow", lambda params: "slow", delay=NEVER)
    server.route("fast", lambda params: "fast")
    slow = asyncio.create_task(client.request({"method": "slow"}, timeout=None))
    await server.wait_received(1)
    assert (await client.request({"method": "fast"}, timeout=5))["result"] == "fast"
    assert not slow.done()
    slow.cancel()
    with pytest.raises(asyncio.CancelledError):
        await slow


async def test_an_error_reply_is_returned_not_raised(client: JsonClient, server: FeedServer) -> None:
    """request() does not interpret the reply: the server's error for an unknown method comes back."""
    reply = await client.request({"method": "nope"}, timeout=5)
    assert reply["error"]["code"] == -32601


async def test_request_times_out_with_a_timeout_error(client: JsonClient, server: FeedServer) -> None:
    """No reply within timeout: an error that is both ours and a builtin TimeoutError; nothing left behind."""
    server.route("slow", lambda params: None, delay=NEVER)
    await client.wait_connected(timeout=5)
    with pytest.raises(TimeoutError) as excinfo:
        await client.request({"method": "slow"}, timeout=0.05)
    assert isinstance(excinfo.value, Timeout) and isinstance(excinfo.value, AsyncWsStreamError)
    assert "no reply" in str(excinfo.value)
    assert client.stats()["pending"] == 0


# -- loss and recycle ----------------------------------------------------------------------


async def test_request_in_flight_fails_with_connection_lost_at_once(
    client: JsonClient, server: FeedServer
) -> None:
    """A request whose connection drops fails with ConnectionLost, not at its (absent) timeout."""
    server.route("slow", lambda params: None, delay=NEVER)
    pending = asyncio.create_task(client.request({"method": "slow"}, timeout=None))
    await server.wait_received(1)
    await server.drop()
    with pytest.raises(ConnectionLost):
        await pending
    assert client.stats()["pending"] == 0


async def test_request_made_while_disconnected_goes_out_on_the_next_connection(server: FeedServer) -> None:
    """A request made with no connection waits, then goes out on the next connection and gets its reply."""
    client = AttemptClient(server.url, backoff_initial=0.01, backoff_max=0.05)
    try:
        await client.wait_connected(timeout=5)
        await server.stop()
        await client.wait_attempts(2)  # the first connection is gone: the client retries
        assert client.present_ws is None
        pending = asyncio.create_task(client.request({"method": "SUBSCRIBE"}, timeout=10))
        await server.start()
        assert (await pending)["result"] is None
    finally:
        await client.exit()
    assert [number for number, _ in sent(server, "SUBSCRIBE")] == [2]


async def test_recycle_finishes_answered_requests_and_fails_unanswered_ones(
    client: JsonClient, server: FeedServer
) -> None:
    """During a recycle, a reply on the old connection still arrives; a request left unanswered fails."""
    release = asyncio.Event()

    async def held(params: Any) -> str:
        await release.wait()
        return "answered"

    server.route("never", lambda params: None, delay=NEVER)
    server.route("held", held)
    unanswered = asyncio.create_task(client.request({"method": "never"}, timeout=None))
    await server.wait_received(1)
    answered = asyncio.create_task(client.request({"method": "held"}, timeout=None))
    await server.wait_received(2)
    # The server is busy with "held", so it reads the old connection's close frame
    # only after it answered: that reply travels on a connection being retired.
    client.recycle_now.set()
    await server.wait_connections(2)
    release.set()
    assert (await answered)["result"] == "answered"
    with pytest.raises(ConnectionLost):
        await unanswered
    assert [number for number, _ in sent(server, "held")] == [1]
    reply = await client.request({"method": "SUBSCRIBE"}, timeout=5)
    assert reply["result"] is None and sent(server, "SUBSCRIBE")[-1][0] == 2


async def test_a_plain_expect_survives_a_reconnect(client: JsonClient, server: FeedServer) -> None:
    """An expect is not tied to a connection: a message on the next connection resolves it."""
    await client.wait_connected(timeout=5)
    waiting = client.expect({"type": "ack"}, timeout=10)
    await server.drop()
    await server.wait_open(1)
    await server.broadcast({"type": "ack"})
    assert await waiting == {"type": "ack"}
    assert client.stats()["reconnects"] == 1


# -- conditions ----------------------------------------------------------------------------


async def test_expect_registers_at_the_call(client: JsonClient, server: FeedServer) -> None:
    """A message dispatched after expect() but before the await resolves it."""
    await client.wait_connected(timeout=5)
    ack = client.expect({"type": "ack"}, timeout=5)
    await server.broadcast({"type": "ack", "n": 1})
    await settle(client, server)
    assert ack.done()
    assert await ack == {"type": "ack", "n": 1}


async def test_expect_ignores_messages_dispatched_before_it(client: JsonClient, server: FeedServer) -> None:
    """Only later messages count: one dispatched before the call does not resolve it."""
    await client.wait_connected(timeout=5)
    await server.broadcast({"type": "ack", "n": 1})
    await settle(client, server)
    ack = client.expect({"type": "ack"}, timeout=5)
    await server.broadcast({"type": "ack", "n": 2})
    assert (await ack)["n"] == 2


@pytest.mark.parametrize(
    "until",
    [
        {"type": "fill", "qty": 2},
        lambda msg: msg.get("qty") == 2,
        [{"type": "nothing"}, lambda msg: msg.get("qty") == 2],
        {("order", "status"): "FILLED"},
        {"qty": lambda v: v > 1},
    ],
    ids=["dict", "callable", "list", "path", "predicate"],
)
async def test_condition_forms(client: JsonClient, server: FeedServer, until: Any) -> None:
    """A condition may be a dict, a callable, a list of them, a path key or a predicate value."""
    await client.wait_connected(timeout=5)
    done = client.expect(until, timeout=5)
    await server.broadcast({"type": "fill", "qty": 1, "order": {"status": "PARTIAL"}})
    await server.broadcast({"type": "fill", "qty": 2, "order": {"status": "FILLED"}})
    assert (await done)["qty"] == 2


async def test_alarm_wins_over_success_on_the_same_message(client: JsonClient, server: FeedServer) -> None:
    """A message matching both until and an alarm raises Alarm carrying the message and the condition."""
    rejected = {"status": "REJECTED"}
    waiting = client.wait_for({"order": 1}, alarms=[rejected], timeout=5)
    await client.wait_connected(timeout=5)
    await server.broadcast({"order": 1, "status": "REJECTED"})
    with pytest.raises(Alarm) as excinfo:
        await waiting
    assert excinfo.value.message == {"order": 1, "status": "REJECTED"}
    assert excinfo.value.condition is rejected


async def test_an_earlier_alarm_wins(client: JsonClient, server: FeedServer) -> None:
    """An alarm arriving before the success ends the wait; the later success changes nothing."""
    await client.wait_connected(timeout=5)
    done = client.expect({"status": "DONE"}, alarms=lambda msg: msg.get("status") == "FAILED", timeout=5)
    await server.broadcast({"status": "FAILED"})
    await server.broadcast({"status": "DONE"})
    with pytest.raises(Alarm) as excinfo:
        await done
    assert excinfo.value.message == {"status": "FAILED"}


async def test_expect_times_out_with_a_timeout_error(client: JsonClient) -> None:
    """Nothing matching within timeout: Timeout, also a builtin TimeoutError; the wait is unregistered."""
    with pytest.raises(TimeoutError) as excinfo:
        await client.wait_for({"type": "never"}, timeout=0.05)
    assert isinstance(excinfo.value, Timeout)
    assert client.stats()["pending"] == 0


async def test_cancelling_the_task_awaiting_expect_unregisters_at_once(client: JsonClient) -> None:
    """Task.cancel() on a task awaiting an expectation removes it before cancel() returns."""
    waiting = client.expect({"type": "ack"})
    awaiting = asyncio.Event()

    async def wait() -> Any:
        awaiting.set()
        return await waiting

    task = asyncio.create_task(wait())
    await awaiting.wait()
    assert client.stats()["pending"] == 1
    task.cancel()
    assert client.stats()["pending"] == 0
    assert waiting.done()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_cancelling_wait_for_unregisters_at_once(client: JsonClient) -> None:
    """Cancelling a task in wait_for() removes its expectation before cancel() returns."""
    task = asyncio.create_task(client.wait_for({"type": "ack"}))
    await asyncio.sleep(0)  # one loop step: the task registers and awaits
    assert client.stats()["pending"] == 1
    task.cancel()
    assert client.stats()["pending"] == 0
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_expectation_cancel_unregisters_at_once(client: JsonClient, server: FeedServer) -> None:
    """Expectation.cancel() unregisters at once; a later matching message no longer reaches it."""
    waiting = client.expect({"type": "ack"})
    waiting.cancel()
    assert client.stats()["pending"] == 0
    await client.wait_connected(timeout=5)
    await server.broadcast({"type": "ack"})
    await settle(client, server)
    with pytest.raises(asyncio.CancelledError):
        await waiting


async def test_cancelling_a_request_unregisters_at_once(client: JsonClient, server: FeedServer) -> None:
    """Cancelling a task waiting in request() removes its expectation before cancel() returns."""
    server.route("slow", lambda params: None, delay=NEVER)
    task = asyncio.create_task(client.request({"method": "slow"}, timeout=None))
    await server.wait_received(1)
    assert client.stats()["pending"] == 1
    task.cancel()
    assert client.stats()["pending"] == 0
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_exit_fails_pending_calls_and_refuses_new_ones(client: JsonClient, server: FeedServer) -> None:
    """After exit(), pending expect/request fail with ClientClosed, and new calls raise it."""
    server.route("slow", lambda params: None, delay=NEVER)
    waiting = client.expect({"type": "ack"})
    requesting = asyncio.create_task(client.request({"method": "slow"}, timeout=None))
    await server.wait_received(1)
    await client.exit()
    with pytest.raises(ClientClosed):
        await waiting
    with pytest.raises(ClientClosed):
        await requesting
    with pytest.raises(ClientClosed):
        client.expect({"type": "ack"})
    with pytest.raises(ClientClosed):
        await client.request({"method": "SUBSCRIBE"})
    with pytest.raises(ClientClosed):
        await client.poll({"method": "status"}, {"done": True})
    assert client.stats()["pending"] == 0


async def test_expect_after_the_client_gave_up_fails_at_once(server: FeedServer) -> None:
    """Once retries ran out, a new expect fails with RetriesExhausted instead of waiting forever."""
    server.refuse_next(10)
    client = JsonClient(server.url, max_retries=0)
    try:
        with pytest.raises(RetriesExhausted):
            await client.wait_connected(timeout=5)
        with pytest.raises(RetriesExhausted):
            await client.wait_for({"type": "ack"}, timeout=5)
    finally:
        await client.exit()


async def test_a_raising_alarm_predicate_counts_as_no_match(client: JsonClient, server: FeedServer) -> None:
    """An alarm predicate that raises is counted and ignored; the client and its streams go on."""
    stream = client.stream_filter()
    await client.wait_connected(timeout=5)
    done = client.expect({"type": "ack"}, alarms=[{"type": lambda v: 1 / 0}], timeout=5)
    await server.broadcast({"type": "ack"})
    assert await done == {"type": "ack"}
    await server.broadcast({"after": True})
    assert [await anext(stream), await anext(stream)] == [{"type": "ack"}, {"after": True}]
    assert client.stats()["predicate_errors"] >= 1
    assert client.stats()["connects"] == 1


@pytest.mark.parametrize(
    ("call", "error", "words"),
    [
        (lambda c: c.expect(None), ValueError, "expect: until"),
        (lambda c: c.expect("ack"), TypeError, "expect: until"),
        (lambda c: c.expect({"a": 1}, alarms=["x"]), TypeError, "expect: alarms[0]"),
        (lambda c: c.expect({"a": 1}, timeout=-1), ValueError, "timeout"),
    ],
    ids=["none", "str", "alarm-item", "timeout"],
)
async def test_bad_conditions_name_the_argument(client: JsonClient, call: Any, error: type, words: str) -> None:
    """A malformed condition or timeout fails at the call, naming the argument."""
    with pytest.raises(error, match=words.replace("[", r"\[").replace("]", r"\]")):
        call(client)
    assert client.stats()["pending"] == 0


# -- polling -------------------------------------------------------------------------------


async def test_poll_returns_the_first_matching_reply(client: JsonClient, server: FeedServer) -> None:
    """poll() asks again until a reply matches, each try with a fresh id, and returns that reply."""
    server.route("status", counting([{"state": "running"}, {"state": "running"}, {"state": "done"}]))
    reply = await client.poll({"method": "status"}, {("result", "state"): "done"}, interval=0.01)
    assert reply["result"] == {"state": "done"}
    ids = [wire["id"] for _, wire in sent(server, "status")]
    assert len(ids) == len(set(ids)) == 3


async def test_poll_replaces_an_id_in_the_message(client: JsonClient, server: FeedServer) -> None:
    """Each try gets a fresh id even if msg has one, and the caller's dict is untouched."""
    server.route("status", counting(["running", "done"]))
    msg = {"method": "status", "id": 99}
    await client.poll(msg, {"result": "done"}, interval=0.01)
    assert msg == {"method": "status", "id": 99}
    ids = [wire["id"] for _, wire in sent(server, "status")]
    assert 99 not in ids and len(set(ids)) == 2


async def test_poll_raises_alarm_on_a_matching_reply(client: JsonClient, server: FeedServer) -> None:
    """A reply matching an alarm ends the poll with Alarm carrying the reply and the condition."""
    server.route("status", counting(["running", "failed", "done"]))
    failed = {"result": "failed"}
    with pytest.raises(Alarm) as excinfo:
        await client.poll({"method": "status"}, {"result": "done"}, alarms=[failed], interval=0.01)
    assert excinfo.value.message["result"] == "failed"
    assert excinfo.value.condition is failed
    assert len(sent(server, "status")) == 2


async def test_poll_timeouts_count_as_tries_and_chain_the_last(client: JsonClient, server: FeedServer) -> None:
    """Every try timing out uses up max_retries; RetriesExhausted chains the last Timeout."""
    server.route("status", lambda params: "done", delay=NEVER)
    with pytest.raises(RetriesExhausted) as excinfo:
        await client.poll({"method": "status"}, {"result": "done"}, interval=0.05, max_retries=3)
    assert isinstance(excinfo.value.__cause__, Timeout)
    await server.wait_received(3)
    assert len(sent(server, "status")) == 3
    assert client.stats()["pending"] == 0


async def test_poll_gives_up_after_max_retries_replies(client: JsonClient, server: FeedServer) -> None:
    """Replies that never match: exactly max_retries requests, then RetriesExhausted with no cause."""
    server.route("status", lambda params: "running")
    with pytest.raises(RetriesExhausted, match="4 tries") as excinfo:
        await client.poll({"method": "status"}, {"result": "done"}, interval=0.01, max_retries=4)
    assert excinfo.value.__cause__ is None
    assert len(sent(server, "status")) == 4


async def test_poll_goes_on_across_a_reconnect(client: JsonClient, server: FeedServer) -> None:
    """A try whose connection drops counts as a try, and polling goes on over the next connection."""
    held = asyncio.Event()
    release = asyncio.Event()
    calls = 0

    async def status(params: Any) -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            held.set()
            await release.wait()  # answered only after its connection is gone
            return "running"
        return "done"

    server.route("status", status)
    polling = asyncio.create_task(client.poll({"method": "status"}, {"result": "done"}, interval=0.05))
    await held.wait()
    release.set()
    await server.drop()
    assert (await polling)["result"] == "done"
    assert [number for number, _ in sent(server, "status")] == [1, 2]
