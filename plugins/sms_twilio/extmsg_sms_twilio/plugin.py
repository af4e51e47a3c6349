"""The extmsg hook implementations for Twilio SMS.

Each hook checks that the channel or messenger is Twilio's and otherwise declines with
``None``; first-result hooks are plain functions returning a coroutine for their own work.
"""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from typing import TYPE_CHECKING

from extmsg import hookimpl
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

from . import inbound, lookup, media, outbound, phone, signature
from .fake import create_twilio_fake, fake_channel_settings
from .session import SessionHolder
from .settings import TWILIO_MAX_BODY, TwilioSettings

if TYPE_CHECKING:
    from aiohttp import web

    from extmsg.config import Config

NAME = "sms_twilio"

#: The empty TwiML answer: Twilio records an error (11200) for an empty body.
TWIML_EMPTY = b'<?xml version="1.0" encoding="UTF-8"?><Response/>'

sessions = SessionHolder()


def _ours(channel: Channel) -> bool:
    return channel.messenger == NAME


@hookimpl
def extmsg_messenger_types() -> MessengerType:
    return MessengerType(
        name=NAME,
        settings=TwilioSettings,
        description="SMS and MMS through Twilio Programmable Messaging",
        contact_identifier_type="PHONE_NUMBER",
        contact_identifier_name="phone",
        routes=(Route(name="inbound", path="inbound"), Route(name="status", path="status")),
        max_text_length=TWILIO_MAX_BODY,
        media_by_url=True,
    )


@hookimpl
def extmsg_provider_fakes() -> list[ProviderFake]:
    return [
        ProviderFake(
            messenger=NAME,
            name="twilio",
            factory=create_twilio_fake,
            channel_settings=fake_channel_settings,
            description="Twilio Messages API: sends, delivery callbacks, scripted failures",
        )
    ]


@hookimpl
def extmsg_startup(app: web.Application, config: Config) -> None:
    if any(channel.messenger == NAME for channel in config.channels):
        sessions.get()


@hookimpl
async def extmsg_shutdown(app: web.Application, config: Config) -> None:
    await sessions.close()


# --- inbound ----------------------------------------------------------------------------------
@hookimpl
def extmsg_verify_inbound(
    messenger: str, request: InboundRequest, channels: Sequence[Channel]
) -> bool | None:
    if messenger != NAME:
        return None
    signature.verify_request(request, channels)
    return True


@hookimpl
def extmsg_parse_inbound(
    messenger: str, request: InboundRequest, channels: Sequence[Channel]
) -> list[InboundEvent] | None:
    if messenger != NAME:
        return None
    return inbound.parse_request(request)


@hookimpl
def extmsg_render_ack(
    messenger: str, request: InboundRequest, events: Sequence[InboundEvent]
) -> HttpReply | None:
    if messenger != NAME:
        return None
    return HttpReply(status=200, body=TWIML_EMPTY, content_type="text/xml")


@hookimpl
def extmsg_fetch_attachment(
    channel: Channel, attachment: Attachment
) -> Awaitable[Attachment] | None:
    if not _ours(channel) or attachment.data is not None or not attachment.url:
        return None
    return media.fetch_media(channel, attachment)


@hookimpl
def extmsg_validate_contact(channel: Channel, identifier: str) -> ContactCheck | None:
    if not _ours(channel):
        return None
    settings: TwilioSettings = channel.settings
    return phone.validate_typed(identifier, settings.default_region)


# --- outbound ---------------------------------------------------------------------------------
@hookimpl(tryfirst=True)
def extmsg_render_outbound(
    channel: Channel, message: OutboundMessage
) -> list[OutboundMessage] | None:
    if not _ours(channel):
        return None
    return outbound.render(channel, message)


@hookimpl
def extmsg_send(channel: Channel, message: OutboundMessage) -> Awaitable[SendResult] | None:
    if not _ours(channel):
        return None
    return outbound.send(sessions.get(), channel, message)


@hookimpl
def extmsg_find_sent(
    channel: Channel, message: OutboundMessage
) -> Awaitable[SendResult | bool | None] | None:
    if not _ours(channel):
        return None
    return lookup.find_sent(sessions.get(), channel, message)


@hookimpl
def extmsg_mark_read(channel: Channel, provider_message_id: str) -> bool | None:
    if not _ours(channel):
        return None
    return False
