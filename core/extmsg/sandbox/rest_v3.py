"""Web API v3 (Unblu 6/7) operations that extmsg uses, mounted at ``/app/rest/v3``.

Differences from v4 that the spec dictates: channel ids travel in the body
(``externalMessengerChannelId``) or the query (``read?id=``, ``delete?id=``); there are no
contacts, so the messenger user is a person participating with
``connectedViaExternalMessenger`` and the sender is ``senderPersonId``; delivered/read name a
``personId``; the failed state is ``failedState``; ``sendMessage`` answers a bare JSON string,
which the spec calls the message's *action id* ("This is not the messageId"); the ping is
``pingCustomChannel`` (204, emits a ``WebhookPingEvent``); conversations are created from a
``ConversationData`` and read with ``/conversations/read?id=``. ``getByName`` and
``getBySourceIdAndChannelId`` exist in v3 too. The message log (``searchMessages``) names
neither a message's ``sourceId`` nor an ``externalMessageId`` (v3 has no such field).
"""

from __future__ import annotations

from aiohttp import web

from . import render
from .bodies import read_body
from .errors import ApiError
from .inputs import NewConversation
from .rest_common import (
    END_REASONS,
    ENGAGEMENT_TYPES,
    api_middleware,
    base_url,
    conversation_filter,
    expand_of,
    message_log,
    order_conversations,
    page,
    parse_channel_fields,
    parse_person_fields,
    parse_post_message_data,
    query_param,
    result,
    sandbox_of,
)
from .rest_webhooks import v3_routes
from .state import Participant, Recipient

__all__ = ["create_v3_app"]

routes = web.RouteTableDef()

_RECIPIENT_TYPES = {
    "PersonData": "AGENT",
    "TeamData": "TEAM",
    "NamedAreaData": "NAMED_AREA",
    "AccountData": "ACCOUNT",
}


# -- external messenger channels -------------------------------------------------------------
@routes.post("/externalmessengers/create")
async def create_channel(request: web.Request) -> web.Response:
    sandbox = sandbox_of(request)
    body = await read_body(request)
    ch = sandbox.create_channel(parse_channel_fields(body, "v3"))
    return web.json_response(render.channel(ch, "v3", expand_of(request)))


@routes.post("/externalmessengers/update")
async def update_channel(request: web.Request) -> web.Response:
    sandbox = sandbox_of(request)
    body = await read_body(request)
    fields = parse_channel_fields(body, "v3")
    version = body.opt_int("version")
    if version is None:
        raise ApiError.bad_request("version: is required to update")
    ch = sandbox.update_channel(
        body.req_str("id"), version, body.req_str("accountId"), fields, keep_v4=True
    )
    return web.json_response(render.channel(ch, "v3", expand_of(request)))


@routes.get("/externalmessengers/getByName")
async def channel_by_name(request: web.Request) -> web.Response:
    ch = sandbox_of(request).channel_by_name(query_param(request, "name"))
    return web.json_response(render.channel(ch, "v3", expand_of(request)))


@routes.get("/externalmessengers/read")
async def read_channel(request: web.Request) -> web.Response:
    ch = sandbox_of(request).channel(query_param(request, "id"))
    return web.json_response(render.channel(ch, "v3", expand_of(request)))


@routes.delete("/externalmessengers/delete")
async def delete_channel(request: web.Request) -> web.Response:
    sandbox_of(request).delete_channel(query_param(request, "id"))
    return web.Response(status=204)


@routes.post("/externalmessengers/sendMessage")
async def send_message(request: web.Request) -> web.Response:
    sandbox = sandbox_of(request)
    body = await read_body(request)
    body.type_tag("ExternalMessengerPostMessage")
    channel_id = body.req_str("externalMessengerChannelId")
    sandbox.channel(channel_id)
    conversation_id = body.req_str("conversationId")
    sender = sandbox.person(body.req_str("senderPersonId"), field_name="senderPersonId")
    content = parse_post_message_data(body.req_obj("messageData"))
    msg = sandbox.post_messenger_message(
        channel_id,
        conversation_id,
        sender.id,
        content,
        sender_field="senderPersonId",
        source_id=body.opt_str("sourceId"),
        reply_to_message_id=body.opt_str("replyToMessageId"),
        recipient_person_ids=body.opt_str_list("recipientPersonIds"),
        base_url=base_url(request),
    )
    await sandbox.echoed(msg)
    return web.json_response(msg.action_id)


