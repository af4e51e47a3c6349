"""Pieces both REST generations share: middlewares, message payloads, search, paging.

The middleware stack of each ``/app/rest/vN`` sub-application answers 503 while the outage
switch is on, 401 without valid basic-auth credentials, and turns every failure into
Unblu's ``Error`` body.
"""

from __future__ import annotations

import base64
import binascii
import functools
import logging
import re
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, TypeVar

from aiohttp import web

from ..constant_time import equal
from .bodies import Body
from .errors import ApiError, error_response
from .inputs import ChannelFields, MessageContent, PersonFields, WebhookFields
from .service import SANDBOX_KEY, Sandbox
from .state import Conversation, FileContent, Message

__all__ = [
    "api_middleware",
    "base_url",
    "contact_filter",
    "conversation_filter",
    "expand_of",
    "message_log",
    "page",
    "parse_channel_fields",
    "parse_person_fields",
    "parse_post_message_data",
    "parse_webhook_fields",
    "sandbox_of",
]

log = logging.getLogger("extmsg.sandbox.rest")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
T = TypeVar("T")

_BASIC_REALM = {"WWW-Authenticate": 'Basic realm="Unblu sandbox"'}
_VERSION_PREFIX = re.compile(r"^/app/rest/v\d+")


def sandbox_of(request: web.Request) -> Sandbox:
    return request.config_dict[SANDBOX_KEY]


def base_url(request: web.Request) -> str:
    return str(request.url.origin())


def _authorized(sandbox: Sandbox, header: str | None) -> bool:
    if not header or not header.lower().startswith("basic "):
        return False
    try:
        decoded = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return False
    user, sep, password = decoded.partition(":")
    return bool(sep) and (equal(user, sandbox.username) & equal(password, sandbox.password))


