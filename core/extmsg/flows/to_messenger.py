"""An agent's message on its way out: resolve the contact, render, send, record.

Runs as the ``to_messenger.message`` job, in order per conversation. The provider's id is
stored as soon as the provider accepted the message, and the state report to Unblu is a job of
its own, so a failing Unblu call never causes a second send. What remains is the window between
the provider accepting and our commit. A job that may have been caught there is *in doubt*
(``job.in_doubt``): before its first unrecorded part goes out again, the provider is asked
whether it already has it (``extmsg_find_sent``), and every such attempt is counted in
``extmsg_in_doubt_total``. Where the provider can tell, nothing is sent twice; elsewhere the
possible double is counted and logged.
"""

from __future__ import annotations

import functools
import logging
from typing import NamedTuple

import msgspec

from .. import media, optout
from ..errors import PermanentError
from ..logsafe import mask_address
from ..models import Attachment, Channel, Contact, MessageState, OutboundMessage, SendResult
from ..runtime import Runtime
from ..store.base import ContactRow, Intake, Job, NewJob, PartSent, first_run
from ..unblu.calls import AgentMessage
from . import payloads as p

__all__ = ["deliver_to_messenger", "report_state_job", "send_rendered"]

log = logging.getLogger("extmsg.to_messenger")


async def deliver_to_messenger(runtime: Runtime, job: Job, payload: p.OutboundMessageJob) -> None:
    channel = runtime.channel(payload.channel)
    # On its first run, no earlier attempt can have sent it, nor can it have failed.
    stored = None if first_run(job) else await runtime.store.get_message(payload.message_id)
    if stored is not None and stored.state >= MessageState.SENT:
        # A message reaches SENT only once all its parts went out (Store.complete_message;
        # a status for an early part waits on the part): sent in full before a crash or a
        # failed report, so only the report may be missing. FAILED: reported when it failed.
        if stored.state != MessageState.FAILED:
            await _enqueue_report(runtime, payload, stored.state)
        return
    agent = payload.message
    address, thread, contact_row, last_inbound_at = await _recipient(runtime, payload)
    if contact_row is not None and contact_row.opted_out:
        reason = f" ({contact_row.opted_out_reason})" if contact_row.opted_out_reason else ""
        word = optout.rules(channel, runtime.messengers.get(channel.messenger)).first_opt_in
        how = f" (e.g. reply {word})" if word else ""
        raise PermanentError(
            f"Not sent: the customer opted out of messages on this channel{reason}. "
            f"They have to opt in again{how} before they can be reached here."
        )
    message = OutboundMessage(
        id=payload.message_id,
        unblu_message_id=agent.id,
        conversation_id=agent.conversation_id,
        contact=Contact(address=address, name=contact_row.name if contact_row else None),
        text=_text(agent),
        attachment=await _attachment(runtime, agent),
        sender_name=agent.sender_display_name,
        thread=thread,
        reply_to=await _reply_to(runtime, channel.name, agent),
        last_inbound_at=last_inbound_at,
        accepted_at=job.created_at or None,
    )
    last = await send_rendered(runtime, job, channel, message, keep_last=True)
    # SENT, or further when the provider reported on every part before the last was
    # recorded; FAILED when it reported one failed. The last part's record, the message's
    # state, its report's job and the job's completion go in one write.
    assert runtime.engine is not None
    await runtime.engine.complete_with(
        job,
        functools.partial(
            runtime.store.complete_message,
            payload.message_id,
            job=job,
            last=last,
            report=lambda settled: report_state_job(
                _state_report(payload, settled.state, settled.error)
            ),
        ),
    )


