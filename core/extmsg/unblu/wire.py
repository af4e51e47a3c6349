"""msgspec Structs for the JSON bodies exchanged with Unblu (web API v4 and v3).

Two kinds of Structs live here:

* **Sent** bodies carry exactly the name of the OpenAPI component they encode (for example
  :class:`ExternalMessengerPostMessage`). Where v3 and v4 differ, one Struct holds the union of
  both versions' fields and the client fills only those of the dialect it speaks; fields left at
  ``None`` are omitted. Components that declare ``$_type`` are tagged structs, so ``$_type`` is
  always written.
* **Received** bodies (:class:`Channel`, :class:`Conversation`, :class:`MessageData`, …) declare
  only the fields extmsg reads. Unknown fields are ignored and ``$_type`` is not checked, so
  additive changes on the server never break decoding.

JSON keys are camelCase exactly as in the specs; Python attributes are snake_case.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

__all__ = [
    "Channel",
    "Contact",
    "ContactIdentifierFieldType",
    "ContactSearchResult",
    "Conversation",
    "ConversationCreationData",
    "ConversationCreationExternalParticipantData",
    "ConversationCreationRecipientData",
    "ConversationData",
    "ConversationEndedBody",
    "ConversationRecipientRef",
    "ConversationsEndBody",
    "CreateContactRequest",
    "CreateConversationRequest",
    "CreationDataIn",
    "CustomExternalMessengerChannel",
    "DownloadLink",
    "EqualsIdOperator",
    "EqualsStringOperator",
    "ErrorBody",
    "EventEnvelope",
    "ExternalMessengerChannelIdExternalMessengerContactSearchFilter",
    "ExternalMessengerContact",
    "ExternalMessengerContactQuery",
    "ExternalMessengerCreateContactContactToPersonMismatchResponse",
    "ExternalMessengerCreateContactCreateResponse",
    "ExternalMessengerCreateContactErrorResponse",
    "ExternalMessengerCreateContactInvalidContactIdentifierResponse",
    "ExternalMessengerCreateContactUseExistingResponse",
    "ExternalMessengerCreateConversationCreateResponse",
    "ExternalMessengerCreateConversationErrorResponse",
    "ExternalMessengerCreateConversationUseExistingResponse",
    "ExternalMessengerMessageStateResponse",
    "ExternalMessengerNewMessageResponse",
    "ExternalMessengerPostMessage",
    "ExternalMessengersMessageDeliveredBody",
    "ExternalMessengersMessageReadBody",
    "ExternalMessengersMessageSendFailedBody",
    "ExternalMessengersMessageSentSuccessfullyBody",
    "ExternalMessengersPingCustomChannelBody",
    "ExternalParticipantIn",
    "FilePostMessageData",
    "GreaterThanTimestampOperator",
    "HistoryMessage",
    "MessageData",
    "MessageExportOrderBy",
    "MessageExportQuery",
    "MessageExportResult",
    "MessageStateBody",
    "NewMessageBody",
    "OutboundPingResponse",
    "ParticipantData",
    "ParticipantIn",
    "Person",
    "PersonData",
    "PingBody",
    "PingResponse",
    "PingResult",
    "RecipientIn",
    "RecipientType",
    "SendFailState",
    "SendMessageResult",
    "SendTimestampMessageExportFilter",
    "SourceIdExternalMessengerContactSearchFilter",
    "TextPostMessageData",
    "WebhookRegistration",
    "WebhookRegistrationIn",
]

ConversationState = Literal[
    "CREATED", "ONBOARDING", "REBOARDING", "QUEUED", "ACTIVE", "UNASSIGNED", "OFFBOARDING", "ENDED"
]
RecipientType = Literal["AGENT", "TEAM", "NAMED_AREA", "ACCOUNT"]
ContactIdentifierFieldType = Literal["EMAIL", "PHONE_NUMBER", "NUMBER", "OTHER"]
SendFailState = Literal["RETRYABLE", "TERMINAL"]


class _Sent(msgspec.Struct, omit_defaults=True, rename="camel", kw_only=True):
    """Base of bodies we encode: camelCase keys, ``None`` fields left out.

    Fields that must always be written have no default: ``omit_defaults`` drops a value equal
    to its default.
    """


class _Tagged(_Sent, tag_field="$_type"):
    """Base of sent components that declare ``$_type`` (always written)."""


class _Received(msgspec.Struct, rename="camel", kw_only=True):
    """Base of bodies we decode: unknown fields (and ``$_type``) are ignored."""


# ---------------------------------------------------------------------------------------------
# Channels (/externalmessengers/create, /update, /getByName)
# ---------------------------------------------------------------------------------------------


class CustomExternalMessengerChannel(_Tagged, tag="CustomExternalMessengerChannel"):
    """Channel body for create/update. The ``outbound*``, ``contactIdentifier*`` and
    ``supportsMultipleConversationsPerContact`` fields exist in v4 only."""

    id: str | None = None
    version: int | None = None
    account_id: str | None = None
    name: str | None = None
    description: str | None = None
    channel_icon: str | None = None
    source_id: str | None = None
    type: Literal["CUSTOM"] | None = None
    webhook_endpoint: str | None = None
    webhook_api_version: Literal["V3", "V4"] | None = None
    webhook_secret: str | None = None
    webhook_status: str | None = None
    message_state_handled_externally: bool | None = None
    outbound_supported: bool | None = None
    outbound_timeout_millis: int | None = None
    contact_identifier_field_name: str | None = None
    contact_identifier_field_type: ContactIdentifierFieldType | None = None
    contact_identifier_translations: dict[str, Any] | None = None
    supports_multiple_conversations_per_contact: bool | None = None
    metadata: dict[str, str] | None = None


class Channel(_Received):
    """An external messenger channel as Unblu returns it."""

    id: str
    name: str | None = None
    version: int | None = None
    account_id: str | None = None
    type: str | None = None
    description: str | None = None
    channel_icon: str | dict[str, Any] | None = None
    source_id: str | None = None
    webhook_endpoint: str | None = None
    webhook_api_version: str | None = None
    webhook_secret: str | None = None
    webhook_status: str | None = None
    message_state_handled_externally: bool | None = None
    outbound_supported: bool | None = None
    outbound_timeout_millis: int | None = None
    contact_identifier_field_name: str | None = None
    contact_identifier_field_type: str | None = None
    contact_identifier_translations: dict[str, Any] | None = None
    supports_multiple_conversations_per_contact: bool | None = None
    metadata: dict[str, str] | None = None

    def __repr__(self) -> str:
        secret = "None" if self.webhook_secret is None else "'***'"
        return (
            f"Channel(id={self.id!r}, name={self.name!r}, version={self.version!r}, "
            f"type={self.type!r}, webhook_endpoint={self.webhook_endpoint!r}, "
            f"webhook_api_version={self.webhook_api_version!r}, webhook_secret={secret}, "
            f"webhook_status={self.webhook_status!r})"
        )


# ---------------------------------------------------------------------------------------------
# Webhook registrations (/webhookregistrations/create, /update, /getByName, both dialects)
# ---------------------------------------------------------------------------------------------


class WebhookRegistration(_Tagged, tag="WebhookRegistration"):
    """``WebhookRegistration`` body for create/update (the same component in v3 and v4)."""

    id: str | None = None
    version: int | None = None
    account_id: str | None = None
    name: str | None = None
    status: str | None = None
    description: str | None = None
    endpoint: str | None = None
    api_version: Literal["V3", "V4"] | None = None
    secret: str | None = None
    events: list[str] | None = None


class WebhookRegistrationIn(_Received):
    """A ``WebhookRegistration`` as Unblu returns it."""

    id: str
    name: str | None = None
    version: int | None = None
    account_id: str | None = None
    status: str | None = None
    description: str | None = None
    endpoint: str | None = None
    api_version: str | None = None
    secret: str | None = None
    events: list[str] | None = None

    def __repr__(self) -> str:
        secret = "None" if self.secret is None else "'***'"
        return (
            f"WebhookRegistrationIn(id={self.id!r}, name={self.name!r}, "
            f"status={self.status!r}, endpoint={self.endpoint!r}, secret={secret}, "
            f"events={self.events!r})"
        )


# ---------------------------------------------------------------------------------------------
# Limits
# ---------------------------------------------------------------------------------------------

#: ``PersonData.firstName``/``lastName``/``username``/``nickname`` and ``sourceId``: "Maximum
#: length of 250 characters" (both specs). Unblu refuses a longer value with 400, so what we
#: send is fitted with :func:`fit`. ``ExternalMessengerContact.name`` has no documented limit;
#: it is fitted to the same 250 as a precaution (it shows the same person's name).
MAX_PERSON_FIELD = 250
MAX_CONTACT_NAME = 250


def text_length(text: str) -> int:
    """The length Unblu counts: Java strings count UTF-16 code units (an emoji counts two)."""
    if text.isascii():
        return len(text)
    return len(text.encode("utf-16-le", "surrogatepass")) // 2


def fit(text: str | None, limit: int) -> str | None:
    """``text`` cut to at most ``limit`` UTF-16 code units, the cut marked with ``…``; never
    splits a surrogate pair. ``None`` and text that fits are returned unchanged."""
    if text is None or text_length(text) <= limit:
        return text
    budget = limit - 1  # the ellipsis is one unit
    out: list[str] = []
    for char in text:
        units = 2 if ord(char) > 0xFFFF else 1
        if units > budget:
            break
        budget -= units
        out.append(char)
    return "".join(out) + "…"


# ---------------------------------------------------------------------------------------------
# Persons and contacts
# ---------------------------------------------------------------------------------------------


class PersonData(_Tagged, tag="PersonData"):
    """Body of /persons/createOrUpdateVirtual."""

    person_source: Literal["VIRTUAL", "USER_DB"] | None = None
    source_id: str | None = None
    person_type: Literal["VISITOR", "AGENT", "SYSTEM", "BOT"] | None = None
    first_name: str | None = None
    last_name: str | None = None
    nickname: str | None = None
    email: str | None = None
    phone: str | None = None


class Person(_Received):
    """A person as Unblu returns it (also ``senderPerson`` and ``personData`` in calls)."""

    id: str | None = None
    person_source: str | None = None
    source_id: str | None = None
    person_type: str | None = None
    display_name: str | None = None
    first_name: str | None = None
    last_name: str | None = None
    nickname: str | None = None
    email: str | None = None
    phone: str | None = None


class ExternalMessengerContact(_Tagged, tag="ExternalMessengerContact"):
    """Body of /externalmessengercontacts/create (v4 only)."""

    name: str | None = None
    description: str | None = None
    external_messenger_channel_id: str | None = None
    source_id: str | None = None
    person_id: str | None = None


class Contact(_Received):
    """An ExternalMessengerContact as Unblu returns it (also ``receivingContacts`` items)."""

    id: str | None = None
    name: str | None = None
    description: str | None = None
    external_messenger_channel_id: str | None = None
    source_id: str | None = None
    person_id: str | None = None


class EqualsIdOperator(_Tagged, tag="EqualsIdOperator"):
    type: Literal["EQUALS"]
    value: str


class EqualsStringOperator(_Tagged, tag="EqualsStringOperator"):
    type: Literal["EQUALS"]
    value: str


class ExternalMessengerChannelIdExternalMessengerContactSearchFilter(
    _Tagged, tag="ExternalMessengerChannelIdExternalMessengerContactSearchFilter"
):
    field: Literal["EXTERNAL_MESSENGER_CHANNEL_ID"]
    operator: EqualsIdOperator


class SourceIdExternalMessengerContactSearchFilter(
    _Tagged, tag="SourceIdExternalMessengerContactSearchFilter"
):
    field: Literal["SOURCE_ID"]
    operator: EqualsStringOperator


ContactSearchFilter = (
    ExternalMessengerChannelIdExternalMessengerContactSearchFilter
    | SourceIdExternalMessengerContactSearchFilter
)


class ExternalMessengerContactQuery(_Tagged, tag="ExternalMessengerContactQuery"):
    """Body of /externalmessengercontacts/search (v4 only)."""

    search_filters: list[ContactSearchFilter]
    offset: int | None = None
    limit: int | None = None


class ContactSearchResult(_Received):
    items: list[Contact] = []
    has_more_items: bool | None = None


# ---------------------------------------------------------------------------------------------
# Conversations
# ---------------------------------------------------------------------------------------------


class ConversationCreationRecipientData(_Tagged, tag="ConversationCreationRecipientData"):
    type: RecipientType
    id: str


class ConversationCreationExternalParticipantData(
    _Tagged, tag="ConversationCreationExternalParticipantData"
):
    external_messenger_contact_id: str
    participation_type: Literal["CONTEXT_PERSON", "SECONDARY_VISITOR"]


class ConversationCreationData(_Tagged, tag="ConversationCreationData"):
    """Body of /conversations/create in v4."""

    topic: str | None = None
    recipient: ConversationCreationRecipientData | None = None
    external_participants: list[ConversationCreationExternalParticipantData] | None = None
    initial_engagement_type: str | None = None
    locale: str | None = None
    external_messenger_channel_id: str | None = None
    source_id: str | None = None
    metadata: dict[str, str] | None = None


class ConversationRecipientRef(_Sent):
    """v3 ``ConversationRecipientData``: one of AccountData, TeamData, NamedAreaData or
    PersonData, chosen by ``$_type``; only the id is sent."""

    type_: Literal["AccountData", "TeamData", "NamedAreaData", "PersonData"] = msgspec.field(
        name="$_type"
    )
    id: str


class ParticipantData(_Tagged, tag="ParticipantData"):
    """v3 participant of a conversation to create."""

    person_id: str
    connected_via_external_messenger: bool | None = None


class ConversationData(_Tagged, tag="ConversationData"):
    """Body of /conversations/create in v3 (Unblu 6/7 take a ConversationData there)."""

    topic: str | None = None
    recipient: ConversationRecipientRef | None = None
    participants: list[ParticipantData] | None = None
    context_person_id: str | None = None
    initial_engagement_type: str | None = None
    locale: str | None = None
    external_messenger_channel_id: str | None = None
    source_id: str | None = None
    metadata: dict[str, str] | None = None


class ConversationsEndBody(_Sent):
    """Body of /conversations/{conversationId}/end."""

    reason: str | None = None
    comment: str | None = None


class Participant(_Received):
    """A person in a conversation (``ParticipantData``): v3 lists the messenger user here,
    ``connectedViaExternalMessenger``; v4 lists them among ``externalParticipants``."""

    person_id: str | None = None
    connected_via_external_messenger: bool = False
    state: str | None = None


class Conversation(_Received):
    """A conversation as Unblu returns it."""

    id: str
    state: str | None = None
    source_id: str | None = None
    channel_id: str | None = msgspec.field(default=None, name="externalMessengerChannelId")
    end_reason: str | None = None
    topic: str | None = None
    locale: str | None = None
    participants: list[Participant] = msgspec.field(default_factory=list)

    @property
    def messenger_person_id(self) -> str | None:
        """The person connected through the external messenger (v3), if one is listed."""
        return next(
            (
                p.person_id
                for p in self.participants
                if p.connected_via_external_messenger and p.person_id
            ),
            None,
        )

    @property
    def ended(self) -> bool:
        """True once the conversation is ENDED. An OFFBOARDING one still holds its
        ``sourceId``, so a new conversation for the same thread cannot be opened yet."""
        return self.state == "ENDED"


# ---------------------------------------------------------------------------------------------
# Messages and message states
# ---------------------------------------------------------------------------------------------


class TextPostMessageData(_Tagged, tag="TextPostMessageData"):
    type: Literal["TEXT"]
    text: str
    text_type: Literal["SIMPLE_TEXT", "MARKDOWN"] | None = None
    fallback_text: str | None = None


class FilePostMessageData(_Tagged, tag="FilePostMessageData"):
    type: Literal["FILE"]
    file_name: str
    file_data: str
    caption: str | None = None
    fallback_text: str | None = None


class ExternalMessengerPostMessage(_Tagged, tag="ExternalMessengerPostMessage"):
    """Body of sendMessage. v4: ``senderExternalMessengerContactId`` and ``externalMessageId``;
    v3: ``externalMessengerChannelId`` and ``senderPersonId``."""

    conversation_id: str
    message_data: TextPostMessageData | FilePostMessageData
    external_messenger_channel_id: str | None = None
    sender_person_id: str | None = None
    sender_external_messenger_contact_id: str | None = None
    source_id: str | None = None
    reply_to_message_id: str | None = None
    external_message_id: str | None = None


class SendMessageResult(_Received):
    message_id: str


# ---------------------------------------------------------------------------------------------
# A conversation's message log (v4 /conversationhistory/{conversationId}/exportMessageLog)
# ---------------------------------------------------------------------------------------------


class GreaterThanTimestampOperator(_Tagged, tag="GreaterThanTimestampOperator"):
    type: Literal["GREATER_THAN"]
    value: int
    """UTC milliseconds."""


class SendTimestampMessageExportFilter(_Tagged, tag="SendTimestampMessageExportFilter"):
    field: Literal["SEND_TIMESTAMP"]
    operator: GreaterThanTimestampOperator


class MessageExportOrderBy(_Tagged, tag="MessageExportOrderBy"):
    field: Literal["SEND_TIMESTAMP", "SERVER_TIMESTAMP", "ID"]
    order: Literal["ASCENDING", "DESCENDING"]


class MessageExportQuery(_Tagged, tag="MessageExportQuery"):
    """Body of exportMessageLog (v4 only)."""

    search_filters: list[SendTimestampMessageExportFilter] | None = None
    order_by: list[MessageExportOrderBy] | None = None
    offset: int | None = None
    limit: int | None = None


class HistoryMessage(_Received):
    """A ``ConversationHistoryMessageData``: one entry of a conversation's message log.

    v4 carries the ``externalMessageId`` given in sendMessage; v3's has neither that nor the
    ``sourceId``, so a v3 log cannot tell which message is ours.
    """

    id: str
    external_message_id: str | None = None
    send_timestamp: int | None = None


class MessageExportResult(_Received):
    items: list[HistoryMessage] = []
    has_more_items: bool | None = None
    next_offset: int | None = None


class ExternalMessengersMessageSentSuccessfullyBody(_Sent):
    conversation_id: str
    message_id: str
    external_messenger_channel_id: str | None = None


class ExternalMessengersMessageDeliveredBody(_Sent):
    """v4 names the recipient ``externalMessengerContactId``, v3 ``personId``."""

    conversation_id: str
    message_id: str
    external_messenger_channel_id: str | None = None
    external_messenger_contact_id: str | None = None
    person_id: str | None = None


class ExternalMessengersMessageReadBody(_Sent):
    """v4 names the recipient ``externalMessengerContactId``, v3 ``personId``."""

    conversation_id: str
    message_id: str
    external_messenger_channel_id: str | None = None
    external_messenger_contact_id: str | None = None
    person_id: str | None = None


class ExternalMessengersMessageSendFailedBody(_Sent):
    """v4 calls the state ``failState``, v3 ``failedState``."""

    conversation_id: str
    message_id: str
    external_messenger_channel_id: str | None = None
    fail_state: SendFailState | None = None
    failed_state: SendFailState | None = None
    failure_text: str | None = None


class ExternalMessengersPingCustomChannelBody(_Sent):
    """Body of the v3 /externalmessengers/pingCustomChannel."""

    external_messenger_channel_id: str


class PingResult(_Received):
    ping_id: str | None = None


class ErrorBody(_Received):
    """Unblu's ``Error`` body."""

    status_code: int | None = None
    status_description: str | None = None
    error_message: str | None = None


