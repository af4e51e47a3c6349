"""Message states: the provider's statuses and Unblu's reads, correlated and passed on.

States only move forward (``Store.apply_status``); a status that arrives late or twice changes
nothing and reports nothing. Unblu hears only the latest state a message reached.

A message sent in parts (a long SMS as several, a text and a file) is sent once all its parts
went out, delivered once every part is, read once every part is; a part that failed fails it.
A status for one part while later parts are still to be sent (a retry waiting on a refused
part) is kept on that part and counted when the last part is recorded, so the retry still
sends the rest.
"""

from __future__ import annotations

import logging
import time

from ..errors import NotYet, PermanentError
from ..logsafe import mask
from ..models import MessageState
from ..runtime import Runtime
from ..store.base import Intake, Job, MessageRow
from . import payloads as p
from .to_messenger import report_state_job

__all__ = ["apply_provider_status", "mark_read", "report_state"]

log = logging.getLogger("extmsg.states")

#: Attempts a provider status gets to find its message (never more than the engine allows).
#: A status can outrun the commit of the provider's id after a send, which a retry or two
#: covers; a status still unmatched after these is for a message extmsg never sent.
STATUS_MATCH_ATTEMPTS = 4
#: ... unless it is younger than this: with short backoffs (a test's, or a tuned engine's) the
#: attempts above pass quicker than a slow provider answers a send whose receipt came first.
STATUS_MATCH_SECONDS = 30.0


async def apply_provider_status(runtime: Runtime, job: Job, payload: p.ProviderStatusJob) -> None:
    update = payload.update
    row = await _correlate(runtime, payload)
    if row is None:
        assert runtime.engine is not None
        attempt = job.attempts + 1
        young = time.time() - job.created_at < STATUS_MATCH_SECONDS
        if attempt < runtime.engine.policy.max_attempts - 1 and (
            attempt < STATUS_MATCH_ATTEMPTS or young
        ):
            # The status can outrun the commit of the provider's id after a send: a wait, not
            # a failure, so its retries are logged at DEBUG (NotYet).
            raise NotYet("no sent message matches this status yet")
        # Not ours: Meta sends every app on a business account the statuses of every app's
        # messages. Nothing to report, nothing a person could retry: counted and dropped.
        runtime.metrics.statuses_unmatched.labels(payload.channel).inc()
        log.debug(
            "dropped a %s status for provider message %s on channel %s: no message extmsg"
            " sent matches it",
            update.state,
            mask(update.provider_message_id or update.message_ref or "?"),
            payload.channel,
        )
        return
    state = MessageState.parse(update.state)
    error = update.error_text or (
        f"provider error {update.error_code}" if update.error_code else None
    )
    outcome = await runtime.store.apply_status(row.id, update.provider_message_id, state, error)
    if not outcome.applied:
        # Names no part recorded yet while parts are still being sent: its part's record (or
        # the last part's, for a status naming none) is on its way. Not capped like an
        # unmatched status: the message is ours, and it ends sent or failed, either of which
        # settles this status.
        raise NotYet("the message is still being sent and has no part of this id yet")
    if outcome.state is None or p.is_notice(row.unblu_message_id):
        return  # a notice extmsg sent on its own: Unblu has no message to mark
    report = p.UnbluStateJob(
        channel=payload.channel,
        message_id=row.id,
        state=p.reported_state(outcome.state),
        failure_text=error if outcome.state == MessageState.FAILED else None,
        terminal=True,
    )
    assert runtime.engine is not None
    await runtime.engine.intake([Intake(job=report_state_job(report))])


async def _correlate(runtime: Runtime, payload: p.ProviderStatusJob) -> MessageRow | None:
    """By our own id first (providers echo it back), then by the provider's id."""
    update = payload.update
    if update.message_ref:
        row = await runtime.store.get_message(update.message_ref)
        if row is not None and row.channel == payload.channel and row.direction == "out":
            return row
    if update.provider_message_id:
        row = await runtime.store.find_message(
            payload.channel, "out", provider_message_id=update.provider_message_id
        )
        return row or await runtime.store.find_message_by_part(
            payload.channel, update.provider_message_id
        )
    return None


async def report_state(runtime: Runtime, job: Job, payload: p.UnbluStateJob) -> None:
    row = await runtime.store.get_message(payload.message_id)
    if row is None:
        raise PermanentError(f"message {payload.message_id} is not in the store")
    if row.state != MessageState.parse(payload.state):
        return  # a later state was reached; it has its own report
    if not row.conversation_id or not row.unblu_message_id:
        raise PermanentError(f"message {payload.message_id} has no Unblu ids")
    client = runtime.unblu_client()
    channel_id = runtime.unblu_channel_id(payload.channel)
    if payload.state == "sent":
        await client.message_sent(channel_id, row.conversation_id, row.unblu_message_id)
    elif payload.state == "delivered":
        await client.message_delivered(channel_id, row.conversation_id, row.unblu_message_id)
    elif payload.state == "read":
        await client.message_read(channel_id, row.conversation_id, row.unblu_message_id)
    else:
        await client.message_send_failed(
            channel_id,
            row.conversation_id,
            row.unblu_message_id,
            terminal=payload.terminal,
            failure_text=payload.failure_text or "The message could not be delivered.",
        )


async def mark_read(runtime: Runtime, job: Job, payload: p.MarkReadJob) -> None:
    channel = runtime.channel(payload.channel)
    with runtime.metrics.timed_call(channel.messenger, "mark_read"):
        marked = await runtime.hooks.mark_read(channel, payload.provider_message_id)
    if not marked:
        log.debug("channel %s has no read receipts", channel.name)


async def apply_contact_update(runtime: Runtime, job: Job, payload: p.ContactJob) -> None:
    update = payload.update
    await runtime.store.set_opt_out(
        payload.channel, update.address, update.opted_out, update.reason
    )
