"""Meta's webhook notifications → normalized events.

One POST may batch several entries (WhatsApp business accounts), each with several changes,
each with several messages and statuses, for several business numbers. All of them are read,
and each event names the channel of its ``metadata.phone_number_id``. What cannot be placed
(an unknown number, a number of another app, a status we do not track) is skipped with a log
line rather than refused: a refusal makes Meta retry the whole batch for a week.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from extmsg.errors import BadInbound
from extmsg.jsonsafe import depth_problem
from extmsg.logsafe import mask_address as mask
from extmsg.models import (
    Channel,
    Contact,
    InboundEvent,
    InboundMessage,
    InboundRequest,
    StatusUpdate,
)

from . import errors, signature
from .content import content
from .settings import WhatsAppSettings

__all__ = ["parse"]

log = logging.getLogger("extmsg.whatsapp")

OBJECT = "whatsapp_business_account"
#: Meta's status → ours. ``played`` (a voice message was listened to) implies read.
State = Literal["sent", "delivered", "read", "failed"]
_STATES: Mapping[str, State] = {
    "sent": "sent",
    "delivered": "delivered",
    "read": "read",
    "played": "read",
    "failed": "failed",
}
#: Notifications that are not something the contact wrote.
_IGNORED_TYPES = frozenset({"request_welcome"})


def _map(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


class _Routing:
    """Finds the channel of a business number among the channels the request may speak for."""

    def __init__(self, request: InboundRequest, channels: Sequence[Channel]) -> None:
        ours = [ch for ch in channels if isinstance(ch.settings, WhatsAppSettings)]
        signed = {ch.name for ch in signature.matching_channels(request, ours)}
        self.trusted = {ch.name for ch in ours if ch.name in signed or not ch.verify_signatures}
        self.by_number: dict[str, list[Channel]] = {}
        for ch in ours:
            self.by_number.setdefault(ch.settings.phone_number_id, []).append(ch)

    def channel(self, phone_number_id: str | None) -> Channel | None:
        candidates = self.by_number.get(phone_number_id or "", [])
        for ch in candidates:
            if ch.name in self.trusted:
                return ch
        if candidates:
            log.warning(
                "whatsapp: skipped events for phone_number_id %s: the request was signed by "
                "another app than channel %s's",
                phone_number_id,
                candidates[0].name,
            )
        else:
            log.warning(
                "whatsapp: skipped events for unknown phone_number_id %s (no channel has it)",
                phone_number_id,
            )
        return None


def parse(request: InboundRequest, channels: Sequence[Channel]) -> list[InboundEvent]:
    """Every message and status of a notification, in payload order, duplicates removed."""
    problem = depth_problem(request.body)
    if problem is not None:
        raise BadInbound(f"the webhook body is refused: {problem}")
    try:
        payload = json.loads(request.body)
    except ValueError as exc:
        raise BadInbound("the webhook body is not JSON") from exc
    if not isinstance(payload, Mapping):
        raise BadInbound("the webhook body is not a JSON object")
    if payload.get("object") != OBJECT:
        log.info("whatsapp: ignored a notification for object %.40r", payload.get("object"))
        return []
    entries = payload.get("entry")
    if not isinstance(entries, list):
        raise BadInbound("the webhook body has no 'entry' list")

    routing = _Routing(request, channels)
    events: list[InboundEvent] = []
    seen: set[tuple[str, ...]] = set()
    for entry in entries:
        for change in _list(_map(entry).get("changes")):
            change = _map(change)
            if change.get("field") != "messages":
                log.debug("whatsapp: ignored a %r change", change.get("field"))
                continue
            value = _map(change.get("value"))
            metadata = _map(value.get("metadata"))
            channel = routing.channel(_str(metadata.get("phone_number_id")))
            if channel is None:
                continue
            for event, key in _value_events(value, channel.name):
                if key not in seen:
                    seen.add(key)
                    events.append(event)
    return events


def _value_events(
    value: Mapping[str, Any], channel: str
) -> list[tuple[InboundEvent, tuple[str, ...]]]:
    out: list[tuple[InboundEvent, tuple[str, ...]]] = []
    for error in _list(value.get("errors")):
        error = _map(error)
        log.warning(
            "whatsapp: channel %s: Meta reported error %s (%s)",
            channel,
            error.get("code"),
            error.get("title"),
        )
    contacts = _Contacts(_list(value.get("contacts")))
    for message in _list(value.get("messages")):
        event = _message(_map(message), contacts, channel)
        if event is not None:
            out.append((event, (channel, "m", event.provider_message_id)))
    for status in _list(value.get("statuses")):
        update = _status(_map(status), channel)
        if update is not None:
            key = (channel, "s", update.provider_message_id or "", update.state)
            out.append((update, key))
    return out


class _Contacts:
    """``value.contacts[]`` by phone (``wa_id``) and by business-scoped user id."""

    def __init__(self, items: list[Any]) -> None:
        self.items = [_map(item) for item in items]
        self.by_id: dict[str, Mapping[str, Any]] = {}
        for item in self.items:
            for key in ("wa_id", "user_id"):
                if _str(item.get(key)):
                    self.by_id.setdefault(item[key], item)

    def contact(self, message: Mapping[str, Any]) -> Contact | None:
        phone = _str(message.get("from"))
        user_id = _str(message.get("from_user_id"))
        entry = self.by_id.get(phone or "") or self.by_id.get(user_id or "")
        if entry is None and len(self.items) == 1:
            entry = self.items[0]
        entry = entry or {}
        phone = phone or _str(entry.get("wa_id"))
        address = phone or user_id or _str(entry.get("user_id"))
        if address is None:
            return None
        profile = _map(entry.get("profile"))
        name = _str(profile.get("name")) or _str(profile.get("username"))
        return Contact(
            address=address,
            name=name,
            phone=f"+{phone}" if phone and phone.isdigit() else None,
        )


def _message(
    message: Mapping[str, Any], contacts: _Contacts, channel: str
) -> InboundMessage | None:
    wamid = _str(message.get("id"))
    kind = _str(message.get("type")) or "unknown"
    if wamid is None:
        log.warning("whatsapp: channel %s: skipped a %s message without id", channel, kind)
        return None
    if kind in _IGNORED_TYPES:
        log.info("whatsapp: channel %s: ignored a %s notification", channel, kind)
        return None
    contact = contacts.contact(message)
    if contact is None:
        log.warning("whatsapp: channel %s: skipped message %s without sender", channel, wamid)
        return None
    body = content(message)
    log.debug(
        "whatsapp: channel %s: %s message %s from %s", channel, kind, wamid, mask(contact.address)
    )
    return InboundMessage(
        provider_message_id=wamid,
        contact=contact,
        text=body.text,
        attachments=body.attachments,
        reply_to=body.reply_to,
        sent_at=_timestamp(message.get("timestamp")),
        channel=channel,
    )


def _status(status: Mapping[str, Any], channel: str) -> StatusUpdate | None:
    wamid = _str(status.get("id"))
    state = _STATES.get(str(status.get("status")))
    if wamid is None or state is None:
        log.info(
            "whatsapp: channel %s: ignored status %r of message %s",
            channel,
            status.get("status"),
            wamid,
        )
        return None
    code, text = (None, None)
    if state == "failed":
        code, text = errors.from_status_errors(status.get("errors"))
    return StatusUpdate(
        state=state,
        provider_message_id=wamid,
        message_ref=_str(status.get("biz_opaque_callback_data")),
        error_code=code,
        error_text=text,
        channel=channel,
    )


def _timestamp(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None
