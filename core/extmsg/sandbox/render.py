"""Wire shapes of the sandbox's entities for API v4 (Unblu 8) and v3 (Unblu 6/7).

Field names and ``$_type`` values are those of the vendor OpenAPI documents. Absent values are
left out rather than sent as ``null``: the specs declare no property nullable, so an omitted
field is the only form that validates.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any, Literal

from .state import (
    Channel,
    Contact,
    Conversation,
    Message,
    Participant,
    Person,
    Recipient,
    SandboxState,
    WebhookRegistration,
)

__all__ = [
    "ApiVersion",
    "channel",
    "contact",
    "conversation",
    "history_message",
    "message",
    "person",
    "recipient",
    "webhook",
]

ApiVersion = Literal["v3", "v4"]


def _clean(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if v is not None}


def channel(ch: Channel, api: ApiVersion, expand: Collection[str] = ()) -> dict[str, Any]:
    body: dict[str, Any] = {
        "$_type": "CustomExternalMessengerChannel",
        "id": ch.id,
        "creationTimestamp": ch.creation_timestamp,
        "modificationTimestamp": ch.modification_timestamp,
        "version": ch.version,
        "accountId": ch.account_id,
        "name": ch.name,
        "description": ch.description,
        "channelIcon": ch.channel_icon,
        "sourceId": ch.source_id,
        "type": "CUSTOM",
        "webhookEndpoint": ch.webhook_endpoint,
        "webhookApiVersion": ch.webhook_api_version,
        "webhookSecret": ch.webhook_secret,
        "webhookStatus": ch.webhook_status,
        "messageStateHandledExternally": ch.message_state_handled_externally,
    }
    if api == "v4":
        body.update(
            {
                "outboundSupported": ch.outbound_supported,
                "outboundTimeoutMillis": ch.outbound_timeout_millis,
                "contactIdentifierFieldName": ch.contact_identifier_field_name,
                "contactIdentifierFieldType": ch.contact_identifier_field_type,
                "contactIdentifierTranslations": {
                    lang: {"$_type": "CustomChannelContactIdentifierTranslation", **t}
                    for lang, t in ch.contact_identifier_translations.items()
                },
                "supportsMultipleConversationsPerContact": (
                    ch.supports_multiple_conversations_per_contact
                ),
            }
        )
    if "metadata" in expand:
        body["metadata"] = dict(ch.metadata)
    return _clean(body)


def person(p: Person, api: ApiVersion, expand: Collection[str] = ()) -> dict[str, Any]:
    body: dict[str, Any] = {
        "$_type": "PersonData",
        "id": p.id,
        "accountId": p.account_id,
        "personSource": p.person_source,
        "sourceId": p.source_id,
        "sourceUrl": p.source_url,
        "sourceData": p.source_data,
        "firstName": p.first_name,
        "lastName": p.last_name,
        "username": p.username,
        "nickname": p.nickname,
        "displayName": p.display_name,
        "personType": p.person_type,
        "email": p.email,
        "phone": p.phone,
    }
    if "metadata" in expand:
        body["metadata"] = dict(p.metadata)
    return _clean(body)


def contact(c: Contact) -> dict[str, Any]:
    return _clean(
        {
            "$_type": "ExternalMessengerContact",
            "id": c.id,
            "creationTimestamp": c.creation_timestamp,
            "modificationTimestamp": c.modification_timestamp,
            "accountId": c.account_id,
            "name": c.name,
            "description": c.description,
            "externalMessengerChannelId": c.channel_id,
            "sourceId": c.source_id,
            "personId": c.person_id,
        }
    )


def recipient(state: SandboxState, r: Recipient, api: ApiVersion) -> dict[str, Any]:
    """A ``ConversationRecipientData`` member, discriminated by ``$_type``."""
    if r.type == "AGENT":
        agent = state.persons.get(r.id)
        if agent is not None:
            return person(agent, api)
        return {"$_type": "PersonData", "id": r.id, "personType": "AGENT"}
    if r.type == "TEAM":
        return {"$_type": "TeamData", "id": r.id, "accountId": state.account_id}
    if r.type == "NAMED_AREA":
        return {"$_type": "NamedAreaData", "id": r.id, "accountId": state.account_id}
    return {"$_type": "AccountData", "id": r.id}


def _participant(p: Participant, api: ApiVersion) -> dict[str, Any]:
    body: dict[str, Any] = {
        "$_type": "ParticipantData",
        "state": p.state,
        "personId": p.person_id,
        "hidden": p.hidden,
        "conversationStarred": p.starred,
    }
    if api == "v4":
        body["participationType"] = p.participation_type
    else:
        body["connectedViaExternalMessenger"] = p.via_messenger
    return body


def _external_participant(state: SandboxState, p: Participant) -> dict[str, Any]:
    c = state.contacts.get(p.contact_id) if p.contact_id else None
    return _clean(
        {
            "$_type": "ExternalParticipantData",
            "state": p.state,
            "externalMessengerContactId": p.contact_id,
            "personId": p.person_id,
            "sourceId": c.source_id if c else None,
            "participationType": p.participation_type,
        }
    )


def conversation(
    state: SandboxState, c: Conversation, api: ApiVersion, expand: Collection[str] = ()
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "$_type": "ConversationData",
        "creationTimestamp": c.creation_timestamp,
        "endTimestamp": c.end_timestamp,
        "id": c.id,
        "accountId": c.account_id,
        "topic": c.topic,
        "recipient": recipient(state, c.recipient, api) if c.recipient else None,
        "state": c.state,
        "initialEngagementType": c.initial_engagement_type,
        "locale": c.locale,
        "visitorData": c.visitor_data,
        "externalMessengerChannelId": c.channel_id,
        "sourceId": c.source_id,
        "sourceUrl": c.source_url,
        "endReason": c.end_reason,
        "initialEngagementUrl": c.initial_engagement_url,
        "awaitedPersonType": c.awaited_person_type,
        "awaitedPersonTypeChangeTimestamp": c.awaited_person_type_change_timestamp,
    }
    if api == "v4":
        body["participants"] = [_participant(p, api) for p in c.participants if not p.via_messenger]
        body["externalParticipants"] = [
            _external_participant(state, p) for p in c.participants if p.via_messenger
        ]
        body["botParticipants"] = []
        body["conversationVisibility"] = c.conversation_visibility
    else:
        body["participants"] = [_participant(p, api) for p in c.participants]
        body["contextPersonId"] = c.context_person_id
        body["assigneePersonId"] = c.assignee_person_id
    if "metadata" in expand:
        body["metadata"] = dict(c.metadata)
    return _clean(body)


def message(state: SandboxState, m: Message, api: ApiVersion) -> dict[str, Any]:
    """A ``TextMessageData`` or ``FileMessageData`` as Unblu puts it in events and requests."""
    sender = state.persons.get(m.sender_person_id)
    body: dict[str, Any] = {
        "$_type": "TextMessageData" if m.type == "TEXT" else "FileMessageData",
        "id": m.id,
        "conversationId": m.conversation_id,
        "externalMessengerChannelId": m.channel_id,
        "accountId": m.account_id,
        "senderPerson": person(sender, api) if sender else None,
        "serverTimestamp": m.server_timestamp,
        "sendTimestamp": m.server_timestamp,
        "type": m.type,
        "recipientPersonIds": m.recipient_person_ids,
        "fallbackText": m.fallback_text,
        "actionId": m.id if api == "v4" else m.action_id,
        "sourceId": m.source_id,
        "internal": m.internal,
        "replyToMessageId": m.reply_to_message_id,
    }
    if api == "v4":
        body["externalMessageId"] = m.external_message_id
        body["replyToExternalMessageId"] = m.reply_to_external_message_id
    if m.type == "TEXT":
        body["text"] = m.text or ""
        body["textType"] = m.text_type
    elif m.file is not None:
        body.update(
            {
                "fileName": m.file.name,
                "caption": m.file.caption,
                "captionType": "SIMPLE_TEXT" if m.file.caption else None,
                "mimeType": m.file.mime_type,
                "fileStoreId": m.id,
                "fileStatus": "COMPLETED",
                "totalSize": len(m.file.data),
                "uploadedSize": len(m.file.data),
            }
        )
        if m.download_url:
            if api == "v4":
                body["downloadLinks"] = [
                    {"$_type": "DownloadLink", "type": "WEB_API", "url": m.download_url}
                ]
            else:
                body["downloadLink"] = m.download_url
    return _clean(body)


def history_message(m: Message, api: ApiVersion) -> dict[str, Any]:
    """A ``ConversationHistoryMessageData``: one entry of a conversation's message log. Only
    v4's carries the ``externalMessageId``; neither names the ``sourceId``."""
    body: dict[str, Any] = {
        "$_type": "ConversationHistoryMessageData",
        "id": m.id,
        "conversationId": m.conversation_id,
        "sendTimestamp": m.server_timestamp,
        "serverTimestamp": m.server_timestamp,
        "senderPersonId": m.sender_person_id,
        "type": m.type,
        "internal": m.internal,
        "replyToMessageId": m.reply_to_message_id,
        "recipientPersonIds": m.recipient_person_ids,
        "text": m.fallback_text if m.type != "TEXT" else (m.text or ""),
    }
    if api == "v4":
        body["externalMessageId"] = m.external_message_id
    return _clean(body)


def webhook(w: WebhookRegistration) -> dict[str, Any]:
    """A ``WebhookRegistration`` (the same in v3 and v4)."""
    return _clean(
        {
            "$_type": "WebhookRegistration",
            "id": w.id,
            "creationTimestamp": w.creation_timestamp,
            "modificationTimestamp": w.modification_timestamp,
            "version": w.version,
            "accountId": w.account_id,
            "name": w.name,
            "status": w.status,
            "description": w.description,
            "endpoint": w.endpoint,
            "apiVersion": w.api_version,
            "secret": w.secret,
            "events": list(w.events),
        }
    )
