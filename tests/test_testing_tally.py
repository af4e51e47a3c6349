"""The counting helpers of exactly-once runs read what they claim to read."""

from __future__ import annotations

from extmsg.testing.tally import first_seen, metric_total, out_of_order

EXPOSITION = """\
# HELP extmsg_in_doubt_total Attempts that looked before sending again.
# TYPE extmsg_in_doubt_total counter
extmsg_in_doubt_total{channel="wa",direction="to_messenger",outcome="unknown"} 3.0
extmsg_in_doubt_total{channel="wa",direction="to_unblu",outcome="found"} 2.0
extmsg_in_doubt_total{channel="sms",direction="to_messenger",outcome="unknown"} 5.0
# HELP extmsg_in_doubt_created Created.
extmsg_in_doubt_created{channel="wa",direction="to_messenger",outcome="unknown"} 1.7e9
extmsg_fenced_total 4.0
"""


def test_metric_total_sums_the_samples_that_carry_the_labels() -> None:
    assert metric_total(EXPOSITION, "extmsg_in_doubt_total") == 10.0
    assert metric_total(EXPOSITION, "extmsg_fenced_total") == 4.0
    wa_unknown = {"channel": "wa", "direction": "to_messenger", "outcome": "unknown"}
    assert metric_total(EXPOSITION, "extmsg_in_doubt_total", wa_unknown) == 3.0
    assert metric_total(EXPOSITION, "extmsg_in_doubt_total", {"channel": "wa"}) == 5.0
    assert metric_total(EXPOSITION, "extmsg_in_doubt_total", {"channel": "email"}) == 0.0
    assert metric_total(EXPOSITION, "extmsg_fenced_total", {"channel": "wa"}) == 0.0


def test_first_seen_keeps_first_appearances_in_order() -> None:
    assert first_seen(["a", "b", "a", "c", "b"]) == ["a", "b", "c"]
    assert first_seen([]) == []


def test_out_of_order_is_judged_on_what_arrived() -> None:
    wanted = ["m0", "m1", "m2", "m3"]
    assert not out_of_order(["m0", "m1", "m2", "m3"], wanted)
    # Missing messages are lost (or late), not out of order.
    assert not out_of_order(["m0", "m1"], wanted)
    assert not out_of_order([], wanted)
    assert not out_of_order(["m0", "m2", "m3"], wanted)
    # A double where it first appeared, and something never wanted, change nothing.
    assert not out_of_order(["m0", "m1", "m0", "other", "m2"], wanted)
    # A later message ahead of an earlier one is.
    assert out_of_order(["m1", "m0"], wanted)
    assert out_of_order(["m0", "m2", "m1", "m3"], wanted)
