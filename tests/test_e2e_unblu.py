"""End to end over real HTTP: ``extmsg serve`` ⇄ the Unblu sandbox ⇄ a messenger, v3 and v4.

The messenger is the loopback test plugin, so these tests are about the core and the Unblu
side; each messenger plugin has its own end-to-end tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

import pytest

from extmsg.testing.openapi import SpecUnavailable, load_spec
from extmsg.unblu import signing

from .e2e import CUSTOMER, World, at_least, eventually, world

__all__ = ["world"]  # the fixture


async def test_channel_is_provisioned_with_our_endpoint(world: World) -> None:
    channels = await world.agent("channels")
    items = channels["channels"] if isinstance(channels, dict) else channels
    [channel] = [c for c in items if c["id"] == world.channel_id]
    assert channel["name"] == "loop"
    assert channel["webhookEndpoint"] == f"{world.base}/unblu/loop"
    assert channel["messageStateHandledExternally"] is True


async def test_conversation_lifecycle(world: World) -> None:
    assert await world.say("p1", "Hello, I need help") == 200

    async def one_conversation() -> list[dict[str, Any]] | None:
        convs = await world.conversations()
        if convs and convs[0]["messageCount"] >= 1:
            return convs
        return None

    [conv] = await eventually(one_conversation)
    assert conv["sourceId"] == CUSTOMER
    assert conv["state"] == "QUEUED"
    [first] = await world.messages(conv["id"])
    assert first["text"] == "Hello, I need help"
    assert first["sourceId"] == "p1"

    # The next message lands in the same conversation; a repeated delivery adds nothing.
    assert await world.say("p2", "Are you there?") == 200
    assert await world.say("p2", "Are you there?") == 200

    async def two_messages() -> list[dict[str, Any]] | None:
        msgs = await world.messages(conv["id"])
        return msgs if len(msgs) >= 2 else None

    msgs = await eventually(two_messages)
    await asyncio.sleep(0.3)
    assert [m["text"] for m in await world.messages(conv["id"])] == [
        "Hello, I need help",
        "Are you there?",
    ]
    assert len(await world.conversations()) == 1
    assert [m["sourceId"] for m in msgs] == ["p1", "p2"]

    # After the agent ends it, the customer's next message opens a new conversation.
    await world.agent(f"conversations/{conv['id']}/end", "POST", reason="ENDED_BY_PARTICIPANT")
    assert await world.say("p3", "One more question") == 200

    async def second_conversation() -> list[dict[str, Any]] | None:
        convs = await world.conversations()
        fresh = [c for c in convs if c["id"] != conv["id"] and c["messageCount"] >= 1]
        return fresh or None

    [fresh] = await eventually(second_conversation)
    assert fresh["sourceId"] == CUSTOMER
    assert fresh["state"] == "QUEUED"
    assert [m["text"] for m in await world.messages(fresh["id"])] == ["One more question"]


async def test_agent_reply_is_sent_once_with_prefix_and_states_flow_back(world: World) -> None:
    assert await world.say("p1", "Hi") == 200
    [conv] = await eventually(world.conversations)
    await world.agent(
        f"conversations/{conv['id']}/messages",
        "POST",
        text="How can I help?",
        senderName="Anna Agent",
    )
    await world.agent(f"conversations/{conv['id']}/messages", "POST", text="Still there?")
    sends = await eventually(lambda: at_least(world.provider.sends, 2))
    await asyncio.sleep(0.3)
    assert len(world.provider.sends) == 2
    assert sends[0]["to"] == CUSTOMER
    assert sends[0]["text"] == "Anna Agent: How can I help?"
    assert sends[1]["text"].endswith(": Still there?")

    async def agent_message(state: str) -> dict[str, Any] | None:
        msgs = await world.messages(conv["id"])
        for m in msgs:
            if m.get("text") == "How can I help?" and m["state"] == state:
                return m
        return None

    await eventually(lambda: agent_message("SENT"))
    ref = sends[0]["ref"]
    # The provider's statuses, one of them late: READ is never lost to a late DELIVERED.
    assert await world.inbound({"statuses": [{"state": "delivered", "ref": ref}]}) == 200
    await eventually(lambda: agent_message("DELIVERED"))
    assert await world.inbound({"statuses": [{"state": "read", "id": "lp-1"}]}) == 200
    await eventually(lambda: agent_message("READ"))
    assert await world.inbound({"statuses": [{"state": "delivered", "ref": ref}]}) == 200
    await asyncio.sleep(0.5)
    assert (await agent_message("READ")) is not None

    # The agent reads the customer's message: the provider gets the read receipt.
    [visitor] = [m for m in await world.messages(conv["id"]) if m.get("sourceId") == "p1"]
    await world.agent(f"conversations/{conv['id']}/messages/{visitor['id']}/read", "POST")
    assert await eventually(lambda: at_least(world.provider.reads, 1)) == ["p1"]


async def test_permanent_provider_failure_is_reported_to_unblu(world: World) -> None:
    world.provider.fail[CUSTOMER] = 400
    assert await world.say("p1", "Hi") == 200
    [conv] = await eventually(world.conversations)
    await world.agent(f"conversations/{conv['id']}/messages", "POST", text="Hello?")

    async def failed() -> dict[str, Any] | None:
        for m in await world.messages(conv["id"]):
            if m.get("text") == "Hello?" and m["state"] == "FAILED":
                return m
        return None

    message = await eventually(failed)
    assert message["failState"] == "TERMINAL"
    assert "recipient refused (400)" in message["failureText"]
    assert world.provider.sends == []


async def test_bad_signatures_are_refused_and_change_nothing(world: World) -> None:
    assert await world.inbound({"messages": [{"id": "x1", "from": CUSTOMER}]}, token="wrong") == 403
    body = b'{"$_type": "PingRequest", "pingId": "p"}'
    headers = {"x-unblu-service-name": "outbound.ping", "x-unblu-signature-256": "0" * 64}
    async with world.session.post(f"{world.base}/unblu/loop", data=body, headers=headers) as resp:
        assert resp.status == 403
    async with world.session.post(
        f"{world.base}/unblu/loop",
        data=body,
        headers={
            "x-unblu-service-name": "outbound.ping",
            **signing.sign_headers("whsec-123", body),
        },
    ) as resp:
        assert resp.status == 200
        answer = await resp.read()
        assert resp.headers[signing.SIGNATURE_256_HEADER] == signing.signature_256(
            "whsec-123", answer
        )
    await asyncio.sleep(0.3)
    assert await world.conversations() == []


async def _outbound_request(world: World, service: str, body: dict[str, Any]) -> dict[str, Any]:
    raw = json.dumps({"accountId": "sandbox-account", "serviceName": service, **body}).encode()
    headers = {
        "x-unblu-service-name": service,
        "content-type": "application/json",
        **signing.sign_headers("whsec-123", raw),
    }
    async with world.session.post(f"{world.base}/unblu/loop", data=raw, headers=headers) as resp:
        assert resp.status == 200, await resp.text()
        answer = await resp.read()
        assert resp.headers[signing.SIGNATURE_256_HEADER] == signing.signature_256(
            "whsec-123", answer
        )
    with contextlib.suppress(SpecUnavailable):  # without the specs the shape goes unchecked
        load_spec("v4").validate_callback_response(service, json.loads(answer))
    result: dict[str, Any] = json.loads(answer)
    return result


@pytest.mark.parametrize("world", ["v4"], indirect=True)  # v4 outbound requests only
async def test_agent_initiated_contact_and_conversation(world: World) -> None:
    created = await _outbound_request(
        world,
        "outbound.external_messenger.create_contact",
        {
            "$_type": "ExternalMessengerCreateContactRequest",
            "externalMessengerChannelId": world.channel_id,
            "personData": {"$_type": "PersonData", "displayName": "Bob Builder"},
            "contactIdentifier": "  +41790000009 ",
        },
    )
    assert created["type"] == "CREATE"
    assert created["sourceId"] == "+41790000009"
    invalid = await _outbound_request(
        world,
        "outbound.external_messenger.create_contact",
        {
            "$_type": "ExternalMessengerCreateContactRequest",
            "externalMessengerChannelId": world.channel_id,
            "contactIdentifier": "   ",
        },
    )
    assert invalid["type"] == "INVALID_CONTACT_IDENTIFIER"
    assert invalid["errorText"] == "the contact identifier is empty"

    # A contact who is already talking gets the existing conversation.
    assert await world.say("p1", "Hi") == 200
    [conv] = await eventually(world.conversations)
    [contact_id] = [p["contactId"] for p in conv["participants"] if p.get("contactId")]
    request = {
        "$_type": "ExternalMessengerCreateConversationRequest",
        "creationData": {
            "$_type": "ConversationCreationData",
            "externalMessengerChannelId": world.channel_id,
            "externalParticipants": [
                {
                    "$_type": "ConversationCreationExternalParticipantData",
                    "externalMessengerContactId": contact_id,
                    "participationType": "CONTEXT_PERSON",
                }
            ],
        },
    }
    service = "outbound.external_messenger.create_conversation"
    existing = await _outbound_request(world, service, request)
    assert existing == {
        "$_type": "ExternalMessengerCreateConversationUseExistingResponse",
        "type": "USE_EXISTING",
        "conversationId": conv["id"],
    }
    await world.agent(f"conversations/{conv['id']}/end", "POST")
    await world.say("p2", "still there?")  # noticed as ended, a new conversation opens

    async def second() -> list[dict[str, Any]] | None:
        convs = await world.conversations()
        return convs if len(convs) == 2 else None

    await eventually(second)
    await world.agent(f"conversations/{(await world.conversations())[-1]['id']}/end", "POST")
    fresh = await _outbound_request(world, service, request)
    assert fresh["type"] == "CREATE"
    assert fresh["sourceId"] == CUSTOMER
