"""Email as an extmsg messenger unit.

Mail does not arrive through an HTTP route: the SMTP/LMTP listeners and IMAP pollers started
in :meth:`Email.startup` hand each mail to the core (``ctx.accept``) and acknowledge it only
after that returned.
"""

from __future__ import annotations

from collections.abc import Awaitable

from extmsg import workers
from extmsg.messenger import Messenger, MessengerContext
from extmsg.models import Channel, ContactCheck, OutboundMessage, ProviderFake, SendResult

from . import addresses, outbound
from .fake import create_email_fake, fake_channel_settings
from .running import EmailState
from .settings import EmailSettings

__all__ = ["NAME", "Email", "EmailState", "state"]

NAME = "email_smtp"

state = EmailState()


class Email(Messenger):
    name = NAME
    settings = EmailSettings
    description = "Email: SMTP out, an SMTP/LMTP listener or IMAP in"
    contact_identifier_type = "EMAIL"
    contact_identifier_name = "email"

    def provider_fakes(self) -> list[ProviderFake]:
        return [
            ProviderFake(
                messenger=NAME,
                name="smtp-sink",
                factory=create_email_fake,
                channel_settings=fake_channel_settings,
                description="An SMTP server that records sent mail; POST /fake/inbound writes in",
            )
        ]

    async def startup(self, ctx: MessengerContext) -> None:
        if ctx.channels:
            await state.start(ctx, ctx.channels, ctx.store, receive=workers.leads(), gate=ctx)

    async def shutdown(self, ctx: MessengerContext) -> None:
        await state.stop()

    def validate_contact(self, channel: Channel, identifier: str) -> ContactCheck:
        name, address = addresses.parse_mailbox(identifier)
        if not address or not addresses.is_valid(address):
            return ContactCheck(
                valid=False, error=f"{identifier.strip()!r} is not a valid email address"
            )
        return ContactCheck(valid=True, address=address, name=name or None)

    def render_outbound(self, channel: Channel, message: OutboundMessage) -> list[OutboundMessage]:
        return outbound.render(channel, message)

    def send(self, channel: Channel, message: OutboundMessage) -> Awaitable[SendResult]:
        return outbound.send(channel, message, state.book(channel.name), state.memory)
