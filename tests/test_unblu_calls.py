"""Decoding what Unblu POSTs to a channel endpoint, and encoding our answers.

Every request body below is first validated against the vendor spec's callback schema (and
checked for keys the schema does not declare), so the decoder is tested on what Unblu can
really send. Every answer the encoders produce is validated against the callback's response
schema.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec
import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from extmsg.testing.openapi import SpecUnavailable, UnbluSpec, load_spec
from extmsg.unblu import (
    AgentMessage,
    ApiVersion,
    ChannelCall,
    CreateContact,
    CreateConversation,
    MalformedCall,
    MessageState,
    NewMessage,
    Ping,
    ReceivingContact,
    RequestedPerson,
    RequestedRecipient,
    contact_create_response,
    contact_error_response,
    contact_invalid_identifier_response,
    contact_person_mismatch_response,
    contact_use_existing_response,
    conversation_create_response,
    conversation_error_response,
    conversation_use_existing_response,
    decode_call,
    message_state_response,
    new_message_response,
    ping_response,
)


def spec_or_skip(version: ApiVersion) -> UnbluSpec:
    try:
        return load_spec(version)
    except SpecUnavailable as exc:
        pytest.skip(str(exc))


def _resolve(spec: UnbluSpec, schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = spec.doc["components"]["schemas"][schema["$ref"].rsplit("/", 1)[-1]]
    return schema


def undeclared_fields(
    spec: UnbluSpec, schema: dict[str, Any], instance: Any, at: str = "$"
) -> list[str]:
    """Keys of ``instance`` that ``schema`` does not declare (``oneOf`` picked by ``$_type``)."""
    schema = _resolve(spec, schema)
    if "oneOf" in schema:
        options = [_resolve(spec, o) for o in schema["oneOf"]]
        tag = instance.get("$_type") if isinstance(instance, dict) else None
        chosen = [
            o for o in options if tag in o.get("properties", {}).get("$_type", {}).get("enum", [])
        ]
        return undeclared_fields(spec, chosen[0], instance, at) if chosen else []
    found: list[str] = []
    if isinstance(instance, dict):
        props = schema.get("properties")
        extra = schema.get("additionalProperties")
        for key, value in instance.items():
            if props is not None and key in props:
                found += undeclared_fields(spec, props[key], value, f"{at}.{key}")
            elif isinstance(extra, dict):
                found += undeclared_fields(spec, extra, value, f"{at}.{key}")
            elif props is not None:
                found.append(f"{at}.{key}")
    elif isinstance(instance, list) and "items" in schema:
        for i, item in enumerate(instance):
            found += undeclared_fields(spec, schema["items"], item, f"{at}[{i}]")
    return found


def check_request(spec: UnbluSpec, name: str, body: dict[str, Any]) -> None:
    spec.validate_callback_request(name, body)
    schema = spec.callback(name)["requestBody"]["content"]["application/json"]["schema"]
    assert not undeclared_fields(spec, schema, body), undeclared_fields(spec, schema, body)


def check_response(spec: UnbluSpec, name: str, raw: bytes) -> dict[str, Any]:
    body = msgspec.json.decode(raw)
    spec.validate_callback_response(name, body)
    schema = spec.callback(name)["responses"]["200"]["content"]["application/json"]["schema"]
    assert not undeclared_fields(spec, schema, body), undeclared_fields(spec, schema, body)
    assert isinstance(body, dict)
    return body


# ---------------------------------------------------------------------------------------------
# bodies Unblu sends
# ---------------------------------------------------------------------------------------------

AGENT = {
    "$_type": "PersonData",
    "id": "p-agent",
    "accountId": "acc",
    "personSource": "USER_DB",
    "displayName": "Agent Smith",
    "personType": "AGENT",
}
CONTACT = {
    "$_type": "ExternalMessengerContact",
    "id": "c1",
    "accountId": "acc",
    "name": "Ada",
    "externalMessengerChannelId": "ch1",
    "sourceId": "+41790000001",
    "personId": "p-ada",
}


def text_message(version: str, **extra: Any) -> dict[str, Any]:
    message = {
        "$_type": "TextMessageData",
        "id": "m1",
        "conversationId": "conv1",
        "externalMessengerChannelId": "ch1",
        "accountId": "acc",
        "senderPerson": AGENT,
        "serverTimestamp": 1700000000000,
        "sendTimestamp": 1700000000000,
        "type": "TEXT",
        "fallbackText": "Hello there",
        "actionId": "m1",
        "internal": False,
        "replyToMessageId": "m0",
        "text": "Hello **there**",
        "textType": "MARKDOWN",
    }
    if version == "v4":
        message["externalMessageId"] = "ext-0"
    return {**message, **extra}


def file_message(version: str) -> dict[str, Any]:
    message: dict[str, Any] = {
        "$_type": "FileMessageData",
        "id": "m2",
        "conversationId": "conv1",
        "externalMessengerChannelId": "ch1",
        "senderPerson": AGENT,
        "type": "FILE",
        "fallbackText": "cat.png",
        "internal": False,
        "fileName": "cat.png",
        "caption": "a cat",
        "mimeType": "image/png",
        "fileStatus": "COMPLETED",
        "totalSize": 1234,
        "uploadedSize": 1234,
    }
    if version == "v4":
        message["downloadLinks"] = [
            {"$_type": "DownloadLink", "type": "AGENT_DESK", "url": "https://u/desk/f1"},
            {"$_type": "DownloadLink", "type": "WEB_API", "url": "https://u/rest/v4/f1"},
        ]
    else:
        message["downloadLink"] = "https://u/rest/v3/f1"
        message["agentDeskDownloadLink"] = "https://u/desk/f1"
    return message


def v4_request(service: str, type_: str, **fields: Any) -> dict[str, Any]:
    return {"$_type": type_, "accountId": "acc", "serviceName": service, **fields}


def v3_event(event: str, type_: str, **fields: Any) -> dict[str, Any]:
    return {
        "$_type": type_,
        "timestamp": 1700000000000,
        "eventType": event,
        "accountId": "acc",
        **fields,
    }


AGENT_TEXT = AgentMessage(
    id="m1",
    conversation_id="conv1",
    channel_id="ch1",
    type="TEXT",
    text="Hello **there**",
    fallback_text="Hello there",
    sender_person_id="p-agent",
    sender_display_name="Agent Smith",
    sender_person_type="AGENT",
    reply_to_message_id="m0",
    external_message_id="ext-0",
)
AGENT_FILE = AgentMessage(
    id="m2",
    conversation_id="conv1",
    channel_id="ch1",
    type="FILE",
    fallback_text="cat.png",
    file_name="cat.png",
    mime_type="image/png",
    caption="a cat",
    download_url="https://u/rest/v4/f1",
    sender_person_id="p-agent",
    sender_display_name="Agent Smith",
    sender_person_type="AGENT",
)
RECEIVER = ReceivingContact(
    id="c1", source_id="+41790000001", person_id="p-ada", name="Ada", channel_id="ch1"
)

# (spec version, callback name, headers, body, expected call)
CASES: list[tuple[ApiVersion, str, dict[str, str], dict[str, Any], ChannelCall]] = [
    (
        "v4",
        "outbound.ping",
        {"X-Unblu-Service-Name": "outbound.ping"},
        v4_request("outbound.ping", "PingRequest", pingId="ping-7"),
        Ping(service="outbound.ping", account_id="acc", ping_id="ping-7"),
    ),
    (
        "v4",
        "outbound.external_messenger.new_message",
        {"x-unblu-service-name": "outbound.external_messenger.new_message"},
        v4_request(
            "outbound.external_messenger.new_message",
            "ExternalMessengerNewMessageRequest",
            conversationMessage=text_message("v4"),
            receivingContacts=[CONTACT],
        ),
        NewMessage(
            service="outbound.external_messenger.new_message",
            account_id="acc",
            message=AGENT_TEXT,
            receiving_contacts=[RECEIVER],
        ),
    ),
    (
        "v4",
        "outbound.external_messenger.new_message",
        {"x-unblu-service-name": "outbound.external_messenger.new_message"},
        v4_request(
            "outbound.external_messenger.new_message",
            "ExternalMessengerNewMessageRequest",
            conversationMessage=file_message("v4"),
            receivingContacts=[CONTACT],
        ),
        NewMessage(
            service="outbound.external_messenger.new_message",
            account_id="acc",
            message=AGENT_FILE,
            receiving_contacts=[RECEIVER],
        ),
    ),
    (
        "v4",
        "outbound.external_messenger.message_state",
        {"x-unblu-service-name": "outbound.external_messenger.message_state"},
        v4_request(
            "outbound.external_messenger.message_state",
            "ExternalMessengerMessageStateRequest",
            messageId="m5",
            state="READ",
            sourceId="SM123",
            externalMessengerChannelId="ch1",
            conversationId="conv1",
        ),
        MessageState(
            service="outbound.external_messenger.message_state",
            account_id="acc",
            message_id="m5",
            state="READ",
            source_id="SM123",
            channel_id="ch1",
            conversation_id="conv1",
        ),
    ),
    (
        "v4",
        "outbound.external_messenger.create_contact",
        {"x-unblu-service-name": "outbound.external_messenger.create_contact"},
        v4_request(
            "outbound.external_messenger.create_contact",
            "ExternalMessengerCreateContactRequest",
            externalMessengerChannelId="ch1",
            personData={
                "$_type": "PersonData",
                "id": "p-bob",
                "personSource": "VIRTUAL",
                "sourceId": "crm-17",
                "firstName": "Bob",
                "lastName": "Builder",
                "displayName": "Bob Builder",
                "personType": "VISITOR",
                "email": "bob@example.com",
                "phone": "+41790000002",
            },
            contactIdentifier="+41790000002",
            description="mobile",
        ),
        CreateContact(
            service="outbound.external_messenger.create_contact",
            account_id="acc",
            channel_id="ch1",
            person=RequestedPerson(
                id="p-bob",
                display_name="Bob Builder",
                first_name="Bob",
                last_name="Builder",
                email="bob@example.com",
                phone="+41790000002",
                person_type="VISITOR",
                source_id="crm-17",
            ),
            contact_identifier="+41790000002",
            description="mobile",
        ),
    ),
    (
        "v4",
        "outbound.external_messenger.create_conversation",
        {"x-unblu-service-name": "outbound.external_messenger.create_conversation"},
        v4_request(
            "outbound.external_messenger.create_conversation",
            "ExternalMessengerCreateConversationRequest",
            creationData={
                "$_type": "ConversationCreationData",
                "topic": "Your order",
                "recipient": {
                    "$_type": "ConversationCreationRecipientData",
                    "type": "AGENT",
                    "id": "p-agent",
                },
                "participants": [
                    {
                        "$_type": "ConversationCreationParticipantData",
                        "personId": "p-agent",
                        "participationType": "ASSIGNED_AGENT",
                    }
                ],
                "externalParticipants": [
                    {
                        "$_type": "ConversationCreationExternalParticipantData",
                        "externalMessengerContactId": "c1",
                        "participationType": "CONTEXT_PERSON",
                    }
                ],
                "initialEngagementType": "CHAT_INVITE",
                "locale": "en",
                "externalMessengerChannelId": "ch1",
                "metadata": {"origin": "desk"},
            },
        ),
        CreateConversation(
            service="outbound.external_messenger.create_conversation",
            account_id="acc",
            channel_id="ch1",
            contact_ids=["c1"],
            participant_person_ids=["p-agent"],
            topic="Your order",
            locale="en",
            engagement_type="CHAT_INVITE",
            recipient=RequestedRecipient("AGENT", "p-agent"),
            metadata={"origin": "desk"},
        ),
    ),
    (
        "v3",
        "external_messenger.new_message",
        {},
        v3_event(
            "external_messenger.new_message",
            "ExternalMessengerNewMessageEvent",
            conversationMessage=text_message("v3"),
        ),
        NewMessage(
            service="external_messenger.new_message",
            account_id="acc",
            message=msgspec.structs.replace(AGENT_TEXT, external_message_id=None),
        ),
    ),
    (
        "v3",
        "external_messenger.new_message",
        {"X-Unblu-Event": "external_messenger.new_message"},
        v3_event(
            "external_messenger.new_message",
            "ExternalMessengerNewMessageEvent",
            conversationMessage=file_message("v3"),
        ),
        NewMessage(
            service="external_messenger.new_message",
            account_id="acc",
            message=msgspec.structs.replace(AGENT_FILE, download_url="https://u/rest/v3/f1"),
        ),
    ),
    (
        "v3",
        "external_messenger.message_state",
        {},
        v3_event(
            "external_messenger.message_state",
            "ExternalMessengerMessageStateEvent",
            messageId="m5",
            state="DELIVERED",
            sourceId="SM123",
            externalMessengerChannelId="ch1",
            conversationId="conv1",
        ),
        MessageState(
            service="external_messenger.message_state",
            account_id="acc",
            message_id="m5",
            state="DELIVERED",
            source_id="SM123",
            channel_id="ch1",
            conversation_id="conv1",
        ),
    ),
    (
        "v3",
        "ping",
        {"x-unblu-event": "ping"},
        v3_event(
            "ping",
            "WebhookPingEvent",
            webhookConfiguration={
                "$_type": "WebhookRegistration",
                "name": "sms",
                "apiVersion": "V3",
            },
        ),
        Ping(service="ping", account_id="acc"),
    ),
    (
        "v4",
        "external_messenger.message_state",
        {},
        v3_event(
            "external_messenger.message_state",
            "ExternalMessengerMessageStateEvent",
            messageId="m6",
            state="READ",
        ),
        MessageState(
            service="external_messenger.message_state",
            account_id="acc",
            message_id="m6",
            state="READ",
        ),
    ),
]


@pytest.mark.parametrize(
    ("version", "name", "headers", "body", "expected"),
    CASES,
    ids=[f"{c[0]}-{c[1]}-{i}" for i, c in enumerate(CASES)],
)
def test_decode(
    version: ApiVersion,
    name: str,
    headers: dict[str, str],
    body: dict[str, Any],
    expected: ChannelCall,
) -> None:
    call = decode_call(headers, msgspec.json.encode(body))
    assert call == expected
    assert call.expects_response == name.startswith("outbound.")


@pytest.mark.parametrize(
    ("version", "name", "body"),
    [(c[0], c[1], c[3]) for c in CASES],
    ids=[f"{c[0]}-{c[1]}-{i}" for i, c in enumerate(CASES)],
)
def test_decoded_bodies_match_the_spec(
    version: ApiVersion, name: str, body: dict[str, Any]
) -> None:
    """The bodies above are what Unblu may send: valid, and with no undeclared key."""
    check_request(spec_or_skip(version), name, body)


def test_internal_messages_are_flagged() -> None:
    body = v4_request(
        "outbound.external_messenger.new_message",
        "ExternalMessengerNewMessageRequest",
        conversationMessage=text_message("v4", internal=True),
    )
    call = decode_call(
        {"x-unblu-service-name": "outbound.external_messenger.new_message"},
        msgspec.json.encode(body),
    )
    assert isinstance(call, NewMessage)
    assert call.message.internal
    assert not call.receiving_contacts


def test_unknown_message_types_and_fields_decode() -> None:
    """Additive changes on the server (new message types, new fields) do not break decoding."""
    message = {**text_message("v4"), "type": "SOMETHING_NEW", "brandNewField": {"x": 1}}
    body = {"$_type": "FutureRequest", "conversationMessage": message, "extra": [1, 2]}
    call = decode_call(
        {"x-unblu-service-name": "outbound.external_messenger.new_message"},
        msgspec.json.encode(body),
    )
    assert isinstance(call, NewMessage)
    assert call.message.type == "SOMETHING_NEW"


@pytest.mark.parametrize("multi", [False, True])
def test_the_last_of_a_repeated_header_counts_whatever_its_case(multi: bool) -> None:
    """aiohttp's headers (a CIMultiDictProxy) answer as a plain mapping of the same does."""
    body = msgspec.json.encode({"pingId": "p1", "accountId": "a"})
    pairs = [
        ("X-Unblu-Service-Name", "outbound.bogus"),
        ("x-unblu-SERVICE-name", "outbound.ping"),
    ]
    headers: Any = CIMultiDictProxy(CIMultiDict(pairs)) if multi else dict(pairs)
    call = decode_call(headers, body)
    assert call == Ping(service="outbound.ping", account_id="a", ping_id="p1")
    event = msgspec.json.encode({"accountId": "a"})
    pairs = [("X-UNBLU-EVENT", "nonsense"), ("X-Unblu-Event", "external_messenger.message_state")]
    headers = CIMultiDictProxy(CIMultiDict(pairs)) if multi else dict(pairs)
    with pytest.raises(MalformedCall, match="`messageId`"):  # the message_state event's body
        decode_call(headers, event)