@web.middleware
async def api_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Outage switch, basic auth and ``Error`` bodies for the emulated web API."""
    sandbox = sandbox_of(request)
    remaining = sandbox.outage_remaining()
    if remaining is not None:
        headers = {} if remaining == float("inf") else {"Retry-After": str(int(remaining) + 1)}
        return error_response(503, "the sandbox simulates an outage", headers)
    if not _authorized(sandbox, request.headers.get("Authorization")):
        return error_response(401, "valid basic-auth credentials are required", _BASIC_REALM)
    template = _operation_path(request)
    if template is not None and sandbox.is_forbidden(request.method, template):
        return error_response(
            403, f"the API user lacks the role that {request.method} {template} requires"
        )
    try:
        return await handler(request)
    except ApiError as exc:
        log.debug("%s %s -> %d %s", request.method, request.path, exc.status, exc.message)
        return error_response(exc.status, exc.message)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        message = (
            f"no operation {request.method} {request.path}"
            if exc.status in (404, 405)
            else exc.reason
        )
        return error_response(exc.status, message)
    except Exception:
        log.exception("sandbox: %s %s failed", request.method, request.path)
        return error_response(500, "internal error in the Unblu sandbox")


def _operation_path(request: web.Request) -> str | None:
    """The matched route as the spec writes it (``/conversations/{conversationId}/read``)."""
    resource = request.match_info.route.resource
    if resource is None:
        return None
    return _VERSION_PREFIX.sub("", resource.canonical) or None


def expand_of(request: web.Request) -> set[str]:
    """The ``expand`` query values (form style, comma separated, possibly repeated)."""
    out: set[str] = set()
    for value in request.query.getall("expand", []):
        out.update(v.strip() for v in value.split(",") if v.strip())
    return out


def query_param(request: web.Request, name: str) -> str:
    value = request.query.get(name)
    if not value:
        raise ApiError.bad_request(f"{name}: query parameter is required")
    return value


# -- message payloads ----------------------------------------------------------------------
def _decode_data_url(value: str, where: str) -> tuple[str, bytes]:
    if not value.startswith("data:") or "," not in value:
        raise ApiError.bad_request(f"{where}: must be a data URL (data:<mime>;base64,<data>)")
    header, payload = value[5:].split(",", 1)
    parts = header.split(";")
    mime = parts[0] or "application/octet-stream"
    if "base64" in parts[1:]:
        try:
            data = base64.b64decode(payload, validate=True)
        except binascii.Error:
            raise ApiError.bad_request(f"{where}: invalid base64 data") from None
    else:
        from urllib.parse import unquote_to_bytes

        data = unquote_to_bytes(payload)
    return mime, data


def parse_post_message_data(body: Body) -> MessageContent:
    """A ``PostMessageData`` (TEXT or FILE; the sandbox rejects the other types)."""
    kind = body.req_str("type")
    fallback = body.opt_str("fallbackText")
    if kind == "TEXT":
        body.type_tag("TextPostMessageData")
        text = body.opt_str("text")
        if text is None:
            raise ApiError.bad_request(f"{body.where('text')}: is required")
        text_type = body.opt_enum("textType", ("SIMPLE_TEXT", "MARKDOWN")) or "SIMPLE_TEXT"
        return MessageContent("TEXT", text=text, text_type=text_type, fallback_text=fallback)
    if kind == "FILE":
        body.type_tag("FilePostMessageData")
        name = body.req_str("fileName")
        mime, data = _decode_data_url(body.req_str("fileData"), body.where("fileData"))
        caption = body.opt_str("caption")
        return MessageContent(
            "FILE", file=FileContent(name, mime, data, caption), fallback_text=fallback
        )
    raise ApiError.bad_request(
        f"{body.where('type')}: the sandbox accepts TEXT and FILE messages, not {kind!r}"
    )


# -- search ----------------------------------------------------------------------------------
def _op_matches(op: Body, values: Sequence[str | None]) -> bool:
    """Evaluate an Id/String/enum operator; multi-valued fields match if any value does."""
    kind = op.req_str("type")
    if kind in ("IS_NULL", "IS_NOT_NULL"):
        has = any(v is not None for v in values)
        return has if kind == "IS_NOT_NULL" else not has
    if kind in ("EQUALS", "NOT_EQUALS", "CONTAINS", "STARTS_WITH"):
        needle = op.opt_str("value")
        if needle is None:
            raise ApiError.bad_request(f"{op.where('value')}: is required")
        if kind == "EQUALS":
            return needle in values
        if kind == "NOT_EQUALS":
            return needle not in values
        if kind == "CONTAINS":
            return any(v is not None and needle.lower() in v.lower() for v in values)
        return any(v is not None and v.startswith(needle) for v in values)
    if kind in ("IN", "NOT_IN", "ANY_OF", "ALL_OF"):
        wanted = op.opt_str_list("values") or []
        if kind == "IN" or kind == "ANY_OF":
            return any(v in wanted for v in values if v is not None)
        if kind == "ALL_OF":
            return all(w in values for w in wanted)
        return not any(v in wanted for v in values if v is not None)
    raise ApiError.bad_request(f"{op.where('type')}: operator {kind!r} is not supported")


Getter = Callable[[T], Sequence[str | None]]


def _make_filter(filters: list[Body], getters: dict[str, Getter[T]]) -> Callable[[T], bool]:
    checks: list[tuple[Getter[T], Body]] = []
    for f in filters:
        name = f.req_str("field")
        getter = getters.get(name)
        if getter is None:
            raise ApiError.bad_request(
                f"{f.where('field')}: the sandbox supports filtering on "
                f"{', '.join(sorted(getters))}, not {name!r}"
            )
        checks.append((getter, f.req_obj("operator")))
    return lambda item: all(_op_matches(op, getter(item)) for getter, op in checks)


def conversation_filter(body: Body) -> Callable[[Conversation], bool]:
    getters: dict[str, Getter[Conversation]] = {
        "SOURCE_ID": lambda c: [c.source_id],
        "EXTERNAL_MESSENGER_CHANNEL_ID": lambda c: [c.channel_id],
        "STATE": lambda c: [c.state],
        "TOPIC": lambda c: [c.topic],
        "INITIAL_ENGAGEMENT_TYPE": lambda c: [c.initial_engagement_type],
        "CONTEXT_PERSON_ID": lambda c: [c.context_person_id],
        "ASSIGNEE_PERSON_ID": lambda c: [c.assignee_person_id],
        "PARTICIPANT_PERSON_ID": lambda c: [p.person_id for p in c.participants],
        "PARTICIPANT_EXTERNAL_MESSENGER_CONTACT_ID": lambda c: [
            p.contact_id for p in c.participants if p.contact_id
        ],
        "END_REASON": lambda c: [c.end_reason],
    }
    return _make_filter(body.obj_list("searchFilters"), getters)


def equals_filter(body: Body, field_name: str) -> str | None:
    """The value of an EQUALS filter on ``field_name``, if the query has one (for indexes)."""
    for f in body.obj_list("searchFilters"):
        op = f.opt_obj("operator")
        if f.data.get("field") == field_name and op is not None and op.data.get("type") == "EQUALS":
            value = op.data.get("value")
            return value if isinstance(value, str) else None
    return None


def contact_filter(body: Body) -> Callable[[Any], bool]:
    getters: dict[str, Getter[Any]] = {
        "ID": lambda c: [c.id],
        "NAME": lambda c: [c.name],
        "EXTERNAL_MESSENGER_CHANNEL_ID": lambda c: [c.channel_id],
        "SOURCE_ID": lambda c: [c.source_id],
        "PERSON_ID": lambda c: [c.person_id],
    }
    return _make_filter(body.obj_list("searchFilters"), getters)


_CONVERSATION_ORDER: dict[str, Callable[[Conversation], Any]] = {
    "CREATION_TIMESTAMP": lambda c: c.creation_timestamp,
    "END_TIMESTAMP": lambda c: c.end_timestamp or 0,
    "ID": lambda c: c.id,
    "TOPIC": lambda c: c.topic or "",
    "STATE": lambda c: c.state,
    "SOURCE_ID": lambda c: c.source_id or "",
}


def order_conversations(body: Body, items: list[Conversation]) -> list[Conversation]:
    out = sorted(items, key=lambda c: c.creation_timestamp)
    for order in reversed(body.obj_list("orderBy")):
        name = order.req_str("field")
        key = _CONVERSATION_ORDER.get(name)
        if key is None:
            raise ApiError.bad_request(
                f"{order.where('field')}: the sandbox orders by "
                f"{', '.join(sorted(_CONVERSATION_ORDER))}, not {name!r}"
            )
        descending = order.opt_enum("order", ("ASCENDING", "DESCENDING")) == "DESCENDING"
        out.sort(key=key, reverse=descending)
    return out


_TIMESTAMP_ORDER: dict[str, Callable[[Message], Any]] = {
    "ID": lambda m: m.id,
    "CONVERSATION_ID": lambda m: m.conversation_id,
    "SEND_TIMESTAMP": lambda m: m.server_timestamp,
    "SERVER_TIMESTAMP": lambda m: m.server_timestamp,
    "SENDER_PERSON_ID": lambda m: m.sender_person_id,
    "TYPE": lambda m: m.type,
    "TEXT": lambda m: m.fallback_text or m.text or "",
}


def _timestamp_matches(op: Body, value: int) -> bool:
    """A ``TimestampOperator`` on a message's send timestamp (never null in the sandbox)."""
    kind = op.req_str("type")
    if kind in ("IS_NULL", "IS_NOT_NULL"):
        return kind == "IS_NOT_NULL"
    if kind in ("IN", "NOT_IN"):
        values = op.data.get("values")
        if not isinstance(values, list) or not all(isinstance(v, int) for v in values):
            raise ApiError.bad_request(f"{op.where('values')}: must be a list of integers")
        return (value in values) == (kind == "IN")
    if kind in ("IN_RANGE", "NOT_IN_RANGE"):
        low = op.opt_int("minimum")
        high = op.opt_int("maximum")
        inside = (low is None or value >= low) and (high is None or value <= high)
        return inside == (kind == "IN_RANGE")
    limit = op.opt_int("value")
    if limit is None:
        raise ApiError.bad_request(f"{op.where('value')}: is required")
    checks: dict[str, Callable[[], bool]] = {
        "EQUALS": lambda: value == limit,
        "NOT_EQUALS": lambda: value != limit,
        "GREATER_THAN": lambda: value > limit,
        "GREATER_THAN_OR_NULL": lambda: value > limit,
        "LOWER_THAN": lambda: value < limit,
        "LOWER_THAN_OR_NULL": lambda: value < limit,
    }
    check = checks.get(kind)
    if check is None:
        raise ApiError.bad_request(f"{op.where('type')}: operator {kind!r} is not supported")
    return check()


