"""Twilio's webhooks as normalized events: incoming messages, opt-outs, delivery reports.

Twilio adds parameters without notice, so unknown ones are ignored (the signature already
covered them). Status callbacks arriving on the inbound route (a Messaging Service pointing
both at one URL) are parsed as statuses too.
"""

from __future__ import annotations

import logging
import mimetypes
from collections.abc import Mapping
from typing import Any, Literal

import msgspec

from extmsg import jsonsafe
from extmsg.errors import BadInbound
from extmsg.logsafe import mask_address as mask
from extmsg.models import (
    Attachment,
    Contact,
    ContactUpdate,
    InboundEvent,
    InboundMessage,
    InboundRequest,
    StatusUpdate,
)

from .errors import describe_code
from .phone import normalize_inbound

__all__ = [
    "HELP_KEYWORDS",
    "MAX_MEDIA",
    "OPT_IN_KEYWORDS",
    "OPT_OUT_KEYWORDS",
    "parse_message",
    "parse_request",
    "parse_status",
    "request_params",
]

log = logging.getLogger("extmsg.sms_twilio")

#: Twilio's default opt-out, opt-in and help keywords (single-word, case-insensitive). The
#: first two are a Twilio channel's default ``opt_out_keywords`` / ``opt_in_keywords``, which
#: the core applies (:mod:`extmsg.optout`).
OPT_OUT_KEYWORDS = frozenset(
    {"STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "REVOKE", "OPTOUT"}
)
OPT_IN_KEYWORDS = frozenset({"START", "YES", "UNSTOP"})
HELP_KEYWORDS = frozenset({"HELP", "INFO"})
#: Twilio attaches at most 10 media items to one MMS.
MAX_MEDIA = 10

#: Delivery states a callback reports, as the core's states; ``None``: not worth an event.
_STATUS_MAP: dict[str, Literal["sent", "delivered", "read", "failed"] | None] = {
    "accepted": None,
    "scheduled": None,
    "queued": None,
    "sending": None,
    "sent": "sent",
    "partially_delivered": "sent",
    "delivered": "delivered",
    "read": "read",
    "undelivered": "failed",
    "failed": "failed",
    "canceled": "failed",
}
_INBOUND_STATES = frozenset({"received", "receiving"})
_NAME_PARAMS = ("ProfileName", "FromName", "CallerName")


def request_params(request: InboundRequest) -> dict[str, str]:
    """The webhook's parameters: the form body, the query of a GET, or a JSON object body."""
    if request.method.upper() == "GET":
        return {k: v for k, v in request.query if k != "ref"}
    content_type = (request.header("content-type") or "").split(";")[0].strip().lower()
    if content_type == "application/json" or request.query_value("bodySHA256") is not None:
        try:
            data: Any = jsonsafe.decode(request.body)
        except jsonsafe.JsonTooDeep as exc:
            raise BadInbound(f"the JSON body is refused: {exc}") from None
        except msgspec.DecodeError as exc:
            raise BadInbound(f"the JSON body is not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise BadInbound("the JSON body is not an object")
        return {str(k): "" if v is None else str(v) for k, v in data.items()}
    params: dict[str, str] = {}
    for name, value in request.form():
        params.setdefault(name, value)
    return params


def _required(params: Mapping[str, str], name: str, *fallbacks: str) -> str:
    for key in (name, *fallbacks):
        value = params.get(key, "").strip()
        if value:
            return value
    raise BadInbound(f"the Twilio request has no {name} parameter")


def _keyword(params: Mapping[str, str]) -> str | None:
    """``STOP``, ``START`` or ``HELP`` when Twilio says the message is one (``OptOutType``,
    Advanced Opt-Out: its custom keywords included), else ``None``. The channel's keyword
    lists are the core's to apply."""
    opt_out_type = params.get("OptOutType", "").strip().upper()
    if opt_out_type in ("STOP", "START", "HELP"):
        return opt_out_type
    return None


def _file_name(url: str, mime_type: str, index: int) -> str:
    media_sid = url.rstrip("/").rsplit("/", 1)[-1].split("?", 1)[0] or f"media{index}"
    extension = mimetypes.guess_extension(mime_type, strict=False) or ""
    if extension == ".jpe":
        extension = ".jpg"
    return f"{media_sid}{extension}"


def _attachments(params: Mapping[str, str]) -> tuple[Attachment, ...]:
    try:
        count = int(params.get("NumMedia", "0") or "0")
    except ValueError:
        raise BadInbound("the Twilio request's NumMedia is not a number") from None
    found: list[Attachment] = []
    for index in range(min(max(count, 0), MAX_MEDIA)):
        url = params.get(f"MediaUrl{index}", "").strip()
        if not url:
            raise BadInbound(f"the Twilio request has NumMedia={count} but no MediaUrl{index}")
        mime = params.get(f"MediaContentType{index}", "").strip() or "application/octet-stream"
        found.append(Attachment(file_name=_file_name(url, mime, index), mime_type=mime, url=url))
    return tuple(found)


def _location_text(params: Mapping[str, str]) -> str | None:
    latitude, longitude = params.get("Latitude", "").strip(), params.get("Longitude", "").strip()
    if not (latitude and longitude):
        return None
    label = " — ".join(p for p in (params.get("Label", ""), params.get("Address", "")) if p)
    where = f"https://maps.google.com/?q={latitude},{longitude}"
    return f"Location: {latitude}, {longitude} {where}" + (f" ({label})" if label else "")


def parse_message(params: Mapping[str, str]) -> list[InboundEvent]:
    """An incoming SMS/MMS, preceded by a ``ContactUpdate`` when Twilio marked it as an opt-out
    or opt-in (``OptOutType``)."""
    sid = _required(params, "MessageSid", "SmsMessageSid", "SmsSid")
    sender = _required(params, "From")
    address = normalize_inbound(sender)
    name = next((params[k].strip() for k in _NAME_PARAMS if params.get(k, "").strip()), None)
    body = params.get("Body", "").replace("\x00", "")
    attachments = _attachments(params)
    text = body or _location_text(params)
    events: list[InboundEvent] = []
    keyword = _keyword(params)
    if keyword in ("STOP", "START"):
        opted_out = keyword == "STOP"
        word = body.strip().upper()
        shown = word if word and len(word) <= 20 and not any(c.isspace() for c in word) else keyword
        reason = f"the customer texted {shown}"
        events.append(ContactUpdate(address=address, opted_out=opted_out, reason=reason))
        log.info("twilio %s from %s (%s)", keyword, mask(address), sid)
    if text or attachments:
        number = address.rpartition(":")[2]
        contact = Contact(
            address=address, name=name, phone=number if number.startswith("+") else None
        )
        events.append(
            InboundMessage(
                provider_message_id=sid,
                contact=contact,
                text=text or None,
                attachments=attachments,
            )
        )
    return events


def parse_status(params: Mapping[str, str], ref: str | None) -> list[InboundEvent]:
    """A delivery report for a message we sent; in-flight states yield nothing."""
    sid = _required(params, "MessageSid", "SmsSid")
    raw = _status_of(params)
    if not raw:
        raise BadInbound("the Twilio status callback has no MessageStatus parameter")
    if raw not in _STATUS_MAP:
        log.info("twilio status %r for %s ignored (unknown state)", raw, sid)
        return []
    state = _STATUS_MAP[raw]
    if state is None:
        return []
    error_code = params.get("ErrorCode", "").strip() or None
    error_text = None
    if state == "failed":
        fallback = params.get("ErrorMessage", "").strip() or None
        if raw == "canceled" and error_code is None:
            fallback = "The message was canceled before Twilio sent it."
        error_text = describe_code(error_code, fallback)
    update = StatusUpdate(
        state=state,
        provider_message_id=sid,
        message_ref=ref or None,
        error_code=error_code if state == "failed" else None,
        error_text=error_text,
    )
    return [update]


def _status_of(params: Mapping[str, str]) -> str:
    return (params.get("MessageStatus") or params.get("SmsStatus") or "").strip().lower()


def parse_request(request: InboundRequest) -> list[InboundEvent]:
    """The events in one Twilio webhook call.

    The parameters decide, not the route: a number or service pointed at the wrong one of
    the two URLs still loses nothing. Incoming messages carry ``SmsStatus=received``.
    """
    params = request_params(request)
    status = _status_of(params)
    if status in _INBOUND_STATES or (not status and request.route != "status"):
        return parse_message(params)
    return parse_status(params, request.query_value("ref"))
