"""The emulated Unblu server's behaviour, shared by both REST generations and the agent API.

:class:`Sandbox` owns the in-memory state and the outbound deliverer. The REST modules parse
wire bodies into the records of :mod:`extmsg.sandbox.inputs` and render the entities returned;
every rule (uniqueness of active ``sourceId`` per channel, conversation states, loop
prevention, message states, which channel gets which event) is implemented once, here.

Status codes used for errors: 400 invalid input (the message names the field), 404 unknown
id or name, 409 conflicts (duplicate channel name, duplicate active conversation ``sourceId``
for a channel, duplicate contact ``sourceId`` for a channel, stale channel ``version``, a
conversation that has already ended), 502 when a ping gets no valid answer from the endpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from aiohttp import web

from . import outbound
from .customers import Customers
from .delivery import Deliverer, Delivery, Targets
from .errors import ApiError
from .inputs import ChannelFields, MessageContent, NewConversation, PersonFields, WebhookFields
from .state import (
    Channel,
    Contact,
    Conversation,
    Message,
    Participant,
    Person,
    SandboxState,
    WebhookRegistration,
    new_id,
    now_ms,
)

__all__ = ["DEFAULT_AGENT_ID", "FILES_PATH", "SANDBOX_KEY", "Sandbox"]

log = logging.getLogger("extmsg.sandbox")

#: Person id of the agent who is always present (usable as an AGENT recipient).
DEFAULT_AGENT_ID = "sandbox-agent"
#: Where file contents are served (basic auth, like Unblu's download links); the path lies
#: under the web API prefix so clients treat it like Unblu's own links.
FILES_PATH = "/app/rest/sandbox/files"


_ECHO_WAIT = 30.0  # seconds a post waits for its echo (which has its own retries)


class Sandbox:
    """An emulated Unblu server: state, behaviour, outbound deliveries and the outage switch."""

    def __init__(
        self,
        *,
        username: str = "admin",
        password: str = "admin",  # noqa: S107 - the sandbox's documented default
        account_id: str = "sandbox-account",
        delivery_retries: int = 5,
        retry_backoff: float = 1.0,
        retry_backoff_max: float = 60.0,
        agent_token: str | None = None,
        public_url: str | None = None,
    ) -> None:
        self.username = username
        self.password = password
        self.account_id = account_id
        self.agent_token = agent_token
        self.public_url = public_url.rstrip("/") if public_url else None
        self.state = SandboxState(account_id=account_id)
        self.deliverer = Deliverer(
            Targets(self.state.channels, self.state.webhooks),
            retries=delivery_retries,
            backoff=retry_backoff,
            backoff_max=retry_backoff_max,
        )
        self.customers = Customers()
        """The customers' side: the provider fake behind each sandbox channel."""
        self._outage_until: float | None = None
        self._outage_forever = False
        #: Deliver a messenger's messages back to its own channel, before answering the post
        #: (see :meth:`echoed`): an Unblu whose loop prevention failed, for testing a
        #: channel's own guard.
        self.echo = False
        self.forbidden: set[str] = set()
        """Web API operations answered with 403, as ``"POST /conversationhistory/..."`` (the
        method and the spec's path template): an API user without the role they need."""
        self._add_default_agent()

    # -- lifecycle -------------------------------------------------------------------------
    async def close(self) -> None:
        await self.deliverer.close()
        await self.customers.close()

    async def drain(self) -> None:
        """Wait until every queued delivery is finished (wrap in ``asyncio.timeout``)."""
        await self.deliverer.drain()

    def reset(self) -> None:
        """Forget every entity and delivery (the configuration stays)."""
        self.deliverer.clear()
        self.state.clear()
        self.clear_outage()
        self.echo = False
        self._add_default_agent()

    # -- outage switch ---------------------------------------------------------------------
    def set_outage(self, seconds: float | None) -> None:
        """Make the REST API answer 503 for ``seconds`` (``None``: until cleared)."""
        if seconds is None:
            self._outage_forever = True
            self._outage_until = None
        else:
            self._outage_forever = False
            self._outage_until = time.monotonic() + max(seconds, 0.0)

    def clear_outage(self) -> None:
        self._outage_forever = False
        self._outage_until = None

    def outage_remaining(self) -> float | None:
        """Seconds of outage left, ``inf`` when indefinite, ``None`` when the API is up."""
        if self._outage_forever:
            return float("inf")
        if self._outage_until is None:
            return None
        left = self._outage_until - time.monotonic()
        if left <= 0:
            self._outage_until = None
            return None
        return left

    # -- access ----------------------------------------------------------------------------
    def forbid(self, operations: Iterable[str]) -> None:
        """Answer 403 to these operations (``"METHOD /path/{template}"``) until permitted."""
        for op in operations:
            method, sep, path = op.strip().partition(" ")
            if not sep or not path.startswith("/"):
                raise ApiError.bad_request(
                    f"operations: {op!r} is not 'METHOD /path' (e.g. "
                    "'POST /conversationhistory/{conversationId}/exportMessageLog')"
                )
            self.forbidden.add(f"{method.upper()} {path.strip()}")

    def permit(self, operations: Iterable[str] | None = None) -> None:
        """Allow these operations again (``None``: all)."""
        if operations is None:
            self.forbidden.clear()
        else:
            for op in operations:
                method, _, path = op.strip().partition(" ")
                self.forbidden.discard(f"{method.upper()} {path.strip()}")

    def is_forbidden(self, method: str, path_template: str) -> bool:
        return f"{method.upper()} {path_template}" in self.forbidden

    # -- look-ups --------------------------------------------------------------------------
    def channel(self, channel_id: str) -> Channel:
        ch = self.state.channels.get(channel_id)
        if ch is None:
            raise ApiError.not_found(f"no external messenger channel with id {channel_id!r}")
        return ch

    def channel_by_name(self, name: str) -> Channel:
        for ch in self.state.channels.values():
            if ch.name == name:
                return ch
        raise ApiError.not_found(f"no external messenger channel named {name!r}")

    def person(self, person_id: str, *, field_name: str = "personId") -> Person:
        p = self.state.persons.get(person_id)
        if p is None:
            raise ApiError.not_found(f"{field_name}: no person with id {person_id!r}")
        return p

    def person_by_source(self, person_source: str, source_id: str) -> Person:
        person_id = self.state.persons_by_source.get((person_source, source_id))
        if person_id is None:
            raise ApiError.not_found(f"no {person_source} person with sourceId {source_id!r}")
        return self.state.persons[person_id]

    def contact(
        self, contact_id: str, *, field_name: str = "externalMessengerContactId"
    ) -> Contact:
        c = self.state.contacts.get(contact_id)
        if c is None:
            raise ApiError.not_found(
                f"{field_name}: no external messenger contact with id {contact_id!r}"
            )
        return c

    def conversation(
        self, conversation_id: str, *, field_name: str = "conversationId"
    ) -> Conversation:
        c = self.state.conversations.get(conversation_id)
        if c is None:
            raise ApiError.not_found(f"{field_name}: no conversation with id {conversation_id!r}")
        return c

    def active_conversation(self, source_id: str, channel_id: str | None) -> Conversation:
        conversation_id = self.state.active_by_source.get((channel_id, source_id))
        if conversation_id is None:
            raise ApiError.not_found(
                f"no active conversation with sourceId {source_id!r} on channel {channel_id!r}"
            )
        return self.state.conversations[conversation_id]

    def message(self, conversation: Conversation, message_id: str) -> Message:
        m = self.state.messages.get(message_id)
        if m is None or m.conversation_id != conversation.id:
            raise ApiError.not_found(
                f"messageId: no message {message_id!r} in conversation {conversation.id!r}"
            )
        return m

    def messages_of(self, conversation: Conversation) -> list[Message]:
        return [self.state.messages[i] for i in conversation.message_ids]

    def deliveries(self, channel_id: str | None = None, name: str | None = None) -> list[Delivery]:
        return [
            d
            for d in self.deliverer.records
            if (channel_id is None or d.channel_id == channel_id)
            and (name is None or d.name == name)
        ]

    # -- channels --------------------------------------------------------------------------
    def _check_name_free(self, name: str, own_id: str | None) -> None:
        for ch in self.state.channels.values():
            if ch.name == name and ch.id != own_id:
                raise ApiError.conflict(f"name: a channel named {name!r} already exists")

    def create_channel(self, f: ChannelFields) -> Channel:
        self._check_name_free(f.name, None)
        now = now_ms()
        ch = Channel(
            id=new_id(),
            account_id=self.account_id,
            name=f.name,
            webhook_endpoint=f.webhook_endpoint,
            webhook_api_version=f.webhook_api_version,
            version=1,
            creation_timestamp=now,
            modification_timestamp=now,
        )
        self._apply_channel_fields(ch, f, keep_v4_fields=False)
        self.state.channels[ch.id] = ch
        log.info("sandbox: channel %s (%s) created", ch.id, ch.name)
        return ch

    def update_channel(
        self, channel_id: str, version: int, account_id: str, f: ChannelFields, *, keep_v4: bool
    ) -> Channel:
        ch = self.channel(channel_id)
        if account_id != ch.account_id:
            raise ApiError.bad_request(
                f"accountId: must be the channel's account {ch.account_id!r}"
            )
        if version != ch.version:
            raise ApiError.conflict(
                f"version: {version} is stale, the channel is at version {ch.version}"
            )
        self._check_name_free(f.name, ch.id)
        ch.name = f.name
        ch.webhook_endpoint = f.webhook_endpoint
        ch.webhook_api_version = f.webhook_api_version
        self._apply_channel_fields(ch, f, keep_v4_fields=keep_v4)
        ch.version += 1
        ch.modification_timestamp = now_ms()
        return ch

    @staticmethod
    def _apply_channel_fields(ch: Channel, f: ChannelFields, *, keep_v4_fields: bool) -> None:
        ch.description = f.description
        ch.source_id = f.source_id
        ch.channel_icon = f.channel_icon
        ch.webhook_secret = f.webhook_secret
        ch.webhook_status = f.webhook_status or "ACTIVE"
        ch.message_state_handled_externally = bool(f.message_state_handled_externally)
        ch.metadata = dict(f.metadata or {})
        if keep_v4_fields:
            return
        ch.outbound_supported = bool(f.outbound_supported)
        if f.outbound_timeout_millis is not None:
            ch.outbound_timeout_millis = f.outbound_timeout_millis
        ch.contact_identifier_field_name = f.contact_identifier_field_name
        ch.contact_identifier_field_type = f.contact_identifier_field_type
        ch.contact_identifier_translations = dict(f.contact_identifier_translations or {})
        ch.supports_multiple_conversations_per_contact = (
            True
            if f.supports_multiple_conversations_per_contact is None
            else f.supports_multiple_conversations_per_contact
        )

    def delete_channel(self, channel_id: str) -> None:
        """Remove the channel; its active conversations end with EXTERNAL_CHANNEL_CLOSED."""
        ch = self.channel(channel_id)
        for conv in self.state.conversations.values():
            if conv.channel_id == ch.id and conv.is_active:
                self._end(conv, "EXTERNAL_CHANNEL_CLOSED")
        del self.state.channels[ch.id]
        self.deliverer.forget_channel(ch.id)
        log.info("sandbox: channel %s (%s) deleted", ch.id, ch.name)

    # -- webhook registrations -------------------------------------------------------------
    def webhook(self, registration_id: str) -> WebhookRegistration:
        w = self.state.webhooks.get(registration_id)
        if w is None:
            raise ApiError.not_found(f"no webhook registration with id {registration_id!r}")
        return w

    def webhook_by_name(self, name: str) -> WebhookRegistration | None:
        return next((w for w in self.state.webhooks.values() if w.name == name), None)

    def create_webhook(self, f: WebhookFields) -> WebhookRegistration:
        if self.webhook_by_name(f.name) is not None:
            raise ApiError.conflict(f"name: a webhook registration named {f.name!r} exists")
        now = now_ms()
        w = WebhookRegistration(
            id=new_id(),
            account_id=self.account_id,
            name=f.name,
            endpoint=f.endpoint,
            api_version=f.api_version,
            version=1,
            creation_timestamp=now,
            modification_timestamp=now,
        )
        self._apply_webhook_fields(w, f)
        self.state.webhooks[w.id] = w
        log.info("sandbox: webhook registration %s (%s) created", w.id, w.name)
        return w

    def update_webhook(
        self, registration_id: str, version: int, account_id: str, f: WebhookFields
    ) -> WebhookRegistration:
        w = self.webhook(registration_id)
        if account_id != w.account_id:
            raise ApiError.bad_request(
                f"accountId: must be the registration's account {w.account_id!r}"
            )
        if version != w.version:
            raise ApiError.conflict(
                f"version: {version} is stale, the registration is at version {w.version}"
            )
        other = self.webhook_by_name(f.name)
        if other is not None and other.id != w.id:
            raise ApiError.conflict(f"name: a webhook registration named {f.name!r} exists")
        w.name = f.name
        w.endpoint = f.endpoint
        w.api_version = f.api_version
        self._apply_webhook_fields(w, f)
        w.version += 1
        w.modification_timestamp = now_ms()
        return w

    @staticmethod
    def _apply_webhook_fields(w: WebhookRegistration, f: WebhookFields) -> None:
        w.events = list(f.events)
        w.status = f.status or "ACTIVE"
        w.description = f.description
        w.secret = f.secret

    def delete_webhook(self, registration_id: str) -> None:
        w = self.webhook(registration_id)
        del self.state.webhooks[w.id]
        self.deliverer.forget_channel(w.id)
        log.info("sandbox: webhook registration %s (%s) deleted", w.id, w.name)

    def ping_webhook(self, registration_id: str) -> Delivery:
        """``sendPing`` (v4) / ``ping`` (v3): queue a ``WebhookPingEvent`` to the endpoint."""
        w = self.webhook(registration_id)
        name, style, body = outbound.registration_ping_event(self.account_id, w)
        return self.deliverer.enqueue(w, name, style, body)

    def _emit(self, event: str, build: Callable[[WebhookRegistration], dict[str, Any]]) -> None:
        """Queue ``event`` to every active registration that subscribed to it."""
        for w in list(self.state.webhooks.values()):
            if w.status == "ACTIVE" and event in w.events:
                self.deliverer.enqueue(w, event, "event", build(w))

    # -- persons and contacts --------------------------------------------------------------
    def _add_default_agent(self) -> None:
        self.add_agent("Sandbox Agent", person_id=DEFAULT_AGENT_ID)

    def add_agent(self, display_name: str, *, person_id: str | None = None) -> Person:
        """An agent person (``USER_DB``) that can be a recipient and write messages."""
        pid = person_id or new_id()
        existing = self.state.persons.get(pid)
        if existing is not None:
            return existing
        first, _, last = display_name.partition(" ")
        agent = Person(
            id=pid,
            account_id=self.account_id,
            person_source="USER_DB",
            source_id=pid,
            person_type="AGENT",
            first_name=first or None,
            last_name=last or None,
            username=pid,
            fixed_display_name=display_name,
        )
        self.state.add_person(agent)
        return agent

    def agent_named(self, display_name: str) -> Person:
        for p in self.state.persons.values():
            if p.person_type == "AGENT" and p.display_name == display_name:
                return p
        return self.add_agent(display_name)

    def agents(self) -> list[Person]:
        return [p for p in self.state.persons.values() if p.person_type == "AGENT"]

    def upsert_virtual_person(self, f: PersonFields) -> Person:
        try:
            p = self.person_by_source("VIRTUAL", f.source_id)
        except ApiError:
            p = Person(
                id=new_id(),
                account_id=self.account_id,
                person_source="VIRTUAL",
                source_id=f.source_id,
                person_type=f.person_type or "VISITOR",
            )
            self.state.add_person(p)
        for name in (
            "person_type",
            "first_name",
            "last_name",
            "username",
            "nickname",
            "email",
            "phone",
            "source_url",
            "source_data",
        ):
            value = getattr(f, name)
            if value is not None:
                setattr(p, name, value)
        if f.metadata is not None:
            p.metadata = dict(f.metadata)
        return p

    def create_contact(
        self,
        channel_id: str,
        source_id: str,
        person_id: str | None,
        name: str | None,
        description: str | None,
    ) -> Contact:
        ch = self.channel(channel_id)
        existing = self.state.contacts_by_source.get((ch.id, source_id))
        if existing is not None:
            raise ApiError.conflict(
                f"sourceId: channel {ch.id!r} already has a contact with sourceId "
                f"{source_id!r} ({existing})"
            )
        contact_id = new_id()
        if person_id is None:
            person = self.upsert_virtual_person(
                PersonFields(source_id=f"contact:{contact_id}", nickname=name)
            )
        else:
            person = self.person(person_id)
        now = now_ms()
        contact = Contact(
            id=contact_id,
            account_id=self.account_id,
            channel_id=ch.id,
            source_id=source_id,
            person_id=person.id,
            creation_timestamp=now,
            modification_timestamp=now,
            name=name,
            description=description,
        )
        self.state.add_contact(contact)
        return contact

    # -- conversations ---------------------------------------------------------------------
    def create_conversation(self, nc: NewConversation) -> Conversation:
        channel = self.channel(nc.channel_id) if nc.channel_id else None
        if not nc.participants:
            raise ApiError.bad_request(
                "participants: at least one participant or external participant is required"
            )
        for p in nc.participants:
            self.person(p.person_id)
            if p.contact_id is not None:
                contact = self.contact(p.contact_id)
                if channel is None or contact.channel_id != channel.id:
                    raise ApiError.bad_request(
                        f"externalParticipants: contact {contact.id!r} belongs to channel "
                        f"{contact.channel_id!r}, not to {nc.channel_id!r}"
                    )
        if nc.source_id is not None:
            other = self.state.active_by_source.get((nc.channel_id, nc.source_id))
            if other is not None:
                raise ApiError.conflict(
                    f"sourceId: an active conversation ({other}) with sourceId "
                    f"{nc.source_id!r} already exists for channel {nc.channel_id!r}"
                )
        if channel is not None and not channel.supports_multiple_conversations_per_contact:
            for p in nc.participants:
                if p.contact_id and self._contact_busy(p.contact_id):
                    raise ApiError.conflict(
                        f"externalParticipants: contact {p.contact_id!r} already has an active "
                        "conversation and the channel does not support several per contact"
                    )
        participants = list(nc.participants)
        if nc.recipient is not None and nc.recipient.type == "AGENT":
            agent = self.state.persons.get(nc.recipient.id)
            if agent is None or agent.person_type != "AGENT":
                raise ApiError.not_found(f"recipient.id: no agent with id {nc.recipient.id!r}")
            if not any(p.participation_type == "ASSIGNED_AGENT" for p in participants):
                participants.append(Participant(agent.id, "ASSIGNED_AGENT"))
        assigned = any(p.participation_type == "ASSIGNED_AGENT" for p in participants)
        now = now_ms()
        conv = Conversation(
            id=new_id(),
            account_id=self.account_id,
            channel_id=nc.channel_id,
            source_id=nc.source_id,
            state="ACTIVE" if assigned else "QUEUED",
            initial_engagement_type=nc.initial_engagement_type,
            creation_timestamp=now,
            participants=participants,
            recipient=nc.recipient,
            topic=nc.topic,
            locale=nc.locale,
            visitor_data=nc.visitor_data,
            source_url=nc.source_url,
            initial_engagement_url=nc.initial_engagement_url,
            conversation_visibility=nc.conversation_visibility,
            metadata=dict(nc.metadata),
            awaited_person_type="AGENT",
            awaited_person_type_change_timestamp=now,
        )
        self.state.add_conversation(conv)
        return conv

    def _contact_busy(self, contact_id: str) -> bool:
        return any(
            c.is_active and any(p.contact_id == contact_id for p in c.participants)
            for c in self.state.conversations.values()
        )

    def end_conversation(self, conversation_id: str, reason: str | None = None) -> Conversation:
        conv = self.conversation(conversation_id)
        if not conv.is_active:
            raise ApiError.conflict(f"conversation {conv.id!r} has already ended")
        self._end(conv, reason or "ENDED_BY_PARTICIPANT")
        return conv

    def _end(self, conv: Conversation, reason: str) -> None:
        now = now_ms()
        conv.state = "ENDED"
        conv.end_reason = reason
        conv.end_timestamp = now
        conv.awaited_person_type = "NONE"
        conv.awaited_person_type_change_timestamp = now
        for p in conv.participants:
            p.state = "ENDED"
        self.state.conversation_ended(conv)
        self._emit(
            outbound.CONVERSATION_ENDED_EVENT,
            lambda w: outbound.conversation_ended(self.state, conv, w.api),
        )

    def _await(self, conv: Conversation, who: str) -> None:
        if conv.awaited_person_type != who:
            conv.awaited_person_type = who
            conv.awaited_person_type_change_timestamp = now_ms()

    # -- messages ----------------------------------------------------------------------------
    def _download_url(self, message_id: str, base_url: str | None) -> str | None:
        base = self.public_url or base_url
        return f"{base}{FILES_PATH}/{message_id}" if base else None

    def _new_message(
        self,
        conv: Conversation,
        sender: Person,
        content: MessageContent,
        base_url: str | None,
    ) -> Message:
        msg = Message(
            id=new_id(),
            action_id=new_id(),
            conversation_id=conv.id,
            channel_id=conv.channel_id,
            account_id=self.account_id,
            type=content.type,
            sender_person_id=sender.id,
            server_timestamp=now_ms(),
            text=content.text,
            text_type=content.text_type,
            file=content.file,
        )
        if content.fallback_text is not None:
            msg.fallback_text = content.fallback_text
        elif content.type == "TEXT":
            msg.fallback_text = content.text
        elif content.file is not None:
            msg.fallback_text = content.file.caption or content.file.name
        if content.file is not None:
            msg.download_url = self._download_url(msg.id, base_url)
        self.state.messages[msg.id] = msg
        conv.message_ids.append(msg.id)
        return msg

    def post_messenger_message(
        self,
        channel_id: str,
        conversation_id: str,
        sender_person_id: str,
        content: MessageContent,
        *,
        sender_field: str,
        source_id: str | None = None,
        external_message_id: str | None = None,
        reply_to_message_id: str | None = None,
        reply_to_external_message_id: str | None = None,
        recipient_person_ids: list[str] | None = None,
        base_url: str | None = None,
    ) -> Message:
        """A message from the messenger user (``sendMessage``); never sent back out."""
        ch = self.channel(channel_id)
        conv = self.conversation(conversation_id)
        if conv.channel_id != ch.id:
            raise ApiError.bad_request(
                f"conversationId: conversation {conv.id!r} is connected to "
                f"{'channel ' + repr(conv.channel_id) if conv.channel_id else 'no channel'}, "
                f"not to channel {ch.id!r}"
            )
        if not conv.is_active:
            raise ApiError.conflict(f"conversationId: conversation {conv.id!r} has ended")
        participant = conv.participant(sender_person_id)
        if participant is None or not participant.via_messenger:
            raise ApiError.bad_request(
                f"{sender_field}: the sender is not a participant of conversation {conv.id!r} "
                "connected through the external messenger"
            )
        sender = self.person(sender_person_id)
        msg = self._new_message(conv, sender, content, base_url)
        msg.origin_channel_id = ch.id
        msg.source_id = source_id
        msg.external_message_id = external_message_id
        msg.reply_to_message_id = reply_to_message_id
        msg.reply_to_external_message_id = reply_to_external_message_id
        msg.recipient_person_ids = recipient_person_ids
        msg.state = "SENT"
        self._await(conv, "AGENT")
        self._dispatch_message(msg)
        return msg

    def post_agent_message(
        self,
        conversation_id: str,
        content: MessageContent,
        *,
        sender_name: str | None = None,
        agent_id: str | None = None,
        internal: bool = False,
        base_url: str | None = None,
    ) -> Message:
        """An agent writes into a conversation; it goes out to the channel unless internal."""
        conv = self.conversation(conversation_id)
        if not conv.is_active:
            raise ApiError.conflict(f"conversation {conv.id!r} has ended")
        if sender_name:
            agent = self.agent_named(sender_name)
        elif agent_id:
            agent = self.person(agent_id, field_name="agentId")
            if agent.person_type != "AGENT":
                raise ApiError.bad_request(f"agentId: person {agent_id!r} is not an agent")
        else:
            agent = self.person(conv.assignee_person_id or DEFAULT_AGENT_ID)
        if conv.participant(agent.id) is None:
            role = "SECONDARY_AGENT" if conv.assignee_person_id else "ASSIGNED_AGENT"
            conv.participants.append(Participant(agent.id, role))
        if conv.state in ("QUEUED", "CREATED", "ONBOARDING", "UNASSIGNED", "REBOARDING"):
            conv.state = "ACTIVE"
        msg = self._new_message(conv, agent, content, base_url)
        msg.internal = internal
        if not internal:
            self._await(conv, "VISITOR")
        self._dispatch_message(msg)
        return msg

    def _dispatch_message(self, msg: Message) -> None:
        """Send a new message to its conversation's channel, as Unblu would."""
        if msg.internal or msg.channel_id is None:
            return
        ch = self.state.channels.get(msg.channel_id)
        if ch is None or ch.webhook_status != "ACTIVE":
            return
        if msg.origin_channel_id == ch.id and not self.echo:
            return  # Unblu's loop prevention
        conv = self.state.conversations[msg.conversation_id]
        name, style, body = outbound.new_message(self.state, ch, conv, msg)
        self.deliverer.enqueue(
            ch,
            name,
            style,
            body,
            message_id=msg.id,
            on_success=self._new_message_delivered,
            on_failure=self._new_message_failed,
        )

    async def echoed(self, msg: Message) -> None:
        """With :attr:`echo` on, wait until ``msg`` went back to its own channel: the channel
        sees its message again before it learns the message's id from the answer."""
        if not self.echo or msg.origin_channel_id is None:
            return
        pending = [d.finished.wait() for d in self.deliverer.records if d.message_id == msg.id]
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_ECHO_WAIT):
                await asyncio.gather(*pending)

    def _new_message_delivered(self, d: Delivery) -> None:
        msg = self.state.messages.get(d.message_id or "")
        if msg is None:
            return
        answer = d.response_body
        if d.style == "request" and isinstance(answer, dict):
            ext = answer.get("externalMessageId")
            if isinstance(ext, str) and ext:
                msg.external_message_id = ext
        ch = self.state.channels.get(d.channel_id)
        if ch is not None and not ch.message_state_handled_externally:
            msg.record("DELIVERED", by="unblu")
            msg.record("READ", by="unblu")

    def _new_message_failed(self, d: Delivery) -> None:
        msg = self.state.messages.get(d.message_id or "")
        if msg is None:
            return
        last = d.attempts[-1].error if d.attempts else "no attempt"
        msg.record(
            "FAILED",
            by="unblu",
            fail_state="RETRYABLE",
            failure_text=f"delivery to the channel endpoint failed after "
            f"{len(d.attempts)} attempts ({last})",
        )

    def report_message_state(
        self,
        channel_id: str,
        conversation_id: str,
        message_id: str,
        state: str,
        *,
        contact_id: str | None = None,
        person_id: str | None = None,
        fail_state: str | None = None,
        failure_text: str | None = None,
    ) -> Message:
        """The middleware reports sent / delivered / read / failed for a message."""
        ch = self.channel(channel_id)
        conv = self.conversation(conversation_id)
        if conv.channel_id != ch.id:
            raise ApiError.bad_request(
                f"conversationId: conversation {conv.id!r} is not connected to channel {ch.id!r}"
            )
        msg = self.message(conv, message_id)
        if contact_id is not None:
            self.contact(contact_id)
        if person_id is not None:
            self.person(person_id)
        if state == "READ" and msg.state in ("PENDING", "SENT", "FAILED"):
            msg.record("DELIVERED", by="channel", contact_id=contact_id, person_id=person_id)
        msg.record(
            state,
            by="channel",
            contact_id=contact_id,
            person_id=person_id,
            fail_state=fail_state,
            failure_text=failure_text,
        )
        return msg

    def mark_read_by_agent(
        self, conversation_id: str, message_id: str, state: str = "READ"
    ) -> Message:
        """An agent saw a messenger user's message; emits message_state when handled externally."""
        conv = self.conversation(conversation_id)
        msg = self.message(conv, message_id)
        if not msg.from_messenger:
            raise ApiError.bad_request(
                f"messageId: message {msg.id!r} did not come from the external messenger"
            )
        if not msg.advances_to(state):
            return msg
        if state == "READ":
            msg.read_by_agent_timestamp = now_ms()
        msg.record(state, by="agent")
        ch = self.state.channels.get(msg.origin_channel_id or "")
        if ch is None or not ch.message_state_handled_externally or ch.webhook_status != "ACTIVE":
            return msg
        name, style, body = outbound.message_state(self.account_id, ch, msg, state)
        self.deliverer.enqueue(ch, name, style, body, message_id=msg.id)
        return msg

    # -- pings -------------------------------------------------------------------------------
    async def send_ping(self, channel_id: str) -> dict[str, Any]:
        """v4 ``sendPing``: POST a ``PingRequest`` now and return the endpoint's PingResponse."""
        ch = self.channel(channel_id)
        ping_id = new_id()
        name, style, body = outbound.ping_request(self.account_id, ping_id)
        d = await self.deliverer.call(ch, name, style, body)
        attempt = d.attempts[-1]
        if not attempt.ok:
            raise ApiError(
                502, f"ping to the channel endpoint failed: {attempt.error or attempt.status}"
            )
        answer = attempt.response_body
        if not isinstance(answer, dict) or answer.get("pingId") != ping_id:
            raise ApiError(
                502,
                f"the channel endpoint did not answer the ping with a PingResponse carrying "
                f"pingId {ping_id!r}",
            )
        return {"$_type": "PingResponse", "pingId": ping_id}

    def ping_custom_channel(self, channel_id: str) -> Delivery:
        """v3 ``pingCustomChannel``: queue a ``WebhookPingEvent`` to the channel endpoint."""
        ch = self.channel(channel_id)
        name, style, body = outbound.ping_event(self.account_id, ch)
        return self.deliverer.enqueue(ch, name, style, body)


SANDBOX_KEY: web.AppKey[Sandbox] = web.AppKey("extmsg_sandbox", Sandbox)
