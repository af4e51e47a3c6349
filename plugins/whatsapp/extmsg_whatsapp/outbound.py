"""An agent's message → what WhatsApp accepts, and the Graph API body that carries it.

WhatsApp lets a business write freely only within 24 hours of the contact's last message (the
customer-service window). Inside it, texts go as they are (split at 4096 characters) and files
as media; outside it only an approved template may be sent, so the agent's text travels as the
template's parameter, or the message fails with a reason the agent can act on.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any

import msgspec

from extmsg.errors import PermanentError
from extmsg.models import Channel, OutboundMessage
from extmsg.rendering import prefix_text, sender_prefix, split_text

from . import media
from .settings import WhatsAppSettings

__all__ = [
    "CAPTION_LIMIT",
    "TEXT_LIMIT",
    "WINDOW_SECONDS",
    "clock",
    "message_body",
    "recipient",
    "render",
    "template_parameter",
    "window_open",
]

#: Where "now" comes from; tests replace it.
clock: Callable[[], float] = time.time

WINDOW_SECONDS = 24 * 3600
TEXT_LIMIT = 4096
CAPTION_LIMIT = 1024
TEMPLATE_PARAMETER_LIMIT = 900

_PHONE = re.compile(r"^\+?\d{5,20}$")
_SPACES = re.compile(r" {5,}")

WINDOW_CLOSED_NO_TEMPLATE = (
    "Not sent: the contact has not written on WhatsApp in the last 24 hours, and WhatsApp "
    "then only accepts approved templates, but this channel has no template configured. "
    "The message can be sent once the contact writes again."
)
WINDOW_CLOSED_FILE = (
    "Not sent: the contact has not written on WhatsApp in the last 24 hours, and files can "
    "only be sent within 24 hours of the contact's last message. Send a text to invite the "
    "contact to reply, then send the file again."
)


def window_open(last_inbound_at: float | None, now: float) -> bool:
    """Whether the contact wrote within the last 24 hours (a time slightly ahead counts as now)."""
    return last_inbound_at is not None and now - last_inbound_at < WINDOW_SECONDS


def template_parameter(text: str) -> str:
    """Text usable as a template body parameter: no newlines or tabs, no long space runs."""
    flat = " ".join(line.strip() for line in text.replace("\t", " ").splitlines() if line.strip())
    flat = _SPACES.sub("    ", flat)
    if len(flat) > TEMPLATE_PARAMETER_LIMIT:
        flat = flat[: TEMPLATE_PARAMETER_LIMIT - 1].rstrip() + "…"
    return flat


def render(channel: Channel, message: OutboundMessage) -> list[OutboundMessage]:
    """The sends for one agent message, in order; raises PermanentError when none is possible."""
    settings: WhatsAppSettings = channel.settings
    rendered = prefix_text(channel, message)
    if rendered.template:
        return [rendered]
    if not window_open(rendered.last_inbound_at, clock()):
        return [_template(settings, rendered)]
    sends: list[OutboundMessage] = []
    if rendered.text:
        sends.extend(
            msgspec.structs.replace(rendered, text=chunk, attachment=None)
            for chunk in split_text(rendered.text, TEXT_LIMIT)
        )
    if rendered.attachment is not None:
        sends.extend(_attachment_sends(channel, rendered))
    if not sends:
        return [rendered]  # nothing to say: the send fails with a reason instead of vanishing
    return [
        msgspec.structs.replace(send, part=i, reply_to=rendered.reply_to if i == 0 else None)
        for i, send in enumerate(sends)
    ]


def _template(settings: WhatsAppSettings, message: OutboundMessage) -> OutboundMessage:
    if message.attachment is not None:
        raise PermanentError(WINDOW_CLOSED_FILE, code="window_closed")
    if not settings.template_name:
        raise PermanentError(WINDOW_CLOSED_NO_TEMPLATE, code="window_closed")
    params: tuple[str, ...] = ()
    if settings.template_text_parameter:
        params = (template_parameter(message.text or "") or "-",)
    return msgspec.structs.replace(
        message, template=settings.template_name, template_params=params, part=0
    )


def _attachment_sends(channel: Channel, message: OutboundMessage) -> list[OutboundMessage]:
    attachment = message.attachment
    assert attachment is not None
    kind = media.outbound_kind(attachment.mime_type)
    caption = (attachment.caption or "").strip()
    only_prefix = caption == sender_prefix(channel, message.sender_name).strip()
    if kind in media.CAPTION_TYPES and len(caption) <= CAPTION_LIMIT:
        return [msgspec.structs.replace(message, text=None)]
    # the caption cannot ride along: it goes first as text, the file follows without it
    bare = msgspec.structs.replace(attachment, caption=None)
    sends = (
        []
        if not caption or only_prefix
        else [
            msgspec.structs.replace(message, text=chunk, attachment=None)
            for chunk in split_text(caption, TEXT_LIMIT)
        ]
    )
    sends.append(msgspec.structs.replace(message, text=None, attachment=bare))
    return sends


def recipient(address: str) -> dict[str, str]:
    """``to`` for a phone number (wa_id); ``recipient`` for a business-scoped user id."""
    if _PHONE.match(address):
        return {"to": address.lstrip("+")}
    return {"recipient": address}


def message_body(
    settings: WhatsAppSettings, message: OutboundMessage, media_id: str | None = None
) -> dict[str, Any]:
    """The JSON body of ``POST /{phone_number_id}/messages`` for one rendered message."""
    body: dict[str, Any] = {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        **recipient(message.contact.address),
        # echoed in status webhooks: statuses find our message even before the wamid is stored
        "biz_opaque_callback_data": message.id,
    }
    if message.reply_to:
        body["context"] = {"message_id": message.reply_to}
    if message.template:
        template: dict[str, Any] = {
            "name": message.template,
            "language": {"policy": "deterministic", "code": settings.template_language},
        }
        if message.template_params:
            template["components"] = [
                {
                    "type": "body",
                    "parameters": [{"type": "text", "text": p} for p in message.template_params],
                }
            ]
        body.update(type="template", template=template)
    elif message.attachment is not None:
        attachment = message.attachment
        kind = media.outbound_kind(attachment.mime_type)
        if media_id is not None:
            item: dict[str, Any] = {"id": media_id}
        elif attachment.url:
            item = {"link": attachment.url}
        else:
            raise PermanentError("The file has neither content nor a link to send.")
        if attachment.caption and kind in media.CAPTION_TYPES:
            item["caption"] = attachment.caption
        if kind == "document":
            item["filename"] = attachment.file_name
        body.update(type=kind, **{kind: item})
    elif message.text:
        body.update(type="text", text={"preview_url": False, "body": message.text})
    else:
        raise PermanentError("The message is empty; there is nothing to send.")
    return body
