"""Decode what Unblu POSTs to a channel endpoint, and encode our answers.

Two families reach a channel's ``webhookEndpoint``:

* **v4 outbound requests** (Unblu 8, channel ``webhookApiVersion`` V4), named by the
  ``x-unblu-service-name`` header: ``outbound.ping``, ``outbound.external_messenger.new_message``,
  ``….message_state``, ``….create_contact``, ``….create_conversation``. Each expects a JSON answer
  (see the encoders below).
* **v3 webhook events** (Unblu 6/7), named by the body's ``eventType`` (or the ``x-unblu-event``
  header): ``external_messenger.new_message``, ``external_messenger.message_state``, ``ping``.
  Any 200 acknowledges them.
* **``conversation.ended``** (``ConversationEndedEvent``, v3 and v4), from the webhook
  registration extmsg keeps for a channel with an ``ended_text`` (see
  :mod:`extmsg.unblu.provisioning`); any 200 acknowledges it.

:func:`decode_call` is independent of the web framework; it checks no signature (see
:mod:`extmsg.unblu.signing`) and raises :class:`MalformedCall` (answer 400) with a message that
says what is wrong. Bodies go through :func:`extmsg.jsonsafe.decode`: nesting deeper than
its limit is refused, and half a UTF-16 surrogate pair (``"\\ud800"``, which Java may write)
is read as U+FFFD rather than refusing the agent's message.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal, TypeVar

import msgspec
from multidict import CIMultiDict, CIMultiDictProxy

from extmsg import jsonsafe
from extmsg.unblu import wire

__all__ = [
    "EVENT_HEADER",
    "SERVICE_HEADER",
    "AgentMessage",
    "ChannelCall",
    "ConversationEnded",
    "CreateContact",
    "CreateConversation",
    "MalformedCall",
    "MessageState",
    "NewMessage",
    "Ping",
    "ReceivingContact",
    "RequestedPerson",
    "RequestedRecipient",
    "contact_create_response",
    "contact_error_response",
    "contact_invalid_identifier_response",
    "contact_person_mismatch_response",
    "contact_use_existing_response",
    "conversation_create_response",
    "conversation_error_response",
    "conversation_use_existing_response",
    "decode_call",
    "message_state_response",
    "new_message_response",
    "ping_response",
]

SERVICE_HEADER = "x-unblu-service-name"
EVENT_HEADER = "x-unblu-event"

PING = "outbound.ping"
NEW_MESSAGE = "outbound.external_messenger.new_message"
MESSAGE_STATE = "outbound.external_messenger.message_state"
CREATE_CONTACT = "outbound.external_messenger.create_contact"
CREATE_CONVERSATION = "outbound.external_messenger.create_conversation"
EVENT_NEW_MESSAGE = "external_messenger.new_message"
EVENT_MESSAGE_STATE = "external_messenger.message_state"
EVENT_PING = "ping"
EVENT_CONVERSATION_ENDED = "conversation.ended"


class MalformedCall(ValueError):
    """The call cannot be understood: bad JSON, unknown service or event, missing field."""


class _Call(msgspec.Struct, frozen=True, kw_only=True):
    """Common part of every decoded call."""

    service: str
    """The ``x-unblu-service-name`` (v4) or event type (v3) as received."""
    account_id: str | None = None

    @property
    def expects_response(self) -> bool:
        """True for v4 outbound requests, which must be answered with a JSON body."""
        return self.service.startswith("outbound.")


class Ping(_Call, frozen=True, kw_only=True):
    """``outbound.ping`` (echo ``ping_id`` with :func:`ping_response`) or v3 ``ping``."""

    ping_id: str | None = None


class AgentMessage(msgspec.Struct, frozen=True, kw_only=True):
    """A message written on the Unblu side, flattened to what a messenger needs."""

    id: str
    conversation_id: str
    channel_id: str | None = None
    type: str
    text: str | None = None
    fallback_text: str | None = None
    file_name: str | None = None
    mime_type: str | None = None
    download_url: str | None = None
    caption: str | None = None
    sender_person_id: str | None = None
    sender_display_name: str | None = None
    sender_person_type: str | None = None
    internal: bool = False
    source_id: str | None = None
    reply_to_message_id: str | None = None
    external_message_id: str | None = None


class ReceivingContact(msgspec.Struct, frozen=True, kw_only=True):
    """An ExternalMessengerContact the message is for (v4 only)."""

    id: str | None = None
    source_id: str | None = None
    person_id: str | None = None
    name: str | None = None
    channel_id: str | None = None


class NewMessage(_Call, frozen=True, kw_only=True):
    """An agent (or bot/system) message to deliver to the messenger side.

    ``receiving_contacts`` is empty for v3 events, which carry no recipient: resolve it from
    the conversation.
    """

    message: AgentMessage
    receiving_contacts: list[ReceivingContact] = []


class MessageState(_Call, frozen=True, kw_only=True):
    """A message that came from the messenger was delivered to / read by the agent side.

    ``source_id`` is the id extmsg gave the message in sendMessage (the provider's id).
    """

    message_id: str
    state: str
    source_id: str | None = None
    channel_id: str | None = None
    conversation_id: str | None = None


class RequestedPerson(msgspec.Struct, frozen=True, kw_only=True):
    """The Unblu person an agent wants to reach through the channel."""

    id: str | None = None
    display_name: str | None = None
    first_name: str | None = None
    last_name: str | None = None
    email: str | None = None
    phone: str | None = None
    person_type: str | None = None
    source_id: str | None = None


class CreateContact(_Call, frozen=True, kw_only=True):
    """An agent asks for an ExternalMessengerContact for ``person`` (outbound conversation).

    Answer with one of the ``contact_*_response`` encoders.
    """

    channel_id: str | None = None
    person: RequestedPerson | None = None
    contact_identifier: str | None = None
    description: str | None = None


class RequestedRecipient(msgspec.Struct, frozen=True):
    type: str | None = None
    id: str | None = None


class CreateConversation(_Call, frozen=True, kw_only=True):
    """An agent starts a conversation on the channel. Answer with one of the
    ``conversation_*_response`` encoders."""

    channel_id: str | None = None
    source_id: str | None = None
    contact_ids: list[str] = []
    participant_person_ids: list[str] = []
    topic: str | None = None
    locale: str | None = None
    engagement_type: str | None = None
    recipient: RequestedRecipient | None = None
    metadata: dict[str, str] | None = None


class ConversationEnded(_Call, frozen=True, kw_only=True):
    """A conversation ended (all participants finished offboarding). Sent for every
    conversation of the account: ``channel_id`` says whether it is one of a channel's."""

    conversation_id: str
    channel_id: str | None = None
    source_id: str | None = None
    end_reason: str | None = None


ChannelCall = (
    Ping | NewMessage | MessageState | CreateContact | CreateConversation | ConversationEnded
)

_SERVICES = {PING, NEW_MESSAGE, MESSAGE_STATE, CREATE_CONTACT, CREATE_CONVERSATION}
_EVENTS = {EVENT_NEW_MESSAGE, EVENT_MESSAGE_STATE, EVENT_PING, EVENT_CONVERSATION_ENDED}


def decode_call(headers: Mapping[str, str], body: bytes) -> ChannelCall:
    """Decode one POST to a channel endpoint into a typed call.

    ``headers`` may be any mapping (header names are compared case-insensitively). Raises
    :class:`MalformedCall` naming the problem.
    """
    service = (_header(headers, SERVICE_HEADER) or "").strip()
    if service:
        if service not in _SERVICES:
            known = ", ".join(sorted(_SERVICES))
            raise MalformedCall(f"unknown {SERVICE_HEADER} {service!r} (expected one of {known})")
        return _decode_service(service, body)

    envelope = _decode(body, wire.EventEnvelope, "webhook event")
    event = (envelope.event_type or _header(headers, EVENT_HEADER) or "").strip()
    if not event:
        raise MalformedCall(
            f"no {SERVICE_HEADER} header, no {EVENT_HEADER} header and no eventType in the body"
        )
    if event not in _EVENTS:
        known = ", ".join(sorted(_EVENTS))
        raise MalformedCall(f"unknown event type {event!r} (expected one of {known})")
    if event == EVENT_PING:
        ping = _decode(body, wire.PingBody, event)
        return Ping(service=event, account_id=ping.account_id, ping_id=ping.ping_id)
    if event == EVENT_NEW_MESSAGE:
        return _new_message(event, _decode(body, wire.NewMessageBody, event))
    if event == EVENT_CONVERSATION_ENDED:
        ended = _decode(body, wire.ConversationEndedBody, event)
        return ConversationEnded(
            service=event,
            account_id=ended.account_id,
            conversation_id=ended.conversation.id,
            channel_id=ended.conversation.channel_id,
            source_id=ended.conversation.source_id,
            end_reason=ended.end_reason or ended.conversation.end_reason,
        )
    return _message_state(event, _decode(body, wire.MessageStateBody, event))


def _header(headers: Mapping[str, str], name: str) -> str | None:
    """The last value of the header ``name`` (lower case), its name compared case-insensitively.
    aiohttp's headers are looked up as they are (a copy of them all costs on every call)."""
    if isinstance(headers, CIMultiDictProxy | CIMultiDict):
        values = headers.getall(name, None)
        return values[-1] if values else None
    found = None
    for key, value in headers.items():
        if key.lower() == name:
            found = value
    return found


def _decode_service(service: str, body: bytes) -> ChannelCall:
    if service == PING:
        ping = _decode(body, wire.PingBody, service)
        return Ping(service=service, account_id=ping.account_id, ping_id=ping.ping_id)
    if service == NEW_MESSAGE:
        return _new_message(service, _decode(body, wire.NewMessageBody, service))
    if service == MESSAGE_STATE:
        return _message_state(service, _decode(body, wire.MessageStateBody, service))
    if service == CREATE_CONTACT:
        req = _decode(body, wire.CreateContactRequest, service)
        person = req.person_data
        return CreateContact(
            service=service,
            account_id=req.account_id,
            channel_id=req.external_messenger_channel_id,
            person=(
                RequestedPerson(
                    id=person.id,
                    display_name=person.display_name,
                    first_name=person.first_name,
                    last_name=person.last_name,
                    email=person.email,
                    phone=person.phone,
                    person_type=person.person_type,
                    source_id=person.source_id,
                )
                if person is not None
                else None
            ),
            contact_identifier=req.contact_identifier,
            description=req.description,
        )
    conv = _decode(body, wire.CreateConversationRequest, service)
    data = conv.creation_data
    return CreateConversation(
        service=service,
        account_id=conv.account_id,
        channel_id=data.external_messenger_channel_id,
        source_id=data.source_id,
        contact_ids=[
            p.external_messenger_contact_id
            for p in data.external_participants or []
            if p.external_messenger_contact_id
        ],
        participant_person_ids=[p.person_id for p in data.participants or [] if p.person_id],
        topic=data.topic,
        locale=data.locale,
        engagement_type=data.initial_engagement_type,
        recipient=(
            RequestedRecipient(data.recipient.type, data.recipient.id) if data.recipient else None
        ),
        metadata=data.metadata,
    )


def _new_message(service: str, body: wire.NewMessageBody) -> NewMessage:
    msg = body.conversation_message
    sender = msg.sender_person
    web_links = [x.url for x in msg.download_links or [] if x.url and x.type == "WEB_API"]
    download_url = web_links[0] if web_links else msg.download_link
    message = AgentMessage(
        id=msg.id,
        conversation_id=msg.conversation_id,
        channel_id=msg.external_messenger_channel_id,
        type=msg.type,
        text=msg.text,
        fallback_text=msg.fallback_text,
        file_name=msg.file_name,
        mime_type=msg.mime_type,
        download_url=download_url,
        caption=msg.caption,
        sender_person_id=sender.id if sender else None,
        sender_display_name=sender.display_name if sender else None,
        sender_person_type=sender.person_type if sender else None,
        internal=bool(msg.internal),
        source_id=msg.source_id,
        reply_to_message_id=msg.reply_to_message_id,
        external_message_id=msg.external_message_id,
    )
    contacts = [
        ReceivingContact(
            id=c.id,
            source_id=c.source_id,
            person_id=c.person_id,
            name=c.name,
            channel_id=c.external_messenger_channel_id,
        )
        for c in body.receiving_contacts or []
    ]
    return NewMessage(
        service=service, account_id=body.account_id, message=message, receiving_contacts=contacts
    )


def _message_state(service: str, body: wire.MessageStateBody) -> MessageState:
    return MessageState(
        service=service,
        account_id=body.account_id,
        message_id=body.message_id,
        state=body.state,
        source_id=body.source_id,
        channel_id=body.external_messenger_channel_id,
        conversation_id=body.conversation_id,
    )


_S = TypeVar("_S", bound=msgspec.Struct)


def _decode(body: bytes, into: type[_S], what: str) -> _S:
    if not body or not body.strip():
        raise MalformedCall(f"{what}: empty body")
    try:
        return jsonsafe.decode(body, type=into)
    except jsonsafe.JsonTooDeep as exc:
        raise MalformedCall(f"{what}: body refused: {exc}") from None
    except msgspec.ValidationError as exc:
        raise MalformedCall(f"{what}: {_explain(str(exc))}") from None
    except msgspec.DecodeError as exc:
        raise MalformedCall(f"{what}: body is not valid JSON ({exc})") from None


def _explain(message: str) -> str:
    """Turn msgspec's ``Object missing required field `x` - at `$.y` `` into JSON names/paths."""
    return message.replace("Object missing required field", "missing required field")


# ---------------------------------------------------------------------------------------------
# Answers
# ---------------------------------------------------------------------------------------------


def ping_response(ping_id: str | None, *, api_version: Literal["v3", "v4"] = "v4") -> bytes:
    """Answer to ``outbound.ping``: echo the ``pingId`` (``PingResponse``; v3 servers name it
    ``OutboundPingResponse``)."""
    if api_version == "v3":
        return msgspec.json.encode(wire.OutboundPingResponse(ping_id=ping_id))
    return msgspec.json.encode(wire.PingResponse(ping_id=ping_id))


def new_message_response(external_message_id: str | None) -> bytes:
    """Answer to new_message: the id under which the messenger side knows the message."""
    return msgspec.json.encode(
        wire.ExternalMessengerNewMessageResponse(external_message_id=external_message_id)
    )


def message_state_response() -> bytes:
    """Answer to message_state (an empty acknowledgement)."""
    return msgspec.json.encode(wire.ExternalMessengerMessageStateResponse())


def contact_create_response(
    *, name: str | None, source_id: str, description: str | None = None
) -> bytes:
    """create_contact: Unblu should create a contact with this messenger ``source_id``."""
    return msgspec.json.encode(
        wire.ExternalMessengerCreateContactCreateResponse(
            type="CREATE",
            name=wire.fit(name, wire.MAX_CONTACT_NAME),
            source_id=source_id,
            description=description,
        )
    )


def contact_use_existing_response(contact_id: str) -> bytes:
    """create_contact: reuse the existing ExternalMessengerContact ``contact_id``."""
    return msgspec.json.encode(
        wire.ExternalMessengerCreateContactUseExistingResponse(
            type="USE_EXISTING", external_messenger_contact_id=contact_id
        )
    )


def contact_invalid_identifier_response(error_text: str) -> bytes:
    """create_contact: the contact identifier the agent typed is not valid for this messenger."""
    return msgspec.json.encode(
        wire.ExternalMessengerCreateContactInvalidContactIdentifierResponse(
            type="INVALID_CONTACT_IDENTIFIER", error_text=error_text
        )
    )


def contact_person_mismatch_response(error_text: str) -> bytes:
    """create_contact: the identifier already belongs to a contact of another person."""
    return msgspec.json.encode(
        wire.ExternalMessengerCreateContactContactToPersonMismatchResponse(
            type="CONTACT_TO_PERSON_MISMATCH", error_text=error_text
        )
    )


def contact_error_response(error_text: str) -> bytes:
    """create_contact: failed; ``error_text`` is shown to the agent."""
    return msgspec.json.encode(
        wire.ExternalMessengerCreateContactErrorResponse(type="ERROR", error_text=error_text)
    )


def conversation_create_response(
    *, source_id: str, source_url: str | None = None, metadata: dict[str, str] | None = None
) -> bytes:
    """create_conversation: create it, linked to the messenger thread ``source_id``."""
    return msgspec.json.encode(
        wire.ExternalMessengerCreateConversationCreateResponse(
            type="CREATE", source_id=source_id, source_url=source_url, metadata=metadata
        )
    )


def conversation_use_existing_response(conversation_id: str) -> bytes:
    """create_conversation: use the existing conversation ``conversation_id`` instead."""
    return msgspec.json.encode(
        wire.ExternalMessengerCreateConversationUseExistingResponse(
            type="USE_EXISTING", conversation_id=conversation_id
        )
    )


def conversation_error_response(error_text: str) -> bytes:
    """create_conversation: failed; ``error_text`` is shown to the agent."""
    return msgspec.json.encode(
        wire.ExternalMessengerCreateConversationErrorResponse(type="ERROR", error_text=error_text)
    )