async def send_rendered(
    runtime: Runtime,
    job: Job,
    channel: Channel,
    message: OutboundMessage,
    *,
    keep_last: bool = False,
) -> PartSent | None:
    """Render ``message`` for the channel and send the parts not recorded yet, each recorded
    as soon as the provider accepted it; in doubt, the provider is asked first.

    With ``keep_last``, the last part, once sent, is not recorded but returned, for the
    caller's next write to record (:meth:`Store.complete_message`, right after)."""
    parts = await runtime.hooks.render_outbound(channel, message)
    if not parts:
        raise PermanentError("the message has nothing this channel can send")
    # On its first run, no earlier attempt can have recorded a part.
    done = {} if first_run(job) else await runtime.store.sent_parts(message.id)
    by_url = runtime.messengers[channel.messenger].media_by_url
    in_doubt = job.in_doubt
    for index, part in enumerate(parts):
        if index in done:
            continue  # sent before a retry or a crash
        if in_doubt:
            # Parts go out one by one, each recorded before the next: only the first part
            # not recorded can have reached the provider unrecorded.
            in_doubt = False
            found = await _look_before_sending(runtime, channel, part, index)
            if found is not None:
                await runtime.store.record_part(
                    message.id, channel.name, index, found.provider_message_id, job=job
                )
                continue
        attachment = part.attachment
        if by_url and attachment is not None and attachment.data is not None and not attachment.url:
            attachment = await media.publish(runtime, channel, attachment, message.id)
            part = msgspec.structs.replace(part, attachment=attachment)
        assert runtime.engine is not None
        await runtime.engine.hold(job)
        with runtime.metrics.timed_call(channel.messenger, "send"):
            result = await runtime.hooks.send(channel, part)
        sent = PartSent(
            channel=channel.name, part=index, provider_message_id=result.provider_message_id
        )
        if keep_last and index == len(parts) - 1:
            return sent
        await runtime.store.record_part(
            message.id, sent.channel, sent.part, sent.provider_message_id, job=job
        )
    return None


async def _look_before_sending(
    runtime: Runtime, channel: Channel, part: OutboundMessage, index: int
) -> SendResult | None:
    """The provider's record of ``part`` when it has it (do not send); None: send it.

    A lookup that fails with a retryable error (the provider is unreachable, throttles)
    raises: the job runs again later, still in doubt, rather than risk a double while the
    provider cannot answer (its send would most likely fail the same way). A permanent lookup
    error (e.g. credentials that may send but not read) sends: the message matters more than
    the possible double, which is counted.
    """
    where = (channel.name, part.id, index, mask_address(part.contact.address))
    try:
        with runtime.metrics.timed_call(channel.messenger, "find_sent"):
            found = await runtime.hooks.find_sent(channel, part)
    except Exception as exc:
        verdict = await runtime.hooks.classify_error(channel, exc)
        _count_doubt(runtime, channel, "lookup_failed")
        if verdict.retryable:
            log.warning(
                "in doubt on %s: message %s part %d to %s; the provider could not be asked "
                "(%s), so it is not sent now and the job tries again later",
                *where,
                verdict.reason,
            )
            raise
        log.warning(
            "in doubt on %s: message %s part %d to %s; the provider could not be asked (%s), "
            "so it is sent again and may arrive twice",
            *where,
            verdict.reason,
        )
        return None
    if isinstance(found, SendResult):
        owner = await runtime.store.find_message_by_part(channel.name, found.provider_message_id)
        # A first part's match recorded for this very message came in with the provider's
        # status of the attempt that was cut off (a status is recorded as the first part of a
        # message with none): it arrived.
        if owner is not None and not (owner.id == part.id and index == 0):
            # The provider matched a message we already recorded (the same text sent twice):
            # it is not evidence that this one arrived.
            _count_doubt(runtime, channel, "unknown")
            log.warning(
                "in doubt on %s: message %s part %d to %s; the provider's match %s belongs to "
                "message %s, so this one is sent again and may arrive twice",
                *where,
                found.provider_message_id,
                owner.id,
            )
            return None
        _count_doubt(runtime, channel, "found")
        log.info(
            "in doubt on %s: message %s part %d to %s was already at the provider as %s; "
            "not sent again",
            *where,
            found.provider_message_id,
        )
        return found
    if found is False:
        _count_doubt(runtime, channel, "not_found")
        log.info(
            "in doubt on %s: message %s part %d to %s never reached the provider; sending it",
            *where,
        )
        return None
    _count_doubt(runtime, channel, "unknown")
    log.warning(
        "in doubt on %s: message %s part %d to %s; %s cannot tell whether it has it, so it is "
        "sent again and may arrive twice",
        *where,
        channel.messenger,
    )
    return None


