"""Where a provider's request enters: verify, parse, store durably, acknowledge.

Nothing is acknowledged before its events and their jobs are committed (one group-committed
transaction, deduplicated by channel and provider message id), so a provider that got our
``200`` can forget the request.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Literal

import msgspec
from aiohttp import web

from .. import logcontext, optout
from ..errors import BadInbound, SignatureError
from ..models import (
    Channel,
    ContactUpdate,
    HttpReply,
    InboundEvent,
    InboundMessage,
    InboundRequest,
    Route,
    StatusUpdate,
)
from ..runtime import RUNTIME, Runtime
from ..sanitize import MAX_ADDRESS, MAX_ID, MAX_NAME, check_length, scrub, truncate
from ..store.base import Intake, IntakeResult, NewJob, NewMessage
from . import payloads as p

__all__ = ["accept_events", "provider_request"]

log = logging.getLogger("extmsg.inbound")


async def provider_request(request: web.Request, messenger: str, route: Route) -> web.Response:
    runtime = request.app[RUNTIME]
    status = 500
    try:
        response = await _handle(runtime, request, messenger, route)
        status = response.status
        return response
    finally:
        runtime.metrics.child(
            runtime.metrics.inbound_requests, messenger, route.name, str(status)
        ).inc()


async def _handle(
    runtime: Runtime, request: web.Request, messenger: str, route: Route
) -> web.Response:
    if route.scope == "channel":
        name = request.match_info["channel"]
        channel = runtime.channels.get(name)
        if channel is None or channel.messenger != messenger:
            return _error(404, f"no {messenger} channel named {name!r}")
        channels = [channel]
    else:
        channels = runtime.channels_of(messenger)
    ireq = InboundRequest(
        method=request.method,
        url=public_url(runtime, request),
        path=request.path,
        route=route.name,
        query=tuple(request.query.items()),
        headers=_headers(request),
        body=await request.read(),
    )
    if route.kind == "handler":
        if route.handler is None:
            return _error(500, f"route {route.name!r} has no handler")
        return _response(await route.handler(ireq, channels))

    if any(ch.verify_signatures for ch in channels):
        try:
            verified = await runtime.hooks.verify_inbound(messenger, ireq, channels)
        except SignatureError as exc:
            log.warning("%s %s: refused: %s", messenger, route.name, exc)
            return _error(403, f"signature check failed: {exc}")
        if not verified:
            return _error(403, f"no plugin verifies {messenger} requests; refused")
    try:
        events = await runtime.hooks.parse_inbound(messenger, ireq, channels)
    except BadInbound as exc:
        return _error(400, str(exc))
    if events is None:
        return _error(500, f"no plugin parses {messenger} requests")
    try:
        await accept_events(runtime, channels, events)
    except BadInbound as exc:
        return _error(400, str(exc))
    return _response(await runtime.hooks.render_ack(messenger, ireq, events))


async def accept_events(
    runtime: Runtime, channels: Sequence[Channel], events: Sequence[InboundEvent]
) -> list[IntakeResult]:
    """Store ``events`` and their jobs durably; return one result per event.

    Every string is scrubbed of lone surrogates first, and an id, address or thread longer
    than its limit refuses the whole batch (:class:`BadInbound`) before anything is stored.
    The jobs carry the request id bound now; events that did not come over HTTP (a mail from
    the SMTP listener, say) get a new one.
    """
    if logcontext.request_id() is None:
        with logcontext.bind(request_id=logcontext.new_request_id()):
            return await _accept_events(runtime, channels, events)
    return await _accept_events(runtime, channels, events)


async def _accept_events(
    runtime: Runtime, channels: Sequence[Channel], events: Sequence[InboundEvent]
) -> list[IntakeResult]:
    names = {ch.name for ch in channels}
    default = channels[0].name if len(channels) == 1 else None
    rules = {ch.name: optout.rules(ch, runtime.messengers.get(ch.messenger)) for ch in channels}
    events = optout.add_keyword_updates(rules, [scrub(e) for e in events], default)
    items: list[Intake] = []
    notices: list[Intake] = []
    previous: InboundEvent | None = None
    for event in events:
        channel = event.channel or default
        if channel is None or channel not in names:
            raise BadInbound(f"event for unknown channel {event.channel!r}")
        items.append(_intake(channel, event))
        if (
            isinstance(event, InboundMessage)
            and isinstance(previous, ContactUpdate)
            and previous.address == event.contact.address
        ):
            notice = _confirmation(channel, rules[channel], previous, event)
            if notice is not None:
                notices.append(notice)
        previous = event
    if not items:
        return []
    assert runtime.engine is not None
    results = (await runtime.engine.intake(items + notices))[: len(items)]
    for event, result in zip(events, results, strict=True):
        runtime.metrics.child(
            runtime.metrics.inbound_events,
            event.channel or channels[0].name,
            type(event).__struct_config__.tag,
            "accepted" if result.accepted else "duplicate",
        ).inc()
    return results


def _intake(channel: str, event: InboundEvent) -> Intake:
    _check_lengths(event)
    if isinstance(event, InboundMessage):
        if event.contact.name is not None and len(event.contact.name) > MAX_NAME:
            contact = msgspec.structs.replace(
                event.contact, name=truncate(event.contact.name, MAX_NAME)
            )
            event = msgspec.structs.replace(event, contact=contact)
        message_id = p.new_id()
        thread = event.thread_id
        return Intake(
            message=NewMessage(
                id=message_id,
                channel=channel,
                direction="in",
                thread=thread,
                provider_message_id=event.provider_message_id,
            ),
            job=_job(
                p.ToUnbluJob(channel=channel, message_id=message_id, message=event),
                p.lane(channel, thread),
            ),
        )
    if isinstance(event, StatusUpdate):
        key = event.message_ref or event.provider_message_id or "unknown"
        job = p.ProviderStatusJob(channel=channel, update=event)
        return Intake(job=_job(job, p.lane(channel, f"status:{key}")))
    if isinstance(event, ContactUpdate):
        contact_job = p.ContactJob(channel=channel, update=event)
        return Intake(job=_job(contact_job, p.lane(channel, event.address)))
    raise BadInbound(f"unsupported event {type(event).__name__}")


def _confirmation(
    channel: str, rules: optout.OptOutRules, update: ContactUpdate, message: InboundMessage
) -> Intake | None:
    """The reply confirming an opt-out or opt-in, once per keyword message (its provider id
    is the key): stored with the message, so a redelivered webhook adds no second one."""
    text = rules.opt_out_reply if update.opted_out else rules.opt_in_reply
    if not text:
        return None
    cause: Literal["opt_out", "opt_in"] = "opt_out" if update.opted_out else "opt_in"
    message_id = p.new_id()
    thread = message.thread_id
    job = p.NoticeJob(
        channel=channel,
        message_id=message_id,
        text=text,
        cause=cause,
        contact_address=update.address,
        thread=thread,
        despite_opt_out=True,
    )
    return Intake(
        message=NewMessage(
            id=message_id,
            channel=channel,
            direction="out",
            thread=thread,
            unblu_message_id=p.notice_key(cause, message.provider_message_id),
        ),
        # The contact's own lane: after the opt-out or opt-in itself is recorded.
        job=NewJob(
            kind=p.kind(job),
            lane=p.lane(channel, update.address),
            payload=p.encode(job),
            message_id=message_id,
        ),
    )


def _check_lengths(event: InboundEvent) -> None:
    """Ids, addresses and threads become store keys and lanes: refuse absurd ones (see
    :mod:`extmsg.sanitize` for the limits and why)."""
    if isinstance(event, InboundMessage):
        check_length("provider_message_id", event.provider_message_id, MAX_ID)
        check_length("contact.address", event.contact.address, MAX_ADDRESS)
        check_length("thread", event.thread, MAX_ID)
        check_length("reply_to", event.reply_to, MAX_ID)
    elif isinstance(event, StatusUpdate):
        check_length("provider_message_id", event.provider_message_id, MAX_ID)
        check_length("message_ref", event.message_ref, MAX_ID)
    elif isinstance(event, ContactUpdate):
        check_length("address", event.address, MAX_ADDRESS)


def _job(payload: p.JobPayload, lane: str) -> NewJob:
    return NewJob(kind=p.kind(payload), lane=lane, payload=p.encode(payload))


def public_url(runtime: Runtime, request: web.Request) -> str:
    """The URL the caller used, as seen from outside (what providers sign).

    ``server.public_url`` wins; without it ``X-Forwarded-Proto``/``X-Forwarded-Host`` are
    honoured when the direct peer is one of ``server.trusted_proxies`` (from anyone else they
    would let a client choose the URL its signature is checked against), and the request's own
    URL is the last resort.
    """
    server = runtime.config.server
    if server.public_url:
        return server.public_url.rstrip("/") + request.path_qs
    if not server.trusts_proxy(request.remote):
        return str(request.url)
    proto = request.headers.get("X-Forwarded-Proto", "").split(",")[0].strip()
    host = request.headers.get("X-Forwarded-Host", "").split(",")[0].strip()
    if proto or host:
        return f"{proto or request.scheme}://{host or request.host}{request.path_qs}"
    return str(request.url)


def _headers(request: web.Request) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in request.headers.items():
        k = key.lower()
        out[k] = f"{out[k]},{value}" if k in out else value
    return out


def _response(reply: HttpReply) -> web.Response:
    if not reply.headers and type(reply.body) is bytes:
        # What the general way makes of the usual reply, built in one go: its content type
        # is the only header.
        return web.Response(
            status=reply.status,
            body=reply.body,
            headers={"Content-Type": str(reply.content_type)},
        )
    # Set after the headers: a Content-Type among them gives its parameters, not its type.
    resp = web.Response(status=reply.status, body=reply.body, headers=dict(reply.headers))
    resp.content_type = reply.content_type
    return resp


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)
