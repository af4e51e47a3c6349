"""The Unblu sandbox against the vendor OpenAPI specs, operation by operation, v4 and v3.

Every request sent is validated against the operation's request schema, every answer against
its response schema, and every call the sandbox makes to the channel endpoint against the
matching callback schema.
"""

from __future__ import annotations

import base64
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from extmsg.sandbox import WebhookRecorder, create_sandbox_app
from extmsg.sandbox.inputs import NewConversation, PersonFields
from extmsg.sandbox.service import SANDBOX_KEY
from extmsg.sandbox.state import Participant
from extmsg.testing.openapi import SpecUnavailable, UnbluSpec, load_spec
from extmsg.unblu import signing

AUTH = {"Authorization": "Basic " + base64.b64encode(b"admin:admin").decode()}
PNG = base64.b64encode(b"\x89PNG\r\n\x1a\nfake").decode()

Client = TestClient[aiohttp.web.Request, aiohttp.web.Application]


def spec_or_skip(version: str) -> UnbluSpec:
    try:
        return load_spec(version)
    except SpecUnavailable as exc:
        pytest.skip(str(exc))


class Api:
    """Calls one API generation of the sandbox, validating both directions against the spec."""

    def __init__(self, client: Client, spec: UnbluSpec) -> None:
        self.client = client
        self.spec = spec
        self.prefix = f"/app/rest/{spec.version}"

    async def __call__(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        params: dict[str, str] | None = None,
        status: int = 200,
    ) -> Any:
        if body is not None or method == "POST":
            self.spec.validate_request(method, path, body)
        async with self.client.request(
            method, self.prefix + path, json=body, params=params, headers=AUTH
        ) as resp:
            raw = await resp.read()
            answer = await resp.json() if raw else None
            assert resp.status == status, f"{method} {path}: {resp.status} {answer}"
            if resp.status != 204:
                assert resp.content_type == "application/json"
        self.spec.validate_response(method, path, resp.status, answer)
        return answer


@pytest.fixture
async def endpoint(
    aiohttp_server: Callable[[aiohttp.web.Application], Awaitable[TestServer]],
) -> tuple[WebhookRecorder, str]:
    recorder = WebhookRecorder()
    server = await aiohttp_server(recorder.app())
    return recorder, str(server.make_url("/unblu"))


@pytest.fixture
async def client(aiohttp_client: Callable[..., Awaitable[Client]]) -> Client:
    return await aiohttp_client(create_sandbox_app(retry_backoff=0.01))


async def agent(client: Client, method: str, path: str, body: Any = None) -> Any:
    async with client.request(method, "/sandbox/api" + path, json=body) as resp:
        assert resp.status < 300, await resp.text()
        return await resp.json()


async def drain(client: Client) -> None:
    await agent(client, "POST", "/drain", {"timeout": 5})


