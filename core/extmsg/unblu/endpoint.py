"""Where Unblu's calls enter: ``POST /unblu/{channel}``.

Every call is checked against the channel's webhook secret before it is read. Agent messages
are stored with their job (deduplicated by Unblu's message id) before the answer, which for v4
carries the ``externalMessageId`` we minted and is signed like Unblu's own library signs it.
Internal messages, and messages that came in through this channel, are never sent out.
"""

from __future__ import annotations

import logging

from aiohttp import web

from .. import logcontext
from ..errors import BadInbound
from ..flows import payloads as p
from ..flows.notices import ended_notice
from ..models import Channel, MessageState
from ..runtime import RUNTIME, Runtime
from ..sanitize import MAX_ADDRESS, MAX_ID, check_length
from ..store.base import Intake, NewJob, NewMessage
from . import calls, signing
from .errors import UnbluNotFound

__all__ = ["unblu_request"]

log = logging.getLogger("extmsg.unblu")

_SKIPPED_TYPES = frozenset({"SYSTEM"})


async def unblu_request(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    name = request.match_info["channel"]
    channel = runtime.channels.get(name)
    call_name = "unknown"
    status = 500
    try:
        if channel is None:
            status = 404
            return _error(404, f"no channel named {name!r}")
        logcontext.set_field("channel", channel.name)
        body = await request.read()
        if channel.verify_signatures:
            problem = signing.verify(channel.webhook_secret, body, request.headers)
            if problem is not None:
                log.warning("unblu call to channel %s refused: %s", name, problem)
                status = 403
                return _error(403, f"signature check failed: {problem}")
        try:
            call = calls.decode_call(request.headers, body)
            _check_lengths(call)
        except (calls.MalformedCall, BadInbound) as exc:
            status = 400
            return _error(400, str(exc))
        call_name = call.service
        if isinstance(call, calls.NewMessage):
            logcontext.set_field("conversation_id", call.message.conversation_id)
        response = await _dispatch(runtime, channel, call)
        status = response.status
        return response
    finally:
        runtime.metrics.child(
            runtime.metrics.unblu_calls, name if channel else "?", call_name, str(status)
        ).inc()


def _check_lengths(call: calls.ChannelCall) -> None:
    """Ids and addresses that become store keys and lanes: refuse absurd ones (Unblu's ids are
    a few dozen characters; see :mod:`extmsg.sanitize` for the limits)."""
    if isinstance(call, calls.NewMessage):
        check_length("conversationMessage.id", call.message.id, MAX_ID)
        check_length("conversationMessage.conversationId", call.message.conversation_id, MAX_ID)
        for contact in call.receiving_contacts:
            check_length("receivingContacts[].sourceId", contact.source_id, MAX_ADDRESS)
    elif isinstance(call, calls.MessageState):
        check_length("sourceId", call.source_id, MAX_ID)
    elif isinstance(call, calls.CreateConversation):
        check_length("sourceId", call.source_id, MAX_ADDRESS)
    elif isinstance(call, calls.CreateContact):
        check_length("contactIdentifier", call.contact_identifier, MAX_ADDRESS)
    elif isinstance(call, calls.ConversationEnded):
        check_length("conversation.id", call.conversation_id, MAX_ID)
        check_length("conversation.sourceId", call.source_id, MAX_ADDRESS)


async def _dispatch(runtime: Runtime, channel: Channel, call: calls.ChannelCall) -> web.Response:
    if isinstance(call, calls.Ping):
        return _answer(channel, call, calls.ping_response(call.ping_id))
    if isinstance(call, calls.NewMessage):
        external_id = await _accept_agent_message(runtime, channel, call)
        return _answer(channel, call, calls.new_message_response(external_id))
    if isinstance(call, calls.MessageState):
        await _accept_message_state(runtime, channel, call)
        return _answer(channel, call, calls.message_state_response())
    if isinstance(call, calls.CreateContact):
        return _answer(channel, call, await _create_contact(runtime, channel, call))
    if isinstance(call, calls.ConversationEnded):
        await _accept_conversation_ended(runtime, channel, call)
        return web.Response(status=200)
    return _answer(channel, call, await _create_conversation(runtime, channel, call))


async def _accept_agent_message(
    runtime: Runtime, channel: Channel, call: calls.NewMessage
) -> str | None:
    message = call.message
    if message.internal or message.type in _SKIPPED_TYPES:
        return None
    if message.sender_person_type == "VISITOR" or message.source_id:
        # Came in through a messenger (ours or Unblu's echo of it): never back out.
        return None
    if await runtime.store.find_message(channel.name, "in", unblu_message_id=message.id):
        return None
    conversation = await runtime.store.find_conversation(message.conversation_id)
    address = conversation.contact_address if conversation else None
    thread = conversation.thread if conversation else None
    if address is None and call.receiving_contacts:
        address = call.receiving_contacts[0].source_id
    message_id = p.new_id()
    logcontext.set_field("message_id", message_id)
    job = p.OutboundMessageJob(
        channel=channel.name,
        message_id=message_id,
        message=message,
        contact_address=address,
        thread=thread,
    )
    assert runtime.engine is not None
    [result] = await runtime.engine.intake(
        [
            Intake(
                message=NewMessage(
                    id=message_id,
                    channel=channel.name,
                    direction="out",
                    thread=thread or address or f"conversation:{message.conversation_id}",
                    unblu_message_id=message.id,
                    conversation_id=message.conversation_id,
                ),
                job=NewJob(
                    kind=p.kind(job),
                    lane=p.lane(channel.name, f"conversation:{message.conversation_id}"),
                    payload=p.encode(job),
                ),
            )
        ]
    )
    if not result.accepted and result.message_id:
        await _retry_if_failed(runtime, result.message_id)
    return result.message_id


async def _retry_if_failed(runtime: Runtime, message_id: str) -> None:
    """A repeated request for a message that failed is the agent asking to try again."""
    row = await runtime.store.get_message(message_id)
    if row is None or row.state != MessageState.FAILED:
        log.info(
            "duplicate delivery of Unblu message %s ignored", row.unblu_message_id if row else "?"
        )
        return
    kind = p.kind_of(p.OutboundMessageJob)
    for job in await runtime.store.list_jobs(("dead",), limit=10_000):
        if job.message_id == message_id and job.kind == kind:
            await runtime.store.retry_job(job.id)
            log.info("message %s sent again at the agent's request (job %d)", message_id, job.id)
    assert runtime.engine is not None
    runtime.engine.wake()


async def _accept_message_state(
    runtime: Runtime, channel: Channel, call: calls.MessageState
) -> None:
    """An agent read (or received) a contact's message: pass READ on to the provider."""
    if call.state != "READ" or not call.source_id:
        return
    provider_id = call.source_id.split("#", 1)[0]
    job = p.MarkReadJob(channel=channel.name, provider_message_id=provider_id)
    assert runtime.engine is not None
    await runtime.engine.intake(
        [
            Intake(
                job=NewJob(
                    kind=p.kind(job),
                    lane=p.lane(channel.name, f"read:{provider_id}"),
                    payload=p.encode(job),
                )
            )
        ]
    )


async def _accept_conversation_ended(
    runtime: Runtime, channel: Channel, call: calls.ConversationEnded
) -> None:
    """Unblu ended a conversation: the channel's ``ended_text`` goes to the contact, once.

    The registration reports every conversation of the account; only this channel's count.
    The notice is stored with its job before the answer, keyed by the conversation, so
    Unblu repeating the event stores nothing more. A conversation the customer's side closed
    (``EXTERNAL_CHANNEL_CLOSED``) gets no text.
    """
    conversation = await runtime.store.find_conversation(call.conversation_id)
    ours = runtime.unblu_channel_ids.get(channel.name)
    if conversation is not None:
        if conversation.channel != channel.name:
            return
    elif not call.channel_id or call.channel_id != ours:
        return
    await runtime.store.end_conversation(call.conversation_id)
    if not channel.ended_text or call.end_reason == "EXTERNAL_CHANNEL_CLOSED":
        return
    address = conversation.contact_address if conversation else call.source_id
    thread = conversation.thread if conversation else call.source_id
    if not address:
        log.warning(
            "conversation %s on %s ended, but it names no contact: no ended text sent",
            call.conversation_id,
            channel.name,
        )
        return
    assert runtime.engine is not None
    [result] = await runtime.engine.intake(
        [
            ended_notice(
                channel.name,
                channel.ended_text,
                call.conversation_id,
                contact_address=address,
                thread=thread,
            )
        ]
    )
    if not result.accepted:
        log.info("repeated conversation.ended for %s ignored", call.conversation_id)


async def _create_contact(runtime: Runtime, channel: Channel, call: calls.CreateContact) -> bytes:
    identifier = (call.contact_identifier or "").strip()
    if not identifier and call.person is not None:
        identifier = call.person.phone or call.person.email or ""
    check = await runtime.hooks.validate_contact(channel, identifier)
    if not check.valid:
        return calls.contact_invalid_identifier_response(
            check.error or f"{identifier!r} is not a valid contact for this channel"
        )
    name = check.name or (call.person.display_name if call.person else None) or check.address
    return calls.contact_create_response(
        name=name, source_id=check.address, description=call.description
    )


async def _create_conversation(
    runtime: Runtime, channel: Channel, call: calls.CreateConversation
) -> bytes:
    """An agent starts a conversation: link it to the contact's thread (their address)."""
    source_id = call.source_id
    if not source_id and call.contact_ids:
        try:
            contact = await runtime.unblu_client().get_contact(call.contact_ids[0])
        except Exception as exc:
            log.warning("create_conversation on %s: contact look-up failed: %s", channel.name, exc)
            return calls.conversation_error_response("The contact could not be looked up.")
        source_id = contact.source_id
    if not source_id:
        return calls.conversation_error_response(
            "The conversation has no contact of this channel to write to."
        )
    existing = await runtime.store.active_conversation(channel.name, source_id)
    if existing is not None:
        # Our record may be stale: the agent side can end a conversation without telling us.
        try:
            remote = await runtime.unblu_client().get_conversation(existing.unblu_conversation_id)
        except UnbluNotFound:
            remote = None
        if remote is not None and not remote.ended:
            return calls.conversation_use_existing_response(existing.unblu_conversation_id)
        await runtime.store.end_conversation(existing.unblu_conversation_id)
    return calls.conversation_create_response(source_id=source_id)


def _answer(channel: Channel, call: calls.ChannelCall, body: bytes) -> web.Response:
    if not call.expects_response:
        return web.Response(status=200)
    headers = {signing.SIGNATURE_256_HEADER: signing.signature_256(channel.webhook_secret, body)}
    return web.Response(body=body, content_type="application/json", headers=headers)


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)
