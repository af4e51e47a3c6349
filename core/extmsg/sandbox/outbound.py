"""Bodies of the calls Unblu makes to a channel's ``webhookEndpoint``.

V4 channels get outbound requests (ORM: ``ExternalMessengerNewMessageRequest``,
``ExternalMessengerMessageStateRequest``, ``PingRequest``), V1 to V3 channels the legacy
webhook events (``ExternalMessengerNewMessageEvent``, ``ExternalMessengerMessageStateEvent``,
``WebhookPingEvent``). Each builder returns the name sent in ``x-unblu-service-name`` /
``x-unblu-event``, the delivery style, and the body.
"""

from __future__ import annotations

from typing import Any, Literal

from . import render
from .delivery import DeliveryStyle
from .state import Channel, Conversation, Message, SandboxState, WebhookRegistration, now_ms

__all__ = [
    "CONVERSATION_ENDED_EVENT",
    "MESSAGE_STATE_EVENT",
    "MESSAGE_STATE_REQUEST",
    "NEW_MESSAGE_EVENT",
    "NEW_MESSAGE_REQUEST",
    "PING_EVENT",
    "PING_REQUEST",
    "conversation_ended",
    "message_state",
    "new_message",
    "ping_event",
    "ping_request",
    "registration_ping_event",
]

NEW_MESSAGE_REQUEST = "outbound.external_messenger.new_message"
MESSAGE_STATE_REQUEST = "outbound.external_messenger.message_state"
PING_REQUEST = "outbound.ping"
NEW_MESSAGE_EVENT = "external_messenger.new_message"
MESSAGE_STATE_EVENT = "external_messenger.message_state"
PING_EVENT = "ping"
CONVERSATION_ENDED_EVENT = "conversation.ended"

Outbound = tuple[str, DeliveryStyle, dict[str, Any]]
ApiVersion = Literal["v3", "v4"]


def new_message(state: SandboxState, ch: Channel, conv: Conversation, msg: Message) -> Outbound:
    """A new conversation message for the channel (v4: with its receiving contacts)."""
    if ch.uses_outbound_requests:
        contacts = [
            render.contact(state.contacts[p.contact_id])
            for p in conv.messenger_participants()
            if p.contact_id and p.contact_id in state.contacts
        ]
        return (
            NEW_MESSAGE_REQUEST,
            "request",
            {
                "$_type": "ExternalMessengerNewMessageRequest",
                "accountId": state.account_id,
                "serviceName": NEW_MESSAGE_REQUEST,
                "conversationMessage": render.message(state, msg, "v4"),
                "receivingContacts": contacts,
            },
        )
    return (
        NEW_MESSAGE_EVENT,
        "event",
        {
            "$_type": "ExternalMessengerNewMessageEvent",
            "timestamp": now_ms(),
            "eventType": NEW_MESSAGE_EVENT,
            "accountId": state.account_id,
            "conversationMessage": render.message(state, msg, "v3"),
        },
    )


def message_state(account_id: str, ch: Channel, msg: Message, state: str) -> Outbound:
    """A messenger user's message was delivered to / read by the agent."""
    common: dict[str, Any] = {
        "accountId": account_id,
        "messageId": msg.id,
        "state": state,
        "externalMessengerChannelId": ch.id,
        "conversationId": msg.conversation_id,
    }
    if msg.source_id is not None:
        common["sourceId"] = msg.source_id
    if ch.uses_outbound_requests:
        body = {
            "$_type": "ExternalMessengerMessageStateRequest",
            "serviceName": MESSAGE_STATE_REQUEST,
            **common,
        }
        return MESSAGE_STATE_REQUEST, "request", body
    body = {
        "$_type": "ExternalMessengerMessageStateEvent",
        "timestamp": now_ms(),
        "eventType": MESSAGE_STATE_EVENT,
        **common,
    }
    return MESSAGE_STATE_EVENT, "event", body


def ping_request(account_id: str, ping_id: str) -> Outbound:
    """v4 ``sendPing``: the endpoint must answer a ``PingResponse`` with the same ``pingId``."""
    body = {
        "$_type": "PingRequest",
        "accountId": account_id,
        "serviceName": PING_REQUEST,
        "pingId": ping_id,
    }
    return PING_REQUEST, "request", body


def ping_event(account_id: str, ch: Channel) -> Outbound:
    """v3 ``pingCustomChannel``: a ``WebhookPingEvent`` describing the channel's webhook."""
    registration: dict[str, Any] = {
        "$_type": "WebhookRegistration",
        "id": ch.id,
        "creationTimestamp": ch.creation_timestamp,
        "modificationTimestamp": ch.modification_timestamp,
        "version": ch.version,
        "accountId": ch.account_id,
        "name": ch.name,
        "status": ch.webhook_status,
        "endpoint": ch.webhook_endpoint,
        "apiVersion": ch.webhook_api_version,
        "events": [NEW_MESSAGE_EVENT, MESSAGE_STATE_EVENT],
    }
    if ch.description:
        registration["description"] = ch.description
    body = {
        "$_type": "WebhookPingEvent",
        "timestamp": now_ms(),
        "eventType": PING_EVENT,
        "accountId": account_id,
        "webhookConfiguration": registration,
    }
    return PING_EVENT, "event", body


def conversation_ended(state: SandboxState, conv: Conversation, api: ApiVersion) -> dict[str, Any]:
    """``ConversationEndedEvent`` (callback ``conversation.ended`` of
    ``webhookRegistrationsCreate``), the conversation rendered for the registration's API."""
    body: dict[str, Any] = {
        "$_type": "ConversationEndedEvent",
        "timestamp": now_ms(),
        "eventType": CONVERSATION_ENDED_EVENT,
        "accountId": state.account_id,
        "conversation": render.conversation(state, conv, api),
    }
    if conv.end_reason is not None:
        body["endReason"] = conv.end_reason
    return body


def registration_ping_event(account_id: str, w: WebhookRegistration) -> Outbound:
    """A registration's ping: a ``WebhookPingEvent`` describing it."""
    return (
        PING_EVENT,
        "event",
        {
            "$_type": "WebhookPingEvent",
            "timestamp": now_ms(),
            "eventType": PING_EVENT,
            "accountId": account_id,
            "webhookConfiguration": render.webhook(w),
        },
    )
