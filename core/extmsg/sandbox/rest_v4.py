"""Web API v4 (Unblu 8) operations that extmsg uses, mounted at ``/app/rest/v4``.

Channel-scoped operations take the channel id in the path; contacts
(``ExternalMessengerContact``) link messenger users to persons; conversation participants
behind the channel are ``externalParticipants``. A conversation's message log
(``exportMessageLog``) names each message's ``externalMessageId``.
"""

from __future__ import annotations

from collections.abc import Iterable

from aiohttp import web

from . import render
from .bodies import Body, read_body
from .errors import ApiError
from .inputs import NewConversation
from .rest_common import (
    END_REASONS,
    ENGAGEMENT_TYPES,
    RECIPIENT_TYPES,
    api_middleware,
    base_url,
    contact_filter,
    conversation_filter,
    equals_filter,
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
from .rest_webhooks import v4_routes
from .state import Contact, Participant, Recipient

__all__ = ["create_v4_app"]

routes = web.RouteTableDef()


# -- external messenger channels -------------------------------------------------------------
@routes.post("/externalmessengers/create")
async def create_channel(request: web.Request) -> web.Response:
    sandbox = sandbox_of(request)
    body = await read_body(request)
    ch = sandbox.create_channel(parse_channel_fields(body, "v4"))
    return web.json_response(render.channel(ch, "v4", expand_of(request)))


@routes.post("/externalmessengers/update")
async def update_channel(request: web.Request) -> web.Response:
    sandbox = sandbox_of(request)
    body = await read_body(request)
    fields = parse_channel_fields(body, "v4")
    ch = sandbox.update_channel(
        body.req_str("id"),
        _req_version(body),
        body.req_str("accountId"),
        fields,
        keep_v4=False,
    )
    return web.json_response(render.channel(ch, "v4", expand_of(request)))


def _req_version(body: Body) -> int:
    version = body.opt_int("version")
    if version is None:
        raise ApiError.bad_request("version: is required to update")
    return version


@routes.get("/externalmessengers/getByName")
async def channel_by_name(request: web.Request) -> web.Response:
    sandbox = sandbox_of(request)
    ch = sandbox.channel_by_name(query_param(request, "name"))
    return web.json_response(render.channel(ch, "v4", expand_of(request)))


@routes.get("/externalmessengers/{channelId}/read")
async def read_channel(request: web.Request) -> web.Response:
    sandbox = sandbox_of(request)
    ch = sandbox.channel(request.match_info["channelId"])
    return web.json_response(render.channel(ch, "v4", expand_of(request)))


@routes.delete("/externalmessengers/{channelId}/delete")
async def delete_channel(request: web.Request) -> web.Response:
    sandbox_of(request).delete_channel(request.match_info["channelId"])
    return web.Response(status=204)


@routes.post("/externalmessengers/{channelId}/sendMessage")
async def send_message(request: web.Request) -> web.Response:
    sandbox = sandbox_of(request)
    channel_id = request.match_info["channelId"]
    sandbox.channel(channel_id)
    body = await read_body(request)
    body.type_tag("ExternalMessengerPostMessage")
    conversation_id = body.req_str("conversationId")
    contact = sandbox.contact(
        body.req_str("senderExternalMessengerContactId"),
        field_name="senderExternalMessengerContactId",
    )
    if contact.channel_id != channel_id:
        raise ApiError.bad_request(
            f"senderExternalMessengerContactId: contact {contact.id!r} belongs to channel "
            f"{contact.channel_id!r}, not to {channel_id!r}"
        )
    content = parse_post_message_data(body.req_obj("messageData"))
    msg = sandbox.post_messenger_message(
        channel_id,
        conversation_id,
        contact.person_id,
        content,
        sender_field="senderExternalMessengerContactId",
        source_id=body.opt_str("sourceId"),
        external_message_id=body.opt_str("externalMessageId"),
        reply_to_message_id=body.opt_str("replyToMessageId"),
        reply_to_external_message_id=body.opt_str("replyToExternalMessageId"),
        recipient_person_ids=body.opt_str_list("recipientPersonIds"),
        base_url=base_url(request),
    )
    await sandbox.echoed(msg)
    return web.json_response({"$_type": "SendMessageResult", "messageId": msg.id})


async def _report(request: web.Request, state: str) -> web.Response:
    sandbox = sandbox_of(request)
    channel_id = request.match_info["channelId"]
    sandbox.channel(channel_id)
    body = await read_body(request)
    fail_state = failure_text = None
    if state == "FAILED":
        fail_state = body.opt_enum("failState", ("RETRYABLE", "TERMINAL"))
        if fail_state is None:
            raise ApiError.bad_request("failState: is required (RETRYABLE or TERMINAL)")
        failure_text = body.opt_str("failureText")
    sandbox.report_message_state(
        channel_id,
        body.req_str("conversationId"),
        body.req_str("messageId"),
        state,
        contact_id=(
            body.opt_str("externalMessengerContactId") if state in ("DELIVERED", "READ") else None
        ),
        fail_state=fail_state,
        failure_text=failure_text,
    )
    return web.Response(status=204)


@routes.post("/externalmessengers/{channelId}/messageDelivered")
async def message_delivered(request: web.Request) -> web.Response:
    return await _report(request, "DELIVERED")


@routes.post("/externalmessengers/{channelId}/messageRead")
async def message_read(request: web.Request) -> web.Response:
    return await _report(request, "READ")


@routes.post("/externalmessengers/{channelId}/messageSentSuccessfully")
async def message_sent(request: web.Request) -> web.Response:
    return await _report(request, "SENT")


@routes.post("/externalmessengers/{channelId}/messageSendFailed")
async def message_send_failed(request: web.Request) -> web.Response:
    return await _report(request, "FAILED")


@routes.post("/externalmessengers/{channelId}/sendPing")
async def send_ping(request: web.Request) -> web.Response:
    answer = await sandbox_of(request).send_ping(request.match_info["channelId"])
    return web.json_response(answer)


# -- contacts -----------------------------------------------------------------------------
@routes.post("/externalmessengercontacts/create")
async def create_contact(request: web.Request) -> web.Response:
    sandbox = sandbox_of(request)
    body = await read_body(request)
    body.type_tag("ExternalMessengerContact")
    contact = sandbox.create_contact(
        body.req_str("externalMessengerChannelId"),
        body.req_str("sourceId"),
        body.opt_str("personId"),
        body.opt_str("name"),
        body.opt_str("description"),
    )
    return web.json_response(render.contact(contact))


@routes.post("/externalmessengercontacts/search")
async def search_contacts(request: web.Request) -> web.Response:
    sandbox = sandbox_of(request)
    body = await read_body(request)
    body.type_tag("ExternalMessengerContactQuery")
    keep = contact_filter(body)
    state = sandbox.state
    pool: Iterable[Contact] = state.contacts.values()
    channel_id = equals_filter(body, "EXTERNAL_MESSENGER_CHANNEL_ID")
    source_id = equals_filter(body, "SOURCE_ID")
    if channel_id is not None and source_id is not None:
        hit = state.contacts_by_source.get((channel_id, source_id))
        pool = [state.contacts[hit]] if hit else []
    found = sorted((c for c in pool if keep(c)), key=lambda c: c.creation_timestamp)
    items, more, next_offset = page(body, found)
    return web.json_response(
        result(
            "ExternalMessengerContactResult", [render.contact(c) for c in items], more, next_offset
        )
    )


@routes.get("/externalmessengercontacts/{contactId}/read")
async def read_contact(request: web.Request) -> web.Response:
    contact = sandbox_of(request).contact(request.match_info["contactId"])
    return web.json_response(render.contact(contact))


# -- persons ------------------------------------------------------------------------------
@routes.post("/persons/createOrUpdateVirtual")
async def create_or_update_virtual(request: web.Request) -> web.Response:
    sandbox = sandbox_of(request)
    body = await read_body(request)
    person = sandbox.upsert_virtual_person(parse_person_fields(body))
    return web.json_response(render.person(person, "v4", expand_of(request)))


@routes.get("/persons/getBySource")
async def person_by_source(request: web.Request) -> web.Response:
    sandbox = sandbox_of(request)
    source = request.query.get("personSource") or "VIRTUAL"
    person = sandbox.person_by_source(source, query_param(request, "sourceId"))
    return web.json_response(render.person(person, "v4", expand_of(request)))


# -- conversations ------------------------------------------------------------------------
_VISITOR_TYPES = ("CONTEXT_PERSON", "SECONDARY_VISITOR")
_REAL_TYPES = ("ASSIGNED_AGENT", "CONTEXT_PERSON", "SECONDARY_AGENT", "SECONDARY_VISITOR")


@routes.post("/conversations/create")
async def create_conversation(request: web.Request) -> web.Response:
    sandbox = sandbox_of(request)
    body = await read_body(request)
    body.type_tag("ConversationCreationData")
    channel_id = body.opt_str("externalMessengerChannelId")
    external = body.obj_list("externalParticipants")
    if external and channel_id is None:
        raise ApiError.bad_request(
            "externalParticipants: must be omitted unless externalMessengerChannelId is set"
        )
    participants: list[Participant] = []

    def taken(kind: str) -> bool:
        return any(p.participation_type == kind for p in participants)

    for p in body.obj_list("participants"):
        p.type_tag("ConversationCreationParticipantData")
        person = sandbox.person(p.req_str("personId"), field_name=p.where("personId"))
        kind = p.opt_enum("participationType", _REAL_TYPES)
        if kind is None:
            if person.person_type == "AGENT":
                kind = "SECONDARY_AGENT" if taken("ASSIGNED_AGENT") else "ASSIGNED_AGENT"
            else:
                kind = "SECONDARY_VISITOR" if taken("CONTEXT_PERSON") else "CONTEXT_PERSON"
        participants.append(
            Participant(
                person.id,
                kind,
                hidden=p.bool("hidden", False),
                starred=p.bool("conversationStarred", False),
            )
        )
    for p in external:
        p.type_tag("ConversationCreationExternalParticipantData")
        where = p.where("externalMessengerContactId")
        contact = sandbox.contact(p.req_str("externalMessengerContactId"), field_name=where)
        kind = p.opt_enum("participationType", _VISITOR_TYPES)
        if kind is None:
            kind = "SECONDARY_VISITOR" if taken("CONTEXT_PERSON") else "CONTEXT_PERSON"
        participants.append(
            Participant(contact.person_id, kind, via_messenger=True, contact_id=contact.id)
        )
    for kind in ("ASSIGNED_AGENT", "CONTEXT_PERSON"):
        if sum(p.participation_type == kind for p in participants) > 1:
            raise ApiError.bad_request(f"participants: more than one {kind}")
    recipient = None
    r = body.opt_obj("recipient")
    if r is not None:
        r.type_tag("ConversationCreationRecipientData")
        kind = r.opt_enum("type", RECIPIENT_TYPES)
        if kind is None:
            raise ApiError.bad_request("recipient.type: is required")
        recipient = Recipient(kind, r.req_str("id"))
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
            conversation_visibility=body.opt_enum(
                "conversationVisibility", ("PRIVATE", "RULE_BASED")
            ),
            metadata=body.opt_str_map("metadata") or {},
        )
    )
    return web.json_response(render.conversation(sandbox.state, conv, "v4", expand_of(request)))


