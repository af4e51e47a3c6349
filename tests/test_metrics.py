"""Calls to providers as the core counts them around the plugin hooks."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from extmsg.errors import PermanentError, RetryableError
from extmsg.metrics import Metrics
from extmsg.sendguard import StaleHold


def calls(metrics: Metrics, outcome: str) -> float:
    value = metrics.registry.get_sample_value(
        "extmsg_remote_calls_total", {"remote": "sms_twilio", "call": "send", "outcome": outcome}
    )
    return value or 0.0


@pytest.mark.parametrize(
    ("error", "outcome"),
    [
        (None, "ok"),
        (RetryableError("Twilio answered 503", status=503), "retryable"),
        (PermanentError("invalid number", status=400), "permanent"),
        (PermanentError("no such message", status=404), "not_found"),
        (KeyError("sid"), "error"),  # says nothing: extmsg_classify_error decides later
    ],
)
def test_a_call_is_counted_by_what_it_raised(error: Exception | None, outcome: str) -> None:
    metrics = Metrics()
    expect = pytest.raises(type(error)) if error is not None else contextlib.nullcontext()
    with expect, metrics.timed_call("sms_twilio", "send"):
        if error is not None:
            raise error
    assert calls(metrics, outcome) == 1
    timed = metrics.registry.get_sample_value(
        "extmsg_remote_call_seconds_count", {"remote": "sms_twilio", "call": "send"}
    )
    assert timed == 1


def test_a_call_stopped_here_is_not_counted() -> None:
    metrics = Metrics()
    with pytest.raises(asyncio.CancelledError), metrics.timed_call("sms_twilio", "send"):
        raise asyncio.CancelledError
    assert metrics.registry.get_sample_value(
        "extmsg_remote_call_seconds_count", {"remote": "sms_twilio", "call": "send"}
    ) in (None, 0.0)


def test_a_send_refused_before_it_was_written_is_not_counted() -> None:
    metrics = Metrics()
    refused = RetryableError("could not send")
    refused.__cause__ = StaleHold(job_id=1, fence=1, age=9.0, bound=5.0)
    with pytest.raises(RetryableError), metrics.timed_call("sms_twilio", "send"):
        raise refused
    assert calls(metrics, "retryable") == 0
    with pytest.raises(KeyError), metrics.timed_call("sms_twilio", "send"):
        raise KeyError("sid")
    assert calls(metrics, "error") == 1