def message_log(
    body: Body, messages: Iterable[Message], *, filter_type: str, order_type: str
) -> tuple[list[Message], bool, int]:
    """A ``MessageExportQuery`` (v4) or ``MessageQuery`` (v3) over a conversation's messages:
    ``SEND_TIMESTAMP`` filters, ``orderBy``, paging. Oldest first unless ordered otherwise."""
    checks: list[Body] = []
    for f in body.obj_list("searchFilters"):
        f.type_tag(filter_type)
        name = f.req_str("field")
        if name != "SEND_TIMESTAMP":
            raise ApiError.bad_request(f"{f.where('field')}: must be SEND_TIMESTAMP, not {name!r}")
        checks.append(f.req_obj("operator"))
    kept = [m for m in messages if all(_timestamp_matches(op, m.server_timestamp) for op in checks)]
    position = {m.id: n for n, m in enumerate(kept)}  # the order they were posted in
    keys: list[tuple[Callable[[Message], Any], int]] = []
    for order in body.obj_list("orderBy"):
        order.type_tag(order_type)
        name = order.req_str("field")
        key = _TIMESTAMP_ORDER.get(name)
        if key is None:
            raise ApiError.bad_request(
                f"{order.where('field')}: must be one of {', '.join(sorted(_TIMESTAMP_ORDER))}"
            )
        descending = order.opt_enum("order", ("ASCENDING", "DESCENDING")) == "DESCENDING"
        keys.append((key, -1 if descending else 1))
    # Messages posted within one millisecond stay in posting order, reversed with the first key
    keys.append((lambda m: position[m.id], keys[0][1] if keys else 1))

    def compare(a: Message, b: Message) -> int:
        for key, sign in keys:
            x, y = key(a), key(b)
            if x != y:
                return sign if x > y else -sign
        return 0

    return page(body, sorted(kept, key=functools.cmp_to_key(compare)))