def _count_doubt(runtime: Runtime, channel: Channel, outcome: str) -> None:
    runtime.metrics.in_doubt.labels(channel.name, "to_messenger", outcome).inc()


class _Recipient(NamedTuple):
    address: str
    thread: str
    contact: ContactRow | None
    last_inbound_at: float | None


async def _recipient(runtime: Runtime, payload: p.OutboundMessageJob) -> _Recipient:
    """The contact's address and the thread, from what we know of the conversation; the
    contact's row, and when they last wrote there. One store read when the conversation is
    known."""
    channel = payload.channel
    view = await runtime.store.outbound_view(channel, payload.message.conversation_id)
    if view.conversation is not None:
        conversation = view.conversation
        return _Recipient(
            conversation.contact_address, conversation.thread, view.contact, view.last_inbound_at
        )
    if payload.contact_address:
        address, thread = payload.contact_address, payload.thread or payload.contact_address
    else:
        remote = await runtime.unblu_client().get_conversation(payload.message.conversation_id)
        if not remote.source_id:
            raise PermanentError(
                "Not sent: this conversation is not linked to a contact of the channel"
            )
        address = thread = remote.source_id
    return _Recipient(
        address,
        thread,
        await runtime.store.get_contact(channel, address),
        await runtime.store.last_inbound_at(channel, thread),
    )


def _text(agent: AgentMessage) -> str | None:
    if agent.type == "FILE":
        return None
    return agent.text if agent.text is not None else agent.fallback_text


async def _attachment(runtime: Runtime, agent: AgentMessage) -> Attachment | None:
    if agent.type != "FILE":
        return None
    if not agent.download_url:
        raise PermanentError("Not sent: the file has no download link yet")
    data, mime = await runtime.unblu_client().download(agent.download_url)
    return Attachment(
        file_name=agent.file_name or "file",
        mime_type=agent.mime_type or mime or "application/octet-stream",
        data=data,
        caption=agent.caption,
    )


async def _reply_to(runtime: Runtime, channel: str, agent: AgentMessage) -> str | None:
    if not agent.reply_to_message_id:
        return None
    row = await runtime.store.find_message(
        channel, "in", unblu_message_id=agent.reply_to_message_id
    )
    if row is None:
        row = await runtime.store.find_message(
            channel, "out", unblu_message_id=agent.reply_to_message_id
        )
    return row.provider_message_id if row else None


async def _enqueue_report(
    runtime: Runtime,
    payload: p.OutboundMessageJob,
    state: MessageState,
    error: str | None = None,
) -> None:
    report = _state_report(payload, state, error)
    assert runtime.engine is not None
    await runtime.engine.intake([Intake(job=report_state_job(report))])


def _state_report(
    payload: p.OutboundMessageJob, state: MessageState, error: str | None
) -> p.UnbluStateJob:
    failed = state == MessageState.FAILED
    return p.UnbluStateJob(
        channel=payload.channel,
        message_id=payload.message_id,
        state=p.reported_state(state),
        failure_text=error if failed else None,
        terminal=failed,
    )


def report_state_job(report: p.UnbluStateJob) -> NewJob:
    """The job reporting ``report`` to Unblu, in the message's own lane so states keep order."""
    return NewJob(
        kind=p.kind(report),
        lane=p.lane(report.channel, f"state:{report.message_id}"),
        payload=p.encode(report),
        message_id=report.message_id,
    )
