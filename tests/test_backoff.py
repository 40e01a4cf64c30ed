"""The pure retry policy: delay formula, jitter bounds, reset, fatal classification, Retry-After."""

from __future__ import annotations

import itertools
import ssl
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from websockets.datastructures import Headers
from websockets.exceptions import (
    ConnectionClosedError,
    ConnectionClosedOK,
    InvalidHeaderValue,
    InvalidStatus,
    InvalidURI,
)
from websockets.frames import Close
from websockets.http11 import Response

from async_ws_stream import ConnectionRejected, RetriesExhausted
from async_ws_stream._backoff import (
    DEFAULT_BACKOFF_FACTOR,
    DEFAULT_BACKOFF_INITIAL,
    DEFAULT_BACKOFF_JITTER,
    DEFAULT_BACKOFF_MAX,
    MAX_RETRY_AFTER,
    GiveUp,
    Retry,
    RetryPolicy,
    backoff_delays,
    fatal_error,
    retry_after,
)

NOW = datetime(2024, 5, 1, 12, 0, 0, tzinfo=timezone.utc)


def refused(status: int, **headers: str) -> InvalidStatus:
    """What websockets raises for a handshake answered with ``status``."""
    return InvalidStatus(Response(status, "refused", Headers(headers), b""))


def closed(code: int, reason: str = "") -> ConnectionClosedError:
    """What recv() raises after the server closed with ``code``."""
    return ConnectionClosedError(Close(code, reason), Close(code, reason), True)


def first(n: int, delays: object) -> list[float]:
    return list(itertools.islice(delays, n))  # type: ignore[call-overload]


# -- the delay formula ----------------------------------------------------------------------


def test_first_retry_is_immediate() -> None:
    """The first delay is 0 whatever the options."""
    assert next(backoff_delays(60, 3, 600, 0.5)) == 0.0


def test_delays_follow_the_documented_formula_without_jitter() -> None:
    """Retry n >= 2 waits min(max, initial * factor ** (n - 2)) with jitter 0."""
    assert first(7, backoff_delays(0.5, 2.0, 5.0, 0.0)) == [0.0, 0.5, 1.0, 2.0, 4.0, 5.0, 5.0]


def test_jitter_scales_each_delay_by_one_minus_jitter_times_u() -> None:
    """delay = base * (1 - jitter * U) with U the injected random number."""
    u = iter([0.0, 0.5, 0.999])
    delays = first(4, backoff_delays(1.0, 2.0, 100.0, 0.5, random=lambda: next(u)))
    assert delays == [0.0, 1.0, 2.0 * 0.75, pytest.approx(4.0 * (1 - 0.5 * 0.999))]


def test_defaults_are_the_documented_ones() -> None:
    """The defaults the README lists: 0.5, 2.0, 30.0, 0.5."""
    assert (DEFAULT_BACKOFF_INITIAL, DEFAULT_BACKOFF_FACTOR, DEFAULT_BACKOFF_MAX, DEFAULT_BACKOFF_JITTER) == (
        0.5, 2.0, 30.0, 0.5,
    )


def test_initial_zero_turns_backoff_off() -> None:
    """initial=0 gives zero delays forever (the testing switch)."""
    assert first(50, backoff_delays(0.0, 2.0, 30.0, 0.5)) == [0.0] * 50


def test_factor_one_gives_a_constant_delay() -> None:
    """factor=1 retries at a fixed interval after the immediate first retry."""
    assert first(5, backoff_delays(0.3, 1.0, 30.0, 0.0)) == [0.0, 0.3, 0.3, 0.3, 0.3]


def test_a_fresh_generator_starts_over() -> None:
    """Reset is a new generator: it starts again at the immediate retry and the initial delay."""
    worn = backoff_delays(0.1, 2.0, 10.0, 0.0)
    first(20, worn)
    assert next(worn) == 10.0
    assert first(3, backoff_delays(0.1, 2.0, 10.0, 0.0)) == [0.0, 0.1, 0.2]


def test_delays_never_overflow_after_many_retries() -> None:
    """Thousands of retries stay at the maximum instead of overflowing to inf or raising."""
    delays = backoff_delays(0.5, 10.0, 30.0, 0.0)
    assert first(5000, delays)[-1] == 30.0