async def _report(request: web.Request, state: str) -> web.Response:
    sandbox = sandbox_of(request)
    body = await read_body(request)
    channel_id = body.req_str("externalMessengerChannelId")
    sandbox.channel(channel_id)
    fail_state = failure_text = None
    if state == "FAILED":
        fail_state = body.opt_enum("failedState", ("RETRYABLE", "TERMINAL"))
        if fail_state is None:
            raise ApiError.bad_request("failedState: is required (RETRYABLE or TERMINAL)")
        failure_text = body.opt_str("failureText")
    sandbox.report_message_state(
        channel_id,
        body.req_str("conversationId"),
        body.req_str("messageId"),
        state,
        person_id=body.opt_str("personId") if state in ("DELIVERED", "READ") else None,
        fail_state=fail_state,
        failure_text=failure_text,
    )
    return web.Response(status=204)


@routes.post("/externalmessengers/messageDelivered")
async def message_delivered(request: web.Request) -> web.Response:
    return await _report(request, "DELIVERED")


@routes.post("/externalmessengers/messageRead")
async def message_read(request: web.Request) -> web.Response:
    return await _report(request, "READ")


@routes.post("/externalmessengers/messageSentSuccessfully")
async def message_sent(request: web.Request) -> web.Response:
    return await _report(request, "SENT")


@routes.post("/externalmessengers/messageSendFailed")
async def message_send_failed(request: web.Request) -> web.Response:
    return await _report(request, "FAILED")


@routes.post("/externalmessengers/pingCustomChannel")
async def ping_custom_channel(request: web.Request) -> web.Response:
    sandbox = sandbox_of(request)
    body = await read_body(request)
    sandbox.ping_custom_channel(body.req_str("externalMessengerChannelId"))
    return web.Response(status=204)


# -- persons ------------------------------------------------------------------------------
@routes.post("/persons/createOrUpdateVirtual")
async def create_or_update_virtual(request: web.Request) -> web.Response:
    sandbox = sandbox_of(request)
    body = await read_body(request)
    person = sandbox.upsert_virtual_person(parse_person_fields(body))
    return web.json_response(render.person(person, "v3", expand_of(request)))


@routes.get("/persons/getBySource")
async def person_by_source(request: web.Request) -> web.Response:
    sandbox = sandbox_of(request)
    source = request.query.get("personSource") or "VIRTUAL"
    person = sandbox.person_by_source(source, query_param(request, "sourceId"))
    return web.json_response(render.person(person, "v3", expand_of(request)))


# -- conversations ------------------------------------------------------------------------
@routes.post("/conversations/create")
async def create_conversation(request: web.Request) -> web.Response:
    sandbox = sandbox_of(request)
    body = await read_body(request)
    body.type_tag("ConversationData")
    if body.has("id"):
        raise ApiError.bad_request("id: must not be set, the server generates it")
    channel_id = body.opt_str("externalMessengerChannelId")
    context_id = body.opt_str("contextPersonId")
    assignee_id = body.opt_str("assigneePersonId")
    participants: list[Participant] = []
    for p in body.obj_list("participants"):
        p.type_tag("ParticipantData")
        person = sandbox.person(p.req_str("personId"), field_name=p.where("personId"))
        via = p.bool("connectedViaExternalMessenger", False)
        if via and channel_id is None:
            raise ApiError.bad_request(
                f"{p.where('connectedViaExternalMessenger')}: needs externalMessengerChannelId"
            )
        if person.id == assignee_id:
            kind = "ASSIGNED_AGENT"
        elif person.id == context_id:
            kind = "CONTEXT_PERSON"
        elif person.person_type == "AGENT":
            kind = "SECONDARY_AGENT"
        elif context_id is None and not any(
            x.participation_type == "CONTEXT_PERSON" for x in participants
        ):
            kind = "CONTEXT_PERSON"
        else:
            kind = "SECONDARY_VISITOR"
        participants.append(
            Participant(
                person.id,
                kind,
                via_messenger=via,
                hidden=p.bool("hidden", False),
                starred=p.bool("conversationStarred", False),
            )
        )
    ids = {p.person_id for p in participants}
    for name, value in (("contextPersonId", context_id), ("assigneePersonId", assignee_id)):
        if value is not None and value not in ids:
            raise ApiError.bad_request(f"{name}: must be one of the participants")
    recipient = None
    r = body.opt_obj("recipient")
    if r is not None:
        recipient_type = _RECIPIENT_TYPES.get(str(r.data.get("$_type")))
        if recipient_type is None:
            raise ApiError.bad_request(
                f"recipient.$_type: must be one of {', '.join(sorted(_RECIPIENT_TYPES))}"
            )
        recipient = Recipient(recipient_type, r.req_str("id"))
    conv = sandbox.create_conversation(
        NewConversation(
            channel_id=channel_id,
            source_id=body.opt_str("sourceId"),
            initial_engagement_type=(
                body.opt_enum("initialEngagementType", ENGAGEMENT_TYPES) or "CHAT_REQUEST"
            ),
            participants=participants,
            recipient=recipient,
            topic=body.opt_str("topic"),
            locale=body.opt_str("locale"),
            visitor_data=body.opt_str("visitorData"),
            source_url=body.opt_str("sourceUrl"),
            initial_engagement_url=body.opt_str("initialEngagementUrl"),
            metadata=body.opt_str_map("metadata") or {},
        )
    )
    return web.json_response(render.conversation(sandbox.state, conv, "v3", expand_of(request)))