async def test_v4_operations_match_the_spec(
    client: Client, endpoint: tuple[WebhookRecorder, str]
) -> None:
    spec = spec_or_skip("v4")
    api = Api(client, spec)
    recorder, url = endpoint

    channel = await api(
        "POST",
        "/externalmessengers/create",
        {
            "$_type": "CustomExternalMessengerChannel",
            "type": "CUSTOM",
            "name": "sms",
            "description": "Twilio SMS",
            "webhookEndpoint": url,
            "webhookApiVersion": "V4",
            "webhookSecret": "s3cret",
            "webhookStatus": "ACTIVE",
            "messageStateHandledExternally": True,
            "outboundSupported": False,
            "outboundTimeoutMillis": 2000,
            "contactIdentifierFieldName": "phone",
            "contactIdentifierFieldType": "PHONE_NUMBER",
            "supportsMultipleConversationsPerContact": True,
            "metadata": {"plugin": "sms_twilio"},
        },
        params={"expand": "metadata"},
    )
    assert channel["version"] == 1
    assert channel["accountId"] == "sandbox-account"
    assert channel["metadata"] == {"plugin": "sms_twilio"}
    cid = channel["id"]
    assert (await api("GET", "/externalmessengers/getByName", params={"name": "sms"}))["id"] == cid
    read = await api("GET", f"/externalmessengers/{cid}/read")
    assert "metadata" not in read
    updated = await api(
        "POST",
        "/externalmessengers/update",
        {**{k: v for k, v in read.items() if k != "metadata"}, "description": "SMS"},
    )
    assert updated["version"] == 2
    assert updated["description"] == "SMS"

    pong = await api("POST", f"/externalmessengers/{cid}/sendPing")
    (ping,) = recorder.named("outbound.ping")
    spec.validate_callback_request("outbound.ping", ping.body)
    assert pong == {"$_type": "PingResponse", "pingId": ping.body["pingId"]}

    person = await api(
        "POST",
        "/persons/createOrUpdateVirtual",
        {
            "$_type": "PersonData",
            "personSource": "VIRTUAL",
            "personType": "VISITOR",
            "sourceId": "sms:+41790000001",
            "firstName": "Ada",
            "phone": "+41790000001",
        },
    )
    again = await api(
        "GET",
        "/persons/getBySource",
        params={"personSource": "VIRTUAL", "sourceId": "sms:+41790000001"},
    )
    assert again["id"] == person["id"]
    assert again["displayName"] == "Ada"

    contact = await api(
        "POST",
        "/externalmessengercontacts/create",
        {
            "$_type": "ExternalMessengerContact",
            "externalMessengerChannelId": cid,
            "sourceId": "+41790000001",
            "name": "Ada",
            "personId": person["id"],
        },
    )
    found = await api(
        "POST",
        "/externalmessengercontacts/search",
        {
            "$_type": "ExternalMessengerContactQuery",
            "searchFilters": [
                {
                    "$_type": "ExternalMessengerChannelIdExternalMessengerContactSearchFilter",
                    "field": "EXTERNAL_MESSENGER_CHANNEL_ID",
                    "operator": {"$_type": "EqualsIdOperator", "type": "EQUALS", "value": cid},
                },
                {
                    "$_type": "SourceIdExternalMessengerContactSearchFilter",
                    "field": "SOURCE_ID",
                    "operator": {
                        "$_type": "EqualsStringOperator",
                        "type": "EQUALS",
                        "value": "+41790000001",
                    },
                },
            ],
        },
    )
    assert [c["id"] for c in found["items"]] == [contact["id"]]
    assert found["hasMoreItems"] is False
    assert (await api("GET", f"/externalmessengercontacts/{contact['id']}/read")) == contact

    conv = await api(
        "POST",
        "/conversations/create",
        {
            "$_type": "ConversationCreationData",
            "initialEngagementType": "OFFLINE_CHAT_REQUEST",
            "externalMessengerChannelId": cid,
            "sourceId": "thread-1",
            "topic": "SMS from Ada",
            "externalParticipants": [
                {
                    "$_type": "ConversationCreationExternalParticipantData",
                    "externalMessengerContactId": contact["id"],
                    "participationType": "CONTEXT_PERSON",
                }
            ],
        },
    )
    assert conv["state"] == "QUEUED"
    assert conv["externalParticipants"][0]["sourceId"] == "+41790000001"
    conv_id = conv["id"]
    by_source = await api(
        "GET",
        "/conversations/getBySourceIdAndChannelId",
        params={"sourceId": "thread-1", "externalMessengerChannelId": cid},
    )
    assert by_source["id"] == conv_id
    assert (await api("GET", f"/conversations/{conv_id}/read"))["id"] == conv_id
    searched = await api(
        "POST",
        "/conversations/search",
        {
            "$_type": "ConversationQuery",
            "searchFilters": [
                {
                    "$_type": "SourceIdConversationSearchFilter",
                    "field": "SOURCE_ID",
                    "operator": {
                        "$_type": "EqualsIdOperator",
                        "type": "EQUALS",
                        "value": "thread-1",
                    },
                },
                {
                    "$_type": "ExternalMessengerChannelIdConversationSearchFilter",
                    "field": "EXTERNAL_MESSENGER_CHANNEL_ID",
                    "operator": {"$_type": "EqualsIdOperator", "type": "EQUALS", "value": cid},
                },
                {
                    "$_type": "StateConversationSearchFilter",
                    "field": "STATE",
                    "operator": {
                        "$_type": "InConversationStateOperator",
                        "type": "IN",
                        "values": ["QUEUED", "ACTIVE"],
                    },
                },
            ],
            "limit": 10,
        },
    )
    assert [c["id"] for c in searched["items"]] == [conv_id]

    sent = await api(
        "POST",
        f"/externalmessengers/{cid}/sendMessage",
        {
            "$_type": "ExternalMessengerPostMessage",
            "conversationId": conv_id,
            "senderExternalMessengerContactId": contact["id"],
            "sourceId": "SM123",
            "externalMessageId": "our-1",
            "messageData": {"$_type": "TextPostMessageData", "type": "TEXT", "text": "Hello"},
        },
    )
    assert sent["$_type"] == "SendMessageResult"
    assert sent["messageId"]
    await api(
        "POST",
        f"/externalmessengers/{cid}/sendMessage",
        {
            "$_type": "ExternalMessengerPostMessage",
            "conversationId": conv_id,
            "senderExternalMessengerContactId": contact["id"],
            "sourceId": "MM456",
            "messageData": {
                "$_type": "FilePostMessageData",
                "type": "FILE",
                "fileName": "photo.png",
                "caption": "my photo",
                "fileData": f"data:image/png;base64,{PNG}",
            },
        },
    )

    await agent(client, "POST", f"/conversations/{conv_id}/messages", {"text": "Hi Ada"})
    await agent(
        client,
        "POST",
        f"/conversations/{conv_id}/messages",
        {"file": {"name": "a.png", "mimeType": "image/png", "data": PNG}, "caption": "see"},
    )
    await agent(client, "POST", f"/conversations/{conv_id}/messages/{sent['messageId']}/read", {})
    await drain(client)
    news = recorder.named("outbound.external_messenger.new_message")
    assert len(news) == 2
    for call in news:
        spec.validate_callback_request("outbound.external_messenger.new_message", call.body)
        assert call.body["receivingContacts"][0]["id"] == contact["id"]
    assert news[1].body["conversationMessage"]["downloadLinks"][0]["type"] == "WEB_API"
    (state_call,) = recorder.named("outbound.external_messenger.message_state")
    spec.validate_callback_request("outbound.external_messenger.message_state", state_call.body)
    assert state_call.body["sourceId"] == "SM123"

    messages = await agent(client, "GET", f"/conversations/{conv_id}/messages")
    agent_msg = messages[2]
    assert agent_msg["externalMessageId"] == "ext-1"
    for op, body in (
        ("messageSentSuccessfully", {}),
        ("messageDelivered", {"externalMessengerContactId": contact["id"]}),
        ("messageRead", {}),
        ("messageSendFailed", {"failState": "TERMINAL", "failureText": "number blocked"}),
    ):
        await api(
            "POST",
            f"/externalmessengers/{cid}/{op}",
            {"conversationId": conv_id, "messageId": agent_msg["id"], **body},
            status=204,
        )

    log_path = f"/conversationhistory/{conv_id}/exportMessageLog"
    log = await api("POST", log_path, {"$_type": "MessageExportQuery"})
    assert [m["id"] for m in log["items"]] == [m["id"] for m in messages]
    assert log["items"][0]["externalMessageId"] == "our-1"
    assert log["items"][0]["senderPersonId"] == person["id"]
    assert log["items"][0]["text"] == "Hello"
    assert log["hasMoreItems"] is False
    newest = await api(
        "POST",
        log_path,
        {
            "$_type": "MessageExportQuery",
            "searchFilters": [
                {
                    "$_type": "SendTimestampMessageExportFilter",
                    "field": "SEND_TIMESTAMP",
                    "operator": {
                        "$_type": "GreaterThanTimestampOperator",
                        "type": "GREATER_THAN",
                        "value": log["items"][0]["sendTimestamp"] - 1,
                    },
                }
            ],
            "orderBy": [
                {"$_type": "MessageExportOrderBy", "field": "SEND_TIMESTAMP", "order": "DESCENDING"}
            ],
            "limit": 1,
        },
    )
    assert [m["id"] for m in newest["items"]] == [messages[-1]["id"]]
    assert newest["hasMoreItems"] is True
    assert newest["nextOffset"] == 1
    await api("POST", "/conversationhistory/nope/exportMessageLog", {}, status=404)
    operation = "POST /conversationhistory/{conversationId}/exportMessageLog"
    await agent(client, "POST", "/forbidden", {"operations": [operation]})
    refused = await api("POST", log_path, {}, status=403)
    assert "lacks the role" in refused["errorMessage"]
    assert (await agent(client, "DELETE", "/forbidden")) == {"operations": []}
    await api("POST", log_path, {})

    missing = await api("GET", "/externalmessengers/getByName", params={"name": "nope"}, status=404)
    assert missing["$_type"] == "Error"
    assert missing["statusCode"] == 404

    ended = await api(
        "POST",
        f"/conversations/{conv_id}/end",
        {"reason": "EXTERNAL_CHANNEL_CLOSED", "comment": "bye"},
    )
    assert ended["state"] == "ENDED"
    assert ended["endReason"] == "EXTERNAL_CHANNEL_CLOSED"
    await api("DELETE", f"/externalmessengers/{cid}/delete", status=204)
    await api("GET", f"/externalmessengers/{cid}/read", status=404)