@given(
    initial=st.floats(0, 100),
    factor=st.floats(1, 10),
    maximum=st.floats(0, 1000),
    jitter=st.floats(0, 1),
    us=st.lists(st.floats(0, 1, exclude_max=True), min_size=1, max_size=30),
)
def test_jitter_only_shortens_and_max_is_a_true_bound(
    initial: float, factor: float, maximum: float, jitter: float, us: list[float]
) -> None:
    """Every delay lies in [base * (1 - jitter), base] with base <= maximum, and bases never shrink."""
    u = iter(us)
    delays = first(len(us) + 1, backoff_delays(initial, factor, maximum, jitter, random=lambda: next(u)))
    assert delays[0] == 0.0
    base = initial
    previous_base = 0.0
    for delay in delays[1:]:
        bounded = min(base, maximum)
        assert bounded * (1 - jitter) - 1e-9 <= delay <= bounded + 1e-9
        assert delay <= maximum + 1e-9
        assert bounded >= previous_base
        previous_base = bounded
        base = min(base * factor, maximum)


# -- fatal or retryable ---------------------------------------------------------------------


@pytest.mark.parametrize("status", [401, 403])
def test_auth_refusals_are_fatal_and_name_the_status(status: int) -> None:
    """HTTP 401/403 end the client with ConnectionRejected carrying the status."""
    error = fatal_error(refused(status))
    assert isinstance(error, ConnectionRejected)
    assert error.status == status and error.close_code is None
    assert f"HTTP {status}" in str(error)


@pytest.mark.parametrize("status", [400, 404, 429, 500, 502, 503, 504])
def test_other_statuses_are_retried(status: int) -> None:
    """Every other refused handshake (4xx, 429, 5xx) is retried."""
    assert fatal_error(refused(status)) is None


@pytest.mark.parametrize("code", [1008, 4000, 4001, 4999])
def test_policy_and_application_close_codes_are_fatal(code: int) -> None:
    """Close 1008 and 4000-4999 end the client with ConnectionRejected carrying the code and reason."""
    error = fatal_error(closed(code, "banned"))
    assert isinstance(error, ConnectionRejected)
    assert error.close_code == code and error.status is None
    assert str(code) in str(error) and "banned" in str(error)


@pytest.mark.parametrize("code", [1000, 1001, 1006, 1009, 1011, 1012, 1013, 3000, 3999])
def test_other_close_codes_are_retried(code: int) -> None:
    """Normal, going-away, internal-error, restart, try-later and 3xxx closes are retried."""
    assert fatal_error(closed(code)) is None


def test_close_without_a_received_frame_is_retried() -> None:
    """An abrupt drop (no close frame received) is retried."""
    assert fatal_error(ConnectionClosedError(None, None)) is None


def test_clean_close_is_classified_by_its_code_too() -> None:
    """A ConnectionClosedOK carrying 4001 is as fatal as an error close."""
    assert fatal_error(ConnectionClosedOK(Close(4001, ""), Close(4001, ""), True)) is not None


@pytest.mark.parametrize("exc", [OSError("unreachable"), TimeoutError(), ConnectionResetError(), ValueError("x")])
def test_network_and_other_errors_are_retried(exc: BaseException) -> None:
    """Anything that is not a refused handshake or a close frame is retried."""
    assert fatal_error(exc) is None


# -- Retry-After ----------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "seconds"), [("0", 0.0), ("7", 7.0), (" 12 ", 12.0), ("0030", 30.0)])
def test_retry_after_delay_seconds(value: str, seconds: float) -> None:
    """The delay-seconds form is read as seconds."""
    assert retry_after(refused(429, **{"Retry-After": value})) == seconds


def test_retry_after_http_date_in_the_future() -> None:
    """An HTTP-date is read relative to now."""
    header = "Wed, 01 May 2024 12:00:42 GMT"
    assert retry_after(refused(503, **{"Retry-After": header}), now=NOW) == 42.0


def test_retry_after_http_date_in_the_past_means_now() -> None:
    """A date already past asks for no wait, never a negative one."""
    header = "Wed, 01 May 2024 11:00:00 GMT"
    assert retry_after(refused(503, **{"Retry-After": header}), now=NOW) == 0.0