NEW_MESSAGE = {"x-unblu-service-name": "outbound.external_messenger.new_message"}
STATE = {"x-unblu-service-name": "outbound.external_messenger.message_state"}


@pytest.mark.parametrize(
    ("headers", "body", "message"),
    [
        (NEW_MESSAGE, b"{not json", "not valid JSON"),
        (NEW_MESSAGE, b"", "empty body"),
        (NEW_MESSAGE, b"[]", "Expected `object`, got `array`"),
        (NEW_MESSAGE, b'{"accountId": "a"}', "missing required field `conversationMessage`"),
        (
            NEW_MESSAGE,
            b'{"conversationMessage": {"conversationId": "c", "type": "TEXT"}}',
            "missing required field `id` - at `$.conversationMessage`",
        ),
        (
            NEW_MESSAGE,
            b'{"conversationMessage": {"id": "m", "conversationId": "c", "type": "TEXT",'
            b' "senderPerson": {"displayName": 5}}}',
            "at `$.conversationMessage.senderPerson.displayName`",
        ),
        (STATE, b'{"messageId": "m", "state": 3}', "Expected `str`, got `int` - at `$.state`"),
        ({"x-unblu-service-name": "outbound.bogus"}, b"{}", "unknown x-unblu-service-name"),
        ({}, b'{"accountId": "a"}', "no x-unblu-service-name header"),
        ({}, b'{"eventType": "conversation.created"}', "unknown event type 'conversation.created'"),
        ({"x-unblu-event": "external_messenger.message_state"}, b"{}", "`messageId`"),
        ({}, b"\xff\xfe", "not valid JSON"),
    ],
)
def test_malformed(headers: dict[str, str], body: bytes, message: str) -> None:
    with pytest.raises(MalformedCall) as info:
        decode_call(headers, body)
    assert message in str(info.value)
    assert isinstance(info.value, ValueError)