async def test_v3_operations_match_the_spec(
    client: Client, endpoint: tuple[WebhookRecorder, str]
) -> None:
    spec = spec_or_skip("v3")
    api = Api(client, spec)
    recorder, url = endpoint

    channel = await api(
        "POST",
        "/externalmessengers/create",
        {
            "$_type": "CustomExternalMessengerChannel",
            "type": "CUSTOM",
            "name": "mail",
            "webhookEndpoint": url,
            "webhookApiVersion": "V3",
            "webhookSecret": "s3cret",
            "webhookStatus": "ACTIVE",
            "messageStateHandledExternally": True,
        },
    )
    cid = channel["id"]
    assert "outboundTimeoutMillis" not in channel
    assert (await api("GET", "/externalmessengers/getByName", params={"name": "mail"}))["id"] == cid
    read = await api("GET", "/externalmessengers/read", params={"id": cid})
    updated = await api("POST", "/externalmessengers/update", {**read, "description": "Mail"})
    assert updated["version"] == 2

    await api(
        "POST",
        "/externalmessengers/pingCustomChannel",
        {"externalMessengerChannelId": cid},
        status=204,
    )
    await drain(client)
    (ping,) = recorder.named("ping")
    spec.validate_callback_request("ping", ping.body)

    visitor = await api(
        "POST",
        "/persons/createOrUpdateVirtual",
        {"$_type": "PersonData", "sourceId": "mail:ada@example.org", "email": "ada@example.org"},
    )
    assert (
        await api(
            "GET",
            "/persons/getBySource",
            params={"personSource": "VIRTUAL", "sourceId": "mail:ada@example.org"},
        )
    )["id"] == visitor["id"]

    conv = await api(
        "POST",
        "/conversations/create",
        {
            "$_type": "ConversationData",
            "initialEngagementType": "CHAT_REQUEST",
            "externalMessengerChannelId": cid,
            "sourceId": "<msg-1@example.org>",
            "contextPersonId": visitor["id"],
            "participants": [
                {
                    "$_type": "ParticipantData",
                    "personId": visitor["id"],
                    "connectedViaExternalMessenger": True,
                }
            ],
            "recipient": {"$_type": "PersonData", "id": "sandbox-agent"},
        },
    )
    assert conv["state"] == "ACTIVE"
    assert conv["assigneePersonId"] == "sandbox-agent"
    conv_id = conv["id"]
    assert (
        await api(
            "GET",
            "/conversations/getBySourceIdAndChannelId",
            params={"sourceId": "<msg-1@example.org>", "externalMessengerChannelId": cid},
        )
    )["id"] == conv_id
    assert (await api("GET", "/conversations/read", params={"id": conv_id}))["id"] == conv_id
    searched = await api(
        "POST",
        "/conversations/search",
        {
            "$_type": "ConversationQuery",
            "searchFilters": [
                {
                    "$_type": "ExternalMessengerChannelIdConversationSearchFilter",
                    "field": "EXTERNAL_MESSENGER_CHANNEL_ID",
                    "operator": {"$_type": "EqualsIdOperator", "type": "EQUALS", "value": cid},
                },
                {
                    "$_type": "StateConversationSearchFilter",
                    "field": "STATE",
                    "operator": {
                        "$_type": "EqualsConversationStateOperator",
                        "type": "EQUALS",
                        "value": "ACTIVE",
                    },
                },
            ],
        },
    )
    assert [c["id"] for c in searched["items"]] == [conv_id]

    action_id = await api(
        "POST",
        "/externalmessengers/sendMessage",
        {
            "$_type": "ExternalMessengerPostMessage",
            "externalMessengerChannelId": cid,
            "conversationId": conv_id,
            "senderPersonId": visitor["id"],
            "sourceId": "<msg-1@example.org>",
            "messageData": {"$_type": "TextPostMessageData", "type": "TEXT", "text": "Hello"},
        },
    )
    assert isinstance(action_id, str)

    await agent(client, "POST", f"/conversations/{conv_id}/messages", {"text": "Hi"})
    await agent(
        client,
        "POST",
        f"/conversations/{conv_id}/messages",
        {"file": {"name": "a.pdf", "mimeType": "application/pdf", "data": PNG}},
    )
    messages = await agent(client, "GET", f"/conversations/{conv_id}/messages")
    assert messages[0]["actionId"] == action_id
    await agent(client, "POST", f"/conversations/{conv_id}/messages/{messages[0]['id']}/read")
    await drain(client)
    news = recorder.named("external_messenger.new_message")
    assert len(news) == 2
    for call in news:
        spec.validate_callback_request("external_messenger.new_message", call.body)
    assert news[1].body["conversationMessage"]["downloadLink"].endswith(messages[2]["id"])
    (state_call,) = recorder.named("external_messenger.message_state")
    spec.validate_callback_request("external_messenger.message_state", state_call.body)
    assert state_call.body["sourceId"] == "<msg-1@example.org>"

    log = await api(
        "POST",
        f"/conversationhistory/{conv_id}/searchMessages",
        {
            "$_type": "MessageQuery",
            "orderBy": [
                {"$_type": "MessageOrderBy", "field": "SEND_TIMESTAMP", "order": "ASCENDING"}
            ],
        },
    )
    assert [m["id"] for m in log["items"]] == [m["id"] for m in messages]
    assert not any("externalMessageId" in m or "sourceId" in m for m in log["items"])

    agent_msg = messages[1]
    for op, body in (
        ("messageSentSuccessfully", {}),
        ("messageDelivered", {"personId": visitor["id"]}),
        ("messageRead", {}),
        ("messageSendFailed", {"failedState": "RETRYABLE", "failureText": "mailbox full"}),
    ):
        await api(
            "POST",
            f"/externalmessengers/{op}",
            {
                "externalMessengerChannelId": cid,
                "conversationId": conv_id,
                "messageId": agent_msg["id"],
                **body,
            },
            status=204,
        )

    ended = await api("POST", f"/conversations/{conv_id}/end", {"reason": "ENDED_BY_PARTICIPANT"})
    assert ended["state"] == "ENDED"
    await api(
        "GET",
        "/conversations/getBySourceIdAndChannelId",
        params={"sourceId": "<msg-1@example.org>", "externalMessengerChannelId": cid},
        status=404,
    )
    await api("DELETE", "/externalmessengers/delete", params={"id": cid}, status=204)
    await api("GET", "/externalmessengers/read", params={"id": cid}, status=404)


