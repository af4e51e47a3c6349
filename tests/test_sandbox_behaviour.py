"""Behaviour of the Unblu sandbox: signatures, retries, ordering, loop prevention, states,
conversation rules, the outage switch and basic auth."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from extmsg.sandbox import SANDBOX_KEY, Sandbox, WebhookRecorder, create_sandbox_app, run_sandbox
from extmsg.unblu.signing import verify

AUTH = {"Authorization": "Basic " + base64.b64encode(b"admin:admin").decode()}
SECRET = "channel-secret"

Client = TestClient[web.Request, web.Application]


class World:
    """A sandbox under a test client plus a recording channel endpoint."""

    def __init__(self, client: Client, recorder: WebhookRecorder, url: str) -> None:
        self.client = client
        self.recorder = recorder
        self.url = url

    @property
    def sandbox(self) -> Sandbox:
        return self.client.app[SANDBOX_KEY]

    async def rest(
        self, method: str, path: str, body: Any = None, *, status: int = 200, **params: str
    ) -> Any:
        async with self.client.request(
            method, path, json=body, params=params or None, headers=AUTH
        ) as resp:
            raw = await resp.read()
            answer = await resp.json() if raw else None
            assert resp.status == status, f"{method} {path}: {resp.status} {answer}"
            return answer

    async def v4(self, method: str, path: str, body: Any = None, **kw: Any) -> Any:
        return await self.rest(method, "/app/rest/v4" + path, body, **kw)

    async def v3(self, method: str, path: str, body: Any = None, **kw: Any) -> Any:
        return await self.rest(method, "/app/rest/v3" + path, body, **kw)

    async def agent(self, method: str, path: str, body: Any = None, *, status: int = 0) -> Any:
        async with self.client.request(method, "/sandbox/api" + path, json=body) as resp:
            answer = await resp.json()
            if status:
                assert resp.status == status, answer
            else:
                assert resp.status < 300, answer
            return answer

    async def channel(self, name: str = "sms", **extra: Any) -> dict[str, Any]:
        body = {
            "$_type": "CustomExternalMessengerChannel",
            "type": "CUSTOM",
            "name": name,
            "webhookEndpoint": self.url,
            "webhookApiVersion": "V4",
            "webhookSecret": SECRET,
            "outboundTimeoutMillis": 300,
            **extra,
        }
        result: dict[str, Any] = await self.v4("POST", "/externalmessengers/create", body)
        return result

    async def contact(self, channel_id: str, source_id: str = "+41790000001") -> dict[str, Any]:
        result: dict[str, Any] = await self.v4(
            "POST",
            "/externalmessengercontacts/create",
            {"externalMessengerChannelId": channel_id, "sourceId": source_id, "name": "Ada"},
        )
        return result

    async def conversation(
        self,
        channel_id: str,
        contact_id: str,
        source_id: str = "thread-1",
        *,
        status: int = 200,
        **extra: Any,
    ) -> Any:
        return await self.v4(
            "POST",
            "/conversations/create",
            {
                "initialEngagementType": "CHAT_REQUEST",
                "externalMessengerChannelId": channel_id,
                "sourceId": source_id,
                "externalParticipants": [{"externalMessengerContactId": contact_id}],
                **extra,
            },
            status=status,
        )

    async def setup(self, **channel_extra: Any) -> tuple[str, str, str]:
        ch = await self.channel(**channel_extra)
        contact = await self.contact(ch["id"])
        conv = await self.conversation(ch["id"], contact["id"])
        return ch["id"], contact["id"], conv["id"]

    async def visitor_says(self, channel_id: str, contact_id: str, conv_id: str, text: str) -> str:
        sent = await self.v4(
            "POST",
            f"/externalmessengers/{channel_id}/sendMessage",
            {
                "conversationId": conv_id,
                "senderExternalMessengerContactId": contact_id,
                "sourceId": f"src-{text}",
                "messageData": {"type": "TEXT", "text": text},
            },
        )
        message_id: str = sent["messageId"]
        return message_id

    async def agent_says(self, conv_id: str, text: str, **extra: Any) -> dict[str, Any]:
        result: dict[str, Any] = await self.agent(
            "POST", f"/conversations/{conv_id}/messages", {"text": text, **extra}
        )
        return result

    async def drain(self) -> None:
        async with asyncio.timeout(5):
            await self.sandbox.drain()


WorldFactory = Callable[..., Awaitable[World]]


@pytest.fixture
def make_world(
    aiohttp_client: Callable[..., Awaitable[Client]],
    aiohttp_server: Callable[[web.Application], Awaitable[TestServer]],
) -> WorldFactory:
    async def make(**app_kw: Any) -> World:
        recorder = WebhookRecorder()
        server = await aiohttp_server(recorder.app())
        app_kw.setdefault("retry_backoff", 0.01)
        client = await aiohttp_client(create_sandbox_app(**app_kw))
        return World(client, recorder, str(server.make_url("/unblu")))

    return make


@pytest.fixture
async def world(make_world: WorldFactory) -> World:
    return await make_world()


# -- outbound deliveries -------------------------------------------------------------------
async def test_deliveries_are_signed_with_the_channel_secret(world: World) -> None:
    _, _, conv = await world.setup()
    await world.agent_says(conv, "Hello")
    await world.drain()
    (call,) = world.recorder.calls
    assert verify(SECRET, call.raw, call.headers) is None
    assert "x-unblu-signature" in call.headers
    assert "x-unblu-signature-256" in call.headers
    assert verify("other-secret", call.raw, call.headers) is not None
    assert call.headers["User-Agent"] == "Unblu-Hookshot"
    assert call.headers["Content-Type"] == "application/json"
    assert call.headers["x-unblu-service-name"] == "outbound.external_messenger.new_message"
    assert call.retry_no == 0
    assert call.delivery_id


async def test_v3_channels_get_legacy_events(world: World) -> None:
    ch = await world.v3(
        "POST",
        "/externalmessengers/create",
        {"name": "mail", "webhookEndpoint": world.url, "webhookSecret": SECRET},
    )
    assert ch["webhookApiVersion"] == "V3"
    visitor = await world.v3("POST", "/persons/createOrUpdateVirtual", {"sourceId": "ada"})
    conv = await world.v3(
        "POST",
        "/conversations/create",
        {
            "externalMessengerChannelId": ch["id"],
            "sourceId": "t1",
            "participants": [{"personId": visitor["id"], "connectedViaExternalMessenger": True}],
        },
    )
    assert conv["state"] == "QUEUED"
    assert conv["contextPersonId"] == visitor["id"]
    await world.agent_says(conv["id"], "Hi")
    await world.drain()
    (call,) = world.recorder.calls
    assert call.headers["x-unblu-event"] == "external_messenger.new_message"
    assert "x-unblu-service-name" not in call.headers
    assert call.body["$_type"] == "ExternalMessengerNewMessageEvent"
    assert verify(SECRET, call.raw, call.headers) is None


async def test_failed_delivery_is_retried_with_the_same_delivery_id(world: World) -> None:
    _, _, conv = await world.setup()
    world.recorder.fail_next(2, 500)
    await world.agent_says(conv, "Hello")
    await world.drain()
    calls = world.recorder.calls
    assert [c.retry_no for c in calls] == [0, 1, 2]
    assert [c.answered for c in calls] == [500, 500, 200]
    assert len({c.delivery_id for c in calls}) == 1
    assert len({c.raw for c in calls}) == 1
    (delivery,) = await world.agent("GET", "/deliveries")
    assert delivery["state"] == "delivered"
    assert delivery["id"] == calls[0].delivery_id
    assert [a["status"] for a in delivery["attempts"]] == [500, 500, 200]
    (msg,) = await world.agent("GET", f"/conversations/{conv}/messages")
    assert msg["externalMessageId"] == "ext-1"
    assert msg["state"] == "READ"


async def test_timeouts_are_retried_and_retries_are_bounded(make_world: WorldFactory) -> None:
    world = await make_world(delivery_retries=2)
    _, _, conv = await world.setup()
    world.recorder.answer_next(200, {"late": True}, delay=0.5)
    world.recorder.fail_next(5, 503)
    await world.agent_says(conv, "Hello")
    await world.drain()
    (delivery,) = await world.agent("GET", "/deliveries")
    assert delivery["state"] == "failed"
    assert [a["retryNo"] for a in delivery["attempts"]] == [0, 1, 2]
    assert "no answer within 300 ms" in delivery["attempts"][0]["error"]
    (msg,) = await world.agent("GET", f"/conversations/{conv}/messages")
    assert msg["state"] == "FAILED"
    assert msg["failState"] == "RETRYABLE"
    assert "3 attempts" in msg["failureText"]


async def test_deliveries_of_a_channel_keep_their_order(world: World) -> None:
    _, _, conv = await world.setup()
    world.recorder.fail_next(1, 500)
    for text in ("one", "two", "three"):
        await world.agent_says(conv, text)
    await world.drain()
    delivered = [
        c.body["conversationMessage"]["text"] for c in world.recorder.calls if c.answered == 200
    ]
    assert delivered == ["one", "two", "three"]
    assert world.recorder.calls[0].body["conversationMessage"]["text"] == "one"


async def test_ping_returns_the_endpoints_answer_or_an_error(world: World) -> None:
    ch = (await world.channel())["id"]
    pong = await world.v4("POST", f"/externalmessengers/{ch}/sendPing")
    assert pong["pingId"] == world.recorder.calls[0].body["pingId"]
    world.recorder.answer_next(200, {"$_type": "PingResponse", "pingId": "wrong"})
    failed = await world.v4("POST", f"/externalmessengers/{ch}/sendPing", status=502)
    assert failed["$_type"] == "Error"
    assert "pingId" in failed["errorMessage"]


# -- loop prevention and internal messages ----------------------------------------------------
async def test_messages_from_the_channel_and_internal_ones_are_not_sent_out(world: World) -> None:
    ch, contact, conv = await world.setup()
    await world.visitor_says(ch, contact, conv, "from the messenger")
    await world.agent_says(conv, "note to colleagues", internal=True)
    await world.agent_says(conv, "to the visitor", senderName="Bob Agent")
    await world.drain()
    (call,) = world.recorder.calls
    message = call.body["conversationMessage"]
    assert message["text"] == "to the visitor"
    assert message["senderPerson"]["displayName"] == "Bob Agent"
    assert message["internal"] is False
    messages = await world.agent("GET", f"/conversations/{conv}/messages")
    assert [m["internal"] for m in messages] == [False, True, False]
    assert messages[0]["fromMessenger"] is True


async def test_the_echo_switch_sends_a_messengers_message_back_before_answering(
    world: World,
) -> None:
    ch, contact, conv = await world.setup()
    assert await world.agent("POST", "/echo") == {"echo": True}
    msg_id = await world.visitor_says(ch, contact, conv, "echo me")
    # Already delivered when the post was answered: no drain needed.
    (call,) = world.recorder.calls
    assert call.body["conversationMessage"]["id"] == msg_id
    assert call.body["conversationMessage"]["sourceId"] == "src-echo me"
    assert await world.agent("DELETE", "/echo") == {"echo": False}
    await world.visitor_says(ch, contact, conv, "not echoed")
    await world.drain()
    assert len(world.recorder.calls) == 1


# -- message states ----------------------------------------------------------------------------
async def test_states_reported_by_the_middleware_are_recorded(world: World) -> None:
    ch, contact, conv = await world.setup(messageStateHandledExternally=True)
    sent = await world.agent_says(conv, "Hello")
    await world.drain()
    msg_id = sent["id"]
    (msg,) = await world.agent("GET", f"/conversations/{conv}/messages")
    assert msg["state"] == "PENDING"
    body = {"conversationId": conv, "messageId": msg_id}
    await world.v4("POST", f"/externalmessengers/{ch}/messageSentSuccessfully", body, status=204)
    await world.v4(
        "POST",
        f"/externalmessengers/{ch}/messageDelivered",
        {**body, "externalMessengerContactId": contact},
        status=204,
    )
    (msg,) = await world.agent("GET", f"/conversations/{conv}/messages")
    assert msg["state"] == "DELIVERED"
    await world.v4(
        "POST",
        f"/externalmessengers/{ch}/messageSendFailed",
        {**body, "failState": "TERMINAL", "failureText": "blocked"},
        status=204,
    )
    (msg,) = await world.agent("GET", f"/conversations/{conv}/messages")
    assert (msg["state"], msg["failState"], msg["failureText"]) == ("FAILED", "TERMINAL", "blocked")
    assert [h["state"] for h in msg["history"]] == ["SENT", "DELIVERED", "FAILED"]
    missing = await world.v4(
        "POST",
        f"/externalmessengers/{ch}/messageSendFailed",
        {**body, "failureText": "no state"},
        status=400,
    )
    assert "failState" in missing["errorMessage"]


async def test_agent_reading_a_visitor_message_emits_message_state(world: World) -> None:
    ch, contact, conv = await world.setup(messageStateHandledExternally=True)
    msg_id = await world.visitor_says(ch, contact, conv, "hi")
    read = await world.agent("POST", f"/conversations/{conv}/messages/{msg_id}/read")
    assert read["state"] == "READ"
    await world.agent("POST", f"/conversations/{conv}/messages/{msg_id}/read")
    await world.drain()
    (call,) = world.recorder.calls
    assert call.name == "outbound.external_messenger.message_state"
    assert call.body["sourceId"] == "src-hi"
    assert call.body["state"] == "READ"
    assert call.body["messageId"] == msg_id


async def test_no_message_state_when_unblu_handles_states(world: World) -> None:
    ch, contact, conv = await world.setup()
    msg_id = await world.visitor_says(ch, contact, conv, "hi")
    await world.agent("POST", f"/conversations/{conv}/messages/{msg_id}/read")
    await world.drain()
    assert world.recorder.calls == []


# -- conversations ---------------------------------------------------------------------------
async def test_conversation_state_depends_on_the_recipient(world: World) -> None:
    ch = (await world.channel())["id"]
    contact = (await world.contact(ch))["id"]
    queued = await world.conversation(ch, contact, "t1")
    assert queued["state"] == "QUEUED"
    assert queued["participants"] == []
    other = (await world.contact(ch, "+41790000002"))["id"]
    assigned = await world.conversation(
        ch, other, "t2", recipient={"type": "AGENT", "id": "sandbox-agent"}
    )
    assert assigned["state"] == "ACTIVE"
    assert assigned["participants"][0]["participationType"] == "ASSIGNED_AGENT"
    assert assigned["recipient"]["$_type"] == "PersonData"
    await world.agent_says(queued["id"], "taking it")
    (view,) = [c for c in await world.agent("GET", "/conversations") if c["id"] == queued["id"]]
    assert view["state"] == "ACTIVE"
    unknown = await world.v4(
        "POST",
        "/conversations/create",
        {
            "externalMessengerChannelId": ch,
            "sourceId": "t3",
            "externalParticipants": [{"externalMessengerContactId": contact}],
            "recipient": {"type": "AGENT", "id": "nobody"},
        },
        status=404,
    )
    assert "recipient.id" in unknown["errorMessage"]


async def test_duplicate_active_source_id_is_rejected_until_it_ends(world: World) -> None:
    ch, contact, conv = await world.setup()
    dup = await world.conversation(ch, contact, "thread-1", status=409)
    assert "sourceId" in dup["errorMessage"]
    await world.v4("POST", f"/conversations/{conv}/end", {"reason": "EXTERNAL_CHANNEL_CLOSED"})
    await world.v4(
        "GET",
        "/conversations/getBySourceIdAndChannelId",
        status=404,
        sourceId="thread-1",
        externalMessengerChannelId=ch,
    )
    fresh = await world.conversation(ch, contact, "thread-1")
    assert fresh["id"] != conv
    found = await world.v4(
        "GET",
        "/conversations/getBySourceIdAndChannelId",
        sourceId="thread-1",
        externalMessengerChannelId=ch,
    )
    assert found["id"] == fresh["id"]


async def test_send_message_rules(world: World) -> None:
    ch, contact, conv = await world.setup()
    other = await world.channel("other")
    other_contact = await world.contact(other["id"])
    other_conv = await world.conversation(other["id"], other_contact["id"], "x")
    body = {
        "conversationId": other_conv["id"],
        "senderExternalMessengerContactId": contact,
        "messageData": {"type": "TEXT", "text": "hi"},
    }
    wrong = await world.v4("POST", f"/externalmessengers/{ch}/sendMessage", body, status=400)
    assert wrong["$_type"] == "Error"
    await world.agent("POST", f"/conversations/{conv}/end", {})
    ended = await world.v4(
        "POST",
        f"/externalmessengers/{ch}/sendMessage",
        {**body, "conversationId": conv},
        status=409,
    )
    assert "ended" in ended["errorMessage"]
    await world.agent("POST", f"/conversations/{conv}/messages", {"text": "late"}, status=409)
    missing = await world.v4(
        "POST",
        f"/externalmessengers/{ch}/sendMessage",
        {**body, "conversationId": "nope"},
        status=404,
    )
    assert missing["statusCode"] == 404
    invalid = await world.v4(
        "POST",
        f"/externalmessengers/{ch}/sendMessage",
        {**body, "conversationId": conv, "messageData": {"type": "TEXT", "text": 5}},
        status=400,
    )
    assert "messageData.text" in invalid["errorMessage"]


# -- channels ----------------------------------------------------------------------------------
async def test_channel_update_needs_the_current_version(world: World) -> None:
    ch = await world.channel()
    first = await world.v4("POST", "/externalmessengers/update", {**ch, "description": "a"})
    assert first["version"] == 2
    stale = await world.v4(
        "POST", "/externalmessengers/update", {**ch, "description": "b"}, status=409
    )
    assert "version" in stale["errorMessage"]
    dup = await world.v4(
        "POST",
        "/externalmessengers/create",
        {**{k: v for k, v in ch.items() if k != "id"}},
        status=409,
    )
    assert "name" in dup["errorMessage"]
    missing = await world.v4("GET", "/externalmessengers/getByName", status=404, name="nope")
    assert missing["$_type"] == "Error"


# -- outage and auth ---------------------------------------------------------------------------
async def test_outage_switch_answers_503_then_recovers(world: World) -> None:
    outage = await world.agent("POST", "/outage", {"seconds": 0.2})
    assert outage["active"] is True
    down = await world.v4("GET", "/externalmessengers/getByName", status=503, name="sms")
    assert down["$_type"] == "Error"
    assert down["statusCode"] == 503
    await asyncio.sleep(0.25)
    await world.v4("GET", "/externalmessengers/getByName", status=404, name="sms")
    await world.agent("POST", "/outage", {})
    await world.v3("GET", "/externalmessengers/getByName", status=503, name="sms")
    assert (await world.agent("DELETE", "/outage"))["active"] is False
    await world.v3("GET", "/externalmessengers/getByName", status=404, name="sms")


async def test_basic_auth_is_required(world: World) -> None:
    for headers in (
        {},
        {"Authorization": "Basic " + base64.b64encode(b"admin:wrong").decode()},
        {"Authorization": "Bearer admin"},
    ):
        async with world.client.get(
            "/app/rest/v4/externalmessengers/getByName", params={"name": "x"}, headers=headers
        ) as resp:
            assert resp.status == 401
            assert resp.headers["WWW-Authenticate"].startswith("Basic")
            body = await resp.json()
            assert body["$_type"] == "Error"
            assert body["statusCode"] == 401


async def test_custom_credentials_and_agent_token(make_world: WorldFactory) -> None:
    world = await make_world(username="u", password="p", agent_token="tok")
    async with world.client.get(
        "/app/rest/v4/externalmessengers/getByName",
        params={"name": "x"},
        headers={"Authorization": "Basic " + base64.b64encode(b"u:p").decode()},
    ) as resp:
        assert resp.status == 404
    async with world.client.get("/sandbox/api/conversations") as resp:
        assert resp.status == 401
    async with world.client.get(
        "/sandbox/api/conversations", headers={"Authorization": "Bearer tok"}
    ) as resp:
        assert resp.status == 200


async def test_unknown_operations_are_error_bodies(world: World) -> None:
    missing = await world.v4("POST", "/externalmessengers/nope/whatever", {}, status=404)
    assert missing["$_type"] == "Error"
    wrong_method = await world.v4("GET", "/conversations/create", status=405)
    assert wrong_method["statusCode"] == 405


async def test_files_are_downloadable(world: World) -> None:
    ch, contact, conv = await world.setup()
    data = base64.b64encode(b"hello file").decode()
    await world.v4(
        "POST",
        f"/externalmessengers/{ch}/sendMessage",
        {
            "conversationId": conv,
            "senderExternalMessengerContactId": contact,
            "messageData": {
                "type": "FILE",
                "fileName": "a.txt",
                "fileData": f"data:text/plain;base64,{data}",
            },
        },
    )
    (msg,) = await world.agent("GET", f"/conversations/{conv}/messages")
    assert msg["mimeType"] == "text/plain"
    assert msg["fileSize"] == 10
    link = msg["downloadUrl"]
    assert link.endswith(f"/app/rest/sandbox/files/{msg['id']}")
    path = link[link.index("/app/rest/") :]
    async with world.client.get(path) as resp:
        assert resp.status == 401
    async with world.client.get(path, headers=AUTH) as resp:
        assert resp.status == 200
        assert await resp.read() == b"hello file"
    async with world.client.get(f"/sandbox/api/files/{msg['id']}") as resp:
        assert resp.status == 200
        assert await resp.read() == b"hello file"


async def test_run_sandbox_serves_on_a_free_port() -> None:
    server = await run_sandbox("127.0.0.1", 0, retry_backoff=0.01)
    try:
        assert server.port != 0
        async with (
            aiohttp.ClientSession() as session,
            session.get(
                server.base_url + "/v4/externalmessengers/getByName",
                params={"name": "x"},
                headers=AUTH,
            ) as resp,
        ):
            assert resp.status == 404
        assert isinstance(server.sandbox, Sandbox)
    finally:
        await server.close()


async def test_console_page_is_served(world: World) -> None:
    async with world.client.get("/sandbox/") as resp:
        assert resp.status == 200
        assert resp.content_type == "text/html"
        assert "/sandbox/static/console.js" in await resp.text()
    async with world.client.get("/sandbox/static/console.js") as resp:
        assert resp.status == 200
        assert resp.content_type == "text/javascript"
        assert "/sandbox/api" in await resp.text()
    async with world.client.get("/favicon.ico") as resp:
        assert resp.status == 200
        assert resp.content_type == "image/svg+xml"
    async with world.client.get("/sandbox/static/nothing.js") as resp:
        assert resp.status == 404


async def test_search_pages_and_single_conversation_channels(world: World) -> None:
    ch = (await world.channel(supportsMultipleConversationsPerContact=False))["id"]
    contacts = [(await world.contact(ch, f"+4179000000{i}"))["id"] for i in range(3)]
    for i, contact in enumerate(contacts):
        await world.conversation(ch, contact, f"t{i}")
    busy = await world.conversation(ch, contacts[0], "t9", status=409)
    assert "contact" in busy["errorMessage"]
    query = {
        "searchFilters": [
            {
                "field": "EXTERNAL_MESSENGER_CHANNEL_ID",
                "operator": {"type": "EQUALS", "value": ch},
            }
        ],
        "orderBy": [{"field": "SOURCE_ID", "order": "DESCENDING"}],
        "limit": 2,
    }
    first = await world.v4("POST", "/conversations/search", query)
    assert [c["sourceId"] for c in first["items"]] == ["t2", "t1"]
    assert first["hasMoreItems"] is True
    rest = await world.v4("POST", "/conversations/search", {**query, "offset": first["nextOffset"]})
    assert [c["sourceId"] for c in rest["items"]] == ["t0"]
    assert rest["hasMoreItems"] is False
    unsupported = await world.v4(
        "POST",
        "/conversations/search",
        {"searchFilters": [{"field": "LOCALE", "operator": {"type": "EQUALS", "value": "x"}}]},
        status=400,
    )
    assert "LOCALE" in unsupported["errorMessage"]


async def test_deleting_a_channel_ends_its_conversations(world: World) -> None:
    ch, _, conv = await world.setup()
    await world.v4("DELETE", f"/externalmessengers/{ch}/delete", status=204)
    ended = await world.v4("GET", f"/conversations/{conv}/read")
    assert ended["state"] == "ENDED"
    assert ended["endReason"] == "EXTERNAL_CHANNEL_CLOSED"
    await world.v4("DELETE", f"/externalmessengers/{ch}/delete", status=404)


async def test_v3_send_message_answers_the_action_id(world: World) -> None:
    ch = await world.v3(
        "POST", "/externalmessengers/create", {"name": "m", "webhookEndpoint": world.url}
    )
    visitor = await world.v3("POST", "/persons/createOrUpdateVirtual", {"sourceId": "ada"})
    stranger = await world.v3("POST", "/persons/createOrUpdateVirtual", {"sourceId": "bob"})
    conv = await world.v3(
        "POST",
        "/conversations/create",
        {
            "externalMessengerChannelId": ch["id"],
            "participants": [{"personId": visitor["id"], "connectedViaExternalMessenger": True}],
        },
    )
    body = {
        "externalMessengerChannelId": ch["id"],
        "conversationId": conv["id"],
        "senderPersonId": visitor["id"],
        "messageData": {"type": "TEXT", "text": "hi"},
    }
    action_id = await world.v3("POST", "/externalmessengers/sendMessage", body)
    (msg,) = await world.agent("GET", f"/conversations/{conv['id']}/messages")
    assert msg["actionId"] == action_id
    assert msg["id"] != action_id
    outsider = await world.v3(
        "POST",
        "/externalmessengers/sendMessage",
        {**body, "senderPersonId": stranger["id"]},
        status=400,
    )
    assert "senderPersonId" in outsider["errorMessage"]
