"""The WhatsApp Cloud API as an extmsg messenger unit: each method hands over to the module
that holds the protocol (:mod:`.signature`, :mod:`.inbound`, :mod:`.handshake`,
:mod:`.outbound`, :mod:`.api`)."""

from __future__ import annotations

from collections.abc import Awaitable, Sequence

from extmsg.messenger import Messenger, MessengerContext, handler_route
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

from . import api, inbound, outbound, signature
from .contact import validate_contact
from .content import MEDIA_SCHEME
from .fake import create_sandbox_fake, fake_channel_settings
from .graph import Graph
from .handshake import handle_verification
from .settings import WhatsAppSettings

__all__ = ["NAME", "WhatsApp", "graph"]

NAME = "whatsapp"

#: The HTTP session every channel shares; opened at start-up (or on first use), closed at stop.
graph = Graph()


class WhatsApp(Messenger):
    name = NAME
    settings = WhatsAppSettings
    description = "WhatsApp Business Cloud API (Meta Graph API)"
    contact_identifier_type = "PHONE_NUMBER"
    contact_identifier_name = "phone"
    routes = (Route(name="webhook", path="webhook", scope="messenger"),)
    max_text_length = outbound.TEXT_LIMIT
    # WhatsApp has no keywords of its own: the usual words, confirmed by extmsg.
    opt_out_keywords = ("STOP", "UNSUBSCRIBE")
    opt_in_keywords = ("START",)
    opt_out_reply = "You will get no more messages from us here. Reply START to get them again."
    opt_in_reply = "You will get our messages here again. Reply STOP to stop them."

    @handler_route("webhook", scope="messenger")
    async def verify(self, request: InboundRequest, channels: Sequence[Channel]) -> HttpReply:
        return await handle_verification(request, channels)

    def provider_fakes(self) -> list[ProviderFake]:
        return [
            ProviderFake(
                messenger=NAME,
                name="graph",
                factory=create_sandbox_fake,
                channel_settings=fake_channel_settings,
                description="Meta Graph API: messages, media upload/download, signed webhooks",
            )
        ]

    async def startup(self, ctx: MessengerContext) -> None:
        await graph.open()

    async def shutdown(self, ctx: MessengerContext) -> None:
        await graph.close()

    def verify_inbound(self, request: InboundRequest, channels: Sequence[Channel]) -> bool:
        return signature.verify(request, channels)

    def parse_inbound(
        self, request: InboundRequest, channels: Sequence[Channel]
    ) -> list[InboundEvent]:
        return inbound.parse(request, channels)

    def fetch_attachment(
        self, channel: Channel, attachment: Attachment
    ) -> Awaitable[Attachment] | None:
        if not (attachment.url or "").startswith(MEDIA_SCHEME):
            return None
        return api.fetch_media(graph, channel.settings, attachment, channel.fetch_allowed_networks)

    def validate_contact(self, channel: Channel, identifier: str) -> ContactCheck:
        return validate_contact(identifier)

    def render_outbound(self, channel: Channel, message: OutboundMessage) -> list[OutboundMessage]:
        return outbound.render(channel, message)

    def send(self, channel: Channel, message: OutboundMessage) -> Awaitable[SendResult]:
        return api.send_message(graph, channel.settings, message)

    def mark_read(self, channel: Channel, provider_message_id: str) -> bool | Awaitable[bool]:
        if not channel.settings.send_read_receipts:
            return False
        return api.mark_read(graph, channel.settings, provider_message_id)