@routes.get("/conversations/getBySourceIdAndChannelId")
async def conversation_by_source(request: web.Request) -> web.Response:
    sandbox = sandbox_of(request)
    conv = sandbox.active_conversation(
        query_param(request, "sourceId"), request.query.get("externalMessengerChannelId") or None
    )
    return web.json_response(render.conversation(sandbox.state, conv, "v4", expand_of(request)))


@routes.get("/conversations/{conversationId}/read")
async def read_conversation(request: web.Request) -> web.Response:
    sandbox = sandbox_of(request)
    conv = sandbox.conversation(request.match_info["conversationId"], field_name="conversationId")
    return web.json_response(render.conversation(sandbox.state, conv, "v4", expand_of(request)))


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
    return web.json_response(render.conversation(sandbox.state, conv, "v4", expand_of(request)))


@routes.post("/conversations/search")
async def search_conversations(request: web.Request) -> web.Response:
    sandbox = sandbox_of(request)
    body = await read_body(request)
    body.type_tag("ConversationQuery")
    keep = conversation_filter(body)
    found = order_conversations(body, [c for c in sandbox.state.conversations.values() if keep(c)])
    items, more, next_offset = page(body, found)
    expand = expand_of(request)
    rendered = [render.conversation(sandbox.state, c, "v4", expand) for c in items]
    return web.json_response(result("ConversationResult", rendered, more, next_offset))


# -- conversation history -----------------------------------------------------------------
@routes.post("/conversationhistory/{conversationId}/exportMessageLog")
async def export_message_log(request: web.Request) -> web.Response:
    """The conversation's messages as ``ConversationHistoryMessageData`` (spec role: ADMIN)."""
    sandbox = sandbox_of(request)
    conv = sandbox.conversation(request.match_info["conversationId"], field_name="conversationId")
    body = await read_body(request)
    body.type_tag("MessageExportQuery")
    items, more, next_offset = message_log(
        body,
        sandbox.messages_of(conv),
        filter_type="SendTimestampMessageExportFilter",
        order_type="MessageExportOrderBy",
    )
    rendered = [render.history_message(m, "v4") for m in items]
    return web.json_response(result("MessageExportResult", rendered, more, next_offset))


def create_v4_app() -> web.Application:
    """The v4 sub-application (mount it at ``/app/rest/v4``)."""
    app = web.Application(middlewares=[api_middleware])
    app.add_routes(routes)
    app.add_routes(v4_routes)
    return app