# ---------------------------------------------------------------------------------------------
# our answers
# ---------------------------------------------------------------------------------------------

ENCODERS: list[tuple[ApiVersion, str, Callable[[], bytes], dict[str, Any]]] = [
    (
        "v4",
        "outbound.ping",
        lambda: ping_response("ping-7"),
        {"$_type": "PingResponse", "pingId": "ping-7"},
    ),
    (
        "v3",
        "outbound.ping",
        lambda: ping_response("ping-7", api_version="v3"),
        {"$_type": "OutboundPingResponse", "pingId": "ping-7"},
    ),
    (
        "v4",
        "outbound.external_messenger.new_message",
        lambda: new_message_response("SM999"),
        {"$_type": "ExternalMessengerNewMessageResponse", "externalMessageId": "SM999"},
    ),
    (
        "v4",
        "outbound.external_messenger.message_state",
        message_state_response,
        {"$_type": "ExternalMessengerMessageStateResponse"},
    ),
    (
        "v4",
        "outbound.external_messenger.create_contact",
        lambda: contact_create_response(name="Bob", source_id="+41790000002", description="mobile"),
        {
            "$_type": "ExternalMessengerCreateContactCreateResponse",
            "type": "CREATE",
            "name": "Bob",
            "sourceId": "+41790000002",
            "description": "mobile",
        },
    ),
    (
        "v4",
        "outbound.external_messenger.create_contact",
        lambda: contact_use_existing_response("c1"),
        {
            "$_type": "ExternalMessengerCreateContactUseExistingResponse",
            "type": "USE_EXISTING",
            "externalMessengerContactId": "c1",
        },
    ),
    (
        "v4",
        "outbound.external_messenger.create_contact",
        lambda: contact_invalid_identifier_response("Not a phone number"),
        {
            "$_type": "ExternalMessengerCreateContactInvalidContactIdentifierResponse",
            "type": "INVALID_CONTACT_IDENTIFIER",
            "errorText": "Not a phone number",
        },
    ),
    (
        "v4",
        "outbound.external_messenger.create_contact",
        lambda: contact_person_mismatch_response("Belongs to someone else"),
        {
            "$_type": "ExternalMessengerCreateContactContactToPersonMismatchResponse",
            "type": "CONTACT_TO_PERSON_MISMATCH",
            "errorText": "Belongs to someone else",
        },
    ),
    (
        "v4",
        "outbound.external_messenger.create_contact",
        lambda: contact_error_response("Provider down"),
        {
            "$_type": "ExternalMessengerCreateContactErrorResponse",
            "type": "ERROR",
            "errorText": "Provider down",
        },
    ),
    (
        "v4",
        "outbound.external_messenger.create_conversation",
        lambda: conversation_create_response(
            source_id="thread-9", source_url="https://crm/9", metadata={"k": "v"}
        ),
        {
            "$_type": "ExternalMessengerCreateConversationCreateResponse",
            "type": "CREATE",
            "sourceId": "thread-9",
            "sourceUrl": "https://crm/9",
            "metadata": {"k": "v"},
        },
    ),
    (
        "v4",
        "outbound.external_messenger.create_conversation",
        lambda: conversation_use_existing_response("conv1"),
        {
            "$_type": "ExternalMessengerCreateConversationUseExistingResponse",
            "type": "USE_EXISTING",
            "conversationId": "conv1",
        },
    ),
    (
        "v4",
        "outbound.external_messenger.create_conversation",
        lambda: conversation_error_response("No WhatsApp template for this contact"),
        {
            "$_type": "ExternalMessengerCreateConversationErrorResponse",
            "type": "ERROR",
            "errorText": "No WhatsApp template for this contact",
        },
    ),
]


