"""The console's server side: starting a conversation as Unblu does, and the live event feed.

The browser tests (``test_console_browser.py``) drive the page; these pin down the wire: the
``create_contact`` / ``create_conversation`` requests the sandbox sends (validated against the
vendor spec) and how it acts on each answer, and the server-sent events that carry only what
changed.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from extmsg.sandbox import WebhookRecorder, create_sandbox_app
from extmsg.testing.openapi import SpecUnavailable, load_spec

from .test_sandbox_behaviour import AUTH

Client = TestClient[aiohttp.web.Request, aiohttp.web.Application]
CONTACT = "outbound.external_messenger.create_contact"
CONVERSATION = "outbound.external_messenger.create_conversation"


class Desk:
    def __init__(self, client: Client, recorder: WebhookRecorder, url: str) -> None:
        self.client = client
        self.recorder = recorder
        self.url = url

    async def channel(self, version: str = "V4", **extra: Any) -> str:
        body = {
            "$_type": "CustomExternalMessengerChannel",
            "type": "CUSTOM",
            "name": f"sms-{version}",
            "webhookEndpoint": self.url,
            "webhookApiVersion": version,
            "webhookSecret": "s3cret-for-tests",
            "outboundSupported": True,
            "outboundTimeoutMillis": 2000,
            **extra,
        }
        async with self.client.post(
            "/app/rest/v4/externalmessengers/create", json=body, headers=AUTH
        ) as resp:
            assert resp.status == 200, await resp.text()
            channel_id: str = (await resp.json())["id"]
            return channel_id

    async def start(self, channel_id: str, identifier: str, status: int = 201) -> Any:
        body = {"channelId": channel_id, "contactIdentifier": identifier, "name": "Rosa Diaz"}
        async with self.client.post("/sandbox/api/conversations/start", json=body) as resp:
            answer = await resp.json()
            assert resp.status == status, answer
            return answer


@pytest.fixture
async def desk(
    aiohttp_client: Callable[..., Awaitable[Client]],
    aiohttp_server: Callable[[aiohttp.web.Application], Awaitable[TestServer]],
) -> Desk:
    recorder = WebhookRecorder()
    server = await aiohttp_server(recorder.app())
    client = await aiohttp_client(create_sandbox_app(retry_backoff=0.01))
    return Desk(client, recorder, str(server.make_url("/unblu")))


async def test_start_asks_the_channel_for_contact_and_conversation(desk: Desk) -> None:
    channel = await desk.channel()
    desk.recorder.answer_next(
        200, {"$_type": "ExternalMessengerCreateContactCreateResponse", "type": "CREATE",
              "name": "Rosa", "sourceId": "+14155550100"}
    )  # fmt: skip
    desk.recorder.answer_next(
        200, {"$_type": "ExternalMessengerCreateConversationCreateResponse", "type": "CREATE",
              "sourceId": "+14155550100"}
    )  # fmt: skip
    conv = await desk.start(channel, "+1 415 555 0100")
    assert conv["state"] == "ACTIVE"
    assert conv["sourceId"] == "+14155550100"
    visitor = next(p for p in conv["participants"] if p["viaMessenger"])
    assert visitor["contactSourceId"] == "+14155550100"
    assert visitor["participationType"] == "CONTEXT_PERSON"
    contact_call, conversation_call = desk.recorder.calls
    assert contact_call.body["contactIdentifier"] == "+1 415 555 0100"
    assert contact_call.body["personData"]["displayName"] == "Rosa Diaz"
    data = conversation_call.body["creationData"]
    assert data["externalMessengerChannelId"] == channel
    assert data["externalParticipants"][0]["externalMessengerContactId"] == visitor["contactId"]
    try:
        spec = load_spec("v4")
    except SpecUnavailable as exc:
        pytest.skip(str(exc))
    spec.validate_callback_request(CONTACT, contact_call.body)
    spec.validate_callback_request(CONVERSATION, conversation_call.body)
    assert contact_call.headers["x-unblu-service-name"] == CONTACT


async def test_use_existing_conversation_opens_it(desk: Desk) -> None:
    channel = await desk.channel()
    first = await desk.start(channel, "+14155550101")  # the recorder answers CREATE
    contact_id = first["participants"][0]["contactId"]
    desk.recorder.answer_next(
        200, {"type": "USE_EXISTING", "externalMessengerContactId": contact_id}
    )
    desk.recorder.answer_next(200, {"type": "USE_EXISTING", "conversationId": first["id"]})
    again = await desk.start(channel, "+14155550101")
    assert again["id"] == first["id"]


async def test_refusals_reach_the_agent_as_the_channel_said_them(desk: Desk) -> None:
    channel = await desk.channel()
    desk.recorder.answer_next(
        200, {"type": "INVALID_CONTACT_IDENTIFIER", "errorText": "'x' is not a phone number"}
    )
    refused = await desk.start(channel, "x", status=422)
    assert refused["error"] == "'x' is not a phone number"
    desk.recorder.answer_next(500, {"error": "down"})
    broken = await desk.start(channel, "+14155550102", status=502)
    assert "create_contact" in broken["error"]
    conversations = await (await desk.client.get("/sandbox/api/conversations")).json()
    assert conversations == []


async def test_a_channel_without_outbound_support_is_refused(desk: Desk) -> None:
    channel = await desk.channel(outboundSupported=False)
    answer = await desk.start(channel, "+14155550103", status=409)
    assert "outbound" in answer["error"]
    assert desk.recorder.calls == []


async def test_v3_channels_get_the_conversation_without_requests(desk: Desk) -> None:
    channel = await desk.channel("V3")
    conv = await desk.start(channel, "+14155550104")
    assert conv["sourceId"] == "+14155550104"
    assert desk.recorder.calls == []


async def _events(resp: aiohttp.ClientResponse) -> Any:
    while True:
        line = await resp.content.readline()
        if line.startswith(b"data: "):
            return json.loads(line[6:])


async def test_events_send_everything_once_then_only_what_changed(desk: Desk) -> None:
    channel = await desk.channel()
    first = await desk.start(channel, "+14155550105")
    async with desk.client.get("/sandbox/api/events") as resp:
        assert resp.content_type == "text/event-stream"
        async with asyncio.timeout(5):
            snapshot = await _events(resp)
        assert snapshot["reset"] is True
        keys = {u["key"] for u in snapshot["upsert"]}
        assert f"conversation/{first['id']}" in keys
        assert f"channel/{channel}" in keys
        assert "outage" in keys

        async with desk.client.post(
            f"/sandbox/api/conversations/{first['id']}/messages", json={"text": "hi"}
        ) as posted:
            message = await posted.json()
        async with asyncio.timeout(5):
            change = await _events(resp)
        assert change["reset"] is False
        changed = {u["key"] for u in change["upsert"]}
        assert f"message/{message['id']}" in changed
        assert f"conversation/{first['id']}" in changed
        assert f"channel/{channel}" not in changed  # unchanged: not sent again
        assert "outage" not in changed


async def test_a_customer_who_wrote_before_is_the_person_the_agent_reaches(desk: Desk) -> None:
    """As an agent picks them in Unblu's person search: the visitor with that number."""
    channel = await desk.channel("V3")
    body = {"sourceId": "someone-known", "phone": "+14155550106", "firstName": "Known"}
    async with desk.client.post(
        "/app/rest/v3/persons/createOrUpdateVirtual", json=body, headers=AUTH
    ) as resp:
        assert resp.status == 200, await resp.text()
        known = (await resp.json())["id"]
    conv = await desk.start(channel, "+14155550106")
    visitor = next(p for p in conv["participants"] if p["viaMessenger"])
    assert visitor["personId"] == known
