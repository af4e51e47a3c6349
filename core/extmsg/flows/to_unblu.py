"""A contact's message on its way into Unblu: contact, conversation, sendMessage.

Runs as the ``to_unblu.message`` job, in order per channel thread. The contact and the active
conversation are remembered in the store, so the usual message costs one Unblu call. When
Unblu says the conversation is over, the message opens a new one.

Attachments are fetched before anything is posted. One that cannot be fetched for good (the
provider forgot it, it is too large, the provider refuses it) does not stop the message: in
its place the agent gets the file's caption and a note naming the file and the reason. A fetch
that may succeed later fails the job, which retries before a conversation is opened.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence

from .. import logcontext
from ..errors import DeliveryError, FetchTooLarge
from ..models import Attachment, Channel, Contact, InboundMessage, MessageState
from ..runtime import Runtime
from ..store.base import ContactRow, ConversationRow, Job, first_run
from ..unblu.client import ContactRef, Recipient
from ..unblu.errors import UnbluError
from . import payloads as p
from .posted import already_posted, external_id

__all__ = ["deliver_to_unblu"]

log = logging.getLogger("extmsg.to_unblu")


async def deliver_to_unblu(runtime: Runtime, job: Job, payload: p.ToUnbluJob) -> None:
    channel = runtime.channel(payload.channel)
    message = payload.message
    if not first_run(job):  # on its first run, no earlier attempt can have posted it
        stored = await runtime.store.get_message(payload.message_id)
        if stored is not None and stored.unblu_message_id:
            return  # posted before a crash; only the job's completion was lost
    contact = await runtime.hooks.map_contact(channel, message.contact)
    files = await _fetch_files(runtime, channel, message)
    view = await runtime.store.inbound_view(channel.name, contact.address, message.thread_id)
    ref = await _contact_ref(runtime, channel, contact, view.contact)
    conversation_id, ref = await _conversation(
        runtime, channel, contact, ref, message, view.conversation
    )
    logcontext.set_field("conversation_id", conversation_id)
    posted = await already_posted(
        runtime, job, channel.name, conversation_id, payload.message_id, message
    )
    assert runtime.engine is not None
    hold = functools.partial(runtime.engine.hold, job)
    try:
        unblu_id = await _post(
            runtime, channel, conversation_id, ref, payload.message_id, message, files, posted, hold
        )
    except UnbluError as exc:
        if exc.retryable or not await _has_ended(runtime, conversation_id):
            raise
        log.info("conversation %s ended in Unblu; opening a new one", conversation_id)
        await runtime.store.end_conversation(conversation_id)
        active = await runtime.store.active_conversation(channel.name, message.thread_id)
        conversation_id, ref = await _conversation(runtime, channel, contact, ref, message, active)
        logcontext.set_field("conversation_id", conversation_id)
        unblu_id = await _post(
            runtime, channel, conversation_id, ref, payload.message_id, message, files, {}, hold
        )
    # Recorded with the job's completion, in one write.
    await runtime.engine.complete_with(
        job,
        functools.partial(
            runtime.store.update_message,
            payload.message_id,
            unblu_message_id=unblu_id,
            conversation_id=conversation_id,
            state=MessageState.SENT,
            job=job,
        ),
    )


async def _contact_ref(
    runtime: Runtime, channel: Channel, contact: Contact, row: ContactRow | None
) -> ContactRef:
    """The contact's Unblu ids: ``row`` (the stored contact) when it has them, else Unblu's."""
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
    if not v4 and row is not None and row.unblu_person_id:
        # v3: the person the contact writes as may be one an agent put in their conversation
        # (:func:`_adopt_participant`), not extmsg's own; a new name must not swap it back,
        # or Unblu refuses the next message as not a participant's. (v4 keeps the contact's
        # person in ensure_contact.)
        ref = ContactRef(row.unblu_person_id, ref.contact_id)
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
    runtime: Runtime,
    channel: Channel,
    contact: Contact,
    ref: ContactRef,
    message: InboundMessage,
    row: ConversationRow | None,
) -> tuple[str, ContactRef]:
    """The thread's active conversation (``row``, as stored), opened if there is none, and who
    writes in it."""
    thread = message.thread_id
    if row is not None:
        return row.unblu_conversation_id, ref
    client = runtime.unblu_client()
    channel_id = runtime.unblu_channel_id(channel.name)
    found = await client.find_active_conversation(channel_id, thread)
    if found is not None and not found.ended and runtime.config.unblu.api_version == "v3":
        ref = await _adopt_participant(runtime, channel, contact, ref, found.messenger_person_id)
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
    return found.id, ref


async def _adopt_participant(
    runtime: Runtime, channel: Channel, contact: Contact, ref: ContactRef, person_id: str | None
) -> ContactRef:
    """A conversation an agent opened in Unblu (v3) holds the person the agent picked as the
    one connected through the messenger: the contact writes as that person from now on, else
    Unblu refuses their messages as not a participant's."""
    if person_id is None or person_id == ref.person_id:
        return ref
    row = await runtime.store.get_contact(channel.name, contact.address)
    await runtime.store.upsert_contact(
        ContactRow(
            channel=channel.name,
            address=contact.address,
            name=contact.name or (row.name if row else None),
            unblu_person_id=person_id,
            unblu_contact_id=ref.contact_id,
        )
    )
    log.info(
        "channel %s: a contact writes as person %s, whom an agent put in their conversation",
        channel.name,
        person_id,
    )
    return ContactRef(person_id, ref.contact_id)


