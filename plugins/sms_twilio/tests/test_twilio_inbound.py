"""Inbound webhooks and status callbacks, table-driven from recorded Twilio payloads."""

from __future__ import annotations

from typing import Any

import msgspec
from twilio_testkit import build_request, case_params, deliver, make_channel

from extmsg.plugins import Hooks
from extmsg_sms_twilio.plugin import TWIML_EMPTY


async def _check(hooks: Hooks, case: dict[str, Any]) -> None:
    channel = make_channel(case.get("channel"))
    expect = case["expect"]
    outcomes = []
    for attempt in range(case.get("repeat", 1)):
        request = build_request(case)
        headers = dict(request.headers)
        headers["i-twilio-idempotency-token"] = f"retry-{attempt}"
        request = msgspec.structs.replace(request, headers=headers)
        outcomes.append(await deliver(hooks, channel, request))
    for outcome in outcomes:
        assert outcome["status"] == expect["status"], outcome
        if "error" in expect:
            assert expect["error"] in outcome["error"]
        else:
            assert outcome["events"] == expect["events"]
            assert outcome["reply"] == (TWIML_EMPTY, "text/xml")


@case_params("inbound")
async def test_inbound_messages(hooks: Hooks, case: dict[str, Any]) -> None:
    await _check(hooks, case)


@case_params("status")
async def test_status_callbacks(hooks: Hooks, case: dict[str, Any]) -> None:
    await _check(hooks, case)


@case_params("signature")
async def test_signatures(hooks: Hooks, case: dict[str, Any]) -> None:
    await _check(hooks, case)


async def test_duplicate_delivery_keeps_provider_id(hooks: Hooks) -> None:
    """A webhook retried by Twilio parses to the same dedup key every time."""
    case = {
        "request": {
            "method": "POST",
            "route": "inbound",
            "url": "https://extmsg.example.com/channels/sms/inbound",
            "headers": {"content-type": "application/x-www-form-urlencoded"},
            "form": [
                ["MessageSid", "SM4a9e2f6c1b8d4e7f9a3c5b7d9e1f3a5c"],
                ["From", "+14155550123"],
                ["Body", "again"],
            ],
        }
    }
    first = await deliver(hooks, make_channel(), build_request(case))
    second = await deliver(hooks, make_channel(), build_request(case))
    ids = {e["provider_message_id"] for e in first["events"] + second["events"]}
    assert ids == {"SM4a9e2f6c1b8d4e7f9a3c5b7d9e1f3a5c"}
