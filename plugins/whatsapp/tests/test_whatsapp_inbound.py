"""Inbound: recorded webhook payloads through verify → parse → ack, as the core runs them."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from whatsapp_testkit import (
    MAIN_NUMBER_ID,
    as_builtins,
    build_request,
    case_ids,
    default_channels,
    load_cases,
    make_channel,
    run_inbound,
)

from extmsg.errors import SignatureError
from extmsg.models import Channel, InboundMessage
from extmsg.plugins import Hooks

MESSAGES = load_cases("inbound_messages.json")
STATUSES = load_cases("inbound_statuses.json")
BATCH = load_cases("inbound_batch.json")


@pytest.mark.parametrize("case", MESSAGES, ids=case_ids(MESSAGES))
async def test_message_types(hooks: Hooks, channels: list[Channel], case: dict[str, Any]) -> None:
    status, events = await run_inbound(hooks, build_request(case), channels)
    assert status == case["expect"]["status"]
    assert as_builtins(events) == case["expect"]["events"]


@pytest.mark.parametrize("case", STATUSES, ids=case_ids(STATUSES))
async def test_statuses(hooks: Hooks, channels: list[Channel], case: dict[str, Any]) -> None:
    status, events = await run_inbound(hooks, build_request(case), channels)
    assert status == case["expect"]["status"]
    assert as_builtins(events) == case["expect"]["events"]


@pytest.mark.parametrize("case", BATCH, ids=case_ids(BATCH))
async def test_batches_and_signatures(
    hooks: Hooks, channels: list[Channel], case: dict[str, Any]
) -> None:
    status, events = await run_inbound(hooks, build_request(case), channels)
    assert status == case["expect"]["status"]
    assert as_builtins(events) == case["expect"]["events"]


async def test_ack_is_an_empty_200(hooks: Hooks) -> None:
    request = build_request(MESSAGES[0])
    reply = await hooks.render_ack("whatsapp", request, [])
    assert (reply.status, reply.body) == (200, b"")


async def test_redelivery_gives_the_same_events(hooks: Hooks, channels: list[Channel]) -> None:
    """Meta retries for days: the same delivery must yield the same dedup keys every time."""
    request = build_request(BATCH[0])
    first = await run_inbound(hooks, request, channels)
    again = await run_inbound(hooks, build_request(BATCH[0]), channels)
    assert first == again
    keys = [(e.channel, e.provider_message_id) for e in first[1] if isinstance(e, InboundMessage)]
    assert len(keys) == len(set(keys)) == 5


async def test_other_messengers_are_not_ours(hooks: Hooks, channels: list[Channel]) -> None:
    request = build_request(MESSAGES[0])
    assert (
        hooks.pm.hook.extmsg_verify_inbound(
            messenger="sms_twilio", request=request, channels=channels
        )
        is None
    )
    assert await hooks.parse_inbound("sms_twilio", request, channels) is None


async def test_signature_error_names_the_problem(hooks: Hooks, channels: list[Channel]) -> None:
    unsigned = build_request({**MESSAGES[0], "signature": "none"})
    with pytest.raises(SignatureError, match="missing"):
        await hooks.verify_inbound("whatsapp", unsigned, channels)
    wrong = build_request({**MESSAGES[0], "signature": "wrong"})
    with pytest.raises(SignatureError, match="does not match"):
        await hooks.verify_inbound("whatsapp", wrong, channels)


async def test_unchecked_channel_accepts_unsigned_events(hooks: Hooks) -> None:
    """``verify_signatures = false`` (local development): the core skips verify; parse trusts it."""
    dev = [make_channel("wa-dev", MAIN_NUMBER_ID, verify_signatures=False)]
    request = build_request({**MESSAGES[0], "signature": "none"})
    events = await hooks.parse_inbound("whatsapp", request, dev)
    assert events is not None
    assert [e.channel for e in events] == ["wa-dev"]


async def test_unsigned_events_are_not_routed_to_checked_channels(hooks: Hooks) -> None:
    request = build_request({**MESSAGES[0], "signature": "none"})
    assert await hooks.parse_inbound("whatsapp", request, default_channels()) == []


async def test_events_round_trip_through_the_store_encoding(
    hooks: Hooks, channels: list[Channel]
) -> None:
    """The core stores events as JSON: what we emit must survive msgspec's encoding."""
    _, events = await run_inbound(hooks, build_request(BATCH[0]), channels)
    for event in events:
        raw = msgspec.json.encode(event)
        assert msgspec.json.decode(raw, type=type(event)) == event