@pytest.mark.parametrize("version", ["v3", "v4"])
async def test_errors_are_unblu_error_bodies(client: Client, version: str) -> None:
    spec = spec_or_skip(version)
    api = Api(client, spec)
    bad = await api(
        "POST",
        "/externalmessengers/create",
        {"$_type": "CustomExternalMessengerChannel", "type": "CUSTOM", "name": "x"},
        status=400,
    )
    assert "webhookEndpoint" in bad["errorMessage"]
    assert bad["statusDescription"] == "Bad Request"


async def test_recorder_default_answers_match_the_spec() -> None:
    spec = spec_or_skip("v4")
    recorder = WebhookRecorder()
    for name in (
        "outbound.external_messenger.new_message",
        "outbound.external_messenger.message_state",
        "outbound.external_messenger.create_contact",
        "outbound.external_messenger.create_conversation",
        "outbound.ping",
    ):
        body = {"pingId": "p1", "contactIdentifier": "+1 415 555 0100"}
        spec.validate_callback_response(name, recorder.default_answer(name, body))


@pytest.mark.parametrize("version", ["v4", "v3"])
async def test_webhook_registrations_and_the_ended_event_match_the_spec(
    client: Client, endpoint: tuple[WebhookRecorder, str], version: str
) -> None:
    spec = spec_or_skip(version)
    api = Api(client, spec)
    recorder, url = endpoint
    v4 = version == "v4"

    created = await api(
        "POST",
        "/webhookregistrations/create",
        {
            "$_type": "WebhookRegistration",
            "name": "sms conversation.ended",
            "status": "ACTIVE",
            "description": "ended texts",
            "endpoint": url,
            "apiVersion": version.upper(),
            "secret": "hook-s3cret",
            "events": ["conversation.ended"],
        },
    )
    wid = created["id"]
    assert created["version"] == 1
    named = await api("GET", "/webhookregistrations/getByName", params={"name": created["name"]})
    assert named == created
    if v4:
        assert await api("GET", f"/webhookregistrations/{wid}/read") == created
        listed = await api("POST", "/webhookregistrations/readMultiple", [wid, "nope"])
        assert [w["id"] for w in listed["items"]] == [wid]
    else:
        assert await api("GET", "/webhookregistrations/read", params={"id": wid}) == created
        listed = await api("POST", "/webhookregistrations/readMultiple", [wid, "nope"])
        assert [w["id"] for w in listed] == [wid]
        # v3 answers an unknown name with null ("or null if none exists").
        async with client.get(
            "/app/rest/v3/webhookregistrations/getByName", params={"name": "x"}, headers=AUTH
        ) as resp:
            assert (resp.status, await resp.json()) == (200, None)
    found = await api(
        "POST", "/webhookregistrations/search", {"$_type": "WebhookRegistrationQuery"}
    )
    assert [w["id"] for w in found["items"]] == [wid]
    updated = await api(
        "POST", "/webhookregistrations/update", {**created, "description": "changed"}
    )
    assert (updated["version"], updated["description"]) == (2, "changed")
    if v4:
        await api("POST", f"/webhookregistrations/{wid}/sendPing", status=204)
    else:
        await api("POST", "/webhookregistrations/ping", {"id": wid}, status=204)
    await drain(client)
    (ping,) = recorder.named("ping")
    spec.validate_callback_request("ping", ping.body)
    assert ping.body["webhookConfiguration"]["id"] == wid

    # An agent ends a conversation: the registration gets conversation.ended, signed.
    sandbox = client.server.app[SANDBOX_KEY]
    person = sandbox.upsert_virtual_person(PersonFields(source_id="v:1", person_type="VISITOR"))
    conv = sandbox.create_conversation(
        NewConversation(
            channel_id=None,
            source_id="thread-1",
            initial_engagement_type="CHAT_REQUEST",
            participants=[Participant(person.id, "CONTEXT_PERSON")],
        )
    )
    await agent(client, "POST", f"/conversations/{conv.id}/end", {"reason": "ENDED_BY_PARTICIPANT"})
    await drain(client)
    (ended,) = recorder.named("conversation.ended")
    spec.validate_callback_request("conversation.ended", ended.body)
    assert ended.body["eventType"] == "conversation.ended"
    assert ended.body["conversation"]["id"] == conv.id
    assert ended.body["conversation"]["state"] == "ENDED"
    assert ended.body["endReason"] == "ENDED_BY_PARTICIPANT"
    assert signing.verify("hook-s3cret", ended.raw, ended.headers) is None
    assert ended.headers["x-unblu-event"] == "conversation.ended"

    if v4:
        await api("DELETE", f"/webhookregistrations/{wid}/delete", status=204)
        await api("DELETE", f"/webhookregistrations/{wid}/delete", status=404)
    else:
        await api("DELETE", "/webhookregistrations/delete", params={"id": wid}, status=204)
        await api("DELETE", "/webhookregistrations/delete", params={"id": wid}, status=404)