@routes.get("/conversations/getBySourceIdAndChannelId")
async def conversation_by_source(request: web.Request) -> web.Response:
    sandbox = sandbox_of(request)
    conv = sandbox.active_conversation(
        query_param(request, "sourceId"), request.query.get("externalMessengerChannelId") or None
    )
    return web.json_response(render.conversation(sandbox.state, conv, "v3", expand_of(request)))


@routes.get("/conversations/read")
async def read_conversation(request: web.Request) -> web.Response:
    sandbox = sandbox_of(request)
    conv = sandbox.conversation(query_param(request, "id"), field_name="id")
    return web.json_response(render.conversation(sandbox.state, conv, "v3", expand_of(request)))


@routes.post("/conversations/{conversationId}/end")
async def end_conversation(request: web.Request) -> web.Response:
    sandbox = sandbox_of(request)
    conversation_id = request.match_info["conversationId"]
    sandbox.conversation(conversation_id)
    reason = None
    if request.can_read_body:
        body = await read_body(request)
        reason = body.opt_enum("reason", END_REASONS)
    conv = sandbox.end_conversation(conversation_id, reason or "OTHER")
    return web.json_response(render.conversation(sandbox.state, conv, "v3", expand_of(request)))


@routes.post("/conversations/search")
async def search_conversations(request: web.Request) -> web.Response:
    sandbox = sandbox_of(request)
    body = await read_body(request)
    body.type_tag("ConversationQuery")
    keep = conversation_filter(body)
    found = order_conversations(body, [c for c in sandbox.state.conversations.values() if keep(c)])
    items, more, next_offset = page(body, found)
    expand = expand_of(request)
    rendered = [render.conversation(sandbox.state, c, "v3", expand) for c in items]
    return web.json_response(result("ConversationResult", rendered, more, next_offset))


# -- conversation history -----------------------------------------------------------------
@routes.post("/conversationhistory/{conversationId}/searchMessages")
async def search_messages(request: web.Request) -> web.Response:
    """The conversation's messages as ``ConversationHistoryMessageData``, which in v3 name
    neither a ``sourceId`` nor an ``externalMessageId``."""
    sandbox = sandbox_of(request)
    conv = sandbox.conversation(request.match_info["conversationId"], field_name="conversationId")
    body = await read_body(request)
    body.type_tag("MessageQuery")
    items, more, next_offset = message_log(
        body,
        sandbox.messages_of(conv),
        filter_type="SendTimestampMessageSearchFilter",
        order_type="MessageOrderBy",
    )
    rendered = [render.history_message(m, "v3") for m in items]
    return web.json_response(result("MessageResult", rendered, more, next_offset))


def create_v3_app() -> web.Application:
    """The v3 sub-application (mount it at ``/app/rest/v3``)."""
    app = web.Application(middlewares=[api_middleware])
    app.add_routes(routes)
    app.add_routes(v3_routes)
    return app
