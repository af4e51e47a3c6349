"""Contract tests: every request UnbluClient sends, and every canned answer used to test it,
must match Unblu's own OpenAPI description of the operation (v4 and v3).

A small recording Unblu stand-in answers spec-shaped bodies. After running every public client
method, each recorded exchange is checked three ways: the request body against the operation's
schema, the request against the operation's declared query parameters, and every JSON key
against the properties the schema declares (the vendor schemas allow additional properties, so
plain validation alone would not catch an invented field). The canned answers are validated
with ``validate_response`` so they cannot drift from the spec either.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Callable
from typing import Any, cast

import msgspec
import pytest
from aiohttp import web

from extmsg.testing.openapi import SpecUnavailable, UnbluSpec, load_spec
from extmsg.unblu import (
    ApiVersion,
    ChannelSpec,
    Recipient,
    RecordedCall,
    UnbluClient,
    UnbluError,
    WebhookSpec,
    wire,
)
from extmsg.unblu.wire import RecipientType

ACCOUNT = "acc-1"


def spec_or_skip(version: ApiVersion) -> UnbluSpec:
    try:
        return load_spec(version)
    except SpecUnavailable as exc:
        pytest.skip(str(exc))


# ---------------------------------------------------------------------------------------------
# strict field check: no key the schema does not declare
# ---------------------------------------------------------------------------------------------


def _resolve(spec: UnbluSpec, schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        schema = spec.doc["components"]["schemas"][name]
    return schema


def _pick_option(spec: UnbluSpec, options: list[dict[str, Any]], instance: Any) -> dict[str, Any]:
    resolved = [_resolve(spec, o) for o in options]
    if isinstance(instance, dict) and "$_type" in instance:
        for option in resolved:
            tag = option.get("properties", {}).get("$_type", {})
            if instance["$_type"] in tag.get("enum", []):
                return option
    for option in resolved:
        try:
            spec.validate_schema(option, instance, "option")
        except AssertionError:
            continue
        return option
    return {}


def undeclared_fields(
    spec: UnbluSpec, schema: dict[str, Any] | None, instance: Any, path: str = "$"
) -> list[str]:
    """JSON paths of keys in ``instance`` that ``schema`` does not declare."""
    if schema is None:
        return []
    schema = _resolve(spec, schema)
    for key in ("oneOf", "anyOf"):
        if key in schema:
            return undeclared_fields(
                spec, _pick_option(spec, schema[key], instance), instance, path
            )
    if "allOf" in schema:
        merged: dict[str, Any] = {"properties": {}}
        for part in schema["allOf"]:
            merged["properties"].update(_resolve(spec, part).get("properties", {}))
        schema = merged
    found: list[str] = []
    if isinstance(instance, dict):
        props = schema.get("properties")
        extra = schema.get("additionalProperties")
        for key, value in instance.items():
            if props is not None and key in props:
                found += undeclared_fields(spec, props[key], value, f"{path}.{key}")
            elif isinstance(extra, dict):
                found += undeclared_fields(spec, extra, value, f"{path}.{key}")
            elif props is not None or extra is False:
                found.append(f"{path}.{key}")
    elif isinstance(instance, list):
        for i, item in enumerate(instance):
            found += undeclared_fields(spec, schema.get("items"), item, f"{path}[{i}]")
    return found


def request_schema(spec: UnbluSpec, method: str, path: str) -> dict[str, Any] | None:
    body = spec.operation(method, path).get("requestBody") or {}
    media = (body.get("content") or {}).get("application/json") or {}
    schema: dict[str, Any] | None = media.get("schema")
    return schema


def check_call(spec: UnbluSpec, call: RecordedCall) -> None:
    """Validate one recorded exchange against the spec (request, query, strict keys, answer)."""
    spec.validate_request(call.method, call.url_path, call.request)
    op = spec.operation(call.method, call.url_path)
    declared = {p["name"] for p in op.get("parameters", []) if p.get("in") == "query"}
    assert set(call.query) <= declared, (call.path, set(call.query) - declared)
    path_params = {p["name"] for p in op.get("parameters", []) if p.get("in") == "path"}
    template = next(o.template for o in spec._ops if o.op is op)
    assert template == call.path, (template, call.path)
    assert all("{" + p + "}" in call.path for p in path_params)
    if call.request is not None:
        extra = undeclared_fields(
            spec, request_schema(spec, call.method, call.url_path), call.request
        )
        assert not extra, f"{spec.version} {call.method} {call.path}: undeclared fields {extra}"
    assert call.status is not None
    spec.validate_response(call.method, call.url_path, call.status, call.response)


# ---------------------------------------------------------------------------------------------
# a small Unblu stand-in answering spec-shaped bodies
# ---------------------------------------------------------------------------------------------


def error_body(status: int, message: str) -> dict[str, Any]:
    return {
        "$_type": "Error",
        "statusCode": status,
        "statusDescription": "Not Found" if status == 404 else "Error",
        "errorMessage": message,
    }


class FakeUnblu:
    """Keeps channels, persons, contacts and conversations in dicts and answers like Unblu."""

    def __init__(self, version: str) -> None:
        self.version = version
        self.ids = itertools.count(1)
        self.channels: dict[str, dict[str, Any]] = {}
        self.persons: dict[str, dict[str, Any]] = {}
        self.contacts: dict[str, dict[str, Any]] = {}
        self.conversations: dict[str, dict[str, Any]] = {}
        self.messages: dict[str, list[dict[str, Any]]] = {}
        self.writes: list[str] = []
        self.log_forbidden = False
        v4 = version == "v4"
        ch = "/externalmessengers/{channelId}" if v4 else "/externalmessengers"
        self.routes: list[tuple[str, str, Callable[..., Any]]] = [
            ("GET", "/externalmessengers/getByName", self.get_by_name),
            ("POST", "/externalmessengers/create", self.create_channel),
            ("POST", "/externalmessengers/update", self.update_channel),
            ("POST", "/persons/createOrUpdateVirtual", self.upsert_person),
            ("POST", "/externalmessengercontacts/search", self.search_contacts),
            ("POST", "/externalmessengercontacts/create", self.create_contact),
            (
                "GET",
                "/externalmessengercontacts/{externalMessengerContactId}/read",
                self.read_contact,
            ),
            ("GET", "/conversations/getBySourceIdAndChannelId", self.get_by_source),
            ("POST", "/conversations/create", self.create_conversation),
            ("GET", "/conversations/{conversationId}/read", self.read_conversation),
            ("GET", "/conversations/read", self.read_conversation),
            ("POST", "/conversations/{conversationId}/end", self.end_conversation),
            ("POST", f"{ch}/sendMessage", self.send_message),
            ("POST", f"{ch}/messageSentSuccessfully", self.no_content),
            ("POST", f"{ch}/messageDelivered", self.no_content),
            ("POST", f"{ch}/messageRead", self.no_content),
            ("POST", f"{ch}/messageSendFailed", self.no_content),
            ("POST", "/externalmessengers/{channelId}/sendPing", self.send_ping),
            ("POST", "/externalmessengers/pingCustomChannel", self.no_content),
            (
                "POST",
                "/conversationhistory/{conversationId}/exportMessageLog",
                self.export_message_log,
            ),
            ("GET", "/webhookregistrations/getByName", self.webhook_by_name),
            ("POST", "/webhookregistrations/create", self.create_webhook),
            ("POST", "/webhookregistrations/update", self.update_webhook),
            ("DELETE", "/webhookregistrations/{registrationId}/delete", self.delete_webhook),
            ("DELETE", "/webhookregistrations/delete", self.delete_webhook),
        ]
        self.webhooks: dict[str, dict[str, Any]] = {}

    def new_id(self, prefix: str) -> str:
        return f"{prefix}{next(self.ids)}"

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", f"/app/rest/{self.version}/{{tail:.*}}", self.dispatch)
        return app

    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        assert request.headers.get("Authorization", "").startswith("Basic ")
        path = "/" + request.match_info["tail"]
        for method, template, handler in self.routes:
            params = _match(template, path)
            if method == request.method and params is not None:
                body = msgspec.json.decode(await request.read()) if request.can_read_body else None
                status, answer = handler(body=body, query=dict(request.query), **params)
                if status == 204:
                    return web.Response(status=204)
                return web.Response(
                    status=status,
                    body=msgspec.json.encode(answer),
                    content_type="application/json",
                )
        return web.json_response(error_body(404, f"no route {path}"), status=404)

    # -- handlers ------------------------------------------------------------------------------
    def get_by_name(self, body: Any, query: dict[str, str]) -> tuple[int, Any]:
        for channel in self.channels.values():
            if channel["name"] == query["name"]:
                return 200, channel
        return 404, error_body(404, "External messenger channel not found")

    def create_channel(self, body: Any, query: dict[str, str]) -> tuple[int, Any]:
        self.writes.append("create")
        channel = {**body, "id": self.new_id("ch"), "version": 1, "accountId": ACCOUNT}
        channel["creationTimestamp"] = channel["modificationTimestamp"] = 1700000000000
        self.channels[channel["id"]] = channel
        return 200, channel

    def update_channel(self, body: Any, query: dict[str, str]) -> tuple[int, Any]:
        self.writes.append("update")
        current = self.channels[body["id"]]
        assert body["version"] == current["version"]
        channel = {**current, **body, "version": current["version"] + 1}
        self.channels[channel["id"]] = channel
        return 200, channel

    def upsert_person(self, body: Any, query: dict[str, str]) -> tuple[int, Any]:
        for person in self.persons.values():
            if person["sourceId"] == body["sourceId"]:
                person.update(body)
                return 200, person
        person = {**body, "id": self.new_id("p"), "accountId": ACCOUNT}
        person["displayName"] = body.get("nickname") or "Visitor"
        self.persons[person["id"]] = person
        return 200, person

    def search_contacts(self, body: Any, query: dict[str, str]) -> tuple[int, Any]:
        wanted = {f["field"]: f["operator"]["value"] for f in body["searchFilters"]}
        items = [
            c
            for c in self.contacts.values()
            if c["externalMessengerChannelId"] == wanted["EXTERNAL_MESSENGER_CHANNEL_ID"]
            and c["sourceId"] == wanted["SOURCE_ID"]
        ]
        return 200, {
            "$_type": "ExternalMessengerContactResult",
            "hasMoreItems": False,
            "nextOffset": len(items),
            "items": items,
        }

    def create_contact(self, body: Any, query: dict[str, str]) -> tuple[int, Any]:
        contact = {**body, "id": self.new_id("c"), "accountId": ACCOUNT}
        contact["creationTimestamp"] = contact["modificationTimestamp"] = 1700000000000
        self.contacts[contact["id"]] = contact
        return 200, contact

    def read_contact(
        self, body: Any, query: dict[str, str], externalMessengerContactId: str
    ) -> tuple[int, Any]:
        return 200, self.contacts[externalMessengerContactId]

    def get_by_source(self, body: Any, query: dict[str, str]) -> tuple[int, Any]:
        for conv in self.conversations.values():
            if (
                conv["sourceId"] == query["sourceId"]
                and conv["externalMessengerChannelId"] == query["externalMessengerChannelId"]
                and conv["state"] != "ENDED"
            ):
                return 200, conv
        return 404, error_body(404, "No active conversation found")

    def create_conversation(self, body: Any, query: dict[str, str]) -> tuple[int, Any]:
        conv: dict[str, Any] = {
            "$_type": "ConversationData",
            "id": self.new_id("conv"),
            "accountId": ACCOUNT,
            "creationTimestamp": 1700000000000,
            "state": "QUEUED",
            "initialEngagementType": body["initialEngagementType"],
            "externalMessengerChannelId": body["externalMessengerChannelId"],
            "sourceId": body["sourceId"],
            "links": [
                {"$_type": "ConversationLink", "type": "OPEN_IN_AGENT_DESK", "url": "https://u/x"}
            ],
        }
        for key in ("topic", "locale", "metadata"):
            if key in body:
                conv[key] = body[key]
        if "recipient" in body:
            kinds = {"AGENT": "PersonData", "TEAM": "TeamData", "NAMED_AREA": "NamedAreaData"}
            rtype = body["recipient"].get("type") or body["recipient"]["$_type"]
            conv["recipient"] = {
                "$_type": kinds.get(rtype, rtype if rtype.endswith("Data") else "AccountData"),
                "id": body["recipient"]["id"],
            }
        if self.version == "v4":
            conv["participants"] = []
            conv["externalParticipants"] = [
                {
                    "$_type": "ExternalParticipantData",
                    "state": "ACTIVE",
                    "externalMessengerContactId": p["externalMessengerContactId"],
                    "personId": self.contacts[p["externalMessengerContactId"]]["personId"],
                    "sourceId": self.contacts[p["externalMessengerContactId"]]["sourceId"],
                    "participationType": p["participationType"],
                }
                for p in body["externalParticipants"]
            ]
        else:
            conv["contextPersonId"] = body["contextPersonId"]
            conv["participants"] = [
                {**p, "state": "ACTIVE", "hidden": False, "conversationStarred": False}
                for p in body["participants"]
            ]
        self.conversations[conv["id"]] = conv
        return 200, conv

    def read_conversation(
        self, body: Any, query: dict[str, str], conversationId: str | None = None
    ) -> tuple[int, Any]:
        conv_id = conversationId or query["id"]
        if conv_id not in self.conversations:
            return 404, error_body(404, "Conversation not found")
        return 200, self.conversations[conv_id]

    def end_conversation(
        self, body: Any, query: dict[str, str], conversationId: str
    ) -> tuple[int, Any]:
        conv = self.conversations[conversationId]
        conv.update(state="ENDED", endReason=body["reason"], endTimestamp=1700000001000)
        return 200, conv

    def send_message(
        self, body: Any, query: dict[str, str], channelId: str = ""
    ) -> tuple[int, Any]:
        message_id = self.new_id("m")
        entry = {
            "$_type": "ConversationHistoryMessageData",
            "id": message_id,
            "conversationId": body["conversationId"],
            "sendTimestamp": 1700000000000 + next(self.ids),
            "type": body["messageData"]["type"],
        }
        if "externalMessageId" in body:
            entry["externalMessageId"] = body["externalMessageId"]
        self.messages.setdefault(body["conversationId"], []).append(entry)
        if self.version == "v4":
            return 200, {"$_type": "SendMessageResult", "messageId": message_id}
        return 200, self.new_id("action")

    def export_message_log(
        self, body: Any, query: dict[str, str], conversationId: str
    ) -> tuple[int, Any]:
        if self.log_forbidden:
            return 403, {**error_body(403, "Forbidden"), "statusDescription": "Forbidden"}
        if conversationId not in self.conversations:
            return 404, error_body(404, "Conversation not found")
        items = sorted(
            self.messages.get(conversationId, []), key=lambda m: -int(m["sendTimestamp"])
        )
        offset, limit = body.get("offset", 0), body.get("limit", 100)
        chunk = items[offset : offset + limit]
        return 200, {
            "$_type": "MessageExportResult",
            "hasMoreItems": offset + len(chunk) < len(items),
            "nextOffset": offset + len(chunk),
            "items": chunk,
        }

    def webhook_by_name(self, body: Any, query: dict[str, str]) -> tuple[int, Any]:
        for webhook in self.webhooks.values():
            if webhook["name"] == query["name"]:
                return 200, webhook
        return 404, error_body(404, "Webhook registration not found")

    def create_webhook(self, body: Any, query: dict[str, str]) -> tuple[int, Any]:
        self.writes.append("create webhook")
        webhook = {**body, "id": self.new_id("wh"), "version": 1, "accountId": ACCOUNT}
        self.webhooks[webhook["id"]] = webhook
        return 200, webhook

    def update_webhook(self, body: Any, query: dict[str, str]) -> tuple[int, Any]:
        self.writes.append("update webhook")
        current = self.webhooks[body["id"]]
        assert body["version"] == current["version"]
        webhook = {**current, **body, "version": current["version"] + 1}
        self.webhooks[webhook["id"]] = webhook
        return 200, webhook

    def delete_webhook(
        self, body: Any, query: dict[str, str], registrationId: str | None = None
    ) -> tuple[int, Any]:
        self.writes.append("delete webhook")
        del self.webhooks[registrationId or query["id"]]
        return 204, None

    def send_ping(self, body: Any, query: dict[str, str], channelId: str) -> tuple[int, Any]:
        return 200, {"$_type": "PingResponse", "pingId": "ping-1"}

    def no_content(self, body: Any, query: dict[str, str], channelId: str = "") -> tuple[int, Any]:
        return 204, None


def _match(template: str, path: str) -> dict[str, str] | None:
    t_parts, p_parts = template.strip("/").split("/"), path.strip("/").split("/")
    if len(t_parts) != len(p_parts):
        return None
    params: dict[str, str] = {}
    for t, p in zip(t_parts, p_parts, strict=True):
        if t.startswith("{"):
            params[t[1:-1]] = p
        elif t != p:
            return None
    return params


@pytest.fixture(params=["v4", "v3"])
def version(request: pytest.FixtureRequest) -> ApiVersion:
    return cast("ApiVersion", request.param)


@pytest.fixture
def spec(version: ApiVersion) -> UnbluSpec:
    return spec_or_skip(version)


@pytest.fixture
async def unblu(
    version: ApiVersion, aiohttp_server: Any
) -> AsyncIterator[tuple[FakeUnblu, UnbluClient]]:
    fake = FakeUnblu(version)
    server = await aiohttp_server(fake.app())
    client = UnbluClient(
        str(server.make_url("/app/rest")),
        "admin",
        "s3cret",
        version,
        recorder=[],
    )
    async with client:
        yield fake, client


CHANNEL = ChannelSpec(
    name="sms-main",
    description="SMS via extmsg",
    webhook_endpoint="https://extmsg.example.com/unblu/sms-main",
    webhook_secret="hook-secret",
    outbound_supported=True,
    contact_identifier_field_name="Phone number",
    contact_identifier_field_type="PHONE_NUMBER",
    metadata={"managedBy": "extmsg"},
)


# ---------------------------------------------------------------------------------------------
# tests
# ---------------------------------------------------------------------------------------------


async def test_every_client_call_matches_the_spec(
    unblu: tuple[FakeUnblu, UnbluClient], spec: UnbluSpec, version: ApiVersion
) -> None:
    fake, client = unblu
    assert await client.get_channel_by_name("sms-main") is None
    channel = await client.provision_channel(CHANNEL)
    assert channel.id
    assert channel.webhook_api_version == version.upper()
    assert (await client.provision_channel(CHANNEL)).version == channel.version
    changed = msgspec.structs.replace(CHANNEL, description="changed")
    channel = await client.provision_channel(changed)
    assert channel.description == "changed"
    assert channel.version == 2
    channel = await client.update_channel(CHANNEL)
    assert await client.get_channel_by_name("sms-main") == channel
    assert fake.writes == ["create", "update", "update"]

    contact = await client.ensure_contact(
        channel.id, "+41790000001", name="Ada", phone="+41790000001", email="ada@example.com"
    )
    again = await client.ensure_contact(channel.id, "+41790000001", name="Ada L.")
    assert again == contact
    assert next(iter(fake.persons.values()))["nickname"] == "Ada L."
    if version == "v4":
        assert contact.contact_id is not None
        assert len(fake.contacts) == 1
        assert (await client.get_contact(contact.contact_id)).source_id == "+41790000001"
    else:
        assert contact.contact_id is None

    assert await client.find_active_conversation(channel.id, "thread-1") is None
    conv = await client.create_conversation(
        channel.id,
        "thread-1",
        contact,
        recipient=Recipient("TEAM", "team-7"),
        topic="Hello",
        locale="de-CH",
        metadata={"provider": "twilio"},
    )
    assert conv.channel_id == channel.id
    assert conv.source_id == "thread-1"
    assert not conv.ended
    assert await client.find_active_conversation(channel.id, "thread-1") == conv
    kinds: tuple[RecipientType, ...] = ("AGENT", "NAMED_AREA", "ACCOUNT")
    for kind in kinds:
        await client.create_conversation(
            channel.id,
            f"thread-{kind}",
            contact,
            recipient=Recipient(kind, "r-1"),
        )
    await client.create_conversation(channel.id, "thread-plain", contact)
    assert (await client.get_conversation(conv.id)).id == conv.id

    msg_id = await client.send_text(
        channel.id,
        conv.id,
        contact,
        "SM123",
        "Hi *there*",
        reply_to_message_id="m-0",
        external_message_id="SM123",
    )
    file_id = await client.send_file(
        channel.id,
        conv.id,
        contact,
        "MM456",
        file_name="cat.png",
        mime_type="image/png",
        data=b"\x89PNG\r\n",
        caption="a cat",
    )
    assert msg_id
    assert file_id
    assert msg_id != file_id
    await client.message_sent(channel.id, conv.id, "m-9")
    await client.message_delivered(channel.id, conv.id, "m-9")
    await client.message_delivered(channel.id, conv.id, "m-9", contact=contact)
    await client.message_read(channel.id, conv.id, "m-9", contact=contact)
    await client.message_send_failed(
        channel.id, conv.id, "m-9", terminal=True, failure_text="Number opted out"
    )
    await client.message_send_failed(
        channel.id, conv.id, "m-9", terminal=False, failure_text="Provider busy"
    )
    if version == "v4":
        assert client.can_find_posted
        found = await client.find_posted(conv.id, ["SM123", "never-sent"], since=1699999999.0)
        assert found == {"SM123": msg_id}
        assert (await client.check_message_lookup()).available is True
    else:
        assert not client.can_find_posted
    ping_id = await client.ping(channel.id)
    assert ping_id == ("ping-1" if version == "v4" else None)
    ended = await client.end_conversation(conv.id)
    assert ended.ended
    assert ended.end_reason == "EXTERNAL_CHANNEL_CLOSED"
    assert await client.find_active_conversation(channel.id, "thread-1") is None

    calls = client.recorder
    assert calls
    for call in calls:
        check_call(spec, call)
    # every public operation of the dialect was exercised
    expected = {
        "v4": {
            "/externalmessengercontacts/search",
            "/externalmessengercontacts/create",
            "/externalmessengercontacts/{externalMessengerContactId}/read",
            "/externalmessengers/{channelId}/sendMessage",
            "/externalmessengers/{channelId}/sendPing",
            "/conversations/{conversationId}/read",
            "/conversationhistory/{conversationId}/exportMessageLog",
        },
        "v3": {
            "/externalmessengers/sendMessage",
            "/externalmessengers/pingCustomChannel",
            "/conversations/read",
        },
    }[version]
    assert expected <= {c.path for c in calls}


async def test_webhook_registration_is_idempotent_and_matches_the_spec(
    unblu: tuple[FakeUnblu, UnbluClient], spec: UnbluSpec, version: ApiVersion
) -> None:
    fake, client = unblu
    wanted = WebhookSpec(
        name="sms-main conversation.ended",
        endpoint="https://extmsg.example.com/unblu/sms-main",
        events=("conversation.ended",),
        secret="hook-secret",
        description="ended texts",
    )
    created = await client.provision_webhook(wanted)
    assert created.endpoint == wanted.endpoint
    assert created.events == ["conversation.ended"]
    assert created.api_version == version.upper()
    assert created.secret == "hook-secret"
    assert (await client.provision_webhook(wanted)).version == created.version  # no write
    moved = msgspec.structs.replace(wanted, endpoint="https://new.example.com/unblu/sms-main")
    updated = await client.provision_webhook(moved)
    assert (updated.endpoint, updated.version) == (moved.endpoint, 2)
    assert await client.remove_webhook(wanted.name) is True
    assert await client.remove_webhook(wanted.name) is False
    assert fake.writes == ["create webhook", "update webhook", "delete webhook"]
    for call in client.recorder or []:
        check_call(spec, call)
    expected = {
        "v4": "/webhookregistrations/{registrationId}/delete",
        "v3": "/webhookregistrations/delete",
    }[version]
    assert expected in {c.path for c in client.recorder or []}


async def test_version_specific_fields(
    unblu: tuple[FakeUnblu, UnbluClient], spec: UnbluSpec, version: ApiVersion
) -> None:
    """v3 bodies carry none of the v4-only fields and vice versa."""
    _fake, client = unblu
    channel = await client.provision_channel(CHANNEL)
    contact = await client.ensure_contact(channel.id, "u1", name="U")
    conv = await client.create_conversation(channel.id, "t1", contact)
    await client.send_text(channel.id, conv.id, contact, "s1", "x", external_message_id="e1")
    await client.message_send_failed(channel.id, conv.id, "m1", terminal=False, failure_text="x")
    await client.message_read(channel.id, conv.id, "m1", contact=contact)
    by_path = {c.path: c.request for c in client.recorder or [] if c.request is not None}

    created = by_path["/externalmessengers/create"]
    assert created["webhookApiVersion"] == version.upper()
    assert created["messageStateHandledExternally"] is True
    assert created["webhookSecret"] == "hook-secret"
    v4_only = {"outboundSupported", "outboundTimeoutMillis", "contactIdentifierFieldName"}
    if version == "v4":
        assert v4_only <= set(created)
        send = by_path["/externalmessengers/{channelId}/sendMessage"]
        assert send["senderExternalMessengerContactId"] == contact.contact_id
        assert send["externalMessageId"] == "e1"
        assert "externalMessengerChannelId" not in send
        assert by_path["/externalmessengers/{channelId}/messageSendFailed"]["failState"] == (
            "RETRYABLE"
        )
        read = by_path["/externalmessengers/{channelId}/messageRead"]
        assert read["externalMessengerContactId"] == contact.contact_id
        create = by_path["/conversations/create"]
        assert create["externalParticipants"][0]["participationType"] == "CONTEXT_PERSON"
    else:
        assert not v4_only & set(created)
        send = by_path["/externalmessengers/sendMessage"]
        assert send["senderPersonId"] == contact.person_id
        assert send["externalMessengerChannelId"] == channel.id
        assert "externalMessageId" not in send
        failed = by_path["/externalmessengers/messageSendFailed"]
        assert failed["failedState"] == "RETRYABLE"
        assert "failState" not in failed
        assert by_path["/externalmessengers/messageRead"]["personId"] == contact.person_id
        create = by_path["/conversations/create"]
        assert create["contextPersonId"] == contact.person_id
        assert create["participants"][0]["connectedViaExternalMessenger"] is True
    for call in client.recorder or []:
        check_call(spec, call)


async def test_a_posted_message_is_found_by_its_external_id_page_by_page(
    unblu: tuple[FakeUnblu, UnbluClient], spec: UnbluSpec, version: ApiVersion
) -> None:
    fake, client = unblu
    channel = await client.provision_channel(CHANNEL)
    contact = await client.ensure_contact(channel.id, "u1", name="U")
    conv = await client.create_conversation(channel.id, "t1", contact)
    if version == "v3":
        access = await client.check_message_lookup()
        assert access.available is False
        assert "v3" in access.detail
        with pytest.raises(ValueError, match="v4"):
            await client.find_posted(conv.id, ["m1"])
        return
    text_id = await client.send_text(
        channel.id, conv.id, contact, "s1", "hi", external_message_id="m1"
    )
    file_id = await client.send_file(
        channel.id,
        conv.id,
        contact,
        "s1#1",
        file_name="a.txt",
        mime_type="text/plain",
        data=b"a",
        external_message_id="m1#1",
    )
    for n in range(3):
        await client.send_text(channel.id, conv.id, contact, f"later-{n}", "x")
    assert client.recorder is not None
    client.recorder.clear()

    found = await client.find_posted(
        conv.id, ["m1", "m1#1", "m1#2"], since=1700000000.5, page_size=2
    )
    assert found == {"m1": text_id, "m1#1": file_id}
    queries = [c.request for c in client.recorder]
    assert queries[0] == {
        "$_type": "MessageExportQuery",
        "searchFilters": [
            {
                "$_type": "SendTimestampMessageExportFilter",
                "field": "SEND_TIMESTAMP",
                "operator": {
                    "$_type": "GreaterThanTimestampOperator",
                    "type": "GREATER_THAN",
                    "value": 1700000000500,
                },
            }
        ],
        "orderBy": [
            {"$_type": "MessageExportOrderBy", "field": "SEND_TIMESTAMP", "order": "DESCENDING"}
        ],
        "limit": 2,
    }
    assert [q.get("offset") for q in queries] == [None, 2, 4]  # newest first, to the log's end
    for call in client.recorder:
        check_call(spec, call)

    client.recorder.clear()
    assert await client.find_posted(conv.id, ["m1"], page_size=1, max_pages=10) == {"m1": text_id}
    with pytest.raises(UnbluError, match="gave up"):
        await client.find_posted(conv.id, ["m1"], page_size=1, max_pages=2)

    fake.log_forbidden = True
    access = await client.check_message_lookup()
    assert access.available is False
    assert "ADMIN" in access.detail
    with pytest.raises(UnbluError) as refused:
        await client.find_posted(conv.id, ["m1"])
    assert refused.value.status == 403
    for call in client.recorder:
        check_call(spec, call)


async def test_file_is_sent_as_data_url(unblu: tuple[FakeUnblu, UnbluClient]) -> None:
    _fake, client = unblu
    channel = await client.provision_channel(CHANNEL)
    contact = await client.ensure_contact(channel.id, "u1", name=None)
    conv = await client.create_conversation(channel.id, "t1", contact)
    await client.send_file(
        channel.id, conv.id, contact, "s", file_name="a.txt", mime_type="text/plain", data=b"hi"
    )
    sent = next(c.request for c in client.recorder or [] if c.path.endswith("sendMessage"))
    assert sent["messageData"] == {
        "$_type": "FilePostMessageData",
        "type": "FILE",
        "fileName": "a.txt",
        "fileData": "data:text/plain;base64,aGk=",
        "fallbackText": "a.txt",
    }


def test_sent_structs_declare_only_spec_fields() -> None:
    """Each sent Struct's JSON names exist on the component it is named after (in v3 or v4)."""
    specs = []
    versions: tuple[ApiVersion, ...] = ("v4", "v3")
    for version in versions:
        try:
            specs.append(load_spec(version))
        except SpecUnavailable as exc:
            pytest.skip(str(exc))
    sent = [
        obj
        for obj in vars(wire).values()
        if isinstance(obj, type)
        and issubclass(obj, wire._Sent)
        and obj not in (wire._Sent, wire._Tagged)
    ]
    assert len(sent) > 20
    for cls in sent:
        info = msgspec.inspect.type_info(cls)
        assert isinstance(info, msgspec.inspect.StructType)
        component = info.tag if info.tag_field else cls.__name__
        if cls is wire.ConversationRecipientRef:
            continue  # a $_type-chosen reference, checked through requests above
        declared: set[str] = set()
        for s in specs:
            schema = s.doc["components"]["schemas"].get(component)
            if schema:
                declared |= set(schema.get("properties", {}))
        assert declared, f"{cls.__name__}: no component {component!r} in either spec"
        names = {f.encode_name for f in info.fields}
        if info.tag_field:
            names.add(info.tag_field)
        assert names <= declared, f"{cls.__name__}: {sorted(names - declared)} not in the spec"