def test_retry_after_date_without_a_zone_is_utc() -> None:
    """A '-0000' date (parsed without a zone) counts as UTC instead of raising TypeError."""
    header = "Wed, 01 May 2024 12:00:05 -0000"
    assert retry_after(refused(503, **{"Retry-After": header}), now=NOW) == 5.0


@pytest.mark.parametrize("value", ["9" * 400, "86400000"])
def test_retry_after_is_capped(value: str) -> None:
    """An absurd Retry-After (even one float() reads as inf) is capped at MAX_RETRY_AFTER."""
    assert retry_after(refused(429, **{"Retry-After": value})) == MAX_RETRY_AFTER


def test_retry_after_far_future_date_is_capped() -> None:
    """A date years ahead is capped too."""
    header = (NOW + timedelta(days=4000)).strftime("%a, %d %b %Y %H:%M:%S GMT")
    assert retry_after(refused(503, **{"Retry-After": header}), now=NOW) == MAX_RETRY_AFTER


@pytest.mark.parametrize("value", ["", "soon", "1.5", "-3", "+3", "\xb2", "1e3", "Wed, 99 Foo 2024", "0x10"])
def test_malformed_retry_after_is_ignored(value: str) -> None:
    """A value in neither RFC form gives None instead of raising (the client then just backs off)."""
    assert retry_after(refused(429, **{"Retry-After": value})) is None


def test_retry_after_only_applies_to_refused_handshakes() -> None:
    """No header, or not a refused handshake: None."""
    assert retry_after(refused(503)) is None
    assert retry_after(OSError("x")) is None
    assert retry_after(closed(1013)) is None


