"""The retry policy: capped exponential backoff with full jitter, Retry-After as a floor, and
the give-up rule; and the masking of log text."""

from __future__ import annotations

import random

import pytest

from extmsg.config import EngineConfig
from extmsg.engine import RetryPolicy
from extmsg.logsafe import mask
from extmsg.models import ErrorVerdict

RETRYABLE = ErrorVerdict(retryable=True, reason="503")


def policy(**kw: float) -> RetryPolicy:
    settings = {"max_attempts": 10, "backoff_initial": 1.0, "backoff_max": 60.0}
    settings.update(kw)
    return RetryPolicy(
        max_attempts=int(settings["max_attempts"]),
        backoff_initial=settings["backoff_initial"],
        backoff_max=settings["backoff_max"],
        rng=random.Random(3),
    )


def test_the_cap_doubles_up_to_the_maximum() -> None:
    p = policy()
    assert [p.cap(n) for n in range(1, 9)] == [1, 2, 4, 8, 16, 32, 60, 60]
    assert p.cap(10_000) == 60  # no overflow on absurd attempt numbers


def test_full_jitter_spreads_delays_over_the_whole_range() -> None:
    p = policy()
    delays = [p.backoff(4) for _ in range(2000)]
    assert all(0 <= d <= 8 for d in delays)
    assert min(delays) < 0.5
    assert max(delays) > 7.5
    assert 3.5 < sum(delays) / len(delays) < 4.5


def test_retry_after_is_never_shortened() -> None:
    p = policy(backoff_max=2.0)
    for attempt in range(1, 9):
        decision = p.decide(attempt, ErrorVerdict(retryable=True, reason="429", retry_after=30))
        assert decision.retry
        assert decision.delay >= 30


def test_permanent_errors_give_up_at_once() -> None:
    decision = policy().decide(1, ErrorVerdict(retryable=False, reason="opted out"))
    assert (decision.retry, decision.why) == (False, "permanent error")


def test_the_last_attempt_gives_up() -> None:
    p = policy(max_attempts=3)
    assert p.decide(2, RETRYABLE).retry
    decision = p.decide(3, RETRYABLE)
    assert (decision.retry, decision.why) == (False, "gave up after 3 attempts")


def test_from_config_and_validation() -> None:
    p = RetryPolicy.from_config(EngineConfig(max_attempts=4, backoff_initial=0.5, backoff_max=5.0))
    assert (p.max_attempts, p.backoff_initial, p.backoff_max) == (4, 0.5, 5.0)
    with pytest.raises(ValueError, match="max_attempts"):
        RetryPolicy(max_attempts=0, backoff_initial=1, backoff_max=1)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("sms:+41791234567", "sms:+*********67"),
        ("to +41 79 123 45 67 failed", "to +** ** *** ** 67 failed"),
        ("mail for anna.meier@example.com", "mail for a***@example.com"),
        ("status 503 after 12 s", "status 503 after 12 s"),
        (None, ""),
    ],
)
def test_mask(text: str | None, expected: str) -> None:
    assert mask(text) == expected
