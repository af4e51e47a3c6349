"""The sandbox's in-memory entities: channels, persons, contacts, conversations, messages.

Plain dataclasses in dicts; the wire shapes of both API generations are rendered from them by
:mod:`extmsg.sandbox.render`, and all behaviour lives in :mod:`extmsg.sandbox.service`.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from typing import Literal

__all__ = [
    "ACTIVE_STATES",
    "AGENT_STATES",
    "Channel",
    "Contact",
    "Conversation",
    "FileContent",
    "Message",
    "MessageStateChange",
    "Participant",
    "Person",
    "Recipient",
    "SandboxState",
    "WebhookRegistration",
    "new_id",
    "now_ms",
]

ApiVersion = Literal["v3", "v4"]

#: Conversation states other than ENDED (everything a new conversation can collide with).
ACTIVE_STATES = frozenset(
    {"CREATED", "ONBOARDING", "REBOARDING", "QUEUED", "ACTIVE", "UNASSIGNED", "OFFBOARDING"}
)
#: Progress of an agent message towards the messenger user, in order.
AGENT_STATES = ("PENDING", "SENT", "DELIVERED", "READ")
_STATE_RANK = {s: i for i, s in enumerate(AGENT_STATES)}


def new_id() -> str:
    """A random id shaped like Unblu's (22 URL-safe characters)."""
    return secrets.token_urlsafe(16)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass
class Channel:
    """A ``CustomExternalMessengerChannel``."""

    id: str
    account_id: str
    name: str
    webhook_endpoint: str
    webhook_api_version: str
    version: int
    creation_timestamp: int
    modification_timestamp: int
    description: str | None = None
    source_id: str | None = None
    channel_icon: str | None = None
    webhook_secret: str | None = None
    webhook_status: str = "ACTIVE"
    message_state_handled_externally: bool = False
    outbound_supported: bool = False
    outbound_timeout_millis: int = 5000
    contact_identifier_field_name: str | None = None
    contact_identifier_field_type: str | None = None
    contact_identifier_translations: dict[str, dict[str, str]] = field(default_factory=dict)
    supports_multiple_conversations_per_contact: bool = True
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def uses_outbound_requests(self) -> bool:
        """V4 channels get ORM requests; V1 to V3 channels get the legacy webhook events."""
        return self.webhook_api_version == "V4"


@dataclass
class WebhookRegistration:
    """A ``WebhookRegistration``: Unblu POSTs its ``events`` to ``endpoint``, signed with
    ``secret`` and serialized for ``api_version``. The ``webhook_*`` properties let the
    deliverer treat it like a channel."""

    id: str
    account_id: str
    name: str
    endpoint: str
    api_version: str
    version: int
    creation_timestamp: int
    modification_timestamp: int
    events: list[str] = field(default_factory=list)
    status: str = "ACTIVE"
    description: str | None = None
    secret: str | None = None

    @property
    def webhook_endpoint(self) -> str:
        return self.endpoint

    @property
    def webhook_secret(self) -> str | None:
        return self.secret

    @property
    def outbound_timeout_millis(self) -> int:
        return 10_000

    @property
    def api(self) -> ApiVersion:
        """How its events are serialized: V4 as web API v4, V1 to V3 as v3."""
        return "v4" if self.api_version == "V4" else "v3"


@dataclass
class Person:
    """A ``PersonData``: a virtual visitor, or one of the sandbox's agents."""

    id: str
    account_id: str
    person_source: str
    source_id: str
    person_type: str
    first_name: str | None = None
    last_name: str | None = None
    username: str | None = None
    nickname: str | None = None
    email: str | None = None
    phone: str | None = None
    source_url: str | None = None
    source_data: str | None = None
    fixed_display_name: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def display_name(self) -> str:
        if self.fixed_display_name:
            return self.fixed_display_name
        full = " ".join(p for p in (self.first_name, self.last_name) if p)
        return full or self.nickname or self.username or self.person_type.capitalize()


@dataclass
class Contact:
    """An ``ExternalMessengerContact`` (v4): a messenger user linked to a person."""

    id: str
    account_id: str
    channel_id: str
    source_id: str
    person_id: str
    creation_timestamp: int
    modification_timestamp: int
    name: str | None = None
    description: str | None = None


@dataclass
class Participant:
    """One person taking part; ``via_messenger`` marks the ones behind the channel."""

    person_id: str
    participation_type: str
    via_messenger: bool = False
    contact_id: str | None = None
    state: str = "ACTIVE"
    hidden: bool = False
    starred: bool = False


@dataclass
class Recipient:
    """Whom a new conversation is routed to (``EConversationRecipientType`` and an id)."""

    type: str
    id: str


