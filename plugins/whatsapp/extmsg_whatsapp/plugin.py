"""The extmsg hook implementations for the WhatsApp Cloud API.

Each hook only decides whether the call is for a WhatsApp channel and hands over to the module
that holds the protocol: :mod:`.signature`, :mod:`.inbound`, :mod:`.handshake`,
:mod:`.outbound`, :mod:`.api`. First-result hooks are plain functions that return ``None`` for
other messengers and a value or a coroutine for ours (the core's async rule).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Sequence

from aiohttp import web

from extmsg import hookimpl
from extmsg.config import Config
from extmsg.models import (
    Attachment,
    Channel,
    ContactCheck,
    HttpReply,
    InboundEvent,
    InboundRequest,
    MessengerType,
    OutboundMessage,
    ProviderFake,
    Route,
    SendResult,
)

from . import api, inbound, outbound, signature
from .content import MEDIA_SCHEME
from .fake import create_sandbox_fake, fake_channel_settings
from .graph import Graph
from .handshake import handle_verification
from .settings import WhatsAppSettings

__all__ = ["NAME", "graph"]

NAME = "whatsapp"
log = logging.getLogger("extmsg.whatsapp")

#: The HTTP session every channel shares; opened at start-up (or on first use), closed at stop.
graph = Graph()

_BSUID = re.compile(r"^[A-Z]{2}(\.ENT)?\.[A-Za-z0-9]{1,128}$")
_PHONE_NOISE = re.compile(r"[\s\-().]")


def _settings(channel: Channel | None) -> WhatsAppSettings | None:
    if channel is None or channel.messenger != NAME:
        return None
    if not isinstance(channel.settings, WhatsAppSettings):
        raise TypeError(f"channel {channel.name!r} has no WhatsApp settings")
    return channel.settings


# --- registration -----------------------------------------------------------------------------
@hookimpl
def extmsg_messenger_types() -> MessengerType:
    return MessengerType(
        name=NAME,
        settings=WhatsAppSettings,
        description="WhatsApp Business Cloud API (Meta Graph API)",
        contact_identifier_type="PHONE_NUMBER",
        contact_identifier_name="phone",
        routes=(
            Route(name="webhook", path="webhook", scope="messenger"),
            Route(
                name="verify",
                path="webhook",
                method="GET",
                scope="messenger",
                kind="handler",
                handler=handle_verification,
            ),
        ),
        max_text_length=outbound.TEXT_LIMIT,
        # WhatsApp has no keywords of its own: the usual words, confirmed by extmsg.
        opt_out_keywords=("STOP", "UNSUBSCRIBE"),
        opt_in_keywords=("START",),
        opt_out_reply="You will get no more messages from us here. Reply START to get them again.",
        opt_in_reply="You will get our messages here again. Reply STOP to stop them.",
    )


@hookimpl
def extmsg_provider_fakes() -> list[ProviderFake]:
    return [
        ProviderFake(
            messenger=NAME,
            name="graph",
            factory=create_sandbox_fake,
            channel_settings=fake_channel_settings,
            description="Meta Graph API: messages, media upload/download, signed webhooks",
        )
    ]


# --- lifecycle --------------------------------------------------------------------------------
@hookimpl
async def extmsg_startup(app: web.Application, config: Config) -> None:
    await graph.open()


@hookimpl
async def extmsg_shutdown(app: web.Application, config: Config) -> None:
    await graph.close()


# --- inbound ----------------------------------------------------------------------------------
@hookimpl
def extmsg_verify_inbound(
    messenger: str, request: InboundRequest, channels: Sequence[Channel]
) -> bool | None:
    if messenger != NAME:
        return None
    return signature.verify(request, channels)


@hookimpl
def extmsg_parse_inbound(
    messenger: str, request: InboundRequest, channels: Sequence[Channel]
) -> list[InboundEvent] | None:
    if messenger != NAME:
        return None
    return inbound.parse(request, channels)


@hookimpl
def extmsg_render_ack(
    messenger: str, request: InboundRequest, events: Sequence[InboundEvent]
) -> HttpReply | None:
    if messenger != NAME:
        return None
    return HttpReply(status=200, body=b"")


@hookimpl
def extmsg_fetch_attachment(
    channel: Channel, attachment: Attachment
) -> Awaitable[Attachment] | None:
    settings = _settings(channel)
    if settings is None or not (attachment.url or "").startswith(MEDIA_SCHEME):
        return None
    return api.fetch_media(graph, settings, attachment, channel.fetch_allowed_networks)


@hookimpl
def extmsg_validate_contact(channel: Channel, identifier: str) -> ContactCheck | None:
    if _settings(channel) is None:
        return None
    return validate_contact(identifier)


def validate_contact(identifier: str) -> ContactCheck:
    """A WhatsApp id: international number as digits (``+``, spaces, dashes dropped) or a BSUID."""
    raw = identifier.strip()
    if _BSUID.match(raw):
        return ContactCheck(valid=True, address=raw)
    digits = _PHONE_NOISE.sub("", raw)
    if digits.startswith("+"):
        digits = digits[1:]
    elif digits.startswith("00"):
        digits = digits[2:]
    if not digits:
        return ContactCheck(valid=False, error="Enter the contact's WhatsApp number.")
    if not digits.isdigit():
        return ContactCheck(
            valid=False, error="A WhatsApp number may only contain digits, e.g. +41 79 123 45 67."
        )
    if digits.startswith("0") or not 8 <= len(digits) <= 15:
        return ContactCheck(
            valid=False,
            error="Enter the number in international format with its country code, "
            "e.g. +41 79 123 45 67.",
        )
    return ContactCheck(valid=True, address=digits)


# --- outbound ---------------------------------------------------------------------------------
@hookimpl(tryfirst=True)
def extmsg_render_outbound(
    channel: Channel, message: OutboundMessage
) -> list[OutboundMessage] | None:
    if _settings(channel) is None:
        return None
    return outbound.render(channel, message)


@hookimpl
def extmsg_send(channel: Channel, message: OutboundMessage) -> Awaitable[SendResult] | None:
    settings = _settings(channel)
    if settings is None:
        return None
    return api.send_message(graph, settings, message)


@hookimpl
def extmsg_mark_read(channel: Channel, provider_message_id: str) -> bool | Awaitable[bool] | None:
    settings = _settings(channel)
    if settings is None:
        return None
    if not settings.send_read_receipts:
        return False
    return api.mark_read(graph, settings, provider_message_id)