# ---------------------------------------------------------------------------------------------
# What Unblu POSTs to a channel endpoint (v4 outbound requests, v3 webhook events)
# ---------------------------------------------------------------------------------------------


class DownloadLink(_Received):
    type: str | None = None
    url: str | None = None


class MessageData(_Received):
    """A conversation message (any ``MessageData`` subtype), flattened to the fields we use.

    Files: v4 lists ``downloadLinks``; v3 has a single ``downloadLink``.
    """

    id: str
    conversation_id: str
    type: str
    external_messenger_channel_id: str | None = None
    sender_person: Person | None = None
    fallback_text: str | None = None
    source_id: str | None = None
    internal: bool | None = None
    reply_to_message_id: str | None = None
    external_message_id: str | None = None
    text: str | None = None
    text_type: str | None = None
    file_name: str | None = None
    caption: str | None = None
    mime_type: str | None = None
    total_size: int | None = None
    download_links: list[DownloadLink] | None = None
    download_link: str | None = None


class EventEnvelope(_Received):
    """Only the envelope fields that identify a webhook event."""

    event_type: str | None = None
    account_id: str | None = None


class NewMessageBody(_Received):
    """``ExternalMessengerNewMessageRequest`` (v4) or ``ExternalMessengerNewMessageEvent`` (v3)."""

    conversation_message: MessageData
    receiving_contacts: list[Contact] | None = None
    account_id: str | None = None


