"""An agent starts a conversation with a contact, as Unblu does it.

V4 channels with ``outboundSupported``: Unblu asks the channel's endpoint for the contact
(``outbound.external_messenger.create_contact`` with the person and the ``contactIdentifier``
the agent typed) and then for the conversation
(``outbound.external_messenger.create_conversation`` with the ``ConversationCreationData``),
and creates what the answers say (``CREATE``, ``USE_EXISTING``) or shows the ``errorText``.

V1 to V3 channels have no such requests: as with ``POST /conversations/create`` of web API
v3, the conversation is created on the channel with the contact's address as its
``sourceId`` and the person connected via the external messenger; the agent's first message
then reaches the channel as usual.

The person the agent reaches is the visitor with that phone number or address when the sandbox
knows one (a customer who wrote before, as an agent finds them in Unblu's person search), else
a new virtual visitor.
"""

from __future__ import annotations

from typing import Any

from .delivery import Delivery
from .errors import ApiError
from .inputs import NewConversation, PersonFields
from .render import person as render_person
from .service import DEFAULT_AGENT_ID, Sandbox
from .state import Channel, Contact, Conversation, Participant, Person

__all__ = ["CREATE_CONTACT_REQUEST", "CREATE_CONVERSATION_REQUEST", "start_conversation"]

CREATE_CONTACT_REQUEST = "outbound.external_messenger.create_contact"
CREATE_CONVERSATION_REQUEST = "outbound.external_messenger.create_conversation"
_ENGAGEMENT = "CHAT_REQUEST"


async def start_conversation(
    sandbox: Sandbox,
    channel_id: str,
    identifier: str,
    *,
    name: str | None = None,
    topic: str | None = None,
    agent_id: str | None = None,
) -> Conversation:
    """Start a conversation with the contact ``identifier`` on the channel; :class:`ApiError`
    (422 with the endpoint's ``errorText``, 502 when it does not answer) when it cannot."""
    channel = sandbox.channel(channel_id)
    identifier = identifier.strip()
    if not identifier:
        raise ApiError.bad_request("contactIdentifier: is required")
    agent = sandbox.person(agent_id or DEFAULT_AGENT_ID, field_name="agentId")
    if agent.person_type != "AGENT":
        raise ApiError.bad_request(f"agentId: person {agent.id!r} is not an agent")
    person = _known_visitor(sandbox, identifier) or _new_visitor(sandbox, channel, identifier, name)
    if not channel.uses_outbound_requests:
        return _create(sandbox, channel, identifier, person, None, agent, topic)
    if not channel.outbound_supported:
        raise ApiError(409, f"channel {channel.name!r} does not support outbound conversations")
    contact = await _contact(sandbox, channel, identifier, person)
    answer = await _ask(
        sandbox,
        channel,
        CREATE_CONVERSATION_REQUEST,
        {
            "$_type": "ExternalMessengerCreateConversationRequest",
            "accountId": sandbox.account_id,
            "serviceName": CREATE_CONVERSATION_REQUEST,
            "creationData": _creation_data(channel, contact, agent, topic),
        },
    )
    kind = answer.get("type")
    if kind == "USE_EXISTING":
        return sandbox.conversation(str(answer.get("conversationId")), field_name="conversationId")
    if kind == "CREATE":
        source_id = answer.get("sourceId")
        if not isinstance(source_id, str) or not source_id:
            raise ApiError(502, "the channel answered CREATE without a sourceId")
        return _create(sandbox, channel, source_id, person, contact, agent, topic)
    raise ApiError(422, str(answer.get("errorText") or f"the channel answered {kind!r}"))


def _known_visitor(sandbox: Sandbox, identifier: str) -> Person | None:
    """The visitor with that phone number or address, as an agent would pick them in Unblu's
    person search (a customer who wrote before)."""
    return next(
        (
            p
            for p in sandbox.state.persons.values()
            if p.person_type == "VISITOR" and identifier in (p.phone, p.email)
        ),
        None,
    )