@dataclass
class Conversation:
    id: str
    account_id: str
    channel_id: str | None
    source_id: str | None
    state: str
    initial_engagement_type: str
    creation_timestamp: int
    participants: list[Participant] = field(default_factory=list)
    recipient: Recipient | None = None
    topic: str | None = None
    locale: str | None = None
    visitor_data: str | None = None
    source_url: str | None = None
    initial_engagement_url: str | None = None
    conversation_visibility: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    end_timestamp: int | None = None
    end_reason: str | None = None
    awaited_person_type: str = "NONE"
    awaited_person_type_change_timestamp: int | None = None
    message_ids: list[str] = field(default_factory=list)

    @property
    def is_active(self) -> bool:
        return self.state != "ENDED"

    def participant(self, person_id: str) -> Participant | None:
        return next((p for p in self.participants if p.person_id == person_id), None)

    def by_type(self, participation_type: str) -> Participant | None:
        return next(
            (p for p in self.participants if p.participation_type == participation_type), None
        )

    @property
    def context_person_id(self) -> str | None:
        p = self.by_type("CONTEXT_PERSON")
        return p.person_id if p else None

    @property
    def assignee_person_id(self) -> str | None:
        p = self.by_type("ASSIGNED_AGENT")
        return p.person_id if p else None

    def messenger_participants(self) -> list[Participant]:
        return [p for p in self.participants if p.via_messenger and p.state != "ENDED"]


@dataclass
class FileContent:
    name: str
    mime_type: str
    data: bytes
    caption: str | None = None


@dataclass
class MessageStateChange:
    """One reported state of a message, kept in order for the agent API."""

    state: str
    timestamp: int
    by: str
    contact_id: str | None = None
    person_id: str | None = None
    fail_state: str | None = None
    failure_text: str | None = None


@dataclass
class Message:
    """A conversation message.

    ``origin_channel_id`` is set for messages that came in through a channel's
    ``sendMessage``; such a message is never sent back out to that channel.
    """

    id: str
    action_id: str
    conversation_id: str
    channel_id: str | None
    account_id: str
    type: str
    sender_person_id: str
    server_timestamp: int
    text: str | None = None
    text_type: str = "SIMPLE_TEXT"
    fallback_text: str | None = None
    file: FileContent | None = None
    download_url: str | None = None
    source_id: str | None = None
    external_message_id: str | None = None
    reply_to_message_id: str | None = None
    reply_to_external_message_id: str | None = None
    recipient_person_ids: list[str] | None = None
    internal: bool = False
    origin_channel_id: str | None = None
    state: str = "PENDING"
    fail_state: str | None = None
    failure_text: str | None = None
    read_by_agent_timestamp: int | None = None
    history: list[MessageStateChange] = field(default_factory=list)

    @property
    def from_messenger(self) -> bool:
        return self.origin_channel_id is not None

    def advances_to(self, state: str) -> bool:
        """Whether ``state`` (SENT, DELIVERED or READ) is further than the current one."""
        current = self.state if self.state in _STATE_RANK else "PENDING"
        return _STATE_RANK[state] > _STATE_RANK[current]

    def record(
        self,
        state: str,
        *,
        by: str,
        contact_id: str | None = None,
        person_id: str | None = None,
        fail_state: str | None = None,
        failure_text: str | None = None,
    ) -> None:
        """Add a reported state to the history; the current state only moves forward, except
        that FAILED replaces any state and a later success clears it."""
        self.history.append(
            MessageStateChange(
                state=state,
                timestamp=now_ms(),
                by=by,
                contact_id=contact_id,
                person_id=person_id,
                fail_state=fail_state,
                failure_text=failure_text,
            )
        )
        if state == "FAILED":
            self.state = "FAILED"
            self.fail_state = fail_state
            self.failure_text = failure_text
            return
        if self.advances_to(state) or self.state == "FAILED":
            self.state = state
        self.fail_state = None
        self.failure_text = None


@dataclass
class SandboxState:
    """Every entity by id, plus the look-ups that run on every inbound message.

    Single event loop, so plain dicts need no locking. Add persons, contacts and
    conversations through the ``add_*`` methods so that the indexes stay right.
    """

    account_id: str
    channels: dict[str, Channel] = field(default_factory=dict)
    webhooks: dict[str, WebhookRegistration] = field(default_factory=dict)
    persons: dict[str, Person] = field(default_factory=dict)
    contacts: dict[str, Contact] = field(default_factory=dict)
    conversations: dict[str, Conversation] = field(default_factory=dict)
    messages: dict[str, Message] = field(default_factory=dict)
    #: (personSource, sourceId) -> person id
    persons_by_source: dict[tuple[str, str], str] = field(default_factory=dict)
    #: (channel id, contact sourceId) -> contact id
    contacts_by_source: dict[tuple[str, str], str] = field(default_factory=dict)
    #: (channel id or None, conversation sourceId) -> id of the active conversation
    active_by_source: dict[tuple[str | None, str], str] = field(default_factory=dict)

    def add_person(self, person: Person) -> None:
        self.persons[person.id] = person
        self.persons_by_source[(person.person_source, person.source_id)] = person.id

    def add_contact(self, contact: Contact) -> None:
        self.contacts[contact.id] = contact
        self.contacts_by_source[(contact.channel_id, contact.source_id)] = contact.id

    def add_conversation(self, conv: Conversation) -> None:
        self.conversations[conv.id] = conv
        if conv.is_active and conv.source_id is not None:
            self.active_by_source[(conv.channel_id, conv.source_id)] = conv.id

    def conversation_ended(self, conv: Conversation) -> None:
        if conv.source_id is not None:
            key = (conv.channel_id, conv.source_id)
            if self.active_by_source.get(key) == conv.id:
                del self.active_by_source[key]

    def clear(self) -> None:
        for table in (
            self.channels,
            self.webhooks,
            self.persons,
            self.contacts,
            self.conversations,
            self.messages,
            self.persons_by_source,
            self.contacts_by_source,
            self.active_by_source,
        ):
            table.clear()
