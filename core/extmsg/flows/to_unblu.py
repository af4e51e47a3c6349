"""A contact's message on its way into Unblu: contact, conversation, sendMessage.

Runs as the ``to_unblu.message`` job, in order per channel thread. The contact and the active
conversation are remembered in the store, so the usual message costs one Unblu call. When
Unblu says the conversation is over, the message opens a new one.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from ..errors import PermanentError
from ..models import Channel, Contact, InboundMessage, MessageState
from ..runtime import Runtime
from ..store.base import ContactRow, ConversationRow, Job
from ..unblu.client import ContactRef, Recipient
from ..unblu.errors import UnbluError
from . import payloads as p
from .posted import already_posted, external_id

__all__ = ["deliver_to_unblu"]

log = logging.getLogger("extmsg.to_unblu")


async def deliver_to_unblu(runtime: Runtime, job: Job, payload: p.ToUnbluJob) -> None:
    channel = runtime.channel(payload.channel)
    message = payload.message
    stored = await runtime.store.get_message(payload.message_id)
    if stored is not None and stored.unblu_message_id:
        return  # posted before a crash; only the job's completion was lost
    contact = await runtime.hooks.map_contact(channel, message.contact)
    ref = await _contact_ref(runtime, channel, contact)
    conversation_id = await _conversation(runtime, channel, contact, ref, message)
    posted = await already_posted(
        runtime, job, channel.name, conversation_id, payload.message_id, message
    )
    assert runtime.engine is not None
    try:
        await runtime.engine.hold(job)
        unblu_id = await _post(
            runtime, channel, conversation_id, ref, payload.message_id, message, posted
        )
    except UnbluError as exc:
        if exc.retryable or not await _has_ended(runtime, conversation_id):
            raise
        log.info("conversation %s ended in Unblu; opening a new one", conversation_id)
        await runtime.store.end_conversation(conversation_id)
        conversation_id = await _conversation(runtime, channel, contact, ref, message)
        await runtime.engine.hold(job)
        unblu_id = await _post(
            runtime, channel, conversation_id, ref, payload.message_id, message, {}
        )
    await runtime.store.update_message(
        payload.message_id,
        unblu_message_id=unblu_id,
        conversation_id=conversation_id,
        state=MessageState.SENT,
        job=job,
    )


async def _contact_ref(runtime: Runtime, channel: Channel, contact: Contact) -> ContactRef:
    row = await runtime.store.get_contact(channel.name, contact.address)
    v4 = runtime.config.unblu.api_version == "v4"
    if (
        row is not None
        and row.unblu_person_id
        and (row.unblu_contact_id or not v4)
        and (contact.name is None or contact.name == row.name)
    ):
        return ContactRef(row.unblu_person_id, row.unblu_contact_id)
    ref = await runtime.unblu_client().ensure_contact(
        runtime.unblu_channel_id(channel.name),
        contact.address,
        name=contact.name or (row.name if row else None),
        phone=contact.phone,
        email=contact.email,
    )
    await runtime.store.upsert_contact(
        ContactRow(
            channel=channel.name,
            address=contact.address,
            name=contact.name or (row.name if row else None),
            unblu_person_id=ref.person_id,
            unblu_contact_id=ref.contact_id,
        )
    )
    return ref


async def _conversation(
    runtime: Runtime, channel: Channel, contact: Contact, ref: ContactRef, message: InboundMessage
) -> str:
    thread = message.thread_id
    row = await runtime.store.active_conversation(channel.name, thread)
    if row is not None:
        return row.unblu_conversation_id
    client = runtime.unblu_client()
    channel_id = runtime.unblu_channel_id(channel.name)
    found = await client.find_active_conversation(channel_id, thread)
    if found is None or found.ended:
        routing = await runtime.hooks.route_conversation(channel, contact, message)
        recipient = (
            Recipient(routing.recipient.type, routing.recipient.id) if routing.recipient else None
        )
        found = await client.create_conversation(
            channel_id,
            thread,
            ref,
            engagement_type=routing.engagement_type,
            recipient=recipient,
            topic=routing.topic,
            locale=routing.locale,
        )
        log.info("opened conversation %s on channel %s", found.id, channel.name)
    await runtime.store.add_conversation(
        ConversationRow(
            channel=channel.name,
            thread=thread,
            contact_address=contact.address,
            unblu_conversation_id=found.id,
        )
    )
    return found.id


async def _post(
    runtime: Runtime,
    channel: Channel,
    conversation_id: str,
    ref: ContactRef,
    message_id: str,
    message: InboundMessage,
    posted: Mapping[str, str],
) -> str:
    """Post the text (sourceId = the provider's id), then each attachment as a FILE message.

    Each part carries our stable id as ``externalMessageId`` (v4 ``ExternalMessengerPostMessage``;
    v3's has no such field and goes without). Parts in ``posted`` (our id → Unblu's) are there
    already and are not posted again.
    """
    client = runtime.unblu_client()
    channel_id = runtime.unblu_channel_id(channel.name)
    ids: list[str] = []
    if message.text or not message.attachments:
        known = posted.get(external_id(message_id, 0))
        if known is None:
            known = await client.send_text(
                channel_id,
                conversation_id,
                ref,
                message.provider_message_id,
                message.text or "",
                external_message_id=external_id(message_id, 0),
            )
        ids.append(known)
    for attachment in message.attachments:
        if (known := posted.get(external_id(message_id, len(ids)))) is not None:
            ids.append(known)
            continue
        if attachment.data is None:
            attachment = await runtime.hooks.fetch_attachment(channel, attachment)
        if attachment.data is None:
            raise PermanentError(f"the attachment {attachment.file_name!r} could not be fetched")
        ids.append(
            await client.send_file(
                channel_id,
                conversation_id,
                ref,
                _source_id(message, len(ids)),
                file_name=attachment.file_name,
                mime_type=attachment.mime_type,
                data=attachment.data,
                caption=attachment.caption,
                external_message_id=external_id(message_id, len(ids)),
            )
        )
    return ids[0]


def _source_id(message: InboundMessage, index: int) -> str:
    """One sourceId per Unblu message: the provider id, suffixed for a message's extra parts."""
    return message.provider_message_id if index == 0 else f"{message.provider_message_id}#{index}"


async def _has_ended(runtime: Runtime, conversation_id: str) -> bool:
    try:
        conversation = await runtime.unblu_client().get_conversation(conversation_id)
    except UnbluError as exc:
        return exc.status == 404
    return conversation.ended
