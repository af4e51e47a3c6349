"""Parsed inputs the REST layers hand to :class:`extmsg.sandbox.service.Sandbox`.

Both API generations parse their (different) wire bodies into these records, so the behaviour
behind them is written once.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .state import FileContent, Participant, Recipient

__all__ = ["ChannelFields", "MessageContent", "NewConversation", "PersonFields", "WebhookFields"]


@dataclass
class ChannelFields:
    """Writable channel properties. ``None`` for a v4-only field means "keep / default"."""

    name: str
    webhook_endpoint: str
    webhook_api_version: str
    description: str | None = None
    source_id: str | None = None
    channel_icon: str | None = None
    webhook_secret: str | None = None
    webhook_status: str | None = None
    message_state_handled_externally: bool | None = None
    metadata: dict[str, str] | None = None
    outbound_supported: bool | None = None
    outbound_timeout_millis: int | None = None
    contact_identifier_field_name: str | None = None
    contact_identifier_field_type: str | None = None
    contact_identifier_translations: dict[str, dict[str, str]] | None = None
    supports_multiple_conversations_per_contact: bool | None = None


@dataclass
class WebhookFields:
    """Writable properties of a ``WebhookRegistration``."""

    name: str
    endpoint: str
    api_version: str
    events: list[str]
    status: str | None = None
    description: str | None = None
    secret: str | None = None


@dataclass
class PersonFields:
    """A virtual person to create or update (found again by ``source_id``)."""

    source_id: str
    person_type: str | None = None
    first_name: str | None = None
    last_name: str | None = None
    username: str | None = None
    nickname: str | None = None
    email: str | None = None
    phone: str | None = None
    source_url: str | None = None
    source_data: str | None = None
    metadata: dict[str, str] | None = None


@dataclass
class NewConversation:
    """A conversation to create; ``participants`` are already resolved to person ids."""

    channel_id: str | None
    source_id: str | None
    initial_engagement_type: str
    participants: list[Participant] = field(default_factory=list)
    recipient: Recipient | None = None
    topic: str | None = None
    locale: str | None = None
    visitor_data: str | None = None
    source_url: str | None = None
    initial_engagement_url: str | None = None
    conversation_visibility: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass
class MessageContent:
    """What a message says: TEXT (``text``) or FILE (``file``)."""

    type: str
    text: str | None = None
    text_type: str = "SIMPLE_TEXT"
    fallback_text: str | None = None
    file: FileContent | None = None