def page(body: Body, items: Iterable[T]) -> tuple[list[T], bool, int]:
    """Apply ``offset``/``limit``; returns the page, ``hasMoreItems`` and ``nextOffset``."""
    offset = body.opt_int("offset", minimum=0) or 0
    limit = body.opt_int("limit", minimum=1) or 100
    all_items = list(items)
    chunk = all_items[offset : offset + limit]
    next_offset = offset + len(chunk)
    return chunk, next_offset < len(all_items), next_offset


def result(
    type_name: str, items: list[dict[str, Any]], more: bool, next_offset: int
) -> dict[str, Any]:
    return {"$_type": type_name, "hasMoreItems": more, "nextOffset": next_offset, "items": items}


# -- channels --------------------------------------------------------------------------------
_API_VERSIONS = ("V1", "V2", "V3", "V4")
_STATUSES = ("ACTIVE", "INACTIVE", "INACTIVE_UNAVAILABLE")


def parse_webhook_fields(body: Body, api: str) -> WebhookFields:
    """A ``WebhookRegistration`` body (same component in v3 and v4)."""
    body.type_tag("WebhookRegistration")
    events = body.opt_str_list("events")
    if not events or not all(e.strip() for e in events):
        raise ApiError.bad_request("events: is required (the names of the webhook events)")
    fields = WebhookFields(
        name=body.req_str("name", max_len=250),
        endpoint=body.req_str("endpoint", max_len=4000),
        api_version=body.opt_enum("apiVersion", _API_VERSIONS) or api.upper(),
        events=events,
        status=body.opt_enum("status", _STATUSES),
        description=body.opt_str("description", max_len=500),
        secret=body.opt_str("secret", max_len=4000),
    )
    if not fields.endpoint.startswith(("http://", "https://")):
        raise ApiError.bad_request("endpoint: must be an http(s) URL")
    return fields


