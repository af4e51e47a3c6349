"""Texts extmsg sends a contact on its own: the channel's ``ended_text`` when Unblu ends the
conversation, and the replies confirming an opt-out or opt-in.

Each is a message row of its own (keyed by its cause, so a redelivered event stores no second
one) with a ``to_messenger.notice`` job, sent like an agent's message — rendered without a
sender prefix, recorded part by part, looked up at the provider when in doubt — but reported to
no one: Unblu has no message behind it. A contact who opted out gets no ended text (the
opt-out's own confirmation goes through).
"""

from __future__ import annotations

import logging

import msgspec

from ..errors import PermanentError
from ..logsafe import mask_address
from ..models import Contact, MessageState, OutboundMessage
from ..runtime import Runtime
from ..store.base import Intake, Job, NewJob, NewMessage
from . import payloads as p
from .to_messenger import send_rendered

__all__ = ["deliver_notice", "ended_notice"]

log = logging.getLogger("extmsg.notices")


def ended_notice(
    channel: str,
    text: str,
    conversation_id: str,
    *,
    contact_address: str | None,
    thread: str | None,
) -> Intake:
    """The ``ended_text`` of a conversation, once per conversation, in the conversation's lane
    (after the agent's last messages)."""
    message_id = p.new_id()
    job = p.NoticeJob(
        channel=channel,
        message_id=message_id,
        text=text,
        cause="ended",
        conversation_id=conversation_id,
        contact_address=contact_address,
        thread=thread,
    )
    return Intake(
        message=NewMessage(
            id=message_id,
            channel=channel,
            direction="out",
            thread=thread or contact_address or f"conversation:{conversation_id}",
            unblu_message_id=p.notice_key("ended", conversation_id),
            conversation_id=conversation_id,
        ),
        job=NewJob(
            kind=p.kind(job),
            lane=p.lane(channel, f"conversation:{conversation_id}"),
            payload=p.encode(job),
            message_id=message_id,
        ),
    )


async def deliver_notice(runtime: Runtime, job: Job, payload: p.NoticeJob) -> None:
    channel = runtime.channel(payload.channel)
    stored = await runtime.store.get_message(payload.message_id)
    if stored is not None and stored.state >= MessageState.SENT:
        return  # sent in full before a crash (or given up: FAILED)
    address, thread = await _recipient(runtime, payload)
    contact = await runtime.store.get_contact(channel.name, address)
    if contact is not None and contact.opted_out and not payload.despite_opt_out:
        reason = "not sent: the customer opted out of messages on this channel"
        await runtime.store.advance_state(payload.message_id, MessageState.FAILED, reason, job=job)
        log.info(
            "%s notice on %s to %s not sent: opted out",
            payload.cause,
            channel.name,
            mask_address(address),
        )
        return
    message = OutboundMessage(
        id=payload.message_id,
        unblu_message_id="",
        conversation_id=payload.conversation_id or "",
        contact=Contact(address=address, name=contact.name if contact else None),
        text=payload.text,
        thread=thread,
        last_inbound_at=await runtime.store.last_inbound_at(channel.name, thread),
        accepted_at=job.created_at or None,
    )
    # extmsg speaks here, not an agent: no "{sender}: " in front.
    await send_rendered(runtime, job, msgspec.structs.replace(channel, sender_prefix=""), message)
    await runtime.store.complete_message(payload.message_id, job=job)
    log.info("%s notice sent on %s to %s", payload.cause, channel.name, mask_address(address))


async def _recipient(runtime: Runtime, payload: p.NoticeJob) -> tuple[str, str]:
    if payload.conversation_id:
        conversation = await runtime.store.find_conversation(payload.conversation_id)
        if conversation is not None:
            return conversation.contact_address, conversation.thread
    if payload.contact_address:
        return payload.contact_address, payload.thread or payload.contact_address
    raise PermanentError("Not sent: the conversation is not linked to a contact of the channel")
