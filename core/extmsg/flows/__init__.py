"""The message flows between messengers and Unblu, each step a durable job.

* :mod:`.accept` — a provider's request becomes stored events and jobs (then the ack);
* :mod:`.to_unblu` — a contact's message is posted into its Unblu conversation
  (:mod:`.posted`: after a crash, only the parts Unblu does not have yet);
* :mod:`.to_messenger` — an agent's message is rendered and sent to the contact;
* :mod:`.notices` — texts extmsg sends on its own (``ended_text``, opt-out confirmations);
* :mod:`.states` — delivery states in both directions, forward only.

Unblu's own calls enter through :mod:`extmsg.unblu.endpoint`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

from .. import logcontext
from ..errors import PermanentError
from ..models import Channel, ErrorVerdict, MessageState
from ..runtime import Runtime
from ..store.base import Intake, Job
from . import payloads as p
from .notices import deliver_notice
from .states import apply_contact_update, apply_provider_status, mark_read, report_state
from .to_messenger import deliver_to_messenger, report_state_job
from .to_unblu import deliver_to_unblu

__all__ = ["channel_of_job", "job_log_context", "on_dead", "register_jobs"]

_HANDLERS: dict[type[Any], Callable[[Runtime, Job, Any], Awaitable[None]]] = {
    p.ToUnbluJob: deliver_to_unblu,
    p.OutboundMessageJob: deliver_to_messenger,
    p.ProviderStatusJob: apply_provider_status,
    p.UnbluStateJob: report_state,
    p.MarkReadJob: mark_read,
    p.ContactJob: apply_contact_update,
    p.NoticeJob: deliver_notice,
}


def register_jobs(runtime: Runtime) -> None:
    """Register one engine handler per job kind."""
    assert runtime.engine is not None
    for payload_type, handler in _HANDLERS.items():
        runtime.engine.register(p.kind_of(payload_type), _bind(runtime, handler))


def _bind(
    runtime: Runtime, handler: Callable[[Runtime, Job, Any], Awaitable[None]]
) -> Callable[[Job], Awaitable[None]]:
    async def run(job: Job) -> None:
        payload = p.decode(job.payload)
        if isinstance(payload, p.PurgedJob):
            raise PermanentError(
                f"this job's content was removed ({payload.reason}); there is nothing to run"
            )
        await handler(runtime, job, payload)

    return run


def job_log_context(job: Job) -> contextlib.AbstractContextManager[None]:
    """What a job's log lines carry (see :mod:`extmsg.logcontext`): its channel, message,
    request and (for an agent's message) Unblu conversation; and the message's text, which
    no line may quote (a provider's error may echo it)."""
    payload = p.decode(job.payload)
    message_id = conversation_id = None
    texts: tuple[str | None, ...] = ()
    if isinstance(payload, p.ToUnbluJob):
        message_id = payload.message_id
        texts = (payload.message.text, *(a.caption for a in payload.message.attachments))
    elif isinstance(payload, p.OutboundMessageJob):
        message_id = payload.message_id
        conversation_id = payload.message.conversation_id
        agent = payload.message
        texts = (agent.text, agent.fallback_text, agent.caption)
    elif isinstance(payload, p.UnbluStateJob):
        message_id = payload.message_id
    return logcontext.bind(
        channel=payload.channel,
        request_id=payload.request_id,
        message_id=message_id,
        conversation_id=conversation_id,
        texts=texts,
    )


def channel_of_job(runtime: Runtime, job: Job) -> Channel | None:
    try:
        return runtime.channels.get(p.decode(job.payload).channel)
    except Exception:
        return None


async def on_dead(runtime: Runtime, job: Job, verdict: ErrorVerdict) -> None:
    """A job gave up. An agent message is reported to Unblu as failed, with the reason."""
    payload = p.decode(job.payload)
    if isinstance(payload, p.NoticeJob):
        # No agent wrote it: nothing to report; the dead letter shows why.
        await runtime.store.advance_state(payload.message_id, MessageState.FAILED, verdict.reason)
        return
    if isinstance(payload, p.PurgedJob) and job.message_id is not None:
        # A purged agent message retried by hand: it stays failed, as it was.
        await runtime.store.advance_state(job.message_id, MessageState.FAILED, verdict.reason)
        return
    if not isinstance(payload, p.OutboundMessageJob):
        return
    await runtime.store.advance_state(payload.message_id, MessageState.FAILED, verdict.reason)
    report = p.UnbluStateJob(
        channel=payload.channel,
        message_id=payload.message_id,
        state="failed",
        failure_text=verdict.reason,
        terminal=not verdict.retryable,
    )
    assert runtime.engine is not None
    await runtime.engine.intake([Intake(job=report_state_job(report))])
