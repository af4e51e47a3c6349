"""Twilio SMS as an extmsg messenger unit: each method hands over to the module that holds
the protocol (:mod:`.signature`, :mod:`.inbound`, :mod:`.outbound`, :mod:`.lookup`)."""

from __future__ import annotations

from collections.abc import Awaitable, Sequence

from extmsg.messenger import Messenger, MessengerContext
from extmsg.models import (
    Attachment,
    Channel,
    ContactCheck,
    HttpReply,
    InboundEvent,
    InboundRequest,
    OutboundMessage,
    ProviderFake,
    Route,
    SendResult,
)

from . import inbound, lookup, media, outbound, phone, signature
from .fake import create_twilio_fake, fake_channel_settings
from .session import SessionHolder
from .settings import TWILIO_MAX_BODY, TwilioSettings

NAME = "sms_twilio"

#: The empty TwiML answer: Twilio records an error (11200) for an empty body.
TWIML_EMPTY = b'<?xml version="1.0" encoding="UTF-8"?><Response/>'

sessions = SessionHolder()


class Twilio(Messenger):
    name = NAME
    settings = TwilioSettings
    description = "SMS and MMS through Twilio Programmable Messaging"
    contact_identifier_type = "PHONE_NUMBER"
    contact_identifier_name = "phone"
    routes = (Route(name="inbound", path="inbound"), Route(name="status", path="status"))
    max_text_length = TWILIO_MAX_BODY
    media_by_url = True
    # Twilio's own keywords; Twilio answers them itself, so extmsg sends no reply.
    opt_out_keywords = inbound.OPT_OUT_KEYWORDS
    opt_in_keywords = inbound.OPT_IN_KEYWORDS

    def provider_fakes(self) -> list[ProviderFake]:
        return [
            ProviderFake(
                messenger=NAME,
                name="twilio",
                factory=create_twilio_fake,
                channel_settings=fake_channel_settings,
                description="Twilio Messages API: sends, delivery callbacks, scripted failures",
            )
        ]

    async def startup(self, ctx: MessengerContext) -> None:
        if ctx.channels:
            sessions.get()

    async def shutdown(self, ctx: MessengerContext) -> None:
        await sessions.close()

    def verify_inbound(self, request: InboundRequest, channels: Sequence[Channel]) -> bool:
        signature.verify_request(request, channels)
        return True

    def parse_inbound(
        self, request: InboundRequest, channels: Sequence[Channel]
    ) -> list[InboundEvent]:
        return inbound.parse_request(request)

    def render_ack(self, request: InboundRequest, events: Sequence[InboundEvent]) -> HttpReply:
        return HttpReply(status=200, body=TWIML_EMPTY, content_type="text/xml")

    def fetch_attachment(self, channel: Channel, attachment: Attachment) -> Awaitable[Attachment]:
        return media.fetch_media(channel, attachment)

    def validate_contact(self, channel: Channel, identifier: str) -> ContactCheck:
        return phone.validate_typed(identifier, channel.settings.default_region)

    def render_outbound(self, channel: Channel, message: OutboundMessage) -> list[OutboundMessage]:
        return outbound.render(channel, message)

    def send(self, channel: Channel, message: OutboundMessage) -> Awaitable[SendResult]:
        return outbound.send(sessions.get(), channel, message)

    def find_sent(
        self, channel: Channel, message: OutboundMessage
    ) -> Awaitable[SendResult | bool | None]:
        return lookup.find_sent(sessions.get(), channel, message)
