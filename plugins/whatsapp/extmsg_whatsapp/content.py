"""What a contact's WhatsApp message says, as text and attachments an agent can read.

Every message type becomes something visible: media become attachments fetched later
(``whatsapp-media:{id}``, see :mod:`extmsg_whatsapp.media`), structured types (location,
contacts, button taps, reactions, orders) become readable text, and types this code does not
know become a bracketed note naming the type instead of disappearing.
"""

from __future__ import annotations

import mimetypes
from collections.abc import Mapping
from typing import Any, NamedTuple

from extmsg.models import Attachment

__all__ = ["MEDIA_SCHEME", "MEDIA_TYPES", "Content", "content", "unsupported"]

MEDIA_SCHEME = "whatsapp-media:"
MEDIA_TYPES = frozenset({"image", "video", "audio", "document", "sticker"})

_EXTENSIONS = {
    "image/jpeg": ".jpg",
    "image/png": ".png",
    "image/webp": ".webp",
    "video/mp4": ".mp4",
    "video/3gpp": ".3gp",
    "audio/ogg": ".ogg",
    "audio/mpeg": ".mp3",
    "audio/aac": ".aac",
    "audio/amr": ".amr",
    "audio/mp4": ".m4a",
    "application/pdf": ".pdf",
    "text/plain": ".txt",
}


class Content(NamedTuple):
    text: str | None
    attachments: tuple[Attachment, ...] = ()
    reply_to: str | None = None


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value.strip() else None


def _map(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def unsupported(kind: str) -> str:
    return f"[unsupported WhatsApp message type: {kind}]"


def base_mime(mime_type: str | None) -> str:
    """``audio/ogg; codecs=opus`` → ``audio/ogg``."""
    return (mime_type or "").split(";", 1)[0].strip().lower()


def _file_name(kind: str, body: Mapping[str, Any], media_id: str) -> str:
    given = _str(body.get("filename"))
    if given:
        return given
    mime = base_mime(_str(body.get("mime_type")))
    ext = _EXTENSIONS.get(mime) or mimetypes.guess_extension(mime) or ""
    stem = "voice-message" if kind == "audio" and body.get("voice") is True else kind
    return f"{stem}-{media_id[-8:]}{ext}"


def _media(kind: str, body: Mapping[str, Any]) -> Content:
    media_id = _str(body.get("id"))
    if media_id is None:
        return Content(unsupported(kind))
    attachment = Attachment(
        file_name=_file_name(kind, body, media_id),
        mime_type=_str(body.get("mime_type")) or "application/octet-stream",
        url=MEDIA_SCHEME + media_id,
        caption=_str(body.get("caption")),
    )
    return Content(None, (attachment,))


def _location(body: Mapping[str, Any]) -> Content:
    lat, lng = body.get("latitude"), body.get("longitude")
    lines = [f"📍 {_str(body.get('name')) or 'Shared location'}"]
    if _str(body.get("address")):
        lines.append(str(body["address"]))
    if isinstance(lat, int | float) and isinstance(lng, int | float):
        lines.append(f"https://www.google.com/maps/search/?api=1&query={lat},{lng}")
    if _str(body.get("url")):
        lines.append(str(body["url"]))
    return Content("\n".join(lines))


def _one_contact(card: Mapping[str, Any]) -> str:
    name = _map(card.get("name"))
    full = _str(name.get("formatted_name")) or " ".join(
        part for part in (_str(name.get("first_name")), _str(name.get("last_name"))) if part
    )
    lines = [f"👤 {full or 'Shared contact'}"]
    org = _map(card.get("org"))
    if _str(org.get("company")):
        lines.append(str(org["company"]))
    for phone in card.get("phones") or ():
        phone = _map(phone)
        number = _str(phone.get("phone")) or _str(phone.get("wa_id"))
        if number:
            kind = _str(phone.get("type"))
            lines.append(f"Phone: {number}" + (f" ({kind.lower()})" if kind else ""))
    for email in card.get("emails") or ():
        address = _str(_map(email).get("email"))
        if address:
            lines.append(f"Email: {address}")
    for url in card.get("urls") or ():
        link = _str(_map(url).get("url"))
        if link:
            lines.append(link)
    return "\n".join(lines)


def _contacts(cards: Any) -> Content:
    if not isinstance(cards, list) or not cards:
        return Content(unsupported("contacts"))
    return Content("\n\n".join(_one_contact(_map(card)) for card in cards))


def _interactive(body: Mapping[str, Any]) -> Content:
    sub = _str(body.get("type")) or "unknown"
    reply = _map(body.get(sub))
    if sub in ("button_reply", "list_reply"):
        title = _str(reply.get("title")) or _str(reply.get("id"))
        return Content(title or unsupported(f"interactive {sub}"))
    if sub == "nfm_reply":
        parts = [_str(reply.get("body")) or "[WhatsApp form response]"]
        if _str(reply.get("response_json")):
            parts.append(str(reply["response_json"]))
        return Content("\n".join(parts))
    return Content(unsupported(f"interactive {sub}"))


def _reaction(body: Mapping[str, Any]) -> Content:
    target = _str(body.get("message_id"))
    emoji = _str(body.get("emoji"))
    text = f"reacted {emoji} to a message" if emoji else "removed a reaction from a message"
    return Content(text, reply_to=target)


def _order(body: Mapping[str, Any]) -> Content:
    lines = ["🛒 Order"]
    for item in body.get("product_items") or ():
        item = _map(item)
        product = _str(item.get("product_retailer_id")) or "?"
        quantity = item.get("quantity", 1)
        price, currency = item.get("item_price"), _str(item.get("currency"))
        line = f"- {quantity} x {product}"
        if price is not None:
            line += f" at {price}{' ' + currency if currency else ''}"
        lines.append(line)
    if _str(body.get("text")):
        lines.append(str(body["text"]))
    return Content("\n".join(lines))


def _unsupported_type(message: Mapping[str, Any], body: Mapping[str, Any]) -> Content:
    kind = _str(body.get("type"))
    if kind is None:
        for error in message.get("errors") or ():
            details = _str(_map(_map(error).get("error_data")).get("details"))
            kind = details or _str(_map(error).get("title"))
            if kind:
                break
    return Content(unsupported(kind or "unknown"))


def content(message: Mapping[str, Any]) -> Content:
    """The readable content of one ``value.messages[]`` item."""
    kind = _str(message.get("type")) or "unknown"
    body = _map(message.get(kind))
    result: Content
    if kind == "text":
        text = body.get("body")
        result = Content(text if isinstance(text, str) else unsupported(kind))
    elif kind in MEDIA_TYPES:
        result = _media(kind, body)
    elif kind == "location":
        result = _location(body)
    elif kind == "contacts":
        result = _contacts(message.get("contacts"))
    elif kind == "interactive":
        result = _interactive(body)
    elif kind == "button":
        result = Content(_str(body.get("text")) or _str(body.get("payload")) or unsupported(kind))
    elif kind == "reaction":
        result = _reaction(body)
    elif kind == "order":
        result = _order(body)
    elif kind == "system":
        note = f"[WhatsApp system message: {_str(body.get('type')) or 'unknown'}]"
        result = Content(_str(body.get("body")) or note)
    elif kind == "unsupported":
        result = _unsupported_type(message, body)
    else:
        result = Content(unsupported(kind))
    context = _map(message.get("context"))
    reply_to = result.reply_to or _str(context.get("id"))
    text = result.text
    if text and (context.get("forwarded") or context.get("frequently_forwarded")):
        text = "[forwarded] " + text
    return Content(text, result.attachments, reply_to)
