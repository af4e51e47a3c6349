"""The sandbox's agent API: play the agent's side of Unblu and inspect what happened.

JSON over HTTP under ``/sandbox/api``. No authentication unless the sandbox was created with
``agent_token``; then send ``Authorization: Bearer <token>`` (or ``X-Sandbox-Token: <token>``,
or ``?token=<token>`` for links opened in a browser). Errors are ``{"error": "<message>"}``
with status 400 (bad input), 401 (token), 404 (unknown id) or 409 (ended conversation).

Routes:

``GET  /sandbox/api/channels``
    Channels: id, name, webhookEndpoint, webhookApiVersion, webhookStatus,
    messageStateHandledExternally, version.
``GET  /sandbox/api/agents`` / ``POST /sandbox/api/agents`` ``{"displayName", "id"?}``
    Agent persons (``sandbox-agent`` always exists); usable as an AGENT recipient.
``GET  /sandbox/api/conversations?channelId=&state=&sourceId=``
    Conversations: id, state, channelId, sourceId, topic, initialEngagementType, recipient,
    participants (personId, displayName, personType, participationType, state, viaMessenger,
    contactId, contactSourceId), awaitedPersonType, timestamps, endReason, messageCount.
``GET  /sandbox/api/conversations/{id}``
    One conversation with ``messages``.
``GET  /sandbox/api/conversations/{id}/messages``
    Messages: id, actionId, type, text / fileName, mimeType, caption, fileSize, downloadUrl,
    sender (personId, displayName, personType), fromMessenger, sourceId, externalMessageId,
    internal, state (PENDING, SENT, DELIVERED, READ or FAILED), failState, failureText,
    readByAgentTimestamp, serverTimestamp, history (every reported state).
``POST /sandbox/api/conversations/{id}/messages``
    ``{"text"?, "file"?: {"name", "mimeType"?, "data": "<base64>"}, "caption"?,
    "senderName"?, "agentId"?, "internal"?: false}`` → 201 with the message. The agent (by
    display name, id, or else the assignee / ``sandbox-agent``) joins if needed and a queued
    conversation becomes ACTIVE. Unless internal, the message is delivered to the channel.
``POST /sandbox/api/conversations/{id}/messages/{messageId}/read``
    ``{"state"?: "READ" | "DELIVERED"}``: the agent saw a messenger user's message; when the
    channel has ``messageStateHandledExternally`` a message_state request/event is delivered.
``POST /sandbox/api/conversations/{id}/end``
    ``{"reason"?: EConversationEndReason}`` (default ENDED_BY_PARTICIPANT). Every webhook
    registration listing ``conversation.ended`` gets the event.
``GET  /sandbox/api/deliveries?channelId=&name=&state=``
    Everything POSTed to channel endpoints and webhook registrations' endpoints: id (the
    ``X-Unblu-Delivery``), channelId (the channel's or the registration's id), name,
    style (request / event), url, state (pending, delivered, failed, dropped), messageId,
    created, body, attempts (retryNo, timestamp, durationMs, status, error, responseBody).
``POST /sandbox/api/drain`` ``{"timeout"?: seconds}``
    Wait until no delivery is pending.
``GET | POST | DELETE /sandbox/api/outage``
    ``POST {"seconds"?: number}`` makes the REST API answer 503 for that long (no
    ``seconds``: until ``DELETE``). Answers ``{"active", "remainingSeconds"}``.
``GET | POST | DELETE /sandbox/api/forbidden``
    ``POST {"operations": ["POST /conversationhistory/{conversationId}/exportMessageLog"]}``
    makes those web API operations (method and the spec's path template) answer 403, as for
    an API user without the role they need; ``DELETE`` (optionally with ``operations``) allows
    them again. Answers ``{"operations": [...]}`` (the forbidden ones).
``GET | POST | DELETE /sandbox/api/echo``
    ``POST`` makes the sandbox deliver each message a messenger posts back to that messenger's
    own channel, before it answers the post, as an Unblu whose loop prevention failed;
    ``DELETE`` restores Unblu's behaviour. Answers ``{"echo": true | false}``.
``POST /sandbox/api/conversations/start``
    ``{"channelId", "contactIdentifier", "name"?, "topic"?, "agentId"?}`` → 201 with the
    conversation: an agent starts a conversation with a contact, as Unblu does it (v4: the
    ``create_contact`` and ``create_conversation`` requests to the channel; see
    :mod:`extmsg.sandbox.starting`). 422 with the channel's ``errorText`` when it refuses.
``GET  /sandbox/api/customers``
    The customers' side: per sandbox channel, the provider fake standing in for the
    customer's phone or mailbox (channel, messenger, title, url).
``GET  /sandbox/api/customers/{channel}/thread``
    What that customer's device holds (the fake's ``GET /fake/thread``).
``POST /sandbox/api/customers/{channel}/messages``
    ``{"from"?, "text"?, "name"?, "subject"?, "in_reply_to"?, "files"?: [{"name", "mimeType",
    "data"}]}``: write as the customer (the fake's ``POST /fake/inbound``).
``GET  /sandbox/api/events``
    Server-sent events for the console: what changed, as it changes (see
    :mod:`extmsg.sandbox.live`).
``POST /sandbox/api/reset``
    Forget every channel, person, contact, conversation, message and delivery.
``GET  /sandbox/api/files/{messageId}``
    The content of a FILE message. (The ``downloadLinks`` URL in Unblu's messages is
    ``/app/rest/sandbox/files/{messageId}``, which needs basic auth like Unblu's.)
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import math
from typing import Any

from aiohttp import web

from ..constant_time import equal
from .bodies import Body, read_body
from .delivery import Delivery
from .errors import ApiError
from .inputs import MessageContent
from .live import LiveFeed, stream_events
from .rest_common import END_REASONS, Handler, base_url, sandbox_of
from .service import Sandbox
from .starting import start_conversation
from .state import Conversation, FileContent, Message

__all__ = [
    "LIVE_KEY",
    "conversation_view",
    "create_agent_api_app",
    "delivery_view",
    "file_response",
    "message_view",
    "outage_view",
]

routes = web.RouteTableDef()

#: The console's live feed, on the sandbox's main application.
LIVE_KEY: web.AppKey[LiveFeed] = web.AppKey("extmsg_sandbox_live", LiveFeed)


def _token_ok(sandbox: Sandbox, request: web.Request) -> bool:
    if sandbox.agent_token is None:
        return True
    given = request.headers.get("X-Sandbox-Token") or request.query.get("token") or ""
    auth = request.headers.get("Authorization", "")
    if auth.lower().startswith("bearer "):
        given = auth[7:].strip()
    return equal(given, sandbox.agent_token)


@web.middleware
async def agent_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if not _token_ok(sandbox_of(request), request):
        return web.json_response({"error": "a valid sandbox token is required"}, status=401)
    try:
        return await handler(request)
    except ApiError as exc:
        return web.json_response({"error": exc.message}, status=exc.status)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return web.json_response({"error": exc.reason}, status=exc.status)


# -- views ---------------------------------------------------------------------------------
def conversation_view(sandbox: Sandbox, c: Conversation) -> dict[str, Any]:
    participants = []
    for p in c.participants:
        person = sandbox.state.persons.get(p.person_id)
        contact = sandbox.state.contacts.get(p.contact_id) if p.contact_id else None
        participants.append(
            {
                "personId": p.person_id,
                "displayName": person.display_name if person else None,
                "personType": person.person_type if person else None,
                "participationType": p.participation_type,
                "state": p.state,
                "viaMessenger": p.via_messenger,
                "contactId": p.contact_id,
                "contactSourceId": contact.source_id if contact else None,
            }
        )
    return {
        "id": c.id,
        "state": c.state,
        "channelId": c.channel_id,
        "sourceId": c.source_id,
        "topic": c.topic,
        "initialEngagementType": c.initial_engagement_type,
        "recipient": {"type": c.recipient.type, "id": c.recipient.id} if c.recipient else None,
        "participants": participants,
        "awaitedPersonType": c.awaited_person_type,
        "creationTimestamp": c.creation_timestamp,
        "endTimestamp": c.end_timestamp,
        "endReason": c.end_reason,
        "messageCount": len(c.message_ids),
    }


def message_view(sandbox: Sandbox, m: Message) -> dict[str, Any]:
    sender = sandbox.state.persons.get(m.sender_person_id)
    return {
        "id": m.id,
        "actionId": m.action_id,
        "conversationId": m.conversation_id,
        "channelId": m.channel_id,
        "type": m.type,
        "text": m.text,
        "fileName": m.file.name if m.file else None,
        "mimeType": m.file.mime_type if m.file else None,
        "caption": m.file.caption if m.file else None,
        "fileSize": len(m.file.data) if m.file else None,
        "downloadUrl": m.download_url,
        "sender": {
            "personId": m.sender_person_id,
            "displayName": sender.display_name if sender else None,
            "personType": sender.person_type if sender else None,
        },
        "fromMessenger": m.from_messenger,
        "sourceId": m.source_id,
        "externalMessageId": m.external_message_id,
        "internal": m.internal,
        "state": m.state,
        "failState": m.fail_state,
        "failureText": m.failure_text,
        "readByAgentTimestamp": m.read_by_agent_timestamp,
        "serverTimestamp": m.server_timestamp,
        "history": [
            {
                "state": h.state,
                "timestamp": h.timestamp,
                "by": h.by,
                "contactId": h.contact_id,
                "personId": h.person_id,
                "failState": h.fail_state,
                "failureText": h.failure_text,
            }
            for h in m.history
        ],
    }


def delivery_view(d: Delivery) -> dict[str, Any]:
    return {
        "id": d.id,
        "channelId": d.channel_id,
        "name": d.name,
        "style": d.style,
        "url": d.url,
        "state": d.state,
        "messageId": d.message_id,
        "created": d.created,
        "body": d.body,
        "attempts": [
            {
                "retryNo": a.retry_no,
                "timestamp": a.timestamp,
                "durationMs": round(a.duration_ms, 3),
                "status": a.status,
                "error": a.error,
                "responseBody": a.response_body,
            }
            for a in d.attempts
        ],
    }


def outage_view(sandbox: Sandbox) -> dict[str, Any]:
    left = sandbox.outage_remaining()
    return {
        "active": left is not None,
        "remainingSeconds": None if left is None or math.isinf(left) else round(left, 3),
    }


async def _optional_body(request: web.Request) -> Body:
    if not request.can_read_body:
        return Body({})
    raw = await request.read()
    if not raw.strip():
        return Body({})
    return await read_body(request)


# -- routes --------------------------------------------------------------------------------
@routes.get("/channels")
async def list_channels(request: web.Request) -> web.Response:
    sandbox = sandbox_of(request)
    return web.json_response(
        [
            {
                "id": ch.id,
                "name": ch.name,
                "webhookEndpoint": ch.webhook_endpoint,
                "webhookApiVersion": ch.webhook_api_version,
                "webhookStatus": ch.webhook_status,
                "messageStateHandledExternally": ch.message_state_handled_externally,
                "version": ch.version,
            }
            for ch in sandbox.state.channels.values()
        ]
    )


@routes.get("/agents")
async def list_agents(request: web.Request) -> web.Response:
    agents = sandbox_of(request).agents()
    return web.json_response([{"id": a.id, "displayName": a.display_name} for a in agents])


@routes.post("/agents")
async def add_agent(request: web.Request) -> web.Response:
    body = await read_body(request)
    agent = sandbox_of(request).add_agent(body.req_str("displayName"), person_id=body.opt_str("id"))
    return web.json_response({"id": agent.id, "displayName": agent.display_name}, status=201)


@routes.get("/conversations")
async def list_conversations(request: web.Request) -> web.Response:
    sandbox = sandbox_of(request)
    q = request.query
    out = [
        conversation_view(sandbox, c)
        for c in sorted(sandbox.state.conversations.values(), key=lambda c: c.creation_timestamp)
        if ("channelId" not in q or c.channel_id == q["channelId"])
        and ("state" not in q or c.state == q["state"])
        and ("sourceId" not in q or c.source_id == q["sourceId"])
    ]
    return web.json_response(out)


@routes.post("/conversations/start")
async def start(request: web.Request) -> web.Response:
    sandbox = sandbox_of(request)
    body = await read_body(request)
    conv = await start_conversation(
        sandbox,
        body.req_str("channelId"),
        body.req_str("contactIdentifier"),
        name=body.opt_str("name"),
        topic=body.opt_str("topic"),
        agent_id=body.opt_str("agentId"),
    )
    return web.json_response(conversation_view(sandbox, conv), status=201)


@routes.get("/conversations/{id}")
async def get_conversation(request: web.Request) -> web.Response:
    sandbox = sandbox_of(request)
    conv = sandbox.conversation(request.match_info["id"], field_name="id")
    view = conversation_view(sandbox, conv)
    view["messages"] = [message_view(sandbox, m) for m in sandbox.messages_of(conv)]
    return web.json_response(view)


@routes.get("/conversations/{id}/messages")
async def list_messages(request: web.Request) -> web.Response:
    sandbox = sandbox_of(request)
    conv = sandbox.conversation(request.match_info["id"], field_name="id")
    return web.json_response([message_view(sandbox, m) for m in sandbox.messages_of(conv)])


@routes.post("/conversations/{id}/messages")
async def post_message(request: web.Request) -> web.Response:
    sandbox = sandbox_of(request)
    body = await read_body(request)
    text = body.opt_str("text")
    file_body = body.opt_obj("file")
    if file_body is not None:
        try:
            data = base64.b64decode(file_body.req_str("data"), validate=True)
        except binascii.Error:
            raise ApiError.bad_request("file.data: must be base64") from None
        content = MessageContent(
            "FILE",
            file=FileContent(
                file_body.req_str("name"),
                file_body.opt_str("mimeType") or "application/octet-stream",
                data,
                body.opt_str("caption") or text,
            ),
        )
    elif text:
        content = MessageContent("TEXT", text=text)
    else:
        raise ApiError.bad_request("text: is required (or file)")
    msg = sandbox.post_agent_message(
        request.match_info["id"],
        content,
        sender_name=body.opt_str("senderName"),
        agent_id=body.opt_str("agentId"),
        internal=body.bool("internal", False),
        base_url=base_url(request),
    )
    return web.json_response(message_view(sandbox, msg), status=201)


@routes.post("/conversations/{id}/messages/{messageId}/read")
async def read_message(request: web.Request) -> web.Response:
    sandbox = sandbox_of(request)
    body = await _optional_body(request)
    state = body.opt_enum("state", ("READ", "DELIVERED")) or "READ"
    msg = sandbox.mark_read_by_agent(
        request.match_info["id"], request.match_info["messageId"], state
    )
    return web.json_response(message_view(sandbox, msg))


@routes.post("/conversations/{id}/end")
async def end_conversation(request: web.Request) -> web.Response:
    sandbox = sandbox_of(request)
    body = await _optional_body(request)
    reason = body.opt_enum("reason", END_REASONS)
    conv = sandbox.end_conversation(request.match_info["id"], reason)
    return web.json_response(conversation_view(sandbox, conv))


@routes.get("/deliveries")
async def list_deliveries(request: web.Request) -> web.Response:
    sandbox = sandbox_of(request)
    q = request.query
    found = sandbox.deliveries(q.get("channelId"), q.get("name"))
    if "state" in q:
        found = [d for d in found if d.state == q["state"]]
    return web.json_response([delivery_view(d) for d in found])


@routes.post("/drain")
async def drain(request: web.Request) -> web.Response:
    sandbox = sandbox_of(request)
    body = await _optional_body(request)
    timeout = body.data.get("timeout", 10.0)
    if not isinstance(timeout, int | float) or isinstance(timeout, bool) or timeout <= 0:
        raise ApiError.bad_request("timeout: must be a positive number of seconds")
    try:
        async with asyncio.timeout(float(timeout)):
            await sandbox.drain()
    except TimeoutError:
        raise ApiError(409, f"deliveries still pending after {timeout} s") from None
    return web.json_response({"pending": 0})


@routes.get("/outage")
async def get_outage(request: web.Request) -> web.Response:
    return web.json_response(outage_view(sandbox_of(request)))


@routes.post("/outage")
async def start_outage(request: web.Request) -> web.Response:
    sandbox = sandbox_of(request)
    body = await _optional_body(request)
    seconds = body.data.get("seconds")
    if seconds is not None and (
        not isinstance(seconds, int | float) or isinstance(seconds, bool) or seconds < 0
    ):
        raise ApiError.bad_request("seconds: must be a non-negative number")
    sandbox.set_outage(None if seconds is None else float(seconds))
    return web.json_response(outage_view(sandbox))


@routes.delete("/outage")
async def stop_outage(request: web.Request) -> web.Response:
    sandbox = sandbox_of(request)
    sandbox.clear_outage()
    return web.json_response(outage_view(sandbox))


@routes.get("/forbidden")
async def get_forbidden(request: web.Request) -> web.Response:
    return web.json_response({"operations": sorted(sandbox_of(request).forbidden)})


@routes.post("/forbidden")
async def forbid(request: web.Request) -> web.Response:
    sandbox = sandbox_of(request)
    body = await _optional_body(request)
    operations = body.opt_str_list("operations")
    if not operations:
        raise ApiError.bad_request("operations: a non-empty list of 'METHOD /path' is required")
    sandbox.forbid(operations)
    return web.json_response({"operations": sorted(sandbox.forbidden)})


@routes.delete("/forbidden")
async def permit(request: web.Request) -> web.Response:
    sandbox = sandbox_of(request)
    body = await _optional_body(request)
    sandbox.permit(body.opt_str_list("operations"))
    return web.json_response({"operations": sorted(sandbox.forbidden)})


@routes.get("/echo")
async def get_echo(request: web.Request) -> web.Response:
    return web.json_response({"echo": sandbox_of(request).echo})


@routes.post("/echo")
async def start_echo(request: web.Request) -> web.Response:
    sandbox = sandbox_of(request)
    sandbox.echo = True
    return web.json_response({"echo": True})


@routes.delete("/echo")
async def stop_echo(request: web.Request) -> web.Response:
    sandbox = sandbox_of(request)
    sandbox.echo = False
    return web.json_response({"echo": False})


@routes.get("/customers")
async def list_customers(request: web.Request) -> web.Response:
    sides = sandbox_of(request).customers.sides.values()
    return web.json_response([side.view() for side in sides])


@routes.get("/customers/{channel}/thread")
async def customer_thread(request: web.Request) -> web.Response:
    channel = request.match_info["channel"]
    thread = await sandbox_of(request).customers.thread(channel)
    if thread is None:
        raise ApiError.not_found(f"the fake of channel {channel!r} shows no customer thread")
    return web.json_response(thread)


@routes.post("/customers/{channel}/messages")
async def customer_writes(request: web.Request) -> web.Response:
    sandbox = sandbox_of(request)
    body = await read_body(request)
    status, answer = await sandbox.customers.write(request.match_info["channel"], dict(body.data))
    if status >= 400:
        problem = answer.get("error") if isinstance(answer, dict) else answer
        raise ApiError(502, f"the fake refused the message (HTTP {status}): {problem}")
    return web.json_response(answer, status=201)


@routes.get("/events")
async def events(request: web.Request) -> web.StreamResponse:
    return await stream_events(request, request.config_dict[LIVE_KEY])


@routes.post("/reset")
async def reset(request: web.Request) -> web.Response:
    sandbox_of(request).reset()
    return web.json_response({"reset": True})


@routes.get("/files/{messageId}")
async def download(request: web.Request) -> web.Response:
    return file_response(sandbox_of(request), request.match_info["messageId"])


def file_response(sandbox: Sandbox, message_id: str) -> web.Response:
    """The content of a FILE message; 404 (as :class:`ApiError`) for anything else."""
    msg = sandbox.state.messages.get(message_id)
    if msg is None or msg.file is None:
        raise ApiError.not_found(f"no file message {message_id!r}")
    safe_name = "".join(ch for ch in msg.file.name if ch.isprintable() and ch not in '"\\')
    return web.Response(
        body=msg.file.data,
        content_type=msg.file.mime_type.split(";", 1)[0].strip() or "application/octet-stream",
        headers={"Content-Disposition": f'attachment; filename="{safe_name}"'},
    )


def create_agent_api_app() -> web.Application:
    """The agent API sub-application (mount it at ``/sandbox/api``)."""
    app = web.Application(middlewares=[agent_middleware])
    app.add_routes(routes)
    return app