@pytest.mark.parametrize(
    ("version", "name", "encode", "expected"),
    ENCODERS,
    ids=[f"{e[0]}-{e[3]['$_type']}" for e in ENCODERS],
)
def test_encoders(
    version: ApiVersion, name: str, encode: Callable[[], bytes], expected: dict[str, Any]
) -> None:
    raw = encode()
    assert isinstance(raw, bytes)
    assert msgspec.json.decode(raw) == expected


@pytest.mark.parametrize(
    ("version", "name", "encode"),
    [(e[0], e[1], e[2]) for e in ENCODERS],
    ids=[f"{e[0]}-{e[3]['$_type']}" for e in ENCODERS],
)
def test_encoders_match_the_spec(
    version: ApiVersion, name: str, encode: Callable[[], bytes]
) -> None:
    check_response(spec_or_skip(version), name, encode())


def test_minimal_answers_omit_absent_fields() -> None:
    assert msgspec.json.decode(new_message_response(None)) == {
        "$_type": "ExternalMessengerNewMessageResponse"
    }
    assert msgspec.json.decode(ping_response(None)) == {"$_type": "PingResponse"}
    assert msgspec.json.decode(contact_create_response(name=None, source_id="s")) == {
        "$_type": "ExternalMessengerCreateContactCreateResponse",
        "type": "CREATE",
        "sourceId": "s",
    }
