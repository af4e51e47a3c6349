"""The Graph API calls the plugin makes: send, upload, mark read, fetch a contact's file."""

from __future__ import annotations

import base64
import hashlib
import logging
from typing import Any

import aiohttp
import msgspec

from extmsg.errors import FetchRefused, PermanentError, RetryableError
from extmsg.fetch import mask_url
from extmsg.logsafe import mask_address as mask
from extmsg.models import Attachment, OutboundMessage, SendResult

from . import media, outbound
from .content import MEDIA_SCHEME, base_mime
from .graph import Graph
from .settings import WhatsAppSettings

__all__ = ["fetch_media", "mark_read", "send_message", "upload_media"]

log = logging.getLogger("extmsg.whatsapp")


async def upload_media(graph: Graph, settings: WhatsAppSettings, attachment: Attachment) -> str:
    """``POST /{phone_number_id}/media`` (multipart); the media id to send by."""
    assert attachment.data is not None
    mime = base_mime(attachment.mime_type) or "application/octet-stream"
    form = aiohttp.FormData()
    form.add_field("messaging_product", "whatsapp")
    form.add_field("type", mime)
    form.add_field("file", attachment.data, filename=attachment.file_name, content_type=mime)
    url = f"{settings.graph_url}/{settings.phone_number_id}/media"
    payload = await graph.call(settings, "POST", url, form=form)
    media_id = payload.get("id")
    if not isinstance(media_id, str) or not media_id:
        raise PermanentError("WhatsApp accepted the file but returned no media id.")
    return media_id


async def send_message(
    graph: Graph, settings: WhatsAppSettings, message: OutboundMessage
) -> SendResult:
    """Send one rendered message; the wamid WhatsApp assigned to it."""
    media_id: str | None = None
    attachment = message.attachment
    if message.template is None and attachment is not None and attachment.data is not None:
        media.check_outbound_size(media.outbound_kind(attachment.mime_type), len(attachment.data))
        media_id = await upload_media(graph, settings, attachment)
    body = outbound.message_body(settings, message, media_id)
    url = f"{settings.graph_url}/{settings.phone_number_id}/messages"
    payload = await graph.call(settings, "POST", url, json_body=body)
    wamid = _first_message_id(payload)
    if wamid is None:
        raise PermanentError("WhatsApp accepted the message but returned no message id.")
    log.info(
        "whatsapp: sent %s message %s to %s as %s",
        body["type"],
        message.id,
        mask(message.contact.address),
        wamid,
    )
    return SendResult(provider_message_id=wamid)


def _first_message_id(payload: Any) -> str | None:
    messages = payload.get("messages") if isinstance(payload, dict) else None
    if isinstance(messages, list) and messages and isinstance(messages[0], dict):
        wamid = messages[0].get("id")
        return wamid if isinstance(wamid, str) and wamid else None
    return None


async def mark_read(graph: Graph, settings: WhatsAppSettings, wamid: str) -> bool:
    """Blue ticks for the contact's message (and the ones before it)."""
    body = {"messaging_product": "whatsapp", "status": "read", "message_id": wamid}
    url = f"{settings.graph_url}/{settings.phone_number_id}/messages"
    payload = await graph.call(settings, "POST", url, json_body=body)
    return payload.get("success") is True


async def fetch_media(
    graph: Graph,
    settings: WhatsAppSettings,
    attachment: Attachment,
    allowed_networks: tuple[str, ...] = (),
) -> Attachment:
    """The two-step download: the media's short-lived URL, then its bytes (both with the token)."""
    assert attachment.url is not None
    media_id = attachment.url[len(MEDIA_SCHEME) :]
    limit = settings.media_max_bytes
    try:
        info = await graph.call(
            settings,
            "GET",
            f"{settings.graph_url}/{media_id}",
            params={"phone_number_id": settings.phone_number_id},
        )
    except PermanentError as exc:
        if exc.code in ("0", "190", "10", "3"):
            raise
        raise PermanentError(
            "The contact's file is no longer available from WhatsApp (files expire after 7 days).",
            status=exc.status,
            code=exc.code,
        ) from exc
    size = info.get("file_size")
    if isinstance(size, int) and size > limit:
        raise media.too_large_inbound(size, limit)
    url = info.get("url")
    if not isinstance(url, str) or not url:
        raise RetryableError("WhatsApp returned no download link for the file; will retry.")
    if not media.may_carry_token(url, settings):
        raise FetchRefused(
            f"WhatsApp pointed to the file at {mask_url(url)}, which is not one of the channel's "
            "media_base_urls; not fetched (the access token would have to go there)."
        )
    data = await graph.download(settings, url, limit, allowed_networks)
    if isinstance(size, int) and len(data) < size:
        raise RetryableError("The file arrived incomplete from WhatsApp; will retry.")
    _check_digest(info.get("sha256"), data)
    mime = info.get("mime_type")
    return msgspec.structs.replace(
        attachment,
        data=data,
        mime_type=mime if isinstance(mime, str) and mime else attachment.mime_type,
    )


def _check_digest(expected: Any, data: bytes) -> None:
    """Meta's ``sha256`` (hex or base64); a mismatch is logged, the size check guards truncation."""
    if not isinstance(expected, str) or not expected:
        return
    digest = hashlib.sha256(data).digest()
    if expected.lower() == digest.hex() or expected == base64.b64encode(digest).decode():
        return
    log.warning("whatsapp: a downloaded file's sha256 differs from the one Meta announced")