@given(st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"), max_size=40))
def test_retry_after_never_raises_on_any_header_value(value: str) -> None:
    """Whatever a server puts in the header, the result is None or seconds in [0, MAX_RETRY_AFTER]."""
    try:
        exc = refused(429, **{"Retry-After": value})
    except InvalidHeaderValue:
        assume(False)  # websockets would have refused this response before we saw it
    result = retry_after(exc, now=NOW)
    assert result is None or 0.0 <= result <= MAX_RETRY_AFTER


# -- the retry policy: one object for reconnects and recycles, no loop needed ------------------



def policy(**options: object) -> RetryPolicy:
    """A policy without jitter, so that its delays are exact."""
    return RetryPolicy(**{"initial": 1.0, "factor": 2.0, "maximum": 8.0, "jitter": 0.0, **options})  # type: ignore[arg-type]


def test_policy_counts_failures_and_spaces_them_by_the_formula() -> None:
    """Consecutive failures are numbered 1, 2, 3 ... and wait 0, initial, initial*factor, ..."""
    p = policy()
    verdicts = [p.failed(OSError("refused")) for _ in range(6)]
    assert all(isinstance(v, Retry) for v in verdicts)
    assert [v.attempt for v in verdicts] == [1, 2, 3, 4, 5, 6]  # type: ignore[union-attr]
    assert [v.delay for v in verdicts] == [0.0, 1.0, 2.0, 4.0, 8.0, 8.0]  # type: ignore[union-attr]


def test_policy_gives_up_after_max_retries_naming_the_last_failure() -> None:
    """With max_retries=2 the third failure is a GiveUp(RetriesExhausted) chaining it."""
    p = policy(max_retries=2)
    assert isinstance(p.failed(OSError("one")), Retry)
    assert isinstance(p.failed(OSError("two")), Retry)
    last = OSError("three")
    verdict = p.failed(last)
    assert isinstance(verdict, GiveUp)
    assert isinstance(verdict.error, RetriesExhausted)
    assert "three" in str(verdict.error) and verdict.error.__cause__ is last


def test_fatal_failures_give_up_at_once_whatever_the_count() -> None:
    """A 401 is a GiveUp(ConnectionRejected) on the first failure, chaining the refusal."""
    refusal = refused(401)
    verdict = policy().failed(refusal)
    assert isinstance(verdict, GiveUp)
    assert isinstance(verdict.error, ConnectionRejected) and verdict.error.__cause__ is refusal


def test_policy_uses_the_given_fatal_verdict() -> None:
    """is_fatal decides: a policy told that nothing is fatal retries a 401."""
    assert isinstance(policy(is_fatal=lambda exc: None).failed(refused(401)), Retry)


def test_retry_after_lengthens_a_delay_but_never_shortens_it() -> None:
    """A Retry-After above the backoff delay wins; below it, the delay stands."""
    p = policy()
    assert p.failed(refused(503, **{"Retry-After": "30"})).delay == 30.0  # type: ignore[union-attr]
    p.failed(OSError())
    assert p.failed(refused(503, **{"Retry-After": "0"})).delay == 2.0  # type: ignore[union-attr]


def test_a_stable_connection_resets_the_count_and_the_delays() -> None:
    """A connection that lasted stable_after starts the count over: a later failure is retry 1, at once."""
    p = policy(max_retries=2, stable_after=5.0)
    p.failed(OSError())
    p.failed(OSError())
    assert p.lasted(5.0) is True
    verdict = p.failed(OSError())
    assert isinstance(verdict, Retry) and (verdict.attempt, verdict.delay) == (1, 0.0)


def test_a_short_lived_connection_counts_for_nothing() -> None:
    """A connection that died before stable_after leaves the count as it was (accept-then-drop)."""
    p = policy(max_retries=2, stable_after=5.0)
    p.failed(OSError())
    p.failed(OSError())
    assert p.lasted(4.9) is False
    assert isinstance(p.failed(OSError()), GiveUp)


def test_a_recycle_on_time_resets_the_count() -> None:
    """The retry count does not survive a recycle of a connection that was up stable_after."""
    p = policy(max_retries=2, stable_after=5.0)
    p.failed(OSError())
    p.failed(OSError())
    assert p.recycle_delay(6.0) is None  # on time: the successor opens at once
    assert isinstance(p.failed(OSError()), Retry)  # one drop after the recycle is retry 1, not a give-up


def test_premature_recycles_are_paced_by_the_delays_without_spending_retries() -> None:
    """Recycles asked for too soon wait 0, initial, initial*factor, ...; max_retries is not spent."""
    p = policy(max_retries=1, stable_after=5.0)
    assert [p.recycle_delay(0.0) for _ in range(5)] == [0.0, 1.0, 2.0, 4.0, 8.0]
    assert p.attempts == 0
    assert isinstance(p.failed(OSError()), Retry)


def test_policy_arguments_follow_the_one_rule() -> None:
    """A wrong type is a TypeError and an out-of-range value a ValueError, both naming the option."""
    with pytest.raises(TypeError, match=r"Feed: max_retries must be None or an int >= 0, got str 'x'"):
        RetryPolicy(max_retries="x", where="Feed")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"Feed: max_retries must be >= 0, got -1"):
        RetryPolicy(max_retries=-1, where="Feed")
    with pytest.raises(ValueError, match=r"backoff_jitter must be <= 1, got 1.5"):
        RetryPolicy(jitter=1.5)
    with pytest.raises(TypeError, match=r"backoff_initial must be a number, got bool True"):
        RetryPolicy(initial=True)


@pytest.mark.parametrize("exc", [
    InvalidURI("http://x", "not a websocket URI"),
    ssl.SSLCertVerificationError("certificate verify failed"),
    TypeError("asyncio.wait() got a coroutine"),
    ImportError("no module named picows"),
])
def test_errors_retrying_cannot_fix_are_fatal(exc: BaseException) -> None:
    """An invalid URI, a failed certificate check and programming errors end the client at once."""
    rejected = fatal_error(exc)
    assert isinstance(rejected, ConnectionRejected)
    assert type(exc).__name__ in str(rejected)


def test_giving_up_after_one_retry_says_retry() -> None:
    """The message reads "after 1 retry", not "1 retries"."""
    policy = RetryPolicy(max_retries=1)
    assert isinstance(policy.failed(OSError("refused")), Retry)
    verdict = policy.failed(OSError("refused"))
    assert isinstance(verdict, GiveUp)
    assert "gave up after 1 retry;" in str(verdict.error)


def test_fatal_close_codes_are_the_callers() -> None:
    """fatal_error(close_codes=...) decides by the set it is given; the default keeps 1008 and 4000-4999."""
    assert fatal_error(closed(4409)) is not None
    assert fatal_error(closed(4409), close_codes={4403}) is None
    assert fatal_error(closed(4403), close_codes={4403}) is not None
    assert fatal_error(closed(1008), close_codes=frozenset()) is None