async def _fetch_files(
    runtime: Runtime, channel: Channel, message: InboundMessage
) -> list[Attachment | str]:
    """Each attachment with its bytes, or the text that stands in for it when it is lost.

    A retryable fetch error propagates (the job retries; after ``max_attempts`` it is a dead
    letter like any other). A permanent one — gone, too large, refused — cannot improve, so the
    agent is told in words: the file's caption (unless it is the message's text) and
    :func:`undelivered_note`. 401 is not the file's fault but the channel's credentials: it
    fails the job, which an operator retries once the credentials are fixed.
    """
    files: list[Attachment | str] = []
    for attachment in message.attachments:
        if attachment.data is not None:
            files.append(attachment)
            continue
        reason: str | None
        try:
            with runtime.metrics.timed_call(channel.messenger, "fetch_attachment"):
                fetched = await runtime.hooks.fetch_attachment(channel, attachment)
        except DeliveryError as exc:
            if exc.retryable or exc.status == 401:
                raise
            reason = (
                f"the file is larger than {_size(exc.limit)}"
                if isinstance(exc, FetchTooLarge)
                else exc.message
            )
        else:
            if fetched.data is not None:
                files.append(fetched)
                continue
            reason = "it could not be fetched"
        log.info(
            "an attachment of message %s on channel %s is replaced by a note: %s",
            message.provider_message_id,
            channel.name,
            reason,
        )
        note = undelivered_note(attachment.file_name, reason)
        caption = attachment.caption if attachment.caption != message.text else None
        files.append(f"{caption}\n{note}" if caption else note)
    return files


def _size(limit: int) -> str:
    """``16 MB``, ``1.5 MB``, ``500 KB``."""
    if limit >= 1024 * 1024:
        return f"{limit / (1024 * 1024):.1f}".removesuffix(".0") + " MB"
    return f"{max(limit // 1024, 1)} KB"


def undelivered_note(file_name: str, reason: str) -> str:
    """``[Attachment photo.jpg could not be delivered: the file is larger than 16 MB]``."""
    reason = " ".join(reason.split()).rstrip(".") or "unknown reason"
    first = reason.split(" ", 1)[0]
    if first[:1].isupper() and (len(first) == 1 or first[1:].islower()):
        reason = reason[0].lower() + reason[1:]  # "The file…", not "WhatsApp" or "HTTP"
    name = " ".join(file_name.split()) or "without a name"
    return f"[Attachment {name} could not be delivered: {reason}]"


async def _post(
    runtime: Runtime,
    channel: Channel,
    conversation_id: str,
    ref: ContactRef,
    message_id: str,
    message: InboundMessage,
    files: Sequence[Attachment | str],
    posted: Mapping[str, str],
    hold: Callable[[], Awaitable[None]],
) -> str:
    """Post the text (sourceId = the provider's id), then each attachment as a FILE message,
    or as a text message where ``files`` holds the note that stands in for it.

    Each part carries our stable id as ``externalMessageId`` (v4 ``ExternalMessengerPostMessage``;
    v3's has no such field and goes without). Parts in ``posted`` (our id → Unblu's) are there
    already and are not posted again. A note takes its file's place, so the parts keep their
    numbers whether a file arrived or not. ``hold`` (the job's :meth:`Engine.hold`) is
    awaited right before each part is posted: a part may go out only shortly after it.
    """
    client = runtime.unblu_client()
    channel_id = runtime.unblu_channel_id(channel.name)
    ids: list[str] = []
    if message.text or not message.attachments:
        known = posted.get(external_id(message_id, 0))
        if known is None:
            await hold()
            known = await client.send_text(
                channel_id,
                conversation_id,
                ref,
                message.provider_message_id,
                message.text or "",
                external_message_id=external_id(message_id, 0),
            )
        ids.append(known)
    for attachment in files:
        if (known := posted.get(external_id(message_id, len(ids)))) is not None:
            ids.append(known)
            continue
        await hold()
        if isinstance(attachment, str):
            ids.append(
                await client.send_text(
                    channel_id,
                    conversation_id,
                    ref,
                    _source_id(message, len(ids)),
                    attachment,
                    external_message_id=external_id(message_id, len(ids)),
                )
            )
            continue
        assert attachment.data is not None
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