class MessageStateBody(_Received):
    """``ExternalMessengerMessageStateRequest`` (v4) or ``…MessageStateEvent`` (v3)."""

    message_id: str
    state: str
    source_id: str | None = None
    external_messenger_channel_id: str | None = None
    conversation_id: str | None = None
    account_id: str | None = None


class ConversationEndedBody(_Received):
    """``ConversationEndedEvent`` (event ``conversation.ended``, v3 and v4): ``conversation``
    is a ``ConversationData``; ``endReason`` an ``EConversationEndReason``."""

    conversation: Conversation
    end_reason: str | None = None
    account_id: str | None = None


class PingBody(_Received):
    """``PingRequest``/``OutboundPingRequest`` (with ``pingId``) or ``WebhookPingEvent``."""

    ping_id: str | None = None
    account_id: str | None = None


class CreateContactRequest(_Received):
    """``ExternalMessengerCreateContactRequest`` (v4)."""

    external_messenger_channel_id: str | None = None
    person_data: Person | None = None
    contact_identifier: str | None = None
    description: str | None = None
    account_id: str | None = None


class RecipientIn(_Received):
    type: str | None = None
    id: str | None = None


class ExternalParticipantIn(_Received):
    external_messenger_contact_id: str | None = None
    participation_type: str | None = None