def _new_visitor(sandbox: Sandbox, channel: Channel, identifier: str, name: str | None) -> Person:
    first, _, last = (name or "").strip().partition(" ")
    return sandbox.upsert_virtual_person(
        PersonFields(
            source_id=f"{channel.id}:{identifier}",
            person_type="VISITOR",
            first_name=first or None,
            last_name=last or None,
            nickname=None if name else identifier,
            email=identifier if "@" in identifier else None,
            phone=identifier if "@" not in identifier else None,
        )
    )


async def _contact(sandbox: Sandbox, channel: Channel, identifier: str, person: Person) -> Contact:
    answer = await _ask(
        sandbox,
        channel,
        CREATE_CONTACT_REQUEST,
        {
            "$_type": "ExternalMessengerCreateContactRequest",
            "accountId": sandbox.account_id,
            "serviceName": CREATE_CONTACT_REQUEST,
            "externalMessengerChannelId": channel.id,
            "personData": render_person(person, "v4"),
            "contactIdentifier": identifier,
        },
    )
    kind = answer.get("type")
    if kind == "USE_EXISTING":
        return sandbox.contact(str(answer.get("externalMessengerContactId")))
    if kind != "CREATE":
        raise ApiError(422, str(answer.get("errorText") or f"the channel answered {kind!r}"))
    source_id = answer.get("sourceId")
    if not isinstance(source_id, str) or not source_id:
        raise ApiError(502, "the channel answered CREATE without a sourceId for the contact")
    existing = sandbox.state.contacts_by_source.get((channel.id, source_id))
    if existing is not None:
        return sandbox.state.contacts[existing]
    name = answer.get("name")
    description = answer.get("description")
    return sandbox.create_contact(
        channel.id,
        source_id,
        person.id,
        name if isinstance(name, str) else None,
        description if isinstance(description, str) else None,
    )


def _creation_data(
    channel: Channel, contact: Contact, agent: Person, topic: str | None
) -> dict[str, Any]:
    data: dict[str, Any] = {
        "$_type": "ConversationCreationData",
        "externalMessengerChannelId": channel.id,
        "initialEngagementType": _ENGAGEMENT,
        "recipient": {
            "$_type": "ConversationCreationRecipientData",
            "type": "AGENT",
            "id": agent.id,
        },
        "participants": [
            {
                "$_type": "ConversationCreationParticipantData",
                "personId": agent.id,
                "participationType": "ASSIGNED_AGENT",
            }
        ],
        "externalParticipants": [
            {
                "$_type": "ConversationCreationExternalParticipantData",
                "externalMessengerContactId": contact.id,
                "participationType": "CONTEXT_PERSON",
            }
        ],
    }
    if topic:
        data["topic"] = topic
    return data


async def _ask(
    sandbox: Sandbox, channel: Channel, name: str, body: dict[str, Any]
) -> dict[str, Any]:
    d: Delivery = await sandbox.deliverer.call(channel, name, "request", body)
    attempt = d.attempts[-1]
    if not attempt.ok:
        raise ApiError(
            502, f"{name} to the channel endpoint failed: {attempt.error or attempt.status}"
        )
    answer = attempt.response_body
    if not isinstance(answer, dict):
        raise ApiError(502, f"the channel endpoint answered {name} with no JSON object")
    return answer


def _create(
    sandbox: Sandbox,
    channel: Channel,
    source_id: str,
    person: Person,
    contact: Contact | None,
    agent: Person,
    topic: str | None,
) -> Conversation:
    return sandbox.create_conversation(
        NewConversation(
            channel_id=channel.id,
            source_id=source_id,
            initial_engagement_type=_ENGAGEMENT,
            participants=[
                Participant(
                    person.id,
                    "CONTEXT_PERSON",
                    via_messenger=True,
                    contact_id=contact.id if contact else None,
                ),
                Participant(agent.id, "ASSIGNED_AGENT"),
            ],
            topic=topic,
        )
    )