def parse_channel_fields(body: Body, api: str) -> ChannelFields:
    """A ``CustomExternalMessengerChannel`` body (the sandbox emulates custom channels only)."""
    body.type_tag("CustomExternalMessengerChannel")
    kind = body.opt_str("type")
    if kind is None and api == "v4" and body.data.get("$_type") is None:
        raise ApiError.bad_request("type: is required (CUSTOM)")
    if kind is not None and kind != "CUSTOM":
        raise ApiError.bad_request(f"type: the sandbox emulates CUSTOM channels, not {kind!r}")
    version = body.opt_enum("webhookApiVersion", _API_VERSIONS) or api.upper()
    fields = ChannelFields(
        name=body.req_str("name"),
        webhook_endpoint=body.req_str("webhookEndpoint", max_len=4000),
        webhook_api_version=version,
        description=body.opt_str("description"),
        source_id=body.opt_str("sourceId", max_len=250),
        channel_icon=body.opt_str("channelIcon"),
        webhook_secret=body.opt_str("webhookSecret", max_len=4000),
        webhook_status=body.opt_enum("webhookStatus", _STATUSES),
        message_state_handled_externally=body.opt_bool("messageStateHandledExternally"),
        metadata=body.opt_str_map("metadata"),
    )
    if not fields.webhook_endpoint.startswith(("http://", "https://")):
        raise ApiError.bad_request("webhookEndpoint: must be an http(s) URL")
    if api == "v4":
        fields.outbound_supported = body.opt_bool("outboundSupported")
        fields.outbound_timeout_millis = body.opt_int("outboundTimeoutMillis", minimum=1)
        if fields.outbound_timeout_millis is None and version == "V4":
            raise ApiError.bad_request("outboundTimeoutMillis: is required")
        fields.contact_identifier_field_name = body.opt_str("contactIdentifierFieldName")
        fields.contact_identifier_field_type = body.opt_enum(
            "contactIdentifierFieldType", ("EMAIL", "PHONE_NUMBER", "NUMBER", "OTHER")
        )
        translations = body.opt_obj("contactIdentifierTranslations")
        if translations is not None:
            parsed: dict[str, dict[str, str]] = {}
            for lang in translations.data:
                t = translations.req_obj(lang)
                t.type_tag("CustomChannelContactIdentifierTranslation")
                parsed[lang] = {k: v for k in ("id", "name") if (v := t.opt_str(k)) is not None}
            fields.contact_identifier_translations = parsed
        fields.supports_multiple_conversations_per_contact = body.opt_bool(
            "supportsMultipleConversationsPerContact"
        )
    return fields


def parse_person_fields(body: Body) -> PersonFields:
    body.type_tag("PersonData")
    source = body.opt_enum("personSource", ("USER_DB", "VIRTUAL"))
    if source == "USER_DB":
        raise ApiError.bad_request("personSource: must be VIRTUAL for a virtual person")
    return PersonFields(
        source_id=body.req_str("sourceId", max_len=250),
        person_type=body.opt_enum("personType", ("AGENT", "VISITOR", "SYSTEM", "BOT")),
        first_name=body.opt_str("firstName", max_len=250),
        last_name=body.opt_str("lastName", max_len=250),
        username=body.opt_str("username", max_len=250),
        nickname=body.opt_str("nickname", max_len=250),
        email=body.opt_str("email"),
        phone=body.opt_str("phone"),
        source_url=body.opt_str("sourceUrl", max_len=2000),
        source_data=body.opt_str("sourceData"),
        metadata=body.opt_str_map("metadata"),
    )


ENGAGEMENT_TYPES = (
    "CHAT_REQUEST",
    "OFFLINE_CHAT_REQUEST",
    "VIDEO_REQUEST",
    "AUDIO_REQUEST",
    "HEADLESS_BROWSER_REQUEST",
    "DOMCAP_BROWSER_REQUEST",
    "MOBILE_COBROWSING_REQUEST",
    "WHITEBOARD_REQUEST",
    "SCREEN_SHARING_REQUEST",
    "VISITOR_COBROWSING",
    "HEADLESS_PIN",
    "DOMCAP_PIN",
    "MOBILE_PIN",
    "WHITEBOARD_PIN",
    "SCREEN_SHARING_PIN",
    "CHAT_PIN",
    "CHAT_INVITE",
    "HEADLESS_INVITE",
    "WHITEBOARD_INVITE",
    "SCREEN_SHARING_INVITE",
    "SCHEDULED_CONVERSATION",
)
END_REASONS = (
    "ENDED_BY_PARTICIPANT",
    "MANDATORY_PARTICIPANT_GONE",
    "REQUEST_DECLINED",
    "REQUEST_NOT_ANSWERED",
    "EXTERNAL_CHANNEL_CLOSED",
    "SOLVED_BY_BOT",
    "CANCELED",
    "CALL_ENDED",
    "NO_AGENT_AVAILABLE",
    "OTHER",
)
RECIPIENT_TYPES = ("AGENT", "TEAM", "NAMED_AREA", "ACCOUNT")