class ParticipantIn(_Received):
    person_id: str | None = None
    participation_type: str | None = None


class CreationDataIn(_Received):
    """The ``ConversationCreationData`` inside a create_conversation request."""

    external_messenger_channel_id: str | None = None
    source_id: str | None = None
    topic: str | None = None
    locale: str | None = None
    initial_engagement_type: str | None = None
    recipient: RecipientIn | None = None
    participants: list[ParticipantIn] | None = None
    external_participants: list[ExternalParticipantIn] | None = None
    metadata: dict[str, str] | None = None


class CreateConversationRequest(_Received):
    """``ExternalMessengerCreateConversationRequest`` (v4)."""

    creation_data: CreationDataIn
    account_id: str | None = None


# ---------------------------------------------------------------------------------------------
# Our answers to those calls
# ---------------------------------------------------------------------------------------------


class PingResponse(_Tagged, tag="PingResponse"):
    ping_id: str | None = None


class OutboundPingResponse(_Tagged, tag="OutboundPingResponse"):
    """The v3 answer to ``outbound.ping``."""

    ping_id: str | None = None


class ExternalMessengerNewMessageResponse(_Tagged, tag="ExternalMessengerNewMessageResponse"):
    external_message_id: str | None = None


class ExternalMessengerMessageStateResponse(_Tagged, tag="ExternalMessengerMessageStateResponse"):
    pass


class ExternalMessengerCreateContactCreateResponse(
    _Tagged, tag="ExternalMessengerCreateContactCreateResponse"
):
    type: Literal["CREATE"]
    name: str | None = None
    source_id: str | None = None
    description: str | None = None


class ExternalMessengerCreateContactUseExistingResponse(
    _Tagged, tag="ExternalMessengerCreateContactUseExistingResponse"
):
    type: Literal["USE_EXISTING"]
    external_messenger_contact_id: str


class ExternalMessengerCreateContactErrorResponse(
    _Tagged, tag="ExternalMessengerCreateContactErrorResponse"
):
    type: Literal["ERROR"]
    error_text: str | None = None


class ExternalMessengerCreateContactInvalidContactIdentifierResponse(
    _Tagged, tag="ExternalMessengerCreateContactInvalidContactIdentifierResponse"
):
    type: Literal["INVALID_CONTACT_IDENTIFIER"]
    error_text: str | None = None


class ExternalMessengerCreateContactContactToPersonMismatchResponse(
    _Tagged, tag="ExternalMessengerCreateContactContactToPersonMismatchResponse"
):
    type: Literal["CONTACT_TO_PERSON_MISMATCH"]
    error_text: str | None = None


class ExternalMessengerCreateConversationCreateResponse(
    _Tagged, tag="ExternalMessengerCreateConversationCreateResponse"
):
    type: Literal["CREATE"]
    source_id: str | None = None
    source_url: str | None = None
    metadata: dict[str, str] | None = None


class ExternalMessengerCreateConversationUseExistingResponse(
    _Tagged, tag="ExternalMessengerCreateConversationUseExistingResponse"
):
    type: Literal["USE_EXISTING"]
    conversation_id: str


class ExternalMessengerCreateConversationErrorResponse(
    _Tagged, tag="ExternalMessengerCreateConversationErrorResponse"
):
    type: Literal["ERROR"]
    error_text: str | None = None
